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
import glob
import logging
import math
import os
import tempfile
import unittest

import torch
from ignite.engine import Events
from monai.handlers import CheckpointLoader, CheckpointSaver, MeanDice, StatsHandler, ValidationHandler, from_engine
from monai.losses import DiceCELoss

from monai_msgldm.engines import ModalityMaskSampler, StructureStyleEvaluator, StructureStyleKeys, StructureStyleTrainer
from monai_msgldm.losses import StructureAwareLoss, StyleConsistencyLoss
from monai_msgldm.networks.nets import StructureStyleNet
from tests.bundles.utils import collect_outputs, reference_mean_dice
from tests.engines.test_engine_utils import make_loader, setUpModule, tearDownModule  # noqa: F401


def tiny_structure_net(seed: int = 0) -> StructureStyleNet:
    torch.manual_seed(seed)
    return StructureStyleNet(
        spatial_dims=2,
        num_modalities=4,
        structure_channels=(4, 8, 8),
        strides=(1, 2, 2),
        style_channels=(4, 8, 8),
        style_dim=4,
        msse_heads=2,
        seg_out_channels=3,
        mlp_hidden=8,
        num_res_blocks=1,
    )


def make_trainer(net, max_epochs=2, **kwargs) -> StructureStyleTrainer:
    return StructureStyleTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=make_loader(),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        seed=5,
        **kwargs,
    )


