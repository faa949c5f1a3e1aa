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

import math
import os
import shutil
import tempfile
import unittest

import numpy as np
import scipy.stats
import torch
from ignite.engine import Engine
from monai.data import decollate_batch
from parameterized import parameterized

from monai_msgldm.evaluation import (
    UNCERTAINTY_NAMES,
    BrainSlicePSNRSSIMMetric,
    ExtraInputMetricHandler,
    RegionVolumeSSIMMetric,
    SynthesisMetricsWriter,
    SynthesisSharpnessMetric,
    SynthesisUncertaintyMetric,
    average_ranks,
    brain_mask_from_available,
    spearman_correlation,
    uncertainty_error_split,
    uncertainty_scores,
)

__all__: list[str] = []


def _tied(seed: int, n: int, levels: int) -> torch.Tensor:
    """``n`` values drawn from ``levels`` distinct values: many ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n,), generator=g).double() * 0.5


class TestRanks(unittest.TestCase):
    @parameterized.expand([(0, 50, 5), (1, 1000, 17), (2, 7, 1000), (3, 2, 1)])
    def test_average_ranks_match_scipy(self, seed, n, levels):
        x = _tied(seed, n, levels)
        np.testing.assert_allclose(average_ranks(x).numpy(), scipy.stats.rankdata(x.numpy()), rtol=0, atol=1e-12)

    def test_ranks_of_a_volume_are_flattened(self):
        x = _tied(4, 60, 6).reshape(3, 4, 5).float()
        np.testing.assert_allclose(average_ranks(x).numpy(), scipy.stats.rankdata(x.numpy().reshape(-1)), atol=1e-12)

    def test_non_finite(self):
        with self.assertRaisesRegex(ValueError, "finite"):
            average_ranks(torch.tensor([1.0, math.nan]))


class TestSpearman(unittest.TestCase):
    @parameterized.expand(
        [
            ("continuous", 0, 400, None, None),
            ("ties_in_x", 1, 400, 6, None),
            ("ties_in_both", 2, 400, 4, 9),
            ("heavy_ties", 3, 5000, 2, 3),
        ]
    )
    def test_matches_scipy(self, _, seed, n, x_levels, y_levels):
        g = torch.Generator().manual_seed(seed)
        x = _tied(seed, n, x_levels) if x_levels else torch.rand(n, generator=g, dtype=torch.float64)
        noise = torch.rand(n, generator=g, dtype=torch.float64)
        y = x + noise if y_levels is None else (x * 2 + _tied(seed + 100, n, y_levels)).round()
        expected = scipy.stats.spearmanr(x.numpy(), y.numpy()).statistic
        self.assertAlmostEqual(spearman_correlation(x, y), float(expected), places=12)
        self.assertAlmostEqual(spearman_correlation(y, x), float(expected), places=12)  # symmetric

    def test_monotone_maps(self):
        x = torch.linspace(-3, 3, 101)
        self.assertEqual(spearman_correlation(x, x.exp()), 1.0)
        self.assertEqual(spearman_correlation(x, -(x**3)), -1.0)

    def test_constant_is_nan(self):
        # N = 1 sample: the std map is 0 everywhere, the correlation undefined (scipy: nan too)
        self.assertTrue(math.isnan(spearman_correlation(torch.zeros(10), torch.arange(10.0))))
        self.assertTrue(math.isnan(spearman_correlation(torch.ones(1), torch.ones(1))))

    def test_sizes(self):
        with self.assertRaisesRegex(ValueError, "one size"):
            spearman_correlation(torch.zeros(3), torch.zeros(4))


class TestErrorSplit(unittest.TestCase):
    def test_std_equals_error(self):
        # the uncertainty is the error: Spearman 1 and the top 10 % holds the 10 % largest errors exactly
        g = torch.Generator().manual_seed(0)
        truth = torch.rand(20, 20, 10, generator=g) * 2 - 1
        pred = truth + (torch.rand(truth.shape, generator=g) - 0.5)
        error = (pred.double() - truth.double()).abs()
        scores = uncertainty_scores(pred, truth, std=error.clone())
        self.assertEqual(scores["uncertainty_spearman"], 1.0)
        ordered = error.reshape(-1).sort(descending=True).values
        k = math.ceil(0.1 * ordered.numel())  # 400 of 4000 voxels
        self.assertAlmostEqual(scores["error_top10"], float(ordered[:k].mean()), places=12)
        self.assertAlmostEqual(scores["error_rest"], float(ordered[k:].mean()), places=12)
        self.assertGreater(scores["error_top10"], scores["error_rest"])
        self.assertAlmostEqual(scores["error_ratio"], scores["error_top10"] / scores["error_rest"], places=12)
        self.assertGreater(scores["error_ratio"], 1.0)

    def test_anti_correlated(self):
        error = torch.linspace(0, 1, 1000)
        scores = uncertainty_scores(error, torch.zeros(1000), std=1.0 - error)
        self.assertEqual(scores["uncertainty_spearman"], -1.0)
        self.assertLess(scores["error_ratio"], 1.0)

    def test_independent_std(self):
        # a std drawn independently of the error: under independence Spearman's rho has mean 0 and standard error
        # 1 / sqrt(n - 1); 5 standard errors (p ~ 6e-7 two-sided) bound it; the two error means agree within a few
        # standard errors of a mean of uniform(0, 1) errors (std 1/sqrt(12)) over the top k voxels
        n = 200_000
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            truth = torch.rand(n, generator=g, dtype=torch.float64)
            pred = truth + torch.rand(n, generator=g, dtype=torch.float64)  # error uniform in (0, 1)
            std = torch.rand(n, generator=g, dtype=torch.float64)
            scores = uncertainty_scores(pred, truth, std)
            self.assertLess(abs(scores["uncertainty_spearman"]), 5.0 / math.sqrt(n - 1))
            k = math.ceil(0.1 * n)
            se = math.sqrt(1 / 12) * math.sqrt(1 / k + 1 / (n - k))
            self.assertLess(abs(scores["error_top10"] - scores["error_rest"]), 5.0 * se)
            self.assertAlmostEqual(scores["error_ratio"], 1.0, delta=0.03)

    def test_ties_share_places(self):
        # std ties at the cut: the tied voxels share the places left, whatever their order
        std = torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
        error = torch.tensor([10.0, 1.0, 2.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
        top, rest = uncertainty_error_split(std, error, fraction=0.2)  # k = 2: the 3.0 voxel and 1 of 3 tied at 2.0
        self.assertAlmostEqual(top, (10.0 + 3.0) / 2, places=12)  # the tied group's mean error is 3
        self.assertAlmostEqual(rest, (20.0 - 13.0) / 8, places=12)  # the error sums to 20
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
        self.assertEqual(uncertainty_error_split(std[perm], error[perm], fraction=0.2), (top, rest))
        # a constant std carries no information: both means are the overall mean (ratio 1)
        flat = uncertainty_scores(error, torch.zeros(10), std=torch.zeros(10))
        self.assertAlmostEqual(flat["error_top10"], 2.0, places=12)
        self.assertAlmostEqual(flat["error_rest"], 2.0, places=12)
        self.assertAlmostEqual(flat["error_ratio"], 1.0, places=12)
        self.assertTrue(math.isnan(flat["uncertainty_spearman"]))

    def test_mask(self):
        g = torch.Generator().manual_seed(1)
        pred, truth, std = (torch.rand(8, 8, 4, generator=g) for _ in range(3))
        mask = torch.zeros(8, 8, 4, dtype=torch.bool)
        mask[2:6, 1:7] = True
        scores = uncertainty_scores(pred, truth, std, mask)
        reference = uncertainty_scores(pred[mask], truth[mask], std[mask])
        self.assertEqual(scores, reference)

    def test_degenerate(self):
        scores = uncertainty_scores(torch.ones(3), torch.ones(3), torch.ones(3), torch.tensor([True, False, False]))
        self.assertTrue(all(math.isnan(scores[n]) for n in UNCERTAINTY_NAMES))
        zero = uncertainty_scores(torch.ones(20), torch.ones(20), torch.rand(20))  # an exact synthesis
        self.assertEqual((zero["error_top10"], zero["error_rest"]), (0.0, 0.0))
        self.assertTrue(math.isnan(zero["error_ratio"]))
        with self.assertRaisesRegex(ValueError, "fraction"):
            uncertainty_error_split(torch.ones(4), torch.ones(4), fraction=1.0)
        with self.assertRaisesRegex(ValueError, "one shape"):
            uncertainty_scores(torch.ones(3), torch.ones(3), torch.ones(4))


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    truth = -torch.ones(2, 4, 16, 16, 6)
    truth[:, :, 3:13, 2:14, 1:5] = torch.rand(2, 4, 10, 12, 4, generator=g)
    pred = truth + 0.2 * (torch.rand(truth.shape, generator=g) - 0.5)
    std = (pred - truth).abs() + 0.05 * torch.rand(truth.shape, generator=g)  # informative, not exact
    return {
        "image": truth,
        "label": truth,
        "pred": pred,
        "pred_std": std,
        "available": torch.tensor([[True, True, True, False], [False, True, False, True]]),
        "case": ["a", "b"],
    }


class TestSynthesisUncertaintyMetric(unittest.TestCase):
    def test_values(self):
        batch = _batch()
        out = SynthesisUncertaintyMetric()(
            batch["pred"], batch["label"], available=batch["available"], std=batch["pred_std"]
        )
        self.assertEqual(tuple(out.shape), (2, 4, len(UNCERTAINTY_NAMES)))
        for b in range(2):
            brain = brain_mask_from_available(batch["label"][b], batch["available"][b])
            self.assertEqual(int(brain.sum()), 10 * 12 * 4)  # the voxels outside are -1 in every contrast
            for c in range(4):
                if batch["available"][b, c]:
                    self.assertTrue(bool(out[b, c].isnan().all()))
                    continue
                ref = uncertainty_scores(batch["pred"][b, c], batch["label"][b, c], batch["pred_std"][b, c], brain)
                np.testing.assert_allclose(out[b, c].numpy(), [ref[n] for n in UNCERTAINTY_NAMES], rtol=1e-12)
                self.assertGreater(float(out[b, c, 0]), 0.5)  # the std map follows the error
                self.assertGreater(float(out[b, c, 3]), 1.0)

    def test_aggregate(self):
        batch = _batch()
        metric = SynthesisUncertaintyMetric()
        metric(batch["pred"], batch["label"], available=batch["available"], std=batch["pred_std"])
        values = metric.get_buffer()[..., 0]
        self.assertAlmostEqual(metric.aggregate(), float(values[~batch["available"]].mean()), places=12)

    def test_errors(self):
        batch = _batch()
        metric = SynthesisUncertaintyMetric()
        with self.assertRaisesRegex(ValueError, "standard deviation 'std'"):
            metric(batch["pred"], batch["label"], available=batch["available"])
        with self.assertRaisesRegex(ValueError, "std of shape"):
            metric(batch["pred"], batch["label"], available=batch["available"], std=batch["pred_std"][:, :2])
        with self.assertRaisesRegex(ValueError, "availability"):
            metric(batch["pred"], batch["label"], std=batch["pred_std"])
        with self.assertRaisesRegex(ValueError, "fraction"):
            SynthesisUncertaintyMetric(fraction=0.0)


class TestUncertaintyThroughHandlers(unittest.TestCase):
    """The std map reaches the metric from the evaluator OUTPUT (``output_keys``), and the writer adds the columns."""

    @parameterized.expand([(False,), (True,)])
    def test_output_keys(self, decollated):
        batch = _batch()

        def step(engine, data):
            if decollated:
                engine.state.batch = decollate_batch(data)
                return [{k: d[k] for k in ("pred", "label", "pred_std")} for d in engine.state.batch]
            return {k: data[k] for k in ("pred", "label", "pred_std")}

        engine = Engine(step)
        ExtraInputMetricHandler(
            SynthesisUncertaintyMetric(), extra_keys="available", output_keys={"std": "pred_std"}
        ).attach(engine, "uncertainty")
        engine.run([batch])
        expected = SynthesisUncertaintyMetric()(
            batch["pred"], batch["label"], available=batch["available"], std=batch["pred_std"]
        )
        torch.testing.assert_close(engine.state.metric_details["uncertainty"], expected, equal_nan=True)

    def test_missing_output_key(self):
        batch = _batch()
        engine = Engine(lambda e, d: {"pred": d["pred"], "label": d["label"]})
        ExtraInputMetricHandler(
            SynthesisUncertaintyMetric(), extra_keys="available", output_keys={"std": "pred_std"}
        ).attach(engine, "uncertainty")
        with self.assertRaisesRegex(KeyError, "'pred_std'"):
            engine.run([batch])

    def test_writer_columns(self):
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        batch = _batch()
        engine = Engine(lambda e, d: {k: d[k] for k in ("pred", "label", "pred_std")})
        for name, metric in (
            ("slice_psnr_ssim", BrainSlicePSNRSSIMMetric()),
            ("volume_ssim", RegionVolumeSSIMMetric()),
            ("sharpness", SynthesisSharpnessMetric()),
        ):
            ExtraInputMetricHandler(metric, "available").attach(engine, name)
        ExtraInputMetricHandler(
            SynthesisUncertaintyMetric(), extra_keys="available", output_keys={"std": "pred_std"}
        ).attach(engine, "uncertainty")
        writer = SynthesisMetricsWriter(out)
        writer.attach(engine)
        engine.run([batch])
        expected = engine.state.metric_details["uncertainty"]
        self.assertEqual(len(writer.rows), 3)  # item 0 misses flair, item 1 misses t1 and t2
        for row, (b, c) in zip(writer.rows, [(0, 3), (1, 0), (1, 2)]):
            for k, name in enumerate(UNCERTAINTY_NAMES):
                self.assertEqual(row[name], float(expected[b, c, k]))
        with open(os.path.join(out, "metrics.csv")) as f:
            header = f.readline().strip().split(",")
        self.assertEqual(header[-len(UNCERTAINTY_NAMES) :], list(UNCERTAINTY_NAMES))
        self.assertFalse(any(h.startswith("dice") for h in header))
        with open(os.path.join(out, "metrics.md")) as f:
            md = f.read()
        self.assertIn("## Uncertainty", md)
        self.assertNotIn("Downstream Dice", md)


if __name__ == "__main__":
    unittest.main()
