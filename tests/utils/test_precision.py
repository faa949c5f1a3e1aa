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
"""Synthesis precision: which devices get bfloat16 autocast, and the AMX probe against the kernel's CPU flags."""

from __future__ import annotations

import os
import unittest
import warnings
from unittest import mock

import torch
from parameterized import parameterized

from monai_msgldm.utils import cpu_has_amx, sampling_autocast


class TestSamplingAutocast(unittest.TestCase):
    @parameterized.expand(
        [
            ("cpu_amp", "cpu", False, True, True),
            ("cpu_amp_and_amp", "cpu", True, True, True),
            ("cpu_amp_only_for_cuda", "cpu", True, False, False),
            ("cpu_off", "cpu", False, False, False),
        ]
    )
    def test_cpu(self, _, device, amp, cpu_amp, expected):
        """A matrix product inside the context is computed in bfloat16 exactly when CPU autocast is asked for, and
        its value is the float32 product rounded through bfloat16 inputs."""
        a, b = torch.randn(8, 16), torch.randn(16, 4)
        with sampling_autocast(torch.device(device), amp, cpu_amp):
            self.assertEqual(torch.is_autocast_enabled("cpu"), expected)
            product = a @ b
        self.assertFalse(torch.is_autocast_enabled("cpu"))
        if expected:
            self.assertEqual(product.dtype, torch.bfloat16)
            reference = a.bfloat16().float() @ b.bfloat16().float()
            torch.testing.assert_close(product.float(), reference, rtol=1e-2, atol=1e-2)
        else:
            self.assertEqual(product.dtype, torch.float32)
            torch.testing.assert_close(product, a @ b, rtol=0, atol=0)

    @parameterized.expand([("amp", True, False, True), ("no_amp", False, True, False)])
    def test_cuda_context_kind(self, _, amp, cpu_amp, expected):
        """On CUDA only ``amp`` counts (the context object is built without a device, so no GPU is needed)."""
        with warnings.catch_warnings():  # torch.autocast("cuda") warns on a machine without CUDA
            warnings.simplefilter("ignore", UserWarning)
            context = sampling_autocast("cuda", amp, cpu_amp)
        self.assertEqual(isinstance(context, torch.autocast), expected)
        if expected:
            self.assertEqual((context.device, context.fast_dtype), ("cuda", torch.bfloat16))


class TestCpuHasAmx(unittest.TestCase):
    @unittest.skipUnless(os.path.isfile("/proc/cpuinfo"), "needs Linux's /proc/cpuinfo")
    def test_agrees_with_the_kernel_flags(self):
        """Oracle: the kernel lists ``amx_tile`` among the CPU flags when the processor has AMX."""
        with open("/proc/cpuinfo") as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split(":", 1)[1].split()}
        self.assertEqual(cpu_has_amx(), "amx_tile" in flags and torch.backends.mkldnn.is_available())

    def test_false_where_torch_cannot_tell(self):
        with mock.patch.object(torch.cpu, "_is_amx_tile_supported", None, create=True):
            self.assertFalse(cpu_has_amx())
        with mock.patch.object(torch.backends.mkldnn, "is_available", return_value=False):
            self.assertFalse(cpu_has_amx())


if __name__ == "__main__":
    unittest.main()
