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
from collections import Counter

import numpy as np
import torch
from monai.data import MetaTensor
from parameterized import parameterized
from scipy.stats import chi2

from monai_msgldm.transforms import (
    ApplyModalityMask,
    ApplyModalityMaskd,
    RandModalityDropout,
    RandModalityDropoutD,
    RandModalityDropoutd,
    RandModalityDropoutDict,
    as_availability_mask,
)

__all__: list[str] = []


def _image(num_channels: int = 4, size: int = 6) -> torch.Tensor:
    # channel c holds values in [c + 1, c + 2): never equal to any fill value used below
    return torch.rand(num_channels, size, size, generator=torch.Generator().manual_seed(1)) + torch.arange(
        1, num_channels + 1
    ).view(-1, 1, 1)


def _dropped(out: torch.Tensor, img: torch.Tensor, fill_value: float) -> np.ndarray:
    """(M,) bool: channels equal to fill_value everywhere; checks that the others are untouched."""
    dropped = np.array([bool((out[c] == fill_value).all()) for c in range(out.shape[0])])
    for c in np.flatnonzero(~dropped):
        torch.testing.assert_close(out[c], img[c], rtol=0, atol=0)
    return dropped


class TestRandModalityDropout(unittest.TestCase):
    @parameterized.expand(
        [
            ({"prob": -0.1}, "prob"),
            ({"prob": 1.5}, "prob"),
            ({"min_available": 0}, "min_available"),
            ({"min_available": 1.5}, "min_available"),
            ({"max_missing": -1}, "max_missing"),
        ]
    )
    def test_invalid_args(self, kwargs, arg):
        with self.assertRaisesRegex(ValueError, f"RandModalityDropout expects {arg}"):
            RandModalityDropout(**kwargs)
        with self.assertRaisesRegex(ValueError, arg):
            RandModalityDropoutd("image", **kwargs)

    @parameterized.expand(
        [
            ({}, {0, 1, 2, 3}),  # authors: 0..3 of 4 dropped
            ({"max_missing": 1}, {0, 1}),
            ({"min_available": 2}, {0, 1, 2}),
            ({"min_available": 3, "max_missing": 3}, {0, 1}),
        ]
    )
    def test_count_distribution(self, kwargs, expected_counts):
        img = _image()
        t = RandModalityDropout(fill_value=-1.0, **kwargs).set_random_state(0)
        counts, per_channel = Counter(), np.zeros(4)
        for _ in range(400):
            out, available = t(img)
            dropped = _dropped(out, img, -1.0)
            np.testing.assert_array_equal(available.numpy(), ~dropped)
            self.assertEqual(available.dtype, torch.bool)
            self.assertGreaterEqual(int(available.sum()), kwargs.get("min_available", 1))
            counts[int(dropped.sum())] += 1
            per_channel += dropped
        self.assertEqual(set(counts), expected_counts)
        # the number dropped is uniform over its range: Pearson's chi-square against the uniform counts stays
        # below its 99.9 % quantile (a value never or twice as often drawn would exceed it by far)
        expected = 400 / len(expected_counts)
        statistic = sum((counts[k] - expected) ** 2 / expected for k in expected_counts)
        self.assertLess(statistic, chi2.ppf(0.999, df=len(expected_counts) - 1), counts)
        if max(expected_counts) > 0:
            self.assertTrue((per_channel > 0).all(), per_channel)  # every channel gets dropped sometimes

    def test_never_all_dropped(self):
        t = RandModalityDropout(min_available=1, max_missing=10).set_random_state(3)
        img = _image(num_channels=2)
        for _ in range(300):
            _, available = t(img)
            self.assertGreaterEqual(int(available.sum()), 1)

    def test_reproducible(self):
        img = _image()

        def draws(seed):
            t = RandModalityDropout().set_random_state(seed)
            return [tuple(t(img)[1].tolist()) for _ in range(20)]

        self.assertEqual(draws(7), draws(7))
        self.assertNotEqual(draws(7), draws(8))

    def test_existing_mask(self):
        img = _image()
        given = torch.tensor([True, False, True, True])
        t = RandModalityDropout(fill_value=0.0).set_random_state(1)
        seen = Counter()
        for _ in range(200):
            out, available = t(img, given)
            self.assertFalse(bool(available[1]))
            self.assertGreaterEqual(int(available.sum()), 1)
            # the already absent channel is left as it was
            torch.testing.assert_close(out[1], img[1], rtol=0, atol=0)
            dropped = _dropped(out, img, 0.0)
            np.testing.assert_array_equal(available.numpy(), given.numpy() & ~dropped)
            seen[int(available.sum())] += 1
        self.assertEqual(set(seen), {1, 2, 3})  # 0..2 of the 3 available ones dropped

    def test_prob_zero_identity(self):
        img = _image()
        t = RandModalityDropout(prob=0.0)
        for _ in range(10):
            out, available = t(img)
            self.assertIs(out, img)
            self.assertTrue(bool(available.all()))
        out, available = t(img, [1, 1, 0, 1])
        self.assertEqual(available.tolist(), [True, True, False, True])

    def test_numpy_and_metatensor(self):
        img = _image()
        t = RandModalityDropout(min_available=3, max_missing=1, fill_value=5.0).set_random_state(0)
        outs = [t(img.numpy()) for _ in range(20)]
        for out, available in outs:
            self.assertIsInstance(out, np.ndarray)
            self.assertIsInstance(available, np.ndarray)
            self.assertEqual(available.dtype, np.bool_)
            np.testing.assert_array_equal(out[~available], 5.0)
            np.testing.assert_array_equal(out[available], img.numpy()[available])
        self.assertTrue(any(not a.all() for _, a in outs))
        affine = torch.diag(torch.tensor([2.0, 3.0, 1.0]))
        meta = MetaTensor(img, affine=affine, meta={"filename_or_obj": "x.nii"})
        t = RandModalityDropout(max_missing=3, min_available=1).set_random_state(2)
        for _ in range(10):
            out, _ = t(meta)
            self.assertIsInstance(out, MetaTensor)
            torch.testing.assert_close(out.affine, affine.double())
            self.assertEqual(out.meta["filename_or_obj"], "x.nii")

    def test_randomize_false_reuses_draw(self):
        img = _image()
        t = RandModalityDropout().set_random_state(4)
        for _ in range(10):
            out1, a1 = t(img)
            out2, a2 = t(img * 2, randomize=False)
            torch.testing.assert_close(a1, a2)
        with self.assertRaisesRegex(ValueError, "previous draw for 3 channels"):
            t(_image(num_channels=3), randomize=False)

    @parameterized.expand([([True, False],), ([[1, 0, 1, 1]],), ([0, 2, 1, 1],)])
    def test_bad_mask(self, mask):
        with self.assertRaisesRegex(ValueError, "available"):
            RandModalityDropout()(_image(), mask)

    def test_randomize_needs_mask(self):
        with self.assertRaisesRegex(ValueError, r"\(M,\) availability mask"):
            RandModalityDropout().randomize(None)

    def test_all_absent_mask(self):
        with self.assertRaisesRegex(ValueError, "at least one available"):
            RandModalityDropout()(_image(), [0, 0, 0, 0])


