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

import glob
import math
import os
import tempfile
import unittest

import torch
from ignite.engine import Events
from monai.handlers import CheckpointSaver, PeakSignalToNoiseRatio, ValidationHandler, from_engine
from torch.utils.data import DataLoader

from monai_msgldm.engines import LatentDiffusionTrainer, SynthesisEvaluator
from monai_msgldm.inferers import MultiContrastDiffusionInferer
from tests.engines.test_engine_utils import make_loader, make_samples, setUpModule, tearDownModule  # noqa: F401
from tests.inferers.test_diffusion import ddim, ddpm
from tests.networks.nets.test_msgldm import tiny_msgldm


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def full_loader() -> DataLoader:
    """Samples whose data has every modality (the synthesis scenario needs the target and another one)."""
    samples = make_samples(4)
    for s in samples:
        s["available"] = torch.ones(4, dtype=torch.bool)
    return DataLoader(samples, batch_size=2, shuffle=False)


def make_evaluator(net, **kwargs) -> SynthesisEvaluator:
    return SynthesisEvaluator(
        device="cpu",
        val_data_loader=full_loader(),
        network=net,
        inferer=MultiContrastDiffusionInferer(ddim(), num_inference_steps=3),
        key_val_metric={
            "val_psnr": PeakSignalToNoiseRatio(max_val=2.0, output_transform=from_engine(["pred", "label"]))
        },
        **kwargs,
    )


