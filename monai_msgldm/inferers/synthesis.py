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
"""Whole-input synthesis: runs a sampling inferer (diffusion or regression) on 2D slices, on 3D volumes slice by
slice with a 2D model, or on 3D volumes with a 3D model."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import optional_import

from monai_msgldm.constants import MODALITIES
from monai_msgldm.inferers.diffusion import MultiContrastDiffusionInferer, paper_noise_scheduler
from monai_msgldm.inferers.foreground_crop import background_filled, foreground_box
from monai_msgldm.inferers.sampler import unwrap_network
from monai_msgldm.utils.availability import validate_availability

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["ModalitySynthesisInferer", "resolve_availability"]

logger = logging.getLogger(__name__)


def resolve_availability(
    available: torch.Tensor | Sequence[bool] | Sequence[str],
    batch_size: int,
    modalities: Sequence[str] = MODALITIES,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The validated ``(B, M)`` bool availability mask from what a caller gives: a ``(B, M)`` / ``(M,)`` bool or 0/1
    tensor or sequence, or a sequence of modality names.

    Raises:
        ValueError: unknown modality names, a wrong mask shape, values other than booleans / 0 / 1, or a sample
            with no available modality.
    """
    m = len(modalities)
    if isinstance(available, (list, tuple)) and available and all(isinstance(a, str) for a in available):
        unknown = [a for a in available if a not in modalities]
        if unknown:
            raise ValueError(f"available names unknown modalities {unknown}; expected names among {list(modalities)}.")
        mask = torch.tensor([name in available for name in modalities], dtype=torch.bool)
    else:
        mask = torch.as_tensor(available)
    if mask.ndim == 1 and mask.shape[0] == m:
        mask = mask.unsqueeze(0).expand(batch_size, m)
    return validate_availability(mask, batch_size, m, device, "available")


def _check_num_samples(num_samples: Any, sampler: Any) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"ModalitySynthesisInferer expects num_samples >= 1, got {num_samples!r}.")
    if num_samples > 1 and not callable(getattr(sampler, "sample_many", None)):
        raise ValueError(
            f"ModalitySynthesisInferer expects a sampler with sample_many() for num_samples > 1, got "
            f"{type(sampler).__name__}."
        )


def _default_sampler() -> MultiContrastDiffusionInferer:
    """DDIM on the paper's noise schedule (1000 steps, scaled linear betas 0.0015 -> 0.0195, epsilon), 20 steps."""
    return MultiContrastDiffusionInferer(paper_noise_scheduler("ddim"), num_inference_steps=20)


