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
"""The model's field of view: a brain larger than it is an error (or, on request, a logged centre crop), never a
silent cut."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey, TransformBackends

__all__ = ["CheckFieldOfView", "CheckFieldOfViewd", "CheckFieldOfViewD", "CheckFieldOfViewDict"]

logger = logging.getLogger(__name__)

_MODES = ("raise", "crop")


def _describe(img: Any) -> str:
    """The case's file names from a MetaTensor's meta data (the stacked image keeps each modality's file)."""
    if not isinstance(img, MetaTensor):
        return "the image"
    meta = img.meta
    files = [v for k, v in meta.items() if str(k).endswith("_filename_or_obj") and isinstance(v, str) and v]
    if not files and isinstance(meta.get(ImageMetaKey.FILENAME_OR_OBJ), str):
        files = [meta[ImageMetaKey.FILENAME_OR_OBJ]]
    return f"the case of {files}" if files else "the image"


class CheckFieldOfView(Transform):
    """Check that an image cropped to its brain's bounding box fits the model's in-plane field of view.

    Placed after ``CropForegroundd`` (so the image's extent IS the bounding box of the brain: the union of the given
    contrasts) and before the pad / crop to ``spatial_size``. With ``on_larger="raise"`` a larger brain raises a
    ``ValueError`` naming the case's files and both extents, in voxels and in mm of the working grid. With
    ``on_larger="crop"`` the image is returned unchanged, a warning is logged with the same figures, and the
    following ``CenterSpatialCropd`` cuts the excess symmetrically around the bounding box's centre (those edges of
    the brain are not synthesized: the output is background there).

    Args:
        spatial_size: the model's in-plane field of view in voxels, one per checked axis (``-1`` or ``None``: that
            axis is not checked).
        on_larger: ``"raise"`` (default) or ``"crop"`` (see above).

    Example::

        >>> CheckFieldOfView((4, 4))(torch.zeros(1, 5, 4, 7))
        Traceback (most recent call last):
        ...
        ValueError: ... brain's bounding box is 5 x 4 voxels ... the model's field of view is 4 x 4 voxels ...
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, spatial_size: Sequence[int | None], on_larger: str = "raise") -> None:
        size = tuple(-1 if s is None else s for s in spatial_size)
        if not size or any(
            isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s == 0 or s < -1 for s in size
        ):
            raise ValueError(
                f"CheckFieldOfView expects spatial_size to be positive integers (or -1 / None: not checked), got "
                f"{spatial_size!r}."
            )
        if on_larger not in _MODES:
            raise ValueError(f"CheckFieldOfView expects on_larger in {_MODES}, got {on_larger!r}.")
        self.spatial_size = tuple(int(s) for s in size)
        self.on_larger = on_larger

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:  # type: ignore[override]
        """``img``: ``(C, *spatial)``, already cropped to its foreground; returned unchanged."""
        spatial = tuple(int(s) for s in img.shape[1:])
        if len(spatial) < len(self.spatial_size):
            raise ValueError(
                f"CheckFieldOfView expects an image with at least {len(self.spatial_size)} spatial dims, got shape "
                f"{tuple(img.shape)}."
            )
        checked = [(i, s) for i, s in enumerate(self.spatial_size) if s > 0]
        if all(spatial[i] <= s for i, s in checked):
            return img
        pixdim = np.asarray(img.pixdim if isinstance(img, MetaTensor) else np.ones(len(spatial)), dtype=float)
        box = " x ".join(str(spatial[i]) for i, _ in checked)
        box_mm = " x ".join(f"{spatial[i] * pixdim[i]:.0f}" for i, _ in checked)
        fov = " x ".join(str(s) for _, s in checked)
        fov_mm = " x ".join(f"{s * pixdim[i]:.0f}" for i, s in checked)
        message = (
            f"{_describe(img)}: the brain's bounding box is {box} voxels ({box_mm} mm) on the model's working grid, "
            f"larger than the model's field of view of {fov} voxels ({fov_mm} mm)"
        )
        if self.on_larger == "raise":
            raise ValueError(
                f"{message}. Check that the input is a skull-stripped brain (background exactly 0) in the expected "
                "orientation, or allow a centre crop of the excess with field_of_view='crop'."
            )
        logger.warning("%s; the excess is cropped around the box's centre and not synthesized.", message)
        return img


class CheckFieldOfViewd(MapTransform):
    """Dictionary twin of :class:`CheckFieldOfView` (each key checked, returned unchanged).

    Args:
        keys: keys of the images cropped to their foreground.
        spatial_size: the model's field of view (see :class:`CheckFieldOfView`).
        on_larger: ``"raise"`` or ``"crop"``.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = CheckFieldOfView.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int | None],
        on_larger: str = "raise",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckFieldOfView(spatial_size, on_larger)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key])
        return d


CheckFieldOfViewD = CheckFieldOfViewDict = CheckFieldOfViewd
