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
"""Time the bundle: seconds per training iteration of each stage and synthesis seconds per slice and per volume.

``python benchmarks/bundle_timing.py --preset default`` (the bundle's model, 192 px slices, batch 2 volumes x 2
slices) or ``--preset demo`` (train.json + demo.json: 64 px, the demo's batch sizes). Each stage config runs
through MONAI's ``ConfigWorkflow`` on the phantom for ``--iterations`` timed iterations after one warm-up
iteration (no validation, no checkpoints); stage 2 starts from randomly initialised stage-0/1 weights (speed does
not depend on the weights). Synthesis times the bundle's inference network and ``ModalitySynthesisInferer`` on a
random ``(1, 4, S, S, --slices)`` volume with FLAIR missing, ``--ddim-steps`` steps. On CPU the default model is
slow: ``--synthesis-slices`` synthesizes fewer slices and extrapolates the volume time (the printout says so).
Prints a table and writes JSON with ``--output``; the device is recorded, and the peak memory of the process (with
``--stages`` and nothing after it, that is the synthesis alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["main", "time_stage", "time_synthesis"]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONFIGS, STAGES, peak_rss_gb, preset_configs, preset_values, write_json  # noqa: E402

from monai_msgldm.constants import MODALITIES  # noqa: E402


def time_stage(
    stage: str, overrides: dict, iterations: int, workdir: str, overlay: str | None = None, preset: str = "default"
) -> dict:
    """Run ``iterations + 1`` training iterations of one stage (the ``preset``'s configs + ``train_<stage>.json``);
    the first is a warm-up and not timed.

    ``overlay``: a config file name in the bundle's ``configs/`` read after the stage config (e.g.
    ``"baseline_ldm.json"`` on the diffusion stage times the plain LDM baseline).
    """
    from ignite.engine import Events
    from monai.bundle import ConfigParser, ConfigWorkflow

    config = (
        preset_configs(preset) + [str(CONFIGS / f"train_{stage}.json")] + ([str(CONFIGS / overlay)] if overlay else [])
    )
    ckpt_dir = os.path.join(workdir, "models")
    os.makedirs(ckpt_dir, exist_ok=True)
    args = {
        **overrides,
        "bundle_root": workdir,
        "ckpt_dir": ckpt_dir,
        "output_dir": os.path.join(workdir, stage),
        f"epochs#{stage}": 1,
        "val_interval": 10**6,
        "save_interval": 0,
        "resume": False,
        "train#trainer#epoch_length": iterations + 1,
    }
    parser = ConfigParser()
    parser.read_config(config)
    for i, handler in enumerate(parser.get("train#handlers")):
        if handler.get("_target_") == "ignite.handlers.ProgressBar":
            args[f"train#handlers#{i}#_disabled_"] = True
    if stage == "diffusion":  # random stage-0/1 weights, saved where stage 2 strictly loads them
        parser.update({k: v for k, v in args.items() if not k.startswith("train#")})
        net = parser.get_parsed_content("network_def")
        torch.save({"model": net.autoencoder.model.state_dict()}, os.path.join(ckpt_dir, "autoencoder.pt"))
        if hasattr(net, "structure_net"):
            torch.save({"model": net.structure_net.state_dict()}, os.path.join(ckpt_dir, "structure.pt"))
    wf = ConfigWorkflow(config_file=config, meta_file=str(CONFIGS / "metadata.json"), workflow_type="train", **args)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    starts: list[float] = []
    compute: list[float] = []
    ends: list[float] = []

    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    shapes: list[tuple] = []

    def _start(engine):
        _sync()
        batch = engine.state.batch  # still collated here: a dict of batched tensors
        if isinstance(batch, dict) and "image" in batch:
            shapes.append(tuple(batch["image"].shape))
        starts.append(time.perf_counter())

    def _end(_):
        _sync()
        ends.append(time.perf_counter())
        compute.append(ends[-1] - starts[-1])

    trainer.add_event_handler(Events.ITERATION_STARTED, _start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _end)
    wf.run()
    wf.finalize()
    slices = shapes[-1][0] if shapes else None
    wall = np.diff(ends[1:]) if len(ends) > 2 else np.array([compute[-1]])
    return {
        "stage": stage if overlay is None else f"{stage}+{overlay}",
        "iterations": iterations,
        "slices_per_batch": slices,
        "seconds_per_iteration": float(np.mean(compute[1:])),
        "seconds_per_iteration_with_loading": float(np.mean(wall)),
    }


def time_synthesis(
    overrides: dict, ddim_steps: int, slice_batch_size: int, slices: int, volume_slices: int, device: str
) -> dict:
    """Synthesize FLAIR for ``slices`` slices of a random volume with the bundle's inference network and inferer."""
    from monai.bundle import ConfigParser

    from monai_msgldm.inferers import ModalitySynthesisInferer

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({k: v for k, v in overrides.items() if k in parser or "#" in k or "::" in k})
    net = parser.get_parsed_content("network_def").to(device).eval()
    size = int(parser.get_parsed_content("spatial_size"))
    parser["ddim_steps"] = ddim_steps
    sampler = parser.get_parsed_content("sampler")  # the bundle's sampling scheduler and inferer
    inferer = ModalitySynthesisInferer(sampler, slice_batch_size=slice_batch_size, seed=0, progress=False)
    volume = (torch.rand(1, len(MODALITIES), size, size, slices, device=device) * 2 - 1).clamp(-1, 1)
    volume[:, MODALITIES.index("flair")] = -1
    available = [m for m in MODALITIES if m != "flair"]
    with torch.no_grad():
        inferer(volume[..., : min(slices, slice_batch_size)], net, available=available)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        inferer(volume, net, available=available)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    per_slice = seconds / slices
    return {
        "spatial_size": size,
        "ddim_steps": ddim_steps,
        "slice_batch_size": slice_batch_size,
        "slices_timed": slices,
        "seconds": seconds,
        "seconds_per_slice": per_slice,
        "volume_slices": volume_slices,
        "seconds_per_volume": per_slice * volume_slices,
        "volume_extrapolated": slices < volume_slices,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        "peak_process_memory_gb": peak_rss_gb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("default", "demo"), default="default")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per stage (after 1 warm-up)")
    parser.add_argument(
        "--stages", nargs="*", default=list(STAGES), choices=STAGES, help="stages to time (none: synthesis only)"
    )
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--slice-batch-size", type=int, default=4)
    parser.add_argument("--synthesis-slices", type=int, default=None, help="slices to synthesize (default: all)")
    parser.add_argument("--volume-slices", type=int, default=155, help="slices of one volume (BraTS: 155)")
    parser.add_argument("--no-synthesis", action="store_true")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or 'x86_64'})",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "stages": [],
        "synthesis": None,
    }
    workdir = tempfile.mkdtemp(prefix="msgldm_timing_")
    try:
        for stage in args.stages:
            row = time_stage(stage, {"num_workers": 0}, args.iterations, workdir, preset=args.preset)
            results["stages"].append(row)
            print(
                f"stage {stage:12s} {row['seconds_per_iteration']:8.3f} s/iteration "
                f"({row['seconds_per_iteration_with_loading']:.3f} with data loading, "
                f"{row['slices_per_batch']} slices per batch)",
                flush=True,
            )
        if not args.no_synthesis:
            net_overrides = preset_values(args.preset)  # what the preset changes in inference.json
            slices = args.synthesis_slices or args.volume_slices
            row = time_synthesis(
                net_overrides, args.ddim_steps, args.slice_batch_size, slices, args.volume_slices, device
            )
            results["synthesis"] = row
            note = f" (extrapolated from {slices} slices)" if row["volume_extrapolated"] else ""
            print(
                f"synthesis {row['spatial_size']} px, {row['ddim_steps']} DDIM steps, batch {row['slice_batch_size']}: "
                f"{row['seconds_per_slice']:.3f} s/slice, {row['seconds_per_volume']:.1f} s per "
                f"{row['volume_slices']}-slice volume{note}; peak process memory {row['peak_process_memory_gb']:.2f} GiB"
                + (" (includes the stage runs: use --stages alone for synthesis only)" if args.stages else ""),
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"device: {results['device']}, torch threads: {results['torch_threads']}")
    if args.output:
        write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
