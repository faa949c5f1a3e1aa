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
"""Ignite handlers of the synthesis evaluator: metrics with per-item inputs, the report writer, the PNG grids."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import CumulativeIterationMetric
from monai.utils import CommonKeys, string_list_all_gather

from monai_msgldm.constants import MODALITIES
from monai_msgldm.visualize import representative_slices, save_synthesis_grid

from .metrics import BrainSlicePSNRSSIMMetric, RegionVolumeSSIMMetric, brain_mask_from_available
from .report import write_metrics
from .scenarios import scenario_group, scenario_name
from .segmentation import DOWNSTREAM_DICE_NAMES
from .sharpness import SynthesisSharpnessMetric
from .uncertainty import UNCERTAINTY_NAMES

__all__ = [
    "DEFAULT_METRIC_COLUMNS",
    "OPTIONAL_METRIC_COLUMNS",
    "ExtraInputMetricHandler",
    "SynthesisGridSaver",
    "SynthesisMetricsWriter",
]

#: Metric name (in the evaluator) -> the row columns of the last axis of its ``engine.state.metric_details`` entry.
DEFAULT_METRIC_COLUMNS: dict[str, tuple[str, ...]] = {
    "slice_psnr_ssim": BrainSlicePSNRSSIMMetric.value_names,
    "volume_ssim": RegionVolumeSSIMMetric.value_names,
    "sharpness": SynthesisSharpnessMetric.value_names,
}

#: The same for the metrics an evaluation may run or not (``evaluate.json``'s ``downstream_dice`` and
#: ``uncertainty_metrics`` switches): their columns are written when the evaluator has their details.
OPTIONAL_METRIC_COLUMNS: dict[str, tuple[str, ...]] = {
    "downstream_dice": DOWNSTREAM_DICE_NAMES,
    "uncertainty": UNCERTAINTY_NAMES,
}


def _stacked(value: Any) -> Any:
    """A batch-first tensor from a decollated list of per-item tensors (a batched value is returned as it is)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return torch.stack([torch.as_tensor(v) for v in value])
    return value


def _keyword_map(keys: Mapping[str, str | None] | Sequence[str] | str | None) -> dict[str, str | None]:
    """keyword -> key, from a mapping, a sequence of names or one name (the same name for both), or None (none)."""
    if keys is None:
        return {}
    if isinstance(keys, str):
        return {keys: keys}
    if isinstance(keys, Mapping):
        return dict(keys)
    return {k: k for k in keys}


def _batch_scenarios(engine: Engine, batch_transform: Callable, modalities: Sequence[str]) -> list[tuple]:
    """``(case, mask, available names, missing names)`` of each item of ``engine.state.batch``, from
    ``batch_transform`` (case names and ``(M,)`` availability masks)."""
    out = []
    for case, mask in zip(*batch_transform(engine.state.batch)):
        mask = torch.as_tensor(mask).reshape(-1).bool()
        if mask.numel() != len(modalities):
            raise ValueError(f"expects availability masks of {len(modalities)} entries, got {mask.numel()}.")
        flags = mask.tolist()
        available = [m for m, a in zip(modalities, flags) if a]
        out.append((str(case), mask, available, [m for m, a in zip(modalities, flags) if not a]))
    return out


