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
"""Stack per-modality images into one (M, *spatial) image with an availability mask."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, convert_to_numpy, convert_to_tensor, ensure_tuple

from ..constants import MODALITIES, REGISTRATION_META_KEY
from ..data.validation import grid_mismatch

__all__ = ["StackModalitiesd", "StackModalitiesD", "StackModalitiesDict"]


class StackModalitiesd(MapTransform):
    """Stack single-channel modality images into one (M, *spatial) image, filling absent ones.

    Each present key holds a (1, *spatial) image (after ``EnsureChannelFirstd``). They are concatenated in
    ``keys`` order into ``data[name]``, of shape (M, *spatial) with M = ``len(keys)``; a missing key gives a
    channel equal to ``fill_value``. The (M,) torch bool mask of the present modalities is written to
    ``data[available_key]``.

    The present modalities must be co-registered on the same voxel grid: equal spatial shapes and, for
    MetaTensors, equal affines (within ``atol``), compared by :func:`monai_msgldm.data.validation.grid_mismatch`
    as the case checks do; otherwise a ValueError names both keys (and their files). ``check_keys`` (e.g. the
    segmentation) are checked the same way without being stacked.

    The output is a MetaTensor (when meta tracking is on) carrying a copy of the first present modality's
    meta data (affine, file name...) and ``applied_operations``, so that ``monai.transforms.Invertd`` can
    invert the geometric transforms applied to the stacked image afterwards. The file name of every
    modality is kept in the meta data as ``"<key>_filename_or_obj"`` (empty string for absent ones).

    Args:
        keys: the modality keys, in channel order. Default: :data:`monai_msgldm.constants.MODALITIES`.
        name: key of the stacked image.
        available_key: key of the (M,) bool availability mask.
        fill_value: value of the channels of absent modalities.
        check_keys: other keys (e.g. ``"seg"``) that must share the modalities' grid; checked if present.
        atol: absolute tolerance of the affine comparison.
        allow_missing_keys: allow absent modalities (default True); if False, a missing key raises a KeyError.

    Raises:
        ValueError: no modality present; an image is not single-channel; two images differ in spatial
            shape or affine.

    Example::

        >>> d = {"t1": torch.rand(1, 8, 8, 4), "t2": torch.rand(1, 8, 8, 4), "flair": torch.rand(1, 8, 8, 4)}
        >>> out = StackModalitiesd()(d)
        >>> out["image"].shape, out["available"].tolist()
        (torch.Size([4, 8, 8, 4]), [True, False, True, True])
    """

    def __init__(
        self,
        keys: KeysCollection = MODALITIES,
        name: str = "image",
        available_key: str = "available",
        fill_value: float = 0.0,
        check_keys: KeysCollection = (),
        atol: float = 1e-4,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"StackModalitiesd expects distinct keys, got {self.keys}.")
        if name in self.keys or available_key in self.keys or name == available_key:
            raise ValueError(
                f"StackModalitiesd expects name and available_key distinct from each other and from keys, "
                f"got name='{name}', available_key='{available_key}', keys={self.keys}."
            )
        if atol < 0:
            raise ValueError(f"StackModalitiesd expects atol >= 0, got {atol}.")
        self.name = name
        self.available_key = available_key
        self.fill_value = float(fill_value)
        self.check_keys = ensure_tuple(check_keys)
        self.atol = float(atol)

    def _check_same_grid(self, ref_key: Hashable, ref: Any, key: Hashable, img: Any) -> None:
        problem = grid_mismatch(
            _name(ref_key, ref), ref.shape[1:], _affine(ref), _name(key, img), img.shape[1:], _affine(img), self.atol
        )
        if problem is not None:
            raise ValueError(f"StackModalitiesd expects its images on one voxel grid, got {problem}.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = list(self.key_iterator(d))
        if not present:
            raise ValueError(
                f"StackModalitiesd expects at least one of the keys {list(self.keys)} in the data, "
                f"got data keys {list(d)}."
            )
        for key in present:
            shape = tuple(getattr(d[key], "shape", ()))
            if len(shape) < 2 or shape[0] != 1:
                raise ValueError(
                    f"StackModalitiesd expects a single-channel (1, *spatial) image for key '{key}', got shape {shape}."
                )
        ref_key, ref = present[0], d[present[0]]
        for key in present[1:]:
            self._check_same_grid(ref_key, ref, key, d[key])
        for key in self.check_keys:
            if key in d:
                self._check_same_grid(ref_key, ref, key, d[key])

        tensors = {key: convert_to_tensor(d[key], track_meta=False) for key in present}
        device = tensors[ref_key].device
        dtype = tensors[ref_key].dtype
        for t in tensors.values():
            dtype = torch.promote_types(dtype, t.dtype)
        if not float(self.fill_value).is_integer() and not dtype.is_floating_point:
            dtype = torch.promote_types(dtype, torch.get_default_dtype())
        spatial = tuple(ref.shape[1:])
        channels = [
            tensors[key].to(device=device, dtype=dtype)
            if key in tensors
            else torch.full((1, *spatial), self.fill_value, dtype=dtype, device=device)
            for key in self.keys
        ]
        stacked: torch.Tensor = torch.cat(channels, dim=0)

        if get_track_meta():
            if isinstance(ref, MetaTensor):
                meta = deepcopy(ref.meta)
                applied_operations = deepcopy(ref.applied_operations)
            else:
                meta, applied_operations = {}, []
            meta.pop(REGISTRATION_META_KEY, None)
            for key in self.keys:
                src = d.get(key) if key in tensors else None
                filename = src.meta.get(ImageMetaKey.FILENAME_OR_OBJ, "") if isinstance(src, MetaTensor) else ""
                meta[f"{key}_{ImageMetaKey.FILENAME_OR_OBJ}"] = filename
                if isinstance(src, MetaTensor) and REGISTRATION_META_KEY in src.meta:
                    # AlignModalitiesd's record of a resampled contrast (to write outputs on its own grid too)
                    meta[f"{key}_{REGISTRATION_META_KEY}"] = deepcopy(src.meta[REGISTRATION_META_KEY])
            stacked = MetaTensor(stacked, meta=meta, applied_operations=applied_operations)
        d[self.name] = stacked
        d[self.available_key] = torch.tensor([key in tensors for key in self.keys], dtype=torch.bool)
        return d


def _name(key: Hashable, img: Any) -> str:
    """``'t1'``, or ``'t1' ('/d/c_t1.nii.gz')`` for a MetaTensor read from a file."""
    filename = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
    return f"'{key}' ('{filename}')" if isinstance(filename, str) and filename else f"'{key}'"


def _affine(img: Any) -> np.ndarray | None:
    return convert_to_numpy(img.affine) if isinstance(img, MetaTensor) else None


StackModalitiesD = StackModalitiesDict = StackModalitiesd
