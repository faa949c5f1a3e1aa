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

import itertools
import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

from monai_msgldm.networks.blocks import MultimodalStructureFusion
from monai_msgldm.utils import strict_availability_checks

M, C = 4, 3
SUBSETS = [s for s in itertools.product([False, True], repeat=M) if any(s)]  # the 15 non-empty subsets
VARIANTS = [[combine, gated] for combine in ("sum", "concat") for gated in (True, False)]


def _conv(sd):
    return F.conv2d if sd == 2 else F.conv3d


class TestMultimodalStructureFusion(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def test_fifteen_subsets(self):
        self.assertEqual(len(SUBSETS), 15)

    @parameterized.expand(VARIANTS)
    def test_all_subsets_and_absent_invariance(self, combine, gated):
        block = MultimodalStructureFusion(2, C, M, out_channels=5, combine=combine, gated=gated).requires_grad_(False)
        batch = len(SUBSETS)
        available = torch.tensor(SUBSETS)
        feats = torch.randn(batch, M, C, 8, 8)
        out = block(feats, available)
        self.assertEqual(out.shape, (batch, 5, 8, 8))
        self.assertTrue(torch.isfinite(out).all())
        # changing (even to non-finite values) the features of absent modalities changes nothing
        changed = feats.clone()
        absent = ~available
        changed[absent] = torch.randn(int(absent.sum()), C, 8, 8) * 100.0
        self.assertTrue(torch.equal(block(changed, available), out))
        changed[absent] = float("nan")
        self.assertTrue(torch.equal(block(changed, available), out))
        # changing a present modality changes the output of that sample
        for i, row in enumerate(SUBSETS):
            present = changed.clone()
            present[i, row.index(True)] += 1.0
            diff = (block(present, available) - out).abs().flatten(1).amax(1)
            self.assertGreater(float(diff[i]), 0.0)

    @parameterized.expand(VARIANTS)
    def test_sample_depends_only_on_own_mask(self, combine, gated):
        block = MultimodalStructureFusion(2, C, M, combine=combine, gated=gated)
        feats = torch.randn(3, M, C, 6, 6)
        available = torch.tensor([[True, False, True, True], [False, False, False, True], [True, True, True, True]])
        out = block(feats, available)
        for i in range(3):
            torch.testing.assert_close(out[i : i + 1], block(feats[i : i + 1], available[i : i + 1]))
        other = available.clone()
        other[0] = torch.tensor([True, True, True, True])
        out2 = block(feats, other)
        torch.testing.assert_close(out2[1:], out[1:])
        self.assertFalse(torch.allclose(out2[0], out[0]))

    @parameterized.expand([[2], [3]])
    def test_ungated_is_conv_of_mean(self, sd):
        block = MultimodalStructureFusion(sd, C, M, out_channels=2, gated=False, norm=None, act=None)
        size = (6,) * sd
        feats = torch.randn((2, M, C) + size)
        available = torch.tensor([[True, False, True, False], [False, False, False, True]])
        mean0 = (feats[0, 0] + feats[0, 2]) / 2
        mean1 = feats[1, 3]
        mean = torch.stack([mean0, mean1])
        conv = block.fuse.conv
        expected = _conv(sd)(mean, conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(block(feats, available), expected)
        # with the default norm/act: the same conv block applied to the mean
        block_na = MultimodalStructureFusion(sd, C, M, gated=False)
        torch.testing.assert_close(block_na(feats, available), block_na.fuse(mean))

    @parameterized.expand([["sum"], ["concat"]])
    def test_gated_reference(self, combine):
        block = MultimodalStructureFusion(2, C, M, combine=combine, norm=None, act=None)
        feats = torch.randn(2, M, C, 7, 7)
        available = torch.tensor([[True, True, False, True], [False, True, False, False]])
        masked = feats * available[:, :, None, None, None].float()
        gconv = block.gate.conv
        gates = torch.sigmoid(F.conv2d(masked.reshape(2, M * C, 7, 7), gconv.weight, gconv.bias, padding=1))
        gates = gates * available[:, :, None, None].float()
        weighted = masked * gates[:, :, None]
        if combine == "sum":
            combined = weighted.sum(1) / available.sum(1).float()[:, None, None, None]
        else:
            combined = weighted.reshape(2, M * C, 7, 7)
        fconv = block.fuse.conv
        expected = F.conv2d(combined, fconv.weight, fconv.bias, padding=1)
        torch.testing.assert_close(block(feats, available), expected)

    def test_sum_scale_independent_of_count(self):
        # identical features in every present modality: the ungated sum fusion gives the same map for any subset
        block = MultimodalStructureFusion(2, C, M, gated=False)
        f = torch.randn(1, 1, C, 6, 6)
        feats = f.expand(len(SUBSETS), M, C, 6, 6).contiguous()
        out = block(feats, torch.tensor(SUBSETS))
        for i in range(1, len(SUBSETS)):
            torch.testing.assert_close(out[i], out[0])

    @parameterized.expand(VARIANTS)
    def test_gradients(self, combine, gated):
        block = MultimodalStructureFusion(2, C, M, combine=combine, gated=gated)
        feats = torch.randn(2, M, C, 6, 6, requires_grad=True)
        available = torch.tensor([[True, False, True, True], [True, True, False, False]])
        (block(feats, available) * torch.randn(2, C, 6, 6)).sum().backward()
        for name, p in block.named_parameters():
            self.assertIsNotNone(p.grad, name)
            self.assertGreater(float(p.grad.abs().sum()), 0.0, name)
        grad = feats.grad
        self.assertTrue(torch.equal(grad[~available], torch.zeros_like(grad[~available])))
        self.assertTrue((grad[available].flatten(1).abs().sum(1) > 0).all())

    def test_mask_is_validated_at_the_boundary_not_here(self):
        """Behind the model boundary the block takes a bool mask (checked by shape and dtype only: no host sync);
        a float mask is refused rather than silently read one way or another."""
        block = MultimodalStructureFusion(3, C, M, out_channels=4)
        feats = torch.randn(2, M, C, 4, 4, 4)
        mask = torch.tensor([[True, False, False, True], [False, True, True, True]])
        self.assertEqual(block(feats, mask).shape, (2, 4, 4, 4, 4))
        with self.assertRaisesRegex(ValueError, "bool tensor"):
            block(feats, mask.float())

    @parameterized.expand(
        [
            [{"spatial_dims": 4, "in_channels": C, "num_modalities": M}],
            [{"spatial_dims": 2, "in_channels": 0, "num_modalities": M}],
            [{"spatial_dims": 2, "in_channels": C, "num_modalities": 0}],
            [{"spatial_dims": 2, "in_channels": C, "num_modalities": M, "out_channels": 0}],
            [{"spatial_dims": 2, "in_channels": C, "num_modalities": M, "combine": "max"}],
            [{"spatial_dims": 2, "in_channels": C, "num_modalities": M, "kernel_size": 2}],
        ]
    )
    def test_bad_args(self, args):
        with self.assertRaises(ValueError):
            MultimodalStructureFusion(**args)

    def test_bad_inputs(self):
        block = MultimodalStructureFusion(2, C, M)
        ok = torch.ones(2, M, dtype=torch.bool)
        with self.assertRaisesRegex(ValueError, r"features of shape \(B, 4, 3"):
            block(torch.randn(2, M - 1, C, 6, 6), ok[:, :-1])
        with self.assertRaisesRegex(ValueError, r"features of shape \(B, 4, 3"):
            block(torch.randn(2, M, C + 1, 6, 6), ok)
        with self.assertRaisesRegex(ValueError, "features"):
            block(torch.randn(2, M, C, 6, 6, 6), ok)
        with self.assertRaisesRegex(ValueError, r"available of shape \(2, 4\)"):
            block(torch.randn(2, M, C, 6, 6), torch.ones(3, M, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, r"available of shape \(2, 4\)"):
            block(torch.randn(2, M, C, 6, 6), torch.ones(2, M, 1, dtype=torch.bool))
        with strict_availability_checks(), self.assertRaisesRegex(ValueError, "none in batch rows \\[1\\]"):
            block(torch.randn(2, M, C, 6, 6), torch.tensor([[True] * M, [False] * M]))
        with self.assertRaisesRegex(ValueError, "bool tensor"):
            block(torch.randn(2, M, C, 6, 6), torch.full((2, M), 0.5))


if __name__ == "__main__":
    unittest.main()
