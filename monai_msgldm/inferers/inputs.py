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
"""The checked data items of an inference run (``inference.json``): one case given by its files, or a datalist."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import load_decathlon_datalist

from ..constants import MODALITIES
from ..data.validation import validate_case
from .naming import CASE_KEY, case_name_from_files, is_valid_file_name

__all__ = ["check_case_files", "synthesis_datalist"]

_IGNORED_KEYS = ("seg",)


def check_case_files(
    files: Mapping[str, Any],
    modalities: Sequence[str] = MODALITIES,
    case_name: str | None = None,
    atol: float = 1e-3,
    source: str = "case",
    check_content: bool = True,
    same_grid: bool = True,
) -> dict[str, str]:
    """Check the input files of one case before anything is run or written; return its data item.

    Checks: every key is a known modality (``"seg"`` is accepted and dropped, as is a ``"case"`` name), at least
    one modality is given as a path (None or an empty string = missing modality), the case name is a valid file
    name, and :func:`monai_msgldm.data.validation.validate_case` passes: each given file is an existing, readable
    3D NIfTI file and all share the voxel grid (same shape, affines equal within ``atol``); with
    ``check_content``, their voxels are finite and not all zero.

    Args:
        files: modality name -> file path or None (may also hold ``"case"``: the case name).
        modalities: the known modality names, in channel order.
        case_name: the output name of the case; None: ``files["case"]`` or :func:`case_name_from_files`.
        atol: absolute tolerance of the affine comparison.
        source: where ``files`` comes from, used in the messages of the item-level errors (e.g.
            ``"datalist.json item 3"``); the file-level errors name the case.
        check_content: also read the voxels (the MONAI Label app checks a study this way before running it).
            :func:`synthesis_datalist` leaves it off: the bundle's preprocessing checks the voxels when it loads
            them (``CheckImageValuesd``), so that each file is read once.
        same_grid: require the given files on one grid; False when the preprocessing registers and resamples
            contrasts on different grids (``brats_preprocessing_transforms(align=True)``).

    Returns:
        ``{modality: path}`` for the given modalities (in ``modalities`` order) plus ``"case"``: the case name.

    Raises:
        MissingCaseFileError: a given file does not exist (a ``FileNotFoundError`` and an ``InvalidCaseError``).
        InvalidCaseError: unreadable/non-3D file, different grids, NaN/Inf voxels or an empty image (all naming
            the case and the file(s)).
        ValueError: not a mapping, unknown modality, no modality, bad case name.

    Example::

        >>> item = check_case_files({"t1": "c_t1.nii.gz", "t1ce": None, "t2": "c_t2.nii.gz"})  # doctest: +SKIP
        >>> item  # doctest: +SKIP
        {'t1': 'c_t1.nii.gz', 't2': 'c_t2.nii.gz', 'case': 'c'}
    """
    if not isinstance(files, Mapping):
        raise ValueError(f"{source}: expected a mapping of modality name -> file path, got {type(files).__name__}.")
    unknown = [k for k in files if k not in modalities and k not in _IGNORED_KEYS and k != CASE_KEY]
    if unknown:
        raise ValueError(
            f"{source}: unknown modality name(s) {unknown}; expected names among {list(modalities)} "
            f"(and optionally {list(_IGNORED_KEYS)} or '{CASE_KEY}')."
        )
    given: dict[str, str] = {}
    for modality in modalities:
        path = files.get(modality)
        if path is None or path == "":
            continue
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"{source}: '{modality}' must be a file path or None, got {type(path).__name__}.")
        given[modality] = os.fspath(path)
    if not given:
        raise ValueError(
            f"{source}: no available modality; give at least one of {list(modalities)} as a file path "
            f"(e.g. --t1 /data/case_t1.nii.gz)."
        )
    name = case_name if case_name is not None else files.get(CASE_KEY)
    name = case_name_from_files(given) if name is None else name
    if not is_valid_file_name(name):
        raise ValueError(
            f"{source}: the case name must be a non-empty file name of letters, digits and ._+-, got {name!r}."
        )
    validate_case(name, given, check_content=check_content, label_keys=(), affine_atol=atol, same_grid=same_grid)
    return {**given, CASE_KEY: name}


def synthesis_datalist(
    case: Mapping[str, Any] | None = None,
    datalist: str | os.PathLike | None = None,
    data_list_key: str = "testing",
    base_dir: str | os.PathLike | None = None,
    case_name: str | None = None,
    modalities: Sequence[str] = MODALITIES,
    same_grid: bool = True,
) -> list[dict[str, str]]:
    """The checked data items of an inference run: one case given by its files, or every case of a datalist.

    Every case is checked by :func:`check_case_files` from the NIfTI headers (files, 3D, one grid); the voxels
    are checked by the preprocessing when it loads them.

    Args:
        case: modality name -> file path or None (missing); used when ``datalist`` is None.
        datalist: a Decathlon-style datalist JSON file (items with modality keys; ``"seg"`` is ignored).
        data_list_key: the key of the item list in ``datalist``.
        base_dir: base folder of the relative paths in ``datalist`` (default: the datalist's folder).
        case_name: output name of the single ``case`` (None: derived from its file names).
        modalities: the known modality names, in channel order.
        same_grid: require each case's files on one grid (see :func:`check_case_files`).

    Returns:
        A list of items ``{modality: path, ..., "case": name}``.

    Raises:
        ValueError: both or neither of a case and a datalist, a bad datalist, duplicate case names, or a bad case.
        FileNotFoundError: the datalist or a given image file does not exist.

    Example::

        >>> synthesis_datalist({"t1": "c_t1.nii.gz", "t1ce": None, "t2": None, "flair": None})  # doctest: +SKIP
        [{'t1': 'c_t1.nii.gz', 'case': 'c'}]
    """
    has_case = case is not None and any(v not in (None, "") for v in dict(case).values())
    file_args = "/".join(f"--{m}" for m in modalities)
    if datalist is None:
        if case is None:
            raise ValueError(f"synthesis_datalist expects a case ({file_args}) or a --datalist, got neither.")
        return [
            check_case_files(case, modalities=modalities, case_name=case_name, check_content=False, same_grid=same_grid)
        ]
    if has_case:
        raise ValueError(
            f"synthesis_datalist expects either a case ({file_args}) or a --datalist, got both "
            f"(datalist {os.fspath(datalist)})."
        )
    datalist = os.fspath(datalist)
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"the datalist {datalist} does not exist (--datalist).")
    try:
        items = load_decathlon_datalist(datalist, is_segmentation=False, data_list_key=data_list_key, base_dir=base_dir)
    except (ValueError, KeyError) as e:
        raise ValueError(f"the datalist {datalist} cannot be read with data_list_key '{data_list_key}': {e}") from e
    if not items:
        raise ValueError(f"the datalist {datalist} has no item under '{data_list_key}'.")
    checked = [
        check_case_files(
            item,
            modalities=modalities,
            source=f"datalist {datalist} item {i}",
            check_content=False,
            same_grid=same_grid,
        )
        for i, item in enumerate(items)
    ]
    names = [item[CASE_KEY] for item in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"the datalist {datalist} has several cases named {duplicates}; their outputs would overwrite each "
            "other (give each item a distinct 'case')."
        )
    return checked
