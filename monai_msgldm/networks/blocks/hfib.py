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
"""High-frequency injection block (HFIB) of MSG-LDM."""

from __future__ import annotations

__all__ = ["HighFrequencyInjectionBlock"]

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution


class HighFrequencyInjectionBlock(nn.Module):
    """
    High-frequency injection block (HFIB) of MSG-LDM: re-injects the high-frequency part of a feature map,
    ``high = x - G_sigma(x)``, where ``G_sigma`` is a depthwise Gaussian low-pass filter with one learnable
    scalar ``sigma`` per block.

    The N-D Gaussian kernel is rebuilt from ``sigma`` at every forward pass (so gradients reach ``sigma``), as
    the outer product of ``spatial_dims`` 1-D Gaussians each normalised to sum 1 (the N-D kernel therefore sums
    to 1). It is applied to every channel separately (``groups=channels``) after ``padding_mode`` padding, so the
    spatial size is kept and a constant input has ``high == 0``. ``sigma`` is clamped to ``>= sigma_min``.

    Two ways to inject ``high``:

    - ``mode="add"`` (paper, default): ``out = x + high``.
    - ``mode="concat"`` (authors' code): ``out = act(Conv3x3(cat[x, high]))``, ``2C -> C`` channels.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        channels: number of input (and output) channels ``C``.
        mode: ``"add"`` or ``"concat"``.
        sigma: initial standard deviation of the Gaussian (in pixels), ``> 0`` and ``>= sigma_min``.
        learnable_sigma: whether ``sigma`` is an ``nn.Parameter`` (otherwise a buffer).
        sigma_min: lower clamp of ``sigma`` in forward, ``> 0``.
        kernel_size: odd Gaussian kernel size ``>= 3`` (the same along every spatial axis).
        act: activation of the ``"concat"`` fusion convolution (unused in ``"add"`` mode).
        padding_mode: ``"replicate"`` (default, works for any spatial size) or ``"reflect"`` (needs every spatial
            size ``> kernel_size // 2``).

    Shapes:
        input ``(B, C, *spatial)`` -> output ``(B, C, *spatial)``.

    Example::

        >>> block = HighFrequencyInjectionBlock(spatial_dims=2, channels=8)
        >>> block(torch.rand(2, 8, 32, 32)).shape
        torch.Size([2, 8, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        mode: str = "add",
        sigma: float = 1.0,
        learnable_sigma: bool = True,
        sigma_min: float = 1e-3,
        kernel_size: int = 3,
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.05}),
        padding_mode: str = "replicate",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"{name} expects spatial_dims in (1, 2, 3), got {spatial_dims}.")
        if int(channels) != channels or channels <= 0:
            raise ValueError(f"{name} expects channels to be a positive integer, got {channels}.")
        if mode not in ("add", "concat"):
            raise ValueError(f"{name} expects mode in ('add', 'concat'), got {mode!r}.")
        if int(kernel_size) != kernel_size or kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"{name} expects kernel_size to be an odd integer >= 3, got {kernel_size}.")
        if not math.isfinite(sigma_min) or sigma_min <= 0:
            raise ValueError(f"{name} expects sigma_min > 0, got {sigma_min}.")
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"{name} expects sigma > 0, got {sigma}.")
        if sigma < sigma_min:
            raise ValueError(f"{name} expects sigma >= sigma_min ({sigma_min}), got {sigma}.")
        if padding_mode not in ("replicate", "reflect"):
            raise ValueError(f"{name} expects padding_mode in ('replicate', 'reflect'), got {padding_mode!r}.")

        self.spatial_dims = int(spatial_dims)
        self.channels = int(channels)
        self.mode = mode
        self.sigma_min = float(sigma_min)
        self.kernel_size = int(kernel_size)
        self.padding_mode = padding_mode

        sigma_t = torch.tensor(float(sigma), dtype=torch.float32)
        if learnable_sigma:
            self.sigma = nn.Parameter(sigma_t)
        else:
            self.register_buffer("sigma", sigma_t)

        self.fuse: nn.Module
        if mode == "concat":
            self.fuse = Convolution(
                spatial_dims=spatial_dims,
                in_channels=2 * self.channels,
                out_channels=self.channels,
                kernel_size=3,
                act=act,
                norm=None,
            )
        else:
            self.fuse = nn.Identity()

    def get_kernel(self) -> torch.Tensor:
        """
        The current normalised Gaussian kernel, shape ``(kernel_size,) * spatial_dims``, summing to 1.
        It is differentiable with respect to ``sigma``.
        """
        sigma = torch.clamp(self.sigma, min=self.sigma_min)
        radius = self.kernel_size // 2
        coords = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
        g = torch.exp(-(coords * coords) / (2.0 * sigma * sigma))
        g = g / g.sum()
        kernel = g
        for _ in range(self.spatial_dims - 1):
            kernel = kernel.unsqueeze(-1) * g  # outer product: (K,)*d -> (K,)*(d+1)
        return kernel

    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise Gaussian low-pass ``G_sigma(x)``, same shape as ``x``: ``(B, C, *spatial)``."""
        kernel = self.get_kernel().to(dtype=x.dtype)
        weight = kernel.unsqueeze(0).unsqueeze(0).expand([self.channels, 1] + [self.kernel_size] * self.spatial_dims)
        radius = self.kernel_size // 2
        x_pad = F.pad(x, [radius, radius] * self.spatial_dims, mode=self.padding_mode)
        if self.spatial_dims == 1:
            return F.conv1d(x_pad, weight, groups=self.channels)
        if self.spatial_dims == 2:
            return F.conv2d(x_pad, weight, groups=self.channels)
        return F.conv3d(x_pad, weight, groups=self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature map ``(B, C, *spatial)``.

        Returns:
            ``(B, C, *spatial)``.
        """
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"HighFrequencyInjectionBlock expects x of shape (B, {self.channels}, <{self.spatial_dims} spatial>), "
                f"got {list(x.shape)}."
            )
        high = x - self.low_pass(x)
        if self.mode == "concat":
            return self.fuse(torch.cat([x, high], dim=1))
        return x + high
