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
"""A multi-contrast brain-tumour MRI phantom: the built-in default data of the package.

Anatomy is the MNI ICBM152 2009 template that ships inside ``nilearn`` (T1, grey- and white-matter probability
maps), deformed per subject; tumours (necrotic core, enhancing rim, edema) are added as tissues; the four contrasts
(T1, T1CE, T2, FLAIR) are computed from tissue relaxation values with spin-echo / inversion-recovery signal
equations over partial-volume mixtures, then a bias field and Rician noise are applied. The model is described in
``docs/data.md``.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.util
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.utils import optional_import
from scipy import ndimage
from scipy.spatial.transform import Rotation

from monai_msgldm.constants import BRATS2020_SUFFIXES, BRATS_LABELS_2020, MODALITIES
from monai_msgldm.data.phantom_mr import GADOLINIUM_R1, PHANTOM_TISSUES, gadolinium_t1, phantom_sequence_signal

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = [
    "PHANTOM_TEMPLATE_FILES",
    "PHANTOM_DATASET_FILE",
    "PHANTOM_COMPLETE_MARKER",
    "phantom_template_dir",
    "phantom_subject_seed",
    "phantom_case_id",
    "phantom_cache_dir",
    "generate_phantom_subject",
    "write_phantom_case",
    "generate_phantom_dataset",
    "ensure_phantom_dataset",
]

logger = logging.getLogger(__name__)

#: The template files inside ``nilearn/datasets/data``.
PHANTOM_TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: Parameters of a phantom dataset folder (JSON, at the folder root), written before the cases.
PHANTOM_DATASET_FILE = "phantom_dataset.json"
#: Written last by :func:`ensure_phantom_dataset`: its presence means the folder is complete.
PHANTOM_COMPLETE_MARKER = ".phantom_complete"

_MIN_RESOLUTION, _MAX_RESOLUTION = 1.0, 8.0
_MAX_TUMOURS = 3
_MAX_ATTEMPTS = 10
_GAIN = 1000.0  # signal scale (arbitrary units, like a scanner's receiver gain)
_NORMAL_TISSUES = ("csf", "gm", "wm")
_EDEMA_MIN_FRACTION = 0.35  # a voxel is labelled edema when at least this fraction of it is edematous tissue
_EDEMA_RAMP_MM = 3.0  # the edema boundary is diffuse: its partial-volume ramp is at least this wide
_MODEL_VERSION = 1  # bump when the generated images change for a given seed


def phantom_template_dir() -> Path:
    """Folder of the MNI ICBM152 2009 template files inside the installed ``nilearn`` package (nothing is downloaded).

    Raises:
        ImportError: when nilearn is not installed.
        FileNotFoundError: when a template file is missing from the nilearn installation.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the phantom needs the 'nilearn' package, which ships the MNI ICBM152 2009 template (pip install nilearn)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    for name in PHANTOM_TEMPLATE_FILES.values():
        if not (folder / name).is_file():
            raise FileNotFoundError(f"the phantom needs the template file '{folder / name}' from nilearn; not found.")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# smooth random fields: cubic B-splines over a lattice of random coefficients (in mm, independent of resolution)
# ---------------------------------------------------------------------------------------------------------------


