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
from unittest import mock

import matplotlib
import numpy as np
import torch
from parameterized import parameterized
from PIL import Image
from scipy import ndimage

from monai_msgldm.constants import MODALITIES
from monai_msgldm.visualize import (
    read_scalar_curves,
    representative_slices,
    save_figure,
    save_loss_curves,
    save_synthesis_grid,
)

__all__: list[str] = []


def _panels(image: Image.Image, min_area: int = 400) -> list[list[list[int]]]:
    """The RGB colour of each uniformly coloured panel of a figure, as rows of panels (top to bottom, left to right).

    A panel is a connected area of at least ``min_area`` pixels that each equal their right and lower neighbours and
    are not white (text strokes and frame lines are far thinner); each must hold one colour.
    """
    rgb = np.asarray(image.convert("RGB")).astype(int)
    flat = np.zeros(rgb.shape[:2], bool)
    flat[:-1, :-1] = (rgb[:-1, :-1] == rgb[1:, :-1]).all(-1) & (rgb[:-1, :-1] == rgb[:-1, 1:]).all(-1)
    flat &= (rgb < 250).any(-1)
    labels, _ = ndimage.label(flat)
    found = []
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        inside = labels[box] == i
        if inside.sum() < min_area:
            continue
        colours = np.unique(rgb[box][inside], axis=0)
        if len(colours) != 1:
            raise AssertionError(f"panel at {box} is not uniform: {colours.tolist()}")
        found.append((box[0].start, box[1].start, colours[0].tolist()))
    rows: dict[int, list] = {}
    for top, left, colour in sorted(found):
        # panels of one row start within a few pixels of each other
        key = next((r for r in rows if abs(r - top) <= 5), top)
        rows.setdefault(key, []).append((left, colour))
    return [[colour for _, colour in sorted(row)] for _, row in sorted(rows.items())]


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

    @parameterized.expand([(["t1", "t1ce", "t2"], [2, 5]), (["t1"], [2, 5]), (["flair", "t1"], [4])])
    def test_layout_and_content(self, available, slices):
        # constant panels: modality m, slice k shows truth -0.6 + 0.3 m + 0.05 k; the synthesis is off by DELTA[m]
        delta = torch.tensor([-0.15, 0.2, 0.35, -0.4])
        truth = torch.empty(4, 16, 16, 8)
        for m in range(4):
            for k in range(8):
                truth[m, ..., k] = -0.6 + 0.3 * m + 0.05 * k
        synth = truth + delta[:, None, None, None]
        path = save_synthesis_grid(os.path.join(self.tmp, "sub", "grid.png"), truth, synth, available, slices)
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["grid.png"])  # no temporary file left

        # one row per slice; columns: the inputs in the given order, then synthesis / truth / |error| per missing
        # modality in MODALITIES order (gray in [-1, 1], magma in [0, 1])
        gray, magma = matplotlib.colormaps["gray"], matplotlib.colormaps["magma"]
        expected = []
        for k in slices:
            row = [gray((truth[MODALITIES.index(a), 0, 0, k].item() + 1) / 2) for a in available]
            for m, name in enumerate(MODALITIES):
                if name not in available:
                    t, s = truth[m, 0, 0, k].item(), synth[m, 0, 0, k].item()
                    row += [gray((s + 1) / 2), gray((t + 1) / 2), magma(abs(s - t))]
            expected.append([[round(255 * c) for c in rgba[:3]] for rgba in row])
        columns = len(available) + 3 * (len(MODALITIES) - len(available))
        self.assertEqual(np.shape(expected), (len(slices), columns, 3))
        with Image.open(path) as im:
            # figsize (2.1 * columns, 2.1 * rows) inches at 90 dpi
            self.assertEqual(im.size, (189 * columns, 189 * len(slices)))
            panels = _panels(im)
        np.testing.assert_allclose(panels, expected, atol=1)  # Agg may round the colour to the other side

    def test_errors(self):
        truth = torch.zeros(4, 8, 8, 4)
        with self.assertRaisesRegex(ValueError, "same shape"):
            save_synthesis_grid(os.path.join(self.tmp, "g.png"), truth, torch.zeros(3, 8, 8, 4), ["t1"], [0])
        with self.assertRaisesRegex(ValueError, "available"):
            save_synthesis_grid(os.path.join(self.tmp, "g.png"), truth, truth, ["pd"], [0])
        self.assertEqual(os.listdir(self.tmp), [])


class TestSaveFigure(unittest.TestCase):
    def setUp(self):
        import matplotlib

        matplotlib.use("Agg")
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_writes_closes_and_leaves_nothing_behind(self):
        import matplotlib.pyplot as plt

        fig, _ = plt.subplots(figsize=(2, 1))
        path = os.path.join(self.tmp, "sub", "plot.png")
        self.assertEqual(save_figure(fig, path, dpi=50), path)
        with Image.open(path) as im:
            self.assertEqual(im.size, (100, 50))
        self.assertEqual(os.listdir(os.path.dirname(path)), ["plot.png"])
        self.assertFalse(plt.fignum_exists(fig.number))

        # a failing save: the old file is intact, no temporary file, the figure closed all the same
        def half_written(fname, **kwargs):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG")
            raise RuntimeError("disk full")

        fig, _ = plt.subplots()
        with mock.patch.object(fig, "savefig", side_effect=half_written):
            with self.assertRaisesRegex(RuntimeError, "disk full"):
                save_figure(fig, path)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["plot.png"])
        with Image.open(path) as im:
            self.assertEqual(im.size, (100, 50))
        self.assertFalse(plt.fignum_exists(fig.number))


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
        with Image.open(path) as im:  # two panels side by side: figsize (4 * panels, 3) inches at 90 dpi
            self.assertEqual(im.size, (2 * 360, 270))
        path = save_loss_curves(os.path.join(tmp, "one.png"), {"A": os.path.join(tmp, "a")}, smooth=1)
        with Image.open(path) as im:
            self.assertEqual(im.size, (360, 270))
        self.assertIsNone(save_loss_curves(os.path.join(tmp, "none.png"), {"none": os.path.join(tmp, "missing")}))
        self.assertIsNone(save_loss_curves(os.path.join(tmp, "none.png"), {"A": os.path.join(tmp, "a")}, tag="other"))
        self.assertFalse(os.path.exists(os.path.join(tmp, "none.png")))


if __name__ == "__main__":
    unittest.main()
