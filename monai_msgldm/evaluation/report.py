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
"""The evaluation report: one row per (case, scenario, missing target), summaries, and ``metrics.{csv,json,md}``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai_msgldm.constants import MODALITIES
from monai_msgldm.utils.files import atomic_write_text

from .metrics import METRIC_NAMES, finite_stats

__all__ = ["ROW_KEYS", "summarize_metrics", "write_metrics"]

#: Columns of a result row, in output order.
ROW_KEYS: tuple[str, ...] = ("case", "scenario", "group", "available", "target", "num_slices", *METRIC_NAMES)


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
                entry[metric] = finite_stats([r.get(metric) for r in members])
        out.append(entry)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
        lacking = [k for k in ROW_KEYS if k not in row]
        if lacking:
            raise ValueError(f"write_metrics: row {i} lacks the columns {lacking}.")
    output_dir = os.fspath(output_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in ROW_KEYS})
    document = {
        "metrics": list(METRIC_NAMES),
        "rows": [{k: _json_value(row[k]) for k in ROW_KEYS} for row in rows],
        "aggregate": {
            "by_scenario_target": summarize_metrics(rows, ("scenario", "target")),
            "by_group_target": summarize_metrics(rows, ("group", "target")),
        },
    }
    paths = {ext: os.path.join(output_dir, f"metrics.{ext}") for ext in ("csv", "json", "md")}
    atomic_write_text(paths["csv"], buffer.getvalue())
    atomic_write_text(paths["json"], json.dumps(document, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["md"], _markdown(rows))
    return paths
