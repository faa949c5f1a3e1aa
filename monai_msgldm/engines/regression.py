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
"""Trainer of the regression baseline (:py:class:`~monai_msgldm.networks.nets.RegressionSynthesisNet`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from monai_msgldm.engines.utils import (
    PrepareMultiModalBatch,
    attach_mask_sampler,
    autocast_context,
    backward_and_step,
    check_engine_seed,
    input_masks,
    present_contrast_loss,
    resolve_amp,
    resolve_cpu_amp,
    unwrap_module,
)

__all__ = ["RegressionSynthesisTrainer"]


class RegressionSynthesisTrainer(SupervisedTrainer):
    """Trainer of the regression baseline: a network ``network(images, available) -> (B, M, *S)`` (a
    :py:class:`~monai_msgldm.networks.nets.RegressionSynthesisNet`) trained to predict every contrast from a random
    subset of them, with an L1 loss by default.

    Per iteration, an input mask of ``min_available``..M modalities is drawn per sample among those the data has
    (given in the batch under ``input_mask_key``, drawn there by ``RandModalityDropoutd(mask_key=...)``, or drawn
    here by :py:class:`ModalityMaskSampler`, re-seeded with ``seed + epoch``), the prediction is
    ``engine.network(images, mask)`` (so a ``DistributedDataParallel`` wrapper stays in the forward pass) and the
    loss is ``loss_function(prediction, images)`` over the M contrasts (the reconstructed inputs and the synthesized
    missing ones, as in MM-GAN), then averaged (``.mean()``, for a loss with ``reduction="none"``). Contrasts the
    DATA lacks (incomplete studies) have no ground truth and do not count
    (:py:func:`~monai_msgldm.engines.utils.present_contrast_loss`): the loss is over the present contrasts only (for
    L1, the mean over their pixels) and the absent ones get exactly zero gradient; with every contrast present it
    is ``loss_function(prediction, images)`` unchanged. The input mask keeps at least one present contrast, so a
    sample with a single present contrast only trains its reconstruction.

    ``engine.state.output``: ``image``, ``available`` (drawn mask), ``pred`` (the prediction) and ``loss``.
    :py:attr:`ema_model` is ``None`` (no EMA; the bundle's checkpoint and served-model expressions read it).

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: batches of dicts with ``image`` ``(B, M, *S)`` and ``available`` ``(B, M)``.
        network: a :py:class:`~monai_msgldm.networks.nets.RegressionSynthesisNet` (or a DDP wrapper).
        optimizer: optimizer of ``network.parameters()``.
        loss_function: ``(prediction, target) -> scalar``; default ``torch.nn.L1Loss()``.
        min_available: the least number of modalities kept in the input mask (>= 1).
        max_missing: the most hidden per sample; ``None`` means ``M - min_available``.
        seed: seed of the mask draws.
        input_mask_key: batch key of input masks drawn in the data (``RandModalityDropoutd(mask_key=...)`` in the
            transform chain, what the bundle does); then ``min_available``/``max_missing`` are the transform's and the
            trainer draws nothing. None: the trainer draws the masks (:py:class:`ModalityMaskSampler`).
        image_key, available_key: batch keys.
        amp: mixed precision; only on CUDA.
        cpu_amp: bfloat16 autocast on the CPU (about 1.5-2x faster with Intel AMX: ``monai_msgldm.utils.cpu_has_amx``;
            ignored on CUDA).
        kwargs: further ``SupervisedTrainer`` arguments.

    Example::

        net = RegressionSynthesisNet(spatial_dims=2)
        trainer = RegressionSynthesisTrainer(device="cuda", max_epochs=100, train_data_loader=loader,
                                             network=net.to("cuda"), optimizer=torch.optim.Adam(net.parameters(), 1e-4))
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable | None = None,
        min_available: int = 1,
        max_missing: int | None = None,
        seed: int = 0,
        image_key: str = "image",
        available_key: str = "available",
        input_mask_key: str | None = None,
        amp: bool = False,
        cpu_amp: bool = False,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        inner = unwrap_module(network)
        if not isinstance(inner, nn.Module) or not hasattr(inner, "num_modalities"):
            raise ValueError(
                f"{name} expects network to be a RegressionSynthesisNet (an nn.Module with num_modalities, possibly "
                f"wrapped in DistributedDataParallel), got {type(inner).__name__}."
            )
        check_engine_seed(name, seed)
        if loss_function is not None and not callable(loss_function):
            raise ValueError(
                f"{name} expects loss_function to be callable or None, got {type(loss_function).__name__}."
            )
        kwargs.setdefault(
            "prepare_batch",
            PrepareMultiModalBatch(
                image_key=image_key, available_key=available_key, input_mask_key=input_mask_key, track_meta=False
            ),
        )
        self.cpu_amp = resolve_cpu_amp(cpu_amp, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=nn.L1Loss() if loss_function is None else loss_function,
            amp=resolve_amp(amp, device),
            **kwargs,
        )
        attach_mask_sampler(self, min_available, max_missing, seed, input_mask_key)

    @property
    def ema_model(self) -> nn.Module | None:
        """Always ``None``: the regression baseline keeps no EMA copy."""
        return None

    def _iteration(self, engine: RegressionSynthesisTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("RegressionSynthesisTrainer must be given batch data for the current iteration.")
        images, _, masks, _ = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        data_available, mask = masks[0], input_masks(engine, masks)
        engine.state.output = {Keys.IMAGE: images, "available": mask}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(engine):
            prediction = engine.network(images, mask)
            engine.state.output[Keys.PRED] = prediction
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            # only the contrasts the data has count (absent ones have no ground truth), see present_contrast_loss
            target = images.to(prediction.dtype)
            loss = present_contrast_loss(engine.loss_function, prediction, target, data_available).mean()
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward_and_step(engine, loss)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
