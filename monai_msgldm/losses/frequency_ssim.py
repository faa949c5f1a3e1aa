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
"""Frequency-domain SSIM loss: 1 - SSIM between the DCT amplitude spectra of prediction and target."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.metrics.regression import KernelType, compute_ssim_and_cs
from monai.utils import LossReduction, ensure_tuple_rep
from torch.nn.modules.loss import _Loss

from .dct import dct_nd

__all__ = ["FrequencySSIMLoss"]

#: ``data_range`` modes computed from the target amplitude spectrum.
_DATA_RANGE_MODES = ("target", "target_batch")

#: lower bound of a data range computed from the target, so that an all-zero target gives finite constants.
_MIN_DATA_RANGE = float(torch.finfo(torch.float32).eps)


class FrequencySSIMLoss(_Loss):
    """
    Frequency SSIM loss of MSG-LDM: ``L_freq = 1 - SSIM(|DCT(input)|, |DCT(target)|)``, the structural dissimilarity
    of the amplitude spectra of the orthonormal DCT-II taken over all spatial axes (see :py:func:`dct_nd`).

    The SSIM itself is MONAI's (:py:func:`monai.metrics.regression.compute_ssim_and_cs`, "valid" convolution with a
    Gaussian or uniform window, as :py:class:`monai.losses.SSIMLoss`), averaged over channels and the valid spatial
    positions of each sample. As SSIM lies in [-1, 1], the loss lies in [0, 2] and is 0 for identical inputs.

    ``data_range`` sets the SSIM stability constants ``c1 = (k1 * data_range) ** 2``, ``c2 = (k2 * data_range) ** 2``:

    - a positive float: a fixed range, as in :py:class:`monai.losses.SSIMLoss`;
    - ``"target"`` (default): ``max - min`` of the target amplitude spectrum, per sample (over channels and space);
    - ``"target_batch"``: ``max - min`` of the target amplitude spectrum over the whole batch, as the MSG-LDM
      authors' code computes it.

    Ranges computed from the target are detached (they are normalisation constants, not a training signal) and
    bounded below by float32 epsilon so that an all-zero target stays finite.

    Reference: "Multiscale Structure-Guided Latent Diffusion for Multimodal MRI Translation", CVPR 2026,
    arXiv 2603.12581 (structure-aware loss).

    Args:
        spatial_dims: number of spatial dimensions of the images, 2 or 3.
        data_range: a positive float, ``"target"`` or ``"target_batch"`` (see above).
        kernel_type: SSIM window, ``"gaussian"`` or ``"uniform"``.
        win_size: SSIM window size, an int or one per spatial dimension. Every spatial size of the inputs must be at
            least this large ("valid" convolution).
        kernel_sigma: standard deviation of the Gaussian window, a float or one per spatial dimension.
        k1: stability constant of the luminance term, > 0.
        k2: stability constant of the contrast term, > 0.
        reduction: {``"none"``, ``"mean"``, ``"sum"``}. As :py:class:`monai.losses.SSIMLoss`: ``"none"`` returns one
            value per sample, shape (B, 1) (the SSIM map is averaged over channels and space); ``"mean"`` averages
            and ``"sum"`` sums these over the batch.

    Example:
        .. code-block:: python

            loss_fn = FrequencySSIMLoss(spatial_dims=2)
            pred = torch.rand(2, 1, 24, 24, requires_grad=True)
            target = torch.rand(2, 1, 24, 24)
            loss = loss_fn(pred, target)  # scalar in [0, 2]
            loss.backward()

            per_sample = FrequencySSIMLoss(spatial_dims=3, win_size=7, reduction="none")(
                torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
            )  # (2, 1)
    """

    def __init__(
        self,
        spatial_dims: int,
        data_range: float | str = "target",
        kernel_type: KernelType | str = KernelType.GAUSSIAN,
        win_size: int | Sequence[int] = 11,
        kernel_sigma: float | Sequence[float] = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        name = type(self).__name__
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"{name} expects spatial_dims to be 2 or 3, got {spatial_dims!r}.")
        self.spatial_dims = spatial_dims

        if isinstance(data_range, str):
            if data_range not in _DATA_RANGE_MODES:
                raise ValueError(
                    f"{name} expects data_range to be a positive float or one of {_DATA_RANGE_MODES}, got {data_range!r}."
                )
        elif (
            isinstance(data_range, bool)
            or not isinstance(data_range, (int, float))
            or not math.isfinite(data_range)
            or data_range <= 0
        ):
            raise ValueError(
                f"{name} expects data_range to be a positive float or one of {_DATA_RANGE_MODES}, got {data_range!r}."
            )
        self.data_range = data_range

        try:
            self.kernel_type = KernelType(kernel_type)
        except ValueError:
            raise ValueError(
                f"{name} expects kernel_type to be one of {[k.value for k in KernelType]}, got {kernel_type!r}."
            ) from None

        self.win_size = self._per_dim(win_size, "win_size")
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.win_size):
            raise ValueError(f"{name} expects win_size to hold positive ints, got {win_size!r}.")
        self.kernel_sigma = self._per_dim(kernel_sigma, "kernel_sigma")
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in self.kernel_sigma):
            raise ValueError(f"{name} expects kernel_sigma to hold positive floats, got {kernel_sigma!r}.")
        for key, value in (("k1", k1), ("k2", k2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} expects {key} to be a positive float, got {value!r}.")
        self.k1 = float(k1)
        self.k2 = float(k2)

    def _per_dim(self, value, key: str) -> tuple:
        if isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) != self.spatial_dims:
                raise ValueError(
                    f"{type(self).__name__} expects {key} to be a number or a sequence of length "
                    f"spatial_dims={self.spatial_dims}, got {value!r}."
                )
            return tuple(value)
        return ensure_tuple_rep(value, self.spatial_dims)

    def _target_data_range(self, target_amplitude: torch.Tensor) -> torch.Tensor | float:
        if not isinstance(self.data_range, str):
            return float(self.data_range)
        amp = target_amplitude.detach()
        if self.data_range == "target_batch":
            value = amp.max() - amp.min()
        else:
            flat = amp.flatten(1)
            value = flat.max(dim=1).values - flat.min(dim=1).values
            value = value.view(-1, *([1] * (amp.ndim - 1)))  # (B, 1, ..., 1): broadcasts over the SSIM maps
        return value.clamp_min(_MIN_DATA_RANGE)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: predicted images, shape (B, C, *spatial) with ``spatial_dims`` spatial axes.
            target: reference images, same shape as ``input``.

        Returns:
            the loss: a scalar for ``"mean"`` / ``"sum"``, shape (B, 1) for ``"none"``.

        Raises:
            ValueError: when the shapes differ, the number of dimensions is not ``spatial_dims + 2``, or a spatial
                size is smaller than ``win_size``.
        """
        name = type(self).__name__
        if input.shape != target.shape:
            raise ValueError(
                f"{name} expects input and target of the same shape, got {tuple(input.shape)} and {tuple(target.shape)}."
            )
        if input.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"{name} expects input of shape (B, C, *spatial) with {self.spatial_dims} spatial dims "
                f"({self.spatial_dims + 2} dims), got shape {tuple(input.shape)}."
            )
        spatial = tuple(input.shape[2:])
        if any(s < w for s, w in zip(spatial, self.win_size)):
            raise ValueError(
                f"{name} expects every spatial size of input to be >= win_size={self.win_size}, got {spatial}."
            )

        input_amplitude = dct_nd(input, self.spatial_dims).abs()
        target_amplitude = dct_nd(target, self.spatial_dims).abs()
        ssim_map, _ = compute_ssim_and_cs(
            y_pred=input_amplitude,
            y=target_amplitude,
            spatial_dims=self.spatial_dims,
            kernel_size=self.win_size,
            kernel_sigma=self.kernel_sigma,
            data_range=self._target_data_range(target_amplitude),  # type: ignore[arg-type]
            kernel_type=self.kernel_type,
            k1=self.k1,
            k2=self.k2,
        )
        loss: torch.Tensor = 1.0 - ssim_map.flatten(1).mean(dim=1, keepdim=True)  # (B, 1)

        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss
