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
"""How the MONAI Label app finds the contrasts of a study in its datastore.

The contrasts are the served bundle's: the list ``modalities`` of its ``configs/inference.json`` (channel order),
the BraTS ``["t1", "t1ce", "t2", "flair"]`` when the key is absent (:func:`bundle_modalities`). The app reads them
once at start and passes them to every function here.

Convention: the studies folder holds one NIfTI file per contrast, named ``<study>_<name>.nii[.gz]`` for each
contrast name (the suffix matched case-insensitively: ``<study>_FLAIR.nii.gz`` works), or, for the BraTS names,
with the BraTS 2023 suffixes (``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``), e.g. ``BraTS20_001_t1.nii.gz`` ...
``BraTS20_001_flair.nii.gz``. MONAI Label lists each file as an image id (the file name without extension); a
request names either the study (``BraTS20_001``) or any of its images (``BraTS20_001_t2``). Segmentation files
(``_seg``) and files of a contrast the bundle does not know are ignored.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from monai_msgldm.constants import BRATS2023_SUFFIXES, MODALITIES

__all__ = [
    "StudyError",
    "bundle_modalities",
    "check_modalities",
    "parse_image_id",
    "resolve_num_samples",
    "resolve_study",
    "resolve_targets",
]

_NAME = re.compile(r"^[a-z0-9]+$")


class StudyError(ValueError):
    """A request names no known study, or a target modality the app does not know; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_modalities(value: Any, source: str = "modalities") -> tuple[str, ...]:
    """``value`` as a contrast set: a non-empty list of distinct lowercase names of letters and digits.

    Args:
        value: the candidate, e.g. the ``modalities`` value of a bundle's ``inference.json``.
        source: what the value comes from, named in the error.

    Raises:
        ValueError: anything else, naming ``source`` and the offending value.

    Example::

        check_modalities(["flair", "t1"])  # ("flair", "t1")
    """
    expected = 'a non-empty list of distinct lowercase names of letters and digits, e.g. ["flair", "t1"]'
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{source}: 'modalities' must be {expected}; got {value!r}.")
    bad = [v for v in value if not isinstance(v, str) or not _NAME.match(v)]
    if bad:
        raise ValueError(f"{source}: 'modalities' must be {expected}; invalid name(s) {bad!r} in {value!r}.")
    repeated = sorted({v for v in value if list(value).count(v) > 1})
    if repeated:
        raise ValueError(f"{source}: 'modalities' must be {expected}; repeated name(s) {repeated!r} in {value!r}.")
    return tuple(value)


def bundle_modalities(bundle_path: str | os.PathLike) -> tuple[str, ...]:
    """The contrast set (channel order) a bundle serves: the ``modalities`` key of its ``configs/inference.json``,
    checked with :func:`check_modalities`; the BraTS ``MODALITIES`` when the key is absent.

    Raises:
        FileNotFoundError: the bundle has no ``configs/inference.json``.
        ValueError: the file is not a JSON object, or its ``modalities`` is not a valid contrast set (the message
            names the file).

    Example::

        bundle_modalities("bundles/brats_mri_msgldm")  # ("t1", "t1ce", "t2", "flair")
    """
    path = os.path.join(os.fspath(bundle_path), "configs", "inference.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(config).__name__}.")
    if "modalities" not in config:
        return MODALITIES
    return check_modalities(config["modalities"], source=path)


@functools.lru_cache(maxsize=16)
def _patterns(modalities: tuple[str, ...]) -> tuple[tuple[re.Pattern[str], dict[str, str]], ...]:
    """Image-id patterns of a contrast set, each with its suffix (lowercase) -> modality: ``_<name>`` for every
    name, then the BraTS 2023 ``-<suffix>`` of the BraTS names in the set."""
    own = {m: m for m in modalities}
    brats2023 = {BRATS2023_SUFFIXES[m]: m for m in modalities if m in MODALITIES}
    out = []
    for sep, suffixes in (("_", own), ("-", brats2023)):
        if suffixes:
            alternatives = "|".join(map(re.escape, suffixes))
            out.append((re.compile(rf"^(?P<study>.+){sep}(?P<suffix>{alternatives})$", re.IGNORECASE), suffixes))
    return tuple(out)


