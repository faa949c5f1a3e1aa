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
"""Run the bundle's training stages one after the other, each as ``train.json`` (as the running workflow has it,
overlays and command-line overrides included) with the stage's overlay file merged on top; skip finished ones."""

from __future__ import annotations

import copy
import gc
import glob
import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import merge_kv

__all__ = [
    "init_process_group",
    "run_bundle_workflow",
    "run_training_stages",
    "running_config",
    "running_parser",
    "running_values",
    "resume_checkpoint",
    "stage_is_finished",
]

logger = logging.getLogger(__name__)

_STAGE_KEYS = ("name", "config", "final_ckpt")
#: ids of train.json (and of overlays like demo.json) that sequence the stages: removed before a stage's file merges
SEQUENCING_KEYS = ("stages", "run_stages", "skip_finished", "initialize", "run", "training", "finalize")
#: ids whose value belongs to the machine a config runs on, not to the model: never handed from training to another
#: config (``cpu_amp``: the demo trains in bfloat16 where its CPU has AMX; ``inference.json`` decides from the CPU
#: it serves on, so a served copy moved to another machine does not inherit the training machine's precision)
MACHINE_KEYS = ("cpu_amp",)


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


def resume_checkpoint(ckpt_dir: str | os.PathLike, file_prefix: str | None, final_filename: str) -> str | None:
    """The checkpoint a stage resumes from: its latest periodic ``CheckpointSaver`` file
    ``<ckpt_dir>/<file_prefix>_checkpoint_epoch=<N>.pt`` (largest N), or None when there is none or when the stage's
    final checkpoint ``<ckpt_dir>/<final_filename>`` marks a finished run (:func:`stage_is_finished`).

    Example::

        >>> resume_checkpoint("models", "diffusion", "diffusion.pt")  # doctest: +SKIP
        'models/diffusion_checkpoint_epoch=30.pt'
    """
    ckpt_dir = os.fspath(ckpt_dir)
    if stage_is_finished(os.path.join(ckpt_dir, final_filename)):
        return None
    prefix = f"{file_prefix}_" if file_prefix else ""
    pattern = os.path.join(glob.escape(ckpt_dir), f"{prefix}checkpoint_epoch=*.pt")

    def epoch(path: str) -> int:
        return int(os.path.basename(path)[: -len(".pt")].rsplit("=", 1)[-1])

    return max(glob.glob(pattern), key=epoch, default=None)


