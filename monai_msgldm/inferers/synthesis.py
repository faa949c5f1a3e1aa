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
"""Inferer that runs the whole MSG-LDM sampling on a batch of 2D slices or 3D volumes."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import optional_import

from monai_msgldm.constants import MODALITIES

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["ModalitySynthesisInferer", "resolve_availability"]

logger = logging.getLogger(__name__)


def resolve_availability(
    inputs: torch.Tensor,
    available: torch.Tensor | Sequence[bool] | Sequence[str] | None = None,
    modalities: Sequence[str] = MODALITIES,
) -> torch.Tensor:
    """The ``(B, M)`` bool availability mask for ``inputs`` ``(B, M, *S)``.

    Taken, in order of precedence, from ``available`` (a ``(B, M)`` / ``(M,)`` bool tensor or sequence, or a sequence
    of modality names), from ``inputs.meta["available"]`` when ``inputs`` is a MetaTensor carrying it, or else
    detected: a channel that is constant over the whole sample (e.g. the zero- or -1-filled channel of a missing
    modality) is taken as missing.

    Raises:
        ValueError: unknown modality names, a wrong mask shape, or a sample with no available modality.
    """
    b, m = inputs.shape[:2]
    if available is None and isinstance(inputs, MetaTensor) and "available" in inputs.meta:
        available = inputs.meta["available"]
    if available is None:
        flat = inputs.detach().reshape(b, m, -1)
        mask = flat.amax(dim=-1) > flat.amin(dim=-1)
    elif isinstance(available, (list, tuple)) and available and all(isinstance(a, str) for a in available):
        unknown = [a for a in available if a not in modalities]
        if unknown:
            raise ValueError(f"available names unknown modalities {unknown}; expected names among {list(modalities)}.")
        mask = torch.tensor([name in available for name in modalities], dtype=torch.bool).expand(b, m)
    else:
        mask = torch.as_tensor(available, dtype=torch.bool)
        if mask.ndim == 1:
            mask = mask.unsqueeze(0).expand(b, -1)
        if tuple(mask.shape) != (b, m):
            raise ValueError(f"available must have shape ({b}, {m}) or ({m},), got {tuple(mask.shape)}.")
    mask = mask.to(inputs.device)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("available: every sample needs at least one available modality, got a sample with none.")
    return mask


class ModalitySynthesisInferer(Inferer):
    """Runs :py:meth:`MSGLDM.synthesize` on whole inputs: 2D slices, 3D volumes with a 2D model (slice-wise, in
    batches of ``slice_batch_size`` slices), or 3D volumes with a 3D model.

    The condition (``F_s`` for MSG-LDM) is computed once per slice batch, without gradient tracking; inputs whose
    in-plane size is not divisible by the model's ``size_divisor`` are padded and cropped back. Slices in which
    every available contrast is constant (the empty slices above and below the head) are not sampled: their
    missing contrasts get that slice's background value (the least value of its available contrasts). With
    ``channels_last=True`` a 2D model runs in ``channels_last`` memory format (converted in place, weights unchanged);
    it is off by default: on the 2-core development CPU it gave no gain for the default model (docs/benchmarks.md).
    This is the ``inferer`` of the bundle's ``inference.json`` (MONAI Label calls
    ``inferer(inputs, network)``).

    Args:
        num_inference_steps: DDIM steps.
        slice_batch_size: number of 2D slices sampled together when a 2D model runs on a volume.
        slice_axis: spatial axis of the slices (0-based over the spatial dims; -1 = last, axial after RAI).
        available: default availability (names, or bools in modality order); None = from the call, the
            MetaTensor meta, or detection of constant channels (see :py:func:`resolve_availability`).
        modalities: modality names in channel order.
        amp: autocast (bfloat16) on CUDA.
        seed: seed of the initial noise (reproducible sampling); None = random.
        progress: show a progress bar over slice batches.
        skip_empty_slices: do not sample slices without content (see above).
        channels_last: run 2D models in ``channels_last`` memory format.

    Example::

        inferer = ModalitySynthesisInferer(num_inference_steps=50, slice_batch_size=16)
        volume = inferer(images, network, available=["t1", "t2", "flair"])  # images (1, 4, H, W, D)
    """

    def __init__(
        self,
        num_inference_steps: int = 50,
        slice_batch_size: int = 16,
        slice_axis: int = -1,
        available: Sequence[str] | Sequence[bool] | None = None,
        modalities: Sequence[str] = MODALITIES,
        amp: bool = True,
        seed: int | None = 0,
        progress: bool = True,
        skip_empty_slices: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if num_inference_steps < 1:
            raise ValueError(f"ModalitySynthesisInferer expects num_inference_steps >= 1, got {num_inference_steps}.")
        if slice_batch_size < 1:
            raise ValueError(f"ModalitySynthesisInferer expects slice_batch_size >= 1, got {slice_batch_size}.")
        self.num_inference_steps = num_inference_steps
        self.slice_batch_size = slice_batch_size
        self.slice_axis = slice_axis
        self.available = available
        self.modalities = tuple(modalities)
        self.amp = amp
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
        """Synthesize the missing modalities of ``inputs`` ``(B, M, *S)``; returns ``(B, M, *S)``."""
        model = network.module if hasattr(network, "module") and not hasattr(network, "synthesize") else network
        if not hasattr(model, "synthesize"):
            raise ValueError(f"network must be an MSGLDM (with a synthesize method), got {type(model).__name__}.")
        if inputs.ndim < 4 or inputs.shape[1] != model.num_modalities:
            raise ValueError(
                f"inputs must have shape (B, {model.num_modalities}, *spatial), got {tuple(inputs.shape)}."
            )
        mask = resolve_availability(inputs, available if available is not None else self.available, self.modalities)
        images = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        n_spatial = images.ndim - 2
        was_training = model.training
        model.eval()
        if self.channels_last and model.spatial_dims == 2:
            model.to(memory_format=torch.channels_last)
        try:
            if n_spatial == model.spatial_dims:
                out = self._run(model, images, mask, generator)
            elif n_spatial == 3 and model.spatial_dims == 2:
                out = self._run_slices(model, images, mask, generator)
            else:
                raise ValueError(
                    f"inputs with {n_spatial} spatial dims cannot be synthesized by a {model.spatial_dims}D model."
                )
        finally:
            model.train(was_training)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return out

    def _run(
        self, model: nn.Module, images: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Synthesize ``(B, M, *S)`` with padding to the autoencoder's factor and cropping back."""
        factor = int(getattr(model, "size_divisor", 1))
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
        out = model.synthesize(
            padded, mask, num_inference_steps=self.num_inference_steps, generator=generator, amp=self.amp
        )
        return out[crop]

    def _run_slices(
        self, model: nn.Module, images: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Slice-wise synthesis of volumes ``(B, M, X, Y, Z)`` with a 2D model."""
        axis = 2 + (self.slice_axis % 3)
        vol = images.movedim(axis, 2)  # (B, M, N, h, w)
        b, m, n = vol.shape[:3]
        slices = vol.permute(0, 2, 1, 3, 4).reshape(b * n, m, *vol.shape[3:])
        slice_mask = mask.repeat_interleave(n, dim=0)
        # start from "every missing contrast is background"; then sample the slices with content
        flat = slices.flatten(2)
        low, high = flat.amin(dim=-1), flat.amax(dim=-1)  # (b * n, M)
        background = torch.where(slice_mask, low, torch.full_like(low, float("inf"))).amin(dim=1)
        out = torch.where(slice_mask[:, :, None, None], slices, background[:, None, None, None].to(slices.dtype))
        if self.skip_empty_slices:
            todo = torch.nonzero(((high > low) & slice_mask).any(dim=1)).flatten()
        else:
            todo = torch.arange(b * n, device=slices.device)
        starts = range(0, len(todo), self.slice_batch_size)
        bar = tqdm(starts, desc="synthesis", unit="batch") if self.progress and has_tqdm else starts
        for start in bar:
            index = todo[start : start + self.slice_batch_size]
            out[index] = self._run(model, slices[index], slice_mask[index], generator)
        out = out.reshape(b, n, m, *vol.shape[3:]).permute(0, 2, 1, 3, 4)
        return out.movedim(2, axis)
