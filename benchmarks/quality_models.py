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
"""The models the quality benchmark compares: their definitions, the shared training budget, training, loading.

Every model trains through the bundle's own configs (``run_bundle_workflow``) with the demo's network sizes into
``<work_dir>/<name>`` and is not trained again once its final checkpoint exists. See ``quality.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

from common import BUNDLE, CONFIGS, preset_configs, write_json

__all__ = [
    "BUDGET",
    "MODELS",
    "MODEL_OVERLAYS",
    "STAGE2_ONLY",
    "BENCHMARK_UNET",
    "model_configs",
    "model_overrides",
    "parse_model",
    "scaled_budget",
    "autoencoder_source",
    "STAGE0_MULTIPLIER",
    "AUTOENCODER_SOURCE",
    "SEED_VARIANTS",
    "budget_label",
    "budget_multiplier",
    "data_overrides",
    "model_dir",
    "served_checkpoint",
    "train_model",
    "train_models",
    "evaluation_parser",
    "contrast_set",
    "load_model",
    "model_sampler",
    "segmenter_checkpoint",
    "train_segmenter",
    "load_segmenter_model",
]

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

#: every model trains in float32, whatever the CPU: the demo preset trains in bfloat16 where the CPU has Intel AMX
#: (``demo.json``'s ``cpu_amp``), which would make the figures depend on the machine and break their comparison with
#: earlier runs
TRAINING_PRECISION: dict[str, Any] = {"cpu_amp": False}

#: the paper's MSG-LDM: the UNet sees the given contrasts through ``F_s`` only (the bundle default is the hybrid
#: condition since bundle 0.7.0, see docs/model.md)
PAPER = {"hybrid_condition": False}

#: the ``*_2step`` models train stage 2 only at the timesteps the 2-step DDIM sampler visits (``train_timesteps``,
#: :func:`~monai_msgldm.inferers.ddim_step_timesteps` of the bundle's ``sampling_scheduler``: 999 and 499)
SAMPLER_TIMESTEPS = "$monai_msgldm.inferers.ddim_step_timesteps(@sampling_scheduler, 2).tolist()"

#: the ``*_imgloss`` models add the image-space loss to stage 2 (``image_loss_weight``: L1 between the decoded
#: clean-latent estimate and the images, see ``LatentDiffusionTrainer``)
IMAGE_LOSS_WEIGHT = 1.0

#: the UNet of every latent model unless the model sets its own: the demo's before bundle 0.10.0, kept so that the
#: benchmark's figures stay comparable across runs (the demo's own, 64/128/128 since 0.10.0, is ``*_wide``)
BENCHMARK_UNET: dict[str, Any] = {"unet_def#channels": [32, 64, 64]}

#: model name -> (kind, bundle overrides); kind "msgldm" trains with train.json + demo.json
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "msgldm": ("msgldm", PAPER),
    "msgldm_no_hfib": ("msgldm", {**PAPER, "structure_def#use_hfib": False}),
    "msgldm_no_msse": ("msgldm", {**PAPER, "structure_def#use_msse": False}),
    "msgldm_no_style_loss": ("msgldm", {**PAPER, "style_weight": 0.0}),
    "msgldm_no_structure_loss": ("msgldm", {**PAPER, "structure_weight": 0.0}),
    "msgldm_mean_fusion": ("msgldm", {**PAPER, "structure_def#use_fusion_gates": False}),
    "msgldm_hybrid": ("msgldm", {"hybrid_condition": True}),
    "plain_ldm": ("baseline_ldm", {}),
    "regression": ("baseline_regression", {}),
    "msgldm_hybrid_rflow": ("msgldm", {"hybrid_condition": True}),
    "plain_ldm_rflow": ("baseline_ldm", {}),
    "msgldm_hybrid_2step": ("msgldm", {"hybrid_condition": True, "train_timesteps": SAMPLER_TIMESTEPS}),
    "plain_ldm_2step": ("baseline_ldm", {"train_timesteps": SAMPLER_TIMESTEPS}),
    "msgldm_hybrid_wide": ("msgldm", {"hybrid_condition": True, "unet_def#channels": [64, 128, 128]}),
    "msgldm_hybrid_wider": ("msgldm", {"hybrid_condition": True, "unet_def#channels": [128, 128, 256]}),
    "plain_ldm_wide": ("baseline_ldm", {"unet_def#channels": [64, 128, 128]}),
    "msgldm_hybrid_imgloss": ("msgldm", {"hybrid_condition": True, "image_loss_weight": IMAGE_LOSS_WEIGHT}),
    "plain_ldm_imgloss": ("baseline_ldm", {"image_loss_weight": IMAGE_LOSS_WEIGHT}),
    "msgldm_hybrid_wide_pixels": (
        "msgldm",
        {"hybrid_condition": True, "pixel_condition": True, "unet_def#channels": [64, 128, 128]},
    ),
    "plain_ldm_wide_pixels": ("baseline_ldm", {"pixel_condition": True, "unet_def#channels": [64, 128, 128]}),
    "msgldm_hybrid_wide_ae4x": ("msgldm", {"hybrid_condition": True, "unet_def#channels": [64, 128, 128]}),
    "plain_ldm_wide_ae4x": ("baseline_ldm", {"unet_def#channels": [64, 128, 128]}),
}

#: models that train their own stage-0 autoencoder, with the budget's autoencoder epochs times this (the other
#: latent models share ``msgldm``'s, or the one :data:`AUTOENCODER_SOURCE` names)
STAGE0_MULTIPLIER: dict[str, float] = {"msgldm_hybrid_wide_ae4x": 4.0}

#: latent models that share another model's stage-0 autoencoder than ``msgldm``'s
AUTOENCODER_SOURCE: dict[str, str] = {"plain_ldm_wide_ae4x": "msgldm_hybrid_wide_ae4x"}

#: model -> the other stage-2 seeds (bundle key ``seed``: the UNet's initial weights, the batches, the noise) it is
#: retrained with, as the models ``<model>_seed<k>``: the same stage-0 and stage-1 networks, so that the spread over
#: seeds is the retraining noise of stage 2 alone (``quality_scoring.seed_spread``)
SEED_VARIANTS: dict[str, tuple[int, ...]] = {
    "msgldm_hybrid_wide_ae4x": (1000, 2000),
    "plain_ldm_wide_ae4x": (1000, 2000),
}
for _base, _seeds in SEED_VARIANTS.items():
    for _seed in _seeds:
        MODELS[f"{_base}_seed{_seed}"] = (MODELS[_base][0], {**MODELS[_base][1], "seed": _seed})
        AUTOENCODER_SOURCE[f"{_base}_seed{_seed}"] = AUTOENCODER_SOURCE.get(_base, _base)

#: model name -> the bundle overlays it trains and samples with, after the demo preset (and a baseline's overlay):
#: rectified flow (MONAI's ``RFlowScheduler``) instead of DDPM / DDIM for stage 2
MODEL_OVERLAYS: dict[str, tuple[str, ...]] = {
    "msgldm_hybrid_rflow": ("rflow.json",),
    "plain_ldm_rflow": ("rflow.json",),
}


#: MSG-LDM variants that differ from ``msgldm`` in stage 2 only: they reuse its stage-0 and stage-1 checkpoints
STAGE2_ONLY = (
    "msgldm_hybrid",
    "msgldm_hybrid_rflow",
    "msgldm_hybrid_2step",
    "msgldm_hybrid_wide",
    "msgldm_hybrid_wider",
    "msgldm_hybrid_imgloss",
    "msgldm_hybrid_wide_pixels",
    *(f"{m}_seed{k}" for m, seeds in SEED_VARIANTS.items() if MODELS[m][0] == "msgldm" for k in seeds),
)


def parse_model(name: str) -> tuple[str, float]:
    """``(model of MODELS, budget multiplier)`` of a benchmark model name: ``"msgldm"`` -> ``("msgldm", 1.0)``,
    ``"plain_ldm@4x"`` -> ``("plain_ldm", 4.0)``, ``"regression@0.5x"`` -> ``("regression", 0.5)`` (the stage-2 /
    baseline epochs of the budget times the multiplier; a learning-curve point)."""
    base, sep, multiplier = name.partition("@")
    k = budget_multiplier(multiplier[:-1]) if sep and multiplier.endswith("x") else None
    if base not in MODELS or (sep and k is None):
        raise ValueError(
            f"unknown benchmark model {name!r}; expected one of {sorted(MODELS)}, optionally followed by @<k>x "
            "with a multiplier k > 0 (e.g. @2x, @0.5x)."
        )
    return base, 1.0 if k is None else k


def budget_multiplier(text: str) -> float | None:
    """The multiplier ``text`` (``"2"``, ``"0.5"``) as a float > 0, or ``None`` when it is not one."""
    try:
        k = float(text)
    except ValueError:
        return None
    return k if k > 0 and k != float("inf") else None


def budget_label(multiplier: float) -> str:
    """The short text of a multiplier: ``1.0`` -> ``"1"``, ``0.5`` -> ``"0.5"`` (model names, JSON keys)."""
    return f"{float(multiplier):g}"


def scaled_budget(budget: Mapping[str, Any], multiplier: float, stage0_multiplier: float = 1.0) -> dict[str, Any]:
    """``budget`` with the stage-2 (and baseline) epochs times ``multiplier`` and the stage-0 (autoencoder) epochs
    times ``stage0_multiplier`` (rounded, at least 1); stage 1 unchanged."""
    epochs = dict(budget["epochs"])
    epochs["diffusion"] = max(1, round(int(epochs["diffusion"]) * float(multiplier)))
    epochs["autoencoder"] = max(1, round(int(epochs["autoencoder"]) * float(stage0_multiplier)))
    return {**budget, "epochs": epochs}


def autoencoder_source(name: str) -> str | None:
    """The model whose stage-0 autoencoder model ``name`` uses: ``"msgldm"`` for the latent models (the shared
    one), a :data:`STAGE0_MULTIPLIER` model (and its learning-curve points) its own, :data:`AUTOENCODER_SOURCE`'s
    entry; ``None`` for the regression baseline (no autoencoder)."""
    base = parse_model(name)[0]
    if MODELS[base][0] == "baseline_regression":
        return None
    return AUTOENCODER_SOURCE.get(base, base if base in STAGE0_MULTIPLIER else "msgldm")


def model_configs(name: str, overlays: Sequence[str] = ()) -> list[str]:
    """The bundle config files model ``name`` trains and is loaded with: the demo preset (``train.json`` +
    ``demo.json``), for a baseline ``train_diffusion.json`` and its overlay, the model's own
    :data:`MODEL_OVERLAYS` (e.g. ``rflow.json``), then ``overlays`` (e.g. ``wmh.json``)."""
    base = parse_model(name)[0]
    kind = MODELS[base][0]
    files = preset_configs("demo")
    if kind != "msgldm":
        files += [str(CONFIGS / "train_diffusion.json"), str(CONFIGS / f"{kind}.json")]
    files += [str(CONFIGS / f) for f in MODEL_OVERLAYS.get(base, ())]
    return files + [os.fspath(f) for f in overlays]


def model_overrides(name: str) -> dict[str, Any]:
    """The bundle overrides model ``name`` trains and is loaded with: :data:`BENCHMARK_UNET` for a latent model,
    then the model's own (:data:`MODELS`)."""
    kind, overrides = MODELS[parse_model(name)[0]]
    return {**(BENCHMARK_UNET if kind != "baseline_regression" else {}), **overrides}


