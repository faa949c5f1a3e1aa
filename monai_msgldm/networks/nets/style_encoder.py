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
"""Per-modality style encoder of MSG-LDM: an image -> a small global style (contrast) code."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool

__all__ = ["StyleEncoder"]


class StyleEncoder(nn.Module):
    """
    Style encoder of MSG-LDM (MUNIT-like): a 7x7 convolution, ``len(channels) - 1`` 4x4 stride-2 convolutions,
    global average pooling and a 1x1 convolution to a ``style_dim`` code.

    The code describes the global appearance of one contrast (intensity distribution, "style") and is fed to a
    :py:class:`ReconstructionDecoder` through AdaIN. Following the authors, no normalisation is used by default
    (``norm=None``); a normalisation is only ever applied to convolution outputs, never after pooling, so no
    InstanceNorm is run on a 1x1 map.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels (one image of one modality). Defaults to 1.
        channels: output channels of the 7x7 convolution followed by those of each stride-2 convolution.
            Defaults to ``(32, 64, 128, 128, 128)`` (four downsamplings).
        style_dim: length of the style code. Defaults to 8.
        act: activation after every convolution except the last. Defaults to ``"relu"``.
        norm: optional normalisation after every convolution except the last. Defaults to ``None``.

    Inputs:
        ``x``: ``(B, in_channels, *S)``, every spatial size at least ``2 ** (len(channels) - 1)``.

    Returns:
        ``(B, style_dim)`` style codes.

    Example::

        >>> enc = StyleEncoder(spatial_dims=2, channels=(8, 16, 16), style_dim=8)
        >>> enc(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 128, 128),
        style_dim: int = 8,
        act: tuple | str | None = "relu",
        norm: tuple | str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"StyleEncoder expects spatial_dims in (2, 3), got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"StyleEncoder expects in_channels >= 1, got {in_channels}.")
        channels = tuple(channels)
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ValueError(
                f"StyleEncoder expects channels to be a non-empty sequence of positive ints, got {channels}."
            )
        if style_dim < 1:
            raise ValueError(f"StyleEncoder expects style_dim >= 1, got {style_dim}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = channels
        self.style_dim = style_dim
        self.num_downsamples = len(channels) - 1

        layers: list[nn.Module] = [
            Convolution(spatial_dims, in_channels, channels[0], kernel_size=7, act=act, norm=norm, bias=True)
        ]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            # kernel 4, stride 2, padding 1: exactly halves even sizes
            layers.append(
                Convolution(spatial_dims, c_in, c_out, strides=2, kernel_size=4, padding=1, act=act, norm=norm)
            )
        self.features = nn.Sequential(*layers)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.out = Convolution(spatial_dims, channels[-1], style_dim, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"StyleEncoder expects x of shape (B, {self.in_channels}, *S) with {self.spatial_dims} spatial dims, "
                f"got {list(x.shape)}."
            )
        min_size = 2**self.num_downsamples
        if min(x.shape[2:]) < min_size:
            raise ValueError(
                f"StyleEncoder expects every spatial size of x >= {min_size} (2 ** {self.num_downsamples} "
                f"downsamplings), got {list(x.shape[2:])}."
            )
        h = self.pool(self.features(x))
        return self.out(h).flatten(1)
