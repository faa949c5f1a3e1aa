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
"""``monai-msgldm-data preprocess``: loose files of one subject, on different grids, into a co-registered BraTS case."""

from __future__ import annotations

import os
import tempfile
import unittest

import nibabel as nib
import numpy as np

from monai_msgldm.data.phantom import generate_phantom_dataset
from monai_msgldm.inferers.inputs import check_case_files
from tests.bundles.test_clinical_input import _corr, _regrid, _rigid
from tests.data.test_cli import run_main

__all__: list[str] = []


class TestPreprocessCommand(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        case = generate_phantom_dataset(os.path.join(cls._tmp.name, "phantom"), 1, resolution=3.0, progress=False)[0]
        name = os.path.basename(case)
        cls.t1 = os.path.join(case, f"{name}_t1.nii.gz")
        cls.t2 = os.path.join(case, f"{name}_t2.nii.gz")
        ref = nib.load(cls.t1)
        centre = ref.affine[:3, :3] @ (np.asarray(ref.shape) / 2) + ref.affine[:3, 3]
        grid = np.diag([2.5, 2.5, 4.0, 1.0])
        grid[:3, 3] = ref.affine[:3, 3] - 6.0
        shape = tuple(int(s * 3.0 // z) + 4 for s, z in zip(ref.shape, (2.5, 2.5, 4.0)))
        loose = os.path.join(cls._tmp.name, "loose")
        os.makedirs(loose)
        moved = _rigid((6.0, 0.0, 5.0), (3.0, 2.0, -4.0), centre)
        cls.loose_t2 = _regrid(cls.t2, grid, shape, os.path.join(loose, "ax_t2.nii.gz"), moved=moved)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_registers_and_writes_a_brats_case(self):
        out = os.path.join(self._tmp.name, "out")
        code, stdout, stderr = run_main(
            "preprocess", "--t1", self.t1, "--t2", self.loose_t2, "--output", out, "--case", "subj01"
        )
        self.assertEqual(code, 0, stderr)
        self.assertIn("case 'subj01' written", stdout)
        self.assertEqual(sorted(os.listdir(os.path.join(out, "subj01"))), ["subj01_t1.nii.gz", "subj01_t2.nii.gz"])
        t1, t2 = (nib.load(os.path.join(out, "subj01", f"subj01_{m}.nii.gz")) for m in ("t1", "t2"))
        reference = nib.load(self.t1)
        for img in (t1, t2):  # both on the reference (T1) grid
            self.assertEqual(img.shape, reference.shape)
            np.testing.assert_allclose(img.affine, reference.affine, atol=1e-4)
            self.assertEqual(img.get_data_dtype(), np.float32)
        np.testing.assert_allclose(t1.get_fdata(), reference.get_fdata(), rtol=1e-5, atol=1e-4)  # untouched
        # the moved T2 lands on the true T2 (2.5 x 2.5 x 4 mm and back: about 0.97; unregistered well below)
        self.assertGreater(_corr(t2.get_fdata(), nib.load(self.t2).get_fdata()), 0.93)
        # a co-registered case now: the strict one-grid check of the bundle's inputs passes
        files = {m: os.path.join(out, "subj01", f"subj01_{m}.nii.gz") for m in ("t1", "t2")}
        self.assertEqual(check_case_files(files, same_grid=True)["case"], "subj01")

        # again without --overwrite: a clear error, nothing replaced
        code, _, stderr = run_main("preprocess", "--t1", self.t1, "--output", out, "--case", "subj01")
        self.assertEqual(code, 2)
        self.assertIn("--overwrite", stderr)

    def test_failed_registration_writes_nothing(self):
        out = os.path.join(self._tmp.name, "out_noise")
        noise = os.path.join(self._tmp.name, "noise_t2.nii.gz")
        grid = nib.load(self.t1).affine.copy()
        grid[:3, 3] += 2.0
        rng = np.random.default_rng(0)
        nib.save(nib.Nifti1Image(rng.uniform(0, 1, nib.load(self.t1).shape).astype(np.float32), grid), noise)
        code, _, stderr = run_main("preprocess", "--t1", self.t1, "--t2", noise, "--output", out, "--case", "bad")
        self.assertEqual(code, 2)
        self.assertIn("could not register 't2'", stderr)
        self.assertFalse(os.path.exists(os.path.join(out, "bad")) and os.listdir(os.path.join(out, "bad")))

    def test_usage(self):
        code, _, stderr = run_main("preprocess", "--output", self._tmp.name, "--case", "x")
        self.assertEqual(code, 2)
        self.assertIn("no available modality", stderr)


if __name__ == "__main__":
    unittest.main()
