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
"""Stage 1 engines: train and evaluate the structure/style network (segmentation, style and structure losses)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.losses import DiceCELoss
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from monai_msgldm.engines.utils import (
    PrepareMultiModalBatch,
    attach_mask_sampler,
    autocast_context,
    backward_and_step,
    check_engine_seed,
    input_masks,
    resolve_amp,
    resolve_cpu_amp,
    unwrap_module,
)
from monai_msgldm.losses import StructureAwareLoss, StyleConsistencyLoss
from monai_msgldm.networks.nets.structure_style_net import StructureStyleNet

__all__ = ["StructureStyleTrainer", "StructureStyleEvaluator", "StructureStyleKeys"]


class StructureStyleKeys:
    """Keys of :py:class:`StructureStyleTrainer` / :py:class:`StructureStyleEvaluator` outputs."""

    AVAILABLE = "available"
    RECONSTRUCTION = "reconstruction"
    SEGMENTATION = "loss_segmentation"
    STYLE = "loss_style"
    STRUCTURE = "loss_structure"


def _as_structure_net(network: nn.Module, name: str) -> StructureStyleNet:
    inner = unwrap_module(network)
    if not isinstance(inner, StructureStyleNet):
        raise ValueError(
            f"{name} expects network to be a StructureStyleNet (possibly wrapped in DistributedDataParallel), "
            f"got {type(inner).__name__}."
        )
    if inner.in_channels != 1:
        raise ValueError(f"{name} expects a StructureStyleNet with in_channels=1, got {inner.in_channels}.")
    return inner


def _check_weight(name: str, key: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < float("inf"):
        raise ValueError(f"{name} expects {key} to be a finite float >= 0, got {value!r}.")
    return float(value)


def _check_seg(name: str, seg: torch.Tensor | None, logits: torch.Tensor, seg_key: str) -> torch.Tensor:
    if seg is None:
        raise ValueError(f"{name} expects the segmentation target under batch key '{seg_key}', got none.")
    if seg.shape[0] != logits.shape[0] or seg.shape[1] != logits.shape[1] or seg.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"{name} expects '{seg_key}' of shape {tuple(logits.shape)} (as many channels as the network's "
            f"seg_out_channels), got {tuple(seg.shape)}."
        )
    return seg


class StructureStyleTrainer(SupervisedTrainer):
    """Stage-1 trainer of MSG-LDM: the :py:class:`StructureStyleNet` with segmentation, style and structure losses.

    Per iteration, a random availability mask is drawn per sample among the modalities the data has (0..M-1 hidden,
    at least ``min_available`` kept, :py:class:`RandModalityDropout` semantics: given in the batch under
    ``input_mask_key``, drawn there by ``RandModalityDropoutd(mask_key=...)``, or drawn here by
    :py:class:`ModalityMaskSampler`);
    the network runs on all images with that mask (the structure branch sees only the kept modalities, the style
    encoders see every image) and the loss is::

        seg_weight * seg_loss(segmentation logits, seg)
        + style_weight * style_loss(style codes (B, M, D), data-availability mask)
        + structure_weight * structure_loss(reconstruction, image)   # over every (sample, modality) the data has

    The reconstruction term covers the modalities hidden from the input too: their ground truth exists, and
    rendering them from ``F_s`` plus their style code is what makes ``F_s`` modality-invariant.

    Incomplete studies (cases that lack some contrasts, ``build_datalist(..., allow_incomplete=True)``): both the
    reconstruction and the style term count only the contrasts the DATA has (``available``): the reconstructions
    and style codes of absent contrasts (computed from their -1 fills) get exactly zero gradient. The input mask is
    drawn among the present contrasts and keeps at least one, so a sample with a single present contrast is given
    that contrast and trains its segmentation and reconstruction from it only. Masks are drawn from
    ``seed + epoch`` (re-seeded at each epoch start), so runs, and runs resumed from a checkpoint, are reproducible.

    ``engine.state.output``: ``image`` ``(B, M, *S)``, ``label`` (``seg``), ``pred`` (segmentation logits),
    ``available`` (the drawn input mask), ``reconstruction``, ``loss`` (tensor) and the float components
    ``loss_segmentation``, ``loss_style``, ``loss_structure``.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: batches of dicts with ``image`` ``(B, M, *S)``, ``available`` ``(B, M)`` and ``seg``
            ``(B, C, *S)`` (C = the network's ``seg_out_channels``, e.g. 3 for TC/WT/ET).
        network: a :py:class:`StructureStyleNet` (or a ``DistributedDataParallel`` around one).
        optimizer: optimizer of the network parameters (add ``style_loss.parameters()`` when the style loss has a
            learnable temperature).
        seg_loss: default MONAI ``DiceCELoss(sigmoid=True, lambda_ce=0.5)`` (the authors' Dice + 0.5 BCE).
        style_loss: default :py:class:`StyleConsistencyLoss` (temperature 0.07).
        structure_loss: default :py:class:`StructureAwareLoss` (L1 + frequency SSIM).
        seg_weight, style_weight, structure_weight: loss weights (paper: 2.0, 0.1, 1.0); a term with weight 0 is
            skipped (and ``seg`` is then not needed).
        min_available: the least number of modalities kept in the input mask (>= 1).
        max_missing: the most modalities hidden per sample; ``None`` means ``M - min_available``.
        seed: seed of the mask draws.
        input_mask_key: batch key of input masks drawn in the data (``RandModalityDropoutd(mask_key=...)`` in the
            transform chain, what the bundle does); then ``min_available``/``max_missing`` are the transform's and the
            trainer draws nothing. None: the trainer draws the masks (:py:class:`ModalityMaskSampler`).
        image_key, available_key, seg_key: batch keys.
        amp: mixed precision; only on CUDA.
        cpu_amp: bfloat16 autocast on the CPU (about 1.5-2x faster with Intel AMX: ``monai_msgldm.utils.cpu_has_amx``;
            ignored on CUDA).
        kwargs: further ``SupervisedTrainer`` arguments.

    Example::

        trainer = StructureStyleTrainer(device="cuda", max_epochs=100, train_data_loader=loader, network=net,
                                        optimizer=torch.optim.Adam(net.parameters(), 1e-4, betas=(0.5, 0.9)))
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        seg_loss: Callable | None = None,
        style_loss: Callable | None = None,
        structure_loss: Callable | None = None,
        seg_weight: float = 2.0,
        style_weight: float = 0.1,
        structure_weight: float = 1.0,
        min_available: int = 1,
        max_missing: int | None = None,
        seed: int = 0,
        image_key: str = "image",
        available_key: str = "available",
        seg_key: str = "seg",
        input_mask_key: str | None = None,
        amp: bool = False,
        cpu_amp: bool = False,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        net = _as_structure_net(network, name)
        weights = {
            "seg_weight": _check_weight(name, "seg_weight", seg_weight),
            "style_weight": _check_weight(name, "style_weight", style_weight),
            "structure_weight": _check_weight(name, "structure_weight", structure_weight),
        }
        if not any(weights.values()):
            raise ValueError(f"{name} expects at least one positive loss weight, got {weights}.")
        seed = check_engine_seed(name, seed)
        kwargs.setdefault(
            "prepare_batch",
            PrepareMultiModalBatch(
                image_key=image_key,
                available_key=available_key,
                seg_key=seg_key,
                input_mask_key=input_mask_key,
                track_meta=False,
            ),
        )
        self.cpu_amp = resolve_cpu_amp(cpu_amp, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=DiceCELoss(sigmoid=True, lambda_ce=0.5) if seg_loss is None else seg_loss,
            amp=resolve_amp(amp, device),
            **kwargs,
        )
        self.seg_weight = weights["seg_weight"]
        self.style_weight = weights["style_weight"]
        self.structure_weight = weights["structure_weight"]
        self.style_loss = StyleConsistencyLoss() if style_loss is None else style_loss
        self.structure_loss = (
            StructureAwareLoss(spatial_dims=net.spatial_dims) if structure_loss is None else structure_loss
        )
        if isinstance(self.style_loss, nn.Module):
            self.style_loss.to(self.state.device)
        self.seg_key = seg_key
        attach_mask_sampler(self, min_available, max_missing, seed, input_mask_key)

    def compute_losses(
        self, outputs: dict, images: torch.Tensor, data_available: torch.Tensor, seg: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total loss and its (unweighted) components from a network output dict.

        Args:
            outputs: ``StructureStyleNet`` output (``segmentation``, ``style``, ``reconstruction``).
            images: ground-truth images ``(B, M, *S)``.
            data_available: ``(B, M)`` bool, the modalities the data has: the style and reconstruction terms use
                only these (absent contrasts add neither value nor gradient).
            seg: segmentation target ``(B, C, *S)`` or ``None`` (allowed when ``seg_weight == 0``).

        Returns:
            ``(loss, {"loss_segmentation": ..., "loss_style": ..., "loss_structure": ...})`` (only the terms with a
            positive weight).
        """
        name = type(self).__name__
        components: dict[str, torch.Tensor] = {}
        loss = images.new_zeros((), dtype=torch.float32)
        if self.seg_weight > 0:
            logits = outputs["segmentation"].float()
            target = _check_seg(name, seg, logits, self.seg_key)
            components[StructureStyleKeys.SEGMENTATION] = self.loss_function(logits, target.float()).mean()
            loss = loss + self.seg_weight * components[StructureStyleKeys.SEGMENTATION]
        if self.style_weight > 0:
            components[StructureStyleKeys.STYLE] = self.style_loss(outputs["style"].float(), data_available)
            loss = loss + self.style_weight * components[StructureStyleKeys.STYLE]
        if self.structure_weight > 0:
            recon = outputs["reconstruction"].float()[data_available].unsqueeze(1)
            truth = images.float()[data_available].unsqueeze(1)
            components[StructureStyleKeys.STRUCTURE] = self.structure_loss(recon, truth)
            loss = loss + self.structure_weight * components[StructureStyleKeys.STRUCTURE]
        return loss, components

    def _iteration(self, engine: StructureStyleTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("StructureStyleTrainer must be given batch data for the current iteration.")
        images, seg, masks, _ = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        data_available, mask = masks[0], input_masks(engine, masks)
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: seg, StructureStyleKeys.AVAILABLE: mask}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(engine):
            outputs = engine.network(images, mask)
            engine.state.output[Keys.PRED] = outputs["segmentation"]
            engine.state.output[StructureStyleKeys.RECONSTRUCTION] = outputs["reconstruction"]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss, components = engine.compute_losses(outputs, images, data_available, seg)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward_and_step(engine, loss)
        for key in (StructureStyleKeys.SEGMENTATION, StructureStyleKeys.STYLE, StructureStyleKeys.STRUCTURE):
            engine.state.output[key] = float(components[key].detach()) if key in components else 0.0
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class StructureStyleEvaluator(SupervisedEvaluator):
    """Stage-1 evaluator: segmentation (and reconstruction) from a fixed set of available modalities.

    The input mask is the data-availability mask, AND-ed with ``available`` when given (a fixed scenario, e.g.
    ``[True, True, True, False]`` to segment without FLAIR). ``engine.state.output``: ``pred`` = ``sigmoid(logits)
    > threshold`` as float (or the probabilities when ``threshold`` is ``None``), ``label`` = ``seg``, ``image``,
    ``available`` (the mask used) and ``reconstruction`` ``(B, M, *S)``. Key metric: ``MeanDice(include_background=True,
    output_transform=from_engine(["pred", "label"]))``.

    Args:
        device: device to evaluate on.
        val_data_loader: batches of dicts with ``image``, ``available`` and ``seg``.
        network: the :py:class:`StructureStyleNet` (or DDP wrapper).
        available: optional fixed ``(M,)`` availability scenario; every sample must keep at least one modality.
        threshold: probability threshold of the prediction, or ``None``.
        image_key, available_key, seg_key: batch keys.
        amp: mixed precision; only on CUDA.
        cpu_amp: bfloat16 autocast on the CPU (about 1.5-2x faster with Intel AMX: ``monai_msgldm.utils.cpu_has_amx``;
            ignored on CUDA).
        kwargs: further ``SupervisedEvaluator`` arguments.

    Example::

        evaluator = StructureStyleEvaluator(device="cuda", val_data_loader=val_loader, network=net, key_val_metric={
            "val_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]))})
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable,
        network: nn.Module,
        available: Sequence[bool] | None = None,
        threshold: float | None = 0.5,
        image_key: str = "image",
        available_key: str = "available",
        seg_key: str = "seg",
        amp: bool = False,
        cpu_amp: bool = False,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        net = _as_structure_net(network, name)
        scenario = None
        if available is not None:
            scenario = torch.as_tensor(list(available))
            if tuple(scenario.shape) != (net.num_modalities,) or not bool(((scenario == 0) | (scenario == 1)).all()):
                raise ValueError(
                    f"{name} expects available to be None or {net.num_modalities} booleans, got {list(available)!r}."
                )
            if not bool(scenario.any()):
                raise ValueError(f"{name} expects available to keep at least one modality, got {list(available)!r}.")
            scenario = scenario != 0
        if threshold is not None and not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"{name} expects threshold None or in (0, 1), got {threshold!r}.")
        kwargs.setdefault(
            "prepare_batch",
            PrepareMultiModalBatch(image_key=image_key, available_key=available_key, seg_key=seg_key),
        )
        self.cpu_amp = resolve_cpu_amp(cpu_amp, device)
        super().__init__(
            device=device, val_data_loader=val_data_loader, network=network, amp=resolve_amp(amp, device), **kwargs
        )
        self.scenario = scenario
        self.threshold = None if threshold is None else float(threshold)
        self.seg_key = seg_key

    def _iteration(self, engine: StructureStyleEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("StructureStyleEvaluator must be given batch data for the current iteration.")
        images, seg, (data_available,), _ = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        mask = data_available
        if engine.scenario is not None:
            mask = mask & engine.scenario.to(mask.device)[None]
            empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
            if empty:
                raise ValueError(
                    f"StructureStyleEvaluator expects every sample to keep a modality of the scenario "
                    f"{engine.scenario.tolist()}, got none in batch rows {empty}."
                )
        with engine.mode(engine.network), torch.no_grad(), autocast_context(engine):
            outputs = engine.network(images, mask)
        logits = outputs["segmentation"].float()
        seg = _check_seg(type(engine).__name__, seg, logits, engine.seg_key)
        prob = torch.sigmoid(logits)
        pred = prob if engine.threshold is None else (prob > engine.threshold).float()
        engine.state.output = {
            Keys.IMAGE: images,
            Keys.LABEL: seg,
            Keys.PRED: pred,
            StructureStyleKeys.AVAILABLE: mask,
            StructureStyleKeys.RECONSTRUCTION: outputs["reconstruction"].float(),
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
