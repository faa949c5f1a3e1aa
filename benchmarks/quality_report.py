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
"""Report of the quality benchmark: the markdown tables, the PNG plots and the files written. See ``quality.py``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from common import preset_parser, write_json
from quality_models import load_model, model_dir
from quality_scoring import BRATS_GROUPS, subject_name, synthesis_inferer

from monai_msgldm.constants import MODALITIES
from monai_msgldm.utils.files import atomic_write_text
from monai_msgldm.visualize import save_figure

__all__ = [
    "iterations_text",
    "markdown_report",
    "plot_quality_bars",
    "plot_steps_curve",
    "plot_comparison",
    "render",
]

_DPI = 110


def iterations_text(work_dir: str, budget: Mapping[str, Any]) -> str:
    """The training ``budget`` in iterations, from the split the bundle wrote."""
    datalist = os.path.join(model_dir(work_dir, "msgldm"), "eval", "diffusion", "datalist.json")
    n_train = None
    if os.path.isfile(datalist):
        with open(datalist) as f:
            n_train = len(json.load(f)["training"])
    demo = preset_parser("demo")
    batch = int(demo.get_parsed_content("batch_size"))
    parts = []
    for stage, label in (("autoencoder", "stage 0"), ("structure", "stage 1"), ("diffusion", "stage 2 and baselines")):
        epochs = budget["epochs"][stage]
        slices = batch * int(demo.get_parsed_content(f"stage_num_samples#{stage}"))
        its = f"{epochs * -(-n_train // batch)} iterations" if n_train else f"{epochs} epochs"
        parts.append(f"{label} {its} of {slices} slices")
    return f"{n_train} training subjects; " + ", ".join(parts)


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def seed_spread_lines(spread: Mapping[str, Any]) -> list[str]:
    """Markdown lines of ``quality_scoring.seed_spread``'s result (none when it is empty)."""
    if not spread:
        return []
    lines = [
        "## Stage-2 retraining noise (the same model retrained with other seeds; mean +- sample std over seeds)",
        "",
        "| model | seeds | group | PSNR | SSIM % | tumour SSIM % |",
        "|---|---|---|---|---|---|",
    ]
    for model, entry in spread.items():
        seeds = ", ".join(str(k) for k in entry["seeds"])
        for group, values in entry["groups"].items():
            cells = [
                f"{_fmt(v['mean'], scale)} +- {_fmt(v['std'], scale)}" if (v := values.get(m)) else "-"
                for m, scale in (("psnr", 1.0), ("ssim", 100.0), ("ssim3d_tumour", 100.0))
            ]
            lines.append(f"| {model} | {seeds} | {group} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown_report(result: Mapping[str, Any]) -> str:
    """The markdown tables of a ``quality.main`` result (or of ``quality_wmh.main``'s: its optional keys ``title``,
    ``modalities``, ``groups``, ``target_labels`` (column names of the targets), ``lesion`` and ``lesion_region``
    replace the BraTS defaults)."""
    summary, checks, budget = result["summary"], result["checks"], result["budget"]
    modalities = result.get("modalities", MODALITIES)
    labels = result.get("target_labels", {})
    lesion = result.get("lesion", "tumour")
    lines = [
        f"# {result.get('title', 'Quality benchmark')}",
        "",
        f"Machine: {result['machine']['device']}, {result['machine']['torch_threads']} torch threads. "
        f"Phantom: {budget['phantom_subjects']} subjects at {budget['phantom_resolution']} mm, "
        f"{len(result['test_cases'])} held-out test subjects ({', '.join(result['test_cases'])}), 64 px slices. "
        f"Budget per model: {result['iterations']}. Synthesis: {result['ddim_steps']} DDIM steps. Slice PSNR (dB) / "
        f"SSIM (%) in the brain mask, mean over cases and scenarios; {lesion}: 3D SSIM (%) inside the "
        f"{result.get('lesion_region', 'whole tumour')}.",
        "",
    ]
    for group in result.get("groups", BRATS_GROUPS):
        lines += [f"## {group}", "", "| model | " + " | ".join(f"{labels.get(t, t)} PSNR / SSIM" for t in modalities)]
        lines[-1] += f" | mean PSNR | mean SSIM | {lesion} SSIM | sharpness | train min |"
        lines.append("|---" * (len(modalities) + 6) + "|")
        for model, groups in summary.items():
            g = groups.get(group)
            if g is None:
                continue
            cells = [
                f"{_fmt(g['targets'][t]['psnr'])} / {_fmt(g['targets'][t]['ssim'], 100, 1)}"
                if t in g["targets"]
                else "-"
                for t in modalities
            ]
            minutes = result["train_seconds"].get(model)
            lines.append(
                f"| {model} | "
                + " | ".join(cells)
                + f" | {_fmt(g['mean']['psnr'])} | {_fmt(g['mean']['ssim'], 100, 1)} | "
                f"{_fmt(g['mean']['ssim3d_tumour'], 100, 1)} | {_fmt(g['mean'].get('sharpness'))} | "
                f"{_fmt(minutes / 60 if minutes else None, 1, 1)} |"
            )
        lines.append("")
    if result["steps_curve"]:
        steps = sorted({int(k) for c in result["steps_curve"].values() for k in c})
        lines += [
            "## Sampling steps versus quality (3->1, mean PSNR / SSIM / sharpness; DDIM, rectified flow for *_rflow)",
            "",
        ]
        lines += ["| model | " + " | ".join(f"{k} steps" for k in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        for model, curve in result["steps_curve"].items():
            cells = [
                f"{_fmt(curve[str(k)]['psnr'])} / {_fmt(curve[str(k)]['ssim'], 100, 1)} / "
                f"{_fmt(curve[str(k)].get('sharpness'))}"
                if str(k) in curve
                else "-"
                for k in steps
            ]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    extra_rows = [
        (model, group, g["mean"])
        for model, groups in summary.items()
        for group, g in groups.items()
        if "dice_wt" in g["mean"] or "uncertainty_spearman" in g["mean"]
    ]
    if extra_rows:
        lines += [
            "## Downstream Dice (BraSyn) and uncertainty",
            "",
            "Dice (%) of the frozen segmenter on the cases completed with the synthesis (all real contrasts in "
            "brackets); Spearman(std, |error|) and the mean |error| in the 10 % most uncertain voxels against the rest "
            "for the variants with several samples.",
            "",
            "| model | group | WT | TC | ET | Spearman | error top 10 % / rest |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, group, mean in extra_rows:
            dice = [
                f"{_fmt(mean.get(f'dice_{r}'), 100, 1)} ({_fmt(mean.get(f'dice_real_{r}'), 100, 1)})"
                for r in ("wt", "tc", "et")
            ]
            errors = (
                f"{_fmt(mean.get('error_top10'), 1, 3)} / {_fmt(mean.get('error_rest'), 1, 3)}"
                if "error_top10" in mean
                else "-"
            )
            lines.append(
                f"| {model} | {group} | "
                + " | ".join(dice)
                + f" | {_fmt(mean.get('uncertainty_spearman'))} | {errors} |"
            )
        lines.append("")
    learning = result.get("learning_curves") or {}
    budgets = sorted({k for c in learning.values() for k in c}, key=float)
    if len(budgets) > 1:
        lines += [
            "## Learning curves (plain sampling; stage-2 / baseline epochs times the budget multiplier)",
            "",
            "| model | " + " | ".join(f"{k}x: 3->1 / 1->3 PSNR, train min" for k in budgets) + " |",
            "|---" * (len(budgets) + 1) + "|",
        ]
        for model, curve in learning.items():
            cells = []
            for k in budgets:
                point = curve.get(k)
                if point is None:
                    cells.append("-")
                    continue
                minutes = point["3->1"].get("train_seconds")
                cells.append(
                    f"{_fmt(point['3->1']['psnr'])} / {_fmt(point['1->3']['psnr'])}, "
                    f"{_fmt(minutes / 60 if minutes else None, 1, 1)}"
                )
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += seed_spread_lines(result.get("seed_spread") or {})
    lines += ["## Targets", ""]
    for check in checks:
        lines.append(f"- {'met' if check['met'] else 'NOT met'}: {check['target']} ({check['figures']})")
    return "\n".join(lines) + "\n"


def plot_quality_bars(summary: Mapping[str, Any], path: str, groups: Sequence[str] = BRATS_GROUPS) -> str:
    """Bars of the mean PSNR and SSIM of every model in each scenario group of ``groups`` (3->1 and 1->3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, scale, label in ((axes[0], "psnr", 1, "PSNR (dB)"), (axes[1], "ssim", 100, "SSIM (%)")):
        x = np.arange(len(models))
        width = 0.8 / len(groups)
        for i, group in enumerate(groups):
            values = [(summary[m].get(group, {}).get("mean", {}).get(metric) or float("nan")) * scale for m in models]
            ax.bar(x + (i - (len(groups) - 1) / 2) * width, values, width=width, label=group)
        ax.set_xticks(x, models, rotation=30, ha="right")
        ax.set_ylabel(label)
        finite = [v for m in models for g in groups if (v := summary[m].get(g, {}).get("mean", {}).get(metric))]
        if finite:
            ax.set_ylim(min(finite) * scale * 0.9, max(finite) * scale * 1.03)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Held-out phantom subjects: mean over scenarios and targets, in the brain mask")
    fig.tight_layout()
    return save_figure(fig, path, dpi=_DPI)


def plot_steps_curve(curve: Mapping[str, Any], path: str) -> str:
    """PSNR and SSIM (3->1 mean) against the number of sampling steps (DDIM; rectified flow for ``*_rflow``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ticks = sorted({int(k) for points in curve.values() for k in points})
    for model, points in curve.items():
        steps = sorted(int(k) for k in points)
        axes[0].plot(steps, [points[str(k)]["psnr"] for k in steps], "o-", label=model)
        axes[1].plot(steps, [100 * points[str(k)]["ssim"] for k in steps], "o-", label=model)
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM (%)")):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("3->1 synthesis quality against sampling steps (DDIM; rectified flow: *_rflow)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=_DPI)


def plot_learning_curves(learning: Mapping[str, Any], path: str) -> str:
    """Mean PSNR of 3->1 and 1->3 against the training budget multiplier, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, group in zip(axes, ("3->1", "1->3")):
        for model, curve in learning.items():
            budgets = sorted(curve, key=float)
            values = [curve[k][group]["psnr"] for k in budgets]
            ax.plot([float(k) for k in budgets], [float("nan") if v is None else v for v in values], "o-", label=model)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("stage-2 budget (x today's iterations)")
        ax.set_ylabel("mean PSNR (dB)")
        ax.set_title(group)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Quality against training budget")
    fig.tight_layout()
    return save_figure(fig, path, dpi=_DPI)


def plot_comparison(
    models: Sequence[str],
    work_dir: str,
    case: Mapping[str, Any],
    ddim_steps: int,
    path: str,
    target: str = "flair",
    shown: str = "t2",
) -> str:
    """``target`` synthesized from the other contrasts by every model on one test subject: synthesis and |error| rows
    (the first columns: the input ``shown`` and the true ``target``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from monai_msgldm.evaluation import brain_mask_from_available
    from monai_msgldm.visualize import representative_slices

    t = MODALITIES.index(target)
    available = [m for m in MODALITIES if m != target]
    image = torch.as_tensor(case["image"]).float()
    flags = torch.tensor([m != target for m in MODALITIES])
    inputs = image.clone()
    inputs[:, t] = -1
    z = representative_slices(brain_mask_from_available(image[0], flags), num=1)[0]
    truth = image[0, t, :, :, z]
    columns = [
        (f"{shown.upper()} (input)", image[0, MODALITIES.index(shown), :, :, z], None),
        (f"{target.upper()} truth", truth, None),
    ]
    for name in models:
        inferer = synthesis_inferer(name, ddim_steps)
        pred = torch.as_tensor(inferer(inputs, load_model(name, work_dir), available=available))
        synth = pred[0, t, :, :, z].clamp(-1, 1)
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
    inputs_text = " + ".join(m.upper() for m in available)
    fig.suptitle(f"{subject_name(case, 0)}: {target.upper()} from {inputs_text}, slice {z}, {ddim_steps} DDIM steps")
    fig.tight_layout()
    return save_figure(fig, path, dpi=_DPI)


def render(result: Mapping[str, Any], output_dir: str, name: str = "quality") -> str:
    """Write ``<name>.json``, ``<name>.md``, ``<name>_bars.png`` and (with a steps curve) ``steps_vs_quality.png``;
    returns the report."""
    write_json(os.path.join(output_dir, f"{name}.json"), result)
    report = markdown_report(result)
    atomic_write_text(os.path.join(output_dir, f"{name}.md"), report)
    plot_quality_bars(
        result["summary"], os.path.join(output_dir, f"{name}_bars.png"), result.get("groups", BRATS_GROUPS)
    )
    if result["steps_curve"]:
        plot_steps_curve(result["steps_curve"], os.path.join(output_dir, "steps_vs_quality.png"))
    learning = result.get("learning_curves") or {}
    if len({k for c in learning.values() for k in c}) > 1:
        plot_learning_curves(learning, os.path.join(output_dir, "learning_curves.png"))
    return report