def _bspline3(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline kernel."""
    t = np.abs(t)
    out = np.zeros_like(t)
    near = t < 1.0
    far = (t >= 1.0) & (t < 2.0)
    out[near] = 2.0 / 3.0 - t[near] ** 2 + 0.5 * t[near] ** 3
    out[far] = (2.0 - t[far]) ** 3 / 6.0
    return out


class _SplineField:
    """A smooth random field with ``C`` channels: cubic B-splines with i.i.d. normal coefficients on a knot lattice
    of ``spacing`` mm covering ``extent`` mm, normalised to unit variance at every point."""

    def __init__(self, rng: np.random.Generator, channels: int, spacing: float, extent: Sequence[float]):
        self.spacing = float(spacing)
        self.num_knots = tuple(int(math.ceil(e / spacing)) + 3 for e in extent)
        self.coeffs = rng.standard_normal((channels, *self.num_knots))

    def _weights(self, coords: np.ndarray, axis: int) -> np.ndarray:
        """(P, K) spline weights of the knots (at -spacing, 0, spacing, ...) for coordinates in mm."""
        t = (np.asarray(coords, dtype=np.float64)[:, None] + self.spacing) / self.spacing
        w = _bspline3(t - np.arange(self.num_knots[axis])[None, :])
        return w / np.maximum(np.sqrt((w**2).sum(axis=1, keepdims=True)), 1e-6)

    def on_grid(self, axes: Sequence[np.ndarray]) -> np.ndarray:
        """Field on the regular grid ``axes`` (three 1D coordinate arrays, mm): ``(C, n1, n2, n3)`` float32."""
        w1, w2, w3 = (self._weights(a, i) for i, a in enumerate(axes))
        out = np.tensordot(self.coeffs, w3, axes=([3], [1]))  # C, K1, K2, n3
        out = np.tensordot(out, w2, axes=([2], [1]))  # C, K1, n3, n2
        out = np.tensordot(out, w1, axes=([1], [1]))  # C, n3, n2, n1
        return np.ascontiguousarray(out.transpose(0, 3, 2, 1), dtype=np.float32)

    def at_points(self, points: np.ndarray) -> np.ndarray:
        """Field at points ``(P, 3)`` in mm: ``(C, P)``."""
        w1, w2, w3 = (self._weights(points[:, i], i) for i in range(3))
        return np.einsum("cabk,pa,pb,pk->cp", self.coeffs, w1, w2, w3)


# ---------------------------------------------------------------------------------------------------------------
# the template: loaded once per process, smoothed once per resolution
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    affine: np.ndarray  # template voxel -> world (RAS mm)
    zoom: float  # template voxel size (mm, isotropic)
    shape: tuple[int, int, int]
    fractions: np.ndarray  # (3, X, Y, Z) float32: csf, gm, wm partial-volume fractions
    brain_centre: np.ndarray  # (3,) mm, in the template "mm frame" (voxel index * zoom)
    candidates: np.ndarray  # (P, 3) mm: deep white-matter points where a tumour centre may go
    candidate_depth: np.ndarray  # (P,) mm: distance of each candidate to the brain boundary


@functools.lru_cache(maxsize=1)
def _load_template() -> _Template:
    """Load the MNI ICBM152 2009 maps and derive the CSF fraction and the tumour-centre candidates."""
    folder = phantom_template_dir()
    imgs = {k: nib.load(str(folder / name)) for k, name in PHANTOM_TEMPLATE_FILES.items()}
    affine = imgs["t1"].affine
    shape = imgs["t1"].shape
    for k, img in imgs.items():
        if img.shape != shape or not np.allclose(img.affine, affine):
            raise RuntimeError(f"phantom template '{PHANTOM_TEMPLATE_FILES[k]}' is not on the grid of the T1 template.")
    zooms = np.asarray(imgs["t1"].header.get_zooms()[:3], dtype=float)
    if not np.allclose(zooms, zooms[0]):
        raise RuntimeError(f"phantom template must have isotropic voxels, got {tuple(zooms)}.")
    t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(imgs["gm"].dataobj, dtype=np.float32)
    wm = np.asarray(imgs["wm"].dataobj, dtype=np.float32)
    scale = max(float(gm.max()), float(wm.max()), 1e-6)
    scale = 255.0 if scale > 1.5 else 1.0  # the nilearn copies store probabilities as 0..255
    gm, wm = np.clip(gm / scale, 0, 1), np.clip(wm / scale, 0, 1)
    parenchyma = np.clip(gm + wm, 0, 1)
    # brain mask: the (skull-stripped) template T1 support united with GM+WM > 0.5, closed and hole-filled.
    head = (t1 > 0) | (parenchyma > 0.5)
    ball = ndimage.generate_binary_structure(3, 1)
    mask = head | ndimage.binary_closing(head, structure=ball, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    brain = np.maximum(mask.astype(np.float32), parenchyma)
    csf = np.clip(brain - gm - wm, 0, 1)
    fractions = np.stack([csf, gm, wm]).astype(np.float32)
    zoom = float(zooms[0])
    idx = np.argwhere(mask)
    brain_centre = idx.mean(axis=0) * zoom
    # tumour centres: deep white matter of the cerebrum, on a 2-voxel lattice (fixed, so independent of resolution)
    sub_mask, sub_wm = mask[::2, ::2, ::2], wm[::2, ::2, ::2]
    depth = ndimage.distance_transform_edt(sub_mask, sampling=2 * zoom)
    cand = np.argwhere((sub_wm >= 0.7) & sub_mask)
    world_z = (affine @ np.c_[cand * 2, np.ones(len(cand))].T)[2]
    keep = world_z >= -15.0  # above the tentorium (gliomas are mostly supratentorial)
    cand = cand[keep]
    return _Template(
        affine=np.asarray(affine, dtype=np.float64),
        zoom=zoom,
        shape=tuple(int(s) for s in shape),
        fractions=fractions,
        brain_centre=brain_centre,
        candidates=cand * 2 * zoom,
        candidate_depth=depth[tuple(cand.T)],
    )


@dataclass(frozen=True)
class _Grid:
    resolution: float
    shape: tuple[int, int, int]
    axes: tuple[np.ndarray, np.ndarray, np.ndarray]  # output voxel centres in the template mm frame
    affine: np.ndarray  # output voxel -> world
    fractions: np.ndarray  # template fractions (1 mm grid) smoothed to the output voxel size


@functools.lru_cache(maxsize=2)
def _template_grid(resolution: float) -> _Grid:
    """Output grid at ``resolution`` mm and the template fractions low-pass filtered for it."""
    tpl = _load_template()
    z = tpl.zoom
    shape = tuple(int(math.floor(n * z / resolution + 1e-6)) for n in tpl.shape)
    offset = (resolution - z) / 2.0  # output voxels tile the template field of view, centred on blocks
    axes = tuple(np.arange(n) * resolution + offset for n in shape)
    scale = np.eye(4)
    scale[:3, :3] *= resolution / z
    scale[:3, 3] = offset / z
    affine = tpl.affine @ scale
    # a Gaussian with the second moment of the voxel box (partial-volume averaging over the larger voxel)
    sigma = math.sqrt(max(resolution**2 - z**2, 0.0) / 12.0) / z
    if sigma > 0:
        fractions = np.stack([ndimage.gaussian_filter(f, sigma, mode="constant") for f in tpl.fractions])
    else:
        fractions = tpl.fractions
    return _Grid(resolution=resolution, shape=shape, axes=axes, affine=affine, fractions=fractions)


# ---------------------------------------------------------------------------------------------------------------
# one subject
# ---------------------------------------------------------------------------------------------------------------


def _check_seed(seed, name: str, caller: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{caller} expects {name} to be a non-negative int, got {seed!r}.")
    return int(seed)


def _check_resolution(resolution, caller: str) -> float:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float, np.integer, np.floating)):
        raise ValueError(f"{caller} expects resolution to be a number of mm, got {resolution!r}.")
    if not _MIN_RESOLUTION <= float(resolution) <= _MAX_RESOLUTION:
        raise ValueError(
            f"{caller} expects resolution in [{_MIN_RESOLUTION}, {_MAX_RESOLUTION}] mm, got {resolution!r}."
        )
    return float(resolution)


def _check_snr(snr, caller: str) -> float:
    if isinstance(snr, bool) or not isinstance(snr, (int, float, np.integer, np.floating)) or not snr > 0:
        raise ValueError(f"{caller} expects snr > 0 (float('inf') for no noise), got {snr!r}.")
    return float(snr)


@dataclass
class _Tumour:
    axes: np.ndarray  # semi-axes of the tumour core (mm)
    rotation: np.ndarray  # (3, 3)
    necrosis_ratio: float  # necrotic core radius / core radius
    edema_ratio: float  # edema radius / core radius
    mass: float  # mass-effect strength (0 = none)
    fields: _SplineField  # 3 channels: core, necrosis and edema boundary perturbations
    template_centre: np.ndarray  # (3,) mm in the template frame
    centre: np.ndarray | None = None  # (3,) mm in the subject frame (solved after the deformation is drawn)

    @property
    def radius(self) -> float:
        return float(np.prod(self.axes) ** (1.0 / 3.0))


def _draw_tumours(rng: np.random.Generator, tpl: _Template, num: int, extent: Sequence[float]) -> list[_Tumour]:
    """Sizes, shapes and template-space positions of ``num`` tumours (separated deep white-matter centres)."""
    tumours: list[_Tumour] = []
    for _ in range(num):
        radius = rng.uniform(10.0, 20.0)
        axes = radius * np.exp(rng.uniform(-0.2, 0.2, size=3))
        rotation = Rotation.random(random_state=rng).as_matrix()
        necrosis_ratio = rng.uniform(0.45, 0.75)
        edema_ratio = rng.uniform(1.6, 2.4)
        mass = rng.uniform(0.2, 0.45)
        fields = _SplineField(rng, 3, spacing=7.0, extent=extent)
        reach = 1.25 * axes.max()  # the largest extent of the perturbed core
        ok = tpl.candidate_depth >= reach + 4.0
        for other in tumours:
            sep = np.linalg.norm(tpl.candidates - other.template_centre, axis=1)
            ok &= sep >= reach + 1.25 * other.axes.max() + 6.0
        if ok.any():
            pool = np.flatnonzero(ok)
            centre = tpl.candidates[pool[rng.integers(len(pool))]] + rng.uniform(-1.0, 1.0, size=3)
        else:  # no room left: the deepest candidate farthest from the other tumours
            score = tpl.candidate_depth.copy()
            for other in tumours:
                score = np.minimum(score, np.linalg.norm(tpl.candidates - other.template_centre, axis=1))
            centre = tpl.candidates[int(np.argmax(score))].astype(float)
        tumours.append(_Tumour(axes, rotation, necrosis_ratio, edema_ratio, mass, fields, centre))
    return tumours


class _Deformation:
    """Backward map subject frame -> template frame: ``y = c + M (x' - c) + t + u(x)`` where ``x'`` applies the
    tumours' mass effect (tissue pushed away from each tumour centre) and ``u`` is a smooth random field."""

    def __init__(self, rng: np.random.Generator, tpl: _Template, extent: Sequence[float]):
        self.centre = tpl.brain_centre
        # head size and shape; the MNI152 brain is larger than the average native brain, hence the mean shrink
        scales = np.exp(rng.normal(-0.05, 0.03) + rng.normal(0.0, 0.02, size=3))
        angles = np.clip(rng.normal(0.0, 3.0, size=3), -8.0, 8.0)  # head pose (degrees)
        rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
        self.matrix = rot @ np.diag(1.0 / np.clip(scales, 0.85, 1.15))
        self.shift = np.clip(rng.normal(0.0, 2.0, size=3), -5.0, 5.0)
        self.field = _SplineField(rng, 3, spacing=30.0, extent=extent)
        self.amplitude = 2.5  # mm, standard deviation of the non-linear displacement
        self.tumours: list[_Tumour] = []

    def _mass(self, x: np.ndarray) -> np.ndarray:
        """Mass effect on points ``(3, ...)``: ``x - sum_k (x - c_k) m_k exp(-|x - c_k|^2 / L_k^2)``."""
        out = x.copy()
        for tum in self.tumours:
            c = tum.centre.reshape((3,) + (1,) * (x.ndim - 1))
            diff = x - c
            scale = 1.5 * tum.radius
            out -= diff * (tum.mass * np.exp(-(diff**2).sum(axis=0) / scale**2))
        return out

    def _affine(self, x: np.ndarray) -> np.ndarray:
        c = self.centre.reshape((3,) + (1,) * (x.ndim - 1))
        t = self.shift.reshape((3,) + (1,) * (x.ndim - 1))
        return c + np.tensordot(self.matrix, x - c, axes=1) + t

    def at_points(self, points: np.ndarray) -> np.ndarray:
        """Template coordinates of subject points ``(P, 3)``."""
        x = points.T
        return (self._affine(self._mass(x)) + self.amplitude * self.field.at_points(points)).T

    def on_grid(self, axes: Sequence[np.ndarray]) -> np.ndarray:
        """Template coordinates of the subject grid: ``(3, n1, n2, n3)`` (mm)."""
        x = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float64)
        y = self._affine(self._mass(x))
        y += self.amplitude * self.field.on_grid(axes)
        return y

    def place(self, tumours: list[_Tumour]) -> None:
        """Solve the subject-frame centres so that each tumour sits on its template-frame centre."""
        self.tumours = tumours
        target = np.stack([t.template_centre for t in tumours])
        inv = np.linalg.inv(self.matrix)
        centres = self.centre + (target - self.centre - self.shift) @ inv.T
        for _ in range(12):  # fixed point: the own mass term vanishes at the centre, the rest is smooth
            for tum, c in zip(tumours, centres):
                tum.centre = c
            centres = centres + (target - self.at_points(centres)) @ inv.T
        for tum, c in zip(tumours, centres):
            tum.centre = c


def _soft(rho: float, d: np.ndarray, radius: float, width: float) -> np.ndarray:
    """Partial-volume fraction of the region ``d <= rho`` (``d`` in units of ``radius``), a ramp ``width`` mm wide."""
    return np.clip(0.5 + (rho - d) * (radius / width), 0.0, 1.0)


def _tumour_maps(tumours: list[_Tumour], grid: _Grid):
    """Soft fractions (core, necrosis, edema envelope) and hard regions of all tumours on the subject grid."""
    shape = grid.shape
    s_core = np.zeros(shape, np.float32)
    s_nec = np.zeros(shape, np.float32)
    s_ede = np.zeros(shape, np.float32)
    core = np.zeros(shape, bool)
    nec = np.zeros(shape, bool)
    ede = np.zeros(shape, bool)
    res = grid.resolution
    for tum in tumours:
        reach = 1.25 * tum.axes.max() * max(tum.edema_ratio * 1.42, 1.25) + 2 * max(res, _EDEMA_RAMP_MM)
        box = []
        for ax, c in zip(grid.axes, tum.centre):
            lo = int(np.searchsorted(ax, c - reach))
            hi = int(np.searchsorted(ax, c + reach))
            box.append(slice(min(lo, len(ax)), min(hi, len(ax))))
        sub_axes = [ax[s] for ax, s in zip(grid.axes, box)]
        if any(len(a) == 0 for a in sub_axes):
            continue
        x = np.stack(np.meshgrid(*sub_axes, indexing="ij")) - tum.centre.reshape(3, 1, 1, 1)
        q = np.tensordot(tum.rotation.T, x, axes=1) / tum.axes.reshape(3, 1, 1, 1)
        d = np.sqrt((q**2).sum(axis=0))
        n = tum.fields.on_grid(sub_axes)
        d_core = d * np.exp(0.2 * np.tanh(n[0]))
        d_nec = d * np.exp(0.15 * np.tanh(n[1]))
        d_ede = d * np.exp(0.35 * np.tanh(n[2]))
        r, b = tum.radius, tuple(box)
        sc = _soft(1.0, d_core, r, res)
        s_core[b] = np.maximum(s_core[b], sc)
        s_nec[b] = np.maximum(s_nec[b], np.minimum(_soft(tum.necrosis_ratio, d_nec, r, res), sc))
        s_ede[b] = np.maximum(s_ede[b], _soft(tum.edema_ratio, d_ede, r, max(res, _EDEMA_RAMP_MM)))
        hc = d_core <= 1.0
        core[b] |= hc
        nec[b] |= hc & (d_nec <= tum.necrosis_ratio)
        ede[b] |= d_ede <= tum.edema_ratio
    return s_core, s_nec, s_ede, core, nec, ede


def _jitter_tissues(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-subject relaxation values: small variations around the table (3 % normal tissue, 8 % tumour)."""
    out = {}
    for name, vals in PHANTOM_TISSUES.items():
        s = 0.03 if name in _NORMAL_TISSUES else 0.08
        out[name] = {
            "t1": vals["t1"] * float(np.exp(rng.normal(0.0, s))),
            "t2": vals["t2"] * float(np.exp(rng.normal(0.0, s))),
            "pd": min(vals["pd"] * float(np.exp(rng.normal(0.0, s / 3))), 1.0),
        }
    return out


def generate_phantom_subject(
    seed: int,
    resolution: float = 2.0,
    snr: float = 30.0,
    num_tumours: int | None = None,
    return_fractions: bool = False,
) -> dict:
    """One synthetic subject: four co-registered contrasts, a BraTS-2020 label map and a brain mask.

    The subject is a deterministic function of ``seed``: anatomy (a random affine and smooth non-linear
    deformation of the MNI ICBM152 2009 template), 1-2 tumours (necrotic core, enhancing rim, edema; irregular
    noise-perturbed ellipsoids in deep white matter, with mass effect), tissue relaxation values, bias field, contrast
    gains and Rician noise. All random draws except the noise are made in mm, so the same seed gives the same
    anatomy at every ``resolution``. Images are skull-stripped as in BraTS (0 outside the brain mask).

    Args:
        seed: non-negative int.
        resolution: isotropic voxel size in mm, in [1, 8] (1: the template's own grid, 197x233x189; 2: 98x116x94).
        snr: signal-to-noise ratio: the Rician noise level of each contrast is its mean brain signal / ``snr``.
            ``float("inf")`` gives noiseless images.
        num_tumours: number of tumours, 1 to 3; None draws 1 (65 %) or 2 (35 %) from the seed.
        return_fractions: also return the partial-volume tissue fractions under ``"fractions"``.

    Returns:
        dict with ``"t1"``, ``"t1ce"``, ``"t2"``, ``"flair"``: float32 arrays (X, Y, Z); ``"seg"``: uint8 (X, Y, Z)
        with 0 background, 1 necrotic core, 2 edema, 4 enhancing tumour; ``"brain_mask"``: bool (X, Y, Z);
        ``"affine"``: (4, 4) float64 voxel-to-RAS-world matrix; with ``return_fractions``, ``"fractions"``: dict
        tissue name (``csf, gm, wm, necrosis, edema, enhancing``) -> float32 (X, Y, Z).

    Raises:
        ValueError: for an invalid argument.
        RuntimeError: when no tumour configuration showing all three labels fits on the grid (very coarse grids).

    Example:
        >>> subject = generate_phantom_subject(seed=0, resolution=2.0)
        >>> subject["t1"].shape, sorted(np.unique(subject["seg"]).tolist())
        ((98, 116, 94), [0, 1, 2, 4])
    """
    caller = "generate_phantom_subject"
    seed = _check_seed(seed, "seed", caller)
    resolution = _check_resolution(resolution, caller)
    snr = _check_snr(snr, caller)
    if num_tumours is not None and (
        isinstance(num_tumours, bool)
        or not isinstance(num_tumours, (int, np.integer))
        or not 1 <= num_tumours <= _MAX_TUMOURS
    ):
        raise ValueError(
            f"{caller} expects num_tumours to be None or an int in [1, {_MAX_TUMOURS}], got {num_tumours!r}."
        )

    tpl = _load_template()
    grid = _template_grid(resolution)
    extent = [n * tpl.zoom for n in tpl.shape]
    anat_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(anat_seq)
    rng_noise = np.random.default_rng(noise_seq)

    # --- resolution-independent draws: anatomy, physiology, acquisition
    drawn_num = int(rng.choice([1, 2], p=[0.65, 0.35]))
    num = int(num_tumours) if num_tumours is not None else drawn_num
    deformation = _Deformation(rng, tpl, extent)
    tissues = _jitter_tissues(rng)
    concentration = rng.uniform(0.25, 0.45)  # mmol/L of gadolinium in enhancing tissue
    texture = _SplineField(rng, 3, spacing=6.0, extent=extent)  # enhancement, edema, necrosis heterogeneity
    bias = _SplineField(rng, 1 + len(MODALITIES), spacing=60.0, extent=extent)
    gains = np.exp(rng.normal(0.0, 0.1, size=len(MODALITIES)))

    lab = BRATS_LABELS_2020
    for attempt in range(_MAX_ATTEMPTS):
        tumours = _draw_tumours(rng, tpl, num, extent)
        deformation.place(tumours)
        coords = deformation.on_grid(grid.axes) / tpl.zoom
        csf, gm, wm = (
            ndimage.map_coordinates(f, coords, order=1, mode="constant", cval=0.0, output=np.float32)
            for f in grid.fractions
        )
        del coords
        total = csf + gm + wm
        over = total > 1.0
        if over.any():
            norm = np.where(over, 1.0 / np.maximum(total, 1e-6), 1.0).astype(np.float32)
            csf, gm, wm = csf * norm, gm * norm, wm * norm
            total = np.minimum(total, 1.0)
        brain = total
        brain_mask = brain >= 0.5
        s_core, s_nec, s_ede, core, nec, ede = _tumour_maps(tumours, grid)
        f_nec = brain * s_nec
        f_enh = brain * (s_core - s_nec)
        keep = 1.0 - s_core
        csf, gm, wm = csf * keep, gm * keep, wm * keep
        f_ede = s_ede * (wm + 0.5 * gm)  # vasogenic edema spreads through white matter, less into the cortex
        wm = wm * (1.0 - s_ede)
        gm = gm * (1.0 - 0.5 * s_ede)
        seg = np.zeros(grid.shape, np.uint8)
        seg[brain_mask & ede & ~core & (f_ede >= _EDEMA_MIN_FRACTION)] = lab["edema"]
        seg[brain_mask & core] = lab["enhancing"]
        seg[brain_mask & nec] = lab["necrosis"]
        if all((seg == v).any() for v in lab.values()):
            break
        logger.debug("phantom seed %d: tumour attempt %d does not show all labels, drawing again", seed, attempt)
    else:
        raise RuntimeError(
            f"generate_phantom_subject could not place tumours showing all labels at resolution {resolution} mm "
            f"(seed {seed}); use a finer resolution."
        )

    fractions = {"csf": csf, "gm": gm, "wm": wm, "necrosis": f_nec, "edema": f_ede, "enhancing": f_enh}

    # --- tissue parameters, with smooth heterogeneity inside the tumour tissues
    tex = texture.on_grid(grid.axes)
    conc = concentration * np.exp(0.35 * np.tanh(tex[0]))
    params = {k: dict(v) for k, v in tissues.items()}
    params["edema"]["t2"] = tissues["edema"]["t2"] * np.exp(0.1 * np.tanh(tex[1]))
    params["edema"]["t1"] = tissues["edema"]["t1"] * np.exp(0.06 * np.tanh(tex[1]))
    params["necrosis"]["t2"] = tissues["necrosis"]["t2"] * np.exp(0.1 * np.tanh(tex[2]))

    # --- bias (a receive field shared by all contrasts, plus a small per-contrast part), gain and noise
    b = bias.on_grid(grid.axes)
    out: dict = {}
    for i, name in enumerate(MODALITIES):
        signal = np.zeros(grid.shape, np.float32)
        for tissue, frac in fractions.items():
            p = params[tissue]
            t1 = p["t1"]
            if name == "t1ce" and tissue == "enhancing":
                t1 = gadolinium_t1(t1, conc, GADOLINIUM_R1)
            signal += frac * np.asarray(phantom_sequence_signal(name, p["pd"], t1, p["t2"]), dtype=np.float32)
        signal *= np.exp(0.12 * b[0] + 0.04 * b[1 + i]) * (_GAIN * gains[i])
        if math.isfinite(snr):
            sigma = float(signal[brain_mask].mean()) / snr
            real = signal + rng_noise.normal(0.0, sigma, size=grid.shape).astype(np.float32)
            imag = rng_noise.normal(0.0, sigma, size=grid.shape).astype(np.float32)
            signal = np.sqrt(real * real + imag * imag)
        signal[~brain_mask] = 0.0  # skull-stripped, as BraTS
        out[name] = signal.astype(np.float32, copy=False)
    out["seg"] = seg
    out["brain_mask"] = brain_mask
    out["affine"] = grid.affine.copy()
    if return_fractions:
        out["fractions"] = {k: np.asarray(v, dtype=np.float32) for k, v in fractions.items()}
    return out


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------


def phantom_subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a dataset generated with ``seed`` (a deterministic hash of both)."""
    seed = _check_seed(seed, "seed", "phantom_subject_seed")
    index = _check_seed(index, "index", "phantom_subject_seed")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def phantom_case_id(index: int) -> str:
    """Case id of subject ``index``: ``Phantom_000``, ``Phantom_001``, ..."""
    return f"Phantom_{int(index):03d}"


def _atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` (usual permissions, umask applied), then rename it."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes, reproducible (no time stamp in the gzip header)."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _case_files(case_dir: str, case: str) -> dict[str, str]:
    return {k: os.path.join(case_dir, f"{case}_{s}.nii.gz") for k, s in BRATS2020_SUFFIXES.items()}


def _case_complete(case_dir: str, case: str) -> bool:
    return os.path.isdir(case_dir) and all(os.path.isfile(p) for p in _case_files(case_dir, case).values())


def write_phantom_case(subject: dict, output_dir: str | os.PathLike, case: str) -> str:
    """Write one subject as ``<output_dir>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, atomically.

    The case is built in ``<case>.tmp`` (each file written under a temporary name then renamed) and the folder is
    renamed into place at the end, so ``<case>`` is either complete or absent. An existing ``<case>`` is replaced.

    Args:
        subject: output of :func:`generate_phantom_subject`.
        output_dir: dataset folder (created if missing).
        case: case id, e.g. ``"Phantom_000"``.

    Returns:
        the case folder.
    """
    missing = [k for k in (*MODALITIES, "seg", "affine") if k not in subject]
    if missing:
        raise ValueError(f"write_phantom_case expects subject to hold keys {missing}, got {sorted(subject)}.")
    if not case or os.sep in case or case.startswith("."):
        raise ValueError(f"write_phantom_case expects case to be a plain folder name, got {case!r}.")
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    case_dir = os.path.join(output_dir, case)
    tmp_dir, old_dir = case_dir + ".tmp", case_dir + ".old"
    for stale in (tmp_dir, old_dir):
        if os.path.exists(stale):
            shutil.rmtree(stale)
    os.makedirs(tmp_dir)
    affine = np.asarray(subject["affine"], dtype=np.float64)
    for key, path in _case_files(tmp_dir, case).items():
        array = subject[key]
        array = np.asarray(array, dtype=np.uint8 if key == "seg" else np.float32)
        _atomic_write_bytes(path, _nifti_bytes(array, affine))
    if os.path.exists(case_dir):
        os.replace(case_dir, old_dir)
        os.replace(tmp_dir, case_dir)
        shutil.rmtree(old_dir)
    else:
        os.replace(tmp_dir, case_dir)
    return case_dir


def _dataset_params(resolution: float, seed: int, snr: float) -> dict:
    return {"generator": "monai_msgldm.phantom", "version": _MODEL_VERSION, "resolution": resolution, "seed": seed,
            "snr": snr if math.isfinite(snr) else "inf"}  # fmt: skip


def generate_phantom_dataset(
    output_dir: str | os.PathLike,
    num_subjects: int = 10,
    resolution: float = 2.0,
    seed: int = 0,
    snr: float = 30.0,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Write ``num_subjects`` phantom subjects in the BraTS 2020 layout.

    Subject ``i`` is ``Phantom_{i:03d}`` with seed :func:`phantom_subject_seed` ``(seed, i)``. Existing complete
    cases are kept unless ``overwrite``; partial leftovers (``<case>.tmp``) are rebuilt. The generation parameters
    are recorded in ``<output_dir>/phantom_dataset.json``; a folder made with other parameters is refused unless
    ``overwrite``.

    Args:
        output_dir: dataset folder (created if missing).
        num_subjects: number of subjects, >= 1.
        resolution: voxel size in mm, in [1, 8].
        seed: non-negative int.
        snr: signal-to-noise ratio (see :func:`generate_phantom_subject`).
        overwrite: regenerate cases that already exist.
        progress: show a tqdm progress bar.

    Returns:
        the case folders, in subject order.

    Example:
        >>> cases = generate_phantom_dataset("/tmp/phantom", num_subjects=2, progress=False)
        >>> [os.path.basename(c) for c in cases]
        ['Phantom_000', 'Phantom_001']
    """
    caller = "generate_phantom_dataset"
    if isinstance(num_subjects, bool) or not isinstance(num_subjects, (int, np.integer)) or num_subjects < 1:
        raise ValueError(f"{caller} expects num_subjects to be a positive int, got {num_subjects!r}.")
    resolution = _check_resolution(resolution, caller)
    seed = _check_seed(seed, "seed", caller)
    snr = _check_snr(snr, caller)
    output_dir = os.fspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"{caller} expects output_dir to be a folder, got the file '{output_dir}'.")
    os.makedirs(output_dir, exist_ok=True)

    params = _dataset_params(resolution, seed, snr)
    meta_path = os.path.join(output_dir, PHANTOM_DATASET_FILE)
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
        if previous != params and not overwrite:
            raise ValueError(
                f"{caller}: '{output_dir}' holds a phantom dataset made with {previous}, not {params}; "
                "pass overwrite=True or choose another output_dir."
            )
    _atomic_write_bytes(meta_path, (json.dumps(params, indent=2) + "\n").encode())

    logger.info(
        "phantom: %d subjects at %g mm (seed %d, SNR %g) in '%s'", num_subjects, resolution, seed, snr, output_dir
    )
    start = time.perf_counter()
    cases, made = [], 0
    indices = range(int(num_subjects))
    bar = tqdm(indices, desc="phantom", unit="subject") if (progress and has_tqdm) else indices
    for i in bar:
        case = phantom_case_id(i)
        case_dir = os.path.join(output_dir, case)
        if not overwrite and _case_complete(case_dir, case):
            logger.debug("phantom: keeping complete case '%s'", case_dir)
            cases.append(case_dir)
            continue
        t0 = time.perf_counter()
        subject = generate_phantom_subject(phantom_subject_seed(seed, i), resolution=resolution, snr=snr)
        cases.append(write_phantom_case(subject, output_dir, case))
        made += 1
        logger.debug("phantom: wrote '%s' in %.2f s", case_dir, time.perf_counter() - t0)
    logger.info("phantom: %d written, %d kept, %.1f s", made, len(cases) - made, time.perf_counter() - start)
    return cases


def phantom_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """The cache root: ``cache_dir``, else ``$MONAI_MSGLDM_CACHE``, else ``~/.cache/monai_msgldm``."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    env = os.environ.get("MONAI_MSGLDM_CACHE")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "monai_msgldm")


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _marker_ok(folder: str, params: dict, num_subjects: int) -> bool:
    marker = os.path.join(folder, PHANTOM_COMPLETE_MARKER)
    try:
        with open(marker) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return False
    if content != {**params, "num_subjects": num_subjects}:
        return False
    return all(
        _case_complete(os.path.join(folder, phantom_case_id(i)), phantom_case_id(i)) for i in range(num_subjects)
    )


def ensure_phantom_dataset(
    cache_dir: str | os.PathLike | None = None, num_subjects: int = 10, resolution: float = 2.0, seed: int = 0
) -> str:
    """The default data: a phantom dataset generated once into a cache folder and reused afterwards.

    The folder is ``<cache>/phantom_n{num_subjects}_r{resolution}_s{seed}`` (e.g. ``phantom_n10_r2.0_s0``) with
    ``<cache>`` from :func:`phantom_cache_dir`. The marker file ``.phantom_complete`` is written last; when it is
    missing (an interrupted run) the missing cases are generated and the kept ones are left untouched. Concurrent
    calls are serialised with a file lock. SNR is the default 30.

    Args:
        cache_dir: cache root; None for ``$MONAI_MSGLDM_CACHE`` or ``~/.cache/monai_msgldm``.
        num_subjects: number of subjects, >= 1.
        resolution: voxel size in mm, in [1, 8].
        seed: non-negative int.

    Returns:
        the dataset folder (BraTS 2020 layout).

    Example:
        >>> data_root = ensure_phantom_dataset(num_subjects=10, resolution=2.0)
    """
    caller = "ensure_phantom_dataset"
    if isinstance(num_subjects, bool) or not isinstance(num_subjects, (int, np.integer)) or num_subjects < 1:
        raise ValueError(f"{caller} expects num_subjects to be a positive int, got {num_subjects!r}.")
    resolution = _check_resolution(resolution, caller)
    seed = _check_seed(seed, "seed", caller)
    num_subjects = int(num_subjects)
    snr = 30.0
    root = phantom_cache_dir(cache_dir)
    name = f"phantom_n{num_subjects}_r{resolution}_s{seed}"
    folder = os.path.join(root, name)
    params = _dataset_params(resolution, seed, snr)
    if _marker_ok(folder, params, num_subjects):
        logger.debug("phantom: using cached dataset '%s'", folder)
        return folder
    os.makedirs(root, exist_ok=True)
    with _file_lock(os.path.join(root, f".{name}.lock")):
        if _marker_ok(folder, params, num_subjects):  # made by another process meanwhile
            return folder
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, PHANTOM_COMPLETE_MARKER))
        logger.info("phantom: generating the default dataset in '%s' (once)", folder)
        generate_phantom_dataset(folder, num_subjects=num_subjects, resolution=resolution, seed=seed, snr=snr)
        marker = {**params, "num_subjects": num_subjects}
        _atomic_write_bytes(os.path.join(folder, PHANTOM_COMPLETE_MARKER), (json.dumps(marker) + "\n").encode())
    return folder
