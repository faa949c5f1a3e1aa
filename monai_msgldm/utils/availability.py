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
"""The availability mask: which contrasts a sample has. Validated once, at the boundary where it enters a model.

The mask is made once in the data (:py:class:`monai_msgldm.transforms.StackModalitiesd` writes it under
``"available"``; :py:class:`~monai_msgldm.transforms.RandModalityDropoutd` hides contrasts in training), travels in
the batch as a ``(B, M)`` tensor, and is validated by :py:func:`validate_availability` where it enters an inferer
or an engine. The network blocks behind that boundary only check its shape and dtype (tensor metadata: no host
synchronisation); :py:func:`strict_availability_checks` turns on the full value check inside the blocks too (for
tests and debugging).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = [
    "check_availability_shape",
    "strict_availability_checks",
    "strict_availability_checks_enabled",
    "validate_availability",
]

_STRICT = os.environ.get("MONAI_MSGLDM_STRICT_CHECKS", "0").lower() in ("1", "true", "yes")


def validate_availability(
    available: torch.Tensor,
    batch_size: int,
    num_modalities: int,
    device: torch.device | str | None = None,
    caller: str = "validate_availability",
) -> torch.Tensor:
    """The full check of an availability mask, with one host synchronisation; returns it as a bool tensor.

    Args:
        available: ``(B, M)`` tensor (or nested sequence) of booleans or 0/1 values.
        batch_size: the expected ``B``.
        num_modalities: the expected ``M``.
        device: device of the returned mask; default: that of ``available``.
        caller: the name put in error messages (the class or function whose argument this is).

    Returns:
        ``(B, M)`` bool tensor on ``device``.

    Raises:
        ValueError: wrong shape, values other than booleans / 0 / 1, or a row without any available modality.
    """
    mask = torch.as_tensor(available)
    if tuple(mask.shape) != (int(batch_size), int(num_modalities)):
        raise ValueError(
            f"{caller} expects available of shape ({batch_size}, {num_modalities}) (B, M), got {tuple(mask.shape)}."
        )
    if mask.dtype == torch.bool:
        binary = torch.ones((), dtype=torch.bool, device=mask.device)
    else:
        binary = ((mask == 0) | (mask == 1)).all()
        mask = mask != 0
    # one host synchronisation for both value checks
    is_binary, empty_rows = bool(binary), (~mask.any(dim=1)).nonzero().flatten().tolist()
    if not is_binary:
        raise ValueError(f"{caller} expects available to hold booleans or 0/1 values, got other values.")
    if empty_rows:
        raise ValueError(
            f"{caller} expects at least one available modality per sample, got none in batch rows {empty_rows}."
        )
    return mask if device is None else mask.to(device)


def check_availability_shape(available: torch.Tensor, batch_size: int, num_modalities: int, caller: str) -> None:
    """The check a block makes behind the boundary: shape and bool dtype only (tensor metadata, no host sync); the
    values are checked too when :py:func:`strict_availability_checks` is on.

    Raises:
        ValueError: not a ``(B, M)`` bool tensor (or, in strict mode, a row without any available modality).
    """
    if not isinstance(available, torch.Tensor) or available.dtype != torch.bool:
        got = available.dtype if isinstance(available, torch.Tensor) else type(available).__name__
        raise ValueError(
            f"{caller} expects available to be a bool tensor (validate it once with "
            f"monai_msgldm.utils.validate_availability), got {got}."
        )
    if tuple(available.shape) != (int(batch_size), int(num_modalities)):
        raise ValueError(
            f"{caller} expects available of shape ({batch_size}, {num_modalities}) (B, M), got {tuple(available.shape)}."
        )
    if _STRICT:
        validate_availability(available, batch_size, num_modalities, caller=caller)


def strict_availability_checks_enabled() -> bool:
    """Whether the blocks re-check the mask values (see :py:func:`strict_availability_checks`)."""
    return _STRICT


@contextlib.contextmanager
def strict_availability_checks(enabled: bool = True) -> Iterator[None]:
    """Within this context the blocks re-check the availability values (one host sync each): an assertion mode for
    tests. The environment variable ``MONAI_MSGLDM_STRICT_CHECKS=1`` turns it on for a whole process."""
    global _STRICT
    previous, _STRICT = _STRICT, bool(enabled)
    try:
        yield
    finally:
        _STRICT = previous
