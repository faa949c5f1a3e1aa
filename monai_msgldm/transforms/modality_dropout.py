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
"""Missing-modality simulation: mask modality channels of a stacked (M, *spatial) image.

The image holds one channel per modality (order :data:`monai_msgldm.constants.MODALITIES`) and travels
with an (M,) boolean availability mask. :class:`RandModalityDropout` hides a random subset of the
available channels (MSG-LDM training masks 0..3 of the 4 modalities per sample);
:class:`ApplyModalityMask` sets the channels of absent modalities to a fixed value.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy

__all__ = [
    "ApplyModalityMask",
    "ApplyModalityMaskd",
    "ApplyModalityMaskD",
    "ApplyModalityMaskDict",
    "RandModalityDropout",
    "RandModalityDropoutd",
    "RandModalityDropoutD",
    "RandModalityDropoutDict",
    "as_availability_mask",
]


def as_availability_mask(available: Any, num_modalities: int, name: str = "available") -> np.ndarray:
    """Validate an availability mask and return it as an (M,) numpy bool array.

    Args:
        available: (M,) sequence, numpy array or tensor of booleans or 0/1 values.
        num_modalities: M, the number of modality channels it must describe.
        name: argument name used in error messages.

    Returns:
        np.ndarray of dtype bool and shape (M,).

    Raises:
        ValueError: when the shape is not (M,) or a value is neither 0 nor 1.

    Example::

        >>> as_availability_mask(torch.tensor([1, 0, 1, 1]), 4)
        array([ True, False,  True,  True])
    """
    mask = np.asarray(convert_to_numpy(available, wrap_sequence=True))
    if mask.shape != (num_modalities,):
        raise ValueError(f"{name} expects an availability mask of shape ({num_modalities},), got shape {mask.shape}.")
    if mask.dtype != np.bool_:
        if not np.all(np.isin(mask, (0, 1))):
            raise ValueError(f"{name} expects boolean or 0/1 availability values, got {mask.tolist()}.")
        mask = mask.astype(bool)
    return mask


def _fill_channels(img: NdarrayOrTensor, channels: np.ndarray, fill_value: float) -> NdarrayOrTensor:
    """Return a copy of ``img`` with the channels selected by the (M,) bool array ``channels`` set to ``fill_value``."""
    if isinstance(img, torch.Tensor):
        out = img.clone()  # a MetaTensor stays a MetaTensor, with its meta data
        out[torch.as_tensor(channels, device=img.device)] = fill_value
        return out
    out = np.array(img, copy=True)
    out[channels] = fill_value
    return out


def _mask_like(mask: np.ndarray, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """The (M,) bool mask as a plain torch tensor on the image's device, or a numpy array for numpy images."""
    if isinstance(img, torch.Tensor):
        return torch.as_tensor(mask.copy(), dtype=torch.bool, device=img.device)
    return mask.copy()


def _num_channels(img: Any, name: str) -> int:
    shape = getattr(img, "shape", None)
    if shape is None or len(shape) < 2:
        raise ValueError(f"{name} expects a channel-first image (M, *spatial), got shape {shape}.")
    return int(shape[0])


