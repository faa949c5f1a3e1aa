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
"""Run the bundle's training stages (each its own config file) one after the other, skipping finished ones."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.reference_resolver import ReferenceResolver

__all__ = ["run_bundle_workflow", "run_training_stages", "stage_is_finished", "applicable_overrides"]

logger = logging.getLogger(__name__)

_STAGE_KEYS = ("name", "config", "final_ckpt")


def stage_is_finished(final_ckpt: str) -> bool:
    """
    Whether a stage's final checkpoint marks a completed training run.

    The checkpoint must exist; when it holds an Ignite ``trainer`` state (MONAI's ``CheckpointSaver`` also writes
    the final file when training stops on an exception), its iteration count must also have reached
    ``max_epochs * epoch_length``. A plain state dict (e.g. the served ``model.pt``, written only on completion)
    counts as finished.

    Args:
        final_ckpt: path of the stage's final checkpoint.
    """
    if not os.path.isfile(final_ckpt):
        return False
    ckpt = torch.load(final_ckpt, map_location="cpu", weights_only=True)
    trainer = ckpt.get("trainer") if isinstance(ckpt, Mapping) else None
    if not isinstance(trainer, Mapping):
        return True
    iteration, epoch_length, max_epochs = (trainer.get(k) for k in ("iteration", "epoch_length", "max_epochs"))
    if iteration is None or epoch_length is None or max_epochs is None:
        return True
    done = int(iteration) >= int(epoch_length) * int(max_epochs)
    if not done:
        logger.info(
            f"{final_ckpt} stopped at iteration {iteration} of {int(epoch_length) * int(max_epochs)}: not finished."
        )
    return done


def applicable_overrides(parser: ConfigParser, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """
    The subset of ``overrides`` that applies to the config held by ``parser``.

    A top-level id applies where the config defines it; a nested id (``"a#b#c"``) applies where its parent
    (``"a#b"``) exists and is a dict or list, so an override may also add a new argument to an existing component.

    Args:
        parser: a parser that has read the stage config.
        overrides: id-value pairs.
    """
    selected = {}
    for key, value in overrides.items():
        parts = ReferenceResolver.split_id(key)
        if len(parts) == 1:
            ok = key in parser
        else:
            parent = ReferenceResolver.split_id(key, last=True)[0]
            ok = parent in parser and isinstance(parser[parent], (dict, list))
        if ok:
            selected[key] = value
    return selected


def run_bundle_workflow(
    config_file: str | Sequence[str],
    meta_file: str | Sequence[str] | None = None,
    logging_file: str | bool | None = None,
    run_id: str = "run",
    workflow_type: str = "infer",
    **override: Any,
) -> None:
    """
    Run one bundle config as a ``ConfigWorkflow`` (initialize, ``run_id``, finalize) from inside another config,
    e.g. the demo's evaluation after its training stages.

    Args:
        config_file: the config file(s).
        meta_file: metadata file(s).
        logging_file: logging config (see ``ConfigWorkflow``).
        run_id: id of the run expression.
        workflow_type: ``"train"``, ``"infer"`` (also for evaluation) or ``None``.
        override: id-value pairs overriding the config.

    Example::

        run_bundle_workflow("configs/evaluate.json", "configs/metadata.json", ckpt_dir="models", scenarios=["3->1"])
    """
    for f in [config_file] if isinstance(config_file, str) else list(config_file):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"run_bundle_workflow: config file not found: {f}.")
    workflow = ConfigWorkflow(
        config_file=config_file,
        meta_file=meta_file,
        logging_file=logging_file,
        run_id=run_id,
        workflow_type=workflow_type,
        **override,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    del workflow
    gc.collect()


def run_training_stages(
    stages: Sequence[Mapping[str, Any]],
    ckpt_dir: str,
    overrides: Mapping[str, Any] | None = None,
    extra_overrides: Mapping[str, Any] | None = None,
    meta_file: str | Sequence[str] | None = None,
    logging_file: str | bool | None = None,
    run_id: str = "training",
    skip_finished: bool = True,
) -> list[str]:
    """
    Run several bundle training configs in order, each as its own ``ConfigWorkflow`` (initialize, run, finalize).

    A stage whose final checkpoint ``ckpt_dir/<final_ckpt>`` marks a finished run (see :func:`stage_is_finished`) is
    skipped with a log line, so that an interrupted multi-stage run resumes at the first unfinished stage. Note that
    re-training an early stage does not invalidate the later ones: delete their final checkpoints too.

    Overrides reach a stage in this order (later wins): ``overrides`` (ids every stage defines, applied to all),
    ``extra_overrides`` (applied to the stages where :func:`applicable_overrides` selects them; an id that no
    stage accepts raises), then the stage's own ``overrides`` entry (applied as given).

    Args:
        stages: one mapping per stage with ``name`` (for the log), ``config`` (path of the stage config file),
            ``final_ckpt`` (file name of its final checkpoint in ``ckpt_dir``) and optionally ``overrides``.
        ckpt_dir: folder of the final checkpoints.
        overrides: id-value pairs for every stage.
        extra_overrides: id-value pairs for the stages that define them.
        meta_file: metadata file(s) given to every stage.
        logging_file: logging config given to every stage (see ``ConfigWorkflow``).
        run_id: id of the run expression in the stage configs.
        skip_finished: if False, run every stage even when its final checkpoint exists.

    Returns:
        the names of the stages that were run.

    Example::

        run_training_stages(
            [{"name": "autoencoder", "config": "configs/train_autoencoder.json", "final_ckpt": "autoencoder.pt"}],
            ckpt_dir="models",
            overrides={"max_epochs": 1},
        )
    """
    if not isinstance(skip_finished, bool):
        raise ValueError(f"run_training_stages expects skip_finished to be a bool, got {skip_finished!r}.")
    overrides = dict(overrides or {})
    extra_overrides = dict(extra_overrides or {})
    if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)) or len(stages) == 0:
        raise ValueError(f"run_training_stages expects stages to be a non-empty list of dicts, got {stages!r}.")
    parsed = []
    used_extra: set[str] = set()
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping) or any(k not in stage for k in _STAGE_KEYS):
            raise ValueError(
                f"run_training_stages expects stages[{i}] to be a dict with keys {list(_STAGE_KEYS)}, got {stage!r}."
            )
        config = str(stage["config"])
        if not os.path.isfile(config):
            raise FileNotFoundError(f"run_training_stages: config file of stage '{stage['name']}' not found: {config}.")
        own = stage.get("overrides") or {}
        if not isinstance(own, Mapping):
            raise ValueError(f"run_training_stages expects stages[{i}]['overrides'] to be a dict, got {own!r}.")
        parser = ConfigParser()
        parser.read_config(config)
        missing = [k for k in overrides if k not in parser]
        if missing:
            raise ValueError(
                f"run_training_stages expects every shared override to be an id of each stage config, "
                f"got {missing} not in {config}."
            )
        extra = applicable_overrides(parser, extra_overrides)
        used_extra.update(extra)
        parsed.append((str(stage["name"]), config, os.path.join(ckpt_dir, str(stage["final_ckpt"])), extra, own))
    unused = sorted(set(extra_overrides) - used_extra)
    if unused:
        raise ValueError(f"run_training_stages: extra_overrides {unused} match no id of any stage config.")

    ran = []
    for name, config, final_ckpt, extra, own in parsed:
        if skip_finished and stage_is_finished(final_ckpt):
            logger.info(f"stage '{name}': skipped, final checkpoint {final_ckpt} exists.")
            continue
        logger.info(f"stage '{name}': running {config}.")
        run_bundle_workflow(config, meta_file, logging_file, run_id, "train", **{**overrides, **extra, **own})
        if not os.path.isfile(final_ckpt):
            raise RuntimeError(f"stage '{name}' finished without writing its final checkpoint {final_ckpt}.")
        logger.info(f"stage '{name}': done, wrote {final_ckpt}.")
        ran.append(name)
    return ran
