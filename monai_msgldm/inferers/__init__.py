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

from __future__ import annotations

from .diffusion import MultiContrastDiffusionInferer, ddim_step_timesteps, paper_noise_scheduler
from .inputs import check_case_files, synthesis_datalist
from .model_loading import load_model_weights, require_checkpoint
from .naming import case_name_from_files
from .onnx_int8 import (
    DecoderCalibration,
    calibration_slices,
    quantize_onnx_int8,
    save_int8_graphs,
    saved_int8_graphs,
    with_onnx_runtime_int8,
)
from .onnx_runtime import OnnxRuntimeForward, weights_digest, with_onnx_runtime_encoder
from .outputs import SaveSynthesizedModalitiesd
from .regression import RegressionSynthesisInferer
from .sampler import SynthesisSampler, unwrap_network
from .sampling_record import (
    check_sampling_record,
    load_sampling_record,
    recorded_prediction_type,
    sampling_record,
    sampling_record_path,
    save_sampling_record,
)
from .synthesis import ModalitySynthesisInferer, resolve_availability

__all__ = [
    "ModalitySynthesisInferer",
    "MultiContrastDiffusionInferer",
    "RegressionSynthesisInferer",
    "SynthesisSampler",
    "SaveSynthesizedModalitiesd",
    "case_name_from_files",
    "check_sampling_record",
    "load_sampling_record",
    "recorded_prediction_type",
    "sampling_record",
    "sampling_record_path",
    "save_sampling_record",
    "check_case_files",
    "ddim_step_timesteps",
    "load_model_weights",
    "require_checkpoint",
    "resolve_availability",
    "synthesis_datalist",
    "paper_noise_scheduler",
    "unwrap_network",
    "OnnxRuntimeForward",
    "with_onnx_runtime_encoder",
    "with_onnx_runtime_int8",
    "save_int8_graphs",
    "saved_int8_graphs",
    "weights_digest",
    "calibration_slices",
    "quantize_onnx_int8",
    "DecoderCalibration",
]
