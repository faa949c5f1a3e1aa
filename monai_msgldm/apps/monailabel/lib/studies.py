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

Convention: the studies folder holds one NIfTI file per contrast, named ``<study>_<suffix>.nii.gz`` with the BraTS
2020 suffixes (``_t1``, ``_t1ce``, ``_t2``, ``_flair``) or the BraTS 2023 ones (``-t1n``, ``-t1c``, ``-t2w``,
``-t2f``), e.g. ``BraTS20_001_t1.nii.gz`` ... ``BraTS20_001_flair.nii.gz``. MONAI Label lists each file as an
image id (the file name without extension); a request names either the study (``BraTS20_001``) or any of its
images (``BraTS20_001_t2``). Segmentation files (``_seg``) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from monai_msgldm.constants import BRATS2020_SUFFIXES, BRATS2023_SUFFIXES, MODALITIES

__all__ = ["StudyError", "parse_image_id", "resolve_num_samples", "resolve_study", "resolve_targets"]

_PATTERNS = [
    (re.compile(rf"^(?P<study>.+)_(?P<suffix>{'|'.join(BRATS2020_SUFFIXES[m] for m in MODALITIES)})$"), 2020),
    (re.compile(rf"^(?P<study>.+)-(?P<suffix>{'|'.join(BRATS2023_SUFFIXES[m] for m in MODALITIES)})$"), 2023),
]


class StudyError(ValueError):
    """A request names no known study, or a target modality the app does not know; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_image_id(image_id: str) -> tuple[str, str] | None:
    """``(study, modality)`` of an image id such as ``BraTS20_001_t1ce`` or ``BraTS-GLI-00000-000-t2f``; ``None``
    when the id does not end with a known contrast suffix."""
    for pattern, year in _PATTERNS:
        match = pattern.match(image_id)
        if match:
            suffixes = BRATS2020_SUFFIXES if year == 2020 else BRATS2023_SUFFIXES
            modality = next(m for m in MODALITIES if suffixes[m] == match.group("suffix"))
            return match.group("study"), modality
    return None


def resolve_study(image: str, images: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The study named by a request and its contrast files.

    Args:
        image: the request's ``image``: a study name or the id of one of its images.
        images: every image id of the datastore -> its file path.

    Returns:
        ``(study, {modality: path})`` in ``MODALITIES`` order, at least one modality.

    Raises:
        StudyError: (404) no image of that study in the datastore.
    """
    if not isinstance(image, str) or not image:
        raise StudyError("the request names no image: give image=<study> or image=<study>_<modality>.", 400)
    parsed = parse_image_id(image) if image in images else None
    if parsed:
        study = parsed[0]
    elif image in images and re.search(r"[_-]seg$", image):  # the study's segmentation file
        study = image[: -len("_seg")]
    else:
        study = image
    files: dict[str, str] = {}
    for image_id, path in images.items():
        found = parse_image_id(image_id)
        if found and found[0] == study:
            files[found[1]] = path
    if not files:
        raise StudyError(
            f"no study '{study}' in the datastore: expected files named '{study}_<t1|t1ce|t2|flair>.nii.gz' "
            f"(or BraTS 2023 '-t1n/-t1c/-t2w/-t2f').",
            404,
        )
    return study, {m: files[m] for m in MODALITIES if m in files}


def resolve_targets(target: str | Sequence[str] | None, present: Sequence[str]) -> list[str]:
    """The modalities to synthesize: ``target`` (a name, a comma-separated list or a list) or, when it is empty,
    every modality the study lacks. A named target that the study has is synthesized from the others (its file is
    not used as input), which lets one compare the synthesis with the acquired image.

    Raises:
        StudyError: (400) an unknown modality name; nothing to synthesize; no input left.
    """
    if target is None or target == "" or target == []:
        targets = [m for m in MODALITIES if m not in present]
        if not targets:
            raise StudyError(
                f"the study has all of {list(MODALITIES)}: name the modality to synthesize with the 'target' "
                "parameter.",
                400,
            )
    else:
        names = [t.strip() for t in target.split(",")] if isinstance(target, str) else [str(t) for t in target]
        unknown = [t for t in names if t not in MODALITIES]
        if unknown or not names:
            raise StudyError(
                f"unknown target modality {unknown or names}: expected names from {list(MODALITIES)}.", 400
            )
        targets = [m for m in MODALITIES if m in names]
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
