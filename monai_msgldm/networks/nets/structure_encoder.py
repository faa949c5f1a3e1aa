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
"""Per-modality multiscale structure (content) encoder of MSG-LDM with high-frequency injection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit

from monai_msgldm.networks.blocks import HighFrequencyInjectionBlock

__all__ = ["StructureEncoder"]


class StructureEncoder(nn.Module):
    """
    Multiscale structure encoder of MSG-LDM (one per modality). Each level ``l`` applies a (strided) conv block
    (conv + ``norm`` + ``act``) to ``channels[l]`` with stride ``strides[l]``, a residual pair of conv blocks
    (MONAI ``ResidualUnit`` with two subunits) and a :py:class:`HighFrequencyInjectionBlock` that re-injects the
    high-frequency part of the map (edges, fine anatomy). ``use_hfib=False`` replaces the HFIB by
    ``nn.Identity`` (the "without HFIB" ablation).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: channels of one modality's image. Defaults to 1.
        channels: output channels of every level, finest first. Defaults to ``(32, 64, 128, 256)``.
        strides: stride of every level's first convolution, same length as ``channels``. Defaults to
            ``(1, 2, 2, 2)`` (192 px -> 192, 96, 48, 24).
        hfib_mode: ``"add"`` (paper: ``x + high``) or ``"concat"`` (authors' code: conv over ``[x, high]``).
        use_hfib: whether to use the HFIB at every level. Defaults to True.
        norm: normalisation of the conv blocks. Defaults to ``"instance"``.
        act: activation of the conv blocks. Defaults to ``("leakyrelu", {"negative_slope": 0.01})``.
        hfib_sigma: initial Gaussian sigma of every HFIB. Defaults to 1.0.
        learnable_hfib_sigma: whether the HFIB sigmas are learnt. Defaults to True.
        kernel_size: kernel size of the conv blocks. Defaults to 3.

    Inputs:
        ``x``: ``(B, in_channels, *S)``.

    Returns:
        a list of ``L = len(channels)`` maps, finest first; level ``l`` has shape
        ``(B, channels[l], *(S / prod(strides[:l+1])))`` (rounded up when not divisible).

    Example::

        >>> enc = StructureEncoder(spatial_dims=2, channels=(8, 16), strides=(1, 2))
        >>> [f.shape for f in enc(torch.randn(2, 1, 32, 32))]
        [torch.Size([2, 8, 32, 32]), torch.Size([2, 16, 16, 16])]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (1, 2, 2, 2),
        hfib_mode: str = "add",
        use_hfib: bool = True,
        norm: tuple | str | None = "instance",
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.01}),
        hfib_sigma: float = 1.0,
        learnable_hfib_sigma: bool = True,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"StructureEncoder expects spatial_dims in (2, 3), got {spatial_dims}.")
        if int(in_channels) != in_channels or in_channels < 1:
            raise ValueError(f"StructureEncoder expects in_channels to be an int >= 1, got {in_channels}.")
        channels, strides = tuple(channels), tuple(strides)
        if len(channels) < 1 or any(int(c) != c or c < 1 for c in channels):
            raise ValueError(
                f"StructureEncoder expects channels to be a non-empty sequence of positive ints, got {channels}."
            )
        if len(strides) != len(channels):
            raise ValueError(
                f"StructureEncoder expects strides with one entry per level (len(channels)={len(channels)}), "
                f"got {strides}."
            )
        if any(int(s) != s or s < 1 for s in strides):
            raise ValueError(f"StructureEncoder expects strides to be positive ints, got {strides}.")
        if hfib_mode not in ("add", "concat"):
            raise ValueError(f"StructureEncoder expects hfib_mode in ('add', 'concat'), got {hfib_mode!r}.")
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"StructureEncoder expects kernel_size to be an odd int >= 1, got {kernel_size}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = channels
        self.strides = strides
        self.use_hfib = use_hfib

        levels = []
        c_in = in_channels
        for c, s in zip(channels, strides):
            hfib: nn.Module = (
                HighFrequencyInjectionBlock(
                    spatial_dims, c, mode=hfib_mode, sigma=hfib_sigma, learnable_sigma=learnable_hfib_sigma
                )
                if use_hfib
                else nn.Identity()
            )
            levels.append(
                nn.Sequential(
                    Convolution(spatial_dims, c_in, c, strides=s, kernel_size=kernel_size, norm=norm, act=act),
                    ResidualUnit(
                        spatial_dims, c, c, strides=1, kernel_size=kernel_size, subunits=2, norm=norm, act=act
                    ),
                    hfib,
                )
            )
            c_in = c
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"StructureEncoder expects x of shape (B, {self.in_channels}, *S) with {self.spatial_dims} "
                f"spatial dims, got {list(x.shape)}."
            )
        features: list[torch.Tensor] = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features