class TestStructureStyleTrainer(unittest.TestCase):
    def test_train_with_evaluator(self):
        net = tiny_structure_net()
        before = [p.detach().clone() for p in net.parameters()]
        evaluator = StructureStyleEvaluator(
            device="cpu",
            val_data_loader=make_loader(),
            network=net,
            available=[True, True, True, False],
            key_val_metric={"val_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
        )
        masks = []
        scored = collect_outputs(evaluator, ("pred", "label"))
        trainer = make_trainer(
            net, train_handlers=[ValidationHandler(interval=1, validator=evaluator, epoch_level=True)]
        )
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: masks.append(torch.stack([o["available"] for o in e.state.output]))
        )
        trainer.run()
        self.assertEqual(trainer.state.iteration, 4)
        out = trainer.state.output[0]
        for key in (StructureStyleKeys.SEGMENTATION, StructureStyleKeys.STYLE, StructureStyleKeys.STRUCTURE):
            self.assertTrue(math.isfinite(out[key]) and out[key] > 0, key)
        self.assertTrue(math.isfinite(float(out["loss"])))
        self.assertTrue(any(not torch.equal(a, b) for a, b in zip(before, net.parameters())))
        # the masks: never all missing, only data-available modalities, reproducible from seed + epoch
        data = torch.stack([s["available"] for s in make_loader().dataset])
        for i, mask in enumerate(masks):
            self.assertTrue(bool(mask.any(dim=1).all()))
            rows = data[(i % 2) * 2 : (i % 2) * 2 + 2]
            self.assertFalse(bool((mask & ~rows).any()))
        sampler = ModalityMaskSampler().set_random_state(5 + 1)
        torch.testing.assert_close(masks[0], sampler(data[:2]))
        torch.testing.assert_close(masks[1], sampler(data[2:]))
        sampler.set_random_state(5 + 2)
        torch.testing.assert_close(masks[2], sampler(data[:2]))
        # the key metric is the mean Dice of the last validation's thresholded predictions (2 batches of 2)
        self.assertEqual(len(scored), 4)
        self.assertAlmostEqual(evaluator.state.metrics["val_dice"], reference_mean_dice(scored), places=6)
        # the evaluator uses the fixed scenario AND the data mask, and thresholded predictions
        ev_out = evaluator.state.output
        self.assertFalse(any(bool(o["available"][3]) for o in ev_out))
        self.assertTrue(all(set(torch.unique(o["pred"]).tolist()) <= {0.0, 1.0} for o in ev_out))

    def test_loss_value(self):
        net = tiny_structure_net(1)
        snapshot = {}
        trainer = make_trainer(
            net, max_epochs=1, epoch_length=1, seg_weight=1.5, style_weight=0.3, structure_weight=0.7
        )

        @trainer.on(Events.ITERATION_STARTED)
        def _snapshot(engine):
            snapshot["weights"] = copy.deepcopy(net.state_dict())

        trainer.run()
        batch = next(iter(make_loader()))
        images, data, seg = batch["image"], batch["available"], batch["seg"]
        mask = ModalityMaskSampler().set_random_state(5 + 1)(data)
        ref = tiny_structure_net(1)
        ref.load_state_dict(snapshot["weights"])
        ref.train()
        with torch.no_grad():
            outputs = ref(images, mask)
        seg_loss = DiceCELoss(sigmoid=True, lambda_ce=0.5)(outputs["segmentation"], seg)
        style = StyleConsistencyLoss()(outputs["style"], data)
        structure = StructureAwareLoss(spatial_dims=2)(
            outputs["reconstruction"][data].unsqueeze(1), images[data].unsqueeze(1)
        )
        out = trainer.state.output[0]
        torch.testing.assert_close(out["available"], mask[0])
        self.assertAlmostEqual(out[StructureStyleKeys.SEGMENTATION], float(seg_loss), places=5)
        self.assertAlmostEqual(out[StructureStyleKeys.STYLE], float(style), places=5)
        self.assertAlmostEqual(out[StructureStyleKeys.STRUCTURE], float(structure), places=5)
        self.assertAlmostEqual(float(out["loss"]), float(1.5 * seg_loss + 0.3 * style + 0.7 * structure), places=4)

    def test_resume(self):
        """Stop after epoch 1, resume from the checkpoint (network, optimizer, trainer): continues at epoch 2 and ends
        with the same weights as an uninterrupted 2-epoch run (masks are re-seeded per epoch)."""
        with tempfile.TemporaryDirectory() as tmp:
            net = tiny_structure_net(2)
            opt = torch.optim.Adam(net.parameters(), 1e-3)
            trainer = StructureStyleTrainer("cpu", 1, make_loader(), net, opt, seed=5)
            CheckpointSaver(
                save_dir=tmp, save_dict={"network": net, "optimizer": opt, "trainer": trainer}, save_interval=1
            ).attach(trainer)
            StatsHandler(name="msgldm_test", output_transform=from_engine(["loss"], first=True)).attach(trainer)
            logging.getLogger("msgldm_test").setLevel(logging.WARNING)
            trainer.run()
            ckpts = glob.glob(os.path.join(tmp, "*.pt"))
            self.assertEqual(len(ckpts), 1)

            net2 = tiny_structure_net(3)  # different init: everything must come from the checkpoint
            opt2 = torch.optim.Adam(net2.parameters(), 1e-3)
            trainer2 = StructureStyleTrainer("cpu", 2, make_loader(), net2, opt2, seed=5)
            CheckpointLoader(
                load_path=ckpts[0], load_dict={"network": net2, "optimizer": opt2, "trainer": trainer2}
            ).attach(trainer2)
            epochs = []
            trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
            trainer2.run()
            self.assertEqual(epochs, [2])
            self.assertEqual(trainer2.state.epoch, 2)
            self.assertEqual(trainer2.state.iteration, 4)

            ref = tiny_structure_net(2)
            make_trainer(ref, max_epochs=2).run()
            for a, b in zip(ref.parameters(), net2.parameters()):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    def test_errors(self):
        net = tiny_structure_net()
        with self.assertRaisesRegex(ValueError, "StructureStyleNet"):
            make_trainer(torch.nn.Linear(2, 2))
        with self.assertRaisesRegex(ValueError, "seg_weight"):
            make_trainer(net, seg_weight=-1.0)
        with self.assertRaisesRegex(ValueError, "positive loss weight"):
            make_trainer(net, seg_weight=0, style_weight=0, structure_weight=0)
        with self.assertRaisesRegex(ValueError, "'image' of shape .* seg_out_channels"):
            make_trainer(net, seg_key="image", max_epochs=1).run()
        with self.assertRaisesRegex(ValueError, "available"):
            StructureStyleEvaluator("cpu", make_loader(), net, available=[False, False, False, False])


if __name__ == "__main__":
    unittest.main()
