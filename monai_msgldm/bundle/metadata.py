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
"""The bundle metadata's ``network_data_format`` written for a model's contrast set."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["contrast_network_data_format"]

#: how a contrast name is shown in ``channel_def`` (other names: upper case)
_DISPLAY = {"t1ce": "T1CE", "flair": "FLAIR"}


def _display(name: str) -> str:
    return _DISPLAY.get(name, name.upper())


def contrast_network_data_format(
    network_data_format: Mapping[str, Any], modalities: Sequence[str], spatial_size: int | None = None
) -> dict[str, Any]:
    """``network_data_format`` of ``metadata.json`` for a model of the contrast set ``modalities``: the input
    ``image`` and the output ``pred`` get ``num_channels = len(modalities)`` and one ``channel_def`` entry per
    contrast in channel order (``"T1"``, ``"FLAIR"``...); the ``available`` mask gets the same count and
    ``"<name> given"`` entries. With ``spatial_size``, the images' ``spatial_shape`` becomes
    ``[spatial_size, spatial_size]``. Other fields are kept; the input is not modified.

    Args:
        network_data_format: the ``network_data_format`` of a bundle's ``metadata.json``.
        modalities: the contrast names, in channel order (a bundle's ``modalities``).
        spatial_size: the in-plane slice size, or None to keep the shapes.

    Raises:
        ValueError: ``modalities`` is empty or has repeated names, or a field is missing.

    Example::

        >>> fmt = contrast_network_data_format(meta["network_data_format"], ["flair", "t1"])
        >>> fmt["inputs"]["image"]["channel_def"]
        {'0': 'FLAIR', '1': 'T1'}
    """
    names = [str(m) for m in modalities]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"contrast_network_data_format expects distinct contrast names, got {list(modalities)}.")
    out = copy.deepcopy(dict(network_data_format))
    fields = (("inputs", "image", ""), ("inputs", "available", " given"), ("outputs", "pred", ""))
    for group, key, suffix in fields:
        entry = out.get(group, {}).get(key)
        if not isinstance(entry, dict):
            raise ValueError(f"contrast_network_data_format: network_data_format has no '{group}' -> '{key}' entry.")
        entry["num_channels"] = len(names)
        entry["channel_def"] = {str(i): f"{_display(m)}{suffix}" for i, m in enumerate(names)}
        if spatial_size is not None and entry.get("type") == "image":
            entry["spatial_shape"] = [int(spatial_size), int(spatial_size)]
    available = out["inputs"]["available"]
    if "description" in available:
        available["description"] = (
            f"availability mask (B, {len(names)}): True for the given contrasts (at least one), False for the "
            "missing ones to synthesize"
        )
    return out
