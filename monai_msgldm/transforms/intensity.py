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
"""Per-modality intensity scaling that leaves absent modalities out (no scaling of constant fill channels)."""

from __future__ import annotations

from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import ScaleIntensityRangePercentiles, Transform
from monai.utils import TransformBackends, convert_to_tensor

from .modality_dropout import ApplyModalityMaskd, as_availability_mask

__all__ = [
    "ScalePresentModalities",
    "ScalePresentModalitiesd",
    "ScalePresentModalitiesD",
    "ScalePresentModalitiesDict",
]


class ScalePresentModalities(Transform):
    """Scale each present modality channel from its ``lower``..``upper`` percentiles to ``b_min``..``b_max`` (MONAI's
    ``ScaleIntensityRangePercentiles`` per channel) and set the channels of absent modalities to ``fill_value``.

    Absent channels never go through the percentile scaling: they are constant fill values, whose percentile range
    is empty (MONAI would warn "Divide by zero (a_min == a_max)" for each of them).

    Args:
        lower: lower percentile, in [0, 100).
        upper: upper percentile, in (lower, 100].
        b_min: value the lower percentile maps to.
        b_max: value the upper percentile maps to.
        clip: clip the result to ``[b_min, b_max]``.
        fill_value: value of the absent channels (``b_min``: the background of the scaled images).

    Example::

        >>> img = torch.stack([torch.rand(8, 8), torch.zeros(8, 8)])
        >>> out = ScalePresentModalities(0, 100, -1, 1, fill_value=-1)(img, torch.tensor([True, False]))
        >>> float(out[0].min()), float(out[0].max()), bool((out[1] == -1).all())
        (-1.0, 1.0, True)
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        lower: float = 0.0,
        upper: float = 100.0,
        b_min: float = -1.0,
        b_max: float = 1.0,
        clip: bool = True,
        fill_value: float | None = None,
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(
                f"ScalePresentModalities expects percentiles 0 <= lower < upper <= 100, got lower={lower}, "
                f"upper={upper}."
            )
        self.scaler = ScaleIntensityRangePercentiles(lower, upper, b_min, b_max, clip=clip, channel_wise=False)
        self.fill_value = float(b_min if fill_value is None else fill_value)

    def __call__(self, img: NdarrayOrTensor, available: Any) -> NdarrayOrTensor:
        """
        Args:
            img: ``(M, *spatial)``, one channel per modality (a MetaTensor keeps its meta data).
            available: ``(M,)`` bool or 0/1 mask of the present modalities.
        """
        mask = as_availability_mask(available, int(img.shape[0]), "ScalePresentModalities available")
        tensor = convert_to_tensor(img, track_meta=True)
        out = torch.full_like(tensor, self.fill_value, dtype=torch.promote_types(tensor.dtype, torch.float32))
        for channel in mask.nonzero()[0].tolist():
            out[channel] = convert_to_tensor(self.scaler(tensor[channel : channel + 1]), track_meta=False)[0]
        return out


class ScalePresentModalitiesd(ApplyModalityMaskd):
    """Dictionary-based :py:class:`ScalePresentModalities`; the mask is read from ``available_key`` (the data flow of
    :py:class:`~monai_msgldm.transforms.ApplyModalityMaskd`, with scaling of the present channels added).

    Args:
        keys: keys of the ``(M, *spatial)`` stacked images.
        available_key: key of the ``(M,)`` availability mask (written by ``StackModalitiesd``).
        lower, upper, b_min, b_max, clip, fill_value: see :py:class:`ScalePresentModalities`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ScalePresentModalities.backend

    def __init__(
        self,
        keys: KeysCollection,
        available_key: str = "available",
        lower: float = 0.0,
        upper: float = 100.0,
        b_min: float = -1.0,
        b_max: float = 1.0,
        clip: bool = True,
        fill_value: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, available_key=available_key, allow_missing_keys=allow_missing_keys)
        self.masker = ScalePresentModalities(lower, upper, b_min, b_max, clip, fill_value)


ScalePresentModalitiesD = ScalePresentModalitiesDict = ScalePresentModalitiesd
