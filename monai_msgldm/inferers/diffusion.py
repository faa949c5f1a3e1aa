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
"""The one place where diffusion happens: the stage-2 training path and the sampling path of the multi-contrast
latent diffusion networks (:py:class:`~monai_msgldm.networks.nets.MSGLDM`,
:py:class:`~monai_msgldm.networks.nets.PlainConditionalLDM`), with any MONAI scheduler."""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler, Scheduler
from monai.utils import optional_import

from monai_msgldm.inferers.sampler import Generators, SynthesisSampler, unwrap_network
from monai_msgldm.networks.nets.msgldm import MSGLDM
from monai_msgldm.utils.availability import validate_availability
from monai_msgldm.utils.precision import sampling_autocast

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["MultiContrastDiffusionInferer", "ddim_step_timesteps", "paper_noise_scheduler"]

logger = logging.getLogger(__name__)


def paper_noise_scheduler(kind: str = "ddpm", prediction_type: str = "epsilon") -> Scheduler:
    """A scheduler on the paper's noise schedule (1000 steps, ``scaled_linear_beta`` from 0.0015 to 0.0195):
    ``kind="ddpm"`` (training) or ``"ddim"`` (sampling). The bundle configs define the same as components."""
    if kind not in ("ddpm", "ddim"):
        raise ValueError(f"paper_noise_scheduler expects kind 'ddpm' or 'ddim', got {kind!r}.")
    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
    return cls(
        num_train_timesteps=1000,
        schedule="scaled_linear_beta",
        beta_start=0.0015,
        beta_end=0.0195,
        prediction_type=prediction_type,
        clip_sample=False,
    )


