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


def tiny_msgldm(spatial_dims: int = 2, num_modalities: int = 4) -> MSGLDM:
    """A tiny MSG-LDM: autoencoder factor 4, structure strides (1, 2, 2) -> same grid as the latent."""
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
        in_channels=num_modalities * 2 + 8,
        out_channels=num_modalities * 2,
        channels=(8, 8),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=4,
        num_head_channels=4,
    )
    return MSGLDM(spatial_dims, num_modalities, autoencoder=ae, structure_net=structure, unet=unet)


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

    def test_errors(self):
        net = tiny_msgldm().autoencoder
        with self.assertRaisesRegex(ValueError, r"\(B, 4, \*spatial\)"):
            net.encode_stage_2_inputs(torch.randn(1, 3, 16, 16))
        with self.assertRaisesRegex(ValueError, "divisible by 4"):
            net.encode_stage_2_inputs(torch.randn(1, 4, 18, 16))
        with self.assertRaisesRegex(ValueError, "modalities"):
            net.decode_stage_2_outputs(torch.randn(1, 8, 4, 4), modalities=[4])
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


class _OracleEps(torch.nn.Module):
    """The exact noise predictor for one known clean latent ``z0``: eps = (x_t - sqrt(ab_t) z0) / sqrt(1 - ab_t)."""

    def __init__(self, z0: torch.Tensor, alphas_cumprod: torch.Tensor, structure_channels: int) -> None:
        super().__init__()
        self.z0, self.ab = z0, alphas_cumprod
        self.out_channels = z0.shape[1]
        self.in_channels = z0.shape[1] + structure_channels

    def forward(self, x, timesteps, context=None):
        ab = self.ab[timesteps.long()].view(-1, *([1] * (x.ndim - 1))).to(x)
        return (x[:, : self.out_channels] - ab.sqrt() * self.z0) / (1 - ab).sqrt()


class TestMSGLDM(unittest.TestCase):
    def test_sampling_path_with_exact_noise_predictor(self):
        """With a perfect epsilon model DDIM must land on the clean latent: checks scale factor, conditioning
        concatenation, scheduler, subset decoding and replacement end to end, independently of training."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        net.scale_factor.fill_(0.37)
        with torch.no_grad():
            z0 = net.autoencoder.encode_mean(images) * net.scale_factor
            expected = net.autoencoder.decode_stage_2_outputs(z0 / net.scale_factor)
        net.unet = _OracleEps(z0, net.scheduler.alphas_cumprod, net.structure_channels)
        available = torch.tensor([[True, True, True, False], [False, True, False, False]])
        out = net.synthesize(images, available, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out[~available], expected[~available], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(out[available], images[available], rtol=0, atol=0)

    # 3D at 16^3: the latent's lower UNet level must have > 1 token, or attention q/k get no gradient
    @parameterized.expand([(2, (16, 16)), (3, (16, 16, 16))])
    def test_training_step_reaches_unet_only(self, spatial_dims, size):
        torch.manual_seed(0)
        net = tiny_msgldm(spatial_dims)
        net.autoencoder.requires_grad_(False)
        net.structure_net.requires_grad_(False)
        opt = torch.optim.Adam(net.unet.parameters(), lr=1e-3)
        images = torch.rand(2, 4, *size) * 2 - 1
        available = torch.tensor([[True, False, True, False], [False, False, False, True]])
        before = [p.detach().clone() for p in net.unet.parameters()]
        frozen = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("unet.")}
        for _ in range(3):  # zero-initialised output convs (UNet, res blocks): by step 3 every layer has moved
            opt.zero_grad()
            loss = net.diffusion_loss(images, available)
            self.assertTrue(torch.isfinite(loss))
            loss.backward()
            opt.step()
        changed = [not torch.equal(b, p) for b, p in zip(before, net.unet.parameters())]
        self.assertTrue(all(changed))
        self.assertTrue(all(p.grad is None for p in net.structure_net.parameters()))
        for k, v in net.state_dict().items():
            if k in frozen:
                torch.testing.assert_close(v, frozen[k], rtol=0, atol=0, msg=k)

    def test_diffusion_loss_value(self):
        """With given noise and timesteps the loss is MSE(unet([add_noise(z), F_s], t), noise)."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(1, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, True, False, True]])
        noise = torch.randn(1, 8, 4, 4)
        t = torch.tensor([500])
        with mock.patch.object(net.autoencoder, "encode_stage_2_inputs", net.autoencoder.encode_mean):
            loss = net.diffusion_loss(images, available, noise=noise, timesteps=t)
            z = net.encode(images)
        noisy = net.scheduler.add_noise(z, noise, t)
        pred = net(torch.cat([noisy, net.encode_structure(images, available)], 1), t)
        torch.testing.assert_close(loss, torch.mean((pred - noise) ** 2))

    @parameterized.expand([(2, (16, 16)), (3, (8, 8, 8))])
    def test_synthesize_keeps_available_and_fills_missing(self, spatial_dims, size):
        torch.manual_seed(0)
        net = tiny_msgldm(spatial_dims).eval()
        images = torch.rand(2, 4, *size) * 2 - 1
        available = torch.tensor([[True, True, True, False], [True, False, False, False]])
        out = net.synthesize(images, available, num_inference_steps=3, generator=torch.Generator().manual_seed(1))
        self.assertEqual(out.shape, images.shape)
        torch.testing.assert_close(out[available], images[available], rtol=0, atol=0)
        self.assertFalse(torch.allclose(out[~available], images[~available]))
        self.assertTrue(torch.isfinite(out).all())
        # same generator seed -> identical synthesis
        again = net.synthesize(images, available, num_inference_steps=3, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out, again)

    def test_synthesis_ignores_missing_inputs_and_structure_computed_once(self):
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(1, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, True]])
        other = images.clone()
        other[:, 1] = torch.rand(1, 16, 16)
        with mock.patch.object(net.structure_net, "encode_structure", wraps=net.structure_net.encode_structure) as spy:
            a = net.synthesize(images, available, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
            self.assertEqual(spy.call_count, 1)
        b = net.synthesize(other, available, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(a[:, 1], b[:, 1])

    def test_structure_condition_on_latent_grid(self):
        net = tiny_msgldm()
        fs = net.encode_structure(torch.randn(2, 4, 16, 16), torch.ones(2, 4, dtype=torch.bool))
        self.assertEqual(tuple(fs.shape), (2, 8, 4, 4))

    def test_calibrate_scale_factor(self):
        torch.manual_seed(0)
        net = tiny_msgldm()
        images = torch.rand(4, 4, 16, 16) * 2 - 1
        value = net.calibrate_scale_factor(images)
        self.assertAlmostEqual(float(net.scale_factor), value)
        self.assertIn("scale_factor", net.state_dict())
        self.assertGreater(value, 0)

    def test_errors(self):
        net = tiny_msgldm()
        images = torch.randn(1, 4, 16, 16)
        with self.assertRaisesRegex(ValueError, r"images of shape \(B, 4"):
            net.synthesize(torch.randn(1, 3, 16, 16), torch.ones(1, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "at least one True"):
            net.synthesize(images, torch.zeros(1, 4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, r"available of shape \(1, 4\)"):
            net.synthesize(images, torch.ones(1, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "divisible"):
            net.synthesize(torch.randn(1, 4, 18, 16), torch.ones(1, 4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "num_inference_steps"):
            net.ddim_scheduler(0)
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
