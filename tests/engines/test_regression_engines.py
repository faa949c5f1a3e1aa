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
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.handlers import PeakSignalToNoiseRatio, ValidationHandler, from_engine
from parameterized import parameterized
from torch.utils.data import DataLoader

from monai_msgldm.engines import RegressionSynthesisTrainer, SynthesisEvaluator
from monai_msgldm.inferers import RegressionSynthesisInferer
from tests.engines.test_engine_utils import DATA_AVAILABLE, make_loader, make_samples, setUpModule, tearDownModule  # noqa: F401
from tests.networks.nets.test_regression import tiny_regression

SIZE = 32


def stacked(output: list[dict], key: str) -> torch.Tensor:
    """``key`` of an engine's decollated ``state.output`` (a list of per-sample dicts), stacked back."""
    return torch.stack([torch.as_tensor(o[key]) for o in output])


def full_loader() -> DataLoader:
    samples = make_samples(4, size=SIZE)
    for s in samples:
        s["available"] = torch.ones(4, dtype=torch.bool)
    return DataLoader(samples, batch_size=2, shuffle=False)


def make_evaluator(net, **kwargs) -> SynthesisEvaluator:
    return SynthesisEvaluator(
        device="cpu",
        val_data_loader=full_loader(),
        network=net,
        inferer=RegressionSynthesisInferer(),
        key_val_metric={
            "val_psnr": PeakSignalToNoiseRatio(max_val=2.0, output_transform=from_engine(["pred", "label"]))
        },
        **kwargs,
    )


def make_trainer(net, max_epochs: int = 1, **kwargs) -> RegressionSynthesisTrainer:
    return RegressionSynthesisTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=make_loader(size=SIZE),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        **kwargs,
    )


