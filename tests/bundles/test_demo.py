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
"""The demo overlay (train.json + demo.json): three stages, inference on the held-out case, evaluation, outputs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from monai_msgldm.bundle import stage_is_finished
from monai_msgldm.data.phantom import ensure_phantom_dataset
from monai_msgldm.inferers import load_sampling_record

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
CONFIG_DIR = BUNDLE_DIR / "configs"
CONFIGS = [str(CONFIG_DIR / "train.json"), str(CONFIG_DIR / "demo.json")]
META = CONFIG_DIR / "metadata.json"
LOGGING = CONFIG_DIR / "logging.conf"

PHANTOM = {"phantom_subjects": 3, "phantom_resolution": 4.0, "phantom_seed": 0}
TINY = {
    "autoencoder": {
        "channels": [8, 8, 8],
        "num_res_blocks": 1,
        "norm_num_groups": 4,
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    },
    "structure": {"structure_channels": [8, 8, 8], "strides": [1, 2, 2], "style_channels": [4, 4, 4], "mlp_hidden": 16},
    "unet": {
        "channels": [8, 8, 8],
        "attention_levels": [False, False, True],
        "norm_num_groups": 4,
        "num_head_channels": 8,
    },
}
OVERRIDES = {
    **PHANTOM,
    "val_ratio": 0.34,
    "test_ratio": 0.34,
    "spatial_size": 32,
    "field_of_view": "crop",  # 32 px at 4 mm is smaller than the phantom brain: the tiny demo crops (and logs it)
    "batch_size": 1,
    "val_num_samples": 2,
    **{f"{part}_def#{k}": v for part, args in TINY.items() for k, v in args.items()},
    "epochs": {"autoencoder": 1, "structure": 1, "diffusion": 2},
    "stage_num_samples": {"autoencoder": 2, "structure": 2, "diffusion": 2},
    "ddim_steps": 2,
    "val_ddim_steps": 1,
}


def setUpModule() -> None:
    global _TMP
    _TMP = tempfile.mkdtemp()
    ensure_phantom_dataset(cache_dir=_TMP, num_subjects=3, resolution=4.0, seed=0)


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


class TestDemoConfig(unittest.TestCase):
    def test_demo_defaults(self):
        """The shipped demo settings: small 64 px model, the stage budgets, served network with v-prediction, all
        plain overrides of train.json ids that reach each stage's config (train.json + demo.json + stage file)."""
        parser = ConfigParser()
        parser.read_config(CONFIGS)
        self.assertEqual(parser.get("spatial_size"), 64)
        self.assertEqual(parser.get("phantom_resolution"), 3.0)
        # twice the budget where the CPU has AMX (bfloat16 training, about 1.9x faster: docs/benchmarks.md, 0.17.0)
        budget = {"autoencoder": 130, "structure": 40, "diffusion": 250}
        scale = 2 if parser.get_parsed_content("cpu_amp") else 1
        self.assertEqual(parser.get_parsed_content("epochs"), {k: scale * v for k, v in budget.items()})
        for cpu_amp in (False, True):
            other = ConfigParser()
            other.read_config(CONFIGS)
            other["cpu_amp"] = cpu_amp
            self.assertEqual(
                other.get_parsed_content("epochs"), {k: (2 if cpu_amp else 1) * v for k, v in budget.items()}
            )
        self.assertEqual(parser.get("prediction_type"), "v_prediction")  # the schedulers' setting, not the network's
        self.assertEqual(parser.get("autoencoder_def#channels"), [16, 32, 32])
        demo = ConfigParser.load_config_file(CONFIGS[1])
        self.assertFalse(any(k.startswith(("stages", "demo_sizes")) for k in demo))  # no re-injection
        for stage, epochs in ((k, scale * v) for k, v in budget.items()):
            merged = ConfigParser()
            merged.read_config([*CONFIGS, str(CONFIG_DIR / f"train_{stage}.json")])
            self.assertEqual(merged.get_parsed_content("train#trainer#max_epochs"), epochs, stage)
            self.assertEqual(merged.get_parsed_content("val_interval"), epochs, stage)  # validation once, at the end
            self.assertEqual(merged.get("autoencoder_def#channels"), [16, 32, 32], stage)
            network = {"autoencoder": "@autoencoder_def", "structure": "@structure_def"}
            self.assertEqual(merged.get("network_def"), network.get(stage, parser.get("network_def")), stage)
        self.assertEqual(merged.get_parsed_content("noise_scheduler").prediction_type, "v_prediction")

    def test_cpu_amp(self):
        """bfloat16 training on the CPU: off in train.json, on in the demo where the CPU has AMX; every stage's
        trainer and validation (evaluator or sampling inferer) gets the one key."""
        from monai_msgldm.utils import cpu_has_amx

        base = ConfigParser()
        base.read_config(CONFIGS[0])
        self.assertFalse(base.get_parsed_content("cpu_amp"))
        parser = ConfigParser()
        parser.read_config(CONFIGS)
        self.assertEqual(parser.get_parsed_content("cpu_amp"), cpu_has_amx())
        wiring = {
            "autoencoder": ("train#trainer", "validate#evaluator"),
            "structure": ("train#trainer", "validate#evaluator"),
            "diffusion": ("train#trainer", "validate#inferer"),
        }
        for stage, ids in wiring.items():
            merged = ConfigParser()
            merged.read_config([*CONFIGS, str(CONFIG_DIR / f"train_{stage}.json")])
            for key in ids:
                self.assertEqual(merged.get(f"{key}#cpu_amp"), "@cpu_amp", f"{stage}: {key}")


