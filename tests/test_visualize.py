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

import os
import shutil
import tempfile
import unittest

import numpy as np
import torch
from parameterized import parameterized
from PIL import Image

from monai_msgldm.visualize import read_scalar_curves, representative_slices, save_loss_curves, save_synthesis_grid

__all__: list[str] = []


class TestRepresentativeSlices(unittest.TestCase):
    @parameterized.expand([(1, [14]), (3, [12, 14, 17])])
    def test_spread_over_brain(self, num, expected):
        mask = np.zeros((4, 4, 30), bool)
        mask[1:3, 1:3, 10:20] = True
        self.assertEqual(representative_slices(mask, num), expected)

    @parameterized.expand([(np.zeros((4, 4, 5), bool), 3, "empty"), (np.ones((4, 4), bool), 3, "H, W, D"),
                           (np.ones((4, 4, 5), bool), 0, "num >= 1")])  # fmt: skip
    def test_errors(self, mask, num, msg):
        with self.assertRaisesRegex(ValueError, msg):
            representative_slices(mask, num)


class TestSynthesisGrid(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    @parameterized.expand([(["t1", "t1ce", "t2"], 3 + 3), (["t1"], 1 + 9)])
    def test_columns_per_scenario(self, available, columns):
        truth = torch.rand(4, 16, 16, 8) * 2 - 1
        synth = truth.clone()
        path = save_synthesis_grid(os.path.join(self.tmp, "sub", "grid.png"), truth, synth, available, [2, 5])
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["grid.png"])  # no temporary file left
        with Image.open(path) as im:
            width, height = im.size
        self.assertAlmostEqual(width / height, columns / 2, delta=0.35 * columns / 2)

    def test_errors(self):
        truth = torch.zeros(4, 8, 8, 4)
        with self.assertRaisesRegex(ValueError, "same shape"):
            save_synthesis_grid(os.path.join(self.tmp, "g.png"), truth, torch.zeros(3, 8, 8, 4), ["t1"], [0])
        with self.assertRaisesRegex(ValueError, "available"):
            save_synthesis_grid(os.path.join(self.tmp, "g.png"), truth, truth, ["pd"], [0])
        self.assertEqual(os.listdir(self.tmp), [])


class TestLossCurves(unittest.TestCase):
    def test_reads_tensorboard_and_plots(self):
        from torch.utils.tensorboard import SummaryWriter

        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        for stage, scale, tag in (("a", 1.0, "loss"), ("b", 2.0, "train_loss")):
            writer = SummaryWriter(os.path.join(tmp, stage))
            for step in range(1, 31):
                writer.add_scalar(tag, scale / step, step)
            writer.close()
        steps, values = read_scalar_curves(os.path.join(tmp, "b"), "train_loss")
        self.assertEqual(steps, list(range(1, 31)))
        np.testing.assert_allclose(values, [2.0 / s for s in steps], rtol=1e-6)
        self.assertEqual(read_scalar_curves(os.path.join(tmp, "missing"), "train_loss"), ([], []))
        self.assertEqual(read_scalar_curves(os.path.join(tmp, "a"), "train_loss"), ([], []))
        dirs = {"A": os.path.join(tmp, "a"), "B": os.path.join(tmp, "b"), "none": os.path.join(tmp, "missing")}
        path = save_loss_curves(os.path.join(tmp, "curves.png"), dirs, smooth=5)
        with Image.open(path) as im:
            self.assertGreater(im.size[0], 1.5 * im.size[1])  # two panels side by side
        self.assertIsNone(save_loss_curves(os.path.join(tmp, "none.png"), {"none": os.path.join(tmp, "missing")}))
        self.assertIsNone(save_loss_curves(os.path.join(tmp, "none.png"), {"A": os.path.join(tmp, "a")}, tag="other"))
        self.assertFalse(os.path.exists(os.path.join(tmp, "none.png")))


if __name__ == "__main__":
    unittest.main()