class ModalitySynthesisInferer(Inferer):
    """Synthesizes the missing contrasts of whole inputs with a sampling inferer: 2D slices, 3D volumes with a 2D
    model (slice-wise, in batches of ``slice_batch_size`` slices), or 3D volumes with a 3D model.

    ``sampler`` does the synthesis of one batch (:py:meth:`MultiContrastDiffusionInferer.sample` for the latent
    diffusion models, :py:meth:`RegressionSynthesisInferer.sample` for the regression baseline); this inferer
    validates the availability mask once per call, pads to the model's ``size_divisor`` and crops back, batches the
    slices, and seeds the noise. Every item -- slice ``k`` (along ``slice_axis``) of input ``b`` of the batch, or
    input ``b`` itself (``k = 0``) for 2D inputs and 3D models -- gets its own generator, seeded by ``(seed, b, k)``
    (:py:meth:`item_generator`), and the sampler draws every random number of that item from it alone (its initial
    noise and, for stochastic schedulers, its step noise: see :py:class:`MultiContrastDiffusionInferer`). So a seed
    gives the same synthesis whatever ``slice_batch_size`` is and whichever slices are skipped; on the CPU, results
    for different ``slice_batch_size`` agree exactly (the network treats batch items independently; batched
    kernels on other devices may differ in the last bits). Slices in which every available contrast is constant
    (the empty slices above and below the head) are not sampled: their missing contrasts get that slice's background
    value (the least value of its available contrasts). With ``channels_last=True`` a 2D model runs in
    ``channels_last`` memory format (converted in place, weights unchanged); it is off by default: on the 2-core
    development CPU it gave no gain for the default model (docs/benchmarks.md). This is the ``inferer`` of the
    bundle's ``inference.json`` (MONAI Label calls ``inferer(inputs, network)``, MONAI's evaluator
    ``inferer(inputs, network, available=...)``).

    Args:
        sampler: the sampling inferer; default: DDIM with 20 steps on the paper's epsilon schedule (give the one the
            model was trained with: the bundle configs do).
        slice_batch_size: number of 2D slices sampled together when a 2D model runs on a volume.
        slice_axis: spatial axis of the slices (0-based over the spatial dims; -1 = last, axial after RAI).
        available: default availability (names, or bools in modality order) when a call gives none.
        modalities: modality names in channel order.
        seed: seed of the noise (reproducible sampling, independent of ``slice_batch_size``); None = the global
            RNG (a new sample at each call).
        progress: show a progress bar over slice batches.
        skip_empty_slices: do not sample slices without content (see above).
        channels_last: run 2D models in ``channels_last`` memory format.
        num_samples: ``N`` samples per item (:py:meth:`SynthesisSampler.sample_many`, one batch of ``N`` times the
            slice batch): the result is their voxel-wise mean (the posterior mean of a diffusion sampler). Sample
            ``0`` of an item is drawn from :py:meth:`item_generator` ``(seed, b, k)``, sample ``n > 0`` from
            ``(seed, b, k, n)``; so ``num_samples=1`` is plain sampling.
        return_std: also return the per-voxel standard deviation over the ``N`` samples (``torch.std``, unbiased;
            zero for ``N = 1``, for the given contrasts, for skipped slices and outside the foreground box): the
            result is then ``cat([mean, std], dim=1)``, ``(B, 2 * M, *S)``;
            :py:class:`~monai_msgldm.transforms.SplitSynthesisStdd` splits it. This is the uncertainty map of the
            synthesis.
        crop_foreground: synthesize each batch (a slice batch of a volume, or the batch of 2D / 3D inputs) inside
            the box that holds its content (:py:func:`~monai_msgldm.inferers.foreground_crop.foreground_box`: the
            given contrasts above their background, widened by ``crop_margin`` and rounded up to the network's
            ``size_divisor``); outside the box the missing contrasts get the background value, as the empty slices
            do. The networks then see only that box: on a whole BraTS-like volume at the default size about two
            thirds of the pixels (docs/benchmarks.md has the time and the quality measured). The result is not
            bit-equal to the full-size synthesis (the convolutions and attention see less background, the noise has
            the box's shape), and the box is the union over the batch, so it depends on ``slice_batch_size``.
        crop_margin: background voxels kept around the content with ``crop_foreground``, >= 0.

    Example::

        sampler = MultiContrastDiffusionInferer(DDIMScheduler(...), num_inference_steps=20)
        inferer = ModalitySynthesisInferer(sampler, slice_batch_size=16)
        volume = inferer(images, network, available=["t1", "t2", "flair"])  # images (1, 4, H, W, D)
    """

    def __init__(
        self,
        sampler: Inferer | None = None,
        slice_batch_size: int = 16,
        slice_axis: int = -1,
        available: Sequence[str] | Sequence[bool] | None = None,
        modalities: Sequence[str] = MODALITIES,
        seed: int | None = 0,
        progress: bool = True,
        skip_empty_slices: bool = True,
        channels_last: bool = False,
        num_samples: int = 1,
        return_std: bool = False,
        crop_foreground: bool = False,
        crop_margin: int = 8,
    ) -> None:
        super().__init__()
        sampler = _default_sampler() if sampler is None else sampler
        if not callable(getattr(sampler, "sample", None)):
            raise ValueError(
                "ModalitySynthesisInferer expects sampler to be a sampling inferer with a sample() method "
                f"(MultiContrastDiffusionInferer, RegressionSynthesisInferer), got {type(sampler).__name__}."
            )
        if isinstance(slice_batch_size, bool) or not isinstance(slice_batch_size, int) or slice_batch_size < 1:
            raise ValueError(f"ModalitySynthesisInferer expects slice_batch_size >= 1, got {slice_batch_size!r}.")
        _check_num_samples(num_samples, sampler)
        if isinstance(crop_margin, bool) or not isinstance(crop_margin, int) or crop_margin < 0:
            raise ValueError(f"ModalitySynthesisInferer expects crop_margin to be an int >= 0, got {crop_margin!r}.")
        self.crop_foreground = bool(crop_foreground)
        self.crop_margin = crop_margin
        self.num_samples = num_samples
        self.return_std = bool(return_std)
        self.sampler = sampler
        self.slice_batch_size = slice_batch_size
        self.slice_axis = slice_axis
        self.available = available
        self.modalities = tuple(modalities)
        self.seed = seed
        self.progress = progress
        self.skip_empty_slices = skip_empty_slices
        self.channels_last = channels_last

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        available: torch.Tensor | Sequence[bool] | Sequence[str] | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        """Synthesize the missing modalities of ``inputs`` ``(B, M, *S)``; returns ``(B, M, *S)`` (the mean of
        ``num_samples`` samples), or ``(B, 2 * M, *S)`` (mean and standard deviation) with ``return_std``.

        ``available``: ``(B, M)`` / ``(M,)`` bools or modality names; default: the constructor's ``available``.
        """
        model = unwrap_network(network)
        num_modalities = getattr(model, "num_modalities", None)
        if num_modalities is None:
            raise ValueError(
                f"ModalitySynthesisInferer expects network to be a synthesis network with num_modalities (MSGLDM, "
                f"PlainConditionalLDM, RegressionSynthesisNet), got {type(model).__name__}."
            )
        if inputs.ndim < 4 or inputs.shape[1] != num_modalities:
            raise ValueError(f"inputs must have shape (B, {num_modalities}, *spatial), got {tuple(inputs.shape)}.")
        if len(self.modalities) != num_modalities:
            raise ValueError(
                f"ModalitySynthesisInferer expects {num_modalities} modality names (the network's num_modalities), "
                f"got {list(self.modalities)}."
            )
        available = available if available is not None else self.available
        if available is None:
            raise ValueError(
                "ModalitySynthesisInferer expects available (which contrasts each input has: a (B, M) mask or "
                "modality names), from the call or the constructor; got none. In the bundle it comes from the data "
                "(StackModalitiesd writes it under 'available')."
            )
        images = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        mask = resolve_availability(available, images.shape[0], self.modalities, images.device)
        n_spatial = images.ndim - 2
        was_training = model.training
        model.eval()
        if self.channels_last and model.spatial_dims == 2:
            model.to(memory_format=torch.channels_last)
        try:
            if n_spatial == model.spatial_dims:
                out, std = self._run(network, images, mask, [(b, 0) for b in range(images.shape[0])])
            elif n_spatial == 3 and model.spatial_dims == 2:
                out, std = self._run_slices(network, images, mask)
            else:
                raise ValueError(
                    f"inputs with {n_spatial} spatial dims cannot be synthesized by a {model.spatial_dims}D model."
                )
        finally:
            model.train(was_training)
        if self.return_std:
            out = torch.cat([out, std], dim=1)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return out

    def with_samples(self, num_samples: int, return_std: bool | None = None) -> ModalitySynthesisInferer:
        """A copy of this inferer that draws ``num_samples`` samples per item, with the std map when ``return_std``
        (default: ``num_samples > 1``); this one is unchanged (e.g. a MONAI Label request parameter on the
        bundle's inferer)."""
        _check_num_samples(num_samples, self.sampler)
        other = copy.copy(self)
        other.num_samples = num_samples
        other.return_std = num_samples > 1 if return_std is None else bool(return_std)
        return other

    @staticmethod
    def item_generator(seed: int, batch_index: int, slice_index: int = 0, sample_index: int = 0) -> torch.Generator:
        """The CPU generator of one item: slice ``slice_index`` of input ``batch_index`` (``slice_index`` 0 for 2D
        inputs and 3D models), seeded by ``(seed, batch_index, slice_index)`` through ``numpy.random.SeedSequence``
        (well-mixed 64-bit seeds: no two items of a call or of nearby seeds share a stream); sample
        ``sample_index > 0`` of that item (``num_samples``) by ``(seed, batch_index, slice_index, sample_index)``.
        ``seed`` is taken modulo 2**64, as ``torch.manual_seed`` does."""
        entropy = [int(seed) % 2**64, int(batch_index), int(slice_index)]
        if sample_index:
            entropy.append(int(sample_index))
        state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def _generators(self, items, sample_index: int = 0) -> list[torch.Generator] | None:
        """One generator per ``(batch_index, slice_index)`` of ``items`` for sample ``sample_index``; ``None`` (the
        global RNG) without a seed."""
        if self.seed is None:
            return None
        return [self.item_generator(self.seed, b, k, sample_index) for b, k in items]

    def _run(
        self, network: nn.Module, images: torch.Tensor, mask: torch.Tensor, items: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Synthesize ``(B, M, *S)``: the mean of ``num_samples`` samples and, with ``return_std``, their standard
        deviation (else ``None``); with ``crop_foreground`` inside the batch's foreground box only. ``items`` are
        the ``(batch_index, slice_index)`` of the batch's items (their generators)."""
        factor = int(getattr(unwrap_network(network), "size_divisor", 1))
        box = foreground_box(images, mask, self.crop_margin, factor) if self.crop_foreground else None
        if box is None:
            return self._run_padded(network, images, mask, items, factor)
        region = (slice(None), slice(None), *box)
        inner, inner_std = self._run_padded(network, images[region].contiguous(), mask, items, factor)
        out = background_filled(images, mask)
        out[region] = inner
        if inner_std is None:
            return out, None
        std = torch.zeros_like(out)
        std[region] = inner_std
        return out, std

    def _run_padded(
        self,
        network: nn.Module,
        images: torch.Tensor,
        mask: torch.Tensor,
        items: Sequence[tuple[int, int]],
        factor: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:py:meth:`_run` on the whole of ``images``, padded to a multiple of ``factor`` (the model's
        ``size_divisor``) and cropped back."""
        spatial = tuple(images.shape[2:])
        crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
        padded_shape = tuple(s + (-s) % factor for s in spatial)
        padded = images
        if padded_shape != spatial:
            # pad at the far end with each channel's minimum (its background; zero would be mid-grey in [-1, 1])
            background = images.reshape(*images.shape[:2], -1).amin(dim=-1)
            background = background.view(*images.shape[:2], *([1] * len(spatial)))
            padded = background.expand(*images.shape[:2], *padded_shape).clone()
            padded[crop] = images
        if self.num_samples == 1:
            out = self.sampler.sample(padded, network, mask, generator=self._generators(items), checked=True)[crop]
            return out, (torch.zeros_like(out) if self.return_std else None)
        generators = [self._generators(items, n) for n in range(self.num_samples)]
        samples = self.sampler.sample_many(padded, network, mask, generators, checked=True)[(slice(None), *crop)]
        return samples.mean(dim=0), (samples.std(dim=0) if self.return_std else None)

    def _run_slices(
        self, network: nn.Module, images: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slice-wise synthesis of volumes ``(B, M, X, Y, Z)`` with a 2D model; the noise of slice ``k`` of volume
        ``b`` is drawn from its own generator (``(seed, b, k)``), whatever batch it is sampled in."""
        axis = 2 + (self.slice_axis % 3)
        vol = images.movedim(axis, 2)  # (B, M, N, h, w)
        b, m, n = vol.shape[:3]
        slices = vol.permute(0, 2, 1, 3, 4).reshape(b * n, m, *vol.shape[3:])
        slice_mask = mask.repeat_interleave(n, dim=0)
        # start from "every missing contrast is background"; then sample the slices with content
        flat = slices.flatten(2)
        low, high = flat.amin(dim=-1), flat.amax(dim=-1)  # (b * n, M)
        out = background_filled(slices, slice_mask)
        std = torch.zeros_like(out) if self.return_std else None
        if self.skip_empty_slices:
            todo = torch.nonzero(((high > low) & slice_mask).any(dim=1)).flatten()
        else:
            todo = torch.arange(b * n, device=slices.device)
        flat_indices = todo.tolist() if self.seed is not None else []  # one host sync per call
        starts = range(0, len(todo), self.slice_batch_size)
        bar = tqdm(starts, desc="synthesis", unit="batch") if self.progress and has_tqdm else starts
        for start in bar:
            index = todo[start : start + self.slice_batch_size]
            # flat index i = b * n + k: slice k of volume b
            items = [divmod(i, n) for i in flat_indices[start : start + self.slice_batch_size]]
            out[index], batch_std = self._run(network, slices[index], slice_mask[index], items)
            if std is not None:
                std[index] = batch_std

        def to_volume(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, n, m, *vol.shape[3:]).permute(0, 2, 1, 3, 4).movedim(2, axis)

        return to_volume(out), (None if std is None else to_volume(std))
