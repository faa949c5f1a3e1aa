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
"""A two-contrast (FLAIR, T1) WMH model through the same bundle: ``train.json`` + ``demo.json`` + ``wmh.json`` on a
tiny WMH-layout phantom trains the three stages (the segmentation branch on the WMH mask), serves a copy of the
bundle, synthesizes the held-out case through ``inference.json`` and evaluates the paper's two WMH scenarios
through ``evaluate.json``; then the served copy answers through a real MONAI Label server."""

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

from monai_msgldm.bundle import stage_is_finished
from monai_msgldm.data.phantom import ensure_phantom_dataset
from tests.apps.monailabel.server import LabelServer
from tests.apps.monailabel.test_monailabel_app import HAS_MONAILABEL
from tests.bundles.test_demo import OVERRIDES

__all__: list[str] = []

CONFIG_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm" / "configs"
CONFIGS = [str(CONFIG_DIR / n) for n in ("train.json", "demo.json", "wmh.json")]


def setUpModule() -> None:
    global _TMP, _DEMO, _DATA
    _TMP = tempfile.mkdtemp()
    try:
        _DATA = ensure_phantom_dataset(cache_dir=_TMP, num_subjects=3, resolution=4.0, seed=0, layout="wmh")
        _DEMO = os.path.join(_TMP, "demo")
        wf = ConfigWorkflow(
            config_file=CONFIGS,
            meta_file=str(CONFIG_DIR / "metadata.json"),
            workflow_type="train",
            run_id="training",
            bundle_root=os.path.join(_TMP, "bundle_root"),
            config_dir=str(CONFIG_DIR),
            phantom_cache_dir=_TMP,
            demo_dir=_DEMO,
            **OVERRIDES,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
    except BaseException:
        shutil.rmtree(_TMP, ignore_errors=True)
        raise


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


class TestWmhBundle(unittest.TestCase):
    def test_trained_two_contrast_model(self):
        models = os.path.join(_DEMO, "models")
        for name in ("autoencoder.pt", "structure.pt", "model.pt"):
            self.assertTrue(stage_is_finished(os.path.join(models, name)), name)
        structure = torch.load(os.path.join(models, "structure.pt"), map_location="cpu", weights_only=True)["model"]
        seg_weights = [v for k, v in structure.items() if k.startswith("segmentation_decoder") and k.endswith("weight")]
        seg_head = seg_weights[-1]
        self.assertEqual(seg_head.shape[0], 1)  # one segmentation channel: the WMH mask
        # the datalist is the WMH layout's, with the two contrasts in the model's order
        with open(os.path.join(_DEMO, "eval", "diffusion", "datalist.json")) as f:
            datalist = json.load(f)
        self.assertEqual((datalist["format"], datalist["modalities"]), ("wmh", ["flair", "t1"]))
        self.assertEqual(sorted(datalist["training"][0]), ["flair", "seg", "subject", "t1"])

    def test_served_bundle_is_a_two_contrast_bundle(self):
        served = os.path.join(_DEMO, "bundle")
        parser = ConfigParser()
        parser.read_config(os.path.join(served, "configs", "inference.json"))
        self.assertEqual(parser.get_parsed_content("modalities"), ["flair", "t1"])
        self.assertEqual(parser.get_parsed_content("seg_classes"), ["wmh"])
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(os.path.join(served, "models", "model.pt"), weights_only=True), strict=True)
        self.assertEqual(net.num_modalities, 2)
        with open(os.path.join(served, "configs", "metadata.json")) as f:
            fmt = json.load(f)["network_data_format"]
        self.assertEqual(fmt["inputs"]["image"]["channel_def"], {"0": "FLAIR", "1": "T1"})
        self.assertEqual(fmt["outputs"]["pred"]["num_channels"], 2)

    def test_inference_synthesizes_flair_from_t1(self):
        synthesis = os.path.join(_DEMO, "synthesis")
        (case,) = os.listdir(synthesis)
        written = sorted(os.listdir(os.path.join(synthesis, case)))
        self.assertIn(f"{case}_flair_synth.nii.gz", written)
        self.assertFalse(any("_t1_synth" in f for f in written), written)  # T1 was given
        out = nib.load(os.path.join(synthesis, case, f"{case}_flair_synth.nii.gz"))
        ref = nib.load(os.path.join(_DATA, case, "pre", "T1.nii.gz"))
        self.assertEqual(out.shape, ref.shape)
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
        self.assertTrue(np.isfinite(out.get_fdata()).all())

    def test_evaluation_reports_the_two_wmh_scenarios(self):
        with open(os.path.join(_DEMO, "evaluation", "metrics.json")) as f:
            metrics = json.load(f)
        rows = metrics["rows"] if isinstance(metrics, dict) else metrics
        self.assertEqual(
            sorted((r["scenario"], r["target"]) for r in rows), [("flair->t1", "t1"), ("t1->flair", "flair")]
        )
        self.assertEqual({r["group"] for r in rows}, {"1->1"})
        for row in rows:
            self.assertTrue(np.isfinite(row["psnr"]) and 0.0 < row["ssim"] <= 1.0, row)


@unittest.skipUnless(HAS_MONAILABEL, "needs the 'label' extra (monailabel); scripts/test.sh installs it")
class TestWmhMONAILabel(unittest.TestCase):
    """The served two-contrast bundle through a real MONAI Label server: studies ``<study>_flair`` / ``<study>_t1``."""

    @classmethod
    def setUpClass(cls):
        cls.studies = os.path.join(_TMP, "studies")
        os.makedirs(cls.studies, exist_ok=True)
        case = sorted(c for c in os.listdir(_DATA) if os.path.isdir(os.path.join(_DATA, c)))[0]
        cls.t1 = os.path.join(cls.studies, "W1_t1.nii.gz")
        shutil.copy(os.path.join(_DATA, case, "pre", "T1.nii.gz"), cls.t1)  # the study lacks FLAIR
        cls.server = LabelServer(os.path.join(_DEMO, "bundle"), cls.studies, _TMP)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_info_and_synthesis(self):
        self.assertEqual(self.server.info["models"]["msgldm"]["modalities"], ["flair", "t1"])
        response = self.server.infer("W1", output="json")
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(response.json()["synthesized"], ["flair"])
        response = self.server.infer("W1")
        self.assertEqual(response.status_code, 200, response.text)
        path = os.path.join(_TMP, "answer.nii.gz")
        with open(path, "wb") as f:
            f.write(response.content)
        out, ref = nib.load(path), nib.load(self.t1)
        self.assertEqual(out.shape, ref.shape)
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
        # a BraTS contrast the model does not have is refused, naming the model's contrasts
        response = self.server.infer("W1", {"target": "t2"})
        self.assertEqual(response.status_code, 400, response.text)
        self.assertIn("flair", response.text)


if __name__ == "__main__":
    unittest.main()
