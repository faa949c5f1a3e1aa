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
"""A single-channel autoencoder shared by every modality, applied to each modality separately."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import VQVAE, AutoencoderKL
from monai.networks.nets.autoencoderkl import AEKLDownsample

__all__ = ["ModalityWiseAutoencoder", "autoencoder_downsample_factor", "autoencoder_latent_channels"]


def autoencoder_downsample_factor(autoencoder: nn.Module) -> int:
    """Spatial downsampling factor of a MONAI ``AutoencoderKL`` or ``VQVAE`` (image size / latent size).

    Args:
        autoencoder: a MONAI ``AutoencoderKL`` or ``VQVAE``.

    Returns:
        The integer factor, e.g. 8 for an ``AutoencoderKL`` with four levels.
    """
    if isinstance(autoencoder, AutoencoderKL):
        return 2 ** sum(isinstance(m, AEKLDownsample) for m in autoencoder.encoder.modules())
    if isinstance(autoencoder, VQVAE):
        return 2 ** len(autoencoder.downsample_parameters)
    raise TypeError(
        f"autoencoder_downsample_factor expects a MONAI AutoencoderKL or VQVAE, got {type(autoencoder).__name__}."
    )


def autoencoder_latent_channels(autoencoder: nn.Module) -> int:
    """Latent channels of a MONAI ``AutoencoderKL`` (``latent_channels``) or ``VQVAE`` (``embedding_dim``)."""
    if isinstance(autoencoder, AutoencoderKL):
        return int(autoencoder.latent_channels)
    if isinstance(autoencoder, VQVAE):
        return int(autoencoder.embedding_dim)
    raise TypeError(
        f"autoencoder_latent_channels expects a MONAI AutoencoderKL or VQVAE, got {type(autoencoder).__name__}."
    )


class ModalityWiseAutoencoder(nn.Module):
    """Applies one single-channel MONAI autoencoder to each of M modality channels, stacking the latents.

    MSG-LDM encodes each contrast with the same single-channel autoencoder and concatenates the latents of all
    M modalities into one joint latent. This wrapper exposes that as the ``encode_stage_2_inputs`` /
    ``decode_stage_2_outputs`` pair MONAI's :py:class:`monai.inferers.LatentDiffusionInferer` expects, so the
    inferer's training pass and sampling loop are reused as they are.

    Shapes: images ``(B, M, *spatial)`` <-> latents ``(B, M * latent_channels, *spatial / factor)``; the latent
    channels of modality ``m`` are ``[m * latent_channels, (m + 1) * latent_channels)``.

    Args:
        autoencoder: a MONAI ``AutoencoderKL`` (or ``VQVAE``) with one input and one output channel.
        num_modalities: number of modality channels M.

    Example::

        ae = AutoencoderKL(spatial_dims=2, channels=(8, 8), latent_channels=4, norm_num_groups=4,
                           attention_levels=(False, False), num_res_blocks=1)
        wrapper = ModalityWiseAutoencoder(ae, num_modalities=4)
        z = wrapper.encode_stage_2_inputs(torch.randn(2, 4, 32, 32))  # (2, 16, 16, 16)
        x = wrapper.decode_stage_2_outputs(z)  # (2, 4, 32, 32)
    """

    def __init__(self, autoencoder: nn.Module, num_modalities: int = 4) -> None:
        super().__init__()
        if not isinstance(autoencoder, (AutoencoderKL, VQVAE)):
            raise ValueError(
                f"ModalityWiseAutoencoder expects autoencoder to be a MONAI AutoencoderKL or VQVAE, "
                f"got {type(autoencoder).__name__}."
            )
        if num_modalities < 1:
            raise ValueError(f"ModalityWiseAutoencoder expects num_modalities >= 1, got {num_modalities}.")
        in_channels = autoencoder.encoder.in_channels
        if in_channels != 1:
            raise ValueError(
                f"ModalityWiseAutoencoder expects a single-channel autoencoder (in_channels=1), got {in_channels}."
            )
        self.model = autoencoder
        self.num_modalities = num_modalities
        self.latent_channels = autoencoder_latent_channels(autoencoder)
        self.downsample_factor = autoencoder_downsample_factor(autoencoder)

    def latent_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the latent for an image of ``spatial_shape`` (each size must divide by the factor)."""
        bad = [s for s in spatial_shape if s % self.downsample_factor]
        if bad:
            raise ValueError(
                f"ModalityWiseAutoencoder expects spatial sizes divisible by {self.downsample_factor}, "
                f"got {tuple(spatial_shape)}."
            )
        return tuple(s // self.downsample_factor for s in spatial_shape)

    def _check_images(self, images: torch.Tensor, subset: Sequence[int] | None) -> int:
        expected = self.num_modalities if subset is None else len(subset)
        if images.ndim < 3 or images.shape[1] != expected:
            raise ValueError(
                f"ModalityWiseAutoencoder expects images of shape (B, {expected}, *spatial), got {tuple(images.shape)}."
            )
        self.latent_shape(images.shape[2:])
        return expected

    def _encode(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        b, m = images.shape[:2]
        flat = images.reshape(b * m, 1, *images.shape[2:])
        if isinstance(self.model, AutoencoderKL):
            z = self.model.encode_stage_2_inputs(flat) if sample else self.model.encode(flat)[0]
        else:
            z = self.model.encode_stage_2_inputs(flat)
        return z.reshape(b, m * self.latent_channels, *z.shape[2:])

    def encode_stage_2_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Encode every modality and sample its latent: ``(B, M, *S) -> (B, M * latent_channels, *S / factor)``."""
        self._check_images(images, None)
        return self._encode(images, sample=True)

    def encode_mean(self, images: torch.Tensor) -> torch.Tensor:
        """Like :py:meth:`encode_stage_2_inputs` but returns the posterior mean (deterministic)."""
        self._check_images(images, None)
        return self._encode(images, sample=False)

    def encode_mean_of(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior means of any number of contrasts: ``(B, K, *S) -> (B, K * latent_channels, *S / factor)``
        (e.g. only the available ones, ``images[:, present]``)."""
        if images.ndim < 3 or images.shape[1] < 1:
            raise ValueError(
                f"ModalityWiseAutoencoder expects images of shape (B, K, *spatial) with K >= 1, got {tuple(images.shape)}."
            )
        self.latent_shape(images.shape[2:])
        return self._encode(images, sample=False)

    def _per_modality(self, latents: torch.Tensor) -> torch.Tensor:
        """A checked joint latent ``(B, M * latent_channels, *L)`` as ``(B, M, latent_channels, *L)``."""
        c = self.latent_channels
        expected = self.num_modalities * c
        if latents.ndim < 3 or latents.shape[1] != expected:
            raise ValueError(
                f"ModalityWiseAutoencoder expects latents of shape (B, {expected}, *spatial), got {tuple(latents.shape)}."
            )
        return latents.reshape(latents.shape[0], self.num_modalities, c, *latents.shape[2:])

    def decode_stage_2_outputs(self, latents: torch.Tensor, modalities: Sequence[int] | None = None) -> torch.Tensor:
        """Decode a joint latent back to images.

        Args:
            latents: ``(B, M * latent_channels, *L)``.
            modalities: if given, decode only these modality indices (saves work when only some are needed).

        Returns:
            ``(B, M, *S)``, or ``(B, len(modalities), *S)`` when ``modalities`` is given.
        """
        c = self.latent_channels
        b = latents.shape[0]
        per_modality = self._per_modality(latents)
        if modalities is not None:
            idx = list(modalities)
            if not idx or any(not 0 <= i < self.num_modalities for i in idx):
                raise ValueError(
                    f"ModalityWiseAutoencoder expects modalities to be a non-empty list of indices in "
                    f"[0, {self.num_modalities}), got {idx}."
                )
            per_modality = per_modality[:, idx]
        m = per_modality.shape[1]
        images = self.model.decode_stage_2_outputs(per_modality.reshape(b * m, c, *latents.shape[2:]))
        return images.reshape(b, m, *images.shape[2:])

    def decode_selected(self, latents: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """Decode only the selected (item, contrast) pairs of a joint latent, in one batch of the shared autoencoder.

        Args:
            latents: ``(B, M * latent_channels, *L)``.
            select: ``(B, M)`` bool, the pairs to decode.

        Returns:
            ``(K, 1, *S)`` for the ``K`` selected pairs, in the order of ``images[select]`` (item-major), so that
            ``decode_selected(z, select)[:, 0]`` matches ``decode_stage_2_outputs(z)[select]``.
        """
        per_modality = self._per_modality(latents)
        if select.dtype != torch.bool or tuple(select.shape) != (latents.shape[0], self.num_modalities):
            raise ValueError(
                f"ModalityWiseAutoencoder expects select to be a bool tensor of shape ({latents.shape[0]}, "
                f"{self.num_modalities}), got {select.dtype} {tuple(select.shape)}."
            )
        return self.model.decode_stage_2_outputs(per_modality[select.to(latents.device)])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruct every modality through the autoencoder: ``(B, M, *S) -> (B, M, *S)``."""
        return self.decode_stage_2_outputs(self.encode_stage_2_inputs(images))
