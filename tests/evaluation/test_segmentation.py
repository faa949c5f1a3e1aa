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
import math
import os
import shutil
import tempfile
import unittest

import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.inferers import SimpleInferer
from monai.metrics import DiceMetric
from parameterized import parameterized

from monai_msgldm.evaluation import (
    DOWNSTREAM_DICE_NAMES,
    BrainSlicePSNRSSIMMetric,
    DownstreamDiceMetric,
    ExtraInputMetricHandler,
    RegionVolumeSSIMMetric,
    SynthesisMetricsWriter,
    SynthesisSharpnessMetric,
    complete_case,
    load_segmenter,
    region_dice,
    segment_case,
)

__all__: list[str] = []

SHAPE = (16, 16, 8)


def _box(x0: int, x1: int, y0: int, y1: int, z0: int, z1: int, shape=SHAPE) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[x0:x1, y0:y1, z0:z1] = True
    return mask


def _closed_form(a: torch.Tensor, b: torch.Tensor) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


class ThresholdSegmenter(nn.Module):
    """A stand-in 2D segmenter: region ``r`` is where input channel ``sources[r]`` is above 0.5 (logits
    ``50 (x - 0.5)``, so the sigmoid is above 0.5 exactly there). Counts its calls and the slices it saw."""

    def __init__(self, sources=(1, 3, 2), spatial_dims: int = 2) -> None:
        super().__init__()
        self.sources = list(sources)
        self.spatial_dims = spatial_dims
        self.scale = nn.Parameter(torch.tensor(50.0), requires_grad=False)
        self.calls = 0
        self.slices = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 + self.spatial_dims:
            raise ValueError(f"ThresholdSegmenter expects {self.spatial_dims}D inputs, got {tuple(x.shape)}.")
        self.calls += 1
        self.slices += x.shape[0] if self.spatial_dims == 2 else x.shape[0] * x.shape[-1]
        return self.scale * (x[:, self.sources] - 0.5)


# the label: TC, WT, ET boxes (ET inside TC inside WT, as the BraTS regions nest)
WT = _box(3, 13, 3, 13, 1, 7)  # 600 voxels
TC = _box(5, 11, 5, 11, 2, 6)  # 144
ET = _box(6, 10, 6, 10, 3, 5)  # 32


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    """Real contrasts (4, *SHAPE) that the stand-in segments exactly (t1ce = TC, flair = WT, t2 = ET inside a brain
    at 0) and the (3, *SHAPE) label."""
    truth = -torch.ones(4, *SHAPE)
    truth[:, 1:15, 1:15, :] = 0.0
    truth[1][TC] = 1.0
    truth[3][WT] = 1.0
    truth[2][ET] = 1.0
    return truth, torch.stack([TC, WT, ET]).float()


class TestRegionDice(unittest.TestCase):
    @parameterized.expand(
        [
            ("half_overlap", _box(0, 4, 0, 4, 0, 4), _box(2, 6, 0, 4, 0, 4)),  # 32 of 64 + 64: 0.5
            ("inside", _box(0, 2, 0, 2, 0, 2), _box(0, 4, 0, 4, 0, 4)),  # 2 * 8 / (8 + 64)
            ("disjoint", _box(0, 2, 0, 2, 0, 2), _box(8, 10, 8, 10, 4, 6)),
            ("equal", _box(1, 9, 2, 5, 0, 8), _box(1, 9, 2, 5, 0, 8)),
            ("unequal_sizes", _box(0, 16, 0, 3, 0, 1), _box(5, 7, 0, 16, 0, 8)),  # 6 of 48 + 256
        ]
    )
    def test_closed_form(self, _, a, b):
        expected = _closed_form(a, b)
        self.assertAlmostEqual(float(region_dice(a[None], b[None])[0]), expected, places=6)
        # and MONAI's DiceMetric itself on the same masks
        monai = DiceMetric(include_background=True, reduction="none")(a[None, None].float(), b[None, None].float())
        self.assertAlmostEqual(float(monai[0, 0]), expected, places=6)

    def test_channels(self):
        a = torch.stack([_box(0, 4, 0, 4, 0, 4), _box(0, 2, 0, 2, 0, 2), WT])
        b = torch.stack([_box(2, 6, 0, 4, 0, 4), _box(0, 4, 0, 4, 0, 4), TC])
        dice = region_dice(a, b)
        self.assertEqual(dice.dtype, torch.float64)
        expected = [0.5, 16 / 72, 2 * 144 / (600 + 144)]
        for d, e, ab in zip(dice.tolist(), expected, zip(a, b)):
            self.assertAlmostEqual(d, e, places=6)
            self.assertAlmostEqual(d, _closed_form(*ab), places=6)

    def test_empty_label(self):
        empty, some = torch.zeros(1, *SHAPE, dtype=torch.bool), ET[None]
        # BraTS convention (default): both empty 1, a false positive on an empty label 0
        self.assertEqual(region_dice(empty, empty).tolist(), [1.0])
        self.assertEqual(region_dice(some, empty).tolist(), [0.0])
        self.assertEqual(region_dice(empty, some).tolist(), [0.0])
        self.assertTrue(math.isnan(float(region_dice(empty, empty, ignore_empty=True)[0])))

    def test_shapes(self):
        with self.assertRaisesRegex(ValueError, "one \\(C, \\*S\\) shape"):
            region_dice(torch.zeros(3, 4, 4), torch.zeros(2, 4, 4))


