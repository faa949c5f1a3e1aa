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
"""Tumours of the phantom: their drawing (size, shape, position in deep white matter) and their tissue maps.

A tumour is an irregular ellipsoid (its boundaries perturbed by a smooth random field) with a necrotic core, an
enhancing rim and a surrounding edema; its partial-volume fractions replace the normal tissues and give the BraTS
2020 label map. Used by :func:`monai_msgldm.data.phantom.generate_phantom_subject`; see ``docs/data.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from monai_msgldm.constants import BRATS_LABELS_2020
from monai_msgldm.data.phantom_anatomy import PhantomGrid, PhantomTemplate, SplineField

__all__ = ["PhantomTumour", "draw_tumours", "tumour_tissues"]

_EDEMA_MIN_FRACTION = 0.35  # a voxel is labelled edema when at least this fraction of it is edematous tissue
_EDEMA_RAMP_MM = 3.0  # the edema boundary is diffuse: its partial-volume ramp is at least this wide


@dataclass
class PhantomTumour:
    """One tumour of a phantom subject (see :func:`draw_tumours`)."""

    axes: np.ndarray  # semi-axes of the tumour core (mm)
    rotation: np.ndarray  # (3, 3)
    necrosis_ratio: float  # necrotic core radius / core radius
    edema_ratio: float  # edema radius / core radius
    mass: float  # mass-effect strength (0 = none)
    fields: SplineField  # 3 channels: core, necrosis and edema boundary perturbations
    template_centre: np.ndarray  # (3,) mm in the template frame
    centre: np.ndarray | None = None  # (3,) mm in the subject frame (solved after the deformation is drawn)

    @property
    def radius(self) -> float:
        return float(np.prod(self.axes) ** (1.0 / 3.0))


def draw_tumours(
    rng: np.random.Generator, tpl: PhantomTemplate, num: int, extent: Sequence[float]
) -> list[PhantomTumour]:
    """Sizes, shapes and template-space positions of ``num`` tumours (separated deep white-matter centres)."""
    tumours: list[PhantomTumour] = []
    for _ in range(num):
        radius = rng.uniform(10.0, 20.0)
        axes = radius * np.exp(rng.uniform(-0.2, 0.2, size=3))
        rotation = Rotation.random(random_state=rng).as_matrix()
        necrosis_ratio = rng.uniform(0.45, 0.75)
        edema_ratio = rng.uniform(1.6, 2.4)
        mass = rng.uniform(0.2, 0.45)
        fields = SplineField(rng, 3, spacing=7.0, extent=extent)
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
        tumours.append(PhantomTumour(axes, rotation, necrosis_ratio, edema_ratio, mass, fields, centre))
    return tumours


def _soft(rho: float, d: np.ndarray, radius: float, width: float) -> np.ndarray:
    """Partial-volume fraction of the region ``d <= rho`` (``d`` in units of ``radius``), a ramp ``width`` mm wide."""
    return np.clip(0.5 + (rho - d) * (radius / width), 0.0, 1.0)


def _tumour_maps(tumours: list[PhantomTumour], grid: PhantomGrid):
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


def tumour_tissues(
    tumours: list[PhantomTumour],
    grid: PhantomGrid,
    csf: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    brain: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Put ``tumours`` (placed in the subject frame) into the normal tissues of a subject.

    The tumour core (necrosis and enhancing rim) displaces the normal tissues; vasogenic edema spreads through white
    matter and less into the cortex.

    Args:
        tumours: the subject's tumours, their ``centre`` solved (``PhantomDeformation.place``).
        grid: the output grid.
        csf, gm, wm, brain: the normal tissue fractions and the brain fraction on ``grid``
            (:func:`~monai_msgldm.data.phantom_anatomy.warp_template_fractions`).

    Returns:
        ``(fractions, seg, brain_mask)``: tissue name (``csf, gm, wm, necrosis, edema, enhancing``) -> fraction; the
        uint8 BraTS 2020 label map; the bool brain mask (brain fraction >= 0.5).
    """
    lab = BRATS_LABELS_2020
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
    fractions = {"csf": csf, "gm": gm, "wm": wm, "necrosis": f_nec, "edema": f_ede, "enhancing": f_enh}
    return fractions, seg, brain_mask