def parse_image_id(image_id: str, modalities: Sequence[str] = MODALITIES) -> tuple[str, str] | None:
    """``(study, modality)`` of an image id such as ``BraTS20_001_t1ce``, ``BraTS20_001_FLAIR`` or
    ``BraTS-GLI-00000-000-t2f``; ``None`` when the id does not end with the suffix of a contrast of ``modalities``
    (the served bundle's contrast set)."""
    for pattern, suffixes in _patterns(tuple(modalities)):
        match = pattern.match(image_id)
        if match:
            return match.group("study"), suffixes[match.group("suffix").lower()]
    return None


def _expected_files(study: str, modalities: Sequence[str]) -> str:
    """The file names a study of this contrast set may have, for the 404 message."""
    text = f"'{study}_<{'|'.join(modalities)}>.nii.gz'"
    brats2023 = [BRATS2023_SUFFIXES[m] for m in modalities if m in MODALITIES]
    return text + (f" (or BraTS 2023 '-{'/-'.join(brats2023)}')" if brats2023 else "")


def resolve_study(
    image: str, images: Mapping[str, str], modalities: Sequence[str] = MODALITIES
) -> tuple[str, dict[str, str]]:
    """The study named by a request and its contrast files.

    Args:
        image: the request's ``image``: a study name or the id of one of its images.
        images: every image id of the datastore -> its file path.
        modalities: the served bundle's contrast set; files of other contrasts are ignored.

    Returns:
        ``(study, {modality: path})`` in ``modalities`` order, at least one modality.

    Raises:
        StudyError: (404) no image of that study in the datastore.
    """
    if not isinstance(image, str) or not image:
        raise StudyError("the request names no image: give image=<study> or image=<study>_<modality>.", 400)
    parsed = parse_image_id(image, modalities) if image in images else None
    if parsed:
        study = parsed[0]
    elif image in images and re.search(r"[_-]seg$", image):  # the study's segmentation file
        study = image[: -len("_seg")]
    else:
        study = image
    files: dict[str, str] = {}
    for image_id, path in images.items():
        found = parse_image_id(image_id, modalities)
        if found and found[0] == study:
            files[found[1]] = path
    if not files:
        raise StudyError(
            f"no study '{study}' in the datastore: expected files named {_expected_files(study, modalities)}.", 404
        )
    return study, {m: files[m] for m in modalities if m in files}


def resolve_targets(
    target: str | Sequence[str] | None, present: Sequence[str], modalities: Sequence[str] = MODALITIES
) -> list[str]:
    """The modalities to synthesize: ``target`` (a name, a comma-separated list or a list) or, when it is empty,
    every modality of ``modalities`` (the served bundle's contrast set) the study lacks. A named target that the
    study has is synthesized from the others (its file is not used as input), which lets one compare the synthesis
    with the acquired image. Targets come back in ``modalities`` order.

    Raises:
        StudyError: (400) a name outside ``modalities``; nothing to synthesize; no input left.
    """
    if target is None or target == "" or target == []:
        targets = [m for m in modalities if m not in present]
        if not targets:
            raise StudyError(
                f"the study has all of {list(modalities)}: name the modality to synthesize with the 'target' "
                "parameter.",
                400,
            )
    else:
        names = [t.strip() for t in target.split(",")] if isinstance(target, str) else [str(t) for t in target]
        unknown = [t for t in names if t not in modalities]
        if unknown or not names:
            raise StudyError(
                f"unknown target modality {unknown or names}: expected names from {list(modalities)}.", 400
            )
        targets = [m for m in modalities if m in names]
    inputs = [m for m in present if m not in targets]
    if not inputs:
        raise StudyError(f"no input contrast left: the study has {list(present)} and the targets are {targets}.", 400)
    return targets


def resolve_num_samples(value: Any) -> int:
    """The request parameter ``num_samples`` (samples averaged per voxel) as an int >= 1.

    Raises:
        StudyError: (400) anything but a whole number >= 1, e.g. ``"two"``, ``0`` or ``True``.
    """
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise StudyError(f"num_samples must be an integer >= 1, got {value!r}.", 400)
    return int(text)
