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
"""The sampling options of the diffusion inferer: known-contrast guidance (oracle values), the posterior mean of N
samples with its standard-deviation map (against separate samples and ``torch.std``), and MSG-LDM's hybrid
condition."""

from __future__ import annotations

import unittest
from unittest import mock

import torch
from parameterized import parameterized

from monai_msgldm.inferers import ModalitySynthesisInferer, MultiContrastDiffusionInferer, RegressionSynthesisInferer
from tests.inferers.test_diffusion import _Oracle, ddim, ddpm, rflow
from tests.networks.nets.test_msgldm import tiny_msgldm
from tests.networks.nets.test_plain_ldm import _tiny as tiny_plain_ldm
from tests.networks.nets.test_regression import tiny_regression


class _RecordingOracle(_Oracle):
    """The exact predictor of :class:`_Oracle` that also records the noisy latents it is called with."""

    def __init__(self, z0, scheduler, kind) -> None:
        super().__init__(z0, scheduler, kind)
        self.inputs: list[tuple[int, torch.Tensor]] = []

    def forward(self, x, timesteps, context=None):
        self.inputs.append((int(timesteps[0]), x[:, : self.z0.shape[1]].clone()))
        return super().forward(x, timesteps, context)


def _given_latents(net, images, available):
    """The oracle of the guidance encodings: scaled posterior means, zero for absent contrasts, computed here from
    the autoencoder directly."""
    with torch.no_grad():
        z = net.autoencoder.encode_mean(images) * net.scale_factor  # (B, M * C, *L)
    c = z.shape[1] // images.shape[1]
    keep = available.repeat_interleave(c, dim=1)[..., None, None]
    return torch.where(keep, z, torch.zeros(())), keep


