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
"""The whole MSG-LDM model as one module: autoencoder, structure branch and conditional diffusion UNet."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
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
from monai_msgldm.networks.nets.structure_style_net import StructureStyleNet
from monai_msgldm.utils.availability import check_availability_shape

__all__ = ["MSGLDM", "resize_to_grid"]


def resize_to_grid(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a feature map ``(B, C, *S)`` to the spatial grid ``size``.

    Identity when the grid already matches; area averaging when every axis shrinks by an integer factor;
    (bi/tri)linear interpolation otherwise.
    """
    size = tuple(int(s) for s in size)
    src = tuple(x.shape[2:])
    if src == size:
        return x
    if all(s >= t and s % t == 0 for s, t in zip(src, size)):
        return F.adaptive_avg_pool2d(x, size) if len(size) == 2 else F.adaptive_avg_pool3d(x, size)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class MSGLDM(MultiContrastLDM):
    """Multiscale Structure-Guided Latent Diffusion (MSG-LDM, CVPR 2026) for missing MRI contrast synthesis.

    One module holds the three trained parts, so that it is one checkpoint and one bundle ``network_def``:

    - ``autoencoder``: a :py:class:`ModalityWiseAutoencoder` around one single-channel MONAI ``AutoencoderKL``
      shared by all M modalities (stage 0). The joint latent is the concatenation of the M per-modality latents.
    - ``structure_net``: a :py:class:`StructureStyleNet` (stage 1); only its structure branch is used here, to
      compute the fused multiscale structure map ``F_s`` from the available modalities.
    - ``unet``: a MONAI ``DiffusionModelUNet`` (stage 2) that denoises the joint latent with ``F_s`` (resized to
      the latent grid when needed) concatenated on the channel axis.

    The joint latent, the autoencoder calls and the denoiser call come from :py:class:`MultiContrastLDM`; the
    condition is ``F_s`` (:py:meth:`encode_structure`). The module computes and owns no scheduler, no autocast and
    no sampling loop: :py:class:`monai_msgldm.inferers.MultiContrastDiffusionInferer` trains it (stage-2 loss) and
    samples it with the scheduler given in the bundle config.

    Args:
        spatial_dims: 2 (axial slices, the paper's setting) or 3.
        num_modalities: number of contrasts M (4 for T1, T1CE, T2, FLAIR).
        autoencoder: a single-channel MONAI ``AutoencoderKL``; default: 4 levels (factor 8), 4 latent channels.
        structure_net: a :py:class:`StructureStyleNet` with ``num_modalities`` modalities; default: the paper's sizes
            with 3 segmentation channels (TC, WT, ET, as ``brats_preprocessing_transforms`` gives).
        unet: a MONAI ``DiffusionModelUNet`` with ``M * latent_channels + structure_channels`` input channels
            (``2 * M * latent_channels + structure_channels + M`` with ``hybrid_condition``) and
            ``M * latent_channels`` output channels; default: channels (128, 128, 256), attention at the two lower
            levels, 32 channels per head, 1 residual block.
        scale_factor: latent scaling applied before diffusion (see :py:meth:`calibrate_scale_factor`).
        hybrid_condition: condition on ``F_s`` and the latents of the given contrasts,
            ``cat([F_s, given latents, mask])`` (:py:meth:`latent_condition`: zero and masked for absent contrasts),
            so that the UNet sees what was acquired directly and not only through the structure map; the UNet then
            has ``M * latent_channels`` more input channels for the latents and ``M`` for the mask. ``False`` (the
            paper): ``F_s`` alone.
        pixel_condition: with ``hybrid_condition``, also the given contrasts' images moved onto the latent grid
            without loss (:py:meth:`given_pixels`, ``M * f^d`` more UNet input channels for the autoencoder factor
            ``f``): the intensities the latents only encode. ``False``: the latents only.

    Example::

        from monai.networks.schedulers import DDIMScheduler
        from monai_msgldm.inferers import MultiContrastDiffusionInferer

        net = MSGLDM(spatial_dims=2)
        images = torch.randn(1, 4, 192, 192)
        available = torch.tensor([[True, True, True, False]])
        scheduler = DDIMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
        inferer = MultiContrastDiffusionInferer(scheduler, num_inference_steps=50)
        out = inferer.sample(images, net, available)  # (1, 4, 192, 192), FLAIR synthesized
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_modalities: int = 4,
        autoencoder: nn.Module | None = None,
        structure_net: StructureStyleNet | None = None,
        unet: DiffusionModelUNet | None = None,
        scale_factor: float = 1.0,
        hybrid_condition: bool = False,
        pixel_condition: bool = False,
    ) -> None:
        if pixel_condition and not hybrid_condition:
            raise ValueError(
                "MSGLDM expects hybrid_condition=True with pixel_condition=True (the pixels come with the given "
                "latents and the availability mask), got hybrid_condition=False."
            )
        if structure_net is None:
            # 3 segmentation channels: tumour core, whole tumour, enhancing (what the BraTS preprocessing produces)
            structure_net = StructureStyleNet(
                spatial_dims=spatial_dims, num_modalities=num_modalities, seg_out_channels=3
            )
        if structure_net.num_modalities != num_modalities:
            raise ValueError(
                f"MSGLDM expects structure_net with num_modalities={num_modalities}, "
                f"got {structure_net.num_modalities}."
            )
        structure_channels = int(structure_net.structure_channels[-1])
        if autoencoder is None:
            autoencoder = default_contrast_autoencoder(spatial_dims)
        latent_ch = num_modalities * autoencoder_latent_channels(autoencoder)
        condition_channels = structure_channels + (latent_ch + num_modalities if hybrid_condition else 0)
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
        self.structure_net = structure_net
        self.structure_channels = structure_channels
        self.hybrid_condition = bool(hybrid_condition)
        self.pixel_condition = bool(pixel_condition)

    @property
    def size_divisor(self) -> int:
        """Every spatial size must be divisible by the autoencoder factor times the denoising UNet's and by the
        structure encoder stride."""
        return math.lcm(super().size_divisor, int(self.structure_net.total_stride))

    def frozen_modules(self) -> list[nn.Module]:
        """The stage-0 autoencoder and the stage-1 structure net, frozen in stage 2."""
        return [self.autoencoder, self.structure_net]

    def structure_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every modality's structure encoder features, nothing fused (``StructureStyleNet.encode_modalities``):
        ``(B, M, *S) -> [(B, M, structure_channels[l], *S_l) for each level l]``. They depend on each modality's own
        image only, so stage 2 can compute them once per training slice and pass them to :py:meth:`condition` with
        any availability mask (the frozen structure net gives the same ``F_s``)."""
        self.check_images(images)
        return self.structure_net.encode_modalities(images)

    def encode_structure(
        self,
        images: torch.Tensor,
        available: torch.Tensor,
        structure_features: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The structure condition ``F_s`` on the latent grid: ``(B, M, *S) -> (B, structure_channels, *S/f)``.

        Absent modalities are zeroed before the structure branch (and their features are zeroed before the
        fusion), so they cannot leak into ``F_s``.

        Args:
            images: ``(B, M, *S)``; the content of absent modalities is ignored.
            available: ``(B, M)`` bool, validated by the caller (only its shape and dtype are checked here).
            structure_features: :py:meth:`structure_features` of ``images`` when the caller has them (stage 2's
                cache); the structure encoders are then not run. ``None``: computed here.
        """
        grid = self.check_images(images)
        check_availability_shape(available, images.shape[0], self.num_modalities, "MSGLDM")
        if structure_features is None:
            keep = available.view(*available.shape, *([1] * self.spatial_dims))
            images = torch.where(keep, images, torch.zeros((), dtype=images.dtype, device=images.device))
        structure = self.structure_net.encode_structure(images, available, structure_features)
        return resize_to_grid(structure, grid)

    def condition(
        self,
        images: torch.Tensor,
        available: torch.Tensor,
        latents: torch.Tensor | None = None,
        structure_features: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``F_s`` (:py:meth:`encode_structure`, from ``structure_features`` when given), followed with
        ``hybrid_condition`` by :py:meth:`latent_condition` (the given contrasts' latents, from ``latents`` when
        given, as in training, or their posterior means) and with ``pixel_condition`` by :py:meth:`given_pixels`:
        ``(B, condition_channels, *S / f)``."""
        structure = self.encode_structure(images, available, structure_features)
        if not self.hybrid_condition:
            return structure
        parts = [structure, self.latent_condition(images, available, latents).to(structure.dtype)]
        if self.pixel_condition:
            parts.append(self.given_pixels(images, available).to(structure.dtype))
        return torch.cat(parts, dim=1)
