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
"""The numeric precision synthesis runs in: bfloat16 autocast where it is fast.

On CUDA, bfloat16 autocast is the usual fast path. On the CPU it depends on the processor: with Intel AMX (Advanced
Matrix Extensions, Xeon Sapphire Rapids and later) oneDNN runs PyTorch's bfloat16 convolutions and matrix products in
AMX tiles, and a default-size volume is synthesized about 3x faster than in float32 (in ``channels_last``; the
figures are in docs/benchmarks.md, bundle 0.17.0). Without AMX (AVX-512 BF16 alone) it gained about 5 % (0.8.0), so
the bundle's ``inference.json`` turns CPU autocast on only where :func:`cpu_has_amx` says so.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["cpu_has_amx", "sampling_autocast"]


def cpu_has_amx() -> bool:
    """Whether this CPU has Intel AMX tiles and PyTorch's oneDNN backend to use them for bfloat16 (False where
    PyTorch cannot tell)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(probe())
    except RuntimeError:
        return False


def sampling_autocast(device: torch.device | str, amp: bool, cpu_amp: bool = False) -> AbstractContextManager:
    """The autocast context of a synthesis on ``device``: bfloat16 autocast on CUDA when ``amp``, on the CPU when
    ``cpu_amp``, otherwise none (float32).

    Args:
        device: where the synthesis runs (``inputs.device``).
        amp: bfloat16 autocast on CUDA.
        cpu_amp: bfloat16 autocast on the CPU (fast with AMX: :func:`cpu_has_amx`).
    """
    kind = torch.device(device).type
    if (kind == "cuda" and amp) or (kind == "cpu" and cpu_amp):
        return torch.autocast(kind, dtype=torch.bfloat16)
    return nullcontext()
