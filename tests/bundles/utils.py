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
"""Checks shared by the bundle tests."""

from __future__ import annotations

import os
import unittest

import torch

__all__ = ["state_equal", "assert_stage_checkpoints", "assert_tensorboard_images"]


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
