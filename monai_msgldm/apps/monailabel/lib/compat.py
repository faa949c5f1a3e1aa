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
"""Make monailabel importable with a CPU build of PyTorch.

monailabel 0.8.5 pulls a torchvision wheel built for CUDA; with a CPU torch, ``import torchvision`` fails with
``operator torchvision::nms does not exist`` because the wheel's C++ ops are not loaded. Defining the two operator
schemas before torchvision is imported lets it import (its Python code registers fake kernels against them); the
image ops themselves stay unavailable, and this app does not use them.
"""

from __future__ import annotations

import sys

import torch

__all__ = ["define_torchvision_schemas"]

_LIBRARIES: list = []  # keep the Library objects alive: the schemas are removed when they are collected


def define_torchvision_schemas() -> bool:
    """Define ``torchvision::nms`` and ``torchvision::qnms`` when torch is a CPU build and torchvision is not yet
    imported; returns whether it did. Call it before anything imports monailabel's task modules."""
    if torch.version.cuda is not None or "torchvision" in sys.modules or _LIBRARIES:
        return False
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return False  # a working torchvision build already registered its ops
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(lib)
    return True
