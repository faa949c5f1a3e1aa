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
"""Where the time of one slice batch goes: the fixed cost per slice against the cost per denoising step.

``python benchmarks/profile_synthesis.py`` builds the bundle's default stage-2 network (``train.json``: 192 px
slices, random weights) and synthesizes FLAIR from T1, T1CE and T2 on one batch of ``--batch`` slices with content
of a 1 mm phantom volume (``speed.phantom_volume``), then reports, side by side in one run:

- seconds per slice of each part of the sampling path: the structure condition ``F_s``, the encoding of the given
  contrasts (the hybrid condition and known-contrast guidance), one UNet call (one denoising step) and the decoding
  of the missing contrast; and the whole ``sample`` call at ``--steps`` steps of the bundle's sampler;
- the same for each numeric path: fp32, bfloat16 autocast on the CPU, ``channels_last``, and 1 against all torch
  threads;
- the torch profiler's table of one ``sample`` call (operators by self CPU time).

Writes ``profile.json`` and ``profile.md`` to ``--output-dir``. A few minutes on 2 CPU cores: not part of CI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, write_json  # noqa: E402
from speed import build_network, content_indices, phantom_volume, sampler  # noqa: E402

from monai_msgldm.constants import MODALITIES  # noqa: E402
from monai_msgldm.utils.files import atomic_write_text  # noqa: E402

__all__ = ["main", "slice_batch", "phase_seconds"]

logger = logging.getLogger("profile_synthesis")


def slice_batch(volume: torch.Tensor, batch: int, missing: str = "flair") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` consecutive slices with content from the middle of ``volume`` ``(1, M, H, W, D)``: ``(B, M, H, W)``
    with the ``missing`` contrast's channel at -1, and the ``(B, M)`` availability mask."""
    m = MODALITIES.index(missing)
    given = [i for i in range(volume.shape[1]) if i != m]
    content = content_indices(volume, given)
    if len(content) < batch:
        raise ValueError(f"slice_batch: the volume has {len(content)} slices with content, fewer than batch={batch}.")
    middle = content[len(content) // 2 - batch // 2 :][:batch]
    images = volume[0, :, :, :, middle].permute(3, 0, 1, 2).contiguous()
    images[:, m] = -1.0
    available = torch.ones(batch, volume.shape[1], dtype=torch.bool)
    available[:, m] = False
    return images, available


def _seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def phase_seconds(
    net: torch.nn.Module,
    images: torch.Tensor,
    available: torch.Tensor,
    steps: int,
    bf16: bool = False,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds per slice of each part of the sampling path and of the whole ``sample`` call at ``steps`` steps of
    the bundle's sampler (``inference.json``: known-contrast guidance on), in fp32 or under bfloat16 autocast."""
    missing = torch.nonzero(~available.all(dim=0)).flatten().tolist()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    b = images.shape[0]
    with torch.inference_mode(), autocast:
        latents = net.given_latents(images, available)
        condition = net.condition(images, available, latents=latents)
        x = torch.cat([torch.randn_like(latents), condition.to(latents.dtype)], dim=1)
        t = torch.full((1,), 500.0)
        parts = {
            "structure F_s": lambda: net.encode_structure(images, available),
            "encode given contrasts": lambda: net.given_latents(images, available),
            "UNet call (one step)": lambda: net(x, timesteps=t),
            "decode missing": lambda: net.decode(latents, modalities=missing),
        }
        out = {name: _seconds(fn, repeats) / b for name, fn in parts.items()}
        inferer = sampler(steps)
        generator = [torch.Generator().manual_seed(i) for i in range(b)]
        out[f"sample, {steps} steps"] = (
            _seconds(lambda: inferer.sample(images, net, available, generator=generator), max(1, repeats - 1)) / b
        )
    out["fixed (F_s + encode + decode)"] = out["structure F_s"] + out["encode given contrasts"] + out["decode missing"]
    return out


def profiler_table(net: torch.nn.Module, images: torch.Tensor, available: torch.Tensor, steps: int, rows: int) -> str:
    """The torch profiler's operators of one ``sample`` call (after a warm-up call), by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    inferer = sampler(steps)
    with torch.inference_mode():
        inferer.sample(images, net, available)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            inferer.sample(images, net, available)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def markdown_report(result: dict) -> str:
    m = result["machine"]
    variants = list(result["variants"])
    phases = list(next(iter(result["variants"].values())))
    lines = [
        "# Where synthesis time goes (one slice batch, default model)",
        "",
        f"Machine: {m['device']}, {m['cpu_count']} CPUs, torch {m['torch']}. {result['batch']} slices of "
        f"{result['size']} px, FLAIR from T1 + T1CE + T2, bundle sampler at {result['steps']} steps. "
        "Seconds per slice (median of repeats).",
        "",
        "| part | " + " | ".join(variants) + " |",
        "|---" * (len(variants) + 1) + "|",
    ]
    for phase in phases:
        lines.append(f"| {phase} | " + " | ".join(f"{result['variants'][v][phase]:.4f}" for v in variants) + " |")
    base = result["variants"][variants[0]]
    key = f"sample, {result['steps']} steps"
    lines += ["", "Whole sample call against the first column: "]
    lines[-1] += ", ".join(f"{v} {base[key] / result['variants'][v][key]:.2f}x" for v in variants[1:]) + "."
    if result.get("profile"):
        lines += ["", "## torch profiler, one sample call (fp32)", "", "```", result["profile"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/benchmarks/profile")
    parser.add_argument("--batch", type=int, default=16, help="slices per batch")
    parser.add_argument("--steps", type=int, default=20, help="steps of the whole sample call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overrides", default="{}", help="JSON dict of bundle overrides (smaller networks)")
    parser.add_argument("--volume-size", type=int, default=192)
    parser.add_argument("--phantom-resolution", type=float, default=1.0)
    parser.add_argument("--phantom-cache-dir", default=None)
    parser.add_argument("--profile-rows", type=int, default=20, help="rows of the profiler table (0: no profile)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import json

    net = build_network("msgldm", json.loads(args.overrides))
    volume = phantom_volume(args.volume_size, resolution=args.phantom_resolution, cache_dir=args.phantom_cache_dir)
    images, available = slice_batch(volume, args.batch)
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "machine": device_description(),
        "batch": args.batch,
        "size": args.volume_size,
        "steps": args.steps,
        "variants": {},
    }
    for label, bf16, channels_last, n_threads in (
        (f"fp32, {threads} threads", False, False, threads),
        (f"bf16 autocast, {threads} threads", True, False, threads),
        (f"fp32 channels_last, {threads} threads", False, True, threads),
        (f"bf16 autocast channels_last, {threads} threads", True, True, threads),
        ("fp32, 1 thread", False, False, 1),
    ):
        torch.set_num_threads(n_threads)
        net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        result["variants"][label] = phase_seconds(net, images, available, args.steps, bf16, args.repeats)
        logger.info(f"{label}: {result['variants'][label]}")
    torch.set_num_threads(threads)
    net.to(memory_format=torch.contiguous_format)
    if args.profile_rows:
        result["profile"] = profiler_table(net, images, available, args.steps, args.profile_rows)
    os.makedirs(args.output_dir, exist_ok=True)
    write_json(os.path.join(args.output_dir, "profile.json"), result)
    report = markdown_report(result)
    atomic_write_text(os.path.join(args.output_dir, "profile.md"), report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
