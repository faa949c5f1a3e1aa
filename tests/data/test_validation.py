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
import pickle
import tempfile
import unittest

import nibabel as nib
import numpy as np
from parameterized import parameterized

from monai_msgldm.data.validation import (
    InvalidCaseError,
    MissingCaseFileError,
    check_voxel_values,
    grid_mismatch,
    spatial_shape,
    validate_case,
)

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
        self.assertIsInstance(err, MissingCaseFileError)
        self.assertIsInstance(err, FileNotFoundError)
        copy = pickle.loads(pickle.dumps(err))  # e.g. raised in a DataLoader worker process
        self.assertEqual((type(copy), str(copy), copy.paths), (MissingCaseFileError, str(err), err.paths))

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


AFFINE = np.diag([1.0, 1.2, 2.5, 1.0])

GRID_CASES = [
    ["same", (8, 8, 8), AFFINE, None],
    ["shape", (8, 8, 9), AFFINE, "spatial shapes differ: 't1' has (8, 8, 8), 't2' has (8, 8, 9)"],
    ["shift_beyond_atol", (8, 8, 8), AFFINE + np.pad([[2e-3]], ((0, 3), (3, 0))), "(max abs difference 0.002 > atol"],
    ["shift_within_atol", (8, 8, 8), AFFINE + np.pad([[5e-4]], ((0, 3), (3, 0))), None],
    ["spacing", (8, 8, 8), np.diag([1.0, 1.2, 2.0, 1.0]), "affines differ (max abs difference 0.5 > atol 0.001)"],
    ["affine_shape", (8, 8, 8), np.eye(3), "affines differ (shapes (4, 4) and (3, 3))"],
    ["non_finite", (8, 8, 8), np.full((4, 4), np.nan), "affines differ (max abs difference nan"],
    ["no_affine", (8, 8, 8), None, None],
]


class TestGridMismatch(unittest.TestCase):
    @parameterized.expand(GRID_CASES)
    def test_values(self, _, shape, affine, expected):
        problem = grid_mismatch("'t1'", (8, 8, 8), AFFINE, "'t2'", shape, affine)
        if expected is None:
            self.assertIsNone(problem)
        else:
            self.assertIn(expected, problem)
            if "affines" in expected:
                self.assertTrue(problem.endswith(": 't1' and 't2'"), problem)

    def test_atol(self):
        shifted = AFFINE.copy()
        shifted[1, 3] = 0.05
        self.assertIsNone(grid_mismatch("a", (2, 2, 2), AFFINE, "b", (2, 2, 2), shifted, atol=0.1))
        self.assertIn("> atol 0.01", grid_mismatch("a", (2, 2, 2), AFFINE, "b", (2, 2, 2), shifted, atol=0.01))
        self.assertIsNone(grid_mismatch("a", (2, 2, 2), AFFINE, "b", (2, 2, 2), AFFINE, atol=0.0))
        with self.assertRaisesRegex(ValueError, "atol >= 0"):
            grid_mismatch("a", (2, 2, 2), AFFINE, "b", (2, 2, 2), AFFINE, atol=-1)


VOXEL_CASES = [
    ["nan", np.array([1.0, np.nan, 2.0]), False, "t2 file 'x_t2.nii.gz' has non-finite voxels (1 NaN, 0 Inf)"],
    ["inf", np.array([1.0, -np.inf, np.inf]), False, "has non-finite voxels (0 NaN, 2 Inf)"],
    ["empty", np.zeros(4, np.int16), False, "t2 file 'x_t2.nii.gz' is empty (all voxels are zero)"],
    ["complex", np.ones(4, np.complex64), False, "non-real voxel type complex64"],
    ["label_negative", np.array([0, -1, 2]), True, "not a label map: expected non-negative integer values"],
    ["label_fraction", np.array([0.0, 0.5]), True, "got values in [0, 0.5]"],
]


class TestCheckVoxelValues(unittest.TestCase):
    @parameterized.expand(VOXEL_CASES)
    def test_invalid(self, _, data, is_label, expected):
        with self.assertRaises(InvalidCaseError) as ctx:
            check_voxel_values(data, "t2", "x_t2.nii.gz", is_label=is_label)
        self.assertIn(expected, str(ctx.exception))
        self.assertEqual((ctx.exception.case_id, ctx.exception.paths), (None, ("x_t2.nii.gz",)))

    def test_valid_and_names(self):
        self.assertIsNone(check_voxel_values(np.array([0.0, 1.5]), "t1"))
        self.assertIsNone(check_voxel_values(np.zeros(4, np.uint8), "seg", is_label=True))  # no lesion
        with self.assertRaisesRegex(InvalidCaseError, r"^case 'c1': 't1' has non-finite voxels"):
            check_voxel_values(np.array([np.nan]), "t1", case_id="c1")


if __name__ == "__main__":
    unittest.main()
