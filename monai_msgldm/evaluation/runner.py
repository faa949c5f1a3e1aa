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
"""The synthesis evaluator in Python: the pipeline of the bundle's ``configs/evaluate.json``, for scripts."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import DataLoader, PatchDataset
from monai.engines import PrepareBatchExtraInput, SupervisedEvaluator

from monai_msgldm.constants import MODALITIES
from monai_msgldm.transforms import ApplyModalityMaskd, SplitSynthesisStdd

from .handlers import ExtraInputMetricHandler, SynthesisGridSaver, SynthesisMetricsWriter
from .metrics import BrainSlicePSNRSSIMMetric, RegionVolumeSSIMMetric
from .scenarios import ScenarioSamples
from .segmentation import DownstreamDiceMetric
from .sharpness import SynthesisSharpnessMetric
from .uncertainty import SynthesisUncertaintyMetric

__all__ = ["evaluate_synthesis"]


def evaluate_synthesis(
    network: nn.Module,
    inferer: Any,
    dataloader: Iterable[Mapping[str, Any]],
    output_dir: str | os.PathLike | None = None,
    scenarios: Sequence[str] | str | None = None,
    modalities: Sequence[str] = MODALITIES,
    seg_key: str | None = "seg",
    tumour_channel: int = 1,
    device: torch.device | str | None = None,
    min_brain_voxels: int = 1,
    lower: float = 0.5,
    upper: float = 99.5,
    figures: bool = False,
    segmenter: nn.Module | None = None,
) -> list[dict[str, Any]]:
    """Synthesize every scenario of every case with MONAI's ``SupervisedEvaluator`` and score each missing target.

    The same pipeline as ``configs/evaluate.json``: ``monai.data.PatchDataset`` turns each batch of ``dataloader``
    (one preprocessed case ``(1, M, H, W, D)`` in [-1, 1] with every modality present, as made by
    ``brats_preprocessing_transforms``) into one item per scenario (:class:`ScenarioSamples`; the missing channels
    set to -1 by ``ApplyModalityMaskd``); the evaluator calls ``inferer(image, network, available=mask)`` through
    ``PrepareBatchExtraInput``; :class:`BrainSlicePSNRSSIMMetric`, :class:`RegionVolumeSSIMMetric` (tumour: channel
    ``tumour_channel`` of ``batch[seg_key]``; none when ``seg_key`` is None or absent) and
    :class:`SynthesisSharpnessMetric` score each missing target;
    :class:`SynthesisMetricsWriter` makes the rows. With a ``segmenter`` (the frozen BraSyn segmenter,
    :func:`load_segmenter`), :class:`DownstreamDiceMetric` adds the Dice of the completed and of the all-real case
    (needs ``seg_key``). When the inferer returns the std map of several samples (``ModalitySynthesisInferer(
    num_samples=N, return_std=True)``), ``SplitSynthesisStdd`` splits it from the synthesis and
    :class:`SynthesisUncertaintyMetric` adds the uncertainty columns, as ``evaluate.json`` does.

    Args:
        network: the MSGLDM model.
        inferer: e.g. :class:`monai_msgldm.inferers.ModalitySynthesisInferer`.
        dataloader: batches of one case each (a ``DataLoader`` with ``batch_size=1`` or a list of such batches).
        output_dir: when given, ``metrics.csv``, ``metrics.json`` and ``metrics.md`` are written there.
        scenarios: restriction of the scenarios (see :func:`missing_modality_scenarios`).
        modalities: modality names in channel order.
        seg_key: key of the (3, H, W, D) TC/WT/ET segmentation, or None.
        tumour_channel: channel of the whole tumour in the segmentation.
        device: device of the inputs; None: the network's.
        min_brain_voxels: see :func:`masked_slice_psnr_ssim`.
        lower: lower percentile of the BraSyn rescaling.
        upper: upper percentile of the BraSyn rescaling.
        figures: with ``output_dir``, also write one PNG grid per case and scenario to ``output_dir/figures``
            (:class:`SynthesisGridSaver`).
        segmenter: the frozen segmenter of the downstream Dice, or None (no Dice columns).

    Returns:
        one row per case x scenario x target: ``case, scenario, group, available, target, num_slices``,
        :data:`METRIC_NAMES` and ``sharpness``.

    Raises:
        ValueError: no case, a batch of several cases, a missing image, or a case lacking a modality.

    Example::

        rows = evaluate_synthesis(network, ModalitySynthesisInferer(num_inference_steps=50), loader, "eval", ["3->1"])
    """
    samples = ScenarioSamples(scenarios, modalities)
    dataset = PatchDataset(
        dataloader, samples, len(samples), ApplyModalityMaskd("image", available_key="available", fill_value=-1.0)
    )
    if len(dataset) == 0:
        raise ValueError("evaluate_synthesis: the dataloader gave no case (an empty test split? raise test_ratio).")
    extra_keys = {"available": "available", "seg": seg_key}
    writer = SynthesisMetricsWriter(output_dir, modalities=modalities)
    handlers: list[Any] = [writer]
    if figures and output_dir is not None:
        handlers.append(SynthesisGridSaver(os.path.join(output_dir, "figures"), modalities))
    additional: dict[str, Any] = {
        "volume_ssim": ExtraInputMetricHandler(RegionVolumeSSIMMetric(tumour_channel, lower, upper), extra_keys),
        "sharpness": ExtraInputMetricHandler(SynthesisSharpnessMetric(), extra_keys),
    }
    if segmenter is not None:
        if seg_key is None:
            raise ValueError("evaluate_synthesis: the downstream Dice (segmenter) needs the label: give seg_key.")
        additional["downstream_dice"] = ExtraInputMetricHandler(
            DownstreamDiceMetric(segmenter), {"available": "available", "seg": seg_key, "case": "case"}
        )
    return_std = bool(getattr(inferer, "return_std", False))
    if return_std:
        additional["uncertainty"] = ExtraInputMetricHandler(
            SynthesisUncertaintyMetric(), {"available": "available"}, output_keys={"std": "pred_std"}
        )
    evaluator = SupervisedEvaluator(
        device=next(network.parameters()).device if device is None else device,
        val_data_loader=DataLoader(dataset, batch_size=1, num_workers=0),
        network=network,
        inferer=inferer,
        prepare_batch=PrepareBatchExtraInput(extra_keys={"available": "available"}),
        key_val_metric={
            "slice_psnr_ssim": ExtraInputMetricHandler(BrainSlicePSNRSSIMMetric(min_brain_voxels), extra_keys)
        },
        additional_metrics=additional,
        postprocessing=(SplitSynthesisStdd("pred", "pred_std", len(modalities), channel_dim=1) if return_std else None),
        val_handlers=handlers,
        decollate=False,
    )
    evaluator.run()
    return writer.rows
