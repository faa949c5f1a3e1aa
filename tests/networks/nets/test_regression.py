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

import unittest

import torch
from parameterized import parameterized

from monai_msgldm.inferers import ModalitySynthesisInferer, RegressionSynthesisInferer
from monai_msgldm.networks.nets import RegressionSynthesisNet
from tests.engines.test_engine_utils import setUpModule, tearDownModule  # noqa: F401

TINY_FEATURES = (4, 4, 8, 8, 16, 4)


def tiny_regression(spatial_dims: int = 2, num_modalities: int = 4) -> RegressionSynthesisNet:
    return RegressionSynthesisNet(spatial_dims=spatial_dims, num_modalities=num_modalities, features=TINY_FEATURES)


class TestRegressionSynthesisNet(unittest.TestCase):
    @parameterized.expand([(2, 4, (32, 32)), (2, 3, (32, 48)), (3, 4, (32, 32, 16))])
    def test_shapes(self, spatial_dims, num_modalities, spatial):
        torch.manual_seed(0)
        net = tiny_regression(spatial_dims, num_modalities)
        self.assertEqual((net.spatial_dims, net.num_modalities, net.size_divisor), (spatial_dims, num_modalities, 16))
        self.assertEqual(net.net.conv_0.conv_0.conv.in_channels, 2 * num_modalities)
        images = torch.randn(2, num_modalities, *spatial)
        available = torch.ones(2, num_modalities, dtype=torch.bool)
        available[0, -1] = False
        out = net(images, available)
        self.assertEqual(tuple(out.shape), (2, num_modalities, *spatial))
        out.mean().backward()
        self.assertTrue(all(p.grad is not None for p in net.parameters()))

    def test_absent_inputs_do_not_influence(self):
        torch.manual_seed(0)
        net = tiny_regression().eval()
        images = torch.randn(2, 4, 32, 32)
        available = torch.tensor([[True, False, True, False], [False, False, False, True]])
        other = images.clone()
        other[~available] = torch.randn_like(other[~available]) * 100.0
        other[0, 1] = float("nan")
        with torch.no_grad():
            torch.testing.assert_close(net(images, available), net(other, available))
            # the mask is an input too: the same zero-filled images with another mask give another output
            filled = torch.where(available[..., None, None], images, torch.zeros_like(images))
            self.assertFalse(torch.allclose(net(filled, available), net(filled, torch.ones(2, 4, dtype=torch.bool))))

    def test_sampling_path(self):
        """RegressionSynthesisInferer.sample: one forward pass, given contrasts kept, missing ones clamped."""
        torch.manual_seed(0)
        net = tiny_regression()
        with torch.no_grad():
            net.net.final_conv.bias.fill_(5.0)  # predictions far outside [-1, 1] to see the clamp
        images = torch.rand(2, 4, 32, 32) * 2 - 1
        available = torch.tensor([[True, True, True, False], [False, True, False, True]])
        sampler = RegressionSynthesisInferer()
        out = sampler.sample(images, net, available, generator=torch.Generator().manual_seed(1))
        self.assertFalse(out.requires_grad)
        with torch.no_grad():
            expected = net(images, available).clamp(-1.0, 1.0)
        torch.testing.assert_close(out[~available], expected[~available], rtol=0, atol=0)
        self.assertTrue(torch.equal(out[available], images[available]))
        self.assertTrue(bool((out[~available] == 1.0).any()))
        # the training forward of the inferer is the network's prediction of every contrast
        torch.testing.assert_close(sampler(images, net, available), net(images, available))
        # nothing missing: the input comes back as it is
        full = torch.ones(2, 4, dtype=torch.bool)
        self.assertTrue(torch.equal(sampler.sample(images, net, full), images))

    def test_inferer_pads_and_crops(self):
        torch.manual_seed(0)
        net = tiny_regression().eval()
        images = torch.rand(1, 4, 40, 36) * 2 - 1
        inferer = ModalitySynthesisInferer(RegressionSynthesisInferer(), progress=False)
        out = inferer(images, net, available=["t1", "t2"])
        self.assertTrue(torch.equal(out[:, [0, 2]], images[:, [0, 2]]))
        # the missing contrasts are those of the padded input (edge value: each channel's minimum), cropped back
        padded = images.amin(dim=(2, 3), keepdim=True).expand(1, 4, 48, 48).clone()
        padded[:, :, :40, :36] = images
        mask = torch.tensor([[True, False, True, False]])
        with torch.no_grad():
            expected = net(padded, mask).clamp(-1, 1)[:, :, :40, :36]
        torch.testing.assert_close(out[:, [1, 3]], expected[:, [1, 3]])

    @parameterized.expand(
        [
            ({"spatial_dims": 1}, "spatial_dims"),
            ({"num_modalities": 1}, "num_modalities"),
            ({"features": (4, 4, 8)}, "features"),
        ]
    )
    def test_constructor_errors(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            RegressionSynthesisNet(**kwargs)

    def test_input_errors(self):
        net = tiny_regression()
        ok = torch.ones(1, 4, dtype=torch.bool)
        with self.assertRaisesRegex(ValueError, r"images of shape \(B, 4"):
            net(torch.randn(1, 3, 32, 32), ok)
        with self.assertRaisesRegex(ValueError, r"images of shape"):
            net(torch.randn(1, 4, 32, 32, 32), ok)
        with self.assertRaisesRegex(ValueError, r"available of shape \(1, 4\)"):
            net(torch.randn(1, 4, 32, 32), torch.ones(4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "at least one available modality"):
            RegressionSynthesisInferer().sample(torch.randn(1, 4, 32, 32), net, torch.zeros(1, 4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "divisible by 16"):
            net(torch.randn(1, 4, 32, 40), ok)


if __name__ == "__main__":
    unittest.main()
