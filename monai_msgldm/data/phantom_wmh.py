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
"""The WMH phantom: FLAIR and T1 with white-matter hyperintensities (small-vessel disease), in the WMH challenge layout.

The counterpart of :mod:`~monai_msgldm.data.phantom_subject` and of the BraTS writers of
:mod:`~monai_msgldm.data.phantom_writing` for the WMH challenge data: the same anatomy
(:mod:`~monai_msgldm.data.phantom_anatomy`) and MR physics (:mod:`~monai_msgldm.data.phantom_mr`), with the lesions
of :mod:`~monai_msgldm.data.phantom_wmh_lesions` instead of tumours, and the same dataset code (atomic cases, cache,
lock, marker) with :data:`WMH_PHANTOM_LAYOUT`. The public entry is :mod:`monai_msgldm.data.phantom`.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from monai_msgldm.constants import WMH_LABELS, WMH_MODALITIES
from monai_msgldm.data.phantom_anatomy import (
    PhantomDeformation,
    SplineField,
    load_phantom_template,
    phantom_grid,
    warp_template_fractions,
)
from monai_msgldm.data.phantom_mr import PHANTOM_TISSUES, PHANTOM_WMH_TISSUES, jitter_tissues, phantom_contrast_images
from monai_msgldm.data.phantom_subject import check_resolution, check_seed, check_snr
from monai_msgldm.data.phantom_wmh_lesions import WMH_GRADES, draw_wmh_lesions, wmh_lesion_tissues
from monai_msgldm.data.phantom_writing import (
    PhantomLayout,
    ensure_layout_dataset,
    generate_layout_dataset,
    write_layout_case,
)

__all__ = [
    "WMH_PHANTOM_FILES",
    "WMH_PHANTOM_LAYOUT",
    "generate_wmh_phantom_subject",
    "write_wmh_phantom_case",
    "generate_wmh_phantom_dataset",
    "ensure_wmh_phantom_dataset",
]

logger = logging.getLogger("monai_msgldm.data.phantom")  # the documented logger of the phantom (docs/data.md)

_MAX_ATTEMPTS = 10
_STREAM = 0x574D48  # "WMH": the subject of a seed is independent of the tumour phantom's subject of that seed
_TABLE = {**{k: PHANTOM_TISSUES[k] for k in ("csf", "gm", "wm")}, **PHANTOM_WMH_TISSUES}


def _check_choice(value, name: str, allowed: tuple, caller: str):
    if value is not None and (isinstance(value, (bool, np.bool_)) or value not in allowed):
        raise ValueError(f"{caller} expects {name} to be None or one of {allowed}, got {value!r}.")
    return value


def generate_wmh_phantom_subject(
    seed: int,
    resolution: float = 2.0,
    snr: float = 30.0,
    grade: int | None = None,
    num_lacunes: int | None = None,
    return_fractions: bool = False,
) -> dict:
    """One synthetic small-vessel-disease subject: co-registered FLAIR and T1, a WMH-challenge label map, a mask.

    The subject is a deterministic function of ``seed``: anatomy (the deformed MNI ICBM152 2009 template, as
    :func:`~monai_msgldm.data.phantom.generate_phantom_subject`), a lesion load (grade 1 low 45 %, 2 moderate
    35 %, 3 high 20 %), white-matter hyperintensities (periventricular caps at the ventricle horns and bands along the
    ventricle bodies, deep white-matter blobs; in white matter only, bright on FLAIR and mildly dark on T1), with
    probability 0.4 a lacune (label 2: a small CSF-like cavity, dark on FLAIR and T1), tissue relaxation values, bias
    field, gains and Rician noise. All draws but the noise are made in mm: the same seed gives the same subject at
    every ``resolution``. Images are skull-stripped (0 outside the brain mask).

    Args:
        seed: non-negative int.
        resolution: isotropic voxel size in mm, in [1, 8] (2: 98x116x94 voxels).
        snr: signal-to-noise ratio: the Rician noise level of each contrast is its mean brain signal / ``snr``;
            ``float("inf")`` gives noiseless images.
        grade: lesion load, 1 (low), 2 (moderate) or 3 (high), see
            :data:`~monai_msgldm.data.phantom_wmh_lesions.WMH_GRADES`; None draws it from the seed.
        num_lacunes: 0, 1 or 2 lacunes (label 2), which then show in the label map; None draws 0 (60 %) or 1
            (40 %) from the seed (a drawn lacune smaller than the voxels of a coarse grid may not be labelled).
        return_fractions: also return the partial-volume tissue fractions under ``"fractions"``.

    Returns:
        dict with ``"flair"``, ``"t1"``: float32 arrays (X, Y, Z); ``"seg"``: uint8 (X, Y, Z) with 0 background,
        1 white-matter hyperintensity, 2 other pathology (lacune); ``"brain_mask"``: bool (X, Y, Z); ``"affine"``:
        (4, 4) float64 voxel-to-RAS-world matrix; ``"grade"``: the lesion grade; with ``return_fractions``,
        ``"fractions"``: tissue name (``csf, gm, wm, wmh, lacune``) -> float32 (X, Y, Z).

    Raises:
        ValueError: for an invalid argument.
        RuntimeError: when no lesion draw shows label 1 (and label 2 when ``num_lacunes`` asks for lacunes) on the
            grid (very coarse grids).

    Example:
        >>> subject = generate_wmh_phantom_subject(seed=0, resolution=2.0)
        >>> subject["flair"].shape, set(np.unique(subject["seg"]).tolist()) <= {0, 1, 2}
        ((98, 116, 94), True)
    """
    caller = "generate_wmh_phantom_subject"
    seed = check_seed(seed, "seed", caller)
    resolution = check_resolution(resolution, caller)
    snr = check_snr(snr, caller)
    _check_choice(grade, "grade", tuple(WMH_GRADES), caller)
    _check_choice(num_lacunes, "num_lacunes", (0, 1, 2), caller)

    tpl = load_phantom_template()
    grid = phantom_grid(resolution)
    extent = [n * tpl.zoom for n in tpl.shape]
    anat_seq, noise_seq = np.random.SeedSequence([seed, _STREAM]).spawn(2)
    rng = np.random.default_rng(anat_seq)
    rng_noise = np.random.default_rng(noise_seq)

    # --- resolution-independent draws (their order fixes the subject of a seed)
    drawn_grade = int(rng.choice(list(WMH_GRADES), p=[0.45, 0.35, 0.2]))
    drawn_lacunes = int(rng.random() < 0.4)
    grade = drawn_grade if grade is None else int(grade)
    # a drawn lacune may vanish in the partial volume of a coarse grid; one asked for must show
    show_lacunes = bool(num_lacunes)
    num_lacunes = drawn_lacunes if num_lacunes is None else int(num_lacunes)
    deformation = PhantomDeformation(rng, tpl, extent)
    tissues = jitter_tissues(rng, _TABLE)
    fields = SplineField(rng, 2, spacing=5.0, extent=extent)  # lesion boundaries, lesion relaxation heterogeneity
    bias = SplineField(rng, 1 + len(WMH_MODALITIES), spacing=60.0, extent=extent)
    gains = np.exp(rng.normal(0.0, 0.1, size=len(WMH_MODALITIES)))

    coords = deformation.on_grid(grid.axes)
    csf, gm, wm, brain = warp_template_fractions(deformation, tpl, grid, coords=coords)
    noise = fields.on_grid(grid.axes)
    wanted = {WMH_LABELS["wmh"]} | ({WMH_LABELS["other"]} if show_lacunes else set())
    for attempt in range(_MAX_ATTEMPTS):
        lesions = draw_wmh_lesions(rng, grade, num_lacunes)
        fractions, seg, brain_mask = wmh_lesion_tissues(
            lesions, deformation, grid, coords, noise[0], csf, gm, wm, brain
        )
        if all((seg == v).any() for v in wanted):
            break
        logger.debug("WMH phantom seed %d: lesion attempt %d does not show all labels, drawing again", seed, attempt)
    else:
        raise RuntimeError(
            f"{caller} could not place lesions showing labels {sorted(wanted)} at resolution {resolution} mm "
            f"(seed {seed}); use a finer resolution."
        )
    del coords

    params = {k: dict(v) for k, v in tissues.items()}
    params["wmh"]["t2"] = tissues["wmh"]["t2"] * np.exp(0.1 * np.tanh(noise[1]))
    params["wmh"]["t1"] = tissues["wmh"]["t1"] * np.exp(0.06 * np.tanh(noise[1]))
    out: dict = phantom_contrast_images(
        fractions, params, WMH_MODALITIES, bias.on_grid(grid.axes), gains, snr, brain_mask, rng_noise
    )
    out["seg"] = seg
    out["brain_mask"] = brain_mask
    out["affine"] = grid.affine.copy()
    out["grade"] = grade
    if return_fractions:
        out["fractions"] = fractions
    return out


#: Files of a WMH phantom case, relative to the subject folder: the WMH 2017 challenge layout (images in ``pre/``,
#: the label map next to it), as :func:`monai_msgldm.data.build_wmh_datalist` reads it.
WMH_PHANTOM_FILES: dict[str, str] = {"flair": "pre/FLAIR.nii.gz", "t1": "pre/T1.nii.gz", "seg": "wmh.nii.gz"}

#: The WMH phantom's dataset layout (cached as ``wmh_phantom_n{num_subjects}_r{resolution}_s{seed}``).
WMH_PHANTOM_LAYOUT = PhantomLayout(
    name="wmh_phantom",
    generator="monai_msgldm.phantom_wmh",
    version=1,  # bump when the generated images of a seed change
    files=lambda case: dict(WMH_PHANTOM_FILES),
    make_subject=lambda seed, resolution, snr: generate_wmh_phantom_subject(seed, resolution=resolution, snr=snr),
)


def write_wmh_phantom_case(subject: dict, output_dir: str | os.PathLike, case: str) -> str:
    """Write one WMH phantom subject as ``<output_dir>/<case>/pre/{FLAIR,T1}.nii.gz`` and ``<case>/wmh.nii.gz``.

    Images are float32, ``wmh.nii.gz`` uint8 (0 background, 1 WMH, 2 other pathology); the headers carry the
    subject's affine (qform and sform, mm) as in the BraTS phantom. The case folder is written atomically (built in
    ``<case>.tmp``, then renamed); an existing ``<case>`` is replaced.

    Args:
        subject: output of :func:`~monai_msgldm.data.phantom.generate_wmh_phantom_subject`.
        output_dir: dataset folder (created if missing).
        case: subject folder name, e.g. ``"Phantom_000"``.

    Returns:
        the case folder.
    """
    return write_layout_case(WMH_PHANTOM_LAYOUT, subject, output_dir, case, "write_wmh_phantom_case")


def generate_wmh_phantom_dataset(
    output_dir: str | os.PathLike,
    num_subjects: int = 10,
    resolution: float = 2.0,
    seed: int = 0,
    snr: float = 30.0,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Write ``num_subjects`` WMH phantom subjects in the WMH challenge layout (FLAIR, T1, ``wmh`` label map).

    Subject ``i`` is ``Phantom_{i:03d}`` with seed :func:`~monai_msgldm.data.phantom.phantom_subject_seed`
    ``(seed, i)``, files :data:`WMH_PHANTOM_FILES`. Complete cases already there are kept unless ``overwrite``;
    partial leftovers are rebuilt; the parameters are recorded in ``phantom_dataset.json`` and a folder made with
    others (or by the tumour phantom) is refused unless ``overwrite``, as :func:`~monai_msgldm.data.phantom.
    generate_phantom_dataset`. Read it with ``build_wmh_datalist(output_dir)``.

    Args:
        output_dir: dataset folder (created if missing).
        num_subjects: number of subjects, >= 1.
        resolution: voxel size in mm, in [1, 8].
        seed: non-negative int.
        snr: signal-to-noise ratio (see :func:`generate_wmh_phantom_subject`).
        overwrite: regenerate cases that already exist.
        progress: show a tqdm progress bar.

    Returns:
        the case folders, in subject order.

    Example:
        >>> cases = generate_wmh_phantom_dataset("/tmp/wmh_phantom", num_subjects=2, progress=False)
        >>> sorted(os.listdir(cases[0]))
        ['pre', 'wmh.nii.gz']
    """
    return generate_layout_dataset(
        WMH_PHANTOM_LAYOUT, output_dir, num_subjects, resolution, seed, snr, overwrite, progress,
        "generate_wmh_phantom_dataset",
    )  # fmt: skip


