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
"""Synthesis quality of MSG-LDM over every missing-modality scenario (the bundle's ``configs/evaluate.json``).

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
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import load_decathlon_datalist
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs

from .constants import MODALITIES
from .visualize import representative_slices, save_synthesis_grid

__all__ = [
    "METRIC_NAMES",
    "brain_mask_from_available",
    "evaluate_synthesis",
    "evaluation_datalist",
    "masked_slice_psnr_ssim",
    "missing_modality_scenarios",
    "percentile_rescale",
    "scenario_group",
    "summarize_metrics",
    "volume_ssim_by_region",
    "write_metrics",
]

#: Metric columns of a result row, in output order.
METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "ssim3d_brain", "ssim3d_tumour", "ssim3d_healthy")
_ROW_KEYS: tuple[str, ...] = ("case", "scenario", "group", "available", "target", "num_slices", *METRIC_NAMES)
_GROUP = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*$")


def scenario_group(available: Sequence[str], num_modalities: int = len(MODALITIES)) -> str:
    """The group name ``"<#available>-><#missing>"`` of an availability subset, e.g. ``"3->1"``."""
    return f"{len(available)}->{num_modalities - len(available)}"


def missing_modality_scenarios(
    scenarios: Sequence[str] | str | None = None, modalities: Sequence[str] = MODALITIES
) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The (available, missing) modality subsets to evaluate.

    All non-empty proper subsets of ``modalities`` (14 for 4 modalities, 28 (subset, target) pairs), ordered by
    decreasing number of available modalities, then in ``modalities`` order. ``scenarios`` restricts them; each
    entry is either a group ``"<#available>-><#missing>"`` (e.g. ``"3->1"``) or one subset of available modality
    names joined by ``+`` (e.g. ``"t1+t2+flair"``).

    Raises:
        ValueError: an entry that is neither a valid group nor a valid subset.

    Example::

        >>> missing_modality_scenarios(["3->1"])[0]
        (('t1', 't1ce', 't2'), ('flair',))
    """
    modalities = tuple(modalities)
    n = len(modalities)
    every = [
        (subset, tuple(m for m in modalities if m not in subset))
        for k in range(n - 1, 0, -1)
        for subset in itertools.combinations(modalities, k)
    ]
    if scenarios is None:
        return every
    if isinstance(scenarios, str):
        scenarios = [scenarios]
    chosen: list[tuple[str, ...]] = []
    for entry in scenarios:
        if not isinstance(entry, str):
            raise ValueError(f"scenarios expects strings such as '3->1' or 't1+t2', got {entry!r}.")
        group = _GROUP.match(entry)
        if group is not None:
            k, missing = int(group.group(1)), int(group.group(2))
            if not 1 <= k <= n - 1 or k + missing != n:
                valid = [f"{i}->{n - i}" for i in range(n - 1, 0, -1)]
                raise ValueError(f"scenarios: unknown group {entry!r}; expected one of {valid}.")
            chosen += [s for s, _ in every if len(s) == k]
            continue
        names = [p.strip() for p in entry.split("+")]
        if any(p not in modalities for p in names) or len(set(names)) != len(names) or not 1 <= len(names) < n:
            raise ValueError(
                f"scenarios: {entry!r} is neither a group like '3->1' nor a proper subset of {list(modalities)} "
                "joined by '+' (e.g. 't1+t2')."
            )
        chosen.append(tuple(m for m in modalities if m in names))
    return [(s, t) for s, t in every if s in chosen]


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
    q = torch.quantile(values.double().reshape(-1), torch.tensor([lower / 100.0, upper / 100.0], dtype=torch.double))
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


