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
"""What the sampling inferers share: the ``sample`` interface and the one availability check at their boundary."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.inferers import Inferer

from monai_msgldm.utils.availability import validate_availability

__all__ = ["SynthesisSampler", "unwrap_network"]

#: The random source of one sampling call: ``None`` (the global RNG), one ``torch.Generator`` for the whole batch, or
#: one generator per batch item (the noise of item ``i`` then depends on ``generators[i]`` only, not on the batch).
Generators = torch.Generator | Sequence[torch.Generator] | None


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module inside a ``DataParallel`` / ``DistributedDataParallel`` wrapper (``network`` itself otherwise)."""
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return network.module
    return network


class SynthesisSampler(Inferer):
    """Base of the inferers that synthesize missing contrasts: ``sample(inputs, network, available, noise=None,
    generator=None, checked=False) -> (B, M, *S)`` with the given contrasts kept exactly
    (:py:class:`~monai_msgldm.inferers.MultiContrastDiffusionInferer`,
    :py:class:`~monai_msgldm.inferers.RegressionSynthesisInferer`). ``ModalitySynthesisInferer`` and
    ``SynthesisEvaluator`` run any of them.

    ``generator`` is one ``torch.Generator`` for the batch or a sequence of ``B`` generators, one per batch item: with
    one per item, every random draw of item ``i`` comes from ``generator[i]`` alone, so its synthesis does not depend
    on which other items share its batch (``ModalitySynthesisInferer`` seeds one per slice this way)."""

    def availability(
        self, inputs: torch.Tensor, network: nn.Module, available: torch.Tensor, checked: bool = False
    ) -> torch.Tensor:
        """``available`` validated for ``inputs`` and ``network`` (one host sync), or as it is when the caller has
        ``checked`` it already (a bool tensor on the device of ``inputs``)."""
        if checked:
            return available
        model = unwrap_network(network)
        return validate_availability(
            available, inputs.shape[0], model.num_modalities, inputs.device, type(self).__name__
        )

    @torch.no_grad()
    def sample(
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        available: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: Generators = None,
        checked: bool = False,
    ) -> torch.Tensor:
        """Synthesize the missing contrasts of ``inputs`` from the available ones, without gradients.

        Args:
            inputs: ``(B, M, *S)`` in [-1, 1]; the channels of absent contrasts are ignored (any value).
            network: the synthesis network (eval mode is the caller's choice), possibly DDP-wrapped.
            available: ``(B, M)`` bool (or 0/1) availability mask, at least one True per row.
            noise: the initial noise of a stochastic sampler (drawn from ``generator`` when ``None``).
            generator: the random source of a stochastic sampler: ``None`` (the global RNG), one
                ``torch.Generator`` for the batch, or a sequence of ``B`` generators, one per item, which makes each
                item's result independent of the batch it is sampled in.
            checked: ``available`` was already validated by the caller (a bool tensor on the device of ``inputs``,
                e.g. by :py:class:`ModalitySynthesisInferer` once per volume): skip the check.

        Returns:
            ``(B, M, *S)``: the given contrasts exactly as in ``inputs``, the missing ones synthesized.
        """
        self.check_inputs(inputs, network)
        self.check_generator(inputs, generator)
        available = self.availability(inputs, network, available, checked)
        return self.synthesize(inputs, network, available, noise, generator)

    @torch.no_grad()
    def sample_many(
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        available: torch.Tensor,
        generators: Sequence[Generators],
        checked: bool = False,
    ) -> torch.Tensor:
        """``N = len(generators)`` samples of :py:meth:`sample`, sample ``n`` drawn from ``generators[n]`` (each
        ``None``, one generator or one per item, as for :py:meth:`sample`): ``(N, B, M, *S)``, with sample ``n``
        equal to ``sample(inputs, network, available, generator=generators[n])``. The posterior mean and the
        per-voxel spread of a stochastic sampler come from these (:py:class:`ModalitySynthesisInferer` with
        ``num_samples``); a deterministic sampler returns ``N`` equal samples.

        Raises:
            ValueError: no generators, or one that does not fit ``inputs`` (see :py:meth:`sample`).
        """
        if isinstance(generators, torch.Generator) or not isinstance(generators, Sequence) or not generators:
            raise ValueError(
                f"{type(self).__name__}.sample_many expects a non-empty sequence of generators (one per sample), "
                f"got {generators!r}."
            )
        self.check_inputs(inputs, network)
        for generator in generators:
            self.check_generator(inputs, generator)
        available = self.availability(inputs, network, available, checked)
        return self.synthesize_many(inputs, network, available, list(generators))

    def synthesize_many(self, inputs, network, available, generators) -> torch.Tensor:
        """:py:meth:`sample_many` after the checks; default: :py:meth:`synthesize` once per generator."""
        return torch.stack([self.synthesize(inputs, network, available, None, g) for g in generators])

    def check_generator(self, inputs: torch.Tensor, generator: Generators) -> None:
        """``generator`` is ``None``, a ``torch.Generator`` or a sequence of one generator per item of ``inputs``."""
        if generator is None or isinstance(generator, torch.Generator):
            return
        name = type(self).__name__
        if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(
                f"{name} expects generator to be None, a torch.Generator or a sequence of them, got {generator!r}."
            )
        if len(generator) != inputs.shape[0]:
            raise ValueError(f"{name} expects one generator per batch item ({inputs.shape[0]}), got {len(generator)}.")

    def check_inputs(self, inputs: torch.Tensor, network: nn.Module) -> None:
        """The shape contract of ``inputs`` for ``network`` (no host sync); checked before the mask. Default: the
        network's ``check_images`` when it has one."""
        check = getattr(unwrap_network(network), "check_images", None)
        if callable(check):
            check(inputs)

    def synthesize(self, inputs, network, available, noise, generator) -> torch.Tensor:
        """:py:meth:`sample` after the availability check (``available`` a validated bool tensor)."""
        raise NotImplementedError(f"{type(self).__name__} must implement synthesize().")
