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
"""Training the bundle on a data set where one study lacks a contrast: refused by default with a message naming the
case, the file and the option; with ``allow_incomplete`` every stage trains and the datalist reports the case."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

from monai.bundle import ConfigWorkflow

from monai_msgldm.bundle import stage_is_finished
from monai_msgldm.data.phantom import ensure_phantom_dataset
from tests.bundles.test_demo import OVERRIDES

__all__: list[str] = []

CONFIG_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm" / "configs"
CONFIGS = [str(CONFIG_DIR / "train.json"), str(CONFIG_DIR / "demo.json")]
# the stages only (no demo inference / evaluation), on a copy of the tiny phantom given as --dataset_dir
RUN = {**OVERRIDES, "pixdim": [4.0, 4.0, 4.0], "test_ratio": 0.0, "training": ["@run_stages"]}


class TestIncompleteTraining(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        phantom = ensure_phantom_dataset(cache_dir=self.tmp, num_subjects=3, resolution=4.0, seed=0)
        self.data = os.path.join(self.tmp, "data")
        shutil.copytree(phantom, self.data)
        cases = sorted(c for c in os.listdir(self.data) if os.path.isdir(os.path.join(self.data, c)))
        self.case = cases[0]
        self.missing = os.path.join(self.data, self.case, f"{self.case}_t1ce.nii.gz")
        os.remove(self.missing)

    def _run(self, **overrides) -> str:
        root = os.path.join(self.tmp, "run")
        wf = ConfigWorkflow(
            config_file=CONFIGS,
            meta_file=str(CONFIG_DIR / "metadata.json"),
            workflow_type="train",
            run_id="training",
            bundle_root=root,
            config_dir=str(CONFIG_DIR),
            dataset_dir=self.data,
            demo_dir=os.path.join(root, "demo"),
            **RUN,
            **overrides,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        return os.path.join(root, "demo")

    def test_refused_by_default(self):
        with self.assertRaises(Exception) as raised:
            self._run()
        chain, error = [], raised.exception
        while error is not None:
            chain.append(str(error))
            error = error.__cause__ or error.__context__
        message = "\n".join(chain)
        for needle in (f"case '{self.case}'", self.missing, "allow_incomplete=True"):
            self.assertIn(needle, message)

    def test_trains_with_allow_incomplete(self):
        demo = self._run(allow_incomplete=True)
        for name in ("autoencoder.pt", "structure.pt", "model.pt"):
            self.assertTrue(stage_is_finished(os.path.join(demo, "models", name)), name)
        for stage in ("autoencoder", "structure", "diffusion"):
            with open(os.path.join(demo, "eval", stage, "datalist.json")) as f:
                datalist = json.load(f)
            self.assertEqual(datalist["incomplete"], [{"subject": self.case, "missing": ["t1ce"]}], stage)
            items = {i["subject"]: i for i in datalist["training"]}  # the incomplete case is a training case
            self.assertNotIn("t1ce", items[self.case])


if __name__ == "__main__":
    unittest.main()
