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
"""Quality benchmark: MSG-LDM, its ablations and two baselines trained on the same phantom set, then scored.

``python benchmarks/quality.py`` trains every model of :data:`MODELS` through the bundle's own configs with the
demo's network sizes (64 px slices of a 3 mm phantom; see :data:`BUDGET` for the subjects, the split and the
iterations of each stage, the same for every model), then synthesizes the held-out test subjects:

- the 3 -> 1 and 1 -> 3 scenarios for every model at ``--ddim-steps`` (20) steps: slice PSNR / SSIM in the brain
  mask per target, and the 3D SSIM inside the tumour (``monai_msgldm.evaluation.evaluate_synthesis``);
- the 3 -> 1 scenarios at 10, 20, 50 and 100 DDIM steps for MSG-LDM and the plain LDM (steps-versus-quality).

The models:

- ``msgldm``: ``train.json`` + ``demo.json`` (the three stages);
- ``msgldm_no_*`` / ``msgldm_mean_fusion``: the same with one switch of the bundle config (``extra_overrides``):
  no HFIB, no MSSE, no style-consistency loss, no structure-aware loss, mean fusion instead of the MMSF gates;
  they retrain stages 1 and 2 and reuse the stage-0 autoencoder of ``msgldm``;
- ``plain_ldm``: ``train_diffusion.json`` + ``baseline_ldm.json``: the same autoencoder and UNet conditioned on the
  latents of the available contrasts, no structure branch;
- ``regression``: ``train_diffusion.json`` + ``baseline_regression.json``: a MONAI ``BasicUNet`` from the zero-filled
  contrasts + availability mask to the four contrasts, L1 loss.

Trained models are kept in ``--work-dir`` and not trained again (delete a model's folder to retrain it). Writes
``quality.json``, ``quality.md`` and PNG plots to ``--output-dir``. Hours on 2 CPU cores: not part of CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BUNDLE, CONFIGS, preset_overrides, write_json, write_text  # noqa: E402

__all__ = ["BUDGET", "MODELS", "main", "train_model", "evaluate_model"]

logger = logging.getLogger("quality")

#: data and training budget shared by every model (iterations = epochs x train subjects / batch_size)
BUDGET: dict[str, Any] = {
    "phantom_subjects": 16,
    "phantom_resolution": 3.0,
    "phantom_seed": 0,
    "val_ratio": 0.125,
    "test_ratio": 0.25,
    "split_seed": 0,
    "epochs": {"autoencoder": 60, "structure": 40, "diffusion": 300},
}

#: model name -> (kind, bundle overrides); kind "msgldm" trains with train.json + demo.json
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "msgldm": ("msgldm", {}),
    "msgldm_no_hfib": ("msgldm", {"structure_def#use_hfib": False}),
    "msgldm_no_msse": ("msgldm", {"structure_def#use_msse": False}),
    "msgldm_no_style_loss": ("msgldm", {"style_weight": 0.0}),
    "msgldm_no_structure_loss": ("msgldm", {"structure_weight": 0.0}),
    "msgldm_mean_fusion": ("msgldm", {"structure_def#use_fusion_gates": False}),
    "plain_ldm": ("baseline_ldm", {}),
    "regression": ("baseline_regression", {}),
}


def _bundle_files() -> tuple[str, str]:
    return str(CONFIGS / "metadata.json"), str(CONFIGS / "logging.conf")


def _data_overrides() -> dict[str, Any]:
    return {k: v for k, v in BUDGET.items() if k != "epochs"}


def model_dir(work_dir: str | os.PathLike, name: str) -> str:
    """Folder of one trained model: ``<work_dir>/<name>`` with ``models/`` (checkpoints) and ``eval/`` (logs)."""
    return os.path.join(os.fspath(work_dir), name)


def served_checkpoint(work_dir: str | os.PathLike, name: str) -> str:
    """The final checkpoint of a model (``models/model.pt``; EMA weights for the diffusion UNets)."""
    return os.path.join(model_dir(work_dir, name), "models", "model.pt")


def baseline_overrides(kind: str, preset: Mapping[str, Any]) -> dict[str, Any]:
    """Stage-2 overrides of the demo preset that apply to a baseline overlay (network sizes it does not have are
    dropped: no structure net for the plain LDM; the regression network has its own sizes)."""
    drop = ("structure_def",) if kind == "baseline_ldm" else ("structure_def", "unet_def", "network_def")
    return {k: v for k, v in preset.items() if k.replace("::", "#").split("#")[0] not in drop}


def train_model(name: str, work_dir: str | os.PathLike) -> float:
    """Train model ``name`` of :data:`MODELS` into :func:`model_dir` unless its final checkpoint exists.

    Returns:
        the training wall time in seconds (0 when it was already trained).
    """
    from monai_msgldm.bundle import run_bundle_workflow

    if name not in MODELS:
        raise ValueError(f"train_model: unknown model {name!r}; expected one of {sorted(MODELS)}.")
    kind, overrides = MODELS[name]
    out = model_dir(work_dir, name)
    if os.path.isfile(served_checkpoint(work_dir, name)):
        logger.info(f"{name}: trained already ({served_checkpoint(work_dir, name)})")
        return 0.0
    ckpt_dir = os.path.join(out, "models")
    os.makedirs(ckpt_dir, exist_ok=True)
    if kind != "baseline_regression" and name != "msgldm":  # the latent models share msgldm's stage-0 autoencoder
        train_model("msgldm", work_dir)
        shutil.copyfile(
            os.path.join(model_dir(work_dir, "msgldm"), "models", "autoencoder.pt"),
            os.path.join(ckpt_dir, "autoencoder.pt"),
        )
    meta, logging_file = _bundle_files()
    logger.info(f"{name}: training ({kind}, overrides {overrides})")
    start = time.perf_counter()
    if kind == "msgldm":
        run_bundle_workflow(
            [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")],
            meta,
            logging_file,
            run_id="training",
            workflow_type="train",
            bundle_root=str(BUNDLE),
            demo_dir=out,
            demo_epochs=BUDGET["epochs"],
            extra_overrides=overrides,
            training=["@run_stages"],
            **_data_overrides(),
        )
    else:
        shared, per_stage = preset_overrides("demo")
        stage = baseline_overrides(kind, {**shared, **per_stage["diffusion"]})
        run_bundle_workflow(
            [str(CONFIGS / "train_diffusion.json"), str(CONFIGS / f"{kind}.json")],
            meta,
            logging_file,
            run_id="training",
            workflow_type="train",
            **{
                **stage,
                **_data_overrides(),
                **overrides,
                "bundle_root": str(BUNDLE),
                "ckpt_dir": ckpt_dir,
                "output_dir": os.path.join(out, "eval", "diffusion"),
                "max_epochs": BUDGET["epochs"]["diffusion"],
                "val_interval": BUDGET["epochs"]["diffusion"],
            },
        )
    seconds = time.perf_counter() - start
    write_json(os.path.join(out, "train_time.json"), {"seconds": seconds})
    return seconds


def load_model(name: str, work_dir: str | os.PathLike, device: str = "cpu") -> Any:
    """The trained model ``name`` (built from the bundle config it was trained with, served weights loaded)."""
    import torch
    from monai.bundle import ConfigParser

    kind, overrides = MODELS[name]
    shared, per_stage = preset_overrides("demo")
    files = [str(CONFIGS / "train_diffusion.json")]
    values = {**shared, **per_stage["diffusion"]}
    if kind == "msgldm":
        values.update({k: v for k, v in overrides.items() if k.replace("::", "#").startswith("structure_def#")})
    else:
        files.append(str(CONFIGS / f"{kind}.json"))
        values = baseline_overrides(kind, values)
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"bundle_root": str(BUNDLE), **values})
    net = parser.get_parsed_content("network_def", instantiate=True)
    path = served_checkpoint(work_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: {name} has no trained checkpoint {path}; train it first.")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(device).eval()


def test_cases() -> list[dict]:
    """The preprocessed held-out test subjects of the benchmark split (64 px, with the tumour segmentation)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "evaluate.json"))
    shared, _ = preset_overrides("demo")
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "spatial_size": shared["spatial_size"],
            "check_content": False,
            "output_dir": tempfile.mkdtemp(prefix="msgldm_quality_split_"),
            **_data_overrides(),
        }
    )
    return list(parser.get_parsed_content("dataloader"))