def ensure_wmh_phantom_dataset(
    cache_dir: str | os.PathLike | None = None, num_subjects: int = 10, resolution: float = 2.0, seed: int = 0
) -> str:
    """A WMH phantom dataset generated once into a cache folder and reused afterwards (FLAIR + T1 models' data).

    The folder is ``<cache>/wmh_phantom_n{num_subjects}_r{resolution}_s{seed}`` (e.g. ``wmh_phantom_n10_r2.0_s0``),
    beside the tumour phantom's folders in the same cache root
    (:func:`~monai_msgldm.data.phantom.phantom_cache_dir`), with the same marker (``.phantom_complete``, written
    last), resumption of interrupted runs and file lock as :func:`~monai_msgldm.data.phantom.ensure_phantom_dataset`.
    SNR is the default 30.

    Args:
        cache_dir: cache root; None for ``$MONAI_MSGLDM_CACHE`` or ``~/.cache/monai_msgldm``.
        num_subjects: number of subjects, >= 1.
        resolution: voxel size in mm, in [1, 8].
        seed: non-negative int.

    Returns:
        the dataset folder (WMH challenge layout).

    Example:
        >>> datalist = build_wmh_datalist(ensure_wmh_phantom_dataset(num_subjects=10, resolution=2.0))
    """
    return ensure_layout_dataset(
        WMH_PHANTOM_LAYOUT, cache_dir, num_subjects, resolution, seed, "ensure_wmh_phantom_dataset"
    )
