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
"""Small utilities shared across the package (one place for each thing).

``files`` needs only the standard library; ``availability`` and ``precision`` need torch and are imported on first use, so that
light command-line tools (the data CLI) that only write files do not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .files import atomic_path, atomic_write_bytes, atomic_write_text

_LAZY = {
    "check_availability_shape": "availability",
    "strict_availability_checks": "availability",
    "strict_availability_checks_enabled": "availability",
    "validate_availability": "availability",
    "cpu_has_amx": "precision",
    "sampling_autocast": "precision",
}

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