class TestRandModalityDropoutd(unittest.TestCase):
    def test_aliases(self):
        self.assertIs(RandModalityDropoutD, RandModalityDropoutd)
        self.assertIs(RandModalityDropoutDict, RandModalityDropoutd)

    def test_same_drop_for_all_keys(self):
        img = _image()
        t = RandModalityDropoutd(["image", "latent"], fill_value=-1.0).set_random_state(0)
        counts = Counter()
        for _ in range(100):
            out = t({"image": img, "latent": img + 10, "other": "kept"})
            available = out["available"]
            self.assertIsInstance(available, torch.Tensor)
            self.assertEqual(available.dtype, torch.bool)
            np.testing.assert_array_equal(_dropped(out["image"], img, -1.0), ~available.numpy())
            np.testing.assert_array_equal(_dropped(out["latent"], img + 10, -1.0), ~available.numpy())
            self.assertEqual(out["other"], "kept")
            counts[int((~available).sum())] += 1
        self.assertEqual(set(counts), {0, 1, 2, 3})

    def test_reads_existing_mask(self):
        img = _image()
        t = RandModalityDropoutd("image").set_random_state(5)
        for _ in range(50):
            out = t({"image": img, "available": np.array([False, True, True, False])})
            self.assertFalse(bool(out["available"][0]) or bool(out["available"][3]))
            self.assertGreaterEqual(int(out["available"].sum()), 1)

    def test_prob_zero_writes_mask(self):
        img = _image()
        out = RandModalityDropoutd("image", prob=0.0)({"image": img})
        self.assertIs(out["image"], img)
        self.assertEqual(out["available"].tolist(), [True] * 4)

    def test_reproducible(self):
        img = _image()

        def draws(seed):
            t = RandModalityDropoutd("image").set_random_state(seed)
            return [tuple(t({"image": img})["available"].tolist()) for _ in range(20)]

        self.assertEqual(draws(11), draws(11))
        self.assertNotEqual(draws(11), draws(12))

    @parameterized.expand([("all",), ("some",)])
    def test_mask_key_draws_without_touching_the_data(self, case):
        """With mask_key the drawn mask is written there; the images and the data mask stay the same objects, and
        the draws are RandModalityDropout.draw_mask's for the same seed (the oracle)."""
        img = _image()
        given = torch.ones(4, dtype=torch.bool) if case == "all" else torch.tensor([True, False, True, True])
        t = RandModalityDropoutd("image", mask_key="input_available", min_available=1).set_random_state(4)
        oracle = RandModalityDropout(prob=1.0, min_available=1).set_random_state(4)
        for _ in range(30):
            out = t({"image": img, "available": given})
            self.assertIs(out["image"], img)
            self.assertIs(out["available"], given)
            self.assertEqual(out["input_available"].dtype, torch.bool)
            self.assertEqual(out["input_available"].tolist(), oracle.draw_mask(given.numpy()).tolist())
            self.assertFalse(bool((out["input_available"] & ~given).any()))

    @parameterized.expand([("available",), ("image",), (3,)])
    def test_mask_key_invalid(self, key):
        with self.assertRaisesRegex(ValueError, "mask_key"):
            RandModalityDropoutd("image", mask_key=key)

    def test_errors(self):
        with self.assertRaises(KeyError):
            RandModalityDropoutd("image")({"x": _image()})
        self.assertNotIn("available", RandModalityDropoutd("image", allow_missing_keys=True)({"x": 1}))
        with self.assertRaisesRegex(ValueError, "'image' and 'latent'"):
            RandModalityDropoutd(["image", "latent"])({"image": _image(), "latent": _image(3)})