class TestLatentDiffusionTrainer(unittest.TestCase):
    def test_train_ema_checkpoint_and_evaluator(self):
        torch.manual_seed(0)
        net = tiny_msgldm()
        ae0, st0, unet0 = _state(net.autoencoder), _state(net.structure_net), _state(net.unet)
        evaluator = make_evaluator(net, target=["flair", "t1"])
        calibrations = []  # (images, value) of every calibration
        calibrate = net.calibrate_scale_factor
        net.calibrate_scale_factor = lambda images, available=None: (
            calibrations.append((images, calibrate(images, available))) or calibrations[-1][1]
        )
        with tempfile.TemporaryDirectory() as tmp:
            trainer = LatentDiffusionTrainer(
                device="cpu",
                max_epochs=2,
                train_data_loader=make_loader(),
                network=net,
                optimizer=torch.optim.Adam(net.unet.parameters(), 1e-3),
                ema_decay=0.9,
                train_handlers=[ValidationHandler(interval=1, validator=evaluator, epoch_level=True)],
            )
            masks = []
            trainer.add_event_handler(
                Events.ITERATION_COMPLETED,
                lambda e: masks.append(torch.stack([o["available"] for o in e.state.output])),
            )
            CheckpointSaver(
                save_dir=tmp,
                save_dict={"network": net, "ema": trainer.ema_model},
                save_final=True,
                final_filename="f.pt",
            ).attach(trainer)
            trainer.run()
            self.assertEqual(trainer.state.iteration, 4)
            self.assertTrue(math.isfinite(float(trainer.state.output[0]["loss"])))
            # frozen parts are bit-identical, the UNet changed, the scale factor was calibrated on the first batch
            for before, module in ((ae0, net.autoencoder), (st0, net.structure_net)):
                for k, v in module.state_dict().items():
                    self.assertTrue(torch.equal(before[k], v), k)
            self.assertTrue(any(not torch.equal(unet0[k], v) for k, v in net.unet.state_dict().items()))
            # calibrated once, on the first batch: scale = 1 / std of that batch's joint latent
            self.assertEqual(len(calibrations), 1)
            torch.testing.assert_close(calibrations[0][0], next(iter(make_loader()))["image"])
            self.assertAlmostEqual(float(net.scale_factor), calibrations[0][1], places=6)
            self.assertNotEqual(float(net.scale_factor), 1.0)
            self.assertFalse(net.autoencoder.training or net.structure_net.training)
            # masks among the data-available modalities, never empty
            data = torch.stack([s["available"] for s in make_samples(4)])
            for i, mask in enumerate(masks):
                self.assertTrue(bool(mask.any(dim=1).all()))
                self.assertFalse(bool((mask & ~data[(i % 2) * 2 : (i % 2) * 2 + 2]).any()))
            # EMA: between the initial and the live weights, differs from both, and saved by the CheckpointSaver
            ema = trainer.ema_model.state_dict()
            live = net.unet.state_dict()
            diff = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], live[k])]
            self.assertTrue(diff)
            self.assertTrue(any(not torch.equal(ema[k], unet0[k]) for k in diff))
            saved = torch.load(glob.glob(os.path.join(tmp, "f.pt"))[0], weights_only=True)
            for k, v in ema.items():
                self.assertTrue(torch.equal(saved["ema"][k], v), k)
            # inference with the EMA weights: load them into the UNet
            fresh = tiny_msgldm()
            fresh.load_state_dict(saved["network"])
            fresh.unet.load_state_dict(saved["ema"])
            for k, v in fresh.unet.state_dict().items():
                self.assertTrue(torch.equal(v, ema[k]), k)
        psnr = evaluator.state.metrics["val_psnr"]
        self.assertTrue(math.isfinite(psnr))
        self.assertEqual([o["target"] for o in evaluator.state.output], [0, 0])  # round robin: 2nd batch -> t1

    def test_loss_is_the_inferer_training_path(self):
        """One iteration's loss is loss_function(*inferer(images, network, mask)) with the trainer's mask and the
        same random draws (noise, timesteps, posterior sample), here with a v-prediction scheduler."""
        torch.manual_seed(0)
        net = tiny_msgldm()
        net.scale_factor.fill_(0.5)
        inferer = MultiContrastDiffusionInferer(ddpm("v_prediction"))
        trainer = LatentDiffusionTrainer(
            "cpu", 1, make_loader(), net, torch.optim.SGD(net.unet.parameters(), 0.0), inferer=inferer, epoch_length=1
        )
        seen = {}
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.update(rng=torch.get_rng_state()))
        trainer.run()
        out = trainer.state.output[0]
        mask = torch.stack([o["available"] for o in trainer.state.output])
        images = torch.stack([o["image"] for o in trainer.state.output])
        torch.set_rng_state(seen["rng"])
        with torch.no_grad():
            prediction, target = inferer(images, net, mask)
        # the batch's second sample lacks t1ce (channels 2, 3 of the joint latent): only the present channels count
        data = torch.stack([s["available"] for s in make_samples(2)])
        self.assertEqual(data.tolist(), [[True, True, True, True], [True, False, True, True]])
        keep = data.repeat_interleave(2, dim=1)
        expected = torch.mean((prediction[keep] - target[keep]) ** 2)
        self.assertAlmostEqual(float(out["loss"]), float(expected), places=6)

    def test_image_loss_is_the_decoded_estimate_against_the_images(self):
        """With image_loss_weight, one iteration's loss is the latent loss plus the weight times the L1 distance
        between the images and the decoding of sqrt(ab) z_t - sqrt(1 - ab) v (the clean latent a v-prediction
        implies), over the contrasts the data has and the input mask hides; the same draws (posterior sample, noise, timesteps) reproduce it.
        The UNet learns from it, the frozen autoencoder does not."""
        torch.manual_seed(0)
        net = tiny_msgldm()
        net.scale_factor.fill_(0.5)
        inferer = MultiContrastDiffusionInferer(ddpm("v_prediction"))
        trainer = LatentDiffusionTrainer(
            "cpu",
            1,
            make_loader(),
            net,
            torch.optim.SGD(net.unet.parameters(), 0.1),
            inferer=inferer,
            epoch_length=1,
            image_loss_weight=0.5,
        )
        seen = {}
        trainer.add_event_handler(
            Events.ITERATION_STARTED,
            lambda e: seen.update(rng=torch.get_rng_state(), unet=_state(net.unet), ae=_state(net.autoencoder)),
        )
        trainer.run()
        out = trainer.state.output[0]
        mask = torch.stack([o["available"] for o in trainer.state.output])
        images = torch.stack([o["image"] for o in trainer.state.output])
        after_unet = _state(net.unet)
        net.unet.load_state_dict(seen["unet"])
        torch.set_rng_state(seen["rng"])
        with torch.no_grad():
            z0 = net.encode(images)
            noise = torch.randn_like(z0)
            t = inferer.training_timesteps(noise)
            prediction, target = inferer(images, net, mask, noise=noise, timesteps=t, latents=z0)
            ab = inferer.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
            decoded = net.decode(ab.sqrt() * zt - (1 - ab).sqrt() * prediction)
        data = torch.stack([s["available"] for s in make_samples(2)])
        keep = data.repeat_interleave(2, dim=1)
        latent = torch.mean((prediction[keep] - target[keep]) ** 2)
        hidden = data & ~mask  # the contrasts the data has and the input mask hides: those to synthesize
        self.assertTrue(bool(hidden.any()) and not bool(hidden.all()))
        image = torch.mean((decoded[hidden] - images[hidden]).abs())
        self.assertAlmostEqual(float(out["latent_loss"]), float(latent), places=5)
        self.assertAlmostEqual(float(out["image_loss"]), float(image), places=5)
        self.assertAlmostEqual(float(out["loss"]), float(latent + 0.5 * image), places=5)
        self.assertTrue(any(not torch.equal(v, seen["unet"][k]) for k, v in after_unet.items()))
        for k, v in net.autoencoder.state_dict().items():
            self.assertTrue(torch.equal(v, seen["ae"][k]), k)

    def test_image_loss_errors(self):
        net = tiny_msgldm()
        opt = torch.optim.Adam(net.unet.parameters())
        for bad in (-1.0, True, float("nan"), "1"):
            with self.assertRaisesRegex(ValueError, "image_loss_weight"):
                LatentDiffusionTrainer("cpu", 1, make_loader(), net, opt, image_loss_weight=bad)
        with self.assertRaisesRegex(ValueError, "epsilon"):
            LatentDiffusionTrainer("cpu", 1, make_loader(), net, opt, image_loss_weight=1.0)  # default: epsilon DDPM
        with self.assertRaisesRegex(ValueError, "image_loss to be callable"):
            LatentDiffusionTrainer(
                "cpu",
                1,
                make_loader(),
                net,
                opt,
                inferer=MultiContrastDiffusionInferer(ddpm("v_prediction")),
                image_loss_weight=1.0,
                image_loss=3,
            )

    def test_calibration_skipped_when_loaded(self):
        torch.manual_seed(0)
        net = tiny_msgldm()
        net.scale_factor.fill_(0.75)
        trainer = LatentDiffusionTrainer(
            "cpu", 1, make_loader(), net, torch.optim.SGD(net.unet.parameters(), 1e-3), epoch_length=1
        )
        trainer.run()
        self.assertEqual(float(net.scale_factor), 0.75)
        self.assertIsNone(trainer.ema_model)

    def test_errors(self):
        net = tiny_msgldm()
        with self.assertRaisesRegex(ValueError, "network.unet.parameters"):
            LatentDiffusionTrainer("cpu", 1, make_loader(), net, torch.optim.Adam(net.parameters()))
        with self.assertRaisesRegex(ValueError, "MSGLDM"):
            LatentDiffusionTrainer("cpu", 1, make_loader(), torch.nn.Linear(2, 2), torch.optim.Adam(net.parameters()))
        with self.assertRaisesRegex(ValueError, "decay"):
            LatentDiffusionTrainer("cpu", 1, make_loader(), net, torch.optim.Adam(net.unet.parameters()), ema_decay=1.5)
        with self.assertRaisesRegex(ValueError, "target"):
            make_evaluator(net, target="pd")
        with self.assertRaisesRegex(ValueError, "sample\\(\\) method"):
            SynthesisEvaluator("cpu", full_loader(), net, inferer=torch.nn.Identity())
        with self.assertRaisesRegex(ValueError, "MultiContrastDiffusionInferer"):
            LatentDiffusionTrainer("cpu", 1, make_loader(), net, torch.optim.Adam(net.unet.parameters()), inferer=1)
        with self.assertRaisesRegex(ValueError, "target 't1ce'"):
            SynthesisEvaluator("cpu", make_loader(), net, MultiContrastDiffusionInferer(ddim(), 1), target="t1ce").run()


