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
"""Phantom datasets on disk: cases, whole datasets, and the cached default dataset, for every kind of phantom.

A :class:`PhantomLayout` says how a kind of phantom makes its subjects and names its files; the dataset code is shared:
every file is written atomically and a case folder appears complete or not at all, so an interrupted run is resumed
by generating the missing cases only, and the cached datasets serialise concurrent processes with a file lock. The
tumour phantom (BraTS 2020 layout) is :data:`BRATS_PHANTOM_LAYOUT`; the WMH phantom's layout is in
:mod:`~monai_msgldm.data.phantom_wmh`. The layouts are described in ``docs/data.md``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from monai.utils import optional_import

from monai_msgldm.constants import BRATS2020_SUFFIXES
from monai_msgldm.data.phantom_subject import check_resolution, check_seed, check_snr, generate_phantom_subject
from monai_msgldm.utils.files import atomic_write_bytes, atomic_write_text

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = [
    "PHANTOM_DATASET_FILE",
    "PHANTOM_COMPLETE_MARKER",
    "phantom_subject_seed",
    "phantom_case_id",
    "phantom_cache_dir",
    "PhantomLayout",
    "BRATS_PHANTOM_LAYOUT",
    "write_layout_case",
    "generate_layout_dataset",
    "ensure_layout_dataset",
    "write_phantom_case",
    "generate_phantom_dataset",
    "ensure_phantom_dataset",
]

logger = logging.getLogger("monai_msgldm.data.phantom")  # the documented logger of the phantom (docs/data.md)

#: Parameters of a phantom dataset folder (JSON, at the folder root), written before the cases.
PHANTOM_DATASET_FILE = "phantom_dataset.json"
#: Written last by :func:`ensure_phantom_dataset`: its presence means the folder is complete.
PHANTOM_COMPLETE_MARKER = ".phantom_complete"

_MODEL_VERSION = 1  # bump when the generated images change for a given seed


def phantom_subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a dataset generated with ``seed`` (a deterministic hash of both)."""
    seed = check_seed(seed, "seed", "phantom_subject_seed")
    index = check_seed(index, "index", "phantom_subject_seed")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def phantom_case_id(index: int) -> str:
    """Case id of subject ``index``: ``Phantom_000``, ``Phantom_001``, ..."""
    return f"Phantom_{int(index):03d}"


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes, reproducible (no time stamp in the gzip header)."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


@dataclass(frozen=True)
class PhantomLayout:
    """A kind of phantom dataset: how its subjects are made and where their files go.

    The dataset code below (writing a case atomically, a whole dataset, the cached dataset with its lock and marker)
    is shared by every kind; :data:`BRATS_PHANTOM_LAYOUT` is the tumour phantom, the WMH phantom has its own.

    Attributes:
        name: prefix of the cached folders (``<name>_n{num_subjects}_r{resolution}_s{seed}``) and name in the logs.
        generator: recorded in ``phantom_dataset.json`` and the marker; folders of another generator are refused.
        version: the model version; bump it when the generated images of a seed change.
        files: case id -> key (a subject key) -> file path relative to the case folder.
        make_subject: ``(seed, resolution, snr) -> subject`` dict holding the ``files`` keys and ``"affine"``.
        label_keys: keys written as uint8 label maps (the others as float32).
    """

    name: str
    generator: str
    version: int
    files: Callable[[str], dict[str, str]]
    make_subject: Callable[[int, float, float], dict]
    label_keys: tuple[str, ...] = ("seg",)


def _case_files(layout: PhantomLayout, case_dir: str, case: str) -> dict[str, str]:
    return {k: os.path.join(case_dir, *rel.split("/")) for k, rel in layout.files(case).items()}


def _case_complete(layout: PhantomLayout, case_dir: str, case: str) -> bool:
    return os.path.isdir(case_dir) and all(os.path.isfile(p) for p in _case_files(layout, case_dir, case).values())


def write_layout_case(layout: PhantomLayout, subject: dict, output_dir: str | os.PathLike, case: str, caller: str):
    """Write one subject as the case folder ``<output_dir>/<case>`` of ``layout``, atomically.

    The case is built in ``<case>.tmp`` (each file written under a temporary name then renamed) and the folder is
    renamed into place at the end, so ``<case>`` is either complete or absent. An existing ``<case>`` is replaced.
    ``caller`` names the public function in the error messages. Returns the case folder.
    """
    if not isinstance(case, str) or not case or os.sep in case or case.startswith("."):
        raise ValueError(f"{caller} expects case to be a plain folder name, got {case!r}.")
    missing = [k for k in (*layout.files(case), "affine") if k not in subject]
    if missing:
        raise ValueError(f"{caller} expects subject to hold keys {missing}, got {sorted(subject)}.")
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    case_dir = os.path.join(output_dir, case)
    tmp_dir, old_dir = case_dir + ".tmp", case_dir + ".old"
    for stale in (tmp_dir, old_dir):
        if os.path.exists(stale):
            shutil.rmtree(stale)
    os.makedirs(tmp_dir)
    affine = np.asarray(subject["affine"], dtype=np.float64)
    for key, path in _case_files(layout, tmp_dir, case).items():
        array = np.asarray(subject[key], dtype=np.uint8 if key in layout.label_keys else np.float32)
        atomic_write_bytes(path, _nifti_bytes(array, affine))
    if os.path.exists(case_dir):
        os.replace(case_dir, old_dir)
        os.replace(tmp_dir, case_dir)
        shutil.rmtree(old_dir)
    else:
        os.replace(tmp_dir, case_dir)
    return case_dir


