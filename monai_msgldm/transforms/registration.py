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
"""Rigid registration of contrasts acquired on different voxel grids (SimpleITK), and their resampling onto the
grid of a reference contrast.

World coordinates: MONAI's MetaTensor affines map voxel indices to RAS+ millimetres (as ``NibabelReader`` and
``ITKReader`` give them); SimpleITK images carry LPS+ geometry (origin, spacing, direction). The two differ by the
sign of the first two world axes, ``diag(-1, -1, 1)``. Every 4 x 4 matrix this module takes or returns is in RAS+
world millimetres.

Transform direction: as in ITK, a registration transform maps points of the *fixed* (reference) world to points of
the *moving* world, ``p_moving = M @ p_fixed``: this is what resampling needs (for each output voxel, where to read
the input).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys, convert_to_numpy

from ..constants import MODALITIES, REGISTRATION_META_KEY
from ..data.validation import grid_mismatch

__all__ = [
    "AlignModalitiesd",
    "AlignModalitiesD",
    "AlignModalitiesDict",
    "REGISTRATION_META_KEY",
    "RigidRegistrationResult",
    "metatensor_to_sitk",
    "resample_onto_grid",
    "resample_to_original_grid",
    "rigid_registration",
    "sitk_to_metatensor",
]

logger = logging.getLogger(__name__)


_FLIP3 = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS
_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])
_INITIALIZATIONS = ("world", "geometry", "moments")
_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


# ----------------------------------------------------------------------------------------------------------- geometry
def _ras_affine(img: Any, affine: Any, caller: str) -> np.ndarray:
    """The (4, 4) float64 RAS affine of ``img``: ``affine`` if given, else the MetaTensor's (LPS meta converted)."""
    if affine is None:
        if not isinstance(img, MetaTensor):
            raise ValueError(f"{caller} expects a MetaTensor (with an affine) or an explicit affine, got {type(img)}.")
        affine = convert_to_numpy(img.affine, dtype=np.float64)
        if str(img.meta.get(MetaKeys.SPACE, SpaceKeys.RAS)) == str(SpaceKeys.LPS):
            affine = _FLIP4 @ affine
    affine = np.asarray(convert_to_numpy(affine), dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{caller} expects a finite (4, 4) affine of a 3D image, got shape {affine.shape}.")
    return affine


def _lps_geometry(affine: np.ndarray, caller: str) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, direction) of SimpleITK from a RAS voxel-to-world affine; exact up to rounding."""
    linear = _FLIP3 @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not (spacing > 0).all() or abs(np.linalg.det(linear)) <= 1e-12 * float(np.prod(spacing)):
        raise ValueError(f"{caller} expects a non-singular affine, got\n{affine}.")
    direction = linear / spacing
    origin = _FLIP3 @ affine[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def _ras_affine_of(image: sitk.Image) -> np.ndarray:
    """RAS voxel-to-world affine (4, 4) of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _FLIP3 @ direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = _FLIP3 @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def _spatial_shape(shape: Sequence[int], caller: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{caller} expects a 3D spatial shape of positive sizes, got {shape}.")
    return shape  # type: ignore[return-value]


def _to_sitk_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def metatensor_to_sitk(img: NdarrayOrTensor, affine: NdarrayOrTensor | None = None) -> sitk.Image:
    """Convert a channel-first 3D image with a RAS affine into a SimpleITK image (LPS geometry).

    Voxel ``img[c, i, j, k]`` becomes the pixel of index ``(i, j, k)`` of the SimpleITK image (its numpy view is
    ``(k, j, i)``), so that ``image.TransformIndexToPhysicalPoint((i, j, k))`` is ``diag(-1, -1, 1) @
    (affine @ (i, j, k, 1))[:3]``. Oblique (rotated) and anisotropic affines are converted exactly: spacing =
    column norms of the affine, direction = the normalised columns (sign-flipped to LPS), origin = the flipped
    translation. The voxel values are copied unchanged (bool stored as uint8, float16 as float32).

    Args:
        img: (C, X, Y, Z) MetaTensor, tensor or array. C = 1 gives a scalar image, C > 1 a vector image.
        affine: (4, 4) RAS voxel-to-world matrix; default: the MetaTensor's ``affine`` (an affine its meta marks
            as ``space="LPS"`` is converted to RAS first).

    Returns:
        A 3D ``sitk.Image`` of size (X, Y, Z).

    Raises:
        ValueError: not a (C, X, Y, Z) image; no affine; a singular or non-finite affine.

    Example::

        >>> img = MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0])))
        >>> metatensor_to_sitk(img).GetSpacing(), metatensor_to_sitk(img).GetDirection()[0]
        ((2.0, 2.0, 5.0), -1.0)
    """
    caller = "metatensor_to_sitk"
    if len(img.shape) != 4:
        raise ValueError(f"{caller} expects a channel-first 3D image (C, X, Y, Z), got shape {tuple(img.shape)}.")
    origin, spacing, direction = _lps_geometry(_ras_affine(img, affine, caller), caller)
    array = _to_sitk_dtype(np.asarray(convert_to_numpy(img)))
    if array.shape[0] == 1:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array[0].transpose(2, 1, 0)), isVector=False)
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(3, 2, 1, 0)), isVector=True)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def sitk_to_metatensor(image: sitk.Image, meta: Mapping | None = None) -> MetaTensor:
    """Convert a 3D SimpleITK image (LPS geometry) into a channel-first MetaTensor with a RAS affine.

    The inverse of :func:`metatensor_to_sitk`: pixel index ``(i, j, k)`` becomes voxel ``[c, i, j, k]`` and the
    affine is ``diag(-1, -1, 1, 1) @ [[direction @ diag(spacing), origin], [0, 1]]`` (float64).

    Args:
        image: a 3D scalar or vector ``sitk.Image`` of size (X, Y, Z) with C components.
        meta: meta data to copy onto the result (its ``affine`` is replaced; ``space`` is set to ``"RAS"``).

    Returns:
        A (C, X, Y, Z) MetaTensor of the image's pixel type.

    Raises:
        ValueError: the image is not 3D.

    Example::

        >>> out = sitk_to_metatensor(sitk.Image(4, 5, 6, sitk.sitkFloat32))
        >>> out.shape, out.affine[0, 0].item()
        (torch.Size([1, 4, 5, 6]), -1.0)
    """
    if image.GetDimension() != 3:
        raise ValueError(f"sitk_to_metatensor expects a 3D image, got dimension {image.GetDimension()}.")
    array = sitk.GetArrayFromImage(image)
    array = (
        array.transpose(2, 1, 0)[None] if image.GetNumberOfComponentsPerPixel() == 1 else array.transpose(3, 2, 1, 0)
    )
    out_meta = {k: deepcopy(v) for k, v in (meta or {}).items() if k != MetaKeys.AFFINE}
    out_meta[MetaKeys.SPACE] = SpaceKeys.RAS
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array)), affine=torch.from_numpy(_ras_affine_of(image)), meta=out_meta
    )


