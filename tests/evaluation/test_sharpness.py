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
"""The sharpness ratio: closed forms, a hand-computed example, blurred against sharpened images, and the metric."""

from __future__ import annotations

import math
import unittest

import torch
from monai.transforms import GaussianSmooth
from parameterized import parameterized

from monai_msgldm.evaluation import (
    DEFAULT_METRIC_COLUMNS,
    ROW_KEYS,
    SHARPNESS_NAMES,
    SynthesisSharpnessMetric,
    brain_mask_from_available,
    sharpness_ratio,
)

__all__: list[str] = []


def _image(seed: int = 0, shape=(24, 24, 6)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def _blurred(image: torch.Tensor, sigma: float) -> torch.Tensor:
    return GaussianSmooth(sigma=sigma)(image[None])[0].as_tensor()


class TestSharpnessRatio(unittest.TestCase):
    @parameterized.expand([(0, (24, 24, 6)), (1, (17, 9)), (2, (5, 7, 1))])
    def test_identical_is_one(self, seed, shape):
        x = _image(seed, shape)
        self.assertEqual(sharpness_ratio(x, x.clone()), 1.0)
        mask = _image(seed + 10, shape) > 0
        self.assertEqual(sharpness_ratio(x, x.clone(), mask), 1.0)

    @parameterized.expand([(2.0, 0.0), (0.5, 3.0), (-1.5, 0.25), (-1.0, 0.0), (0.0, 0.7)])
    def test_affine_closed_form(self, a, b):
        # the gradient of a * truth + b is a times the truth's: the ratio is |a| wherever the mean is taken
        truth = _image(3).double()  # a * truth + b exact to float64 rounding
        mask = _image(4) > -0.5
        self.assertAlmostEqual(sharpness_ratio(a * truth + b, truth), abs(a), places=12)
        self.assertAlmostEqual(sharpness_ratio(a * truth + b, truth, mask), abs(a), places=12)

    def test_hand_computed_2d(self):
        # a spike of 4 in the middle of a 3x3 image; torch.gradient: central differences inside, one-sided at the border
        pred = torch.tensor([[0.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
        grad_h, grad_w = torch.gradient(pred, dim=(0, 1))
        torch.testing.assert_close(grad_h, torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, -4.0, 0.0]]))
        torch.testing.assert_close(grad_w, torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, -4.0], [0.0, 0.0, 0.0]]))
        # |grad pred| = 4 on the four neighbours of the spike, 0 elsewhere; the truth is a ramp along W: |grad| = 1
        truth = torch.arange(3.0).repeat(3, 1)
        self.assertAlmostEqual(sharpness_ratio(pred, truth), 16 / 9, places=12)
        plus = torch.tensor([[False, True, False], [True, True, True], [False, True, False]])
        self.assertAlmostEqual(sharpness_ratio(pred, truth, plus), 16 / 5, places=12)
        corners = torch.tensor([[True, False, True], [False, False, False], [True, False, True]])
        self.assertEqual(sharpness_ratio(pred, truth, corners), 0.0)
        # a steeper ramp along H (slope 3): the truth's mean magnitude is 3
        self.assertAlmostEqual(sharpness_ratio(pred, 3 * truth.T), 16 / 27, places=12)

    def test_slices_are_independent(self):
        # the last axis is the slice axis: differences between slices are no gradient
        ramp = torch.arange(8.0).repeat(8, 1)  # |grad| = 1 in every slice
        truth = torch.stack([ramp + 10 * k for k in range(4)], dim=-1)
        self.assertAlmostEqual(sharpness_ratio(truth[..., [2, 0, 3, 1]], truth), 1.0, places=12)
        steps = torch.ones(8, 8, 4) * torch.tensor([0.0, 5.0, -5.0, 1.0])  # constant in each slice
        self.assertEqual(sharpness_ratio(steps, truth), 0.0)

    @parameterized.expand([(0, 0.7), (1, 1.0), (2, 2.0)])
    def test_blurred_and_sharpened(self, seed, sigma):
        truth = _blurred(_image(seed, (32, 32, 8)), 0.5)  # some spatial structure, still detailed
        blurred = _blurred(truth, sigma)
        g = torch.Generator().manual_seed(seed + 100)
        noisy = truth + 0.3 * torch.randn(truth.shape, generator=g)  # high-frequency noise on top
        brain = torch.zeros(truth.shape, dtype=torch.bool)
        brain[4:28, 4:28] = True
        self.assertLess(sharpness_ratio(blurred, truth, brain), 1.0)
        self.assertGreater(sharpness_ratio(noisy, truth, brain), 1.0)
        self.assertLess(sharpness_ratio(_blurred(truth, 2 * sigma), truth), sharpness_ratio(blurred, truth))

    def test_equal_psnr(self):
        # a blurred synthesis and a noisy one with the same squared error are told apart
        truth = _blurred(_image(5, (32, 32, 4)), 0.5)
        blurred = _blurred(truth, 1.5)
        mse = float(((blurred - truth) ** 2).mean())
        g = torch.Generator().manual_seed(6)
        noise = torch.randn(truth.shape, generator=g)
        noisy = truth + noise * math.sqrt(mse / float((noise**2).mean()))
        self.assertAlmostEqual(float(((noisy - truth) ** 2).mean()), mse, places=6)
        self.assertLess(sharpness_ratio(blurred, truth), 1.0)
        self.assertGreater(sharpness_ratio(noisy, truth), 1.0)

    def test_nan(self):
        x = _image(7, (8, 8, 3))
        self.assertTrue(math.isnan(sharpness_ratio(x, x, torch.zeros(8, 8, 3, dtype=torch.bool))))
        self.assertTrue(math.isnan(sharpness_ratio(x, torch.full((8, 8, 3), 0.3))))  # the truth has no gradient
        inside = torch.zeros(8, 8, 3, dtype=torch.bool)
        inside[3:5, 3:5] = True
        flat_inside = x.clone()
        flat_inside[1:7, 1:7] = 0.5
        self.assertTrue(math.isnan(sharpness_ratio(x, flat_inside, inside)))

    @parameterized.expand(
        [
            ("pred 1d", (8,), (8,), None, "pred of shape"),
            ("pred 4d", (4, 4, 2, 2), (4, 4, 2, 2), None, "pred of shape"),
            ("thin slice", (1, 8, 3), (1, 8, 3), None, "pred of shape"),
            ("truth", (8, 8, 3), (8, 8, 2), None, "truth of pred's shape \\(8, 8, 3\\), got \\(8, 8, 2\\)"),
            ("mask", (8, 8, 3), (8, 8, 3), (8, 8), "mask of pred's shape \\(8, 8, 3\\), got \\(8, 8\\)"),
        ]
    )
    def test_shape_errors(self, _, pred_shape, truth_shape, mask_shape, message):
        mask = None if mask_shape is None else torch.ones(mask_shape, dtype=torch.bool)
        with self.assertRaisesRegex(ValueError, message):
            sharpness_ratio(torch.zeros(pred_shape), torch.zeros(truth_shape), mask)


