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
"""MONAI/Ignite engines for the three MSG-LDM training stages, the regression baseline, and their evaluators."""

from __future__ import annotations

from .autoencoder import AutoencoderEvaluator, AutoencoderKeys, AutoencoderTrainer, available_modality_slices
from .checkpoints import load_stage_checkpoint
from .diffusion import LatentDiffusionTrainer, SynthesisEvaluator, freeze_msgldm_conditioning
from .latent_cache import LatentCache, StaleLatentError, check_cacheable_transforms
from .regression import RegressionSynthesisTrainer
from .structure import StructureStyleEvaluator, StructureStyleKeys, StructureStyleTrainer
from .utils import (
    ModalityMaskSampler,
    PrepareMultiModalBatch,
    attach_ema,
    autocast_context,
    evaluate_with_ema_weights,
    kl_divergence,
    reseed_mask_sampler_every_epoch,
    resolve_amp,
    resolve_cpu_amp,
    unwrap_module,
)

__all__ = [
    "load_stage_checkpoint",
    "AutoencoderEvaluator",
    "AutoencoderKeys",
    "AutoencoderTrainer",
    "LatentCache",
    "LatentDiffusionTrainer",
    "ModalityMaskSampler",
    "PrepareMultiModalBatch",
    "RegressionSynthesisTrainer",
    "StaleLatentError",
    "StructureStyleEvaluator",
    "StructureStyleKeys",
    "StructureStyleTrainer",
    "SynthesisEvaluator",
    "attach_ema",
    "autocast_context",
    "available_modality_slices",
    "check_cacheable_transforms",
    "evaluate_with_ema_weights",
    "freeze_msgldm_conditioning",
    "kl_divergence",
    "reseed_mask_sampler_every_epoch",
    "resolve_amp",
    "resolve_cpu_amp",
    "unwrap_module",
]
