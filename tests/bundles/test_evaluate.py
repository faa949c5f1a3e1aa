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

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_msgldm.constants import MODALITIES
from monai_msgldm.data import build_brats_datalist
from monai_msgldm.data.phantom import generate_phantom_dataset
from monai_msgldm.evaluation import (
    DOWNSTREAM_DICE_NAMES,
    UNCERTAINTY_NAMES,
    brain_mask_from_available,
    complete_case,
    load_segmenter,
    masked_slice_psnr_ssim,
    region_dice,
    segment_case,
    sharpness_ratio,
    uncertainty_scores,
    volume_ssim_by_region,
)
from tests.bundles.test_inference import TINY as INFERENCE_TINY

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
# evaluate.json is an overlay of inference.json (merged in order)
CONFIG = [str(BUNDLE_DIR / "configs" / "inference.json"), str(BUNDLE_DIR / "configs" / "evaluate.json")]
INFERENCE = BUNDLE_DIR / "configs" / "inference.json"
META = BUNDLE_DIR / "configs" / "metadata.json"
LOGGING = BUNDLE_DIR / "configs" / "logging.conf"

# the tiny networks and 64 px slices of test_inference.py, with two DDIM steps
TINY = {**INFERENCE_TINY, "ddim_steps": 2}
METRICS = ("psnr", "ssim", "ssim3d_brain", "ssim3d_tumour", "ssim3d_healthy", "sharpness")


def _reference_rows(rows: list[dict], **overrides) -> list[dict]:
    """For each metrics row: the evaluate.json case preprocessed by the config, its missing contrasts set to -1,
    synthesized by the config's inferer with the served weights, and scored by the metric functions."""
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({**TINY, "bundle_root": _BUNDLE, "output_dir": tempfile.mkdtemp(dir=_TMP), **overrides})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(os.path.join(_BUNDLE, "models", "model.pt"), weights_only=True))
    inferer = parser.get_parsed_content("inferer")
    (case,) = list(parser.get_parsed_content("dataloader"))
    truth = case["image"].as_tensor()
    out = []
    for r in rows:
        flags = torch.tensor([m in r["available"].split("+") for m in MODALITIES])
        inputs = truth.clone()
        inputs[:, ~flags] = -1.0
        with torch.no_grad():
            pred = torch.as_tensor(inferer(inputs, network, available=flags[None]))[0]
        c = MODALITIES.index(r["target"])
        brain = brain_mask_from_available(truth[0], flags)
        psnr, ssim, n = masked_slice_psnr_ssim(pred[c], truth[0, c], brain)
        tumour = case["seg"][0, 1].as_tensor() > 0.5 if "seg" in case else None
        out.append(
            {"num_slices": n, "psnr": psnr, "ssim": ssim, **volume_ssim_by_region(pred[c], truth[0, c], brain, tumour)}
            | {"sharpness": sharpness_ratio(pred[c], truth[0, c], brain)}
        )
    return out


def _reference_dice(rows: list[dict], segmenter_path: str, **overrides) -> list[dict]:
    """For each metrics row: the case completed with the synthesis made by hand (as in :func:`_reference_rows`) and the
    case with all real contrasts, segmented by the frozen segmenter and scored per region against the label."""
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({**TINY, "bundle_root": _BUNDLE, "output_dir": tempfile.mkdtemp(dir=_TMP), **overrides})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(os.path.join(_BUNDLE, "models", "model.pt"), weights_only=True))
    inferer = parser.get_parsed_content("inferer")
    segmenter = load_segmenter(parser.get_parsed_content("segmenter_def"), segmenter_path)
    (case,) = list(parser.get_parsed_content("dataloader"))
    truth, seg = case["image"].as_tensor()[0], case["seg"].as_tensor()[0] > 0.5
    real = region_dice(segment_case(segmenter, truth), seg).tolist()
    out = []
    for r in rows:
        flags = torch.tensor([m in r["available"].split("+") for m in MODALITIES])
        inputs = truth[None].clone()
        inputs[:, ~flags] = -1.0
        with torch.no_grad():
            pred = torch.as_tensor(inferer(inputs, network, available=flags[None]))[0]
        completed = region_dice(segment_case(segmenter, complete_case(pred, truth, flags)), seg).tolist()
        out.append(dict(zip(DOWNSTREAM_DICE_NAMES, completed + real)))
    return out


def setUpModule() -> None:
    global _TMP, _DATA, _BUNDLE
    _TMP = tempfile.mkdtemp()
    _DATA = os.path.join(_TMP, "data")
    generate_phantom_dataset(_DATA, num_subjects=2, resolution=4.0, progress=False)
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update(TINY)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    _BUNDLE = os.path.join(_TMP, "bundle")
    os.makedirs(os.path.join(_BUNDLE, "models"))
    torch.save(network.state_dict(), os.path.join(_BUNDLE, "models", "model.pt"))


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


