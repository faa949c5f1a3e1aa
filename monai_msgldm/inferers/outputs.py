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
"""Writing the synthesized modalities of an inference run (``inference.json``) and their preview."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from ..constants import MODALITIES, REGISTRATION_META_KEY
from ..transforms.registration import resample_to_original_grid
from ..utils.files import atomic_path
from .naming import CASE_KEY, is_valid_file_name

__all__ = ["SaveSynthesizedModalitiesd"]


def _first(value: Any) -> Any:
    """A value of a collated batch of one (a list or tuple of one) or the value itself."""
    return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value


def _record(record: Mapping) -> dict:
    """A registration record from the decollated meta data (batch-of-one lists unwrapped)."""
    return {k: _first(v) for k, v in record.items()}


def _like(data: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """A float32 NIfTI image of ``data`` with the affine, qform/sform codes and units of ``reference``."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), reference.affine)
    image.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    image.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    image.header.set_xyzt_units(*reference.header.get_xyzt_units())
    image.set_data_dtype(np.float32)
    return image


def _to_uint8(slice_2d: np.ndarray) -> np.ndarray:
    return np.round((np.clip(slice_2d, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


class SaveSynthesizedModalitiesd(MapTransform):
    """Write the MISSING modalities of a synthesized case, in the geometry of its input files, and a preview PNG.

    ``data[key]`` is the synthesized case ``(M, X, Y, Z)`` already restored to the input grid (``Invertd``), channels
    in ``modalities`` order; the given modalities are found in its meta data (``"<modality>_filename_or_obj"``, as
    written by :class:`monai_msgldm.transforms.StackModalitiesd`). For each missing modality the file
    ``<output_dir>/<case>/<case>_<modality>_<postfix>.nii.gz`` is written as float32 with the affine, qform/sform
    codes and shape of the reference input file: the contrast the others were registered to
    (:class:`~monai_msgldm.transforms.AlignModalitiesd`, whose records the stacked meta data keeps as
    ``"<modality>_registration"``), or the first given one when nothing was resampled. With ``also_on``, each
    missing modality is also written on the original grid of those given contrasts that were resampled
    (``<case>_<modality>_<postfix>_on_<given>.nii.gz``, through the inverse of their registration), so that it
    overlays that file voxel by voxel. Intensities stay in the model's [-1, 1] range (values outside it
    are clipped when ``clip``): a missing modality has no original intensity scale to restore.
    ``<case>_preview.png`` shows ``preview_fractions`` axial slices (rows) of every modality (columns: given ones as
    preprocessed, synthesized ones marked "synth"). With ``std_key``, when the data holds the synthesis' per-voxel
    standard deviation under that key (``(M, X, Y, Z)``, restored like the synthesis; see
    :py:class:`~monai_msgldm.transforms.SplitSynthesisStdd`), each missing modality's map is written beside it as
    ``<case>_<modality>_<postfix>_std.nii.gz`` (same geometry, not clipped) and shown in extra preview columns
    marked "std" (its own grey scale, 0 black to the case's largest std white).

    All files of a case are first written under temporary names in the case folder
    (:func:`monai_msgldm.utils.files.atomic_path`), then renamed together: an error leaves no output file. The
    written paths are stored under ``"<key>_files"``.

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
        also_on: given modalities on whose own grid the missing ones are written too (see above); a listed
            modality that is absent from a case, or already on the reference grid, is skipped.
        std_key: key of the std map of the synthesis (written when present, see above); ``None``: none.

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
        case_key: str = CASE_KEY,
        modalities: Sequence[str] = MODALITIES,
        output_postfix: str = "synth",
        preview: bool = True,
        clip: bool = True,
        preview_fractions: Sequence[float] = (0.25, 0.5, 0.75),
        allow_missing_keys: bool = False,
        also_on: Sequence[str] = (),
        std_key: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.std_key = std_key
        also_on = (also_on,) if isinstance(also_on, str) else tuple(also_on or ())
        unknown = [m for m in also_on if m not in tuple(modalities)]
        if unknown:
            raise ValueError(
                f"SaveSynthesizedModalitiesd expects also_on among the modalities {list(modalities)}, got {unknown}."
            )
        self.also_on = also_on
        if len(self.keys) != 1:
            raise ValueError(f"SaveSynthesizedModalitiesd expects exactly one key, got {self.keys}.")
        if not preview_fractions or not all(0.0 <= float(f) <= 1.0 for f in preview_fractions):
            raise ValueError(
                f"SaveSynthesizedModalitiesd expects preview_fractions in [0, 1] (at least one), got {preview_fractions}."
            )
        if not output_postfix or not is_valid_file_name(output_postfix):
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
            std = d.get(self.std_key) if self.std_key else None
            d[f"{key}_files"] = self._save(d[key], d.get(self.case_key), std)
        return d

    def _save(self, pred: Any, case: Any, std: Any = None) -> list[str]:
        name = "SaveSynthesizedModalitiesd"
        if isinstance(case, (list, tuple)) and len(case) == 1:
            case = case[0]
        if not is_valid_file_name(case):
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
        records = {m: meta[f"{m}_{REGISTRATION_META_KEY}"] for m in given if f"{m}_{REGISTRATION_META_KEY}" in meta}
        ref_modality = next((str(_first(r["reference"])) for r in records.values()), next(iter(given)))
        ref_path = given.get(ref_modality, next(iter(given.values())))
        reference = nib.load(ref_path)
        ref_shape = tuple(int(s) for s in reference.shape[:3])
        if volume.shape[1:] != ref_shape:
            raise ValueError(
                f"{name}: the restored case has shape {volume.shape[1:]} but its reference input {ref_path} "
                f"has {ref_shape}; invert the preprocessing (Invertd) before saving."
            )
        if not np.isfinite(volume).all():
            raise ValueError(f"{name}: the synthesized case '{case}' has non-finite values.")
        std_volume = None
        if std is not None:
            std_volume = convert_to_numpy(std, wrap_sequence=True).astype(np.float32)
            if std_volume.shape != volume.shape:
                raise ValueError(
                    f"{name} expects the std map '{self.std_key}' of the synthesis' shape {volume.shape}, "
                    f"got {std_volume.shape}."
                )
            if not np.isfinite(std_volume).all() or (std_volume < 0).any():
                raise ValueError(f"{name}: the std map of case '{case}' has negative or non-finite values.")
        if self.clip:
            volume = np.clip(volume, -1.0, 1.0)
        missing = [m for m in self.modalities if m not in given]

        case_dir = os.path.join(self.output_dir, case)
        created = not os.path.isdir(case_dir)
        os.makedirs(case_dir, exist_ok=True)
        written: list[str] = []
        try:
            # every file goes to a temporary name first; leaving the stack renames them all, or removes them all
            with contextlib.ExitStack() as stack:
                for modality in missing:
                    final = os.path.join(case_dir, f"{case}_{modality}_{self.output_postfix}.nii.gz")
                    tmp = stack.enter_context(atomic_path(final))
                    written.append(final)
                    nib.save(_like(volume[self.modalities.index(modality)], reference), tmp)
                    if std_volume is not None:
                        final = os.path.join(case_dir, f"{case}_{modality}_{self.output_postfix}_std.nii.gz")
                        tmp = stack.enter_context(atomic_path(final))
                        written.append(final)
                        nib.save(_like(std_volume[self.modalities.index(modality)], reference), tmp)
                    for other in self.also_on:
                        if other not in records:  # absent, or on the reference grid already
                            continue
                        final = os.path.join(case_dir, f"{case}_{modality}_{self.output_postfix}_on_{other}.nii.gz")
                        tmp = stack.enter_context(atomic_path(final))
                        written.append(final)
                        on_grid = resample_to_original_grid(
                            MetaTensor(volume[None, self.modalities.index(modality)], affine=reference.affine),
                            _record(records[other]),
                            fill_value=-1.0 if self.clip else None,
                        )
                        target = nib.load(given[other])
                        image = nib.Nifti1Image(np.asarray(on_grid[0], dtype=np.float32), target.affine)
                        image.set_qform(target.get_qform(), code=int(target.header["qform_code"]))
                        image.set_sform(target.get_sform(), code=int(target.header["sform_code"]))
                        image.set_data_dtype(np.float32)
                        nib.save(image, tmp)
                if self.preview:
                    final = os.path.join(case_dir, f"{case}_preview.png")
                    tmp = stack.enter_context(atomic_path(final))
                    written.append(final)
                    self._preview(volume, missing, reference.affine, std_volume).save(tmp, format="PNG")
        except BaseException:
            if created and not os.listdir(case_dir):
                os.rmdir(case_dir)
            raise
        return written

    def _preview(self, volume: np.ndarray, missing: Sequence[str], affine: np.ndarray, std: np.ndarray | None = None):
        from PIL import Image, ImageDraw

        codes = nib.aff2axcodes(affine)
        axial = next((i for i, c in enumerate(codes) if c in ("S", "I")), 2)
        in_plane = [i for i in range(3) if i != axial]
        n = volume.shape[1 + axial]
        indices = [min(n - 1, int(round(f * (n - 1)))) for f in self.preview_fractions]
        h, w = volume.shape[1 + in_plane[1]], volume.shape[1 + in_plane[0]]
        zoom = max(1, int(np.ceil(128 / max(h, w))))
        th, tw, header = h * zoom, w * zoom, 14
        # columns: every modality (as given or synthesized), then the std map of each synthesized one
        columns = [(f"{m} (synth)" if m in missing else m, volume[i]) for i, m in enumerate(self.modalities)]
        if std is not None:
            peak = max(float(std[self.modalities.index(m)].max()) for m in missing) if missing else 0.0
            for m in missing:  # [0, peak] -> [-1, 1] for _to_uint8
                columns.append((f"{m} (std)", std[self.modalities.index(m)] / max(peak, 1e-12) * 2.0 - 1.0))
        grid = Image.new("L", (tw * len(columns), header + th * len(indices)), color=0)
        draw = ImageDraw.Draw(grid)
        for col, (label, data) in enumerate(columns):
            draw.text((col * tw + 2, 1), label, fill=255)
            channel = np.moveaxis(data, [*in_plane, axial], [0, 1, 2])
            for row, z in enumerate(indices):
                tile = np.rot90(channel[:, :, z])  # (second in-plane axis, first) with the first axis left->right
                tile = np.kron(_to_uint8(tile), np.ones((zoom, zoom), dtype=np.uint8))
                grid.paste(Image.fromarray(np.ascontiguousarray(tile)), (col * tw, header + row * th))
        return grid
