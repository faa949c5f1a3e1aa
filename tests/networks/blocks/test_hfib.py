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

__all__: list[str] = []

import math
import unittest

import numpy as np
import torch
from parameterized import parameterized
from scipy import ndimage

from monai_msgldm.networks.blocks import HighFrequencyInjectionBlock

TEST_SHAPES = [
    [{"spatial_dims": sd, "channels": 4, "mode": mode, "learnable_sigma": learn}, (2, 4) + (size,) * sd]
    for sd, size in ((2, 12), (3, 6))
    for mode in ("add", "concat")
    for learn in (True, False)
]

TEST_BAD_ARGS = [
    [{"spatial_dims": 4, "channels": 4}],
    [{"spatial_dims": 2, "channels": 0}],
    [{"spatial_dims": 2, "channels": 4, "mode": "mul"}],
    [{"spatial_dims": 2, "channels": 4, "kernel_size": 4}],
    [{"spatial_dims": 2, "channels": 4, "kernel_size": 1}],
    [{"spatial_dims": 2, "channels": 4, "sigma": 0.0}],
    [{"spatial_dims": 2, "channels": 4, "sigma": -1.0}],
    [{"spatial_dims": 2, "channels": 4, "sigma": float("nan")}],
    [{"spatial_dims": 2, "channels": 4, "sigma_min": 0.0}],
    [{"spatial_dims": 2, "channels": 4, "sigma": 1e-4, "sigma_min": 1e-3}],
    [{"spatial_dims": 2, "channels": 4, "padding_mode": "zeros"}],
]


