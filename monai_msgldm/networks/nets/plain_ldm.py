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
"""The plain conditional latent diffusion baseline: MSG-LDM without the structure branch."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import DiffusionModelUNet

from monai_msgldm.networks.nets.latent_diffusion import (
    MultiContrastLDM,
    default_contrast_autoencoder,
    default_diffusion_unet,
)
from monai_msgldm.networks.nets.modality_autoencoder import (
    autoencoder_downsample_factor,
    autoencoder_latent_channels,
)

__all__ = ["PlainConditionalLDM"]


class PlainConditionalLDM(MultiContrastLDM):
    """Conditional latent diffusion on the joint latent of M contrasts, conditioned only on the latents of the
    available contrasts (the MONAI model-zoo style of conditioning, no structure branch): the baseline that MSG-LDM's
    structure guidance is measured against.

    The condition is ``cat([z * a, a])``: the scaled joint latent ``z`` ``(B, M * latent_channels, *L)`` with the
    channels of absent contrasts set to zero, and the availability mask ``a`` broadcast to ``(B, M, *L)`` (so that a
    zero latent and an absent contrast can be told apart). The UNet therefore has ``2 * M * latent_channels + M``
    input channels. Same autoencoder as :py:class:`~monai_msgldm.networks.nets.MSGLDM` (:py:class:`MultiContrastLDM`),
    trained and sampled by the same :py:class:`monai_msgldm.inferers.MultiContrastDiffusionInferer`; in stage 2 only
    the UNet is trained.

    Args:
        spatial_dims: 2 (slices) or 3.
        num_modalities: number of contrasts M.
        autoencoder: a single-channel MONAI ``AutoencoderKL`` (or ``VQVAE``); default: factor 8, 4 latent channels.
        unet: a ``DiffusionModelUNet`` with ``2 * M * latent_channels + M`` input (``M * f^d`` more with
            ``pixel_condition``) and ``M * latent_channels`` output channels; default: the MSG-LDM UNet sizes
            (128, 128, 256), attention at the two lower levels.
        scale_factor: see :py:class:`MultiContrastLDM`.
        pixel_condition: also condition on the given contrasts' images moved onto the latent grid without loss
            (:py:meth:`given_pixels`, ``M * f^d`` more UNet input channels for the autoencoder factor ``f``).

    Example::

        net = PlainConditionalLDM(spatial_dims=2)
        images = torch.randn(1, 4, 192, 192)
        inferer = MultiContrastDiffusionInferer(DDIMScheduler(1000, schedule="scaled_linear_beta",
                                                              beta_start=0.0015, beta_end=0.0195), 50)
        out = inferer.sample(images, net, torch.tensor([[True, True, True, False]]))
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_modalities: int = 4,
        autoencoder: nn.Module | None = None,
        unet: DiffusionModelUNet | None = None,
        scale_factor: float = 1.0,
        pixel_condition: bool = False,
    ) -> None:
        if autoencoder is None:
            autoencoder = default_contrast_autoencoder(spatial_dims)
        latent_ch = num_modalities * autoencoder_latent_channels(autoencoder)
        condition_channels = latent_ch + num_modalities
        if pixel_condition:
            condition_channels += num_modalities * autoencoder_downsample_factor(autoencoder) ** spatial_dims
        if unet is None:
            unet = default_diffusion_unet(spatial_dims, latent_ch + condition_channels, latent_ch)
        super().__init__(
            spatial_dims=spatial_dims,
            num_modalities=num_modalities,
            autoencoder=autoencoder,
            unet=unet,
            condition_channels=condition_channels,
            scale_factor=scale_factor,
        )
        self.pixel_condition = bool(pixel_condition)

    def condition(
        self, images: torch.Tensor, available: torch.Tensor, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``cat([latents * mask, mask])`` on the latent grid, followed with ``pixel_condition`` by
        :py:meth:`given_pixels`: ``(B, M, *S) -> (B, condition_channels, *L)``.

        Args:
            images: ``(B, M, *S)``; channels of absent modalities are ignored.
            available: ``(B, M)`` bool, validated by the caller (only its shape and dtype are checked here).
            latents: the scaled joint latent of ``images`` (training passes the sampled one it diffuses); None:
                the posterior mean of the available contrasts (deterministic, as at inference).
        """
        condition = self.latent_condition(images, available, latents)
        if not self.pixel_condition:
            return condition
        return torch.cat([condition, self.given_pixels(images, available).to(condition.dtype)], dim=1)
