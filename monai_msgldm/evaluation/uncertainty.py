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
"""Is the uncertainty map worth anything? Agreement of the per-voxel standard deviation of N synthesis samples with
the error of their mean.

For each missing contrast of a case, inside the brain (:func:`~monai_msgldm.evaluation.brain_mask_from_available`),
with ``error = |pred - truth|`` (``pred`` the mean synthesis, ``std`` the per-voxel standard deviation of the samples):

- ``uncertainty_spearman``: Spearman's rank correlation between ``std`` and ``error`` (Pearson correlation of their
  ranks, ties given their average rank, as ``scipy.stats.spearmanr``); NaN when either is constant (e.g. ``N = 1``:
  ``std`` is 0 everywhere);
- ``error_top10``: mean error over the 10 % of voxels with the largest ``std``; ``error_rest``: over the other 90 %;
  ``error_ratio``: ``error_top10 / error_rest`` (> 1: the uncertain voxels are the wrong ones). Voxels tied at the
  cut share the remaining places equally (each contributes its group's mean error), so the split does not depend
  on the voxel order: a constant ``std`` gives ``error_top10 == error_rest`` (ratio 1).

:class:`SynthesisUncertaintyMetric` runs them on a batch, with the ``std`` map as a keyword input (handed from the
evaluator output by :class:`~monai_msgldm.evaluation.ExtraInputMetricHandler`'s ``output_keys``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .metrics import _MissingContrastMetric

__all__ = [
    "UNCERTAINTY_NAMES",
    "SynthesisUncertaintyMetric",
    "average_ranks",
    "spearman_correlation",
    "uncertainty_error_split",
    "uncertainty_scores",
]

#: Columns of :class:`SynthesisUncertaintyMetric`, in output order.
UNCERTAINTY_NAMES: tuple[str, ...] = ("uncertainty_spearman", "error_top10", "error_rest", "error_ratio")


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of the values (flattened), ties given the mean of the ranks they span
    (``scipy.stats.rankdata(method="average")``).

    Args:
        values: any-shape tensor of finite values.

    Returns:
        float64 tensor of ``values.numel()`` ranks, in the flattened order of ``values``.

    Example::

        >>> average_ranks(torch.tensor([10.0, 30.0, 20.0, 20.0]))
        tensor([1.0000, 4.0000, 2.5000, 2.5000], dtype=torch.float64)
    """
    x = torch.as_tensor(values).reshape(-1)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("average_ranks expects finite values, got NaN or inf.")
    ordered, order = torch.sort(x, stable=True)
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, dim=0).double()  # 1-based rank of the last member of each tie group
    mean_rank = last - (counts.double() - 1.0) / 2.0
    ranks = torch.empty(x.numel(), dtype=torch.float64, device=x.device)
    ranks[order] = mean_rank[group]
    return ranks


def spearman_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two samples: the Pearson correlation of their :func:`average_ranks`.

    Args:
        x: any-shape tensor.
        y: tensor with as many values as ``x`` (paired in flattened order).

    Returns:
        the correlation in [-1, 1]; NaN when there are fewer than 2 values or either sample is constant.

    Example::

        >>> spearman_correlation(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 4.0, 9.0, 16.0]))
        1.0
    """
    x, y = torch.as_tensor(x).reshape(-1), torch.as_tensor(y).reshape(-1)
    if x.numel() != y.numel():
        raise ValueError(f"spearman_correlation expects two samples of one size, got {x.numel()} and {y.numel()}.")
    if x.numel() < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if denominator == 0.0:
        return math.nan
    return max(-1.0, min(1.0, float((dx * dy).sum()) / denominator))


def uncertainty_error_split(std: torch.Tensor, error: torch.Tensor, fraction: float = 0.1) -> tuple[float, float]:
    """Mean ``error`` over the ``fraction`` of voxels with the largest ``std``, and over the others.

    The top group has ``k = ceil(fraction * n)`` places (at least 1, at most ``n - 1``). Voxels whose ``std`` equals
    the k-th largest value share the places left after the voxels above it: each tied voxel counts with the weight
    ``places left / number tied``, i.e. the tied group adds its mean error times the places left. So the split does not
    depend on the order of tied voxels (a constant ``std`` gives two equal means).

    Args:
        std: any-shape tensor of finite values.
        error: tensor with as many values as ``std``.
        fraction: the share of the top group, in (0, 1).

    Returns:
        ``(mean error of the top group, mean error of the rest)``; NaN, NaN with fewer than 2 voxels.

    Example::

        >>> uncertainty_error_split(torch.arange(10.0), torch.arange(10.0), fraction=0.2)
        (8.5, 3.5)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"uncertainty_error_split expects fraction in (0, 1), got {fraction}.")
    s, e = torch.as_tensor(std).reshape(-1).double(), torch.as_tensor(error).reshape(-1).double()
    if s.numel() != e.numel():
        raise ValueError(f"uncertainty_error_split expects std and error of one size, got {s.numel()} and {e.numel()}.")
    n = s.numel()
    if n < 2:
        return math.nan, math.nan
    if not bool(torch.isfinite(s).all()):
        raise ValueError("uncertainty_error_split expects a finite std, got NaN or inf.")
    k = min(max(math.ceil(fraction * n), 1), n - 1)
    cut = torch.topk(s, k).values[-1]  # the k-th largest std
    above, tied = s > cut, s == cut
    left = k - int(above.sum())
    top_sum = e[above].sum() + left * e[tied].mean()
    rest_sum = e.sum() - top_sum
    return float(top_sum) / k, float(rest_sum) / (n - k)


