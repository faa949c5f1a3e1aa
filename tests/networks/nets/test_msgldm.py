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
from unittest import mock

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from parameterized import parameterized

from monai_msgldm.networks.nets import MSGLDM, ModalityWiseAutoencoder, StructureStyleNet
from monai_msgldm.networks.nets.msgldm import resize_to_grid


def tiny_msgldm(
    spatial_dims: int = 2, num_modalities: int = 4, hybrid_condition: bool = False, pixel_condition: bool = False
) -> MSGLDM:
    """A tiny MSG-LDM: autoencoder factor 4, structure strides (1, 2, 2) -> same grid as the latent; with
    ``hybrid_condition`` the UNet also takes the given latents (2 channels per contrast) and the mask, with
    ``pixel_condition`` the given images (4 ** spatial_dims channels per contrast)."""
    ae = AutoencoderKL(
        spatial_dims=spatial_dims,
        channels=(8, 8, 8),
        latent_channels=2,
        num_res_blocks=1,
        norm_num_groups=4,
        attention_levels=(False, False, False),
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )
    structure = StructureStyleNet(
        spatial_dims=spatial_dims,
        num_modalities=num_modalities,
        structure_channels=(4, 8, 8),
        strides=(1, 2, 2),
        style_channels=(4, 8, 8),
        style_dim=4,
        msse_heads=2,
    )
    unet = DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=num_modalities * 2
        + 8
        + (num_modalities * 3 if hybrid_condition else 0)
        + (num_modalities * 4**spatial_dims if pixel_condition else 0),
        out_channels=num_modalities * 2,
        channels=(8, 8),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=4,
        num_head_channels=4,
    )
    return MSGLDM(
        spatial_dims,
        num_modalities,
        autoencoder=ae,
        structure_net=structure,
        unet=unet,
        hybrid_condition=hybrid_condition,
        pixel_condition=pixel_condition,
    )


