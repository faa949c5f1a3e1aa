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
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from parameterized import parameterized

from monai_msgldm.networks.nets import MSGLDM, MultiContrastLDM, PlainConditionalLDM

__all__: list[str] = []


def _tiny(
    spatial_dims: int = 2, latent: int = 2, in_extra: int = 0, pixel_condition: bool = False
) -> PlainConditionalLDM:
    ae = AutoencoderKL(
        spatial_dims=spatial_dims,
        channels=(8, 8),
        latent_channels=latent,
        num_res_blocks=1,
        attention_levels=(False, False),
        norm_num_groups=4,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )
    unet = DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=2 * 4 * latent + 4 + in_extra + (4 * 2**spatial_dims if pixel_condition else 0),
        out_channels=4 * latent,
        channels=(8, 8),
        attention_levels=(False, False),
        norm_num_groups=4,
        num_res_blocks=1,
    )
    return PlainConditionalLDM(
        spatial_dims=spatial_dims, num_modalities=4, autoencoder=ae, unet=unet, pixel_condition=pixel_condition
    )


class TestPlainConditionalLDM(unittest.TestCase):
    def test_is_a_multi_contrast_ldm_without_structure_branch(self):
        net = _tiny()
        self.assertIsInstance(net, MultiContrastLDM)
        self.assertNotIsInstance(net, MSGLDM)
        self.assertFalse(hasattr(net, "structure_net"))
        self.assertEqual(net.frozen_modules(), [net.autoencoder])
        self.assertEqual(net.size_divisor, 4)  # autoencoder 2 x UNet 2 (two levels)
        self.assertEqual(net.condition_channels, 4 * 2 + 4)

    @parameterized.expand([("2d", 2, (16, 16)), ("3d", 3, (8, 8, 8))])
    def test_pixel_condition_appends_the_given_pixels(self, _, spatial_dims, size):
        torch.manual_seed(0)
        net = _tiny(spatial_dims, pixel_condition=True).eval()
        self.assertEqual(net.condition_channels, 4 * 2 + 4 + 4 * 2**spatial_dims)
        images = torch.randn(2, 4, *size)
        available = torch.tensor([[True, False, True, False], [False, False, False, True]])
        with torch.no_grad():
            condition = net.condition(images, available)
            torch.testing.assert_close(condition[:, :12], net.latent_condition(images, available))
        torch.testing.assert_close(condition[:, 12:], net.given_pixels(images, available))
        with torch.no_grad():
            self.assertEqual(
                tuple(
                    net(torch.cat([torch.randn(2, 8, *condition.shape[2:]), condition], 1), torch.tensor([3, 9])).shape
                ),
                (2, 8, *condition.shape[2:]),
            )

    @parameterized.expand([(2, (16, 16)), (3, (8, 8, 8))])
    def test_condition_masks_absent_latents_and_appends_the_mask(self, spatial_dims, size):
        torch.manual_seed(0)
        net = _tiny(spatial_dims).eval()
        images = torch.rand(2, 4, *size) * 2 - 1
        available = torch.tensor([[True, True, True, False], [False, True, False, False]])
        cond = net.condition(images, available)
        grid = tuple(s // 2 for s in size)
        self.assertEqual(tuple(cond.shape), (2, 12, *grid))
        latents = cond[:, :8].reshape(2, 4, 2, *grid)
        self.assertTrue(
            torch.all(latents[0, 3] == 0) and torch.all(latents[1, 0] == 0) and torch.all(latents[1, 2] == 0)
        )
        self.assertTrue(torch.equal(cond[:, 8:].flatten(2).amax(-1), available.float()))
        # the present ones are the scaled posterior means of their contrasts
        with torch.no_grad():
            z = net.autoencoder.encode_mean(images).reshape(2, 4, 2, *grid) * net.scale_factor
        torch.testing.assert_close(latents[available], z[available])
        # absent contrasts cannot leak into the condition
        other = images.clone()
        other[0, 3] = torch.rand(*size)
        other[1, 0] = -1
        self.assertTrue(torch.allclose(net.condition(other, available), cond))

    def test_condition_encodes_only_the_present_contrasts(self):
        net = _tiny().eval()
        seen = []
        encode = net.autoencoder.model.encode
        net.autoencoder.model.encode = lambda x: seen.append(x.shape[0]) or encode(x)
        available = torch.tensor([[True, False, True, False], [True, False, False, False]])
        net.condition(torch.rand(2, 4, 16, 16), available)
        self.assertEqual(seen, [2 * 2])  # t1 and t2 of both samples; t1ce and flair are absent everywhere

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "in_channels=20"):
            _tiny(in_extra=1)
        net = _tiny()
        with self.assertRaisesRegex(ValueError, "bool tensor"):
            net.condition(torch.zeros(1, 4, 16, 16), torch.ones(1, 4))
        with self.assertRaisesRegex(ValueError, "images of shape"):
            net.condition(torch.zeros(1, 3, 16, 16), torch.ones(1, 3, dtype=torch.bool))


if __name__ == "__main__":
    unittest.main()
