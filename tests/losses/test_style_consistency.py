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
import math
import unittest

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from parameterized import parameterized

from monai_msgldm.losses import StyleConsistencyLoss

__all__: list[str] = []


def reference_matrix(codes: np.ndarray, scale: float) -> np.ndarray:
    """Pairwise BCE terms computed by hand: rows ordered modality-major, p = m * B + b."""
    batch, modalities, _ = codes.shape
    rows = [(m, codes[b, m]) for m in range(modalities) for b in range(batch)]
    out = np.zeros((len(rows), len(rows)))
    for p, (mp, ep) in enumerate(rows):
        for q, (mq, eq) in enumerate(rows):
            z = scale * float(ep @ eq) / (np.linalg.norm(ep) * np.linalg.norm(eq))
            t = 1.0 if mp == mq else 0.0
            sig = 1.0 / (1.0 + math.exp(-z))
            out[p, q] = -(t * math.log(sig) + (1.0 - t) * math.log(1.0 - sig))
    return out


class TestStyleConsistencyLoss(unittest.TestCase):
    @parameterized.expand([(2, 3, 4, 0.07), (3, 2, 5, 0.5), (1, 4, 8, 1.0)])
    def test_hand_computed_reference(self, batch, modalities, dim, temperature):
        codes = torch.randn(batch, modalities, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        expected = reference_matrix(codes.numpy(), 1.0 / temperature)
        none = StyleConsistencyLoss(temperature, reduction="none")(codes)
        self.assertEqual(none.shape, (modalities * batch, modalities * batch))
        np.testing.assert_allclose(none.numpy(), expected, rtol=1e-5, atol=1e-6)
        mean = StyleConsistencyLoss(temperature)(codes)
        self.assertAlmostEqual(mean.item(), expected.mean(), places=5)
        total = StyleConsistencyLoss(temperature, reduction="sum")(codes)
        self.assertAlmostEqual(total.item(), expected.sum(), places=4)

    def test_clustered_lower_than_random(self):
        batch, modalities, dim = 4, 4, 8
        gen = torch.Generator().manual_seed(1)
        directions = torch.eye(dim)[:modalities]  # orthogonal across modalities
        scales = torch.rand(batch, modalities, 1, generator=gen) + 0.5  # lengths do not matter after normalising
        clustered = directions[None] * scales
        random = torch.randn(batch, modalities, dim, generator=gen)
        loss_fn = StyleConsistencyLoss()
        clustered_loss, random_loss = loss_fn(clustered).item(), loss_fn(random).item()
        self.assertLess(clustered_loss, random_loss)
        # same modality: cos 1, z = 1/0.07, BCE = log(1 + exp(-z)); across: cos 0, z = 0, BCE = log 2
        z = 1.0 / 0.07
        expected = (math.log1p(math.exp(-z)) + (modalities - 1) * math.log(2.0)) / modalities
        self.assertAlmostEqual(clustered_loss, expected, places=5)
        # anti-correlated modalities (M = 2, opposite directions) are lower still
        anti = torch.stack([torch.ones(batch, dim), -torch.ones(batch, dim)], dim=1)
        self.assertLess(loss_fn(anti).item(), loss_fn(clustered[:, :2]).item())

    def test_gradient_wrt_codes(self):
        codes = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
        loss_fn = StyleConsistencyLoss()
        loss = loss_fn(codes)
        loss.backward()
        self.assertTrue(bool(torch.isfinite(codes.grad).all()))
        with torch.no_grad():
            stepped = codes - 0.1 * codes.grad / codes.grad.norm()
        self.assertLess(loss_fn(stepped).item(), loss.item())

    def test_fixed_temperature_is_a_buffer(self):
        loss_fn = StyleConsistencyLoss(temperature=0.1)
        self.assertEqual(list(loss_fn.parameters()), [])
        self.assertIn("log_scale", loss_fn.state_dict())
        self.assertAlmostEqual(loss_fn.logit_scale.item(), 10.0, places=4)
        self.assertAlmostEqual(loss_fn.temperature, 0.1, places=6)

    def test_learnable_temperature_is_trained(self):
        loss_fn = StyleConsistencyLoss(temperature=0.07, learnable_temperature=True)
        params = list(loss_fn.parameters())
        self.assertEqual(len(params), 1)
        self.assertIs(params[0], loss_fn.log_scale)
        start = loss_fn.log_scale.detach().clone()
        optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
        codes = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(3))
        loss = loss_fn(codes)
        loss.backward()
        grad = loss_fn.log_scale.grad
        self.assertIsNotNone(grad)
        self.assertGreater(abs(grad.item()), 1e-6)
        optimizer.step()
        self.assertFalse(torch.equal(loss_fn.log_scale.detach(), start))
        torch.testing.assert_close(loss_fn.log_scale.detach(), start - 0.5 * grad)
        self.assertLess(loss_fn(codes).item(), loss.item())  # the step lowered the loss
        self.assertNotAlmostEqual(loss_fn.temperature, 0.07, places=4)

    def test_max_scale_clamp(self):
        loss_fn = StyleConsistencyLoss(temperature=0.1, learnable_temperature=True, max_scale=20.0)
        codes = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            loss_fn.log_scale.fill_(math.log(1000.0))
        self.assertAlmostEqual(loss_fn.logit_scale.item(), 20.0, places=3)
        expected = StyleConsistencyLoss(temperature=1.0 / 20.0, max_scale=20.0)(codes)
        clamped = loss_fn(codes)
        self.assertAlmostEqual(clamped.item(), expected.item(), places=5)
        clamped.backward()
        self.assertEqual(loss_fn.log_scale.grad.item(), 0.0)  # clamped: no gradient past the bound
        with self.assertRaisesRegex(ValueError, "max_scale"):
            StyleConsistencyLoss(temperature=0.01, max_scale=50.0)

    def test_mask_excludes_rows(self):
        batch, modalities, dim = 3, 4, 6
        codes = torch.randn(batch, modalities, dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        mask = torch.ones(batch, modalities)
        mask[0, 1] = 0
        mask[2, 3] = 0
        full = StyleConsistencyLoss(reduction="none")(codes)
        keep = mask.t().reshape(-1).bool()  # modality-major row order
        sub = full[keep][:, keep]
        self.assertAlmostEqual(StyleConsistencyLoss()(codes, mask).item(), sub.mean().item(), places=6)
        self.assertAlmostEqual(StyleConsistencyLoss(reduction="sum")(codes, mask).item(), sub.sum().item(), places=5)
        masked_none = StyleConsistencyLoss(reduction="none")(codes, mask.bool())
        self.assertEqual(masked_none.shape, full.shape)
        self.assertEqual(masked_none[~keep].abs().sum().item(), 0.0)
        self.assertEqual(masked_none[:, ~keep].abs().sum().item(), 0.0)
        torch.testing.assert_close(masked_none[keep][:, keep], sub)
        # a modality absent from every sample is the same as dropping it
        mask = torch.ones(batch, modalities)
        mask[:, 2] = 0
        dropped = StyleConsistencyLoss()(codes[:, [0, 1, 3]])
        self.assertAlmostEqual(StyleConsistencyLoss()(codes, mask).item(), dropped.item(), places=6)
        # the codes of an unavailable modality get no gradient; nothing available gives a zero loss
        codes.requires_grad_(True)
        StyleConsistencyLoss()(codes, mask).backward()
        self.assertEqual(codes.grad[:, 2].abs().sum().item(), 0.0)
        self.assertGreater(codes.grad[:, 0].abs().sum().item(), 0.0)
        empty = StyleConsistencyLoss()(codes, torch.zeros(batch, modalities))
        self.assertEqual(empty.item(), 0.0)
        self.assertTrue(empty.requires_grad)

    @parameterized.expand(
        [
            ({"temperature": 0.0}, "temperature"),
            ({"temperature": -0.1}, "temperature"),
            ({"max_scale": 0.0}, "max_scale"),
            ({"reduction": "batch"}, "batch"),
        ]
    )
    def test_bad_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            StyleConsistencyLoss(**kwargs)

    def test_bad_inputs(self):
        loss_fn = StyleConsistencyLoss()
        with self.assertRaisesRegex(ValueError, r"input of shape \(B, M, D\).*got shape \(4, 8\)"):
            loss_fn(torch.rand(4, 8))
        with self.assertRaisesRegex(ValueError, "M >= 2"):
            loss_fn(torch.rand(4, 1, 8))
        with self.assertRaisesRegex(ValueError, r"target.*\(2, 3\), got \(3, 2\)"):
            loss_fn(torch.rand(2, 3, 8), torch.ones(3, 2))
        with self.assertRaisesRegex(ValueError, "0 and 1"):
            loss_fn(torch.rand(2, 3, 8), torch.full((2, 3), 0.5))

    def test_supervised_trainer(self):
        torch.manual_seed(0)
        batch, modalities, dim = 2, 4, 8

        class TinyStyleNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(modalities, modalities * dim, 3, groups=modalities)

            def forward(self, x):
                return self.conv(x).mean(dim=(2, 3)).view(x.shape[0], modalities, dim)

        gen = torch.Generator().manual_seed(6)
        data = [
            {
                "image": torch.rand(modalities, 12, 12, generator=gen),
                "label": (torch.rand(modalities, generator=gen) > 0.3).float(),
            }
            for _ in range(2 * batch)
        ]
        net = TinyStyleNet()
        loss_fn = StyleConsistencyLoss(learnable_temperature=True)
        before = [p.detach().clone() for p in net.parameters()]
        scale_before = loss_fn.log_scale.detach().clone()
        losses = []
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=DataLoader(data, batch_size=batch),
            network=net,
            optimizer=torch.optim.Adam(list(net.parameters()) + list(loss_fn.parameters()), lr=1e-2),
            loss_function=loss_fn,
            decollate=False,
        )
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda engine: losses.append(engine.state.output["loss"].item())
        )
        states = []  # the network's and the loss's (temperature) parameters when each iteration starts
        trainer.add_event_handler(
            Events.ITERATION_STARTED,
            lambda engine: states.append((copy.deepcopy(net.state_dict()), copy.deepcopy(loss_fn.state_dict()))),
        )
        trainer.run()
        self.assertEqual(len(losses), 2)
        # each reported loss is the loss of its batch under the parameters before its step
        for i, (net_state, loss_state) in enumerate(states):
            ref_net, ref_loss = TinyStyleNet(), StyleConsistencyLoss(learnable_temperature=True)
            ref_net.load_state_dict(net_state)
            ref_loss.load_state_dict(loss_state)
            batch_data = data[i * batch : (i + 1) * batch]
            with torch.no_grad():
                expected = ref_loss(
                    ref_net(torch.stack([d["image"] for d in batch_data])),
                    torch.stack([d["label"] for d in batch_data]),
                )
            self.assertGreater(expected.item(), 0.0)
            self.assertAlmostEqual(losses[i], expected.item(), places=5)
        self.assertTrue(any(not torch.equal(b, p) for b, p in zip(before, net.parameters())))
        self.assertFalse(torch.equal(loss_fn.log_scale.detach(), scale_before))


if __name__ == "__main__":
    unittest.main()
