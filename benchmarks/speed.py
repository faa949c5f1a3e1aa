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
"""Speed and memory benchmark: MSG-LDM against the plain conditional LDM of the same size, in the same run.

``python benchmarks/speed.py`` measures, for the bundle's default model (192 px slices):

- training seconds per iteration of each stage (``bundle_timing.time_stage``: the bundle's own configs, random
  weights, one warm-up iteration), and of the plain LDM's stage 2 (``baseline_ldm.json``, same UNet);
- synthesis seconds per slice and per 155-slice volume against the DDIM steps and the slice batch size, for both
  models, on a 1 mm phantom subject preprocessed like BraTS (192 x 192 x 155), FLAIR missing; the sweeps time
  ``--sweep-slices`` slices with content and extrapolate to the volume's slices with content;
- one whole volume at the bundle's default DDIM steps (``inference.json``), timed end to end in a fresh process
  whose peak memory is the peak of the synthesis alone; and the same with the inferer's optimisations off.

Ratios MSG-LDM / plain LDM are printed. Writes ``speed.json``, ``speed.md`` and ``time_vs_steps.png`` to
``--output-dir``. Tens of minutes on 2 CPU cores: not part of CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONFIGS, device_description, peak_rss_gb, write_json  # noqa: E402

from monai_msgldm.constants import MODALITIES  # noqa: E402
from monai_msgldm.utils.files import atomic_write_text  # noqa: E402
from monai_msgldm.visualize import save_figure  # noqa: E402

__all__ = ["main", "build_network", "phantom_volume", "time_synthesis_run"]

logger = logging.getLogger("speed")

MODELS = {"msgldm": None, "plain_ldm": "baseline_ldm.json"}
VOLUME_SLICES = 155


def build_network(model: str, overrides: Mapping[str, Any] | None = None, device: str = "cpu") -> torch.nn.Module:
    """The bundle's stage-2 network (random weights) of ``model`` (``"msgldm"`` or ``"plain_ldm"``)."""
    from monai.bundle import ConfigParser

    if model not in MODELS:
        raise ValueError(f"build_network: unknown model {model!r}; expected one of {sorted(MODELS)}.")
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "train_diffusion.json")]
    files += [str(CONFIGS / MODELS[model])] if MODELS[model] else []
    parser = ConfigParser()
    parser.read_config(files)
    parser.update(dict(overrides or {}))
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def", instantiate=True).to(device).eval()


def sampler(ddim_steps: int) -> Any:
    """The bundle's sampling inferer (``inference.json``'s ``sampler``: DDIM on the paper's schedule) at
    ``ddim_steps`` steps."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["ddim_steps"] = int(ddim_steps)
    return parser.get_parsed_content("sampler")


def inference_default(key: str) -> int:
    """A default of the bundle's ``inference.json`` (``"ddim_steps"``, ``"slice_batch_size"``)."""
    with open(CONFIGS / "inference.json") as f:
        return int(json.load(f)[key])


def phantom_volume(
    size: int = 192, depth: int = VOLUME_SLICES, resolution: float = 1.0, cache_dir: str | None = None
) -> torch.Tensor:
    """A phantom subject (1 mm: BraTS-like) preprocessed like BraTS: ``(1, 4, size, size, depth)`` in [-1, 1]."""
    from monai.transforms import CenterSpatialCrop, SpatialPad

    from monai_msgldm.data import build_brats_datalist
    from monai_msgldm.data.phantom import ensure_phantom_dataset
    from monai_msgldm.transforms import brats_preprocessing_transforms

    root = ensure_phantom_dataset(cache_dir=cache_dir, num_subjects=1, resolution=resolution, seed=0)
    split = build_brats_datalist(root, val_ratio=0.0, test_ratio=0.0, check_content=False)
    case = {k: os.path.join(split["data_root"], v) for k, v in split["training"][0].items() if k != "subject"}
    case.pop("seg", None)
    # a volume of exactly size x size in-plane: a brain larger than that is centre-cropped (a timing input)
    pre = brats_preprocessing_transforms(seg_key=None, spatial_size=(size, size), field_of_view="crop")
    image = pre(case)["image"]
    image = SpatialPad((-1, -1, depth), value=-1.0)(image)
    image = CenterSpatialCrop((-1, -1, depth))(image)
    return torch.as_tensor(image).float().unsqueeze(0)


def _content_slices(volume: torch.Tensor, available: Sequence[int]) -> int:
    flat = volume[0, list(available)].flatten(1, 2)  # (A, H * W, D)
    return int(((flat.amax(dim=1) > flat.amin(dim=1)).any(dim=0)).sum())


