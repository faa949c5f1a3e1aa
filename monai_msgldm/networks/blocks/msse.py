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
"""Multiscale structure enhancement (MSSE) of MSG-LDM: cross-attention from the top level to all finer levels."""

from __future__ import annotations

__all__ = ["MultiscaleStructureEnhancement"]

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import CrossAttentionBlock
from monai.networks.layers.factories import Conv


class MultiscaleStructureEnhancement(nn.Module):
    """
    Multiscale structure enhancement (MSSE) of MSG-LDM. Enriches the top (coarsest) fused structure level
    ``F_L`` with the finer levels through multi-head cross-attention:

    1. each finer level ``l = 0 .. L-2`` is resized to the top grid with adaptive average pooling and projected
       to ``C_L = in_channels[-1]`` channels with a 1x1 convolution (pooling and a 1x1 convolution commute, so this
       equals projecting first and pooling after, at a lower cost); the results are summed into the context;
    2. queries are ``LayerNorm(F_L)`` tokens, keys and values the context tokens, attended with MONAI's
       :py:class:`monai.networks.blocks.CrossAttentionBlock`;
    3. ``F_s = F_L + alpha * Conv1x1(attention)``; ``alpha`` is an ``nn.Parameter`` initialised to ``alpha`` when
       ``learnable_alpha`` (default), else a fixed buffer (the authors' code: fixed 0.5).

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: channels of the ``L >= 2`` levels, finest first; the last is the top level ``C_L``.
        num_heads: attention heads; ``C_L`` must be divisible by it.
        alpha: (initial) weight of the attention branch.
        learnable_alpha: whether ``alpha`` is learnable.
        dropout_rate: dropout of the attention block, in ``[0, 1]``.
        qkv_bias: bias of the query/key/value projections of the attention block.
        use_flash_attention: use ``torch.nn.functional.scaled_dot_product_attention`` in the attention block.

    Shapes:
        ``features[l]`` ``(B, in_channels[l], *S_l)``, ``l = 0 .. L-1`` -> ``(B, C_L, *S_L)``.

    Example::

        >>> msse = MultiscaleStructureEnhancement(spatial_dims=2, in_channels=(8, 16, 32), num_heads=4)
        >>> feats = [torch.rand(2, 8, 32, 32), torch.rand(2, 16, 16, 16), torch.rand(2, 32, 8, 8)]
        >>> msse(feats).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Sequence[int],
        num_heads: int = 4,
        alpha: float = 0.5,
        learnable_alpha: bool = True,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"{name} expects spatial_dims in (1, 2, 3), got {spatial_dims}.")
        if isinstance(in_channels, (int, str)) or not isinstance(in_channels, Sequence):
            raise ValueError(f"{name} expects in_channels to be a sequence of positive integers, got {in_channels!r}.")
        if len(in_channels) < 2:
            raise ValueError(f"{name} expects in_channels to have at least 2 levels, got {len(in_channels)}.")
        if any(int(c) != c or c <= 0 for c in in_channels):
            raise ValueError(f"{name} expects in_channels to be positive integers, got {tuple(in_channels)}.")
        if int(num_heads) != num_heads or num_heads <= 0:
            raise ValueError(f"{name} expects num_heads to be a positive integer, got {num_heads}.")
        top = int(in_channels[-1])
        if top % num_heads != 0:
            raise ValueError(f"{name} expects in_channels[-1] to be divisible by num_heads ({num_heads}), got {top}.")
        if not math.isfinite(alpha):
            raise ValueError(f"{name} expects a finite alpha, got {alpha}.")
        if not 0.0 <= dropout_rate <= 1.0:
            raise ValueError(f"{name} expects dropout_rate in [0, 1], got {dropout_rate}.")

        self.spatial_dims = int(spatial_dims)
        self.in_channels = tuple(int(c) for c in in_channels)
        self.top_channels = top

        conv_type = Conv[Conv.CONV, spatial_dims]
        self.projections = nn.ModuleList(conv_type(c, top, kernel_size=1) for c in self.in_channels[:-1])
        self.norm = nn.LayerNorm(top)
        self.attn = CrossAttentionBlock(
            hidden_size=top,
            num_heads=int(num_heads),
            dropout_rate=dropout_rate,
            context_input_size=top,
            qkv_bias=qkv_bias,
            use_flash_attention=use_flash_attention,
        )
        self.out_proj = conv_type(top, top, kernel_size=1)
        alpha_t = torch.tensor(float(alpha), dtype=torch.float32)
        if learnable_alpha:
            self.alpha = nn.Parameter(alpha_t)
        else:
            self.register_buffer("alpha", alpha_t)

    def _check_features(self, features: Sequence[torch.Tensor]) -> None:
        name = type(self).__name__
        if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
            raise ValueError(f"{name} expects features to be a sequence of tensors, got {type(features).__name__}.")
        if len(features) != len(self.in_channels):
            raise ValueError(f"{name} expects features to have {len(self.in_channels)} levels, got {len(features)}.")
        batch = features[-1].shape[0] if features[-1].dim() > 0 else -1
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.dim() != self.spatial_dims + 2 or f.shape[1] != c or f.shape[0] != batch:
                raise ValueError(
                    f"{name} expects features[{i}] of shape ({batch}, {c}, <{self.spatial_dims} spatial>), "
                    f"got {list(f.shape)}."
                )

    def _pool(self, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Adaptive average pooling of ``x`` ``(B, C, *S)`` to ``(B, C, *grid)``."""
        if self.spatial_dims == 1:
            return F.adaptive_avg_pool1d(x, grid)
        if self.spatial_dims == 2:
            return F.adaptive_avg_pool2d(x, grid)
        return F.adaptive_avg_pool3d(x, grid)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: the ``L`` fused levels, finest first, ``features[l]`` of shape ``(B, in_channels[l], *S_l)``.

        Returns:
            the enhanced top level ``F_s`` of shape ``(B, C_L, *S_L)``.
        """
        self._check_features(features)
        top = features[-1]
        grid = tuple(top.shape[2:])
        context = torch.zeros_like(top)
        for proj, feat in zip(self.projections, features[:-1]):
            context = context + proj(self._pool(feat, grid))
        batch, channels = top.shape[:2]
        queries = self.norm(top.flatten(2).transpose(1, 2))  # (B, N, C_L)
        attn = self.attn(queries, context=context.flatten(2).transpose(1, 2))  # (B, N, C_L)
        attn = attn.transpose(1, 2).reshape(batch, channels, *grid)
        return top + self.alpha.to(top.dtype) * self.out_proj(attn)
