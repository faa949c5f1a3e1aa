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
import warnings

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from parameterized import parameterized

from monai_msgldm.constants import (
    BRATS2020_SUFFIXES,
    BRATS2023_SUFFIXES,
    BRATS_LABELS_2020,
    BRATS_LABELS_2023,
    MODALITIES,
)
from monai_msgldm.transforms import RandAxialSliceSamplesd, brats_preprocessing_transforms

__all__: list[str] = []

SHAPE = (40, 36, 20)
# LPS-like (x and y flipped), anisotropic, slightly oblique
AFFINE = np.array([[-1.0, 0.05, 0.0, 30.0], [0.0, -1.2, 0.1, 20.0], [0.0, 0.0, 2.5, -10.0], [0.0, 0.0, 0.0, 1.0]])
X, Y, Z = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
BRAIN = ((X - 18) / 14) ** 2 + ((Y - 17) / 12) ** 2 + ((Z - 9) / 8) ** 2 < 1  # 28 x 24 x 15 voxels extent
DEPTH = 15
NAMINGS = {
    "brats2020": (BRATS2020_SUFFIXES, BRATS_LABELS_2020, "_"),
    "brats2023": (BRATS2023_SUFFIXES, BRATS_LABELS_2023, "-"),
}


def _intensity(channel: int) -> np.ndarray:
    rng = np.random.default_rng(channel)
    values = 100 + 50 * channel + 30 * np.sin(X / 3 + channel) + 20 * np.cos(Y / 4) + rng.normal(0, 3, SHAPE)
    return np.where(BRAIN, values, 0.0).astype(np.float32)


def _labels(enhancing: int) -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.int16)
    seg[BRAIN & (X < 15)] = 2
    seg[BRAIN & (X < 12) & (Y < 16)] = 1
    seg[BRAIN & (X < 10) & (Y < 13)] = enhancing
    return seg


