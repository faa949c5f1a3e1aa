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
"""Anatomy of the phantom: the MNI ICBM152 2009 template, the output grid and the per-subject deformation.

The template (T1, grey- and white-matter probability maps) ships inside ``nilearn`` and is loaded once per process;
its partial-volume fractions are low-pass filtered once per output resolution. A subject's anatomy is the template
seen through a random affine, a smooth non-linear displacement (cubic B-splines in mm, so the same seed gives the
same anatomy at every resolution) and the tumours' mass effect. Used by
:func:`monai_msgldm.data.phantom.generate_phantom_subject`; the model is described in ``docs/data.md``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

if TYPE_CHECKING:
    from monai_msgldm.data.phantom_tumours import PhantomTumour

__all__ = [
    "PHANTOM_TEMPLATE_FILES",
    "phantom_template_dir",
    "SplineField",
    "PhantomTemplate",
    "PhantomGrid",
    "load_phantom_template",
    "phantom_grid",
    "PhantomDeformation",
    "warp_template_fractions",
]

#: The template files inside ``nilearn/datasets/data``.
PHANTOM_TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


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


class SplineField:
    """A smooth random field with ``C`` channels: cubic B-splines with i.i.d. normal coefficients on a knot lattice
    of ``spacing`` mm covering ``extent`` mm, normalised to unit variance at every point.

    Args:
        rng: draws the ``(C, K1, K2, K3)`` coefficients (one ``standard_normal`` call).
        channels: ``C``.
        spacing: knot spacing in mm (the correlation length of the field).
        extent: the three sizes in mm of the region covered.

    Example:
        >>> field = SplineField(np.random.default_rng(0), 2, spacing=30.0, extent=(100.0, 100.0, 100.0))
        >>> field.on_grid([np.arange(0, 100, 10.0)] * 3).shape
        (2, 10, 10, 10)
    """

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
class PhantomTemplate:
    """The MNI ICBM152 2009 template as the phantom uses it (see :func:`load_phantom_template`)."""

    affine: np.ndarray  # template voxel -> world (RAS mm)
    zoom: float  # template voxel size (mm, isotropic)
    shape: tuple[int, int, int]
    fractions: np.ndarray  # (3, X, Y, Z) float32: csf, gm, wm partial-volume fractions
    brain_centre: np.ndarray  # (3,) mm, in the template "mm frame" (voxel index * zoom)
    candidates: np.ndarray  # (P, 3) mm: deep white-matter points where a tumour centre may go
    candidate_depth: np.ndarray  # (P,) mm: distance of each candidate to the brain boundary


@functools.lru_cache(maxsize=1)
def load_phantom_template() -> PhantomTemplate:
    """Load the MNI ICBM152 2009 maps and derive the CSF fraction and the tumour-centre candidates (cached)."""
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
    return PhantomTemplate(
        affine=np.asarray(affine, dtype=np.float64),
        zoom=zoom,
        shape=tuple(int(s) for s in shape),
        fractions=fractions,
        brain_centre=brain_centre,
        candidates=cand * 2 * zoom,
        candidate_depth=depth[tuple(cand.T)],
    )


@dataclass(frozen=True)
class PhantomGrid:
    """An output grid of the phantom (see :func:`phantom_grid`)."""

    resolution: float
    shape: tuple[int, int, int]
    axes: tuple[np.ndarray, np.ndarray, np.ndarray]  # output voxel centres in the template mm frame
    affine: np.ndarray  # output voxel -> world
    fractions: np.ndarray  # template fractions (1 mm grid) smoothed to the output voxel size


@functools.lru_cache(maxsize=2)
def phantom_grid(resolution: float) -> PhantomGrid:
    """Output grid at ``resolution`` mm and the template fractions low-pass filtered for it (cached)."""
    tpl = load_phantom_template()
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
    return PhantomGrid(resolution=resolution, shape=shape, axes=axes, affine=affine, fractions=fractions)


# ---------------------------------------------------------------------------------------------------------------
# the subject's deformation of the template
# ---------------------------------------------------------------------------------------------------------------


class PhantomDeformation:
    """Backward map subject frame -> template frame: ``y = c + M (x' - c) + t + u(x)`` where ``x'`` applies the
    tumours' mass effect (tissue pushed away from each tumour centre) and ``u`` is a smooth random field.

    Args:
        rng: draws the head size, pose, shift and the displacement field, in this order.
        tpl: the template (its brain centre is ``c``).
        extent: the three sizes in mm covered by the displacement field.
    """

    def __init__(self, rng: np.random.Generator, tpl: PhantomTemplate, extent: Sequence[float]):
        self.centre = tpl.brain_centre
        # head size and shape; the MNI152 brain is larger than the average native brain, hence the mean shrink
        scales = np.exp(rng.normal(-0.05, 0.03) + rng.normal(0.0, 0.02, size=3))
        angles = np.clip(rng.normal(0.0, 3.0, size=3), -8.0, 8.0)  # head pose (degrees)
        rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
        self.matrix = rot @ np.diag(1.0 / np.clip(scales, 0.85, 1.15))
        self.shift = np.clip(rng.normal(0.0, 2.0, size=3), -5.0, 5.0)
        self.field = SplineField(rng, 3, spacing=30.0, extent=extent)
        self.amplitude = 2.5  # mm, standard deviation of the non-linear displacement
        self.tumours: list[PhantomTumour] = []

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

    def inverse_points(self, target: np.ndarray, on_step: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """Subject points ``(P, 3)`` that the map sends onto the template points ``target`` ``(P, 3)``.

        A fixed-point iteration (12 steps) from the inverse of the affine part; ``on_step(points)`` is called with
        the current estimate before each step (the tumours' mass effect moves with their centres).
        """
        inv = np.linalg.inv(self.matrix)
        points = self.centre + (target - self.centre - self.shift) @ inv.T
        for _ in range(12):  # fixed point: the own mass term vanishes at the centre, the rest is smooth
            if on_step is not None:
                on_step(points)
            points = points + (target - self.at_points(points)) @ inv.T
        return points

    def place(self, tumours: list[PhantomTumour]) -> None:
        """Solve the subject-frame centres so that each tumour sits on its template-frame centre."""
        self.tumours = tumours

        def set_centres(centres: np.ndarray) -> None:
            for tum, c in zip(tumours, centres):
                tum.centre = c

        set_centres(self.inverse_points(np.stack([t.template_centre for t in tumours]), on_step=set_centres))


def warp_template_fractions(
    deformation: PhantomDeformation, tpl: PhantomTemplate, grid: PhantomGrid, coords: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The template's CSF, GM and WM fractions seen through ``deformation`` on ``grid``, and the brain fraction.

    Where the interpolated fractions add up to more than 1 they are scaled down to a sum of 1.

    Args:
        deformation: the subject's map to the template.
        tpl: the template.
        grid: the output grid.
        coords: ``deformation.on_grid(grid.axes)`` when the caller has it already (template mm, ``(3, *shape)``).

    Returns:
        ``(csf, gm, wm, brain)``: float32 arrays of ``grid.shape``; ``brain = min(csf + gm + wm, 1)``.
    """
    coords = (deformation.on_grid(grid.axes) if coords is None else coords) / tpl.zoom
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
    return csf, gm, wm, total
