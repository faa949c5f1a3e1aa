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

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from parameterized import parameterized

from monai_msgldm.losses import FrequencySSIMLoss, StructureAwareLoss

__all__: list[str] = []

CASES = [
    (2, (2, 1, 24, 24), 1.0, 1.0, {}),
    (2, (2, 2, 16, 20), 0.5, 2.0, {"win_size": 7, "kernel_type": "uniform"}),
    (3, (2, 1, 16, 16, 16), 1.0, 0.3, {"win_size": 7, "data_range": 10.0}),
    (3, (1, 1, 12, 12, 12), 0.0, 1.0, {"win_size": 5, "data_range": "target_batch"}),
    (2, (2, 1, 12, 12), 2.0, 0.0, {"win_size": 5}),
]


def make_pair(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen)
    return target + 0.2 * torch.randn(shape, generator=gen), target


class TestStructureAwareLoss(unittest.TestCase):
    @parameterized.expand(CASES)
    def test_equals_weighted_sum(self, spatial_dims, shape, l1_weight, frequency_weight, kwargs):
        pred, target = make_pair(shape, 0)
        freq_none = FrequencySSIMLoss(spatial_dims, reduction="none", **kwargs)(pred, target)  # (B, 1)
        l1_none = (pred - target).abs().flatten(1).mean(1, keepdim=True)
        loss_none = StructureAwareLoss(spatial_dims, l1_weight, frequency_weight, reduction="none", **kwargs)(
            pred, target
        )
        self.assertEqual(loss_none.shape, (shape[0], 1))
        torch.testing.assert_close(loss_none, l1_weight * l1_none + frequency_weight * freq_none)

        expected_mean = l1_weight * torch.nn.L1Loss()(pred, target) + frequency_weight * FrequencySSIMLoss(
            spatial_dims, **kwargs
        )(pred, target)
        loss_mean = StructureAwareLoss(spatial_dims, l1_weight, frequency_weight, **kwargs)(pred, target)
        self.assertEqual(loss_mean.ndim, 0)
        self.assertAlmostEqual(loss_mean.item(), expected_mean.item(), places=5)
        loss_sum = StructureAwareLoss(spatial_dims, l1_weight, frequency_weight, reduction="sum", **kwargs)(
            pred, target
        )
        self.assertAlmostEqual(loss_sum.item(), loss_none.sum().item(), places=5)

    def test_identical_is_zero_and_gradient(self):
        pred, target = make_pair((2, 1, 16, 16), 1)
        loss_fn = StructureAwareLoss(2, win_size=7)
        self.assertAlmostEqual(loss_fn(target, target.clone()).item(), 0.0, places=5)
        pred.requires_grad_(True)
        loss = loss_fn(pred, target)
        loss.backward()
        self.assertTrue(bool(torch.isfinite(pred.grad).all()))
        self.assertGreater(pred.grad.abs().sum().item(), 0.0)

    def test_reuses_frequency_loss_options(self):
        loss_fn = StructureAwareLoss(3, win_size=5, kernel_sigma=0.8, data_range=2.0, k1=0.02)
        self.assertIsInstance(loss_fn.frequency_loss, FrequencySSIMLoss)
        self.assertEqual(loss_fn.frequency_loss.win_size, (5, 5, 5))
        self.assertEqual(loss_fn.frequency_loss.kernel_sigma, (0.8, 0.8, 0.8))
        self.assertEqual(loss_fn.frequency_loss.data_range, 2.0)
        self.assertEqual(loss_fn.frequency_loss.k1, 0.02)
        self.assertEqual(loss_fn.frequency_loss.reduction, "none")

    @parameterized.expand(
        [
            ({"l1_weight": -1.0}, "l1_weight"),
            ({"frequency_weight": float("nan")}, "frequency_weight"),
            ({"l1_weight": 0.0, "frequency_weight": 0.0}, "positive"),
            ({"data_range": "auto"}, "data_range"),
            ({"reduction": "avg"}, "avg"),
        ]
    )
    def test_bad_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            StructureAwareLoss(2, **kwargs)

    def test_bad_inputs(self):
        loss_fn = StructureAwareLoss(2, frequency_weight=0.0)
        with self.assertRaisesRegex(ValueError, "same shape"):
            loss_fn(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 12))
        with self.assertRaisesRegex(ValueError, "win_size"):
            loss_fn(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))

    def test_supervised_trainer(self):
        torch.manual_seed(0)
        data = []
        for i in range(4):
            pred, target = make_pair((1, 1, 16, 16), i)
            data.append({"image": pred[0], "label": target[0]})
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
            loss_function=StructureAwareLoss(spatial_dims=2, win_size=7),
            decollate=False,
        )
        weights = []  # the network's weights when each iteration starts
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: weights.append(copy.deepcopy(net.state_dict())))
        trainer.run()
        self.assertEqual(trainer.state.iteration, 2)
        self.assertTrue(any(not torch.equal(b, p) for b, p in zip(before, net.parameters())))
        # the reported loss is the structure-aware loss of the last batch under the weights before its step
        reference = copy.deepcopy(net)
        reference.load_state_dict(weights[-1])
        with torch.no_grad():
            expected = StructureAwareLoss(spatial_dims=2, win_size=7)(
                reference(torch.stack([d["image"] for d in data[2:]])), torch.stack([d["label"] for d in data[2:]])
            )
        self.assertGreater(expected.item(), 0.0)
        self.assertAlmostEqual(trainer.state.output["loss"].item(), expected.item(), places=6)


if __name__ == "__main__":
    unittest.main()