def _matrix_to_sitk(matrix: np.ndarray) -> sitk.AffineTransform:
    """A SimpleITK (LPS) affine transform from a (4, 4) RAS matrix."""
    lps = _FLIP4 @ matrix @ _FLIP4
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(lps[:3, :3].ravel().tolist())
    tx.SetTranslation(lps[:3, 3].tolist())
    return tx


def _sitk_to_matrix(transform: sitk.Transform) -> np.ndarray:
    """The (4, 4) RAS matrix of a (composite of) linear SimpleITK transform(s), read from point images."""
    offset = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)), dtype=np.float64)
    lps = np.eye(4)
    for i in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[i] = 1.0
        lps[:3, i] = np.asarray(transform.TransformPoint(unit), dtype=np.float64) - offset
    lps[:3, 3] = offset
    return _FLIP4 @ lps @ _FLIP4


# ------------------------------------------------------------------------------------------------------- registration
@dataclass(frozen=True, eq=False)
class RigidRegistrationResult:
    """What :func:`rigid_registration` found.

    Attributes:
        matrix: (4, 4) float64 rigid transform in RAS world mm mapping *fixed*-world points to *moving*-world points
            (ITK's direction): ``p_moving = matrix @ [p_fixed, 1]``. Its inverse maps the moving image's world onto
            the fixed one.
        rotation_deg: rotation angle of ``matrix`` (about its axis), in degrees, in [0, 180].
        translation_mm: (3,) float64 RAS displacement ``matrix @ c - c`` of the centre ``c`` of the fixed image's
            field of view, in mm (independent of how the transform is parameterised).
        metric: final Mattes mutual information (ITK sign: negative, lower is better; ~0 means no shared
            information).
        iterations: optimiser iterations, summed over the resolution levels.
        stop_condition: the optimiser's stop condition, in SimpleITK's words.
        seconds: wall-clock time of the registration.
    """

    matrix: np.ndarray
    rotation_deg: float
    translation_mm: np.ndarray
    metric: float
    iterations: int
    stop_condition: str
    seconds: float


