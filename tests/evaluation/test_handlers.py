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
import unittest

import torch
from ignite.engine import Engine
from monai.data import decollate_batch
from parameterized import parameterized

from monai_msgldm.evaluation import (
    BrainSlicePSNRSSIMMetric,
    ExtraInputMetricHandler,
    RegionVolumeSSIMMetric,
    SynthesisMetricsWriter,
    SynthesisSharpnessMetric,
)

__all__: list[str] = []


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    truth = -torch.ones(2, 4, 16, 16, 12)
    truth[:, :, 2:14, 2:14, 2:10] = torch.rand(2, 4, 12, 12, 8, generator=g)
    seg = torch.zeros(2, 3, 16, 16, 12)
    seg[:, 1, 5:9, 5:9, 4:8] = 1.0
    return {
        "image": truth,
        "label": truth,
        "pred": (truth + 0.3 * torch.rand(truth.shape, generator=g) - 0.15).clamp(-1, 1),
        "available": torch.tensor([[True, True, True, False], [False, True, False, True]]),
        "seg": seg,
        "case": ["a", "b"],
    }


def _engine(decollated: bool) -> Engine:
    """An engine whose output is the batch's prediction and truth, collated or decollated (lists of items)."""

    def step(engine, batch):
        if decollated:
            engine.state.batch = decollate_batch(batch)
            return [{"pred": d["pred"], "label": d["label"]} for d in engine.state.batch]
        return {"pred": batch["pred"], "label": batch["label"]}

    return Engine(step)


class TestExtraInputMetricHandler(unittest.TestCase):
    @parameterized.expand([(False,), (True,)])
    def test_details_match_metric(self, decollated):
        batch = _batch()
        engine = _engine(decollated)
        ExtraInputMetricHandler(RegionVolumeSSIMMetric(), {"available": "available", "seg": "seg"}).attach(engine, "v")
        ExtraInputMetricHandler(BrainSlicePSNRSSIMMetric(), "available").attach(engine, "s")
        engine.run([batch, batch])
        volume = RegionVolumeSSIMMetric()(batch["pred"], batch["label"], available=batch["available"], seg=batch["seg"])
        torch.testing.assert_close(engine.state.metric_details["v"], torch.cat([volume, volume]), equal_nan=True)
        self.assertFalse(math.isnan(volume[0, 3, 1]))  # the tumour was handed over
        slices = BrainSlicePSNRSSIMMetric()(batch["pred"], batch["label"], available=batch["available"])
        torch.testing.assert_close(engine.state.metric_details["s"], torch.cat([slices, slices]), equal_nan=True)
        finite = slices[..., 1][~batch["available"]]
        self.assertAlmostEqual(engine.state.metrics["s"], float(finite.mean()), places=10)

    def test_absent_or_none_keys_are_left_out(self):
        batch = _batch()
        engine = _engine(False)
        ExtraInputMetricHandler(RegionVolumeSSIMMetric(), {"available": "available", "seg": None}).attach(engine, "v")
        ExtraInputMetricHandler(RegionVolumeSSIMMetric(), ["available", "mask"]).attach(engine, "w")
        engine.run([batch])
        for name in ("v", "w"):
            details = engine.state.metric_details[name]
            self.assertTrue(bool(details[..., 1:].isnan().all()))  # no seg: no tumour values
            self.assertFalse(bool(details[0, 3, 0].isnan()))

    def test_missing_availability(self):
        engine = _engine(False)
        ExtraInputMetricHandler(BrainSlicePSNRSSIMMetric()).attach(engine, "s")
        with self.assertRaisesRegex(ValueError, "availability mask"):
            engine.run([_batch()])


class TestSynthesisMetricsWriter(unittest.TestCase):
    def _run(self, writer, details_names=("slice_psnr_ssim", "volume_ssim", "sharpness")):
        engine = _engine(False)
        metrics = {
            "slice_psnr_ssim": BrainSlicePSNRSSIMMetric(),
            "volume_ssim": RegionVolumeSSIMMetric(),
            "sharpness": SynthesisSharpnessMetric(),
        }
        for name in details_names:
            ExtraInputMetricHandler(metrics[name], {"available": "available", "seg": "seg"}).attach(engine, name)
        writer.attach(engine)
        engine.run([_batch()])
        return engine

    def test_rows(self):
        writer = SynthesisMetricsWriter()
        engine = self._run(writer)
        self.assertEqual(
            [(r["case"], r["scenario"], r["group"], r["target"]) for r in writer.rows],
            [("a", "t1+t1ce+t2->flair", "3->1", "flair"), ("b", "t1ce+flair->t1+t2", "2->2", "t1"),
             ("b", "t1ce+flair->t1+t2", "2->2", "t2")],
        )  # fmt: skip
        slices, volume = engine.state.metric_details["slice_psnr_ssim"], engine.state.metric_details["volume_ssim"]
        for row, (i, c) in zip(writer.rows, ((0, 3), (1, 0), (1, 2))):
            self.assertEqual(row["num_slices"], 8)
            self.assertIsInstance(row["num_slices"], int)
            self.assertEqual([row["psnr"], row["ssim"]], slices[i, c, 1:].tolist())
            self.assertEqual([row["ssim3d_brain"], row["ssim3d_healthy"]], volume[i, c, [0, 2]].tolist())
            self.assertEqual(row["sharpness"], engine.state.metric_details["sharpness"][i, c, 0].item())
            self.assertTrue(math.isfinite(row["sharpness"]))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "details of metric 'volume_ssim'"):
            self._run(SynthesisMetricsWriter(), details_names=("slice_psnr_ssim",))
        with self.assertRaisesRegex(ValueError, "details of metric 'sharpness'"):
            self._run(SynthesisMetricsWriter(), details_names=("slice_psnr_ssim", "volume_ssim"))
        with self.assertRaisesRegex(ValueError, "of shape \\(2, 4, 2\\)"):
            self._run(SynthesisMetricsWriter(metric_columns={"slice_psnr_ssim": ("num_slices", "psnr")}))


if __name__ == "__main__":
    unittest.main()
