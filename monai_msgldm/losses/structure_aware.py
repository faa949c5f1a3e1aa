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
"""Structure-aware loss of MSG-LDM: image-space L1 plus the frequency SSIM loss."""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .frequency_ssim import FrequencySSIMLoss

__all__ = ["StructureAwareLoss"]


class StructureAwareLoss(_Loss):
    """
    Structure-aware loss of MSG-LDM, ``L_sa = l1_weight * L1(input, target) + frequency_weight * L_freq``, where
    ``L_freq`` is :py:class:`FrequencySSIMLoss` (1 - SSIM of the DCT amplitude spectra).

    Both terms are first computed per sample (the L1 term is the mean absolute error over channels and space, the
    frequency term as in :py:class:`FrequencySSIMLoss`), then reduced over the batch. Hence ``"mean"`` equals
    ``l1_weight * mean(|input - target|) + frequency_weight * FrequencySSIMLoss(...)`` exactly, and ``"sum"`` is the
    sum over the batch of the per-sample losses.

    Args:
        spatial_dims: number of spatial dimensions of the images, 2 or 3.
        l1_weight: weight of the image-space L1 term, >= 0.
        frequency_weight: weight of the frequency SSIM term, >= 0 (at least one weight must be positive).
        reduction: {``"none"``, ``"mean"``, ``"sum"``}: ``"none"`` returns one value per sample, shape (B, 1);
            ``"mean"`` averages and ``"sum"`` sums these over the batch.
        frequency_kwargs: further arguments of :py:class:`FrequencySSIMLoss` (``data_range``, ``kernel_type``,
            ``win_size``, ``kernel_sigma``, ``k1``, ``k2``).

    Example:
        .. code-block:: python

            loss_fn = StructureAwareLoss(spatial_dims=2, l1_weight=1.0, frequency_weight=1.0, win_size=11)
            pred = torch.rand(2, 1, 24, 24, requires_grad=True)
            loss = loss_fn(pred, torch.rand(2, 1, 24, 24))
            loss.backward()
    """

    def __init__(
        self,
        spatial_dims: int,
        l1_weight: float = 1.0,
        frequency_weight: float = 1.0,
        reduction: LossReduction | str = LossReduction.MEAN,
        **frequency_kwargs: Any,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        name = type(self).__name__
        for key, value in (("l1_weight", l1_weight), ("frequency_weight", frequency_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} expects {key} to be a finite float >= 0, got {value!r}.")
        if l1_weight == 0 and frequency_weight == 0:
            raise ValueError(f"{name} expects l1_weight or frequency_weight to be positive, got both 0.")
        self.spatial_dims = spatial_dims
        self.l1_weight = float(l1_weight)
        self.frequency_weight = float(frequency_weight)
        self.frequency_loss = FrequencySSIMLoss(spatial_dims=spatial_dims, reduction="none", **frequency_kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: predicted images, shape (B, C, *spatial) with ``spatial_dims`` spatial axes.
            target: reference images, same shape as ``input``.

        Returns:
            the loss: a scalar for ``"mean"`` / ``"sum"``, shape (B, 1) for ``"none"``.

        Raises:
            ValueError: when the shapes differ or do not fit the frequency term (see :py:class:`FrequencySSIMLoss`).
        """
        if input.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__} expects input and target of the same shape, "
                f"got {tuple(input.shape)} and {tuple(target.shape)}."
            )
        # the frequency term validates dimensions and window size; it runs even at weight 0 so that both weights
        # accept exactly the same inputs
        frequency = self.frequency_loss(input, target)  # (B, 1)
        l1 = (input - target).abs().flatten(1).mean(dim=1, keepdim=True)  # (B, 1)
        loss: torch.Tensor = self.l1_weight * l1 + self.frequency_weight * frequency.to(l1.dtype)

        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss
