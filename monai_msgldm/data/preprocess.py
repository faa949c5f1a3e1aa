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
"""Loose files of one subject -> a co-registered case in the BraTS layout (``monai-msgldm-data preprocess``).

The same steps as the bundle's preprocessing before stacking (``transforms.brats_preprocessing_transforms`` with
``align=True``, which ``inference.json``, ``evaluate.json`` and the MONAI Label app run): each file loaded and
checked (``CheckImageValuesd``; ``CheckSkullStrippedd`` warns about input that is clearly not skull-stripped), every
contrast not on the reference contrast's grid registered to it and resampled
(``transforms.AlignModalitiesd``). The result is written on the reference contrast's grid, so that tools expecting
BraTS-like co-registered input (the datalist builder, training) take it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..constants import BRATS2020_SUFFIXES, MODALITIES

__all__ = ["preprocess_case"]

logger = logging.getLogger(__name__)


def preprocess_case(
    files: Mapping[str, str | os.PathLike | None],
    output_dir: str | os.PathLike,
    case: str,
    reference: str | Sequence[str] | None = None,
    register: bool = True,
    overwrite: bool = False,
) -> dict[str, str]:
    """Register the given contrasts of one subject to a reference contrast and write them as a BraTS-2020-layout
    case ``<output_dir>/<case>/<case>_<t1|t1ce|t2|flair>.nii.gz``, float32, all on the reference's grid.

    Args:
        files: modality name -> NIfTI path (None or absent: not acquired); at least one.
        output_dir: the dataset folder to write the case into.
        case: the case name (letters, digits and ``._+-``).
        reference: the reference contrast, or contrasts in order of preference (the first given one); None: T1,
            T1CE, T2, FLAIR in that order.
        register: register rigidly (mutual information, SimpleITK) before resampling; False: resample by the
            scanner coordinates only.
        overwrite: replace an existing case folder's files.

    Returns:
        modality -> written path.

    Raises:
        ValueError: unknown modality, no file, a bad case name, a failed registration (naming the contrast), bad
            voxels (naming the file), or existing outputs without ``overwrite``.
        FileNotFoundError: a given file does not exist.
    """
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from ..inferers.inputs import check_case_files
    from ..inferers.naming import CASE_KEY
    from ..transforms import AlignModalitiesd, CheckImageValuesd, CheckSkullStrippedd
    from ..utils.files import atomic_path

    item = check_case_files(
        {k: v for k, v in files.items() if v not in (None, "")},
        case_name=case,
        source="preprocess",
        check_content=False,
        same_grid=False,
    )
    given = [m for m in MODALITIES if m in item]
    case_dir = os.path.join(os.fspath(output_dir), item[CASE_KEY])
    targets = {m: os.path.join(case_dir, f"{item[CASE_KEY]}_{BRATS2020_SUFFIXES[m]}.nii.gz") for m in given}
    existing = [p for p in targets.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(f"preprocess: {existing} exist already; give --overwrite to replace them.")
    pipeline = Compose(
        [
            LoadImaged(keys=given, image_only=True),
            EnsureChannelFirstd(keys=given),
            CheckImageValuesd(keys=given),
            CheckSkullStrippedd(keys=given, mode="warn"),
            AlignModalitiesd(keys=given, reference=given if reference is None else reference, register=register),
        ]
    )
    try:
        data = pipeline({m: item[m] for m in given})
    except RuntimeError as e:  # MONAI's Compose wraps the transform's own error: report that one
        raise (e.__cause__ if isinstance(e.__cause__, (ValueError, OSError)) else e) from None
    import nibabel as nib

    ref_key = next(
        (str(d.meta["registration"]["reference"]) for d in data.values() if "registration" in d.meta), given[0]
    )
    header = nib.load(item[ref_key])
    with contextlib.ExitStack() as stack:
        for m in given:
            volume = np.asarray(data[m][0], dtype=np.float32)
            image = nib.Nifti1Image(volume, header.affine)
            image.set_qform(header.get_qform(), code=int(header.header["qform_code"]))
            image.set_sform(header.get_sform(), code=int(header.header["sform_code"]))
            image.header.set_xyzt_units(*header.header.get_xyzt_units())
            image.set_data_dtype(np.float32)
            nib.save(image, stack.enter_context(atomic_path(targets[m])))
    for m in given:
        record = data[m].meta.get("registration")
        if record is not None:
            logger.info(
                "%s: %s registered to %s (rotation %.2f deg, metric %.3f, %.1f s)",
                item[CASE_KEY],
                m,
                ref_key,
                float(record["rotation_deg"]),
                float(record["metric"]),
                float(record["seconds"]),
            )
    return targets
