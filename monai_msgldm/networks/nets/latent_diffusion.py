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
"""What every multi-contrast latent diffusion model here shares: the joint latent, the noise schedule, the stage-2
loss and DDIM sampling. Subclasses only say how the condition is computed (:py:meth:`MultiContrastLDM.condition`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from monai_msgldm.networks.nets.modality_autoencoder import ModalityWiseAutoencoder

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
    """Base of the latent diffusion models that synthesize missing contrasts on the joint latent of M contrasts.

    It holds the autoencoder (a :py:class:`ModalityWiseAutoencoder`, stage 0) and the diffusion UNet (a MONAI
    ``DiffusionModelUNet``, stage 2) and implements the stage-2 loss and DDIM sampling for any condition
    concatenated to the noisy joint latent. A subclass implements :py:meth:`condition` (and may add frozen
    conditioning modules, listed by :py:meth:`frozen_modules`):

    - :py:class:`~monai_msgldm.networks.nets.MSGLDM`: the multiscale structure map ``F_s``;
    - :py:class:`~monai_msgldm.networks.nets.PlainConditionalLDM`: the latents of the available contrasts (the
      baseline without structure guidance).

    ``forward(x, timesteps, context=None)`` is the UNet call on ``x = cat([noisy latent, condition])``, so the model
    can be handed to MONAI's ``DiffusionInferer`` with ``mode="concat"`` (and wrapped in ``DistributedDataParallel``).

    Args:
        spatial_dims: 2 (slices) or 3.
        num_modalities: number of contrasts M.
        autoencoder: a single-channel MONAI ``AutoencoderKL`` (or ``VQVAE``); default
            :py:func:`default_contrast_autoencoder`.
        unet: a ``DiffusionModelUNet`` with ``M * latent_channels + condition_channels`` input and
            ``M * latent_channels`` output channels.
        condition_channels: channels of the condition (set by the subclass).
        scale_factor: latent scaling applied before diffusion (see :py:meth:`calibrate_scale_factor`).
        num_train_timesteps, schedule, beta_start, beta_end: the noise schedule (paper: 1000 steps,
            ``scaled_linear_beta`` from 0.0015 to 0.0195).
        prediction_type: what the UNet predicts, ``"epsilon"`` (paper) or ``"v_prediction"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_modalities: int,
        autoencoder: nn.Module | None,
        unet: DiffusionModelUNet,
        condition_channels: int,
        scale_factor: float = 1.0,
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name} expects spatial_dims 2 or 3, got {spatial_dims}.")
        if num_modalities < 2:
            raise ValueError(f"{name} expects num_modalities >= 2, got {num_modalities}.")
        if scale_factor <= 0:
            raise ValueError(f"{name} expects scale_factor > 0, got {scale_factor}.")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"{name} expects prediction_type 'epsilon' or 'v_prediction', got {prediction_type!r}.")
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
        self.num_train_timesteps = num_train_timesteps
        self.schedule = schedule
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.prediction_type = prediction_type
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            clip_sample=False,
        )

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, images: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if images.ndim != self.spatial_dims + 2 or images.shape[1] != self.num_modalities:
            raise ValueError(
                f"{name} expects images of shape (B, {self.num_modalities}, *{self.spatial_dims}D spatial), "
                f"got {tuple(images.shape)}."
            )
        if available.shape != images.shape[:2]:
            raise ValueError(
                f"{name} expects available of shape {tuple(images.shape[:2])} (B, M), got {tuple(available.shape)}."
            )
        available = available.to(device=images.device, dtype=torch.bool)
        if not bool(available.any(dim=1).all()):
            raise ValueError(f"{name} expects available to have at least one True (available modality) per row.")
        self.autoencoder.latent_shape(images.shape[2:])
        return available

    # ----------------------------------------------------------- components
    @property
    def size_divisor(self) -> int:
        """Every spatial size of the images must be divisible by this (the autoencoder factor here)."""
        return int(self.autoencoder.downsample_factor)

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
            available: ``(B, M)`` bool.
            latents: the scaled joint latent of ``images`` when the caller has it already (training), else None.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement condition().")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled joint latent of all modalities (sampled): ``(B, M, *S) -> (B, M * latent_channels, *S / f)``."""
        return self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor

    def decode(self, latents: torch.Tensor, modalities: Sequence[int] | None = None) -> torch.Tensor:
        """Images from a scaled joint latent: ``(B, M * latent_channels, *L) -> (B, M or len(modalities), *S)``."""
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor, modalities=modalities)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Diffusion network call on ``x = cat([noisy joint latent, condition], dim=1)``.

        Args:
            x: ``(B, M * latent_channels + condition_channels, *L)``.
            timesteps: ``(B,)`` or ``(1,)`` diffusion timesteps.
            context: unused (conditioning is by concatenation); kept for MONAI inferer compatibility.

        Returns:
            The UNet prediction ``(B, M * latent_channels, *L)`` (noise for ``prediction_type="epsilon"``).
        """
        return self.unet(x, timesteps=timesteps, context=context)

    def ddim_scheduler(self, num_inference_steps: int = 50) -> DDIMScheduler:
        """A DDIM scheduler on this model's noise schedule, set to ``num_inference_steps``."""
        if num_inference_steps < 1 or num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"{type(self).__name__} expects num_inference_steps in [1, {self.num_train_timesteps}], "
                f"got {num_inference_steps}."
            )
        scheduler = DDIMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            schedule=self.schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            prediction_type=self.prediction_type,
            clip_sample=False,
        )
        scheduler.set_timesteps(num_inference_steps)
        return scheduler

    # ------------------------------------------------------------ training
    def diffusion_loss(
        self,
        images: torch.Tensor,
        available: torch.Tensor,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        diffusion_model: nn.Module | None = None,
    ) -> torch.Tensor:
        """Stage-2 training loss: MSE between the UNet prediction and its target on the joint latent.

        The frozen modules run without gradients; the joint latent is encoded once and the condition computed once.

        Args:
            images: all M modalities ``(B, M, *S)`` in [-1, 1] (ground truth for every modality).
            available: ``(B, M)`` bool, the modalities the condition may use (drawn per sample).
            noise: optional ``(B, M * latent_channels, *L)`` noise; drawn when ``None``.
            timesteps: optional ``(B,)`` long timesteps; drawn uniformly when ``None``.
            diffusion_model: the module to call for the prediction, e.g. this model wrapped in
                ``DistributedDataParallel``; default ``self``.

        Returns:
            The scalar MSE loss.
        """
        available = self._check_inputs(images, available)
        latent_shape = (images.shape[0], self.latent_channels(), *self.autoencoder.latent_shape(images.shape[2:]))
        if noise is None:
            noise = torch.randn(latent_shape, device=images.device, dtype=images.dtype)
        elif tuple(noise.shape) != latent_shape:
            raise ValueError(f"{type(self).__name__} expects noise of shape {latent_shape}, got {tuple(noise.shape)}.")
        if timesteps is None:
            timesteps = torch.randint(0, self.num_train_timesteps, (images.shape[0],), device=images.device).long()
        with torch.no_grad():
            latents = self.encode(images)
            condition = self.condition(images, available, latents=latents)
        prediction = DiffusionInferer(self.scheduler)(
            inputs=latents,
            diffusion_model=diffusion_model or self,
            noise=noise,
            timesteps=timesteps,
            condition=condition,
            mode="concat",
        )
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(prediction.float(), target.float())

    @torch.no_grad()
    def calibrate_scale_factor(self, images: torch.Tensor) -> float:
        """Set ``scale_factor`` to ``1 / std`` of the joint latent of ``images`` (the usual LDM recipe); returns it."""
        self.autoencoder.latent_shape(images.shape[2:])
        z = self.autoencoder.encode_stage_2_inputs(images)
        value = 1.0 / float(torch.std(z).clamp_min(1e-8))
        self.scale_factor.fill_(value)
        return value

    # ------------------------------------------------------------ sampling
    @torch.no_grad()
    def synthesize(
        self,
        images: torch.Tensor,
        available: torch.Tensor,
        num_inference_steps: int = 50,
        scheduler: Scheduler | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        amp: bool = True,
        verbose: bool = False,
    ) -> torch.Tensor:
        """Synthesize the missing modalities from the available ones.

        The condition is computed once per sample; the DDIM loop (MONAI ``DiffusionInferer.sample`` in ``concat``
        mode) then only runs the UNet. Only the modalities missing in at least one sample of the batch are decoded.

        Args:
            images: ``(B, M, *S)`` in [-1, 1]; channels of absent modalities are ignored (any value).
            available: ``(B, M)`` bool availability mask, at least one True per row.
            num_inference_steps: DDIM steps when ``scheduler`` is not given.
            scheduler: a MONAI scheduler with its timesteps already set (overrides ``num_inference_steps``).
            noise: optional initial latent noise ``(B, M * latent_channels, *S / f)``.
            generator: optional ``torch.Generator`` for the initial noise (reproducible sampling).
            amp: use autocast (bfloat16) on CUDA; ignored on CPU.
            verbose: show MONAI's progress bar over the denoising steps.

        Returns:
            ``(B, M, *S)``: every modality; available ones exactly as given, missing ones synthesized.
        """
        available = self._check_inputs(images, available)
        if scheduler is None:
            scheduler = self.ddim_scheduler(num_inference_steps)
        latent_shape = (images.shape[0], self.latent_channels(), *self.autoencoder.latent_shape(images.shape[2:]))
        if noise is None:
            noise = torch.randn(latent_shape, generator=generator, device="cpu", dtype=torch.float32)
            noise = noise.to(images.device)
        elif tuple(noise.shape) != latent_shape:
            raise ValueError(f"{type(self).__name__} expects noise of shape {latent_shape}, got {tuple(noise.shape)}.")
        output = images.clone()
        missing = [m for m in range(self.num_modalities) if not bool(available[:, m].all())]
        if not missing:
            return output
        use_amp = amp and images.device.type == "cuda"
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
        with ctx:
            condition = self.condition(images, available)
            latents = DiffusionInferer(scheduler).sample(
                input_noise=noise,
                diffusion_model=self,
                scheduler=scheduler,
                conditioning=condition.to(noise.dtype),
                mode="concat",
                verbose=verbose,
            )
            decoded = self.decode(latents, modalities=missing).to(images.dtype)
        keep = available[:, missing].view(images.shape[0], len(missing), *([1] * self.spatial_dims))
        output[:, missing] = torch.where(keep, images[:, missing], decoded)
        return output
