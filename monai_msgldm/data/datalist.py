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
"""MONAI-style JSON datalists for BraTS 2020/2021, BraTS 2023+ and WMH 2017 folder trees.

A datalist is a dictionary::

    {
        "data_root": "/abs/path/to/data",
        "format": "brats2020",
        "modalities": ["t1", "t1ce", "t2", "flair"],
        "labels": ["seg"],
        "split": {"val_ratio": 0.1, "test_ratio": 0.1, "seed": 0},
        "training": [{"subject": "BraTS20_Training_001", "t1": "BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz",
                      ..., "seg": "BraTS20_Training_001/BraTS20_Training_001_seg.nii.gz"}, ...],
        "validation": [...],
        "test": [...],
        "skipped": [{"subject": ..., "reason": ...}],
        "incomplete": [{"subject": ..., "missing": ["t1ce"]}],
    }

with file paths relative to ``data_root`` (``/`` separated), so that
``monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir=data_root)`` returns absolute paths.
Note that ``load_decathlon_datalist`` also joins ``base_dir`` to any other value that names an existing path: as
the subject id is the case folder, ``item["subject"]`` comes back as the absolute case folder (its
``os.path.basename`` is the BraTS id).

``"incomplete"`` lists the accepted cases that lack some contrasts (only with ``allow_incomplete=True``; always
present, empty otherwise): their items have no key for the absent contrasts, which the preprocessing
(:func:`monai_msgldm.transforms.brats_preprocessing_transforms`) turns into channels of -1 with ``available`` False,
and every training loss then counts only the contrasts a case has (see :mod:`monai_msgldm.engines`).

Modality keys are always the canonical names of :data:`monai_msgldm.constants.MODALITIES` (BraTS) or
:data:`monai_msgldm.constants.WMH_MODALITIES` (WMH), whatever the file naming.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from monai_msgldm.constants import BRATS2020_SUFFIXES, BRATS2023_SUFFIXES, MODALITIES, WMH_MODALITIES
from monai_msgldm.data.validation import InvalidCaseError, MissingCaseFileError, validate_case
from monai_msgldm.utils.files import atomic_write_text

__all__ = [
    "DATALIST_FORMATS",
    "split_subjects",
    "find_brats_cases",
    "find_wmh_subjects",
    "detect_datalist_format",
    "build_brats_datalist",
    "build_wmh_datalist",
    "build_datalist",
    "write_datalist",
]

logger = logging.getLogger(__name__)

#: The folder layouts understood by :func:`build_datalist` (besides ``"auto"``).
DATALIST_FORMATS: tuple[str, ...] = ("brats2020", "brats2023", "wmh")

#: naming -> (separator between case id and suffix, suffix map key -> file suffix)
_BRATS_NAMINGS: dict[str, tuple[str, dict[str, str]]] = {
    "brats2020": ("_", BRATS2020_SUFFIXES),
    "brats2023": ("-", BRATS2023_SUFFIXES),
}

#: WMH 2017 file stems (without extension) for our keys.
_WMH_STEMS: dict[str, str] = {"flair": "FLAIR", "t1": "T1", "seg": "wmh"}
_SEG_KEY = "seg"
_NII_RE = re.compile(r"^(?P<stem>.+)\.nii(\.gz)?$", re.IGNORECASE)


def _nifti_stem(name: str) -> str | None:
    """``"X_t1.nii.gz"`` -> ``"X_t1"``; ``None`` for a file that is not ``.nii`` / ``.nii.gz``."""
    m = _NII_RE.match(name)
    return m.group("stem") if m else None


def _list_files(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file())


def _check_data_root(data_root: str | os.PathLike) -> str:
    root = os.path.abspath(os.fspath(data_root))
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise NotADirectoryError(f"data_root '{root}' {what}.")
    return root


def _check_ratio(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"split_subjects expects {name} in [0, 1], got {value!r}.")
    return float(value)


def split_subjects(
    subjects: Sequence[str], val_ratio: float = 0.1, test_ratio: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str], list[str]]:
    """Deterministic subject-level train/validation/test split.

    The subject ids are sorted, permuted with ``numpy.random.RandomState(seed)`` (a stream numpy keeps stable
    across versions), then the first ``round(n * val_ratio)`` go to validation, the next ``round(n * test_ratio)``
    to test and the rest to training (half-way values round up). The result therefore depends only on the set
    of ids and the seed, not on their order; each returned list is sorted.

    Args:
        subjects: unique subject ids.
        val_ratio: fraction of subjects for validation, in [0, 1].
        test_ratio: fraction of subjects for test, in [0, 1]; ``val_ratio + test_ratio`` must be <= 1.
        seed: non-negative integer seed of the permutation.

    Returns:
        ``(train, val, test)`` lists of subject ids, disjoint, covering ``subjects``.

    Raises:
        ValueError: on duplicate ids, ratios outside [0, 1] or summing above 1, or a bad seed.

    Example:
        >>> train, val, test = split_subjects([f"case{i}" for i in range(10)], 0.2, 0.1, seed=0)
        >>> len(train), len(val), len(test)
        (7, 2, 1)
    """
    val_ratio = _check_ratio("val_ratio", val_ratio)
    test_ratio = _check_ratio("test_ratio", test_ratio)
    if val_ratio + test_ratio > 1.0 + 1e-9:
        raise ValueError(
            f"split_subjects expects val_ratio + test_ratio <= 1, got {val_ratio} + {test_ratio} = "
            f"{val_ratio + test_ratio}."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"split_subjects expects seed to be an integer in [0, 2**32), got {seed!r}.")
    ids = [str(s) for s in subjects]
    ordered = sorted(set(ids))
    if len(ordered) != len(ids):
        dup = sorted({s for s in ids if ids.count(s) > 1})
        raise ValueError(f"split_subjects expects unique subject ids, got duplicates {dup}.")
    n = len(ordered)
    n_val = min(n, int(math.floor(n * val_ratio + 0.5)))
    n_test = min(n - n_val, int(math.floor(n * test_ratio + 0.5)))
    perm = np.random.RandomState(int(seed)).permutation(n)
    shuffled = [ordered[i] for i in perm]
    val = sorted(shuffled[:n_val])
    test = sorted(shuffled[n_val : n_val + n_test])
    train = sorted(shuffled[n_val + n_test :])
    return train, val, test


def _brats_case_files(root: str, case: str, naming: str) -> dict[str, list[str]]:
    """Files of one BraTS case folder matching ``<case><sep><suffix>.nii[.gz]``: key -> relative paths."""
    sep, suffixes = _BRATS_NAMINGS[naming]
    wanted = {f"{case}{sep}{suffix}".lower(): key for key, suffix in suffixes.items()}
    found: dict[str, list[str]] = {}
    for name in _list_files(os.path.join(root, case)):
        stem = _nifti_stem(name)
        if stem is not None and stem.lower() in wanted:
            found.setdefault(wanted[stem.lower()], []).append(f"{case}/{name}")
    return found


def find_brats_cases(data_root: str | os.PathLike, naming: str) -> list[str]:
    """Case folders directly under ``data_root`` holding at least one file of the given BraTS naming.

    Args:
        data_root: dataset folder holding one sub-folder per case.
        naming: ``"brats2020"`` (``<case>/<case>_t1.nii.gz``) or ``"brats2023"`` (``<case>/<case>-t1n.nii.gz``).

    Returns:
        sorted case ids (folder names). Folders with no matching file are ignored.
    """
    if naming not in _BRATS_NAMINGS:
        raise ValueError(f"find_brats_cases expects naming in {tuple(_BRATS_NAMINGS)}, got {naming!r}.")
    root = _check_data_root(data_root)
    cases = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and _brats_case_files(root, entry.name, naming):
            cases.append(entry.name)
    return cases


def _wmh_match(folder: str) -> dict[str, list[str]]:
    """Files named FLAIR / T1 / wmh (.nii or .nii.gz, any letter case) in ``folder``: key -> file names."""
    wanted = {stem.lower(): key for key, stem in _WMH_STEMS.items()}
    found: dict[str, list[str]] = {}
    if not os.path.isdir(folder):
        return found
    for name in _list_files(folder):
        stem = _nifti_stem(name)
        if stem is not None and stem.lower() in wanted:
            found.setdefault(wanted[stem.lower()], []).append(name)
    return found


def _wmh_subject_files(root: str, subject: str) -> dict[str, list[str]]:
    """Files of one WMH subject, key -> relative paths, from both layouts (images in ``pre/`` or flat)."""
    folder = os.path.join(root, *subject.split("/"))
    found: dict[str, list[str]] = {}
    for key, names in _wmh_match(os.path.join(folder, "pre")).items():
        if key != _SEG_KEY:  # challenge layout: images in pre/, the mask next to pre/
            found.setdefault(key, []).extend(f"{subject}/pre/{n}" for n in names)
    for key, names in _wmh_match(folder).items():
        found.setdefault(key, []).extend(f"{subject}/{n}" for n in names)
    return found


def find_wmh_subjects(data_root: str | os.PathLike) -> list[str]:
    """WMH subject folders found anywhere under ``data_root``.

    A folder is a subject when it holds ``pre/FLAIR.nii.gz`` or ``pre/T1.nii.gz`` (WMH 2017 challenge layout
    ``<site>/[<scanner>/]<subject>/pre/{FLAIR,T1}.nii.gz`` + ``<subject>/wmh.nii.gz``) or directly one of
    ``FLAIR``, ``T1``, ``wmh`` ``.nii[.gz]`` (flat layout). The search does not descend into a subject folder
    (so the challenge's ``orig/`` folder is never taken for a subject).

    Returns:
        sorted subject ids: the subject folder relative to ``data_root``, ``/`` separated (e.g. ``"Utrecht/0"``).
    """
    root = _check_data_root(data_root)
    subjects: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symbolic link loop
            dirnames[:] = []
            continue
        seen.add(real)
        pre = {k for k in _wmh_match(os.path.join(dirpath, "pre")) if k != _SEG_KEY}
        if pre or _wmh_match(dirpath):
            rel = os.path.relpath(dirpath, root)
            if rel != os.curdir:
                subjects.append(rel.replace(os.sep, "/"))
            dirnames[:] = []
            continue
        dirnames.sort()
    return sorted(subjects)


def _resolve_case(
    root: str,
    case: str,
    found: Mapping[str, list[str]],
    modalities: Sequence[str],
    require_seg: bool,
    expected: Callable[[str], str],
    check_content: bool,
    allow_incomplete: bool,
) -> tuple[dict[str, str], list[str]]:
    """Pick one file per key (error on several, or on none unless an ``allow_incomplete`` contrast) and validate
    the files present; returns the datalist item (no key for an absent contrast) and the absent contrasts."""
    keys = list(modalities) + ([_SEG_KEY] if require_seg else [])
    item: dict[str, str] = {"subject": case}
    files: dict[str, str] = {}
    missing: list[str] = []
    for key in keys:
        matches = sorted(found.get(key, []))
        if len(matches) > 1:
            paths = [os.path.join(root, p) for p in matches]
            raise InvalidCaseError(
                case, f"several files match {key}: " + ", ".join(f"'{p}'" for p in paths) + "; keep one", paths
            )
        if not matches and key != _SEG_KEY:
            missing.append(key)
            continue
        rel = matches[0] if matches else expected(key)  # a missing seg is reported by validate_case
        item[key] = rel
        files[key] = os.path.join(root, *rel.split("/"))
    if missing:
        paths = [os.path.join(root, *expected(k).split("/")) for k in missing]
        listed = ", ".join(f"'{p}'" for p in paths)
        if len(missing) == len(modalities):
            raise MissingCaseFileError(
                case,
                f"no contrast file found: expected at least one of {listed} (allow_incomplete accepts cases that lack "
                "some contrasts, not all)",
                paths,
            )
        if not allow_incomplete:
            what = f"{missing[0]} file" if len(missing) == 1 else f"{', '.join(missing)} files"
            raise MissingCaseFileError(
                case,
                f"{what} not found: expected {listed}; to train on incomplete studies (some contrasts absent), pass "
                "allow_incomplete=True (command line: --allow-incomplete)",
                paths,
            )
    validate_case(case, files, check_content=check_content, label_keys=(_SEG_KEY,))
    return item, missing


def _build(
    fmt: str,
    root: str,
    cases: Sequence[str],
    modalities: Sequence[str],
    find: Callable[[str], Mapping[str, list[str]]],
    expected: Callable[[str, str], str],
    val_ratio: float,
    test_ratio: float,
    seed: int,
    require_seg: bool,
    check_content: bool,
    skip_invalid: bool,
    allow_incomplete: bool = False,
) -> dict[str, Any]:
    split_subjects([], val_ratio, test_ratio, seed)  # validate the split options before the (slow) checks
    if not isinstance(allow_incomplete, (bool, np.bool_)):
        raise ValueError(f"build_datalist expects allow_incomplete to be a bool, got {allow_incomplete!r}.")
    allow_incomplete = bool(allow_incomplete)
    items: dict[str, dict[str, str]] = {}
    skipped: list[dict[str, str]] = []
    incomplete: list[dict[str, Any]] = []
    for case in cases:
        try:
            items[case], missing = _resolve_case(
                root,
                case,
                find(case),
                modalities,
                require_seg,
                lambda k, c=case: expected(c, k),
                check_content,
                allow_incomplete,
            )
        except InvalidCaseError as e:
            if not skip_invalid:
                raise
            warnings.warn(f"skipping {e}", stacklevel=3)
            skipped.append({"subject": case, "reason": e.reason})
            continue
        if missing:
            incomplete.append({"subject": case, "missing": missing})
    if skipped:
        logger.warning("%d of %d %s cases in '%s' were skipped as invalid.", len(skipped), len(cases), fmt, root)
    if not items:
        raise ValueError(f"no valid {fmt} case in data_root '{root}': {len(skipped)} of {len(cases)} were invalid.")
    if incomplete:
        logger.warning(
            "%d of %d %s cases in '%s' lack some contrasts and are kept (allow_incomplete=True): their losses count "
            "only the contrasts they have; e.g. '%s' lacks %s.",
            len(incomplete),
            len(items),
            fmt,
            root,
            incomplete[0]["subject"],
            ", ".join(incomplete[0]["missing"]),
        )
    train, val, test = split_subjects(list(items), val_ratio, test_ratio, seed)
    return {
        "data_root": root,
        "format": fmt,
        "modalities": list(modalities),
        "labels": [_SEG_KEY] if require_seg else [],
        "split": {"val_ratio": float(val_ratio), "test_ratio": float(test_ratio), "seed": int(seed)},
        "training": [items[c] for c in train],
        "validation": [items[c] for c in val],
        "test": [items[c] for c in test],
        "skipped": skipped,
        "incomplete": incomplete,
    }


def _detect_brats_naming(root: str) -> str:
    found = {naming: find_brats_cases(root, naming) for naming in _BRATS_NAMINGS}
    present = [naming for naming, cases in found.items() if cases]
    if len(present) > 1:
        detail = ", ".join(f"{n}: {len(found[n])} cases (e.g. '{found[n][0]}')" for n in present)
        raise ValueError(f"data_root '{root}' holds several BraTS namings ({detail}); pass the naming explicitly.")
    if not present:
        raise ValueError(
            f"no BraTS case found in data_root '{root}': expected sub-folders <case>/<case>_t1.nii.gz (brats2020) "
            f"or <case>/<case>-t1n.nii.gz (brats2023)."
        )
    return present[0]


def detect_datalist_format(data_root: str | os.PathLike) -> str:
    """Detect which of :data:`DATALIST_FORMATS` the files under ``data_root`` follow.

    Raises:
        NotADirectoryError: when ``data_root`` is not a folder.
        ValueError: when nothing is found, or several layouts are found (the message names the folder).
    """
    root = _check_data_root(data_root)
    found = {naming: find_brats_cases(root, naming) for naming in _BRATS_NAMINGS}
    found["wmh"] = find_wmh_subjects(root)
    present = [fmt for fmt in DATALIST_FORMATS if found[fmt]]
    if len(present) > 1:
        detail = ", ".join(f"{f}: {len(found[f])} cases (e.g. '{found[f][0]}')" for f in present)
        raise ValueError(f"data_root '{root}' holds several dataset layouts ({detail}); pass the format explicitly.")
    if not present:
        raise ValueError(
            f"no dataset found in data_root '{root}': expected BraTS case folders (<case>/<case>_t1.nii.gz or "
            f"<case>/<case>-t1n.nii.gz) or WMH subjects (<subject>/pre/FLAIR.nii.gz or <subject>/FLAIR.nii.gz)."
        )
    return present[0]


def _listed_modalities(modalities: Sequence[str] | None, known: Sequence[str], fmt: str) -> tuple[str, ...]:
    """The contrasts a datalist lists: ``modalities`` (checked against the format's ``known`` ones) or ``known``."""
    if modalities is None:
        return tuple(known)
    if isinstance(modalities, str):
        modalities = [modalities]
    names = tuple(modalities)
    unknown = [m for m in names if m not in known]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"the {fmt} format holds the contrasts {list(known)}; modalities must be distinct names among them, "
            f"got {list(names)}" + (f" ({unknown} not in the data)." if unknown else ".")
        )
    return names


def build_brats_datalist(
    data_root: str | os.PathLike,
    naming: str = "auto",
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    require_seg: bool = True,
    check_content: bool = False,
    skip_invalid: bool = False,
    allow_incomplete: bool = False,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Datalist of a BraTS folder ``data_root/<case>/<case>_<suffix>.nii[.gz]`` (2020/2021) or
    ``data_root/<case>/<case>-<suffix>.nii[.gz]`` (2023+), split at subject level.

    Every case folder directly under ``data_root`` that holds at least one file of the naming is a case; it
    must have exactly one file per modality (and one ``seg`` when ``require_seg``); other files and folders are
    ignored. Each case is checked with :func:`~monai_msgldm.data.validation.validate_case` (headers only unless
    ``check_content``).

    Incomplete studies: by default a case lacking a contrast file is invalid (the error names the case, the expected
    file and this option). With ``allow_incomplete=True`` a case that lacks SOME contrasts is accepted: its item has
    no key for them, it is listed under ``"incomplete"`` (``{"subject": ..., "missing": [...]}``) and a warning
    gives the count. Still invalid: a case with no contrast at all, a missing ``seg`` when ``require_seg``, several
    files for one key, and anything wrong with the files present (which must share one grid).

    Args:
        data_root: the dataset folder.
        naming: ``"brats2020"``, ``"brats2023"`` or ``"auto"`` (detected from the file names; error when both
            or none are present).
        val_ratio: fraction of (valid) subjects for validation.
        test_ratio: fraction of (valid) subjects for test.
        seed: seed of the split, see :func:`split_subjects`.
        require_seg: when ``False`` (inference-only lists) segmentations are neither looked for nor listed:
            items have no ``seg`` key.
        check_content: also read every voxel now (NaN/Inf, empty modality, label values, see
            :func:`~monai_msgldm.data.validation.check_voxel_values`): a one-off full validation, as the data
            command line does by default. Off by default: the list is then built from the NIfTI headers only
            (files exist and are readable, 3D, one grid per case), and the voxels are checked where they are
            loaded anyway, by ``brats_preprocessing_transforms`` (``CheckImageValuesd``, ``CheckLabelValuesd``), so
            that a training or inference run reads each file once.
        skip_invalid: skip invalid cases with a warning (listed under ``"skipped"``) instead of raising.
        allow_incomplete: accept cases that lack some (not all) contrasts, see above.
        modalities: the contrasts to list, in channel order (a bundle's ``modalities``): a subset of the
            format's (``t1, t1ce, t2, flair``); the other files are ignored. None: all of them.

    Returns:
        the datalist dictionary described in this module's docstring, keys ``t1, t1ce, t2, flair[, seg]`` (the
        present ones only, with ``allow_incomplete``).

    Raises:
        NotADirectoryError: ``data_root`` is not a folder.
        ValueError: bad options, no case found, ambiguous naming, or no valid case left.
        InvalidCaseError: the first invalid case (missing/duplicate/unreadable/mismatched file), unless
            ``skip_invalid``; a missing file raises ``MissingCaseFileError`` (also a ``FileNotFoundError``).

    Example:
        >>> datalist = build_brats_datalist("MICCAI_BraTS2020_TrainingData", naming="brats2020")
        >>> write_datalist(datalist, "datalist.json")
        >>> partial = build_brats_datalist("clinic_cases", allow_incomplete=True)
        >>> partial["incomplete"]  # e.g. [{"subject": "case007", "missing": ["t1ce"]}]
    """
    root = _check_data_root(data_root)
    if naming == "auto":
        naming = _detect_brats_naming(root)
    if naming not in _BRATS_NAMINGS:
        raise ValueError(f"build_brats_datalist expects naming in {('auto', *_BRATS_NAMINGS)}, got {naming!r}.")
    sep, suffixes = _BRATS_NAMINGS[naming]
    cases = find_brats_cases(root, naming)
    if not cases:
        raise ValueError(
            f"no {naming} case found in data_root '{root}': expected sub-folders <case>/<case>{sep}"
            f"{suffixes['t1']}.nii.gz."
        )
    return _build(
        naming,
        root,
        cases,
        _listed_modalities(modalities, MODALITIES, naming),
        find=lambda case: _brats_case_files(root, case, naming),
        expected=lambda case, key: f"{case}/{case}{sep}{suffixes[key]}.nii.gz",
        val_ratio=val_ratio,
        test_ratio=test_ratio,
        seed=seed,
        require_seg=require_seg,
        check_content=check_content,
        skip_invalid=skip_invalid,
        allow_incomplete=allow_incomplete,
    )


def build_wmh_datalist(
    data_root: str | os.PathLike,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    require_seg: bool = True,
    check_content: bool = False,
    skip_invalid: bool = False,
    allow_incomplete: bool = False,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Datalist of a WMH 2017 challenge folder, split at subject level (across sites).

    Accepted layouts (may be mixed): ``<site>/[<scanner>/]<subject>/pre/{FLAIR,T1}.nii.gz`` with
    ``<subject>/wmh.nii.gz`` (the challenge release), and flat ``<subject>/{FLAIR,T1,wmh}.nii.gz``. Subject ids
    are the subject folders relative to ``data_root`` (e.g. ``"Utrecht/0"``), see :func:`find_wmh_subjects`.
    Keys are ``flair``, ``t1`` (:data:`~monai_msgldm.constants.WMH_MODALITIES`) and ``seg``. A file found both
    in ``pre/`` and in the subject folder is an error naming both.

    Args: as :func:`build_brats_datalist` (without ``naming``).

    Returns:
        the datalist dictionary, ``"format": "wmh"``.

    Example:
        >>> datalist = build_wmh_datalist("WMH/training", val_ratio=0.2, seed=1)
    """
    root = _check_data_root(data_root)
    subjects = find_wmh_subjects(root)
    if not subjects:
        raise ValueError(
            f"no WMH subject found in data_root '{root}': expected <subject>/pre/FLAIR.nii.gz (+ pre/T1.nii.gz, "
            f"wmh.nii.gz) or <subject>/FLAIR.nii.gz (+ T1.nii.gz, wmh.nii.gz)."
        )

    def expected(subject: str, key: str) -> str:
        stem = _WMH_STEMS[key]
        in_pre = key != _SEG_KEY and os.path.isdir(os.path.join(root, *subject.split("/"), "pre"))
        return f"{subject}/pre/{stem}.nii.gz" if in_pre else f"{subject}/{stem}.nii.gz"

    return _build(
        "wmh",
        root,
        subjects,
        _listed_modalities(modalities, WMH_MODALITIES, "wmh"),
        find=lambda subject: _wmh_subject_files(root, subject),
        expected=expected,
        val_ratio=val_ratio,
        test_ratio=test_ratio,
        seed=seed,
        require_seg=require_seg,
        check_content=check_content,
        skip_invalid=skip_invalid,
        allow_incomplete=allow_incomplete,
    )


def build_datalist(
    data_root: str | os.PathLike,
    format: str = "auto",
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    require_seg: bool = True,
    check_content: bool = False,
    skip_invalid: bool = False,
    allow_incomplete: bool = False,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Datalist of a BraTS or WMH folder; ``format`` is one of :data:`DATALIST_FORMATS` or ``"auto"``.

    ``"auto"`` uses :func:`detect_datalist_format` (error naming the folder when nothing or several layouts are
    found). Other arguments: see :func:`build_brats_datalist`.

    Example:
        >>> write_datalist(build_datalist("/data/BraTS2021", seed=0), "/data/BraTS2021/datalist.json")
    """
    if format == "auto":
        format = detect_datalist_format(data_root)
    options = {
        "val_ratio": val_ratio,
        "test_ratio": test_ratio,
        "seed": seed,
        "require_seg": require_seg,
        "check_content": check_content,
        "skip_invalid": skip_invalid,
        "allow_incomplete": allow_incomplete,
        "modalities": modalities,
    }
    if format == "wmh":
        return build_wmh_datalist(data_root, **options)
    if format in _BRATS_NAMINGS:
        return build_brats_datalist(data_root, naming=format, **options)
    raise ValueError(f"build_datalist expects format in {('auto', *DATALIST_FORMATS)}, got {format!r}.")


def write_datalist(datalist: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write a datalist as JSON, atomically (:func:`~monai_msgldm.utils.files.atomic_write_text`).

    Args:
        datalist: the dictionary, with at least a ``"training"`` list.
        path: output ``.json`` file; missing parent folders are created.

    Returns:
        the absolute path written.

    Example:
        >>> write_datalist(build_datalist("/data/BraTS2020"), "datalist.json")
    """
    if not isinstance(datalist, Mapping) or not isinstance(datalist.get("training"), list):
        raise ValueError("write_datalist expects datalist to be a mapping with a 'training' list.")
    out = os.path.abspath(os.fspath(path))
    if os.path.isdir(out):
        raise IsADirectoryError(f"write_datalist expects path to be a file, got the folder '{out}'.")
    return atomic_write_text(out, json.dumps(datalist, indent=4) + "\n")