class TestSynthesisEvaluator(unittest.TestCase):
    def test_deterministic_and_values(self):
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        ev = make_evaluator(net, target="flair", seed=3)
        outputs = []
        ev.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
        ev.run()
        first = ev.state.metrics["val_psnr"]
        ev.run()
        self.assertEqual(ev.state.metrics["val_psnr"], first)
        batch = next(iter(full_loader()))
        out = outputs[0]
        torch.testing.assert_close(torch.stack([o["label"] for o in out]), batch["image"][:, 3:4])
        self.assertTrue(all(o["available"].tolist() == [True, True, True, False] for o in out))
        # the prediction is the model's synthesis with the seeded noise, clipped to [-1, 1]
        expected = (
            MultiContrastDiffusionInferer(ddim(), 3)
            .sample(
                batch["image"],
                net,
                torch.tensor([[True, True, True, False]] * 2),
                generator=torch.Generator().manual_seed(3),
            )[:, 3:4]
            .clamp(-1, 1)
        )
        torch.testing.assert_close(torch.stack([o["pred"] for o in out]), expected)
        # and the key metric is the mean PSNR (max_val 2) over every sample of the (second) run
        pred = torch.stack([o["pred"] for out in outputs[-2:] for o in out])
        label = torch.stack([o["label"] for out in outputs[-2:] for o in out])
        mse = ((pred - label) ** 2).flatten(1).mean(1)
        self.assertAlmostEqual(float((10 * torch.log10(4.0 / mse)).mean()), first, places=4)


if __name__ == "__main__":
    unittest.main()