class TestHighFrequencyInjectionBlock(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand(TEST_SHAPES)
    def test_shape(self, args, shape):
        block = HighFrequencyInjectionBlock(**args)
        out = block(torch.randn(shape))
        self.assertEqual(out.shape, torch.Size(shape))
        self.assertTrue(torch.isfinite(out).all())

    @parameterized.expand([[2], [3]])
    def test_tiny_sigma_is_identity(self, sd):
        block = HighFrequencyInjectionBlock(sd, 3, mode="add", sigma=1e-3)
        x = torch.randn((2, 3) + (8,) * sd)
        torch.testing.assert_close(block(x), x, atol=1e-4, rtol=0)

    @parameterized.expand([[sd, k, s] for sd in (1, 2, 3) for k in (3, 5) for s in (0.5, 1.0, 2.5)])
    def test_kernel_values(self, sd, kernel_size, sigma):
        block = HighFrequencyInjectionBlock(sd, 2, sigma=sigma, kernel_size=kernel_size)
        kernel = block.get_kernel().detach().double()
        self.assertEqual(tuple(kernel.shape), (kernel_size,) * sd)
        self.assertAlmostEqual(float(kernel.sum()), 1.0, places=6)
        r = kernel_size // 2
        g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
        expected = g
        for _ in range(sd - 1):
            expected = np.multiply.outer(expected, g)
        expected /= expected.sum()
        np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-5, atol=1e-7)

    @parameterized.expand([[sd, mode] for sd in (2, 3) for mode in ("replicate", "reflect")])
    def test_low_pass_matches_scipy(self, sd, padding_mode):
        block = HighFrequencyInjectionBlock(sd, 2, sigma=0.8, padding_mode=padding_mode)
        x = torch.randn((2, 2) + (7,) * sd)
        low = block.low_pass(x).detach().numpy()
        kernel = block.get_kernel().detach().numpy()
        scipy_mode = {"replicate": "nearest", "reflect": "mirror"}[padding_mode]
        for b in range(2):
            for c in range(2):
                ref = ndimage.correlate(x[b, c].numpy().astype(np.float64), kernel.astype(np.float64), mode=scipy_mode)
                np.testing.assert_allclose(low[b, c], ref, rtol=1e-5, atol=1e-5)
        # add mode: out = x + (x - G(x)) = 2x - G(x)
        np.testing.assert_allclose(block(x).detach().numpy(), 2 * x.numpy() - low, rtol=1e-5, atol=1e-5)

    @parameterized.expand([[2], [3]])
    def test_constant_input(self, sd):
        x = torch.full((2, 3) + (6,) * sd, 1.7)
        add = HighFrequencyInjectionBlock(sd, 3, mode="add", sigma=1.3)
        torch.testing.assert_close(add.low_pass(x), x)
        torch.testing.assert_close(add(x), x)
        cat = HighFrequencyInjectionBlock(sd, 3, mode="concat", sigma=1.3)
        expected = cat.fuse(torch.cat([x, torch.zeros_like(x)], dim=1))
        torch.testing.assert_close(cat(x), expected)

    @parameterized.expand([[2], [3]])
    def test_concat_wiring(self, sd):
        block = HighFrequencyInjectionBlock(sd, 3, mode="concat")
        x = torch.randn((1, 3) + (6,) * sd)
        conv = block.fuse.conv
        pre = conv(torch.cat([x, x - block.low_pass(x)], dim=1))
        expected = torch.nn.functional.leaky_relu(pre, negative_slope=0.05)
        torch.testing.assert_close(block(x), expected)

    @parameterized.expand([[sd, mode] for sd in (2, 3) for mode in ("add", "concat")])
    def test_gradient_reaches_sigma(self, sd, mode):
        block = HighFrequencyInjectionBlock(sd, 3, mode=mode)
        x = torch.randn((2, 3) + (6,) * sd, requires_grad=True)
        (block(x) ** 2).sum().backward()
        self.assertIsNotNone(block.sigma.grad)
        self.assertGreater(float(block.sigma.grad.abs()), 0.0)
        self.assertGreater(float(x.grad.abs().sum()), 0.0)
        for name, p in block.named_parameters():
            self.assertIsNotNone(p.grad, name)

    def test_sigma_learns(self):
        # fitting the low-pass of a sigma = 1.5 block recovers that sigma (30 SGD steps from 0.5: within 0.1)
        block = HighFrequencyInjectionBlock(2, 1, sigma=0.5)
        target_block = HighFrequencyInjectionBlock(2, 1, sigma=1.5)
        x = torch.randn(4, 1, 16, 16)
        target = target_block.low_pass(x).detach()
        opt = torch.optim.SGD(block.parameters(), lr=0.5)
        for _ in range(30):
            opt.zero_grad()
            torch.nn.functional.mse_loss(block.low_pass(x), target).backward()
            opt.step()
        self.assertAlmostEqual(float(block.sigma.detach()), 1.5, delta=0.1)

    def test_sigma_buffer_when_not_learnable(self):
        block = HighFrequencyInjectionBlock(2, 4, sigma=0.7, learnable_sigma=False)
        self.assertNotIn("sigma", dict(block.named_parameters()))
        self.assertIn("sigma", dict(block.named_buffers()))
        self.assertIn("sigma", block.state_dict())
        self.assertAlmostEqual(float(block.sigma.detach()), 0.7, places=6)
        self.assertEqual(len(list(block.parameters())), 0)
        learn = HighFrequencyInjectionBlock(2, 4, sigma=0.7)
        self.assertIn("sigma", dict(learn.named_parameters()))

    def test_sigma_clamped(self):
        block = HighFrequencyInjectionBlock(2, 1, sigma=1.0, sigma_min=0.01)
        with torch.no_grad():
            block.sigma.fill_(-3.0)
        kernel = block.get_kernel()
        expected = torch.zeros(3, 3)
        expected[1, 1] = 1.0
        torch.testing.assert_close(kernel, expected)
        self.assertFalse(math.isnan(float(kernel.detach().sum())))

    @parameterized.expand(TEST_BAD_ARGS)
    def test_bad_args(self, args):
        with self.assertRaises(ValueError):
            HighFrequencyInjectionBlock(**args)

    def test_bad_input(self):
        block = HighFrequencyInjectionBlock(2, 4)
        with self.assertRaisesRegex(ValueError, "expects x"):
            block(torch.randn(1, 3, 8, 8))
        with self.assertRaisesRegex(ValueError, "expects x"):
            block(torch.randn(1, 4, 8, 8, 8))

    @parameterized.expand([[sd, mode] for sd in (2, 3) for mode in ("add", "concat")])
    def test_script(self, sd, mode):
        block = HighFrequencyInjectionBlock(sd, 2, mode=mode)
        scripted = torch.jit.script(block)
        x = torch.randn((1, 2) + (5,) * sd)
        torch.testing.assert_close(scripted(x), block(x))


if __name__ == "__main__":
    unittest.main()
