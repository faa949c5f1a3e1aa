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
"""The regression baseline: a UNet mapping the zero-filled available contrasts to all contrasts (MM-GAN without
the adversarial term)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet

from monai_msgldm.utils.availability import check_availability_shape

__all__ = ["RegressionSynthesisNet"]


class RegressionSynthesisNet(nn.Module):
    """Missing-contrast synthesis by direct regression: a MONAI ``BasicUNet`` maps the M contrasts, absent ones
    zero-filled, plus the availability mask to all M contrasts (the MM-GAN family of models without the GAN, trained
    with an L1 loss by :py:class:`~monai_msgldm.engines.RegressionSynthesisTrainer`).

    The UNet input is ``cat([images * a, a])`` ``(B, 2M, *S)``: the images with the channels of absent contrasts set
    to zero (so absent inputs cannot influence the output, whatever they hold) and the availability mask ``a``
    broadcast to ``(B, M, *S)`` (so that a zero image and an absent contrast can be told apart). The output
    ``(B, M, *S)`` predicts every contrast, with no final activation.

    :py:class:`monai_msgldm.inferers.RegressionSynthesisInferer` runs it wherever a sampling inferer is expected
    (``ModalitySynthesisInferer``, ``SynthesisEvaluator``, the bundle's inference and evaluation): one forward pass,
    the given contrasts kept as they are.

    Shapes:
        - ``images``: ``(B, M, *S)`` in [-1, 1], ``S`` of ``spatial_dims`` sizes, each divisible by
          :py:attr:`size_divisor` (16). With an instance norm (the default) the bottleneck must hold more than one
          voxel, i.e. ``S`` must not be all 16 (e.g. 32 x 32 or 16 x 32 are fine, 16 x 16 is not).
        - ``available``: ``(B, M)`` bool, at least one True per row (validated by the caller: the inferer or the
          trainer; only its shape and dtype are checked here).
        - output: ``(B, M, *S)``.

    Args:
        spatial_dims: 2 (slices) or 3.
        num_modalities: number of contrasts M (>= 2).
        features: the six ``BasicUNet`` feature sizes (four encoder levels, bottleneck, last decoder level).
        act: activation of the UNet blocks (``BasicUNet``'s ``act``).
        norm: normalization of the UNet blocks (``BasicUNet``'s ``norm``).
        bias: whether the convolutions have a bias.
        dropout: dropout rate of the UNet blocks.
        upsample: ``BasicUNet``'s upsampling mode (``"deconv"``, ``"pixelshuffle"`` or ``"nontrainable"``).

    Example::

        net = RegressionSynthesisNet(spatial_dims=2, num_modalities=4)
        images = torch.randn(2, 4, 192, 192)
        available = torch.tensor([[True, True, True, False], [False, True, True, True]])
        prediction = net(images, available)  # (2, 4, 192, 192), all contrasts
        output = RegressionSynthesisInferer().sample(images, net, available)  # given channels kept, missing predicted
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_modalities: int = 4,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"{name} expects spatial_dims 2 or 3, got {spatial_dims!r}.")
        if isinstance(num_modalities, bool) or not isinstance(num_modalities, int) or num_modalities < 2:
            raise ValueError(f"{name} expects num_modalities to be an int >= 2, got {num_modalities!r}.")
        feats = list(features) if isinstance(features, Sequence) and not isinstance(features, str) else None
        if (
            feats is None
            or len(feats) != 6
            or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in feats)
        ):
            raise ValueError(f"{name} expects features to be a sequence of 6 positive ints, got {features!r}.")
        self.spatial_dims = int(spatial_dims)
        self.num_modalities = int(num_modalities)
        self.net = BasicUNet(
            spatial_dims=self.spatial_dims,
            in_channels=2 * self.num_modalities,
            out_channels=self.num_modalities,
            features=tuple(feats),
            act=act,
            norm=norm,
            bias=bias,
            dropout=dropout,
            upsample=upsample,
        )

    @property
    def size_divisor(self) -> int:
        """Every spatial size of the images must be divisible by this: ``BasicUNet`` downsamples 4 times by 2."""
        return 16

    def _check_inputs(self, images: torch.Tensor, available: Any) -> torch.Tensor:
        name = type(self).__name__
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"{name} expects images to be a tensor, got {type(images).__name__}.")
        if images.ndim != self.spatial_dims + 2 or images.shape[1] != self.num_modalities:
            raise ValueError(
                f"{name} expects images of shape (B, {self.num_modalities}, *{self.spatial_dims}D spatial), "
                f"got {tuple(images.shape)}."
            )
        check_availability_shape(available, images.shape[0], self.num_modalities, name)
        bad = [s for s in images.shape[2:] if s % self.size_divisor]
        if bad:
            raise ValueError(
                f"{name} expects images with spatial sizes divisible by {self.size_divisor} (size_divisor), "
                f"got {tuple(images.shape[2:])}."
            )
        return available

    def forward(self, images: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Predict all M contrasts from the available ones.

        Args:
            images: ``(B, M, *S)``; channels of absent contrasts are ignored (any value).
            available: ``(B, M)`` bool availability mask, at least one True per row.

        Returns:
            ``(B, M, *S)`` predictions of every contrast (no final activation).
        """
        available = self._check_inputs(images, available)
        mask = available.view(*available.shape, *([1] * self.spatial_dims)).expand_as(images)
        x = torch.cat([torch.where(mask, images, torch.zeros_like(images)), mask.to(images.dtype)], dim=1)
        return self.net(x)