class TestEvaluateConfig(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.out, True)

    def _run(self, **overrides) -> None:
        wf = ConfigWorkflow(
            config_file=CONFIG,
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type=None,
            bundle_root=_BUNDLE,
            output_dir=self.out,
            **{**TINY, **overrides},
        )
        wf.initialize()
        wf.run()
        wf.finalize()

    def _read(self) -> tuple[list[dict], dict, str]:
        self.assertEqual(
            sorted(f for f in os.listdir(self.out) if f.startswith("metrics")),
            [
                "metrics.csv",
                "metrics.json",
                "metrics.md",
            ],
        )
        self.assertFalse([f for f in os.listdir(self.out) if f.startswith(".tmp_")])
        with open(os.path.join(self.out, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        with open(os.path.join(self.out, "metrics.json")) as f:
            doc = json.load(f)
        with open(os.path.join(self.out, "metrics.md")) as f:
            md = f.read()
        return rows, doc, md

    def test_network_matches_inference(self):
        parsers = []
        for config in (CONFIG, INFERENCE):
            parser = ConfigParser()
            parser.read_config(config if isinstance(config, list) else str(config))
            parsers.append(parser)
        overlay = ConfigParser.load_config_file(CONFIG[1])
        for key in ("autoencoder_def", "structure_def", "unet_def", "network_def", "sampling_scheduler", "sampler"):
            self.assertNotIn(key, overlay)  # evaluation never redefines the served network
            self.assertEqual(parsers[0][key], parsers[1][key], key)

    def test_test_split(self):
        # 2 subjects, test_ratio 0.5: one test subject, the one of train_diffusion.json's split with the same ids
        self._run(dataset_dir=_DATA, test_ratio=0.5, scenarios=["3->1", "t1"])
        rows, doc, md = self._read()
        expected = build_brats_datalist(_DATA, val_ratio=0.1, test_ratio=0.5, seed=0)["test"]
        self.assertEqual(len(expected), 1)
        self.assertEqual({r["case"] for r in rows}, {expected[0]["subject"]})
        self.assertEqual(
            [(r["scenario"], r["group"], r["target"]) for r in rows],
            [("t1+t1ce+t2->flair", "3->1", "flair"), ("t1+t1ce+flair->t2", "3->1", "t2"),
             ("t1+t2+flair->t1ce", "3->1", "t1ce"), ("t1ce+t2+flair->t1", "3->1", "t1"),
             ("t1->t1ce+t2+flair", "1->3", "t1ce"), ("t1->t1ce+t2+flair", "1->3", "t2"),
             ("t1->t1ce+t2+flair", "1->3", "flair")],
        )  # fmt: skip
        # every value is the one of the metric functions on a synthesis made by hand with the served model
        for r, ref in zip(rows, _reference_rows(rows, dataset_dir=_DATA, test_ratio=0.5)):
            self.assertEqual(int(r["num_slices"]), ref["num_slices"])
            for m in METRICS:
                self.assertAlmostEqual(float(r[m]), ref[m], places=5, msg=f"{r['scenario']} {r['target']} {m}")
        self.assertEqual(len(doc["rows"]), 7)
        self.assertEqual(len(doc["aggregate"]["by_scenario_target"]), 7)
        group = {(e["group"], e["target"]): e for e in doc["aggregate"]["by_group_target"]}
        self.assertEqual(group[("3->1", "flair")]["psnr"]["n"], 1)
        flair = [float(r["psnr"]) for r in rows if r["group"] == "3->1" and r["target"] == "flair"]
        self.assertAlmostEqual(group[("3->1", "flair")]["psnr"]["mean"], flair[0], places=6)
        self.assertIn("| 3->1 | t1 | 1 |", md)
        self.assertIn("| 1->3 | flair | 1 |", md)
        self.assertNotIn("2->2", md)
        case = expected[0]["subject"]
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.out, "figures"))),
            sorted(f"{case}_{a}.png" for a in ("t1+t1ce+t2", "t1+t1ce+flair", "t1+t2+flair", "t1ce+t2+flair", "t1")),
        )

    def test_datalist_without_seg(self):
        cases = sorted(os.listdir(_DATA))
        cases = [c for c in cases if os.path.isdir(os.path.join(_DATA, c))]
        items = [{m: f"{c}/{c}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")} | {"case": c} for c in cases]
        datalist = os.path.join(self.out, "my_list.json")
        with open(datalist, "w") as f:
            json.dump({"testing": items}, f)
        self._run(
            datalist=datalist,
            data_list_key="testing",
            dataset_dir=_DATA,
            seg_key=None,
            scenarios=["t1+t2"],
            figures=False,
        )
        rows, doc, _ = self._read()
        self.assertFalse(os.path.exists(os.path.join(self.out, "figures")))
        self.assertEqual([(r["case"], r["target"]) for r in rows], [(c, t) for c in cases for t in ("t1ce", "flair")])
        for r in rows:
            self.assertEqual(r["ssim3d_tumour"], "nan")
            self.assertEqual(r["ssim3d_healthy"], "nan")
            self.assertTrue(math.isfinite(float(r["ssim"])) and math.isfinite(float(r["ssim3d_brain"])))
            self.assertTrue(math.isfinite(float(r["sharpness"])))
        self.assertIsNone(doc["rows"][0]["ssim3d_tumour"])
        self.assertFalse(os.path.exists(os.path.join(self.out, "datalist.json")))

    def test_cli(self):
        overrides = [f"--{k}={json.dumps(v)}" if isinstance(v, list) else f"--{k}={v}" for k, v in TINY.items()]
        cmd = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            json.dumps(CONFIG),
            "--meta_file",
            str(META),
        ]
        cmd += ["--bundle_root", _BUNDLE, "--output_dir", self.out, "--dataset_dir", _DATA, "--test_ratio", "0.5"]
        cmd += ["--scenarios", "['t1+t1ce+t2']", *overrides]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        rows, _, md = self._read()
        self.assertEqual([(r["scenario"], r["target"]) for r in rows], [("t1+t1ce+t2->flair", "flair")])
        self.assertTrue(all(math.isfinite(float(rows[0][m])) for m in METRICS))
        self.assertIn("| 3->1 | flair | 1 |", md)

    def test_missing_model(self):
        with self.assertRaises(Exception) as ctx:
            self._run(dataset_dir=_DATA, test_ratio=0.5, model_path=os.path.join(self.out, "nowhere.pt"))
        chain = [ctx.exception]
        while chain[-1].__cause__ is not None:
            chain.append(chain[-1].__cause__)
        self.assertTrue(any(isinstance(e, FileNotFoundError) and "--model_path" in str(e) for e in chain), chain)
        self.assertFalse(os.path.exists(os.path.join(self.out, "metrics.csv")))

    def _segmenter_checkpoint(self) -> str:
        """A (random) segmenter of evaluate.json's segmenter_def, saved as train_segmenter.json saves it."""
        parser = ConfigParser()
        parser.read_config(CONFIG)
        torch.manual_seed(1)
        path = os.path.join(tempfile.mkdtemp(dir=_TMP), "segmenter.pt")
        torch.save({"model": parser.get_parsed_content("segmenter_def").state_dict(), "trainer": {}}, path)
        return path

    def test_downstream_dice(self):
        segmenter = self._segmenter_checkpoint()
        self._run(
            dataset_dir=_DATA,
            test_ratio=0.5,
            scenarios=["t1+t1ce+t2", "t1"],
            figures=False,
            downstream_dice=True,
            segmenter_checkpoint=segmenter,
        )
        rows, doc, md = self._read()
        self.assertEqual([(r["scenario"], r["target"]) for r in rows],
                         [("t1+t1ce+t2->flair", "flair"), ("t1->t1ce+t2+flair", "t1ce"),
                          ("t1->t1ce+t2+flair", "t2"), ("t1->t1ce+t2+flair", "flair")])  # fmt: skip
        # each value is the frozen segmenter's Dice on the case completed by hand with the served model's synthesis
        # (and on the real case), against the case's label
        for r, ref in zip(rows, _reference_dice(rows, segmenter, dataset_dir=_DATA, test_ratio=0.5)):
            for name in DOWNSTREAM_DICE_NAMES:
                self.assertAlmostEqual(float(r[name]), ref[name], places=6, msg=f"{r['scenario']} {name}")
        # the Dice with all real contrasts: one value per case beside every scenario; one scenario, one value
        self.assertEqual(len({tuple(r[f"dice_real_{k}"] for k in ("tc", "wt", "et")) for r in rows}), 1)
        self.assertEqual(len({tuple(r[n] for n in DOWNSTREAM_DICE_NAMES) for r in rows[1:]}), 1)
        self.assertEqual(doc["metrics"][-len(DOWNSTREAM_DICE_NAMES) :], list(DOWNSTREAM_DICE_NAMES))
        self.assertEqual(
            [e["scenario"] for e in doc["aggregate"]["downstream_dice_by_scenario"]],
            ["t1+t1ce+t2->flair", "t1->t1ce+t2+flair"],
        )
        self.assertIn("## Downstream Dice (BraSyn)", md)
        self.assertIn("| 1->3 | t1->t1ce+t2+flair | 1 |", md)

    def test_downstream_dice_switch(self):
        # off by default: no segmenter is built or read, no handler, no column
        parser = ConfigParser()
        parser.read_config(CONFIG)
        parser.update({**TINY, "bundle_root": os.path.join(self.out, "no_bundle")})
        self.assertFalse(parser.get_parsed_content("downstream_dice"))
        self.assertEqual(sorted(parser.get_parsed_content("additional_metrics")), ["sharpness", "volume_ssim"])
        self.assertIsNone(parser.get_parsed_content("segmenter"))
        self.assertEqual(
            parser.get_parsed_content("segmenter_checkpoint"),
            os.path.join(self.out, "no_bundle", "models", "segmenter.pt"),
        )
        # on without the checkpoint: a clear error naming the file and the option, before any synthesis
        missing = os.path.join(self.out, "nowhere", "segmenter.pt")
        with self.assertRaises(Exception) as ctx:
            self._run(dataset_dir=_DATA, test_ratio=0.5, downstream_dice=True, segmenter_checkpoint=missing)
        chain = [ctx.exception]
        while chain[-1].__cause__ is not None:
            chain.append(chain[-1].__cause__)
        errors = [e for e in chain if isinstance(e, FileNotFoundError)]
        self.assertTrue(errors, chain)
        self.assertIn(missing, str(errors[0]))
        self.assertIn("--segmenter_checkpoint", str(errors[0]))
        self.assertFalse(os.path.exists(os.path.join(self.out, "metrics.csv")))

    def test_uncertainty_metrics(self):
        # several samples give a std map beside the mean (the evaluator output 'pred_std'): the uncertainty columns are
        # the metric functions on the mean, the truth and that map, inside the brain
        overrides = {"dataset_dir": _DATA, "test_ratio": 0.5, "num_samples": 2}
        self._run(**overrides, scenarios=["t1+t1ce+t2"], figures=False, uncertainty_metrics=True)
        rows, doc, md = self._read()
        self.assertEqual([(r["scenario"], r["target"]) for r in rows], [("t1+t1ce+t2->flair", "flair")])
        self.assertEqual(doc["metrics"][-len(UNCERTAINTY_NAMES) :], list(UNCERTAINTY_NAMES))
        parser = ConfigParser()
        parser.read_config(CONFIG)
        parser.update({**TINY, "bundle_root": _BUNDLE, "output_dir": tempfile.mkdtemp(dir=_TMP), **overrides})
        network = parser.get_parsed_content("network")
        network.load_state_dict(torch.load(os.path.join(_BUNDLE, "models", "model.pt"), weights_only=True))
        (case,) = list(parser.get_parsed_content("dataloader"))
        truth = case["image"].as_tensor()
        flags = torch.tensor([True, True, True, False])
        inputs = truth.clone()
        inputs[:, ~flags] = -1.0
        with torch.no_grad():
            out = torch.as_tensor(parser.get_parsed_content("inferer")(inputs, network, available=flags[None]))[0]
        pred, std = out[:4], out[4:]  # the mean and the std of the samples
        self.assertGreater(float(std[3].max()), 0.0)
        brain = brain_mask_from_available(truth[0], flags)
        ref = uncertainty_scores(pred[3], truth[0, 3], std[3], brain)
        for name in UNCERTAINTY_NAMES:
            self.assertAlmostEqual(float(rows[0][name]), ref[name], places=6, msg=name)
        self.assertIn("## Uncertainty", md)
        # on exactly when there is a std map (num_samples > 1); forced on without one: a clear error naming the key
        self.assertEqual(ConfigParser.load_config_file(CONFIG[1])["uncertainty_metrics"], "@std_map")
        with self.assertRaises(Exception) as ctx:
            self._run(
                dataset_dir=_DATA, test_ratio=0.5, scenarios=["t1+t1ce+t2"], figures=False, uncertainty_metrics=True
            )
        chain = [ctx.exception]
        while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        self.assertTrue(any(isinstance(e, KeyError) and "pred_std" in str(e) for e in chain), chain)

    def test_empty_split(self):
        with self.assertRaises(Exception) as ctx:  # the config parser wraps the ValueError in a RuntimeError
            self._run(dataset_dir=_DATA, test_ratio=0.1, scenarios=["3->1"])
        chain = [ctx.exception]
        while chain[-1].__cause__ is not None:
            chain.append(chain[-1].__cause__)
        self.assertTrue(any(isinstance(e, ValueError) and "no case under 'test'" in str(e) for e in chain), chain)
        self.assertFalse(os.path.exists(os.path.join(self.out, "metrics.csv")))


if __name__ == "__main__":
    unittest.main()
