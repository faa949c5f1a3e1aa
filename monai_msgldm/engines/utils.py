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
"""Pieces shared by the MSG-LDM engines: batch preparation, availability-mask sampling, KL term, AMP and EMA."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.engines.utils import IterationEvents, PrepareBatchExtraInput
from monai.transforms import Randomizable
from monai.utils import convert_to_tensor

from monai_msgldm.inferers.sampler import unwrap_network as unwrap_module  # one unwrapping, shared with the inferers
from monai_msgldm.transforms import RandModalityDropout
from monai_msgldm.utils.availability import validate_availability
from monai_msgldm.utils.precision import sampling_autocast

__all__ = [
    "backward_and_step",
    "ModalityMaskSampler",
    "PrepareMultiModalBatch",
    "attach_ema",
    "autocast_context",
    "evaluate_with_ema_weights",
    "input_masks",
    "kl_divergence",
    "present_contrast_loss",
    "reseed_mask_sampler_every_epoch",
    "resolve_amp",
    "resolve_cpu_amp",
    "unwrap_module",
]


def resolve_amp(amp: bool, device: str | torch.device | None) -> bool:
    """Whether mixed precision is really used: only when requested AND the device is CUDA (CPU runs fp32 silently)."""
    if not amp or device is None:
        return False
    return torch.device(device).type == "cuda"


def resolve_cpu_amp(cpu_amp: bool, device: str | torch.device | None) -> bool:
    """Whether bfloat16 autocast on the CPU is really used: only when requested AND the device is the CPU (None
    counts as the CPU, where MONAI's engines then run)."""
    return bool(cpu_amp) and (device is None or torch.device(device).type == "cpu")


def autocast_context(engine: Any) -> AbstractContextManager:
    """``torch.autocast("cuda", **engine.amp_kwargs)`` when ``engine.amp`` is set, bfloat16
    ``torch.autocast("cpu")`` when ``engine.cpu_amp`` is (:func:`resolve_cpu_amp`), a no-op context otherwise."""
    if getattr(engine, "amp", False):
        return torch.autocast("cuda", **getattr(engine, "amp_kwargs", {}))
    return sampling_autocast("cpu", amp=False, cpu_amp=getattr(engine, "cpu_amp", False))


def backward_and_step(engine: Any, loss: torch.Tensor) -> None:
    """Backward pass and optimizer step of a MONAI trainer, through its ``GradScaler`` when AMP is on, firing
    MONAI's ``BACKWARD_COMPLETED`` event in between (as ``SupervisedTrainer`` does)."""
    if engine.scaler is not None:
        engine.scaler.scale(loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.scaler.step(engine.optimizer)
        engine.scaler.update()
    else:
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of the diagonal Gaussian posterior ``N(z_mu, z_sigma^2)`` from ``N(0, 1)``.

    Summed over the latent channels and space, averaged over the batch (MONAI's generative tutorials' convention).

    Args:
        z_mu: posterior means ``(N, C, *L)``.
        z_sigma: posterior standard deviations, same shape, > 0.

    Returns:
        A scalar tensor.
    """
    if z_mu.shape != z_sigma.shape:
        raise ValueError(
            f"kl_divergence expects z_mu and z_sigma of the same shape, got {tuple(z_mu.shape)} and "
            f"{tuple(z_sigma.shape)}."
        )
    var = z_sigma.float().pow(2)
    kl = 0.5 * (z_mu.float().pow(2) + var - torch.log(var) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


def present_contrast_loss(
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    prediction: torch.Tensor,
    target: torch.Tensor,
    available: torch.Tensor,
) -> torch.Tensor:
    """``loss_function(prediction, target)`` over the channels of the contrasts the data has (incomplete studies).

    ``prediction`` and ``target`` hold ``C`` channels per contrast in contrast-major blocks (channels ``m * C`` to
    ``(m + 1) * C - 1`` belong to contrast ``m``): the joint latent of
    :py:class:`~monai_msgldm.networks.nets.ModalityWiseAutoencoder` (``C = latent_channels``), or the stacked images
    (``C = 1``). A contrast the data lacks (``available`` False; its image is the -1 fill of the preprocessing) has no
    ground truth, so its channels must not count:

    - every contrast present: ``loss_function(prediction, target)``, the call as it is (bit-identical to not using
      this function);
    - otherwise: ``loss_function(prediction[keep].unsqueeze(1), target[keep].unsqueeze(1))`` with ``keep =
      available.repeat_interleave(C, dim=1)``: the present channels as a batch of single-channel images
      ``(K, 1, *S)``. For a mean-reduced element-wise loss (``MSELoss``, ``L1Loss``) this is the mean over the present
      channels only, and the gradient with respect to the absent channels is exactly zero (they never enter it).

    Args:
        loss_function: ``(prediction, target) -> loss``.
        prediction: ``(B, M * C, *S)``.
        target: same shape as ``prediction``.
        available: ``(B, M)`` bool (or 0/1), the contrasts the data has, at least one per row.

    Returns:
        What ``loss_function`` returns (a scalar for a reducing loss).

    Example::

        prediction, target = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)  # 4 contrasts x 2 latent channels
        available = torch.tensor([[True, False, True, True], [True, True, True, True]])
        loss = present_contrast_loss(torch.nn.MSELoss(), prediction, target, available)
        # == mean of (prediction - target) ** 2 over the 14 present channels
    """
    if prediction.shape != target.shape or prediction.ndim < 2:
        raise ValueError(
            f"present_contrast_loss expects prediction and target of the same shape (B, M * C, *S), got "
            f"{tuple(prediction.shape)} and {tuple(target.shape)}."
        )
    available = torch.as_tensor(available, device=prediction.device)
    b, channels = prediction.shape[:2]
    if available.ndim != 2 or available.shape[0] != b or available.shape[1] < 1 or channels % available.shape[1]:
        raise ValueError(
            f"present_contrast_loss expects available of shape (B, M) with B = {b} and M dividing the {channels} "
            f"channels of prediction, got {tuple(available.shape)}."
        )
    available = available != 0
    if bool(available.all()):
        return loss_function(prediction, target)
    keep = available.repeat_interleave(channels // available.shape[1], dim=1)
    return loss_function(prediction[keep].unsqueeze(1), target[keep].unsqueeze(1))


class PrepareMultiModalBatch(PrepareBatchExtraInput):
    """``prepare_batch`` for the MSG-LDM batch format: MONAI's ``PrepareBatchExtraInput`` with the availability mask
    as the extra input, in MONAI's 4-tuple convention ``(inputs, targets, args, kwargs)``.

    The batch is a dict with the stacked modalities ``image`` ``(B, M, *S)`` in [-1, 1], the availability mask
    ``available`` ``(B, M)`` (which modalities the DATA has), optionally the segmentation ``seg`` ``(B, C, *S)`` and,
    with ``input_mask_key``, the input masks drawn in the data (``RandModalityDropoutd(mask_key=...)``: which of the
    available modalities the network is given). Returns ``(image, seg or None, (available,), {})`` on ``device``, or
    ``(image, seg or None, (available, input_mask), {})`` with ``input_mask_key``. What it adds to MONAI's class: the
    image and segmentation keys are configurable (MONAI's reads ``image`` / ``label``), a batch without the mask means
    every modality is present, and the masks are validated here, where they enter the engine
    (:py:func:`monai_msgldm.utils.validate_availability`: shape, 0/1 values, one modality per row; the input mask a
    subset of the data mask).

    Args:
        image_key: key of the stacked images.
        available_key: key of the data-availability mask.
        seg_key: key of the segmentation target (may be absent from the batch).
        input_mask_key: key of the input masks drawn in the data, required in every batch when given; None: the
            batch has none (the trainer draws them, :py:class:`ModalityMaskSampler`).
        track_meta: keep the images and segmentation as the collated ``MetaTensor`` s (True) or return plain
            tensors (False). Every operation on a ``MetaTensor`` also updates its meta data, which costs time in a
            network's hundreds of operations per iteration; the trainers use ``False`` (their networks never read
            the meta data; the batch itself keeps it).

    Example::

        prepare = PrepareMultiModalBatch()
        images, seg, (available,), _ = prepare({"image": torch.rand(2, 4, 16, 16)}, "cpu")
        # available: all True (2, 4)
    """

    def __init__(
        self,
        image_key: str = "image",
        available_key: str = "available",
        seg_key: str = "seg",
        input_mask_key: str | None = None,
        track_meta: bool = True,
    ) -> None:
        keys = (image_key, available_key, seg_key)
        if input_mask_key is not None:
            if input_mask_key in keys:
                raise ValueError(
                    f"PrepareMultiModalBatch expects input_mask_key to differ from image_key, available_key and "
                    f"seg_key {keys}, got {input_mask_key!r}."
                )
            keys += (input_mask_key,)
        super().__init__(extra_keys=keys)
        self.image_key = image_key
        self.available_key = available_key
        self.seg_key = seg_key
        self.input_mask_key = input_mask_key
        self.track_meta = bool(track_meta)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...], dict]:
        if not isinstance(batchdata, Mapping) or self.image_key not in batchdata:
            got = list(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise ValueError(f"PrepareMultiModalBatch expects a dict batch with key '{self.image_key}', got {got}.")
        images = torch.as_tensor(batchdata[self.image_key])
        if images.ndim < 3:
            raise ValueError(
                f"PrepareMultiModalBatch expects '{self.image_key}' of shape (B, M, *spatial), got {tuple(images.shape)}."
            )
        batch = {
            "image": images,  # where MONAI's default_prepare_batch looks
            self.image_key: images,
            self.available_key: batchdata.get(self.available_key),
            self.seg_key: batchdata.get(self.seg_key),
        }
        if batch[self.available_key] is None:
            batch[self.available_key] = torch.ones(images.shape[:2], dtype=torch.bool)
        if self.input_mask_key is not None:
            if batchdata.get(self.input_mask_key) is None:
                raise ValueError(
                    f"PrepareMultiModalBatch expects the input masks under input_mask_key '{self.input_mask_key}' in "
                    f"every batch (RandModalityDropoutd(mask_key='{self.input_mask_key}') in the transform chain), "
                    f"got keys {list(batchdata)}."
                )
            batch[self.input_mask_key] = batchdata[self.input_mask_key]
        _, _, (images, available, seg, *given), _ = super().__call__(batch, device, non_blocking, **kwargs)
        if not self.track_meta:
            images = convert_to_tensor(images, track_meta=False)
            seg = None if seg is None else convert_to_tensor(seg, track_meta=False)
        b, m = images.shape[:2]
        available = validate_availability(
            available, b, m, images.device, f"PrepareMultiModalBatch '{self.available_key}'"
        )
        if not given:
            return images, seg, (available,), {}
        input_mask = validate_availability(
            given[0], b, m, images.device, f"PrepareMultiModalBatch '{self.input_mask_key}'"
        )
        if bool((input_mask & ~available).any()):
            raise ValueError(
                f"PrepareMultiModalBatch expects the input masks '{self.input_mask_key}' to be subsets of the data "
                f"masks '{self.available_key}' (a contrast the data lacks cannot be given), got "
                f"{input_mask.int().tolist()} for {available.int().tolist()}."
            )
        return images, seg, (available, input_mask), {}


class ModalityMaskSampler(Randomizable):
    """Draws a random availability mask per sample among the modalities the data has.

    Each row is drawn with :py:class:`monai_msgldm.transforms.RandModalityDropout` semantics: ``0..max_missing``
    modalities are hidden, uniformly, among those available in the data, keeping at least ``min_available`` (a row
    with fewer data modalities than ``min_available`` is left as it is). The returned mask is never all-False and
    is a subset of the data mask: a contrast the data lacks (an incomplete study) is never offered as given.
    Randomness comes only from ``self.R`` (``set_random_state`` for reproducibility).

    Incomplete studies: a row whose data has a single contrast keeps it given (at least one given contrast, as the
    network needs one); the trainers' losses count the present contrasts only, so such a sample trains the
    reconstruction (stage 1, baseline) or the denoising (stage 2) of that one contrast and nothing for its missing
    ones, which have no ground truth.

    Args:
        min_available: the least number of modalities kept per sample (>= 1).
        max_missing: the most hidden per sample; ``None`` means ``M - min_available``.

    Example::

        sampler = ModalityMaskSampler(min_available=1).set_random_state(0)
        mask = sampler(torch.tensor([[True, True, True, True], [True, False, True, True]]))  # (2, 4) bool
    """

    def __init__(self, min_available: int = 1, max_missing: int | None = None) -> None:
        self.dropout = RandModalityDropout(prob=1.0, min_available=min_available, max_missing=max_missing)
        self.min_available = self.dropout.min_available
        self.max_missing = self.dropout.max_missing
        self.dropout.R = self.R

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Any:
        super().set_random_state(seed, state)
        self.dropout.R = self.R
        return self

    def randomize(self, data: Any = None) -> None:
        """Draws are made row by row in :py:meth:`__call__` (through the shared ``self.R``)."""
        self.dropout.randomize(data)

    def __call__(self, available: torch.Tensor) -> torch.Tensor:
        """
        Args:
            available: ``(B, M)`` bool (or 0/1) mask of the modalities the data has, at least one True per row.

        Returns:
            ``(B, M)`` bool tensor on the device of ``available``.
        """
        available = torch.as_tensor(available)
        if available.ndim != 2:
            raise ValueError(f"ModalityMaskSampler expects available of shape (B, M), got {tuple(available.shape)}.")
        rows = available.detach().cpu().numpy().astype(bool)
        empty = np.flatnonzero(~rows.any(axis=1))
        if empty.size:
            raise ValueError(
                f"ModalityMaskSampler expects at least one available modality per sample in available, "
                f"got none in rows {empty.tolist()}."
            )
        out = np.stack([self.dropout.draw_mask(row) for row in rows])
        return torch.as_tensor(out, dtype=torch.bool, device=available.device)


def attach_ema(
    engine: Engine,
    model: nn.Module,
    decay: float = 0.9999,
    name: str = "ema_momentum",
    event: Any = Events.ITERATION_COMPLETED,
) -> EMAHandler:
    """Attach ignite's :py:class:`ignite.handlers.EMAHandler` to ``engine`` for ``model`` with EMA decay ``decay``.

    The EMA update is ``ema = decay * ema + (1 - decay) * model`` after every iteration (ignite's ``momentum`` is
    ``1 - decay``). The averaged copy is ``handler.ema_model`` (an ``nn.Module``, in eval mode): add it to a MONAI
    ``CheckpointSaver``'s ``save_dict`` (and ``CheckpointLoader``'s ``load_dict`` to resume).

    Args:
        engine: the trainer.
        model: the module to average (a ``DistributedDataParallel`` wrapper is unwrapped by ignite).
        decay: EMA decay in (0, 1), e.g. 0.9999.
        name: ``engine.state`` attribute holding the momentum.
        event: when to update (default after every iteration).

    Returns:
        The attached handler.
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < float(decay) < 1.0:
        raise ValueError(f"attach_ema expects decay in (0, 1), got {decay!r}.")
    handler = EMAHandler(model, momentum=1.0 - float(decay))
    handler.attach(engine, name=name, warn_if_exists=False, event=event)
    return handler