class TestDemoWorkflow(unittest.TestCase):
    def test_demo_end_to_end(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        demo_dir = os.path.join(root, "outputs", "demo")
        wf = ConfigWorkflow(
            config_file=CONFIGS,
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type="train",
            run_id="training",
            bundle_root=root,
            config_dir=str(CONFIG_DIR),
            phantom_cache_dir=_TMP,
            demo_dir=demo_dir,
            **OVERRIDES,
        )
        wf.initialize()
        wf.run()
        wf.finalize()

        models = os.path.join(demo_dir, "models")
        for name in ("autoencoder.pt", "structure.pt", "model.pt"):
            self.assertTrue(stage_is_finished(os.path.join(models, name)), name)
        ae = torch.load(os.path.join(models, "autoencoder.pt"), map_location="cpu", weights_only=True)
        self.assertEqual(tuple(ae["model"]["encoder.blocks.0.conv.weight"].shape), (8, 1, 3, 3))
        diffusion = torch.load(os.path.join(models, "diffusion.pt"), map_location="cpu", weights_only=True)
        self.assertEqual(diffusion["trainer"]["max_epochs"], 2)
        self.assertFalse(os.path.exists(os.path.join(root, "models")), "the demo must not touch the bundle's models/")

        # a servable copy of the bundle: the demo's sizes baked into inference.json, which loads model.pt strictly
        served = os.path.join(demo_dir, "bundle")
        parser = ConfigParser()
        parser.read_config(os.path.join(served, "configs", "inference.json"))
        self.assertEqual((parser.get("spatial_size"), parser.get("ddim_steps")), (32, 2))
        # the working grid the model trained at (the 4 mm phantom's, from train.json's expression) is recorded
        self.assertEqual((parser.get("pixdim"), parser.get("axcodes")), ([4.0, 4.0, 4.0], "RAI"))
        self.assertEqual(parser.get("field_of_view"), "crop")
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(os.path.join(served, "models", "model.pt"), weights_only=True), strict=True)
        # what the model predicts comes from the record served beside it (models/model.sampling.json)
        self.assertEqual(
            load_sampling_record(os.path.join(served, "models", "model.pt")),
            {
                "scheduler": "ddpm",
                "prediction_type": "v_prediction",
                "num_train_timesteps": 1000,
                "train_timesteps": None,
            },
        )
        parser["bundle_root"] = served
        self.assertEqual(parser.get_parsed_content("sampling_scheduler").prediction_type, "v_prediction")
        for rel in ("configs/evaluate.json", "configs/metadata.json", "configs/logging.conf", "LICENSE"):
            self.assertTrue(os.path.isfile(os.path.join(served, rel)), rel)

        # inference: the held-out case's FLAIR, in the input geometry, plus a preview
        cases = os.listdir(os.path.join(demo_dir, "synthesis"))
        self.assertEqual(len(cases), 1, cases)
        case = cases[0]
        synth = os.path.join(demo_dir, "synthesis", case)
        written = sorted(os.listdir(synth))
        niftis = [f for f in written if f.endswith("_flair_synth.nii.gz")]
        self.assertEqual(len(niftis), 1, written)
        source = os.path.join(_TMP, "phantom_n3_r4.0_s0", case, f"{case}_t1.nii.gz")
        out, ref = nib.load(os.path.join(synth, niftis[0])), nib.load(source)
        self.assertEqual(out.shape, ref.shape)
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
        self.assertTrue(np.isfinite(out.get_fdata()).all())
        self.assertTrue(any(f.endswith(".png") for f in written), written)

        # evaluation: the four 3->1 scenarios, metrics files and one PNG grid per scenario
        evaluation = os.path.join(demo_dir, "evaluation")
        with open(os.path.join(evaluation, "metrics.json")) as f:
            metrics = json.load(f)
        rows = metrics["rows"] if isinstance(metrics, dict) else metrics
        self.assertEqual(sorted(r["target"] for r in rows), ["flair", "t1", "t1ce", "t2"])
        self.assertTrue(os.path.isfile(os.path.join(evaluation, "metrics.md")))
        self.assertTrue(os.path.isfile(os.path.join(demo_dir, "loss_curves.png")))
        figures = sorted(os.listdir(os.path.join(evaluation, "figures")))
        self.assertEqual(len(figures), 4, figures)
        with Image.open(os.path.join(evaluation, "figures", figures[0])) as im:
            self.assertGreater(im.size[0], im.size[1])


if __name__ == "__main__":
    unittest.main()
