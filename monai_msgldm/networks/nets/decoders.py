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
"""Decoders of the MSG-LDM structure/style network: AdaIN image reconstruction and U-Net-like segmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.utils import get_act_layer, get_norm_layer

__all__ = ["AdaptiveInstanceNorm", "ReconstructionDecoder", "SegmentationDecoder"]


class AdaptiveInstanceNorm(nn.Module):
    """
    Adaptive instance normalisation (AdaIN, Huang & Belongie 2017): every channel of every sample is normalised
    to zero mean and unit variance over its spatial extent, then scaled by ``std`` and shifted by ``mean``, which
    are given per sample and channel (predicted from a style code), ``y = std * (x - mu(x)) / sigma(x) + mean``.

    The statistics are computed directly (biased variance), so a map with a single spatial element gives
    ``y = mean`` instead of raising as ``torch.nn.InstanceNorm`` does in training mode. Works for any number of
    spatial dimensions.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance for numerical stability. Defaults to 1e-5.

    Inputs:
        ``x``: ``(B, C, *S)``; ``mean`` and ``std``: ``(B, C)``.

    Returns:
        ``(B, C, *S)``.

    Example::

        >>> adain = AdaptiveInstanceNorm(num_features=4)
        >>> y = adain(torch.randn(2, 4, 8, 8), mean=torch.zeros(2, 4), std=torch.ones(2, 4))
        >>> y.shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"AdaptiveInstanceNorm expects num_features >= 1, got {num_features}.")
        if eps <= 0:
            raise ValueError(f"AdaptiveInstanceNorm expects eps > 0, got {eps}.")
        self.num_features = num_features
        self.eps = eps

    def forward(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[1] != self.num_features:
            raise ValueError(
                f"AdaptiveInstanceNorm expects x of shape (B, {self.num_features}, *S), got {list(x.shape)}."
            )
        expected = [x.shape[0], self.num_features]
        if list(mean.shape) != expected or list(std.shape) != expected:
            raise ValueError(
                f"AdaptiveInstanceNorm expects mean and std of shape {expected}, "
                f"got {list(mean.shape)} and {list(std.shape)}."
            )
        dims = list(range(2, x.ndim))
        mu = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, unbiased=False, keepdim=True)
        x_norm = (x - mu) * torch.rsqrt(var + self.eps)
        view = [x.shape[0], self.num_features] + [1] * (x.ndim - 2)
        return x_norm * std.reshape(view) + mean.reshape(view)


class _AdaINResBlock(nn.Module):
    """Residual block ``x + AdaIN(conv(act(AdaIN(conv(x)))))``; consumes ``4 * channels`` style parameters
    ordered ``[mean1, std1, mean2, std2]``."""

    def __init__(self, spatial_dims: int, channels: int, act: tuple | str | None) -> None:
        super().__init__()
        self.channels = channels
        self.num_style_params = 4 * channels
        self.conv1 = Convolution(spatial_dims, channels, channels, kernel_size=3, conv_only=True)
        self.norm1 = AdaptiveInstanceNorm(channels)
        self.act = get_act_layer(act) if act is not None else nn.Identity()
        self.conv2 = Convolution(spatial_dims, channels, channels, kernel_size=3, conv_only=True)
        self.norm2 = AdaptiveInstanceNorm(channels)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        c = self.channels
        h = self.act(self.norm1(self.conv1(x), params[:, :c], params[:, c : 2 * c]))
        h = self.norm2(self.conv2(h), params[:, 2 * c : 3 * c], params[:, 3 * c :])
        return x + h


