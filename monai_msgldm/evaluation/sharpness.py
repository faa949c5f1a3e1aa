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
"""Is the synthesis as sharp as the truth? A blurred synthesis (e.g. close to the posterior mean) can score the same
PSNR as a sharp one; its gradients are weaker.

For each missing contrast of a case, inside the brain (:func:`~monai_msgldm.evaluation.brain_mask_from_available`):

- ``sharpness``: the mean in-plane gradient magnitude of the synthesis divided by that of the truth. Gradients are
  taken per 2D axial slice (the last axis of an ``(H, W, D)`` volume; an ``(H, W)`` image is one slice) with central
  finite differences along H and W (one-sided at the slice border, as ``torch.gradient``), their magnitude
  ``sqrt(d_H^2 + d_W^2)`` averaged over the brain voxels. 1: as sharp as the truth; < 1: blurred; > 1: sharper or
  noisier. NaN when the brain is empty or the truth has no gradient there.

:class:`SynthesisSharpnessMetric` runs it on a batch (a default metric of the evaluator, ``"sharpness"``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .metrics import _MissingContrastMetric

__all__ = ["SHARPNESS_NAMES", "SynthesisSharpnessMetric", "sharpness_ratio"]

#: Columns of :class:`SynthesisSharpnessMetric`, in output order.
SHARPNESS_NAMES: tuple[str, ...] = ("sharpness",)


def _slice_gradient_magnitude(image: torch.Tensor) -> torch.Tensor:
    """``sqrt(d_H^2 + d_W^2)`` of ``(H, W, *rest)`` float64 ``image``: finite differences along the first two axes only,
    so each slice of the last axis has its own gradient."""
    grad_h, grad_w = torch.gradient(image, dim=(0, 1))
    return torch.sqrt(grad_h * grad_h + grad_w * grad_w)


def sharpness_ratio(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean in-plane gradient magnitude of ``pred`` over that of ``truth``, inside ``mask``.

    Both gradients are taken per axial slice (the last axis of a volume) with ``torch.gradient`` along H and W
    (central differences, one-sided at the slice border, unit spacing), in float64; their magnitudes are averaged
    over the voxels of ``mask``. ``pred = a * truth + b`` gives ``|a|``.

    Args:
        pred: ``(H, W)`` or ``(H, W, D)`` synthesis, ``H, W >= 2``.
        truth: the real contrast, of ``pred``'s shape.
        mask: bool region (the brain) of ``pred``'s shape, or None: every voxel.

    Returns:
        the ratio: 1 as sharp as the truth, < 1 blurred, > 1 sharper or noisier; NaN when ``mask`` is empty or the
        truth's mean gradient magnitude inside it is 0.

    Raises:
        ValueError: naming the argument whose shape is wrong.

    Example::

        >>> truth = torch.arange(16.0).reshape(4, 4)
        >>> sharpness_ratio(0.5 * truth + 3.0, truth)
        0.5
    """
    pred, truth = torch.as_tensor(pred), torch.as_tensor(truth)
    if pred.ndim not in (2, 3) or min(pred.shape[:2]) < 2:
        raise ValueError(
            f"sharpness_ratio expects pred of shape (H, W) or (H, W, D) with H, W >= 2, got {tuple(pred.shape)}."
        )
    if truth.shape != pred.shape:
        raise ValueError(
            f"sharpness_ratio expects truth of pred's shape {tuple(pred.shape)}, got {tuple(truth.shape)}."
        )
    if mask is None:
        mask = torch.ones(pred.shape, dtype=torch.bool, device=pred.device)
    else:
        mask = torch.as_tensor(mask, dtype=torch.bool, device=pred.device)
        if mask.shape != pred.shape:
            raise ValueError(
                f"sharpness_ratio expects mask of pred's shape {tuple(pred.shape)}, got {tuple(mask.shape)}."
            )
    if not bool(mask.any()):
        return math.nan
    reference = float(_slice_gradient_magnitude(truth.double().to(pred.device))[mask].mean())
    if reference == 0.0:
        return math.nan
    return float(_slice_gradient_magnitude(pred.double())[mask].mean()) / reference


class SynthesisSharpnessMetric(_MissingContrastMetric):
    """Sharpness on a batch: :func:`sharpness_ratio` of each missing contrast inside the brain.

    Inputs ``y_pred``, ``y`` ``(B, M, H, W, D)`` (or 2D slices ``(B, M, H, W)``) and the keyword ``available``
    ``(B, M)`` bool (handed from the batch by :class:`~monai_msgldm.evaluation.ExtraInputMetricHandler`). Per item and
    contrast: ``(sharpness,)``, NaN for the available contrasts; :meth:`aggregate`: the mean of the finite values.

    Example::

        metric = SynthesisSharpnessMetric()
        metric(pred, truth, available=torch.tensor([[True, True, True, False]]))  # (1, 4, 1): flair's
        metric.aggregate()  # mean sharpness ratio (1: as sharp as the truth)
    """

    value_names = SHARPNESS_NAMES
    aggregate_name = "sharpness"

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, available: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        if y_pred.ndim not in (4, 5):
            raise ValueError(
                f"{type(self).__name__} expects y_pred (B, M, H, W, D) or (B, M, H, W), got {tuple(y_pred.shape)}."
            )
        return super()._compute_tensor(y_pred, y, available, **kwargs)

    def _score(self, pred, truth, brain, index, **kwargs):
        return [sharpness_ratio(pred, truth, brain)]
