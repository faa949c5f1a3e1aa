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
"""Compatibility module: the former home of the inference input checks, model loading and output writing.

They now live in :mod:`.naming` (case names), :mod:`.inputs` (the checked datalist), :mod:`.outputs` (writing) and
:mod:`.model_loading`; the case checks themselves are in :mod:`monai_msgldm.data.validation`. Bundles written for
an earlier version reference ``monai_msgldm.inferers.case_io.<name>``, which keeps working.
"""

from __future__ import annotations

from .inputs import check_case_files, synthesis_datalist
from .model_loading import load_model_weights
from .naming import case_name_from_files
from .outputs import SaveSynthesizedModalitiesd

__all__ = [
    "SaveSynthesizedModalitiesd",
    "case_name_from_files",
    "check_case_files",
    "load_model_weights",
    "synthesis_datalist",
]
