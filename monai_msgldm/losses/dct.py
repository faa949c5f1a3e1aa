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
"""Orthonormal N-dimensional DCT-II (and its inverse) in PyTorch, differentiable and exact."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["dct_basis", "dct_nd", "idct_nd"]


@lru_cache(maxsize=64)
def _cached_dct_basis(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Built in float64 then cast, and outside any inference-mode block: a basis first created under
    # ``torch.inference_mode()`` would otherwise be an inference tensor that autograd refuses to save later.
    with torch.inference_mode(False), torch.no_grad():
        n = torch.arange(size, dtype=torch.float64)
        k = n[:, None]
        basis = torch.cos(math.pi * (2.0 * n[None, :] + 1.0) * k / (2.0 * size)) * math.sqrt(2.0 / size)
        basis[0] = basis[0] / math.sqrt(2.0)
        return basis.to(dtype=dtype, device=device)


def dct_basis(size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """
    Orthonormal DCT-II matrix ``C`` of shape (size, size): ``C[k, n] = a_k cos(pi (2n + 1) k / (2 size))`` with
    ``a_0 = sqrt(1 / size)`` and ``a_k = sqrt(2 / size)`` otherwise, so that ``C @ C.T`` is the identity and
    ``C @ v`` equals ``scipy.fft.dct(v, type=2, norm="ortho")``. Matrices are cached per size, dtype and device.

    Args:
        size: length of the transformed axis, >= 1.
        dtype: floating point dtype of the matrix.
        device: device of the matrix (default CPU).

    Returns:
        the (size, size) DCT-II matrix (do not modify it in place: it is shared through the cache).

    Raises:
        ValueError: when ``size`` is not a positive integer or ``dtype`` is not a floating point dtype.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"dct_basis expects size to be a positive int, got {size!r}.")
    if not dtype.is_floating_point:
        raise ValueError(f"dct_basis expects a floating point dtype, got {dtype}.")
    return _cached_dct_basis(size, dtype, torch.device("cpu") if device is None else torch.device(device))


def _check_input(x: torch.Tensor, spatial_dims: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} expects x to be a torch.Tensor, got {type(x).__name__}.")
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or not 1 <= spatial_dims <= x.ndim:
        raise ValueError(
            f"{name} expects spatial_dims to be an int in [1, x.ndim={x.ndim}] (x has shape {tuple(x.shape)}), "
            f"got {spatial_dims!r}."
        )
    if x.is_complex():
        raise ValueError(f"{name} expects a real-valued x, got dtype {x.dtype}.")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    return x


def _apply_along_last_dims(x: torch.Tensor, spatial_dims: int, transpose: bool) -> torch.Tensor:
    for dim in range(x.ndim - spatial_dims, x.ndim):
        basis = dct_basis(x.shape[dim], dtype=x.dtype, device=x.device)
        # forward transform: y = C v, i.e. (..., n) @ C.T ; inverse: v = C.T y, i.e. (..., k) @ C
        matrix = basis if transpose else basis.T
        x = torch.matmul(x.movedim(dim, -1), matrix).movedim(-1, dim)
    return x


def dct_nd(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """
    Orthonormal DCT-II over the last ``spatial_dims`` axes of ``x``, computed with matrix products (exact and
    differentiable). Equals ``scipy.fft.dctn(x, type=2, norm="ortho", axes=range(-spatial_dims, 0))``.

    Args:
        x: real tensor of shape (..., *spatial), e.g. (B, C, H, W) with ``spatial_dims=2`` or (B, C, H, W, D) with
            ``spatial_dims=3``. Integer tensors are converted to the default floating point dtype.
        spatial_dims: number of trailing axes to transform, 1 <= spatial_dims <= x.ndim.

    Returns:
        the DCT coefficients, same shape and dtype as ``x``.

    Raises:
        ValueError: when ``x`` is not a real tensor or ``spatial_dims`` is out of range.

    Example:
        .. code-block:: python

            x = torch.rand(2, 1, 24, 20)
            coeffs = dct_nd(x, spatial_dims=2)  # (2, 1, 24, 20)
            amplitude = coeffs.abs()
            torch.testing.assert_close(idct_nd(coeffs, spatial_dims=2), x)
    """
    x = _check_input(x, spatial_dims, "dct_nd")
    return _apply_along_last_dims(x, spatial_dims, transpose=False)


def idct_nd(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """
    Inverse of :py:func:`dct_nd`: the orthonormal DCT-III over the last ``spatial_dims`` axes. Equals
    ``scipy.fft.idctn(x, type=2, norm="ortho", axes=range(-spatial_dims, 0))``.

    Args:
        x: real tensor of DCT coefficients of shape (..., *spatial).
        spatial_dims: number of trailing axes to transform, 1 <= spatial_dims <= x.ndim.

    Returns:
        the reconstructed signal, same shape and dtype as ``x``.

    Raises:
        ValueError: when ``x`` is not a real tensor or ``spatial_dims`` is out of range.

    Example:
        .. code-block:: python

            x = torch.rand(1, 1, 8, 8, 8)
            torch.testing.assert_close(idct_nd(dct_nd(x, 3), 3), x)
    """
    x = _check_input(x, spatial_dims, "idct_nd")
    return _apply_along_last_dims(x, spatial_dims, transpose=True)
