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
"""Detect an intensity image that is clearly not skull-stripped, and say what to do about it.

The model is trained on skull-stripped brains (BraTS: exactly 0 outside the brain mask). A raw scan with skull,
scalp and a noisy air background gives implausible images without a word. :func:`skull_strip_figures` measures
three figures on one image; :class:`CheckSkullStripped` / :class:`CheckSkullStrippedd` warn (or raise) when one of
them is past its threshold. ``docs/skull_stripping.md`` has the values measured on real and synthetic data.

1. ``background_share``: the share of voxels at the image's constant background value (its minimum, or 0 when more
   voxels are 0), within ``1e-4`` of the intensity range. A skull-stripped volume is 0 all around the brain (BraTS
   and the phantom about 0.8, a stripped brain cropped to its bounding box still about 0.5); a scan as it leaves
   the scanner has Rician noise in the air and almost no voxel at one exact value (below 0.02). Fires below
   ``min_background_share`` (0.2).
2. Shells under the surface of the support (the voxels that are not background, less the faint halo that a spline
   or sinc resampling leaves around a stripped brain): depth layers by distance to the background in mm (the
   outside of the image counting as background), ``max(2 mm, finest voxel size)`` wide, down to 30 mm. Shell 0 is
   the outermost voxel layer (partial volume with the background); each shell is summarised by its median, in
   tissue levels (the median of the support's voxels above the support's mean, background subtracted).

   * ``shell_valley``: the largest dip of a shell below both a shell outside it and a shell inside it. A
     skull-stripped brain has none (at most 0.1: cortex, then white matter, on every contrast); a head has the
     signal void of the skull between the bright scalp fat and the brain (0.3-0.9 at 0.5-4 mm voxels and with
     thick slices). Fires above ``max_shell_valley`` (0.25).
   * ``darkest_shell``: the darkest shell from 8 mm deep on (the edge ramp of a brain stripped on a coarse grid and
     upsampled is shallower). Every such shell of a stripped brain is tissue (at least 0.55, T2 white matter being
     the darkest); under the surface of a head in a zero-filled field of view (e.g. registered to an atlas without
     stripping) they are air (about 0.05). Fires below ``min_darkest_shell`` (0.3).

   The shell figures are not measured (``nan``) on signed images whose background is not their darkest value
   (e.g. z-scored inside the brain with 0 outside), nor when the support is too small.

The figures are measured on a subsampled grid (integer strides to about 2 mm voxels; the voxels are kept, not
averaged, so that a thin dark skull stays dark): about 0.2 s for a 240 x 240 x 155 volume. Run the check on whole
volumes as loaded, before any crop (a patch inside the brain has no background) or intensity scaling.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey, TransformBackends, convert_to_numpy
from scipy import ndimage

__all__ = [
    "SkullStripFigures",
    "SkullStrippingWarning",
    "skull_strip_figures",
    "CheckSkullStripped",
    "CheckSkullStrippedd",
    "CheckSkullStrippedD",
    "CheckSkullStrippedDict",
]

logger = logging.getLogger(__name__)

_MODES = ("warn", "raise", "ignore")
_GRID_MM = 2.0  # the figures are measured on a grid of about this voxel size (integer strides)
_SHELL_MM = 2.0  # the narrowest shell (a shell is at least one voxel of the finest axis)
_DEPTH_MM = 30.0  # shells down to this depth: scalp + skull + CSF is at most about 20 mm
_DARK_FROM_MM = 8.0  # darkest_shell: shells from this depth on (an upsampled brain's edge ramp is shallower)
_BACKGROUND_TOL = 1e-4  # relative to the intensity range (min to 99th percentile)
_BELOW_TOL = 0.1  # a support voxel below background - 0.1 x tissue level is "below the background"
_MAX_BELOW_SHARE = 0.01  # more such voxels: the image is signed, the shell figures are not measured
_HALO_TOL = 0.01  # relative to the tissue level: fainter voxels are background for the shell figures
_HALO_VOXELS = 2  # ... and within this many voxels of the background
_MIN_SUPPORT = 64  # voxels of the subsampled support needed for the shell figures

DEFAULT_MIN_BACKGROUND_SHARE = 0.2
DEFAULT_MAX_SHELL_VALLEY = 0.25
DEFAULT_MIN_DARKEST_SHELL = 0.3

_ADVICE = (
    "The model expects skull-stripped brains (as BraTS: 0 outside the brain) and gives implausible images "
    "otherwise: run a skull-stripping tool such as HD-BET, SynthStrip (mri_synthstrip) or FSL BET on every "
    "contrast of the case (or strip one and apply its brain mask to the co-registered others), then give the "
    "stripped images."
)


class SkullStrippingWarning(UserWarning):
    """Warning of :class:`CheckSkullStripped` (``mode="warn"``): the image looks not skull-stripped."""


class SkullStripFigures(NamedTuple):
    """The figures of :func:`skull_strip_figures` (see the module docstring)."""

    background_share: float
    """share of voxels at the constant background value, in [0, 1] (``nan`` for an image without finite voxel)"""
    background_value: float
    """the background value (the image's minimum, or 0)"""
    shell_valley: float
    """largest dip of a shell's median below both an outer and an inner shell, in tissue levels (``nan``: not
    measured)"""
    darkest_shell: float
    """median of the darkest shell from 8 mm deep on, in tissue levels (``nan``: not measured)"""
    shell_profile: tuple[float, ...]
    """median of each shell from the surface inwards (shell 0: the outermost voxel layer), in tissue levels
    (``nan`` for an empty shell)"""
    shell_width_mm: float
    """width of each shell in mm"""


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _as_spacing(spacing: Any, ndim: int | None, caller: str) -> tuple[float, ...] | None:
    """``spacing`` (one number, or one per axis) as ``ndim`` floats (as many as given when ``ndim`` is None)."""
    if spacing is None:
        return None
    if _is_number(spacing):
        values = [spacing] * (ndim or 1)
    else:
        try:
            values = [] if isinstance(spacing, (str, bytes)) else list(spacing)
        except TypeError:
            values = []
        if not values or not all(_is_number(s) for s in values):
            raise ValueError(f"{caller} expects spacing in mm, a number or one per spatial axis, got {spacing!r}.")
    if ndim is not None and len(values) != ndim:
        raise ValueError(f"{caller} expects spacing to be a number or {ndim} numbers (mm), got {spacing!r}.")
    if not all(math.isfinite(float(s)) and float(s) > 0 for s in values):
        raise ValueError(f"{caller} expects spacing in mm, positive and finite, got {spacing!r}.")
    return tuple(float(s) for s in values)


def skull_strip_figures(image: NdarrayOrTensor, spacing: float | Sequence[float] | None = None) -> SkullStripFigures:
    """Measure how skull-stripped one single-channel image looks (see the module docstring for the figures).

    Args:
        image: one channel, 2D ``(H, W)`` or 3D ``(H, W, D)`` spatial array (numpy or torch); singleton axes are
            dropped. Voxels that are not finite are counted as background.
        spacing: voxel size in mm, one number or one per axis of ``image``; ``None``: 1 mm.

    Returns:
        :class:`SkullStripFigures`.

    Example::

        >>> brain = np.zeros((60, 60, 60), np.float32); brain[15:45, 12:48, 18:42] = 100.0
        >>> figures = skull_strip_figures(brain, spacing=2.0)
        >>> round(figures.background_share, 2), figures.shell_valley, figures.darkest_shell
        (0.88, 0.0, 1.0)
    """
    arr = np.asarray(convert_to_numpy(image), dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"skull_strip_figures expects a 2D or 3D image, got shape {tuple(arr.shape)}.")
    sp = np.asarray(_as_spacing(spacing, arr.ndim, "skull_strip_figures") or (1.0,) * arr.ndim, dtype=float)
    keep = [i for i, n in enumerate(arr.shape) if n > 1]
    arr, sp = arr.reshape([arr.shape[i] for i in keep]), sp[keep]
    nan = float("nan")
    finite = np.isfinite(arr)
    if not finite.any():
        return SkullStripFigures(nan, nan, nan, nan, (), nan)

    strides = [max(1, int(math.floor(_GRID_MM / s + 1e-6))) for s in sp]
    v = arr[tuple(slice(None, None, k) for k in strides)]
    v_finite = finite[tuple(slice(None, None, k) for k in strides)]
    spv = sp * strides
    lo = float(v[v_finite].min()) if v_finite.any() else float(arr[finite].min())
    v = np.where(v_finite, v, lo)
    hi = float(np.percentile(v, 99.0))
    tol = _BACKGROUND_TOL * (hi - lo)
    candidates = [lo] + ([0.0] if lo < 0.0 <= hi else [])
    counts = [int(np.count_nonzero(np.abs(v - c) <= tol)) for c in candidates]
    bg_value = candidates[int(np.argmax(counts))]
    support = np.abs(v - bg_value) > tol
    share = 1.0 - float(np.count_nonzero(support)) / support.size
    if np.count_nonzero(support) < _MIN_SUPPORT or v.ndim < 2:
        return SkullStripFigures(share, bg_value, nan, nan, (), nan)

    values = v[support] - bg_value
    above = values[values >= values.mean()]
    tissue = float(np.median(above)) if above.size else 0.0
    if not tissue > 0 or np.count_nonzero(values < -_BELOW_TOL * tissue) > _MAX_BELOW_SHARE * values.size:
        return SkullStripFigures(share, bg_value, nan, nan, (), nan)

    # the shells are measured without the faint halo that a spline or sinc resampling leaves around a stripped
    # brain: voxels within 1 % of the tissue level from the background and at most 2 voxels from it (faint voxels
    # deeper under brighter ones, e.g. bone under the scalp, are kept); depth: distance to the background, the
    # outside of the image counting as background
    near = ndimage.binary_dilation(~support, iterations=_HALO_VOXELS)
    shells = support & ~(near & (np.abs(v - bg_value) <= _HALO_TOL * tissue))
    if np.count_nonzero(shells) < _MIN_SUPPORT:
        return SkullStripFigures(share, bg_value, nan, nan, (), nan)
    values = v[shells] - bg_value
    inner = tuple(slice(1, -1) for _ in range(v.ndim))
    padded = np.pad(shells, 1)
    depth = ndimage.distance_transform_edt(padded, sampling=spv)[inner][shells]
    outermost = (padded & ~ndimage.binary_erosion(padded))[inner][shells]  # face-adjacent to the background
    width = max(_SHELL_MM, float(spv.min()))
    num = 1 + max(2, int(math.ceil(_DEPTH_MM / width)))
    # shell 0: the outermost voxel layer (face-adjacent to the background along any axis: partial volume); shell
    # k >= 1: the other voxels at a depth in (k w, (k + 1) w] (they are all deeper than sqrt(2) w)
    shell = np.where(outermost, 0, np.clip(np.ceil(depth / width).astype(np.int64) - 1, 1, None))
    order = np.argsort(shell, kind="stable")
    bounds = np.searchsorted(shell[order], np.arange(num + 1))
    profile = []
    for k in range(num):
        sel = values[order[bounds[k] : bounds[k + 1]]]
        profile.append(float(np.median(sel)) / tissue if sel.size else nan)
    prof = np.asarray(profile)
    deep = prof[max(1, int(math.ceil(_DARK_FROM_MM / width - 1e-6))) :]  # shells starting >= 8 mm deep
    darkest = float(np.nanmin(deep)) if np.isfinite(deep).any() else nan
    valley = 0.0
    for k in range(1, num - 1):
        outer, deeper = prof[:k], prof[k + 1 :]
        if math.isnan(prof[k]) or not np.isfinite(outer).any() or not np.isfinite(deeper).any():
            continue
        valley = max(valley, min(float(np.nanmax(outer)), float(np.nanmax(deeper))) - float(prof[k]))
    return SkullStripFigures(share, bg_value, valley, darkest, tuple(profile), width)


def _source(img: Any, name: str) -> str:
    filename = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
    return f"{name} file '{filename}'" if isinstance(filename, str) and filename else f"'{name}'"


class CheckSkullStripped(Transform):
    """Warn (or raise) when an intensity image is clearly not skull-stripped; return it unchanged.

    Measures :func:`skull_strip_figures` on each channel and reports a channel whose ``background_share`` is below
    ``min_background_share``, or whose ``shell_valley`` is above ``max_shell_valley``, or whose ``darkest_shell``
    is below ``min_darkest_shell``. The message names the file (the MetaTensor's ``filename_or_obj``) or ``name``,
    the figure and its threshold, and says what to do (skull-strip the images with HD-BET, SynthStrip or FSL BET).
    Put it right after loading, before any crop or intensity scaling.

    Args:
        mode: ``"warn"`` (default: a :class:`SkullStrippingWarning` and a log record on this module's logger),
            ``"raise"`` (``ValueError``) or ``"ignore"`` (no check).
        spacing: voxel size in mm (one number or one per spatial axis); ``None``: the MetaTensor's ``pixdim``,
            1 mm for other arrays.
        min_background_share: threshold of ``background_share``, in [0, 1).
        max_shell_valley: threshold of ``shell_valley``, > 0.
        min_darkest_shell: threshold of ``darkest_shell``, in [0, 1).

    Example::

        >>> raw = torch.rand(1, 40, 40, 30) + 0.1  # noise everywhere: no constant background
        >>> CheckSkullStripped(mode="raise")(raw, name="t1")
        Traceback (most recent call last):
        ...
        ValueError: 't1' looks not skull-stripped: only 0.0 % of its voxels hold one constant background value ...
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        mode: str = "warn",
        spacing: float | Sequence[float] | None = None,
        min_background_share: float = DEFAULT_MIN_BACKGROUND_SHARE,
        max_shell_valley: float = DEFAULT_MAX_SHELL_VALLEY,
        min_darkest_shell: float = DEFAULT_MIN_DARKEST_SHELL,
    ) -> None:
        name = type(self).__name__
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError(f"{name} expects mode in {_MODES}, got {mode!r}.")
        for arg, val, upper in (
            ("min_background_share", min_background_share, 1.0),
            ("max_shell_valley", max_shell_valley, math.inf),
            ("min_darkest_shell", min_darkest_shell, 1.0),
        ):
            number = _is_number(val)
            if arg == "max_shell_valley" and not (number and 0.0 < float(val) < upper):
                raise ValueError(f"{name} expects {arg} to be a finite number > 0, got {val!r}.")
            if arg != "max_shell_valley" and not (number and 0.0 <= float(val) < upper):
                raise ValueError(f"{name} expects {arg} to be a number in [0, 1), got {val!r}.")
        checked = _as_spacing(spacing, None, name)
        self.spacing: float | tuple[float, ...] | None = (
            checked[0] if checked is not None and _is_number(spacing) else checked
        )
        self.mode = mode
        self.min_background_share = float(min_background_share)
        self.max_shell_valley = float(max_shell_valley)
        self.min_darkest_shell = float(min_darkest_shell)

    def problems(self, figures: SkullStripFigures) -> list[str]:
        """The reasons, one per figure past its threshold, why ``figures`` look not skull-stripped (empty: fine)."""
        out = []
        if figures.background_share < self.min_background_share:
            out.append(
                f"only {100 * figures.background_share:.1f} % of its voxels hold one constant background value "
                f"(background share {figures.background_share:.3f} < threshold {self.min_background_share:g}; "
                "skull-stripped brains have 0 all around the brain: about 0.8 in a BraTS volume)"
            )
        if figures.shell_valley > self.max_shell_valley:
            out.append(
                "a dark layer (skull) lies between a brighter outer layer (scalp) and the brain "
                f"(shell valley {figures.shell_valley:.2f} > threshold {self.max_shell_valley:g} tissue levels)"
            )
        if figures.darkest_shell < self.min_darkest_shell:
            out.append(
                "a layer under its surface is as dark as air or bone "
                f"(darkest shell {figures.darkest_shell:.2f} < threshold {self.min_darkest_shell:g} tissue levels)"
            )
        return out

    def __call__(self, img: NdarrayOrTensor, name: str = "image") -> NdarrayOrTensor:  # type: ignore[override]
        """Check channel-first ``img`` ``(C, H, W[, D])``; ``name`` (e.g. the modality) is used in the message."""
        if self.mode == "ignore":
            return img
        if len(img.shape) not in (3, 4):
            raise ValueError(
                f"{type(self).__name__} expects a channel-first image (C, H, W[, D]), got shape {tuple(img.shape)}."
            )
        ndim = len(img.shape) - 1
        if self.spacing is not None:
            spacing = _as_spacing(self.spacing, ndim, type(self).__name__)
        elif isinstance(img, MetaTensor):
            spacing = tuple(float(s) for s in np.asarray(convert_to_numpy(img.pixdim), dtype=float)[:ndim])
            if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
                spacing = None
        else:
            spacing = None
        data = convert_to_numpy(img)
        reasons = []
        for c in range(data.shape[0]):
            found = self.problems(skull_strip_figures(data[c], spacing))
            if found:
                prefix = f"channel {c}: " if data.shape[0] > 1 else ""
                reasons.append(prefix + "; ".join(found))
        if not reasons:
            return img
        message = f"{_source(img, name)} looks not skull-stripped: {' | '.join(reasons)}. {_ADVICE}"
        if self.mode == "raise":
            raise ValueError(message)
        logger.warning(message)
        warnings.warn(message, SkullStrippingWarning, stacklevel=2)
        return img


class CheckSkullStrippedd(MapTransform):
    """Dictionary twin of :class:`CheckSkullStripped`: checks each key's image; the message names the key and file.

    Args:
        keys: keys of the intensity images (the contrasts, channel-first).
        mode: ``"warn"`` (default), ``"raise"`` or ``"ignore"``.
        spacing, min_background_share, max_shell_valley, min_darkest_shell: see :class:`CheckSkullStripped`.
        allow_missing_keys: don't raise an exception if a key is missing (an absent modality).

    Example::

        >>> keys = ["t1", "flair"]
        >>> loader = Compose([LoadImaged(keys, ensure_channel_first=True), CheckSkullStrippedd(keys)])
        >>> loader({"t1": "raw_t1.nii.gz", "flair": "raw_flair.nii.gz"})  # doctest: +SKIP
        SkullStrippingWarning: t1 file 'raw_t1.nii.gz' looks not skull-stripped: only 0.4 % of its voxels ...
    """

    backend = CheckSkullStripped.backend

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "warn",
        spacing: float | Sequence[float] | None = None,
        min_background_share: float = DEFAULT_MIN_BACKGROUND_SHARE,
        max_shell_valley: float = DEFAULT_MAX_SHELL_VALLEY,
        min_darkest_shell: float = DEFAULT_MIN_DARKEST_SHELL,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckSkullStripped(mode, spacing, min_background_share, max_shell_valley, min_darkest_shell)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key], name=str(key))
        return d


CheckSkullStrippedD = CheckSkullStrippedDict = CheckSkullStrippedd
