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

import torch
from parameterized import parameterized

from monai_msgldm.networks.nets import AdaptiveInstanceNorm, ReconstructionDecoder, SegmentationDecoder


class TestAdaptiveInstanceNorm(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand([[(2, 3, 8, 6)], [(2, 3, 4, 4, 5)]])
    def test_statistics(self, shape):
        adain = AdaptiveInstanceNorm(3)
        x = torch.randn(shape) * 3.0 + 2.0
        mean, std = torch.randn(2, 3), torch.rand(2, 3) + 0.5
        y = adain(x, mean, std)
        dims = list(range(2, len(shape)))
        torch.testing.assert_close(y.mean(dim=dims), mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y.var(dim=dims, unbiased=False), std**2, atol=1e-4, rtol=1e-4)

    def test_single_element_gives_mean(self):
        adain = AdaptiveInstanceNorm(2)
        mean, std = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 4.0]])
        y = adain(torch.randn(1, 2, 1, 1), mean, std)
        torch.testing.assert_close(y.flatten(1), mean)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "AdaptiveInstanceNorm expects num_features"):
            AdaptiveInstanceNorm(0)
        adain = AdaptiveInstanceNorm(3)
        with self.assertRaisesRegex(ValueError, "expects x of shape"):
            adain(torch.randn(2, 4, 5, 5), torch.zeros(2, 4), torch.ones(2, 4))
        with self.assertRaisesRegex(ValueError, "expects mean and std of shape"):
            adain(torch.randn(2, 3, 5, 5), torch.zeros(2, 3), torch.ones(1, 3))


REC_CASES = [
    [2, 16, 1, 2, False, (2, 16, 4, 4)],
    [2, 8, 2, 1, True, (2, 8, 5, 3)],
    [2, 8, 1, 0, False, (2, 8, 4, 4)],
    [3, 8, 1, 1, True, (2, 8, 2, 3, 2)],
]


class TestReconstructionDecoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand(REC_CASES)
    def test_shape_range_params(self, sd, in_ch, out_ch, n_up, up_adain, shape):
        dec = ReconstructionDecoder(
            sd,
            in_channels=in_ch,
            style_dim=4,
            out_channels=out_ch,
            num_upsamples=n_up,
            mlp_hidden=8,
            upsample_adain=up_adain,
        )
        out = dec(torch.randn(shape) * 10, torch.randn(shape[0], 4) * 10)
        self.assertEqual(tuple(out.shape), (shape[0], out_ch, *[s * 2**n_up for s in shape[2:]]))
        self.assertTrue(bool((out.abs() < 1).all()))
        # 2 AdaIN residual blocks (4 * C each), plus 2 * C_out per upsampling when it uses AdaIN
        expected = 2 * 4 * in_ch + (sum(2 * in_ch // 2 ** (i + 1) for i in range(n_up)) if up_adain else 0)
        self.assertEqual(dec.num_style_params, expected)
        self.assertEqual(tuple(dec.style_params(torch.randn(3, 4)).shape), (3, expected))

    def test_style_changes_output_and_determinism(self):
        dec = ReconstructionDecoder(2, in_channels=8, style_dim=4, num_upsamples=1, mlp_hidden=8)
        structure, style = torch.randn(2, 8, 4, 4), torch.randn(2, 4)
        out = dec(structure, style)
        self.assertTrue(torch.equal(dec(structure.clone(), style.clone()), out))
        other = dec(structure, style + 1.0)
        self.assertGreater((other - out).abs().max().item(), 1e-3)
        # per-sample: decoding one sample alone gives the same result as in the batch
        torch.testing.assert_close(dec(structure[1:], style[1:]), out[1:])

    def test_adain_params_drive_residual_blocks(self):
        # zero MLP output => every AdaIN outputs 0 => residual blocks are the identity
        dec = ReconstructionDecoder(2, in_channels=4, style_dim=2, num_upsamples=0, mlp_hidden=4, final_kernel_size=1)
        last = dec.mlp[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        structure = torch.randn(1, 4, 5, 5)
        torch.testing.assert_close(dec(structure, torch.randn(1, 2)), dec.final(structure))

    def test_gradients(self):
        dec = ReconstructionDecoder(2, in_channels=8, style_dim=4, num_upsamples=1, mlp_hidden=8, upsample_adain=True)
        style = torch.randn(2, 4, requires_grad=True)
        dec(torch.randn(2, 8, 4, 4), style).sum().backward()
        for name, p in dec.named_parameters():
            self.assertIsNotNone(p.grad, name)
        self.assertGreater(style.grad.abs().sum().item(), 0)

    def test_script(self):
        dec = ReconstructionDecoder(2, in_channels=8, style_dim=4, num_upsamples=1, mlp_hidden=8).eval()
        structure, style = torch.randn(2, 8, 4, 4), torch.randn(2, 4)
        torch.testing.assert_close(torch.jit.script(dec)(structure, style), dec(structure, style))

    @parameterized.expand(
        [
            [{"spatial_dims": 1}, "spatial_dims"],
            [{"spatial_dims": 2, "in_channels": 12, "num_upsamples": 3}, "in_channels divisible"],
            [{"spatial_dims": 2, "num_res_blocks": 0}, "at least one AdaIN layer"],
            [{"spatial_dims": 2, "style_dim": 0}, "style_dim"],
            [{"spatial_dims": 2, "mlp_layers": 0}, "mlp_layers"],
        ]
    )
    def test_bad_args(self, kwargs, msg):
        with self.assertRaisesRegex(ValueError, f"ReconstructionDecoder expects {msg}"):
            ReconstructionDecoder(**kwargs)

    def test_bad_input(self):
        dec = ReconstructionDecoder(2, in_channels=8, style_dim=4, num_upsamples=1, mlp_hidden=8)
        with self.assertRaisesRegex(ValueError, "expects structure of shape"):
            dec(torch.randn(2, 4, 4, 4), torch.randn(2, 4))
        with self.assertRaisesRegex(ValueError, "expects style of shape"):
            dec(torch.randn(2, 8, 4, 4), torch.randn(2, 5))
        with self.assertRaisesRegex(ValueError, "same batch size"):
            dec(torch.randn(2, 8, 4, 4), torch.randn(3, 4))


SEG_CASES = [
    [2, (4, 8), (1, 2), 3, (16, 16)],
    [2, (4, 8, 8), (2, 2, 2), 4, (16, 8)],
    [3, (2, 4), (1, 2), 2, (8, 8, 4)],
]


def _levels(channels, strides, size, batch=2):
    out, s = [], list(size)
    for c, st in zip(channels, strides):
        s = [v // st for v in s]
        out.append(torch.randn(batch, c, *s))
    return out


class TestSegmentationDecoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand(SEG_CASES)
    def test_shape_and_every_level_used(self, sd, channels, strides, out_ch, size):
        dec = SegmentationDecoder(sd, channels=channels, out_channels=out_ch, strides=strides)
        fused = [f.requires_grad_() for f in _levels(channels, strides, size)]
        out = dec(fused)
        self.assertEqual(tuple(out.shape), (2, out_ch, *size))
        out.pow(2).sum().backward()
        for level, f in enumerate(fused):
            self.assertGreater(f.grad.abs().sum().item(), 0, f"level {level}")
        for name, p in dec.named_parameters():
            self.assertIsNotNone(p.grad, name)

    def test_logits_unbounded_and_per_sample(self):
        dec = SegmentationDecoder(2, channels=(4, 8), out_channels=2, strides=(1, 2))
        with torch.no_grad():
            dec.out.conv.bias.fill_(5.0)  # no final activation: logits move freely
        fused = _levels((4, 8), (1, 2), (8, 8), batch=3)
        out = dec(fused)
        self.assertGreater(out.max().item(), 1.0)
        torch.testing.assert_close(dec([f[2:] for f in fused]), out[2:])

    def test_script(self):
        dec = SegmentationDecoder(2, channels=(4, 8), out_channels=2, strides=(1, 2)).eval()
        fused = _levels((4, 8), (1, 2), (8, 8))
        torch.testing.assert_close(torch.jit.script(dec)(fused), dec(fused))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "SegmentationDecoder expects strides with one entry per level"):
            SegmentationDecoder(2, channels=(4, 8), strides=(1, 2, 2))
        with self.assertRaisesRegex(ValueError, "SegmentationDecoder expects strides to be positive"):
            SegmentationDecoder(2, channels=(4, 8), strides=(1, 0))
        with self.assertRaisesRegex(ValueError, "SegmentationDecoder expects out_channels"):
            SegmentationDecoder(2, channels=(4, 8), strides=(1, 2), out_channels=0)
        dec = SegmentationDecoder(2, channels=(4, 8), out_channels=2, strides=(1, 2))
        fused = _levels((4, 8), (1, 2), (8, 8))
        with self.assertRaisesRegex(ValueError, "expects fused with 2 levels"):
            dec(fused[:1])
        with self.assertRaisesRegex(ValueError, r"expects fused\[1\] of shape \(B, 8"):
            dec([fused[0], torch.randn(2, 4, 4, 4)])
        with self.assertRaisesRegex(ValueError, r"expects fused\[0\] spatial shape \[8, 8\]"):
            dec([torch.randn(2, 4, 6, 8), fused[1]])


if __name__ == "__main__":
    unittest.main()
