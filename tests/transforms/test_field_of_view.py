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

import logging
import unittest

import numpy as np
import torch
from monai.data import MetaTensor
from parameterized import parameterized

from monai_msgldm.transforms import (
    CheckFieldOfView,
    CheckFieldOfViewD,
    CheckFieldOfViewd,
    CheckFieldOfViewDict,
    brats_preprocessing_transforms,
)

__all__: list[str] = []


def _image(shape, pixdim=(2.0, 2.0, 2.0)) -> MetaTensor:
    affine = np.diag([*pixdim, 1.0])
    return MetaTensor(
        torch.ones(1, *shape), affine=torch.as_tensor(affine), meta={"t1_filename_or_obj": "/d/case_t1.nii.gz"}
    )


class TestCheckFieldOfView(unittest.TestCase):
    def test_aliases(self):
        self.assertIs(CheckFieldOfViewD, CheckFieldOfViewd)
        self.assertIs(CheckFieldOfViewDict, CheckFieldOfViewd)

    @parameterized.expand([((10, 12, 30),), ((12, 12, 1),), ((1, 1, 99),)])
    def test_fitting_passes_unchanged(self, shape):
        img = _image(shape)
        self.assertIs(CheckFieldOfView((12, 12))(img), img)
        self.assertIs(CheckFieldOfViewd("image", (12, 12))({"image": img})["image"], img)

    @parameterized.expand([((13, 12, 5), "13 x 12 voxels \\(26 x 24 mm\\)"), ((12, 20, 5), "12 x 20 voxels")])
    def test_larger_raises_with_both_extents_and_case(self, shape, extent):
        with self.assertRaisesRegex(ValueError, extent) as cm:
            CheckFieldOfView((12, 12))(_image(shape))
        message = str(cm.exception)
        self.assertIn("field of view of 12 x 12 voxels (24 x 24 mm)", message)
        self.assertIn("/d/case_t1.nii.gz", message)
        self.assertIn("field_of_view='crop'", message)

    def test_crop_mode_logs_and_passes(self):
        img = _image((20, 12, 5))
        with self.assertLogs("monai_msgldm.transforms.field_of_view", logging.WARNING) as logs:
            self.assertIs(CheckFieldOfView((12, 12), on_larger="crop")(img), img)
        self.assertIn("20 x 12 voxels (40 x 24 mm)", logs.output[0])

    @parameterized.expand([((0, 12), "spatial_size"), ((12.5, 12), "spatial_size"), ((12, 12), "on_larger", "x")])
    def test_invalid_args(self, size, arg, mode="raise"):
        with self.assertRaisesRegex(ValueError, arg):
            CheckFieldOfView(size, on_larger=mode)


class TestPreprocessingFieldOfView(unittest.TestCase):
    """The check inside the preprocessing, after the working-grid resampling and the foreground crop."""

    def _case(self, extent_mm, pixdim=(1.0, 1.0, 1.0)):
        import os
        import tempfile

        import nibabel as nib

        tmp = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, tmp, True)
        shape = tuple(int(round(e / p)) + 8 for e, p in zip(extent_mm, pixdim))
        data = np.zeros(shape, dtype=np.float32)
        box = tuple(slice(4, 4 + int(round(e / p))) for e, p in zip(extent_mm, pixdim))
        data[box] = np.random.default_rng(0).uniform(1, 2, data[box].shape)
        path = os.path.join(tmp, "case_t1.nii.gz")
        nib.save(nib.Nifti1Image(data, np.diag([*pixdim, 1.0])), path)
        return path

    def test_brain_larger_than_fov_after_resampling(self):
        # 40 x 30 mm at 0.5 mm is 80 x 60 voxels on the file's grid: it fits a 24-voxel field of view at 2 mm
        path = self._case((40.0, 30.0, 10.0), pixdim=(0.5, 0.5, 2.0))
        ok = brats_preprocessing_transforms(seg_key=None, spatial_size=(24, 24), pixdim=(2.0, 2.0, 2.0))({"t1": path})
        self.assertEqual(tuple(ok["image"].shape[1:3]), (24, 24))
        np.testing.assert_allclose(ok["image"].pixdim.numpy(), [2.0, 2.0, 2.0])
        # ... but not at 1 mm (40 voxels): a clear error, no silent cut
        pre = brats_preprocessing_transforms(seg_key=None, spatial_size=(24, 24), pixdim=(1.0, 1.0, 1.0))
        with self.assertRaises(RuntimeError) as cm:  # MONAI's Compose wraps the transform's error
            pre({"t1": path})
        cause = cm.exception.__cause__
        self.assertIsInstance(cause, ValueError)
        self.assertIn("40 x 30 voxels (40 x 30 mm)", str(cause))
        self.assertIn("field of view of 24 x 24 voxels", str(cause))
        self.assertIn(path, str(cause))


if __name__ == "__main__":
    unittest.main()