def evaluate_with_ema_weights(evaluator: Engine, model: nn.Module, ema_model: nn.Module | None) -> None:
    """Make ``evaluator`` run with the EMA weights of ``model`` and put the trained weights back afterwards.

    When the evaluator starts, the state of ``model`` is copied aside and ``ema_model``'s state is loaded into it;
    when it completes (or fails), the copy is loaded back, so training continues on its own weights. Call this after
    the evaluator's own handlers are attached: a ``CheckpointSaver`` among them (e.g. the best-metric one) then
    saves the EMA weights that were scored. ``ema_model=None`` (EMA disabled) leaves the evaluator unchanged.

    Args:
        evaluator: the validation engine (e.g. the one a ``ValidationHandler`` runs).
        model: the module the evaluator's network uses (e.g. ``msgldm.unet``), possibly DDP-wrapped.
        ema_model: the averaged copy (``LatentDiffusionTrainer.ema_model``) with the same state keys, or ``None``.
    """
    if ema_model is None:
        return
    target = unwrap_module(model)
    source = unwrap_module(ema_model)
    if set(target.state_dict()) != set(source.state_dict()):
        raise ValueError("evaluate_with_ema_weights expects ema_model to have the same state keys as model.")
    saved: dict[str, torch.Tensor] = {}

    def _swap_in(_: Engine) -> None:
        saved.update({k: v.detach().clone() for k, v in target.state_dict().items()})
        target.load_state_dict(source.state_dict())

    def _swap_back(_: Engine) -> None:
        if saved:
            target.load_state_dict(saved)
            saved.clear()

    def _swap_back_and_raise(engine: Engine, error: Exception) -> None:
        # ignite re-raises only when no EXCEPTION_RAISED handler exists, so this one must re-raise itself
        _swap_back(engine)
        raise error

    evaluator.add_event_handler(Events.STARTED, _swap_in)
    evaluator.add_event_handler(Events.COMPLETED, _swap_back)
    evaluator.add_event_handler(Events.EXCEPTION_RAISED, _swap_back_and_raise)


