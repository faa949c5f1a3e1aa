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
"""The MSG-LDM authors' BraTS preprocessing, built from MONAI transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    ConvertToMultiChannelBasedOnBratsClassesd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LabelToMaskd,
    LoadImaged,
    MapLabelValued,
    MapTransform,
    Orientationd,
    Spacingd,
    SpatialPadd,
)
from monai.utils import convert_to_numpy

from ..constants import BRATS_LABELS_2020, BRATS_LABELS_2023, MODALITIES, WMH_LABELS
from .field_of_view import CheckFieldOfViewd
from .intensity import ScalePresentModalitiesd
from .registration import AlignModalitiesd
from .skull_check import CheckSkullStrippedd
from .stack import StackModalitiesd
from .value_checks import CheckImageValuesd

__all__ = [
    "BRATS_NAMINGS",
    "LABEL_NAMINGS",
    "SEGMENTATION_CLASSES",
    "CheckLabelValuesd",
    "brats_preprocessing_transforms",
]

#: BraTS label conventions, with their label values.
BRATS_NAMINGS: dict[str, dict[str, int]] = {"brats2020": BRATS_LABELS_2020, "brats2023": BRATS_LABELS_2023}

#: Label conventions accepted by :func:`brats_preprocessing_transforms` (``naming``): BraTS' and the WMH challenge's.
LABEL_NAMINGS: dict[str, dict[str, int]] = {**BRATS_NAMINGS, "wmh": WMH_LABELS}

#: The segmentation channels the preprocessing makes for each ``naming`` (a bundle's ``seg_classes``).
SEGMENTATION_CLASSES: dict[str, tuple[str, ...]] = {
    "brats2020": ("tc", "wt", "et"),
    "brats2023": ("tc", "wt", "et"),
    "wmh": ("wmh",),
}


class CheckLabelValuesd(MapTransform):
    """Raise a ValueError when a label image holds a value outside ``allowed`` (e.g. a BraTS 2023 case
    read with the 2020 convention, whose enhancing tumour, label 3, would otherwise be lost silently).

    Args:
        keys: keys of the label images.
        allowed: the permitted label values.
        allow_missing_keys: don't raise an exception if a key is missing.

    Example::

        >>> CheckLabelValuesd("seg", allowed=(0, 1, 2, 4))({"seg": torch.tensor([[0.0, 4.0]])})["seg"]
        tensor([[0., 4.]])
    """

    def __init__(self, keys: KeysCollection, allowed: Sequence[float], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(allowed) == 0:
            raise ValueError("CheckLabelValuesd expects a non-empty sequence of allowed values, got ().")
        self.allowed = np.asarray(sorted(float(v) for v in allowed))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            values = np.unique(convert_to_numpy(d[key]))
            unexpected = values[~np.isin(values, self.allowed)]
            if unexpected.size:
                raise ValueError(
                    f"CheckLabelValuesd expects the values of '{key}' in {self.allowed.tolist()}, "
                    f"got unexpected values {unexpected.tolist()} (check the BraTS naming)."
                )
        return d


def brats_preprocessing_transforms(
    modalities: Sequence[str] = MODALITIES,
    seg_key: str | None = "seg",
    spatial_size: Sequence[int] = (192, 192),
    naming: str = "brats2020",
    image_key: str = "image",
    available_key: str = "available",
    reader: str | ImageReader | None = None,
    lower: float = 0.0,
    upper: float = 100.0,
    pixdim: Sequence[float] | None = None,
    axcodes: str = "RAI",
    field_of_view: str = "raise",
    align: bool = False,
    reference: str | Sequence[str] | None = None,
    register: bool = True,
    skull_check: str = "ignore",
) -> Compose:
    """MONAI pipeline turning BraTS file paths into a stacked, cropped, [-1, 1]-scaled multi-contrast volume.

    Input: a dictionary with one file path per present modality under the keys ``modalities`` (leave the
    key out for an absent modality) and, if ``seg_key`` is not None, the segmentation path under ``seg_key``.

    Steps (the MSG-LDM authors' preprocessing):

    1. ``LoadImaged`` (``NibabelReader`` by default; ``reader="ITKReader"`` works too) and
       ``EnsureChannelFirstd`` for each present modality and the segmentation; :class:`CheckImageValuesd` checks
       the voxels of each modality as soon as they are loaded (NaN/Inf or an all-zero image raise an error
       naming the file), so that the datalist can be built from the NIfTI headers only and each file is read
       once per run; with ``skull_check``, :class:`CheckSkullStrippedd` warns about (or rejects) input that is
       clearly not skull-stripped;
    2. with ``align``, contrasts on different grids are put on the reference contrast's grid
       (:class:`AlignModalitiesd`: rigid registration with mutual information in SimpleITK, unless
       ``register=False``, then one resampling; a contrast already on the reference grid, as in BraTS, is left
       untouched and costs nothing);
       :class:`StackModalitiesd` into ``image_key`` (absent modalities filled with 0, availability mask
       under ``available_key``; a modality or segmentation on another grid raises a ValueError), then the
       per-modality items are deleted (their file names stay in the image meta data as
       ``"<modality>_filename_or_obj"``);
    3. the model's working grid: ``Orientationd(axcodes)`` and, with ``pixdim``, ``Spacingd(pixdim)`` (bilinear
       for the image, nearest for the segmentation; a no-op on data already on that grid, e.g. BraTS at 1 mm);
       ``CropForegroundd`` on the union of the modalities (any channel > 0: the brain's bounding box), then
       :class:`CheckFieldOfViewd`: a bounding box larger than ``spatial_size`` in-plane raises a ``ValueError``
       naming the case and both extents (``field_of_view="raise"``), or is logged and centre-cropped
       (``field_of_view="crop"``); then ``SpatialPadd`` + ``CenterSpatialCropd`` to ``spatial_size`` in-plane
       (depth untouched): the bounding box centred in the field of view. These run on the image and the
       segmentation alike, on the stacked image, so that
       ``Invertd(keys=image_key, transform=<this Compose>, orig_keys=image_key)`` restores the original grid;
    4. :class:`ScalePresentModalitiesd`: each present modality scaled from its ``lower``..``upper`` percentiles to
       [-1, 1] (clipped; MONAI's ``ScaleIntensityRangePercentiles``), the channels of absent modalities set to
       exactly -1 without being scaled (no "Divide by zero" warning for their constant fill);
    5. segmentation: label values checked against ``naming``; for ``"brats2023"`` the enhancing label 3 is
       mapped to 4 (``MapLabelValued``); then ``ConvertToMultiChannelBasedOnBratsClassesd`` (TC, WT, ET); for
       ``"wmh"`` (WMH challenge labels: 1 white-matter hyperintensity, 2 other pathology) one channel, the WMH
       mask (``LabelToMaskd``; label 2 is background, as in the challenge's metrics);
    6. ``EnsureTyped(float32)``.

    Output:
        - ``image_key``: MetaTensor (M, H, W, D) float32 in [-1, 1], M = ``len(modalities)`` in that order,
          H, W = ``spatial_size``, D the depth after foreground cropping; absent modalities are -1.
        - ``available_key``: (M,) torch bool tensor.
        - ``seg_key``: MetaTensor (C, H, W, D) float32 in {0, 1}, the channels of :data:`SEGMENTATION_CLASSES`
          ``[naming]``: tumour core, whole tumour, enhancing tumour (BraTS) or the WMH mask (C = 1).

    Args:
        modalities: modality keys, in channel order.
        seg_key: key of the segmentation, or None for data without labels.
        spatial_size: in-plane (H, W) size after padding / centre cropping.
        naming: label convention, ``"brats2020"`` (enhancing = 4), ``"brats2023"`` (enhancing = 3) or ``"wmh"``.
        image_key: key of the stacked image.
        available_key: key of the availability mask.
        reader: MONAI image reader (name or instance); None: ``"NibabelReader"``.
        lower: lower intensity percentile mapped to -1, in [0, 100).
        upper: upper intensity percentile mapped to 1, in (lower, 100].
        pixdim: the model's working voxel size in mm (3 values, in ``axcodes`` order), or None: the data's own.
        axcodes: the model's working orientation (default ``"RAI"``, the authors').
        field_of_view: what a brain larger than ``spatial_size`` in-plane gets: ``"raise"`` or ``"crop"`` (above).
        align: register and resample the given contrasts onto the reference contrast's grid (step 2); without it,
            contrasts on different grids are an error.
        reference: the reference contrast, or contrasts in order of preference (the first present one); None: the
            modalities in channel order (T1 first: usually the 1 mm 3D acquisition). Used with ``align``.
        register: with ``align``, register rigidly before resampling (False: the scanner coordinates are trusted).
        skull_check: what input that is clearly not skull-stripped gets (:class:`CheckSkullStrippedd`, on each
            whole volume as loaded): ``"ignore"`` (default), ``"warn"`` (what ``inference.json`` does) or
            ``"raise"``.

    Returns:
        A ``monai.transforms.Compose``.

    Example::

        >>> pre = brats_preprocessing_transforms(spatial_size=(192, 192))
        >>> out = pre({"t1": "BraTS20_001_t1.nii.gz", "t2": "BraTS20_001_t2.nii.gz",
        ...            "flair": "BraTS20_001_flair.nii.gz", "seg": "BraTS20_001_seg.nii.gz"})  # doctest: +SKIP
        >>> out["image"].shape, out["available"].tolist()  # doctest: +SKIP
        (torch.Size([4, 192, 192, 140]), [True, False, True, True])
    """
    name = "brats_preprocessing_transforms"
    modalities = tuple(modalities)
    if (
        len(modalities) == 0
        or len(set(modalities)) != len(modalities)
        or not all(isinstance(m, str) for m in modalities)
    ):
        raise ValueError(f"{name} expects a non-empty sequence of distinct modality keys, got {modalities}.")
    reserved = {image_key, available_key} | ({seg_key} if seg_key is not None else set())
    if len(reserved) != (3 if seg_key is not None else 2) or reserved & set(modalities):
        raise ValueError(
            f"{name} expects image_key, available_key, seg_key and the modalities to be distinct, got "
            f"image_key='{image_key}', available_key='{available_key}', seg_key={seg_key!r}, modalities={modalities}."
        )
    size = tuple(spatial_size)
    if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size):
        raise ValueError(f"{name} expects spatial_size to be two positive integers (H, W), got {spatial_size}.")
    size = tuple(int(s) for s in size)
    if naming not in LABEL_NAMINGS:
        raise ValueError(f"{name} expects naming in {tuple(LABEL_NAMINGS)}, got {naming!r}.")
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"{name} expects percentiles 0 <= lower < upper <= 100, got lower={lower}, upper={upper}.")
    reader = "NibabelReader" if reader is None else reader
    if pixdim is not None:
        pixdim = tuple(pixdim)
        if len(pixdim) != 3 or any(isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0 for p in pixdim):
            raise ValueError(f"{name} expects pixdim to be None or three voxel sizes > 0 in mm, got {pixdim}.")
        pixdim = tuple(float(p) for p in pixdim)
    if not isinstance(axcodes, str) or len(axcodes) != 3:
        raise ValueError(f"{name} expects axcodes to be three axis codes such as 'RAI', got {axcodes!r}.")

    geometry_keys = [image_key] if seg_key is None else [image_key, seg_key]
    volume_size = (*size, -1)
    transforms: list = [
        LoadImaged(keys=modalities, reader=reader, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys=modalities, allow_missing_keys=True),
        CheckImageValuesd(keys=modalities, allow_missing_keys=True),
    ]
    if skull_check != "ignore":
        transforms.append(CheckSkullStrippedd(keys=modalities, mode=skull_check, allow_missing_keys=True))
    if align:
        transforms.append(
            AlignModalitiesd(
                keys=modalities,
                reference=modalities if reference is None else reference,
                register=register,
                allow_missing_keys=True,
            )
        )
    if seg_key is not None:
        transforms += [
            LoadImaged(keys=seg_key, reader=reader, image_only=True),
            EnsureChannelFirstd(keys=seg_key),
        ]
    transforms += [
        StackModalitiesd(
            keys=modalities,
            name=image_key,
            available_key=available_key,
            fill_value=0.0,
            check_keys=() if seg_key is None else (seg_key,),
            allow_missing_keys=True,
        ),
        DeleteItemsd(keys=modalities),
        Orientationd(keys=geometry_keys, axcodes=axcodes, labels=None),
    ]
    if pixdim is not None:
        modes = ["bilinear", "nearest"][: len(geometry_keys)]
        transforms.append(Spacingd(keys=geometry_keys, pixdim=pixdim, mode=modes))
    transforms += [
        CropForegroundd(
            keys=geometry_keys, source_key=image_key, allow_smaller=True, start_coord_key=None, end_coord_key=None
        ),
        CheckFieldOfViewd(keys=image_key, spatial_size=size, on_larger=field_of_view),
        SpatialPadd(keys=geometry_keys, spatial_size=volume_size),
        CenterSpatialCropd(keys=geometry_keys, roi_size=volume_size),
        ScalePresentModalitiesd(
            keys=image_key, available_key=available_key, lower=lower, upper=upper, b_min=-1.0, b_max=1.0, clip=True
        ),
    ]
    if seg_key is not None and naming == "wmh":
        transforms += [
            CheckLabelValuesd(keys=seg_key, allowed=(0, *WMH_LABELS.values())),
            LabelToMaskd(keys=seg_key, select_labels=[WMH_LABELS["wmh"]]),
        ]
    elif seg_key is not None:
        labels = BRATS_NAMINGS[naming]
        transforms.append(CheckLabelValuesd(keys=seg_key, allowed=(0, *labels.values())))
        if labels["enhancing"] != BRATS_LABELS_2020["enhancing"]:
            transforms.append(
                MapLabelValued(
                    keys=seg_key, orig_labels=[labels["enhancing"]], target_labels=[BRATS_LABELS_2020["enhancing"]]
                )
            )
        transforms.append(
            ConvertToMultiChannelBasedOnBratsClassesd(keys=seg_key, et_label=BRATS_LABELS_2020["enhancing"])
        )
    transforms.append(EnsureTyped(keys=geometry_keys, dtype=torch.float32))
    return Compose(transforms)