def _batch(seed: int = 0, shape=(2, 4, 16, 16, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """A truth batch with a brain block (the rest at the -1 background) and a blurred prediction."""
    g = torch.Generator().manual_seed(seed)
    truth = -torch.ones(shape)
    truth[:, :, 3:13, 3:13] = torch.rand(*shape[:2], 10, 10, *shape[4:], generator=g) * 0.5
    pred = GaussianSmooth(sigma=1.0)(truth.flatten(0, 1)).as_tensor().reshape(shape)
    return pred, truth


class TestSynthesisSharpnessMetric(unittest.TestCase):
    @parameterized.expand([((2, 4, 16, 16, 4),), ((2, 4, 16, 16),)])
    def test_values_match_function(self, shape):
        pred, truth = _batch(0, shape)
        available = torch.tensor([[True, True, True, False], [True, False, False, True]])
        metric = SynthesisSharpnessMetric()
        out = metric(pred, truth, available=available)
        self.assertEqual(tuple(out.shape), (2, 4, 1))
        self.assertTrue(bool(out[available].isnan().all()))
        values = []
        for b in range(2):
            brain = brain_mask_from_available(truth[b], available[b])
            for c in torch.nonzero(~available[b]).flatten().tolist():
                expected = sharpness_ratio(pred[b, c], truth[b, c], brain)
                self.assertEqual(out[b, c, 0].item(), expected)
                self.assertLess(expected, 1.0)  # the prediction is blurred
                values.append(expected)
        self.assertEqual(len(values), 3)
        self.assertAlmostEqual(metric.aggregate(), sum(values) / 3, places=12)
        exact = SynthesisSharpnessMetric()(truth, truth, available=available)
        self.assertEqual(exact[~available].tolist(), [[1.0]] * 3)

    def test_columns(self):
        self.assertEqual(SynthesisSharpnessMetric.value_names, SHARPNESS_NAMES)
        self.assertEqual(DEFAULT_METRIC_COLUMNS["sharpness"], ("sharpness",))
        self.assertIn("sharpness", ROW_KEYS)

    def test_errors(self):
        pred, truth = _batch()
        metric = SynthesisSharpnessMetric()
        with self.assertRaisesRegex(ValueError, "availability mask"):
            metric(pred, truth)
        with self.assertRaisesRegex(ValueError, "available of shape"):
            metric(pred, truth, available=torch.ones(2, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "SynthesisSharpnessMetric expects y_pred"):
            metric(pred[..., None], truth[..., None], available=torch.ones(2, 4, dtype=torch.bool))


if __name__ == "__main__":
    unittest.main()
