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
"""The evaluation report: one row per (case, scenario, missing target), summaries, and ``metrics.{csv,json,md}``.

The columns of :data:`ROW_KEYS` (the slice PSNR/SSIM and 3D SSIM of :mod:`.metrics`, the sharpness of
:mod:`.sharpness`) are in every row; those of :data:`OPTIONAL_METRIC_NAMES` (the downstream Dice of
:mod:`.segmentation`, the uncertainty scores of :mod:`.uncertainty`) are written when the rows have them.
"""

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
from .segmentation import BRATS_REGIONS, DOWNSTREAM_DICE_NAMES
from .sharpness import SHARPNESS_NAMES
from .uncertainty import UNCERTAINTY_NAMES

__all__ = ["OPTIONAL_METRIC_NAMES", "ROW_KEYS", "summarize_metrics", "write_metrics"]

#: The metric columns of every result row, in output order.
_DEFAULT_METRIC_NAMES: tuple[str, ...] = (*METRIC_NAMES, *SHARPNESS_NAMES)

#: Columns of a result row, in output order.
ROW_KEYS: tuple[str, ...] = ("case", "scenario", "group", "available", "target", "num_slices", *_DEFAULT_METRIC_NAMES)

#: Metric columns written after :data:`ROW_KEYS` when the rows have them, in output order.
OPTIONAL_METRIC_NAMES: tuple[str, ...] = (*DOWNSTREAM_DICE_NAMES, *UNCERTAINTY_NAMES)


def _present(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The optional metric columns that any row has."""
    return tuple(m for m in OPTIONAL_METRIC_NAMES if any(m in r for r in rows))


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
        for metric in (*_DEFAULT_METRIC_NAMES, *OPTIONAL_METRIC_NAMES):
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
        "volumes inside the brain, the whole tumour and the brain outside the tumour; sharpness: mean in-plane gradient "
        "magnitude of the synthesis over that of the truth inside the brain (1: as sharp as the truth, < 1: blurred).",
        "",
        "| group | target | rows | PSNR | SSIM | SSIM3D brain | SSIM3D tumour | SSIM3D healthy | sharpness |",
        "|---|---|---|---|---|---|---|---|---|",
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
            f"{cell(e.get('ssim3d_healthy'), 100)} | {cell(e.get('sharpness'))} |"
        )
    present = _present(rows)
    if any(m in present for m in DOWNSTREAM_DICE_NAMES):
        lines += [
            "",
            "## Downstream Dice (BraSyn)",
            "",
            "Dice (%) of the fixed segmenter (trained once on all four real contrasts, then frozen) on the case "
            "completed with the synthesis (given contrasts real, missing ones synthesized), beside the same segmenter "
            "on the case with all four real contrasts (real); means ± std over the cases of each scenario.",
            "",
            "| group | scenario | cases | "
            + " | ".join(r.upper() for r in BRATS_REGIONS)
            + " | "
            + " | ".join(f"{r.upper()} real" for r in BRATS_REGIONS)
            + " |",
            "|---|---|---|" + "---|" * len(DOWNSTREAM_DICE_NAMES),
        ]
        scenarios = _per_scenario(rows)
        dice = summarize_metrics(scenarios, by=("group", "scenario"))
        cases = {}
        for row in scenarios:
            cases[row["scenario"]] = cases.get(row["scenario"], 0) + 1
        dice.sort(key=lambda e: -int(e["group"].split("->")[0]))  # stable: scenarios in first-seen order
        for e in dice:
            cells = " | ".join(cell(e.get(m), 100) for m in DOWNSTREAM_DICE_NAMES)
            lines.append(f"| {e['group']} | {e['scenario']} | {cases[e['scenario']]} | {cells} |")
    if any(m in present for m in UNCERTAINTY_NAMES):
        lines += [
            "",
            "## Uncertainty",
            "",
            "Inside the brain, per synthesized contrast: Spearman correlation between the per-voxel standard deviation "
            "of the samples and the absolute error of their mean; mean absolute error in the 10 % most uncertain "
            "voxels and in the rest, and their ratio; means ± std over cases and scenarios of each group.",
            "",
            "| group | target | rows | Spearman | error top 10 % | error rest | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in summary:
            cells = " | ".join(cell(e.get(m)) for m in UNCERTAINTY_NAMES)
            lines.append(f"| {e['group']} | {e['target']} | {counts[(e['group'], e['target'])]} | {cells} |")
    return "\n".join(lines) + "\n"


def _per_scenario(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One row per (case, scenario) (the first one): for the values that depend on the scenario only, such as the
    downstream Dice, repeated on the row of every missing target."""
    seen: dict[tuple, Mapping[str, Any]] = {}
    for row in rows:
        seen.setdefault((row["case"], row["scenario"]), row)
    return list(seen.values())


def write_metrics(rows: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``metrics.csv`` (one row per case x scenario x target; NaN / inf as ``nan`` / ``inf``),
    ``metrics.json`` (``{"rows": [...], "aggregate": {"by_scenario_target": [...], "by_group_target": [...]}}``,
    non-finite values as ``null``) and ``metrics.md`` (means by group ``"3->1"``, ``"2->2"``, ``"1->3"`` and target)
    into ``output_dir``, each through a temporary file renamed into place.

    The columns are :data:`ROW_KEYS`, then the :data:`OPTIONAL_METRIC_NAMES` the rows have. With the downstream Dice
    columns, ``metrics.json``'s aggregate also has ``"downstream_dice_by_scenario"`` and
    ``"downstream_dice_by_group"`` (over one row per case and scenario: the Dice does not depend on the target) and
    ``metrics.md`` a table of it by scenario; with the uncertainty columns, ``metrics.md`` has a table of them by
    group and target.

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
    present = _present(rows)
    columns = (*ROW_KEYS, *present)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, math.nan) for k in columns})
    document: dict[str, Any] = {
        "metrics": [*_DEFAULT_METRIC_NAMES, *present],
        "rows": [{k: _json_value(row.get(k, math.nan)) for k in columns} for row in rows],
        "aggregate": {
            "by_scenario_target": summarize_metrics(rows, ("scenario", "target")),
            "by_group_target": summarize_metrics(rows, ("group", "target")),
        },
    }
    if any(m in present for m in DOWNSTREAM_DICE_NAMES):
        keep = ("case", "scenario", "group", *DOWNSTREAM_DICE_NAMES)
        scenarios = [{k: r[k] for k in keep if k in r} for r in _per_scenario(rows)]
        document["aggregate"]["downstream_dice_by_scenario"] = summarize_metrics(scenarios, ("scenario",))
        document["aggregate"]["downstream_dice_by_group"] = summarize_metrics(scenarios, ("group",))
    paths = {ext: os.path.join(output_dir, f"metrics.{ext}") for ext in ("csv", "json", "md")}
    atomic_write_text(paths["csv"], buffer.getvalue())
    atomic_write_text(paths["json"], json.dumps(document, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["md"], _markdown(rows))
    return paths
