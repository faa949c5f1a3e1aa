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
"""PNG figures: synthesis grids (inputs / synthesis / truth / error) and training loss curves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_msgldm.constants import MODALITIES
from monai_msgldm.utils.files import atomic_path

__all__ = ["read_scalar_curves", "representative_slices", "save_figure", "save_loss_curves", "save_synthesis_grid"]


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 90) -> str:
    """Save a matplotlib figure atomically (:func:`~monai_msgldm.utils.files.atomic_path`: a temporary name with the
    same extension, then a rename) and close it, also when saving fails.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: output file (``.png``: the extension chooses the format); missing parent folders are created.
        dpi: resolution in dots per inch.

    Returns:
        ``path``.

    Example:
        >>> fig, ax = plt.subplots()
        >>> save_figure(fig, "out/plot.png", dpi=110)
        'out/plot.png'
    """
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return os.fspath(path)


def representative_slices(brain: torch.Tensor | np.ndarray, num: int = 3) -> list[int]:
    """``num`` axial indices spread over the brain of a ``(H, W, D)`` mask (quartiles for 3), e.g. for figures.

    Raises:
        ValueError: an empty mask or ``num < 1``.
    """
    if num < 1:
        raise ValueError(f"representative_slices expects num >= 1, got {num}.")
    mask = np.asarray(brain).astype(bool)
    if mask.ndim != 3:
        raise ValueError(f"representative_slices expects a (H, W, D) mask, got shape {mask.shape}.")
    idx = np.flatnonzero(mask.any(axis=(0, 1)))
    if idx.size == 0:
        raise ValueError("representative_slices: the mask is empty.")
    positions = np.linspace(0, idx.size - 1, num + 2)[1:-1]
    return [int(idx[int(round(p))]) for p in positions]


def save_synthesis_grid(
    path: str | os.PathLike,
    truth: torch.Tensor | np.ndarray,
    synthesized: torch.Tensor | np.ndarray,
    available: Sequence[str],
    slices: Sequence[int],
    modalities: Sequence[str] = MODALITIES,
    title: str | None = None,
) -> str:
    """Write a PNG grid, one row per axial slice: the available inputs, then for each missing modality the
    synthesis, the truth and the absolute error.

    Args:
        path: output PNG (written atomically, :func:`save_figure`).
        truth: ``(M, H, W, D)`` all modalities in [-1, 1] (the ground truth; inputs are its available channels).
        synthesized: ``(M, H, W, D)`` the inferer output (missing channels synthesized).
        available: names of the available modalities.
        slices: axial indices to show.
        modalities: channel names.
        title: optional figure title.

    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = np.asarray(torch.as_tensor(truth).detach().cpu().float())
    synthesized = np.asarray(torch.as_tensor(synthesized).detach().cpu().float())
    names = list(modalities)
    if truth.shape != synthesized.shape or truth.ndim != 4 or truth.shape[0] != len(names):
        raise ValueError(
            f"save_synthesis_grid expects truth and synthesized of the same shape ({len(names)}, H, W, D), "
            f"got {truth.shape} and {synthesized.shape}."
        )
    unknown = [a for a in available if a not in names]
    if unknown or not slices:
        raise ValueError(f"save_synthesis_grid expects available in {names} and some slices, got {list(available)}.")
    cols: list[tuple[str, np.ndarray, str]] = [(m, truth[names.index(m)], "gray") for m in available]
    for m in names:
        if m in available:
            continue
        c = names.index(m)
        cols += [
            (f"synthesized {m}", synthesized[c], "gray"),
            (f"true {m}", truth[c], "gray"),
            (f"|error| {m}", np.abs(synthesized[c] - truth[c]), "magma"),
        ]
    fig, axes = plt.subplots(len(slices), len(cols), figsize=(2.1 * len(cols), 2.1 * len(slices)), squeeze=False)
    for r, k in enumerate(slices):
        for c, (label, vol, cmap) in enumerate(cols):
            ax = axes[r][c]
            vmin, vmax = (0.0, 1.0) if cmap == "magma" else (-1.0, 1.0)
            ax.imshow(np.rot90(vol[..., int(k)]), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"slice {int(k)}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def read_scalar_curves(log_dir: str | os.PathLike, tag: str) -> tuple[list[int], list[float]]:
    """The ``(steps, values)`` of scalar ``tag`` in the TensorBoard event files of ``log_dir`` (e.g. what MONAI's
    ``TensorBoardStatsHandler`` wrote); empty lists when the folder or the tag does not exist."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not os.path.isdir(log_dir):
        return [], []
    acc = EventAccumulator(os.fspath(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return [], []
    events = sorted(acc.Scalars(tag), key=lambda e: e.step)
    return [int(e.step) for e in events], [float(e.value) for e in events]


def save_loss_curves(
    path: str | os.PathLike,
    log_dirs: Mapping[str, str | os.PathLike],
    tag: str | Sequence[str] = ("train_loss", "loss"),
    smooth: int = 20,
) -> str | None:
    """Plot the training loss of several TensorBoard folders side by side (one panel per entry, e.g. per training stage)
    with a moving average of ``smooth`` points, into a PNG (written atomically, :func:`save_figure`).

    Args:
        path: output PNG.
        log_dirs: panel title -> TensorBoard folder.
        tag: scalar tag (MONAI ``TensorBoardStatsHandler(tag_name=...)``), or several: per folder the first one it
            holds is plotted (MONAI writes a dict-valued loss under its keys, e.g. ``loss``, ``loss_l1``).
        smooth: moving-average window (1 for none).

    Returns:
        the written path, or ``None`` when no folder holds the tag (nothing written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = [tag] if isinstance(tag, str) else list(tag)
    curves: dict[str, tuple[str, list[int], list[float]]] = {}
    for name, folder in log_dirs.items():
        for t in tags:
            steps, values = read_scalar_curves(folder, t)
            if steps:
                curves[name] = (t, steps, values)
                break
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
    for ax, (name, (t, steps, values)) in zip(axes[0], curves.items()):
        ax.plot(steps, values, alpha=0.35, lw=0.8)
        window = max(1, min(int(smooth), len(values)))
        if window > 1:
            avg = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], avg, lw=1.5)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.set_ylabel(t)
        ax.set_yscale("log" if min(values) > 0 else "linear")
    fig.tight_layout()
    return save_figure(fig, path)