class ExtraInputMetricHandler(IgniteMetricHandler):
    """``monai.handlers.IgniteMetricHandler`` that also hands its metric keyword inputs taken from the batch.

    MONAI's handler gives its metric only ``(y_pred, y)`` (``output_transform`` of the evaluator output), and the
    evaluator output holds only the image, the label and the prediction; the synthesis metrics also need per-item
    inputs of the data: the scenario's availability mask and the segmentation. As
    ``monai.engines.PrepareBatchExtraInput`` does for the inferer, ``extra_keys`` maps keyword names of the metric to
    keys of ``engine.state.batch``; keys that are None or absent from the batch are left out. ``output_keys`` does
    the same with keys of ``engine.state.output`` (what the evaluator computed beside ``pred``, e.g. the per-voxel
    standard deviation of several samples); a key that is not None must be in the output (a ``KeyError`` naming it
    otherwise: the metric was asked for an input the evaluator does not make). A decollated output or batch (lists
    of items) is stacked back into batch-first tensors.

    Args:
        metric_fn: a ``CumulativeIterationMetric`` whose ``__call__`` takes the keywords.
        extra_keys: keyword -> batch key (a sequence or a string: the same name for both).
        output_transform: ``engine.state.output`` -> ``(y_pred, y)``; None: ``from_engine(["pred", "label"])``.
        save_details: keep the per-item values in ``engine.state.metric_details[name]``.
        output_keys: keyword -> key of ``engine.state.output`` (a sequence or a string: the same name for both).

    Example::

        handler = ExtraInputMetricHandler(BrainSlicePSNRSSIMMetric(), extra_keys={"available": "available"})
        handler.attach(evaluator, "slice_psnr_ssim")
    """

    def __init__(
        self,
        metric_fn: CumulativeIterationMetric,
        extra_keys: Mapping[str, str | None] | Sequence[str] | str | None = None,
        output_transform: Callable | None = None,
        save_details: bool = True,
        output_keys: Mapping[str, str | None] | Sequence[str] | str | None = None,
    ) -> None:
        output_transform = output_transform or from_engine([CommonKeys.PRED, CommonKeys.LABEL])
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
        self.extra_keys = _keyword_map(extra_keys)
        self.output_keys = _keyword_map(output_keys)
        self._extra: dict[str, Any] = {}

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        """Update on the whole batch at once (Ignite would update item by item on a decollated output, while the
        extra inputs are batch-first)."""
        batch = engine.state.batch
        items = batch if isinstance(batch, (list, tuple)) else [batch]
        self._extra = {}
        for name, key in self.extra_keys.items():
            if key is not None and items and all(isinstance(d, Mapping) and key in d for d in items):
                self._extra[name] = batch[key] if isinstance(batch, Mapping) else _stacked([d[key] for d in items])
        state_output = engine.state.output
        outputs = state_output if isinstance(state_output, (list, tuple)) else [state_output]
        for name, key in self.output_keys.items():
            if key is None:
                continue
            if not outputs or not all(isinstance(d, Mapping) and key in d for d in outputs):
                found = sorted(outputs[0]) if outputs and isinstance(outputs[0], Mapping) else type(state_output)
                raise KeyError(
                    f"ExtraInputMetricHandler: the metric input '{name}' is the evaluator output '{key}', which the "
                    f"evaluator does not give (its output keys: {found})."
                )
            self._extra[name] = (
                state_output[key] if isinstance(state_output, Mapping) else _stacked([d[key] for d in outputs])
            )
        output = self._output_transform(engine.state.output)
        if not isinstance(output, Sequence) or len(output) != 2:
            raise ValueError("ExtraInputMetricHandler expects output_transform to give (y_pred, y).")
        self.update((_stacked(output[0]), _stacked(output[1])))

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        y_pred, y = output
        self.metric_fn(y_pred, y, **self._extra)


