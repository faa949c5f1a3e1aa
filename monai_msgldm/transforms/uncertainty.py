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
"""Splitting a synthesis with its uncertainty map: what :py:class:`~monai_msgldm.inferers.ModalitySynthesisInferer`
returns with ``return_std=True`` (``cat([mean, std])`` on the channel axis) into the synthesis and the map."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform

from ..constants import MODALITIES

__all__ = [
    "SplitSynthesisStd",
    "SplitSynthesisStdD",
    "SplitSynthesisStdDict",
    "SplitSynthesisStdd",
]


class SplitSynthesisStd(Transform):
    """Split ``(2 * M, *S)`` = ``cat([synthesis, std])`` into the synthesis ``(M, *S)`` and its per-voxel standard
    deviation ``(M, *S)``; an input of ``M`` channels (synthesized without a std map) is returned with ``None``.

    Args:
        num_modalities: the number of contrasts M.
        channel_dim: the channel axis (0 for a channel-first item, 1 for a batch ``(B, 2 * M, *S)``).

    Example::

        >>> mean, std = SplitSynthesisStd(4)(torch.zeros(8, 16, 16))
        >>> mean.shape, std.shape
        (torch.Size([4, 16, 16]), torch.Size([4, 16, 16]))
    """

    def __init__(self, num_modalities: int = len(MODALITIES), channel_dim: int = 0) -> None:
        if isinstance(num_modalities, bool) or not isinstance(num_modalities, int) or num_modalities < 1:
            raise ValueError(f"SplitSynthesisStd expects num_modalities >= 1, got {num_modalities!r}.")
        if channel_dim not in (0, 1):
            raise ValueError(f"SplitSynthesisStd expects channel_dim 0 or 1, got {channel_dim!r}.")
        self.num_modalities = num_modalities
        self.channel_dim = channel_dim

    def __call__(self, img: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor | None]:
        m, dim = self.num_modalities, self.channel_dim
        channels = img.shape[dim] if img.ndim > dim else None
        if channels == m:
            return img, None
        if channels != 2 * m:
            raise ValueError(
                f"SplitSynthesisStd expects {m} channels (a synthesis) or {2 * m} (a synthesis and its std map) on "
                f"axis {dim}, got shape {tuple(img.shape)}."
            )
        if dim == 0:
            return img[:m], img[m:]
        return img[:, :m], img[:, m:]


class SplitSynthesisStdd(MapTransform):
    """Dictionary-based :py:class:`SplitSynthesisStd`: ``data[key]`` becomes the synthesis and ``data[std_key]``
    its standard-deviation map (nothing is added when the synthesis has no std map); both keep the meta data.

    Args:
        keys: the key of the synthesis (one key).
        std_key: where the std map goes.
        num_modalities: the number of contrasts M.
        channel_dim: the channel axis (1 for the batched output of an evaluator that does not decollate).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        std_key: str = "pred_std",
        num_modalities: int = len(MODALITIES),
        channel_dim: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SplitSynthesisStdd expects exactly one key, got {self.keys}.")
        if not std_key or std_key in self.keys:
            raise ValueError(f"SplitSynthesisStdd expects a std_key other than {self.keys[0]!r}, got {std_key!r}.")
        self.std_key = std_key
        self.splitter = SplitSynthesisStd(num_modalities, channel_dim)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mean, std = self.splitter(d[key])
            d[key] = mean
            if std is not None:
                d[self.std_key] = std
        return d


SplitSynthesisStdD = SplitSynthesisStdDict = SplitSynthesisStdd
