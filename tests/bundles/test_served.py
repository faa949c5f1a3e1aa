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
"""write_served_bundle: overrides baked into the served configs, atomic replacement, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from monai_msgldm.bundle import write_served_bundle

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"


class TestWriteServedBundle(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.model = os.path.join(self.tmp, "model.pt")
        torch.save({"w": torch.zeros(1)}, self.model)

    def test_overrides_baked_in_and_replaced(self):
        out = os.path.join(self.tmp, "served")
        os.makedirs(out)
        with open(os.path.join(out, "stale.txt"), "w") as f:
            f.write("old")
        overrides = {"unet_def#channels": [8, 8, 8], "spatial_size": 32, "not_an_id": 1}
        self.assertEqual(write_served_bundle(BUNDLE_DIR, out, self.model, overrides), out)
        self.assertFalse(os.path.exists(os.path.join(out, "stale.txt")))
        for name in ("inference.json", "evaluate.json"):
            parser = ConfigParser()
            parser.read_config(os.path.join(out, "configs", name))
            self.assertEqual(parser.get("unet_def#channels"), [8, 8, 8])
            self.assertEqual(parser.get("spatial_size"), 32)
            self.assertNotIn("not_an_id", parser)
        with open(os.path.join(out, "configs", "metadata.json")) as f:
            self.assertEqual(json.load(f)["version"], "0.2.0")
        self.assertTrue(torch.equal(torch.load(os.path.join(out, "models", "model.pt"))["w"], torch.zeros(1)))
        self.assertEqual(sorted(os.listdir(self.tmp)), ["model.pt", "served"])  # no temporary folder left

    def test_missing_model_or_config(self):
        out = os.path.join(self.tmp, "served")
        with self.assertRaisesRegex(FileNotFoundError, "model_path"):
            write_served_bundle(BUNDLE_DIR, out, os.path.join(self.tmp, "none.pt"))
        with self.assertRaisesRegex(FileNotFoundError, "config"):
            write_served_bundle(BUNDLE_DIR, out, self.model, configs=["nope.json"])
        self.assertEqual(sorted(os.listdir(self.tmp)), ["model.pt"])


if __name__ == "__main__":
    unittest.main()