def _dataset_params(layout: PhantomLayout, resolution: float, seed: int, snr: float) -> dict:
    return {"generator": layout.generator, "version": layout.version, "resolution": resolution, "seed": seed,
            "snr": snr if math.isfinite(snr) else "inf"}  # fmt: skip


def _check_num_subjects(num_subjects, caller: str) -> int:
    if isinstance(num_subjects, bool) or not isinstance(num_subjects, (int, np.integer)) or num_subjects < 1:
        raise ValueError(f"{caller} expects num_subjects to be a positive int, got {num_subjects!r}.")
    return int(num_subjects)


def generate_layout_dataset(
    layout: PhantomLayout,
    output_dir: str | os.PathLike,
    num_subjects: int,
    resolution: float,
    seed: int,
    snr: float,
    overwrite: bool,
    progress: bool,
    caller: str,
) -> list[str]:
    """Write ``num_subjects`` subjects of ``layout`` (the body of :func:`generate_phantom_dataset` and its WMH twin).

    Subject ``i`` is :func:`phantom_case_id` ``(i)`` with seed :func:`phantom_subject_seed` ``(seed, i)``. Existing
    complete cases are kept unless ``overwrite``; partial leftovers (``<case>.tmp``) are rebuilt. The parameters are
    recorded in ``<output_dir>/phantom_dataset.json``; a folder made with other parameters (or by another generator)
    is refused unless ``overwrite``. ``caller`` names the public function in the error messages.
    """
    num_subjects = _check_num_subjects(num_subjects, caller)
    resolution = check_resolution(resolution, caller)
    seed = check_seed(seed, "seed", caller)
    snr = check_snr(snr, caller)
    output_dir = os.fspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"{caller} expects output_dir to be a folder, got the file '{output_dir}'.")
    os.makedirs(output_dir, exist_ok=True)

    params = _dataset_params(layout, resolution, seed, snr)
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
    atomic_write_text(meta_path, json.dumps(params, indent=2) + "\n")

    name = layout.name
    logger.info(
        "%s: %d subjects at %g mm (seed %d, SNR %g) in '%s'", name, num_subjects, resolution, seed, snr, output_dir
    )
    start = time.perf_counter()
    cases, made = [], 0
    indices = range(num_subjects)
    bar = tqdm(indices, desc=name, unit="subject") if (progress and has_tqdm) else indices
    for i in bar:
        case = phantom_case_id(i)
        case_dir = os.path.join(output_dir, case)
        if not overwrite and _case_complete(layout, case_dir, case):
            logger.debug("%s: keeping complete case '%s'", name, case_dir)
            cases.append(case_dir)
            continue
        t0 = time.perf_counter()
        subject = layout.make_subject(phantom_subject_seed(seed, i), resolution, snr)
        cases.append(write_layout_case(layout, subject, output_dir, case, caller))
        made += 1
        logger.debug("%s: wrote '%s' in %.2f s", name, case_dir, time.perf_counter() - t0)
    logger.info("%s: %d written, %d kept, %.1f s", name, made, len(cases) - made, time.perf_counter() - start)
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


def _marker_ok(layout: PhantomLayout, folder: str, params: dict, num_subjects: int) -> bool:
    marker = os.path.join(folder, PHANTOM_COMPLETE_MARKER)
    try:
        with open(marker) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return False
    if content != {**params, "num_subjects": num_subjects}:
        return False
    return all(
        _case_complete(layout, os.path.join(folder, phantom_case_id(i)), phantom_case_id(i))
        for i in range(num_subjects)
    )


