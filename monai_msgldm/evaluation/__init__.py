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
"""Synthesis quality of MSG-LDM over every missing-modality scenario (the bundle's ``configs/evaluate.json``).

- :mod:`.scenarios`: the test cases and their scenarios as (case, scenario) items (:class:`ScenarioSamples`);
- :mod:`.metrics`: the paper's slice PSNR/SSIM in the brain and BraSyn's 3D SSIM by region, as functions and as
  MONAI metrics;
- :mod:`.sharpness`: whether the synthesis is as sharp as the truth (mean gradient magnitude ratio), which tells a
  blurred synthesis from a sharp one of the same PSNR;
- :mod:`.segmentation`: BraSyn's downstream Dice (TC, WT, ET) of a frozen segmenter on the case completed with the
  synthesis, beside the same with all real contrasts;
- :mod:`.uncertainty`: whether the per-voxel standard deviation of several samples points at the errors (Spearman
  correlation, error in the most uncertain voxels against the rest);
- :mod:`.handlers`: the evaluator's handlers (metrics with per-item inputs, the report writer, the PNG grids);
- :mod:`.report`: rows, summaries and ``metrics.{csv,json,md}``;
- :mod:`.runner`: :func:`evaluate_synthesis`, the same pipeline in Python.
"""

from __future__ import annotations

from .handlers import (
    DEFAULT_METRIC_COLUMNS,
    OPTIONAL_METRIC_COLUMNS,
    ExtraInputMetricHandler,
    SynthesisGridSaver,
    SynthesisMetricsWriter,
)
from .metrics import (
    METRIC_NAMES,
    BrainSlicePSNRSSIMMetric,
    RegionVolumeSSIMMetric,
    brain_mask_from_available,
    finite_stats,
    masked_slice_psnr_ssim,
    percentile_rescale,
    volume_ssim_by_region,
)
from .report import OPTIONAL_METRIC_NAMES, ROW_KEYS, summarize_metrics, write_metrics
from .runner import evaluate_synthesis
from .scenarios import (
    ScenarioSamples,
    evaluation_datalist,
    missing_modality_scenarios,
    scenario_group,
    scenario_name,
)
from .segmentation import (
    BRATS_REGIONS,
    DOWNSTREAM_DICE_NAMES,
    DownstreamDiceMetric,
    complete_case,
    load_segmenter,
    region_dice,
    segment_case,
)
from .sharpness import SHARPNESS_NAMES, SynthesisSharpnessMetric, sharpness_ratio
from .uncertainty import (
    UNCERTAINTY_NAMES,
    SynthesisUncertaintyMetric,
    average_ranks,
    spearman_correlation,
    uncertainty_error_split,
    uncertainty_scores,
)

__all__ = [
    "BRATS_REGIONS",
    "DEFAULT_METRIC_COLUMNS",
    "DOWNSTREAM_DICE_NAMES",
    "METRIC_NAMES",
    "OPTIONAL_METRIC_COLUMNS",
    "OPTIONAL_METRIC_NAMES",
    "ROW_KEYS",
    "SHARPNESS_NAMES",
    "UNCERTAINTY_NAMES",
    "BrainSlicePSNRSSIMMetric",
    "DownstreamDiceMetric",
    "ExtraInputMetricHandler",
    "RegionVolumeSSIMMetric",
    "ScenarioSamples",
    "SynthesisGridSaver",
    "SynthesisMetricsWriter",
    "SynthesisSharpnessMetric",
    "SynthesisUncertaintyMetric",
    "average_ranks",
    "brain_mask_from_available",
    "complete_case",
    "evaluate_synthesis",
    "evaluation_datalist",
    "finite_stats",
    "load_segmenter",
    "masked_slice_psnr_ssim",
    "missing_modality_scenarios",
    "percentile_rescale",
    "region_dice",
    "scenario_group",
    "scenario_name",
    "segment_case",
    "sharpness_ratio",
    "spearman_correlation",
    "summarize_metrics",
    "uncertainty_error_split",
    "uncertainty_scores",
    "volume_ssim_by_region",
    "write_metrics",
]
