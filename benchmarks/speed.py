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
"""Speed and memory benchmark: the bundle's sampler against bundle 0.7.0's, and MSG-LDM against the plain conditional
LDM of the same size, measured side by side in one run.

``python benchmarks/speed.py`` measures, for the bundle's default model (192 px slices, random weights: speed does not
depend on the weights):

- training seconds per iteration of each stage (``bundle_timing.time_stage``: the bundle's own configs, one warm-up
  iteration), and of the plain LDM's stage 2 (``baseline_ldm.json``, same UNet);
- synthesis seconds per slice against the sampling steps (``--steps``) and the slice batch size, for both models, on
  ``--sweep-slices`` slices with content of a 1 mm phantom subject preprocessed like BraTS (192 x 192 x 155), FLAIR
  missing, extrapolated to the volume's slices with content;
- one whole volume with each sampler of :data:`SAMPLERS` (bundle 0.7.0's: DDIM, 20 steps, :data:`BASELINE`; and
  ``inference.json`` as it is now), through the inferer alone in a fresh process (whose peak memory is the
  synthesis's own) and end to end through ``python -m monai.bundle run`` on the subject's NIfTI files (loading,
  preprocessing, synthesis, inversion, writing); speed-ups over bundle 0.7.0's sampler and MSG-LDM / plain LDM.

Writes ``speed.json``, ``speed.md`` and ``time_vs_steps.png`` to ``--output-dir``. Tens of minutes on 2 CPU cores:
not part of CI.
"""

from __future__ import annotations

import argparse
import gc
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
from common import CONFIGS, device_description, peak_rss_gb, reset_peak_rss, write_json  # noqa: E402

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


_DDIM_EPSILON = {
    "_target_": "monai.networks.schedulers.DDIMScheduler",
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "prediction_type": "epsilon",
    "clip_sample": False,
}

#: bundle 0.7.0's sampling of the default model, the reference of the speed-up target: the hybrid condition, DDIM
#: with 20 steps on the paper's epsilon schedule, known-contrast guidance, 4 slices per batch, all slices of a batch
#: through the image-resolution parts at once, float32 (``inference.json`` / ``train.json`` overrides)
BASELINE: dict[str, Any] = {
    "hybrid_condition": True,
    "sampling_scheduler": _DDIM_EPSILON,
    "ddim_steps": 20,
    "slice_batch_size": 4,
    "image_batch_size": None,
    "known_contrast_guidance": True,
    "crop_foreground": False,
    "cpu_amp": False,
}

#: the sampling the speed issue was measured with (bundle 0.6.0): the paper's F_s-only model, no guidance
PAPER_BASELINE: dict[str, Any] = {**BASELINE, "hybrid_condition": False, "known_contrast_guidance": False}

