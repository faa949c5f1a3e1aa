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
"""Pointwise probes: how much of a missing contrast is a per-voxel function of the given ones, in image and latent space.

The quality benchmark's latent models stay 2-3 dB under their autoencoder's ceiling, while the pixel-space regression
U-Net reaches it. This script asks why, on the same phantom split and the same shared stage-0 autoencoder. For every
scenario of the ``3->1`` and ``1->3`` groups (given contrasts ``G``, missing contrast ``c``) it fits, on the training
subjects, a small MLP applied at each position (1 x 1 convolutions, MSE loss, fixed seed):

- ``pointwise_image``: the given contrasts' intensities at a brain voxel -> the missing contrast's intensity there;
- ``pointwise_image+autoencoder``: the same prediction, encoded and decoded by the shared autoencoder (what a latent
  model that had learned this mapping exactly could at best give);
- ``pointwise_latent``: the given contrasts' latent vectors (posterior means) at a latent position -> the missing
  contrast's latent vector there, decoded.

It then scores them like the synthesis models (slice PSNR / SSIM in the brain mask, ``masked_slice_psnr_ssim``) on
the validation or test subjects, beside the autoencoder ceiling. A probe is a measurement of the data, not a model the
bundle offers: on a physics phantom, where every contrast is a signal equation of the same tissue parameters, the
image probe shows how far a per-voxel intensity map alone goes.

Needs the benchmark's trained ``msgldm`` autoencoder (``quality.py --models msgldm --train-only``)::

    python benchmarks/quality_pointwise.py --split validation
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from monai_msgldm.constants import MODALITIES
from monai_msgldm.evaluation import brain_mask_from_available, masked_slice_psnr_ssim, missing_modality_scenarios
from monai_msgldm.utils.files import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, write_json  # noqa: E402
from quality_models import BUDGET, load_model  # noqa: E402
from quality_scoring import autoencoder_ceiling, subject_name, test_cases  # noqa: E402

__all__ = ["PROBES", "PointwiseMLP", "fit_pointwise", "case_slices", "probe_rows", "main"]

logger = logging.getLogger("quality_pointwise")

#: the probes this script scores, in table order
PROBES = ("pointwise_image", "pointwise_image+autoencoder", "pointwise_latent")


class PointwiseMLP(nn.Module):
    """An MLP applied at every position of a feature map: ``(N, in_channels, *S) -> (N, out_channels, *S)`` (1 x 1
    convolutions), or on rows ``(N, in_channels) -> (N, out_channels)``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or hidden < 1:
            raise ValueError(
                f"PointwiseMLP expects positive sizes, got in_channels={in_channels}, out_channels={out_channels}, "
                f"hidden={hidden}."
            )
        self.net = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return self.net(x)
        moved = x.movedim(1, -1)
        return self.net(moved).movedim(-1, 1)