def uncertainty_scores(
    pred: torch.Tensor,
    truth: torch.Tensor,
    std: torch.Tensor,
    mask: torch.Tensor | None = None,
    fraction: float = 0.1,
) -> dict[str, float]:
    """The :data:`UNCERTAINTY_NAMES` of one synthesized contrast: Spearman between ``std`` and ``|pred - truth|`` and
    the mean errors in the most uncertain ``fraction`` of voxels and in the rest, inside ``mask``.

    Args:
        pred: ``(*S)`` mean synthesis.
        truth: ``(*S)`` real contrast.
        std: ``(*S)`` per-voxel standard deviation of the samples.
        mask: ``(*S)`` bool region (the brain), or None: every voxel.
        fraction: share of the most uncertain voxels.

    Returns:
        ``{"uncertainty_spearman", "error_top10", "error_rest", "error_ratio"}`` (NaN values when the region has
        fewer than 2 voxels; ``error_ratio`` is NaN when both errors are 0 and ``inf`` when only the rest is 0).

    Example::

        >>> truth = torch.zeros(100); pred = torch.linspace(0, 1, 100)
        >>> uncertainty_scores(pred, truth, std=pred.clone())["uncertainty_spearman"]
        1.0
    """
    pred, truth, std = torch.as_tensor(pred), torch.as_tensor(truth), torch.as_tensor(std)
    if not pred.shape == truth.shape == std.shape:
        raise ValueError(
            f"uncertainty_scores expects pred, truth and std of one shape, got {tuple(pred.shape)}, "
            f"{tuple(truth.shape)} and {tuple(std.shape)}."
        )
    error = (pred.double() - truth.double()).abs()
    std = std.double()
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool, device=error.device)
        if mask.shape != error.shape:
            raise ValueError(f"uncertainty_scores expects mask of shape {tuple(error.shape)}, got {tuple(mask.shape)}.")
        error, std = error[mask], std[mask]
    top, rest = uncertainty_error_split(std, error, fraction)
    if math.isnan(top) or (top == 0.0 and rest == 0.0):
        ratio = math.nan
    else:
        ratio = top / rest if rest > 0.0 else math.inf
    return {
        "uncertainty_spearman": spearman_correlation(std, error),
        "error_top10": top,
        "error_rest": rest,
        "error_ratio": ratio,
    }


class SynthesisUncertaintyMetric(_MissingContrastMetric):
    """Uncertainty quality on a batch: :func:`uncertainty_scores` of each missing contrast inside the brain.

    Inputs ``y_pred``, ``y`` ``(B, M, *S)`` (mean synthesis and truth) and the keywords ``available`` ``(B, M)`` bool
    and ``std`` ``(B, M, *S)`` the per-voxel standard deviation of the samples (in the bundle it is the evaluator
    output under ``std_key``, default ``"pred_std"``: ``ExtraInputMetricHandler(..., output_keys={"std": std_key})``).
    Per item and contrast: :data:`UNCERTAINTY_NAMES`, NaN for the available contrasts; :meth:`aggregate`: the mean of
    the finite ``uncertainty_spearman`` values.

    Args:
        fraction: share of the most uncertain voxels (the ``error_top10`` group; the column keeps its name).

    Example::

        metric = SynthesisUncertaintyMetric()
        metric(pred, truth, available=torch.tensor([[True, True, True, False]]), std=std)  # (1, 4, 4): flair's
        metric.aggregate()  # mean Spearman correlation
    """

    value_names = UNCERTAINTY_NAMES
    aggregate_name = "uncertainty_spearman"

    def __init__(self, fraction: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"SynthesisUncertaintyMetric expects fraction in (0, 1), got {fraction}.")
        self.fraction = float(fraction)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, available: Any = None, std: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        name = type(self).__name__
        if std is None:
            raise ValueError(
                f"{name} expects the per-voxel standard deviation 'std' of the samples (B, M, *spatial), got None: "
                "the evaluator must sample several times and output the std map (std_key)."
            )
        std = torch.as_tensor(std, device=y_pred.device)
        if y is not None and std.shape != y.shape:
            raise ValueError(f"{name} expects std of shape {tuple(y.shape)}, got {tuple(std.shape)}.")
        return super()._compute_tensor(y_pred, y, available, std=std, **kwargs)

    def _score(self, pred, truth, brain, index, std=None, channel: int = 0, **kwargs):
        scores = uncertainty_scores(pred, truth, std[index, channel], brain, self.fraction)
        return [scores[n] for n in self.value_names]
