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
"""Stage-1 network of MSG-LDM: disentangled multiscale structure and per-modality style, with fusion of the
available modalities, multiscale enhancement, per-modality reconstruction and a shared segmentation head."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_msgldm.networks.blocks import MultimodalStructureFusion, MultiscaleStructureEnhancement
from monai_msgldm.networks.nets.decoders import ReconstructionDecoder, SegmentationDecoder
from monai_msgldm.networks.nets.structure_encoder import StructureEncoder
from monai_msgldm.networks.nets.style_encoder import StyleEncoder
from monai_msgldm.utils.availability import check_availability_shape

__all__ = ["StructureStyleNet"]


class _TopLevel(nn.Module):
    """Stand-in for the MSSE in the "without MSSE" ablation: ``F_s`` is the fused top level as is."""

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return features[-1]


class StructureStyleNet(nn.Module):
    """
    The structure/style network of MSG-LDM (stage 1), which learns the structure guidance ``F_s`` of the latent
    diffusion model.

    For ``M`` modalities it holds, per modality, a :py:class:`StructureEncoder`, a :py:class:`StyleEncoder` and a
    :py:class:`ReconstructionDecoder` (``nn.ModuleList`` in modality order, e.g.
    :py:data:`monai_msgldm.constants.MODALITIES`); per level a
    :py:class:`~monai_msgldm.networks.blocks.MultimodalStructureFusion` (MMSF); one
    :py:class:`~monai_msgldm.networks.blocks.MultiscaleStructureEnhancement` (MSSE, or "take the fused top level"
    when ``use_msse=False``); and one shared :py:class:`SegmentationDecoder`.

    Data flow for ``images`` ``(B, M * in_channels, *S)`` and ``available`` ``(B, M)``:

    1. every modality is encoded by its structure encoder into ``L`` levels; the features of absent modalities
       are replaced by exact zeros (``torch.where``), so the outputs below do not depend on the images of
       absent modalities; in eval mode or without gradients, a modality absent from every sample of the batch is
       not encoded at all (in gradient-enabled training all encoders run, so every parameter gets a gradient);
    2. per level, the MMSF fuses the ``M`` (masked) feature maps into ``fused[l]``;
    3. the MSSE enriches the top level with the finer ones: ``F_s`` ``(B, structure_channels[-1], *S_top)``;
    4. style codes ``(B, M, style_dim)`` are computed from the given images of **all** modalities. In training
       every modality's ground truth is given (only the structure branch sees the availability mask); at
       inference absent modalities are typically zero images and their style codes are meaningless and unused;
    5. decoder ``m`` renders ``F_s`` with style code ``m`` into modality ``m`` (``tanh``, in ``(-1, 1)``);
    6. the shared segmentation decoder predicts logits from the fused levels (top level ``fused[-1]`` and skips),
       which drives the structure features to be modality-invariant.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3. Defaults to 2.
        num_modalities: number of modalities ``M``. Defaults to 4.
        in_channels: image channels of one modality. Defaults to 1.
        structure_channels: structure encoder channels per level, finest first. Defaults to ``(32, 64, 128, 256)``.
        strides: structure encoder strides per level. ``prod(strides)`` must be a power of 2 (the reconstruction
            decoders upsample x2 ``log2(prod(strides))`` times). Defaults to ``(1, 2, 2, 2)``.
        style_channels: style encoder channels. Defaults to ``(32, 64, 128, 128, 128)``.
        style_dim: style code length. Defaults to 8.
        seg_out_channels: segmentation logit channels. Defaults to 4.
        hfib_mode: HFIB injection, ``"add"`` (paper) or ``"concat"`` (authors' code). Defaults to ``"add"``.
        use_hfib: use the HFIBs ("without HFIB" ablation when False). Defaults to True.
        fusion_combine: MMSF combination, ``"sum"`` (paper) or ``"concat"`` (authors' code). Defaults to ``"sum"``.
        use_fusion_gates: learned MMSF gates; False averages the available modalities. Defaults to True.
        use_msse: use the MSSE ("without MSSE" ablation when False). Defaults to True.
        msse_heads: MSSE attention heads (``structure_channels[-1]`` must be divisible by it). Defaults to 4.
        msse_alpha: (initial) MSSE residual weight. Defaults to 0.5.
        learnable_msse_alpha: learn the MSSE weight (authors: fixed 0.5). Defaults to True.
        num_upsamples: x2 upsamplings of the reconstruction decoders; ``None`` derives ``log2(prod(strides))``,
            a given value must equal it. Defaults to None.
        num_res_blocks: AdaIN residual blocks per reconstruction decoder. Defaults to 2.
        mlp_hidden: hidden width of the decoders' style MLP. Defaults to 256.
        norm: normalisation of the structure encoder and segmentation decoder. Defaults to ``"instance"``.
        act: activation of the structure encoder and segmentation decoder. Defaults to LeakyReLU(0.01).
        style_act: activation of the style encoders. Defaults to ``"relu"``.
        decoder_act: activation of the reconstruction decoders. Defaults to ``"relu"``.

    Example::

        >>> net = StructureStyleNet(
        ...     spatial_dims=2, structure_channels=(8, 16), strides=(1, 2), style_channels=(4, 8, 8), mlp_hidden=16
        ... )
        >>> images = torch.randn(2, 4, 32, 32)
        >>> available = torch.tensor([[True, True, True, False], [True, False, False, False]])
        >>> out = net(images, available)
        >>> out["structure"].shape, out["reconstruction"].shape, out["style"].shape
        (torch.Size([2, 16, 16, 16]), torch.Size([2, 4, 32, 32]), torch.Size([2, 4, 8]))
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_modalities: int = 4,
        in_channels: int = 1,
        structure_channels: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (1, 2, 2, 2),
        style_channels: Sequence[int] = (32, 64, 128, 128, 128),
        style_dim: int = 8,
        seg_out_channels: int = 4,
        hfib_mode: str = "add",
        use_hfib: bool = True,
        fusion_combine: str = "sum",
        use_fusion_gates: bool = True,
        use_msse: bool = True,
        msse_heads: int = 4,
        msse_alpha: float = 0.5,
        learnable_msse_alpha: bool = True,
        num_upsamples: int | None = None,
        num_res_blocks: int = 2,
        mlp_hidden: int = 256,
        norm: tuple | str | None = "instance",
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.01}),
        style_act: tuple | str | None = "relu",
        decoder_act: tuple | str | None = "relu",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"StructureStyleNet expects spatial_dims in (2, 3), got {spatial_dims}.")
        if int(num_modalities) != num_modalities or num_modalities < 1:
            raise ValueError(f"StructureStyleNet expects num_modalities to be an int >= 1, got {num_modalities}.")
        if int(in_channels) != in_channels or in_channels < 1:
            raise ValueError(f"StructureStyleNet expects in_channels to be an int >= 1, got {in_channels}.")
        structure_channels, strides = tuple(structure_channels), tuple(strides)
        if len(structure_channels) < 1 or any(int(c) != c or c < 1 for c in structure_channels):
            raise ValueError(
                "StructureStyleNet expects structure_channels to be a non-empty sequence of positive ints, "
                f"got {structure_channels}."
            )
        if len(strides) != len(structure_channels) or any(int(s) != s or s < 1 for s in strides):
            raise ValueError(
                f"StructureStyleNet expects strides to be {len(structure_channels)} positive ints (one per entry of "
                f"structure_channels), got {strides}."
            )
        total_stride = math.prod(strides)
        derived = int(round(math.log2(total_stride)))
        if 2**derived != total_stride:
            raise ValueError(
                f"StructureStyleNet expects prod(strides) to be a power of 2 (the reconstruction decoders upsample "
                f"x2), got strides={strides} with product {total_stride}."
            )
        if num_upsamples is None:
            num_upsamples = derived
        elif num_upsamples != derived:
            raise ValueError(
                f"StructureStyleNet expects num_upsamples = log2(prod(strides)) = {derived} so that reconstructions "
                f"have the input size, got {num_upsamples}."
            )
        if structure_channels[-1] % (2**num_upsamples) != 0:
            raise ValueError(
                f"StructureStyleNet expects structure_channels[-1] divisible by 2 ** num_upsamples = "
                f"{2**num_upsamples} (the reconstruction decoders halve the channels at every upsampling), "
                f"got {structure_channels[-1]}."
            )
        if use_msse and len(structure_channels) < 2:
            raise ValueError(
                f"StructureStyleNet expects at least 2 levels in structure_channels when use_msse=True, "
                f"got {structure_channels}."
            )

        self.spatial_dims = spatial_dims
        self.num_modalities = num_modalities
        self.in_channels = in_channels
        self.structure_channels = structure_channels
        self.strides = strides
        self.total_stride = total_stride
        self.style_dim = style_dim
        self.num_upsamples = num_upsamples

        self.structure_encoders = nn.ModuleList(
            [
                StructureEncoder(
                    spatial_dims,
                    in_channels=in_channels,
                    channels=structure_channels,
                    strides=strides,
                    hfib_mode=hfib_mode,
                    use_hfib=use_hfib,
                    norm=norm,
                    act=act,
                )
                for _ in range(num_modalities)
            ]
        )
        self.style_encoders = nn.ModuleList(
            [
                StyleEncoder(
                    spatial_dims, in_channels=in_channels, channels=style_channels, style_dim=style_dim, act=style_act
                )
                for _ in range(num_modalities)
            ]
        )
        self.fusions = nn.ModuleList(
            [
                MultimodalStructureFusion(
                    spatial_dims, c, num_modalities, combine=fusion_combine, gated=use_fusion_gates, act=act
                )
                for c in structure_channels
            ]
        )
        self.enhance: nn.Module = (
            MultiscaleStructureEnhancement(
                spatial_dims,
                structure_channels,
                num_heads=msse_heads,
                alpha=msse_alpha,
                learnable_alpha=learnable_msse_alpha,
            )
            if use_msse
            else _TopLevel()
        )
        self.reconstruction_decoders = nn.ModuleList(
            [
                ReconstructionDecoder(
                    spatial_dims,
                    in_channels=structure_channels[-1],
                    style_dim=style_dim,
                    out_channels=in_channels,
                    num_upsamples=num_upsamples,
                    num_res_blocks=num_res_blocks,
                    mlp_hidden=mlp_hidden,
                    act=decoder_act,
                )
                for _ in range(num_modalities)
            ]
        )
        self.segmentation_decoder = SegmentationDecoder(
            spatial_dims,
            channels=structure_channels,
            out_channels=seg_out_channels,
            strides=strides,
            norm=norm,
            act=act,
        )

    def _check_images(self, images: torch.Tensor) -> None:
        c = self.num_modalities * self.in_channels
        if images.ndim != self.spatial_dims + 2 or images.shape[1] != c:
            raise ValueError(
                f"StructureStyleNet expects images of shape (B, {c}, *S) (num_modalities * in_channels channels, "
                f"{self.spatial_dims} spatial dims), got {list(images.shape)}."
            )
        spatial = list(images.shape[2:])
        if any(s % self.total_stride != 0 for s in spatial):
            raise ValueError(
                f"StructureStyleNet expects images with spatial sizes divisible by prod(strides) = {self.total_stride}, "
                f"got {spatial}."
            )

    def _check_available(self, available: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        check_availability_shape(available, images.shape[0], self.num_modalities, "StructureStyleNet")
        return available

    def _modality(self, images: torch.Tensor, m: int) -> torch.Tensor:
        return images[:, m * self.in_channels : (m + 1) * self.in_channels]

    def encode_modalities(self, images: torch.Tensor) -> list[torch.Tensor]:
        """
        Every modality's structure encoder on its own image, nothing fused: the per-modality features that the MMSF
        fusions take, one tensor per level. Each modality's features depend on its image alone, so they can be
        computed once per image and reused with any availability mask (:py:meth:`encode_structure` with
        ``features``; the stage-2 cache, :py:class:`~monai_msgldm.engines.LatentCache` with
        ``structure_features=True``, does this).

        Args:
            images: ``(B, M * in_channels, *S)``.

        Returns:
            ``[(B, M, structure_channels[l], *S_l) for each level l]``, ``S_l`` the size after the strides up to
            level ``l``.
        """
        self._check_images(images)
        per_modality = [encoder(self._modality(images, m)) for m, encoder in enumerate(self.structure_encoders)]
        return [torch.stack(level, dim=1) for level in zip(*per_modality)]

    def _check_features(self, features: Sequence[torch.Tensor], images: torch.Tensor) -> list[torch.Tensor]:
        features = list(features)
        if len(features) != len(self.fusions):
            raise ValueError(
                f"StructureStyleNet expects features with one tensor per level ({len(self.fusions)}), got "
                f"{len(features)}."
            )
        b, size = images.shape[0], list(images.shape[2:])
        for level, (f, c) in enumerate(zip(features, self.structure_channels)):
            size = [math.ceil(n / self.strides[level]) for n in size]
            expected = [b, self.num_modalities, c, *size]
            if list(f.shape) != expected:
                raise ValueError(
                    f"StructureStyleNet expects features[{level}] of shape {expected} (encode_modalities of the "
                    f"same images), got {list(f.shape)}."
                )
        return features

    def _encode(
        self, images: torch.Tensor, available: torch.Tensor, features: Sequence[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        self._check_images(images)
        available = self._check_available(available, images)
        if features is not None:
            stacked = self._check_features(features, images)
        else:
            # outside gradient-enabled training, skip the encoders of modalities absent from the whole batch (their
            # features would be zeroed anyway); in training every encoder runs so that all parameters take part in
            # the graph (as distributed data parallel expects) and receive (zero) gradients
            skip_absent = not (self.training and torch.is_grad_enabled())
            present_anywhere = available.any(dim=0).tolist()
            per_modality: list[list[torch.Tensor] | None] = [
                encoder(self._modality(images, m)) if present_anywhere[m] or not skip_absent else None
                for m, encoder in enumerate(self.structure_encoders)
            ]
            reference = next(f for f in per_modality if f is not None)
            stacked = [
                torch.stack([ref.new_zeros(ref.shape) if f is None else f[level] for f in per_modality], dim=1)
                for level, ref in enumerate(reference)
            ]
        # each MultimodalStructureFusion zeroes the absent modalities' features itself (once, at full resolution)
        fused = [fusion(feats, available) for feats, fusion in zip(stacked, self.fusions)]
        return fused, self.enhance(fused)

    def encode_structure(
        self, images: torch.Tensor, available: torch.Tensor, features: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """
        Structure branch only (structure encoders, MMSF, MSSE; no style encoders, no decoders): the guidance
        ``F_s`` of the diffusion model.

        Args:
            images: ``(B, M * in_channels, *S)``, absent modalities' content is ignored.
            available: ``(B, M)`` bool availability mask, at least one True per row (validated where it enters
                the model; only its shape and dtype are checked here).
            features: :py:meth:`encode_modalities` of ``images`` when the caller has them (the structure encoders
                are then not run; absent modalities' features are zeroed as usual); ``None``: computed here.

        Returns:
            ``F_s`` of shape ``(B, structure_channels[-1], *(S / prod(strides)))``.
        """
        return self._encode(images, available, features)[1]

    def encode_style(self, images: torch.Tensor) -> torch.Tensor:
        """
        Style codes of every modality from its image.

        Args:
            images: ``(B, M * in_channels, *S)``.

        Returns:
            ``(B, M, style_dim)``.
        """
        self._check_images(images)
        return torch.stack([enc(self._modality(images, m)) for m, enc in enumerate(self.style_encoders)], dim=1)

    def reconstruct(self, structure: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """
        Render every modality from the structure map with its style code.

        Args:
            structure: ``F_s`` ``(B, structure_channels[-1], *S_top)``.
            style: ``(B, M, style_dim)``.

        Returns:
            ``(B, M * in_channels, *(S_top * prod(strides)))`` in ``(-1, 1)``.
        """
        if style.ndim != 3 or style.shape[1] != self.num_modalities or style.shape[2] != self.style_dim:
            raise ValueError(
                f"StructureStyleNet expects style of shape (B, {self.num_modalities}, {self.style_dim}), "
                f"got {list(style.shape)}."
            )
        return torch.cat([dec(structure, style[:, m]) for m, dec in enumerate(self.reconstruction_decoders)], dim=1)

    def forward(self, images: torch.Tensor, available: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """
        Args:
            images: ``(B, M * in_channels, *S)`` (``(B, M, *S)`` for single-channel modalities), every spatial size
                divisible by ``prod(strides)``.
            available: ``(B, M)`` bool availability mask, at least one True per row (validated where it enters
                the model; only its shape and dtype are checked here).

        Returns:
            a dict with ``"structure"``: ``F_s`` ``(B, structure_channels[-1], *S_top)``; ``"fused"``: the ``L``
            fused levels, finest first; ``"reconstruction"``: ``(B, M * in_channels, *S)``; ``"segmentation"``:
            ``(B, seg_out_channels, *S)`` logits; ``"style"``: ``(B, M, style_dim)``.
        """
        fused, structure = self._encode(images, available)
        style = self.encode_style(images)
        return {
            "structure": structure,
            "fused": fused,
            "reconstruction": self.reconstruct(structure, style),
            "segmentation": self.segmentation_decoder(fused),
            "style": style,
        }