def time_synthesis_run(
    net: torch.nn.Module,
    volume: torch.Tensor,
    ddim_steps: int,
    slice_batch_size: int,
    slices: int | None = None,
    optimised: bool = True,
) -> dict:
    """Synthesize FLAIR from T1, T1CE and T2 on ``slices`` slices with content of ``volume`` (all: None).

    Returns seconds, seconds per slice with content, and the volume time extrapolated to every slice with content
    of the 155-slice volume (the inferer skips the empty ones). The first call on a network runs one untimed warm-up
    batch of 2 DDIM steps (memory allocation, oneDNN kernel selection).
    """
    from monai_msgldm.inferers import ModalitySynthesisInferer

    available = [m for m in MODALITIES if m != "flair"]
    channels = [MODALITIES.index(m) for m in available]
    inputs = volume.clone()
    inputs[:, MODALITIES.index("flair")] = -1.0
    content = _content_slices(volume, channels)
    flat = volume[0, channels].flatten(1, 2)
    with_content = torch.nonzero((flat.amax(dim=1) > flat.amin(dim=1)).any(dim=0)).flatten()
    chosen = inputs if slices is None else inputs[..., with_content[: min(slices, content)]]
    n = chosen.shape[-1] if slices is not None else content
    inferer = ModalitySynthesisInferer(
        sampler(ddim_steps),
        slice_batch_size=slice_batch_size,
        seed=0,
        progress=False,
        skip_empty_slices=optimised,
        channels_last=optimised,
    )
    if not optimised:
        net.to(memory_format=torch.contiguous_format)
        n = chosen.shape[-1]
    with torch.inference_mode():
        if not getattr(net, "_speed_warmed_up", False):
            warm = ModalitySynthesisInferer(
                sampler(2), slice_batch_size, seed=0, progress=False, channels_last=optimised
            )
            warm(chosen[..., : min(slice_batch_size, chosen.shape[-1])], net, available=available)
            net._speed_warmed_up = True
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        inferer(chosen, net, available=available)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    per_slice = seconds / n
    sampled = content if optimised else volume.shape[-1]
    return {
        "ddim_steps": ddim_steps,
        "slice_batch_size": slice_batch_size,
        "optimised": optimised,
        "slices_timed": n,
        "seconds": seconds,
        "seconds_per_slice": per_slice,
        "slices_sampled_per_volume": sampled,
        "seconds_per_volume": per_slice * sampled,
        "volume_extrapolated": n < sampled,
    }


def _volume_worker(args: argparse.Namespace) -> int:
    """Child process: one whole volume, so that the peak memory is the synthesis's own."""
    net = build_network(args.worker_model, json.loads(args.overrides))
    volume = phantom_volume(args.volume_size, args.volume_depth, args.phantom_resolution, args.phantom_cache_dir)
    row = time_synthesis_run(net, volume, args.worker_steps, args.worker_batch, None, not args.worker_unoptimised)
    row["peak_process_memory_gb"] = peak_rss_gb()
    row["model"] = args.worker_model
    write_json(args.worker_output, row)
    return 0


def whole_volume(
    model: str,
    steps: int,
    batch: int,
    optimised: bool = True,
    overrides: str = "{}",
    size: int = 192,
    depth: int = VOLUME_SLICES,
    resolution: float = 1.0,
    cache_dir: str | None = None,
) -> dict:
    """:func:`time_synthesis_run` on a whole volume in a fresh process (its peak resident memory included)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker-model", model, "--worker-steps", str(steps)]
        cmd += ["--overrides", overrides, "--volume-size", str(size), "--volume-depth", str(depth)]
        cmd += ["--phantom-resolution", str(resolution)] + (["--phantom-cache-dir", cache_dir] if cache_dir else [])
        cmd += ["--worker-batch", str(batch), "--worker-output", out] + ([] if optimised else ["--worker-unoptimised"])
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)


def plot_time_vs_steps(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Seconds per 155-slice volume against DDIM steps, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["ddim_steps"])
        ax.plot([r["ddim_steps"] for r in mine], [r["seconds_per_volume"] for r in mine], "o-", label=model)
    ax.axhline(180, color="grey", linestyle="--", label="target: 3 min")
    ax.set_xlabel("DDIM steps")
    ax.set_ylabel("seconds per 155-slice volume")
    ax.set_title(f"Synthesis time, {device_description()['device']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def volume_ratios(volumes: Sequence[Mapping[str, Any]]) -> dict | None:
    """MSG-LDM / plain LDM time and peak memory of the last whole volume of each (None without both)."""
    last = {r["model"]: r for r in volumes if r["optimised"]}
    if "msgldm" not in last or "plain_ldm" not in last:
        return None
    mine, plain = last["msgldm"], last["plain_ldm"]
    return {
        "seconds": mine["seconds"] / plain["seconds"],
        "peak_memory": mine["peak_process_memory_gb"] / plain["peak_process_memory_gb"],
    }


def target_checks(result: Mapping[str, Any]) -> list[dict]:
    """The issue's speed targets, each with the figures it was judged on (the last optimised MSG-LDM volume)."""
    checks = []
    mine = [r for r in result["volumes"] if r["model"] == "msgldm" and r["optimised"]]
    if mine:
        row = mine[-1]
        size, _, depth = result["volume"]
        checks.append(
            {
                "target": f"one {depth}-slice volume ({size} x {size}, "
                f"{'model with overrides' if result['model_overrides'] else 'default model'}, {row['ddim_steps']} "
                "DDIM steps) in at most 3 minutes with peak memory under 4 GB",
                "met": bool(row["seconds"] <= 180 and row["peak_process_memory_gb"] < 4 / 1.073741824),
                "figures": f"{row['seconds']:.0f} s at {row['ddim_steps']} steps and {row['slice_batch_size']} slices "
                f"per batch, peak {row['peak_process_memory_gb']:.2f} GiB",
            }
        )
    if result["stage2_ratio"] is not None:
        checks.append(
            {
                "target": "stage-2 iteration of MSG-LDM at most 1.3x the plain LDM's with the same UNet",
                "met": bool(result["stage2_ratio"] <= 1.3),
                "figures": f"{result['stage2_ratio']:.2f}x",
            }
        )
    return checks


