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
- the 3 -> 1 scenarios at each of ``--curve-steps`` sampling steps (10, 20, 50, 100) for the latent models of
  :data:`STEPS_CURVE_MODELS` that are listed (steps-versus-quality: DDIM, and rectified flow for the ``*_rflow``
  models);
- the latent models with each ``--sampling`` variant (``quality_scoring.SAMPLING``: known-contrast guidance, the
  mean of 4 samples, both, and ``crop``: plain sampling inside each slice batch's foreground box, as
  ``inference.json`` samples since 0.12.0, one slice per batch), each a row of its own
  (``msgldm+guided``...);
- learning curves (``--budgets 0.5 1 2``): MSG-LDM (and its hybrid and wide variants when listed), the plain LDM
  (and its wide variant) and the regression U-Net trained again with the stage-2 / baseline epochs times each budget multiplier (``msgldm@2x``,
  ``plain_ldm@0.5x``..., sharing stages 0 and 1), scored on 3 -> 1 and 1 -> 3 with plain sampling.

The models:

- ``msgldm``: ``train.json`` + ``demo.json`` (the three stages);
- ``msgldm_hybrid``: MSG-LDM with the hybrid condition (``F_s`` and the given contrasts' latents; stage 2 only);
- ``msgldm_no_*`` / ``msgldm_mean_fusion``: the same with one switch of the bundle config (an override of a
  ``train.json`` id):
  no HFIB, no MSSE, no style-consistency loss, no structure-aware loss, mean fusion instead of the MMSF gates;
  they retrain stages 1 and 2 and reuse the stage-0 autoencoder of ``msgldm``;
- ``plain_ldm``: ``train.json`` + ``demo.json`` + ``train_diffusion.json`` + ``baseline_ldm.json``: the same autoencoder and UNet conditioned on the
  latents of the available contrasts, no structure branch;
- ``msgldm_hybrid_rflow`` / ``plain_ldm_rflow``: the same two with ``rflow.json`` last (stage 2 trained and sampled
  with MONAI's ``RFlowScheduler``, rectified flow, instead of DDPM / DDIM);
- ``msgldm_hybrid_2step`` / ``plain_ldm_2step``: the same two with stage 2 trained only at the timesteps the 2-step
  DDIM sampler visits (``train_timesteps``: 999 and 499);
- ``msgldm_hybrid_wide`` / ``plain_ldm_wide``: a UNet of 64/128/128 channels instead of the demo's 32/64/64;
  ``msgldm_hybrid_wider``: 128/128/256 (the paper-size default's);
- ``msgldm_hybrid_imgloss`` / ``plain_ldm_imgloss``: stage 2 with the image-space loss as well (``image_loss_weight``
  1: L1 between the images and the decoded clean latent the UNet's prediction implies);
- ``regression``: ``train.json`` + ``demo.json`` + ``train_diffusion.json`` + ``baseline_regression.json``: a MONAI ``BasicUNet`` from the zero-filled
  contrasts + availability mask to the four contrasts, L1 loss.

``--split validation`` scores the split's two validation subjects instead of the test subjects, to choose a recipe
without looking at the test subjects.

Trained models are kept in ``--work-dir`` and not trained again (delete a model's folder to retrain it). Writes
``quality.json``, ``quality.md`` and PNG plots to ``--output-dir``. Hours on 2 CPU cores: not part of CI.

This file is the command line; the parts are ``quality_models.py`` (the models, the budget, training and loading),
``quality_scoring.py`` (test subjects, metrics, summaries, targets) and ``quality_report.py`` (markdown, plots).
Replacing :data:`BUDGET` in this module changes the budget :func:`main` and :func:`train_model` use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description  # noqa: E402
from quality_models import (  # noqa: E402
    BUDGET,
    MODELS,
    autoencoder_source,
    budget_label,
    budget_multiplier,
    load_segmenter_model,
    model_dir,
    parse_model,
    train_segmenter,
)
from quality_models import train_model as _train_model  # noqa: E402
from quality_report import iterations_text, plot_comparison, render  # noqa: E402
from quality_scoring import (  # noqa: E402
    METRICS,
    SAMPLING,
    autoencoder_ceiling,
    evaluate_model,
    mean_metric,
    rflow_checks,
    seed_spread,
    steps_curve,
    subject_name,
    summarize,
    target_checks,
    test_cases,
)

#: the models of the learning curves (those of ``--models``)
CURVE_MODELS = ("msgldm", "msgldm_hybrid", "plain_ldm", "regression", "msgldm_hybrid_wide", "plain_ldm_wide")
#: the models of the steps-versus-quality curve (those of ``--models``): DDIM and rectified flow
STEPS_CURVE_MODELS = (
    "msgldm",
    "msgldm_hybrid",
    "plain_ldm",
    "msgldm_hybrid_rflow",
    "plain_ldm_rflow",
    "msgldm_hybrid_2step",
    "plain_ldm_2step",
)

__all__ = ["BUDGET", "MODELS", "main", "train_model", "evaluate_model"]

logger = logging.getLogger("quality")


def train_model(name: str, work_dir: str | os.PathLike) -> float:
    """Train model ``name`` of :data:`MODELS` with this module's :data:`BUDGET` (see ``quality_models.train_model``).

    Returns:
        the training wall time in seconds (0 when it was already trained).
    """
    return _train_model(name, work_dir, BUDGET)


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
    parser.add_argument(
        "--sampling",
        nargs="+",
        default=list(SAMPLING),
        choices=list(SAMPLING),
        help="sampling variants (latent models)",
    )
    parser.add_argument(
        "--budgets",
        type=str,
        nargs="+",
        default=["1"],
        help="learning-curve budget multipliers of the stage-2 epochs (> 0, e.g. 0.25 0.5 1 2 4)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "validation"],
        help="subjects to score: the held-out test subjects, or the two validation subjects (to choose a recipe)",
    )
    parser.add_argument("--no-dice", action="store_true", help="skip the downstream Dice (no segmenter training)")
    parser.add_argument("--dice-epochs", type=int, default=None, help="segmenter epochs (train_segmenter.json's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    budgets = [budget_multiplier(k) for k in args.budgets]
    if any(k is None for k in budgets):
        parser.error(f"--budgets expects multipliers > 0, got {args.budgets}")
    budgets = sorted(set(budgets))
    curve_names = [f"{m}@{budget_label(k)}x" for m in CURVE_MODELS if m in args.models for k in budgets if k != 1]
    train_seconds = {}
    for name in [*args.models, *curve_names]:
        train_model(name, args.work_dir)
        record = os.path.join(model_dir(args.work_dir, name), "train_time.json")
        if os.path.isfile(record):
            with open(record) as f:
                train_seconds[name] = json.load(f)["seconds"]
    if not args.no_dice:
        train_seconds["segmenter"] = train_segmenter(args.work_dir, BUDGET, args.dice_epochs) or train_seconds.get(
            "segmenter"
        )
    if args.train_only:
        return 0
    segmenter = None if args.no_dice else load_segmenter_model(args.work_dir)
    cases = test_cases(BUDGET, split=args.split)
    logger.info(f"{len(cases)} {args.split} subjects")
    rows: list[dict] = []
    eval_seconds: dict[str, float] = {}
    for name in args.models:
        latent = MODELS[parse_model(name)[0]][0] != "baseline_regression"
        for sampling in args.sampling if latent else ["plain"]:
            start = time.perf_counter()
            rows += evaluate_model(
                name, args.work_dir, cases, ["3->1", "1->3"], args.ddim_steps, sampling, segmenter=segmenter
            )
            label = name if sampling == "plain" else f"{name}+{sampling}"
            eval_seconds[label] = time.perf_counter() - start
            logger.info(f"{label}: evaluated in {eval_seconds[label]:.0f} s")
    learning: dict[str, dict[str, dict]] = {}
    for name in curve_names:
        rows += evaluate_model(name, args.work_dir, cases, ["3->1", "1->3"], args.ddim_steps)
    for base in [m for m in CURVE_MODELS if m in args.models]:
        for k in budgets:
            label = base if k == 1 else f"{base}@{budget_label(k)}x"
            learning.setdefault(base, {})[budget_label(k)] = {
                group: {
                    m: mean_metric([r for r in rows if r["model"] == label and r["group"] == group], m) for m in METRICS
                }
                | {"train_seconds": train_seconds.get(label)}
                for group in ("3->1", "1->3")
            }
    rows += autoencoder_ceiling(args.work_dir, cases)
    for source in dict.fromkeys(autoencoder_source(m) for m in args.models):
        if source not in (None, "msgldm"):  # a model that trains its own autoencoder: its ceiling too
            rows += autoencoder_ceiling(args.work_dir, cases, source=source)
    summary = summarize(rows)
    curve_models = [m for m in STEPS_CURVE_MODELS if m in args.models]
    curve, curve_rows = steps_curve(curve_models, args.work_dir, cases, rows, args.curve_steps, args.ddim_steps)
    rows += curve_rows
    result = {
        "machine": device_description(),
        "budget": BUDGET,
        "iterations": iterations_text(args.work_dir, BUDGET),
        "ddim_steps": args.ddim_steps,
        "split": args.split,
        "test_cases": [subject_name(c, i) for i, c in enumerate(cases)],
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "learning_curves": learning,
        "summary": summary,
        "seed_spread": seed_spread(summary),
        "steps_curve": curve,
        "checks": target_checks(summary, curve) + rflow_checks(curve),
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
