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

import torch
from parameterized import parameterized

from monai_msgldm.inferers.foreground_crop import background_filled, foreground_box


def _image(shape, boxes, channels=2, items=1):
    """``(items, channels, *shape)`` at -1 with the value 0.5 in ``boxes[(b, c)]`` (tuples of slices)."""
    x = -torch.ones(items, channels, *shape)
    for (b, c), box in boxes.items():
        x[(b, c, *box)] = 0.5
    return x


class TestForegroundBox(unittest.TestCase):
    @parameterized.expand(
        [
            # content rows 20..29, cols 10..49; margin 4 -> 16..33 (18 -> 32, centred), 6..53 (48, divisible)
            ("margin_and_rounding", (64, 64), {(0, 0): (slice(20, 30), slice(10, 50))}, 4, 16, (9, 41, 6, 54)),
            ("no_margin_no_divisor", (64, 64), {(0, 0): (slice(20, 30), slice(10, 50))}, 0, 1, (20, 30, 10, 50)),
            # the margin is clipped at the edge; rounding shifts the box back inside
            ("at_the_edge", (64, 64), {(0, 0): (slice(0, 5), slice(60, 64))}, 2, 8, (0, 8, 56, 64)),
            # a side that cannot be rounded inside the input stays whole (64 -> 64 is not < 60 + ...)
            ("whole_side", (60, 64), {(0, 0): (slice(2, 58), slice(30, 34))}, 0, 16, (0, 60, 24, 40)),
            # the union over the items and the given channels
            (
                "union",
                (32, 32),
                {(0, 0): (slice(4, 8), slice(4, 8)), (1, 1): (slice(20, 24), slice(12, 16))},
                0,
                4,
                (4, 24, 4, 16),
            ),
        ]
    )
    def test_boxes(self, _, shape, boxes, margin, divisor, expected):
        items = 1 + max(b for b, _ in boxes)
        x = _image(shape, boxes, items=items)
        box = foreground_box(x, torch.ones(items, 2, dtype=torch.bool), margin=margin, divisor=divisor)
        self.assertEqual(box, (slice(expected[0], expected[1]), slice(expected[2], expected[3])))
        for s, size in zip(box, shape):
            self.assertTrue((s.stop - s.start) % divisor == 0 or (s.start, s.stop) == (0, size))
        # every content voxel is inside the box
        outside = x.clone()
        outside[(slice(None), slice(None), *box)] = -1.0
        self.assertTrue(torch.all(outside == -1.0))

    def test_3d(self):
        x = _image((16, 16, 16), {(0, 1): (slice(3, 5), slice(6, 7), slice(8, 16))})
        box = foreground_box(x, torch.tensor([[True, True]]), margin=1, divisor=4)
        # 3..4 -> 2..5 (4); 6 -> 5..7 (3 -> 4, centred); 8..15 -> 7..15 (9 -> 12, shifted back inside)
        self.assertEqual(box, (slice(2, 6), slice(5, 9), slice(4, 16)))

    def test_absent_channels_and_no_gain(self):
        x = _image((32, 32), {(0, 0): (slice(4, 8), slice(4, 8)), (0, 1): (slice(0, 32), slice(0, 32))})
        x[0, 1] = torch.rand(32, 32)  # noise everywhere in channel 1
        # channel 1 given: its noise is content everywhere -> no box; absent: ignored
        self.assertIsNone(foreground_box(x, torch.tensor([[True, True]]), 0, 4))
        self.assertEqual(foreground_box(x, torch.tensor([[True, False]]), 0, 4), (slice(4, 8), slice(4, 8)))
        # no content at all, or content up to the edges
        self.assertIsNone(foreground_box(-torch.ones(1, 2, 8, 8), torch.tensor([[True, True]])))
        self.assertIsNone(foreground_box(_image((8, 8), {(0, 0): (slice(0, 8), slice(0, 8))}), torch.ones(1, 2) > 0))
        # a background that is not -1: each item's own least value per channel
        y = _image((16, 16), {(0, 0): (slice(4, 6), slice(4, 6))}) + 0.3
        self.assertEqual(foreground_box(y, torch.tensor([[True, False]])), (slice(4, 6), slice(4, 6)))

    def test_errors(self):
        x, mask = -torch.ones(1, 2, 8, 8), torch.tensor([[True, True]])
        for kwargs, name in [({"margin": -1}, "margin"), ({"margin": 1.5}, "margin"), ({"divisor": 0}, "divisor")]:
            with self.assertRaisesRegex(ValueError, name):
                foreground_box(x, mask, **kwargs)


class TestBackgroundFilled(unittest.TestCase):
    def test_values(self):
        x = torch.rand(2, 3, 4, 5) * 2 - 1
        x[0, 0, 0, 0], x[0, 2, 1, 1], x[1, 1, 2, 2] = -0.9, -0.95, -0.8
        mask = torch.tensor([[True, False, True], [False, True, False]])
        out = background_filled(x, mask)
        torch.testing.assert_close(out[0, [0, 2]], x[0, [0, 2]], rtol=0, atol=0)
        torch.testing.assert_close(out[1, 1], x[1, 1], rtol=0, atol=0)
        expected_0 = min(float(x[0, 0].min()), float(x[0, 2].min()))
        self.assertTrue(torch.all(out[0, 1] == expected_0))
        self.assertTrue(torch.all(out[1, [0, 2]] == float(x[1, 1].min())))


if __name__ == "__main__":
    unittest.main()