class TestCompleteAndSegment(unittest.TestCase):
    def test_complete_case(self):
        truth, synthesis = torch.rand(4, *SHAPE), torch.rand(4, *SHAPE)
        completed = complete_case(synthesis, truth, [True, False, True, False])
        torch.testing.assert_close(completed[[0, 2]], truth[[0, 2]], rtol=0, atol=0)
        torch.testing.assert_close(completed[[1, 3]], synthesis[[1, 3]], rtol=0, atol=0)
        with self.assertRaisesRegex(ValueError, "complete_case"):
            complete_case(synthesis, truth, [True, False])

    def test_slice_wise(self):
        truth, seg = _case()
        segmenter = ThresholdSegmenter()
        masks = segment_case(segmenter, truth)
        self.assertEqual(masks.dtype, torch.bool)
        self.assertTrue(torch.equal(masks, seg.bool()))
        self.assertEqual((segmenter.calls, segmenter.slices), (1, SHAPE[-1]))  # one batch of the 8 axial slices
        segmenter = ThresholdSegmenter()
        torch.testing.assert_close(segment_case(segmenter, truth, slice_batch_size=3), masks)
        self.assertEqual(segmenter.calls, 3)
        # a 3D segmenter runs on the whole volume with SimpleInferer
        masks_3d = segment_case(ThresholdSegmenter(spatial_dims=3), truth, inferer=SimpleInferer())
        self.assertTrue(torch.equal(masks_3d, masks))
        # one slice (M, H, W) goes in one call
        self.assertTrue(torch.equal(segment_case(ThresholdSegmenter(), truth[..., 3]), masks[..., 3]))

    def test_eval_mode_restored_no_grad(self):
        class GradProbe(ThresholdSegmenter):
            def forward(self, x):
                self.grad_enabled, self.was_training = torch.is_grad_enabled(), self.training
                return super().forward(x)

        segmenter = GradProbe().train()
        segment_case(segmenter, _case()[0])
        self.assertEqual((segmenter.grad_enabled, segmenter.was_training), (False, False))
        self.assertTrue(segmenter.training)


def _scenario_batch(available, synthesis_of_missing: dict[int, torch.Tensor], case="case_a"):
    truth, seg = _case()
    pred = torch.full_like(truth, 5.0)  # the given channels of the synthesis are garbage: they must not count
    for c, volume in synthesis_of_missing.items():
        pred[c] = volume
    return {
        "pred": pred[None],
        "label": truth[None],
        "available": torch.tensor([available]),
        "seg": seg[None],
        "case": [case],
    }


def _shifted(channel_mask: torch.Tensor, shift: int) -> torch.Tensor:
    """A volume at 0 in the brain, 1 in ``channel_mask`` moved by ``shift`` voxels along the first axis."""
    volume = torch.zeros(SHAPE)
    volume[torch.roll(channel_mask, shift, dims=0)] = 1.0
    return volume


