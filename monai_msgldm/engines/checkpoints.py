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
"""Loading one training stage's final checkpoint into the part of the model it trained.

The bundle's later stages call :func:`load_stage_checkpoint` in ``initialize`` rather than attaching MONAI's
``CheckpointLoader`` to their trainer: the handler runs when the trainer starts, but a trainer is only built
after its ``CacheDataset`` has read and preprocessed the whole training set, which is too late to report a
missing or wrong stage checkpoint; and for a checkpoint lacking ``key`` the handler's single-key fallback would
load the whole dict as a state dict, failing with a list of unexpected keys instead of naming the missing one.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from monai_msgldm.inferers.model_loading import require_checkpoint

__all__ = ["load_stage_checkpoint"]


def load_stage_checkpoint(module: nn.Module, path: str | os.PathLike, stage: str, key: str = "model") -> nn.Module:
    """Strictly load the weights saved under ``key`` in the checkpoint ``path`` of training stage ``stage``.

    Used by the bundle's later stages, e.g. stage 2 loads ``autoencoder.pt`` into ``network.autoencoder.model``
    and ``structure.pt`` into ``network.structure_net``.

    Args:
        module: the (sub)module to load into.
        path: the checkpoint file: a dict holding the state dict under ``key`` (as MONAI's CheckpointSaver writes).
        stage: the stage name, used in the error message and in the hint ``--<stage>_ckpt``.
        key: the key of the state dict in the checkpoint.

    Returns:
        ``module``, with the weights loaded.

    Raises:
        FileNotFoundError: the checkpoint does not exist (names the file and the ``--<stage>_ckpt`` option), see
            :func:`monai_msgldm.inferers.require_checkpoint`.
        KeyError: the checkpoint has no ``key``.
    """
    path = require_checkpoint(path, option=f"{stage}_ckpt", written_by=f"the {stage} training stage")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise KeyError(f"the {stage} checkpoint {path} has no key '{key}' (found {found}).")
    module.load_state_dict(checkpoint[key], strict=True)
    return module
