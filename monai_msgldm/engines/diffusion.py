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
"""Stage 2 engines: train the structure-conditioned latent diffusion UNet of MSG-LDM and evaluate its synthesis."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import EMAHandler
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from monai_msgldm.constants import MODALITIES
from monai_msgldm.engines.latent_cache import LatentCache, check_cacheable_transforms
from monai_msgldm.engines.utils import (
    PrepareMultiModalBatch,
    attach_ema,
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
from monai_msgldm.inferers.diffusion import MultiContrastDiffusionInferer, paper_noise_scheduler
from monai_msgldm.networks.nets.latent_diffusion import MultiContrastLDM
from monai_msgldm.networks.nets.msgldm import MSGLDM

__all__ = ["LatentDiffusionTrainer", "SynthesisEvaluator", "freeze_msgldm_conditioning"]


def _as_latent_diffusion(network: nn.Module, name: str) -> MultiContrastLDM:
    inner = unwrap_module(network)
    if not isinstance(inner, MultiContrastLDM):
        raise ValueError(
            f"{name} expects network to be an MSGLDM or another MultiContrastLDM such as PlainConditionalLDM "
            f"(possibly wrapped in DistributedDataParallel), got {type(inner).__name__}."
        )
    return inner


def _as_synthesizer(network: nn.Module, name: str) -> nn.Module:
    inner = unwrap_module(network)
    if not hasattr(inner, "num_modalities"):
        raise ValueError(
            f"{name} expects network to be a synthesis network with num_modalities (MSGLDM, PlainConditionalLDM, "
            f"RegressionSynthesisNet; possibly wrapped in DistributedDataParallel), got {type(inner).__name__}."
        )
    return inner


def freeze_msgldm_conditioning(network: nn.Module) -> MultiContrastLDM:
    """Freeze what stage 2 does not train: the stage-0 autoencoder and, for MSG-LDM, the stage-1 structure net.

    Sets ``requires_grad_(False)`` and eval mode on ``network.frozen_modules()`` (after unwrapping
    ``DistributedDataParallel``); the UNet is left as it is. Call it again after any ``network.train()`` (the
    :py:class:`LatentDiffusionTrainer` does, every iteration).

    Returns:
        The unwrapped model (an :py:class:`MSGLDM` or another ``MultiContrastLDM``).
    """
    net = _as_latent_diffusion(network, "freeze_msgldm_conditioning")
    for module in net.frozen_modules():
        module.requires_grad_(False)
        module.eval()
    return net


class LatentDiffusionTrainer(SupervisedTrainer):
    """Stage-2 trainer of MSG-LDM: the diffusion UNet on the joint latent, conditioned on the structure map ``F_s``.

    The autoencoder and the structure net are frozen in the constructor (:py:func:`freeze_msgldm_conditioning`) and
    kept in eval mode; the optimizer must see only the UNet parameters: build it on ``network.unet.parameters()``
    (a ``ValueError`` is raised if it holds a frozen parameter). Per iteration, an input mask of 1..M modalities is
    drawn per sample among those the data has (given in the batch under ``input_mask_key``, drawn there by
    ``RandModalityDropoutd(mask_key=...)``, or drawn here by :py:class:`ModalityMaskSampler`, re-seeded with
    ``seed + epoch``),
    ``prediction, target = inferer(image, network, mask)`` (the training path of
    :py:class:`~monai_msgldm.inferers.MultiContrastDiffusionInferer`, whose scheduler says what is predicted) and the
    loss is ``loss_function(prediction, target)`` (MSE by default, as in the paper). ``network`` itself goes to the
    inferer, so a ``DistributedDataParallel`` wrapper stays in the forward pass and gradients are synchronised.

    Incomplete studies (cases that lack some contrasts, ``build_datalist(..., allow_incomplete=True)``): the loss
    counts only the latent channels of the contrasts the DATA has (``available``; the joint latent holds
    ``latent_channels`` channels per contrast, contrast-major), see
    :py:func:`~monai_msgldm.engines.utils.present_contrast_loss`: with MSE it is the mean over the present channels,
    and the absent ones get exactly zero gradient. When every contrast is present the loss is
    ``loss_function(prediction, target)`` unchanged. The input mask is always drawn among the present contrasts and
    keeps at least one, so a slice with a single present contrast is given that contrast and trains only its
    denoising: nothing is learned there for the missing ones.

    Latent scale: with ``calibrate_scale_factor=True`` the first iteration sets ``scale_factor = 1 / std`` of the
    first batch's joint latent (``MSGLDM.calibrate_scale_factor``), unless ``scale_factor`` is already != 1.0, which
    means it was calibrated before, e.g. restored from a checkpoint by a ``CheckpointLoader`` (it is a buffer of the
    network's state dict). Under DDP, rank 0's value is broadcast with the buffers.

    EMA: with ``ema_decay`` (e.g. 0.9999) ignite's ``EMAHandler`` averages the UNet after every iteration;
    ``trainer.ema_model`` is the averaged UNet copy (``trainer.ema_handler`` the handler). Save it with the network,
    e.g. ``CheckpointSaver(save_dict={"network": net, "ema": trainer.ema_model, "optimizer": opt, "trainer":
    trainer})``, and load it back the same way to resume. For inference with the EMA weights, load them into the
    UNet: ``net.unet.load_state_dict(torch.load(path)["ema"])`` (or a ``CheckpointLoader`` with ``load_dict={"ema":
    net.unet}`` run after the one loading ``"network"``). :py:func:`attach_ema` attaches the same handler from a
    config when the trainer is built without ``ema_decay``.

    Latent cache: the autoencoder is frozen, so the posterior ``N(mean, std^2)`` of a slice never changes. With
    ``latent_cache`` (a :py:class:`~monai_msgldm.engines.LatentCache`, or ``True`` for the default one keyed by the
    batch's ``subject`` and the slices' ``slice_index`` meta data) each slice is encoded the first time it is seen and
    every later iteration only draws ``z0 = scale_factor * (mean + std * eps)`` from the cache, which is passed to
    the inferer (``inferer(image, network, mask, noise=..., timesteps=..., latents=z0)``); the condition (``F_s``)
    is still computed from the images. The draws are made in the inferer's order (noise, timesteps, then ``eps``
    as ``AutoencoderKL.sampling`` draws it), so in fp32 a run with the cache takes the same steps as one without,
    up to float rounding. The cache is valid only if a slice's image is the same at every visit: the data set's
    transforms are checked here (:py:func:`~monai_msgldm.engines.check_cacheable_transforms`, a ``ValueError`` for
    random augmentation) and every cached image against its fingerprint
    (:py:class:`~monai_msgldm.engines.StaleLatentError`). A cache built with ``structure_features=True`` (MSG-LDM only)
    also keeps the frozen structure encoders' features of each slice, passed to the inferer as
    ``structure_features``: only the fusion and enhancement of the structure branch then run per iteration, with the
    same ``F_s``.

    Image-space loss (``image_loss_weight > 0``; not in the paper): the latent loss only asks the UNet for the
    joint latent, yet the synthesis is judged on the decoded images, and the decoder does not map the mean of the
    latents it may see to the mean of their images. With a weight, each iteration also decodes the clean latent the
    prediction implies (:py:meth:`~monai_msgldm.inferers.MultiContrastDiffusionInferer.predicted_latents`) with the
    frozen decoder and adds ``image_loss_weight * image_loss(decoded, images)`` over the contrasts to synthesize:
    those the data has and the drawn input mask hides (``(K, 1, *S)`` pairs of item and contrast, decoded in one
    batch; the given ones are returned as acquired at synthesis). The gradient reaches the UNet through the decoder,
    whose weights stay frozen. It needs a prediction whose clean-latent estimate is bounded: ``v_prediction``,
    ``sample`` or rectified flow (``epsilon`` is refused: its estimate divides by ``sqrt(alphas_cumprod[t])``). It
    costs one decoder pass, forward and backward, per hidden contrast and iteration; a batch that hides none adds 0.
    On the project's quality benchmark (64 px phantom, weight 1) it changed PSNR by less than 0.1 dB.

    ``engine.state.output``: ``image``, ``available`` (drawn mask) and ``loss`` (the total), with
    ``image_loss_weight > 0`` also ``latent_loss`` and ``image_loss`` (the two terms, detached).

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: batches of dicts with ``image`` ``(B, M, *S)`` and ``available`` ``(B, M)``.
        network: an :py:class:`MSGLDM` with trained autoencoder and structure net, or a
            :py:class:`~monai_msgldm.networks.nets.PlainConditionalLDM` with a trained autoencoder (or a DDP wrapper).
        optimizer: optimizer of ``network.unet.parameters()`` only (paper: AdamW, lr 1e-4).
        inferer: the :py:class:`~monai_msgldm.inferers.MultiContrastDiffusionInferer` with the training scheduler;
            default: DDPM on the paper's schedule (1000 steps, scaled linear betas 0.0015 -> 0.0195, epsilon).
        loss_function: ``(prediction, target) -> scalar``; default ``torch.nn.MSELoss()``.
        ema_decay: EMA decay of the UNet weights, or ``None`` (no EMA).
        calibrate_scale_factor: calibrate the latent scale factor on the first batch (see above).
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
        latent_cache: a :py:class:`~monai_msgldm.engines.LatentCache`, ``True`` (``LatentCache(image_key=image_key)``)
            or ``None`` / ``False`` (encode every slice at every iteration); see above.
        image_loss_weight: weight of the image-space loss (see above); 0 (default, the paper) leaves it out.
        image_loss: ``(decoded, images) -> scalar`` for the image-space loss; default ``torch.nn.L1Loss()``.
        kwargs: further ``SupervisedTrainer`` arguments.

    Example::

        trainer = LatentDiffusionTrainer(device="cuda", max_epochs=100, train_data_loader=loader, network=net,
                                         optimizer=torch.optim.AdamW(net.unet.parameters(), 1e-4), ema_decay=0.9999)
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        inferer: MultiContrastDiffusionInferer | None = None,
        loss_function: Any = None,
        ema_decay: float | None = None,
        calibrate_scale_factor: bool = True,
        min_available: int = 1,
        max_missing: int | None = None,
        seed: int = 0,
        image_key: str = "image",
        available_key: str = "available",
        input_mask_key: str | None = None,
        amp: bool = False,
        cpu_amp: bool = False,
        latent_cache: LatentCache | bool | None = None,
        image_loss_weight: float = 0.0,
        image_loss: Any = None,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        net = freeze_msgldm_conditioning(network)
        if (
            isinstance(image_loss_weight, bool)
            or not isinstance(image_loss_weight, (int, float))
            or not math.isfinite(image_loss_weight)
            or image_loss_weight < 0
        ):
            raise ValueError(f"{name} expects image_loss_weight to be a finite number >= 0, got {image_loss_weight!r}.")
        if image_loss is not None and not callable(image_loss):
            raise ValueError(f"{name} expects image_loss to be callable or None, got {image_loss!r}.")
        if latent_cache is True:
            latent_cache = LatentCache(image_key=image_key)
        elif latent_cache is False:
            latent_cache = None
        if latent_cache is not None:
            if not isinstance(latent_cache, LatentCache):
                raise ValueError(
                    f"{name} expects latent_cache to be a monai_msgldm.engines.LatentCache, a bool or None, got "
                    f"{type(latent_cache).__name__}."
                )
            if latent_cache.structure_features and not isinstance(net, MSGLDM):
                raise ValueError(
                    f"{name} expects a LatentCache with structure_features=False for {type(net).__name__} (the "
                    "structure encoders' features exist for MSGLDM only)."
                )
            transform = getattr(getattr(train_data_loader, "dataset", None), "transform", None)
            check_cacheable_transforms(transform, f"{name} with latent_cache")
        frozen = {id(p) for m in net.frozen_modules() for p in m.parameters()}
        if any(id(p) in frozen for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                f"{name} expects an optimizer of network.unet.parameters() only, got one holding parameters of the "
                "frozen autoencoder or structure net."
            )
        check_engine_seed(name, seed)
        if inferer is None:
            inferer = MultiContrastDiffusionInferer(paper_noise_scheduler("ddpm"))
        if not isinstance(inferer, MultiContrastDiffusionInferer):
            raise ValueError(
                f"{name} expects inferer to be a monai_msgldm.inferers.MultiContrastDiffusionInferer (the training "
                f"scheduler lives there), got {type(inferer).__name__}."
            )
        if image_loss_weight > 0 and not inferer.rectified_flow and inferer.prediction_type == "epsilon":
            raise ValueError(
                f"{name} expects image_loss_weight 0 with an epsilon-predicting scheduler (its clean-latent estimate "
                "divides by sqrt(alphas_cumprod[t]), about 1/70 at the last step); use prediction_type "
                f"'v_prediction' or 'sample', or rectified flow, got image_loss_weight={image_loss_weight}."
            )
        if loss_function is not None and not callable(loss_function):
            raise ValueError(f"{name} expects loss_function to be callable or None, got {loss_function!r}.")
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
            loss_function=nn.MSELoss() if loss_function is None else loss_function,
            inferer=inferer,
            amp=resolve_amp(amp, device),
            **kwargs,
        )
        self.msgldm = net
        self.latent_cache: LatentCache | None = latent_cache
        self.image_loss_weight = float(image_loss_weight)
        self.image_loss = (nn.L1Loss() if image_loss is None else image_loss) if self.image_loss_weight > 0 else None
        if self.image_loss is not None:
            self.logger.info(
                f"stage 2 adds the image-space loss: {self.image_loss_weight} x {type(self.image_loss).__name__} of "
                "the decoded clean-latent estimate"
            )
        self.calibrate_scale_factor = bool(calibrate_scale_factor)
        self._scale_checked = False
        attach_mask_sampler(self, min_available, max_missing, seed, input_mask_key)
        # evaluators' eval_mode restores train mode on the whole network when they finish: freeze again after them
        self.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: freeze_msgldm_conditioning(engine.network))
        self.ema_handler: EMAHandler | None = None
        if ema_decay is not None:
            self.ema_handler = attach_ema(self, net.unet, decay=ema_decay)

    @property
    def ema_model(self) -> nn.Module | None:
        """The EMA copy of the UNet (``None`` without ``ema_decay``)."""
        return None if self.ema_handler is None else self.ema_handler.ema_model

    def _maybe_calibrate(self, images: torch.Tensor, data_available: torch.Tensor) -> None:
        if self._scale_checked:
            return
        self._scale_checked = True
        if self.calibrate_scale_factor and float(self.msgldm.scale_factor) == 1.0:
            self.msgldm.calibrate_scale_factor(images, data_available)  # absent contrasts' fill left out

    def _cached_draws(self, batchdata: dict[str, Any], images: torch.Tensor) -> dict[str, Any]:
        """``noise``, ``timesteps`` and ``latents`` for the inferer from the latent cache, drawn in the order of the
        inferer's own training path (noise, timesteps, then the posterior sample's ``eps``); also
        ``structure_features`` when the cache keeps them."""
        cache = self.latent_cache
        found = cache.lookup(self.msgldm, images, cache.keys(batchdata))  # type: ignore[union-attr]
        mean = found["mean"]
        noise = torch.randn(mean.shape, device=images.device, dtype=images.dtype)
        timesteps = self.inferer.training_timesteps(noise)
        draws = {
            "noise": noise,
            "timesteps": timesteps,
            "latents": LatentCache.sample(mean, found["std"], self.msgldm.scale_factor),
        }
        if "structure_features" in found:
            draws["structure_features"] = found["structure_features"]
        return draws

    def _fresh_draws(self, images: torch.Tensor) -> dict[str, Any]:
        """``noise``, ``timesteps`` and ``latents`` drawn as the inferer's training path draws them, for the
        image-space loss without a latent cache (it needs the clean latent and the noise)."""
        with torch.no_grad():
            latents = self.msgldm.encode(images)
        noise = torch.randn(latents.shape, device=images.device, dtype=images.dtype)
        return {"noise": noise, "timesteps": self.inferer.training_timesteps(noise), "latents": latents}

    def _image_loss(
        self, prediction: torch.Tensor, draws: dict[str, Any], images: torch.Tensor, select: torch.Tensor
    ) -> torch.Tensor:
        """``image_loss`` between the decoded clean-latent estimate of ``prediction`` and ``images`` over the
        ``select``-ed ``(B, M)`` pairs of item and contrast (0, with a zero gradient, when none is)."""
        noisy = self.inferer.noisy_latents(draws["latents"], draws["noise"], draws["timesteps"])
        estimate = self.inferer.predicted_latents(prediction.float(), noisy.float(), draws["timesteps"])
        if not bool(select.any()):
            return estimate.sum() * 0.0
        decoded = self.msgldm.decode_selected(estimate, select)
        return self.image_loss(decoded.float(), images[select].unsqueeze(1).float())

    def _iteration(self, engine: LatentDiffusionTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("LatentDiffusionTrainer must be given batch data for the current iteration.")
        images, _, masks, _ = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        engine._maybe_calibrate(images, masks[0])
        data_available, mask = masks[0], input_masks(engine, masks)
        engine.state.output = {Keys.IMAGE: images, "available": mask}
        engine.network.train()
        freeze_msgldm_conditioning(engine.network)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(engine):
            draws = {} if engine.latent_cache is None else engine._cached_draws(batchdata, images)
            if engine.image_loss is not None and not draws:
                draws = engine._fresh_draws(images)
            prediction, target = engine.inferer(images, engine.network, mask, **draws)
            # only the latent channels of the contrasts the data has: absent ones (-1 fills) have no ground truth
            loss = present_contrast_loss(engine.loss_function, prediction.float(), target.float(), data_available)
            if engine.image_loss is not None:
                image_loss = engine._image_loss(prediction, draws, images, data_available & ~mask)
                engine.state.output.update({"latent_loss": loss.detach(), "image_loss": image_loss.detach()})
                loss = loss + engine.image_loss_weight * image_loss
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward_and_step(engine, loss)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class SynthesisEvaluator(SupervisedEvaluator):
    """Stage-2 evaluator: synthesize a target modality from the others and compare it with the real one.

    For each batch the scenario is fixed and deterministic: the target is ``target`` (one modality), or, for a
    sequence of targets, ``target[i % len(target)]`` for the i-th batch of the run (round robin). The input mask is
    the data mask without the target; every sample must have the target and at least one other modality in its
    data. The synthesis is ``inferer.sample(images, network, mask, generator=...)`` (a sampling inferer:
    :py:class:`~monai_msgldm.inferers.MultiContrastDiffusionInferer` with the sampling scheduler and its number of
    steps, or :py:class:`~monai_msgldm.inferers.RegressionSynthesisInferer`), from noise drawn with a generator
    seeded by ``seed + i``, so results are reproducible. ``engine.state.output``: ``pred`` / ``label`` are the synthesized and the real
    target channel ``(B, 1, *S)`` (key metric: ``PeakSignalToNoiseRatio(max_val=2.0, output_transform=
    from_engine(["pred", "label"]))`` for images in [-1, 1]); also ``image`` (input), ``available`` (input mask) and
    ``target`` (the modality index).

    To evaluate EMA weights, load them into ``network.unet`` first (see :py:class:`LatentDiffusionTrainer`).

    Args:
        device: device to evaluate on.
        val_data_loader: batches of dicts with ``image`` ``(B, M, *S)`` and ``available`` ``(B, M)``.
        network: MSGLDM, PlainConditionalLDM or RegressionSynthesisNet (or a DDP wrapper).
        inferer: the sampling inferer of ``network`` (it holds the sampling scheduler, the number of steps, e.g.
            5-10 during training, 100 in the paper, and autocast).
        target: modality name (in ``modalities``) or index, or a sequence of them for a round robin.
        seed: base seed of the sampling noise.
        clip_range: ``(low, high)`` to clip the synthesized images to, or ``None``; default ``(-1, 1)``.
        modalities: names of the M channels, to resolve ``target`` names; default ``MODALITIES``.
        image_key, available_key: batch keys.
        kwargs: further ``SupervisedEvaluator`` arguments.

    Example::

        sampler = MultiContrastDiffusionInferer(DDIMScheduler(...), num_inference_steps=10)
        evaluator = SynthesisEvaluator(device="cuda", val_data_loader=val_loader, network=net, inferer=sampler,
                                       target="flair", key_val_metric={"val_psnr": PeakSignalToNoiseRatio(
                                           max_val=2.0, output_transform=from_engine(["pred", "label"]))})
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable,
        network: nn.Module,
        inferer: Any,
        target: str | int | Sequence[str | int] = "flair",
        seed: int = 0,
        clip_range: Sequence[float] | None = (-1.0, 1.0),
        modalities: Sequence[str] = MODALITIES,
        image_key: str = "image",
        available_key: str = "available",
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        net = _as_synthesizer(network, name)
        names = [str(m) for m in modalities]
        if len(names) != net.num_modalities:
            raise ValueError(
                f"{name} expects {net.num_modalities} modality names (the network's num_modalities), got {names}."
            )
        targets = [target] if isinstance(target, (str, int)) else list(target)
        if not targets:
            raise ValueError(f"{name} expects target to name at least one modality, got {target!r}.")
        self_targets: list[int] = []
        for t in targets:
            if isinstance(t, str) and t in names:
                self_targets.append(names.index(t))
            elif isinstance(t, int) and not isinstance(t, bool) and 0 <= t < net.num_modalities:
                self_targets.append(t)
            else:
                raise ValueError(
                    f"{name} expects target to be a modality name in {names} or an index in "
                    f"[0, {net.num_modalities}), got {t!r}."
                )
        if not callable(getattr(inferer, "sample", None)):
            raise ValueError(
                f"{name} expects inferer to be a sampling inferer with a sample() method (MultiContrastDiffusionInferer, "
                f"RegressionSynthesisInferer), got {type(inferer).__name__}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{name} expects seed to be an int >= 0, got {seed!r}.")
        if clip_range is not None and (len(clip_range) != 2 or float(clip_range[0]) >= float(clip_range[1])):
            raise ValueError(f"{name} expects clip_range None or (low, high) with low < high, got {clip_range!r}.")
        kwargs.setdefault("prepare_batch", PrepareMultiModalBatch(image_key=image_key, available_key=available_key))
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, inferer=inferer, **kwargs)
        self.msgldm = net
        self.targets = self_targets
        self.modalities = names
        self.seed = seed
        self.clip_range = None if clip_range is None else (float(clip_range[0]), float(clip_range[1]))

    def _iteration(self, engine: SynthesisEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("SynthesisEvaluator must be given batch data for the current iteration.")
        images, _, (data_available,), _ = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        index = engine.state.iteration - 1
        target = engine.targets[index % len(engine.targets)]
        mask = data_available.clone()
        mask[:, target] = False
        bad = torch.nonzero(~data_available[:, target] | ~mask.any(dim=1)).flatten().tolist()
        if bad:
            raise ValueError(
                f"SynthesisEvaluator expects every sample's data to have the target '{engine.modalities[target]}' and "
                f"at least one other modality, got batch rows {bad} without."
            )
        generator = torch.Generator().manual_seed(engine.seed + index)
        with engine.mode(engine.network):
            synthesis = engine.inferer.sample(images, engine.network, mask, generator=generator, checked=True)
        pred = synthesis[:, target : target + 1].float()
        if engine.clip_range is not None:
            pred = pred.clamp(*engine.clip_range)
        engine.state.output = {
            Keys.IMAGE: images,
            Keys.LABEL: images[:, target : target + 1].float(),
            Keys.PRED: pred,
            "available": mask,
            "target": target,
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
