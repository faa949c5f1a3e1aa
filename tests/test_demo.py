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
"""The README's main command (`python -m monai_msgldm.demo`) runs end to end on a tiny phantom."""

from __future__ import annotations

import json
import os
import tempfile
import unittest

import nibabel as nib
import numpy as np

from monai_msgldm.data.phantom import generate_phantom_dataset
from monai_msgldm.demo import main


class TestDemo(unittest.TestCase):
    def test_end_to_end(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "data")
            generate_phantom_dataset(data, num_subjects=2, resolution=4.0, seed=3, progress=False)
            out = os.path.join(tmp, "out")
            code = main(
                [
                    "--output",
                    out,
                    "--data-dir",
                    data,
                    "--num-subjects",
                    "2",
                    "--steps",
                    "2",
                    "2",
                    "2",
                    "--ddim-steps",
                    "2",
                ]
            )
            self.assertEqual(code, 0)
            for name in ("synthesis_grid.png", "loss_curves.png", "metrics.json", "datalist.json"):
                self.assertTrue(os.path.getsize(os.path.join(out, name)) > 0, name)
            with open(os.path.join(out, "metrics.json")) as f:
                metrics = json.load(f)
            self.assertTrue(np.isfinite(metrics["psnr_db_volume_brain"]))
            # the synthesized FLAIR is back on the subject's original grid
            subject = metrics["subject"]
            original = nib.load(os.path.join(data, subject, f"{subject}_flair.nii.gz"))
            synth = nib.load(metrics["synthesized_nifti"])
            self.assertEqual(synth.shape, original.shape)
            np.testing.assert_allclose(synth.affine, original.affine, atol=1e-4)
            self.assertFalse([n for n in os.listdir(out) if "tmp" in n])


if __name__ == "__main__":
    unittest.main()