def evaluation_datalist(
    datalist: str | os.PathLike, data_list_key: str = "test", base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """The items of ``datalist[data_list_key]`` with absolute paths (``monai.data.load_decathlon_datalist``),
    refusing an absent or empty list with a clear message (an empty test split, e.g. ``test_ratio`` too small for
    a few subjects).

    Raises:
        FileNotFoundError: ``datalist`` does not exist.
        ValueError: ``data_list_key`` is absent or its list is empty.

    Example::

        items = evaluation_datalist("eval/evaluate/datalist.json", "test", base_dir="/data/BraTS2020")
    """
    path = os.fspath(datalist)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the datalist {path} does not exist (--datalist).")
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    if not isinstance(document, Mapping) or not isinstance(document.get(data_list_key), list):
        keys = sorted(document) if isinstance(document, Mapping) else type(document).__name__
        raise ValueError(f"the datalist {path} has no list under data_list_key '{data_list_key}' (found {keys}).")
    if not document[data_list_key]:
        raise ValueError(
            f"the datalist {path} has no case under '{data_list_key}': no case to evaluate (an empty test split? "
            "raise test_ratio or give a datalist)."
        )
    return load_decathlon_datalist(path, is_segmentation=False, data_list_key=data_list_key, base_dir=base_dir)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value


def _case_name(batch: Mapping[str, Any], index: int) -> str:
    for key in ("case", "subject"):
        if key in batch:
            name = _first(batch[key])
            if isinstance(name, str) and name:
                return os.path.basename(os.path.normpath(name))
    return f"case_{index:04d}"


@torch.no_grad()
def evaluate_synthesis(
    network: nn.Module,
    inferer: Any,
    dataloader: Iterable[Mapping[str, Any]],
    output_dir: str | os.PathLike | None = None,
    scenarios: Sequence[str] | str | None = None,
    modalities: Sequence[str] = MODALITIES,
    image_key: str = "image",
    seg_key: str | None = "seg",
    tumour_channel: int = 1,
    device: torch.device | str | None = None,
    min_brain_voxels: int = 1,
    lower: float = 0.5,
    upper: float = 99.5,
    figures: bool = False,
) -> list[dict[str, Any]]:
    """Synthesize every scenario of every case and score each missing target; optionally write the results.

    For each batch of ``dataloader`` (batch size 1: one preprocessed case ``(1, M, H, W, D)`` in [-1, 1] with
    every modality present, as made by ``brats_preprocessing_transforms``) and each scenario of
    :func:`missing_modality_scenarios`, the missing channels are set to -1 and ``inferer(inputs, network,
    available=<names>)`` synthesizes them; each missing target is scored with :func:`masked_slice_psnr_ssim`
    and :func:`volume_ssim_by_region` (tumour: channel ``tumour_channel`` of ``batch[seg_key]``, WT of
    ``ConvertToMultiChannelBasedOnBratsClassesd``; none when ``seg_key`` is None or absent).

    Args:
        network: the MSGLDM model.
        inferer: e.g. :class:`monai_msgldm.inferers.ModalitySynthesisInferer`.
        dataloader: batches of one case each.
        output_dir: when given, :func:`write_metrics` writes ``metrics.csv``, ``metrics.json``, ``metrics.md`` there.
        scenarios: restriction of the scenarios (see :func:`missing_modality_scenarios`).
        modalities: modality names in channel order.
        image_key: key of the stacked image.
        seg_key: key of the (3, H, W, D) TC/WT/ET segmentation, or None.
        tumour_channel: channel of the whole tumour in the segmentation.
        device: device of the inputs; None: the network's.
        min_brain_voxels: see :func:`masked_slice_psnr_ssim`.
        lower: lower percentile of the BraSyn rescaling.
        upper: upper percentile of the BraSyn rescaling.
        figures: with ``output_dir``, also write one PNG grid per case and scenario (inputs / synthesis / truth /
            error on three slices, :func:`monai_msgldm.visualize.save_synthesis_grid`) to ``output_dir/figures``.

    Returns:
        one row per case x scenario x target: ``case, scenario, group, available, target, num_slices`` and
        :data:`METRIC_NAMES`.

    Raises:
        ValueError: no case, a batch of several cases, a missing image key, or a case lacking a modality.

    Example::

        rows = evaluate_synthesis(network, ModalitySynthesisInferer(num_inference_steps=50), loader, "eval", ["3->1"])
    """
    modalities = tuple(modalities)
    chosen = missing_modality_scenarios(scenarios, modalities)
    if device is None:
        device = next(network.parameters()).device
    rows: list[dict[str, Any]] = []
    for index, batch in enumerate(dataloader):
        case = _case_name(batch, index)
        if image_key not in batch:
            raise ValueError(f"evaluate_synthesis: case '{case}' has no '{image_key}' (keys {sorted(batch)}).")
        image = torch.as_tensor(batch[image_key])
        if image.ndim != 5 or image.shape[0] != 1 or image.shape[1] != len(modalities):
            raise ValueError(
                f"evaluate_synthesis expects '{image_key}' batches of shape (1, {len(modalities)}, H, W, D) "
                f"(batch_size 1), got {tuple(image.shape)} for case '{case}'."
            )
        if "available" in batch:
            present = torch.as_tensor(batch["available"]).reshape(-1).bool()
            absent = [m for m, a in zip(modalities, present.tolist()) if not a]
            if absent:
                raise ValueError(
                    f"evaluate_synthesis: case '{case}' lacks {absent}; every modality is needed as ground truth."
                )
        truth = image[0].float().cpu()
        tumour = None
        if seg_key is not None and seg_key in batch:
            tumour = torch.as_tensor(batch[seg_key])[0, tumour_channel].cpu() > 0.5
        for available, targets in chosen:
            flags = torch.tensor([m in available for m in modalities])
            inputs = image.clone()
            inputs[:, ~flags] = -1.0
            pred = inferer(inputs.to(device), network, available=list(available))
            pred = torch.as_tensor(pred)[0].float().cpu()
            brain = brain_mask_from_available(truth, flags)
            scenario = "+".join(available) + "->" + "+".join(targets)
            if figures and output_dir is not None:
                save_synthesis_grid(
                    os.path.join(output_dir, "figures", f"{case}_{'+'.join(available)}.png"),
                    truth,
                    pred,
                    available,
                    representative_slices(brain),
                    modalities,
                    title=f"{case}: {scenario}",
                )
            for target in targets:
                c = modalities.index(target)
                psnr, ssim, n = masked_slice_psnr_ssim(pred[c], truth[c], brain, min_brain_voxels)
                row: dict[str, Any] = {
                    "case": case,
                    "scenario": scenario,
                    "group": scenario_group(available, len(modalities)),
                    "available": "+".join(available),
                    "target": target,
                    "num_slices": n,
                    "psnr": psnr,
                    "ssim": ssim,
                }
                row.update(volume_ssim_by_region(pred[c], truth[c], brain, tumour, lower, upper))
                rows.append(row)
    if not rows:
        raise ValueError(
            "evaluate_synthesis: the dataloader gave no case (an empty test split? raise test_ratio or give a "
            "datalist)."
        )
    if output_dir is not None:
        write_metrics(rows, output_dir)
    return rows


def _stats(values: Sequence[float]) -> dict[str, Any]:
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def summarize_metrics(rows: Sequence[Mapping[str, Any]], by: Sequence[str] = ("scenario", "target")) -> list[dict]:
    """Mean / std / count of each metric over the rows sharing the ``by`` columns (finite values only: NaN
    (skipped) and ``inf`` (exact slices) values are left out of the statistics and of ``n``).

    Returns:
        one dictionary per group, in first-seen order: the ``by`` values and ``{metric: {"mean", "std", "n"}}``.

    Example::

        >>> summarize_metrics([{"scenario": "a", "target": "t1", "psnr": 20.0, "ssim": 0.5}], by=("scenario",))[0]
        {'scenario': 'a', 'psnr': {'mean': 20.0, 'std': 0.0, 'n': 1}, 'ssim': {'mean': 0.5, 'std': 0.0, 'n': 1}}
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, key))
        for metric in METRIC_NAMES:
            if any(metric in r for r in members):
                entry[metric] = _stats([r.get(metric) for r in members])
        out.append(entry)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_write(path: str, text: str) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    def cell(stats: Mapping[str, Any] | None, scale: float = 1.0) -> str:
        if not stats or stats["mean"] is None:
            return "n/a"
        return f"{stats['mean'] * scale:.2f} ± {stats['std'] * scale:.2f}"

    lines = [
        "# MSG-LDM synthesis metrics",
        "",
        "Means ± std over cases and scenarios of each group (finite values only). PSNR (dB) and SSIM (%) on axial "
        "slices in [-1, 1] inside the brain; SSIM3D (%): BraSyn-style 3D SSIM of 0.5-99.5 percentile-rescaled "
        "volumes inside the brain, the whole tumour and the brain outside the tumour.",
        "",
        "| group | target | rows | PSNR | SSIM | SSIM3D brain | SSIM3D tumour | SSIM3D healthy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    counts: dict[tuple, int] = {}
    for row in rows:
        counts[(row["group"], row["target"])] = counts.get((row["group"], row["target"]), 0) + 1
    order = {m: i for i, m in enumerate(MODALITIES)}
    summary = summarize_metrics(rows, by=("group", "target"))
    summary.sort(key=lambda e: (-int(e["group"].split("->")[0]), order.get(e["target"], len(order)), e["target"]))
    for e in summary:
        lines.append(
            f"| {e['group']} | {e['target']} | {counts[(e['group'], e['target'])]} | {cell(e.get('psnr'))} | "
            f"{cell(e.get('ssim'), 100)} | {cell(e.get('ssim3d_brain'), 100)} | {cell(e.get('ssim3d_tumour'), 100)} | "
            f"{cell(e.get('ssim3d_healthy'), 100)} |"
        )
    return "\n".join(lines) + "\n"


def write_metrics(rows: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``metrics.csv`` (one row per case x scenario x target; NaN / inf as ``nan`` / ``inf``),
    ``metrics.json`` (``{"rows": [...], "aggregate": {"by_scenario_target": [...], "by_group_target": [...]}}``,
    non-finite values as ``null``) and ``metrics.md`` (means by group ``"3->1"``, ``"2->2"``, ``"1->3"`` and target)
    into ``output_dir``, each through a temporary file renamed into place.

    Returns:
        ``{"csv": path, "json": path, "md": path}``.

    Raises:
        ValueError: no rows, or a row lacking a column.

    Example::

        paths = write_metrics(evaluate_synthesis(network, inferer, loader), "eval/evaluate")
    """
    if not rows:
        raise ValueError("write_metrics expects at least one result row, got none (no case or no scenario).")
    for i, row in enumerate(rows):
        lacking = [k for k in _ROW_KEYS if k not in row]
        if lacking:
            raise ValueError(f"write_metrics: row {i} lacks the columns {lacking}.")
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(_ROW_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in _ROW_KEYS})
    document = {
        "metrics": list(METRIC_NAMES),
        "rows": [{k: _json_value(row[k]) for k in _ROW_KEYS} for row in rows],
        "aggregate": {
            "by_scenario_target": summarize_metrics(rows, ("scenario", "target")),
            "by_group_target": summarize_metrics(rows, ("group", "target")),
        },
    }
    paths = {ext: os.path.join(output_dir, f"metrics.{ext}") for ext in ("csv", "json", "md")}
    _atomic_write(paths["csv"], buffer.getvalue())
    _atomic_write(paths["json"], json.dumps(document, indent=2, allow_nan=False) + "\n")
    _atomic_write(paths["md"], _markdown(rows))
    return paths
