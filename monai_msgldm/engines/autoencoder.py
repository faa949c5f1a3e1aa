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
"""Stage 0 engines: train and evaluate the single-channel image autoencoder shared by all modalities."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from monai_msgldm.engines.utils import (
    PrepareMultiModalBatch,
    autocast_context,
    backward_and_step,
    kl_divergence,
    resolve_amp,
    resolve_cpu_amp,
    unwrap_module,
)
from monai_msgldm.losses import FrequencySSIMLoss
from monai_msgldm.networks.nets.modality_autoencoder import ModalityWiseAutoencoder

__all__ = ["AutoencoderTrainer", "AutoencoderEvaluator", "AutoencoderKeys", "available_modality_slices"]


class AutoencoderKeys:
    """Keys of the loss components in ``engine.state.output`` of :py:class:`AutoencoderTrainer` (floats)."""

    L1 = "loss_l1"
    KL = "loss_kl"
    FREQUENCY = "loss_frequency"
    GENERATOR = "loss_generator"
    DISCRIMINATOR = "loss_discriminator"


def available_modality_slices(images: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Every modality image the data has, as a single-channel batch: ``(B, M, *S), (B, M) -> (N, 1, *S)``.

    ``N`` is the number of True entries of ``available``, in row-major (sample, modality) order.
    """
    if available.shape != images.shape[:2]:
        raise ValueError(
            f"available_modality_slices expects available of shape {tuple(images.shape[:2])}, "
            f"got {tuple(available.shape)}."
        )
    return images[available.to(device=images.device, dtype=torch.bool)].unsqueeze(1)


def _as_autoencoder(network: nn.Module, name: str) -> AutoencoderKL:
    inner = unwrap_module(network)
    if isinstance(inner, ModalityWiseAutoencoder):
        inner = inner.model
    if not isinstance(inner, AutoencoderKL):
        raise ValueError(
            f"{name} expects network to be a MONAI AutoencoderKL (or a ModalityWiseAutoencoder around one, possibly "
            f"wrapped in DistributedDataParallel), got {type(inner).__name__}."
        )
    if inner.encoder.in_channels != 1:
        raise ValueError(
            f"{name} expects a single-channel AutoencoderKL (in_channels=1), got in_channels={inner.encoder.in_channels}."
        )
    return inner


