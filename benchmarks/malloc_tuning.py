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
"""CPU synthesis with glibc's default malloc against malloc settings given in the environment (Linux, glibc).

``python benchmarks/malloc_tuning.py [--slices 48] [--rounds 2]`` synthesizes FLAIR from T1, T1CE and T2 on
``--slices`` slices with content of a default-size phantom volume, with the ``inferer`` of ``inference.json`` and the
default MSG-LDM (random weights: the cost does not depend on them), in a fresh process per run, the settings of
:data:`SETTINGS` in alternation (``--rounds`` each), after one untimed warm-up batch. Per run: wall seconds per
slice, the process's user and kernel CPU seconds and minor page faults during the synthesis, and its peak resident
memory from after the volume was prepared (VmHWM reset). Prints the medians and each setting's speed-up over glibc's
default.

Why: the synthesis frees and allocates tens of megabytes per convolution. By default glibc returns the top of its
heap to the kernel once a threshold of free memory is reached, so every batch faults its memory in again page by
page (a fifth of the CPU time went to the kernel on the 2-core development machine). ``MALLOC_TRIM_THRESHOLD_``
keeps freed memory in the process and ``MALLOC_MMAP_THRESHOLD_`` serves blocks up to 32 MiB from the heap.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, peak_rss_gb, reset_peak_rss, write_json  # noqa: E402

__all__ = ["main", "run_once"]

#: setting name -> environment variables of the process (glibc reads them when the process starts)
SETTINGS: dict[str, dict[str, str]] = {
    "glibc default": {},
    "no trim, 32 MiB mmap threshold": {"MALLOC_TRIM_THRESHOLD_": str(64 * 2**30), "MALLOC_MMAP_THRESHOLD_": str(2**25)},
}


def run_once(setting: str, slices: int, threads: int, options: argparse.Namespace) -> dict[str, Any]:
    """One synthesis run in this process (see the module), started with the environment of ``setting``;
    ``options``: the network overrides and the phantom volume of the command line."""
    import torch
    from speed import build_network, content_indices, phantom_volume, time_bundle_inferer

    torch.set_num_threads(threads)
    net = build_network("msgldm", json.loads(options.overrides))
    volume = phantom_volume(
        options.volume_size, resolution=options.phantom_resolution, cache_dir=options.phantom_cache_dir
    )
    with_content = content_indices(volume, [0, 1, 2])
    start = max(0, (len(with_content) - slices) // 2)
    volume = volume[..., with_content[start : start + slices]].contiguous()
    reset_peak_rss()
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    timing = time_bundle_inferer(net, volume)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    return {
        "setting": setting,
        "environment": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "slices": timing["slices_sampled_per_volume"],
        "seconds_per_slice": timing["seconds_per_slice"],
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "peak_gib": peak_rss_gb(),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=48, help="slices with content synthesized per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting, in alternation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--overrides", default="{}", help="JSON dict of bundle overrides (smaller networks)")
    parser.add_argument("--volume-size", type=int, default=192, help="in-plane size of the phantom volume")
    parser.add_argument("--phantom-resolution", type=float, default=1.0, help="voxel size of the phantom (mm)")
    parser.add_argument("--phantom-cache-dir", default=None, help="phantom cache (default: the package's)")
    parser.add_argument("--worker", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.slices < 1 or args.rounds < 1:
        raise ValueError("malloc_tuning expects --slices >= 1 and --rounds >= 1.")
    if args.worker:
        print(json.dumps(run_once(args.worker, args.slices, args.threads, args)))
        return {}
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for setting, variables in SETTINGS.items():
            cmd = [sys.executable, __file__, "--worker", setting, "--slices", str(args.slices)]
            cmd += [
                "--threads",
                str(args.threads),
                "--overrides",
                args.overrides,
                "--volume-size",
                str(args.volume_size),
            ]
            cmd += ["--phantom-resolution", str(args.phantom_resolution)]
            cmd += ["--phantom-cache-dir", args.phantom_cache_dir] if args.phantom_cache_dir else []
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**env, **variables})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(row)
            print(
                f"round {r + 1}, {row['setting']}: {row['seconds_per_slice']:.3f} s/slice ({row['slices']} slices), "
                f"user {row['user_s']:.1f} s, kernel {row['sys_s']:.1f} s, {row['minor_faults']:,} minor faults, "
                f"peak {row['peak_gib']:.2f} GiB",
                flush=True,
            )
    summary = {}
    for setting in SETTINGS:
        rows = [r for r in runs if r["setting"] == setting]
        summary[setting] = {
            k: statistics.median(r[k] for r in rows)
            for k in ("seconds_per_slice", "user_s", "sys_s", "minor_faults", "peak_gib")
        }
    reference = summary["glibc default"]["seconds_per_slice"]
    speedups = {setting: reference / s["seconds_per_slice"] for setting, s in summary.items()}
    for setting, s in summary.items():
        print(
            f"{setting} {SETTINGS[setting] or ''}: median {s['seconds_per_slice']:.3f} s/slice "
            f"({speedups[setting]:.2f}x glibc's default, same machine, alternating fresh processes), kernel "
            f"{s['sys_s']:.1f} s, {s['minor_faults']:,.0f} minor faults, peak {s['peak_gib']:.2f} GiB"
        )
    result = {"machine": device_description(), "settings": SETTINGS, "runs": runs, "summary": summary}
    result["speedups"] = speedups
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