class TestDownstreamDiceMetric(unittest.TestCase):
    def test_completed_vs_real(self):
        metric = DownstreamDiceMetric(ThresholdSegmenter())
        # scenario 1: flair missing, synthesized with the WT box moved by 2 voxels: WT Dice 2 * 480 / 1200 = 0.8
        flair = _shifted(WT, 2)
        b1 = _scenario_batch([True, True, True, False], {3: flair})
        out1 = metric(b1["pred"], b1["label"], available=b1["available"], seg=b1["seg"], case=b1["case"])
        self.assertEqual(tuple(out1.shape), (1, 4, len(DOWNSTREAM_DICE_NAMES)))
        self.assertTrue(bool(out1[0, :3].isnan().all()))
        wt = _closed_form(torch.roll(WT, 2, dims=0), WT)
        self.assertAlmostEqual(wt, 0.8)
        torch.testing.assert_close(out1[0, 3], torch.tensor([1.0, wt, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
        # scenario 2: t1ce and t2 missing; t1ce synthesized without any lesion (TC empty: 0), t2 with ET moved by 1
        # voxel (ET 2 * 24 / 64); the same six values on both missing rows, the real-contrast Dice unchanged
        b2 = _scenario_batch([True, False, False, True], {1: torch.zeros(SHAPE), 2: _shifted(ET, 1)})
        out2 = metric(b2["pred"], b2["label"], available=b2["available"], seg=b2["seg"], case=b2["case"])
        et = _closed_form(torch.roll(ET, 1, dims=0), ET)
        self.assertAlmostEqual(et, 0.75)
        expected = torch.tensor([0.0, 1.0, et, 1.0, 1.0, 1.0], dtype=torch.float64)
        for c in (1, 2):
            torch.testing.assert_close(out2[0, c], expected)
        self.assertTrue(bool(out2[0, [0, 3]].isnan().all()))
        # aggregate: the mean over scenarios of dice_wt, each scenario once (not once per missing row)
        self.assertAlmostEqual(metric.aggregate(), (wt + 1.0) / 2, places=12)
        self.assertEqual(tuple(metric.get_buffer().shape), (2, 4, 6))

    def test_real_dice_once_per_case(self):
        segmenter = ThresholdSegmenter()
        metric = DownstreamDiceMetric(segmenter)
        scenarios = [[True, True, True, False], [True, False, True, True], [False, True, True, True]]
        for available in scenarios:
            b = _scenario_batch(available, {c: torch.zeros(SHAPE) for c in range(4) if not available[c]})
            metric(b["pred"], b["label"], available=b["available"], seg=b["seg"], case=b["case"])
        self.assertEqual(segmenter.calls, 3 + 1)  # three completed cases, the real one once
        b = _scenario_batch(scenarios[0], {3: torch.zeros(SHAPE)}, case="case_b")
        metric(b["pred"], b["label"], available=b["available"], seg=b["seg"], case=b["case"])
        self.assertEqual(segmenter.calls, 4 + 2)  # a new case: its real Dice is computed
        metric.reset()
        metric(b["pred"], b["label"], available=b["available"], seg=b["seg"], case=b["case"])
        self.assertEqual(segmenter.calls, 6 + 2)  # reset forgets it
        # without case names it is recomputed for every item, with the same values
        plain = DownstreamDiceMetric(ThresholdSegmenter())
        out = plain(b["pred"], b["label"], available=b["available"], seg=b["seg"])
        self.assertEqual(plain.segmenter.calls, 2)
        torch.testing.assert_close(out, metric.get_buffer(), equal_nan=True)

    def test_batch_of_two(self):
        b1 = _scenario_batch([True, True, True, False], {3: _shifted(WT, 2)}, case="a")
        b2 = _scenario_batch([True, True, True, False], {3: _shifted(WT, 1)}, case="b")
        both = {k: torch.cat([b1[k], b2[k]]) if isinstance(b1[k], torch.Tensor) else b1[k] + b2[k] for k in b1}
        out = DownstreamDiceMetric(ThresholdSegmenter())(
            both["pred"], both["label"], available=both["available"], seg=both["seg"], case=both["case"]
        )
        self.assertAlmostEqual(float(out[0, 3, 1]), _closed_form(torch.roll(WT, 2, 0), WT), places=12)
        self.assertAlmostEqual(float(out[1, 3, 1]), _closed_form(torch.roll(WT, 1, 0), WT), places=12)

    def test_errors(self):
        b = _scenario_batch([True, True, True, False], {3: torch.zeros(SHAPE)})
        metric = DownstreamDiceMetric(ThresholdSegmenter())
        with self.assertRaisesRegex(ValueError, "label 'seg'"):
            metric(b["pred"], b["label"], available=b["available"])
        with self.assertRaisesRegex(ValueError, "seg of shape"):
            metric(b["pred"], b["label"], available=b["available"], seg=b["seg"][:, :2])
        with self.assertRaisesRegex(ValueError, "availability"):
            metric(b["pred"], b["label"], seg=b["seg"])
        with self.assertRaisesRegex(ValueError, "3 outputs"):
            DownstreamDiceMetric(ThresholdSegmenter(sources=(1, 3)))(
                b["pred"], b["label"], available=b["available"], seg=b["seg"]
            )
        with self.assertRaisesRegex(ValueError, "torch module"):
            DownstreamDiceMetric(None)


class TestLoadSegmenter(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def _net(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(4, 3, 3, padding=1))

    @parameterized.expand([("checkpoint_saver",), ("state_dict",)])
    def test_load(self, form):
        trained = self._net(0)
        state = trained.state_dict()
        path = os.path.join(self.dir, "segmenter.pt")
        torch.save({"model": state, "optimizer": {}, "trainer": {}} if form == "checkpoint_saver" else state, path)
        net = load_segmenter(self._net(1).train(), path)
        self.assertFalse(net.training)
        self.assertFalse(any(p.requires_grad for p in net.parameters()))
        for k, v in state.items():
            self.assertTrue(torch.equal(net.state_dict()[k], v), k)

    def test_missing_file(self):
        path = os.path.join(self.dir, "nowhere", "segmenter.pt")
        with self.assertRaises(FileNotFoundError) as ctx:
            load_segmenter(self._net(0), path)
        self.assertIn(path, str(ctx.exception))
        self.assertIn("--segmenter_checkpoint", str(ctx.exception))
        self.assertIn("train_segmenter.json", str(ctx.exception))

    def test_wrong_weights(self):
        path = os.path.join(self.dir, "segmenter.pt")
        torch.save({"model": nn.Conv2d(4, 2, 3).state_dict()}, path)
        with self.assertRaises(RuntimeError):
            load_segmenter(self._net(0), path)


class TestDownstreamDiceReport(unittest.TestCase):
    def test_writer(self):
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        batches = [
            _scenario_batch([True, True, True, False], {3: _shifted(WT, 2)}),
            _scenario_batch([True, False, False, True], {1: torch.zeros(SHAPE), 2: _shifted(ET, 1)}),
        ]
        engine = Engine(lambda e, d: {"pred": d["pred"], "label": d["label"]})
        inputs = {"available": "available", "seg": "seg", "case": "case"}
        ExtraInputMetricHandler(BrainSlicePSNRSSIMMetric(), inputs).attach(engine, "slice_psnr_ssim")
        ExtraInputMetricHandler(RegionVolumeSSIMMetric(), inputs).attach(engine, "volume_ssim")
        ExtraInputMetricHandler(SynthesisSharpnessMetric(), inputs).attach(engine, "sharpness")
        ExtraInputMetricHandler(DownstreamDiceMetric(ThresholdSegmenter()), inputs).attach(engine, "downstream_dice")
        writer = SynthesisMetricsWriter(out)
        writer.attach(engine)
        engine.run(batches)
        wt, et = _closed_form(torch.roll(WT, 2, 0), WT), _closed_form(torch.roll(ET, 1, 0), ET)
        self.assertEqual([(r["scenario"], r["target"]) for r in writer.rows],
                         [("t1+t1ce+t2->flair", "flair"), ("t1+flair->t1ce+t2", "t1ce"),
                          ("t1+flair->t1ce+t2", "t2")])  # fmt: skip
        self.assertAlmostEqual(writer.rows[0]["dice_wt"], wt, places=12)
        for row in writer.rows[1:]:
            self.assertEqual((row["dice_tc"], row["dice_wt"]), (0.0, 1.0))
            self.assertAlmostEqual(row["dice_et"], et, places=12)
        for row in writer.rows:
            self.assertEqual([row[f"dice_real_{r}"] for r in ("tc", "wt", "et")], [1.0, 1.0, 1.0])
        with open(os.path.join(out, "metrics.csv")) as f:
            header = f.readline().strip().split(",")
        self.assertEqual(header[-6:], list(DOWNSTREAM_DICE_NAMES))
        with open(os.path.join(out, "metrics.json")) as f:
            doc = json.load(f)
        self.assertEqual(doc["metrics"][-6:], list(DOWNSTREAM_DICE_NAMES))
        by_scenario = {e["scenario"]: e for e in doc["aggregate"]["downstream_dice_by_scenario"]}
        self.assertEqual(by_scenario["t1+flair->t1ce+t2"]["dice_et"]["n"], 1)  # one case, counted once
        self.assertAlmostEqual(by_scenario["t1+t1ce+t2->flair"]["dice_wt"]["mean"], wt, places=12)
        by_group = {e["group"]: e for e in doc["aggregate"]["downstream_dice_by_group"]}
        self.assertEqual(by_group["2->2"]["dice_real_wt"], {"mean": 1.0, "std": 0.0, "n": 1})
        with open(os.path.join(out, "metrics.md")) as f:
            md = f.read()
        self.assertIn("## Downstream Dice (BraSyn)", md)
        self.assertIn(f"| 3->1 | t1+t1ce+t2->flair | 1 | 100.00 ± 0.00 | {wt * 100:.2f} ± 0.00 | 100.00 ± 0.00 |", md)
        self.assertIn(f"| 2->2 | t1+flair->t1ce+t2 | 1 | 0.00 ± 0.00 | 100.00 ± 0.00 | {et * 100:.2f} ± 0.00 |", md)
        self.assertNotIn("## Uncertainty", md)


if __name__ == "__main__":
    unittest.main()
