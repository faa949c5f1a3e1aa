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
"""The scheduler is a bundle config component: rectified flow instead of DDPM/DDIM by changing the config only."""

from __future__ import annotations

import unittest

import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

from monai_msgldm.inferers import MultiContrastDiffusionInferer
from tests.bundles.test_train_diffusion import BUNDLE_DIR, CONFIG, TINY_AE, TINY_STRUCTURE, TINY_UNET

RFLOW = {"_target_": "monai.networks.schedulers.RFlowScheduler", "num_train_timesteps": 1000, "spatial_dim": 2}
TINY_NETWORK = {
    **{f"autoencoder_def#{k}": v for k, v in TINY_AE.items()},
    **{f"structure_def#{k}": v for k, v in TINY_STRUCTURE.items()},
    **{f"unet_def#{k}": v for k, v in TINY_UNET.items()},
}


def _parser(files, overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"bundle_root": str(BUNDLE_DIR), **TINY_NETWORK, **overrides})
    return parser


class TestSchedulerIsAConfigComponent(unittest.TestCase):
    def test_defaults_ddpm_to_train_ddim_to_sample(self):
        parser = _parser(CONFIG, {})
        self.assertIsInstance(parser.get_parsed_content("train#inferer").scheduler, DDPMScheduler)
        self.assertIsInstance(parser.get_parsed_content("validate#inferer").scheduler, DDIMScheduler)
        inference = _parser(str(BUNDLE_DIR / "configs" / "inference.json"), {})
        self.assertIsInstance(inference.get_parsed_content("inferer").sampler.scheduler, DDIMScheduler)

    def test_rectified_flow_by_config_only(self):
        """Overriding the two scheduler ids with MONAI's RFlowScheduler gives the rectified-flow training target
        (z0 - noise at z_t = (1 - t/T) z0 + (t/T) noise) and rectified-flow sampling, in training, validation and
        inference, with the network the config builds."""
        parser = _parser(CONFIG, {"noise_scheduler": RFLOW, "sampling_scheduler": RFLOW, "val_ddim_steps": 3})
        train_inferer = parser.get_parsed_content("train#inferer")
        val_inferer = parser.get_parsed_content("validate#inferer")
        inference = _parser(
            str(BUNDLE_DIR / "configs" / "inference.json"), {"sampling_scheduler": RFLOW, "ddim_steps": 3}
        ).get_parsed_content("inferer")
        for inferer in (train_inferer, val_inferer, inference.sampler):
            self.assertIsInstance(inferer, MultiContrastDiffusionInferer)
            self.assertIsInstance(inferer.scheduler, RFlowScheduler)
        torch.manual_seed(0)
        net = parser.get_parsed_content("network_def").eval()
        images = torch.rand(2, 4, 32, 32) * 2 - 1
        available = torch.tensor([[True, True, True, False], [True, False, False, False]])
        noise, t = torch.randn(2, net.latent_channels(), 4, 4), torch.tensor([250, 900])
        with torch.no_grad():
            z0 = net.autoencoder.encode_mean(images) * net.scale_factor
        net.autoencoder.encode_stage_2_inputs = net.autoencoder.encode_mean  # deterministic encoding for the check
        _, target = train_inferer(images, net, available, noise=noise, timesteps=t)
        torch.testing.assert_close(target, z0 - noise)
        # sampling: the exact velocity predictor lands on the clean latent in the configured 3 steps
        calls = []

        def exact_velocity(x, timesteps, context=None):
            calls.append(1)
            s = (timesteps.float() / 1000).view(-1, 1, 1, 1)
            return z0 - (x[:, : z0.shape[1]] - (1 - s) * z0) / s

        net.unet.forward = exact_velocity
        out = val_inferer.sample(images, net, available, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = net.autoencoder.decode_stage_2_outputs(z0 / net.scale_factor)
        self.assertEqual(len(calls), 3)
        torch.testing.assert_close(out[~available], expected[~available], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(out[available], images[available], rtol=0, atol=0)


if __name__ == "__main__":
    unittest.main()
