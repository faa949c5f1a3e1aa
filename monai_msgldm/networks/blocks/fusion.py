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
"""Multimodal structure fusion (MMSF) of MSG-LDM: availability-aware gated fusion of per-modality features."""

from __future__ import annotations

__all__ = ["MultimodalStructureFusion"]

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

from monai_msgldm.utils.availability import check_availability_shape


class MultimodalStructureFusion(nn.Module):
    """
    Multimodal structure fusion (MMSF) of MSG-LDM. Fuses the structure features of ``M`` modalities, some of
    which may be absent, into one feature map.

    Steps, for ``features`` ``(B, M, C, *spatial)`` and a boolean ``available`` mask ``(B, M)``:

    1. features of absent modalities are replaced by zeros (with ``torch.where``, so even non-finite values of an
       absent modality cannot leak into the output);
    2. ``gated=True``: a convolution over the ``M*C`` concatenated masked features gives ``M`` sigmoid gate maps
       ``(B, M, *spatial)`` (per pixel, per modality), multiplied by the availability mask so absent modalities
       get exactly zero weight. ``gated=False`` (ablation "without MMSF"): the gates are the availability mask;
    3. the gated features are combined: ``"sum"`` (paper) sums them over the modalities and divides by the number
       of available modalities of each sample (so with ``gated=False`` this is the plain mean over the available
       modalities), ``"concat"`` (authors' code) concatenates them to ``M*C`` channels (absent ones are zeros);
    4. a ``Convolution`` block (conv + ``norm`` + ``act``) gives the fused map with ``out_channels`` channels.

    The output of a sample does not depend on the input features of its absent modalities, nor on the other
    samples of the batch (with a per-sample ``norm`` such as the default instance norm).

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: channels ``C`` of each modality's features.
        num_modalities: number of modalities ``M``.
        out_channels: channels of the fused map; defaults to ``in_channels``.
        combine: ``"sum"`` (paper, default) or ``"concat"`` (authors' code).
        kernel_size: kernel size of the gate convolution and of the fusion convolution.
        norm: normalisation of the fusion convolution block.
        act: activation of the fusion convolution block.
        gated: learned sigmoid gates (``True``) or availability-only weights (``False``, mean fusion ablation).

    Shapes:
        ``features`` ``(B, M, C, *spatial)``, ``available`` ``(B, M)`` bool -> ``(B, out_channels, *spatial)``.

    Example::

        >>> fusion = MultimodalStructureFusion(spatial_dims=2, in_channels=8, num_modalities=4)
        >>> feats = torch.rand(2, 4, 8, 16, 16)
        >>> available = torch.tensor([[True, False, True, True], [False, False, True, False]])
        >>> fusion(feats, available).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_modalities: int,
        out_channels: int | None = None,
        combine: str = "sum",
        kernel_size: int = 3,
        norm: tuple | str | None = ("instance", {"affine": True}),
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.01}),
        gated: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"{name} expects spatial_dims in (1, 2, 3), got {spatial_dims}.")
        if int(in_channels) != in_channels or in_channels <= 0:
            raise ValueError(f"{name} expects in_channels to be a positive integer, got {in_channels}.")
        if int(num_modalities) != num_modalities or num_modalities <= 0:
            raise ValueError(f"{name} expects num_modalities to be a positive integer, got {num_modalities}.")
        if out_channels is None:
            out_channels = in_channels
        if int(out_channels) != out_channels or out_channels <= 0:
            raise ValueError(f"{name} expects out_channels to be a positive integer or None, got {out_channels}.")
        if combine not in ("sum", "concat"):
            raise ValueError(f"{name} expects combine in ('sum', 'concat'), got {combine!r}.")
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{name} expects kernel_size to be a positive odd integer, got {kernel_size}.")

        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.num_modalities = int(num_modalities)
        self.out_channels = int(out_channels)
        self.combine = combine
        self.gated = bool(gated)

        self.gate: nn.Module
        if self.gated:
            self.gate = Convolution(
                spatial_dims=spatial_dims,
                in_channels=self.num_modalities * self.in_channels,
                out_channels=self.num_modalities,
                kernel_size=kernel_size,
                conv_only=True,
            )
        else:
            self.gate = nn.Identity()
        fuse_in = self.in_channels if combine == "sum" else self.num_modalities * self.in_channels
        self.fuse = Convolution(
            spatial_dims=spatial_dims,
            in_channels=fuse_in,
            out_channels=self.out_channels,
            kernel_size=kernel_size,
            norm=norm,
            act=act,
        )

    def _check_inputs(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        m, c, sd = self.num_modalities, self.in_channels, self.spatial_dims
        if features.dim() != sd + 3 or features.shape[1] != m or features.shape[2] != c:
            raise ValueError(
                f"{name} expects features of shape (B, {m}, {c}, <{sd} spatial>), got {list(features.shape)}."
            )
        check_availability_shape(available, features.shape[0], m, name)
        return available

    def forward(self, features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: per-modality features ``(B, M, C, *spatial)``.
            available: availability mask ``(B, M)`` bool, every row with at least one ``True`` (validated once
                where it enters the model, :py:func:`monai_msgldm.utils.validate_availability`; only its shape and
                dtype are checked here).

        Returns:
            fused map ``(B, out_channels, *spatial)``.
        """
        available = self._check_inputs(features, available)
        batch, spatial = features.shape[0], features.shape[3:]
        mask = available.view(batch, self.num_modalities, *([1] * (self.spatial_dims + 1)))  # (B, M, 1, 1...)
        masked = torch.where(mask, features, torch.zeros((), dtype=features.dtype, device=features.device))
        weights = mask.to(features.dtype)  # (B, M, 1, 1...)
        if self.gated:
            logits = self.gate(masked.reshape(batch, self.num_modalities * self.in_channels, *spatial))
            weights = torch.sigmoid(logits).unsqueeze(2) * weights  # (B, M, 1, *spatial), zero where absent
        weighted = masked * weights
        if self.combine == "sum":
            count = available.sum(dim=1).to(features.dtype).view(batch, *([1] * (self.spatial_dims + 1)))
            combined = weighted.sum(dim=1) / count
        else:
            combined = weighted.reshape(batch, self.num_modalities * self.in_channels, *spatial)
        return self.fuse(combined)
