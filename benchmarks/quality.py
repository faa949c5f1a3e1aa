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
    if name != "msgldm":  # every other model reuses the stage-0 autoencoder of msgldm (same budget, trained once)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="outputs/benchmarks/quality/models", help="trained models (kept)")
    parser.add_argument("--output-dir", default="outputs/benchmarks/quality", help="JSON, markdown and plots")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--train-only", action="store_true", help="train the models, do not evaluate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in args.models:
        train_model(name, args.work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
