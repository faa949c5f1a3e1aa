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
import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose, Lambdad, RandFlipd
from parameterized import parameterized

from monai_msgldm.transforms import (
    SLICE_INDEX_KEY,
    RandAxialSliceSamplesD,
    RandAxialSliceSamplesd,
    RandAxialSliceSamplesDict,
    RandModalityDropoutd,
    axial_slice_indices,
    extract_axial_slice,
)

__all__: list[str] = []

AFFINE = torch.tensor([[-1.0, 0.0, 0.0, 5.0], [0.0, -1.2, 0.0, 3.0], [0.0, 0.0, 2.5, -4.0], [0.0, 0.0, 0.0, 1.0]])


def _volume() -> MetaTensor:
    """(2, 10, 10, 12) in [-1, 1]: background -1; slice z has a (z - 2) x 10 foreground block for z in 3..10.

    Channel 1 is an absent modality (constant -1) that must never count as foreground.
    """
    img = -torch.ones(2, 10, 10, 12)
    for z in range(3, 11):
        img[0, : z - 2, :, z] = torch.linspace(-0.5, 1.0, 10)
    return MetaTensor(img, affine=AFFINE.clone(), meta={"filename_or_obj": "case"})


class TestAxialSliceIndices(unittest.TestCase):
    @parameterized.expand(
        [
            (None, 0.01, list(range(3, 11))),  # fractions 0.1 .. 0.8
            (None, 0.0, list(range(12))),
            (None, 0.5, list(range(7, 11))),
            ((5, 8), 0.01, [5, 6, 7, 8]),  # inclusive bounds
            ((9, 100), 0.3, [9, 10]),  # bounds past the volume are clipped
        ]
    )
    def test_indices(self, slice_range, fraction, expected):
        img = _volume()
        self.assertEqual(axial_slice_indices(img, slice_range, fraction), expected)
        self.assertEqual(axial_slice_indices(img.numpy(), slice_range, fraction), expected)

    def test_axis(self):
        img = _volume().permute(0, 3, 1, 2)  # slices now along spatial axis 0
        self.assertEqual(axial_slice_indices(img, axis=0), list(range(3, 11)))
        self.assertEqual(axial_slice_indices(img, axis=-3, min_foreground_fraction=0.5), list(range(7, 11)))

    def test_no_valid_slice(self):
        with self.assertRaisesRegex(ValueError, r"slice_range \(0, 2\).*>= 0.01"):
            axial_slice_indices(_volume(), (0, 2))
        with self.assertRaisesRegex(ValueError, r">= 0.9"):
            axial_slice_indices(_volume(), None, 0.9)

    @parameterized.expand(
        [
            ({"slice_range": (5, 2)}, "slice_range"),
            ({"slice_range": (-1, 2)}, "slice_range"),
            ({"slice_range": (1, 2, 3)}, "slice_range"),
            ({"min_foreground_fraction": 1.5}, "min_foreground_fraction"),
            ({"axis": 3}, "axis"),
        ]
    )
    def test_invalid_args(self, kwargs, arg):
        with self.assertRaisesRegex(ValueError, arg):
            axial_slice_indices(_volume(), **kwargs)
        with self.assertRaisesRegex(ValueError, arg):
            RandAxialSliceSamplesd("image", **kwargs)

    def test_not_a_volume(self):
        with self.assertRaisesRegex(ValueError, "3 spatial dims"):
            axial_slice_indices(torch.zeros(1, 8, 8))

    def test_extract(self):
        img = _volume()
        out = extract_axial_slice(img, 6)
        self.assertEqual(tuple(out.shape), (2, 10, 10))
        torch.testing.assert_close(out.as_tensor(), img.as_tensor()[..., 6], rtol=0, atol=0)
        self.assertEqual(out.meta[SLICE_INDEX_KEY], 6)
        # in-plane affine of the slice (MONAI SqueezeDim convention)
        torch.testing.assert_close(
            out.affine, torch.tensor([[-1.0, 0.0, 5.0], [0.0, -1.2, 3.0], [0.0, 0.0, 1.0]]).double()
        )
        np.testing.assert_array_equal(extract_axial_slice(img.numpy(), 4, axis=1), img.numpy()[:, :, 4])
        with self.assertRaisesRegex(ValueError, r"index in \[0, 11\]"):
            extract_axial_slice(img, 12)