def evaluate_model(
    name: str, work_dir: str | os.PathLike, cases: Sequence[dict], scenarios: Sequence[str], ddim_steps: int
) -> list[dict]:
    """Rows of ``evaluate_synthesis`` (one per case x scenario x target) for one model at ``ddim_steps``."""
    from monai_msgldm.evaluation import evaluate_synthesis
    from monai_msgldm.inferers import ModalitySynthesisInferer

    net = load_model(name, work_dir)
    inferer = ModalitySynthesisInferer(num_inference_steps=ddim_steps, slice_batch_size=64, seed=0, progress=False)
    rows = evaluate_synthesis(net, inferer, cases, scenarios=list(scenarios), device="cpu")
    for row in rows:
        row.update({"model": name, "ddim_steps": ddim_steps})
    return rows


def autoencoder_ceiling(work_dir: str | os.PathLike, cases: Sequence[dict]) -> list[dict]:
    """What the shared stage-0 autoencoder loses alone: every contrast of every test case encoded and decoded
    (posterior mean), scored like a 3 -> 1 synthesis of that contrast. No latent model can do better than this on
    average, whatever its condition."""
    import torch

    from monai_msgldm.constants import MODALITIES
    from monai_msgldm.evaluation import brain_mask_from_available, masked_slice_psnr_ssim

    net = load_model("msgldm", work_dir)
    rows = []
    for index, case in enumerate(cases):
        truth = torch.as_tensor(case["image"]).float()  # (1, M, H, W, D)
        slices = truth[0].permute(3, 0, 1, 2)  # (D, M, H, W)
        with torch.no_grad():
            recon = net.autoencoder.decode_stage_2_outputs(net.autoencoder.encode_mean(slices)).clamp(-1, 1)
        recon = recon.permute(1, 2, 3, 0)  # (M, H, W, D)
        for c, target in enumerate(MODALITIES):
            flags = torch.tensor([m != c for m in range(len(MODALITIES))])
            brain = brain_mask_from_available(truth[0], flags)
            psnr, ssim, _ = masked_slice_psnr_ssim(recon[c], truth[0, c], brain)
            rows.append(
                {"model": "autoencoder_ceiling", "group": "3->1", "target": target, "case": _subject_name(case, index)}
                | {"psnr": psnr, "ssim": ssim, "ssim3d_tumour": None, "ddim_steps": None}
            )
    return rows