def data_overrides(budget: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle overrides of the data part of ``budget`` (phantom and split; everything but the epochs)."""
    return {k: v for k, v in budget.items() if k != "epochs"}


def model_dir(work_dir: str | os.PathLike, name: str) -> str:
    """Folder of one trained model: ``<work_dir>/<name>`` with ``models/`` (checkpoints) and ``eval/`` (logs)."""
    return os.path.join(os.fspath(work_dir), name)


def served_checkpoint(work_dir: str | os.PathLike, name: str) -> str:
    """The final checkpoint of a model (``models/model.pt``; EMA weights for the diffusion UNets)."""
    return os.path.join(model_dir(work_dir, name), "models", "model.pt")


def train_model(
    name: str, work_dir: str | os.PathLike, budget: Mapping[str, Any], overlays: Sequence[str] = ()
) -> float:
    """Train model ``name`` of :data:`MODELS` with ``budget`` into :func:`model_dir` unless its final checkpoint exists.

    ``overlays``: bundle config files appended to every config list (e.g. ``wmh.json``: the two-contrast WMH model
    on the WMH phantom); :func:`load_model` and the scoring need the same.

    Returns:
        the training wall time in seconds (0 when it was already trained).
    """
    from monai_msgldm.bundle import run_bundle_workflow

    base, multiplier = parse_model(name)
    kind, overrides = MODELS[base][0], model_overrides(name)
    out = model_dir(work_dir, name)
    if os.path.isfile(served_checkpoint(work_dir, name)):
        logger.info(f"{name}: trained already ({served_checkpoint(work_dir, name)})")
        return 0.0
    ckpt_dir = os.path.join(out, "models")
    os.makedirs(ckpt_dir, exist_ok=True)
    source = autoencoder_source(name)
    if source is not None and name != source:  # the latent models share msgldm's (or their source's) stage 0
        train_model(source, work_dir, budget, overlays)
        shared = {"autoencoder.pt": source}
        if kind == "msgldm" and (base in STAGE2_ONLY or (base == source and multiplier != 1)):
            shared["structure.pt"] = source  # and, when only stage 2 differs, its stage-1 structure net
        for file, owner in shared.items():
            shutil.copyfile(os.path.join(model_dir(work_dir, owner), "models", file), os.path.join(ckpt_dir, file))
    elif source == name and name != "msgldm":  # its own autoencoder; stage 1 is msgldm's (it does not use stage 0)
        train_model("msgldm", work_dir, budget, overlays)
        shutil.copyfile(
            os.path.join(model_dir(work_dir, "msgldm"), "models", "structure.pt"),
            os.path.join(ckpt_dir, "structure.pt"),
        )
    budget = scaled_budget(budget, multiplier, STAGE0_MULTIPLIER.get(base, 1.0) if name == source else 1.0)
    meta, logging_file = str(CONFIGS / "metadata.json"), str(CONFIGS / "logging.conf")
    logger.info(f"{name}: training ({kind}, overrides {overrides})")
    start = time.perf_counter()
    # the demo preset (train.json + demo.json) with the budget; a baseline is a stage-2 overlay after
    # train_diffusion.json. Every override is a plain id of train.json that reaches the stages.
    configs = model_configs(name, overlays)
    if kind != "msgldm":
        overrides = {
            **overrides,
            "ckpt_dir": ckpt_dir,
            "output_dir": os.path.join(out, "eval", "diffusion"),
            "val_interval": budget["epochs"]["diffusion"],
        }
    else:
        overrides = {**overrides, "training": ["@run_stages"]}  # the stages only, not the demo's inference
    run_bundle_workflow(
        configs,
        meta,
        logging_file,
        run_id="training",
        workflow_type="train",
        **{**data_overrides(budget), **overrides, **TRAINING_PRECISION, "bundle_root": str(BUNDLE), "demo_dir": out},
        epochs=budget["epochs"],
    )
    seconds = time.perf_counter() - start
    write_json(os.path.join(out, "train_time.json"), {"seconds": seconds})
    return seconds


def train_models(
    names: Sequence[str], work_dir: str | os.PathLike, budget: Mapping[str, Any], overlays: Sequence[str] = ()
) -> dict[str, float]:
    """Train each of ``names`` (:func:`train_model`); returns name -> recorded training seconds (of this run or the
    run that trained it; absent when unrecorded)."""
    seconds = {}
    for name in names:
        train_model(name, work_dir, budget, overlays)
        record = os.path.join(model_dir(work_dir, name), "train_time.json")
        if os.path.isfile(record):
            with open(record) as f:
                seconds[name] = json.load(f)["seconds"]
    return seconds


def segmenter_checkpoint(work_dir: str | os.PathLike) -> str:
    """The frozen BraSyn segmenter of the benchmark: ``<work_dir>/segmenter/models/segmenter.pt``."""
    return os.path.join(model_dir(work_dir, "segmenter"), "models", "segmenter.pt")


def train_segmenter(work_dir: str | os.PathLike, budget: Mapping[str, Any], epochs: int | None = None) -> float:
    """Train the downstream-Dice segmenter once (``train_segmenter.json``: a 2D SegResNet on the four real contrasts
    of the benchmark's training split, the demo's slices) unless its checkpoint exists; ``epochs``: the config's
    own (200) when None. Returns the training wall time in seconds (0 when trained already)."""
    from monai_msgldm.bundle import run_bundle_workflow

    out = model_dir(work_dir, "segmenter")
    if os.path.isfile(segmenter_checkpoint(work_dir)):
        logger.info(f"segmenter: trained already ({segmenter_checkpoint(work_dir)})")
        return 0.0
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    logger.info("segmenter: training (train_segmenter.json)")
    start = time.perf_counter()
    overrides = {} if epochs is None else {"epochs#segmenter": int(epochs)}
    run_bundle_workflow(
        [*preset_configs("demo"), str(CONFIGS / "train_segmenter.json")],
        str(CONFIGS / "metadata.json"),
        str(CONFIGS / "logging.conf"),
        run_id="training",
        workflow_type="train",
        **{**data_overrides(budget), **overrides, "bundle_root": str(BUNDLE), "demo_dir": out, "progress": False},
    )
    seconds = time.perf_counter() - start
    write_json(os.path.join(out, "train_time.json"), {"seconds": seconds})
    return seconds


def load_segmenter_model(work_dir: str | os.PathLike) -> Any:
    """The trained, frozen segmenter (eval mode, no gradients) built from ``evaluate.json``'s ``segmenter_def``."""
    from monai_msgldm.evaluation import load_segmenter

    parser = evaluation_parser()
    return load_segmenter(parser.get_parsed_content("segmenter_def"), segmenter_checkpoint(work_dir), device="cpu")


def evaluation_parser(overlays: Sequence[str] = ()) -> Any:
    """A ``ConfigParser`` of ``inference.json`` + ``evaluate.json`` (+ ``overlays``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json"), *overlays])
    return parser


def contrast_set(overlays: Sequence[str] = ()) -> tuple[list[str], int]:
    """``(modalities, lesion channel)`` of the evaluation config with ``overlays``: the contrasts in channel order and
    the segmentation channel of the lesion the 3D SSIM is scored in (BraTS: the whole tumour, 1; WMH: 0)."""
    parser = evaluation_parser(overlays)
    seg_classes = list(parser.get_parsed_content("seg_classes"))
    return list(parser.get_parsed_content("modalities")), seg_classes.index(parser.get_parsed_content("lesion_class"))


def load_model(name: str, work_dir: str | os.PathLike, device: str = "cpu", overlays: Sequence[str] = ()) -> Any:
    """The trained model ``name`` (built from the bundle config it was trained with, ``overlays`` included; served
    weights loaded)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(model_configs(name, overlays))
    parser.update({"bundle_root": str(BUNDLE), **model_overrides(name)})
    net = parser.get_parsed_content("network_def", instantiate=True)
    path = served_checkpoint(work_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: {name} has no trained checkpoint {path}; train it first.")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(device).eval()


def model_sampler(name: str, ddim_steps: int, known_contrast_guidance: bool = False) -> Any:
    """The sampling inferer of model ``name``: the regression baseline's single pass, or ``ddim_steps`` steps of the
    bundle's ``sampling_scheduler`` the model was trained with (DDIM on its schedule and prediction type, or rectified
    flow for the ``*_rflow`` models), with or without known-contrast guidance."""
    from monai.bundle import ConfigParser

    from monai_msgldm.inferers import MultiContrastDiffusionInferer, RegressionSynthesisInferer

    kind, _ = MODELS[parse_model(name)[0]]
    if kind == "baseline_regression":
        return RegressionSynthesisInferer(amp=False)
    parser = ConfigParser()
    parser.read_config(model_configs(name))  # the scheduler and prediction type the model trained with
    parser["bundle_root"] = str(BUNDLE)
    return MultiContrastDiffusionInferer(
        parser.get_parsed_content("sampling_scheduler"),
        ddim_steps,
        amp=False,
        known_contrast_guidance=known_contrast_guidance,
    )
