# Copyright (c) monai_msgldm contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The plain conditional LDM baseline trains through the bundle: ``train_diffusion.json`` + ``baseline_ldm.json``."""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest

import torch
from monai.bundle import ConfigWorkflow

from monai_msgldm.inferers import load_sampling_record
from monai_msgldm.networks.nets import PlainConditionalLDM
from tests.bundles import test_train_diffusion as stage2
from tests.bundles.utils import collect_outputs, reference_psnr, state_equal

__all__: list[str] = []

OVERLAY = stage2.BUNDLE_DIR / "configs" / "baseline_ldm.json"


def setUpModule() -> None:
    stage2.setUpModule()


def tearDownModule() -> None:
    stage2.tearDownModule()


class TestBaselineLDMBundle(unittest.TestCase):
    def test_trains_without_a_structure_checkpoint(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        ckpt_dir = os.path.join(root, "models")
        states = stage2._write_stage_checkpoints(ckpt_dir, stages=("autoencoder",))
        wf = ConfigWorkflow(
            config_file=[*stage2.CONFIG, str(OVERLAY)],
            meta_file=str(stage2.META),
            logging_file=str(stage2.LOGGING),
            workflow_type="train",
            bundle_root=root,
            phantom_cache_dir=stage2._TMP,
            **stage2.PHANTOM,
            **{**stage2.TINY, "ema_decay": 0.5, "train#handlers#4#_disabled_": True},
        )
        wf.initialize()
        net = wf.parser.get_parsed_content("network")
        self.assertIsInstance(net, PlainConditionalLDM)
        self.assertEqual(net.unet.in_channels, 2 * 16 + 4)
        self.assertTrue(state_equal(net.autoencoder.model.state_dict(), states["autoencoder"]))
        pairs = collect_outputs(wf.evaluator, ("pred", "label"))
        wf.run()
        # the score is the PSNR (range 2) of the synthesized flair of each validation slice (1 volume x 2 slices)
        self.assertEqual(len(pairs), 2)
        self.assertEqual(tuple(pairs[0][0].shape), (1, 32, 32))
        self.assertAlmostEqual(wf.evaluator.state.metrics["val_psnr"], reference_psnr(pairs, max_val=2.0), delta=1e-4)
        wf.finalize()
        served = torch.load(os.path.join(ckpt_dir, "model.pt"), map_location="cpu", weights_only=True)
        self.assertEqual(load_sampling_record(os.path.join(ckpt_dir, "model.pt"))["prediction_type"], "v_prediction")
        loaded = wf.parser.get_parsed_content("network_def", instantiate=True)
        loaded.load_state_dict(served)
        self.assertNotEqual(float(loaded.scale_factor), 1.0)
        self.assertFalse(any(k.startswith("structure_net.") for k in served))


if __name__ == "__main__":
    unittest.main()
