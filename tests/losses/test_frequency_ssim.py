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

import copy
import unittest

import numpy as np
import scipy.fft
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.losses import SSIMLoss
from monai.transforms import GaussianSmooth
from parameterized import parameterized

from monai_msgldm.losses import FrequencySSIMLoss

__all__: list[str] = []

SHAPES = [(2, (2, 1, 24, 24)), (3, (2, 1, 16, 16, 16))]


def blocky_images(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random binary blocks of 4 px: sharp edges, so noise and blur both change the spectrum."""
    spatial_dims = len(shape) - 2
    gen = torch.Generator().manual_seed(seed)
    small = (torch.rand(shape[:2] + tuple(s // 4 for s in shape[2:]), generator=gen) > 0.5).float()
    for dim in range(2, 2 + spatial_dims):
        small = small.repeat_interleave(4, dim=dim)
    return small


def scipy_amplitude(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    axes = tuple(range(-spatial_dims, 0))
    return torch.from_numpy(np.abs(scipy.fft.dctn(x.double().numpy(), type=2, norm="ortho", axes=axes))).float()


class TestFrequencySSIMLoss(unittest.TestCase):
    @parameterized.expand(SHAPES)
    def test_identical_is_zero(self, spatial_dims, shape):
        x = blocky_images(shape, 0) + 0.1 * torch.rand(shape, generator=torch.Generator().manual_seed(3))
        loss = FrequencySSIMLoss(spatial_dims)(x, x.clone())
        self.assertAlmostEqual(loss.item(), 0.0, places=5)

    @parameterized.expand(SHAPES)
    def test_matches_monai_ssim_on_scipy_spectra(self, spatial_dims, shape):
        gen = torch.Generator().manual_seed(4)
        target = blocky_images(shape, 1)
        pred = target + 0.2 * torch.randn(shape, generator=gen)
        out = FrequencySSIMLoss(spatial_dims, reduction="none")(pred, target)
        self.assertEqual(out.shape, (shape[0], 1))
        amp_pred, amp_target = scipy_amplitude(pred, spatial_dims), scipy_amplitude(target, spatial_dims)
        for b in range(shape[0]):
            data_range = float(amp_target[b].max() - amp_target[b].min())
            expected = SSIMLoss(spatial_dims, data_range=data_range)(amp_pred[b : b + 1], amp_target[b : b + 1])
            self.assertAlmostEqual(out[b, 0].item(), expected.item(), places=4)
        # an independent, hand-written uniform-window SSIM on one 2D sample
        if spatial_dims == 2:
            out_u = FrequencySSIMLoss(2, kernel_type="uniform", win_size=5, reduction="none")(pred, target)
            a, t = amp_pred[0, 0].double().numpy(), amp_target[0, 0].double().numpy()
            c1, c2 = (0.01 * (t.max() - t.min())) ** 2, (0.03 * (t.max() - t.min())) ** 2
            values = []
            for i in range(a.shape[0] - 4):
                for j in range(a.shape[1] - 4):
                    pa, pt = a[i : i + 5, j : j + 5], t[i : i + 5, j : j + 5]
                    ma, mt = pa.mean(), pt.mean()
                    va, vt, cov = (pa**2).mean() - ma**2, (pt**2).mean() - mt**2, (pa * pt).mean() - ma * mt
                    values.append((2 * ma * mt + c1) * (2 * cov + c2) / ((ma**2 + mt**2 + c1) * (va + vt + c2)))
            self.assertAlmostEqual(out_u[0, 0].item(), 1.0 - float(np.mean(values)), places=4)

    @parameterized.expand(SHAPES)
    def test_monotonic_in_noise_and_blur(self, spatial_dims, shape):
        loss_fn = FrequencySSIMLoss(spatial_dims, reduction="none")
        for seed in range(2):
            target = blocky_images(shape, seed)
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(10 + seed))
            noisy = torch.stack([loss_fn(target + level * noise, target) for level in (0.01, 0.1, 0.5)])
            blurred = torch.stack(
                [loss_fn(torch.stack([GaussianSmooth(s)(t) for t in target]), target) for s in (0.5, 1.0, 2.0)]
            )
            for values in (noisy, blurred):
                self.assertTrue(bool((values[1:] > values[:-1]).all()), values.flatten().tolist())
                self.assertTrue(bool(((values >= 0) & (values <= 2)).all()))
            self.assertGreater(noisy[-1].min().item(), 0.3)

    def test_range_zero_to_two(self):
        gen = torch.Generator().manual_seed(5)
        for _ in range(3):
            pred, target = torch.randn(2, 2, 12, 12, generator=gen), torch.randn(2, 2, 12, 12, generator=gen)
            out = FrequencySSIMLoss(2, win_size=5, reduction="none")(pred * 5, target)
            self.assertTrue(bool(((out >= 0) & (out <= 2)).all()))
        # zero prediction: zero spectrum, so mu_x = var_x = cov = 0 and the SSIM map is the closed form
        # c1 / (mu_y^2 + c1) * c2 / (var_y + c2) (both factors in (0, 1)), with the Gaussian window (11, 1.5)
        target = blocky_images((2, 1, 16, 16), 2)
        zero_pred = FrequencySSIMLoss(2)(torch.zeros_like(target), target).item()
        g = np.exp(-(((np.arange(11) - 5) / 1.5) ** 2) / 2)
        window = np.outer(g, g) / g.sum() ** 2
        ssim = []
        for amp in scipy_amplitude(target, 2).double().numpy()[:, 0]:
            c1, c2 = (0.01 * (amp.max() - amp.min())) ** 2, (0.03 * (amp.max() - amp.min())) ** 2
            patches = np.lib.stride_tricks.sliding_window_view(amp, (11, 11))
            mu, mu2 = (patches * window).sum((-2, -1)), (patches**2 * window).sum((-2, -1))
            ssim.append((c1 / (mu**2 + c1) * c2 / (mu2 - mu**2 + c2)).mean())
        self.assertAlmostEqual(zero_pred, 1.0 - float(np.mean(ssim)), places=5)
        self.assertTrue(0.3 < zero_pred < 1.0, zero_pred)
        # an all-zero target: its data range is clamped to float32 eps, the constants vanish and SSIM is ~0
        self.assertAlmostEqual(FrequencySSIMLoss(2)(target, torch.zeros_like(target)).item(), 1.0, places=5)
        self.assertAlmostEqual(FrequencySSIMLoss(2)(torch.zeros_like(target), torch.zeros_like(target)).item(), 0.0)

    def test_data_range_modes(self):
        target = blocky_images((2, 1, 16, 16), 3)
        target[1] = target[1] * 3.0 + 1.0  # a different amplitude range per sample
        pred = target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(6))
        amp = scipy_amplitude(target, 2)
        per_sample = FrequencySSIMLoss(2, reduction="none")(pred, target)
        for b in range(2):
            rng = float(amp[b].max() - amp[b].min())
            fixed = FrequencySSIMLoss(2, data_range=rng)(pred[b : b + 1], target[b : b + 1])
            self.assertAlmostEqual(per_sample[b, 0].item(), fixed.item(), places=5)
        batch_range = float(amp.max() - amp.min())
        batch = FrequencySSIMLoss(2, data_range="target_batch", reduction="none")(pred, target)
        fixed = FrequencySSIMLoss(2, data_range=batch_range, reduction="none")(pred, target)
        torch.testing.assert_close(batch, fixed, rtol=1e-5, atol=1e-6)
        self.assertGreater((batch - per_sample).abs().max().item(), 1e-4)  # sample 0 has a smaller own range
        # a larger fixed data_range gives larger constants, hence a higher SSIM (a lower loss) for this corruption
        small = FrequencySSIMLoss(2, data_range=1.0)(pred, target)
        large = FrequencySSIMLoss(2, data_range=1000.0)(pred, target)
        self.assertLess(large.item(), small.item())

    @parameterized.expand(SHAPES)
    def test_gradients_flow(self, spatial_dims, shape):
        target = blocky_images(shape, 4)
        pred = (target + 0.3 * torch.randn(shape, generator=torch.Generator().manual_seed(7))).requires_grad_(True)
        loss_fn = FrequencySSIMLoss(spatial_dims, win_size=7)
        loss = loss_fn(pred, target)
        loss.backward()
        self.assertTrue(bool(torch.isfinite(pred.grad).all()))
        self.assertGreater(pred.grad.abs().sum().item(), 0.0)
        with torch.no_grad():  # a small step against the gradient lowers the loss
            stepped = pred - 0.5 * pred.grad / pred.grad.norm()
        self.assertLess(loss_fn(stepped, target).item(), loss.item())

    def test_reductions_and_channels(self):
        gen = torch.Generator().manual_seed(8)
        target = torch.rand(3, 2, 16, 12, generator=gen)
        pred = target + 0.2 * torch.randn(target.shape, generator=gen)
        none = FrequencySSIMLoss(2, win_size=(7, 5), reduction="none")(pred, target)
        self.assertEqual(none.shape, (3, 1))
        mean = FrequencySSIMLoss(2, win_size=(7, 5), reduction="mean")(pred, target)
        total = FrequencySSIMLoss(2, win_size=(7, 5), reduction="sum")(pred, target)
        self.assertEqual(mean.ndim, 0)
        self.assertAlmostEqual(mean.item(), none.mean().item(), places=6)
        self.assertAlmostEqual(total.item(), none.sum().item(), places=5)
        # per sample: the mean over channels of the single-channel losses (same per-sample data range)
        amp = scipy_amplitude(target, 2)
        for b in range(3):
            rng = float(amp[b].max() - amp[b].min())
            per_channel = [
                FrequencySSIMLoss(2, data_range=rng, win_size=(7, 5))(
                    pred[b : b + 1, c : c + 1], target[b : b + 1, c : c + 1]
                )
                for c in range(2)
            ]
            self.assertAlmostEqual(none[b, 0].item(), float(np.mean([v.item() for v in per_channel])), places=5)

    @parameterized.expand(
        [
            ({"spatial_dims": 1}, "spatial_dims"),
            ({"spatial_dims": 2, "data_range": "max"}, "data_range"),
            ({"spatial_dims": 2, "data_range": -1.0}, "data_range"),
            ({"spatial_dims": 2, "kernel_type": "box"}, "kernel_type"),
            ({"spatial_dims": 2, "win_size": (11, 11, 11)}, "win_size"),
            ({"spatial_dims": 2, "win_size": 0}, "win_size"),
            ({"spatial_dims": 3, "kernel_sigma": -1.0}, "kernel_sigma"),
            ({"spatial_dims": 2, "k1": 0.0}, "k1"),
            ({"spatial_dims": 2, "reduction": "max"}, "max"),
        ]
    )
    def test_bad_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            FrequencySSIMLoss(**kwargs)

    def test_bad_inputs(self):
        loss_fn = FrequencySSIMLoss(2)
        with self.assertRaisesRegex(ValueError, "same shape"):
            loss_fn(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))
        with self.assertRaisesRegex(ValueError, "4 dims"):
            loss_fn(torch.rand(1, 16, 16), torch.rand(1, 16, 16))
        with self.assertRaisesRegex(ValueError, r"win_size=\(11, 11\), got \(16, 10\)"):
            loss_fn(torch.rand(1, 1, 16, 10), torch.rand(1, 1, 16, 10))

    def test_supervised_trainer(self):
        torch.manual_seed(0)
        data = [
            {"image": blocky_images((1, 1, 16, 16), i)[0], "label": blocky_images((1, 1, 16, 16), i)[0]}
            for i in range(4)
        ]
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)
        )
        before = [p.detach().clone() for p in net.parameters()]
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=DataLoader(data, batch_size=2),
            network=net,
            optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
            loss_function=FrequencySSIMLoss(spatial_dims=2, win_size=7),
            decollate=False,
        )
        weights = []  # the network's weights when each iteration starts
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: weights.append(copy.deepcopy(net.state_dict())))
        trainer.run()
        self.assertEqual(trainer.state.iteration, 2)
        self.assertTrue(any(not torch.equal(b, p) for b, p in zip(before, net.parameters())))
        # the reported loss is the frequency SSIM loss of the last batch under the weights before its step
        reference = copy.deepcopy(net)
        reference.load_state_dict(weights[-1])
        with torch.no_grad():
            expected = FrequencySSIMLoss(spatial_dims=2, win_size=7)(
                reference(torch.stack([d["image"] for d in data[2:]])), torch.stack([d["label"] for d in data[2:]])
            )
        self.assertAlmostEqual(trainer.state.output["loss"].item(), expected.item(), places=6)


if __name__ == "__main__":
    unittest.main()
