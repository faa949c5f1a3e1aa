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
"""evaluate_synthesis: MONAI's evaluator over (case, scenario) items, with an oracle inferer whose scores are known."""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
import unittest

import torch
import torch.nn as nn
from PIL import Image

from monai_msgldm.evaluation import (
    brain_mask_from_available,
    evaluate_synthesis,
    masked_slice_psnr_ssim,
    missing_modality_scenarios,
    region_dice,
    sharpness_ratio,
)
from tests.evaluation.test_segmentation import ThresholdSegmenter

__all__: list[str] = []

# PSNR of a prediction off by 0.1 on a 10x10 brain of a 16x16 slice: MSE = 0.01 * 100 / 256, max 2
OFFSET_PSNR = 10 * math.log10(4 * 256 / (0.01 * 100))


class _Oracle:
    """Inferer returning the stored truth (plus an offset) for every channel; records its calls."""

    def __init__(self, truth: torch.Tensor, offset: float = 0.0):
        self.truth, self.offset, self.calls = truth, offset, []

    def __call__(self, inputs, network, available):
        self.calls.append((inputs.clone(), available.clone()))
        return self.truth.to(inputs.device) + self.offset


def _case(name: str = "c0", seed: int = 0) -> dict:
    image = -torch.ones(1, 4, 16, 16, 5)
    g = torch.Generator().manual_seed(seed)
    image[:, :, 3:13, 3:13, 1:4] = torch.rand(1, 4, 10, 10, 3, generator=g) * 0.5
    seg = torch.zeros(1, 3, 16, 16, 5)
    seg[:, 1, 5:9, 5:9, 2] = 1
    return {"image": image, "seg": seg, "available": torch.ones(1, 4, dtype=torch.bool), "case": [name]}