class ApplyModalityMask(Transform):
    """Set the channels of absent modalities to ``fill_value``.

    Used after intensity scaling to make absent modalities exactly equal to the background value
    (-1 for images scaled to [-1, 1]).

    Args:
        fill_value: value written into the channels whose mask entry is False.

    Example::

        >>> img = torch.rand(4, 8, 8)
        >>> out = ApplyModalityMask(fill_value=-1.0)(img, torch.tensor([True, False, True, True]))
        >>> bool((out[1] == -1).all())
        True
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, fill_value: float = 0.0) -> None:
        self.fill_value = float(fill_value)

    def __call__(self, img: NdarrayOrTensor, available: Any) -> NdarrayOrTensor:
        """
        Args:
            img: (M, *spatial) numpy array or tensor, one channel per modality.
            available: (M,) bool mask (or 0/1 values), True where the modality is present.

        Returns:
            A copy of ``img`` (same type) with the absent channels equal to ``fill_value``;
            ``img`` itself when every modality is available.
        """
        mask = as_availability_mask(available, _num_channels(img, "ApplyModalityMask"), "ApplyModalityMask available")
        if mask.all():
            return img
        return _fill_channels(img, ~mask, self.fill_value)


class ApplyModalityMaskd(MapTransform):
    """Dictionary-based version of :class:`ApplyModalityMask`.

    Args:
        keys: keys of the (M, *spatial) images to mask.
        available_key: key of the (M,) availability mask in the data dictionary (required).
        fill_value: value written into the channels of absent modalities.
        allow_missing_keys: don't raise an exception if an image key is missing.

    Example::

        >>> d = {"image": torch.rand(4, 8, 8), "available": torch.tensor([True, True, False, True])}
        >>> out = ApplyModalityMaskd("image", fill_value=-1.0)(d)
        >>> bool((out["image"][2] == -1).all())
        True
    """

    def __init__(
        self,
        keys: KeysCollection,
        available_key: str = "available",
        fill_value: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.available_key = available_key
        self.masker = ApplyModalityMask(fill_value=fill_value)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.available_key not in d:
            raise ValueError(
                f"{type(self).__name__} expects the availability mask under available_key '{self.available_key}', "
                f"got data keys {list(d)}."
            )
        for key in self.key_iterator(d):
            d[key] = self.masker(d[key], d[self.available_key])
        return d


class RandModalityDropout(RandomizableTransform):
    """Randomly hide a subset of the available modality channels of a stacked image.

    With probability ``prob``, the number of channels to drop is drawn uniformly from
    ``0..max_missing`` (capped so that at least ``min_available`` modalities stay available), then that
    many channels are chosen uniformly among the currently available ones and set to ``fill_value``.
    MSG-LDM trains with 4 modalities, ``min_available=1``: 0..3 modalities hidden per sample.

    When a mask of the really available modalities is given, only those can be dropped and the returned
    mask is the AND of the given mask and the kept channels; the channels already absent are left as they are.
    A mask with fewer available modalities than ``min_available`` (e.g. an incomplete study with a single contrast)
    is returned unchanged: nothing is dropped, so at least one present modality always stays.

    Args:
        prob: probability of applying the dropout at all (otherwise the image and mask are returned unchanged).
        min_available: the least number of modalities left available (>= 1: never all of them dropped).
        max_missing: the most channels dropped per call; ``None`` means ``M - min_available``.
        fill_value: value written into dropped channels (0.0 for raw intensities, -1.0 for images in [-1, 1]).

    Example::

        >>> t = RandModalityDropout(prob=1.0, min_available=1).set_random_state(0)
        >>> img, available = t(torch.rand(4, 16, 16))
        >>> img.shape, available.dtype, bool(available.any())
        (torch.Size([4, 16, 16]), torch.bool, True)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, prob: float = 1.0, min_available: int = 1, max_missing: int | None = None, fill_value: float = 0.0
    ) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"RandModalityDropout expects prob in [0, 1], got {prob}.")
        if isinstance(min_available, bool) or int(min_available) != min_available or min_available < 1:
            raise ValueError(f"RandModalityDropout expects min_available to be an integer >= 1, got {min_available}.")
        if max_missing is not None and (
            isinstance(max_missing, bool) or int(max_missing) != max_missing or max_missing < 0
        ):
            raise ValueError(
                f"RandModalityDropout expects max_missing to be None or an integer >= 0, got {max_missing}."
            )
        RandomizableTransform.__init__(self, prob)
        self.min_available = int(min_available)
        self.max_missing = None if max_missing is None else int(max_missing)
        self.fill_value = float(fill_value)
        self._drop: np.ndarray = np.zeros(0, dtype=bool)

    def randomize(self, data: Any = None) -> None:
        """Draw whether to apply and which channels to drop.

        Args:
            data: (M,) bool mask of the currently available modalities.
        """
        super().randomize(None)
        available = np.asarray(data, dtype=bool) if data is not None else np.zeros(())
        if available.ndim != 1:
            raise ValueError(
                f"RandModalityDropout.randomize expects the (M,) availability mask, got {type(data).__name__} "
                f"of shape {available.shape}."
            )
        self._drop = np.zeros(available.shape[0], dtype=bool)
        if not self._do_transform:
            return
        candidates = np.flatnonzero(available)
        limit = len(candidates) - self.min_available
        if self.max_missing is not None:
            limit = min(limit, self.max_missing)
        num_drop = int(self.R.randint(0, max(limit, 0) + 1))
        if num_drop > 0:
            self._drop[self.R.choice(candidates, size=num_drop, replace=False)] = True

    def draw_mask(self, available: Any) -> np.ndarray:
        """Draw a new subset and return the (M,) bool availability after dropping (no image involved): the mask
        draw that :py:meth:`__call__` applies to an image, for callers that only need the mask (e.g. engines that
        hide contrasts from a network's input while keeping the image as the target).

        Args:
            available: (M,) bool or 0/1 mask of the modalities really present, at least one True.
        """
        mask = as_availability_mask(available, len(available), "RandModalityDropout available")
        if not mask.any():
            raise ValueError("RandModalityDropout expects at least one available modality in available, got none.")
        self.randomize(mask)
        return mask & ~self._drop

    def __call__(
        self, img: NdarrayOrTensor, available: Any | None = None, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """
        Args:
            img: (M, *spatial) numpy array or tensor (a MetaTensor stays a MetaTensor), one channel per modality.
            available: optional (M,) bool mask of the modalities really present; default: all present.
            randomize: whether to draw a new subset; False re-applies the previous draw (e.g. to a second key).

        Returns:
            ``(image, available)``: the image with the dropped channels equal to ``fill_value``, and the (M,)
            bool availability after dropping (a torch bool tensor on the image's device, or a numpy array
            for numpy images).

        Raises:
            ValueError: when the mask has no available modality, or ``randomize=False`` before any draw
                for this number of channels.
        """
        num_channels = _num_channels(img, "RandModalityDropout")
        if available is None:
            mask = np.ones(num_channels, dtype=bool)
        else:
            mask = as_availability_mask(available, num_channels, "RandModalityDropout available")
        if not mask.any():
            raise ValueError("RandModalityDropout expects at least one available modality in available, got none.")
        if randomize:
            self.randomize(mask)
        elif self._drop.shape != (num_channels,):
            raise ValueError(
                f"RandModalityDropout with randomize=False expects a previous draw for {num_channels} channels, "
                f"got one for {self._drop.shape[0]}."
            )
        drop = self._drop & mask
        if not drop.any():
            return img, _mask_like(mask, img)
        return _fill_channels(img, drop, self.fill_value), _mask_like(mask & ~drop, img)


class RandModalityDropoutd(RandomizableTransform, MapTransform):
    """Dictionary-based version of :class:`RandModalityDropout`.

    The same channels are dropped in every key of ``keys`` (typically only the stacked ``"image"``). An
    existing availability mask under ``available_key`` is respected (only available modalities can be
    dropped).

    Two uses:

    - ``mask_key=None`` (default), simulating missing contrasts in the data: the dropped channels are set to
      ``fill_value`` in every key and the resulting mask is written back to ``available_key`` as an (M,) torch
      bool tensor (all True when no mask was there and nothing was dropped);
    - ``mask_key="input_available"``, drawing the input mask of a trainer that keeps the full image as its target
      (what the bundle's stage-1, stage-2 and baseline training chains do): the drawn (M,) mask is written under
      ``mask_key``; the images and the data mask under ``available_key`` are left as they are. The trainers read
      it with ``input_mask_key`` (e.g. :py:class:`monai_msgldm.engines.LatentDiffusionTrainer`). It is a subset of
      the data mask: a contrast an incomplete study lacks is never drawn as given, and a sample with a single present
      contrast is given that one (the trainers' losses then count only the present contrasts).

    The draw is :py:meth:`RandModalityDropout.draw_mask`'s: ``0..max_missing`` available channels hidden, uniformly,
    keeping at least ``min_available``.

    Args:
        keys: keys of the (M, *spatial) images.
        available_key: key of the (M,) availability mask of the data, read if present; written when ``mask_key``
            is None.
        prob: probability of applying the dropout.
        min_available: the least number of modalities left available (>= 1).
        max_missing: the most channels dropped per sample; ``None`` means ``M - min_available``.
        fill_value: value written into dropped channels (not used with ``mask_key``).
        allow_missing_keys: don't raise an exception if a key is missing.
        mask_key: where to write the drawn mask without touching the images (see above); None: ``available_key``,
            with the images masked.

    Example::

        >>> t = RandModalityDropoutd("image", fill_value=-1.0).set_random_state(0)
        >>> out = t({"image": torch.rand(4, 16, 16)})
        >>> out["available"].shape
        torch.Size([4])
        >>> t = RandModalityDropoutd("image", mask_key="input_available").set_random_state(0)
        >>> out = t({"image": torch.rand(4, 16, 16), "available": torch.tensor([True, True, False, True])})
        >>> bool((out["input_available"] & ~out["available"]).any())  # a subset of the data mask
        False
    """

    backend = RandModalityDropout.backend

    def __init__(
        self,
        keys: KeysCollection,
        available_key: str = "available",
        prob: float = 1.0,
        min_available: int = 1,
        max_missing: int | None = None,
        fill_value: float = 0.0,
        allow_missing_keys: bool = False,
        mask_key: str | None = None,
    ) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"RandModalityDropoutd expects prob in [0, 1], got {prob}.")
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if mask_key is not None and (not isinstance(mask_key, str) or mask_key in (available_key, *self.keys)):
            raise ValueError(
                f"RandModalityDropoutd expects mask_key to be None or a key other than available_key "
                f"'{available_key}' and the image keys {list(self.keys)}, got {mask_key!r}."
            )
        self.available_key = available_key
        self.mask_key = mask_key
        self.dropper = RandModalityDropout(
            prob=1.0, min_available=min_available, max_missing=max_missing, fill_value=fill_value
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandModalityDropoutd:
        super().set_random_state(seed, state)
        self.dropper.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        num_channels = _num_channels(d[keys[0]], f"RandModalityDropoutd key '{keys[0]}'")
        for key in keys[1:]:
            other = _num_channels(d[key], f"RandModalityDropoutd key '{key}'")
            if other != num_channels:
                raise ValueError(
                    f"RandModalityDropoutd expects the same number of modality channels in '{keys[0]}' and '{key}', "
                    f"got {num_channels} and {other}."
                )
        if self.available_key in d:
            mask = as_availability_mask(
                d[self.available_key], num_channels, f"RandModalityDropoutd '{self.available_key}'"
            )
        else:
            mask = np.ones(num_channels, dtype=bool)
        if not mask.any():
            raise ValueError(
                f"RandModalityDropoutd expects at least one available modality in '{self.available_key}', got none."
            )
        self.randomize(None)
        if self._do_transform:
            new_mask = self.dropper.draw_mask(mask)
            if self.mask_key is None:
                for key in keys:
                    d[key], _ = self.dropper(d[key], mask, randomize=False)
        else:
            new_mask = mask
        first = d[keys[0]]
        device = first.device if isinstance(first, torch.Tensor) else None
        out_key = self.available_key if self.mask_key is None else self.mask_key
        d[out_key] = torch.as_tensor(new_mask.copy(), dtype=torch.bool, device=device)
        return d


ApplyModalityMaskD = ApplyModalityMaskDict = ApplyModalityMaskd
RandModalityDropoutD = RandModalityDropoutDict = RandModalityDropoutd