class TestApplyModalityMask(unittest.TestCase):
    def test_values(self):
        img = _image()
        out = ApplyModalityMask(fill_value=-1.0)(img, torch.tensor([True, False, True, False]))
        self.assertTrue(bool((out[1] == -1).all()) and bool((out[3] == -1).all()))
        torch.testing.assert_close(out[[0, 2]], img[[0, 2]], rtol=0, atol=0)
        self.assertTrue(bool((img[1] != -1).all()))  # input not modified in place
        self.assertIs(ApplyModalityMask()(img, [1, 1, 1, 1]), img)

    def test_dict(self):
        img = _image().numpy()
        out = ApplyModalityMaskd("image", fill_value=-1.0)({"image": img, "available": [0, 1, 1, 1]})
        np.testing.assert_array_equal(out["image"][0], -1.0)
        np.testing.assert_array_equal(out["image"][1:], img[1:])
        with self.assertRaisesRegex(ValueError, "available_key 'available'"):
            ApplyModalityMaskd("image")({"image": img})

    def test_as_availability_mask(self):
        np.testing.assert_array_equal(as_availability_mask((1, 0, 1), 3), [True, False, True])
        with self.assertRaisesRegex(ValueError, r"shape \(4,\)"):
            as_availability_mask([1, 0, 1], 4)


class TestDrawMask(unittest.TestCase):
    def test_draw_mask_is_the_mask_call_applies(self):
        """The mask-only draw consumes the same random numbers and gives the same mask as a call on an image."""
        for seed in range(20):
            available = np.array([True, seed % 3 != 0, True, seed % 2 == 0])
            img = torch.rand(4, 8, 8)
            _, expected = RandModalityDropout(min_available=1).set_random_state(seed)(img, available)
            drawn = RandModalityDropout(min_available=1).set_random_state(seed).draw_mask(available)
            np.testing.assert_array_equal(drawn, expected.numpy())
            self.assertTrue(drawn.any() and not (drawn & ~available).any())
        with self.assertRaisesRegex(ValueError, "at least one available"):
            RandModalityDropout().draw_mask(np.zeros(4, dtype=bool))


if __name__ == "__main__":
    unittest.main()
