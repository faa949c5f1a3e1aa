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
"""Names shared by every part of the package: the modalities, their BraTS file suffixes, label values."""

from __future__ import annotations

__all__ = [
    "MODALITIES",
    "REGISTRATION_META_KEY",
    "BRATS2020_SUFFIXES",
    "BRATS2023_SUFFIXES",
    "BRATS_LABELS_2020",
    "BRATS_LABELS_2023",
    "WMH_MODALITIES",
    "WMH_LABELS",
]

#: The four contrasts, in the channel order used everywhere (images are (M, ...) in this order).
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: BraTS 2020/2021 file suffixes: <case>/<case>_<suffix>.nii[.gz].
BRATS2020_SUFFIXES: dict[str, str] = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}

#: BraTS 2023+ file suffixes: <case>/<case>-<suffix>.nii[.gz].
BRATS2023_SUFFIXES: dict[str, str] = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}

#: Label values: necrotic core, edema, enhancing tumour.
BRATS_LABELS_2020: dict[str, int] = {"necrosis": 1, "edema": 2, "enhancing": 4}
BRATS_LABELS_2023: dict[str, int] = {"necrosis": 1, "edema": 2, "enhancing": 3}

#: WMH challenge modalities (FLAIR and T1), channel order.
WMH_MODALITIES: tuple[str, ...] = ("flair", "t1")

#: WMH challenge label values: white-matter hyperintensities, other pathology (ignored by the challenge's metrics).
WMH_LABELS: dict[str, int] = {"wmh": 1, "other": 2}

#: Meta-data key of a contrast's registration record (``transforms.AlignModalitiesd``); the stacked image keeps each
#: resampled contrast's record as ``"<modality>_registration"``.
REGISTRATION_META_KEY = "registration"
