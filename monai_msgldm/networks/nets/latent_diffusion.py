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
"""What every multi-contrast latent diffusion network here shares: the autoencoder, the joint latent, the condition
and the denoiser call. Networks compute; the noise schedule, the training loss and the denoising loop live in
:py:class:`monai_msgldm.inferers.MultiContrastDiffusionInferer`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from monai_msgldm.networks.nets.modality_autoencoder import ModalityWiseAutoencoder
from monai_msgldm.utils.availability import check_availability_shape

__all__ = ["MultiContrastLDM", "default_contrast_autoencoder", "default_diffusion_unet"]


def default_contrast_autoencoder(spatial_dims: int) -> AutoencoderKL:
    """The single-channel ``AutoencoderKL`` of the paper's setting: factor 8, 4 latent channels."""
    return AutoencoderKL(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=(64, 128, 128, 256),
        latent_channels=4,
        num_res_blocks=2,
        attention_levels=(False, False, False, False),
        norm_num_groups=32,
        with_encoder_nonlocal_attn=True,
        with_decoder_nonlocal_attn=True,
    )


def default_diffusion_unet(spatial_dims: int, in_channels: int, out_channels: int) -> DiffusionModelUNet:
    """The paper's diffusion UNet: channels (128, 128, 256), attention at the two lower levels, 32 channels per head,
    1 residual block."""
    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=(128, 128, 256),
        attention_levels=(False, True, True),
        num_res_blocks=1,
        num_head_channels=32,
    )