class SynthesisMetricsWriter:
    """Turns the per-item metric details of the synthesis evaluator into one row per (case, scenario, missing
    target) and writes ``metrics.csv``, ``metrics.json`` and ``metrics.md`` (:func:`write_metrics`) at the end of
    the epoch.

    MONAI's ``MetricsSaver`` writes one ``<metric>_raw.csv`` per metric with one line per item (named by the image
    file) and one column per channel, plus a name/value ``metrics.csv``: it can neither name the rows by case and
    scenario nor put each missing target on its own row with every metric as a column, and it writes no JSON, no
    markdown and no atomic files. This handler does that, the same way: items are collected at every iteration
    (``batch_transform`` gives their case names and availability masks), gathered over ranks, and matched with
    ``engine.state.metric_details``, which must hold, for each metric of ``metric_columns``, a
    ``(N, M, len(columns))`` tensor (NaN for the available contrasts), as
    :class:`~monai_msgldm.evaluation.ExtraInputMetricHandler` with ``save_details=True`` leaves it. The metrics of
    ``optional_metric_columns`` (the downstream Dice, the uncertainty scores) are written the same way when the
    evaluator ran them, and left out otherwise. The rows are also kept in :attr:`rows`.

    Args:
        output_dir: folder of the three files; None: only keep :attr:`rows`.
        metric_columns: metric name -> the row columns of the last axis of its details (each must be there).
        modalities: modality names in channel order.
        batch_transform: ``engine.state.batch`` -> ``(case names, (B, M) availability masks)``; None:
            ``from_engine(["case", "available"])``.
        save_rank: the rank that writes the files.
        optional_metric_columns: the same for metrics that may be absent; None: :data:`OPTIONAL_METRIC_COLUMNS`.

    Example::

        SynthesisMetricsWriter("eval/evaluate").attach(evaluator)
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        metric_columns: Mapping[str, Sequence[str]] | None = None,
        modalities: Sequence[str] = MODALITIES,
        batch_transform: Callable | None = None,
        save_rank: int = 0,
        optional_metric_columns: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.metric_columns = {k: tuple(v) for k, v in (metric_columns or DEFAULT_METRIC_COLUMNS).items()}
        optional = OPTIONAL_METRIC_COLUMNS if optional_metric_columns is None else optional_metric_columns
        self.optional_metric_columns = {k: tuple(v) for k, v in optional.items() if k not in self.metric_columns}
        self.modalities = tuple(modalities)
        self.batch_transform = batch_transform or from_engine(["case", "available"])
        self.save_rank = save_rank
        self._items: list[tuple[str, str]] = []
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, _engine: Engine) -> None:
        self._items, self.rows = [], []

    def _collect(self, engine: Engine) -> None:
        for case, _, available, _ in _batch_scenarios(engine, self.batch_transform, self.modalities):
            self._items.append((case, "+".join(available)))

    def __call__(self, engine: Engine) -> None:
        cases, subsets = [c for c, _ in self._items], [s for _, s in self._items]
        if idist.get_world_size() > 1:
            cases, subsets = string_list_all_gather(cases), string_list_all_gather(subsets)
        if not cases:
            raise ValueError("SynthesisMetricsWriter: the evaluator gave no item (an empty test split?).")
        details = getattr(engine.state, "metric_details", {})
        values = {}
        metric_columns = dict(self.metric_columns)
        metric_columns.update({k: v for k, v in self.optional_metric_columns.items() if k in details})
        for name, columns in metric_columns.items():
            if name not in details:
                raise ValueError(
                    f"SynthesisMetricsWriter expects the per-item details of metric '{name}' (save_details=True), "
                    f"got {sorted(details)}."
                )
            values[name] = torch.as_tensor(details[name]).double().cpu()
            if tuple(values[name].shape) != (len(cases), len(self.modalities), len(columns)):
                raise ValueError(
                    f"SynthesisMetricsWriter expects '{name}' details of shape ({len(cases)}, {len(self.modalities)}, "
                    f"{len(columns)}), got {tuple(values[name].shape)}."
                )
        rows = []
        for i, (case, subset) in enumerate(zip(cases, subsets)):
            available = subset.split("+")
            missing = [m for m in self.modalities if m not in available]
            for target in missing:
                c = self.modalities.index(target)
                row: dict[str, Any] = {
                    "case": case,
                    "scenario": scenario_name(available, missing),
                    "group": scenario_group(available, len(self.modalities)),
                    "available": subset,
                    "target": target,
                }
                for name, columns in metric_columns.items():
                    row.update({col: float(values[name][i, c, k]) for k, col in enumerate(columns)})
                if "num_slices" in row:
                    row["num_slices"] = int(row["num_slices"])
                rows.append(row)
        self.rows = rows
        if self.output_dir is not None and idist.get_rank() == self.save_rank:
            write_metrics(rows, self.output_dir)


class SynthesisGridSaver:
    """After every iteration, one PNG grid per item (:func:`monai_msgldm.visualize.save_synthesis_grid`): the
    available inputs, then the synthesis, the truth and the absolute error of every missing contrast, on
    ``num_slices`` axial slices spread over the brain, as ``output_dir/<case>_<available>.png``.

    Args:
        output_dir: folder of the PNG files.
        modalities: modality names in channel order.
        batch_transform: ``engine.state.batch`` -> ``(case names, (B, M) availability masks)``; None:
            ``from_engine(["case", "available"])``.
        output_transform: ``engine.state.output`` -> ``(predictions, truths)``, each ``(B, M, H, W, D)``; None:
            ``from_engine(["pred", "label"])``.
        num_slices: number of axial slices per grid.

    Example::

        SynthesisGridSaver("eval/evaluate/figures").attach(evaluator)
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        modalities: Sequence[str] = MODALITIES,
        batch_transform: Callable | None = None,
        output_transform: Callable | None = None,
        num_slices: int = 3,
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.modalities = tuple(modalities)
        self.batch_transform = batch_transform or from_engine(["case", "available"])
        self.output_transform = output_transform or from_engine([CommonKeys.PRED, CommonKeys.LABEL])
        self.num_slices = num_slices

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scenarios = _batch_scenarios(engine, self.batch_transform, self.modalities)
        for (case, mask, available, missing), pred, truth in zip(
            scenarios, *self.output_transform(engine.state.output)
        ):
            truth = torch.as_tensor(truth).detach().float().cpu()
            brain = brain_mask_from_available(truth, mask)
            save_synthesis_grid(
                os.path.join(self.output_dir, f"{case}_{'+'.join(available)}.png"),
                truth,
                torch.as_tensor(pred).detach().float().cpu(),
                available,
                representative_slices(brain, self.num_slices),
                self.modalities,
                title=f"{case}: {scenario_name(available, missing)}",
            )