class TestKnownContrastGuidance(unittest.TestCase):
    @parameterized.expand([("ddim", ddim, "epsilon", 8), ("rflow", rflow, "rflow", 4), ("ddpm", ddpm, "epsilon", 50)])
    def test_given_channels_follow_their_noised_encodings(self, _, make_scheduler, kind, steps):
        """An oracle that predicts the noise for a WRONG clean latent on the given channels: without guidance the
        given channels land on that wrong latent; with guidance every denoiser call sees the given contrasts'
        encodings noised to its timestep with the sample's own noise, and the loop returns those encodings
        exactly; the missing channels still land on the oracle's target."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        net.scale_factor.fill_(0.5)
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, False], [False, True, True, True]])
        known, keep = _given_latents(net, images, available)
        wrong = known + 0.7 * keep  # the oracle's clean latent disagrees with the encodings on the given channels
        scheduler = make_scheduler()
        net.unet = _RecordingOracle(wrong, scheduler, "epsilon" if kind == "ddpm" else kind)
        noise = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(3))
        condition = net.condition(images, available)
        plain = MultiContrastDiffusionInferer(scheduler, num_inference_steps=steps)
        tol = 1e-2 if kind == "ddpm" else 2e-3
        with torch.no_grad():
            unguided = plain.denoise(net, noise, condition, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(unguided, wrong, rtol=tol, atol=tol)
            net.unet.inputs.clear()
            guided_inferer = MultiContrastDiffusionInferer(scheduler, steps, known_contrast_guidance=True)
            guided = guided_inferer.denoise(
                net, noise, condition, generator=torch.Generator().manual_seed(1), known=known, known_mask=keep
            )
        self.assertEqual(len(net.unet.inputs), steps)
        for t, x in net.unet.inputs:
            expected = scheduler.add_noise(known, noise, torch.full((2,), t, dtype=torch.long))
            torch.testing.assert_close(x[keep.expand_as(x)], expected[keep.expand_as(x)], rtol=0, atol=1e-6)
        torch.testing.assert_close(guided[keep.expand_as(guided)], known[keep.expand_as(known)], rtol=0, atol=0)
        missing = ~keep.expand_as(guided)
        torch.testing.assert_close(guided[missing], wrong[missing], rtol=tol, atol=tol)

    @parameterized.expand([("msgldm", tiny_msgldm), ("plain", tiny_plain_ldm)])
    def test_sample_passes_the_given_encodings(self, _, make_net):
        """Through ``sample``: the encodings the inferer anchors to are the network's given latents (the oracle
        above); with the exact oracle for them, every contrast lands on the autoencoder's reconstruction."""
        torch.manual_seed(0)
        net = make_net().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, True, False, False], [False, False, True, True]])
        known, _ = _given_latents(net, images, available)
        with torch.no_grad():
            full = net.autoencoder.encode_mean(images) * net.scale_factor
            expected = net.autoencoder.decode_stage_2_outputs(full / net.scale_factor)
        torch.testing.assert_close(net.given_latents(images, available), known, rtol=1e-5, atol=1e-6)
        scheduler = ddim()
        net.unet = _RecordingOracle(full, scheduler, "epsilon")
        inferer = MultiContrastDiffusionInferer(scheduler, 6, known_contrast_guidance=True)
        out = inferer.sample(images, net, available, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out[~available], expected[~available], rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(out[available], images[available], rtol=0, atol=0)

    @parameterized.expand([("hybrid", lambda: tiny_msgldm(hybrid_condition=True)), ("plain", tiny_plain_ldm)])
    def test_given_contrasts_are_encoded_once(self, _, make_net):
        """With guidance the sampler encodes the given contrasts once and hands the encodings to the condition; the
        condition the denoiser sees equals the one the network computes on its own."""
        torch.manual_seed(0)
        net = make_net().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, True, False, True], [False, True, True, False]])
        with torch.no_grad():
            reference = net.condition(images, available)
        seen = []
        net.unet.register_forward_pre_hook(lambda _, args: seen.append(args[0][:, net.latent_channels() :].clone()))
        inferer = MultiContrastDiffusionInferer(ddim(), 2, known_contrast_guidance=True)
        with mock.patch.object(net.autoencoder, "encode_mean_of", wraps=net.autoencoder.encode_mean_of) as encode:
            inferer.sample(images, net, available, generator=torch.Generator().manual_seed(0))
        self.assertEqual(encode.call_count, 1)
        self.assertEqual(len(seen), 2)
        for condition in seen:
            torch.testing.assert_close(condition, reference, rtol=0, atol=0)

    @parameterized.expand(
        [
            ("hybrid_guided", lambda: tiny_msgldm(hybrid_condition=True), True, 1),
            ("paper_plain", tiny_msgldm, False, 2),
            ("plain_ldm_guided", tiny_plain_ldm, True, 2),
        ]
    )
    def test_image_batch_size_gives_the_same_synthesis(self, _, make_net, guidance, size):
        """The image-resolution parts in pieces of ``image_batch_size`` items (the denoiser on the whole batch):
        the same samples and posterior samples as all at once, with the pieces the size asked for."""
        torch.manual_seed(0)
        net = make_net().eval()
        images = torch.rand(3, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, True, False, True], [False, True, True, False], [True, False, False, False]])

        def gens(n):
            return [torch.Generator().manual_seed(10 * n + i) for i in range(3)]

        whole = MultiContrastDiffusionInferer(ddim(), 2, known_contrast_guidance=guidance)
        pieces = MultiContrastDiffusionInferer(ddim(), 2, known_contrast_guidance=guidance, image_batch_size=size)
        with mock.patch.object(net, "decode", wraps=net.decode) as decode:
            a = pieces.sample(images, net, available, generator=gens(0))
        self.assertEqual(
            [c.args[0].shape[0] for c in decode.call_args_list], [size] * (3 // size) + [3 % size] * (3 % size > 0)
        )
        torch.testing.assert_close(a, whole.sample(images, net, available, generator=gens(0)), rtol=1e-5, atol=1e-5)
        many = pieces.sample_many(images, net, available, [gens(0), gens(1)])
        expected = whole.sample_many(images, net, available, [gens(0), gens(1)])
        torch.testing.assert_close(many, expected, rtol=1e-5, atol=1e-5)

    @parameterized.expand([(0,), (-1,), (1.5,), (True,)])
    def test_bad_image_batch_size(self, size):
        with self.assertRaisesRegex(ValueError, "image_batch_size"):
            MultiContrastDiffusionInferer(ddim(), 2, image_batch_size=size)

    def test_denoise_needs_the_mask(self):
        inferer = MultiContrastDiffusionInferer(ddim(), 2, known_contrast_guidance=True)
        with self.assertRaisesRegex(ValueError, "known_mask"):
            inferer.denoise(tiny_msgldm(), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4), known=torch.zeros(1))


