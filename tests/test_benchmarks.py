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
"""Smoke runs of the benchmark scripts with tiny settings, so that they do not rot (their figures are not checked)."""

from __future__ import annotations

import importlib.util
import math
import shutil
import tempfile
import unittest
from pathlib import Path

from parameterized import parameterized

from monai_msgldm.data.phantom import ensure_phantom_dataset

__all__: list[str] = []

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

TINY_NETS = {
    "autoencoder_def#channels": [8, 8, 8],
    "autoencoder_def#norm_num_groups": 4,
    "autoencoder_def#with_encoder_nonlocal_attn": False,
    "autoencoder_def#with_decoder_nonlocal_attn": False,
    "structure_def#structure_channels": [8, 8, 8],
    "structure_def#strides": [1, 2, 2],
    "structure_def#style_channels": [4, 4, 4],
    "structure_def#mlp_hidden": 16,
    "unet_def#channels": [8, 8, 8],
    "unet_def#norm_num_groups": 4,
    "unet_def#num_head_channels": 8,
}
SHARED = {
    "phantom_subjects": 3,
    "phantom_resolution": 4.0,
    "phantom_seed": 0,
    "val_ratio": 0.34,
    "test_ratio": 0.0,
    "spatial_size": 32,
    "num_samples": 2,
    "batch_size": 1,
    "num_workers": 0,
}
STAGE_NETS = {
    "autoencoder": {
        k.replace("autoencoder_def#", "network_def#"): v for k, v in TINY_NETS.items() if k.startswith("autoencoder")
    },
    "structure": {k: v for k, v in TINY_NETS.items() if k.startswith("structure")},
    "diffusion": TINY_NETS,
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setUpModule() -> None:
    global _TMP
    _TMP = tempfile.mkdtemp()
    ensure_phantom_dataset(cache_dir=_TMP, num_subjects=3, resolution=4.0, seed=0)


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


class TestBundleTiming(unittest.TestCase):
    @parameterized.expand([("autoencoder",), ("structure",), ("diffusion",)])
    def test_time_stage(self, stage):
        timing = _load("bundle_timing")
        workdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, workdir, True)
        row = timing.time_stage(stage, {**SHARED, "phantom_cache_dir": _TMP, **STAGE_NETS[stage]}, 2, workdir)
        self.assertEqual(row["stage"], stage)
        self.assertEqual(row["slices_per_batch"], 2)
        self.assertTrue(row["seconds_per_iteration"] > 0 and math.isfinite(row["seconds_per_iteration"]))

    def test_time_synthesis_extrapolates(self):
        timing = _load("bundle_timing")
        row = timing.time_synthesis({"spatial_size": 32, **TINY_NETS}, 2, 4, 6, 155, "cpu")
        self.assertEqual((row["spatial_size"], row["slices_timed"], row["volume_slices"]), (32, 6, 155))
        self.assertTrue(row["volume_extrapolated"])
        self.assertAlmostEqual(row["seconds_per_volume"], row["seconds_per_slice"] * 155)
        self.assertGreater(row["peak_process_memory_gb"], 0.0)

    def test_presets_read_from_the_bundle(self):
        timing = _load("bundle_timing")
        shared, per_stage = timing.preset_overrides("demo")
        self.assertEqual(shared["spatial_size"], 64)
        self.assertEqual(per_stage["diffusion"]["max_epochs"], 500)
        default_shared, default_stage = timing.preset_overrides("default")
        self.assertEqual(default_shared["spatial_size"], 192)
        self.assertEqual(default_stage["autoencoder"], {})


if __name__ == "__main__":
    unittest.main()
