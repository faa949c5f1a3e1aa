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

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from monai.bundle import verify_metadata
from parameterized import parameterized

import monai_msgldm
from monai_msgldm.constants import MODALITIES

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
META_FILE = BUNDLE_DIR / "configs" / "metadata.json"
SCHEMA_FILE = BUNDLE_DIR / "schema" / "meta_schema.json"

REQUIRED_FIELDS = [
    "schema",
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
]


def load_metadata() -> dict:
    with open(META_FILE) as f:
        return json.load(f)


def run_verify_cli(meta_file: str | os.PathLike, schema_file: str | os.PathLike) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta_file)]
    cmd += ["--filepath", str(schema_file)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


class TestMetadataContent(unittest.TestCase):
    def test_versions_and_fields(self):
        meta = load_metadata()
        self.assertEqual(meta["version"], "0.17.0")
        self.assertEqual(next(iter(meta["changelog"])), meta["version"])  # the newest entry first
        self.assertIn(meta["version"], meta["changelog"])
        self.assertEqual(meta["monai_version"], "1.6.1")
        self.assertEqual(meta["pytorch_version"], "2.13.0")
        self.assertRegex(meta["numpy_version"], r"^\d+\.\d+\.\d+$")
        packages = meta["required_packages_version"]
        self.assertEqual(packages["monai_msgldm"], monai_msgldm.__version__)
        for name in ("nibabel", "pytorch-ignite"):
            self.assertIn(name, packages)
        # MONAI renames this deprecated field to required_packages_version when parsing, overwriting it
        self.assertNotIn("optional_packages_version", meta)
        self.assertTrue(any("2603.12581" in ref for ref in meta["references"]))
        for field in ("task", "description", "authors", "copyright", "intended_use", "data_source", "data_type"):
            self.assertTrue(meta[field].strip(), field)

    def test_network_data_format(self):
        meta = load_metadata()
        inputs, outputs = meta["network_data_format"]["inputs"], meta["network_data_format"]["outputs"]
        image, pred = inputs["image"], outputs["pred"]
        for spec in (image, pred):
            self.assertEqual(spec["num_channels"], len(MODALITIES))
            self.assertEqual(spec["spatial_shape"], [192, 192])
            self.assertEqual(spec["dtype"], "float32")
            self.assertEqual(spec["value_range"], [-1, 1])
            # channel order = the package's modality order
            self.assertEqual([spec["channel_def"][str(i)].lower() for i in range(len(MODALITIES))], list(MODALITIES))
        self.assertEqual(inputs["available"]["num_channels"], len(MODALITIES))
        self.assertEqual(inputs["available"]["dtype"], "bool")
        ae = meta["autoencoder_data_format"]
        self.assertEqual(ae["inputs"]["image"]["num_channels"], 1)
        self.assertEqual(ae["outputs"]["pred"]["num_channels"], 1)
        # downsampling factor 8, 4 latent channels
        self.assertEqual(ae["outputs"]["latent"]["num_channels"], 4)
        self.assertEqual(ae["outputs"]["latent"]["spatial_shape"], [192 // 8, 192 // 8])


class TestVerifyMetadata(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _write(self, meta: dict) -> str:
        path = os.path.join(self.tmp, "metadata.json")
        with open(path, "w") as f:
            json.dump(meta, f)
        return path

    def test_cli_passes_and_fails(self):
        ok = run_verify_cli(META_FILE, SCHEMA_FILE)
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        self.assertIn("metadata is verified with no error", ok.stdout + ok.stderr)
        broken = load_metadata()
        del broken["network_data_format"]
        bad = run_verify_cli(self._write(broken), SCHEMA_FILE)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("network_data_format", bad.stdout + bad.stderr)

    @parameterized.expand([(field,) for field in REQUIRED_FIELDS])
    def test_missing_required_field(self, field):
        meta = load_metadata()
        verify_metadata(meta_file=str(META_FILE), filepath=str(SCHEMA_FILE))
        del meta[field]
        with self.assertRaisesRegex(ValueError, field):
            verify_metadata(meta_file=self._write(meta), filepath=str(SCHEMA_FILE))

    @parameterized.expand(
        [
            ("bad_version", lambda m: m.update(version="v1")),
            ("channels_not_int", lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels="4")),
            ("no_outputs", lambda m: m["network_data_format"].pop("outputs")),
            ("tensor_without_dtype", lambda m: m["network_data_format"]["outputs"]["pred"].pop("dtype")),
            ("bad_channel_index", lambda m: m["network_data_format"]["inputs"]["image"]["channel_def"].update(a="x")),
            ("secondary_format_broken", lambda m: m["autoencoder_data_format"].pop("inputs")),
            ("deprecated_optional_packages", lambda m: m.update(optional_packages_version={"x": "1.0"})),
        ]
    )
    def test_invalid_content(self, _, edit):
        meta = copy.deepcopy(load_metadata())
        edit(meta)
        with self.assertRaises(ValueError):
            verify_metadata(meta_file=self._write(meta), filepath=str(SCHEMA_FILE))


if __name__ == "__main__":
    unittest.main()
