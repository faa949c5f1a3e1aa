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

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import AutoencoderKL

from monai_msgldm.data.phantom import ensure_phantom_dataset
from monai_msgldm.networks.nets import MSGLDM
from tests.bundles.utils import (
    assert_stage_checkpoints,
    assert_tensorboard_images,
    collect_outputs,
    reference_psnr,
    reference_ssim,
    state_equal,
)

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
# the base and the stage overlay, merged in order (the model zoo's way)
CONFIG = [str(BUNDLE_DIR / "configs" / "train.json"), str(BUNDLE_DIR / "configs" / "train_autoencoder.json")]
META = BUNDLE_DIR / "configs" / "metadata.json"
LOGGING = BUNDLE_DIR / "configs" / "logging.conf"

# a tiny run: 3 phantom subjects at 4 mm (about 49 x 58 x 47 voxels), split 2 training / 1 validation
TINY = {
    "val_ratio": 0.34,
    "test_ratio": 0.0,
    "spatial_size": 64,
    "max_epochs": 1,
    "num_samples": 2,
    "val_num_samples": 2,
    "batch_size": 1,
    "num_workers": 0,
    "autoencoder_def#channels": [8, 8, 8, 8],
    "autoencoder_def#norm_num_groups": 4,
}
PHANTOM = {"phantom_subjects": 3, "phantom_resolution": 4.0, "phantom_seed": 0}


def setUpModule() -> None:
    global _TMP, _DATA
    _TMP = tempfile.mkdtemp()
    _DATA = ensure_phantom_dataset(
        cache_dir=_TMP,
        num_subjects=PHANTOM["phantom_subjects"],
        resolution=PHANTOM["phantom_resolution"],
        seed=PHANTOM["phantom_seed"],
    )


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