def check_engine_seed(name: str, seed: Any) -> int:
    """``seed`` if it is an int in ``[0, 2**32 - 2**16)`` (room for ``seed + epoch``), else a ``ValueError`` naming
    ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32 - 2**16:
        raise ValueError(f"{name} expects seed to be an int in [0, 2**32 - 2**16), got {seed!r}.")
    return seed


def attach_mask_sampler(
    engine: Engine, min_available: int, max_missing: int | None, seed: int, input_mask_key: str | None = None
) -> ModalityMaskSampler | None:
    """Give a trainer its input masks' source; also sets ``engine.seed``.

    With ``input_mask_key=None``: ``engine.mask_sampler``, a :py:class:`ModalityMaskSampler` seeded with ``seed`` and
    re-seeded with ``seed + epoch`` at every epoch (:py:func:`reseed_mask_sampler_every_epoch`). With a key, the
    masks come with the batch (drawn by ``RandModalityDropoutd(mask_key=input_mask_key)`` in the transform chain and
    read by ``PrepareMultiModalBatch(input_mask_key=...)``): ``engine.mask_sampler`` is None.
    """
    engine.seed = seed
    engine.mask_sampler = None
    if input_mask_key is None:
        engine.mask_sampler = ModalityMaskSampler(min_available=min_available, max_missing=max_missing)
        engine.mask_sampler.set_random_state(seed)
        reseed_mask_sampler_every_epoch(engine, engine.mask_sampler, seed)
    return engine.mask_sampler


def input_masks(engine: Engine, masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The ``(B, M)`` input masks of a trainer's iteration from the masks ``PrepareMultiModalBatch`` returned: the
    batch's own (``(available, input_mask)``) or, with ``(available,)`` only, drawn by ``engine.mask_sampler``.
    Either way a subset of the data mask ``available`` (``PrepareMultiModalBatch`` checks the batch's, the sampler
    draws among the data's): an absent contrast is never given."""
    if len(masks) == 2:
        return masks[1]
    if engine.mask_sampler is None:
        raise ValueError(
            f"{type(engine).__name__} was built with input_mask_key, but its prepare_batch returned no input masks; "
            "give a PrepareMultiModalBatch with the same input_mask_key."
        )
    return engine.mask_sampler(masks[0])


def reseed_mask_sampler_every_epoch(engine: Engine, sampler: ModalityMaskSampler, seed: int) -> None:
    """Re-seed ``sampler`` with ``seed + epoch`` when each epoch starts.

    The masks of an epoch then depend only on ``seed`` and the epoch number, so a run resumed from a checkpoint
    draws the same masks as an uninterrupted one.
    """

    def _reseed(e: Engine) -> None:
        sampler.set_random_state(seed=int(seed) + int(e.state.epoch))

    engine.add_event_handler(Events.EPOCH_STARTED, _reseed)
