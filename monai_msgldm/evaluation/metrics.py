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
"""Synthesis quality of the missing contrasts: the functions and the MONAI metrics the evaluator runs.

Two protocols are computed for every (case, available subset, missing target):

- **paper** (2D): PSNR and SSIM on axial slices in [-1, 1]. The brain mask is every voxel where at least one
  AVAILABLE modality of the preprocessed image is > -1 (the background of the [-1, 1] scaling). Voxels outside the
  brain are set to -1 in both the prediction and the truth, the prediction is clipped to [-1, 1], and only slices
  holding at least ``min_brain_voxels`` brain voxels are scored: MONAI ``PSNRMetric(max_val=2)`` and
  ``SSIMMetric(spatial_dims=2, data_range=2)`` (Gaussian 11x11 window, sigma 1.5) per slice, then averaged over
  those slices. A slice predicted exactly has PSNR ``inf``.
- **BraSyn** (3D): prediction and truth volumes are each clipped to their own 0.5 and 99.5 intensity percentiles
  (over the whole volume) and rescaled to [0, 1]; a 3D SSIM map (MONAI ``compute_ssim_and_cs``, Gaussian 11^3
  window, sigma 1.5, data range 1, volumes edge-padded by 5 voxels so that the map has the volume's grid) is
  averaged over the brain (``ssim3d_brain``), the whole tumour (``ssim3d_tumour``, WT = labels 1+2+4) and the brain
  outside the tumour (``ssim3d_healthy``). Without a segmentation both tumour values are NaN; with a segmentation
  but no tumour, ``ssim3d_tumour`` is NaN and ``ssim3d_healthy`` equals ``ssim3d_brain``.

:class:`BrainSlicePSNRSSIMMetric` and :class:`RegionVolumeSSIMMetric` are MONAI ``CumulativeIterationMetric`` s
running them on a batch: per item and per contrast (NaN for the available contrasts), for
``monai.handlers.IgniteMetricHandler``-style handlers (:class:`~monai_msgldm.evaluation.ExtraInputMetricHandler`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric, PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs

__all__ = [
    "METRIC_NAMES",
    "BrainSlicePSNRSSIMMetric",
    "RegionVolumeSSIMMetric",
    "brain_mask_from_available",
    "finite_stats",
    "masked_slice_psnr_ssim",
    "percentile_rescale",
    "volume_ssim_by_region",
]

#: Metric columns of a result row, in output order.
METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "ssim3d_brain", "ssim3d_tumour", "ssim3d_healthy")


def finite_stats(values: torch.Tensor | Sequence[float | None]) -> dict[str, Any]:
    """Mean, (population) standard deviation and number of the finite values: NaN (not scored), ``inf`` (a slice
    predicted exactly) and ``None`` (absent) are left out; ``mean`` and ``std`` are None when none is left.

    Example::

        >>> finite_stats([1.0, 3.0, float("inf"), float("nan"), None])
        {'mean': 2.0, 'std': 1.0, 'n': 2}
    """
    flat = torch.as_tensor(values).reshape(-1).tolist() if isinstance(values, torch.Tensor) else list(values)
    kept = np.asarray([v for v in flat if v is not None and math.isfinite(v)], dtype=np.float64)
    if kept.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(kept.mean()), "std": float(kept.std()), "n": int(kept.size)}


def brain_mask_from_available(
    image: torch.Tensor, available: Sequence[bool] | torch.Tensor, background: float = -1.0
) -> torch.Tensor:
    """Brain mask of a preprocessed case: voxels where any AVAILABLE channel is above ``background``.

    Args:
        image: ``(M, *S)`` preprocessed image in [-1, 1].
        available: ``(M,)`` bools.
        background: the background value of the scaled image.

    Returns:
        ``(*S)`` bool tensor.

    Example::

        >>> brain_mask_from_available(torch.tensor([[-1.0, 0.2], [0.5, -1.0]]), [True, False])
        tensor([False,  True])
    """
    image = torch.as_tensor(image)
    mask = torch.as_tensor(available, dtype=torch.bool, device=image.device).reshape(-1)
    if image.ndim < 2 or mask.numel() != image.shape[0]:
        raise ValueError(
            f"brain_mask_from_available expects image (M, *S) and available (M,), got {tuple(image.shape)} and "
            f"{tuple(mask.shape)}."
        )
    if not bool(mask.any()):
        raise ValueError("brain_mask_from_available expects at least one available modality, got none.")
    return (image[mask] > background).any(dim=0)


def masked_slice_psnr_ssim(
    pred: torch.Tensor, target: torch.Tensor, brain_mask: torch.Tensor, min_brain_voxels: int = 1
) -> tuple[float, float, int]:
    """Paper protocol: mean PSNR and SSIM over the axial slices (last axis) that contain brain.

    ``pred`` is clipped to [-1, 1]; outside ``brain_mask`` both volumes are set to -1; slices with fewer than
    ``min_brain_voxels`` brain voxels are skipped. MONAI ``PSNRMetric(max_val=2)`` and
    ``SSIMMetric(spatial_dims=2, data_range=2)`` per slice, averaged.

    Args:
        pred: ``(H, W, D)`` synthesized volume in [-1, 1].
        target: ``(H, W, D)`` true volume in [-1, 1].
        brain_mask: ``(H, W, D)`` bool.
        min_brain_voxels: least number of brain voxels of a scored slice.

    Returns:
        ``(psnr, ssim, num_slices)``; NaN metrics and 0 slices when no slice holds brain.

    Example::

        >>> x = torch.rand(32, 32, 4) * 2 - 1
        >>> masked_slice_psnr_ssim(x, x, torch.ones(32, 32, 4, dtype=torch.bool))
        (inf, 1.0, 4)
    """
    pred, target, mask = torch.as_tensor(pred), torch.as_tensor(target), torch.as_tensor(brain_mask, dtype=torch.bool)
    if pred.ndim != 3 or pred.shape != target.shape or mask.shape != pred.shape:
        raise ValueError(
            f"masked_slice_psnr_ssim expects pred, target and brain_mask of one (H, W, D) shape, got "
            f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(mask.shape)}."
        )
    if min(pred.shape[:2]) < 11:
        raise ValueError(f"masked_slice_psnr_ssim expects slices of at least 11x11 voxels, got {tuple(pred.shape)}.")
    if min_brain_voxels < 1:
        raise ValueError(f"masked_slice_psnr_ssim expects min_brain_voxels >= 1, got {min_brain_voxels}.")
    pred = torch.where(mask, pred.float().clamp(-1.0, 1.0), -1.0)
    target = torch.where(mask, target.float(), -1.0)
    keep = mask.sum(dim=(0, 1)) >= min_brain_voxels
    if not bool(keep.any()):
        return math.nan, math.nan, 0
    p = pred[..., keep].permute(2, 0, 1).unsqueeze(1)  # (N, 1, H, W)
    t = target[..., keep].permute(2, 0, 1).unsqueeze(1)
    psnr = PSNRMetric(max_val=2.0, reduction="none")(p, t).reshape(-1)
    ssim = SSIMMetric(spatial_dims=2, data_range=2.0, reduction="none")(p, t).reshape(-1)
    return float(psnr.double().mean()), float(ssim.double().mean()), int(keep.sum())


def percentile_rescale(
    volume: torch.Tensor, lower: float = 0.5, upper: float = 99.5, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Clip ``volume`` to its own ``lower``/``upper`` percentiles and rescale that range to [0, 1] (BraSyn).

    Args:
        volume: any-shape tensor.
        lower: lower percentile, in [0, 100).
        upper: upper percentile, in (lower, 100].
        mask: optional bool tensor of ``volume``'s shape: the percentiles are taken over its voxels only.

    Returns:
        float tensor in [0, 1] (all zeros when the two percentiles coincide).

    Example::

        >>> percentile_rescale(torch.arange(1001.0), 0.5, 99.5)[[0, 5, 500, 995, 1000]]
        tensor([0.0000, 0.0000, 0.5000, 1.0000, 1.0000])
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentile_rescale expects 0 <= lower < upper <= 100, got lower={lower}, upper={upper}.")
    volume = torch.as_tensor(volume).float()
    values = volume if mask is None else volume[torch.as_tensor(mask, dtype=torch.bool)]
    if values.numel() == 0:
        raise ValueError("percentile_rescale expects a non-empty mask, got one with no voxel.")
    probs = torch.tensor([lower / 100.0, upper / 100.0], dtype=torch.double, device=values.device)
    q = torch.quantile(values.double().reshape(-1), probs)
    lo, hi = float(q[0]), float(q[1])
    if hi <= lo:
        return torch.zeros_like(volume)
    return ((volume.clamp(lo, hi) - lo) / (hi - lo)).float()


def volume_ssim_by_region(
    pred: torch.Tensor,
    target: torch.Tensor,
    brain_mask: torch.Tensor,
    tumour_mask: torch.Tensor | None = None,
    lower: float = 0.5,
    upper: float = 99.5,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
) -> dict[str, float]:
    """BraSyn protocol: 3D SSIM map of percentile-rescaled volumes, averaged per region.

    Both volumes go through :func:`percentile_rescale`; the SSIM map (data range 1) of the volumes edge-padded by
    ``kernel_size // 2`` has the volume's grid and is averaged over ``brain_mask`` (``"ssim3d_brain"``),
    ``tumour_mask & brain`` (``"ssim3d_tumour"``) and ``brain & ~tumour`` (``"ssim3d_healthy"``). A region
    without voxels, or ``tumour_mask=None`` for the two tumour regions, gives NaN; an empty tumour gives
    ``ssim3d_healthy == ssim3d_brain``.

    Args:
        pred: ``(H, W, D)`` synthesized volume.
        target: ``(H, W, D)`` true volume.
        brain_mask: ``(H, W, D)`` bool.
        tumour_mask: ``(H, W, D)`` bool whole-tumour mask, or None (no segmentation).
        lower: lower clipping percentile.
        upper: upper clipping percentile.
        kernel_size: Gaussian window size.
        kernel_sigma: Gaussian window sigma.

    Returns:
        ``{"ssim3d_brain": float, "ssim3d_tumour": float, "ssim3d_healthy": float}``.

    Example::

        >>> x = torch.rand(16, 16, 16)
        >>> volume_ssim_by_region(x, x, torch.ones(16, 16, 16, dtype=torch.bool))["ssim3d_brain"]
        1.0
    """
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    brain = torch.as_tensor(brain_mask, dtype=torch.bool)
    if pred.ndim != 3 or pred.shape != target.shape or brain.shape != pred.shape:
        raise ValueError(
            f"volume_ssim_by_region expects pred, target and brain_mask of one (H, W, D) shape, got "
            f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(brain.shape)}."
        )
    if tumour_mask is not None:
        tumour_mask = torch.as_tensor(tumour_mask, dtype=torch.bool)
        if tumour_mask.shape != pred.shape:
            raise ValueError(
                f"volume_ssim_by_region expects tumour_mask of shape {tuple(pred.shape)}, got "
                f"{tuple(tumour_mask.shape)}."
            )
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"volume_ssim_by_region expects an odd positive kernel_size, got {kernel_size}.")
    pad = kernel_size // 2
    x = F.pad(percentile_rescale(pred, lower, upper)[None, None], (pad,) * 6, mode="replicate")
    y = F.pad(percentile_rescale(target, lower, upper)[None, None], (pad,) * 6, mode="replicate")
    ssim_map, _ = compute_ssim_and_cs(
        x, y, spatial_dims=3, kernel_size=[kernel_size] * 3, kernel_sigma=[kernel_sigma] * 3, data_range=1.0
    )
    ssim_map = ssim_map[0, 0].double()

    def region_mean(region: torch.Tensor) -> float:
        return float(ssim_map[region].mean()) if bool(region.any()) else math.nan

    out = {"ssim3d_brain": region_mean(brain), "ssim3d_tumour": math.nan, "ssim3d_healthy": math.nan}
    if tumour_mask is not None:
        out["ssim3d_tumour"] = region_mean(brain & tumour_mask)
        out["ssim3d_healthy"] = region_mean(brain & ~tumour_mask)
    return out


def check_synthesis_inputs(name: str, y_pred: torch.Tensor, y: torch.Tensor | None, available: Any) -> torch.Tensor:
    """The inputs every per-missing-contrast metric takes: ``y_pred`` and ``y`` of one ``(B, M, *spatial)`` shape
    and the ``(B, M)`` availability mask; returns the mask as a bool tensor on ``y``'s device.

    Raises:
        ValueError: naming ``name`` (the metric) and what was expected.
    """
    if y is None or y_pred.shape != y.shape or y_pred.ndim < 4:
        shape = None if y is None else tuple(y.shape)
        raise ValueError(
            f"{name} expects y_pred and y of one (B, M, *spatial) shape, got {tuple(y_pred.shape)} and {shape}."
        )
    if available is None:
        raise ValueError(f"{name} expects the (B, M) availability mask 'available', got None.")
    mask = torch.as_tensor(available, device=y.device).bool()
    if tuple(mask.shape) != tuple(y.shape[:2]):
        raise ValueError(f"{name} expects available of shape {tuple(y.shape[:2])}, got {tuple(mask.shape)}.")
    return mask


class _MissingContrastMetric(CumulativeIterationMetric):
    """Scores the missing contrasts of each item of a batch, one row of :attr:`value_names` per contrast.

    ``y_pred`` and ``y`` are ``(B, M, *spatial)`` (the inferer output and the true contrasts, in [-1, 1]); the
    ``(B, M)`` bool ``available`` mask says which contrasts were given: those get NaN, the others are scored by
    :meth:`_score` inside the brain of :func:`brain_mask_from_available`. The result is ``(B, M, len(value_names))``
    float64; :meth:`aggregate` gives the mean of the finite values of :attr:`aggregate_name`.
    """

    value_names: tuple[str, ...] = ()
    aggregate_name: str = ""

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, available: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        mask = check_synthesis_inputs(type(self).__name__, y_pred, y, available)
        out = torch.full((*y.shape[:2], len(self.value_names)), math.nan, dtype=torch.float64)
        for b in range(y.shape[0]):
            brain = brain_mask_from_available(y[b], mask[b])
            for c in torch.nonzero(~mask[b]).flatten().tolist():
                scores = self._score(y_pred[b, c], y[b, c], brain, b, channel=c, **kwargs)
                out[b, c] = torch.tensor(scores, dtype=torch.float64)
        return out

    def _score(self, pred: torch.Tensor, truth: torch.Tensor, brain: torch.Tensor, index: int, **kwargs: Any):
        """The :attr:`value_names` values of one missing contrast ``pred``/``truth`` of batch item ``index`` (its
        channel is ``kwargs["channel"]``)."""
        raise NotImplementedError(f"Subclass {type(self).__name__} must implement this method.")

    def aggregate(self) -> float:  # type: ignore[override]
        """The mean of the finite values of :attr:`aggregate_name` over every item and missing contrast (NaN when
        none): a scalar, as MONAI's workflows compare key metrics. Every value stays in :meth:`get_buffer`."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError(f"{type(self).__name__} has no value to aggregate: it was called on no batch.")
        mean = finite_stats(data[..., self.value_names.index(self.aggregate_name)])["mean"]
        return math.nan if mean is None else mean


