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
"""WMH quality benchmark: MSG-LDM and the two baselines as two-contrast FLAIR + T1 models on the WMH phantom.

``python benchmarks/quality_wmh.py`` trains ``msgldm``, ``plain_ldm`` and ``regression`` exactly as ``quality.py``
does (its :data:`BUDGET`: phantom size, resolution and seed, split, epochs of each stage; the demo's network sizes)
with ``wmh.json`` appended to every bundle config list: FLAIR and T1, the WMH lesion mask as the segmentation, the
built-in WMH-layout phantom. Then it synthesizes the held-out test subjects in the paper's two WMH scenarios,
FLAIR -> T1 and T1 -> FLAIR (group ``1->1``; ``--ddim-steps`` (20) DDIM steps, plain sampling): slice PSNR / SSIM in
the brain mask and the 3D SSIM inside the WMH lesions, with the stage-0 autoencoder's reconstruction of each target
as the ceiling of the latent models.

Trained models are kept in ``--work-dir`` and not trained again (delete a model's folder to retrain it; a work dir
holds one budget). Writes ``quality_wmh.json``, ``quality_wmh.md`` and ``quality_wmh_bars.png`` to
``--output-dir``. ``--budget-scale``, ``--subjects`` and ``--resolution`` shrink it for a quick check.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONFIGS, device_description  # noqa: E402
from quality_models import BUDGET, contrast_set, served_checkpoint, train_models  # noqa: E402
from quality_report import iterations_text, render  # noqa: E402
from quality_scoring import (  # noqa: E402
    autoencoder_ceiling,
    evaluate_model,
    subject_name,
    summarize,
    target_checks,
    test_cases,
)

#: the models compared (of ``quality_models.MODELS``)
WMH_MODELS = ("msgldm", "plain_ldm", "regression")

#: the bundle config files appended to every config list: the two-contrast WMH model and phantom
OVERLAYS = (str(CONFIGS / "wmh.json"),)

#: the scenario group of two contrasts: FLAIR -> T1 and T1 -> FLAIR
GROUP = "1->1"

__all__ = ["WMH_MODELS", "OVERLAYS", "wmh_budget", "main"]

logger = logging.getLogger("quality")


def wmh_budget(scale: float = 1.0, subjects: int | None = None, resolution: float | None = None) -> dict[str, Any]:
    """This module's :data:`BUDGET` (``quality.py``'s) with every stage's epochs times ``scale`` (at least 1) and,
    when given, another number of phantom ``subjects`` or phantom ``resolution`` (mm)."""
    budget = {**BUDGET, "epochs": {stage: max(1, round(e * scale)) for stage, e in BUDGET["epochs"].items()}}
    if subjects is not None:
        budget["phantom_subjects"] = int(subjects)
    if resolution is not None:
        budget["phantom_resolution"] = float(resolution)
    return budget


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="outputs/benchmarks/quality_wmh/models", help="trained models (kept)")
    parser.add_argument("--output-dir", default="outputs/benchmarks/quality_wmh", help="JSON, markdown and plot")
    parser.add_argument("--models", nargs="+", default=list(WMH_MODELS), choices=list(WMH_MODELS))
    parser.add_argument("--train-only", action="store_true", help="train the models, do not evaluate")
    parser.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps of the latent models")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every stage's epochs")
    parser.add_argument("--subjects", type=int, default=None, help="phantom subjects (default: BUDGET's)")
    parser.add_argument("--resolution", type=float, default=None, help="phantom voxel size in mm (default: BUDGET's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.budget_scale <= 0:
        parser.error(f"--budget-scale expects a positive number, got {args.budget_scale}")

    budget = wmh_budget(args.budget_scale, args.subjects, args.resolution)
    train_seconds = train_models(args.models, args.work_dir, budget, OVERLAYS)
    if args.train_only:
        return 0
    modalities, _ = contrast_set(OVERLAYS)
    cases = test_cases(budget, OVERLAYS)
    logger.info(f"{len(cases)} test subjects")
    rows: list[dict] = []
    eval_seconds: dict[str, float] = {}
    for name in args.models:
        start = time.perf_counter()
        rows += evaluate_model(name, args.work_dir, cases, [GROUP], args.ddim_steps, overlays=OVERLAYS)
        eval_seconds[name] = time.perf_counter() - start
        logger.info(f"{name}: evaluated in {eval_seconds[name]:.0f} s")
    if os.path.isfile(served_checkpoint(args.work_dir, "msgldm")):  # the latent models' shared autoencoder
        rows += autoencoder_ceiling(args.work_dir, cases, OVERLAYS)
    summary = summarize(rows, modalities)
    # each target has one scenario: the other contrast given
    labels = {t: f"{' + '.join(m.upper() for m in modalities if m != t)} -> {t.upper()}" for t in modalities}
    result = {
        "title": "WMH quality benchmark (FLAIR + T1)",
        "modalities": modalities,
        "groups": [GROUP],
        "scenarios": [labels[t] for t in modalities],
        "target_labels": labels,
        "lesion": "lesion",
        "lesion_region": "WMH lesion mask",
        "machine": device_description(),
        "budget": budget,
        "budget_scale": args.budget_scale,
        "iterations": iterations_text(args.work_dir, budget),
        "ddim_steps": args.ddim_steps,
        "test_cases": [subject_name(c, i) for i, c in enumerate(cases)],
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "summary": summary,
        "steps_curve": {},
        "checks": target_checks(summary, {}, [GROUP], lesion="WMH lesion"),
        "rows": rows,
    }
    print(render(result, os.fspath(args.output_dir), name="quality_wmh"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
