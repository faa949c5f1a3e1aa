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
"""The diffusion inferer: training path values, sampling with exact predictors (oracles), MONAI's own sampler as a
reference implementation of the denoising loop, and one availability check per sampling call."""

from __future__ import annotations

import unittest
from unittest import mock

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler
from parameterized import parameterized

import monai_msgldm.inferers.sampler as sampler_module
from monai_msgldm.inferers import MultiContrastDiffusionInferer, ddim_step_timesteps
from monai_msgldm.utils import validate_availability
from tests.networks.nets.test_msgldm import tiny_msgldm
from tests.networks.nets.test_plain_ldm import _tiny as tiny_plain_ldm

SCHEDULE = {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}


def ddpm(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type=prediction_type, clip_sample=False)


def ddim(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE, prediction_type=prediction_type, clip_sample=False)


def rflow() -> RFlowScheduler:
    return RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=False, spatial_dim=2)


class _Oracle(torch.nn.Module):
    """The exact predictor for one known clean latent ``z0`` under a scheduler: for DDPM/DDIM schedules
    ``x_t = sqrt(ab) z0 + sqrt(1 - ab) eps`` gives eps (``"epsilon"``) or ``v = sqrt(ab) eps - sqrt(1 - ab) z0``
    (``"v_prediction"``); for rectified flow ``x_t = (1 - t/T) z0 + (t/T) eps`` gives the velocity ``z0 - eps``."""

    def __init__(self, z0: torch.Tensor, scheduler, kind: str) -> None:
        super().__init__()
        self.z0, self.scheduler, self.kind = z0, scheduler, kind
        self.calls = 0

    def forward(self, x, timesteps, context=None):
        self.calls += 1
        xt = x[:, : self.z0.shape[1]]
        if self.kind == "rflow":
            s = (timesteps.float() / self.scheduler.num_train_timesteps).view(-1, 1, 1, 1)
            eps = (xt - (1 - s) * self.z0) / s.clamp_min(1e-12)
            return self.z0 - eps
        ab = self.scheduler.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1).to(x)
        eps = (xt - ab.sqrt() * self.z0) / (1 - ab).sqrt()
        return eps if self.kind == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * self.z0