class TestPosteriorMean(unittest.TestCase):
    @parameterized.expand(
        [("ddim", ddim, False), ("ddim_guided", ddim, True), ("ddpm", ddpm, False), ("rflow", rflow, True)]
    )
    def test_sample_many_equals_separate_samples(self, _, make_scheduler, guidance):
        """The batched N samples (condition once) equal N separate ``sample`` calls with the same generators."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, False], [True, True, True, False]])
        inferer = MultiContrastDiffusionInferer(make_scheduler(), 3, known_contrast_guidance=guidance)

        def gens(n):
            return [torch.Generator().manual_seed(10 * n + i) for i in range(2)]

        many = inferer.sample_many(images, net, available, [gens(n) for n in range(3)])
        self.assertEqual(tuple(many.shape), (3, 2, 4, 16, 16))
        for n in range(3):
            one = inferer.sample(images, net, available, generator=gens(n))
            torch.testing.assert_close(many[n], one, rtol=0, atol=1e-5)
        self.assertFalse(torch.allclose(many[0][~available], many[1][~available]))

    def test_one_sample_is_plain_sampling_with_zero_std(self):
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        vol = torch.rand(1, 4, 16, 16, 5) * 2 - 1
        available = ["t1", "t2"]
        plain = ModalitySynthesisInferer(MultiContrastDiffusionInferer(ddim(), 3), 2, seed=4, progress=False)
        with_std = ModalitySynthesisInferer(
            MultiContrastDiffusionInferer(ddim(), 3), 2, seed=4, progress=False, num_samples=1, return_std=True
        )
        expected = plain(vol, net, available)
        out = with_std(vol, net, available)
        self.assertEqual(tuple(out.shape), (1, 8, 16, 16, 5))
        torch.testing.assert_close(out[:, :4], expected, rtol=0, atol=0)
        self.assertTrue(torch.all(out[:, 4:] == 0))

    @parameterized.expand([("ddim", ddim, False), ("ddpm_guided", ddpm, True)])
    def test_mean_and_std_of_n_samples(self, _, make_scheduler, guidance):
        """Volume, 2D model: the mean and the std map equal ``torch.mean`` / ``torch.std`` of the N samples drawn
        one by one from the item generators ``(seed, b, k, n)``; the std is zero on the given contrasts and on the
        skipped empty slice, and positive on the synthesized ones."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        vol = torch.rand(1, 4, 16, 16, 4) * 2 - 1
        vol[..., 2] = -1.0  # empty slice: not sampled
        available = torch.tensor([[True, False, True, False]])
        sampler = MultiContrastDiffusionInferer(make_scheduler(), 3, known_contrast_guidance=guidance)
        inferer = ModalitySynthesisInferer(sampler, 3, seed=9, progress=False, num_samples=3, return_std=True)
        out = inferer(vol, net, available)
        mean, std = out[:, :4], out[:, 4:]
        for k in (0, 1, 3):
            samples = torch.stack(
                [
                    sampler.sample(
                        vol[..., k],
                        net,
                        available,
                        generator=[ModalitySynthesisInferer.item_generator(9, 0, k, n)],
                    )
                    for n in range(3)
                ]
            )
            torch.testing.assert_close(mean[..., k], samples.mean(dim=0), rtol=0, atol=1e-5)
            torch.testing.assert_close(std[..., k], torch.std(samples, dim=0), rtol=0, atol=1e-5)
            self.assertTrue(torch.all(std[0, [1, 3], ..., k] > 0))
        self.assertTrue(torch.all(std[:, [0, 2]] == 0))
        self.assertTrue(torch.all(std[..., 2] == 0) and torch.all(mean[0, [1, 3], ..., 2] == -1.0))

    def test_deterministic_sampler_has_zero_std(self):
        torch.manual_seed(0)
        net = tiny_regression().eval()
        images = torch.rand(2, 4, 32, 32) * 2 - 1
        inferer = ModalitySynthesisInferer(
            RegressionSynthesisInferer(), seed=0, progress=False, num_samples=2, return_std=True
        )
        out = inferer(images, net, ["t1"])
        self.assertTrue(torch.all(out[:, 4:] == 0))
        plain = ModalitySynthesisInferer(RegressionSynthesisInferer(), seed=0, progress=False)(images, net, ["t1"])
        torch.testing.assert_close(out[:, :4], plain, rtol=0, atol=1e-6)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "num_samples >= 1"):
            ModalitySynthesisInferer(num_samples=0)
        inferer = MultiContrastDiffusionInferer(ddim(), 2)
        images, available = torch.randn(1, 4, 16, 16), torch.ones(1, 4, dtype=torch.bool)
        with self.assertRaisesRegex(ValueError, "non-empty sequence of generators"):
            inferer.sample_many(images, tiny_msgldm(), available, [])
        with self.assertRaisesRegex(ValueError, "one generator per batch item"):
            inferer.sample_many(images, tiny_msgldm(), available, [[torch.Generator(), torch.Generator()]])