class TestEvaluateSynthesis(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.out, True)
        self.batch = _case()
        self.net = nn.Linear(1, 1)

    def test_oracle(self):
        oracle = _Oracle(self.batch["image"])
        rows = evaluate_synthesis(self.net, oracle, [self.batch], self.out, scenarios=["t1+t2"], figures=True)
        self.assertEqual([r["target"] for r in rows], ["t1ce", "flair"])
        self.assertEqual(len(oracle.calls), 1)  # one synthesis per (case, scenario)
        inputs, available = oracle.calls[0]
        self.assertEqual(available.tolist(), [[True, False, True, False]])
        self.assertTrue(bool((inputs[0, [1, 3]] == -1).all()))  # the missing contrasts are hidden
        torch.testing.assert_close(inputs[0, [0, 2]], self.batch["image"][0, [0, 2]])
        for r in rows:
            self.assertEqual(
                (r["case"], r["scenario"], r["group"], r["available"], r["psnr"], r["num_slices"]),
                ("c0", "t1+t2->t1ce+flair", "2->2", "t1+t2", math.inf, 3),
            )
            for key in ("ssim", "ssim3d_brain", "ssim3d_tumour", "ssim3d_healthy"):
                self.assertAlmostEqual(r[key], 1.0, places=5)
            self.assertEqual(r["sharpness"], 1.0)  # the exact synthesis is as sharp as the truth
        with open(os.path.join(self.out, "metrics.csv")) as f:
            table = list(csv.DictReader(f))
        self.assertEqual([(t["target"], t["psnr"]) for t in table], [("t1ce", "inf"), ("flair", "inf")])
        self.assertEqual([t["sharpness"] for t in table], ["1.0", "1.0"])
        self.assertEqual(os.listdir(os.path.join(self.out, "figures")), ["c0_t1+t2.png"])
        with Image.open(os.path.join(self.out, "figures", "c0_t1+t2.png")) as im:
            self.assertGreater(im.size[0], im.size[1])  # 3 slice rows, 2 inputs + 3 x 2 target columns

    def test_all_scenarios_and_no_seg(self):
        cases = [{k: v for k, v in _case(n).items() if k != "seg"} for n in ("a", "b")]
        oracle = _Oracle(cases[0]["image"], 0.1)
        rows = evaluate_synthesis(self.net, oracle, cases)
        self.assertEqual(len(oracle.calls), 28)
        self.assertEqual(len(rows), 56)
        expected = [
            (case, "+".join(s) + "->" + "+".join(t), target)
            for case in ("a", "b")
            for s, t in missing_modality_scenarios()
            for target in t
        ]
        self.assertEqual([(r["case"], r["scenario"], r["target"]) for r in rows], expected)
        truth = cases[0]["image"][0]
        for r in rows:
            # the 0.1 offset inside the brain of slices 1..3, nothing outside: a closed-form PSNR
            self.assertAlmostEqual(r["psnr"], OFFSET_PSNR, places=3)
            self.assertEqual(r["num_slices"], 3)
            # the volumes are rescaled to their own percentiles: an offset prediction scores 1
            self.assertAlmostEqual(r["ssim3d_brain"], 1.0, places=5)
            self.assertTrue(math.isnan(r["ssim3d_tumour"]) and math.isnan(r["ssim3d_healthy"]))
            flags = torch.tensor([m in r["available"].split("+") for m in ("t1", "t1ce", "t2", "flair")])
            c = ("t1", "t1ce", "t2", "flair").index(r["target"])
            brain = brain_mask_from_available(truth, flags)
            self.assertEqual(r["ssim"], masked_slice_psnr_ssim(truth[c] + 0.1, truth[c], brain)[1])
            # an offset leaves the gradients as they are: as sharp as the truth, the function's value
            self.assertEqual(r["sharpness"], sharpness_ratio(truth[c] + 0.1, truth[c], brain))
            self.assertAlmostEqual(r["sharpness"], 1.0, places=5)

    def test_downstream_dice_and_uncertainty(self):
        """A stand-in segmenter (region r = input channel sources[r] > 0.5) and an inferer that returns the mean
        and a std map equal to its own error: the Dice columns are the closed form on the completed and on the real
        case; the Spearman correlation of std and |error| is 1."""
        truth = self.batch["image"]
        g = torch.Generator().manual_seed(3)
        error = torch.rand(truth.shape, generator=g) * 0.3

        class _MeanAndStd(_Oracle):
            return_std = True

            def __call__(self, inputs, network, available):
                self.calls.append((inputs.clone(), available.clone()))
                return torch.cat([self.truth + error, error], dim=1)

        seg = torch.zeros(1, 3, 16, 16, 5)
        seg[:, :, 4:10, 4:10, 1:4] = 1
        batch = dict(self.batch, seg=seg)
        segmenter = ThresholdSegmenter(sources=(1, 3, 2))
        rows = evaluate_synthesis(
            self.net, _MeanAndStd(truth), [batch], scenarios=["t1+t2"], segmenter=segmenter, seg_key="seg"
        )
        self.assertEqual([r["target"] for r in rows], ["t1ce", "flair"])
        completed = truth.clone()
        completed[:, [1, 3]] = truth[:, [1, 3]] + error[:, [1, 3]]
        expected = region_dice(completed[0, [1, 3, 2]] > 0.5, seg[0] > 0.5)
        real = region_dice(truth[0, [1, 3, 2]] > 0.5, seg[0] > 0.5)
        for r in rows:
            for i, region in enumerate(("tc", "wt", "et")):
                self.assertAlmostEqual(r[f"dice_{region}"], float(expected[i]), places=6)
                self.assertAlmostEqual(r[f"dice_real_{region}"], float(real[i]), places=6)
            self.assertAlmostEqual(r["uncertainty_spearman"], 1.0, places=6)
            self.assertGreater(r["error_top10"], r["error_rest"])
        with self.assertRaisesRegex(ValueError, "needs the label"):
            evaluate_synthesis(self.net, _Oracle(truth), [batch], segmenter=segmenter, seg_key=None)

    def test_errors(self):
        batch = dict(self.batch, available=torch.tensor([[True, False, True, True]]))
        with self.assertRaisesRegex(ValueError, "lacks \\['t1ce'\\]"):
            evaluate_synthesis(self.net, _Oracle(batch["image"]), [batch])
        batch = {k: torch.cat([v, v]) for k, v in self.batch.items() if k != "case"}
        with self.assertRaisesRegex(ValueError, "batch_size 1"):
            evaluate_synthesis(self.net, _Oracle(batch["image"]), [batch])
        with self.assertRaisesRegex(ValueError, "no case"):
            evaluate_synthesis(self.net, _Oracle(batch["image"]), [], self.out)
        self.assertEqual(os.listdir(self.out), [])


if __name__ == "__main__":
    unittest.main()