class _UpBlock(nn.Module):
    """x2 interpolation (MONAI ``UpSample``), a convolution halving the channels, AdaIN or a plain norm, activation.
    Consumes ``2 * out_channels`` style parameters (``[mean, std]``) with AdaIN, none otherwise."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        use_adain: bool,
        norm: tuple | str | None,
        act: tuple | str | None,
        interp_mode: str,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.use_adain = use_adain
        self.num_style_params = 2 * out_channels if use_adain else 0
        self.up = UpSample(
            spatial_dims,
            in_channels,
            in_channels,
            scale_factor=2,
            mode="nontrainable",
            pre_conv=None,
            interp_mode=interp_mode,
            align_corners=None if interp_mode in ("nearest", "nearest-exact", "area") else False,
        )
        self.conv = Convolution(spatial_dims, in_channels, out_channels, kernel_size=kernel_size, conv_only=True)
        self.adain = AdaptiveInstanceNorm(out_channels)
        self.norm = nn.Identity() if use_adain or norm is None else get_norm_layer(norm, spatial_dims, out_channels)
        self.act = get_act_layer(act) if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.up(x))
        if self.use_adain:
            c = self.out_channels
            h = self.adain(h, params[:, :c], params[:, c : 2 * c])
        else:
            h = self.norm(h)
        return self.act(h)


class ReconstructionDecoder(nn.Module):
    """
    Per-modality reconstruction decoder of MSG-LDM (MUNIT-like): renders the modality-invariant structure map
    ``F_s`` in the contrast described by a style code.

    An MLP maps the style code to the AdaIN parameters (a mean and a std per channel of every AdaIN layer, the
    mean first); ``num_res_blocks`` AdaIN residual blocks act on ``F_s``; ``num_upsamples`` blocks each upsample
    x2 (nearest by default), convolve to half the channels, normalise (plain ``norm``, or AdaIN when
    ``upsample_adain=True``) and activate; a final convolution and ``tanh`` give an image in ``(-1, 1)``.
    As in MUNIT the predicted std is used as is (no offset, no positivity constraint).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: channels of the structure map. Must be divisible by ``2 ** num_upsamples``. Defaults to 256.
        style_dim: length of the style code. Defaults to 8.
        out_channels: image channels. Defaults to 1.
        num_upsamples: number of x2 upsamplings (0 allowed). Defaults to 3.
        num_res_blocks: number of AdaIN residual blocks. Defaults to 2.
        mlp_hidden: hidden width of the style MLP. Defaults to 256.
        mlp_layers: number of linear layers of the style MLP (>= 1). Defaults to 3.
        act: activation of the decoder and of the MLP. Defaults to ``"relu"``.
        norm: plain normalisation of the upsampling blocks when ``upsample_adain=False``; the default
            ``("group", {"num_groups": 1})`` is MUNIT's layer norm over (C, *S) with per-channel affine.
        upsample_adain: use AdaIN (style-driven) instead of ``norm`` in the upsampling blocks. Defaults to False.
        upsample_kernel_size: kernel size of the upsampling convolutions. Defaults to 5.
        final_kernel_size: kernel size of the output convolution. Defaults to 7.
        interp_mode: interpolation of the upsampling (``"nearest"``, ``"linear"``...). Defaults to ``"nearest"``.

    Inputs:
        ``structure``: ``(B, in_channels, *S')``; ``style``: ``(B, style_dim)``.

    Returns:
        ``(B, out_channels, *(S' * 2 ** num_upsamples))`` in ``(-1, 1)``.

    Example::

        >>> dec = ReconstructionDecoder(spatial_dims=2, in_channels=16, style_dim=8, num_upsamples=2, mlp_hidden=32)
        >>> dec(torch.randn(2, 16, 8, 8), torch.randn(2, 8)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 256,
        style_dim: int = 8,
        out_channels: int = 1,
        num_upsamples: int = 3,
        num_res_blocks: int = 2,
        mlp_hidden: int = 256,
        mlp_layers: int = 3,
        act: tuple | str | None = "relu",
        norm: tuple | str | None = ("group", {"num_groups": 1}),
        upsample_adain: bool = False,
        upsample_kernel_size: int = 5,
        final_kernel_size: int = 7,
        interp_mode: str = "nearest",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"ReconstructionDecoder expects spatial_dims in (2, 3), got {spatial_dims}.")
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("style_dim", style_dim, 1),
            ("out_channels", out_channels, 1),
            ("num_upsamples", num_upsamples, 0),
            ("num_res_blocks", num_res_blocks, 0),
            ("mlp_hidden", mlp_hidden, 1),
            ("mlp_layers", mlp_layers, 1),
            ("upsample_kernel_size", upsample_kernel_size, 1),
            ("final_kernel_size", final_kernel_size, 1),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"ReconstructionDecoder expects {name} to be an int >= {low}, got {value}.")
        if in_channels % (2**num_upsamples) != 0:
            raise ValueError(
                f"ReconstructionDecoder expects in_channels divisible by 2 ** num_upsamples = {2**num_upsamples} "
                f"(channels are halved at every upsampling), got in_channels={in_channels}."
            )
        if num_res_blocks + (num_upsamples if upsample_adain else 0) == 0:
            raise ValueError(
                "ReconstructionDecoder expects at least one AdaIN layer (num_res_blocks >= 1 or upsample_adain with "
                f"num_upsamples >= 1), got num_res_blocks={num_res_blocks}, num_upsamples={num_upsamples}, "
                f"upsample_adain={upsample_adain}."
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.style_dim = style_dim
        self.out_channels = out_channels
        self.num_upsamples = num_upsamples

        self.res_blocks = nn.ModuleList([_AdaINResBlock(spatial_dims, in_channels, act) for _ in range(num_res_blocks)])
        up_blocks = []
        ch = in_channels
        for _ in range(num_upsamples):
            up_blocks.append(
                _UpBlock(spatial_dims, ch, ch // 2, upsample_kernel_size, upsample_adain, norm, act, interp_mode)
            )
            ch //= 2
        self.up_blocks = nn.ModuleList(up_blocks)
        self.final = Convolution(
            spatial_dims, ch, out_channels, kernel_size=final_kernel_size, act="tanh", norm=None, bias=True
        )

        self.num_style_params = sum(b.num_style_params for b in self.res_blocks) + sum(
            b.num_style_params for b in self.up_blocks
        )
        mlp: list[nn.Module] = []
        width = style_dim
        for _ in range(mlp_layers - 1):
            mlp += [nn.Linear(width, mlp_hidden), get_act_layer(act) if act is not None else nn.Identity()]
            width = mlp_hidden
        mlp.append(nn.Linear(width, self.num_style_params))
        self.mlp = nn.Sequential(*mlp)

    def style_params(self, style: torch.Tensor) -> torch.Tensor:
        """The AdaIN parameters ``(B, num_style_params)`` predicted from ``style`` ``(B, style_dim)``, ordered by
        layer (residual blocks first), each layer's means before its stds."""
        if style.ndim != 2 or style.shape[1] != self.style_dim:
            raise ValueError(
                f"ReconstructionDecoder expects style of shape (B, {self.style_dim}), got {list(style.shape)}."
            )
        return self.mlp(style)

    def forward(self, structure: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if structure.ndim != self.spatial_dims + 2 or structure.shape[1] != self.in_channels:
            raise ValueError(
                f"ReconstructionDecoder expects structure of shape (B, {self.in_channels}, *S) with "
                f"{self.spatial_dims} spatial dims, got {list(structure.shape)}."
            )
        params = self.style_params(style)
        if params.shape[0] != structure.shape[0]:
            raise ValueError(
                f"ReconstructionDecoder expects structure and style with the same batch size, "
                f"got {structure.shape[0]} and {style.shape[0]}."
            )
        x = structure
        offset = 0
        for blk in self.res_blocks:
            n = blk.num_style_params
            x = blk(x, params[:, offset : offset + n])
            offset += n
        for blk in self.up_blocks:
            n = blk.num_style_params
            x = blk(x, params[:, offset : offset + n])
            offset += n
        return self.final(x)


class SegmentationDecoder(nn.Module):
    """
    Shared segmentation decoder of MSG-LDM, U-Net-like: starts from the fused top level and, for levels
    ``L-2, ..., 0``, upsamples by that level's successor stride (MONAI ``UpSample``, transposed convolution by
    default) to ``channels[l]``, concatenates the fused skip of level ``l`` and applies two conv blocks
    (conv + ``norm`` + ``act``). When ``strides[0] > 1`` a last upsampling brings the map back to the input-image
    grid. A final 1x1 convolution gives ``out_channels`` logits (no activation; apply sigmoid/softmax in the loss).
    Forcing the fused structure features to predict the tumour labels makes them modality-invariant.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: channels of the fused levels, finest first (as the structure encoder). Defaults to
            ``(32, 64, 128, 256)``.
        out_channels: number of output logit channels. Defaults to 4 (authors: BG, NCR, ED, ET).
        strides: the structure encoder's per-level strides, same length as ``channels``. Defaults to
            ``(1, 2, 2, 2)``.
        norm: normalisation of the conv blocks. Defaults to ``"instance"``.
        act: activation of the conv blocks. Defaults to ``("leakyrelu", {"negative_slope": 0.01})``.
        upsample_mode: MONAI ``UpSample`` mode (``"deconv"``, ``"nontrainable"``, ``"pixelshuffle"``).
            Defaults to ``"deconv"``.

    Inputs:
        ``fused``: list of ``L`` maps, finest first, level ``l`` of shape
        ``(B, channels[l], *(S / prod(strides[:l+1])))``.

    Returns:
        ``(B, out_channels, *(S_0 * strides[0]))`` logits, ``S_0`` the finest level's grid (the input grid ``S``).

    Example::

        >>> dec = SegmentationDecoder(spatial_dims=2, channels=(8, 16), out_channels=4, strides=(1, 2))
        >>> dec([torch.randn(2, 8, 32, 32), torch.randn(2, 16, 16, 16)]).shape
        torch.Size([2, 4, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        out_channels: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        norm: tuple | str | None = "instance",
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.01}),
        upsample_mode: str = "deconv",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"SegmentationDecoder expects spatial_dims in (2, 3), got {spatial_dims}.")
        channels, strides = tuple(channels), tuple(strides)
        if len(channels) < 1 or any(int(c) != c or c < 1 for c in channels):
            raise ValueError(
                f"SegmentationDecoder expects channels to be a non-empty sequence of positive ints, got {channels}."
            )
        if len(strides) != len(channels):
            raise ValueError(
                f"SegmentationDecoder expects strides with one entry per level (len(channels)={len(channels)}), "
                f"got {strides}."
            )
        if any(int(s) != s or s < 1 for s in strides):
            raise ValueError(f"SegmentationDecoder expects strides to be positive ints, got {strides}.")
        if out_channels < 1:
            raise ValueError(f"SegmentationDecoder expects out_channels >= 1, got {out_channels}.")

        self.spatial_dims = spatial_dims
        self.channels = channels
        self.strides = strides
        self.out_channels = out_channels

        ups, blocks = [], []
        for level in range(len(channels) - 2, -1, -1):
            c_low, c = channels[level + 1], channels[level]
            ups.append(UpSample(spatial_dims, c_low, c, scale_factor=strides[level + 1], mode=upsample_mode))
            blocks.append(
                nn.Sequential(
                    Convolution(spatial_dims, 2 * c, c, kernel_size=3, norm=norm, act=act),
                    Convolution(spatial_dims, c, c, kernel_size=3, norm=norm, act=act),
                )
            )
        self.ups = nn.ModuleList(ups)
        self.blocks = nn.ModuleList(blocks)
        self.final_up: nn.Module = (
            UpSample(spatial_dims, channels[0], channels[0], scale_factor=strides[0], mode=upsample_mode)
            if strides[0] > 1
            else nn.Identity()
        )
        self.out = Convolution(spatial_dims, channels[0], out_channels, kernel_size=1, conv_only=True)

    def forward(self, fused: list[torch.Tensor]) -> torch.Tensor:
        num_levels = len(self.channels)
        if len(fused) != num_levels:
            raise ValueError(f"SegmentationDecoder expects fused with {num_levels} levels, got {len(fused)}.")
        for level, f in enumerate(fused):
            if f.ndim != self.spatial_dims + 2 or f.shape[1] != self.channels[level]:
                raise ValueError(
                    f"SegmentationDecoder expects fused[{level}] of shape (B, {self.channels[level]}, *S) with "
                    f"{self.spatial_dims} spatial dims, got {list(f.shape)}."
                )
        x = fused[-1]
        for i, (up, block) in enumerate(zip(self.ups, self.blocks)):
            skip = fused[num_levels - 2 - i]
            x = up(x)
            if x.shape[2:] != skip.shape[2:]:
                raise ValueError(
                    f"SegmentationDecoder expects fused[{num_levels - 2 - i}] spatial shape {list(x.shape[2:])} "
                    f"(the upsampled level {num_levels - 1 - i}), got {list(skip.shape[2:])}."
                )
            x = block(torch.cat([x, skip], dim=1))
        return self.out(self.final_up(x))