def _rotation_deg(matrix: np.ndarray) -> float:
    cos = (float(np.trace(matrix[:3, :3])) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _check_registration_args(
    caller: str,
    initialization: str,
    shrink_factors: Sequence[int],
    smoothing_sigmas: Sequence[float],
    num_samples: int,
    num_histogram_bins: int,
    max_iterations: int,
    learning_rate: float,
    seed: int,
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if initialization not in _INITIALIZATIONS:
        raise ValueError(f"{caller} expects initialization in {_INITIALIZATIONS}, got {initialization!r}.")
    shrink = tuple(shrink_factors)
    if not shrink or any(isinstance(s, bool) or int(s) != s or s < 1 for s in shrink):
        raise ValueError(
            f"{caller} expects shrink_factors to be a non-empty sequence of ints >= 1, got {shrink_factors}."
        )
    sigmas = tuple(float(s) for s in smoothing_sigmas)
    if len(sigmas) != len(shrink) or any(not (math.isfinite(s) and s >= 0) for s in sigmas):
        raise ValueError(
            f"{caller} expects smoothing_sigmas to be {len(shrink)} finite values >= 0 (mm, one per level of "
            f"shrink_factors={shrink}), got {smoothing_sigmas}."
        )
    for arg, value, low in (
        ("num_samples", num_samples, 1000),
        ("num_histogram_bins", num_histogram_bins, 4),
        ("max_iterations", max_iterations, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{caller} expects {arg} to be an int >= {low}, got {value!r}.")
    if not (math.isfinite(float(learning_rate)) and learning_rate > 0):
        raise ValueError(f"{caller} expects learning_rate > 0 (mm), got {learning_rate}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 1 <= seed < 2**32:
        raise ValueError(
            f"{caller} expects seed to be an int in [1, 2**32) (SimpleITK reads 0 as 'seed from the clock'), "
            f"got {seed!r}."
        )
    return tuple(int(s) for s in shrink), sigmas


def _as_float_sitk(img: Any, caller: str, name: str) -> sitk.Image:
    if isinstance(img, sitk.Image):
        image = img
    else:
        if len(img.shape) != 4 or img.shape[0] != 1:
            raise ValueError(f"{caller} expects {name} to be a (1, X, Y, Z) image, got shape {tuple(img.shape)}.")
        image = metatensor_to_sitk(img)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{caller} expects {name} to be a 3D scalar image.")
    return sitk.Cast(image, sitk.sitkFloat32)


def rigid_registration(
    fixed: MetaTensor | sitk.Image,
    moving: MetaTensor | sitk.Image,
    initialization: str = "world",
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas: Sequence[float] = (2.0, 1.0, 0.0),
    num_samples: int = 50_000,
    num_histogram_bins: int = 50,
    max_iterations: int = 200,
    learning_rate: float = 1.0,
    seed: int = 42,
) -> RigidRegistrationResult:
    """Rigidly register ``moving`` to ``fixed`` (6 degrees of freedom) by Mattes mutual information in SimpleITK.

    Cross-contrast (T2 or FLAIR to T1...) registration of two images of one head: a ``VersorRigid3DTransform``
    (rotation about the centre of the fixed field of view + translation) optimised by regular-step gradient descent
    (parameter scales from physical shifts, so that ``learning_rate`` is a step of about that many mm) over a
    multi-resolution pyramid (``shrink_factors`` in voxels, Gaussian ``smoothing_sigmas`` in mm). The metric is
    computed on about ``num_samples`` fixed voxels per level drawn at random with ``seed`` (all voxels of a level
    that has fewer), so a call is reproducible for given images and arguments (to rounding: SimpleITK's
    multi-threaded sums).

    Args:
        fixed: the reference image: (1, X, Y, Z) MetaTensor with a RAS affine, or a 3D ``sitk.Image``.
        moving: the image to align, on any grid: (1, X', Y', Z') MetaTensor or ``sitk.Image``.
        initialization: ``"world"``: identity, the images' world (scanner) coordinates taken as they are, right
            for contrasts of one session; ``"geometry"``: translate the centre of the moving field of view onto
            the fixed one; ``"moments"``: align the intensity centres of mass (images of different sessions).
        shrink_factors: per-level shrink factors of the fixed image, coarse to fine.
        smoothing_sigmas: per-level Gaussian sigmas in mm, same length.
        num_samples: metric samples per level, >= 1000. 50 000 is ~0.6 % of a 1 mm brain volume at full
            resolution: on a 1 mm phantom as accurate as sampling 10 % of the voxels (< 0.25 mm), 5 times faster.
            Fewer samples bias the final metric downwards (see ``max_metric`` of :class:`AlignModalitiesd`).
        num_histogram_bins: Mattes histogram bins, >= 4.
        max_iterations: maximum optimiser iterations per level, >= 1.
        learning_rate: initial step of the optimiser (about mm), > 0.
        seed: seed of the metric sampling, an int in [1, 2**32).

    Returns:
        A :class:`RigidRegistrationResult`; its ``matrix`` maps fixed-world points (RAS mm) to moving-world points.

    Raises:
        ValueError: an invalid argument or image.
        RuntimeError: SimpleITK failed (e.g. "All samples map outside moving image buffer": no overlap).

    Example::

        >>> result = rigid_registration(t1, t2)  # doctest: +SKIP
        >>> result.rotation_deg, result.translation_mm  # doctest: +SKIP
        (7.02, array([ 3.9, -3.1,  2.0]))
    """
    caller = "rigid_registration"
    shrink, sigmas = _check_registration_args(
        caller,
        initialization,
        shrink_factors,
        smoothing_sigmas,
        num_samples,
        num_histogram_bins,
        max_iterations,
        learning_rate,
        seed,
    )
    start = time.perf_counter()
    fixed_image = _as_float_sitk(fixed, caller, "fixed")
    moving_image = _as_float_sitk(moving, caller, "moving")
    centre = fixed_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed_image.GetSize()])
    if initialization == "world":
        initial = sitk.VersorRigid3DTransform()
        initial.SetCenter(centre)
    else:
        mode = (
            sitk.CenteredTransformInitializerFilter.GEOMETRY
            if initialization == "geometry"
            else sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        initial = sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.VersorRigid3DTransform(), mode)

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(num_histogram_bins))
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    size = fixed_image.GetSize()
    percentages = [min(1.0, num_samples / float(np.prod([max(1, n // f) for n in size]))) for f in shrink]
    reg.SetMetricSamplingPercentagePerLevel(percentages, int(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(learning_rate),
        minStep=1e-3 * float(learning_rate),
        numberOfIterations=int(max_iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    iterations = [0]

    def _count() -> None:
        iterations[0] += 1

    reg.AddCommand(sitk.sitkIterationEvent, _count)
    transform = reg.Execute(fixed_image, moving_image)

    matrix = _sitk_to_matrix(transform)
    centre_ras = _FLIP3 @ np.asarray(centre, dtype=np.float64)
    return RigidRegistrationResult(
        matrix=matrix,
        rotation_deg=_rotation_deg(matrix),
        translation_mm=matrix[:3, :3] @ centre_ras + matrix[:3, 3] - centre_ras,
        metric=float(reg.GetMetricValue()),
        iterations=int(iterations[0]),
        stop_condition=str(reg.GetOptimizerStopConditionDescription()),
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------------------- resampling
def resample_onto_grid(
    img: NdarrayOrTensor,
    affine: NdarrayOrTensor,
    spatial_shape: Sequence[int],
    transform: NdarrayOrTensor | None = None,
    fill_value: float | None = None,
    mode: str = "linear",
    img_affine: NdarrayOrTensor | None = None,
) -> MetaTensor:
    """Resample a channel-first 3D image onto another voxel grid, by world coordinates and an optional transform.

    Output voxel ``u`` (world point ``p = affine @ u``) takes the value of ``img`` at world point
    ``transform @ p`` (interpolated in ``img``'s own grid), so ``transform`` goes from the output world to the
    input world (the direction :func:`rigid_registration` returns). SimpleITK's ``Resample`` does the work, channel
    by channel.

    Args:
        img: (C, X, Y, Z) MetaTensor (its affine is used), or tensor / array with ``img_affine``.
        affine: (4, 4) RAS affine of the output grid.
        spatial_shape: (X', Y', Z') of the output grid.
        transform: (4, 4) RAS matrix, output world -> input world; None: identity (resampling by world
            coordinates only).
        fill_value: value outside ``img``'s field of view; None: each channel's minimum.
        mode: ``"linear"`` (intensities) or ``"nearest"`` (labels).
        img_affine: (4, 4) RAS affine of ``img``; default: the MetaTensor's.

    Returns:
        (C, X', Y', Z') MetaTensor with affine ``affine`` and a copy of ``img``'s other meta data, float64 for a
        float64 input, float32 otherwise (``"nearest"`` keeps the input dtype), on ``img``'s device.

    Raises:
        ValueError: an invalid argument.

    Example::

        >>> out = resample_onto_grid(t2, t1.affine, t1.shape[1:])  # doctest: +SKIP
        >>> out.shape == t1.shape  # doctest: +SKIP
        True
    """
    caller = "resample_onto_grid"
    if mode not in _INTERPOLATORS:
        raise ValueError(f"{caller} expects mode in {tuple(_INTERPOLATORS)}, got {mode!r}.")
    if len(img.shape) != 4:
        raise ValueError(f"{caller} expects a channel-first 3D image (C, X, Y, Z), got shape {tuple(img.shape)}.")
    src_affine = _ras_affine(img, img_affine, caller)
    out_affine = _ras_affine(None, affine, caller)
    shape = _spatial_shape(spatial_shape, caller)
    matrix = np.eye(4) if transform is None else _ras_affine(None, transform, caller)
    origin, spacing, direction = _lps_geometry(out_affine, caller)
    array = np.asarray(convert_to_numpy(img))
    if mode == "nearest":
        pixel = sitk.sitkUnknown  # keep the input type
    else:
        pixel = sitk.sitkFloat64 if array.dtype == np.float64 else sitk.sitkFloat32
    tx = _matrix_to_sitk(matrix)
    channels = []
    for c in range(array.shape[0]):
        image = metatensor_to_sitk(array[c : c + 1], affine=src_affine)
        default = float(np.min(array[c])) if fill_value is None else float(fill_value)
        out = sitk.Resample(image, shape, tx, _INTERPOLATORS[mode], origin, spacing, direction, default, pixel)
        channels.append(sitk.GetArrayFromImage(out).transpose(2, 1, 0))
    data = torch.from_numpy(np.ascontiguousarray(np.stack(channels)))
    if isinstance(img, torch.Tensor):
        data = data.to(img.device)
    meta = {k: deepcopy(v) for k, v in img.meta.items() if k != MetaKeys.AFFINE} if isinstance(img, MetaTensor) else {}
    meta[MetaKeys.SPACE] = SpaceKeys.RAS
    return MetaTensor(data, affine=torch.from_numpy(out_affine), meta=meta)


def resample_to_original_grid(
    img: NdarrayOrTensor, record: Mapping[str, Any], fill_value: float | None = None, mode: str = "linear"
) -> MetaTensor:
    """Resample an image from the reference grid back onto a contrast's own (original) grid.

    ``record`` is what :class:`AlignModalitiesd` stored under ``meta["registration"]`` of that contrast: the image
    goes through the inverse of the recorded registration transform (reference world -> contrast world) onto the
    contrast's ``original_affine`` / ``original_spatial_shape``. Use it to write a synthesis, made on the
    reference grid, "also on the grid of the given FLAIR": it then overlays that FLAIR file voxel by voxel.

    Args:
        img: (C, X, Y, Z) image. A MetaTensor is placed by its own affine, so it may be on any grid of the
            reference world (e.g. cropped or reoriented after the alignment); a tensor or array must be on the
            reference grid (``record["reference_affine"]``, ``record["reference_spatial_shape"]``).
        record: the registration record of the target contrast (values may be numpy arrays, tensors or lists).
        fill_value: value outside ``img``'s field of view; None: each channel's minimum.
        mode: ``"linear"`` or ``"nearest"``.

    Returns:
        (C, *record["original_spatial_shape"]) MetaTensor with affine ``record["original_affine"]`` (and
        ``spatial_shape`` / ``original_affine`` meta set to them).

    Raises:
        ValueError: a record without the needed entries; a tensor not on the reference grid.

    Example::

        >>> aligned = AlignModalitiesd()(data)  # doctest: +SKIP
        >>> fake_flair = resample_to_original_grid(synthesis, aligned["flair"].meta["registration"])  # doctest: +SKIP
    """
    caller = "resample_to_original_grid"
    needed = ("transform", "original_affine", "original_spatial_shape", "reference_affine", "reference_spatial_shape")
    missing = [k for k in needed if k not in record]
    if missing:
        raise ValueError(f"{caller} expects a registration record of AlignModalitiesd, missing entries {missing}.")

    def _array(value: Any) -> np.ndarray:
        return np.asarray(convert_to_numpy(value), dtype=np.float64)

    transform = _array(record["transform"]).reshape(4, 4)
    original_affine = _array(record["original_affine"]).reshape(4, 4)
    original_shape = _spatial_shape(_array(record["original_spatial_shape"]).ravel().astype(int).tolist(), caller)
    img_affine = None
    if not isinstance(img, MetaTensor):
        ref_shape = tuple(_array(record["reference_spatial_shape"]).ravel().astype(int).tolist())
        if len(img.shape) != 4 or tuple(img.shape[1:]) != ref_shape:
            raise ValueError(
                f"{caller} expects a (C, *{ref_shape}) image on the reference grid (or a MetaTensor with an "
                f"affine), got shape {tuple(img.shape)}."
            )
        img_affine = _array(record["reference_affine"]).reshape(4, 4)
    out = resample_onto_grid(
        img,
        original_affine,
        original_shape,
        transform=np.linalg.inv(transform),
        fill_value=fill_value,
        mode=mode,
        img_affine=img_affine,
    )
    out.meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(original_shape)
    out.meta[MetaKeys.ORIGINAL_AFFINE] = original_affine.copy()
    return out


# ---------------------------------------------------------------------------------------------------------- transform
def _name(key: Hashable, img: Any) -> str:
    """``'t2'``, or ``'t2' ('/d/c_t2.nii.gz')`` for a MetaTensor read from a file."""
    filename = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
    return f"'{key}' ('{filename}')" if isinstance(filename, str) and filename else f"'{key}'"


class AlignModalitiesd(MapTransform):
    """Bring contrasts acquired on different voxel grids onto the grid of a reference contrast, by rigid
    registration (Mattes mutual information, SimpleITK) and linear resampling.

    For data such as a clinic's 1 mm 3D T1, a 0.9 x 0.9 x 5 mm axial FLAIR and a T2 tilted by a few degrees: put
    it between ``LoadImaged`` + ``EnsureChannelFirstd`` and :class:`StackModalitiesd`, which requires one grid.

    The reference is the first key of ``reference`` present in the data. Every other present modality:

    - already on the reference grid (same spatial shape, affines equal within ``atol``, the test of
      :class:`StackModalitiesd`): left untouched, the same object is returned and SimpleITK is not called (BraTS
      data costs nothing);
    - otherwise: registered to the reference with :func:`rigid_registration` (moving = the contrast, fixed = the
      reference), unless ``register=False``, which aligns by the world (scanner) coordinates only; then
      resampled onto the reference grid by :func:`resample_onto_grid` (linear, outside the contrast's field of view
      filled with its minimum; no anti-aliasing, so prefer the finest contrast as reference, as the default
      order does). The result is a (1, *reference spatial shape) float32 MetaTensor with the
      reference's affine, ``spatial_shape``, ``original_affine`` and ``applied_operations``, and the contrast's
      other meta data (file name...), plus a record under ``meta["registration"]``
      (:data:`REGISTRATION_META_KEY`):

      - ``"reference"``: str, the reference key; ``"registered"``: bool, whether the registration transform was
        applied (False with ``register=False`` or after a failure with ``on_failure="warn"``);
      - ``"transform"``: (4, 4) float64 RAS matrix, reference world -> contrast world (identity when not
        registered); ``"rotation_deg"``: float; ``"translation_mm"``: (3,) float64 displacement of the reference
        field-of-view centre; ``"metric"``: float, final Mattes MI (NaN when not registered); ``"iterations"``:
        int; ``"stop_condition"``: str; ``"seconds"``: float, registration + resampling time; ``"failure"``:
        str, the failure message ('' if none);
      - ``"original_affine"``: (4, 4) float64 RAS affine and ``"original_spatial_shape"``: (3,) int64 array of
        the contrast as given; ``"reference_affine"``, ``"reference_spatial_shape"``: the same for the
        reference grid.

      :func:`resample_to_original_grid` uses this record to bring an image from the reference grid back onto the
      contrast's own grid.

    A registration fails when SimpleITK raises, when the rotation exceeds ``max_rotation_deg``, the displacement
    of the reference centre exceeds ``max_translation_mm``, or the final metric is above ``max_metric`` (Mattes MI
    is negative, ~0 for unrelated images). Contrasts of one session differ by head motion of a few degrees and
    millimetres, so a larger transform means a wrong optimum, a wrong file or a wrong header. With
    ``on_failure="raise"`` a ValueError names the contrast, the figures and the remedies; with ``"warn"`` a
    warning does, and the contrast is aligned by world coordinates only.

    Args:
        keys: the modality keys. Default: :data:`monai_msgldm.constants.MODALITIES`.
        reference: the reference key, or keys in order of preference (the first present one is used); must be
            among ``keys``. Default: ``("t1", "t1ce", "t2", "flair")``: T1 is usually the 1 mm 3D acquisition.
        register: register before resampling; False: resample by world coordinates only.
        max_rotation_deg: largest accepted rotation, in (0, 180] degrees.
        max_translation_mm: largest accepted displacement of the reference centre, > 0 mm (``inf``: no bound).
        max_metric: largest (worst) accepted final Mattes MI, or None for no bound. The default -0.05 is set for
            ``num_samples`` >= 50 000 and 50 bins: aligned brain contrasts score about -0.6, pure noise about
            -0.015; with fewer samples the estimate is biased downwards (noise scores -0.10 with 5 000 samples).
        on_failure: ``"raise"`` or ``"warn"``.
        atol: absolute tolerance of the affine comparison for "already on the reference grid" (use the ``atol``
            of :class:`StackModalitiesd`).
        initialization, shrink_factors, smoothing_sigmas, num_samples, num_histogram_bins, max_iterations,
            learning_rate, seed: passed to :func:`rigid_registration`.
        allow_missing_keys: allow absent modalities (default True).

    Raises:
        ValueError: an invalid argument; none of the ``reference`` keys present while another modality is; an
            image that is not (1, X, Y, Z); images on different grids that are not MetaTensors; a failed
            registration with ``on_failure="raise"``.

    Example::

        >>> load = Compose([LoadImaged(MODALITIES, image_only=True, allow_missing_keys=True),
        ...                 EnsureChannelFirstd(MODALITIES, allow_missing_keys=True)])
        >>> d = AlignModalitiesd()(load({"t1": "c_t1.nii.gz", "flair": "c_flair_5mm.nii.gz"}))  # doctest: +SKIP
        >>> d["flair"].shape == d["t1"].shape, d["flair"].meta["registration"]["rotation_deg"]  # doctest: +SKIP
        (True, 2.7)
    """

    def __init__(
        self,
        keys: KeysCollection = MODALITIES,
        reference: str | Sequence[str] = MODALITIES,
        register: bool = True,
        max_rotation_deg: float = 15.0,
        max_translation_mm: float = 25.0,
        max_metric: float | None = -0.05,
        on_failure: str = "raise",
        atol: float = 1e-4,
        initialization: str = "world",
        shrink_factors: Sequence[int] = (4, 2, 1),
        smoothing_sigmas: Sequence[float] = (2.0, 1.0, 0.0),
        num_samples: int = 50_000,
        num_histogram_bins: int = 50,
        max_iterations: int = 200,
        learning_rate: float = 1.0,
        seed: int = 42,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"{name} expects distinct keys, got {self.keys}.")
        refs = (reference,) if isinstance(reference, str) else tuple(reference)
        if not refs or any(r not in self.keys for r in refs):
            raise ValueError(
                f"{name} expects reference to be a key or a non-empty sequence of keys among keys={self.keys}, "
                f"got {reference!r}."
            )
        if not isinstance(register, bool):
            raise ValueError(f"{name} expects register to be a bool, got {register!r}.")
        if not 0.0 < float(max_rotation_deg) <= 180.0:
            raise ValueError(f"{name} expects max_rotation_deg in (0, 180], got {max_rotation_deg}.")
        if not float(max_translation_mm) > 0.0:
            raise ValueError(f"{name} expects max_translation_mm > 0 (inf for no bound), got {max_translation_mm}.")
        if max_metric is not None and not math.isfinite(float(max_metric)):
            raise ValueError(f"{name} expects max_metric to be a finite float or None, got {max_metric}.")
        if on_failure not in ("raise", "warn"):
            raise ValueError(f"{name} expects on_failure in ('raise', 'warn'), got {on_failure!r}.")
        if not float(atol) >= 0.0:
            raise ValueError(f"{name} expects atol >= 0, got {atol}.")
        shrink, sigmas = _check_registration_args(
            name,
            initialization,
            shrink_factors,
            smoothing_sigmas,
            num_samples,
            num_histogram_bins,
            max_iterations,
            learning_rate,
            seed,
        )
        self.reference = refs
        self.register = register
        self.max_rotation_deg = float(max_rotation_deg)
        self.max_translation_mm = float(max_translation_mm)
        self.max_metric = None if max_metric is None else float(max_metric)
        self.on_failure = on_failure
        self.atol = float(atol)
        self.registration_args: dict[str, Any] = {
            "initialization": initialization,
            "shrink_factors": shrink,
            "smoothing_sigmas": sigmas,
            "num_samples": int(num_samples),
            "num_histogram_bins": int(num_histogram_bins),
            "max_iterations": int(max_iterations),
            "learning_rate": float(learning_rate),
            "seed": int(seed),
        }

    def _failure(self, result: RigidRegistrationResult) -> str:
        """Why ``result`` is rejected, or ''."""
        if not np.isfinite(result.matrix).all() or not math.isfinite(result.metric):
            return "the transform or metric is not finite"
        reasons = []
        if result.rotation_deg > self.max_rotation_deg:
            reasons.append(f"rotation {result.rotation_deg:.2f} deg > max_rotation_deg {self.max_rotation_deg:g}")
        shift = float(np.linalg.norm(result.translation_mm))
        if shift > self.max_translation_mm:
            reasons.append(f"translation {shift:.2f} mm > max_translation_mm {self.max_translation_mm:g}")
        if self.max_metric is not None and result.metric > self.max_metric:
            reasons.append(
                f"Mattes mutual information {result.metric:.4f} > max_metric {self.max_metric:g} "
                "(the images share too little information)"
            )
        return "; ".join(reasons)

    def _align(self, key: Hashable, img: MetaTensor, ref_key: Hashable, ref: MetaTensor, cache: dict) -> MetaTensor:
        cls = type(self).__name__
        start = time.perf_counter()
        result: RigidRegistrationResult | None = None
        failure = ""
        if self.register:
            if "fixed" not in cache:
                cache["fixed"] = metatensor_to_sitk(ref)
            try:
                result = rigid_registration(cache["fixed"], img, **self.registration_args)
                failure = self._failure(result)
            except RuntimeError as e:  # SimpleITK's exceptions
                failure = "SimpleITK failed: " + " ".join(str(e).split())[-300:]
            if failure:
                figures = (
                    f" (rotation {result.rotation_deg:.2f} deg, translation "
                    f"{np.round(result.translation_mm, 2).tolist()} mm, Mattes MI {result.metric:.4f}, "
                    f"{result.iterations} iterations, stop: {result.stop_condition})"
                    if result is not None
                    else ""
                )
                message = (
                    f"{cls} could not register {_name(key, img)} (spatial shape {tuple(img.shape[1:])}) to the "
                    f"reference {_name(ref_key, ref)} (spatial shape {tuple(ref.shape[1:])}): {failure}{figures}. "
                    f"Check that the file is the '{key}' contrast of the same subject and session and that its "
                    "header (orientation, voxel sizes) is right; if the head really moved that much, raise "
                    "max_rotation_deg / max_translation_mm (or max_metric); to align by the scanner coordinates "
                    "only, pass register=False, or on_failure='warn' to do so for this contrast with a warning."
                )
                if self.on_failure == "raise":
                    raise ValueError(message)
                warnings.warn(message, stacklevel=2)
                logger.warning(message)
        registered = result is not None and not failure
        matrix = result.matrix if registered else np.eye(4)  # type: ignore[union-attr]

        ref_affine = _ras_affine(ref, None, cls)
        ref_shape = tuple(int(s) for s in ref.shape[1:])
        img_affine = _ras_affine(img, None, cls)
        img_shape = tuple(int(s) for s in img.shape[1:])
        out = resample_onto_grid(img, ref_affine, ref_shape, transform=matrix, fill_value=None, mode="linear")
        out = out.to(torch.float32)
        out.meta[MetaKeys.SPATIAL_SHAPE] = deepcopy(ref.meta.get(MetaKeys.SPATIAL_SHAPE, np.asarray(ref_shape)))
        out.meta[MetaKeys.ORIGINAL_AFFINE] = deepcopy(ref.meta.get(MetaKeys.ORIGINAL_AFFINE, ref.affine))
        if MetaKeys.SPACE in ref.meta:
            out.meta[MetaKeys.SPACE] = deepcopy(ref.meta[MetaKeys.SPACE])
            if str(ref.meta[MetaKeys.SPACE]) == str(SpaceKeys.LPS):
                out.affine = ref.affine.clone()  # keep the reference's own convention
        out.applied_operations = deepcopy(ref.applied_operations)
        seconds = time.perf_counter() - start
        out.meta[REGISTRATION_META_KEY] = {
            "reference": str(ref_key),
            "registered": bool(registered),
            "transform": np.asarray(matrix, dtype=np.float64).copy(),
            "rotation_deg": float(result.rotation_deg) if registered else 0.0,  # type: ignore[union-attr]
            "translation_mm": np.asarray(result.translation_mm if registered else np.zeros(3), dtype=np.float64),  # type: ignore[union-attr]
            "metric": float(result.metric) if registered else float("nan"),  # type: ignore[union-attr]
            "iterations": int(result.iterations) if result is not None else 0,
            "stop_condition": result.stop_condition if result is not None else "not registered",
            "seconds": float(seconds),
            "failure": failure,
            "original_affine": img_affine,
            "original_spatial_shape": np.asarray(img_shape, dtype=np.int64),
            "reference_affine": ref_affine,
            "reference_spatial_shape": np.asarray(ref_shape, dtype=np.int64),
        }
        if registered:
            logger.info(
                "%s: registered %s to %s in %.2f s (%d iterations): rotation %.2f deg, translation %s mm, "
                "Mattes MI %.4f; resampled %s -> %s",
                cls,
                _name(key, img),
                _name(ref_key, ref),
                seconds,
                result.iterations,  # type: ignore[union-attr]
                result.rotation_deg,  # type: ignore[union-attr]
                np.round(result.translation_mm, 2).tolist(),  # type: ignore[union-attr]
                result.metric,  # type: ignore[union-attr]
                img_shape,
                ref_shape,
            )
        else:
            logger.info(
                "%s: resampled %s onto the grid of %s by world coordinates in %.2f s: %s -> %s",
                cls,
                _name(key, img),
                _name(ref_key, ref),
                seconds,
                img_shape,
                ref_shape,
            )
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        cls = type(self).__name__
        present = list(self.key_iterator(d))
        if not present:
            return d
        ref_key = next((k for k in self.reference if k in d), None)
        if ref_key is None:
            raise ValueError(
                f"{cls} expects one of the reference keys {list(self.reference)} in the data, got modalities "
                f"{present}; pass reference=<a present key>."
            )
        for key in present:
            shape = tuple(getattr(d[key], "shape", ()))
            if len(shape) != 4 or shape[0] != 1:
                raise ValueError(f"{cls} expects a single-channel 3D (1, X, Y, Z) image for key '{key}', got {shape}.")
        ref = d[ref_key]
        ref_affine = convert_to_numpy(ref.affine) if isinstance(ref, MetaTensor) else None
        cache: dict = {}
        for key in present:
            if key == ref_key:
                continue
            img = d[key]
            img_affine = convert_to_numpy(img.affine) if isinstance(img, MetaTensor) else None
            problem = grid_mismatch(
                _name(ref_key, ref), ref.shape[1:], ref_affine, _name(key, img), img.shape[1:], img_affine, self.atol
            )
            if problem is None:
                continue
            if not (isinstance(img, MetaTensor) and isinstance(ref, MetaTensor)):
                raise ValueError(
                    f"{cls} expects MetaTensors (with affines) to align images on different grids: {problem}."
                )
            d[key] = self._align(key, img, ref_key, ref, cache)
        return d


AlignModalitiesD = AlignModalitiesDict = AlignModalitiesd
