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
"""What is evaluated: the test cases and their missing-modality scenarios, as (case, scenario) items.

Each non-empty proper subset of the contrasts is a scenario (14 for four contrasts, 28 (subset, target) pairs).
:class:`ScenarioSamples` turns one preprocessed case into one item per scenario, for ``monai.data.PatchDataset``: the
case is loaded and preprocessed once, and its scenarios are yielded one after the other.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import decollate_batch, load_decathlon_datalist

from monai_msgldm.constants import MODALITIES
from monai_msgldm.inferers import case_name_from_files

__all__ = [
    "ScenarioSamples",
    "evaluation_datalist",
    "missing_modality_scenarios",
    "scenario_group",
    "scenario_name",
]

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


def scenario_name(available: Sequence[str], missing: Sequence[str]) -> str:
    """The scenario column ``"<available joined by +>-><missing joined by +>"``, e.g. ``"t1+t2->t1ce+flair"``."""
    return "+".join(available) + "->" + "+".join(missing)


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


class ScenarioSamples:
    """One item per missing-modality scenario from a batch of ONE preprocessed case: the ``patch_func`` of
    ``monai.data.PatchDataset``, so that a case is read and preprocessed once for all its scenarios.

    The input is what a ``DataLoader`` with ``batch_size=1`` gives for the output of ``brats_preprocessing_transforms``:
    ``image_key`` ``(1, M, *spatial)`` in [-1, 1] with every contrast present (they are the ground truth). Each item
    is a shallow copy of the case with:

    - ``label_key``: the case's image (the truth of every contrast; the same tensor for every item, not a copy);
    - ``available_key``: the scenario's ``(M,)`` bool availability mask (made once here, in the data);
    - ``case_key``: the case name (from the case's ``"case"`` or ``"subject"`` entry, else its file names);
    - ``scenario_key``: the scenario, e.g. ``"t1+t2->t1ce+flair"``.

    ``image_key`` still holds every contrast: ``PatchDataset``'s per-item ``transform``
    (``ApplyModalityMaskd(image_key, fill_value=-1)``) hides the missing ones, one item at a time.

    Args:
        scenarios: restriction of the scenarios (see :func:`missing_modality_scenarios`); None: all.
        modalities: modality names in channel order.
        image_key: key of the stacked image.
        label_key: key the truth is stored under (must not be in the case).
        available_key: key of the availability mask (the case's own mask, if any, must be all True).
        case_key: key of the case name.
        scenario_key: key of the scenario name.

    Raises:
        ValueError: a bad scenario, a batch of several cases, a missing image, a case lacking a contrast, or a case
            that already holds ``label_key``.

    Example::

        samples = ScenarioSamples(["3->1"])
        dataset = PatchDataset(case_loader, samples, len(samples), ApplyModalityMaskd("image", fill_value=-1.0))
    """

    def __init__(
        self,
        scenarios: Sequence[str] | str | None = None,
        modalities: Sequence[str] = MODALITIES,
        image_key: str = "image",
        label_key: str = "label",
        available_key: str = "available",
        case_key: str = "case",
        scenario_key: str = "scenario",
    ) -> None:
        self.modalities = tuple(modalities)
        self.scenarios = missing_modality_scenarios(scenarios, self.modalities)
        self.image_key, self.label_key, self.available_key = image_key, label_key, available_key
        self.case_key, self.scenario_key = case_key, scenario_key
        self._unnamed = 0

    def __len__(self) -> int:
        """The number of scenarios: ``samples_per_image`` of the ``PatchDataset``."""
        return len(self.scenarios)

    def __call__(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        cases = decollate_batch(batch, detach=False) if isinstance(batch, Mapping) else None
        if not isinstance(cases, list) or len(cases) != 1:
            count = len(cases) if isinstance(cases, list) else type(batch).__name__
            raise ValueError(f"ScenarioSamples expects batches of one case (batch_size 1), got {count}.")
        case = cases[0]
        name = self._case_name(case)
        image = case.get(self.image_key)
        if not isinstance(image, torch.Tensor) or image.ndim < 3 or image.shape[0] != len(self.modalities):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"ScenarioSamples expects '{self.image_key}' of shape ({len(self.modalities)}, *spatial) per case "
                f"(batch_size 1), got {shape} for case '{name}' (keys {sorted(case)})."
            )
        if self.label_key in case:
            raise ValueError(f"ScenarioSamples stores the truth under '{self.label_key}', which case '{name}' has.")
        if self.available_key in case:
            present = torch.as_tensor(case[self.available_key]).reshape(-1).bool().tolist()
            absent = [m for m, a in zip(self.modalities, present) if not a]
            if absent:
                raise ValueError(f"case '{name}' lacks {absent}; every modality is needed as ground truth.")
        items = []
        for available, missing in self.scenarios:
            item = dict(case)
            item[self.label_key] = image
            item[self.available_key] = torch.tensor([m in available for m in self.modalities])
            item[self.case_key] = name
            item[self.scenario_key] = scenario_name(available, missing)
            items.append(item)
        return items

    def _case_name(self, case: Mapping[str, Any]) -> str:
        for key in (self.case_key, "subject"):
            value = case.get(key)
            if isinstance(value, str) and value:
                return os.path.basename(os.path.normpath(value))
        meta = getattr(case.get(self.image_key), "meta", {})
        files = {m: meta.get(f"{m}_filename_or_obj") for m in self.modalities}
        files = {m: f for m, f in files.items() if isinstance(f, str) and f}
        if files:
            return case_name_from_files(files)
        self._unnamed += 1
        return f"case_{self._unnamed - 1:04d}"
