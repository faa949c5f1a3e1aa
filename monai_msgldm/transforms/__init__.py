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
"""MONAI transforms: missing-modality simulation, modality stacking, axial slicing, voxel checks and BraTS
preprocessing."""

from __future__ import annotations

from .field_of_view import CheckFieldOfView, CheckFieldOfViewD, CheckFieldOfViewd, CheckFieldOfViewDict
from .intensity import (
    ScalePresentModalities,
    ScalePresentModalitiesD,
    ScalePresentModalitiesd,
    ScalePresentModalitiesDict,
)
from .modality_dropout import (
    ApplyModalityMask,
    ApplyModalityMaskD,
    ApplyModalityMaskd,
    ApplyModalityMaskDict,
    RandModalityDropout,
    RandModalityDropoutD,
    RandModalityDropoutd,
    RandModalityDropoutDict,
    as_availability_mask,
)
from .preprocessing import (
    BRATS_NAMINGS,
    LABEL_NAMINGS,
    SEGMENTATION_CLASSES,
    CheckLabelValuesd,
    brats_preprocessing_transforms,
)
from .registration import (
    AlignModalitiesD,
    AlignModalitiesd,
    AlignModalitiesDict,
    RigidRegistrationResult,
    resample_onto_grid,
    resample_to_original_grid,
    rigid_registration,
)
from .skull_check import (
    CheckSkullStripped,
    CheckSkullStrippedD,
    CheckSkullStrippedd,
    CheckSkullStrippedDict,
    SkullStripFigures,
    SkullStrippingWarning,
    skull_strip_figures,
)
from .slicing import (
    SLICE_INDEX_KEY,
    RandAxialSliceSamplesD,
    RandAxialSliceSamplesd,
    RandAxialSliceSamplesDict,
    axial_slice_indices,
    extract_axial_slice,
)
from .stack import StackModalitiesD, StackModalitiesd, StackModalitiesDict
from .uncertainty import SplitSynthesisStd, SplitSynthesisStdD, SplitSynthesisStdd, SplitSynthesisStdDict
from .value_checks import CheckImageValues, CheckImageValuesD, CheckImageValuesd, CheckImageValuesDict

__all__ = [
    "SplitSynthesisStd",
    "SplitSynthesisStdd",
    "SplitSynthesisStdD",
    "SplitSynthesisStdDict",
    "AlignModalitiesd",
    "AlignModalitiesD",
    "AlignModalitiesDict",
    "RigidRegistrationResult",
    "resample_onto_grid",
    "resample_to_original_grid",
    "rigid_registration",
    "ScalePresentModalities",
    "ScalePresentModalitiesD",
    "ScalePresentModalitiesDict",
    "ScalePresentModalitiesd",
    "ApplyModalityMask",
    "ApplyModalityMaskd",
    "ApplyModalityMaskD",
    "ApplyModalityMaskDict",
    "BRATS_NAMINGS",
    "LABEL_NAMINGS",
    "SEGMENTATION_CLASSES",
    "CheckFieldOfView",
    "CheckFieldOfViewd",
    "CheckFieldOfViewD",
    "CheckFieldOfViewDict",
    "CheckSkullStripped",
    "CheckSkullStrippedd",
    "CheckSkullStrippedD",
    "CheckSkullStrippedDict",
    "SkullStripFigures",
    "SkullStrippingWarning",
    "skull_strip_figures",
    "CheckImageValues",
    "CheckImageValuesd",
    "CheckImageValuesD",
    "CheckImageValuesDict",
    "CheckLabelValuesd",
    "RandAxialSliceSamplesd",
    "RandAxialSliceSamplesD",
    "RandAxialSliceSamplesDict",
    "RandModalityDropout",
    "RandModalityDropoutd",
    "RandModalityDropoutD",
    "RandModalityDropoutDict",
    "SLICE_INDEX_KEY",
    "StackModalitiesd",
    "StackModalitiesD",
    "StackModalitiesDict",
    "as_availability_mask",
    "axial_slice_indices",
    "brats_preprocessing_transforms",
    "extract_axial_slice",
]
