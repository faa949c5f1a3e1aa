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
"""Input checks, model loading and output writing of the bundle's ``inference.json`` (one case or a datalist)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn
from monai.config import KeysCollection
from monai.data import load_decathlon_datalist
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from ..constants import BRATS2020_SUFFIXES, BRATS2023_SUFFIXES, MODALITIES

__all__ = [
    "SaveSynthesizedModalitiesd",
    "case_name_from_files",
    "check_case_files",
    "load_model_weights",
    "synthesis_datalist",
]

_NIFTI_EXTS = (".nii.gz", ".nii")
_CASE_KEY = "case"
_IGNORED_KEYS = ("seg",)
_VALID_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


def _strip_nifti_ext(name: str) -> str:
    for ext in _NIFTI_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def case_name_from_files(files: Mapping[str, str]) -> str:
    """The case name shared by the files of one case.

    ``<case>_<suffix>.nii.gz`` (BraTS 2020) and ``<case>-<suffix>.nii.gz`` (BraTS 2023+) give ``<case>``; files that
    do not agree on a name give the name of their common folder, or else the first file's stem.

    Example::

        >>> case_name_from_files({"t1": "/d/BraTS20_001/BraTS20_001_t1.nii.gz", "t2": "/d/x/BraTS20_001_t2.nii"})
        'BraTS20_001'
    """
    if not files:
        raise ValueError("case_name_from_files expects at least one file, got none.")
    names = set()
    for modality, path in files.items():
        stem = _strip_nifti_ext(os.path.basename(os.fspath(path)))
        name = stem
        for suffix in (BRATS2020_SUFFIXES.get(modality), BRATS2023_SUFFIXES.get(modality), modality):
            if suffix is None:
                continue
            for sep in ("_", "-"):
                if stem.lower().endswith(sep + suffix.lower()) and len(stem) > len(suffix) + 1:
                    name = stem[: -len(suffix) - 1]
                    break
            if name != stem:
                break
        names.add(name)
    if len(names) == 1:
        return names.pop()
    folders = {os.path.dirname(os.path.abspath(os.fspath(p))) for p in files.values()}
    if len(folders) == 1:
        return os.path.basename(folders.pop())
    return _strip_nifti_ext(os.path.basename(os.fspath(next(iter(files.values())))))


def check_case_files(
    files: Mapping[str, Any],
    modalities: Sequence[str] = MODALITIES,
    case_name: str | None = None,
    atol: float = 1e-3,
    source: str = "case",
) -> dict[str, str]:
    """Check the input files of one case before anything is run or written; return its data item.

    Checks: every key is a known modality (``"seg"`` is accepted and dropped, as is a ``"case"`` name), each given
    path (None or an empty string = missing modality) is an existing, readable 3D NIfTI file without NaN voxels,
    at least one modality is given, and all given modalities share the voxel grid (same shape, affines equal within
    ``atol``).

    Args:
        files: modality name -> file path or None (may also hold ``"case"``: the case name).
        modalities: the known modality names, in channel order.
        case_name: the output name of the case; None: ``files["case"]`` or :func:`case_name_from_files`.
        atol: absolute tolerance of the affine comparison.
        source: where ``files`` comes from, used in the error messages (e.g. ``"datalist.json item 3"``).

    Returns:
        ``{modality: path}`` for the given modalities (in ``modalities`` order) plus ``"case"``: the case name.

    Raises:
        FileNotFoundError: a given file does not exist.
        ValueError: unknown modality, unreadable/non-3D file, NaN voxels, no modality, different grids, bad name.

    Example::

        >>> item = check_case_files({"t1": "c_t1.nii.gz", "t1ce": None, "t2": "c_t2.nii.gz"})  # doctest: +SKIP
        >>> item  # doctest: +SKIP
        {'t1': 'c_t1.nii.gz', 't2': 'c_t2.nii.gz', 'case': 'c'}
    """
    if not isinstance(files, Mapping):
        raise ValueError(f"{source}: expected a mapping of modality name -> file path, got {type(files).__name__}.")
    unknown = [k for k in files if k not in modalities and k not in _IGNORED_KEYS and k != _CASE_KEY]
    if unknown:
        raise ValueError(
            f"{source}: unknown modality name(s) {unknown}; expected names among {list(modalities)} "
            f"(and optionally {list(_IGNORED_KEYS)} or '{_CASE_KEY}')."
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

    ref_modality, ref_shape, ref_affine = None, None, None
    for modality, path in given.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source}: the '{modality}' file {path} does not exist.")
        if not path.lower().endswith(_NIFTI_EXTS):
            raise ValueError(f"{source}: the '{modality}' file {path} must be a NIfTI file (.nii or .nii.gz).")
        try:
            image = nib.load(path)
            data = np.asanyarray(image.dataobj)
        except Exception as e:
            raise ValueError(f"{source}: the '{modality}' file {path} cannot be read as NIfTI: {e}") from e
        shape = tuple(int(s) for s in image.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise ValueError(f"{source}: the '{modality}' file {path} must hold a 3D volume, got shape {image.shape}.")
        if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
            raise ValueError(
                f"{source}: the '{modality}' file {path} has {int(np.isnan(data).sum())} NaN voxels; "
                "replace them (e.g. by 0) before synthesis."
            )
        affine = np.asarray(image.affine, dtype=np.float64)
        if ref_modality is None:
            ref_modality, ref_shape, ref_affine = modality, shape, affine
            continue
        if shape != ref_shape:
            raise ValueError(
                f"{source}: the '{modality}' file {path} has shape {shape} but the '{ref_modality}' file "
                f"{given[ref_modality]} has {ref_shape}; the given modalities must be co-registered on one grid."
            )
        if not np.allclose(affine, ref_affine, atol=atol):
            raise ValueError(
                f"{source}: the '{modality}' file {path} has affine {affine.tolist()} but the '{ref_modality}' file "
                f"{given[ref_modality]} has {ref_affine.tolist()}; the given modalities must be co-registered "
                "on one grid."
            )

    name = case_name if case_name is not None else files.get(_CASE_KEY)
    name = case_name_from_files(given) if name is None else name
    if not isinstance(name, str) or not _VALID_NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"{source}: the case name must be a non-empty file name of letters, digits and ._+-, got {name!r}."
        )
    return {**given, _CASE_KEY: name}


def synthesis_datalist(
    case: Mapping[str, Any] | None = None,
    datalist: str | os.PathLike | None = None,
    data_list_key: str = "testing",
    base_dir: str | os.PathLike | None = None,
    case_name: str | None = None,
    modalities: Sequence[str] = MODALITIES,
) -> list[dict[str, str]]:
    """The checked data items of an inference run: one case given by its files, or every case of a datalist.

    Args:
        case: modality name -> file path or None (missing); used when ``datalist`` is None.
        datalist: a Decathlon-style datalist JSON file (items with modality keys; ``"seg"`` is ignored).
        data_list_key: the key of the item list in ``datalist``.
        base_dir: base folder of the relative paths in ``datalist`` (default: the datalist's folder).
        case_name: output name of the single ``case`` (None: derived from its file names).
        modalities: the known modality names, in channel order.

    Returns:
        A list of items ``{modality: path, ..., "case": name}``, all checked by :func:`check_case_files`.

    Raises:
        ValueError: both or neither of a case and a datalist, a bad datalist, duplicate case names, or a bad case.
        FileNotFoundError: the datalist or a given image file does not exist.

    Example::

        >>> synthesis_datalist({"t1": "c_t1.nii.gz", "t1ce": None, "t2": None, "flair": None})  # doctest: +SKIP
        [{'t1': 'c_t1.nii.gz', 'case': 'c'}]
    """
    has_case = case is not None and any(v not in (None, "") for v in dict(case).values())
    if datalist is None:
        if case is None:
            raise ValueError(
                "synthesis_datalist expects a case (--t1/--t1ce/--t2/--flair) or a --datalist, got neither."
            )
        return [check_case_files(case, modalities=modalities, case_name=case_name)]
    if has_case:
        raise ValueError(
            f"synthesis_datalist expects either a case (--t1/--t1ce/--t2/--flair) or a --datalist, got both "
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
        check_case_files(item, modalities=modalities, source=f"datalist {datalist} item {i}")
        for i, item in enumerate(items)
    ]
    names = [item[_CASE_KEY] for item in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"the datalist {datalist} has several cases named {duplicates}; their outputs would overwrite each "
            "other (give each item a distinct 'case')."
        )
    return checked


def load_model_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Strictly load the served model ``path`` (a plain state dict, as ``train_diffusion.json`` writes
    ``models/model.pt``; a dict holding it under ``"model"`` is accepted too) into ``network``.

    Raises:
        FileNotFoundError: ``path`` does not exist (names it and the ``--model_path`` override).
        ValueError: the file holds no state dict.

    Example::

        >>> load_model_weights(network, "models/model.pt")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the model checkpoint {path} does not exist: train with configs/train_diffusion.json (which writes "
            "models/model.pt) or point --model_path to the served MSGLDM state dict."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"the model checkpoint {path} must hold a state dict of tensors, got {type(state).__name__}.")
    network.load_state_dict(state, strict=True)
    return network


def _to_uint8(slice_2d: np.ndarray) -> np.ndarray:
    return np.round((np.clip(slice_2d, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


class SaveSynthesizedModalitiesd(MapTransform):
    """Write the MISSING modalities of a synthesized case, in the geometry of its input files, and a preview PNG.

    ``data[key]`` is the synthesized case ``(M, X, Y, Z)`` already restored to the input grid (``Invertd``), channels
    in ``modalities`` order; the given modalities are found in its meta data (``"<modality>_filename_or_obj"``, as
    written by :class:`monai_msgldm.transforms.StackModalitiesd`). For each missing modality the file
    ``<output_dir>/<case>/<case>_<modality>_<postfix>.nii.gz`` is written as float32 with the affine, qform/sform
    codes and shape of the first given input file. Intensities stay in the model's [-1, 1] range (values outside it
    are clipped when ``clip``): a missing modality has no original intensity scale to restore. ``<case>_preview.png`` shows ``preview_fractions`` axial slices
    (rows) of every modality (columns: given ones as preprocessed, synthesized ones marked "synth").

    All files are first written under temporary names in the case folder, then renamed: an error leaves no
    output file. The written paths are stored under ``"<key>_files"``.

    Args:
        keys: key of the synthesized case (one key).
        output_dir: output root folder.
        case_key: key of the case name.
        modalities: modality names in channel order.
        output_postfix: postfix of the output file names.
        preview: write the preview PNG.
        clip: clip the synthesized intensities to [-1, 1].
        preview_fractions: positions of the preview slices along the axial axis, in [0, 1].
        allow_missing_keys: don't raise an exception if a key is missing.

    Example::

        >>> saver = SaveSynthesizedModalitiesd("pred", output_dir="eval")
        >>> out = saver({"pred": restored_case, "case": "BraTS20_001"})  # doctest: +SKIP
        >>> out["pred_files"]  # doctest: +SKIP
        ['eval/BraTS20_001/BraTS20_001_t1ce_synth.nii.gz', 'eval/BraTS20_001/BraTS20_001_preview.png']
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        case_key: str = _CASE_KEY,
        modalities: Sequence[str] = MODALITIES,
        output_postfix: str = "synth",
        preview: bool = True,
        clip: bool = True,
        preview_fractions: Sequence[float] = (0.25, 0.5, 0.75),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SaveSynthesizedModalitiesd expects exactly one key, got {self.keys}.")
        if not preview_fractions or not all(0.0 <= float(f) <= 1.0 for f in preview_fractions):
            raise ValueError(
                f"SaveSynthesizedModalitiesd expects preview_fractions in [0, 1] (at least one), got {preview_fractions}."
            )
        if not output_postfix or not _VALID_NAME.match(output_postfix):
            raise ValueError(
                f"SaveSynthesizedModalitiesd expects output_postfix made of letters, digits and ._+-, "
                f"got {output_postfix!r}."
            )
        self.output_dir = os.fspath(output_dir)
        self.case_key = case_key
        self.modalities = tuple(modalities)
        self.output_postfix = output_postfix
        self.preview = preview
        self.clip = clip
        self.preview_fractions = tuple(float(f) for f in preview_fractions)

    def _given_files(self, meta: Mapping) -> dict[str, str]:
        given = {}
        for modality in self.modalities:
            name = meta.get(f"{modality}_filename_or_obj")
            if isinstance(name, (list, tuple)):
                name = name[0] if name else None
            if name:
                given[modality] = os.fspath(name)
        return given

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_files"] = self._save(d[key], d.get(self.case_key))
        return d

    def _save(self, pred: Any, case: Any) -> list[str]:
        name = "SaveSynthesizedModalitiesd"
        if isinstance(case, (list, tuple)) and len(case) == 1:
            case = case[0]
        if not isinstance(case, str) or not _VALID_NAME.match(case):
            raise ValueError(f"{name} expects the case name under '{self.case_key}', got {case!r}.")
        meta = getattr(pred, "meta", None)
        if meta is None:
            raise ValueError(f"{name} expects a MetaTensor carrying the input file names, got {type(pred).__name__}.")
        given = self._given_files(meta)
        if not given:
            raise ValueError(
                f"{name} expects '<modality>_filename_or_obj' meta data of the given modalities, got none."
            )
        volume = convert_to_numpy(pred, wrap_sequence=True).astype(np.float32)
        if volume.ndim != 4 or volume.shape[0] != len(self.modalities):
            raise ValueError(
                f"{name} expects '{self.keys[0]}' of shape ({len(self.modalities)}, X, Y, Z), got {volume.shape}."
            )
        reference = nib.load(next(iter(given.values())))
        ref_shape = tuple(int(s) for s in reference.shape[:3])
        if volume.shape[1:] != ref_shape:
            raise ValueError(
                f"{name}: the restored case has shape {volume.shape[1:]} but its input {next(iter(given.values()))} "
                f"has {ref_shape}; invert the preprocessing (Invertd) before saving."
            )
        if not np.isfinite(volume).all():
            raise ValueError(f"{name}: the synthesized case '{case}' has non-finite values.")
        if self.clip:
            volume = np.clip(volume, -1.0, 1.0)
        missing = [m for m in self.modalities if m not in given]

        case_dir = os.path.join(self.output_dir, case)
        created = not os.path.isdir(case_dir)
        os.makedirs(case_dir, exist_ok=True)
        pending: list[tuple[str, str]] = []  # (temporary path, final path)
        try:
            for modality in missing:
                final = os.path.join(case_dir, f"{case}_{modality}_{self.output_postfix}.nii.gz")
                tmp = self._tmp_name(case_dir, ".nii.gz")
                pending.append((tmp, final))
                image = nib.Nifti1Image(volume[self.modalities.index(modality)], reference.affine)
                image.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
                image.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
                image.header.set_xyzt_units(*reference.header.get_xyzt_units())
                image.set_data_dtype(np.float32)
                nib.save(image, tmp)
            if self.preview:
                final = os.path.join(case_dir, f"{case}_preview.png")
                tmp = self._tmp_name(case_dir, ".png")
                pending.append((tmp, final))
                self._preview(volume, missing, reference.affine).save(tmp, format="PNG")
            for tmp, final in pending:
                os.replace(tmp, final)
        except BaseException:
            for tmp, _ in pending:
                if os.path.exists(tmp):
                    os.remove(tmp)
            if created and not os.listdir(case_dir):
                os.rmdir(case_dir)
            raise
        return [final for _, final in pending]

    @staticmethod
    def _tmp_name(folder: str, suffix: str) -> str:
        fd, path = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
        os.close(fd)
        return path

    def _preview(self, volume: np.ndarray, missing: Sequence[str], affine: np.ndarray):
        from PIL import Image, ImageDraw

        codes = nib.aff2axcodes(affine)
        axial = next((i for i, c in enumerate(codes) if c in ("S", "I")), 2)
        in_plane = [i for i in range(3) if i != axial]
        n = volume.shape[1 + axial]
        indices = [min(n - 1, int(round(f * (n - 1)))) for f in self.preview_fractions]
        h, w = volume.shape[1 + in_plane[1]], volume.shape[1 + in_plane[0]]
        zoom = max(1, int(np.ceil(128 / max(h, w))))
        th, tw, header = h * zoom, w * zoom, 14
        grid = Image.new("L", (tw * len(self.modalities), header + th * len(indices)), color=0)
        draw = ImageDraw.Draw(grid)
        for col, modality in enumerate(self.modalities):
            label = f"{modality} (synth)" if modality in missing else modality
            draw.text((col * tw + 2, 1), label, fill=255)
            channel = np.moveaxis(volume[col], [*in_plane, axial], [0, 1, 2])
            for row, z in enumerate(indices):
                tile = np.rot90(channel[:, :, z])  # (second in-plane axis, first) with the first axis left->right
                tile = np.kron(_to_uint8(tile), np.ones((zoom, zoom), dtype=np.uint8))
                grid.paste(Image.fromarray(np.ascontiguousarray(tile)), (col * tw, header + row * th))
        return grid