class BrainSlicePSNRSSIMMetric(_MissingContrastMetric):
    """Paper protocol on a batch: :func:`masked_slice_psnr_ssim` of each missing contrast.

    Inputs ``y_pred``, ``y`` ``(B, M, H, W, D)`` (or 2D slices ``(B, M, H, W)``) in [-1, 1] and ``available``
    ``(B, M)`` bool (a keyword: :class:`~monai_msgldm.evaluation.ExtraInputMetricHandler` hands it from the batch).
    Per item and contrast: ``(num_slices, psnr, ssim)``, NaN for the available contrasts; :meth:`aggregate`: the
    mean of the finite PSNR values.

    Args:
        min_brain_voxels: least number of brain voxels of a scored slice.

    Example::

        metric = BrainSlicePSNRSSIMMetric()
        metric(pred, truth, available=torch.tensor([[True, True, True, False]]))  # (1, 4, 3): values for flair
        metric.aggregate()  # mean PSNR (dB)
    """

    value_names = ("num_slices", "psnr", "ssim")
    aggregate_name = "psnr"

    def __init__(self, min_brain_voxels: int = 1) -> None:
        super().__init__()
        if min_brain_voxels < 1:
            raise ValueError(f"BrainSlicePSNRSSIMMetric expects min_brain_voxels >= 1, got {min_brain_voxels}.")
        self.min_brain_voxels = int(min_brain_voxels)

    def _score(self, pred, truth, brain, index, **kwargs):
        if pred.ndim == 2:  # one 2D slice
            pred, truth, brain = pred[..., None], truth[..., None], brain[..., None]
        psnr, ssim, n = masked_slice_psnr_ssim(pred, truth, brain, self.min_brain_voxels)
        return n, psnr, ssim


