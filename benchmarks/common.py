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
"""What the benchmark scripts share: the bundle's paths and presets, the machine description, JSON results."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from monai_msgldm.utils.files import atomic_write_text

__all__ = [
    "BUNDLE",
    "CONFIGS",
    "STAGES",
    "preset_configs",
    "preset_parser",
    "preset_values",
    "device_description",
    "peak_rss_gb",
    "write_json",
]

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brats_mri_msgldm"
CONFIGS = BUNDLE / "configs"
STAGES = ("autoencoder", "structure", "diffusion")


def preset_configs(preset: str) -> list[str]:
    """The bundle config files of a preset (``"default"``: ``train.json``; ``"demo"``: ``train.json`` +
    ``demo.json``); a stage runs with its overlay appended (``train_<stage>.json``)."""
    if preset not in ("default", "demo"):
        raise ValueError(f"preset must be 'default' or 'demo', got {preset!r}.")
    return [str(CONFIGS / "train.json")] + ([str(CONFIGS / "demo.json")] if preset == "demo" else [])


def preset_parser(preset: str):
    """A ``ConfigParser`` of :func:`preset_configs` with ``bundle_root`` set to the bundle."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(preset_configs(preset))
    parser["bundle_root"] = str(BUNDLE)
    return parser


def preset_values(preset: str, config: str = "inference.json") -> dict:
    """What a preset changes in ``configs/<config>`` (network sizes, ``spatial_size``, ``ddim_steps``...):
    ``monai_msgldm.bundle.running_values``, as the demo hands them to its inference, and its ``prediction_type``."""
    from monai_msgldm.bundle import running_values

    parser = preset_parser(preset)
    values = running_values(CONFIGS / config, CONFIGS / "train.json", parser=parser)
    for key in ("bundle_root", "ckpt_dir", "output_dir", "num_workers"):
        values.pop(key, None)
    # what the preset's model predicts: a trained model records it (models/model.sampling.json), the random-weight
    # models of the benchmarks do not, and inference.json's default for a model without a record is epsilon
    values["prediction_type"] = parser.get_parsed_content("prediction_type")
    return values


def device_description() -> dict[str, Any]:
    """The machine the figures come from: device name, torch threads, CPU count, torch version, and whether the CPU
    has Intel AMX (bfloat16 synthesis is about 3x faster there: ``inference.json``'s ``cpu_amp``)."""
    from monai_msgldm.utils import cpu_has_amx

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_amx": cpu_has_amx(),
    }


def peak_rss_gb() -> float | None:
    """Peak resident memory of this process in GiB: since the last :func:`reset_peak_rss` where Linux allows it
    (``VmHWM``), else since the start (``ru_maxrss``, Linux/macOS); None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform != "darwin" else peak / 2**30


def reset_peak_rss() -> bool:
    """Restart :func:`peak_rss_gb`'s peak from the current resident memory (Linux: ``5`` to
    ``/proc/self/clear_refs``), so that it measures what follows alone; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def write_json(path: str | os.PathLike, data: Any) -> str:
    """Write ``data`` to ``path`` as indented JSON, atomically (``atomic_write_text``); returns the absolute path."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
