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
import tempfile
import unittest

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from parameterized import parameterized

from monai_msgldm.data.validation import InvalidCaseError
from monai_msgldm.transforms import CheckImageValues, CheckImageValuesD, CheckImageValuesd, CheckImageValuesDict

__all__: list[str] = []

GOOD = [
    ("2d_tensor", torch.rand(1, 6, 5) + 0.1),
    ("3d_numpy", np.random.default_rng(0).uniform(0.1, 1, (1, 6, 5, 4)).astype(np.float32)),
    ("3d_int", np.arange(24, dtype=np.int16).reshape(1, 2, 3, 4)),
    ("meta", MetaTensor(torch.rand(1, 4, 4, 4) - 0.5, meta={"filename_or_obj": "/d/c_t1.nii.gz"})),
]


def _with(value: float, shape=(1, 4, 4, 4), filename: str = "") -> MetaTensor:
    data = torch.ones(shape)
    data[0, 1, 2, 3] = value
    return MetaTensor(data, meta={"filename_or_obj": filename})


class TestCheckImageValues(unittest.TestCase):
    def test_aliases(self):
        self.assertIs(CheckImageValuesD, CheckImageValuesd)
        self.assertIs(CheckImageValuesDict, CheckImageValuesd)

    @parameterized.expand(GOOD)
    def test_finite_images_pass_unchanged(self, _, img):
        self.assertIs(CheckImageValues()(img), img)
        before = img.clone() if isinstance(img, torch.Tensor) else img.copy()
        out = CheckImageValuesd(["t1", "t2"], allow_missing_keys=True)({"t1": img, "seg": "x"})
        self.assertIs(out["t1"], img)
        self.assertEqual(out["seg"], "x")
        np.testing.assert_array_equal(np.asarray(out["t1"]), np.asarray(before))

    @parameterized.expand(
        [
            (
                "nan",
                _with(float("nan"), filename="/d/c_t2.nii.gz"),
                "t2 file '/d/c_t2.nii.gz' has non-finite voxels \\(1 NaN, 0 Inf\\)",
            ),
            ("inf_no_file", _with(float("-inf"), shape=(1, 3, 4, 5)), "'t2' has non-finite voxels \\(0 NaN, 1 Inf\\)"),
            (
                "empty",
                MetaTensor(torch.zeros(1, 3, 3, 3), meta={"filename_or_obj": "/d/e.nii"}),
                "t2 file '/d/e.nii' is empty",
            ),
        ]
    )
    def test_bad_images_raise_naming_key_and_file(self, _, img, regex):
        with self.assertRaisesRegex(InvalidCaseError, "^" + regex):
            CheckImageValuesd("t2")({"t2": img})
        with self.assertRaisesRegex(InvalidCaseError, regex.replace("t2", "image", 1)):
            CheckImageValues()(img)
        with self.assertRaisesRegex(InvalidCaseError, regex.replace("t2", "flair", 1)):
            CheckImageValues()(img, name="flair")

    def test_missing_keys(self):
        with self.assertRaises(KeyError):
            CheckImageValuesd("t2")({"t1": _with(1.0)})

    def test_after_load_names_the_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = np.ones((5, 4, 3), np.float32)
            data[1, 1, 1] = np.nan
            path = os.path.join(tmp, "case_flair.nii.gz")
            nib.save(nib.Nifti1Image(data, np.eye(4)), path)
            load = Compose(
                [LoadImaged("flair", image_only=True), EnsureChannelFirstd("flair"), CheckImageValuesd("flair")]
            )
            with self.assertRaises(RuntimeError) as ctx:  # MONAI's Compose wraps the transform's error
                load({"flair": path})
        self.assertIsInstance(ctx.exception.__cause__, InvalidCaseError)
        self.assertEqual(str(ctx.exception.__cause__), f"flair file '{path}' has non-finite voxels (1 NaN, 0 Inf)")
        self.assertEqual(ctx.exception.__cause__.paths, (path,))


if __name__ == "__main__":
    unittest.main()
