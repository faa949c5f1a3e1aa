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
from parameterized import parameterized

from monai_msgldm.evaluation import (
    BrainSlicePSNRSSIMMetric,
    RegionVolumeSSIMMetric,
    brain_mask_from_available,
    finite_stats,
    masked_slice_psnr_ssim,
    percentile_rescale,
    volume_ssim_by_region,
)

__all__: list[str] = []


def _volume(seed: int = 0, shape=(24, 24, 6)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def _constant_ssim(a: float, b: float, data_range: float) -> float:
    """SSIM of two constant images: the contrast-structure term is C2 / C2 = 1, the luminance term is left."""
    c1 = (0.01 * data_range) ** 2
    return (2 * a * b + c1) / (a * a + b * b + c1)


class TestFiniteStats(unittest.TestCase):
    def test_values(self):
        self.assertEqual(finite_stats([1.0, 3.0, math.inf, math.nan, None]), {"mean": 2.0, "std": 1.0, "n": 2})
        self.assertEqual(
            finite_stats(torch.tensor([[2.0, math.nan], [4.0, -math.inf]])), {"mean": 3.0, "std": 1.0, "n": 2}
        )
        self.assertEqual(finite_stats([math.nan]), {"mean": None, "std": None, "n": 0})


class TestBrainMask(unittest.TestCase):
    def test_available_only(self):
        image = -torch.ones(3, 4, 4)
        image[0, 0, 0] = 0.5  # brain only in channel 0
        image[1, 1, 1] = 0.5  # channel 1 is not available: ignored
        mask = brain_mask_from_available(image, [True, False, True])
        expected = torch.zeros(4, 4, dtype=torch.bool)
        expected[0, 0] = True
        torch.testing.assert_close(mask, expected)
        with self.assertRaisesRegex(ValueError, "available"):
            brain_mask_from_available(image, [False, False, False])
        with self.assertRaisesRegex(ValueError, "available"):
            brain_mask_from_available(image, [True, False])


class TestSliceMetrics(unittest.TestCase):
    def test_identical(self):
        x = _volume()
        psnr, ssim, n = masked_slice_psnr_ssim(x, x.clone(), torch.ones_like(x, dtype=torch.bool))
        self.assertEqual((psnr, n), (math.inf, 6))
        self.assertAlmostEqual(ssim, 1.0, places=5)

    @parameterized.expand([(0.5, 0.3), (-0.2, 0.4), (0.9, 0.8)])
    def test_constant_closed_form(self, truth_value, pred_value):
        truth = torch.full((16, 16, 3), truth_value)
        pred = torch.full((16, 16, 3), pred_value)
        psnr, ssim, n = masked_slice_psnr_ssim(pred, truth, torch.ones_like(truth, dtype=torch.bool))
        mse = (truth_value - pred_value) ** 2
        self.assertAlmostEqual(psnr, 10 * math.log10(4.0 / mse), places=3)
        # float32 variances (E[x^2] - mu^2) are not exactly 0: a few 1e-5 off the closed form
        self.assertAlmostEqual(ssim, _constant_ssim(pred_value, truth_value, 2.0), delta=1e-4)
        self.assertEqual(n, 3)

    def test_known_psnr(self):
        x = _volume().clamp(-0.5, 0.5)
        # constant error 0.2 everywhere: MSE 0.04, PSNR = 10 log10(2^2 / 0.04) = 20 dB
        psnr, _, _ = masked_slice_psnr_ssim(x + 0.2, x, torch.ones_like(x, dtype=torch.bool))
        self.assertAlmostEqual(psnr, 20.0, places=3)

    def test_mask_handling(self):
        x = _volume()
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[4:20, 4:20, 1:4] = True  # brain in slices 1..3 only
        pred = x.clone()
        pred[~mask] = 0.7  # errors outside the brain are ignored (set to -1 in both)
        psnr, ssim, n = masked_slice_psnr_ssim(pred, x, mask)
        self.assertEqual((psnr, n), (math.inf, 3))
        self.assertAlmostEqual(ssim, 1.0, places=5)
        # an error of 0.5 at one brain voxel of slice 2: its PSNR is 10 log10(4 * 576 / 0.25); the mean is still inf
        pred[10, 10, 2] = x[10, 10, 2] + 0.5 if x[10, 10, 2] < 0.5 else x[10, 10, 2] - 0.5
        psnr, _, _ = masked_slice_psnr_ssim(pred[..., 2:3], x[..., 2:3], mask[..., 2:3])
        self.assertAlmostEqual(psnr, 10 * math.log10(4 * 576 / 0.25), places=3)
        self.assertEqual(masked_slice_psnr_ssim(pred, x, mask)[0], math.inf)
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

    def test_mask_and_constant(self):
        x = torch.cat([torch.full((100,), -10.0), torch.linspace(0, 1, 101)])
        mask = x >= 0
        out = percentile_rescale(x, 0.0, 100.0, mask=mask)
        torch.testing.assert_close(out[mask], torch.linspace(0, 1, 101))
        torch.testing.assert_close(out[~mask], torch.zeros(100))
        torch.testing.assert_close(percentile_rescale(torch.ones(5)), torch.zeros(5))
        with self.assertRaisesRegex(ValueError, "lower"):
            percentile_rescale(x, 50.0, 10.0)
        with self.assertRaisesRegex(ValueError, "mask"):
            percentile_rescale(x, mask=torch.zeros_like(x, dtype=torch.bool))


def _two_region_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volumes whose SSIM is known in closed form in two regions (data range 1 after the percentile rescaling):

    truth is 1 except a slab of 0 (x < 3); the prediction is the truth with the block [8, 20)^3 set to 0.5. Both
    have 0.5- and 99.5-percentiles 0 and 1, so the rescaling changes nothing. Every 11^3 window centred in the
    "tumour" [13, 15)^3 lies in the block (prediction 0.5, truth 1, no variance): SSIM = (2 * 0.5 + C1) /
    (0.5^2 + 1 + C1). Every window centred at x >= 25 sees 1 in both volumes: SSIM 1 (the "healthy" brain)."""
    truth = torch.ones(32, 32, 32)
    truth[:3] = 0.0
    pred = truth.clone()
    pred[8:20, 8:20, 8:20] = 0.5
    tumour = torch.zeros_like(truth, dtype=torch.bool)
    tumour[13:15, 13:15, 13:15] = True
    brain = tumour.clone()
    brain[25:] = True
    return pred, truth, brain, tumour


class TestVolumeSSIM(unittest.TestCase):
    def test_identical_and_invariance(self):
        x = _volume(1, (16, 16, 16))
        brain = torch.ones_like(x, dtype=torch.bool)
        out = volume_ssim_by_region(x, x, brain)
        self.assertAlmostEqual(out["ssim3d_brain"], 1.0, places=5)
        self.assertTrue(math.isnan(out["ssim3d_tumour"]) and math.isnan(out["ssim3d_healthy"]))
        # each volume is rescaled to its own percentiles: a positive affine map of the truth scores 1
        self.assertAlmostEqual(volume_ssim_by_region(3 * x + 7, x, brain)["ssim3d_brain"], 1.0, places=4)

    def test_regions_closed_form(self):
        pred, truth, brain, tumour = _two_region_case()
        out = volume_ssim_by_region(pred, truth, brain, tumour)
        inside = _constant_ssim(0.5, 1.0, 1.0)
        # float32 variances over 11^3 windows are a few 1e-7 off 0, against C2 = 9e-4: up to ~1e-3 off the closed form
        self.assertAlmostEqual(out["ssim3d_tumour"], inside, delta=1e-3)
        self.assertAlmostEqual(out["ssim3d_healthy"], 1.0, delta=1e-3)
        n_tumour, n_healthy = int(tumour.sum()), int((brain & ~tumour).sum())
        weighted = (n_tumour * out["ssim3d_tumour"] + n_healthy * out["ssim3d_healthy"]) / (n_tumour + n_healthy)
        self.assertAlmostEqual(out["ssim3d_brain"], weighted, places=6)
        # no tumour voxel: NaN inside, and the healthy brain is the whole brain
        empty = volume_ssim_by_region(pred, truth, brain, torch.zeros_like(brain))
        self.assertTrue(math.isnan(empty["ssim3d_tumour"]))
        self.assertEqual(empty["ssim3d_healthy"], empty["ssim3d_brain"])
        with self.assertRaisesRegex(ValueError, "tumour_mask"):
            volume_ssim_by_region(pred, truth, brain, tumour[:8])
        with self.assertRaisesRegex(ValueError, "kernel_size"):
            volume_ssim_by_region(pred, truth, brain, kernel_size=4)


def _batch(seed: int = 0, shape=(2, 4, 16, 16, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """A truth batch with a brain block (the rest at the -1 background) and a prediction off by noise."""
    g = torch.Generator().manual_seed(seed)
    truth = -torch.ones(shape)
    truth[:, :, 3:13, 3:13] = torch.rand(*shape[:2], 10, 10, *shape[4:], generator=g) * 0.5
    pred = truth + 0.2 * torch.rand(shape, generator=g) - 0.1
    return pred, truth


class TestBrainSlicePSNRSSIMMetric(unittest.TestCase):
    def test_values_match_function(self):
        pred, truth = _batch()
        available = torch.tensor([[True, True, True, False], [True, False, False, True]])
        metric = BrainSlicePSNRSSIMMetric()
        out = metric(pred, truth, available=available)
        self.assertEqual(tuple(out.shape), (2, 4, 3))
        self.assertTrue(bool(out[available].isnan().all()))
        psnrs = []
        for b in range(2):
            brain = brain_mask_from_available(truth[b], available[b])
            for c in torch.nonzero(~available[b]).flatten().tolist():
                psnr, ssim, n = masked_slice_psnr_ssim(pred[b, c], truth[b, c], brain)
                self.assertEqual(out[b, c].tolist(), [n, psnr, ssim])
                psnrs.append(psnr)
        self.assertEqual(len(psnrs), 3)
        self.assertAlmostEqual(metric.aggregate(), sum(psnrs) / 3, places=10)
        # a second batch accumulates; reset empties the buffer
        metric(pred[:1], truth[:1], available=available[:1])
        self.assertEqual(tuple(metric.get_buffer().shape), (3, 4, 3))
        metric.reset()
        with self.assertRaisesRegex(ValueError, "no batch"):
            metric.aggregate()

    def test_2d_slices(self):
        pred, truth = _batch(1, (2, 4, 16, 16))
        available = torch.tensor([[True, False, True, True]] * 2)
        out = BrainSlicePSNRSSIMMetric()(pred, truth, available=available)
        ref = BrainSlicePSNRSSIMMetric()(pred[..., None], truth[..., None], available=available)
        torch.testing.assert_close(out, ref, equal_nan=True)
        self.assertEqual(out[:, 1, 0].tolist(), [1.0, 1.0])

    def test_errors(self):
        pred, truth = _batch()
        metric = BrainSlicePSNRSSIMMetric()
        with self.assertRaisesRegex(ValueError, "availability mask"):
            metric(pred, truth)
        with self.assertRaisesRegex(ValueError, "available of shape"):
            metric(pred, truth, available=torch.ones(2, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "one \\(B, M, \\*spatial\\) shape"):
            metric(pred, truth[:1], available=torch.ones(2, 4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "min_brain_voxels"):
            BrainSlicePSNRSSIMMetric(min_brain_voxels=0)


class TestRegionVolumeSSIMMetric(unittest.TestCase):
    def test_values_match_function(self):
        pred, truth = _batch(2, (2, 4, 16, 16, 16))
        seg = torch.zeros(2, 3, 16, 16, 16)
        seg[0, 1, 5:9, 5:9, 5:9] = 1.0  # whole tumour (channel 1) of item 0; item 1 has none
        seg[1, 0, 5:9, 5:9, 5:9] = 1.0  # another channel: not the tumour
        available = torch.tensor([[True, True, True, False], [False, True, True, True]])
        metric = RegionVolumeSSIMMetric()
        out = metric(pred, truth, available=available, seg=seg)
        self.assertEqual(tuple(out.shape), (2, 4, 3))
        self.assertTrue(bool(out[available].isnan().all()))
        for b, c in ((0, 3), (1, 0)):
            brain = brain_mask_from_available(truth[b], available[b])
            ref = volume_ssim_by_region(pred[b, c], truth[b, c], brain, seg[b, 1] > 0.5)
            expected = torch.tensor([ref[k] for k in RegionVolumeSSIMMetric.value_names], dtype=torch.float64)
            torch.testing.assert_close(out[b, c], expected, equal_nan=True, rtol=0, atol=0)
        self.assertTrue(math.isnan(out[1, 0, 1]))  # no tumour in item 1
        self.assertAlmostEqual(metric.aggregate(), (out[0, 3, 0].item() + out[1, 0, 0].item()) / 2, places=10)
        no_seg = RegionVolumeSSIMMetric()(pred, truth, available=available)
        torch.testing.assert_close(no_seg[..., 0], out[..., 0], equal_nan=True)
        self.assertTrue(bool(no_seg[..., 1:].isnan().all()))

    def test_closed_form(self):
        pred, truth, brain, tumour = _two_region_case()
        # channel 0 is available and holds the brain (> -1 there, -1 elsewhere); channel 1 is the target
        given = torch.where(brain, 0.0, -1.0)
        seg = torch.stack([torch.zeros_like(truth), tumour.float()])[None]
        out = RegionVolumeSSIMMetric()(
            torch.stack([given, pred])[None], torch.stack([given, truth])[None], available=[[True, False]], seg=seg
        )
        expected = volume_ssim_by_region(pred, truth, brain, tumour)
        self.assertAlmostEqual(float(out[0, 1, 1]), _constant_ssim(0.5, 1.0, 1.0), delta=1e-3)
        self.assertEqual(out[0, 1].tolist(), [expected[k] for k in RegionVolumeSSIMMetric.value_names])

    def test_errors(self):
        pred, truth = _batch()
        available = torch.ones(2, 4, dtype=torch.bool)
        with self.assertRaisesRegex(ValueError, "\\(B, M, H, W, D\\) volumes"):
            RegionVolumeSSIMMetric()(pred[..., 0], truth[..., 0], available=available)
        with self.assertRaisesRegex(ValueError, "tumour_channel=1"):
            RegionVolumeSSIMMetric()(pred, truth, available=available, seg=torch.zeros(2, 1, 16, 16, 4))
        with self.assertRaisesRegex(ValueError, "tumour_channel"):
            RegionVolumeSSIMMetric(tumour_channel=-1)


if __name__ == "__main__":
    unittest.main()
