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
"""One phantom subject: the random draws of a seed put together (anatomy, tumours, MR signal).

The pieces are :mod:`monai_msgldm.data.phantom_anatomy` (template, grid, deformation),
:mod:`monai_msgldm.data.phantom_tumours` (tumour drawing and tissue maps) and :mod:`monai_msgldm.data.phantom_mr`
(relaxation values, signal equations, bias and noise). The argument checks shared with the dataset writers are here.
"""

from __future__ import annotations

import logging

import numpy as np

from monai_msgldm.constants import BRATS_LABELS_2020, MODALITIES
from monai_msgldm.data.phantom_anatomy import (
    PhantomDeformation,
    SplineField,
    load_phantom_template,
    phantom_grid,
    warp_template_fractions,
)
from monai_msgldm.data.phantom_mr import jitter_tissues, phantom_images
from monai_msgldm.data.phantom_tumours import draw_tumours, tumour_tissues

__all__ = ["generate_phantom_subject", "check_seed", "check_resolution", "check_snr"]

logger = logging.getLogger("monai_msgldm.data.phantom")  # the documented logger of the phantom (docs/data.md)

_MIN_RESOLUTION, _MAX_RESOLUTION = 1.0, 8.0
_MAX_TUMOURS = 3
_MAX_ATTEMPTS = 10


def check_seed(seed, name: str, caller: str) -> int:
    """``seed`` as an int; raises ``ValueError("<caller> expects <name> ...")`` unless it is a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{caller} expects {name} to be a non-negative int, got {seed!r}.")
    return int(seed)


def check_resolution(resolution, caller: str) -> float:
    """``resolution`` as a float; raises ``ValueError`` unless it is a number of mm in [1, 8]."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float, np.integer, np.floating)):
        raise ValueError(f"{caller} expects resolution to be a number of mm, got {resolution!r}.")
    if not _MIN_RESOLUTION <= float(resolution) <= _MAX_RESOLUTION:
        raise ValueError(
            f"{caller} expects resolution in [{_MIN_RESOLUTION}, {_MAX_RESOLUTION}] mm, got {resolution!r}."
        )
    return float(resolution)


def check_snr(snr, caller: str) -> float:
    """``snr`` as a float; raises ``ValueError`` unless it is > 0 (``inf`` for no noise)."""
    if isinstance(snr, bool) or not isinstance(snr, (int, float, np.integer, np.floating)) or not snr > 0:
        raise ValueError(f"{caller} expects snr > 0 (float('inf') for no noise), got {snr!r}.")
    return float(snr)


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
    seed = check_seed(seed, "seed", caller)
    resolution = check_resolution(resolution, caller)
    snr = check_snr(snr, caller)
    if num_tumours is not None and (
        isinstance(num_tumours, bool)
        or not isinstance(num_tumours, (int, np.integer))
        or not 1 <= num_tumours <= _MAX_TUMOURS
    ):
        raise ValueError(
            f"{caller} expects num_tumours to be None or an int in [1, {_MAX_TUMOURS}], got {num_tumours!r}."
        )

    tpl = load_phantom_template()
    grid = phantom_grid(resolution)
    extent = [n * tpl.zoom for n in tpl.shape]
    anat_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(anat_seq)
    rng_noise = np.random.default_rng(noise_seq)

    # --- resolution-independent draws: anatomy, physiology, acquisition (their order fixes the subject of a seed)
    drawn_num = int(rng.choice([1, 2], p=[0.65, 0.35]))
    num = int(num_tumours) if num_tumours is not None else drawn_num
    deformation = PhantomDeformation(rng, tpl, extent)
    tissues = jitter_tissues(rng)
    concentration = rng.uniform(0.25, 0.45)  # mmol/L of gadolinium in enhancing tissue
    texture = SplineField(rng, 3, spacing=6.0, extent=extent)  # enhancement, edema, necrosis heterogeneity
    bias = SplineField(rng, 1 + len(MODALITIES), spacing=60.0, extent=extent)
    gains = np.exp(rng.normal(0.0, 0.1, size=len(MODALITIES)))

    for attempt in range(_MAX_ATTEMPTS):
        tumours = draw_tumours(rng, tpl, num, extent)
        deformation.place(tumours)
        csf, gm, wm, brain = warp_template_fractions(deformation, tpl, grid)
        fractions, seg, brain_mask = tumour_tissues(tumours, grid, csf, gm, wm, brain)
        if all((seg == v).any() for v in BRATS_LABELS_2020.values()):
            break
        logger.debug("phantom seed %d: tumour attempt %d does not show all labels, drawing again", seed, attempt)
    else:
        raise RuntimeError(
            f"generate_phantom_subject could not place tumours showing all labels at resolution {resolution} mm "
            f"(seed {seed}); use a finer resolution."
        )

    out: dict = phantom_images(
        fractions,
        tissues,
        concentration,
        texture=texture.on_grid(grid.axes),
        bias=bias.on_grid(grid.axes),
        gains=gains,
        snr=snr,
        brain_mask=brain_mask,
        rng=rng_noise,
    )
    out["seg"] = seg
    out["brain_mask"] = brain_mask
    out["affine"] = grid.affine.copy()
    if return_fractions:
        out["fractions"] = {k: np.asarray(v, dtype=np.float32) for k, v in fractions.items()}
    return out
