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
"""Checks shared by the bundle tests, and float64 reference metrics to check the workflows' scores against."""

from __future__ import annotations

import math
import os
import unittest

import numpy as np
import torch
from ignite.engine import Events
from monai.handlers import from_engine

__all__ = [
    "state_equal",
    "assert_stage_checkpoints",
    "assert_tensorboard_images",
    "collect_outputs",
    "reference_mean_dice",
    "reference_psnr",
    "reference_ssim",
]


def state_equal(a: dict, b: dict) -> bool:
    """Whether two state dicts hold the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def assert_stage_checkpoints(
    test: unittest.TestCase, ckpt_dir: str, stage: str, wf, net: torch.nn.Module, before: dict, lr: float
) -> None:
    """The final and best checkpoints of a one-validation, 2-iteration tiny stage run: keys, trainer state,
    optimizer settings, and that the saved model is the trained network (which differs from init and from a fresh
    network_def)."""
    final = os.path.join(ckpt_dir, f"{stage}.pt")
    best = os.path.join(ckpt_dir, f"{stage}_best.pt")
    test.assertTrue(os.path.isfile(final) and os.path.isfile(best))
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    test.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer"})
    test.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["epoch_length"]), (2, 2))
    test.assertAlmostEqual(ckpt["optimizer"]["param_groups"][0]["lr"], lr)
    test.assertEqual(ckpt["optimizer"]["param_groups"][0]["betas"], (0.5, 0.9))

    fresh = wf.parser.get_parsed_content("network_def", lazy=False)
    test.assertIsNot(fresh, net)
    test.assertFalse(state_equal(fresh.state_dict(), net.state_dict()))
    fresh.load_state_dict(ckpt["model"])
    test.assertTrue(state_equal(fresh.state_dict(), net.state_dict()))
    test.assertFalse(state_equal(before, net.state_dict()))  # it trained
    # the best model (the only validation) is the final one
    best_state = torch.load(best, map_location="cpu", weights_only=True)
    test.assertTrue(state_equal(best_state, ckpt["model"]))


def assert_tensorboard_images(test: unittest.TestCase, log_dir: str) -> None:
    """The stage's ``TensorBoardImageHandler`` wrote validation images (inputs and prediction) to ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags().get("images", [])
    test.assertTrue(any(t.startswith("input_0") for t in tags), tags)
    test.assertTrue(any(t.startswith("output") for t in tags), tags)


def collect_outputs(engine, keys: tuple[str, ...] = ("pred", "label")) -> list[tuple[torch.Tensor, ...]]:
    """A list that holds, for the latest epoch of ``engine`` (emptied when an epoch starts, as metric handlers are
    reset), the per-sample ``keys`` of every iteration's output: what ``from_engine(keys)`` gives the metrics."""
    seen: list[tuple[torch.Tensor, ...]] = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.clear())
    engine.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.extend(
            tuple(torch.as_tensor(t).detach().cpu().double() for t in sample)
            for sample in zip(*from_engine(list(keys))(e.state.output))
        ),
    )
    return seen


def reference_psnr(pairs, max_val: float) -> float:
    """Mean over samples of ``20 log10(max_val) - 10 log10(MSE)`` (MONAI's ``PSNRMetric``), in float64."""
    values = [20 * math.log10(max_val) - 10 * math.log10(float(((p - t) ** 2).mean())) for p, t in pairs]
    return float(np.mean(values))


def reference_ssim(pairs, data_range: float, win_size: int = 11, sigma: float = 1.5) -> float:
    """Mean over samples of the mean 2D SSIM map (Gaussian window, valid positions only, ``k1 = 0.01``,
    ``k2 = 0.03``, population variances: MONAI's ``SSIMMetric``), in float64 with numpy."""
    dist = np.arange(win_size) - (win_size - 1) / 2
    g = np.exp(-((dist / sigma) ** 2) / 2)
    g /= g.sum()
    window = np.outer(g, g)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def local_mean(x: np.ndarray) -> np.ndarray:  # (C, H, W) -> (C, H - win + 1, W - win + 1)
        return (np.lib.stride_tricks.sliding_window_view(x, (win_size, win_size), axis=(-2, -1)) * window).sum((-2, -1))

    values = []
    for p, t in pairs:
        x, y = p.numpy(), t.numpy()
        mx, my = local_mean(x), local_mean(y)
        vx, vy, cxy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2, local_mean(x * y) - mx * my
        ssim = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(ssim.mean())
    return float(np.mean(values))


def reference_mean_dice(pairs) -> float:
    """MONAI's ``MeanDice(include_background=True)`` of ``(pred, label)`` pairs of binary masks: per sample the mean
    Dice ``2 |P & G| / (|P| + |G|)`` over the channels whose label is not empty (empty ones are ignored), then the
    mean over the samples that have such a channel."""
    per_sample = []
    for p, t in pairs:
        pred, label = p.flatten(1), t.flatten(1)
        if not bool(((pred == 0) | (pred == 1)).all() and ((label == 0) | (label == 1)).all()):
            raise ValueError("reference_mean_dice expects binary masks.")
        dice = [2.0 * float((pc * lc).sum()) / float(pc.sum() + lc.sum()) for pc, lc in zip(pred, label) if lc.any()]
        if dice:
            per_sample.append(float(np.mean(dice)))
    return float(np.mean(per_sample)) if per_sample else 0.0