class TestRegressionSynthesisTrainer(unittest.TestCase):
    def test_train_masks_and_events(self):
        torch.manual_seed(0)
        net = tiny_regression()
        before = {k: v.detach().clone() for k, v in net.state_dict().items()}
        trainer = make_trainer(net, max_epochs=3)
        self.assertIsNone(trainer.ema_model)
        self.assertIsInstance(trainer.loss_function, torch.nn.L1Loss)
        masks, losses, fired = [], [], []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: masks.append(stacked(e.state.output, "available"))
        )
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
        # the loss of each iteration is the L1 over all contrasts of the network's prediction from the drawn mask
        # (targets: the data's contrasts), recomputed from the weights the iteration started with
        recomputed = []

        def _snapshot(engine):
            engine.state.weights_before = {k: v.detach().clone() for k, v in net.state_dict().items()}

        def _recompute(engine):
            out = engine.state.output
            images, mask = stacked(out, "image"), stacked(out, "available")
            reference = tiny_regression()
            reference.load_state_dict(engine.state.weights_before)
            with torch.no_grad():
                pred = reference(images, mask)
            # contrasts the data lacks have no ground truth: the L1 is the mean over the present contrasts only
            i = engine.state.iteration - 1
            data_rows = torch.tensor(DATA_AVAILABLE)[(i % 2) * 2 : (i % 2) * 2 + 2]
            expected = torch.nn.functional.l1_loss(pred[data_rows], images[data_rows])
            recomputed.append((float(out[0]["loss"]), float(expected)))

        trainer.add_event_handler(Events.ITERATION_STARTED, _snapshot)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, _recompute)
        for event in (
            IterationEvents.FORWARD_COMPLETED,
            IterationEvents.LOSS_COMPLETED,
            IterationEvents.MODEL_COMPLETED,
        ):
            trainer.add_event_handler(event, lambda e, ev=event: fired.append(ev))
        trainer.run()
        self.assertEqual(trainer.state.iteration, 6)
        self.assertEqual(len(fired), 18)
        out = trainer.state.output
        self.assertEqual(set(out[0]), {"image", "available", "pred", "loss"})
        self.assertEqual(tuple(stacked(out, "pred").shape), (2, 4, SIZE, SIZE))
        self.assertEqual(len(recomputed), 6)
        for loss, expected in recomputed:
            self.assertAlmostEqual(loss, expected, places=5)
        self.assertLess(losses[-1], losses[0])
        self.assertTrue(any(not torch.equal(before[k], v) for k, v in net.state_dict().items()))
        data = torch.tensor(DATA_AVAILABLE)
        for i, mask in enumerate(masks):
            self.assertTrue(bool(mask.any(dim=1).all()))
            rows = data[(i % 2) * 2 : (i % 2) * 2 + 2]
            self.assertFalse(bool((mask & ~rows).any()))

    def test_masks_reproducible_per_epoch_and_min_available(self):
        def run(seed):
            torch.manual_seed(0)
            trainer = make_trainer(tiny_regression(), max_epochs=2, seed=seed, min_available=2)
            masks = []
            trainer.add_event_handler(
                Events.ITERATION_COMPLETED, lambda e: masks.append(stacked(e.state.output, "available"))
            )
            trainer.run()
            return masks

        a, b = run(3), run(3)
        self.assertTrue(all(torch.equal(x, y) for x, y in zip(a, b)))
        data = torch.tensor(DATA_AVAILABLE)
        for i, mask in enumerate(a):
            rows = data[(i % 2) * 2 : (i % 2) * 2 + 2]
            self.assertTrue(bool((mask.sum(1) >= torch.clamp(rows.sum(1), max=2)).all()))

    def test_data_absent_channels_add_no_loss(self):
        """A channel the data lacks has no ground truth: it contributes neither loss nor gradient."""
        torch.manual_seed(0)
        net = tiny_regression()
        samples = make_samples(2, size=SIZE)
        for s in samples:
            s["available"] = torch.tensor([True, True, True, False])
        trainer = RegressionSynthesisTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=DataLoader(samples, batch_size=2),
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), 0.0),
            loss_function=torch.nn.L1Loss(reduction="none"),
        )
        trainer.run()
        out = trainer.state.output
        pred, image = stacked(out, "pred"), stacked(out, "image")
        expected = torch.nn.functional.l1_loss(pred[:, :3], image[:, :3])  # the mean over the present contrasts
        torch.testing.assert_close(torch.as_tensor(out[0]["loss"]), expected)
        self.assertEqual(float(net.net.final_conv.weight.grad[3].abs().sum()), 0.0)

    def test_input_masks_from_the_batch(self):
        """With input_mask_key the trainer draws nothing: each iteration's input mask is the batch's own."""
        samples = make_samples(4, size=SIZE)
        drawn = []
        for i, s in enumerate(samples):
            s["input_available"] = s["available"] & torch.tensor([i % 2 == 0, True, i % 2 == 1, True])
            drawn.append(s["input_available"])
        trainer = RegressionSynthesisTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=DataLoader(samples, batch_size=2, shuffle=False),
            network=tiny_regression(),
            optimizer=torch.optim.SGD(tiny_regression().parameters(), 0.0),
            input_mask_key="input_available",
        )
        self.assertIsNone(trainer.mask_sampler)
        masks = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: masks.append(stacked(e.state.output, "available"))
        )
        trainer.run()
        torch.testing.assert_close(torch.cat(masks), torch.stack(drawn), rtol=0, atol=0)

    @parameterized.expand(
        [
            ("missing", None, "input_mask_key 'input_available'"),
            ("not_subset", [True, True, True, True], "subsets of the data masks"),
        ]
    )
    def test_input_masks_errors(self, _, mask, msg):
        samples = make_samples(2, size=SIZE)
        for s in samples:
            s["available"] = torch.tensor([True, True, False, True])
            if mask is not None:
                s["input_available"] = torch.tensor(mask)
        net = tiny_regression()
        trainer = RegressionSynthesisTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=DataLoader(samples, batch_size=2),
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), 0.0),
            input_mask_key="input_available",
        )
        with self.assertRaisesRegex(ValueError, msg):
            trainer.run()

    def test_errors(self):
        net = tiny_regression()
        with self.assertRaisesRegex(ValueError, "seed"):
            make_trainer(net, seed=-1)
        with self.assertRaisesRegex(ValueError, "RegressionSynthesisNet"):
            make_trainer(torch.nn.Conv2d(8, 4, 1))
        with self.assertRaisesRegex(ValueError, "loss_function"):
            make_trainer(net, loss_function="l1")


class TestSynthesisEvaluatorWithRegression(unittest.TestCase):
    def test_validation_during_training(self):
        torch.manual_seed(0)
        net = tiny_regression()
        evaluator = make_evaluator(net, target=["flair", "t1"])
        trainer = make_trainer(
            net, train_handlers=[ValidationHandler(interval=1, validator=evaluator, epoch_level=True)]
        )
        trainer.run()
        pred = stacked(evaluator.state.output, "pred")
        self.assertEqual(tuple(pred.shape), (2, 1, SIZE, SIZE))
        self.assertTrue(bool((pred.abs() <= 1.0).all()))
        self.assertEqual([o["target"] for o in evaluator.state.output], [0, 0])  # round robin: 2nd batch -> t1
        self.assertTrue(net.training)  # the evaluator put the network back in train mode
        # deterministic: a second run scores the same
        first = evaluator.state.metrics["val_psnr"]
        outputs = []
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
        evaluator.run()
        self.assertEqual(evaluator.state.metrics["val_psnr"], first)
        # the key metric is the mean PSNR (max_val 2) of the clipped single-pass predictions over every sample
        preds = torch.cat([stacked(out, "pred") for out in outputs])
        labels = torch.cat([stacked(out, "label") for out in outputs])
        mse = ((preds - labels) ** 2).flatten(1).mean(1)
        self.assertAlmostEqual(float((10 * torch.log10(4.0 / mse)).mean()), first, places=4)


if __name__ == "__main__":
    unittest.main()
