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

from monai_msgldm.bundle.stages import applicable_overrides

__all__ = ["write_served_bundle"]

_COPIED = ("configs/metadata.json", "configs/logging.conf", "LICENSE", "docs/README.md", "schema/meta_schema.json")


def write_served_bundle(
    bundle_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    configs: Sequence[str] = ("inference.json", "evaluate.json"),
) -> str:
    """Copy the serving part of a bundle to ``output_dir`` with ``overrides`` written into its configs, so that
    tools that read a bundle folder as it is (MONAI Label's ``BundleInferTask``, ``python -m monai.bundle run``
    without overrides) use e.g. the network sizes a model was trained with.

    ``output_dir`` gets ``configs/<each of configs>`` (parsed with ``ConfigParser``, ``overrides`` applied where the
    config defines the id or the parent of a nested id, written as JSON), ``configs/metadata.json``,
    ``configs/logging.conf``, ``LICENSE``, ``docs/README.md``, ``schema/meta_schema.json`` (those that exist) and
    ``models/model.pt`` (a copy of ``model_path``). Everything is written to a temporary folder next to
    ``output_dir`` first, which then replaces ``output_dir``.

    Args:
        bundle_dir: the source bundle folder.
        output_dir: the folder to write.
        model_path: the trained model (``models/model.pt`` of the output).
        overrides: id-value pairs, e.g. ``{"unet_def#channels": [32, 64, 64], "spatial_size": 64}``.
        configs: the config files of ``bundle_dir/configs`` to copy with the overrides.

    Returns:
        ``output_dir``.

    Raises:
        FileNotFoundError: ``model_path`` or a config does not exist.
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
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".served_bundle_", dir=parent)
    try:
        for name, path in zip(configs, sources):
            parser = ConfigParser()
            parser.read_config(path)
            parser.update(applicable_overrides(parser, dict(overrides or {})))
            os.makedirs(os.path.join(tmp, "configs"), exist_ok=True)
            with open(os.path.join(tmp, "configs", name), "w") as f:
                json.dump(parser.get(), f, indent=4)
                f.write("\n")
        for rel in _COPIED:
            src = os.path.join(bundle_dir, rel)
            if os.path.isfile(src):
                os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
                shutil.copy2(src, os.path.join(tmp, rel))
        os.makedirs(os.path.join(tmp, "models"))
        shutil.copy2(model_path, os.path.join(tmp, "models", "model.pt"))
        if os.path.isdir(output_dir):
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir
