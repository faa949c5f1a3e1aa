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
"""Dataset readers (BraTS / WMH datalists with case validation), the phantom datasets (BraTS-like and WMH-like) and
their command line."""

from __future__ import annotations

import importlib
from typing import Any

from .datalist import (
    DATALIST_FORMATS,
    build_brats_datalist,
    build_datalist,
    build_wmh_datalist,
    detect_datalist_format,
    find_brats_cases,
    find_wmh_subjects,
    split_subjects,
    write_datalist,
)
from .validation import (
    InvalidCaseError,
    MissingCaseFileError,
    check_voxel_values,
    grid_mismatch,
    spatial_shape,
    validate_case,
)

__all__ = [
    "DATALIST_FORMATS",
    "InvalidCaseError",
    "MissingCaseFileError",
    "build_brats_datalist",
    "build_datalist",
    "build_wmh_datalist",
    "check_voxel_values",
    "detect_datalist_format",
    "ensure_phantom_dataset",
    "ensure_wmh_phantom_dataset",
    "find_brats_cases",
    "find_wmh_subjects",
    "generate_phantom_dataset",
    "generate_phantom_subject",
    "generate_wmh_phantom_dataset",
    "generate_wmh_phantom_subject",
    "grid_mismatch",
    "spatial_shape",
    "split_subjects",
    "validate_case",
    "write_datalist",
]

# The phantom generator imports MONAI (seconds); load it on first use so that ``python -m monai_msgldm.data``
# and the datalist tools start fast. ``from monai_msgldm.data import generate_phantom_dataset`` works as usual.
_LAZY = {
    name: ".phantom"
    for name in (
        "ensure_phantom_dataset",
        "generate_phantom_dataset",
        "generate_phantom_subject",
        "ensure_wmh_phantom_dataset",
        "generate_wmh_phantom_dataset",
        "generate_wmh_phantom_subject",
    )
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
