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
"""Stage-2 seconds per iteration without and with the latent cache (``LatentCache``), at the demo and default sizes.

``python benchmarks/stage2_cache.py [--quick]`` builds the bundle's stage-2 network (random weights: the cost of an
iteration does not depend on them), its training inferer, AdamW on the UNet and EMA as the configs say, and two
:py:class:`~monai_msgldm.engines.LatentDiffusionTrainer` on the same distinct synthetic batches of the config's
size (``batch_size`` volumes x ``stage_num_samples`` slices, ``spatial_size`` px), and a third with the cache of
the structure encoders' features as well (``LatentCache(structure_features=True)``, MSG-LDM only), one epoch each in
alternation (so that the load of other processes hits them alike), the first iteration of each a warm-up:

- ``before``: no cache (every iteration encodes its slices), every epoch;
- ``miss``: with the cache, its first epoch (every slice new: encode + fill);
- ``after``: with the cache, the later epochs over the same batches (every slice cached);
- ``structure_miss`` / ``structure_after``: the same with the structure features cached too.

``ratio`` is before / after (the steady state once every slice is cached), ``structure_ratio`` after /
structure_after (what caching the structure features adds to the latent cache). Lazy filling encodes each slice the first
time it is drawn, so over a whole run the saving depends on how often slices come back: the expected fraction of
hits for ``E`` epochs drawing ``k`` slices per case and epoch among ``N`` candidate slices is
``1 - N / (E k) * (1 - (1 - 1/N)^(E k))``, and ``run_average = hits * after + (1 - hits) * miss`` (``N`` from
``--slices-per-case``: an assumption, printed). Cache memory per slice: ``2 * M * latent_channels * prod(L)``
float32 plus a 128-byte fingerprint. CPU figures depend on the load of the machine: other processes share it.
``OMP_WAIT_POLICY`` is set to ``PASSIVE`` unless it is set already: on a shared CPU, spinning OpenMP threads that wait
for a descheduled sibling made single iterations up to 10x slower at random (measured here).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, preset_parser  # noqa: E402

__all__ = ["main", "expected_hit_fraction", "time_stage2"]

#: realistic data sets for the memory figure: (name, training cases); BraTS 2020: 369 cases, BraTS 2023 GLI: 1251,
#: 80 % for training (the bundle's default split: val_ratio = test_ratio = 0.1)
DATASETS = (("BraTS 2020 (295 training cases)", 295), ("BraTS 2023 GLI (1001 training cases)", 1001))


def expected_hit_fraction(epochs: int, per_epoch: int, candidates: int) -> float:
    """Expected fraction of cache hits over ``epochs`` epochs that draw ``per_epoch`` slices uniformly (with
    replacement across epochs) among ``candidates`` per case: draw ``j`` is a hit with probability
    ``1 - (1 - 1/N)^j``."""
    draws, n = epochs * per_epoch, float(candidates)
    if draws <= 0 or n < 1:
        return 0.0
    return 1.0 - n / draws * (1.0 - (1.0 - 1.0 / n) ** draws)


def _batches(num: int, size: int, slices: int, modalities: int, seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(num):
        image = torch.rand(slices, modalities, size, size, generator=g) * 2 - 1
        out.append(
            {
                "image": image,
                "available": torch.ones(slices, modalities, dtype=torch.bool),
                "input_available": torch.rand(slices, modalities, generator=g) < 0.7,
                "subject": [f"case{b}"] * slices,
                "slice_index": torch.arange(slices),
            }
        )
        out[-1]["input_available"][:, 0] = True  # never empty
    return out


def time_stage2(preset: str, num_batches: int, rounds: int) -> dict[str, Any]:
    """Seconds per stage-2 iteration of ``preset`` (``"demo"`` or ``"default"``) without and with the cache.

    Two trainers on the same ``num_batches`` batches, run in alternation for ``rounds`` epochs each (so that the
    load of other processes hits both alike): the uncached one encodes at every iteration, the cached one in its
    first epoch only. Each trainer's first iteration is a warm-up and not counted. Medians (and means) of the
    iteration times."""
    from ignite.engine import Events

    from monai_msgldm.engines import LatentCache, LatentDiffusionTrainer
    from monai_msgldm.networks.nets import MSGLDM

    parser = preset_parser(preset)
    parser["stage"] = "diffusion"
    size = int(parser.get_parsed_content("spatial_size"))
    per_epoch = int(parser.get_parsed_content("stage_num_samples")["diffusion"])
    slices = int(parser.get_parsed_content("batch_size")) * per_epoch
    torch.manual_seed(0)
    template = parser.get_parsed_content("network_def", lazy=False)
    template.scale_factor.fill_(0.5)  # as if calibrated: no calibration in the timed iterations
    batches = _batches(num_batches, size, slices, template.num_modalities)

    def make(cache: LatentCache | None) -> tuple[Any, list[tuple[int, float, float]]]:
        net = copy.deepcopy(template)
        trainer = LatentDiffusionTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=batches,
            network=net,
            optimizer=torch.optim.AdamW(net.unet.parameters(), 1e-4),
            inferer=parser.get_parsed_content("train#inferer", lazy=False),
            ema_decay=parser.get_parsed_content("ema_decay"),
            input_mask_key="input_available",
            latent_cache=cache,
        )
        times: list[tuple[int, float, float]] = []  # (epoch, wall, process CPU) seconds
        start: list[tuple[float, float]] = []
        trainer.add_event_handler(
            Events.ITERATION_STARTED, lambda e: start.append((time.perf_counter(), time.process_time()))
        )
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda e: times.append(
                (e.state.epoch, time.perf_counter() - start[-1][0], time.process_time() - start[-1][1])
            ),
        )
        return trainer, times

    cache = LatentCache(slice_key="slice_index")
    (plain, plain_times), (cached, cached_times) = make(None), make(cache)
    runs = [plain, cached]
    structure_cache = structure_times = None
    if isinstance(template, MSGLDM):
        structure_cache = LatentCache(slice_key="slice_index", structure_features=True)
        structure, structure_times = make(structure_cache)
        runs.append(structure)
    for r in range(1, rounds + 1):
        for trainer in runs:
            trainer.state.max_epochs = r  # ignite goes on with epoch r
            trainer.run()

    def stats(rows: list[tuple[int, float, float]]) -> dict[str, float]:
        wall, cpu = sorted(r[1] for r in rows), sorted(r[2] for r in rows)
        n = len(rows)
        return {"median": wall[n // 2], "min": wall[0], "mean": sum(wall) / n, "cpu_median": cpu[n // 2], "n": n}

    before = stats(plain_times[1:])
    miss = stats([r for r in cached_times[1:] if r[0] == 1])
    after = stats([r for r in cached_times if r[0] > 1])
    detail = {"before": before, "miss": miss, "after": after}
    extra: dict[str, Any] = {}
    if structure_times is not None and structure_cache is not None:
        detail["structure_miss"] = stats([r for r in structure_times[1:] if r[0] == 1])
        detail["structure_after"] = stats([r for r in structure_times if r[0] > 1])
        extra = {
            "structure_miss_s": detail["structure_miss"]["median"],
            "structure_after_s": detail["structure_after"]["median"],
            "structure_ratio": after["median"] / detail["structure_after"]["median"],
            "structure_cache_bytes_per_slice": structure_cache.nbytes / len(structure_cache),
        }
    return {
        "preset": preset,
        "spatial_size": size,
        "slices_per_iteration": slices,
        "epochs": int(parser.get_parsed_content("epochs")["diffusion"]),
        "slices_per_case_and_epoch": per_epoch,
        "before_s": before["median"],
        "miss_s": miss["median"],
        "after_s": after["median"],
        "ratio": before["median"] / after["median"],
        "ratio_min": before["min"] / after["min"],
        "ratio_cpu": before["cpu_median"] / after["cpu_median"],
        "detail": detail,
        "cache_bytes_per_slice": cache.nbytes / len(cache),
        **extra,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 batches x 2 rounds (under 3 minutes on an idle 2-core CPU)"
    )
    parser.add_argument("--batches", type=int, default=3, help="distinct batches (the cached run's misses)")
    parser.add_argument("--rounds", type=int, default=4, help="epochs over them, alternating the two trainers")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--presets", nargs="+", default=["demo", "default"], choices=["demo", "default"])
    parser.add_argument(
        "--slices-per-case",
        type=json.loads,
        default={"demo": 45, "default": 130},
        help="assumed candidate slices per case, per preset (JSON), for the expected hit fraction of a whole run",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    num_batches, rounds = (2, 2) if args.quick else (args.batches, args.rounds)
    if num_batches < 2 or rounds < 2:
        raise ValueError("stage2_cache expects --batches >= 2 and --rounds >= 2 (a warm-up, then timed iterations).")
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": device_description(), "batches": num_batches, "rounds": rounds}
    results["machine"]["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    results["presets"] = {}
    print(f"machine: {results['machine']} (shared with other processes: figures depend on their load)")
    for preset in args.presets:
        r = time_stage2(preset, num_batches, rounds)
        n = int(args.slices_per_case[preset])
        r["assumed_slices_per_case"] = n
        r["hits"] = expected_hit_fraction(r["epochs"], r["slices_per_case_and_epoch"], n)
        r["run_average_s"] = r["hits"] * r["after_s"] + (1 - r["hits"]) * r["miss_s"]
        r["run_ratio"] = r["before_s"] / r["run_average_s"]
        results["presets"][preset] = r
        d = r["detail"]
        print(
            f"[{preset}] {r['spatial_size']} px, {r['slices_per_iteration']} slices/iteration, median s/iteration: "
            f"before {r['before_s']:.3f}  after {r['after_s']:.3f}  ratio {r['ratio']:.2f}x  "
            f"(first visit with the cache: {r['miss_s']:.3f}); fastest iterations: before {d['before']['min']:.3f} "
            f"after {d['after']['min']:.3f} ratio {r['ratio_min']:.2f}x; process CPU s/iteration: before "
            f"{d['before']['cpu_median']:.3f} after {d['after']['cpu_median']:.3f} ratio {r['ratio_cpu']:.2f}x"
        )
        print(
            f"[{preset}] whole run ({r['epochs']} epochs x {r['slices_per_case_and_epoch']} slices per case among "
            f"~{n} candidates): expected hits {r['hits']:.0%}, average {r['run_average_s']:.3f} s/iteration, "
            f"ratio {r['run_ratio']:.2f}x"
        )
        if "structure_after_s" in r:
            print(
                f"[{preset}] structure features cached too: median s/iteration {r['structure_after_s']:.3f} against "
                f"{r['after_s']:.3f} with the latents only, ratio {r['structure_ratio']:.2f}x (first visit "
                f"{r['structure_miss_s']:.3f}); cache {r['structure_cache_bytes_per_slice'] / 2**20:.2f} MiB per slice"
            )
        per_slice = r["cache_bytes_per_slice"]
        print(f"[{preset}] cache: {per_slice / 1024:.1f} KiB per slice")
        if preset == "default":
            seen = 1 - (1 - 1 / n) ** (r["epochs"] * r["slices_per_case_and_epoch"])  # fraction filled by the end
            for name, cases in DATASETS:
                full = cases * n * per_slice
                r.setdefault("cache_gib", {})[name] = {"all_slices": full / 2**30, "end_of_run": seen * full / 2**30}
                print(
                    f"[{preset}]   {name} x ~{n} slices: {full / 2**30:.2f} GiB with every slice cached, "
                    f"{seen * full / 2**30:.2f} GiB expected at the end of the run ({seen:.0%} of the slices drawn)"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