def _save(array: np.ndarray, path: str, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _write_case(folder: str, naming: str, case: str = "case") -> dict[str, str]:
    suffixes, labels, sep = NAMINGS[naming]
    os.makedirs(os.path.join(folder, case), exist_ok=True)
    files = {}
    for c, m in enumerate(MODALITIES):
        files[m] = _save(_intensity(c), os.path.join(folder, case, f"{case}{sep}{suffixes[m]}.nii.gz"))
    seg_path = os.path.join(folder, case, f"{case}{sep}{suffixes['seg']}.nii.gz")
    files["seg"] = _save(_labels(labels["enhancing"]), seg_path)
    return files


class TestBratsPreprocessing(unittest.TestCase):
    def assertCauseRaises(self, regex, files):  # noqa: N802 - unittest style
        """MONAI's Compose wraps a transform's error in RuntimeError('applying transform ...') from it."""
        with self.assertRaises(RuntimeError) as ctx:
            brats_preprocessing_transforms()(files)
        self.assertIsInstance(ctx.exception.__cause__, ValueError)
        self.assertRegex(str(ctx.exception.__cause__), regex)

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.cases = {naming: _write_case(os.path.join(cls._tmp.name, naming), naming) for naming in NAMINGS}

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def setUp(self):
        # MONAI warns once when scaling the constant channel of an absent modality (documented behaviour)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message="Divide by zero")

    def tearDown(self):
        self._warnings.__exit__(None, None, None)

    @parameterized.expand([("brats2020", (32, 32)), ("brats2023", (32, 32)), ("brats2020", (24, 20))])
    def test_outputs(self, naming, size):
        # the 24 x 20 field of view is smaller than the brain: cropped on request (the default raises)
        out = brats_preprocessing_transforms(spatial_size=size, naming=naming, field_of_view="crop")(
            dict(self.cases[naming])
        )
        self.assertEqual(set(out), {"image", "available", "seg"})
        image, seg = out["image"], out["seg"]
        self.assertIsInstance(image, MetaTensor)
        self.assertEqual(tuple(image.shape), (4, *size, DEPTH))
        self.assertEqual(image.dtype, torch.float32)
        self.assertEqual(out["available"].dtype, torch.bool)
        self.assertEqual(out["available"].tolist(), [True] * 4)
        for c in range(4):  # each modality scaled separately to exactly [-1, 1]
            self.assertAlmostEqual(float(image[c].min()), -1.0, places=5)
            self.assertAlmostEqual(float(image[c].max()), 1.0, places=5)
        self.assertEqual(tuple(seg.shape), (3, *size, DEPTH))
        self.assertEqual(seg.dtype, torch.float32)
        self.assertEqual(set(torch.unique(seg).tolist()), {0.0, 1.0})
        for m in MODALITIES:
            self.assertEqual(image.meta[f"{m}_filename_or_obj"], self.cases[naming][m])
        if size == (32, 32):  # nothing of the tumour cropped away: region voxel counts are exact
            raw = _labels(NAMINGS[naming][1]["enhancing"])
            enhancing = NAMINGS[naming][1]["enhancing"]
            expected = [np.isin(raw, (1, enhancing)).sum(), (raw > 0).sum(), (raw == enhancing).sum()]
            self.assertEqual([int(s) for s in seg.sum(dim=(1, 2, 3))], [int(e) for e in expected])
            self.assertTrue(bool((seg[0] <= seg[1]).all()) and bool((seg[2] <= seg[0]).all()))  # ET in TC in WT
            self.assertGreater(int(seg[2].sum()), 0)

    @parameterized.expand([("t1ce",), ("flair",)])
    def test_missing_modality(self, missing):
        files = {k: v for k, v in self.cases["brats2023"].items() if k != missing}
        out = brats_preprocessing_transforms(spatial_size=(32, 32), naming="brats2023")(files)
        c = MODALITIES.index(missing)
        self.assertEqual(out["available"].tolist(), [m != missing for m in MODALITIES])
        self.assertTrue(bool((out["image"][c] == -1.0).all()))
        self.assertEqual(out["image"].meta[f"{missing}_filename_or_obj"], "")
        full = brats_preprocessing_transforms(spatial_size=(32, 32), naming="brats2023")(dict(self.cases["brats2023"]))
        keep = [i for i in range(4) if i != c]
        torch.testing.assert_close(out["image"][keep].as_tensor(), full["image"][keep].as_tensor())

    def test_no_seg_and_itk_reader(self):
        files = {m: self.cases["brats2020"][m] for m in MODALITIES}
        nib_out = brats_preprocessing_transforms(seg_key=None, spatial_size=(32, 32))(dict(files))
        itk_out = brats_preprocessing_transforms(seg_key=None, spatial_size=(32, 32), reader="ITKReader")(dict(files))
        self.assertEqual(set(nib_out), {"image", "available"})
        torch.testing.assert_close(itk_out["image"].as_tensor(), nib_out["image"].as_tensor(), atol=1e-5, rtol=0)
        torch.testing.assert_close(itk_out["image"].affine, nib_out["image"].affine, atol=1e-4, rtol=0)

    def test_2023_labels_with_2020_naming_raise(self):
        self.assertCauseRaises(r"'seg'.*unexpected values \[3.0\]", dict(self.cases["brats2023"]))

    def test_mismatched_grids_raise(self):
        folder = os.path.join(self._tmp.name, "bad")
        os.makedirs(folder, exist_ok=True)
        files = dict(self.cases["brats2020"])
        files["t2"] = _save(_intensity(2)[:, :, :-1], os.path.join(folder, "t2_short.nii.gz"))
        self.assertCauseRaises(
            r"spatial shapes differ: 't1' .* has \(40, 36, 20\), 't2' \('.*t2_short.nii.gz'\)", files
        )
        shifted = AFFINE.copy()
        shifted[2, 3] += 1.0
        files = dict(self.cases["brats2020"])
        files["flair"] = _save(_intensity(3), os.path.join(folder, "flair_shifted.nii.gz"), shifted)
        self.assertCauseRaises(
            r"affines differ \(max abs difference 1 > .*'t1' .* and 'flair' \('.*flair_shifted", files
        )
        files = dict(self.cases["brats2020"])
        files["seg"] = _save(_labels(4), os.path.join(folder, "seg_shifted.nii.gz"), shifted)
        self.assertCauseRaises(r"affines differ .*'t1' .* and 'seg' \('.*seg_shifted.nii.gz'\)", files)

    @parameterized.expand(
        [
            ("nan", np.nan, "t1ce", r"t1ce file '.*t1ce_nan.nii.gz' has non-finite voxels \(1 NaN, 0 Inf\)"),
            ("inf", np.inf, "flair", r"flair file '.*flair_inf.nii.gz' has non-finite voxels \(0 NaN, 1 Inf\)"),
            ("empty", None, "t2", r"t2 file '.*t2_empty.nii.gz' is empty \(all voxels are zero\)"),
        ]
    )
    def test_bad_voxels_raise_naming_the_file(self, name, value, modality, regex):
        folder = os.path.join(self._tmp.name, "voxels")
        os.makedirs(folder, exist_ok=True)
        data = _intensity(MODALITIES.index(modality))
        if value is None:
            data[:] = 0.0
        else:
            data[3, 4, 5] = value
        files = dict(self.cases["brats2020"])
        files[modality] = _save(data, os.path.join(folder, f"{modality}_{name}.nii.gz"))
        self.assertCauseRaises(regex, files)

    def test_working_grid_is_a_no_op_on_data_at_that_grid(self):
        """pixdim equal to the data's voxel size (BraTS at 1 mm, axis-aligned) changes nothing; another one
        resamples, and the inverse restores the file's grid."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        files = {}
        for key, path in self.cases["brats2020"].items():  # the same case, axis-aligned (RAI) at 1 x 1.2 x 2.5 mm
            files[key] = os.path.join(folder, os.path.basename(path))
            nib.save(nib.Nifti1Image(np.asarray(nib.load(path).dataobj), np.diag([1.0, -1.2, -2.5, 1.0])), files[key])
        plain = brats_preprocessing_transforms(spatial_size=(32, 32))(dict(files))
        pre_same = brats_preprocessing_transforms(spatial_size=(32, 32), pixdim=(1.0, 1.2, 2.5))
        same = pre_same(dict(files))
        torch.testing.assert_close(same["image"].as_tensor(), plain["image"].as_tensor(), rtol=0, atol=1e-5)
        torch.testing.assert_close(same["seg"].as_tensor(), plain["seg"].as_tensor(), rtol=0, atol=0)
        pre = brats_preprocessing_transforms(spatial_size=(32, 32), pixdim=(2.0, 2.0, 2.0))
        coarse = pre(dict(files))
        np.testing.assert_allclose(coarse["image"].pixdim.numpy(), [2.0, 2.0, 2.0], atol=1e-5)
        self.assertEqual(set(torch.unique(coarse["seg"]).tolist()), {0.0, 1.0})  # nearest for the labels
        # the inverse goes back to the file's grid through the resampling too
        inverted = Invertd(keys="image", transform=pre, orig_keys="image", nearest_interp=False)(coarse)["image"]
        self.assertEqual(tuple(inverted.shape), (4, *SHAPE))
        np.testing.assert_allclose(inverted.affine.numpy(), np.diag([1.0, -1.2, -2.5, 1.0]), atol=1e-4)
        restored = Invertd(keys="image", transform=pre_same, orig_keys="image", nearest_interp=False)(same)["image"]
        inside = torch.as_tensor(BRAIN)
        corr = np.corrcoef(inverted[0][inside].numpy(), restored[0][inside].numpy())[0, 1]
        self.assertGreater(corr, 0.8)  # 2 mm and back: smoother, still the same image

    @parameterized.expand([("brats2020", None), ("brats2023", "t1")])
    def test_inversion(self, naming, missing):
        files = {k: v for k, v in self.cases[naming].items() if k != missing}
        pre = brats_preprocessing_transforms(spatial_size=(24, 20), naming=naming, field_of_view="crop")
        out = pre(files)
        inverted = Invertd(keys="image", transform=pre, orig_keys="image", nearest_interp=False)(out)["image"]
        self.assertEqual(tuple(inverted.shape), (4, *SHAPE))
        np.testing.assert_allclose(inverted.affine.numpy(), AFFINE, atol=1e-4)
        # the inverse pads what the in-plane crop cut away with 0; brain voxels are never exactly 0 after scaling
        region = BRAIN & (inverted.numpy() != 0.0).any(axis=0)
        self.assertGreater(region.sum(), 0.8 * BRAIN.sum())
        self.assertLess(region.sum(), BRAIN.sum())  # the 24 x 20 crop did cut some brain
        for c, m in enumerate(MODALITIES):
            if m == missing:
                self.assertTrue(bool((inverted[c][torch.as_tensor(region)] == -1.0).all()))
                continue
            original, scaled = _intensity(c)[region], inverted[c].numpy()[region]
            slope, intercept = np.polyfit(scaled, original, 1)  # undo the linear [-1, 1] scaling
            self.assertGreater(slope, 0.0)
            restored = slope * scaled + intercept
            self.assertGreater(np.corrcoef(restored, original)[0, 1], 0.99)
            np.testing.assert_allclose(restored, original, rtol=0, atol=1e-3 * original.max())

    def test_with_slice_sampler(self):
        pipeline = Compose(
            [
                brats_preprocessing_transforms(spatial_size=(32, 32)),
                RandAxialSliceSamplesd(["image", "seg"], num_samples=4, slice_range=(2, 12)),
            ]
        )
        pipeline.set_random_state(0)
        items = pipeline(dict(self.cases["brats2020"]))
        self.assertEqual(len(items), 4)
        for item in items:
            self.assertEqual(tuple(item["image"].shape), (4, 32, 32))
            self.assertEqual(tuple(item["seg"].shape), (3, 32, 32))
            self.assertTrue(2 <= item["image"].meta["slice_index"] <= 12)

    @parameterized.expand(
        [
            ({"naming": "brats2021"}, "naming"),
            ({"spatial_size": (192, 192, 155)}, "spatial_size"),
            ({"lower": 50.0, "upper": 50.0}, "lower"),
            ({"modalities": ("t1", "t1")}, "modality keys"),
            ({"modalities": ("t1", "seg")}, "distinct"),
        ]
    )
    def test_invalid_args(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            brats_preprocessing_transforms(**kwargs)


if __name__ == "__main__":
    unittest.main()
