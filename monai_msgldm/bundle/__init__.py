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
"""Helpers for the MONAI bundle ``bundles/brats_mri_msgldm``: running its training stages (and other configs) from one config."""

from __future__ import annotations

from .metadata import contrast_network_data_format
from .served import write_served_bundle
from .stages import (
    init_process_group,
    resume_checkpoint,
    run_bundle_workflow,
    run_training_stages,
    running_config,
    running_parser,
    running_values,
    stage_is_finished,
)

__all__ = [
    "contrast_network_data_format",
    "init_process_group",
    "resume_checkpoint",
    "run_bundle_workflow",
    "run_training_stages",
    "running_config",
    "running_parser",
    "running_values",
    "stage_is_finished",
    "write_served_bundle",
]