def ddim_step_timesteps(scheduler: DDIMScheduler, num_inference_steps: int, device=None) -> torch.Tensor:
    """The timesteps at which ``DDIMScheduler.step`` is consistent: ``n k - 1, (n - 1) k - 1, ..., k - 1`` for
    ``n = num_inference_steps`` and ``k = T // n`` (``T`` the training steps; the first is ``T - 1`` when ``n``
    divides ``T``).

    MONAI's ``DDIMScheduler.step`` moves the sample from ``t`` to ``t - k``, but its ``set_timesteps`` spaces the
    timesteps evenly from ``T - 1`` to 0 (``linspace``), so with few steps the next call is labelled with another
    timestep than the noise level the sample was moved to: with 2 steps the sample is moved from 999 to 499 and the
    network is then told it is at 0. Here every step lands exactly on the next timestep (the last one on the clean
    sample, ``final_alpha_cumprod``, since ``k - 1 - k < 0``). With ``T`` steps this is MONAI's own schedule.

    Example::

        >>> ddim_step_timesteps(DDIMScheduler(1000), 4).tolist()
        [999, 749, 499, 249]
    """
    n = int(num_inference_steps)
    total = int(scheduler.num_train_timesteps)
    if not 1 <= n <= total:
        raise ValueError(f"ddim_step_timesteps expects num_inference_steps in [1, {total}], got {num_inference_steps}.")
    return ((n - torch.arange(n, device=device)) * (total // n) - 1).long()


class MultiContrastDiffusionInferer(SynthesisSampler):
    """Latent diffusion on the joint latent of M contrasts: the stage-2 training path and the sampling path.

    The network (an :py:class:`~monai_msgldm.networks.nets.MSGLDM` or another
    :py:class:`~monai_msgldm.networks.nets.MultiContrastLDM`, possibly wrapped in ``DistributedDataParallel``)
    computes: the joint latent (``encode``/``decode``), the condition (``condition``) and the denoiser call on
    ``cat([noisy latent, condition])``. This inferer owns the diffusion, with the MONAI scheduler it is given (a
    component of the bundle config): ``DDPMScheduler`` to train, ``DDIMScheduler`` to sample, ``RFlowScheduler``
    (rectified flow) for both, or any other MONAI ``Scheduler`` with the ``add_noise`` / ``set_timesteps`` /
    ``step`` interface.

    Training path, ``inferer(images, network, available)``:

    1. the frozen parts run without gradients: the scaled joint latent ``z0 = network.encode(images)`` and the
       condition ``c = network.condition(images, available, latents=z0)``;
    2. timesteps are drawn per sample (uniform over the training steps; ``scheduler.sample_timesteps`` for rectified
       flow), ``z_t = scheduler.add_noise(z0, noise, t)``;
    3. returns ``(prediction, target)`` with ``prediction = network(cat([z_t, c]), t)`` and the target the scheduler
       defines: the noise (``prediction_type="epsilon"``), the velocity (``"v_prediction"``, or ``z0 - noise`` for
       rectified flow) or ``z0`` (``"sample"``). The loss is ``loss_function(prediction, target)`` (MSE in the
       paper), so a trainer keeps its loss a config component.

    Sampling path, :py:meth:`sample`: validates ``available`` once, computes the condition once, runs the denoising
    loop (:py:meth:`denoise`: for each timestep, predict, scheduler step), decodes only the contrasts missing in
    some sample of the batch and returns every contrast with the given ones exactly as they were.

    Random draws of the sampling path (the condition and the decoding are deterministic: the condition uses posterior
    means, never a posterior sample) and how ``generator`` seeds them (see :py:meth:`synthesize`):

    - the initial latent noise, drawn on the generator's device (the CPU for ``torch.Generator()``, so that a seed
      gives the same noise on every device); with one generator per item, item ``i``'s noise is drawn from
      ``generator[i]`` alone;
    - the noise of stochastic scheduler steps (``DDPMScheduler``, ``DDIMScheduler`` with ``eta > 0``). MONAI's
      ``step(..., generator=g)`` draws one ``randn`` of the whole batch from one generator on the latents' device,
      so item ``i``'s step noise would depend on the batch; with one generator per item, the step is therefore taken
      item by item (only these cheap element-wise steps; the network still runs once per timestep on the batch),
      each from a generator on the latents' device seeded from ``generator[i]``. That step noise comes from the
      device's own generator (Philox on CUDA, Mersenne Twister on the CPU), so with a stochastic scheduler a seed
      gives a different (equally distributed) sample on CPU and on CUDA. Deterministic steps (DDIM with
      ``eta=0``, rectified flow) draw nothing.

    Args:
        scheduler: the MONAI scheduler (its ``prediction_type`` says what the network predicts).
        num_inference_steps: denoising steps of :py:meth:`sample`; ``None`` = the scheduler's training steps.
        amp: bfloat16 autocast while sampling on CUDA.
        cpu_amp: bfloat16 autocast while sampling on the CPU: about 3x faster than float32 on a CPU with Intel AMX
            (with ``channels_last``), about 5 % without (:func:`monai_msgldm.utils.cpu_has_amx`; the bundle turns it
            on where there is AMX). Off by default: results then match float32 to the last bits on any CPU.
        progress: show a progress bar over the denoising steps.
        eta: the ``eta`` of ``DDIMScheduler.step`` (0 = deterministic DDIM; > 0 adds noise at each step); only
            for a ``DDIMScheduler``.
        known_contrast_guidance: anchor the sampler to what was acquired (RePaint-style replacement): before each
            denoiser call, the channels of the joint latent that belong to a sample's given contrasts are replaced by
            their encodings (scaled posterior means) noised to that timestep with the sample's own initial noise
            (``scheduler.add_noise(z_given, noise, t)``), and after the last step by the encodings themselves; the
            missing contrasts' channels evolve as without guidance, but always beside the true given ones.
        image_batch_size: how many batch items the image-resolution parts of :py:meth:`sample` (the condition, the
            given contrasts' encodings, the decoding) process at once; the denoising loop still runs on the whole
            batch. Their activations at full resolution dominate the peak memory of a large batch (at 192 px the
            autoencoder's first level holds 64 channels per contrast and slice), so this bounds the memory without
            giving up the batched denoiser; the result is the same. ``None``: the whole batch at once.
        train_timesteps: the training timesteps the training path draws from, uniformly (for example
            ``ddim_step_timesteps(sampling_scheduler, 2).tolist()``: the network is trained only at the noise levels
            a 2-step DDIM sampler visits); ``None`` = all ``num_train_timesteps`` (the usual uniform draw). Not for
            rectified flow, whose timesteps are continuous and drawn by its scheduler. Sampling is unaffected.

    Example::

        scheduler = DDIMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
        inferer = MultiContrastDiffusionInferer(scheduler, num_inference_steps=50)
        out = inferer.sample(images, net, available)  # (B, M, *S): missing contrasts synthesized

        prediction, target = MultiContrastDiffusionInferer(DDPMScheduler(...))(images, net, available)
        loss = torch.nn.functional.mse_loss(prediction, target)
    """

    def __init__(
        self,
        scheduler: Scheduler,
        num_inference_steps: int | None = None,
        amp: bool = True,
        progress: bool = False,
        eta: float = 0.0,
        known_contrast_guidance: bool = False,
        image_batch_size: int | None = None,
        train_timesteps: Sequence[int] | None = None,
        cpu_amp: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if image_batch_size is not None and (
            isinstance(image_batch_size, bool) or not isinstance(image_batch_size, int) or image_batch_size < 1
        ):
            raise ValueError(f"{name} expects image_batch_size to be None or an int >= 1, got {image_batch_size!r}.")
        self.image_batch_size = image_batch_size
        if not isinstance(scheduler, Scheduler):
            raise ValueError(
                f"{name} expects scheduler to be a monai.networks.schedulers.Scheduler, got {scheduler!r}."
            )
        max_steps = int(scheduler.num_train_timesteps)
        if num_inference_steps is None:
            num_inference_steps = max_steps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise ValueError(f"{name} expects num_inference_steps to be an int, got {num_inference_steps!r}.")
        if not 1 <= num_inference_steps <= max_steps:
            raise ValueError(
                f"{name} expects num_inference_steps in [1, {max_steps}] (the scheduler's num_train_timesteps), "
                f"got {num_inference_steps}."
            )
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"{name} expects eta in [0, 1], got {eta!r}.")
        if eta > 0 and not isinstance(scheduler, DDIMScheduler):
            raise ValueError(f"{name} expects eta > 0 only with a DDIMScheduler, got {type(scheduler).__name__}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.eta = float(eta)
        self.amp = bool(amp)
        self.cpu_amp = bool(cpu_amp)
        self.progress = bool(progress)
        self.known_contrast_guidance = bool(known_contrast_guidance)
        self.rectified_flow = isinstance(scheduler, RFlowScheduler)
        self.train_timesteps = self._check_train_timesteps(train_timesteps, max_steps)
        self.prediction_type = "v_prediction" if self.rectified_flow else str(scheduler.prediction_type)
        self.step_kwargs: dict[str, Any] = {"eta": self.eta} if isinstance(scheduler, DDIMScheduler) else {}
        # steps that draw noise: a scheduler whose step takes a generator (DDPM), except DDIM without eta
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        self.stochastic_steps = takes_generator and not (isinstance(scheduler, DDIMScheduler) and self.eta == 0)

    def _check_train_timesteps(self, train_timesteps: Sequence[int] | None, max_steps: int) -> torch.Tensor | None:
        """``train_timesteps`` as a sorted ``(K,)`` long tensor of distinct steps (``None`` stays ``None``)."""
        name = type(self).__name__
        if train_timesteps is None:
            return None
        if self.rectified_flow:
            raise ValueError(
                f"{name} expects train_timesteps to be None with an RFlowScheduler (its timesteps are continuous "
                f"and drawn by the scheduler), got {train_timesteps!r}."
            )
        if isinstance(train_timesteps, torch.Tensor):
            train_timesteps = train_timesteps.tolist()
        if isinstance(train_timesteps, (str, bytes)) or not isinstance(train_timesteps, Sequence):
            raise ValueError(
                f"{name} expects train_timesteps to be None or a sequence of ints, got {train_timesteps!r}."
            )
        steps = list(train_timesteps)
        if not steps or any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < max_steps for t in steps):
            raise ValueError(
                f"{name} expects train_timesteps to be a non-empty sequence of ints in [0, {max_steps - 1}] (the "
                f"scheduler's training steps), got {train_timesteps!r}."
            )
        return torch.tensor(sorted(set(steps)), dtype=torch.long)

    # ------------------------------------------------------------ training
    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the network is trained to predict for ``z_t = add_noise(latents, noise, timesteps)``."""
        if self.rectified_flow:
            return latents - noise
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return latents

    def predicted_latents(self, prediction: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The clean latent ``z0`` that a network ``prediction`` at the noisy latent ``noisy`` implies.

        With ``a = alphas_cumprod[t]`` and ``noisy = sqrt(a) z0 + sqrt(1 - a) noise``:

        - ``"v_prediction"``: ``sqrt(a) noisy - sqrt(1 - a) v``;
        - ``"sample"``: the prediction itself;
        - ``"epsilon"``: ``(noisy - sqrt(1 - a) eps) / sqrt(a)``; the error of ``eps`` is multiplied by
          ``1 / sqrt(a)``, about 70 at the last training step of the paper's schedule;
        - rectified flow (``noisy = (1 - t / T) z0 + (t / T) noise``, velocity ``z0 - noise``):
          ``noisy + (t / T) v``.

        Given the exact target (:py:meth:`training_target`) it returns ``z0`` exactly, up to float rounding.

        Args:
            prediction: ``(B, C, *L)``, what the network predicts.
            noisy: ``(B, C, *L)``, ``scheduler.add_noise(z0, noise, timesteps)``.
            timesteps: ``(B,)`` training timesteps.

        Returns:
            ``(B, C, *L)``, differentiable with respect to ``prediction``.
        """
        if prediction.shape != noisy.shape or timesteps.ndim != 1 or timesteps.shape[0] != noisy.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.predicted_latents expects prediction and noisy of the same shape (B, C, *L) "
                f"and timesteps (B,), got {tuple(prediction.shape)}, {tuple(noisy.shape)} and "
                f"{tuple(timesteps.shape)}."
            )
        view = (-1,) + (1,) * (noisy.ndim - 1)
        if self.rectified_flow:
            fraction = timesteps.to(noisy.dtype) / float(self.scheduler.num_train_timesteps)
            return noisy + fraction.view(view) * prediction
        if self.prediction_type == "sample":
            return prediction
        alphas = getattr(self.scheduler, "alphas_cumprod", None)
        if not isinstance(alphas, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__}.predicted_latents expects a scheduler with alphas_cumprod, got "
                f"{type(self.scheduler).__name__}."
            )
        a = alphas.to(device=noisy.device, dtype=noisy.dtype)[timesteps.long()].view(view)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * noisy - (1 - a).sqrt() * prediction
        return (noisy - (1 - a).sqrt() * prediction) / a.sqrt()

    def noisy_latents(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``z_t``: ``latents`` noised to ``timesteps`` with ``noise`` by the scheduler (what the training path feeds
        the network)."""
        return self.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)

    def training_timesteps(self, latents: torch.Tensor) -> torch.Tensor:
        """One training timestep per sample of ``latents`` ``(B, ...)`` (only its batch size and device are used):
        the scheduler's own draw for rectified flow, otherwise uniform over ``train_timesteps`` (all the training
        steps when it is ``None``)."""
        if self.rectified_flow:
            return self.scheduler.sample_timesteps(latents)
        if self.train_timesteps is not None:
            index = torch.randint(0, len(self.train_timesteps), (latents.shape[0],), device=latents.device)
            return self.train_timesteps.to(latents.device)[index]
        n = int(self.scheduler.num_train_timesteps)
        return torch.randint(0, n, (latents.shape[0],), device=latents.device).long()

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        available: torch.Tensor,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        structure_features: Sequence[torch.Tensor] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training path: ``(prediction, target)`` on the joint latent of ``inputs``.

        Args:
            inputs: all M contrasts ``(B, M, *S)`` in [-1, 1] (the ground truth of every contrast).
            network: the latent diffusion network, possibly DDP-wrapped (the wrapper is kept for the denoiser call
                so that gradients are synchronised).
            available: ``(B, M)`` bool (or 0/1), the contrasts the condition may use (drawn per sample).
            noise: ``(B, M * latent_channels, *L)``; drawn when ``None``.
            timesteps: ``(B,)``; drawn when ``None`` (:py:meth:`training_timesteps`).
            latents: the scaled joint latent ``z0`` of ``inputs`` ``(B, M * latent_channels, *L)`` when the caller
                has it (a sample of the cached posterior of the frozen autoencoder, see
                :py:class:`~monai_msgldm.engines.LatentDiffusionTrainer`); ``network.encode(inputs)`` when ``None``.
                The condition is still computed from ``inputs`` (and these latents).
            structure_features: MSG-LDM only: the per-modality structure encoder features of ``inputs``
                (``MSGLDM.structure_features``, cached by the trainer) when the caller has them; the condition then
                runs only the fusion and enhancement of the frozen structure net. ``None``: computed from ``inputs``.

        Returns:
            ``(prediction, target)``, both ``(B, M * latent_channels, *L)``.
        """
        model = unwrap_network(network)
        grid = model.check_images(inputs)
        available = validate_availability(
            available, inputs.shape[0], model.num_modalities, inputs.device, type(self).__name__
        )
        shape = (inputs.shape[0], model.latent_channels(), *grid)
        if noise is None:
            noise = torch.randn(shape, device=inputs.device, dtype=inputs.dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"{type(self).__name__} expects noise of shape {shape}, got {tuple(noise.shape)}.")
        if timesteps is None:
            timesteps = self.training_timesteps(noise)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"{type(self).__name__} expects latents of shape {shape}, got {tuple(latents.shape)}.")
        with torch.no_grad():
            if latents is None:
                latents = model.encode(inputs)
            if structure_features is None:
                condition = model.condition(inputs, available, latents=latents)
            elif isinstance(model, MSGLDM):
                condition = model.condition(inputs, available, latents=latents, structure_features=structure_features)
            else:
                raise ValueError(
                    f"{type(self).__name__} takes structure_features only for an MSGLDM network, got "
                    f"{type(model).__name__}."
                )
        noisy = self.noisy_latents(latents, noise, timesteps)
        prediction = network(torch.cat([noisy, condition.to(noisy.dtype)], dim=1), timesteps=timesteps)
        return prediction, self.training_target(latents, noise, timesteps)

    # ------------------------------------------------------------ sampling
    def denoise(
        self,
        network: nn.Module,
        noise: torch.Tensor,
        condition: torch.Tensor,
        progress: bool | None = None,
        generator: Generators = None,
        known: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoising loop: from ``noise`` to a clean joint latent, conditioned on ``condition``.

        For each timestep of the scheduler (for DDIM, :func:`ddim_step_timesteps`, the timesteps its ``step`` is
        consistent with): with ``known``, replace the ``known_mask`` channels of the latents by
        ``scheduler.add_noise(known, noise, t)``; predict with ``network(cat([latents, condition]), t)`` (the whole
        batch at once); take the scheduler step (rectified flow steps to the next timestep explicitly; see
        :py:meth:`step`). With ``known``, the ``known_mask`` channels of the result are ``known`` exactly.

        Args:
            network: the denoiser (the latent diffusion network).
            noise: ``(B, M * latent_channels, *L)`` initial latents.
            condition: ``(B, condition_channels, *L)``.
            progress: progress bar over the steps; default: the constructor's ``progress``.
            generator: the noise of stochastic scheduler steps: ``None`` (the global RNG of the latents' device),
                one generator on that device for the batch, or one per item (steps taken item by item).
            known: ``(B, M * latent_channels, *L)`` clean latents of the given contrasts (known-contrast guidance);
                ``None``: no guidance.
            known_mask: bool, broadcastable to the latents: the channels ``known`` holds (required with ``known``).

        Returns:
            ``(B, M * latent_channels, *L)``.
        """
        if known is not None and known_mask is None:
            raise ValueError(f"{type(self).__name__}.denoise expects known_mask with known.")
        scheduler = self.scheduler
        if self.rectified_flow:
            numel = int(torch.tensor(noise.shape[2:]).prod())
            scheduler.set_timesteps(self.num_inference_steps, device=noise.device, input_img_size_numel=numel)
        else:
            scheduler.set_timesteps(self.num_inference_steps, device=noise.device)
        if isinstance(scheduler, DDIMScheduler):
            scheduler.timesteps = ddim_step_timesteps(scheduler, self.num_inference_steps, noise.device)
        # rectified flow steps explicitly to the next timestep (the last one to 0)
        next_timestep = (
            dict(zip(scheduler.timesteps.tolist(), scheduler.timesteps[1:].tolist() + [0]))
            if self.rectified_flow
            else {}
        )
        show = (self.progress if progress is None else progress) and has_tqdm
        timesteps = (
            tqdm(scheduler.timesteps, desc="denoising", unit="step", leave=False) if show else scheduler.timesteps
        )
        condition = condition.to(noise.dtype)
        latents = noise
        for t in timesteps:
            if known is not None:  # 0. the given contrasts' channels: their encodings noised to t
                t_batch = torch.full((noise.shape[0],), int(t), device=noise.device, dtype=torch.long)
                noised = scheduler.add_noise(original_samples=known, noise=noise, timesteps=t_batch)
                latents = torch.where(known_mask, noised.to(latents.dtype), latents)
            # 1. predict (noise, velocity or sample, as the scheduler says) from the current latents
            t_input = torch.full((1,), float(t), device=noise.device)
            prediction = network(torch.cat([latents, condition], dim=1), timesteps=t_input)
            # 2. scheduler step
            to = next_timestep[t.item()] if self.rectified_flow else None
            latents = self.step(prediction, t, latents, generator, next_timestep=to)
        if known is not None:
            latents = torch.where(known_mask, known.to(latents.dtype), latents)
        return latents

    def step(
        self,
        prediction: torch.Tensor,
        timestep: torch.Tensor,
        latents: torch.Tensor,
        generator: Generators = None,
        next_timestep: int | None = None,
    ) -> torch.Tensor:
        """One scheduler step of :py:meth:`denoise`: the latents at the next timestep.

        Deterministic steps ignore ``generator``. A stochastic step (DDPM, DDIM with ``eta > 0``) draws its noise
        from ``generator``: ``None`` (the global RNG) or one generator for the whole batch in one batched step; with
        one generator per item, item by item (``scheduler.step`` draws one ``randn`` of its whole input from one
        generator, so a batched step cannot give item ``i`` noise that depends on ``generator[i]`` alone). The
        element-wise step of an item is the same whether taken alone or in a batch. ``next_timestep``: the
        timestep rectified flow steps to.
        """
        scheduler = self.scheduler
        if self.rectified_flow:
            return scheduler.step(prediction, timestep, latents, next_timestep)[0]
        if not self.stochastic_steps:
            return scheduler.step(prediction, timestep, latents, **self.step_kwargs)[0]
        if generator is None or isinstance(generator, torch.Generator):
            return scheduler.step(prediction, timestep, latents, generator=generator, **self.step_kwargs)[0]
        return torch.cat(
            [
                scheduler.step(prediction[i : i + 1], timestep, latents[i : i + 1], generator=g, **self.step_kwargs)[0]
                for i, g in enumerate(generator)
            ]
        )

    def initial_noise(self, shape: Sequence[int], generator: Generators, device: torch.device) -> torch.Tensor:
        """The initial latents ``(B, *shape[1:])`` float32 on ``device``: standard normal drawn on the generator's
        device (the global CPU RNG for ``None``), from ``generator[i]`` alone for item ``i`` when there is one per
        item."""
        shape = tuple(shape)
        if generator is None or isinstance(generator, torch.Generator):
            draw_on = "cpu" if generator is None else generator.device
            return torch.randn(shape, generator=generator, device=draw_on, dtype=torch.float32).to(device)
        items = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generator]
        return torch.cat([item.to(device) for item in items])

    def step_generators(self, generator: Generators, device: torch.device) -> Generators:
        """Generators on ``device`` for the noise of stochastic steps, seeded from ``generator`` (after the initial
        noise was drawn from it): one for one, one per item for one per item; ``None`` (the global RNG of
        ``device``) for ``None`` or when the steps draw nothing."""
        if generator is None or not self.stochastic_steps:
            return None

        def derived(g: torch.Generator) -> torch.Generator:
            seed = int(torch.randint(0, 2**63 - 1, (1,), generator=g, device=g.device))
            return torch.Generator(device=device).manual_seed(seed)

        if isinstance(generator, torch.Generator):
            return derived(generator)
        return [derived(g) for g in generator]

    def synthesize(self, inputs, network, available, noise, generator) -> torch.Tensor:
        """The sampling path (called by :py:meth:`sample`, which validates ``available`` once): computes the
        condition once, runs :py:meth:`denoise` from ``noise`` (:py:meth:`initial_noise` from ``generator`` when
        ``None``: drawn on the generator's device, the CPU for ``torch.Generator()``, so that a seed gives the same
        noise on every device), with the step noise of stochastic schedulers from :py:meth:`step_generators`,
        decodes only the missing contrasts and keeps the given ones exactly. With one generator per item, item
        ``i``'s result depends on ``generator[i]`` only (see the class)."""
        shape = self._latent_shape(inputs, network)
        if noise is None:
            noise = self.initial_noise(shape, generator, inputs.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"{type(self).__name__} expects noise of shape {shape}, got {tuple(noise.shape)}.")
        step_generator = self.step_generators(generator, inputs.device)
        return self._synthesize(inputs, network, available, noise, step_generator, repeats=1)[0]

    def synthesize_many(self, inputs, network, available, generators) -> torch.Tensor:
        """``N = len(generators)`` samples in one batch of ``N * B`` (called by :py:meth:`sample_many`): the
        condition (and the given contrasts' encodings) computed once for the ``B`` inputs, the denoising loop and
        the decoding run once on the ``N * B`` latents. Sample ``n`` draws what :py:meth:`synthesize` would draw from
        ``generators[n]``, so it equals ``sample(..., generator=generators[n])``. Taken one sample after the other
        when ``generators`` mixes kinds or holds single generators for the batch."""
        if not (all(g is None for g in generators) or all(isinstance(g, Sequence) for g in generators)):
            return super().synthesize_many(inputs, network, available, generators)
        shape = self._latent_shape(inputs, network)
        noise = torch.cat([self.initial_noise(shape, g, inputs.device) for g in generators])
        steps = [self.step_generators(g, inputs.device) for g in generators]
        step_generator = None if any(s is None for s in steps) else [g for s in steps for g in s]
        return self._synthesize(inputs, network, available, noise, step_generator, repeats=len(generators))

    def _latent_shape(self, inputs: torch.Tensor, network: nn.Module) -> tuple[int, ...]:
        model = unwrap_network(network)
        return (inputs.shape[0], model.latent_channels(), *model.check_images(inputs))

    def _synthesize(self, inputs, network, available, noise, step_generator, repeats: int) -> torch.Tensor:
        """``repeats`` samples ``(repeats, B, M, *S)`` from ``noise`` ``(repeats * B, ...)`` (sample ``n`` of item
        ``b`` at ``n * B + b``); the condition and the guidance encodings are computed once for the ``B`` inputs."""
        model = unwrap_network(network)
        b, spatial = inputs.shape[0], inputs.shape[2:]
        missing = torch.nonzero(~available.all(dim=0)).flatten().tolist()
        output = inputs.unsqueeze(0).repeat(repeats, *([1] * inputs.ndim))
        if not missing:
            return output
        with sampling_autocast(inputs.device, self.amp, self.cpu_amp):
            known = known_mask = None
            if self.known_contrast_guidance:
                # the given contrasts encoded once: the guidance and the latent part of the condition (hybrid
                # MSG-LDM, plain LDM) both use these posterior means, zero for absent contrasts
                known = self._in_chunks(model.given_latents, inputs, available)
                condition = self._in_chunks(model.condition, inputs, available, known)
                per_contrast = known.shape[1] // model.num_modalities
                known_mask = available.repeat_interleave(per_contrast, dim=1)
                known_mask = known_mask.view(*known_mask.shape, *([1] * (known.ndim - 2)))
                known, known_mask = _tile(known, repeats), _tile(known_mask, repeats)
            else:
                condition = self._in_chunks(model.condition, inputs, available)
            latents = self.denoise(
                network, noise, _tile(condition, repeats), generator=step_generator, known=known, known_mask=known_mask
            )
            decoded = _cat([model.decode(z, modalities=missing).to(inputs.dtype) for z in self._chunks(latents)])
        decoded = decoded.view(repeats, b, len(missing), *spatial)
        keep = available[:, missing].view(1, b, len(missing), *([1] * len(spatial)))
        output[:, :, missing] = torch.where(keep, inputs[:, missing].unsqueeze(0), decoded)
        return output

    def _chunks(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x`` split along the batch into pieces of at most ``image_batch_size`` items (``(x,)`` for ``None``)."""
        return (x,) if self.image_batch_size is None else torch.split(x, self.image_batch_size)

    def _in_chunks(self, fn, images: torch.Tensor, available: torch.Tensor, latents: torch.Tensor | None = None):
        """``fn(images, available[, latents])`` on pieces of at most ``image_batch_size`` items, concatenated."""
        extra = itertools.repeat(None) if latents is None else self._chunks(latents)
        pieces = zip(self._chunks(images), self._chunks(available), extra)
        return _cat([fn(x, a) if z is None else fn(x, a, latents=z) for x, a, z in pieces])


def _cat(pieces: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along the batch, without a copy for a single piece."""
    return pieces[0] if len(pieces) == 1 else torch.cat(list(pieces))


def _tile(x: torch.Tensor, repeats: int) -> torch.Tensor:
    """``x`` ``(B, ...)`` repeated ``repeats`` times along the batch: ``(repeats * B, ...)``."""
    return x if repeats == 1 else x.repeat(repeats, *([1] * (x.ndim - 1)))
