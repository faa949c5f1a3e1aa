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
"""Loading the served model with MONAI's ``CheckpointLoader``, after a clear check that the file exists.

``inference.json`` and ``evaluate.json`` attach a ``monai.handlers.CheckpointLoader`` to their evaluator, its
``load_path`` passed through :func:`require_checkpoint` so that a missing file fails in ``initialize`` with a hint.
Code without an Ignite engine (and bundles that still call ``case_io.load_model_weights``) use
:func:`load_model_weights`, which runs the same handler once. With the single-key ``load_dict={"model": network}``,
``CheckpointLoader`` loads (strictly) a plain state dict, as ``train_diffusion.json`` writes ``models/model.pt``, as
well as a dict holding it under ``"model"``.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

__all__ = ["load_model_weights", "require_checkpoint"]

_SERVED_MODEL_WRITER = "configs/train_diffusion.json (models/model.pt)"


def require_checkpoint(
    path: str | os.PathLike, option: str = "model_path", written_by: str = _SERVED_MODEL_WRITER
) -> str:
    """``path`` when it is a file; otherwise a ``FileNotFoundError`` naming it, what writes it and the option to set.

    MONAI's ``CheckpointLoader`` reads its file only when it runs (at the engine's start); a bundle calls this in
    ``initialize`` to fail at once, with a hint, before any data is read.

    Args:
        path: the checkpoint file.
        option: the bundle option (``--<option>``) that points to it.
        written_by: what writes the file, e.g. ``"the autoencoder stage"``.

    Returns:
        ``path``, as a string.

    Raises:
        FileNotFoundError: ``path`` is not a file.

    Example::

        >>> loader = CheckpointLoader(load_path=require_checkpoint("models/model.pt"), load_dict={"model": net})
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the checkpoint {path} does not exist: it is written by {written_by}; run that first or point "
            f"--{option} to the file."
        )
    return path


def load_model_weights(
    network: nn.Module, path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> nn.Module:
    """Strictly load the served model ``path`` into ``network`` now, with MONAI's ``CheckpointLoader``.

    For code without an Ignite engine; with an engine, attach the handler instead, as the bundle configs do:
    ``CheckpointLoader(load_path=require_checkpoint(path), load_dict={"model": network}).attach(evaluator)``.

    Args:
        network: the model to load into.
        path: a plain state dict (as ``train_diffusion.json`` writes ``models/model.pt``) or a dict holding it under
            ``"model"`` (a ``CheckpointSaver`` checkpoint).
        map_location: where ``torch.load`` puts the tensors.

    Returns:
        ``network``, with the weights loaded.

    Raises:
        FileNotFoundError: ``path`` does not exist (names it and the ``--model_path`` option).
        RuntimeError: the weights do not fit ``network`` (missing, unexpected or mis-shaped keys).

    Example::

        >>> load_model_weights(network, "models/model.pt")  # doctest: +SKIP
    """
    loader = CheckpointLoader(
        load_path=require_checkpoint(path), load_dict={"model": network}, map_location=map_location
    )
    loader(Engine(lambda engine, batch: None))  # the handler reads only the engine's epoch counters
    return network
