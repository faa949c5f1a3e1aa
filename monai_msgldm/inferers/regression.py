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
"""The sampling and training paths of the regression baseline (one forward pass, no diffusion)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from monai_msgldm.inferers.sampler import SynthesisSampler
from monai_msgldm.utils.precision import sampling_autocast

__all__ = ["RegressionSynthesisInferer"]


class RegressionSynthesisInferer(SynthesisSampler):
    """Runs a regression synthesis network (:py:class:`~monai_msgldm.networks.nets.RegressionSynthesisNet`:
    ``network(images, available) -> (B, M, *S)``) where a sampling inferer is expected.

    ``inferer(images, network, available)`` is the training forward (the prediction of every contrast);
    :py:meth:`sample` validates ``available`` once, runs one forward pass and keeps the given contrasts exactly,
    the missing ones predicted and clamped to ``clip_range``. It has the call signature of
    :py:meth:`MultiContrastDiffusionInferer.sample` (``noise`` and ``generator``, one or one per item, are not used:
    the model is deterministic and draws nothing, so its result never depends on the batch or the seed), so
    ``ModalitySynthesisInferer`` and ``SynthesisEvaluator`` run either model.

    Args:
        amp: bfloat16 autocast on CUDA.
        cpu_amp: bfloat16 autocast on the CPU (fast with Intel AMX: :func:`monai_msgldm.utils.cpu_has_amx`).
        clip_range: ``(low, high)`` for the predicted contrasts, or ``None``.

    Example::

        out = RegressionSynthesisInferer().sample(images, net, available)
    """

    def __init__(
        self, amp: bool = True, clip_range: tuple[float, float] | None = (-1.0, 1.0), cpu_amp: bool = False
    ) -> None:
        super().__init__()
        if clip_range is not None and (len(clip_range) != 2 or float(clip_range[0]) >= float(clip_range[1])):
            raise ValueError(
                f"RegressionSynthesisInferer expects clip_range None or (low, high) with low < high, got {clip_range!r}."
            )
        self.amp = bool(amp)
        self.cpu_amp = bool(cpu_amp)
        self.clip_range = None if clip_range is None else (float(clip_range[0]), float(clip_range[1]))

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: nn.Module, available: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The training forward: ``(B, M, *S)`` predictions of every contrast."""
        return network(inputs, self.availability(inputs, network, available))

    def synthesize(self, inputs, network, available, noise, generator) -> torch.Tensor:
        """One forward pass (called by :py:meth:`sample`, which validates ``available``): the given contrasts as in
        ``inputs``, the missing ones predicted (see the class); ``noise`` and ``generator`` are not used."""
        output = inputs.clone()
        if bool(available.all()):
            return output
        with sampling_autocast(inputs.device, self.amp, self.cpu_amp):
            prediction = network(inputs, available)
        prediction = prediction.to(inputs.dtype)
        if self.clip_range is not None:
            prediction = prediction.clamp(*self.clip_range)
        keep = available.view(*available.shape, *([1] * (inputs.ndim - 2)))
        return torch.where(keep, output, prediction)
