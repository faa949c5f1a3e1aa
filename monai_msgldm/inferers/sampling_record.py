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
"""What a served diffusion model was trained to predict, recorded beside it.

``models/model.pt`` stays a plain state dict (MONAI's model-zoo convention, loadable with ``load_state_dict``), which
does not say whether its UNet predicts the noise, the velocity or the clean latent, or whether it was trained with
rectified flow. Sampling it with another setting gives a wrong image without an error. Stage 2 therefore writes
``models/model.sampling.json`` next to it (:func:`save_sampling_record`):

.. code-block:: json

    {"scheduler": "ddpm", "prediction_type": "v_prediction", "num_train_timesteps": 1000, "train_timesteps": null}

(``train_timesteps``: the timesteps stage 2 trained at when it was restricted to some, e.g. ``[499, 999]`` for the
2-step DDIM sampler; ``null``: all of them.)

``inference.json`` / ``evaluate.json`` take their ``prediction_type`` from it (:func:`recorded_prediction_type`; a
model without a record, trained before bundle 0.10.0, keeps the configs' previous default, epsilon) and check their
sampling scheduler and step count against it before anything is read (:func:`check_sampling_record`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler, Scheduler

from monai_msgldm.inferers.diffusion import ddim_step_timesteps
from monai_msgldm.utils.files import atomic_write_text

__all__ = [
    "PREDICTION_TYPES",
    "check_sampling_record",
    "load_sampling_record",
    "recorded_prediction_type",
    "sampling_record",
    "sampling_record_path",
    "save_sampling_record",
]

#: what a DDPM-family UNet can be trained to predict (MONAI's ``DDPMPredictionType`` values)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_FAMILIES = ("ddpm", "rflow")


def sampling_record_path(model_path: str | os.PathLike) -> str:
    """The record of ``model_path``: ``models/model.pt`` -> ``models/model.sampling.json``."""
    return os.path.splitext(os.fspath(model_path))[0] + ".sampling.json"


def sampling_record(
    scheduler: Scheduler, train_timesteps: Sequence[int] | torch.Tensor | None = None
) -> dict[str, Any]:
    """The record of a model trained with ``scheduler``: its family (``"rflow"`` for MONAI's ``RFlowScheduler``,
    ``"ddpm"`` for ``DDPMScheduler`` and the samplers of its models, DDIM and PNDM), what the network predicts
    (``"v_prediction"`` for rectified flow: the velocity ``z0 - noise``), the number of training steps and the
    timesteps it was trained at when restricted (``train_timesteps`` of
    :py:class:`~monai_msgldm.inferers.MultiContrastDiffusionInferer`; sorted, distinct; ``None``: all)."""
    if not isinstance(scheduler, Scheduler):
        raise ValueError(f"sampling_record expects a monai.networks.schedulers.Scheduler, got {scheduler!r}.")
    rflow = isinstance(scheduler, RFlowScheduler)
    if isinstance(train_timesteps, torch.Tensor):
        train_timesteps = train_timesteps.tolist()
    return {
        "scheduler": "rflow" if rflow else "ddpm",
        "prediction_type": "v_prediction" if rflow else str(scheduler.prediction_type),
        "num_train_timesteps": int(scheduler.num_train_timesteps),
        "train_timesteps": None if train_timesteps is None else sorted({int(t) for t in train_timesteps}),
    }


def save_sampling_record(
    model_path: str | os.PathLike,
    scheduler: Scheduler,
    train_timesteps: Sequence[int] | torch.Tensor | None = None,
) -> str:
    """Write the record of the model ``model_path`` trained with ``scheduler`` (and only at ``train_timesteps``
    when not ``None``), atomically, next to it.

    Returns:
        the record's path (:func:`sampling_record_path`).
    """
    path = sampling_record_path(model_path)
    atomic_write_text(path, json.dumps(sampling_record(scheduler, train_timesteps), indent=4) + "\n")
    return path


def load_sampling_record(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of ``model_path``, or ``None`` when there is none (a model trained before bundle 0.10.0, or a
    regression baseline, which has no scheduler).

    Raises:
        ValueError: the record exists but is not one (unreadable JSON, missing or wrong fields); names the file.
    """
    path = sampling_record_path(model_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"the sampling record {path} of {os.fspath(model_path)} is not readable JSON: {e}") from e
    expected = "{'scheduler': 'ddpm' or 'rflow', 'prediction_type': one of " + f"{PREDICTION_TYPES}, "
    expected += "'num_train_timesteps': an int >= 1, 'train_timesteps': null or a list of ints in [0, steps)}"
    steps = record.get("num_train_timesteps") if isinstance(record, dict) else None
    trained = record.get("train_timesteps") if isinstance(record, dict) else None
    if (
        not isinstance(record, dict)
        or record.get("scheduler") not in _FAMILIES
        or record.get("prediction_type") not in PREDICTION_TYPES
        or isinstance(steps, bool)
        or not isinstance(steps, int)
        or steps < 1
        or not (
            trained is None
            or (
                isinstance(trained, list)
                and trained
                and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < steps for t in trained)
            )
        )
    ):
        raise ValueError(f"the sampling record {path} of {os.fspath(model_path)} expects {expected}, got {record!r}.")
    return {**record, "train_timesteps": trained}