def ensure_layout_dataset(
    layout: PhantomLayout,
    cache_dir: str | os.PathLike | None,
    num_subjects: int,
    resolution: float,
    seed: int,
    caller: str,
) -> str:
    """A dataset of ``layout`` generated once into ``<cache>/<layout.name>_n{num_subjects}_r{resolution}_s{seed}``
    and reused afterwards (the body of :func:`ensure_phantom_dataset` and its WMH twin; SNR 30).

    The marker file ``.phantom_complete`` (the parameters, JSON) is written last; when it is missing or differs (an
    interrupted run) the missing cases are generated and the kept ones are left untouched. Concurrent calls are
    serialised with a file lock ``<cache>/.<folder name>.lock``. Returns the dataset folder.
    """
    num_subjects = _check_num_subjects(num_subjects, caller)
    resolution = check_resolution(resolution, caller)
    seed = check_seed(seed, "seed", caller)
    snr = 30.0
    root = phantom_cache_dir(cache_dir)
    name = f"{layout.name}_n{num_subjects}_r{resolution}_s{seed}"
    folder = os.path.join(root, name)
    params = _dataset_params(layout, resolution, seed, snr)
    if _marker_ok(layout, folder, params, num_subjects):
        logger.debug("%s: using cached dataset '%s'", layout.name, folder)
        return folder
    os.makedirs(root, exist_ok=True)
    with _file_lock(os.path.join(root, f".{name}.lock")):
        if _marker_ok(layout, folder, params, num_subjects):  # made by another process meanwhile
            return folder
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, PHANTOM_COMPLETE_MARKER))
        logger.info("%s: generating the dataset in '%s' (once)", layout.name, folder)
        generate_layout_dataset(layout, folder, num_subjects, resolution, seed, snr, False, True, caller)
        marker = {**params, "num_subjects": num_subjects}
        atomic_write_text(os.path.join(folder, PHANTOM_COMPLETE_MARKER), json.dumps(marker) + "\n")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# the tumour phantom in the BraTS 2020 layout
# ---------------------------------------------------------------------------------------------------------------

#: The tumour phantom: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (BraTS 2020), cached as ``phantom_n..``.
BRATS_PHANTOM_LAYOUT = PhantomLayout(
    name="phantom",
    generator="monai_msgldm.phantom",
    version=_MODEL_VERSION,
    files=lambda case: {k: f"{case}_{s}.nii.gz" for k, s in BRATS2020_SUFFIXES.items()},
    # looked up at call time, so that the module attribute can be patched
    make_subject=lambda seed, resolution, snr: generate_phantom_subject(seed, resolution=resolution, snr=snr),
)


def write_phantom_case(subject: dict, output_dir: str | os.PathLike, case: str) -> str:
    """Write one subject as ``<output_dir>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, atomically.

    The case is built in ``<case>.tmp`` (each file written under a temporary name then renamed) and the folder is
    renamed into place at the end, so ``<case>`` is either complete or absent. An existing ``<case>`` is replaced.

    Args:
        subject: output of :func:`~monai_msgldm.data.phantom.generate_phantom_subject`.
        output_dir: dataset folder (created if missing).
        case: case id, e.g. ``"Phantom_000"``.

    Returns:
        the case folder.
    """
    return write_layout_case(BRATS_PHANTOM_LAYOUT, subject, output_dir, case, "write_phantom_case")


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
        snr: signal-to-noise ratio (see :func:`~monai_msgldm.data.phantom.generate_phantom_subject`).
        overwrite: regenerate cases that already exist.
        progress: show a tqdm progress bar.

    Returns:
        the case folders, in subject order.

    Example:
        >>> cases = generate_phantom_dataset("/tmp/phantom", num_subjects=2, progress=False)
        >>> [os.path.basename(c) for c in cases]
        ['Phantom_000', 'Phantom_001']
    """
    return generate_layout_dataset(
        BRATS_PHANTOM_LAYOUT, output_dir, num_subjects, resolution, seed, snr, overwrite, progress,
        "generate_phantom_dataset",
    )  # fmt: skip


def ensure_phantom_dataset(
    cache_dir: str | os.PathLike | None = None,
    num_subjects: int = 10,
    resolution: float = 2.0,
    seed: int = 0,
    layout: str = "brats",
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
        layout: ``"brats"`` (the tumour phantom, T1 / T1CE / T2 / FLAIR) or ``"wmh"`` (the white-matter
            hyperintensity phantom, FLAIR / T1, in the WMH challenge layout:
            :func:`~monai_msgldm.data.phantom.ensure_wmh_phantom_dataset`); a bundle's ``phantom_layout``.

    Returns:
        the dataset folder (BraTS 2020 layout, or the WMH layout).

    Example:
        >>> data_root = ensure_phantom_dataset(num_subjects=10, resolution=2.0)
    """
    if layout == "wmh":
        from monai_msgldm.data.phantom_wmh import ensure_wmh_phantom_dataset  # imports this module

        return ensure_wmh_phantom_dataset(cache_dir, num_subjects, resolution, seed)
    if layout != "brats":
        raise ValueError(f"ensure_phantom_dataset expects layout 'brats' or 'wmh', got {layout!r}.")
    return ensure_layout_dataset(
        BRATS_PHANTOM_LAYOUT, cache_dir, num_subjects, resolution, seed, "ensure_phantom_dataset"
    )