class TestModalityWiseAutoencoder(unittest.TestCase):
    def test_encode_decode_shapes_and_per_modality(self):
        torch.manual_seed(0)
        net = tiny_msgldm().autoencoder.eval()
        x = torch.randn(2, 4, 16, 16)
        z = net.encode_mean(x)
        self.assertEqual(tuple(z.shape), (2, 8, 4, 4))
        # modality m's latent is the shared autoencoder applied to channel m alone
        z2 = net.model.encode(x[:, 2:3])[0]
        torch.testing.assert_close(z[:, 4:6], z2)
        decoded = net.decode_stage_2_outputs(z)
        self.assertEqual(tuple(decoded.shape), (2, 4, 16, 16))
        subset = net.decode_stage_2_outputs(z, modalities=[1, 3])
        torch.testing.assert_close(subset, decoded[:, [1, 3]])
        select = torch.tensor([[True, False, False, True], [False, True, True, True]])
        torch.testing.assert_close(net.decode_selected(z, select)[:, 0], decoded[select])
        msgldm = tiny_msgldm()
        msgldm.autoencoder.load_state_dict(net.state_dict())
        msgldm.scale_factor.fill_(0.5)
        torch.testing.assert_close(msgldm.decode_selected(z * 0.5, select), net.decode_selected(z, select))

    def test_errors(self):
        net = tiny_msgldm().autoencoder
        with self.assertRaisesRegex(ValueError, r"\(B, 4, \*spatial\)"):
            net.encode_stage_2_inputs(torch.randn(1, 3, 16, 16))
        with self.assertRaisesRegex(ValueError, "divisible by 4"):
            net.encode_stage_2_inputs(torch.randn(1, 4, 18, 16))
        with self.assertRaisesRegex(ValueError, "modalities"):
            net.decode_stage_2_outputs(torch.randn(1, 8, 4, 4), modalities=[4])
        with self.assertRaisesRegex(ValueError, "select"):
            net.decode_selected(torch.randn(1, 8, 4, 4), torch.ones(1, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "select"):
            net.decode_selected(torch.randn(1, 8, 4, 4), torch.ones(1, 4))
        with self.assertRaisesRegex(ValueError, "latents"):
            net.decode_selected(torch.randn(1, 6, 4, 4), torch.ones(1, 4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "single-channel"):
            ModalityWiseAutoencoder(
                AutoencoderKL(
                    2,
                    in_channels=2,
                    out_channels=2,
                    channels=(4, 4),
                    attention_levels=(False, False),
                    norm_num_groups=4,
                    num_res_blocks=1,
                )
            )


class TestMSGLDM(unittest.TestCase):
    def test_network_owns_no_diffusion(self):
        """A network computes: no scheduler, no sampling loop, no loss (the inferer has them)."""
        net = tiny_msgldm()
        for name in ("scheduler", "synthesize", "diffusion_loss", "ddim_scheduler"):
            self.assertFalse(hasattr(net, name), name)

    def test_structure_condition_values(self):
        """F_s is the structure branch on the images with absent contrasts zeroed, on the latent grid; absent
        contrasts cannot change it, present ones do."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, True], [False, False, True, False]])
        with torch.no_grad():
            fs = net.condition(images, available)
            mask = available[:, :, None, None].to(images.dtype)
            reference = net.structure_net.encode_structure(images * mask, available)
        self.assertEqual(tuple(fs.shape), (2, 8, 4, 4))  # tiny net: structure grid 16 / 4 == latent grid
        torch.testing.assert_close(fs, reference, rtol=0, atol=0)
        changed_absent = images.clone()
        changed_absent[0, 1] = torch.rand(16, 16)
        changed_absent[1, 0] = -1.0
        changed_present = images.clone()
        changed_present[0, 2] = torch.rand(16, 16)
        with torch.no_grad():
            torch.testing.assert_close(net.condition(changed_absent, available), fs, rtol=0, atol=0)
            moved = (net.condition(changed_present, available) - fs)[0].abs().max()
        self.assertGreater(float(moved), 1e-4)

    def test_condition_from_structure_features(self):
        """structure_features(images) (per-contrast, mask-free) passed to condition give the same F_s and hybrid
        condition as the images alone, for every mask; absent contrasts still cannot change it."""
        torch.manual_seed(0)
        for hybrid in (False, True):
            net = tiny_msgldm(hybrid_condition=hybrid).eval()
            images = torch.rand(3, 4, 16, 16) * 2 - 1
            with torch.no_grad():
                features = net.structure_features(images)
                self.assertEqual(
                    [tuple(f.shape) for f in features], [(3, 4, 4, 16, 16), (3, 4, 8, 8, 8), (3, 4, 8, 4, 4)]
                )
                for available in (
                    torch.tensor([[True, False, True, True], [False, False, True, False], [True, True, False, True]]),
                    torch.tensor([[False, True, False, False]] * 3),
                ):
                    with self.subTest(hybrid=hybrid, available=available.tolist()):
                        expected = net.condition(images, available)
                        got = net.condition(images, available, structure_features=features)
                        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
                        changed = torch.where(available[:, :, None, None], images, torch.rand_like(images))
                        torch.testing.assert_close(
                            net.condition(changed, available, structure_features=net.structure_features(changed)),
                            expected,
                            rtol=1e-5,
                            atol=1e-6,
                        )

    def test_structure_condition_resized_by_area_average(self):
        """When the structure grid is finer than the latent grid by an integer factor, F_s is its area average."""
        torch.manual_seed(0)
        structure = torch.randn(1, 8, 8, 8)
        resized = resize_to_grid(structure, (4, 4))
        expected = structure.reshape(1, 8, 4, 2, 4, 2).mean(dim=(3, 5))
        torch.testing.assert_close(resized, expected)
        self.assertIs(resize_to_grid(structure, (8, 8)), structure)

    def test_forward_is_the_unet_call(self):
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        x, t = torch.randn(2, 16, 4, 4), torch.tensor([3, 700])
        with torch.no_grad():
            torch.testing.assert_close(net(x, t), net.unet(x, timesteps=t), rtol=0, atol=0)

    def test_calibrate_scale_factor(self):
        torch.manual_seed(0)
        net = tiny_msgldm()
        images = torch.rand(4, 4, 16, 16) * 2 - 1
        with mock.patch.object(net.autoencoder, "encode_stage_2_inputs", net.autoencoder.encode_mean):
            value = net.calibrate_scale_factor(images)
            with torch.no_grad():
                expected = 1.0 / float(net.autoencoder.encode_mean(images).std())
                scaled = net.encode(images)  # the scaled latent of the same (deterministic) encoding has unit std
        self.assertAlmostEqual(value, expected, places=5)
        self.assertAlmostEqual(float(net.scale_factor), value, places=6)
        self.assertIn("scale_factor", net.state_dict())
        self.assertAlmostEqual(float(scaled.std()), 1.0, places=4)

    def test_calibrate_scale_factor_present_contrasts_only(self):
        """With ``available``, the std is over the latents of the present contrasts: a -1 fill of an absent contrast
        (what the preprocessing writes) does not enter it."""
        torch.manual_seed(0)
        net = tiny_msgldm()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        images[0, 1] = -1.0  # case 0 lacks contrast 1
        available = torch.tensor([[True, False, True, True], [True, True, True, True]])
        with mock.patch.object(net.autoencoder, "encode_stage_2_inputs", net.autoencoder.encode_mean):
            value = net.calibrate_scale_factor(images, available)
            with torch.no_grad():
                z = net.autoencoder.encode_mean(images)
        per = z.shape[1] // 4
        present = torch.cat([z[0, :per], z[0, 2 * per :], z[1]]).flatten()
        self.assertAlmostEqual(value, 1.0 / float(present.std()), places=5)
        self.assertNotAlmostEqual(value, 1.0 / float(z.std()), places=3)
        with self.assertRaisesRegex(ValueError, "at least one available contrast"):
            net.calibrate_scale_factor(images, torch.zeros(2, 4, dtype=torch.bool))

    @parameterized.expand([("2d", 2, (16, 12)), ("3d", 3, (8, 12, 4))])
    def test_given_pixels_moves_every_pixel_onto_the_latent_grid(self, _, spatial_dims, size):
        """given_pixels is space to depth by the autoencoder factor (pixel_unshuffle's channel order), per contrast,
        zero for absent contrasts: channel m * f^d + offset at latent position p holds pixel f * p + offset."""
        torch.manual_seed(0)
        net = tiny_msgldm(spatial_dims, hybrid_condition=True, pixel_condition=True)
        images = torch.randn(2, 4, *size)
        available = torch.tensor([[True, False, True, True], [False, True, True, False]])
        out = net.given_pixels(images, available)
        f, grid = 4, [s // 4 for s in size]
        self.assertEqual(tuple(out.shape), (2, 4 * f**spatial_dims, *grid))
        expected = images * available.view(2, 4, *([1] * spatial_dims))
        if spatial_dims == 2:  # torch's own space to depth
            unshuffled = torch.nn.functional.pixel_unshuffle(expected.reshape(8, 1, *size), f)
            torch.testing.assert_close(out, unshuffled.reshape(2, 4 * f**2, *grid), rtol=0, atol=0)
        for m in range(4):
            for offset in ((0, 0, 0), (1, 3, 2), (3, 0, 1))[: 3 if spatial_dims == 3 else 2]:
                offset = offset[:spatial_dims]
                index = m * f**spatial_dims + sum(o * f ** (spatial_dims - 1 - i) for i, o in enumerate(offset))
                pixels = expected[(slice(None), m, *[slice(o, None, f) for o in offset])]
                torch.testing.assert_close(out[:, index], pixels, rtol=0, atol=0)

    def test_pixel_condition_appends_the_given_pixels_to_the_hybrid_condition(self):
        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=True, pixel_condition=True).eval()
        hybrid = tiny_msgldm(hybrid_condition=True).eval()
        hybrid.autoencoder.load_state_dict(net.autoencoder.state_dict())
        hybrid.structure_net.load_state_dict(net.structure_net.state_dict())
        self.assertEqual(net.condition_channels, hybrid.condition_channels + 4 * 16)
        images = torch.randn(2, 4, 16, 16)
        available = torch.tensor([[True, True, True, False], [True, False, False, False]])
        with torch.no_grad():
            condition = net.condition(images, available)
            torch.testing.assert_close(condition[:, : hybrid.condition_channels], hybrid.condition(images, available))
        torch.testing.assert_close(condition[:, hybrid.condition_channels :], net.given_pixels(images, available))
        # absent contrasts cannot reach the pixel channels
        changed = images.clone()
        changed[0, 3] += 5.0
        with torch.no_grad():
            torch.testing.assert_close(net.condition(changed, available), condition)
        with self.assertRaisesRegex(ValueError, "hybrid_condition=True with pixel_condition=True"):
            MSGLDM(2, 4, autoencoder=net.autoencoder.model, structure_net=net.structure_net, pixel_condition=True)

    def test_errors(self):
        net = tiny_msgldm()
        images = torch.randn(1, 4, 16, 16)
        with self.assertRaisesRegex(ValueError, r"images of shape \(B, 4"):
            net.condition(torch.randn(1, 3, 16, 16), torch.ones(1, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, r"available of shape \(1, 4\)"):
            net.condition(images, torch.ones(1, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "bool tensor"):
            net.condition(images, torch.ones(1, 4))
        with self.assertRaisesRegex(ValueError, "divisible"):
            net.condition(torch.randn(1, 4, 18, 16), torch.ones(1, 4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "in_channels"):
            MSGLDM(
                2,
                4,
                autoencoder=net.autoencoder.model,
                structure_net=net.structure_net,
                unet=DiffusionModelUNet(
                    2, 4, 8, channels=(8, 8), attention_levels=(False, False), norm_num_groups=4, num_res_blocks=1
                ),
            )


if __name__ == "__main__":
    unittest.main()
