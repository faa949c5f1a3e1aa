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
"""Write a self-contained, servable copy of a bundle: its configs with overrides baked in, and one trained model."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.networks.schedulers import Scheduler

from monai_msgldm.bundle.metadata import contrast_network_data_format
from monai_msgldm.bundle.stages import running_values
from monai_msgldm.inferers.sampling_record import (
    check_sampling_record,
    load_sampling_record,
    sampling_record,
    sampling_record_path,
    save_sampling_record,
)

__all__ = ["write_served_bundle"]

#: locations of the source run, never baked in: the served bundle uses its own folders
_LOCAL_IDS = ("bundle_root", "config_dir", "ckpt_dir", "model_path", "output_dir", "eval_dir")
_COPIED = ("configs/metadata.json", "configs/logging.conf", "LICENSE", "docs/README.md", "schema/meta_schema.json")


def _write_contrast_metadata(folder: str, serving_config: str) -> None:
    """Rewrite ``folder/configs/metadata.json``'s ``network_data_format`` for the contrast set and slice size the
    written ``serving_config`` (``inference.json``) holds, so that the metadata describes the served model."""
    meta_path = os.path.join(folder, "configs", "metadata.json")
    if not os.path.isfile(meta_path):
        return
    parser = ConfigParser()
    parser.read_config(os.path.join(folder, "configs", serving_config))
    if "modalities" not in parser:
        return
    with open(meta_path) as f:
        meta = json.load(f)
    size = parser.get_parsed_content("spatial_size") if "spatial_size" in parser else None
    meta["network_data_format"] = contrast_network_data_format(
        meta["network_data_format"], parser.get_parsed_content("modalities"), size
    )
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=4)
        f.write("\n")


def write_served_bundle(
    bundle_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    configs: Sequence[str] = ("inference.json", "evaluate.json"),
    base_config: str = "train.json",
    scheduler: Scheduler | None = None,
    train_timesteps: Sequence[int] | None = None,
) -> str:
    """Copy the serving part of a bundle to ``output_dir`` with ``overrides`` written into its configs, so that
    tools that read a bundle folder as it is (MONAI Label's ``BundleInferTask``, ``python -m monai.bundle run``
    without overrides) use e.g. the network sizes a model was trained with.

    ``output_dir`` gets ``configs/<each of configs>`` (parsed with ``ConfigParser``, ``overrides`` applied where the
    config defines the id or the root of a nested id, written as JSON), ``configs/metadata.json`` (its
    ``network_data_format`` rewritten for the served ``modalities`` and ``spatial_size``),
    ``configs/logging.conf``, ``LICENSE``, ``docs/README.md``, ``schema/meta_schema.json`` (those that exist) and
    ``models/model.pt`` (a copy of ``model_path``) with its sampling record ``models/model.sampling.json``
    (:mod:`monai_msgldm.inferers.sampling_record`: what the model predicts, which ``inference.json`` reads): a copy
    of ``model_path``'s, or written from ``scheduler``. Everything is written to a temporary folder next to
    ``output_dir`` first, which then replaces ``output_dir``.

    Args:
        bundle_dir: the source bundle folder.
        output_dir: the folder to write.
        model_path: the trained model (``models/model.pt`` of the output).
        overrides: id-value pairs, e.g. ``{"unet_def#channels": [32, 64, 64], "spatial_size": 64}``. None (the
            default) inside a running bundle workflow (e.g. the demo's ``"$monai_msgldm.bundle.write_served_bundle(...)"``):
            each config gets :func:`~monai_msgldm.bundle.running_values` of that workflow against ``base_config``,
            i.e. the network sizes, ``prediction_type``, ``spatial_size``... it trained with. Locations of the
            source run (``bundle_root``, ``ckpt_dir``, ``output_dir``...) are never written in.
        configs: the config files of ``bundle_dir/configs`` to copy with the overrides.
        base_config: the config of ``bundle_dir/configs`` the running workflow started from (``overrides=None``).
        scheduler: the training scheduler of a diffusion model (the bundle's ``@noise_scheduler``): the served
            record is written from it, so that a model trained before records existed is served with one. ``None``:
            ``model_path``'s record is copied when it has one.
        train_timesteps: with ``scheduler``, the timesteps stage 2 was restricted to (the bundle's
            ``@train_timesteps``; ``None``: all).

    Returns:
        ``output_dir``.

    Raises:
        FileNotFoundError: ``model_path`` or a config does not exist.
        ValueError: ``scheduler`` contradicts ``model_path``'s record.
    """
    bundle_dir, output_dir, model_path = os.fspath(bundle_dir), os.fspath(output_dir), os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(
            f"write_served_bundle: model_path {model_path} does not exist (train the bundle first)."
        )
    sources = [os.path.join(bundle_dir, "configs", c) for c in configs]
    for path in sources:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"write_served_bundle: config {path} does not exist.")
    if scheduler is not None:
        source = check_sampling_record(model_path, scheduler)
        written = sampling_record(scheduler, train_timesteps)
        if source is not None and source["train_timesteps"] != written["train_timesteps"]:
            raise ValueError(
                f"write_served_bundle: {model_path} was trained at the timesteps {source['train_timesteps']} "
                f"({sampling_record_path(model_path)}), not {written['train_timesteps']} (train_timesteps)."
            )
    else:
        load_sampling_record(model_path)  # a malformed record fails here, before anything is written
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".served_bundle_", dir=parent)
    try:
        for name, path in zip(configs, sources):
            parser = ConfigParser(ConfigParser.load_config_file(path))  # as written: keeps "+imports" of an overlay
            if overrides is None:
                values = running_values(path, os.path.join(bundle_dir, "configs", base_config))
            else:
                values = {k: v for k, v in overrides.items() if ReferenceResolver.split_id(k)[0] in parser}
            parser.update({k: v for k, v in values.items() if ReferenceResolver.split_id(k)[0] not in _LOCAL_IDS})
            os.makedirs(os.path.join(tmp, "configs"), exist_ok=True)
            with open(os.path.join(tmp, "configs", name), "w") as f:
                json.dump(parser.get(), f, indent=4)
                f.write("\n")
        for rel in _COPIED:
            src = os.path.join(bundle_dir, rel)
            if os.path.isfile(src):
                os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
                shutil.copy2(src, os.path.join(tmp, rel))
        _write_contrast_metadata(tmp, configs[0])
        os.makedirs(os.path.join(tmp, "models"))
        served_model = os.path.join(tmp, "models", "model.pt")
        shutil.copy2(model_path, served_model)
        if scheduler is not None:
            save_sampling_record(served_model, scheduler, train_timesteps)
        elif os.path.isfile(sampling_record_path(model_path)):
            shutil.copy2(sampling_record_path(model_path), sampling_record_path(served_model))
        if os.path.isdir(output_dir):
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir
