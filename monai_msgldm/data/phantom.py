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
"""Multi-contrast brain MRI phantoms: the built-in data of the package (tumours as BraTS, or WMH as the WMH challenge).

Anatomy is the MNI ICBM152 2009 template that ships inside ``nilearn`` (T1, grey- and white-matter probability
maps), deformed per subject; tumours (necrotic core, enhancing rim, edema) are added as tissues; the four contrasts
(T1, T1CE, T2, FLAIR) are computed from tissue relaxation values with spin-echo / inversion-recovery signal
equations over partial-volume mixtures, then a bias field and Rician noise are applied. The model is described in
``docs/data.md``.

This module is the public entry (bundle configs call ``monai_msgldm.data.phantom.ensure_phantom_dataset``); the
parts live in :mod:`~monai_msgldm.data.phantom_anatomy` (template, grid, deformation),
:mod:`~monai_msgldm.data.phantom_tumours` (tumours), :mod:`~monai_msgldm.data.phantom_mr` (MR signal),
:mod:`~monai_msgldm.data.phantom_subject` (one subject) and :mod:`~monai_msgldm.data.phantom_writing` (files, datasets,
the cache).

The WMH phantom (FLAIR and T1 with white-matter hyperintensities, label 1, and lacunes, label 2, written in the WMH
challenge layout for ``build_wmh_datalist``) shares the anatomy, the MR physics and the dataset code; its parts are
:mod:`~monai_msgldm.data.phantom_wmh_lesions` (lesions) and :mod:`~monai_msgldm.data.phantom_wmh` (subject, files).
"""

from __future__ import annotations

from monai_msgldm.data.phantom_anatomy import PHANTOM_TEMPLATE_FILES, phantom_template_dir
from monai_msgldm.data.phantom_subject import generate_phantom_subject
from monai_msgldm.data.phantom_wmh import (
    WMH_PHANTOM_FILES,
    ensure_wmh_phantom_dataset,
    generate_wmh_phantom_dataset,
    generate_wmh_phantom_subject,
    write_wmh_phantom_case,
)
from monai_msgldm.data.phantom_writing import (
    PHANTOM_COMPLETE_MARKER,
    PHANTOM_DATASET_FILE,
    ensure_phantom_dataset,
    generate_phantom_dataset,
    phantom_cache_dir,
    phantom_case_id,
    phantom_subject_seed,
    write_phantom_case,
)

__all__ = [
    "PHANTOM_TEMPLATE_FILES",
    "PHANTOM_DATASET_FILE",
    "PHANTOM_COMPLETE_MARKER",
    "phantom_template_dir",
    "phantom_subject_seed",
    "phantom_case_id",
    "phantom_cache_dir",
    "generate_phantom_subject",
    "write_phantom_case",
    "generate_phantom_dataset",
    "ensure_phantom_dataset",
    "WMH_PHANTOM_FILES",
    "generate_wmh_phantom_subject",
    "write_wmh_phantom_case",
    "generate_wmh_phantom_dataset",
    "ensure_wmh_phantom_dataset",
]

# the functions are documented (and pickled, and reported by ``monai_msgldm.data``) under this public module
for _function in (
    phantom_template_dir,
    phantom_subject_seed,
    phantom_case_id,
    phantom_cache_dir,
    generate_phantom_subject,
    write_phantom_case,
    generate_phantom_dataset,
    ensure_phantom_dataset,
    generate_wmh_phantom_subject,
    write_wmh_phantom_case,
    generate_wmh_phantom_dataset,
    ensure_wmh_phantom_dataset,
):
    _function.__module__ = __name__
del _function
