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
import tempfile
import unittest

import torch
import torch.nn as nn
from parameterized import parameterized

from monai_msgldm.constants import MODALITIES
from monai_msgldm.evaluation import (
    brain_mask_from_available,
    evaluate_synthesis,
    evaluation_datalist,
    masked_slice_psnr_ssim,
    missing_modality_scenarios,
    percentile_rescale,
    scenario_group,
    summarize_metrics,
    volume_ssim_by_region,
    write_metrics,
)

__all__: list[str] = []


def _volume(seed: int = 0, shape=(24, 24, 6)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


class TestScenarios(unittest.TestCase):
    def test_all(self):
        scenarios = missing_modality_scenarios()
        self.assertEqual(len(scenarios), 14)
        self.assertEqual(sum(len(t) for _, t in scenarios), 28)
        self.assertEqual(len({s for s, _ in scenarios}), 14)
        for available, targets in scenarios:
            self.assertEqual(sorted(available + targets), sorted(MODALITIES))
        self.assertEqual([len(s) for s, _ in scenarios], [3] * 4 + [2] * 6 + [1] * 4)
        self.assertEqual(scenarios[0], (("t1", "t1ce", "t2"), ("flair",)))

    def test_restrict(self):
        self.assertEqual(len(missing_modality_scenarios(["3->1"])), 4)
        self.assertEqual(len(missing_modality_scenarios("2->2")), 6)
        self.assertEqual(missing_modality_scenarios(["flair+t1"]), [(("t1", "flair"), ("t1ce", "t2"))])
        both = missing_modality_scenarios(["1->3", "t2"])  # duplicates are listed once
        self.assertEqual(len(both), 4)
        self.assertEqual(scenario_group(("t1", "t2")), "2->2")

    @parameterized.expand([(["4->0"],), (["0->4"],), (["t5"],), (["t1+t1ce+t2+flair"],), (["t1+t1"],), ([3],)])
    def test_bad(self, scenarios):
        with self.assertRaisesRegex(ValueError, "scenarios"):
            missing_modality_scenarios(scenarios)


class TestBrainMask(unittest.TestCase):
    def test_available_only(self):
        image = -torch.ones(3, 4, 4)
        image[0, 0, 0] = 0.5  # brain only in channel 0
        image[1, 1, 1] = 0.5  # channel 1 is not available: ignored
        mask = brain_mask_from_available(image, [True, False, True])
        self.assertEqual(mask.shape, (4, 4))
        self.assertEqual(int(mask.sum()), 1)
        self.assertTrue(bool(mask[0, 0]))
        with self.assertRaisesRegex(ValueError, "available"):
            brain_mask_from_available(image, [False, False, False])
        with self.assertRaisesRegex(ValueError, "available"):
            brain_mask_from_available(image, [True, False])


class TestSliceMetrics(unittest.TestCase):
    def test_identical(self):
        x = _volume()
        psnr, ssim, n = masked_slice_psnr_ssim(x, x.clone(), torch.ones_like(x, dtype=torch.bool))
        self.assertEqual(psnr, math.inf)
        self.assertAlmostEqual(ssim, 1.0, places=5)
        self.assertEqual(n, 6)

    def test_known_psnr(self):
        x = _volume().clamp(-0.5, 0.5)
        # constant error 0.2 everywhere: MSE 0.04, PSNR = 10 log10(2^2 / 0.04) = 20 dB
        psnr, ssim, _ = masked_slice_psnr_ssim(x + 0.2, x, torch.ones_like(x, dtype=torch.bool))
        self.assertAlmostEqual(psnr, 20.0, places=3)
        self.assertLess(ssim, 1.0)

    def test_mask_handling(self):
        x = _volume()
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[4:20, 4:20, 1:4] = True  # brain in slices 1..3 only
        pred = x.clone()
        pred[~mask] = 0.7  # errors outside the brain are ignored (set to -1 in both)
        psnr, ssim, n = masked_slice_psnr_ssim(pred, x, mask)
        self.assertEqual((psnr, n), (math.inf, 3))
        self.assertAlmostEqual(ssim, 1.0, places=5)
        # an error inside the brain of one slice: only that slice has finite PSNR; mean is then inf; SSIM < 1
        pred[10, 10, 2] += 0.5
        _, ssim, _ = masked_slice_psnr_ssim(pred, x, mask)
        self.assertLess(ssim, 1.0)
        # min_brain_voxels skips slices with too little brain
        mask[:, :, 3] = False
        mask[5, 5, 3] = True
        self.assertEqual(masked_slice_psnr_ssim(x, x, mask, min_brain_voxels=2)[2], 2)
        # prediction is clipped to [-1, 1]
        big = x.clone()
        big[x > 0.9] = 5.0
        target = x.clone()
        target[x > 0.9] = 1.0
        self.assertEqual(masked_slice_psnr_ssim(big, target, torch.ones_like(x, dtype=torch.bool))[0], math.inf)

    def test_no_brain_and_errors(self):
        x = _volume()
        psnr, ssim, n = masked_slice_psnr_ssim(x, x, torch.zeros_like(x, dtype=torch.bool))
        self.assertTrue(math.isnan(psnr) and math.isnan(ssim))
        self.assertEqual(n, 0)
        with self.assertRaisesRegex(ValueError, "shape"):
            masked_slice_psnr_ssim(x, x[:, :, :2], torch.ones_like(x, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "11x11"):
            masked_slice_psnr_ssim(x[:8], x[:8], torch.ones_like(x[:8], dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "min_brain_voxels"):
            masked_slice_psnr_ssim(x, x, torch.ones_like(x, dtype=torch.bool), min_brain_voxels=0)


class TestPercentileRescale(unittest.TestCase):
    def test_values(self):
        out = percentile_rescale(torch.arange(1001.0))  # 0.5 -> 5, 99.5 -> 995
        expected = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])
        torch.testing.assert_close(out[[0, 5, 500, 995, 1000]], expected)
        self.assertAlmostEqual(float(out[6]), 1 / 990, places=6)
        self.assertEqual(float(out.min()), 0.0)
        self.assertEqual(float(out.max()), 1.0)

    def test_mask_and_constant(self):
        x = torch.cat([torch.full((100,), -10.0), torch.linspace(0, 1, 101)])
        mask = x >= 0
        out = percentile_rescale(x, 0.0, 100.0, mask=mask)
        torch.testing.assert_close(out[mask], torch.linspace(0, 1, 101))
        self.assertTrue(bool((out[~mask] == 0).all()))
        self.assertTrue(bool((percentile_rescale(torch.ones(5)) == 0).all()))
        with self.assertRaisesRegex(ValueError, "lower"):
            percentile_rescale(x, 50.0, 10.0)
        with self.assertRaisesRegex(ValueError, "mask"):
            percentile_rescale(x, mask=torch.zeros_like(x, dtype=torch.bool))


class TestVolumeSSIM(unittest.TestCase):
    def test_identical_and_invariance(self):
        x = _volume(1, (16, 16, 16))
        brain = torch.ones_like(x, dtype=torch.bool)
        out = volume_ssim_by_region(x, x, brain)
        self.assertAlmostEqual(out["ssim3d_brain"], 1.0, places=5)
        self.assertTrue(math.isnan(out["ssim3d_tumour"]) and math.isnan(out["ssim3d_healthy"]))
        # each volume is rescaled to its own percentiles: a positive affine map of the truth scores 1
        self.assertAlmostEqual(volume_ssim_by_region(3 * x + 7, x, brain)["ssim3d_brain"], 1.0, places=4)

    def test_regions(self):
        x = _volume(2, (16, 16, 16))
        brain = torch.zeros_like(x, dtype=torch.bool)
        brain[1:15, 1:15, 1:15] = True
        tumour = torch.zeros_like(brain)
        tumour[2:10, 2:10, 2:10] = True
        pred = x.clone()
        pred[tumour] = _volume(3, (16, 16, 16))[tumour]  # wrong only in the tumour
        out = volume_ssim_by_region(pred, x, brain, tumour)
        self.assertLess(out["ssim3d_tumour"], 0.5)
        self.assertGreater(out["ssim3d_healthy"], out["ssim3d_tumour"] + 0.3)
        self.assertTrue(out["ssim3d_tumour"] <= out["ssim3d_brain"] <= out["ssim3d_healthy"])
        empty = volume_ssim_by_region(pred, x, brain, torch.zeros_like(brain))
        self.assertTrue(math.isnan(empty["ssim3d_tumour"]))
        self.assertEqual(empty["ssim3d_healthy"], empty["ssim3d_brain"])
        with self.assertRaisesRegex(ValueError, "tumour_mask"):
            volume_ssim_by_region(pred, x, brain, tumour[:8])
        with self.assertRaisesRegex(ValueError, "kernel_size"):
            volume_ssim_by_region(pred, x, brain, kernel_size=4)


def _row(case, target, psnr, ssim=0.5, group="3->1"):
    return {
        "case": case,
        "scenario": f"s->{target}",
        "group": group,
        "available": "s",
        "target": target,
        "num_slices": 3,
        "psnr": psnr,
        "ssim": ssim,
        "ssim3d_brain": 0.4,
        "ssim3d_tumour": math.nan,
        "ssim3d_healthy": 0.3,
    }


class TestWriteMetrics(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.out, True)

    def test_summary(self):
        rows = [_row("a", "t1", 10.0), _row("b", "t1", 20.0), _row("c", "t1", math.inf), _row("a", "t2", 5.0)]
        summary = summarize_metrics(rows)
        self.assertEqual(len(summary), 2)
        self.assertEqual(summary[0]["psnr"], {"mean": 15.0, "std": 5.0, "n": 2})
        self.assertEqual(summary[0]["ssim3d_tumour"], {"mean": None, "std": None, "n": 0})

    def test_files(self):
        rows = [_row("a", "t1", 10.0), _row("b", "t1", 20.0), _row("a", "flair", math.inf, group="1->3")]
        paths = write_metrics(rows, os.path.join(self.out, "sub"))
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.out, "sub"))), ["metrics.csv", "metrics.json", "metrics.md"]
        )
        with open(paths["csv"]) as f:
            table = list(csv.DictReader(f))
        self.assertEqual(len(table), 3)
        self.assertEqual(float(table[0]["psnr"]), 10.0)
        self.assertEqual(table[2]["psnr"], "inf")
        with open(paths["json"]) as f:
            doc = json.load(f)
        self.assertEqual(len(doc["rows"]), 3)
        self.assertIsNone(doc["rows"][2]["psnr"])
        self.assertIsNone(doc["rows"][0]["ssim3d_tumour"])
        by_group = {(e["group"], e["target"]): e for e in doc["aggregate"]["by_group_target"]}
        self.assertEqual(by_group[("3->1", "t1")]["psnr"]["mean"], 15.0)
        with open(paths["md"]) as f:
            md = f.read()
        self.assertIn("| 3->1 | t1 | 2 | 15.00 ± 5.00 | 50.00 ± 0.00 |", md)
        self.assertIn("| 1->3 | flair | 1 | n/a |", md)
        with self.assertRaisesRegex(ValueError, "at least one"):
            write_metrics([], self.out)
        bad = _row("a", "t1", 1.0)
        del bad["ssim"]
        with self.assertRaisesRegex(ValueError, "ssim"):
            write_metrics([bad], self.out)

    def test_evaluation_datalist(self):
        path = os.path.join(self.out, "list.json")
        with open(path, "w") as f:
            json.dump({"test": [{"t1": "a/a_t1.nii.gz", "subject": "a"}], "training": []}, f)
        os.makedirs(os.path.join(self.out, "a"))
        open(os.path.join(self.out, "a", "a_t1.nii.gz"), "wb").close()
        items = evaluation_datalist(path, "test")  # relative paths: from the datalist's folder
        self.assertEqual(items[0]["t1"], os.path.join(self.out, "a", "a_t1.nii.gz"))
        with self.assertRaisesRegex(ValueError, "no case under 'training'"):
            evaluation_datalist(path, "training")
        with self.assertRaisesRegex(ValueError, "no list under data_list_key 'testing'"):
            evaluation_datalist(path, "testing")
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            evaluation_datalist(os.path.join(self.out, "nope.json"))