def markdown_report(result: Mapping[str, Any]) -> str:
    """The markdown tables of a :func:`main` result."""
    m = result["machine"]
    lines = [
        "# Speed and memory benchmark",
        "",
        f"Machine: {m['device']}, {m['torch_threads']} torch threads, {m['cpu_count']} CPUs, torch {m['torch']}. "
        "Default model sizes (192 px slices), fp32 on CPU.",
        "",
    ]
    if result["training"]:
        lines += ["## Training, seconds per iteration", "", "| stage | slices per batch | s / iteration |"]
        lines.append("|---|---|---|")
        for row in result["training"]:
            lines.append(f"| {row['stage']} | {row['slices_per_batch']} | {row['seconds_per_iteration']:.2f} |")
        if result.get("stage2_ratio") is not None:
            lines += ["", f"Stage-2 iteration MSG-LDM / plain LDM: **{result['stage2_ratio']:.2f}x**."]
        lines.append("")
    lines += ["## Synthesis against DDIM steps", "", "| model | steps | slice batch | s / slice | s / volume |"]
    lines.append("|---|---|---|---|---|")
    for row in result["steps_sweep"] + result["batch_sweep"]:
        lines.append(
            f"| {row['model']}{'' if row['optimised'] else ' (channels_last and empty-slice skip off)'} | "
            f"{row['ddim_steps']} | {row['slice_batch_size']} | {row['seconds_per_slice']:.3f} | "
            f"{row['seconds_per_volume']:.0f}{' (extrapolated)' if row['volume_extrapolated'] else ''} |"
        )
    if result["synthesis_ratios"]:
        lines += [
            "",
            "Synthesis time MSG-LDM / plain LDM: "
            + ", ".join(f"{k} steps {v:.2f}x" for k, v in result["synthesis_ratios"].items())
            + ".",
        ]
    lines += ["", "## One whole volume (FLAIR from T1 + T1CE + T2), fresh process", ""]
    lines += [
        "| model | steps | slice batch | slices sampled | seconds | peak memory GiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["volumes"]:
        lines.append(
            f"| {row['model']} | {row['ddim_steps']} | {row['slice_batch_size']} | "
            f"{row['slices_sampled_per_volume']} | {row['seconds']:.0f} | {row['peak_process_memory_gb']:.2f} |"
        )
    if result.get("volume_ratios"):
        r = result["volume_ratios"]
        lines += [
            "",
            f"Whole volume MSG-LDM / plain LDM: time {r['seconds']:.2f}x, peak memory {r['peak_memory']:.2f}x.",
        ]
    lines += ["", "## Targets", ""]
    for check in result["checks"]:
        lines.append(f"- {'met' if check['met'] else 'NOT met'}: {check['target']} ({check['figures']})")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/benchmarks/speed")
    parser.add_argument("--iterations", type=int, default=2, help="timed training iterations per stage")
    parser.add_argument("--no-training", action="store_true", help="skip the training timings")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 32])
    parser.add_argument("--sweep-slices", type=int, default=16, help="slices timed in the sweeps")
    parser.add_argument("--volume-steps", type=int, default=None, help="default: inference.json's ddim_steps")
    parser.add_argument("--volume-batch", type=int, default=None, help="default: inference.json's slice_batch_size")
    parser.add_argument("--overrides", default="{}", help="JSON dict of bundle overrides (smaller networks)")
    parser.add_argument("--volume-size", type=int, default=192, help="in-plane size of the phantom volume")
    parser.add_argument("--volume-depth", type=int, default=VOLUME_SLICES, help="slices of the phantom volume")
    parser.add_argument("--phantom-resolution", type=float, default=1.0, help="voxel size of the phantom (mm)")
    parser.add_argument("--phantom-cache-dir", default=None, help="phantom cache (default: the package's)")
    parser.add_argument("--worker-model", help=argparse.SUPPRESS)
    parser.add_argument("--worker-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    parser.add_argument("--worker-unoptimised", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_model:
        return _volume_worker(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from bundle_timing import time_stage

    overrides = json.loads(args.overrides)
    if args.volume_batch is None:
        args.volume_batch = inference_default("slice_batch_size")
    result: dict[str, Any] = {
        "machine": device_description(),
        "model_overrides": overrides,
        "volume": [args.volume_size, args.volume_size, args.volume_depth],
        "training": [],
        "stage2_ratio": None,
    }
    if not args.no_training:
        with tempfile.TemporaryDirectory() as work:
            for stage, overlay in (
                ("autoencoder", None),
                ("structure", None),
                ("diffusion", None),
                ("diffusion", "baseline_ldm.json"),
            ):
                row = time_stage(
                    stage,
                    {"num_workers": 0, **overrides},
                    args.iterations,
                    os.path.join(work, stage + str(overlay)),
                    overlay,
                )
                logger.info(f"training {row['stage']}: {row['seconds_per_iteration']:.2f} s/iteration")
                result["training"].append(row)
        by_stage = {r["stage"]: r["seconds_per_iteration"] for r in result["training"]}
        result["stage2_ratio"] = by_stage["diffusion"] / by_stage["diffusion+baseline_ldm.json"]
        logger.info(f"stage-2 iteration MSG-LDM / plain LDM: {result['stage2_ratio']:.2f}x")

    volume = phantom_volume(args.volume_size, args.volume_depth, args.phantom_resolution, args.phantom_cache_dir)
    result["volume_slices_with_content"] = _content_slices(volume, [0, 1, 2])
    result["steps_sweep"], result["batch_sweep"] = [], []
    volume_steps = args.volume_steps or inference_default("ddim_steps")
    for model in MODELS:
        net = build_network(model, overrides)
        for steps in args.steps:
            row = {"model": model, **time_synthesis_run(net, volume, steps, args.volume_batch, args.sweep_slices)}
            logger.info(f"{model} {steps} steps: {row['seconds_per_slice']:.3f} s/slice")
            result["steps_sweep"].append(row)
        if model != "msgldm":  # the slice-batch sweep and the optimisations-off row: MSG-LDM only
            continue
        for batch in args.batch_sizes:
            if batch == args.volume_batch:
                continue
            row = {
                "model": model,
                **time_synthesis_run(net, volume, volume_steps, batch, max(batch, args.sweep_slices)),
            }
            logger.info(f"{model} batch {batch}: {row['seconds_per_slice']:.3f} s/slice")
            result["batch_sweep"].append(row)
        row = time_synthesis_run(net, volume, volume_steps, args.volume_batch, args.sweep_slices, optimised=False)
        row["model"] = model
        logger.info(f"{model} optimisations off: {row['seconds_per_slice']:.3f} s/slice")
        result["batch_sweep"].append(row)
        net.to(memory_format=torch.channels_last)
    per = {(r["model"], r["ddim_steps"]): r["seconds_per_slice"] for r in result["steps_sweep"]}
    result["synthesis_ratios"] = {
        str(s): per[("msgldm", s)] / per[("plain_ldm", s)] for s in args.steps if ("plain_ldm", s) in per
    }
    steps = volume_steps
    result["volumes"] = []
    for model, optimised in (("msgldm", True), ("plain_ldm", True)):
        row = whole_volume(
            model,
            steps,
            args.volume_batch,
            optimised,
            args.overrides,
            args.volume_size,
            args.volume_depth,
            args.phantom_resolution,
            args.phantom_cache_dir,
        )
        logger.info(
            f"whole volume {model} optimised={optimised}: {row['seconds']:.0f} s, {row['peak_process_memory_gb']:.2f} GiB"
        )
        result["volumes"].append(row)
    result["volume_ratios"] = volume_ratios(result["volumes"])
    checks = target_checks(result)
    result["checks"] = checks
    write_json(os.path.join(args.output_dir, "speed.json"), result)
    report = markdown_report(result)
    atomic_write_text(os.path.join(args.output_dir, "speed.md"), report)
    plot_time_vs_steps(result["steps_sweep"], os.path.join(args.output_dir, "time_vs_steps.png"))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
