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
"""MSG-LDM networks: structure/style encoders, decoders and the stage-1 structure/style network."""

from __future__ import annotations

__all__ = [
    "MSGLDM",
    "AdaptiveInstanceNorm",
    "MultiContrastLDM",
    "PlainConditionalLDM",
    "ModalityWiseAutoencoder",
    "ReconstructionDecoder",
    "RegressionSynthesisNet",
    "SegmentationDecoder",
    "StructureEncoder",
    "StructureStyleNet",
    "StyleEncoder",
    "autoencoder_downsample_factor",
    "autoencoder_latent_channels",
    "default_contrast_autoencoder",
    "default_diffusion_unet",
    "resize_to_grid",
]

from .decoders import AdaptiveInstanceNorm, ReconstructionDecoder, SegmentationDecoder
from .latent_diffusion import MultiContrastLDM, default_contrast_autoencoder, default_diffusion_unet
from .modality_autoencoder import ModalityWiseAutoencoder, autoencoder_downsample_factor, autoencoder_latent_channels
from .msgldm import MSGLDM, resize_to_grid
from .plain_ldm import PlainConditionalLDM
from .regression import RegressionSynthesisNet
from .structure_encoder import StructureEncoder
from .structure_style_net import StructureStyleNet
from .style_encoder import StyleEncoder