BASELINE_SAMPLER = "bundle 0.7.0 (hybrid, guided, DDIM 20 steps)"
PAPER_SAMPLER = "bundle 0.6.0 (F_s only, DDIM 20 steps)"
DEFAULT_SAMPLER = "inference.json"
EPSILON_SAMPLER = "inference.json, epsilon model (20 DDIM steps, the default before 0.10.0)"
NO_CROP_SAMPLER = "inference.json without the foreground crop (the default before 0.12.0)"
ONNX_SAMPLER = "inference.json with the ONNX Runtime encoder (onnx_runtime, the onnx extra)"
INT8_SAMPLER = "inference.json + onnx_int8.json (8-bit convolutions in ONNX Runtime, the onnx extra)"
INT8_ARENA_SAMPLER = "inference.json + onnx_int8.json with ONNX Runtime's memory arena (int8_memory_arena true)"
INT8_SAVED_SAMPLER = "inference.json + onnx_int8.json, graphs saved beforehand by export_int8.json"
INT8_SAVED_ARENA_SAMPLER = "inference.json + onnx_int8.json, graphs saved by export_int8.json, memory arena on"
#: the overlay that saves the 8-bit graphs (``save_int8_graphs``) before a run: timed apart (``export_seconds``), in
#: the worker before its peak memory is reset, and end to end as its own bundle command before the timed one
EXPORT_OVERLAY = "export_int8.json"
IMAGE_BATCH_4_SAMPLER = "inference.json, image-resolution parts 4 slices at a time (the default before 0.15.0)"
FLOAT32_SAMPLER = "inference.json in float32 (cpu_amp false: the default before 0.17.0, and on CPUs without AMX)"
#: what ``train.json`` trains and records beside ``model.pt`` (``models/model.sampling.json``), from which
#: ``inference.json`` takes its prediction type and step count; the random-weight models timed here have no record
DEFAULT_MODEL: dict[str, Any] = {"prediction_type": "v_prediction"}
#: the samplers of the whole-volume comparison: label -> (bundle overlays after inference.json, overrides of
#: inference.json and of the network's train.json). A 2-step sampler costs the same with DDIM (a v-prediction model,
#: the default since 0.10.0) or rectified flow (``rflow.json``): the denoiser runs twice either way.
SAMPLERS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    PAPER_SAMPLER: ((), PAPER_BASELINE),
    BASELINE_SAMPLER: ((), BASELINE),
    DEFAULT_SAMPLER: ((), DEFAULT_MODEL),
    NO_CROP_SAMPLER: ((), {**DEFAULT_MODEL, "crop_foreground": False}),
    ONNX_SAMPLER: ((), {**DEFAULT_MODEL, "onnx_runtime": True}),
    INT8_SAMPLER: (("onnx_int8.json",), DEFAULT_MODEL),
    INT8_ARENA_SAMPLER: (("onnx_int8.json",), {**DEFAULT_MODEL, "int8_memory_arena": True}),
    INT8_SAVED_SAMPLER: (("onnx_int8.json", EXPORT_OVERLAY), DEFAULT_MODEL),
    INT8_SAVED_ARENA_SAMPLER: (("onnx_int8.json", EXPORT_OVERLAY), {**DEFAULT_MODEL, "int8_memory_arena": True}),
    IMAGE_BATCH_4_SAMPLER: ((), {**DEFAULT_MODEL, "image_batch_size": 4}),
    FLOAT32_SAMPLER: ((), {**DEFAULT_MODEL, "cpu_amp": False}),
    "inference.json, 32 slices per batch": ((), {**DEFAULT_MODEL, "slice_batch_size": 32}),
    EPSILON_SAMPLER: ((), {"prediction_type": "epsilon", "crop_foreground": False}),
}
#: the samplers timed end to end through ``python -m monai.bundle run`` by default
BUNDLE_SAMPLERS = (BASELINE_SAMPLER, DEFAULT_SAMPLER, INT8_SAMPLER, INT8_SAVED_SAMPLER)


