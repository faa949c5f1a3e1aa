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
"""Checks that the files of one case (subject) can be stacked into one multi-contrast volume.

Two levels of checks:

* header checks (cheap, only the NIfTI header is read): the file exists, is a readable NIfTI image, is 3D,
  and every file of the case has the same spatial shape and the same affine (``atol`` 1e-3);
* content checks (``check_content=True``, every voxel is read): no NaN/Inf voxel, no all-zero modality, and
  label maps hold non-negative integer values only.

Dimensionality: a 3D image is accepted as is; a 4D image whose last dimension is 1 (``(H, W, D, 1)``, as some
converters write) is accepted as the 3D volume ``(H, W, D)`` because MONAI's ``LoadImage`` +
``EnsureChannelFirst`` turn both into the same ``(1, H, W, D)`` array. Anything else (2D, 4D with several
volumes, 5D) is rejected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np

__all__ = ["InvalidCaseError", "validate_case", "spatial_shape"]


class InvalidCaseError(ValueError):
    """A case (subject) whose files cannot be used; the message names the case and the offending file(s).

    Attributes:
        case_id: identifier of the case.
        reason: the problem, without the case prefix.
        paths: the file(s) concerned.
    """

    def __init__(self, case_id: str, reason: str, paths: Sequence[str | os.PathLike] = ()) -> None:
        self.case_id = str(case_id)
        self.reason = str(reason)
        self.paths = tuple(os.fspath(p) for p in paths)
        super().__init__(f"case '{self.case_id}': {self.reason}")


def spatial_shape(shape: Sequence[int]) -> tuple[int, ...] | None:
    """The 3D spatial shape of an image shape, or ``None`` when the image is not a single 3D volume.

    ``(H, W, D)`` and ``(H, W, D, 1)`` give ``(H, W, D)``; every other shape gives ``None``.

    Example:
        >>> spatial_shape((8, 8, 8, 1))
        (8, 8, 8)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        return shape[:3]
    return None


def _load_header(case_id: str, key: str, path: str) -> nib.spatialimages.SpatialImage:
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "not found"
        raise InvalidCaseError(case_id, f"{key} file {what}: expected '{path}'", [path])
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for corrupt/foreign files (ImageFileError, OSError, EOFError...)
        msg = str(e).replace("\n", " ")
        raise InvalidCaseError(
            case_id, f"{key} file '{path}' is not a readable NIfTI image ({type(e).__name__}: {msg})", [path]
        ) from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InvalidCaseError(
            case_id, f"{key} file '{path}' is not a NIfTI image (read as {type(img).__name__})", [path]
        )
    if not path.lower().endswith(".gz"):
        # cheap truncation check for uncompressed files: the voxel block must fit in the file.
        header = img.header
        offset = getattr(img.dataobj, "offset", None)  # the image's header copy has vox_offset reset to 0
        offset = int(header.get_data_offset() if offset is None else offset)
        needed = offset + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
        size = os.path.getsize(path)
        if size < needed:
            raise InvalidCaseError(
                case_id, f"{key} file '{path}' is truncated: {size} bytes, the header needs {needed}", [path]
            )
    return img


def _check_content(case_id: str, key: str, path: str, img: nib.spatialimages.SpatialImage, is_label: bool) -> None:
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # corrupt gzip stream, truncated file...
        msg = str(e).replace("\n", " ")
        raise InvalidCaseError(
            case_id, f"{key} file '{path}': voxel data cannot be read ({type(e).__name__}: {msg})", [path]
        ) from e
    if np.issubdtype(data.dtype, np.complexfloating) or data.dtype.fields is not None:
        raise InvalidCaseError(case_id, f"{key} file '{path}' has a non-real voxel type {data.dtype}", [path])
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int(data.size - finite.sum()) - n_nan
            raise InvalidCaseError(
                case_id, f"{key} file '{path}' has non-finite voxels ({n_nan} NaN, {n_inf} Inf)", [path]
            )
    if is_label:
        if np.any(data < 0) or (np.issubdtype(data.dtype, np.floating) and np.any(data != np.round(data))):
            raise InvalidCaseError(
                case_id,
                f"{key} file '{path}' is not a label map: expected non-negative integer values, "
                f"got values in [{float(data.min()):g}, {float(data.max()):g}]",
                [path],
            )
    elif not np.any(data):
        raise InvalidCaseError(case_id, f"{key} file '{path}' is empty (all voxels are zero)", [path])


def validate_case(
    case_id: str,
    files: Mapping[str, str | os.PathLike],
    check_content: bool = True,
    label_keys: Sequence[str] = ("seg",),
    affine_atol: float = 1e-3,
) -> None:
    """Check that the files of one case exist, are 3D NIfTI images on one grid and hold usable voxels.

    The checks run file by file in the order of ``files``; the first problem raises. Spatial shape and affine
    of every file are compared with those of the first file. Only the header is read unless ``check_content``.

    Args:
        case_id: identifier of the case, used in the messages.
        files: key (modality name or label key) -> file path, e.g. ``{"t1": ".../X_t1.nii.gz", "seg": ...}``.
            A path that does not exist is reported as the expected file of its key.
        check_content: also read the voxels: reject NaN/Inf voxels, all-zero modalities and label maps
            (``label_keys``) with negative or non-integer values. An all-zero label map is accepted (a case
            without lesion).
        label_keys: keys holding label maps rather than intensities.
        affine_atol: absolute tolerance when comparing affines.

    Raises:
        InvalidCaseError: naming the case and the file(s): missing, unreadable or truncated file, not 3D,
            shapes or affines that differ (both files named), NaN/Inf voxels, empty modality, bad label map.
        ValueError: when ``files`` is empty or ``affine_atol`` is negative.

    Example:
        >>> validate_case("BraTS20_Training_001", {"t1": "BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz"})
    """
    if not files:
        raise ValueError(f"validate_case expects a non-empty files mapping for case '{case_id}', got {files!r}.")
    if affine_atol < 0:
        raise ValueError(f"validate_case expects affine_atol >= 0, got {affine_atol}.")
    ref: tuple[str, str, tuple[int, ...], np.ndarray] | None = None
    for key, raw_path in files.items():
        path = os.fspath(raw_path)
        img = _load_header(case_id, key, path)
        shape = spatial_shape(img.shape)
        if shape is None:
            raise InvalidCaseError(
                case_id,
                f"{key} file '{path}' is not a 3D volume: expected shape (H, W, D) or (H, W, D, 1), got {img.shape}",
                [path],
            )
        affine = np.asarray(img.affine, dtype=np.float64)
        if ref is None:
            ref = (key, path, shape, affine)
        else:
            ref_key, ref_path, ref_shape, ref_affine = ref
            if shape != ref_shape:
                raise InvalidCaseError(
                    case_id,
                    f"spatial shapes differ: {ref_key} file '{ref_path}' has {ref_shape}, "
                    f"{key} file '{path}' has {shape}",
                    [ref_path, path],
                )
            if not np.allclose(affine, ref_affine, rtol=0.0, atol=affine_atol):
                diff = float(np.nanmax(np.abs(affine - ref_affine))) if np.isfinite(affine).all() else float("nan")
                raise InvalidCaseError(
                    case_id,
                    f"affines differ (max abs difference {diff:g} > atol {affine_atol:g}): {ref_key} file "
                    f"'{ref_path}' and {key} file '{path}'",
                    [ref_path, path],
                )
        if check_content:
            _check_content(case_id, key, path, img, is_label=key in label_keys)
