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
"""Small-vessel-disease lesions of the WMH phantom: where they go in the template, their drawing, their tissue maps.

White-matter hyperintensities (WMH) are periventricular caps (at the frontal and occipital horns of the lateral
ventricles) and bands (along the ventricle bodies), and deep white-matter blobs; their number and size follow a
Fazekas-like grade (1 low, 2 moderate, 3 high load). A lacune (an old lacunar infarct: a small fluid-filled cavity
in deep grey matter or white matter) is the "other pathology" of the WMH challenge (label 2). Lesions are
ellipsoids in the template frame, with boundaries made irregular by a smooth noise field; WMH replace white matter
only, a lacune replaces all tissue. The counterpart of :mod:`~monai_msgldm.data.phantom_tumours`, used by
:func:`monai_msgldm.data.phantom.generate_wmh_phantom_subject`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from monai_msgldm.constants import WMH_LABELS
from monai_msgldm.data.phantom_anatomy import PhantomDeformation, PhantomGrid, load_phantom_template

__all__ = [
    "WMH_GRADES",
    "WmhLandmarks",
    "WmhLesion",
    "wmh_landmarks",
    "draw_wmh_lesions",
    "wmh_lesion_tissues",
]

#: Labels of the WMH challenge (2017): 0 background, 1 white-matter hyperintensity, 2 other pathology.

#: Lesion load per grade (Fazekas-like: 1 low, 2 moderate, 3 high), ``(low, high)`` ranges drawn uniformly: number of
#: horn caps (of 4) and their thickness ``cap_mm``, number of bands along the ventricle bodies and their thickness
#: ``band_mm``, number of deep white-matter lesions and their mean radius ``deep_mm`` (mm).
WMH_GRADES: dict[int, dict[str, tuple[float, float]]] = {
    1: {"caps": (1, 3), "cap_mm": (2.0, 4.0), "bands": (0, 1), "band_mm": (1.5, 3.0), "deep": (1, 4),
        "deep_mm": (1.5, 3.0)},
    2: {"caps": (3, 4), "cap_mm": (3.5, 6.5), "bands": (1, 3), "band_mm": (2.5, 4.5), "deep": (3, 10),
        "deep_mm": (1.5, 4.0)},
    3: {"caps": (4, 4), "cap_mm": (6.0, 10.0), "bands": (3, 6), "band_mm": (4.0, 7.0), "deep": (8, 20),
        "deep_mm": (2.0, 6.0)},
}  # fmt: skip

_LESION_MIN_FRACTION = 0.5  # a voxel is labelled when at least half of it is lesion tissue
_CAP_ZONE_MM = 10.0  # the horn caps go within this distance of the ventricle's anterior / posterior end
_MARGIN_MM = 16.0  # distances to the ventricles are computed up to here
_IRREGULARITY = 0.25  # boundary perturbation: the normalised radius is scaled by exp(a tanh(noise))


@dataclass(frozen=True)
class WmhLandmarks:
    """Where lesions may go, in the template mm frame (see :func:`wmh_landmarks`)."""

    periventricular: np.ndarray  # (P, 3) white-matter points 1-3 mm from a lateral ventricle
    normals: np.ndarray  # (P, 3) unit vectors pointing away from the ventricle
    horn: np.ndarray  # (P,) int: -1 along the body, else 0..3 (left front, left back, right front, right back)
    deep: np.ndarray  # (Q, 3) deep white matter, 6 mm or more from the ventricles, supratentorial
    lacune: np.ndarray  # (R, 3) deep white matter and deep grey nuclei
    anterior: np.ndarray  # (3,) unit vector of the anterior direction in the template frame


@functools.lru_cache(maxsize=1)
def wmh_landmarks() -> WmhLandmarks:
    """Lateral ventricles of the template and the candidate lesion positions (cached once per process)."""
    tpl = load_phantom_template()
    csf, gm, wm = tpl.fractions
    z = tpl.zoom
    world = tpl.affine[:3, :3] / z  # template mm frame -> world directions
    origin = tpl.affine[:3, 3]
    # lateral ventricles: per hemisphere, the largest deep CSF component on that side, near the midline (the
    # template affine is axis-aligned: its first voxel axis is the world x axis)
    depth = ndimage.distance_transform_edt((csf + gm + wm)[::2, ::2, ::2] >= 0.5, sampling=2 * z)
    depth = np.repeat(np.repeat(np.repeat(depth, 2, 0), 2, 1), 2, 2)[: tpl.shape[0], : tpl.shape[1], : tpl.shape[2]]
    labels, _ = ndimage.label((csf >= 0.6) & (depth >= 10.0))
    ventricles = np.zeros(tpl.shape, bool)
    for side in (-1.0, 1.0):
        best, best_size = 0, 0
        for k, sl in enumerate(ndimage.find_objects(labels), start=1):
            x = origin[0] + tpl.affine[0, 0] * np.array([sl[0].start, sl[0].stop - 1])
            if np.all(side * x >= 0) and np.mean(np.abs(x)) <= 25.0:
                size = int((labels[sl] == k).sum())
                if size > best_size:
                    best, best_size = k, size
        if best == 0:
            raise RuntimeError("wmh_landmarks: no lateral ventricle found in the phantom template.")
        ventricles |= labels == best
    # distance to the ventricles (mm) in their bounding box grown by _MARGIN_MM; farther points count as infinitely far
    sl = ndimage.find_objects(ventricles.astype(np.uint8))[0]
    m = int(np.ceil(_MARGIN_MM / z))
    box = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, n in zip(sl, tpl.shape))
    offset = np.array([s.start for s in box])
    near = ndimage.distance_transform_edt(~ventricles[box], sampling=z)

    def distance(idx: np.ndarray) -> np.ndarray:
        """Distance to the ventricles of template voxels ``(P, 3)``."""
        local = idx - offset
        inside = np.all((local >= 0) & (local < near.shape), axis=1)
        out = np.full(len(idx), np.inf)
        out[inside] = near[tuple(local[inside].T)]
        return out

    local_pv = np.argwhere((wm[box] >= 0.5) & (near >= 1.0) & (near <= 3.0))
    idx_pv = local_pv + offset
    n = np.stack([g[tuple(local_pv.T)] for g in np.gradient(near, z)], axis=1)  # away from the ventricle
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-6)
    pv_world = idx_pv * z @ world.T + origin
    anterior = np.linalg.solve(world, [0.0, 1.0, 0.0])
    anterior /= np.linalg.norm(anterior)
    vent_world = np.argwhere(ventricles) * z @ world.T + origin
    horn = np.full(len(idx_pv), -1)
    for h, (side, front) in enumerate(((-1, True), (-1, False), (1, True), (1, False))):
        y = vent_world[np.sign(vent_world[:, 0]) == side, 1]
        on_side = np.sign(pv_world[:, 0]) == side
        zone = pv_world[:, 1] >= y.max() - _CAP_ZONE_MM if front else pv_world[:, 1] <= y.min() + _CAP_ZONE_MM
        horn[on_side & zone] = h
    # deep white matter (the tumour candidates of the template: WM >= 0.7, supratentorial) away from the ventricles
    cand = tpl.candidates
    cand_z = (cand @ world.T + origin)[:, 2]
    dist_cand = distance(np.round(cand / z).astype(int))
    deep = cand[(dist_cand >= 6.0) & (tpl.candidate_depth >= 6.0) & (cand_z >= 0.0)]
    # deep grey nuclei (caudate, thalamus, putamen): grey matter within 12 mm of the lateral ventricles, off the
    # midline and below their roof (which keeps the cingulate cortex out)
    nuclei = np.argwhere(gm[::2, ::2, ::2] >= 0.6) * 2
    nuclei = nuclei[distance(nuclei) <= 12.0] * z
    nuclei_world = nuclei @ world.T + origin
    keep = (np.abs(nuclei_world[:, 0]) >= 6.0) & (nuclei_world[:, 2] >= -10.0) & (nuclei_world[:, 2] <= 18.0)
    lacune = np.concatenate([deep, nuclei[keep]])
    return WmhLandmarks(idx_pv * z, n, horn, deep, lacune, anterior)


@dataclass
class WmhLesion:
    """One lesion: an ellipsoid in the template frame (see :func:`draw_wmh_lesions`)."""

    kind: str  # "cap", "band", "deep" or "lacune"
    template_centre: np.ndarray  # (3,) mm in the template frame
    axes: np.ndarray  # (3,) semi-axes (mm)
    rotation: np.ndarray  # (3, 3): columns are the lesion axes in the template frame


def _wall_rotation(normal: np.ndarray, along: np.ndarray, angle: float) -> np.ndarray:
    """Axes of a lesion lying on the ventricle wall: the normal, then ``along`` projected on the wall, turned by
    ``angle`` (radians) about the normal."""
    t = along - normal * (along @ normal)
    t /= max(np.linalg.norm(t), 1e-6)
    u = np.cross(normal, t)
    t, u = np.cos(angle) * t + np.sin(angle) * u, -np.sin(angle) * t + np.cos(angle) * u
    return np.stack([normal, t, u], axis=1)


def draw_wmh_lesions(rng: np.random.Generator, grade: int, num_lacunes: int) -> list[WmhLesion]:
    """The lesions of a subject of ``grade`` (a key of :data:`WMH_GRADES`): caps, bands, deep lesions, lacunes.

    Caps sit at distinct ventricle horns, bands along the bodies (long axis anterior-posterior), both as thin
    ellipsoids on the wall (the part inside the ventricle is cut off by the white-matter restriction); deep lesions
    and lacunes are small ellipsoids of random orientation.
    """
    lm = wmh_landmarks()
    g = WMH_GRADES[grade]
    lesions: list[WmhLesion] = []
    num_caps = int(rng.integers(g["caps"][0], g["caps"][1] + 1))
    for h in rng.permutation(4)[:num_caps]:
        pool = np.flatnonzero(lm.horn == h)
        i = pool[rng.integers(len(pool))]
        axes = np.array([rng.uniform(*g["cap_mm"]), rng.uniform(5.0, 10.0), rng.uniform(5.0, 10.0)])
        rotation = _wall_rotation(lm.normals[i], lm.anterior, rng.uniform(0.0, np.pi))
        lesions.append(WmhLesion("cap", lm.periventricular[i], axes, rotation))
    body = np.flatnonzero(lm.horn < 0)
    for _ in range(int(rng.integers(g["bands"][0], g["bands"][1] + 1))):
        i = body[rng.integers(len(body))]
        axes = np.array([rng.uniform(*g["band_mm"]), rng.uniform(8.0, 20.0), rng.uniform(3.0, 7.0)])
        rotation = _wall_rotation(lm.normals[i], lm.anterior, rng.uniform(-0.3, 0.3))
        lesions.append(WmhLesion("band", lm.periventricular[i], axes, rotation))
    for _ in range(int(rng.integers(g["deep"][0], g["deep"][1] + 1))):
        axes = rng.uniform(*g["deep_mm"]) * np.exp(rng.uniform(-0.3, 0.3, size=3))
        centre = lm.deep[rng.integers(len(lm.deep))] + rng.uniform(-1.0, 1.0, size=3)
        lesions.append(WmhLesion("deep", centre, axes, Rotation.random(random_state=rng).as_matrix()))
    for _ in range(num_lacunes):
        axes = rng.uniform(2.5, 5.0) * np.exp(rng.uniform(-0.2, 0.2, size=3))
        centre = lm.lacune[rng.integers(len(lm.lacune))] + rng.uniform(-1.0, 1.0, size=3)
        lesions.append(WmhLesion("lacune", centre, axes, Rotation.random(random_state=rng).as_matrix()))
    return lesions


def _lesion_fraction(
    lesions: list[WmhLesion], deformation: PhantomDeformation, grid: PhantomGrid, coords: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    """Soft (partial-volume) union of ``lesions`` on the subject grid: ``max_k clip(0.5 + (1 - d_k) r_k / res)``,
    ``d_k`` the normalised ellipsoid radius at the template position of each voxel, perturbed by ``noise``."""
    out = np.zeros(grid.shape, np.float32)
    if not lesions:
        return out
    res = grid.resolution
    centres = deformation.inverse_points(np.stack([les.template_centre for les in lesions]))
    for les, centre in zip(lesions, centres):
        r = float(np.prod(les.axes) ** (1.0 / 3.0))
        reach = 1.15 * 1.3 * les.axes.max() * (1.0 + 0.5 * res / r) + res + 2.0
        box = []
        for ax, c in zip(grid.axes, centre):
            lo, hi = int(np.searchsorted(ax, c - reach)), int(np.searchsorted(ax, c + reach))
            box.append(slice(min(lo, len(ax)), min(hi, len(ax))))
        b = tuple(box)
        if any(s.stop <= s.start for s in b):
            continue
        y = coords[(slice(None), *b)] - les.template_centre.reshape(3, 1, 1, 1)
        q = np.tensordot(les.rotation.T, y, axes=1) / les.axes.reshape(3, 1, 1, 1)
        d = np.sqrt((q**2).sum(axis=0)) * np.exp(_IRREGULARITY * np.tanh(noise[b]))
        out[b] = np.maximum(out[b], np.clip(0.5 + (1.0 - d) * (r / res), 0.0, 1.0))
    return out


def wmh_lesion_tissues(
    lesions: list[WmhLesion],
    deformation: PhantomDeformation,
    grid: PhantomGrid,
    coords: np.ndarray,
    noise: np.ndarray,
    csf: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    brain: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Put ``lesions`` into the normal tissues of a subject.

    A lacune replaces all tissue; WMH then replace the remaining white matter only.

    Args:
        lesions: the subject's lesions (:func:`draw_wmh_lesions`).
        deformation: the subject's map to the template.
        grid: the output grid.
        coords: template mm coordinates of the grid voxels, ``deformation.on_grid(grid.axes)``, ``(3, X, Y, Z)``.
        noise: smooth unit-variance field ``(X, Y, Z)`` perturbing the lesion boundaries.
        csf, gm, wm, brain: the normal tissue fractions and the brain fraction on ``grid``.

    Returns:
        ``(fractions, seg, brain_mask)``: tissue name (``csf, gm, wm, wmh, lacune``) -> float32 fraction; the uint8
        WMH-challenge label map (:data:`WMH_LABELS`, a voxel is labelled when at least half of it is
        lesion tissue); the bool brain mask (brain fraction >= 0.5).
    """
    brain_mask = brain >= 0.5
    s_lac = _lesion_fraction([x for x in lesions if x.kind == "lacune"], deformation, grid, coords, noise)
    s_wmh = _lesion_fraction([x for x in lesions if x.kind != "lacune"], deformation, grid, coords, noise)
    f_lac = brain * s_lac
    keep = 1.0 - s_lac
    csf, gm, wm = csf * keep, gm * keep, wm * keep
    f_wmh = wm * s_wmh
    wm = wm - f_wmh
    seg = np.zeros(grid.shape, np.uint8)
    seg[brain_mask & (f_wmh >= _LESION_MIN_FRACTION)] = WMH_LABELS["wmh"]
    seg[brain_mask & (f_lac >= _LESION_MIN_FRACTION)] = WMH_LABELS["other"]
    fractions = {"csf": csf, "gm": gm, "wm": wm, "wmh": f_wmh, "lacune": f_lac}
    return {k: np.asarray(v, dtype=np.float32) for k, v in fractions.items()}, seg, brain_mask