class TestSamplingPath(unittest.TestCase):
    @parameterized.expand(
        [
            ("ddim_epsilon", lambda: ddim("epsilon"), "epsilon", 10),
            ("ddim_v", lambda: ddim("v_prediction"), "v_prediction", 10),
            ("ddpm_epsilon", lambda: ddpm("epsilon"), "epsilon", 1000),
            ("rflow", rflow, "rflow", 4),
        ]
    )
    def test_exact_predictor_lands_on_the_clean_latent(self, _, make_scheduler, kind, steps):
        """With the exact predictor every scheduler must end on the clean latent: checks the scale factor, the
        concatenation of the condition, the scheduler loop, subset decoding and keeping the given contrasts."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        net.scale_factor.fill_(0.37)
        with torch.no_grad():
            z0 = net.autoencoder.encode_mean(images) * net.scale_factor
            expected = net.autoencoder.decode_stage_2_outputs(z0 / net.scale_factor)
        scheduler = make_scheduler()
        net.unet = _Oracle(z0, scheduler, kind)
        available = torch.tensor([[True, True, True, False], [False, True, False, False]])
        inferer = MultiContrastDiffusionInferer(scheduler, num_inference_steps=steps)
        out = inferer.sample(images, net, available, generator=torch.Generator().manual_seed(0))
        self.assertEqual(net.unet.calls, steps)
        tol = 2e-3 if kind != "ddpm_epsilon" else 1e-2
        torch.testing.assert_close(out[~available], expected[~available], rtol=tol, atol=tol)
        torch.testing.assert_close(out[available], images[available], rtol=0, atol=0)

    @parameterized.expand(
        [
            (f"{kind}_{steps}", kind, steps)
            for kind in ("epsilon", "v_prediction")
            for steps in (1, 2, 3, 7, 20, 30, 1000)
        ]
    )
    def test_ddim_steps_land_on_the_timestep_they_are_labelled_with(self, _, kind, steps):
        """Each DDIM step moves the latents to the noise level of the next timestep the network is called with: on
        the deterministic path of the exact predictor, the noise it infers (the trajectory's) is the same at every
        call, and the loop ends on the clean latent. MONAI's own linspace timesteps break the first property (with 2
        steps the latents move from 999 to 499 and the next call is labelled 0)."""
        torch.manual_seed(0)
        z0 = torch.randn(2, 8, 4, 4)
        scheduler = ddim(kind)
        seen = []

        class Recorder(_Oracle):
            def forward(self, x, timesteps, context=None):
                ab = self.scheduler.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1).to(x)
                seen.append((x[:, : self.z0.shape[1]] - ab.sqrt() * self.z0) / (1 - ab).sqrt())
                return super().forward(x, timesteps)

        inferer = MultiContrastDiffusionInferer(scheduler, num_inference_steps=steps)
        with torch.no_grad():
            out = inferer.denoise(Recorder(z0, scheduler, kind), torch.randn(2, 8, 4, 4), torch.zeros(2, 0, 4, 4))
        self.assertEqual(len(seen), steps)
        for eps in seen[1:]:
            torch.testing.assert_close(eps, seen[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out, z0, rtol=1e-4, atol=1e-4)

    @parameterized.expand([(1,), (2,), (3,), (7,), (20,), (30,), (999,), (1000,)])
    def test_ddim_step_timesteps(self, steps):
        scheduler = ddim()
        timesteps = ddim_step_timesteps(scheduler, steps)
        k = 1000 // steps
        self.assertEqual(timesteps.tolist(), [(steps - i) * k - 1 for i in range(steps)])
        self.assertLessEqual(int(timesteps[0]), 999)
        self.assertLess(int(timesteps[-1]) - k, 0)  # the last step ends on the clean sample
        self.assertTrue(all(int(a) - k == int(b) for a, b in zip(timesteps[:-1], timesteps[1:])))
        if steps == 1000:  # all steps: MONAI's own schedule
            scheduler.set_timesteps(1000)
            self.assertEqual(timesteps.tolist(), scheduler.timesteps.tolist())
        with self.assertRaisesRegex(ValueError, "num_inference_steps in \\[1, 1000\\]"):
            ddim_step_timesteps(scheduler, 1001)

    @parameterized.expand([("ddim", lambda: ddim("epsilon")), ("rflow", rflow), ("ddpm", lambda: ddpm("epsilon"))])
    def test_denoising_loop_matches_monai_sampler(self, _, make_scheduler):
        """Reference implementation: the loop gives what MONAI's DiffusionInferer.sample gives in concat mode. DDPM
        steps draw noise: both draw it from the global RNG (no generator), seeded alike before each loop."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        noise = torch.randn(2, 8, 4, 4)
        condition = torch.randn(2, 8, 4, 4)
        inferer = MultiContrastDiffusionInferer(make_scheduler(), num_inference_steps=5)
        with torch.no_grad():
            torch.manual_seed(7)
            ours = inferer.denoise(net, noise, condition)
            reference_scheduler = make_scheduler()
            if isinstance(reference_scheduler, RFlowScheduler):
                reference_scheduler.set_timesteps(5, input_img_size_numel=16)
            else:
                reference_scheduler.set_timesteps(5)
            if isinstance(reference_scheduler, DDIMScheduler):  # the timesteps DDIM's step is consistent with
                reference_scheduler.timesteps = ddim_step_timesteps(reference_scheduler, 5)
            torch.manual_seed(7)
            reference = DiffusionInferer(reference_scheduler).sample(
                noise, net, reference_scheduler, conditioning=condition, mode="concat"
            )
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)

    @parameterized.expand(
        [
            ("ddim", lambda: ddim("epsilon"), 0.0, tiny_msgldm),
            ("ddim_eta", lambda: ddim("epsilon"), 0.5, tiny_msgldm),
            ("ddpm", lambda: ddpm("epsilon"), 0.0, tiny_msgldm),
            ("ddpm_plain", lambda: ddpm("v_prediction"), 0.0, tiny_plain_ldm),
            ("rflow", rflow, 0.0, tiny_msgldm),
        ]
    )
    def test_one_generator_per_item_makes_each_item_independent_of_its_batch(self, _, make_scheduler, eta, make_net):
        """With one generator per item, item i's synthesis (initial noise and the noise of stochastic steps) comes
        from generator i alone: sampled in a batch of 3 or alone, in another order, it is the same; the global RNG
        is not used. The batched network call may differ from the single one in the last bits (atol 1e-5; on this
        CPU they agree exactly)."""
        torch.manual_seed(0)
        net = make_net().eval()
        images = torch.rand(3, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, True], [True, False, False, False], [False, True, True, False]])
        inferer = MultiContrastDiffusionInferer(make_scheduler(), num_inference_steps=4, eta=eta)

        def generators(*seeds):
            return [torch.Generator().manual_seed(s) for s in seeds]

        rng = torch.get_rng_state()
        batch = inferer.sample(images, net, available, generator=generators(10, 11, 12))
        self.assertTrue(torch.equal(torch.get_rng_state(), rng))  # no global draw anywhere on the path
        for i in range(3):
            alone = inferer.sample(images[i : i + 1], net, available[i : i + 1], generator=generators(10 + i))
            torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-5)
        reordered = inferer.sample(images[[2, 0, 1]], net, available[[2, 0, 1]], generator=generators(12, 10, 11))
        torch.testing.assert_close(reordered, batch[[2, 0, 1]], rtol=0, atol=1e-5)
        other = inferer.sample(images, net, available, generator=generators(10, 11, 13))
        torch.testing.assert_close(other[:2], batch[:2], rtol=0, atol=1e-5)
        self.assertFalse(torch.allclose(other[2][~available[2]], batch[2][~available[2]]))

    @parameterized.expand(
        [
            ("cpu_amp_msgldm", tiny_msgldm, True, True),
            ("cpu_amp_plain", tiny_plain_ldm, True, False),
            ("float32", tiny_msgldm, False, True),
        ]
    )
    def test_cpu_amp(self, _, make_net, cpu_amp, guidance):
        """``cpu_amp``: every part of the network the sampling path calls (the given contrasts' encoder, the
        condition, the UNet, the decoder) runs under CPU bfloat16 autocast; the synthesis comes back in float32,
        within bfloat16 rounding of float32's and not bit-identical to it, with the given contrasts exactly kept.
        Without it (``amp`` alone is for CUDA) nothing runs under autocast and the result is float32's to the bit."""
        torch.manual_seed(0)
        net = make_net(hybrid_condition=True).eval() if make_net is tiny_msgldm else make_net().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, True], [True, False, False, False]])
        seen: dict[str, list[bool]] = {}
        parts = {"encoder": net.autoencoder.model.encoder, "decoder": net.autoencoder.model.decoder, "unet": net.unet}
        if hasattr(net, "structure_net"):
            parts["structure_encoder"] = net.structure_net.structure_encoders[0]  # T1, given in both items
        for name, module in parts.items():
            module.register_forward_pre_hook(
                lambda *_, n=name: seen.setdefault(n, []).append(torch.is_autocast_enabled("cpu"))
            )
        reference = MultiContrastDiffusionInferer(
            ddim("v_prediction"), num_inference_steps=2, known_contrast_guidance=guidance
        ).sample(images, net, available, generator=torch.Generator().manual_seed(3))
        seen.clear()
        inferer = MultiContrastDiffusionInferer(
            ddim("v_prediction"), num_inference_steps=2, known_contrast_guidance=guidance, amp=True, cpu_amp=cpu_amp
        )
        out = inferer.sample(images, net, available, generator=torch.Generator().manual_seed(3))
        self.assertEqual(set(seen), set(parts))
        self.assertEqual({n: set(flags) for n, flags in seen.items()}, {n: {cpu_amp} for n in parts})
        self.assertFalse(torch.is_autocast_enabled("cpu"))
        self.assertEqual(out.dtype, torch.float32)
        torch.testing.assert_close(out[available], images[available], rtol=0, atol=0)
        if cpu_amp:
            difference = (out - reference)[~available].abs()
            self.assertGreater(float(difference.max()), 0.0)
            self.assertLess(float(difference.max()), 0.05)
        else:
            torch.testing.assert_close(out, reference, rtol=0, atol=0)

    def test_initial_noise_is_drawn_per_item(self):
        """Oracle: item i's initial noise is ``randn`` of one item from generator i (on the CPU); one generator draws
        the whole batch as before."""
        inferer = MultiContrastDiffusionInferer(ddim(), num_inference_steps=2)
        noise = inferer.initial_noise((3, 8, 4, 4), [torch.Generator().manual_seed(s) for s in (5, 6, 7)], "cpu")
        for i, s in enumerate((5, 6, 7)):
            expected = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(s))
            torch.testing.assert_close(noise[i : i + 1], expected, rtol=0, atol=0)
        one = inferer.initial_noise((3, 8, 4, 4), torch.Generator().manual_seed(5), "cpu")
        torch.testing.assert_close(one, torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(5)))

    def test_stochastic_steps_are_seeded_by_a_single_generator(self):
        """A single generator for a 2D batch (the evaluator's way) seeds the DDPM step noise too: the same generator
        seed gives the same sample, the global RNG is not used, another seed gives another sample."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, True], [True, False, False, False]])
        inferer = MultiContrastDiffusionInferer(ddpm(), num_inference_steps=4)
        self.assertTrue(inferer.stochastic_steps)
        self.assertFalse(MultiContrastDiffusionInferer(ddim()).stochastic_steps)
        self.assertTrue(MultiContrastDiffusionInferer(ddim(), eta=0.3).stochastic_steps)
        self.assertFalse(MultiContrastDiffusionInferer(rflow()).stochastic_steps)
        rng = torch.get_rng_state()
        a = inferer.sample(images, net, available, generator=torch.Generator().manual_seed(1))
        self.assertTrue(torch.equal(torch.get_rng_state(), rng))
        b = inferer.sample(images, net, available, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        # same initial noise, other step noise: the steps are seeded from the generator, not fixed
        noise = inferer.initial_noise((2, 8, 4, 4), torch.Generator().manual_seed(1), "cpu")
        c = inferer.sample(images, net, available, noise=noise, generator=torch.Generator().manual_seed(2))
        self.assertFalse(torch.allclose(a[~available], c[~available]))

    @parameterized.expand([("msgldm", tiny_msgldm), ("plain", tiny_plain_ldm)])
    def test_keeps_given_ignores_absent_and_is_seeded(self, _, make_net):
        torch.manual_seed(0)
        net = make_net().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, False, True, True], [True, False, False, False]])
        other = images.clone()
        other[0, 1] = torch.rand(16, 16)
        other[1, 2] = float("nan")
        inferer = MultiContrastDiffusionInferer(ddim(), num_inference_steps=3)
        a = inferer.sample(images, net, available, generator=torch.Generator().manual_seed(1))
        b = inferer.sample(other, net, available, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a[~available], b[~available], rtol=0, atol=0)
        self.assertTrue(torch.equal(a[available], images[available]))
        c = inferer.sample(images, net, available, generator=torch.Generator().manual_seed(2))
        self.assertFalse(torch.allclose(a[~available], c[~available]))

    def test_availability_validated_once_and_condition_computed_once(self):
        """One sampling call: one validation of the mask (one host sync), no re-validation in the blocks, one
        condition; only the contrasts missing somewhere in the batch are decoded."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, True, False, True], [True, True, False, False]])
        inferer = MultiContrastDiffusionInferer(ddim(), num_inference_steps=4)
        with (
            mock.patch.object(sampler_module, "validate_availability", wraps=validate_availability) as checks,
            mock.patch.object(net, "condition", wraps=net.condition) as condition,
            mock.patch.object(net, "decode", wraps=net.decode) as decode,
        ):
            inferer.sample(images, net, available)
        self.assertEqual(checks.call_count, 1)
        self.assertEqual(condition.call_count, 1)
        self.assertEqual(decode.call_args.kwargs["modalities"], [2, 3])
        # the volume inferer validates once per call and tells the sampler so (checked=True)
        with mock.patch.object(sampler_module, "validate_availability", wraps=validate_availability) as checks:
            inferer.sample(images, net, available, checked=True)
        self.assertEqual(checks.call_count, 0)

    def test_errors(self):
        net = tiny_msgldm()
        images = torch.randn(1, 4, 16, 16)
        inferer = MultiContrastDiffusionInferer(ddim(), num_inference_steps=2)
        with self.assertRaisesRegex(ValueError, "at least one available modality"):
            inferer.sample(images, net, torch.zeros(1, 4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "booleans or 0/1"):
            inferer.sample(images, net, torch.tensor([[1, 2, 0, 1]]))
        with self.assertRaisesRegex(ValueError, r"available of shape \(1, 4\)"):
            inferer.sample(images, net, torch.ones(1, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, r"images of shape \(B, 4"):
            inferer.sample(torch.randn(1, 3, 16, 16), net, torch.ones(1, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "noise of shape"):
            inferer.sample(images, net, torch.ones(1, 4, dtype=torch.bool), noise=torch.randn(1, 8, 2, 2))
        two = [torch.Generator(), torch.Generator()]
        with self.assertRaisesRegex(ValueError, r"one generator per batch item \(1\), got 2"):
            inferer.sample(images, net, torch.ones(1, 4, dtype=torch.bool), generator=two)
        with self.assertRaisesRegex(ValueError, "torch.Generator or a sequence"):
            inferer.sample(images, net, torch.ones(1, 4, dtype=torch.bool), generator=[0])
        with self.assertRaisesRegex(ValueError, "eta in"):
            MultiContrastDiffusionInferer(ddim(), eta=-0.1)
        with self.assertRaisesRegex(ValueError, "only with a DDIMScheduler"):
            MultiContrastDiffusionInferer(ddpm(), eta=0.5)
        with self.assertRaisesRegex(ValueError, "num_inference_steps in"):
            MultiContrastDiffusionInferer(ddim(), num_inference_steps=0)
        with self.assertRaisesRegex(ValueError, "num_inference_steps in"):
            MultiContrastDiffusionInferer(ddim(), num_inference_steps=1001)
        with self.assertRaisesRegex(ValueError, "Scheduler"):
            MultiContrastDiffusionInferer(object())


class TestTrainingPath(unittest.TestCase):
    @parameterized.expand(
        [
            ("epsilon", lambda: ddpm("epsilon")),
            ("v_prediction", lambda: ddpm("v_prediction")),
            ("sample", lambda: ddpm("sample")),
            ("rflow", rflow),
        ]
    )
    def test_prediction_and_target_values(self, kind, make_scheduler):
        """By hand: z0 = encode, z_t = add_noise(z0, noise, t), prediction = net(cat[z_t, condition], t), and the
        target the scheduler defines."""
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, True, False, True], [False, False, True, False]])
        noise = torch.randn(2, 8, 4, 4)
        t = torch.tensor([10, 700])
        scheduler = make_scheduler()
        inferer = MultiContrastDiffusionInferer(scheduler)
        with mock.patch.object(net.autoencoder, "encode_stage_2_inputs", net.autoencoder.encode_mean):
            prediction, target = inferer(images, net, available, noise=noise, timesteps=t)
            with torch.no_grad():
                z0 = net.encode(images)
                expected_pred = net(
                    torch.cat([scheduler.add_noise(z0, noise, t), net.condition(images, available)], 1), t
                )
        torch.testing.assert_close(prediction, expected_pred)
        if kind == "rflow":
            s = (t.float() / 1000).view(-1, 1, 1, 1)
            torch.testing.assert_close(scheduler.add_noise(z0, noise, t), (1 - s) * z0 + s * noise)
            expected_target = z0 - noise
        else:
            ab = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            expected_target = {
                "epsilon": noise,
                "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * z0,
                "sample": z0,
            }[kind]
        torch.testing.assert_close(target, expected_target)

    @parameterized.expand([("msgldm", tiny_msgldm, 2, (16, 16)), ("msgldm_3d", tiny_msgldm, 3, (16, 16, 16))])
    def test_training_step_reaches_unet_only(self, _, make_net, spatial_dims, size):
        torch.manual_seed(0)
        net = make_net(spatial_dims)
        net.autoencoder.requires_grad_(False)
        net.structure_net.requires_grad_(False)
        opt = torch.optim.Adam(net.unet.parameters(), lr=1e-3)
        images = torch.rand(2, 4, *size) * 2 - 1
        available = torch.tensor([[True, False, True, False], [False, False, False, True]])
        inferer = MultiContrastDiffusionInferer(ddpm())
        before = [p.detach().clone() for p in net.unet.parameters()]
        frozen = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("unet.")}
        for _ in range(3):  # zero-initialised output convs (UNet, res blocks): by step 3 every layer has moved
            opt.zero_grad()
            prediction, target = inferer(images, net, available)
            loss = torch.nn.functional.mse_loss(prediction, target)
            loss.backward()
            opt.step()
        self.assertTrue(all(not torch.equal(b, p) for b, p in zip(before, net.unet.parameters())))
        self.assertTrue(all(p.grad is None for p in net.structure_net.parameters()))
        for k, v in net.state_dict().items():
            if k in frozen:
                torch.testing.assert_close(v, frozen[k], rtol=0, atol=0, msg=k)

    def test_rflow_timesteps_are_drawn_by_the_scheduler(self):
        inferer = MultiContrastDiffusionInferer(RFlowScheduler(1000, sample_method="logit-normal"))
        torch.manual_seed(3)
        t = inferer.training_timesteps(torch.zeros(5, 8, 4, 4))
        torch.manual_seed(3)
        torch.testing.assert_close(t, inferer.scheduler.sample_timesteps(torch.zeros(5, 8, 4, 4)), rtol=0, atol=0)
        torch.manual_seed(5)
        t = MultiContrastDiffusionInferer(ddpm()).training_timesteps(torch.zeros(64, 8, 4, 4))
        torch.manual_seed(5)
        torch.testing.assert_close(t, torch.randint(0, 1000, (64,)).long(), rtol=0, atol=0)  # uniform draw

    @parameterized.expand([("one", [999]), ("ddim_2", [999, 499]), ("unsorted_repeated", [499, 999, 499, 0])])
    def test_train_timesteps_are_drawn_uniformly_from_the_given_set(self, _, steps):
        inferer = MultiContrastDiffusionInferer(ddpm(), train_timesteps=steps)
        expected = sorted(set(steps))
        self.assertEqual(inferer.train_timesteps.tolist(), expected)
        torch.manual_seed(7)
        t = inferer.training_timesteps(torch.zeros(4000, 8, 4, 4))
        torch.manual_seed(7)
        index = torch.randint(0, len(expected), (4000,))
        torch.testing.assert_close(t, torch.tensor(expected)[index], rtol=0, atol=0)  # the reference draw
        self.assertEqual(t.dtype, torch.long)
        counts = torch.stack([(t == s).sum() for s in expected]).float()
        self.assertEqual(int(counts.sum()), 4000)  # nothing outside the set
        # each step about 4000 / K times (binomial: more than 6 standard deviations off has odds below 1e-8)
        k = len(expected)
        sd = (4000 * (1 / k) * (1 - 1 / k)) ** 0.5
        self.assertTrue(bool(((counts - 4000 / k).abs() <= 6 * sd + 1e-6).all()), counts)

    def test_train_timesteps_reach_the_training_path_and_match_the_sampler(self):
        """With the 2-step DDIM sampler's timesteps the training path runs the network only at 999 and 499, and the
        target is the one of those timesteps."""
        steps = ddim_step_timesteps(ddim("v_prediction"), 2).tolist()
        self.assertEqual(steps, [999, 499])
        net = tiny_msgldm().eval()
        seen = []
        forward = net.forward

        def record(x, timesteps, *args, **kwargs):
            seen.extend(timesteps.tolist())
            return forward(x, timesteps, *args, **kwargs)

        inferer = MultiContrastDiffusionInferer(ddpm("v_prediction"), train_timesteps=steps)
        images = torch.rand(6, 4, 16, 16) * 2 - 1
        available = torch.ones(6, 4, dtype=torch.bool)
        noise = torch.randn(6, 8, 4, 4)
        torch.manual_seed(0)
        with mock.patch.object(net, "forward", side_effect=record):
            for _ in range(5):
                inferer(images, net, available, noise=noise)
        self.assertEqual(len(seen), 30)
        self.assertEqual(set(seen), {499, 999})

    def test_train_timesteps_errors(self):
        for bad in ([], [1000], [-1], [1.5], [True], "999", 999):
            with self.assertRaisesRegex(ValueError, "train_timesteps"):
                MultiContrastDiffusionInferer(ddpm(), train_timesteps=bad)
        with self.assertRaisesRegex(ValueError, "RFlowScheduler"):
            MultiContrastDiffusionInferer(rflow(), train_timesteps=[999])
        torch.testing.assert_close(
            MultiContrastDiffusionInferer(ddpm(), train_timesteps=torch.tensor([5, 3])).train_timesteps,
            torch.tensor([3, 5]),
        )

    @parameterized.expand(
        [
            ("epsilon", lambda: ddpm("epsilon"), 1e-4),
            ("v_prediction", lambda: ddpm("v_prediction"), 1e-5),
            ("sample", lambda: ddpm("sample"), 0.0),
            ("rflow", rflow, 1e-5),
        ]
    )
    def test_predicted_latents_invert_the_training_target(self, kind, make_scheduler, tol):
        """The exact training target at the noisy latent implies the clean latent itself, at every timestep (the
        last included, where the epsilon estimate divides by sqrt(alphas_cumprod) ~ 0.014); a wrong prediction's
        estimate moves by the closed-form factor (v: -sqrt(1 - ab), rectified flow: t / T)."""
        torch.manual_seed(0)
        inferer = MultiContrastDiffusionInferer(make_scheduler())
        z0, noise = torch.randn(4, 8, 4, 4), torch.randn(4, 8, 4, 4)
        timesteps = torch.tensor([0, 250, 600, 999])
        noisy = inferer.noisy_latents(z0, noise, timesteps)
        estimate = inferer.predicted_latents(inferer.training_target(z0, noise, timesteps), noisy, timesteps)
        torch.testing.assert_close(estimate, z0, rtol=0, atol=tol)
        shifted = inferer.predicted_latents(inferer.training_target(z0, noise, timesteps) + 1.0, noisy, timesteps)
        if kind == "v_prediction":
            ab = inferer.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
            torch.testing.assert_close(shifted - estimate, -(1 - ab).sqrt().expand_as(z0), rtol=0, atol=1e-5)
        if kind == "rflow":
            torch.testing.assert_close(
                shifted - estimate, (timesteps / 1000.0).view(-1, 1, 1, 1).expand_as(z0), rtol=0, atol=1e-5
            )

    def test_predicted_latents_errors(self):
        inferer = MultiContrastDiffusionInferer(ddpm("v_prediction"))
        with self.assertRaisesRegex(ValueError, "predicted_latents"):
            inferer.predicted_latents(torch.zeros(2, 8, 4, 4), torch.zeros(2, 8, 4, 3), torch.tensor([1, 2]))
        with self.assertRaisesRegex(ValueError, "timesteps"):
            inferer.predicted_latents(torch.zeros(2, 8, 4, 4), torch.zeros(2, 8, 4, 4), torch.tensor([1]))


if __name__ == "__main__":
    unittest.main()