class TestRandAxialSliceSamplesd(unittest.TestCase):
    def test_aliases(self):
        self.assertIs(RandAxialSliceSamplesD, RandAxialSliceSamplesd)
        self.assertIs(RandAxialSliceSamplesDict, RandAxialSliceSamplesd)

    @parameterized.expand([(1, None, 0.01), (4, (4, 9), 0.01), (3, None, 0.55), (20, (5, 6), 0.0)])
    def test_samples(self, num_samples, slice_range, fraction):
        img = _volume()
        seg = (img[:1] > 0).float() * 3.0
        valid = axial_slice_indices(img, slice_range, fraction)
        t = RandAxialSliceSamplesd(
            ["image", "seg"], num_samples=num_samples, slice_range=slice_range, min_foreground_fraction=fraction
        ).set_random_state(0)
        items = t({"image": img, "seg": seg, "available": torch.tensor([True, False]), "name": "case"})
        self.assertEqual(len(items), num_samples)
        indices = []
        for item in items:
            index = item["image"].meta[SLICE_INDEX_KEY]
            self.assertIn(index, valid)
            indices.append(index)
            self.assertEqual(tuple(item["image"].shape), (2, 10, 10))
            self.assertEqual(tuple(item["seg"].shape), (1, 10, 10))
            torch.testing.assert_close(item["image"].as_tensor(), img.as_tensor()[..., index], rtol=0, atol=0)
            torch.testing.assert_close(item["seg"].as_tensor(), seg.as_tensor()[..., index], rtol=0, atol=0)
            self.assertEqual(item["seg"].meta[SLICE_INDEX_KEY], index)
            self.assertEqual(item["available"].tolist(), [True, False])
            self.assertEqual(item["name"], "case")
        if num_samples <= len(valid):
            self.assertEqual(len(set(indices)), num_samples)  # without replacement when possible
        else:
            self.assertEqual(set(indices), set(valid))

    def test_covers_range_and_reproducible(self):
        img = _volume()

        def draws(seed):
            t = RandAxialSliceSamplesd("image", num_samples=2, slice_range=(4, 9)).set_random_state(seed)
            return [item["image"].meta[SLICE_INDEX_KEY] for _ in range(40) for item in t({"image": img})]

        first = draws(1)
        self.assertEqual(set(first), set(range(4, 10)))
        self.assertEqual(first, draws(1))
        self.assertNotEqual(first, draws(2))

    def test_in_compose(self):
        pipeline = Compose(
            [
                RandAxialSliceSamplesd(["image"], num_samples=3),
                RandFlipd("image", prob=1.0, spatial_axis=0),
            ]
        )
        items = pipeline({"image": _volume()})
        self.assertEqual(len(items), 3)
        for item in items:
            index = item["image"].meta[SLICE_INDEX_KEY]
            torch.testing.assert_close(item["image"].as_tensor(), _volume().as_tensor()[..., index].flip(1))

    def test_cached_volume_left_unchanged(self):
        """The bundle's training chains cache the volumes in a CacheDataset with copy_cache=False (no deep copy of
        each cached volume per visit): that is valid because the slicer, the first random transform, never writes
        into its input and its slices own their memory, so an in-place transform after it cannot reach the cache."""
        volume = _volume()
        data = {"image": volume, "subject": "s0", "available": torch.ones(2, dtype=torch.bool)}
        dataset = CacheDataset(
            [data],
            Compose(
                [
                    RandAxialSliceSamplesd(["image"], num_samples=3),
                    RandModalityDropoutd(keys="image", mask_key="input_available"),
                    Lambdad("image", lambda x: x.mul_(-2.0)),  # an in-place change downstream
                ]
            ),
            copy_cache=False,
            progress=False,
        )
        for _ in range(3):
            items = dataset[0]
            self.assertEqual(len(items), 3)
            for item in items:
                index = item["image"].meta[SLICE_INDEX_KEY]
                torch.testing.assert_close(item["image"].as_tensor(), -2.0 * _volume().as_tensor()[..., index])
        cached = dataset._cache[0]
        self.assertTrue(torch.equal(cached["image"].as_tensor(), _volume().as_tensor()))
        self.assertEqual(set(cached), {"image", "subject", "available"})

    def test_errors(self):
        t = RandAxialSliceSamplesd(["image", "seg"])
        with self.assertRaisesRegex(ValueError, "'image' and 'seg'"):
            t({"image": _volume(), "seg": torch.zeros(1, 10, 10, 11)})
        with self.assertRaisesRegex(ValueError, "source_key 'image'"):
            RandAxialSliceSamplesd("seg")({"seg": torch.zeros(1, 10, 10, 12)})
        with self.assertRaisesRegex(ValueError, "num_samples"):
            RandAxialSliceSamplesd("image", num_samples=0)
        with self.assertRaisesRegex(ValueError, r"slice_range \(0, 1\)"):
            RandAxialSliceSamplesd("image", slice_range=(0, 1))({"image": _volume()})


if __name__ == "__main__":
    unittest.main()