def inference_parser(overlays: Sequence[str] = (), overrides: Mapping[str, Any] | None = None) -> Any:
    """A ``ConfigParser`` of ``inference.json`` + ``overlays`` (file names in the bundle's ``configs/``) with
    ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), *(str(CONFIGS / f) for f in overlays)])
    parser.update({k: v for k, v in dict(overrides or {}).items() if k.split("#")[0] in parser})
    return parser


def sampler(ddim_steps: int | None = None, overlays: Sequence[str] = (), overrides: Mapping[str, Any] | None = None):
    """The bundle's sampling inferer (``inference.json``'s ``sampler`` with ``overlays`` and ``overrides``) at
    ``ddim_steps`` steps (default: the config's)."""
    parser = inference_parser(overlays, overrides)
    if ddim_steps is not None:
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


def content_indices(volume: torch.Tensor, available: Sequence[int]) -> torch.Tensor:
    """Indices of the slices (last axis) of ``volume`` ``(1, M, H, W, D)`` in which some of the ``available``
    channels is not constant: the slices the inferer samples (it skips the others)."""
    flat = volume[0, list(available)].flatten(1, 2)  # (A, H * W, D)
    return torch.nonzero((flat.amax(dim=1) > flat.amin(dim=1)).any(dim=0)).flatten()


def _content_slices(volume: torch.Tensor, available: Sequence[int]) -> int:
    return len(content_indices(volume, available))


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
    with_content = content_indices(volume, channels)
    content = len(with_content)
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


def time_bundle_inferer(
    net: torch.nn.Module,
    volume: torch.Tensor,
    overlays: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    int8_graph_dir: str | None = None,
) -> dict:
    """One whole volume with the ``inferer`` of ``inference.json`` + ``overlays`` with ``overrides`` (its sampler,
    steps, slice batch and options as a user gets them): FLAIR from T1, T1CE and T2 on every slice with content, after
    one warm-up batch timed apart (``warm_up_seconds``: with ``onnx_runtime`` the encoder's export happens in it, with
    ``onnx_int8.json`` the exports, calibrations on this volume and quantizations, or with ``int8_graph_dir`` the
    loading of the graphs :func:`save_int8_graphs` saved there)."""
    overlays = [o for o in overlays if o != EXPORT_OVERLAY]
    parser = inference_parser(overlays, overrides)
    inferer = parser.get_parsed_content("inferer")
    inferer.progress = False
    available = [m for m in MODALITIES if m != "flair"]
    if "int8_calibration_slices" in parser:  # onnx_int8.json: calibrated on this volume, as on a run's first case
        from monai_msgldm.inferers import with_onnx_runtime_int8

        net = with_onnx_runtime_int8(
            net,
            volume[0],
            [m in available for m in MODALITIES],
            num_slices=parser.get_parsed_content("int8_calibration_slices"),
            memory_arena=parser.get_parsed_content("int8_memory_arena"),
            graph_dir=int8_graph_dir,
        )
    elif parser.get_parsed_content("onnx_runtime"):  # as inference.json's "network" applies it
        from monai_msgldm.inferers import with_onnx_runtime_encoder

        net = with_onnx_runtime_encoder(net)
    inputs = volume.clone()
    inputs[:, MODALITIES.index("flair")] = -1.0
    with torch.inference_mode():
        with_content = content_indices(volume, [MODALITIES.index(m) for m in available])
        start = time.perf_counter()
        inferer(inputs[..., with_content[: inferer.slice_batch_size]], net, available=available)
        warm_up_seconds = time.perf_counter() - start
        start = time.perf_counter()
        inferer(inputs, net, available=available)
        seconds = time.perf_counter() - start
    return {
        "ddim_steps": int(parser.get_parsed_content("ddim_steps")),
        "scheduler": type(inferer.sampler.scheduler).__name__,
        "slice_batch_size": inferer.slice_batch_size,
        "cpu_amp": inferer.sampler.cpu_amp,
        "slices_sampled_per_volume": len(with_content),
        "seconds": seconds,
        "warm_up_seconds": warm_up_seconds,
        "seconds_per_slice": seconds / len(with_content),
    }


def _volume_worker(args: argparse.Namespace) -> int:
    """Child process: one whole volume, so that the peak memory is the synthesis's own."""
    overlays, sampler_overrides = json.loads(args.worker_sampler)
    # the network as the sampler spec says (e.g. hybrid_condition); ids train.json does not use change nothing
    net = build_network(args.worker_model, {**json.loads(args.overrides), **sampler_overrides})
    volume = phantom_volume(args.volume_size, args.volume_depth, args.phantom_resolution, args.phantom_cache_dir)
    net_overrides = {k: v for k, v in json.loads(args.overrides).items() if "#" not in k}
    with tempfile.TemporaryDirectory() as graph_dir:
        export_seconds = None
        if EXPORT_OVERLAY in overlays:  # as export_int8.json would, on this volume with all four contrasts given
            from monai_msgldm.inferers import save_int8_graphs

            start = time.perf_counter()
            num_slices = inference_parser(["onnx_int8.json"]).get_parsed_content("int8_calibration_slices")
            case = {"image": volume[0], "available": torch.ones(len(MODALITIES), dtype=torch.bool)}
            save_int8_graphs(net, [case], graph_dir, num_slices=num_slices)
            export_seconds = time.perf_counter() - start
            net = build_network(args.worker_model, {**json.loads(args.overrides), **sampler_overrides})  # fresh
        gc.collect()
        # the peak of the synthesis (from the resident network, volume and libraries), not of preparing the volume
        row = {"peak_is_synthesis_only": reset_peak_rss(), "export_seconds": export_seconds}
        row.update(
            time_bundle_inferer(
                net,
                volume,
                overlays,
                {**net_overrides, **sampler_overrides},
                int8_graph_dir=graph_dir if export_seconds is not None else None,
            )
        )
    row["peak_process_memory_gb"] = peak_rss_gb()
    row["model"] = args.worker_model
    write_json(args.worker_output, row)
    return 0


def whole_volume(
    model: str,
    sampler_spec: tuple[Sequence[str], Mapping[str, Any]],
    overrides: str = "{}",
    size: int = 192,
    depth: int = VOLUME_SLICES,
    resolution: float = 1.0,
    cache_dir: str | None = None,
) -> dict:
    """:func:`time_bundle_inferer` of ``model`` on a whole volume in a fresh process (its peak resident memory
    included); ``sampler_spec``: ``(overlays, overrides)`` of ``inference.json`` (see :data:`SAMPLERS`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker-model", model]
        cmd += ["--worker-sampler", json.dumps([list(sampler_spec[0]), dict(sampler_spec[1])])]
        cmd += ["--overrides", overrides, "--volume-size", str(size), "--volume-depth", str(depth)]
        cmd += ["--phantom-resolution", str(resolution)] + (["--phantom-cache-dir", cache_dir] if cache_dir else [])
        cmd += ["--worker-output", out]
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)


#: runs one command line and writes its wall seconds and peak resident memory (GiB) as JSON to argv[1]
_MEASURED_RUN = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[2:]).returncode
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
json.dump({"seconds": time.perf_counter() - start, "peak_process_memory_gb": peak, "returncode": code}, open(sys.argv[1], "w"))
"""


def _measured_bundle_command(arguments: Mapping[str, Any], stem: str) -> dict:
    """``python -m monai.bundle run`` with ``arguments`` (written to ``<stem>.args.json``, typed values, not
    command-line text): its wall seconds and peak resident memory; raises when it fails."""
    args_file = write_json(stem + ".args.json", dict(arguments))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--args_file", args_file]
    subprocess.run([sys.executable, "-c", _MEASURED_RUN, stem + ".run.json", *cmd], check=True)
    with open(stem + ".run.json") as f:
        row = json.load(f)
    if row["returncode"] != 0:
        raise RuntimeError(f"bundle_run: the bundle command failed (exit code {row['returncode']}): {cmd}")
    return row


def bundle_run(
    sampler_spec: tuple[Sequence[str], Mapping[str, Any]],
    overrides: Mapping[str, Any] | None = None,
    resolution: float = 1.0,
    cache_dir: str | None = None,
) -> dict:
    """End to end through ``python -m monai.bundle run`` with ``inference.json`` + the spec's overlays and overrides
    (``overrides``: the network sizes and ``spatial_size``): a bundle folder with a randomly initialised
    ``models/model.pt`` of the configured network, FLAIR synthesized from the T1, T1CE and T2 NIfTI files of a
    phantom subject at ``resolution`` mm (loading, preprocessing, synthesis, inversion, writing; process start
    included). Returns wall seconds and the peak resident memory of the command's process."""
    from monai_msgldm.data.phantom import ensure_phantom_dataset

    overlays, sampler_overrides = sampler_spec
    values = {**dict(overrides or {}), **dict(sampler_overrides)}
    root = ensure_phantom_dataset(cache_dir=cache_dir, num_subjects=1, resolution=resolution, seed=0)
    subject = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))[0]
    files = {m: os.path.join(root, subject, f"{subject}_{m}.nii.gz") for m in ("t1", "t1ce", "t2")}
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "models"))
        torch.manual_seed(0)
        net = inference_parser(overlays, values).get_parsed_content("network_def", instantiate=True)
        torch.save(net.state_dict(), os.path.join(tmp, "models", "model.pt"))
        run_overlays = [o for o in overlays if o != EXPORT_OVERLAY]
        arguments = {
            "config_file": [str(CONFIGS / "inference.json"), *(str(CONFIGS / f) for f in run_overlays)],
            "meta_file": str(CONFIGS / "metadata.json"),
            "logging_file": str(CONFIGS / "logging.conf"),
            "bundle_root": tmp,
            "output_dir": os.path.join(tmp, "out"),
            "preview": False,
            "pixdim": [resolution] * 3,
            "field_of_view": "crop",  # a timing input: a brain larger than the slice is cropped, not rejected
            **files,
            **values,
        }
        export_seconds = None
        if EXPORT_OVERLAY in overlays:  # the graphs saved beforehand by their own command, on all four contrasts
            export = {**arguments, "config_file": [*arguments["config_file"], str(CONFIGS / EXPORT_OVERLAY)]}
            export["flair"] = os.path.join(root, subject, f"{subject}_flair.nii.gz")
            export_seconds = _measured_bundle_command(export, os.path.join(tmp, "export"))["seconds"]
        row = _measured_bundle_command(arguments, os.path.join(tmp, "run"))
        row["export_seconds"] = export_seconds
        written = os.path.join(tmp, "out", subject, f"{subject}_flair_synth.nii.gz")
        if not os.path.isfile(written):
            raise RuntimeError(f"bundle_run: the bundle command wrote no {written}.")
    parser = inference_parser(overlays, values)
    row.update(
        {
            "ddim_steps": int(parser.get_parsed_content("ddim_steps")),
            "scheduler": type(parser.get_parsed_content("sampling_scheduler")).__name__,
            "slice_batch_size": int(parser.get_parsed_content("slice_batch_size")),
            "cpu_amp": bool(parser.get_parsed_content("cpu_amp")),
        }
    )
    return row


