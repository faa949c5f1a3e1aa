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
"""The baseline overlay configs, read after ``train_diffusion.json``, train their baseline with the bundle CLI."""

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

from monai_msgldm.data.phantom import ensure_phantom_dataset
from monai_msgldm.inferers import RegressionSynthesisInferer
from monai_msgldm.networks.nets import RegressionSynthesisNet
from tests.bundles.utils import state_equal

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
CONFIGS = BUNDLE_DIR / "configs"
META = CONFIGS / "metadata.json"
LOGGING = CONFIGS / "logging.conf"

# a tiny run: 3 phantom subjects at 4 mm, split 2 training / 1 validation, 32 px slices
TINY_FEATURES = [4, 4, 8, 8, 16, 4]
TINY = {
    "val_ratio": 0.34,
    "test_ratio": 0.0,
    "spatial_size": 32,
    "max_epochs": 1,
    "num_samples": 2,
    "val_num_samples": 2,
    "batch_size": 1,
    "num_workers": 0,
    "network_def#features": TINY_FEATURES,
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


class TestBaselineRegressionCLI(unittest.TestCase):
    def test_run_training(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        ckpt_dir = os.path.join(root, "models")
        configs = [str(CONFIGS / f) for f in ("train.json", "train_diffusion.json", "baseline_regression.json")]
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(META)]
        cmd += ["--config_file", json.dumps(configs), "--logging_file", str(LOGGING)]
        cmd += ["--bundle_root", root, "--dataset_dir", _DATA, "--ckpt_dir", ckpt_dir]
        for key, value in TINY.items():
            cmd += [f"--{key}", json.dumps(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        self.assertIn("val_psnr", proc.stdout + proc.stderr)
        # the baseline's own checkpoints, none of the diffusion stage's
        self.assertEqual(
            sorted(os.listdir(ckpt_dir)), ["model.pt", "regression.pt", "regression_best.pt"], os.listdir(ckpt_dir)
        )
        self.assertTrue(os.path.isdir(os.path.join(root, "eval", "regression")))
        ckpt = torch.load(os.path.join(ckpt_dir, "regression.pt"), map_location="cpu", weights_only=True)
        self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer"})  # no EMA
        self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["max_epochs"]), (2, 1))
        served = torch.load(os.path.join(ckpt_dir, "model.pt"), map_location="cpu", weights_only=True)
        self.assertTrue(state_equal(served, ckpt["model"]))
        model = RegressionSynthesisNet(spatial_dims=2, num_modalities=4, features=TINY_FEATURES)
        model.load_state_dict(served)
        self.assertTrue(all(torch.isfinite(p).all() for p in model.parameters()))
        images = torch.rand(1, 4, 32, 32) * 2 - 1
        available = torch.tensor([[True, True, True, False]])
        out = RegressionSynthesisInferer().sample(images, model, available)
        self.assertTrue(torch.equal(out[:, :3], images[:, :3]))


if __name__ == "__main__":
    unittest.main()