def running_parser() -> ConfigParser:
    """
    The ``monai.bundle.ConfigParser`` that is evaluating the current config expression.

    A bundle expression (``"$monai_msgldm.bundle.run_training_stages(...)"``) has no handle on the parser that runs
    it, so this walks up the call stack (``inspect.currentframe()``) to the nearest frame whose local ``self`` is a
    ``ConfigParser``: MONAI's ``ConfigParser.get_parsed_content`` evaluating the expression. Its config is the
    running workflow's: every ``--config_file`` merged in order and the command-line overrides applied.

    Raises:
        RuntimeError: not called from an expression of a bundle config.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, ConfigParser):
                return owner
            frame = frame.f_back
    finally:
        del frame
    raise RuntimeError(
        "running_parser found no monai.bundle.ConfigParser on the call stack: call it from an expression of a bundle "
        "config (e.g. '$monai_msgldm.bundle.run_training_stages(...)'), not from plain Python."
    )


def running_config() -> dict:
    """A deep copy of the raw (unparsed) config of the running workflow (see :func:`running_parser`)."""
    return copy.deepcopy(running_parser().get())


def _plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _same(a: Any, b: Any) -> bool:
    """Equal raw values; MONAI's parsing rewrites ``@a#b`` as ``@a::b`` inside the running config's expressions."""
    return json.dumps(a, sort_keys=True, default=str).replace("::", "#") == json.dumps(
        b, sort_keys=True, default=str
    ).replace("::", "#")


def running_values(
    config_file: str | os.PathLike | Sequence[str], base_file: str | os.PathLike, parser: ConfigParser | None = None
) -> dict[str, Any]:
    """
    The settings of the running workflow that another config of the bundle must share, e.g. ``inference.json``
    run after the demo's training: the top-level ids that ``config_file`` defines and whose value the running
    workflow changed from ``base_file`` (``train.json``) through its overlays or command-line overrides, or that
    ``base_file`` does not define (e.g. the demo's ``ddim_steps``). Nested overrides such as
    ``autoencoder_def#channels`` are part of their root's value (``autoencoder_def``). Workflow ids
    (:data:`SEQUENCING_KEYS`, ``imports``) and the machine's settings (:data:`MACHINE_KEYS`) are never taken.

    A value that is a reference or an expression (``"$os.path.join(@demo_dir, 'models')"``) is evaluated by the
    running parser and taken when the result is plain data (strings, numbers, lists, dicts, None), left out
    otherwise (e.g. a ``torch.device``); components (dicts) are taken raw, their references being ids that
    ``config_file`` defines. An expression the running workflow left as ``base_file`` writes it is taken too when
    its result differs from the plain value ``config_file`` gives the id (``train.json``'s ``pixdim`` follows the
    phantom's resolution; ``inference.json`` writes 1 mm).

    Args:
        config_file: the config that receives the values (a list: merged in order).
        base_file: the config the running workflow started from.
        parser: the parser of the workflow to take the values from (e.g. ``train.json`` + ``demo.json`` read by a
            script); default: the running one (:func:`running_parser`).

    Returns:
        id-value pairs to override ``config_file`` with.
    """
    parser = running_parser() if parser is None else parser
    if isinstance(config_file, Sequence) and not isinstance(config_file, str):
        target = ConfigParser.load_config_files([os.fspath(f) for f in config_file])
    else:  # one file as written (an overlay's nested ids need not resolve on their own)
        target = ConfigParser.load_config_file(os.fspath(config_file))
    base = ConfigParser.load_config_file(os.fspath(base_file))
    running = parser.get()
    values: dict[str, Any] = {}
    for key in target:
        if key.startswith("_") or key in SEQUENCING_KEYS + MACHINE_KEYS or key == "imports" or key not in running:
            continue
        value = running[key]
        derived = isinstance(value, str) and value.startswith(("$", "@"))
        if key in base and _same(value, base[key]):
            # unchanged as written; an expression of other settings (the working grid ``pixdim`` follows the
            # phantom's resolution) is still taken when its result differs from the plain value config_file has
            if not (derived and target[key] is not None and _plain(target[key]) and not _is_reference(target[key])):
                continue
            value = parser.get_parsed_content(key)
            if type(value) is not type(target[key]) or not _plain(value) or _same(value, target[key]):
                continue
        elif derived:
            value = parser.get_parsed_content(key)
            if not _plain(value):
                continue
        values[key] = copy.deepcopy(value)
    return values


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("$", "@", "%"))


def init_process_group(backend: str, device: torch.device | str | None = None) -> bool:
    """
    Join the ``torch.distributed`` process group of a ``torchrun`` launch unless it exists already, then
    synchronise Ignite with it and select the process's CUDA device.

    Ignite's first rank query creates a process group (a collective): ``ignite.distributed.sync()`` makes every
    rank do it here, at the same point, rather than where ranks differ (rank 0 builds savers the others skip).

    Args:
        backend: ``"nccl"`` or ``"gloo"``.
        device: the process's device; a CUDA device becomes the current one.

    Returns:
        whether this call created the group (its owner destroys it in ``finalize``).
    """
    import ignite.distributed

    created = not torch.distributed.is_initialized()
    if created:
        torch.distributed.init_process_group(backend=backend)
    ignite.distributed.sync()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(device)
    return created


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
    meta_file: str | Sequence[str] | None = None,
    logging_file: str | bool | None = None,
    run_id: str = "training",
    skip_finished: bool = True,
) -> list[str]:
    """
    Run the bundle's training stages in order, each as its own ``ConfigWorkflow`` (initialize, run, finalize).

    Call it from an expression of the running ``train.json`` workflow (its ``run`` / ``training``). Each stage's
    config is the running workflow's raw config (``train.json``, the overlays given after it such as ``demo.json``
    or ``multi_gpu_train.json``, and the command-line overrides, as MONAI merged them; see :func:`running_config`)
    without its sequencing ids (:data:`SEQUENCING_KEYS`), with the stage's overlay file merged on top the way
    MONAI merges a ``--config_file`` list. Overlays and overrides of the running workflow therefore reach every
    stage when they set ids of the base (``train.json``); an id that a stage file sets is the stage file's.

    A stage whose final checkpoint ``ckpt_dir/<final_ckpt>`` marks a finished run (see :func:`stage_is_finished`) is
    skipped with a log line, so that an interrupted multi-stage run resumes at the first unfinished stage. Note that
    re-training an early stage does not invalidate the later ones: delete their final checkpoints too. Under
    ``torch.distributed`` every rank waits for the others after each stage (rank 0 writes the checkpoints).

    Args:
        stages: one mapping per stage with ``name`` (for the log), ``config`` (path of the stage overlay file) and
            ``final_ckpt`` (file name of its final checkpoint in ``ckpt_dir``).
        ckpt_dir: folder of the final checkpoints.
        meta_file: metadata file(s) given to every stage.
        logging_file: logging config given to every stage (see ``ConfigWorkflow``).
        run_id: id of the run expression in the stage configs.
        skip_finished: if False, run every stage even when its final checkpoint exists.

    Returns:
        the names of the stages that were run.

    Example (``train.json``)::

        "run_stages": "$monai_msgldm.bundle.run_training_stages(@stages, ckpt_dir=@ckpt_dir)"
    """
    if not isinstance(skip_finished, bool):
        raise ValueError(f"run_training_stages expects skip_finished to be a bool, got {skip_finished!r}.")
    if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)) or len(stages) == 0:
        raise ValueError(f"run_training_stages expects stages to be a non-empty list of dicts, got {stages!r}.")
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping) or any(k not in stage for k in _STAGE_KEYS):
            raise ValueError(
                f"run_training_stages expects stages[{i}] to be a dict with keys {list(_STAGE_KEYS)}, got {stage!r}."
            )
        if not os.path.isfile(str(stage["config"])):
            raise FileNotFoundError(
                f"run_training_stages: config file of stage '{stage['name']}' not found: {stage['config']}."
            )
    base = running_config()
    for key in (*SEQUENCING_KEYS, "_meta_"):
        base.pop(key, None)

    ran = []
    for stage in stages:
        name, config = str(stage["name"]), str(stage["config"])
        final_ckpt = os.path.join(ckpt_dir, str(stage["final_ckpt"]))
        if skip_finished and stage_is_finished(final_ckpt):
            logger.info(f"stage '{name}': skipped, final checkpoint {final_ckpt} exists.")
            continue
        logger.info(f"stage '{name}': running {config}.")
        merged = ConfigParser(copy.deepcopy(base))
        for key, value in ConfigParser.load_config_file(config).items():
            merge_kv(merged, key, value)
        workflow = ConfigWorkflow(
            config_file=config, meta_file=meta_file, logging_file=logging_file, run_id=run_id, workflow_type="train"
        )
        workflow.parser.read_config(merged.get())
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        del workflow, merged
        gc.collect()
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # rank 0 has written the stage's checkpoints
        if not os.path.isfile(final_ckpt):
            raise RuntimeError(f"stage '{name}' finished without writing its final checkpoint {final_ckpt}.")
        logger.info(f"stage '{name}': done, wrote {final_ckpt}.")
        ran.append(name)
    return ran