def recorded_prediction_type(model_path: str | os.PathLike, default: str = "epsilon") -> str:
    """What the model ``model_path`` predicts, by its record; ``default`` when it has none.

    ``inference.json``: ``"prediction_type": "$monai_msgldm.inferers.recorded_prediction_type(@model_path)"``
    (``--prediction_type`` on the command line replaces it; :func:`check_sampling_record` then refuses a value the
    record contradicts).
    """
    record = load_sampling_record(model_path)
    return default if record is None else str(record["prediction_type"])


def _sampler_timesteps(scheduler: Scheduler, num_inference_steps: int) -> list[int]:
    """The timesteps at which :py:class:`~monai_msgldm.inferers.MultiContrastDiffusionInferer` calls the network
    with ``num_inference_steps`` steps of ``scheduler`` (DDIM: :func:`ddim_step_timesteps`)."""
    if isinstance(scheduler, DDIMScheduler):
        return ddim_step_timesteps(scheduler, num_inference_steps).tolist()
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(num_inference_steps)
    return [int(t) for t in probe.timesteps.tolist()]


def check_sampling_record(
    model_path: str | os.PathLike, scheduler: Scheduler, num_inference_steps: int | None = None
) -> dict[str, Any] | None:
    """Refuse to sample the model ``model_path`` with a ``scheduler`` (and ``num_inference_steps``) its record
    contradicts.

    Nothing is checked for a model without a record. A rectified-flow model needs an ``RFlowScheduler`` (the
    ``configs/rflow.json`` overlay) and a DDPM-trained one a DDPM-family sampler; the prediction type and the
    number of training steps must be the recorded ones; a model trained only at some timesteps must be sampled
    with ``num_inference_steps`` that call the network at those alone.

    Returns:
        the record (``None`` when there is none).

    Raises:
        ValueError: names the record, what it says, what the scheduler says and the option that fixes it.
    """
    record = load_sampling_record(model_path)
    if record is None:
        return None
    given = sampling_record(scheduler)
    path = sampling_record_path(model_path)
    if given["scheduler"] != record["scheduler"]:
        fix = "add configs/rflow.json to --config_file" if record["scheduler"] == "rflow" else "remove rflow.json"
        raise ValueError(
            f"{os.fspath(model_path)} was trained with {'rectified flow' if record['scheduler'] == 'rflow' else 'DDPM'} "
            f"({path}) but the sampling scheduler is a {type(scheduler).__name__}: {fix}."
        )
    fixes = {
        "prediction_type": f"run with --prediction_type {record['prediction_type']} or without --prediction_type",
        "num_train_timesteps": f"set sampling_scheduler#num_train_timesteps to {record['num_train_timesteps']}",
    }
    for key, fix in fixes.items():
        if given[key] != record[key]:
            raise ValueError(
                f"{os.fspath(model_path)} was trained with {key} {record[key]!r} ({path}) but the sampling scheduler "
                f"has {given[key]!r}: {fix}."
            )
    trained = record["train_timesteps"]
    if trained is not None and num_inference_steps is not None:
        visited = _sampler_timesteps(scheduler, num_inference_steps)
        if not set(visited) <= set(trained):
            fits = [k for k in range(1, len(trained) + 1) if set(_sampler_timesteps(scheduler, k)) <= set(trained)]
            fix = f"run with --ddim_steps {fits[-1]}" if fits else "sample with a scheduler that visits them"
            raise ValueError(
                f"{os.fspath(model_path)} was trained only at the timesteps {trained} ({path}) but "
                f"{num_inference_steps} sampling steps call it at {sorted(visited)}: {fix}."
            )
    return record