class TestTrainAutoencoderWorkflow(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def test_workflow(self):
        # dataset_dir stays null: the built-in phantom, found in the cache made by setUpModule
        wf = ConfigWorkflow(
            config_file=CONFIG,
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type="train",
            bundle_root=self.root,
            phantom_cache_dir=_TMP,
            **PHANTOM,
            **TINY,
        )
        wf.initialize()
        self.assertEqual(wf.check_properties(), [])
        self.assertIsNone(wf.dataset_dir)
        self.assertEqual(wf.parser.get_parsed_content("data_root"), _DATA)
        self.assertEqual(wf.max_epochs, 1)
        self.assertEqual(wf.parser.get_parsed_content("ckpt_dir"), self.root + "/models")

        # subject-level split written next to the logs
        with open(os.path.join(self.root, "eval", "autoencoder", "datalist.json")) as f:
            datalist = json.load(f)
        train_ids = {item["subject"] for item in datalist["training"]}
        val_ids = {item["subject"] for item in datalist["validation"]}
        self.assertEqual((len(train_ids), len(val_ids)), (2, 1))
        self.assertFalse(train_ids & val_ids)
        self.assertEqual(len(wf.train_dataset), 2)

        # a training item: num_samples 2D slices of the 4 stacked modalities in [-1, 1]
        items = wf.train_dataset[0]
        self.assertEqual(len(items), 2)
        self.assertEqual(tuple(items[0]["image"].shape), (4, 64, 64))
        self.assertEqual(items[0]["available"].tolist(), [True] * 4)
        self.assertNotIn("seg", items[0])
        self.assertGreaterEqual(float(items[0]["image"].min()), -1.0)
        self.assertLessEqual(float(items[0]["image"].max()), 1.0)

        net = wf.parser.get_parsed_content("network")
        self.assertIsInstance(net, AutoencoderKL)
        self.assertEqual(net.encoder.in_channels, 1)
        self.assertEqual(net.latent_channels, 4)
        before = {k: v.detach().clone() for k, v in net.state_dict().items()}

        wf.run()
        trainer, evaluator = wf.trainer, wf.evaluator
        self.assertEqual(trainer.state.epoch, 1)
        # 2 volumes x 2 slices, batch 1 volume
        self.assertEqual(trainer.state.iteration, 2)
        psnr, ssim = evaluator.state.metrics["val_psnr"], evaluator.state.metrics["val_ssim"]
        # the validation slices are re-drawn with the same seed every validation: same slices, same score
        pairs = collect_outputs(evaluator, ("pred", "label"))
        evaluator.run()
        self.assertAlmostEqual(evaluator.state.metrics["val_psnr"], psnr, places=5)
        self.assertAlmostEqual(evaluator.state.metrics["val_ssim"], ssim, places=5)
        # the scores are PSNR and SSIM (data range 2) of each available modality slice's reconstruction
        # (1 volume x 2 slices x 4 modalities), checked against float64 references (float32 sums: 1e-4)
        self.assertEqual(len(pairs), 8)
        self.assertEqual(tuple(pairs[0][0].shape), (1, 64, 64))
        self.assertAlmostEqual(psnr, reference_psnr(pairs, max_val=2.0), delta=1e-4)
        self.assertAlmostEqual(ssim, reference_ssim(pairs, data_range=2.0), delta=1e-4)
        wf.finalize()

        # StepLR halves the rate after max(1, max_epochs // 2) epochs
        assert_stage_checkpoints(self, os.path.join(self.root, "models"), "autoencoder", wf, net, before, lr=5e-5)
        assert_tensorboard_images(self, os.path.join(self.root, "eval", "autoencoder"))


class TestDefaultNetwork(unittest.TestCase):
    def test_default_network_matches_msgldm(self):
        parser = ConfigParser()
        parser.read_config(CONFIG)
        net = parser.get_parsed_content("network_def")
        self.assertEqual(parser.get_parsed_content("spatial_size"), 192)
        self.assertEqual(parser.get_parsed_content("dataset_dir"), None)
        self.assertEqual(parser.get_parsed_content("learning_rate"), 1e-4)
        # factor 8 and 4 latent channels: 192 x 192 -> 4 x 24 x 24, as in metadata.json's autoencoder_data_format
        with torch.no_grad():
            latent = net.encode_stage_2_inputs(torch.zeros(1, 1, 192, 192))
        self.assertEqual(tuple(latent.shape), (1, 4, 24, 24))
        # the trained weights load into the autoencoder of the default MSG-LDM model (strict)
        torch.manual_seed(0)
        model = MSGLDM(spatial_dims=2)
        model.autoencoder.model.load_state_dict(net.state_dict())
        self.assertTrue(state_equal(model.autoencoder.model.state_dict(), net.state_dict()))


class TestTrainAutoencoderCLI(unittest.TestCase):
    def test_run_training(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(META)]
        cmd += ["--config_file", json.dumps(CONFIG), "--logging_file", str(LOGGING)]
        cmd += ["--bundle_root", root, "--dataset_dir", _DATA]
        for key, value in TINY.items():
            cmd += [f"--{key}", json.dumps(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        final = os.path.join(root, "models", "autoencoder.pt")
        self.assertTrue(os.path.isfile(final), proc.stdout[-3000:])
        ckpt = torch.load(final, map_location="cpu", weights_only=True)
        self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["max_epochs"]), (2, 1))
        net = AutoencoderKL(
            spatial_dims=2,
            channels=(8, 8, 8, 8),
            latent_channels=4,
            num_res_blocks=2,
            attention_levels=(False,) * 4,
            norm_num_groups=4,
            with_encoder_nonlocal_attn=True,
            with_decoder_nonlocal_attn=True,
        )
        net.load_state_dict(ckpt["model"])
        self.assertTrue(all(torch.isfinite(p).all() for p in net.parameters()))
        self.assertIn("val_psnr", proc.stdout + proc.stderr)


if __name__ == "__main__":
    unittest.main()