def _mean(rows: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    import math

    values = [r[metric] for r in rows if r.get(metric) is not None and math.isfinite(r[metric])]
    return sum(values) / len(values) if values else None


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per model and scenario group: mean PSNR / SSIM / tumour SSIM per target and over all targets."""
    out: dict[str, Any] = {}
    for row in rows:
        out.setdefault(row["model"], {}).setdefault(row["group"], [])
    for model, groups in out.items():
        for group in list(groups):
            members = [r for r in rows if r["model"] == model and r["group"] == group]
            targets = sorted({r["target"] for r in members}, key=lambda t: ("t1", "t1ce", "t2", "flair").index(t))
            groups[group] = {
                "targets": {
                    t: {
                        m: _mean([r for r in members if r["target"] == t], m) for m in ("psnr", "ssim", "ssim3d_tumour")
                    }
                    for t in targets
                },
                "mean": {m: _mean(members, m) for m in ("psnr", "ssim", "ssim3d_tumour")},
            }
    return out


MODALITY_ORDER = ("t1", "t1ce", "t2", "flair")


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def markdown_report(result: Mapping[str, Any]) -> str:
    """The markdown tables of a :func:`main` result."""
    summary, checks = result["summary"], result["checks"]
    lines = [
        "# Quality benchmark",
        "",
        f"Machine: {result['machine']['device']}, {result['machine']['torch_threads']} torch threads. "
        f"Phantom: {BUDGET['phantom_subjects']} subjects at {BUDGET['phantom_resolution']} mm, "
        f"{len(result['test_cases'])} held-out test subjects ({', '.join(result['test_cases'])}), 64 px slices. "
        f"Budget per model: {result['iterations']}. Synthesis: {result['ddim_steps']} DDIM steps. Slice PSNR (dB) / "
        "SSIM (%) in the brain mask, mean over cases and scenarios; tumour: 3D SSIM (%) inside the whole tumour.",
        "",
    ]
    for group in ("3->1", "1->3"):
        lines += [f"## {group}", "", "| model | " + " | ".join(f"{t} PSNR / SSIM" for t in MODALITY_ORDER)]
        lines[-1] += " | mean PSNR | mean SSIM | tumour SSIM | train min |"
        lines.append("|---" * 9 + "|")
        for model, groups in summary.items():
            g = groups.get(group)
            if g is None:
                continue
            cells = [
                f"{_fmt(g['targets'][t]['psnr'])} / {_fmt(g['targets'][t]['ssim'], 100, 1)}"
                if t in g["targets"]
                else "-"
                for t in MODALITY_ORDER
            ]
            minutes = result["train_seconds"].get(model)
            lines.append(
                f"| {model} | "
                + " | ".join(cells)
                + f" | {_fmt(g['mean']['psnr'])} | {_fmt(g['mean']['ssim'], 100, 1)} | "
                f"{_fmt(g['mean']['ssim3d_tumour'], 100, 1)} | {_fmt(minutes / 60 if minutes else None, 1, 1)} |"
            )
        lines.append("")
    if result["steps_curve"]:
        steps = sorted({int(k) for c in result["steps_curve"].values() for k in c})
        lines += ["## DDIM steps versus quality (3->1, mean PSNR / SSIM)", ""]
        lines += ["| model | " + " | ".join(f"{k} steps" for k in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        for model, curve in result["steps_curve"].items():
            cells = [
                f"{_fmt(curve[str(k)]['psnr'])} / {_fmt(curve[str(k)]['ssim'], 100, 1)}" if str(k) in curve else "-"
                for k in steps
            ]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Targets", ""]
    for check in checks:
        lines.append(f"- {'met' if check['met'] else 'NOT met'}: {check['target']} ({check['figures']})")
    return "\n".join(lines) + "\n"


def target_checks(summary: Mapping[str, Any], curve: Mapping[str, Any]) -> list[dict]:
    """The issue's quality targets, each with the figures it was judged on."""
    checks = []
    ours = summary.get("msgldm", {}).get("3->1")
    if ours is not None:
        for baseline in ("plain_ldm", "regression"):
            other = summary.get(baseline, {}).get("3->1")
            if other is None:
                continue
            met = ours["mean"]["psnr"] > other["mean"]["psnr"] and ours["mean"]["ssim"] > other["mean"]["ssim"]
            checks.append(
                {
                    "target": f"MSG-LDM ahead of {baseline} in mean PSNR and SSIM over the 3->1 scenarios",
                    "met": bool(met),
                    "figures": f"MSG-LDM {ours['mean']['psnr']:.2f} dB / {100 * ours['mean']['ssim']:.1f} %, "
                    f"{baseline} {other['mean']['psnr']:.2f} dB / {100 * other['mean']['ssim']:.1f} %",
                }
            )
    mine = curve.get("msgldm", {})
    if "20" in mine and "100" in mine:
        delta = mine["20"]["psnr"] - mine["100"]["psnr"]
        checks.append(
            {
                "target": "MSG-LDM at 20 DDIM steps within 0.3 dB PSNR of itself at 100 steps",
                "met": bool(delta >= -0.3),
                "figures": f"{mine['20']['psnr']:.2f} dB at 20 steps, {mine['100']['psnr']:.2f} dB at 100 "
                f"(difference {delta:+.2f} dB)",
            }
        )
    return checks


def plot_quality_bars(summary: Mapping[str, Any], path: str) -> str:
    """Bars of the mean 3->1 and 1->3 PSNR and SSIM of every model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, scale, label in ((axes[0], "psnr", 1, "PSNR (dB)"), (axes[1], "ssim", 100, "SSIM (%)")):
        x = np.arange(len(models))
        for i, group in enumerate(("3->1", "1->3")):
            values = [(summary[m].get(group, {}).get("mean", {}).get(metric) or float("nan")) * scale for m in models]
            ax.bar(x + (i - 0.5) * 0.4, values, width=0.4, label=group)
        ax.set_xticks(x, models, rotation=30, ha="right")
        ax.set_ylabel(label)
        finite = [
            v for m in models for g in ("3->1", "1->3") if (v := summary[m].get(g, {}).get("mean", {}).get(metric))
        ]
        if finite:
            ax.set_ylim(min(finite) * scale * 0.9, max(finite) * scale * 1.03)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Held-out phantom subjects: mean over scenarios and targets, in the brain mask")
    fig.tight_layout()
    return _save(fig, path)


def plot_steps_curve(curve: Mapping[str, Any], path: str) -> str:
    """PSNR and SSIM (3->1 mean) against the number of DDIM steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model, points in curve.items():
        steps = sorted(int(k) for k in points)
        axes[0].plot(steps, [points[str(k)]["psnr"] for k in steps], "o-", label=model)
        axes[1].plot(steps, [100 * points[str(k)]["ssim"] for k in steps], "o-", label=model)
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM (%)")):
        ax.set_xscale("log")
        ax.set_xticks([10, 20, 50, 100], ["10", "20", "50", "100"])
        ax.set_xlabel("DDIM steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("3->1 synthesis quality against DDIM steps")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: str) -> str:
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_comparison(models: Sequence[str], work_dir: str, case: Mapping[str, Any], ddim_steps: int, path: str) -> str:
    """FLAIR synthesized from T1, T1CE and T2 by every model on one test subject: synthesis and |error| rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from monai_msgldm.evaluation import brain_mask_from_available
    from monai_msgldm.inferers import ModalitySynthesisInferer
    from monai_msgldm.visualize import representative_slices

    image = torch.as_tensor(case["image"]).float()
    flags = torch.tensor([True, True, True, False])
    inputs = image.clone()
    inputs[:, 3] = -1
    z = representative_slices(brain_mask_from_available(image[0], flags), num=1)[0]
    inferer = ModalitySynthesisInferer(num_inference_steps=ddim_steps, slice_batch_size=64, seed=0, progress=False)
    truth = image[0, 3, :, :, z]
    columns = [("T2 (input)", image[0, 2, :, :, z], None), ("FLAIR truth", truth, None)]
    for name in models:
        pred = torch.as_tensor(inferer(inputs, load_model(name, work_dir), available=["t1", "t1ce", "t2"]))
        synth = pred[0, 3, :, :, z].clamp(-1, 1)
        columns.append((name, synth, (synth - truth).abs()))
    fig, axes = plt.subplots(2, len(columns), figsize=(2.2 * len(columns), 4.6))
    for i, (title, img, err) in enumerate(columns):
        axes[0, i].imshow(img.T.flip(0), cmap="gray", vmin=-1, vmax=1)
        axes[0, i].set_title(title, fontsize=8)
        if err is not None:
            axes[1, i].imshow(err.T.flip(0), cmap="magma", vmin=0, vmax=1)
            axes[1, i].set_title("|error|", fontsize=8)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(f"{_subject_name(case, 0)}: FLAIR from T1 + T1CE + T2, slice {z}, {ddim_steps} DDIM steps")
    fig.tight_layout()
    return _save(fig, path)


def _subject_name(case: Mapping[str, Any], index: int) -> str:
    """The subject folder name of a collated test case (batch of one)."""
    subject = case.get("subject", f"case_{index}")
    subject = subject[0] if isinstance(subject, (list, tuple)) else subject
    return os.path.basename(str(subject).rstrip("/"))


def render(result: Mapping[str, Any], output_dir: str) -> str:
    """Write ``quality.json``, ``quality.md``, ``quality_bars.png`` and ``steps_vs_quality.png``; returns the report."""
    write_json(os.path.join(output_dir, "quality.json"), result)
    report = markdown_report(result)
    write_text(os.path.join(output_dir, "quality.md"), report)
    plot_quality_bars(result["summary"], os.path.join(output_dir, "quality_bars.png"))
    if result["steps_curve"]:
        plot_steps_curve(result["steps_curve"], os.path.join(output_dir, "steps_vs_quality.png"))
    return report


def _iterations_text(work_dir: str) -> str:
    """The training budget in iterations, from the split the bundle wrote."""
    datalist = os.path.join(model_dir(work_dir, "msgldm"), "eval", "diffusion", "datalist.json")
    n_train = None
    if os.path.isfile(datalist):
        with open(datalist) as f:
            n_train = len(json.load(f)["training"])
    shared, per_stage = preset_overrides("demo")
    batch = int(shared["batch_size"])
    parts = []
    for stage, label in (("autoencoder", "stage 0"), ("structure", "stage 1"), ("diffusion", "stage 2 and baselines")):
        epochs = BUDGET["epochs"][stage]
        slices = batch * int(per_stage[stage].get("num_samples", shared["num_samples"]))
        its = f"{epochs * -(-n_train // batch)} iterations" if n_train else f"{epochs} epochs"
        parts.append(f"{label} {its} of {slices} slices")
    return f"{n_train} training subjects; " + ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="outputs/benchmarks/quality/models", help="trained models (kept)")
    parser.add_argument("--output-dir", default="outputs/benchmarks/quality", help="JSON, markdown and plots")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--train-only", action="store_true", help="train the models, do not evaluate")
    parser.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps of the main comparison")
    parser.add_argument(
        "--curve-steps", type=int, nargs="*", default=[10, 20, 50, 100], help="steps of the steps-versus-quality curve"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from common import device_description

    train_seconds = {}
    for name in args.models:
        train_model(name, args.work_dir)
        record = os.path.join(model_dir(args.work_dir, name), "train_time.json")
        if os.path.isfile(record):
            with open(record) as f:
                train_seconds[name] = json.load(f)["seconds"]
    if args.train_only:
        return 0
    cases = test_cases()
    logger.info(f"{len(cases)} test subjects")
    rows: list[dict] = []
    for name in args.models:
        start = time.perf_counter()
        rows += evaluate_model(name, args.work_dir, cases, ["3->1", "1->3"], args.ddim_steps)
        logger.info(f"{name}: evaluated in {time.perf_counter() - start:.0f} s")
    rows += autoencoder_ceiling(args.work_dir, cases)
    summary = summarize(rows)
    curve: dict[str, dict[str, dict]] = {}
    for name in [m for m in ("msgldm", "plain_ldm") if m in args.models]:
        for steps in args.curve_steps:
            if steps == args.ddim_steps:
                chosen = [r for r in rows if r["model"] == name and r["group"] == "3->1" and r["ddim_steps"] == steps]
            else:
                chosen = evaluate_model(name, args.work_dir, cases, ["3->1"], steps)
                rows += chosen
            curve.setdefault(name, {})[str(steps)] = {m: _mean(chosen, m) for m in ("psnr", "ssim", "ssim3d_tumour")}
            logger.info(f"{name} at {steps} steps: {curve[name][str(steps)]}")
    result = {
        "machine": device_description(),
        "budget": BUDGET,
        "iterations": _iterations_text(args.work_dir),
        "ddim_steps": args.ddim_steps,
        "test_cases": [_subject_name(c, i) for i, c in enumerate(cases)],
        "train_seconds": train_seconds,
        "summary": summary,
        "steps_curve": curve,
        "checks": target_checks(summary, curve),
        "rows": rows,
    }
    out = args.output_dir
    report = render(result, out)
    plot_comparison(
        [m for m in ("msgldm", "plain_ldm", "regression") if m in args.models] or args.models[:1],
        args.work_dir,
        cases[0],
        args.ddim_steps,
        os.path.join(out, "comparison_flair.png"),
    )
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
