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
"""The case checks: can the files of one case (subject) be stacked into one multi-contrast volume?

This is the one place for them; the datalist tools (:mod:`monai_msgldm.data.datalist` and its command line), the
inference inputs (:func:`monai_msgldm.inferers.check_case_files`, also used by the MONAI Label app), the stacking
transform (:class:`monai_msgldm.transforms.StackModalitiesd`) and the preprocessing
(:class:`monai_msgldm.transforms.CheckImageValuesd`) all call it.

Two levels of checks:

* header checks (cheap, only the NIfTI header is read): the file exists, is a readable NIfTI image, is 3D,
  and every file of the case has the same spatial shape and the same affine (``atol`` 1e-3), see
  :func:`grid_mismatch`;
* content checks (``check_content=True``, every voxel is read): no NaN/Inf voxel, no all-zero modality, and
  label maps hold non-negative integer values only, see :func:`check_voxel_values`. The training and inference
  pipelines run them when they load the voxels anyway (``brats_preprocessing_transforms``), so that each file
  is read once per run; a full ``check_content`` pass is for one-off validation (``monai-msgldm-data datalist``).

Dimensionality: a 3D image is accepted as is; a 4D image whose last dimension is 1 (``(H, W, D, 1)``, as some
converters write) is accepted as the 3D volume ``(H, W, D)`` because MONAI's ``LoadImage`` +
``EnsureChannelFirst`` turn both into the same ``(1, H, W, D)`` array. Anything else (2D, 4D with several
volumes, 5D) is rejected.

This module imports numpy and nibabel only (no torch, no MONAI), so that the data command line starts fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "InvalidCaseError",
    "MissingCaseFileError",
    "check_voxel_values",
    "grid_mismatch",
    "spatial_shape",
    "validate_case",
]


class InvalidCaseError(ValueError):
    """A case (subject) whose files cannot be used; the message names the case and the offending file(s).

    Attributes:
        case_id: identifier of the case, or ``None`` when unknown (e.g. a check inside a transform).
        reason: the problem, without the case prefix.
        paths: the file(s) concerned.
    """

    def __init__(self, case_id: str | None, reason: str, paths: Sequence[str | os.PathLike] = ()) -> None:
        self.case_id = None if case_id is None else str(case_id)
        self.reason = str(reason)
        self.paths = tuple(os.fspath(p) for p in paths)
        super().__init__(self.reason if self.case_id is None else f"case '{self.case_id}': {self.reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # the default pickling passes only the message to __init__
        return type(self), (self.case_id, self.reason, self.paths)


class MissingCaseFileError(InvalidCaseError, FileNotFoundError):
    """An :class:`InvalidCaseError` for a file that does not exist; it is a ``FileNotFoundError`` too."""


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


def grid_mismatch(
    ref_name: str,
    ref_shape: Sequence[int],
    ref_affine: Any,
    name: str,
    shape: Sequence[int],
    affine: Any,
    atol: float = 1e-3,
) -> str | None:
    """Compare the voxel grids of two images: ``None`` when they match, else the difference in words.

    Used on NIfTI headers (:func:`validate_case`) and on loaded images
    (:class:`monai_msgldm.transforms.StackModalitiesd`). The spatial shapes must be equal and the affines equal
    within ``atol`` (absolute, per element); the affines are compared only when both are given.

    Args:
        ref_name: how the messages name the reference image, e.g. ``"t1 file '/d/c_t1.nii.gz'"`` or ``"'t1'"``.
        ref_shape: spatial shape of the reference image.
        ref_affine: its affine (array-like, e.g. 4 x 4), or ``None`` when unknown.
        name: how the messages name the other image.
        shape: spatial shape of the other image.
        affine: its affine, or ``None``.
        atol: absolute tolerance of the affine comparison, >= 0.

    Returns:
        ``None``, or a reason naming both images: ``"spatial shapes differ: <ref_name> has (8, 8, 8), <name> has
        (8, 8, 9)"`` or ``"affines differ (max abs difference 0.5 > atol 0.001): <ref_name> and <name>"``.

    Raises:
        ValueError: when ``atol`` is negative.

    Example:
        >>> grid_mismatch("'t1'", (8, 8, 8), np.eye(4), "'t2'", (8, 8, 9), np.eye(4))
        "spatial shapes differ: 't1' has (8, 8, 8), 't2' has (8, 8, 9)"
    """
    if atol < 0:
        raise ValueError(f"grid_mismatch expects atol >= 0, got {atol}.")
    ref_shape, shape = tuple(int(s) for s in ref_shape), tuple(int(s) for s in shape)
    if shape != ref_shape:
        return f"spatial shapes differ: {ref_name} has {ref_shape}, {name} has {shape}"
    if ref_affine is None or affine is None:
        return None
    ref_affine, affine = np.asarray(ref_affine, dtype=np.float64), np.asarray(affine, dtype=np.float64)
    if ref_affine.shape != affine.shape:
        return f"affines differ (shapes {ref_affine.shape} and {affine.shape}): {ref_name} and {name}"
    if np.allclose(affine, ref_affine, rtol=0.0, atol=atol):
        return None
    finite = np.isfinite(affine).all() and np.isfinite(ref_affine).all()
    diff = float(np.abs(affine - ref_affine).max()) if finite else float("nan")
    return f"affines differ (max abs difference {diff:g} > atol {atol:g}): {ref_name} and {name}"


def check_voxel_values(
    data: Any, key: str, path: str | os.PathLike | None = None, case_id: str | None = None, is_label: bool = False
) -> None:
    """Check the voxel values of one image: real, finite, and not all zero (intensities) or non-negative
    integers (label maps; all zero is accepted, a case without lesion).

    Args:
        data: the voxels, a numpy array (or array-like).
        key: the modality name or label key, used in the messages.
        path: the image's file, used in the messages (``None`` or empty: unknown).
        case_id: the case, used in the messages (``None``: unknown).
        is_label: ``data`` is a label map.

    Raises:
        InvalidCaseError: naming the case (when known), the key and the file: non-real voxel type, NaN/Inf
            voxels (with their counts), an all-zero intensity image, a label map with negative or non-integer
            values.

    Example:
        >>> check_voxel_values(np.array([[0.0, np.nan]]), "t2", "c_t2.nii.gz")
        Traceback (most recent call last):
        ...
        monai_msgldm.data.validation.InvalidCaseError: t2 file 'c_t2.nii.gz' has non-finite voxels (1 NaN, 0 Inf)
    """
    path = os.fspath(path) if path else ""
    what, paths = (f"{key} file '{path}'", [path]) if path else (f"'{key}'", [])
    data = np.asanyarray(data)
    if np.issubdtype(data.dtype, np.complexfloating) or data.dtype.fields is not None:
        raise InvalidCaseError(case_id, f"{what} has a non-real voxel type {data.dtype}", paths)
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int(data.size - finite.sum()) - n_nan
            raise InvalidCaseError(case_id, f"{what} has non-finite voxels ({n_nan} NaN, {n_inf} Inf)", paths)
    if is_label:
        if np.any(data < 0) or (np.issubdtype(data.dtype, np.floating) and np.any(data != np.round(data))):
            raise InvalidCaseError(
                case_id,
                f"{what} is not a label map: expected non-negative integer values, "
                f"got values in [{float(data.min()):g}, {float(data.max()):g}]",
                paths,
            )
    elif not np.any(data):
        raise InvalidCaseError(case_id, f"{what} is empty (all voxels are zero)", paths)


def _load_header(case_id: str, key: str, path: str) -> nib.spatialimages.SpatialImage:
    if not os.path.isfile(path):
        if os.path.exists(path):
            raise InvalidCaseError(case_id, f"{key} file is not a file: expected '{path}'", [path])
        raise MissingCaseFileError(case_id, f"{key} file not found: expected '{path}'", [path])
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


def _read_voxels(case_id: str, key: str, path: str, img: nib.spatialimages.SpatialImage) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # corrupt gzip stream, truncated file...
        msg = str(e).replace("\n", " ")
        raise InvalidCaseError(
            case_id, f"{key} file '{path}': voxel data cannot be read ({type(e).__name__}: {msg})", [path]
        ) from e


def validate_case(
    case_id: str,
    files: Mapping[str, str | os.PathLike],
    check_content: bool = True,
    label_keys: Sequence[str] = ("seg",),
    affine_atol: float = 1e-3,
    same_grid: bool = True,
) -> None:
    """Check that the files of one case exist, are 3D NIfTI images on one grid and hold usable voxels.

    The checks run file by file in the order of ``files``; the first problem raises. Spatial shape and affine
    of every file are compared with those of the first file (:func:`grid_mismatch`) unless ``same_grid=False``
    (contrasts on different grids that the preprocessing registers and resamples,
    :class:`monai_msgldm.transforms.AlignModalitiesd`). Only the header is read unless ``check_content``.

    Only the files given are checked, and nothing requires a full set of contrasts: for an incomplete study (a
    contrast absent, ``build_datalist(..., allow_incomplete=True)``) pass the present files only; the grid check
    then compares the present files with one another.

    Args:
        case_id: identifier of the case, used in the messages.
        files: key (modality name or label key) -> file path, e.g. ``{"t1": ".../X_t1.nii.gz", "seg": ...}``.
            A path that does not exist is reported as the expected file of its key.
        check_content: also read the voxels (:func:`check_voxel_values`): reject NaN/Inf voxels, all-zero
            modalities and label maps (``label_keys``) with negative or non-integer values.
        label_keys: keys holding label maps rather than intensities.
        affine_atol: absolute tolerance when comparing affines.
        same_grid: require every file on the first file's grid (shape and affine).

    Raises:
        MissingCaseFileError: (an ``InvalidCaseError`` and a ``FileNotFoundError``) a file does not exist.
        InvalidCaseError: naming the case and the file(s): unreadable or truncated file, not 3D, shapes or
            affines that differ (both files named), NaN/Inf voxels, empty modality, bad label map.
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
        if ref is None:
            ref = (path, f"{key} file '{path}'", shape, img.affine)
        elif same_grid:
            ref_path, ref_name, ref_shape, ref_affine = ref
            problem = grid_mismatch(
                ref_name, ref_shape, ref_affine, f"{key} file '{path}'", shape, img.affine, affine_atol
            )
            if problem is not None:
                raise InvalidCaseError(case_id, problem, [ref_path, path])
        if check_content:
            check_voxel_values(_read_voxels(case_id, key, path, img), key, path, case_id, is_label=key in label_keys)
