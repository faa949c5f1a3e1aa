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
"""Check the voxels of intensity images where they are loaded: finite and not all zero."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey, TransformBackends, convert_to_numpy

from ..data.validation import check_voxel_values

__all__ = ["CheckImageValues", "CheckImageValuesd", "CheckImageValuesD", "CheckImageValuesDict"]


class CheckImageValues(Transform):
    """Raise an error when an intensity image has NaN/Inf voxels or is all zero; return it unchanged otherwise.

    The content checks of :func:`monai_msgldm.data.validation.check_voxel_values`, run on an image already in
    memory (e.g. right after ``LoadImage``), so that the file is not read a second time to validate it. The
    error (:class:`~monai_msgldm.data.validation.InvalidCaseError`, a ``ValueError``) names the image's file,
    taken from the MetaTensor's ``filename_or_obj``.

    Example::

        >>> CheckImageValues()(torch.tensor([[1.0, float("nan")]]), name="t2")
        Traceback (most recent call last):
        ...
        monai_msgldm.data.validation.InvalidCaseError: 't2' has non-finite voxels (1 NaN, 0 Inf)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor, name: str = "image") -> NdarrayOrTensor:  # type: ignore[override]
        """Check ``img`` (any shape); ``name`` (e.g. the modality) is used in the message."""
        filename = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
        check_voxel_values(convert_to_numpy(img), name, filename if isinstance(filename, str) else None)
        return img


class CheckImageValuesd(MapTransform):
    """Dictionary twin of :class:`CheckImageValues`: checks each key's image, the message names the key and file.

    Label maps are checked by :class:`monai_msgldm.transforms.CheckLabelValuesd` instead (an all-zero label map
    is a case without lesion).

    Args:
        keys: keys of the intensity images.
        allow_missing_keys: don't raise an exception if a key is missing (an absent modality).

    Example::

        >>> loader = Compose([LoadImaged(["t1", "t2"], image_only=True), CheckImageValuesd(["t1", "t2"])])
        >>> loader({"t1": "c_t1.nii.gz", "t2": "c_nan_t2.nii.gz"})  # doctest: +SKIP
        InvalidCaseError: t2 file 'c_nan_t2.nii.gz' has non-finite voxels (1 NaN, 0 Inf)
    """

    backend = CheckImageValues.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckImageValues()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key], name=str(key))
        return d


CheckImageValuesD = CheckImageValuesDict = CheckImageValuesd