class TestHybridCondition(unittest.TestCase):
    def test_condition_is_structure_then_given_latents_then_mask(self):
        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=True).eval()
        self.assertEqual(net.condition_channels, 8 + 4 * 2 + 4)
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, False], [False, True, True, True]])
        with torch.no_grad():
            condition = net.condition(images, available)
            structure = net.encode_structure(images, available)
            known, _ = _given_latents(net, images, available)
        torch.testing.assert_close(condition[:, :8], structure, rtol=0, atol=0)
        torch.testing.assert_close(condition[:, 8:16], known, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            condition[:, 16:], available.float()[..., None, None].expand(2, 4, 4, 4), rtol=0, atol=0
        )
        # absent contrasts cannot leak into the condition
        other = images.clone()
        other[~available] = torch.rand(int((~available).sum()), 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(net.condition(other, available), condition, rtol=0, atol=0)
        # training passes its sampled latents: the given part is those, masked
        latents = torch.randn(2, 8, 4, 4)
        with torch.no_grad():
            trained = net.condition(images, available, latents=latents)
        keep = available.repeat_interleave(2, dim=1)[..., None, None]
        torch.testing.assert_close(trained[:, 8:16], torch.where(keep, latents, torch.zeros(())), rtol=0, atol=0)

    def test_trains_and_samples(self):
        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=True)
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, False], [False, True, True, True]])
        prediction, target = MultiContrastDiffusionInferer(ddpm())(images, net, available)
        torch.nn.functional.mse_loss(prediction, target).backward()
        self.assertIsNotNone(net.unet.conv_in.conv.weight.grad)
        out = MultiContrastDiffusionInferer(ddim(), 2).sample(images, net.eval(), available)
        torch.testing.assert_close(out[available], images[available], rtol=0, atol=0)

    def test_unet_channels_are_checked(self):
        with self.assertRaisesRegex(ValueError, r"\+ 28 condition channels"):
            from monai_msgldm.networks.nets import MSGLDM

            plain = tiny_msgldm()
            MSGLDM(2, 4, structure_net=plain.structure_net, unet=plain.unet, hybrid_condition=True)
