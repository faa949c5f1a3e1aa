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
"""Downstream Dice, the BraSyn protocol: a FIXED tumour segmenter run on the case completed with the synthesis.

BraSyn scores a synthesis by what it does to a segmentation network that was trained once on cases with all four
real contrasts and then frozen: the missing contrasts of each test case are replaced by the synthesized ones (the
given contrasts stay real), the segmenter runs on that completed case, and its masks are compared with the case's
label: Dice of the tumour core (TC), the whole tumour (WT) and the enhancing tumour (ET). The same segmenter on the
case with all four real contrasts gives the reference the synthesis is compared with.

Here the segmenter is the bundle's ``configs/train_segmenter.json`` model (a 2D MONAI ``SegResNet`` on axial slices,
3 sigmoid outputs TC, WT, ET), run slice by slice over the preprocessed volume (MONAI ``SliceInferer``); its
outputs go through a sigmoid and are thresholded at 0.5; Dice is MONAI's ``DiceMetric`` per region on the 3D
volume (BraTS convention by default: an empty label and an empty prediction give 1, an empty label and a non-empty
prediction give 0).

- :func:`complete_case`, :func:`segment_case`, :func:`region_dice`: the steps, as functions;
- :func:`load_segmenter`: the frozen segmenter from its checkpoint, with a clear error when the file is missing;
- :class:`DownstreamDiceMetric`: a MONAI ``CumulativeIterationMetric`` giving, per item and missing contrast,
  ``dice_tc, dice_wt, dice_et`` (completed case) and ``dice_real_tc, dice_real_wt, dice_real_et`` (all real contrasts,
  computed once per case and repeated beside each scenario), for
  :class:`~monai_msgldm.evaluation.ExtraInputMetricHandler`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.inferers import Inferer, SliceInferer
from monai.metrics import CumulativeIterationMetric, DiceMetric

from monai_msgldm.inferers.model_loading import load_model_weights, require_checkpoint

from .metrics import check_synthesis_inputs, finite_stats

__all__ = [
    "BRATS_REGIONS",
    "DOWNSTREAM_DICE_NAMES",
    "DownstreamDiceMetric",
    "complete_case",
    "load_segmenter",
    "region_dice",
    "segment_case",
]

#: The tumour regions, in the channel order of ``ConvertToMultiChannelBasedOnBratsClassesd`` and of the segmenter.
BRATS_REGIONS: tuple[str, ...] = ("tc", "wt", "et")

#: Columns of :class:`DownstreamDiceMetric`: the completed case, then the case with all real contrasts.
DOWNSTREAM_DICE_NAMES: tuple[str, ...] = (
    *(f"dice_{r}" for r in BRATS_REGIONS),
    *(f"dice_real_{r}" for r in BRATS_REGIONS),
)

_SEGMENTER_WRITER = "configs/train_segmenter.json (models/segmenter.pt)"


def complete_case(
    synthesis: torch.Tensor, truth: torch.Tensor, available: Sequence[bool] | torch.Tensor
) -> torch.Tensor:
    """The case completed with the synthesis: the given contrasts real, the missing ones synthesized.

    Args:
        synthesis: ``(M, *S)`` synthesis (its given channels are ignored).
        truth: ``(M, *S)`` real contrasts.
        available: ``(M,)`` bools, True for the given contrasts.

    Returns:
        ``(M, *S)`` tensor: ``truth`` on the given channels, ``synthesis`` on the others.

    Example::

        >>> complete_case(torch.zeros(2, 3), torch.ones(2, 3), [True, False])
        tensor([[1., 1., 1.],
                [0., 0., 0.]])
    """
    synthesis, truth = torch.as_tensor(synthesis), torch.as_tensor(truth)
    mask = torch.as_tensor(available, dtype=torch.bool, device=truth.device).reshape(-1)
    if synthesis.shape != truth.shape or synthesis.ndim < 2 or mask.numel() != truth.shape[0]:
        raise ValueError(
            f"complete_case expects synthesis and truth of one (M, *S) shape and available (M,), got "
            f"{tuple(synthesis.shape)}, {tuple(truth.shape)} and {tuple(mask.shape)}."
        )
    mask = mask.view(-1, *([1] * (truth.ndim - 1)))
    return torch.where(mask, truth, synthesis.to(device=truth.device, dtype=truth.dtype))


def _default_inferer(slice_axis: int, slice_batch_size: int) -> Inferer:
    # a whole slice per window (roi -1 = the image's size): the 2D model sees each axial slice once, unpadded
    return SliceInferer(roi_size=(-1, -1), spatial_dim=slice_axis % 3, sw_batch_size=slice_batch_size, progress=False)


@torch.no_grad()
def segment_case(
    segmenter: nn.Module,
    image: torch.Tensor,
    inferer: Inferer | None = None,
    sigmoid: bool = True,
    threshold: float = 0.5,
    slice_axis: int = -1,
    slice_batch_size: int = 32,
) -> torch.Tensor:
    """Tumour masks of one case by the frozen ``segmenter`` (eval mode, no gradient; its mode is restored after).

    Args:
        segmenter: the network, ``(1, M, *S') -> (1, C, *S')`` logits (``S'`` a slice for a 2D model).
        image: ``(M, H, W, D)`` volume or ``(M, H, W)`` slice in the segmenter's input range.
        inferer: how the segmenter runs; None: slice-wise over ``slice_axis`` with MONAI ``SliceInferer`` (whole
            slices) for a volume, one call for a slice. Give ``monai.inferers.SimpleInferer()`` for a 3D segmenter.
        sigmoid: apply a sigmoid to the outputs before thresholding (False: they are probabilities already).
        threshold: a voxel is in a region when its probability is above it.
        slice_axis: spatial axis of the slices (-1: the last, axial after RAI).
        slice_batch_size: slices per segmenter call of the default inferer.

    Returns:
        ``(C, *S)`` bool masks, on the image's device.

    Example::

        masks = segment_case(segmenter, completed)  # (3, H, W, D): TC, WT, ET
    """
    image = torch.as_tensor(image)
    if image.ndim not in (3, 4):
        raise ValueError(
            f"segment_case expects an (M, H, W) slice or an (M, H, W, D) volume, got {tuple(image.shape)}."
        )
    if inferer is None:
        inferer = _default_inferer(slice_axis, slice_batch_size) if image.ndim == 4 else None
    param = next(segmenter.parameters(), None)
    device = image.device if param is None else param.device
    x = image.as_tensor() if hasattr(image, "as_tensor") else image
    x = x[None].to(device=device, dtype=torch.float32)
    was_training = segmenter.training
    segmenter.eval()
    try:
        logits = segmenter(x) if inferer is None else inferer(x, segmenter)
    finally:
        segmenter.train(was_training)
    logits = torch.as_tensor(logits)[0].float()
    if logits.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"segment_case expects the segmenter output on the image's grid {tuple(image.shape[1:])}, got "
            f"{tuple(logits.shape[1:])}."
        )
    probs = torch.sigmoid(logits) if sigmoid else logits
    return (probs > threshold).to(image.device)


def region_dice(pred: torch.Tensor, label: torch.Tensor, ignore_empty: bool = False) -> torch.Tensor:
    """Dice of each region (channel) of binary masks with MONAI's ``DiceMetric``: ``2 |P & G| / (|P| + |G|)``.

    Args:
        pred: ``(C, *S)`` binary prediction (bool or {0, 1}).
        label: ``(C, *S)`` binary label.
        ignore_empty: MONAI's option: True gives NaN for an empty label; False (BraTS): an empty label gives 1 when
            the prediction is empty too, else 0.

    Returns:
        ``(C,)`` float64.

    Example::

        >>> region_dice(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 0, 0]]))
        tensor([0.6667], dtype=torch.float64)
    """
    pred, label = torch.as_tensor(pred), torch.as_tensor(label)
    if pred.shape != label.shape or pred.ndim < 2:
        raise ValueError(
            f"region_dice expects pred and label of one (C, *S) shape, got {tuple(pred.shape)} and {tuple(label.shape)}."
        )
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=ignore_empty)
    dice = metric(pred[None].double(), label[None].to(pred.device).double())
    return torch.as_tensor(dice).reshape(-1).double().cpu()


def load_segmenter(
    network: nn.Module,
    checkpoint: str | os.PathLike,
    device: torch.device | str | None = None,
    option: str = "segmenter_checkpoint",
) -> nn.Module:
    """The frozen downstream segmenter: ``network`` with the weights of ``checkpoint`` (strict), in eval mode, with
    ``requires_grad`` off, on ``device``.

    Args:
        network: the segmenter's architecture (``configs/train_segmenter.json``'s ``segmenter_def``).
        checkpoint: the file ``train_segmenter.json`` writes (``models/segmenter.pt``: a ``CheckpointSaver``
            checkpoint holding ``"model"``) or a plain state dict.
        device: where the segmenter runs; None: where it is.
        option: the bundle option that points to the file, for the error message.

    Raises:
        FileNotFoundError: ``checkpoint`` is not a file (the message names it, what writes it and ``--<option>``).
        RuntimeError: the weights do not fit ``network``.

    Example::

        segmenter = load_segmenter(SegResNet(spatial_dims=2, in_channels=4, out_channels=3), "models/segmenter.pt")
    """
    path = require_checkpoint(checkpoint, option=option, written_by=_SEGMENTER_WRITER)
    network = load_model_weights(network, path, map_location="cpu")
    if device is not None:
        network = network.to(device)
    network.requires_grad_(False)
    return network.eval()


class DownstreamDiceMetric(CumulativeIterationMetric):
    """Downstream Dice of each item of a synthesis batch (BraSyn): the frozen ``segmenter`` on the case completed with
    the synthesis and on the case with all real contrasts, Dice against the case's label per region.

    Inputs: ``y_pred`` ``(B, M, *S)`` the synthesis (the evaluator's ``pred``), ``y`` ``(B, M, *S)`` the real
    contrasts, and the keywords (handed from the batch by
    :class:`~monai_msgldm.evaluation.ExtraInputMetricHandler`) ``available`` ``(B, M)`` bool, ``seg`` ``(B, 3, *S)``
    the label (TC, WT, ET as ``ConvertToMultiChannelBasedOnBratsClassesd`` makes it; > 0.5 is in) and, optionally,
    ``case`` (B case names). The completed case is :func:`complete_case` (the given contrasts are taken from ``y``,
    so a synthesis that altered them does not count). The Dice with all real contrasts depends on the case only:
    it is computed once per case (the last case's value is kept, keyed by its name and the sum of its voxels;
    without ``case`` it is recomputed per item) and repeated beside every scenario.

    Result per item and contrast: :data:`DOWNSTREAM_DICE_NAMES` (the same six values on every missing contrast of the
    item, NaN on the given ones: the layout of the other synthesis metrics, one row per missing target);
    :meth:`aggregate`: the mean over items (scenarios) of the finite ``dice_wt``.

    Args:
        segmenter: the frozen segmenter (:func:`load_segmenter`); ``(1, M, *S') -> (1, 3, *S')`` logits.
        inferer: how it runs on a case; None: slice-wise (see :func:`segment_case`).
        sigmoid: apply a sigmoid to its outputs.
        threshold: probability threshold of the masks.
        ignore_empty: see :func:`region_dice` (default False: BraTS's convention for an empty label).
        slice_axis: spatial axis of the slices of the default inferer.
        slice_batch_size: slices per segmenter call of the default inferer.

    Example::

        metric = DownstreamDiceMetric(load_segmenter(segresnet, "models/segmenter.pt"))
        metric(pred, truth, available=torch.tensor([[True, True, True, False]]), seg=seg, case=["BraTS20_001"])
        metric.get_buffer()  # (1, 4, 6): NaN for t1, t1ce, t2; Dice of the completed and the real case for flair
    """

    value_names: tuple[str, ...] = DOWNSTREAM_DICE_NAMES
    aggregate_name: str = "dice_wt"

    def __init__(
        self,
        segmenter: nn.Module,
        inferer: Inferer | None = None,
        sigmoid: bool = True,
        threshold: float = 0.5,
        ignore_empty: bool = False,
        slice_axis: int = -1,
        slice_batch_size: int = 32,
    ) -> None:
        super().__init__()
        if not isinstance(segmenter, nn.Module):
            raise ValueError(
                f"DownstreamDiceMetric expects segmenter to be a torch module, got {type(segmenter).__name__}."
            )
        if isinstance(slice_batch_size, bool) or not isinstance(slice_batch_size, int) or slice_batch_size < 1:
            raise ValueError(f"DownstreamDiceMetric expects slice_batch_size >= 1, got {slice_batch_size!r}.")
        self.segmenter = segmenter
        self.inferer = inferer
        self.sigmoid = bool(sigmoid)
        self.threshold = float(threshold)
        self.ignore_empty = bool(ignore_empty)
        self.slice_axis = int(slice_axis)
        self.slice_batch_size = slice_batch_size
        self._real: tuple[Any, torch.Tensor] | None = None

    def reset(self) -> None:
        super().reset()
        self._real = None

    def case_dice(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """``(3,)`` Dice (TC, WT, ET) of the segmenter on one ``(M, *S)`` case against its ``(3, *S)`` label."""
        masks = segment_case(
            self.segmenter, image, self.inferer, self.sigmoid, self.threshold, self.slice_axis, self.slice_batch_size
        )
        if masks.shape[0] != len(BRATS_REGIONS):
            raise ValueError(
                f"DownstreamDiceMetric expects a segmenter with {len(BRATS_REGIONS)} outputs (TC, WT, ET), got "
                f"{masks.shape[0]}."
            )
        return region_dice(masks, torch.as_tensor(seg).to(masks.device) > 0.5, self.ignore_empty)

    def _compute_tensor(  # type: ignore[override]
        self,
        y_pred: torch.Tensor,
        y: torch.Tensor | None = None,
        available: Any = None,
        seg: Any = None,
        case: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        name = type(self).__name__
        mask = check_synthesis_inputs(name, y_pred, y, available)
        if seg is None:
            raise ValueError(
                f"{name} expects the case's label 'seg' (B, 3, *spatial), got None: the downstream Dice needs the "
                "segmentation of every test case (seg_key)."
            )
        seg = torch.as_tensor(seg)
        if (
            seg.ndim != y.ndim
            or seg.shape[0] != y.shape[0]
            or seg.shape[1] != len(BRATS_REGIONS)
            or seg.shape[2:] != y.shape[2:]
        ):
            raise ValueError(
                f"{name} expects seg of shape ({y.shape[0]}, {len(BRATS_REGIONS)}, *{tuple(y.shape[2:])}), got "
                f"{tuple(seg.shape)}."
            )
        names = [case] * y.shape[0] if isinstance(case, str) else (None if case is None else list(case))
        if names is not None and len(names) != y.shape[0]:
            raise ValueError(f"{name} expects {y.shape[0]} case names, got {len(names)}.")
        out = torch.full((*y.shape[:2], len(self.value_names)), math.nan, dtype=torch.float64)
        for b in range(y.shape[0]):
            missing = torch.nonzero(~mask[b]).flatten().tolist()
            if not missing:
                continue
            completed = complete_case(y_pred[b], y[b], mask[b])
            dice = self.case_dice(completed, seg[b])
            out[b, missing] = torch.cat([dice, self._real_dice(y[b], seg[b], None if names is None else names[b])])
        return out

    def _real_dice(self, truth: torch.Tensor, seg: torch.Tensor, case: str | None) -> torch.Tensor:
        key = None if case is None else (str(case), tuple(truth.shape), float(truth.double().sum()))
        if key is not None and self._real is not None and self._real[0] == key:
            return self._real[1]
        dice = self.case_dice(truth, seg)
        self._real = (key, dice)
        return dice

    def aggregate(self) -> float:  # type: ignore[override]
        """The mean over items of the finite :attr:`aggregate_name` (one value per item: the scenario's), NaN when
        none: a scalar, as MONAI's workflows compare key metrics. Every value stays in :meth:`get_buffer`."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError(f"{type(self).__name__} has no value to aggregate: it was called on no batch.")
        per_item = data[..., self.value_names.index(self.aggregate_name)].nan_to_num(nan=-math.inf).amax(dim=1)
        mean = finite_stats(per_item)["mean"]
        return math.nan if mean is None else mean
