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

import torch
from ignite.engine import Events
from monai.handlers import PeakSignalToNoiseRatio, ValidationHandler, from_engine
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from monai_msgldm.engines import AutoencoderEvaluator, AutoencoderKeys, AutoencoderTrainer
from monai_msgldm.losses import FrequencySSIMLoss
from tests.bundles.utils import collect_outputs, reference_psnr
from tests.engines.test_engine_utils import make_loader, setUpModule, tearDownModule  # noqa: F401


def tiny_autoencoder() -> AutoencoderKL:
    return AutoencoderKL(
        spatial_dims=2,
        channels=(8, 8, 8),
        latent_channels=2,
        num_res_blocks=1,
        norm_num_groups=4,
        attention_levels=(False, False, False),
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


class TestAutoencoderTrainer(unittest.TestCase):
    def test_train_two_epochs_with_discriminator_and_evaluator(self):
        torch.manual_seed(0)
        ae = tiny_autoencoder()
        disc = PatchDiscriminator(spatial_dims=2, num_layers_d=2, channels=8, in_channels=1, out_channels=1)
        before_ae, before_d = _params(ae), _params(disc)
        evaluator = AutoencoderEvaluator(
            device="cpu",
            val_data_loader=make_loader(),
            network=ae,
            key_val_metric={
                "val_psnr": PeakSignalToNoiseRatio(max_val=2.0, output_transform=from_engine(["pred", "label"]))
            },
        )
        trainer = AutoencoderTrainer(
            device="cpu",
            max_epochs=2,
            train_data_loader=make_loader(),
            network=ae,
            optimizer=torch.optim.Adam(ae.parameters(), 1e-3),
            discriminator=disc,
            discriminator_optimizer=torch.optim.Adam(disc.parameters(), 1e-3),
            train_handlers=[ValidationHandler(interval=1, validator=evaluator, epoch_level=True)],
            amp=True,  # silently fp32 on CPU
        )
        self.assertFalse(trainer.amp)
        scored = collect_outputs(evaluator, ("pred", "label"))
        trainer.run()
        self.assertEqual(trainer.state.epoch, 2)
        self.assertEqual(trainer.state.iteration, 4)
        out = trainer.state.output[0]
        # the 2nd batch has 4 + 2 available modality slices
        self.assertEqual(len(trainer.state.output), 6)
        self.assertEqual(tuple(out["pred"].shape), (1, 16, 16))
        for key in (AutoencoderKeys.L1, AutoencoderKeys.KL, AutoencoderKeys.FREQUENCY, AutoencoderKeys.GENERATOR):
            self.assertIsInstance(out[key], float)
            self.assertTrue(math.isfinite(out[key]) and out[key] > 0, key)
        self.assertTrue(math.isfinite(out[AutoencoderKeys.DISCRIMINATOR]) and out[AutoencoderKeys.DISCRIMINATOR] > 0)
        self.assertTrue(math.isfinite(float(out["loss"])))
        self.assertTrue(any(not torch.equal(a, b) for a, b in zip(before_ae, ae.parameters())))
        self.assertTrue(any(not torch.equal(a, b) for a, b in zip(before_d, disc.parameters())))
        # the key metric is the PSNR (range 2) of the last validation's reconstructions of every available
        # modality slice of the data; pred and label are the (1, H, W) slices
        available = torch.stack([s["available"] for s in make_loader().dataset])
        self.assertEqual(len(scored), int(available.sum()))
        self.assertEqual(tuple(scored[0][0].shape), (1, 16, 16))
        self.assertAlmostEqual(evaluator.state.metrics["val_psnr"], reference_psnr(scored, max_val=2.0), delta=1e-4)
        self.assertEqual(evaluator.state.epoch, 2)

    def test_loss_value(self):
        torch.manual_seed(1)
        ae = tiny_autoencoder()
        snapshot: dict = {}
        trainer = AutoencoderTrainer(
            device="cpu",
            max_epochs=1,
            epoch_length=1,
            train_data_loader=make_loader(),
            network=ae,
            optimizer=torch.optim.SGD(ae.parameters(), 1e-2),
            kl_weight=0.1,
            frequency_weight=0.5,
        )

        @trainer.on(Events.ITERATION_STARTED)
        def _snapshot(engine):
            snapshot["weights"] = copy.deepcopy(ae.state_dict())
            snapshot["rng"] = torch.get_rng_state()

        trainer.run()
        batch = next(iter(make_loader()))
        slices = batch["image"][batch["available"]].unsqueeze(1)  # 4 + 3 available slices
        ref = tiny_autoencoder()
        ref.load_state_dict(snapshot["weights"])
        torch.set_rng_state(snapshot["rng"])
        with torch.no_grad():
            recon, mu, sigma = ref(slices)
        l1 = (recon - slices).abs().mean()
        kl = (0.5 * (mu**2 + sigma**2 - torch.log(sigma**2) - 1)).sum(dim=(1, 2, 3)).mean()
        freq = FrequencySSIMLoss(spatial_dims=2)(recon, slices)
        out = trainer.state.output
        self.assertEqual(len(out), 7)
        self.assertAlmostEqual(out[0][AutoencoderKeys.L1], float(l1), places=5)
        self.assertAlmostEqual(out[0][AutoencoderKeys.KL], float(kl), places=3)
        self.assertAlmostEqual(out[0][AutoencoderKeys.FREQUENCY], float(freq), places=5)
        self.assertAlmostEqual(float(out[0]["loss"]), float(l1 + 0.1 * kl + 0.5 * freq), places=4)
        self.assertEqual(out[0][AutoencoderKeys.GENERATOR], 0.0)

    def test_errors(self):
        ae = tiny_autoencoder()
        opt = torch.optim.Adam(ae.parameters())
        with self.assertRaisesRegex(ValueError, "AutoencoderKL"):
            AutoencoderTrainer("cpu", 1, make_loader(), torch.nn.Linear(2, 2), opt)
        with self.assertRaisesRegex(ValueError, "given together"):
            AutoencoderTrainer("cpu", 1, make_loader(), ae, opt, discriminator=torch.nn.Linear(2, 2))
        with self.assertRaisesRegex(ValueError, "kl_weight"):
            AutoencoderTrainer("cpu", 1, make_loader(), ae, opt, kl_weight=-1.0)
        with self.assertRaisesRegex(ValueError, "clip_range"):
            AutoencoderEvaluator("cpu", make_loader(), ae, clip_range=(1.0, -1.0))


if __name__ == "__main__":
    unittest.main()
