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

import unittest
import warnings

import torch
from parameterized import parameterized

from monai_msgldm.networks.blocks import HighFrequencyInjectionBlock
from monai_msgldm.networks.nets import StructureEncoder

CASES = [
    [2, 1, (4, 8, 16), (1, 2, 2), (16, 16)],
    [2, 2, (4, 8), (2, 2), (16, 8)],
    [3, 1, (2, 4), (1, 2), (8, 8, 4)],
]


class TestStructureEncoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand(CASES)
    def test_shapes(self, sd, in_ch, channels, strides, size):
        enc = StructureEncoder(sd, in_channels=in_ch, channels=channels, strides=strides)
        feats = enc(torch.randn(2, in_ch, *size))
        self.assertEqual(len(feats), len(channels))
        factor = 1
        for f, c, s in zip(feats, channels, strides):
            factor *= s
            self.assertEqual(tuple(f.shape), (2, c, *[v // factor for v in size]))

    @parameterized.expand([[2], [3]])
    def test_hfib_adds_high_frequencies(self, sd):
        # same conv weights with and without HFIB: with mode "add" level 0 is y + (y - G(y)), y the level-0 output
        # of the encoder without HFIB
        with_hfib = StructureEncoder(sd, channels=(2, 4), strides=(1, 2), use_hfib=True)
        without = StructureEncoder(sd, channels=(2, 4), strides=(1, 2), use_hfib=False)
        missing, unexpected = without.load_state_dict(with_hfib.state_dict(), strict=False)
        self.assertEqual(missing, [])
        self.assertTrue(all(k.endswith("sigma") for k in unexpected))
        self.assertEqual(sum(isinstance(m, HighFrequencyInjectionBlock) for m in with_hfib.modules()), 2)
        self.assertEqual(sum(isinstance(m, HighFrequencyInjectionBlock) for m in without.modules()), 0)
        x = torch.randn(1, 1, *([8] * sd))
        y = without.levels[0](x)
        hfib = with_hfib.levels[0][2]
        torch.testing.assert_close(with_hfib(x)[0], 2 * y - hfib.low_pass(y))
        self.assertGreater((with_hfib(x)[0] - without(x)[0]).abs().max().item(), 1e-3)

    def test_concat_mode_and_gradients(self):
        enc = StructureEncoder(2, channels=(4, 8), strides=(1, 2), hfib_mode="concat")
        self.assertEqual(enc.levels[1][2].mode, "concat")
        feats = enc(torch.randn(2, 1, 16, 16))
        sum(f.pow(2).mean() for f in feats).backward()
        for name, p in enc.named_parameters():
            self.assertIsNotNone(p.grad, name)
        self.assertGreater(enc.levels[0][2].sigma.grad.abs().item(), 0)

    def test_fixed_sigma(self):
        enc = StructureEncoder(2, channels=(4,), strides=(1,), learnable_hfib_sigma=False, hfib_sigma=2.0)
        self.assertNotIn("levels.0.2.sigma", dict(enc.named_parameters()))
        self.assertEqual(float(enc.levels[0][2].sigma), 2.0)

    def test_script_and_trace(self):
        enc = StructureEncoder(2, channels=(4, 8), strides=(1, 2)).eval()
        x = torch.randn(2, 1, 16, 16)
        expected = enc(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape checks are constant under tracing
            traced = torch.jit.trace(enc, x, strict=False)
        for compiled in (torch.jit.script(enc), traced):
            for a, b in zip(compiled(x), expected):
                torch.testing.assert_close(a, b)

    @parameterized.expand(
        [
            [{"spatial_dims": 1}, "spatial_dims"],
            [{"spatial_dims": 2, "in_channels": 0}, "in_channels"],
            [{"spatial_dims": 2, "channels": (4, 8), "strides": (1, 2, 2)}, "strides with one entry per level"],
            [{"spatial_dims": 2, "channels": (4, 8), "strides": (1, 0)}, "strides to be positive"],
            [{"spatial_dims": 2, "channels": (4, -8), "strides": (1, 2)}, "channels"],
            [{"spatial_dims": 2, "hfib_mode": "mul"}, "hfib_mode"],
            [{"spatial_dims": 2, "kernel_size": 4}, "kernel_size"],
        ]
    )
    def test_bad_args(self, kwargs, msg):
        with self.assertRaisesRegex(ValueError, f"StructureEncoder expects {msg}"):
            StructureEncoder(**kwargs)

    def test_bad_input(self):
        enc = StructureEncoder(2, channels=(4, 8), strides=(1, 2))
        with self.assertRaisesRegex(ValueError, r"StructureEncoder expects x of shape \(B, 1"):
            enc(torch.randn(2, 3, 16, 16))
        with self.assertRaisesRegex(ValueError, "StructureEncoder expects x of shape"):
            enc(torch.randn(2, 1, 16, 16, 16))


if __name__ == "__main__":
    unittest.main()