class MultiContrastLDM(nn.Module):
    """Base of the latent diffusion networks that synthesize missing contrasts on the joint latent of M contrasts.

    One module (one checkpoint, one bundle ``network_def``) holds what was trained: the autoencoder (a
    :py:class:`ModalityWiseAutoencoder`, stage 0), any conditioning modules of the subclass, and the diffusion UNet
    (a MONAI ``DiffusionModelUNet``, stage 2). It computes; it owns no scheduler, no autocast and no sampling loop:
    :py:class:`monai_msgldm.inferers.MultiContrastDiffusionInferer` trains and samples it with a scheduler given in
    the bundle config. A subclass implements :py:meth:`condition` (and lists its frozen conditioning modules in
    :py:meth:`frozen_modules`):

    - :py:class:`~monai_msgldm.networks.nets.MSGLDM`: the multiscale structure map ``F_s``;
    - :py:class:`~monai_msgldm.networks.nets.PlainConditionalLDM`: the latents of the available contrasts (the
      baseline without structure guidance).

    ``forward(x, timesteps, context=None)`` is the denoiser call on ``x = cat([noisy joint latent, condition])``
    (so the module can be wrapped in ``DistributedDataParallel`` and handed to MONAI's diffusion inferers in
    ``concat`` mode).

    Args:
        spatial_dims: 2 (slices) or 3.
        num_modalities: number of contrasts M.
        autoencoder: a single-channel MONAI ``AutoencoderKL`` (or ``VQVAE``); default
            :py:func:`default_contrast_autoencoder`.
        unet: a ``DiffusionModelUNet`` with ``M * latent_channels + condition_channels`` input and
            ``M * latent_channels`` output channels.
        condition_channels: channels of the condition (set by the subclass).
        scale_factor: latent scaling applied before diffusion (see :py:meth:`calibrate_scale_factor`).
    """

    def __init__(
        self,
        spatial_dims: int,
        num_modalities: int,
        autoencoder: nn.Module | None,
        unet: DiffusionModelUNet,
        condition_channels: int,
        scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name} expects spatial_dims 2 or 3, got {spatial_dims}.")
        if num_modalities < 2:
            raise ValueError(f"{name} expects num_modalities >= 2, got {num_modalities}.")
        if scale_factor <= 0:
            raise ValueError(f"{name} expects scale_factor > 0, got {scale_factor}.")
        self.spatial_dims = spatial_dims
        self.num_modalities = num_modalities
        if autoencoder is None:
            autoencoder = default_contrast_autoencoder(spatial_dims)
        self.autoencoder = ModalityWiseAutoencoder(autoencoder, num_modalities=num_modalities)
        latent_ch = num_modalities * self.autoencoder.latent_channels
        self.condition_channels = int(condition_channels)
        if unet.in_channels != latent_ch + self.condition_channels or unet.out_channels != latent_ch:
            raise ValueError(
                f"{name} expects unet with in_channels={latent_ch + self.condition_channels} "
                f"(M * latent_channels + {self.condition_channels} condition channels) and out_channels={latent_ch}, "
                f"got in_channels={unet.in_channels}, out_channels={unet.out_channels}."
            )
        self.unet = unet
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    # ------------------------------------------------------------------ checks
    def check_images(self, images: torch.Tensor) -> tuple[int, ...]:
        """The shape contract of ``images`` ``(B, M, *S)``; returns the latent grid ``S / f`` (no host sync).

        Raises:
            ValueError: wrong number of dimensions or channels, or spatial sizes the autoencoder cannot take.
        """
        if images.ndim != self.spatial_dims + 2 or images.shape[1] != self.num_modalities:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {self.num_modalities}, "
                f"*{self.spatial_dims}D spatial), got {tuple(images.shape)}."
            )
        return tuple(self.autoencoder.latent_shape(images.shape[2:]))

    # ----------------------------------------------------------- components
    @property
    def size_divisor(self) -> int:
        """Every spatial size of the images must be divisible by this: the autoencoder factor times the denoising
        UNet's (``2 ** (levels - 1)`` for MONAI's ``DiffusionModelUNet``: its stride-2 downsampling and 2x upsampling
        only meet again on even sizes at every level)."""
        return int(self.autoencoder.downsample_factor) * self.unet_downsample_factor

    @property
    def unet_downsample_factor(self) -> int:
        """How much the denoising UNet shrinks the latent grid: ``2 ** (len(block_out_channels) - 1)`` for MONAI's
        ``DiffusionModelUNet``, 1 for a UNet that does not say."""
        levels = getattr(self.unet, "block_out_channels", None)
        return 2 ** (len(levels) - 1) if levels else 1

    def frozen_modules(self) -> list[nn.Module]:
        """The modules trained before stage 2 and frozen during it (the autoencoder here)."""
        return [self.autoencoder]

    def latent_channels(self) -> int:
        """Channels of the joint latent: ``M * latent_channels`` of the autoencoder."""
        return self.num_modalities * self.autoencoder.latent_channels

    def condition(
        self, images: torch.Tensor, available: torch.Tensor, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The condition concatenated to the noisy latent: ``(B, M, *S) -> (B, condition_channels, *S / f)``.

        Args:
            images: ``(B, M, *S)``; channels of absent modalities must not influence the result.
            available: ``(B, M)`` bool, validated by the caller (the inferer).
            latents: the scaled joint latent of ``images`` when the caller has it already (training), else None.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement condition().")

    def given_latents(
        self, images: torch.Tensor, available: torch.Tensor, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The scaled joint latent of the available contrasts, zero in the channels of absent ones:
        ``(B, M, *S) -> (B, M * latent_channels, *S / f)``.

        Args:
            images: ``(B, M, *S)``; channels of absent contrasts are ignored.
            available: ``(B, M)`` bool, validated by the caller (only its shape and dtype are checked here).
            latents: the scaled joint latent of ``images`` when the caller has it (training passes the sampled one
                it diffuses); ``None``: the posterior mean of the contrasts available in some sample of the batch
                (deterministic, as at inference; the others are not encoded).
        """
        grid = self.check_images(images)
        check_availability_shape(available, images.shape[0], self.num_modalities, type(self).__name__)
        b, m, c = images.shape[0], self.num_modalities, self.autoencoder.latent_channels
        if latents is None:
            present = torch.nonzero(available.any(dim=0)).flatten().tolist()
            per_modality = images.new_zeros((b, m, c, *grid))
            z = self.autoencoder.encode_mean_of(images[:, present]) * self.scale_factor
            per_modality[:, present] = z.reshape(b, len(present), c, *grid).to(per_modality.dtype)
            latents = per_modality.reshape(b, m * c, *grid)
        keep = available.view(b, m, 1, *([1] * self.spatial_dims))
        masked = torch.where(keep, latents.reshape(b, m, c, *grid), torch.zeros((), dtype=latents.dtype))
        return masked.reshape(b, m * c, *grid)

    def latent_condition(
        self, images: torch.Tensor, available: torch.Tensor, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``cat([given latents, mask])``: :py:meth:`given_latents` and the availability mask broadcast to the latent
        grid (so that a zero latent and an absent contrast can be told apart):
        ``(B, M, *S) -> (B, M * latent_channels + M, *S / f)``. The condition of
        :py:class:`~monai_msgldm.networks.nets.PlainConditionalLDM`, and the latent part of MSG-LDM's hybrid
        condition."""
        given = self.given_latents(images, available, latents)
        b, m, grid = images.shape[0], self.num_modalities, given.shape[2:]
        mask = available.to(given.dtype).view(b, m, *([1] * self.spatial_dims)).expand(b, m, *grid)
        return torch.cat([given, mask], dim=1)

    def given_pixels(self, images: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """The given contrasts' images moved onto the latent grid without loss (space to depth: each ``f^d`` block
        of pixels becomes ``f^d`` channels, in ``torch.nn.functional.pixel_unshuffle``'s order), zero for absent
        contrasts: ``(B, M, *S) -> (B, M * f^d, *S / f)``, ``f`` the autoencoder factor. The pixel part of the
        ``pixel_condition`` option: it hands the UNet the intensities the given latents only encode.

        Args:
            images: ``(B, M, *S)``; channels of absent contrasts are ignored.
            available: ``(B, M)`` bool, validated by the caller (only its shape and dtype are checked here).
        """
        grid = self.check_images(images)
        check_availability_shape(available, images.shape[0], self.num_modalities, type(self).__name__)
        b, m, f, d = images.shape[0], self.num_modalities, int(self.autoencoder.downsample_factor), self.spatial_dims
        keep = available.view(b, m, *([1] * d))
        x = torch.where(keep, images, torch.zeros((), dtype=images.dtype, device=images.device))
        x = x.reshape(b, m, *[size for g in grid for size in (g, f)])  # (B, M, h, f, w, f[, d, f])
        x = x.permute(0, 1, *range(3, 3 + 2 * d, 2), *range(2, 2 + 2 * d, 2))  # (B, M, f, f[, f], h, w[, d])
        return x.reshape(b, m * f**d, *grid)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled joint latent of all modalities (sampled): ``(B, M, *S) -> (B, M * latent_channels, *S / f)``."""
        return self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor

    def decode(self, latents: torch.Tensor, modalities: Sequence[int] | None = None) -> torch.Tensor:
        """Images from a scaled joint latent: ``(B, M * latent_channels, *L) -> (B, M or len(modalities), *S)``."""
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor, modalities=modalities)

    def decode_selected(self, latents: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """Images of the selected (item, contrast) pairs of a scaled joint latent: ``(B, M * latent_channels, *L)``
        and ``(B, M)`` bool ``-> (K, 1, *S)``, in the order of ``images[select]``."""
        return self.autoencoder.decode_selected(latents / self.scale_factor, select)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Denoiser call on ``x = cat([noisy joint latent, condition], dim=1)``.

        Args:
            x: ``(B, M * latent_channels + condition_channels, *L)``.
            timesteps: ``(B,)`` or ``(1,)`` diffusion timesteps.
            context: unused (conditioning is by concatenation); kept for MONAI inferer compatibility.

        Returns:
            The UNet prediction ``(B, M * latent_channels, *L)`` (noise, velocity or sample, as the scheduler
            it was trained with says).
        """
        return self.unet(x, timesteps=timesteps, context=context)

    @torch.no_grad()
    def calibrate_scale_factor(self, images: torch.Tensor, available: torch.Tensor | None = None) -> float:
        """Set ``scale_factor`` to ``1 / std`` of the joint latent of ``images`` (the usual LDM recipe); returns it.

        Args:
            images: ``(B, M, *S)``.
            available: optional ``(B, M)`` bool, the contrasts the data has: the latents of absent contrasts (their
                fill value) are left out of the std. None: every contrast counts.
        """
        self.check_images(images)
        z = self.autoencoder.encode_stage_2_inputs(images)
        if available is not None:
            per_contrast = z.shape[1] // self.num_modalities
            keep = torch.as_tensor(available, dtype=torch.bool, device=z.device).repeat_interleave(per_contrast, dim=1)
            if not bool(keep.any()):
                raise ValueError("calibrate_scale_factor expects at least one available contrast in the batch.")
            z = z[keep]
        value = 1.0 / float(torch.std(z).clamp_min(1e-8))
        self.scale_factor.fill_(value)
        return value
