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

from monai_msgldm.networks.nets import StyleEncoder

CASES = [
    [2, 1, (4, 8, 8), 8, (2, 1, 16, 16)],
    [2, 2, (4, 8), 3, (3, 2, 16, 12)],
    [3, 1, (4, 8, 8), 5, (2, 1, 8, 8, 12)],
]


class TestStyleEncoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand(CASES)
    def test_shape_and_pooling(self, sd, in_ch, channels, style_dim, shape):
        enc = StyleEncoder(sd, in_channels=in_ch, channels=channels, style_dim=style_dim)
        x = torch.randn(shape)
        out = enc(x)
        self.assertEqual(tuple(out.shape), (shape[0], style_dim))
        # the code is the 1x1 output conv of the spatial mean of the features (global average pooling)
        feats = enc.features(x)
        self.assertEqual(feats.shape[2:], torch.Size([s // 2 ** (len(channels) - 1) for s in shape[2:]]))
        pooled = feats.mean(dim=list(range(2, feats.ndim)), keepdim=True)
        torch.testing.assert_close(out, enc.out(pooled).flatten(1))

    def test_batch_independent_and_deterministic(self):
        enc = StyleEncoder(2, channels=(4, 8, 8))
        x = torch.randn(3, 1, 16, 16)
        out = enc(x)
        torch.testing.assert_close(enc(x[1:2]), out[1:2])
        self.assertTrue(torch.equal(enc(x), out))
        self.assertFalse(torch.allclose(out[0], out[1]))

    def test_minimum_size_no_norm_on_1x1(self):
        # 4 px with two downsamplings ends on a 1x1 map: no InstanceNorm is applied there, train mode works
        enc = StyleEncoder(2, channels=(4, 8, 8)).train()
        out = enc(torch.randn(2, 1, 4, 4))
        self.assertEqual(tuple(out.shape), (2, 8))
        self.assertFalse(any(isinstance(m, torch.nn.modules.instancenorm._InstanceNorm) for m in enc.modules()))

    def test_gradients(self):
        enc = StyleEncoder(3, channels=(2, 4))
        enc(torch.randn(2, 1, 8, 8, 8)).pow(2).sum().backward()
        for name, p in enc.named_parameters():
            self.assertIsNotNone(p.grad, name)

    def test_script(self):
        enc = StyleEncoder(2, channels=(4, 8, 8)).eval()
        x = torch.randn(2, 1, 16, 16)
        scripted = torch.jit.script(enc)
        torch.testing.assert_close(scripted(x), enc(x))

    @parameterized.expand(
        [
            [{"spatial_dims": 1}, "spatial_dims"],
            [{"spatial_dims": 2, "in_channels": 0}, "in_channels"],
            [{"spatial_dims": 2, "channels": ()}, "channels"],
            [{"spatial_dims": 2, "channels": (4, 0)}, "channels"],
            [{"spatial_dims": 2, "style_dim": 0}, "style_dim"],
        ]
    )
    def test_bad_args(self, kwargs, word):
        with self.assertRaisesRegex(ValueError, f"StyleEncoder expects {word}"):
            StyleEncoder(**kwargs)

    def test_bad_input(self):
        enc = StyleEncoder(2, channels=(4, 8, 8))
        with self.assertRaisesRegex(ValueError, r"expects x of shape \(B, 1"):
            enc(torch.randn(2, 2, 16, 16))
        with self.assertRaisesRegex(ValueError, r"expects x of shape"):
            enc(torch.randn(2, 1, 16, 16, 16))
        with self.assertRaisesRegex(ValueError, r"spatial size of x >= 4"):
            enc(torch.randn(2, 1, 16, 2))


if __name__ == "__main__":
    unittest.main()
