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
"""Style-consistency loss of MSG-LDM: a modality-contrastive BCE on the cosine similarities of style codes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["StyleConsistencyLoss"]


class StyleConsistencyLoss(_Loss):
    """
    Style-consistency loss of MSG-LDM. Style codes of shape (B, M, D) (batch, modalities, code length) are arranged
    modality-major into ``N = M * B`` rows (row ``p = m * B + b`` holds modality ``m`` of sample ``b``) and
    L2-normalised to ``e_p``. The logits are ``z_pq = s * cos(e_p, e_q)`` with the logit scale ``s = 1 / temperature``
    and the target is ``T_pq = 1`` when rows ``p`` and ``q`` hold the same modality (diagonal included), else 0. The
    loss is the binary cross entropy with logits, ``BCE(z, T)``, of every pair: codes of one modality are pulled
    together across samples and codes of different modalities pushed apart.

    With ``learnable_temperature=True`` the log of the logit scale is an ``nn.Parameter`` (so it is returned by
    ``parameters()`` and trained by any optimiser given them), and the scale used is ``min(exp(log_scale),
    max_scale)`` (as CLIP, a scale pushed past ``max_scale`` stays clamped there). Otherwise it is a buffer.

    An optional availability mask ``target`` of shape (B, M) excludes the codes of unavailable modalities (e.g. the
    contrasts an incomplete study lacks): every pair ``(p, q)`` in which ``p`` or ``q`` is unavailable is left out,
    so those codes neither change the value nor receive gradient.

    Reference: "Multiscale Structure-Guided Latent Diffusion for Multimodal MRI Translation", CVPR 2026,
    arXiv 2603.12581 (style-consistency loss, temperature 0.07).

    Args:
        temperature: initial temperature, > 0; the logit scale is ``1 / temperature`` and must be <= ``max_scale``.
        learnable_temperature: whether the logit scale is a trainable parameter.
        max_scale: upper bound of the logit scale, > 0.
        reduction: {``"none"``, ``"mean"``, ``"sum"``}: ``"none"`` returns the (M * B, M * B) matrix of pairwise
            BCE terms (zeros at pairs excluded by the mask); ``"mean"`` averages over the (M * B) ** 2 pairs (over the
            included pairs when a mask is given); ``"sum"`` sums them.

    Example:
        .. code-block:: python

            loss_fn = StyleConsistencyLoss(temperature=0.07, learnable_temperature=True)
            codes = torch.randn(3, 4, 8, requires_grad=True)  # (B, M, D)
            loss = loss_fn(codes)  # scalar
            available = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
            masked = loss_fn(codes, available)  # the codes of missing modalities are ignored
            optimizer = torch.optim.Adam(list(loss_fn.parameters()) + [codes], lr=1e-3)
    """

    def __init__(
        self,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        max_scale: float = 100.0,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        name = type(self).__name__
        for key, value in (("temperature", temperature), ("max_scale", max_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} expects {key} to be a finite float > 0, got {value!r}.")
        if 1.0 / temperature > max_scale:
            raise ValueError(
                f"{name} expects 1 / temperature <= max_scale={max_scale}, got temperature={temperature} "
                f"(scale {1.0 / temperature:.6g})."
            )
        self.max_scale = float(max_scale)
        self.learnable_temperature = bool(learnable_temperature)
        log_scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if self.learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The logit scale ``s = min(exp(log_scale), max_scale)`` used in ``forward`` (a 0-dim tensor)."""
        return self.log_scale.clamp(max=math.log(self.max_scale)).exp()

    @property
    def temperature(self) -> float:
        """The current temperature ``1 / s``."""
        return float(1.0 / self.logit_scale.detach())

    def forward(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: style codes, shape (B, M, D) with M >= 2 modalities.
            target: optional availability mask, shape (B, M), bool or 0/1 values; ``None`` (default) uses all codes.

        Returns:
            the loss: a scalar for ``"mean"`` / ``"sum"``, shape (M * B, M * B) for ``"none"``. When the mask leaves
            no code, ``"mean"`` and ``"sum"`` return 0 (still connected to the graph).

        Raises:
            ValueError: when ``input`` is not (B, M, D) with M >= 2, or ``target`` is not a (B, M) 0/1 mask.
        """
        name = type(self).__name__
        if input.ndim != 3 or input.shape[1] < 2 or input.shape[0] < 1 or input.shape[2] < 1:
            raise ValueError(
                f"{name} expects input of shape (B, M, D) with M >= 2 modalities, got shape {tuple(input.shape)}."
            )
        batch, modalities, dim = input.shape
        if target is not None:
            if not isinstance(target, torch.Tensor) or tuple(target.shape) != (batch, modalities):
                got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
                raise ValueError(
                    f"{name} expects target to be an availability mask of shape {(batch, modalities)}, got {got}."
                )
            if target.dtype != torch.bool:
                if not bool(((target == 0) | (target == 1)).all()):
                    raise ValueError(f"{name} expects target to hold only 0 and 1 (or bools), got other values.")
                target = target != 0
        codes = input.transpose(0, 1).reshape(modalities * batch, dim)  # (M*B, D), row m * B + b
        group = torch.arange(modalities, device=input.device).repeat_interleave(batch)
        available = None if target is None else target.to(input.device).transpose(0, 1).reshape(modalities * batch)
        if available is not None and self.reduction != LossReduction.NONE.value:
            # only the rows of available codes: the codes of absent modalities (e.g. style codes of the fill images of
            # an incomplete study) never enter the value and get exactly zero gradient, even when not finite
            codes, group = codes[available], group[available]
        codes = F.normalize(codes, dim=1)
        logits = self.logit_scale.to(codes.dtype) * (codes @ codes.t())
        labels = (group[:, None] == group[None, :]).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (N, N)
        if self.reduction == LossReduction.NONE.value:
            if available is None:
                return loss
            pairs = available[:, None] & available[None, :]
            return torch.where(pairs, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        if available is None:
            return loss.mean()
        return loss.sum() / max(codes.shape[0] ** 2, 1)  # an empty mask gives 0, still connected to the graph
