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

from __future__ import annotations

import unittest

import numpy as np
import scipy.fft
import torch
from parameterized import parameterized

from monai_msgldm.losses import dct_basis, dct_nd, idct_nd

__all__: list[str] = []

SHAPES = [
    ((3, 7), 1),
    ((2, 1, 24, 20), 2),
    ((1, 2, 5, 9), 2),
    ((2, 1, 6, 8, 5), 3),
    ((1, 1, 16, 16, 16), 3),
]
CASES = [(shape, sd, dtype) for shape, sd in SHAPES for dtype in (torch.float32, torch.float64)]


class TestDCT(unittest.TestCase):
    @parameterized.expand(CASES)
    def test_matches_scipy(self, shape, spatial_dims, dtype):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        axes = tuple(range(-spatial_dims, 0))
        expected = scipy.fft.dctn(x.double().numpy(), type=2, norm="ortho", axes=axes)
        out = dct_nd(x, spatial_dims)
        self.assertEqual(out.dtype, dtype)
        self.assertEqual(out.shape, x.shape)
        np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-5, rtol=0)
        inverse_expected = scipy.fft.idctn(x.double().numpy(), type=2, norm="ortho", axes=axes)
        np.testing.assert_allclose(idct_nd(x, spatial_dims).double().numpy(), inverse_expected, atol=1e-5, rtol=0)

    @parameterized.expand(CASES)
    def test_parseval_and_inverse(self, shape, spatial_dims, dtype):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        coeffs = dct_nd(x, spatial_dims)
        torch.testing.assert_close(coeffs.pow(2).sum(), x.pow(2).sum(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(idct_nd(coeffs, spatial_dims), x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dct_nd(idct_nd(x, spatial_dims), spatial_dims), x, rtol=1e-5, atol=1e-5)

    def test_only_last_axes_transformed(self):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        out = dct_nd(x, 2)
        for b in range(2):
            for c in range(3):
                np.testing.assert_allclose(out[b, c].numpy(), scipy.fft.dctn(x[b, c].numpy(), norm="ortho"), atol=1e-12)

    def test_basis_orthonormal_and_cached(self):
        basis = dct_basis(7, dtype=torch.float64)
        torch.testing.assert_close(basis @ basis.T, torch.eye(7, dtype=torch.float64))
        np.testing.assert_allclose(basis[0].numpy(), np.full(7, 1 / np.sqrt(7)), atol=1e-12)
        self.assertIs(dct_basis(7, dtype=torch.float64), basis)
        self.assertIsNot(dct_basis(7, dtype=torch.float32), basis)

    def test_constant_signal_is_dc_only(self):
        x = torch.full((1, 1, 4, 6), 2.0, dtype=torch.float64)
        out = dct_nd(x, 2)
        self.assertAlmostEqual(out[0, 0, 0, 0].item(), 2.0 * np.sqrt(24), places=10)
        self.assertAlmostEqual(out.abs().sum().item() - out[0, 0, 0, 0].item(), 0.0, places=10)

    @parameterized.expand([(dct_nd,), (idct_nd,)])
    def test_gradcheck(self, fn):
        x = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
        self.assertTrue(torch.autograd.gradcheck(lambda t: fn(t, 2), (x,)))
        y = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)
        self.assertTrue(torch.autograd.gradcheck(lambda t: fn(t, 3), (y,)))

    def test_basis_created_in_inference_mode_usable_with_autograd(self):
        with torch.inference_mode():
            dct_nd(torch.rand(1, 1, 11, 13), 2)  # fills the cache inside inference mode
        x = torch.rand(1, 1, 11, 13, requires_grad=True)
        dct_nd(x, 2).pow(2).sum().backward()
        torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-4, atol=1e-5)  # Parseval: d/dx ||Cx||^2 = 2x

    def test_integer_input_converted(self):
        x = torch.arange(6).reshape(2, 3)
        out = dct_nd(x, 1)
        self.assertTrue(out.is_floating_point())
        np.testing.assert_allclose(out.numpy(), scipy.fft.dct(x.numpy().astype(float), norm="ortho"), atol=1e-5)

    @parameterized.expand([(0,), (5,), (-1,), (2.0,), (True,)])
    def test_bad_spatial_dims(self, spatial_dims):
        with self.assertRaisesRegex(ValueError, "spatial_dims"):
            dct_nd(torch.rand(2, 3, 4, 5), spatial_dims)

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, "real-valued"):
            dct_nd(torch.rand(2, 4, dtype=torch.complex64), 1)
        with self.assertRaisesRegex(ValueError, "torch.Tensor"):
            idct_nd(np.zeros((2, 4)), 1)
        with self.assertRaisesRegex(ValueError, "size"):
            dct_basis(0)
        with self.assertRaisesRegex(ValueError, "floating point"):
            dct_basis(4, dtype=torch.int64)


if __name__ == "__main__":
    unittest.main()