def fit_pointwise(
    inputs: torch.Tensor, targets: torch.Tensor, steps: int = 2000, batch_size: int = 8192, seed: int = 0
) -> PointwiseMLP:
    """Fit a :class:`PointwiseMLP` to rows ``inputs (N, K) -> targets (N, C)`` by MSE (Adam, learning rate 3e-3
    halved every quarter of ``steps``); deterministic for a given ``seed``."""
    if inputs.ndim != 2 or targets.ndim != 2 or inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
        raise ValueError(
            f"fit_pointwise expects inputs (N, K) and targets (N, C) with the same N > 0, got {tuple(inputs.shape)} "
            f"and {tuple(targets.shape)}."
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PointwiseMLP(inputs.shape[1], targets.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, steps // 4), gamma=0.5)
    for _ in range(steps):
        index = torch.randint(0, inputs.shape[0], (min(batch_size, inputs.shape[0]),), generator=generator)
        loss = nn.functional.mse_loss(model(inputs[index]), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


def case_slices(case: dict) -> torch.Tensor:
    """The axial slices of a collated case: ``image (1, M, H, W, D) -> (D, M, H, W)``."""
    return torch.as_tensor(case["image"]).float()[0].permute(3, 0, 1, 2).contiguous()


def _brain(slices: torch.Tensor, given: Sequence[int]) -> torch.Tensor:
    """``(D, H, W)`` brain voxels of the given contrasts (``brain_mask_from_available`` on the slices)."""
    flags = torch.zeros(slices.shape[1], dtype=torch.bool)
    flags[list(given)] = True
    return brain_mask_from_available(slices.permute(1, 0, 2, 3), flags)


def _latents(net: Any, slices: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Scaled posterior-mean joint latents ``(D, M * C, h, w)`` of ``(D, M, H, W)`` slices."""
    with torch.no_grad():
        parts = [net.autoencoder.encode_mean(slices[i : i + batch]) for i in range(0, slices.shape[0], batch)]
    return torch.cat(parts) * net.scale_factor


def _decode(net: Any, latents: torch.Tensor, target: int, batch: int = 64) -> torch.Tensor:
    """Decode contrast ``target`` of scaled joint latents ``(D, M * C, h, w)`` -> ``(D, H, W)`` in [-1, 1]."""
    with torch.no_grad():
        parts = [
            net.autoencoder.decode_stage_2_outputs(latents[i : i + batch] / net.scale_factor, modalities=[target])
            for i in range(0, latents.shape[0], batch)
        ]
    return torch.cat(parts)[:, 0].clamp(-1, 1)


def probe_rows(
    net: Any,
    train_cases: Sequence[dict],
    cases: Sequence[dict],
    groups: Sequence[str] = ("3->1", "1->3"),
    modalities: Sequence[str] = MODALITIES,
    steps: int = 2000,
) -> list[dict]:
    """One row per probe x case x scenario target (``model``, ``group``, ``target``, ``case``, ``psnr``, ``ssim``):
    the probes of :data:`PROBES` fitted on ``train_cases`` and scored on ``cases`` with ``net``'s autoencoder."""
    m = len(modalities)
    c = net.autoencoder.latent_channels
    train = [case_slices(case) for case in train_cases]
    train_latents = [_latents(net, s) for s in train]
    scored = [(subject_name(case, i), case_slices(case)) for i, case in enumerate(cases)]
    scored_latents = [_latents(net, s) for _, s in scored]
    rows = []
    for available, missing in missing_modality_scenarios(list(groups), modalities):
        given = [modalities.index(name) for name in available]
        group = f"{len(available)}->{m - len(available)}"
        for target_name in missing:
            t = modalities.index(target_name)
            start = time.perf_counter()
            # image probe: brain voxels of the training subjects
            brains = [_brain(s, given) for s in train]
            x = torch.cat([s[:, given].permute(0, 2, 3, 1)[b] for s, b in zip(train, brains)])
            y = torch.cat([s[:, t][b] for s, b in zip(train, brains)])[:, None]
            image_probe = fit_pointwise(x, y, steps=steps)
            # latent probe: every latent position of the training subjects
            channels = [k * c + j for k in given for j in range(c)]
            zx = torch.cat([z[:, channels].permute(0, 2, 3, 1).reshape(-1, len(channels)) for z in train_latents])
            zy = torch.cat([z[:, t * c : (t + 1) * c].permute(0, 2, 3, 1).reshape(-1, c) for z in train_latents])
            latent_probe = fit_pointwise(zx, zy, steps=steps)
            for (name, s), z in zip(scored, scored_latents):
                brain = _brain(s, given)
                with torch.no_grad():
                    image = torch.where(brain, image_probe(s[:, given])[:, 0].clamp(-1, 1), torch.tensor(-1.0))
                    through = _latents(net, s.index_copy(1, torch.tensor([t]), image[:, None]))
                    through = _decode(net, through, t)
                    z_pred = z.clone()
                    z_pred[:, t * c : (t + 1) * c] = latent_probe(z[:, channels])
                    latent = _decode(net, z_pred, t)
                truth = s[:, t].permute(1, 2, 0)
                mask = brain.permute(1, 2, 0)
                for probe, pred in zip(PROBES, (image, through, latent)):
                    psnr, ssim, _ = masked_slice_psnr_ssim(pred.permute(1, 2, 0), truth, mask)
                    rows.append(
                        {"model": probe, "group": group, "target": target_name, "case": name}
                        | {"given": list(available), "psnr": psnr, "ssim": ssim}
                    )
            logger.info(
                f"{'+'.join(available)} -> {target_name}: fitted and scored in {time.perf_counter() - start:.0f} s"
            )
    return rows


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def render(rows: Sequence[dict], modalities: Sequence[str] = MODALITIES) -> str:
    """Markdown: per group, mean PSNR dB / SSIM % of each probe and the ceiling, per target and overall."""
    lines = []
    for group in dict.fromkeys(r["group"] for r in rows if r["model"] in PROBES):
        lines += [
            f"#### {group}",
            "",
            "| probe | " + " | ".join(f"{t} PSNR / SSIM" for t in modalities) + " | mean PSNR | mean SSIM |",
            "|---|" + "---|" * (len(modalities) + 2),
        ]
        models = [*PROBES, *(["autoencoder_ceiling"] if group == "3->1" else [])]
        for model in models:
            mine = [r for r in rows if r["model"] == model and r["group"] == group]
            cells = []
            for t in modalities:
                per = [r for r in mine if r["target"] == t]
                cells.append(f"{_mean([r['psnr'] for r in per]):.2f} / {100 * _mean([r['ssim'] for r in per]):.1f}")
            psnr, ssim = _mean([r["psnr"] for r in mine]), 100 * _mean([r["ssim"] for r in mine])
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {psnr:.2f} | {ssim:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work-dir", default="outputs/benchmarks/quality/models", help="the quality benchmark's models"
    )
    parser.add_argument("--output-dir", default="outputs/benchmarks/quality_pointwise", help="JSON and markdown")
    parser.add_argument("--split", default="validation", choices=["test", "validation"], help="subjects to score")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per probe (> 0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps expects a positive number, got {args.steps}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_grad_enabled(True)
    net = load_model("msgldm", args.work_dir).eval()
    train_cases = test_cases(BUDGET, split="training")
    cases = test_cases(BUDGET, split=args.split)
    logger.info(f"{len(train_cases)} training subjects, {len(cases)} {args.split} subjects")
    start = time.perf_counter()
    rows = probe_rows(net, train_cases, cases, steps=args.steps)
    rows += autoencoder_ceiling(args.work_dir, cases)
    report = render(rows)
    os.makedirs(args.output_dir, exist_ok=True)
    write_json(
        os.path.join(args.output_dir, "pointwise.json"),
        {
            "machine": device_description(),
            "split": args.split,
            "cases": [subject_name(c, i) for i, c in enumerate(cases)],
            "seconds": time.perf_counter() - start,
            "rows": rows,
        },
    )
    atomic_write_text(os.path.join(args.output_dir, "pointwise.md"), report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
