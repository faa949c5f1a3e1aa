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
"""Axial slices of 3D volumes for 2D training and evaluation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, MultiSampleTrait, Randomizable, SqueezeDim

__all__ = [
    "RandAxialSliceSamplesd",
    "RandAxialSliceSamplesD",
    "RandAxialSliceSamplesDict",
    "SLICE_INDEX_KEY",
    "axial_slice_indices",
    "extract_axial_slice",
]

#: Meta data key under which the slice index is recorded in the 2D MetaTensors.
SLICE_INDEX_KEY = "slice_index"


def _check_axis(axis: int, name: str) -> int:
    if isinstance(axis, bool) or int(axis) != axis or not -3 <= axis <= 2:
        raise ValueError(f"{name} expects axis to be a spatial axis of a 3D volume in [-3, 2], got {axis}.")
    return int(axis) % 3


def _check_slice_range(slice_range: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if slice_range is None:
        return None
    values = tuple(slice_range)
    if len(values) != 2 or any(isinstance(v, bool) or int(v) != v for v in values):
        raise ValueError(f"{name} expects slice_range to be None or two integers (first, last), got {slice_range}.")
    first, last = int(values[0]), int(values[1])
    if first < 0 or last < first:
        raise ValueError(f"{name} expects slice_range with 0 <= first <= last, got {slice_range}.")
    return first, last


def _check_fraction(fraction: float, name: str) -> float:
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"{name} expects min_foreground_fraction in [0, 1], got {fraction}.")
    return float(fraction)


def _check_volume(image: Any, name: str) -> None:
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 4:
        raise ValueError(
            f"{name} expects a channel-first 3D image (C, *spatial) with 3 spatial dims, got shape {shape}."
        )


def axial_slice_indices(
    image: NdarrayOrTensor,
    slice_range: Sequence[int] | None = None,
    min_foreground_fraction: float = 0.01,
    axis: int = -1,
) -> list[int]:
    """Indices of the slices along ``axis`` that lie in ``slice_range`` and contain enough foreground.

    A voxel is foreground when any channel is above that channel's minimum over the volume (the background
    value, e.g. -1 after scaling to [-1, 1]; an absent modality, constant, never counts). A slice is kept
    when its fraction of foreground pixels is >= ``min_foreground_fraction``.

    Args:
        image: (C, X, Y, Z) numpy array or tensor.
        slice_range: ``(first, last)`` inclusive bounds on the slice index (e.g. ``(18, 137)``, 120 slices,
            as the MSG-LDM authors for BraTS); None: all slices. Bounds past the volume are clipped.
        min_foreground_fraction: the least fraction of foreground pixels in a kept slice, in [0, 1].
        axis: the spatial axis to slice (0, 1, 2 or negative); -1 (the last) is axial after ``RAI`` orientation.

    Returns:
        The sorted list of kept slice indices.

    Raises:
        ValueError: bad arguments, or no slice satisfies the range and foreground fraction.

    Example::

        >>> img = torch.zeros(1, 8, 8, 10)
        >>> img[0, 2:6, 2:6, 3:7] = 1.0
        >>> axial_slice_indices(img, slice_range=(0, 5), min_foreground_fraction=0.1)
        [3, 4, 5]
    """
    name = "axial_slice_indices"
    spatial_axis = _check_axis(axis, name)
    bounds = _check_slice_range(slice_range, name)
    fraction = _check_fraction(min_foreground_fraction, name)
    _check_volume(image, name)
    data = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    channel_min = data.reshape(data.shape[0], -1).amin(dim=1).reshape(-1, 1, 1, 1)
    foreground = (data > channel_min).any(dim=0)
    other_axes = tuple(a for a in range(3) if a != spatial_axis)
    per_slice = foreground.float().mean(dim=other_axes).cpu().numpy()
    num_slices = per_slice.shape[0]
    first, last = (0, num_slices - 1) if bounds is None else (bounds[0], min(bounds[1], num_slices - 1))
    indices = [i for i in range(first, last + 1) if per_slice[i] >= fraction]
    if not indices:
        raise ValueError(
            f"{name} found no slice along axis {axis} within slice_range {slice_range} ({num_slices} slices in the "
            f"volume) with a foreground fraction >= {fraction} (largest fraction in range: "
            f"{float(per_slice[first : last + 1].max()) if last >= first else 'n/a'})."
        )
    return indices


def extract_axial_slice(image: NdarrayOrTensor, index: int, axis: int = -1) -> NdarrayOrTensor:
    """Take slice ``index`` along spatial ``axis`` of a (C, X, Y, Z) image, giving a 2D (C, H, W) image.

    For a MetaTensor, the affine becomes the 3x3 in-plane affine of the slice (MONAI ``SqueezeDim``
    convention) and the index is recorded in the meta data under ``"slice_index"``.

    Args:
        image: (C, X, Y, Z) numpy array or tensor.
        index: slice index along ``axis``.
        axis: spatial axis (0, 1, 2 or negative; -1 is the last).

    Returns:
        (C, H, W) array of the input type, a contiguous copy.

    Example::

        >>> extract_axial_slice(torch.rand(2, 8, 6, 5), 3).shape
        torch.Size([2, 8, 6])
    """
    spatial_axis = _check_axis(axis, "extract_axial_slice")
    _check_volume(image, "extract_axial_slice")
    dim = spatial_axis + 1
    size = int(image.shape[dim])
    if isinstance(index, bool) or int(index) != index or not 0 <= index < size:
        raise ValueError(f"extract_axial_slice expects index in [0, {size - 1}] along axis {axis}, got {index}.")
    index = int(index)
    if not isinstance(image, torch.Tensor):
        return np.ascontiguousarray(np.take(np.asarray(image), index, axis=dim))
    region = [slice(None)] * 4
    region[dim] = slice(index, index + 1)
    out = image[tuple(region)].contiguous().clone()
    if isinstance(image, MetaTensor):
        # move the origin to the slice: the translation gains affine[:3, :3] @ offset
        affine = image.affine.clone()
        offset = torch.zeros(3, dtype=affine.dtype, device=affine.device)
        offset[spatial_axis] = float(index)
        affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ offset
        out.affine = affine
        out = SqueezeDim(dim=dim, update_meta=True)(out)
        out.meta[SLICE_INDEX_KEY] = index
        return out
    return out.squeeze(dim)


class RandAxialSliceSamplesd(Randomizable, MapTransform, MultiSampleTrait):
    """Sample ``num_samples`` random 2D slices of 3D volumes, like ``RandSpatialCropSamplesd`` for slices.

    The candidate slices are those of :func:`axial_slice_indices` on ``data[source_key]``: inside
    ``slice_range`` and with a foreground fraction >= ``min_foreground_fraction``. ``num_samples`` of them
    are drawn uniformly, without replacement when there are enough candidates (with replacement otherwise),
    and every key in ``keys`` (image, seg, ...) is sliced at the same index. Other keys are deep-copied
    into each output item (so leave large 3D arrays out of the data, or in ``keys``).

    Args:
        keys: keys of the (C, X, Y, Z) volumes to slice (they must share the spatial shape of the source).
        source_key: key of the image defining the foreground.
        num_samples: number of 2D items returned per call.
        slice_range: ``(first, last)`` inclusive slice bounds (e.g. ``(18, 137)`` for BraTS); None: all.
        min_foreground_fraction: the least foreground fraction of a candidate slice, in [0, 1].
        axis: the spatial axis to slice; -1 (the last) is axial after ``RAI`` orientation.
        allow_missing_keys: don't raise an exception if a key is missing.

    Returns:
        A list of ``num_samples`` dictionaries with (C, H, W) items for ``keys``.

    Example::

        >>> d = {"image": torch.rand(4, 16, 16, 12), "seg": torch.zeros(3, 16, 16, 12)}
        >>> items = RandAxialSliceSamplesd(["image", "seg"], num_samples=2).set_random_state(0)(d)
        >>> len(items), items[0]["image"].shape
        (2, torch.Size([4, 16, 16]))
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "image",
        num_samples: int = 1,
        slice_range: Sequence[int] | None = None,
        min_foreground_fraction: float = 0.01,
        axis: int = -1,
        allow_missing_keys: bool = False,
    ) -> None:
        name = "RandAxialSliceSamplesd"
        MapTransform.__init__(self, keys, allow_missing_keys)
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"{name} expects num_samples to be an integer >= 1, got {num_samples}.")
        self.source_key = source_key
        self.num_samples = int(num_samples)
        self.slice_range = _check_slice_range(slice_range, name)
        self.min_foreground_fraction = _check_fraction(min_foreground_fraction, name)
        _check_axis(axis, name)
        self.axis = int(axis)
        self._indices: list[int] = []

    def randomize(self, data: Sequence[int]) -> None:
        """Draw ``num_samples`` slice indices among the candidates ``data``."""
        candidates = np.asarray(list(data), dtype=np.int64)
        replace = len(candidates) < self.num_samples
        self._indices = [int(i) for i in self.R.choice(candidates, size=self.num_samples, replace=replace)]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        if self.source_key not in d:
            raise ValueError(
                f"RandAxialSliceSamplesd expects the source image under source_key '{self.source_key}', "
                f"got data keys {list(d)}."
            )
        source = d[self.source_key]
        _check_volume(source, "RandAxialSliceSamplesd")
        keys = list(self.key_iterator(d))
        for key in keys:
            _check_volume(d[key], f"RandAxialSliceSamplesd key '{key}'")
            if tuple(d[key].shape[1:]) != tuple(source.shape[1:]):
                raise ValueError(
                    f"RandAxialSliceSamplesd expects '{self.source_key}' and '{key}' to have the same spatial shape, "
                    f"got {tuple(source.shape[1:])} and {tuple(d[key].shape[1:])}."
                )
        candidates = axial_slice_indices(source, self.slice_range, self.min_foreground_fraction, self.axis)
        self.randomize(candidates)
        others = [key for key in d if key not in keys]
        ret: list[dict[Hashable, Any]] = []
        for index in self._indices:
            item: dict[Hashable, Any] = {key: deepcopy(d[key]) for key in others}
            for key in keys:
                item[key] = extract_axial_slice(d[key], index, self.axis)
            ret.append(item)
        return ret


RandAxialSliceSamplesD = RandAxialSliceSamplesDict = RandAxialSliceSamplesd
