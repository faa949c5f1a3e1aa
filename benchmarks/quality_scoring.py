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
"""Scoring of the quality benchmark: the held-out test subjects, the metrics of every model, their summaries and the
issue's quality targets. See ``quality.py``.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from common import BUNDLE, preset_values
from quality_models import BUDGET, contrast_set, data_overrides, evaluation_parser, load_model, model_sampler

from monai_msgldm.constants import MODALITIES

__all__ = [
    "METRICS",
    "BRATS_GROUPS",
    "SAMPLING",
    "CROP_MARGIN",
    "CROP_SLICE_BATCH",
    "INT8_SAMPLING",
    "BF16_SAMPLING",
    "INT8_CALIBRATION_SLICES",
    "INT8_SAVED_CASES",
    "variant_name",
    "seed_spread",
    "test_cases",
    "synthesis_inferer",
    "evaluate_model",
    "autoencoder_ceiling",
    "steps_curve",
    "rflow_checks",
    "RFLOW_PAIRS",
    "mean_metric",
    "summarize",
    "target_checks",
    "subject_name",
]

logger = logging.getLogger("quality")

#: the metrics of a row of ``evaluate_synthesis``: slice PSNR and SSIM in the brain mask, 3D SSIM in the tumour
METRICS = ("psnr", "ssim", "ssim3d_tumour", "sharpness")

#: the scenario groups of the BraTS benchmark (four contrasts): three given, one missing; one given, three missing
BRATS_GROUPS = ("3->1", "1->3")

#: the further columns a summary averages when the rows have them: downstream Dice (completed and all-real cases)
#: and the uncertainty scores of the sampling variants with several samples
EXTRA_METRICS = (
    "dice_tc",
    "dice_wt",
    "dice_et",
    "dice_real_tc",
    "dice_real_wt",
    "dice_real_et",
    "uncertainty_spearman",
    "error_top10",
    "error_rest",
)

#: sampling variants of the latent models: name -> (known-contrast guidance, number of samples averaged, crop to
#: the foreground). ``crop`` is plain sampling inside each slice batch's foreground box (``inference.json``'s
#: ``crop_foreground``), in batches of :data:`CROP_SLICE_BATCH` slices with a margin of :data:`CROP_MARGIN`
SAMPLING: dict[str, tuple[bool, int, bool]] = {
    "plain": (False, 1, False),
    "guided": (True, 1, False),
    "mean4": (False, 4, False),
    "guided_mean4": (True, 4, False),
    "crop": (False, 1, True),
    "int8": (False, 1, False),
    "int8_saved": (False, 1, False),
    "bf16": (False, 1, False),
}

#: the sampling variants that run the network's image-resolution parts with 8-bit convolutions in ONNX Runtime
#: (``onnx_int8.json``: :func:`monai_msgldm.inferers.with_onnx_runtime_int8`), calibrated as the bundle calibrates a
#: run, on :data:`INT8_CALIBRATION_SLICES` slices of the first case scored (all contrasts given), then plain sampling
INT8_SAMPLING = ("int8", "int8_saved")
INT8_CALIBRATION_SLICES = 4
#: ``int8_saved``: the graphs saved beforehand as ``export_int8.json`` saves them (``save_int8_graphs``), calibrated
#: on :data:`INT8_CALIBRATION_SLICES` slices of each of the first :data:`INT8_SAVED_CASES` training subjects (every
#: contrast given), none of them scored: a user calibrates once, on other cases than those synthesized
INT8_SAVED_CASES = 4
#: the sampling variants that run in bfloat16 autocast on the CPU (``inference.json``'s ``cpu_amp``, on by default
#: on a CPU with AMX), in ``channels_last`` as the bundle runs them, then plain sampling
BF16_SAMPLING = ("bf16",)

#: the foreground crop of the ``crop`` variant, as close to ``inference.json``'s at the default size as 64 px allows:
#: its margin, 8 px of 192, scaled (3 px), and one slice per batch, since the network's size divisor (16) is a
#: quarter of the slice and 16-slice batches would keep 95 % of the test subjects' pixels; one slice keeps 74 %
#: (``inference.json`` on a 192 px volume: 69 %). Without a margin (4-slice batches, 65 % kept) the synthesis loses
#: 0.7-1.1 dB on 3 -> 1 (docs/benchmarks.md)
CROP_SLICE_BATCH = 1
CROP_MARGIN = 3


def variant_name(name: str, sampling: str) -> str:
    """The row label of model ``name`` sampled with ``sampling``: ``msgldm``, ``msgldm+guided_mean4``..."""
    return name if sampling == "plain" else f"{name}+{sampling}"


def test_cases(budget: Mapping[str, Any], overlays: Sequence[str] = (), split: str = "test") -> list[dict]:
    """The preprocessed held-out test subjects of the benchmark split (64 px, with the lesion segmentation);
    ``overlays``: bundle config files of the contrast set and phantom (e.g. ``wmh.json``), as the models trained;
    ``split``: ``"test"``, ``"validation"`` to choose a recipe without looking at the test subjects, or
    ``"training"`` (preprocessed as for scoring, for probes fitted on the training subjects)."""
    if split not in ("test", "validation", "training"):
        raise ValueError(f"test_cases expects split 'test', 'validation' or 'training', got {split!r}.")
    parser = evaluation_parser(overlays)
    parser.update(
        {
            "data_list_key": split,
            "bundle_root": str(BUNDLE),
            "spatial_size": preset_values("demo")["spatial_size"],
            "pixdim": [float(budget["phantom_resolution"])] * 3,  # the models' working grid: the phantom's own
            "check_content": False,
            "output_dir": tempfile.mkdtemp(prefix="msgldm_quality_split_"),
            **data_overrides(budget),
        }
    )
    return list(parser.get_parsed_content("dataloader"))


def synthesis_inferer(
    name: str, ddim_steps: int, sampling: str = "plain", modalities: Sequence[str] = MODALITIES
) -> Any:
    """The inferer model ``name`` is scored with: its sampler (:func:`quality_models.model_sampler`: DDIM with
    ``ddim_steps`` steps on the model's schedule, or the regression's single pass) with the ``sampling`` variant of
    :data:`SAMPLING`, 64 slices per batch (16 when averaging several samples, 1 when cropping), seed 0; ``modalities``: the model's
    contrasts in channel order."""
    from monai_msgldm.inferers import ModalitySynthesisInferer

    guidance, num_samples, crop = SAMPLING[sampling]
    sampler = model_sampler(name, ddim_steps, known_contrast_guidance=guidance)
    sampler.cpu_amp = sampling in BF16_SAMPLING
    return ModalitySynthesisInferer(
        sampler,
        slice_batch_size=CROP_SLICE_BATCH if crop else 64 // num_samples,
        seed=0,
        progress=False,
        num_samples=num_samples,
        return_std=num_samples > 1,
        modalities=modalities,
        crop_foreground=crop,
        crop_margin=CROP_MARGIN,
        channels_last=sampling in BF16_SAMPLING,
    )


def evaluate_model(
    name: str,
    work_dir: str | os.PathLike,
    cases: Sequence[dict],
    scenarios: Sequence[str],
    ddim_steps: int,
    sampling: str = "plain",
    segmenter: Any = None,
    overlays: Sequence[str] = (),
    calibration_cases: Sequence[dict] | None = None,
) -> list[dict]:
    """Rows of ``evaluate_synthesis`` (one per case x scenario x target) for one model at ``ddim_steps`` with the
    ``sampling`` variant; the rows' ``model`` is :func:`variant_name`. With ``segmenter``, the downstream Dice
    columns; with several samples, the uncertainty columns. ``overlays``: the config files the model trained with
    (its contrasts and lesion class follow, :func:`quality_models.contrast_set`). ``calibration_cases``: collated
    cases ``int8_saved`` calibrates on (default: the benchmark's training subjects)."""
    from monai_msgldm.evaluation import evaluate_synthesis

    modalities, lesion_channel = contrast_set(overlays)
    net = load_model(name, work_dir, overlays=overlays)
    with tempfile.TemporaryDirectory(prefix="msgldm_int8_") as graph_dir:
        if sampling in INT8_SAMPLING and hasattr(net, "autoencoder"):
            from monai_msgldm.inferers import save_int8_graphs, with_onnx_runtime_int8

            if sampling == "int8_saved":  # saved once on training subjects, then loaded as onnx_int8.json loads them
                if calibration_cases is None:
                    calibration_cases = test_cases(BUDGET, overlays, split="training")[:INT8_SAVED_CASES]
                calibration = [
                    {"image": c["image"][0], "available": [True] * c["image"].shape[1], "case": subject_name(c, i)}
                    for i, c in enumerate(calibration_cases)
                ]
                save_int8_graphs(net, calibration, graph_dir, INT8_SAVED_CASES, INT8_CALIBRATION_SLICES)
                with_onnx_runtime_int8(net, graph_dir=graph_dir)
            else:
                image = cases[0]["image"][0]  # (M, X, Y, Z) of the first case, as onnx_int8.json takes dataset[0]
                with_onnx_runtime_int8(net, image, [True] * image.shape[0], num_slices=INT8_CALIBRATION_SLICES)
        inferer = synthesis_inferer(name, ddim_steps, sampling, modalities)
        rows = evaluate_synthesis(
            net,
            inferer,
            cases,
            scenarios=list(scenarios),
            modalities=modalities,
            tumour_channel=lesion_channel,
            device="cpu",
            segmenter=segmenter,
        )
    for row in rows:
        row.update({"model": variant_name(name, sampling), "sampling": sampling, "ddim_steps": ddim_steps})
    return rows


def autoencoder_ceiling(
    work_dir: str | os.PathLike, cases: Sequence[dict], overlays: Sequence[str] = (), source: str = "msgldm"
) -> list[dict]:
    """What the shared stage-0 autoencoder loses alone: every contrast of every test case encoded and decoded
    (posterior mean), scored like a synthesis of that contrast from all the others (3 -> 1 for BraTS, 1 -> 1 for
    the two WMH contrasts of ``overlays``). No latent model can do better than this on average, whatever its
    condition. ``source``: the model whose autoencoder is scored (``quality_models.autoencoder_source``); rows of
    another than ``msgldm``'s are labelled ``autoencoder_ceiling[<source>]``."""
    import torch

    from monai_msgldm.evaluation import (
        brain_mask_from_available,
        masked_slice_psnr_ssim,
        scenario_group,
        sharpness_ratio,
    )

    modalities, _ = contrast_set(overlays)
    group = scenario_group(modalities[1:], len(modalities))
    net = load_model(source, work_dir, overlays=overlays)
    label = "autoencoder_ceiling" if source == "msgldm" else f"autoencoder_ceiling[{source}]"
    rows = []
    for index, case in enumerate(cases):
        truth = torch.as_tensor(case["image"]).float()  # (1, M, H, W, D)
        slices = truth[0].permute(3, 0, 1, 2)  # (D, M, H, W)
        with torch.no_grad():
            recon = net.autoencoder.decode_stage_2_outputs(net.autoencoder.encode_mean(slices)).clamp(-1, 1)
        recon = recon.permute(1, 2, 3, 0)  # (M, H, W, D)
        for c, target in enumerate(modalities):
            flags = torch.tensor([m != c for m in range(len(modalities))])
            brain = brain_mask_from_available(truth[0], flags)
            psnr, ssim, _ = masked_slice_psnr_ssim(recon[c], truth[0, c], brain)
            rows.append(
                {"model": label, "group": group, "target": target, "case": subject_name(case, index)}
                | {"psnr": psnr, "ssim": ssim, "ssim3d_tumour": None, "ddim_steps": None}
                | {"sharpness": sharpness_ratio(recon[c], truth[0, c], brain)}
            )
    return rows


def steps_curve(
    models: Sequence[str],
    work_dir: str | os.PathLike,
    cases: Sequence[dict],
    rows: Sequence[Mapping[str, Any]],
    curve_steps: Sequence[int],
    ddim_steps: int,
) -> tuple[dict[str, dict[str, dict]], list[dict]]:
    """Mean 3 -> 1 metrics of each of ``models`` at each of ``curve_steps`` DDIM steps.

    ``rows`` already hold the scores at ``ddim_steps``; the other step counts are evaluated here.

    Returns:
        ``(curve, new_rows)``: model -> ``str(steps)`` -> metric -> mean; the rows of the new evaluations.
    """
    curve: dict[str, dict[str, dict]] = {}
    new_rows: list[dict] = []
    for name in models:
        for steps in curve_steps:
            if steps == ddim_steps:
                chosen = [r for r in rows if r["model"] == name and r["group"] == "3->1" and r["ddim_steps"] == steps]
            else:
                chosen = evaluate_model(name, work_dir, cases, ["3->1"], steps)
                new_rows += chosen
            curve.setdefault(name, {})[str(steps)] = {m: mean_metric(chosen, m) for m in METRICS}
            logger.info(f"{name} at {steps} steps: {curve[name][str(steps)]}")
    return curve, new_rows


def mean_metric(rows: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    """Mean of the finite values of ``metric`` over ``rows`` (None when there is none)."""
    values = [r[metric] for r in rows if r.get(metric) is not None and math.isfinite(r[metric])]
    return sum(values) / len(values) if values else None


def summarize(rows: Sequence[Mapping[str, Any]], modalities: Sequence[str] = MODALITIES) -> dict[str, Any]:
    """Per model and scenario group: mean PSNR / SSIM / tumour SSIM per target (in ``modalities`` order) and over all
    targets."""
    out: dict[str, Any] = {}
    for row in rows:
        out.setdefault(row["model"], {}).setdefault(row["group"], [])
    for model, groups in out.items():
        for group in list(groups):
            members = [r for r in rows if r["model"] == model and r["group"] == group]
            targets = sorted({r["target"] for r in members}, key=list(modalities).index)
            groups[group] = {
                "targets": {
                    t: {m: mean_metric([r for r in members if r["target"] == t], m) for m in METRICS} for t in targets
                },
                "mean": {m: mean_metric(members, m) for m in METRICS}
                | {m: v for m in EXTRA_METRICS if (v := mean_metric(members, m)) is not None},
            }
    return out


def seed_spread(summary: Mapping[str, Any], metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """Per model retrained with other seeds (``<model>_seed<k>`` beside ``<model>`` in ``summary``, see
    ``quality_models.SEED_VARIANTS``) and scenario group: the seeds, and the mean and sample standard deviation over
    them of each mean metric. Models with one seed are left out."""
    seeds: dict[str, dict[str, Any]] = {}
    for model in summary:
        base, sep, seed = model.rpartition("_seed")
        if sep and seed.isdigit() and base in summary:
            seeds.setdefault(base, {base: "0"})[model] = seed
    out: dict[str, Any] = {}
    for base, members in seeds.items():
        out[base] = {"seeds": [int(k) for k in members.values()], "groups": {}}
        for group in summary[base]:
            values = {m: [summary[n][group]["mean"].get(m) for n in members if group in summary[n]] for m in metrics}
            out[base]["groups"][group] = {
                m: {"mean": statistics.fmean(v), "std": statistics.stdev(v)}
                for m, v in values.items()
                if len(v) > 1 and all(x is not None for x in v)
            }
    return out


#: the MSG-LDM models the targets take the best of: the paper's F_s-only model and the hybrid condition (the bundle
#: default since 0.7.0)
MSGLDM_MODELS = ("msgldm", "msgldm_hybrid")


def _best(summary: Mapping[str, Any], base: str | Sequence[str], group: str) -> tuple[str, Mapping[str, Any]] | None:
    """The sampling variant of model ``base`` (``base`` or ``base+<sampling>``; of any of several models) with the
    best mean PSNR in ``group``."""
    bases = (base,) if isinstance(base, str) else tuple(base)
    variants = [
        (name, groups[group])
        for name, groups in summary.items()
        if any(name == b or name.startswith(b + "+") for b in bases)
        and group in groups
        and groups[group]["mean"]["psnr"] is not None
    ]
    return max(variants, key=lambda v: v[1]["mean"]["psnr"]) if variants else None


def _figures(name: str, g: Mapping[str, Any], lesion: str = "tumour") -> str:
    tumour = g["mean"]["ssim3d_tumour"]
    tumour_text = "-" if tumour is None else f"{100 * tumour:.1f} %"
    return f"{name} {g['mean']['psnr']:.2f} dB / {100 * g['mean']['ssim']:.1f} % / {lesion} {tumour_text}"


def target_checks(
    summary: Mapping[str, Any],
    curve: Mapping[str, Any],
    groups: Sequence[str] = BRATS_GROUPS,
    lesion: str = "tumour",
) -> list[dict]:
    """The quality targets, each with the figures it was judged on (MSG-LDM, the best of :data:`MSGLDM_MODELS`, and
    the plain LDM each with their best sampling variant); ``groups``: the scenario groups compared (the autoencoder ceiling: on the first); ``lesion``:
    what the 3D SSIM region is called."""
    checks = []
    for group in groups:
        ours = _best(summary, MSGLDM_MODELS, group)
        if ours is None:
            continue
        for baseline in ("plain_ldm", "regression"):
            other = _best(summary, baseline, group)
            if other is None:
                continue
            a, b = ours[1]["mean"], other[1]["mean"]
            met = all(a[m] is not None and b[m] is not None and a[m] > b[m] for m in ("psnr", "ssim", "ssim3d_tumour"))
            checks.append(
                {
                    "target": f"MSG-LDM ahead of {baseline} in mean PSNR, SSIM and {lesion} SSIM over the {group} "
                    "scenarios (best sampling variant of each)",
                    "met": bool(met),
                    "figures": f"{_figures(*ours, lesion)}; {_figures(*other, lesion)}",
                }
            )
    ours31, ours13 = _best(summary, MSGLDM_MODELS, "3->1"), _best(summary, MSGLDM_MODELS, "1->3")
    first = _best(summary, MSGLDM_MODELS, groups[0])
    ceiling = summary.get("autoencoder_ceiling", {}).get(groups[0])
    if first is not None and ceiling is not None:
        gap = ceiling["mean"]["psnr"] - first[1]["mean"]["psnr"]
        checks.append(
            {
                "target": f"MSG-LDM's best variant within 1.0 dB PSNR of its autoencoder ceiling on {groups[0]}",
                "met": bool(gap <= 1.0),
                "figures": f"{first[0]} {first[1]['mean']['psnr']:.2f} dB, ceiling {ceiling['mean']['psnr']:.2f} dB "
                f"(gap {gap:.2f} dB)",
            }
        )
    if ours31 is not None and ours13 is not None:
        gain = ours31[1]["mean"]["psnr"] - ours13[1]["mean"]["psnr"]
        checks.append(
            {
                "target": "More given contrasts, better synthesis: MSG-LDM 3->1 at least 1 dB above 1->3 in mean PSNR",
                "met": bool(gain >= 1.0),
                "figures": f"3->1 {ours31[1]['mean']['psnr']:.2f} dB, 1->3 {ours13[1]['mean']['psnr']:.2f} dB "
                f"(gain {gain:.2f} dB)",
            }
        )
    for group in groups:
        best = _best(summary, MSGLDM_MODELS, group)
        if best is None or best[1]["mean"].get("dice_wt") is None:
            continue
        mean = best[1]["mean"]
        gaps = {r: 100 * (mean[f"dice_real_{r}"] - mean[f"dice_{r}"]) for r in ("tc", "wt", "et")}
        checks.append(
            {
                "target": f"Dice of {group} cases completed by MSG-LDM within 2 points of the Dice with all real "
                "contrasts (WT, TC, ET)",
                "met": bool(all(g <= 2.0 for g in gaps.values())),
                "figures": f"{best[0]}: "
                + ", ".join(
                    f"{r.upper()} {100 * mean[f'dice_{r}']:.1f} vs {100 * mean[f'dice_real_{r}']:.1f}"
                    for r in ("wt", "tc", "et")
                ),
            }
        )
    spearman = {
        name: groups["3->1"]["mean"]["uncertainty_spearman"]
        for name, groups in summary.items()
        if name.startswith("msgldm") and "3->1" in groups and "uncertainty_spearman" in groups["3->1"]["mean"]
    }
    if spearman:
        name, value = max(spearman.items(), key=lambda kv: kv[1])
        checks.append(
            {
                "target": "Uncertainty that predicts error: Spearman(std, |error|) above 0.3 (3->1, mean over cases)",
                "met": bool(value > 0.3),
                "figures": ", ".join(f"{n} {v:.2f}" for n, v in spearman.items()),
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


#: rectified-flow model -> the DDIM model it is compared with (same network, same budget)
RFLOW_PAIRS = {"msgldm_hybrid_rflow": "msgldm_hybrid", "plain_ldm_rflow": "plain_ldm"}


def rflow_checks(curve: Mapping[str, Any], reference_steps: int = 20, tolerance: float = 0.3) -> list[dict]:
    """The few-step target of rectified flow: for each pair of :data:`RFLOW_PAIRS` in ``curve`` (model ->
    ``str(steps)`` -> metric -> 3->1 mean), the fewest rectified-flow steps whose mean PSNR is within ``tolerance`` dB
    of the DDIM model at ``reference_steps`` steps (or above it)."""
    checks = []
    for rflow, ddim in RFLOW_PAIRS.items():
        if rflow not in curve or str(reference_steps) not in curve.get(ddim, {}):
            continue
        reference = curve[ddim][str(reference_steps)]["psnr"]
        points = sorted((int(k), v["psnr"]) for k, v in curve[rflow].items() if v.get("psnr") is not None)
        good = [(k, p) for k, p in points if p >= reference - tolerance]
        checks.append(
            {
                "target": f"{rflow} within {tolerance} dB PSNR of {ddim} at {reference_steps} DDIM steps (3->1), "
                "with fewer steps",
                "met": bool(good and good[0][0] < reference_steps),
                "figures": f"{ddim} {reference:.2f} dB at {reference_steps} DDIM steps; {rflow} "
                + ", ".join(f"{p:.2f} dB at {k}" for k, p in points)
                + (f"; fewest steps within: {good[0][0]}" if good else "; none within"),
            }
        )
    return checks


def subject_name(case: Mapping[str, Any], index: int) -> str:
    """The subject folder name of a collated test case (batch of one)."""
    subject = case.get("subject", f"case_{index}")
    subject = subject[0] if isinstance(subject, (list, tuple)) else subject
    return os.path.basename(str(subject).rstrip("/"))
