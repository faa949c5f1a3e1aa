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
"""Case names of an inference run: taken from the input file names, used to name the output files."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..constants import BRATS2020_SUFFIXES, BRATS2023_SUFFIXES

__all__ = ["CASE_KEY", "case_name_from_files", "is_valid_file_name"]

#: Key of the case name in the data items of an inference run.
CASE_KEY = "case"

_NIFTI_EXTS = (".nii.gz", ".nii")
_VALID_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


def is_valid_file_name(name: Any) -> bool:
    """Whether ``name`` can be used as (part of) an output file name: letters, digits and ``._+-``, not ``.``/``..``.

    Example::

        >>> is_valid_file_name("BraTS20_001"), is_valid_file_name("../x")
        (True, False)
    """
    return isinstance(name, str) and bool(_VALID_NAME.match(name)) and name not in (".", "..")


def _strip_nifti_ext(name: str) -> str:
    for ext in _NIFTI_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def case_name_from_files(files: Mapping[str, str]) -> str:
    """The case name shared by the files of one case.

    ``<case>_<suffix>.nii.gz`` (BraTS 2020) and ``<case>-<suffix>.nii.gz`` (BraTS 2023+) give ``<case>``; files that
    do not agree on a name give the name of their common folder, or else the first file's stem.

    Example::

        >>> case_name_from_files({"t1": "/d/BraTS20_001/BraTS20_001_t1.nii.gz", "t2": "/d/x/BraTS20_001_t2.nii"})
        'BraTS20_001'
    """
    if not files:
        raise ValueError("case_name_from_files expects at least one file, got none.")
    names = set()
    for modality, path in files.items():
        stem = _strip_nifti_ext(os.path.basename(os.fspath(path)))
        name = stem
        for suffix in (BRATS2020_SUFFIXES.get(modality), BRATS2023_SUFFIXES.get(modality), modality):
            if suffix is None:
                continue
            for sep in ("_", "-"):
                if stem.lower().endswith(sep + suffix.lower()) and len(stem) > len(suffix) + 1:
                    name = stem[: -len(suffix) - 1]
                    break
            if name != stem:
                break
        names.add(name)
    if len(names) == 1:
        return names.pop()
    folders = {os.path.dirname(os.path.abspath(os.fspath(p))) for p in files.values()}
    if len(folders) == 1:
        return os.path.basename(folders.pop())
    return _strip_nifti_ext(os.path.basename(os.fspath(next(iter(files.values())))))