class RegionVolumeSSIMMetric(_MissingContrastMetric):
    """BraSyn protocol on a batch: :func:`volume_ssim_by_region` of each missing contrast.

    Inputs ``y_pred``, ``y`` ``(B, M, H, W, D)``, the keywords ``available`` ``(B, M)`` bool and, optionally,
    ``seg`` ``(B, C, H, W, D)`` (``ConvertToMultiChannelBasedOnBratsClassesd`` channels: TC, WT, ET) whose channel
    ``tumour_channel`` (> 0.5) is the tumour; without ``seg`` the two tumour values are NaN. Per item and contrast:
    ``(ssim3d_brain, ssim3d_tumour, ssim3d_healthy)``, NaN for the available contrasts; :meth:`aggregate`: the
    mean of the finite ``ssim3d_brain`` values.

    Args:
        tumour_channel: channel of the whole tumour in ``seg``.
        lower: lower clipping percentile.
        upper: upper clipping percentile.
        kernel_size: Gaussian window size.
        kernel_sigma: Gaussian window sigma.

    Example::

        metric = RegionVolumeSSIMMetric()
        metric(pred, truth, available=torch.tensor([[True, True, True, False]]), seg=seg)  # (1, 4, 3)
    """

    value_names = ("ssim3d_brain", "ssim3d_tumour", "ssim3d_healthy")
    aggregate_name = "ssim3d_brain"

    def __init__(
        self,
        tumour_channel: int = 1,
        lower: float = 0.5,
        upper: float = 99.5,
        kernel_size: int = 11,
        kernel_sigma: float = 1.5,
    ) -> None:
        super().__init__()
        if tumour_channel < 0:
            raise ValueError(f"RegionVolumeSSIMMetric expects tumour_channel >= 0, got {tumour_channel}.")
        self.tumour_channel = int(tumour_channel)
        self.lower, self.upper = lower, upper
        self.kernel_size, self.kernel_sigma = kernel_size, kernel_sigma

    def _compute_tensor(self, y_pred, y=None, available=None, seg=None, **kwargs):  # type: ignore[override]
        if y_pred.ndim != 5:
            raise ValueError(f"RegionVolumeSSIMMetric expects (B, M, H, W, D) volumes, got {tuple(y_pred.shape)}.")
        if seg is not None:
            seg = torch.as_tensor(seg, device=y_pred.device)
            if seg.ndim != 5 or seg.shape[0] != y_pred.shape[0] or seg.shape[1] <= self.tumour_channel:
                raise ValueError(
                    f"RegionVolumeSSIMMetric expects seg (B, C, H, W, D) with C > tumour_channel="
                    f"{self.tumour_channel}, got {tuple(seg.shape)}."
                )
        return super()._compute_tensor(y_pred, y, available, seg=seg, **kwargs)

    def _score(self, pred, truth, brain, index, seg=None, **kwargs):
        tumour = None if seg is None else seg[index, self.tumour_channel] > 0.5
        out = volume_ssim_by_region(
            pred, truth, brain, tumour, self.lower, self.upper, self.kernel_size, self.kernel_sigma
        )
        return tuple(out[n] for n in self.value_names)