def plot_time_vs_steps(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Seconds per 155-slice volume against the sampling steps, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["ddim_steps"])
        ax.plot([r["ddim_steps"] for r in mine], [r["seconds_per_volume"] for r in mine], "o-", label=model)
    ax.axhline(75, color="grey", linestyle="--", label="target: 75 s")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("seconds per 155-slice volume")
    ax.set_title(f"Synthesis time, {device_description()['device']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def volume_ratios(volumes: Sequence[Mapping[str, Any]]) -> dict | None:
    """MSG-LDM / plain LDM time and peak memory of a whole volume with the bundle's sampler (None without both)."""
    last = {r["model"]: r for r in volumes if r["sampler"] == DEFAULT_SAMPLER}
    if "msgldm" not in last or "plain_ldm" not in last:
        return None
    mine, plain = last["msgldm"], last["plain_ldm"]
    return {
        "seconds": mine["seconds"] / plain["seconds"],
        "peak_memory": mine["peak_process_memory_gb"] / plain["peak_process_memory_gb"],
    }


def speedups(rows: Sequence[Mapping[str, Any]], reference: str | None = None) -> dict[str, float]:
    """Seconds of the ``reference`` sampler (default :data:`BASELINE_SAMPLER`) over the seconds of each other
    sampler, MSG-LDM rows of one kind (inferer volumes or bundle runs) measured in the same run."""
    reference = BASELINE_SAMPLER if reference is None else reference
    msgldm = {r["sampler"]: r["seconds"] for r in rows if r.get("model", "msgldm") == "msgldm"}
    if reference not in msgldm:
        return {}
    return {label: msgldm[reference] / sec for label, sec in msgldm.items() if label != reference}


def target_checks(result: Mapping[str, Any]) -> list[dict]:
    """The speed targets, each with the figures it was judged on: the bundle's sampler (``inference.json``, and with
    the ``onnx_int8.json`` overlay, calibrating in the run or on graphs saved beforehand) on one whole volume of MSG-LDM, inferer alone and end to end, and its speed-up
    over bundle 0.7.0's sampler measured in the same run."""
    checks = []
    size, _, depth = result["volume"]
    model = "model with overrides" if result["model_overrides"] else "default model"
    for kind, rows in (
        ("inferer alone", result["volumes"]),
        ("end to end, python -m monai.bundle run", result["bundle"]),
    ):
        for label in (DEFAULT_SAMPLER, INT8_SAMPLER, INT8_SAVED_SAMPLER):
            mine = [r for r in rows if r.get("model", "msgldm") == "msgldm" and r["sampler"] == label]
            if not mine:
                continue
            row = mine[-1]
            checks.append(
                {
                    "target": f"one {depth}-slice volume ({size} x {size}, {model}, {kind}, {label}) in at most 75 s "
                    "with peak memory under 2 GiB",
                    "met": bool(row["seconds"] <= 75 and row["peak_process_memory_gb"] < 2.0),
                    "figures": f"{row['seconds']:.0f} s ({row['scheduler']}, {row['ddim_steps']} steps, "
                    f"{row['slice_batch_size']} slices per batch), peak {row['peak_process_memory_gb']:.2f} GiB",
                }
            )
            ratio = speedups(rows).get(label)
            if ratio is not None:
                checks.append(
                    {
                        "target": f"{kind}, {label}: at least 2x faster than bundle 0.7.0's sampler (DDIM, 20 steps), "
                        "same run",
                        "met": bool(ratio >= 2.0),
                        "figures": f"{ratio:.2f}x",
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
        f"Machine: {m['device']}, {m['torch_threads']} torch threads, {m['cpu_count']} CPUs, torch {m['torch']}, "
        f"{'Intel AMX (inference.json runs bfloat16)' if m.get('cpu_amx') else 'no AMX (inference.json runs float32)'}. "
        f"{'Network overrides ' + json.dumps(result['model_overrides']) if result['model_overrides'] else 'Default model sizes (192 px slices)'}"
        ", random weights.",
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
    if result["steps_sweep"] or result["batch_sweep"]:
        lines += ["## Synthesis against sampling steps", "", "| model | steps | slice batch | s / slice | s / volume |"]
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
        lines.append("")
    lines += ["## One whole volume (FLAIR from T1 + T1CE + T2)", ""]
    lines += [
        "| how | model | sampler | scheduler | steps | slice batch | precision | seconds | peak memory GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, rows in (("inferer, fresh process", result["volumes"]), ("python -m monai.bundle run", result["bundle"])):
        for row in rows:
            saved = row.get("export_seconds")
            sampler = row["sampler"] + (f" (saving them took {saved:.1f} s, not counted)" if saved is not None else "")
            lines.append(
                f"| {kind} | {row.get('model', 'msgldm')} | {sampler} | {row['scheduler']} | {row['ddim_steps']} "
                f"| {row['slice_batch_size']} | {'bfloat16' if row.get('cpu_amp') else 'float32'} "
                f"| {row['seconds']:.1f} | {row['peak_process_memory_gb']:.2f} |"
            )
    for reference, prefix in ((BASELINE_SAMPLER, ""), (PAPER_SAMPLER, "paper_")):
        for kind, key in (("inferer", "volume_speedups"), ("bundle command", "bundle_speedups")):
            if result.get(prefix + key):
                lines += [
                    "",
                    f"Speed-up over {reference}, {kind}, same run: "
                    + ", ".join(f"{label} **{v:.2f}x**" for label, v in result[prefix + key].items())
                    + ".",
                ]
    if result.get("volume_ratios"):
        r = result["volume_ratios"]
        lines += [
            "",
            f"Whole volume MSG-LDM / plain LDM ({DEFAULT_SAMPLER}): time {r['seconds']:.2f}x, peak memory "
            f"{r['peak_memory']:.2f}x.",
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
    parser.add_argument("--steps", type=int, nargs="*", default=[1, 2, 20], help="steps of the sweep (none: skip)")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[16, 32], help="slice batches of the sweep")
    parser.add_argument("--sweep-slices", type=int, default=16, help="slices timed in the sweeps")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument(
        "--bundle-samplers",
        nargs="*",
        default=list(BUNDLE_SAMPLERS),
        choices=list(SAMPLERS),
        help="samplers timed end to end through python -m monai.bundle run (none: skip)",
    )
    parser.add_argument("--overrides", default="{}", help="JSON dict of bundle overrides (smaller networks)")
    parser.add_argument("--volume-size", type=int, default=192, help="in-plane size of the phantom volume")
    parser.add_argument("--volume-depth", type=int, default=VOLUME_SLICES, help="slices of the phantom volume")
    parser.add_argument("--phantom-resolution", type=float, default=1.0, help="voxel size of the phantom (mm)")
    parser.add_argument("--phantom-cache-dir", default=None, help="phantom cache (default: the package's)")
    parser.add_argument("--worker-model", help=argparse.SUPPRESS)
    parser.add_argument("--worker-sampler", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_model:
        return _volume_worker(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from bundle_timing import time_stage

    overrides = json.loads(args.overrides)
    result: dict[str, Any] = {
        "machine": device_description(),
        "model_overrides": overrides,
        "volume": [args.volume_size, args.volume_size, args.volume_depth],
        "training": [],
        "stage2_ratio": None,
        "baseline": BASELINE,
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
    batch = inference_default("slice_batch_size")
    for model in MODELS if args.steps else ():
        net = build_network(model, overrides)
        for steps in args.steps:
            row = {"model": model, **time_synthesis_run(net, volume, steps, batch, args.sweep_slices)}
            logger.info(f"{model} {steps} steps: {row['seconds_per_slice']:.3f} s/slice")
            result["steps_sweep"].append(row)
        if model != "msgldm":  # the slice-batch sweep and the optimisations-off row: MSG-LDM only
            continue
        for size in args.batch_sizes:
            if size == batch:
                continue
            row = {
                "model": model,
                **time_synthesis_run(net, volume, args.steps[-1], size, max(size, args.sweep_slices)),
            }
            logger.info(f"{model} batch {size}: {row['seconds_per_slice']:.3f} s/slice")
            result["batch_sweep"].append(row)
        row = time_synthesis_run(net, volume, args.steps[-1], batch, args.sweep_slices, optimised=False)
        row["model"] = model
        logger.info(f"{model} optimisations off: {row['seconds_per_slice']:.3f} s/slice")
        result["batch_sweep"].append(row)
        net.to(memory_format=torch.contiguous_format)
    per = {(r["model"], r["ddim_steps"]): r["seconds_per_slice"] for r in result["steps_sweep"]}
    result["synthesis_ratios"] = {
        str(s): per[("msgldm", s)] / per[("plain_ldm", s)] for s in args.steps if ("plain_ldm", s) in per
    }
    shape = (args.volume_size, args.volume_depth, args.phantom_resolution, args.phantom_cache_dir)
    result["volumes"] = []
    runs = [("msgldm", label) for label in args.samplers]
    runs += [("plain_ldm", DEFAULT_SAMPLER)] if DEFAULT_SAMPLER in args.samplers else []
    for model, label in runs:
        row = {"sampler": label, **whole_volume(model, SAMPLERS[label], args.overrides, *shape)}
        logger.info(f"whole volume {model}, {label}: {row['seconds']:.1f} s, {row['peak_process_memory_gb']:.2f} GiB")
        result["volumes"].append(row)
    result["bundle"] = []
    net_overrides = {**overrides, "spatial_size": args.volume_size}
    for label in args.bundle_samplers:
        row = {
            "sampler": label,
            **bundle_run(SAMPLERS[label], net_overrides, args.phantom_resolution, args.phantom_cache_dir),
        }
        logger.info(f"bundle run, {label}: {row['seconds']:.1f} s, {row['peak_process_memory_gb']:.2f} GiB")
        result["bundle"].append(row)
    result["volume_ratios"] = volume_ratios(result["volumes"])
    result["volume_speedups"] = speedups(result["volumes"])
    result["bundle_speedups"] = speedups(result["bundle"])
    result["paper_volume_speedups"] = speedups(result["volumes"], PAPER_SAMPLER)
    result["paper_bundle_speedups"] = speedups(result["bundle"], PAPER_SAMPLER)
    result["checks"] = target_checks(result)
    write_json(os.path.join(args.output_dir, "speed.json"), result)
    report = markdown_report(result)
    atomic_write_text(os.path.join(args.output_dir, "speed.md"), report)
    if result["steps_sweep"]:
        plot_time_vs_steps(result["steps_sweep"], os.path.join(args.output_dir, "time_vs_steps.png"))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