def _check_weight(name: str, key: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < float("inf"):
        raise ValueError(f"{name} expects {key} to be a finite float >= 0, got {value!r}.")
    return float(value)


class AutoencoderTrainer(SupervisedTrainer):
    """Stage-0 trainer of MSG-LDM: the single-channel ``AutoencoderKL`` on every modality image the data has.

    Each iteration takes ``image[available]`` (all available modality slices of the batch, ``(N, 1, *S)``; the
    contrasts an incomplete study lacks, -1 fills in the image, never reach the autoencoder) and
    minimises ``L1 + kl_weight * KL + frequency_weight * FrequencySSIM (+ adversarial_weight * G-adv)``. The
    frequency SSIM term (1 - SSIM of the DCT amplitude spectra, the structure-aware loss's frequency part) replaces
    the perceptual loss of the authors' VQGAN, which cannot run offline; it defaults to 1.0, the weight it has in
    the paper's structure-aware loss. With a ``discriminator`` (MONAI ``PatchDiscriminator``) and its optimizer, a
    least-squares patch-adversarial term is added and the discriminator is updated after the generator on the same
    batch, as in MONAI's ``AdversarialTrainer`` and generative tutorials.

    MONAI's ``AdversarialTrainer`` is not reused because ``AutoencoderKL`` returns ``(reconstruction, z_mu,
    z_sigma)`` (the KL term needs the posterior, its reconstruction loss only sees the prediction), it requires a
    discriminator, and its inputs would be the (B, M) multi-modality batch rather than the available slices.

    ``engine.state.output``: ``image`` and ``label`` (the slices ``(N, 1, *S)``), ``pred`` (reconstruction),
    ``loss`` (the generator loss, a tensor), and the float components of :py:class:`AutoencoderKeys`
    (``loss_l1``, ``loss_kl``, ``loss_frequency``, ``loss_generator``, ``loss_discriminator``; the last two 0.0
    without a discriminator). Log them with e.g. ``StatsHandler(output_transform=from_engine(["loss_l1"],
    first=True))``.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: batches of dicts with ``image`` ``(B, M, *S)`` and ``available`` ``(B, M)``.
        network: a MONAI ``AutoencoderKL`` with one input channel (recommended: the bundle trains it directly and
            later loads the weights into ``MSGLDM.autoencoder.model``), a ``ModalityWiseAutoencoder`` (its ``.model``
            is trained), or a ``DistributedDataParallel`` around the ``AutoencoderKL``.
        optimizer: optimizer of the autoencoder parameters.
        kl_weight: weight of the KL term.
        frequency_weight: weight of the frequency SSIM term (0 disables it).
        frequency_loss: the frequency term; default ``FrequencySSIMLoss(spatial_dims)``.
        reconstruction_loss: the pixel term; default ``torch.nn.L1Loss()``.
        discriminator: optional MONAI ``PatchDiscriminator`` (single input channel).
        discriminator_optimizer: its optimizer (required with ``discriminator``).
        adversarial_weight: weight of the generator and discriminator adversarial losses.
        adversarial_loss: default MONAI ``PatchAdversarialLoss(criterion="least_squares")``.
        image_key, available_key: batch keys.
        amp: mixed precision; only on CUDA (fp32 on CPU, silently).
        cpu_amp: bfloat16 autocast on the CPU (about 1.5-2x faster with Intel AMX: ``monai_msgldm.utils.cpu_has_amx``;
            ignored on CUDA).
        kwargs: further ``SupervisedTrainer`` arguments (``epoch_length``, ``train_handlers``, ``key_train_metric``,
            ``postprocessing``, ``amp_kwargs``, ``decollate``, ...).

    Example::

        trainer = AutoencoderTrainer(device="cuda", max_epochs=100, train_data_loader=loader, network=ae,
                                     optimizer=torch.optim.Adam(ae.parameters(), 1e-4),
                                     train_handlers=[StatsHandler(output_transform=from_engine(["loss"], first=True))])
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        kl_weight: float = 1e-6,
        frequency_weight: float = 1.0,
        frequency_loss: Callable | None = None,
        reconstruction_loss: Callable | None = None,
        discriminator: nn.Module | None = None,
        discriminator_optimizer: Optimizer | None = None,
        adversarial_weight: float = 0.01,
        adversarial_loss: Callable | None = None,
        image_key: str = "image",
        available_key: str = "available",
        amp: bool = False,
        cpu_amp: bool = False,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        autoencoder = _as_autoencoder(network, name)
        if (discriminator is None) != (discriminator_optimizer is None):
            raise ValueError(
                f"{name} expects discriminator and discriminator_optimizer to be given together, got "
                f"discriminator={type(discriminator).__name__}, "
                f"discriminator_optimizer={type(discriminator_optimizer).__name__}."
            )
        kwargs.setdefault(
            "prepare_batch",
            PrepareMultiModalBatch(image_key=image_key, available_key=available_key, track_meta=False),
        )
        self.cpu_amp = resolve_cpu_amp(cpu_amp, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=nn.L1Loss() if reconstruction_loss is None else reconstruction_loss,
            amp=resolve_amp(amp, device),
            **kwargs,
        )
        self.kl_weight = _check_weight(name, "kl_weight", kl_weight)
        self.frequency_weight = _check_weight(name, "frequency_weight", frequency_weight)
        self.adversarial_weight = _check_weight(name, "adversarial_weight", adversarial_weight)
        spatial_dims = int(autoencoder.encoder.spatial_dims)
        self.frequency_loss = FrequencySSIMLoss(spatial_dims=spatial_dims) if frequency_loss is None else frequency_loss
        self.discriminator = discriminator
        self.discriminator_optimizer = discriminator_optimizer
        self.adversarial_loss = (
            PatchAdversarialLoss(criterion="least_squares") if adversarial_loss is None else adversarial_loss
        )
        self.discriminator_scaler = torch.amp.GradScaler("cuda") if self.amp and discriminator is not None else None

    def _discriminator_logits(self, images: torch.Tensor) -> torch.Tensor:
        out = self.discriminator(images.contiguous())  # type: ignore[misc]
        return out[-1] if isinstance(out, (list, tuple)) else out

    def _iteration(self, engine: AutoencoderTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("AutoencoderTrainer must be given batch data for the current iteration.")
        images, _, (available,), _ = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        slices = available_modality_slices(images, available)
        if slices.shape[0] == 0:
            raise ValueError("AutoencoderTrainer expects at least one available modality in the batch, got none.")
        engine.state.output = {Keys.IMAGE: slices, Keys.LABEL: slices}
        components: dict[str, torch.Tensor] = {}

        def _generator_loss() -> torch.Tensor:
            reconstruction, z_mu, z_sigma = engine.network(slices)
            engine.state.output[Keys.PRED] = reconstruction
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            components[AutoencoderKeys.L1] = engine.loss_function(reconstruction.float(), slices.float()).mean()
            components[AutoencoderKeys.KL] = kl_divergence(z_mu, z_sigma)
            loss = components[AutoencoderKeys.L1] + engine.kl_weight * components[AutoencoderKeys.KL]
            if engine.frequency_weight > 0:
                components[AutoencoderKeys.FREQUENCY] = engine.frequency_loss(reconstruction.float(), slices.float())
                loss = loss + engine.frequency_weight * components[AutoencoderKeys.FREQUENCY]
            if engine.discriminator is not None:
                logits = engine._discriminator_logits(reconstruction.float())
                components[AutoencoderKeys.GENERATOR] = engine.adversarial_loss(
                    logits, target_is_real=True, for_discriminator=False
                )
                loss = loss + engine.adversarial_weight * components[AutoencoderKeys.GENERATOR]
            return loss

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(engine):
            loss = _generator_loss()
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        backward_and_step(engine, loss)

        if engine.discriminator is not None:
            engine.discriminator.train()
            engine.discriminator_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)  # type: ignore[union-attr]
            fake = engine.state.output[Keys.PRED].detach().float()
            with autocast_context(engine):
                loss_fake = engine.adversarial_loss(
                    engine._discriminator_logits(fake), target_is_real=False, for_discriminator=True
                )
                loss_real = engine.adversarial_loss(
                    engine._discriminator_logits(slices.detach().float()), target_is_real=True, for_discriminator=True
                )
                d_loss = 0.5 * (loss_fake + loss_real)
                components[AutoencoderKeys.DISCRIMINATOR] = d_loss
                d_total = engine.adversarial_weight * d_loss
            if engine.discriminator_scaler is not None:
                engine.discriminator_scaler.scale(d_total).backward()
                engine.discriminator_scaler.step(engine.discriminator_optimizer)
                engine.discriminator_scaler.update()
            else:
                d_total.backward()
                engine.discriminator_optimizer.step()  # type: ignore[union-attr]

        for key in (
            AutoencoderKeys.L1,
            AutoencoderKeys.KL,
            AutoencoderKeys.FREQUENCY,
            AutoencoderKeys.GENERATOR,
            AutoencoderKeys.DISCRIMINATOR,
        ):
            engine.state.output[key] = float(components[key].detach()) if key in components else 0.0
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class AutoencoderEvaluator(SupervisedEvaluator):
    """Stage-0 evaluator: reconstruct every modality image the data has through the autoencoder.

    The reconstruction uses the posterior mean (``AutoencoderKL.reconstruct``, deterministic). ``engine.state.output``
    holds ``image`` / ``label`` (the available slices ``(N, 1, *S)``) and ``pred`` (their reconstructions, clipped to
    ``clip_range``), so MONAI regression metric handlers apply directly, e.g. the key metric
    ``PeakSignalToNoiseRatio(max_val=2.0, output_transform=from_engine(["pred", "label"]))`` for images in [-1, 1].

    Args:
        device: device to evaluate on.
        val_data_loader: batches of dicts with ``image`` ``(B, M, *S)`` and ``available`` ``(B, M)``.
        network: the ``AutoencoderKL`` (or ``ModalityWiseAutoencoder`` / DDP wrapper) being trained.
        clip_range: ``(low, high)`` to clip the reconstruction to, or ``None``; default ``(-1, 1)``.
        image_key, available_key: batch keys.
        amp: mixed precision; only on CUDA.
        cpu_amp: bfloat16 autocast on the CPU (about 1.5-2x faster with Intel AMX: ``monai_msgldm.utils.cpu_has_amx``;
            ignored on CUDA).
        kwargs: further ``SupervisedEvaluator`` arguments (``key_val_metric``, ``val_handlers``, ...).

    Example::

        evaluator = AutoencoderEvaluator(device="cuda", val_data_loader=val_loader, network=ae, key_val_metric={
            "val_psnr": PeakSignalToNoiseRatio(max_val=2.0, output_transform=from_engine(["pred", "label"]))})
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable,
        network: nn.Module,
        clip_range: Sequence[float] | None = (-1.0, 1.0),
        image_key: str = "image",
        available_key: str = "available",
        amp: bool = False,
        cpu_amp: bool = False,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        autoencoder = _as_autoencoder(network, name)
        if clip_range is not None and (len(clip_range) != 2 or float(clip_range[0]) >= float(clip_range[1])):
            raise ValueError(f"{name} expects clip_range None or (low, high) with low < high, got {clip_range!r}.")
        kwargs.setdefault("prepare_batch", PrepareMultiModalBatch(image_key=image_key, available_key=available_key))
        self.cpu_amp = resolve_cpu_amp(cpu_amp, device)
        super().__init__(
            device=device, val_data_loader=val_data_loader, network=network, amp=resolve_amp(amp, device), **kwargs
        )
        self.autoencoder = autoencoder
        self.clip_range = None if clip_range is None else (float(clip_range[0]), float(clip_range[1]))

    def _iteration(self, engine: AutoencoderEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("AutoencoderEvaluator must be given batch data for the current iteration.")
        images, _, (available,), _ = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        slices = available_modality_slices(images, available)
        engine.state.output = {Keys.IMAGE: slices, Keys.LABEL: slices}
        with engine.mode(engine.network), torch.no_grad(), autocast_context(engine):
            pred = engine.autoencoder.reconstruct(slices).float()
        if engine.clip_range is not None:
            pred = pred.clamp(*engine.clip_range)
        engine.state.output[Keys.PRED] = pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
