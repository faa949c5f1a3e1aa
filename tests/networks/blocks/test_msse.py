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
import torch.nn.functional as F
from parameterized import parameterized

from monai_msgldm.networks.blocks import MultiscaleStructureEnhancement


def _features(sd, channels, top_size, batch=2):
    """Levels finest first: level l has size top_size * 2 ** (L - 1 - l)."""
    n = len(channels)
    return [torch.randn((batch, c) + (top_size * 2 ** (n - 1 - i),) * sd) for i, c in enumerate(channels)]


TEST_SHAPES = [
    [{"spatial_dims": 2, "in_channels": (4, 8, 8), "num_heads": 4}, 4],
    [{"spatial_dims": 2, "in_channels": (6, 8), "num_heads": 2, "learnable_alpha": False}, 3],
    [{"spatial_dims": 3, "in_channels": (4, 8, 16), "num_heads": 4}, 2],
    [{"spatial_dims": 3, "in_channels": (4, 8), "num_heads": 1, "alpha": 1.0, "learnable_alpha": False}, 2],
]


class TestMultiscaleStructureEnhancement(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand(TEST_SHAPES)
    def test_shape(self, args, top_size):
        block = MultiscaleStructureEnhancement(**args)
        feats = _features(args["spatial_dims"], args["in_channels"], top_size)
        out = block(feats)
        self.assertEqual(out.shape, feats[-1].shape)
        self.assertTrue(torch.isfinite(out).all())
        self.assertFalse(torch.allclose(out, feats[-1]))

    @parameterized.expand([[2], [3]])
    def test_alpha_zero_is_identity(self, sd):
        block = MultiscaleStructureEnhancement(sd, (4, 8), num_heads=2, alpha=0.0, learnable_alpha=False)
        feats = _features(sd, (4, 8), 2)
        self.assertTrue(torch.equal(block(feats), feats[-1]))
        learn = MultiscaleStructureEnhancement(sd, (4, 8), num_heads=2, alpha=0.0)
        self.assertTrue(torch.equal(learn(feats), feats[-1]))

    def test_alpha_parameter_or_buffer(self):
        learn = MultiscaleStructureEnhancement(2, (4, 8), num_heads=2, alpha=0.3)
        self.assertIn("alpha", dict(learn.named_parameters()))
        self.assertAlmostEqual(float(learn.alpha.detach()), 0.3, places=6)
        fixed = MultiscaleStructureEnhancement(2, (4, 8), num_heads=2, alpha=0.3, learnable_alpha=False)
        self.assertNotIn("alpha", dict(fixed.named_parameters()))
        self.assertIn("alpha", dict(fixed.named_buffers()))
        self.assertIn("alpha", fixed.state_dict())

    @parameterized.expand([[2], [3]])
    def test_gradients(self, sd):
        block = MultiscaleStructureEnhancement(sd, (4, 6, 8), num_heads=2)
        feats = [f.requires_grad_(True) for f in _features(sd, (4, 6, 8), 2)]
        (block(feats) * torch.randn_like(feats[-1])).sum().backward()
        for name, p in block.named_parameters():
            self.assertIsNotNone(p.grad, name)
            self.assertGreater(float(p.grad.abs().sum()), 0.0, name)
        for f in feats:
            self.assertGreater(float(f.grad.abs().sum()), 0.0)

    def test_manual_reference(self):
        heads, sd = 2, 2
        channels = (4, 6, 8)
        block = MultiscaleStructureEnhancement(sd, channels, num_heads=heads, alpha=0.7, qkv_bias=True)
        feats = _features(sd, channels, 3, batch=2)
        top = feats[-1]
        b, c, h, w = top.shape
        # context: project first, then pool (equal to pooling first by linearity)
        context = torch.zeros_like(top)
        for proj, f in zip(block.projections, feats[:-1]):
            context = context + F.adaptive_avg_pool2d(F.conv2d(f, proj.weight, proj.bias), (h, w))
        q_tok = F.layer_norm(top.flatten(2).transpose(1, 2), (c,), block.norm.weight, block.norm.bias)
        kv_tok = context.flatten(2).transpose(1, 2)
        attn = block.attn
        q = attn.to_q(q_tok).reshape(b, -1, heads, c // heads).transpose(1, 2)
        k = attn.to_k(kv_tok).reshape(b, -1, heads, c // heads).transpose(1, 2)
        v = attn.to_v(kv_tok).reshape(b, -1, heads, c // heads).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
        y = (weights @ v).transpose(1, 2).reshape(b, h * w, c)
        y = attn.out_proj(y).transpose(1, 2).reshape(b, c, h, w)
        y = F.conv2d(y, block.out_proj.weight, block.out_proj.bias)
        expected = top + 0.7 * y
        torch.testing.assert_close(block(feats), expected, rtol=1e-5, atol=1e-5)

    def test_uses_finer_levels(self):
        block = MultiscaleStructureEnhancement(2, (4, 6, 8), num_heads=2).requires_grad_(False)
        feats = _features(2, (4, 6, 8), 2)
        out = block(feats)
        for level in range(2):
            changed = list(feats)
            changed[level] = changed[level] + torch.randn_like(changed[level])
            self.assertFalse(torch.allclose(block(changed), out))

    def test_uneven_grid(self):
        # finer levels need not be an integer multiple of the top grid (adaptive pooling)
        block = MultiscaleStructureEnhancement(2, (4, 8), num_heads=2)
        out = block([torch.randn(1, 4, 7, 9), torch.randn(1, 8, 3, 4)])
        self.assertEqual(out.shape, (1, 8, 3, 4))

    @parameterized.expand(
        [
            [{"spatial_dims": 4, "in_channels": (4, 8)}],
            [{"spatial_dims": 2, "in_channels": (8,)}],
            [{"spatial_dims": 2, "in_channels": 8}],
            [{"spatial_dims": 2, "in_channels": (4, 0)}],
            [{"spatial_dims": 2, "in_channels": (4, 6), "num_heads": 4}],
            [{"spatial_dims": 2, "in_channels": (4, 8), "num_heads": 0}],
            [{"spatial_dims": 2, "in_channels": (4, 8), "alpha": float("inf")}],
            [{"spatial_dims": 2, "in_channels": (4, 8), "dropout_rate": 1.5}],
        ]
    )
    def test_bad_args(self, args):
        with self.assertRaises(ValueError):
            MultiscaleStructureEnhancement(**args)

    def test_divisibility_message(self):
        with self.assertRaisesRegex(ValueError, "divisible by num_heads"):
            MultiscaleStructureEnhancement(2, (4, 6), num_heads=4)

    def test_bad_features(self):
        block = MultiscaleStructureEnhancement(2, (4, 8), num_heads=2)
        good = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
        with self.assertRaisesRegex(ValueError, "features to have 2 levels, got 1"):
            block(good[1:])
        with self.assertRaisesRegex(ValueError, "features to have 2 levels, got 3"):
            block(good + [good[1]])
        with self.assertRaisesRegex(ValueError, "features to be a sequence"):
            block(good[1])
        with self.assertRaisesRegex(ValueError, r"features\[0\]"):
            block([torch.randn(2, 5, 8, 8), good[1]])
        with self.assertRaisesRegex(ValueError, r"features\[1\]"):
            block([good[0], torch.randn(2, 6, 4, 4)])
        with self.assertRaisesRegex(ValueError, r"features\[0\]"):
            block([torch.randn(3, 4, 8, 8), good[1]])
        with self.assertRaisesRegex(ValueError, r"features\[0\]"):
            block([torch.randn(2, 4, 8, 8, 8), good[1]])


if __name__ == "__main__":
    unittest.main()
