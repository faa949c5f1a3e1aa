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
"""Where a batch of inputs has content: the box a synthesis can be limited to, and what lies outside it.

A volume preprocessed like BraTS is cropped to the brain's 3D bounding box and padded to the model's field of view,
but each slice holds less brain than the volume: near the top and the bottom of the head, a fraction of it. The
networks of a latent diffusion model cost in proportion to the pixels they see, so a batch of slices synthesized
inside the bounding box of its own content (plus a margin, rounded up to what the network can take) costs that
fraction of the full slice (docs/benchmarks.md measures it on whole volumes).
"""

from __future__ import annotations

import torch
from monai.transforms.utils import generate_spatial_bounding_box

__all__ = ["background_filled", "foreground_box"]


def _item_minimum(images: torch.Tensor) -> torch.Tensor:
    """``(B, M)``: each item's least value per channel over its spatial dims."""
    return images.flatten(2).amin(dim=-1)


def foreground_box(
    images: torch.Tensor, available: torch.Tensor, margin: int = 0, divisor: int = 1
) -> tuple[slice, ...] | None:
    """The spatial box that holds the content of every item of ``images``, widened by ``margin`` and rounded up to a
    multiple of ``divisor``, or ``None`` when that box is the whole input (nothing to gain) or there is no content.

    A voxel is content when some available channel of its item is above that channel's least value over the item
    (the background of a skull-stripped, min-max scaled image; the definition of the empty slices the synthesis
    skips). An image whose background is noise rather than one value has content everywhere: no box.

    The box keeps ``margin`` voxels of background around the content where the input has them; a side rounded up to
    ``divisor`` grows on both sides around its centre and is shifted back inside the input at an edge; a side that
    cannot be rounded within the input stays the whole side.

    Args:
        images: ``(B, M, *S)``.
        available: ``(B, M)`` bool, which channels of each item are given (the others hold no information).
        margin: background voxels kept on each side of the content, >= 0.
        divisor: every side of the box is a multiple of this (the network's ``size_divisor``), >= 1.

    Returns:
        one ``slice`` per spatial dim, or ``None``.

    Example::

        >>> x = -torch.ones(1, 2, 64, 64); x[..., 20:30, 10:50] = 0.5
        >>> foreground_box(x, torch.tensor([[True, False]]), margin=4, divisor=16)
        (slice(9, 41, None), slice(6, 54, None))
    """
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"foreground_box expects margin to be an int >= 0, got {margin!r}.")
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"foreground_box expects divisor to be an int >= 1, got {divisor!r}.")
    spatial = tuple(images.shape[2:])
    low = _item_minimum(images).view(*images.shape[:2], *([1] * len(spatial)))
    given = available.to(torch.bool).view(*available.shape, *([1] * len(spatial)))
    content = ((images > low) & given).flatten(0, 1).any(dim=0, keepdim=True)  # (1, *S)
    if not bool(content.any()):
        return None
    start, end = generate_spatial_bounding_box(content, margin=margin, allow_smaller=True)
    box = []
    for lo, hi, size in zip(start, end, spatial):
        length = (hi - lo) + (-(hi - lo)) % divisor
        if length >= size:
            box.append(slice(0, size))
            continue
        lo = min(max(lo - (length - (hi - lo)) // 2, 0), size - length)
        box.append(slice(lo, lo + length))
    if all(s.start == 0 and s.stop == size for s, size in zip(box, spatial)):
        return None
    return tuple(box)


def background_filled(images: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """``images`` ``(B, M, *S)`` with each item's absent channels set to its background: the least value of its
    available channels (what a synthesis outside the content of the given contrasts should be).

    Example::

        >>> x = torch.tensor([[[-1.0, 0.5], [0.2, 0.7]]])  # (1, 2, 2): channel 1 absent
        >>> background_filled(x, torch.tensor([[True, False]]))
        tensor([[[-1.0000,  0.5000],
                 [-1.0000, -1.0000]]])
    """
    low = _item_minimum(images)
    given = available.to(torch.bool)
    background = torch.where(given, low, torch.full_like(low, float("inf"))).amin(dim=1)  # (B,)
    shape = (images.shape[0], 1, *([1] * (images.ndim - 2)))
    given = given.view(*given.shape, *([1] * (images.ndim - 2)))
    return torch.where(given, images, background.view(shape).to(images.dtype))
