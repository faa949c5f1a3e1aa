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
"""TorchScript export of the blocks that cannot be scripted: tracing must generalise to other inputs.

`torch.jit.script` rejects MultimodalStructureFusion and MultiscaleStructureEnhancement (their argument checks
use Python-level shape logic and MONAI's CrossAttentionBlock is not scriptable); `torch.jit.trace` works, and the
traced graphs must give the eager result for masks and values other than the ones they were traced with.
"""

from __future__ import annotations

import unittest
import warnings

import torch
from parameterized import parameterized

from monai_msgldm.networks.blocks import MultimodalStructureFusion, MultiscaleStructureEnhancement


class TestTracing(unittest.TestCase):
    @parameterized.expand([(2, "sum"), (2, "concat"), (3, "sum")])
    def test_fusion_trace_generalises_over_masks(self, spatial_dims, combine):
        torch.manual_seed(0)
        net = MultimodalStructureFusion(spatial_dims, 4, 4, combine=combine).eval()
        size = (6,) * spatial_dims
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, (torch.rand(2, 4, 4, *size), torch.ones(2, 4, dtype=torch.bool)))
        x = torch.rand(3, 4, 4, *size)
        mask = torch.tensor([[True, False, False, True], [False, True, False, False], [True, True, True, False]])
        torch.testing.assert_close(traced(x, mask), net(x, mask))

    @parameterized.expand([(2,), (3,)])
    def test_msse_trace(self, spatial_dims):
        torch.manual_seed(0)
        net = MultiscaleStructureEnhancement(spatial_dims, (4, 8), num_heads=2).eval()
        feats = [torch.rand(2, 4, *(8,) * spatial_dims), torch.rand(2, 8, *(4,) * spatial_dims)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, (feats,))
        other = [torch.rand(2, 4, *(8,) * spatial_dims), torch.rand(2, 8, *(4,) * spatial_dims)]
        torch.testing.assert_close(traced(other), net(other))


if __name__ == "__main__":
    unittest.main()