class _Oracle:
    """Inferer returning the stored truth for missing channels; records its calls."""

    def __init__(self, truth: torch.Tensor, noise: float = 0.0):
        self.truth, self.noise, self.calls = truth, noise, []

    def __call__(self, inputs, network, available):
        self.calls.append((inputs.clone(), list(available)))
        return self.truth + self.noise


class TestEvaluateSynthesis(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.out, True)
        image = -torch.ones(1, 4, 16, 16, 5)
        image[:, :, 3:13, 3:13, 1:4] = torch.rand(1, 4, 10, 10, 3, generator=torch.Generator().manual_seed(0)) * 0.5
        seg = torch.zeros(1, 3, 16, 16, 5)
        seg[:, 1, 5:9, 5:9, 2] = 1
        self.batch = {"image": image, "seg": seg, "available": torch.ones(1, 4, dtype=torch.bool), "case": ["c0"]}
        self.net = nn.Linear(1, 1)

    def test_oracle(self):
        oracle = _Oracle(self.batch["image"])
        rows = evaluate_synthesis(self.net, oracle, [self.batch], self.out, scenarios=["t1+t2"])
        self.assertEqual([r["target"] for r in rows], ["t1ce", "flair"])
        inputs, available = oracle.calls[0]
        self.assertEqual(available, ["t1", "t2"])
        self.assertTrue(bool((inputs[0, [1, 3]] == -1).all()))
        torch.testing.assert_close(inputs[0, [0, 2]], self.batch["image"][0, [0, 2]])
        for r in rows:
            self.assertEqual((r["case"], r["group"], r["psnr"], r["num_slices"]), ("c0", "2->2", math.inf, 3))
            self.assertAlmostEqual(r["ssim"], 1.0, places=5)
            self.assertAlmostEqual(r["ssim3d_tumour"], 1.0, places=5)
        self.assertTrue(os.path.isfile(os.path.join(self.out, "metrics.md")))

    def test_all_scenarios_and_no_seg(self):
        batch = {k: v for k, v in self.batch.items() if k != "seg"}
        rows = evaluate_synthesis(self.net, _Oracle(batch["image"], 0.1), [batch, batch])
        self.assertEqual(len(rows), 56)
        self.assertTrue(all(math.isnan(r["ssim3d_tumour"]) and math.isnan(r["ssim3d_healthy"]) for r in rows))
        self.assertTrue(all(math.isfinite(r["psnr"]) and r["psnr"] > 15 for r in rows))

    def test_errors(self):
        batch = dict(self.batch, available=torch.tensor([[True, False, True, True]]))
        with self.assertRaisesRegex(ValueError, "lacks \\['t1ce'\\]"):
            evaluate_synthesis(self.net, _Oracle(batch["image"]), [batch])
        batch = dict(self.batch, image=self.batch["image"].repeat(2, 1, 1, 1, 1))
        with self.assertRaisesRegex(ValueError, "batch_size 1"):
            evaluate_synthesis(self.net, _Oracle(batch["image"]), [batch])
        with self.assertRaisesRegex(ValueError, "no case"):
            evaluate_synthesis(self.net, _Oracle(batch["image"]), [], self.out)
        self.assertEqual(os.listdir(self.out), [])


if __name__ == "__main__":
    unittest.main()
