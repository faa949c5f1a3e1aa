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

import gzip
import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
from parameterized import parameterized

from monai_msgldm.data.validation import InvalidCaseError, spatial_shape, validate_case

__all__: list[str] = []


def write_nifti(path: str, data: np.ndarray | None = None, affine: np.ndarray | None = None, seed: int = 0) -> str:
    """Write a small NIfTI (default: 8x8x8 positive float32 noise, identity affine)."""
    if data is None:
        data = np.random.RandomState(seed).uniform(0.1, 1.0, size=(8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


SHAPE_CASES = [
    [(8, 8, 8), (8, 8, 8)],
    [(8, 9, 10, 1), (8, 9, 10)],
    [(8, 8), None],
    [(8, 8, 8, 2), None],
    [(8, 8, 8, 1, 1), None],
]


class TestSpatialShape(unittest.TestCase):
    @parameterized.expand(SHAPE_CASES)
    def test_shape(self, shape, expected):
        self.assertEqual(spatial_shape(shape), expected)


class TestValidateCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name
        self.t1 = write_nifti(os.path.join(self.dir, "c_t1.nii.gz"), seed=1)
        self.t2 = write_nifti(os.path.join(self.dir, "c_t2.nii"), seed=2)
        seg = np.zeros((8, 8, 8), np.uint8)
        seg[2:4, 2:4, 2:4] = 4
        self.seg = write_nifti(os.path.join(self.dir, "c_seg.nii.gz"), seg)

    def tearDown(self):
        self._tmp.cleanup()

    def assert_invalid(self, files, *fragments, check_content=True):
        with self.assertRaises(InvalidCaseError) as ctx:
            validate_case("case7", files, check_content=check_content)
        msg = str(ctx.exception)
        self.assertTrue(msg.startswith("case 'case7': "), msg)
        for fragment in fragments:
            self.assertIn(fragment, msg)
        self.assertEqual(ctx.exception.case_id, "case7")
        self.assertIsInstance(ctx.exception, ValueError)
        return ctx.exception

    def test_valid(self):
        self.assertIsNone(validate_case("case7", {"t1": self.t1, "t2": self.t2, "seg": self.seg}))

    def test_4d_singleton_accepted(self):
        data = np.random.RandomState(3).uniform(0.1, 1, size=(8, 8, 8, 1)).astype(np.float32)
        flair = write_nifti(os.path.join(self.dir, "c_flair.nii.gz"), data)
        self.assertIsNone(validate_case("case7", {"t1": self.t1, "flair": flair}))

    def test_empty_seg_accepted(self):
        seg = write_nifti(os.path.join(self.dir, "empty_seg.nii.gz"), np.zeros((8, 8, 8), np.uint8))
        self.assertIsNone(validate_case("case7", {"t1": self.t1, "seg": seg}))

    def test_missing(self):
        missing = os.path.join(self.dir, "c_flair.nii.gz")
        err = self.assert_invalid({"t1": self.t1, "flair": missing}, "flair file not found", missing)
        self.assertEqual(err.paths, (missing,))

    def test_folder_instead_of_file(self):
        folder = os.path.join(self.dir, "c_flair.nii.gz")
        os.mkdir(folder)
        self.assert_invalid({"flair": folder}, "flair file is not a file", folder)

    def test_not_nifti(self):
        bad = os.path.join(self.dir, "c_flair.nii")
        with open(bad, "wb") as f:
            f.write(b"this is not an image" * 40)
        self.assert_invalid({"t1": self.t1, "flair": bad}, bad, "not a readable NIfTI", check_content=False)

    def test_bad_gzip(self):
        bad = os.path.join(self.dir, "c_flair.nii.gz")
        with open(bad, "wb") as f:
            f.write(b"plain bytes, no gzip magic" * 40)
        self.assert_invalid({"t1": self.t1, "flair": bad}, bad, "not a readable NIfTI", check_content=False)

    def test_truncated_gzip(self):
        # a valid header but a cut gzip stream: found when the voxels are read
        data = np.random.RandomState(4).uniform(0.1, 1, size=(8, 8, 8)).astype(np.float32)
        raw = gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes())
        bad = os.path.join(self.dir, "c_flair.nii.gz")
        with open(bad, "wb") as f:
            f.write(raw[: len(raw) * 3 // 4])
        self.assertIsNone(validate_case("case7", {"t1": self.t1, "flair": bad}, check_content=False))
        self.assert_invalid({"t1": self.t1, "flair": bad}, bad, "voxel data cannot be read")

    def test_truncated_uncompressed_found_from_header(self):
        with open(self.t2, "rb") as f:
            raw = f.read()
        with open(self.t2, "wb") as f:
            f.write(raw[:-100])
        self.assert_invalid({"t1": self.t1, "t2": self.t2}, self.t2, "truncated", check_content=False)

    @parameterized.expand([[(8, 8)], [(8, 8, 8, 2)]])
    def test_not_3d(self, shape):
        bad = write_nifti(os.path.join(self.dir, "c_flair.nii.gz"), np.ones(shape, np.float32))
        self.assert_invalid({"t1": self.t1, "flair": bad}, bad, "not a 3D volume", str(shape))

    def test_shape_mismatch_names_both(self):
        bad = write_nifti(os.path.join(self.dir, "c_flair.nii.gz"), np.ones((8, 8, 9), np.float32))
        err = self.assert_invalid(
            {"t1": self.t1, "flair": bad}, "shapes differ", self.t1, bad, "(8, 8, 8)", "(8, 8, 9)", check_content=False
        )
        self.assertEqual(err.paths, (self.t1, bad))

    def test_affine_mismatch_names_both(self):
        affine = np.eye(4)
        affine[0, 3] = 2e-3
        bad = write_nifti(os.path.join(self.dir, "c_flair.nii.gz"), affine=affine)
        self.assert_invalid({"t1": self.t1, "flair": bad}, "affines differ", self.t1, bad, check_content=False)

    def test_affine_within_tolerance(self):
        affine = np.eye(4)
        affine[0, 3] = 5e-4
        ok = write_nifti(os.path.join(self.dir, "c_flair.nii.gz"), affine=affine)
        self.assertIsNone(validate_case("case7", {"t1": self.t1, "flair": ok}))

    @parameterized.expand([["NaN", np.nan, "1 NaN, 0 Inf"], ["Inf", np.inf, "0 NaN, 1 Inf"]])
    def test_non_finite(self, _, value, counts):
        data = np.ones((8, 8, 8), np.float32)
        data[1, 2, 3] = value
        bad = write_nifti(os.path.join(self.dir, "c_flair.nii.gz"), data)
        self.assert_invalid({"t1": self.t1, "flair": bad}, bad, "non-finite", counts)
        # header-only checks do not read the voxels
        self.assertIsNone(validate_case("case7", {"t1": self.t1, "flair": bad}, check_content=False))

    def test_empty_modality(self):
        bad = write_nifti(os.path.join(self.dir, "c_flair.nii.gz"), np.zeros((8, 8, 8), np.int16))
        self.assert_invalid({"t1": self.t1, "flair": bad}, bad, "empty")

    @parameterized.expand([[0.5], [-1.0]])
    def test_bad_label_values(self, value):
        data = np.zeros((8, 8, 8), np.float32)
        data[0, 0, 0] = value
        bad = write_nifti(os.path.join(self.dir, "bad_seg.nii.gz"), data)
        self.assert_invalid({"t1": self.t1, "seg": bad}, bad, "not a label map")

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "non-empty files"):
            validate_case("case7", {})
        with self.assertRaisesRegex(ValueError, "affine_atol"):
            validate_case("case7", {"t1": self.t1}, affine_atol=-1)


if __name__ == "__main__":
    unittest.main()
