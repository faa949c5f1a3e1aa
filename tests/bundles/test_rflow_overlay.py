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
"""``rflow.json``: stage 2 trained and sampled with rectified flow (MONAI's ``RFlowScheduler``) by adding the overlay
to the ``--config_file`` list, in training (``ConfigWorkflow``), inference (``python -m monai.bundle run``) and the
served copy of a trained bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.schedulers import RFlowScheduler

from monai_msgldm.bundle import write_served_bundle
from monai_msgldm.inferers import MultiContrastDiffusionInferer, load_sampling_record
from tests.bundles import test_train_diffusion as stage2

__all__: list[str] = []

CONFIGS = stage2.BUNDLE_DIR / "configs"
RFLOW = str(CONFIGS / "rflow.json")
INFERENCE = [str(CONFIGS / "inference.json"), RFLOW]
# inference with the tiny stage-2 network trained below, on 64 px slices of the 4 mm phantom (fully convolutional)
TINY_INFERENCE = {
    **{k: v for k, v in stage2.TINY.items() if "#" in k},
    "spatial_size": 64,
    "pixdim": [4.0, 4.0, 4.0],
    "slice_batch_size": 64,
}


def setUpModule() -> None:
    stage2.setUpModule()


def tearDownModule() -> None:
    stage2.tearDownModule()


def _overlay() -> dict:
    with open(RFLOW) as f:
        return json.load(f)


class TestRectifiedFlowOverlay(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root, True)

    def test_train_serve_and_infer(self):
        """Stage 2 trains with rectified flow (target z0 - noise), the served copy and the command line sample with
        it at the overlay's steps, and the command line gives the in-process synthesis."""
        ckpt_dir = os.path.join(self.root, "models")
        stage2._write_stage_checkpoints(ckpt_dir)
        wf = ConfigWorkflow(
            config_file=[*stage2.CONFIG, RFLOW],
            meta_file=str(stage2.META),
            logging_file=str(stage2.LOGGING),
            workflow_type="train",
            bundle_root=self.root,
            dataset_dir=stage2._DATA,
            **{**stage2.TINY, "ema_decay": 0.5, "val_ddim_steps": 3},
        )
        wf.initialize()
        train_inferer = wf.parser.get_parsed_content("train#inferer")
        val_inferer = wf.parser.get_parsed_content("validate#inferer")
        for inferer in (train_inferer, val_inferer):
            self.assertIsInstance(inferer.scheduler, RFlowScheduler)
        self.assertEqual(val_inferer.num_inference_steps, 3)
        # the training target of the trainer's inferer is the rectified-flow velocity z0 - noise
        net = wf.parser.get_parsed_content("network")
        images = torch.rand(2, 4, 32, 32) * 2 - 1
        noise = torch.randn(2, net.latent_channels(), 4, 4)
        z0 = torch.randn_like(noise)
        _, target = train_inferer(
            images, net, torch.ones(2, 4, dtype=torch.bool), noise, torch.tensor([3.5, 900.0]), z0
        )
        torch.testing.assert_close(target, z0 - noise)
        wf.run()
        wf.finalize()
        served_model = os.path.join(ckpt_dir, "model.pt")
        self.assertTrue(os.path.isfile(served_model))
        self.assertEqual(
            load_sampling_record(served_model),
            {
                "scheduler": "rflow",
                "prediction_type": "v_prediction",
                "num_train_timesteps": 1000,
                "train_timesteps": None,
            },
        )
        # sampled without rflow.json, the model is refused in initialize (its record), not misread
        plain = ConfigWorkflow(
            config_file=INFERENCE[0],
            workflow_type="infer",
            bundle_root=self.root,
            output_dir=os.path.join(self.root, "refused"),
            **TINY_INFERENCE,
        )
        with self.assertRaises(RuntimeError) as ctx:
            plain.initialize()
        cause = ctx.exception
        while cause.__cause__ is not None:
            cause = cause.__cause__
        self.assertIn("add configs/rflow.json", str(cause))
        self.assertFalse(os.path.exists(os.path.join(self.root, "refused")))

        # the served copy written from this run's values samples with rectified flow too
        values = {**TINY_INFERENCE, "sampling_scheduler": _overlay()["sampling_scheduler"]}
        served = write_served_bundle(stage2.BUNDLE_DIR, os.path.join(self.root, "served"), served_model, values)
        parser = ConfigParser()
        parser.read_config(os.path.join(served, "configs", "inference.json"))
        self.assertIsInstance(parser.get_parsed_content("sampler").scheduler, RFlowScheduler)

        # python -m monai.bundle run with [inference.json, rflow.json]
        out = os.path.join(self.root, "cli")
        case = os.path.join(stage2._DATA, sorted(d for d in os.listdir(stage2._DATA) if d.startswith("Phantom"))[0])
        files = {m: os.path.join(case, f"{os.path.basename(case)}_{m}.nii.gz") for m in ("t1", "t1ce", "t2")}
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", str(stage2.META)]
        cmd += ["--config_file", json.dumps(INFERENCE), "--logging_file", str(stage2.LOGGING)]
        cmd += ["--bundle_root", self.root, "--output_dir", out]
        for key, value in {**files, **TINY_INFERENCE}.items():
            cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        name = os.path.basename(case)
        cli = nib.load(os.path.join(out, name, f"{name}_flair_synth.nii.gz")).get_fdata()

        inproc = ConfigWorkflow(
            config_file=INFERENCE,
            workflow_type="infer",
            bundle_root=self.root,
            output_dir=os.path.join(self.root, "inproc"),
            **files,
            **TINY_INFERENCE,
        )
        inproc.initialize()
        sampler = inproc.parser.get_parsed_content("sampler")
        self.assertIsInstance(sampler, MultiContrastDiffusionInferer)
        self.assertIsInstance(sampler.scheduler, RFlowScheduler)
        self.assertEqual(sampler.num_inference_steps, int(_overlay()["ddim_steps"]))
        inproc.run()
        inproc.finalize()
        expected = nib.load(os.path.join(self.root, "inproc", name, f"{name}_flair_synth.nii.gz")).get_fdata()
        np.testing.assert_allclose(cli, expected, atol=1e-3)
        self.assertGreater(np.abs(cli - cli.mean()).max(), 0.01)  # a synthesis, not a constant


if __name__ == "__main__":
    unittest.main()
