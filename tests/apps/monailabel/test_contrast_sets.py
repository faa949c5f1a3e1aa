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
"""The MONAI Label app follows the bundle's contrast set (``modalities`` of its ``inference.json``): reading and
validating it, study files and targets of a 2-contrast set, and ``info()`` of a served 2-contrast bundle."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from parameterized import parameterized

from monai_msgldm.apps.monailabel.lib.studies import (
    StudyError,
    bundle_modalities,
    check_modalities,
    parse_image_id,
    resolve_study,
    resolve_targets,
)
from monai_msgldm.constants import MODALITIES, WMH_MODALITIES

__all__: list[str] = []

REPO = Path(__file__).resolve().parents[3]
BUNDLE_DIR = REPO / "bundles" / "brats_mri_msgldm"
HAS_MONAILABEL = importlib.util.find_spec("monailabel") is not None and importlib.util.find_spec("fastapi") is not None

WMH = ("flair", "t1")
WMH_IMAGES = {
    "sub01_flair": "/s/sub01_flair.nii.gz",
    "sub01_t2": "/s/sub01_t2.nii.gz",  # a contrast the bundle does not know: ignored
    "sub01_seg": "/s/sub01_seg.nii.gz",
    "sub02_T1": "/s/sub02_T1.nii",
    "sub02_FLAIR": "/s/sub02_FLAIR.nii",
    "BraTS-GLI-00003-000-t1n": "/s/BraTS-GLI-00003-000-t1n.nii.gz",
    "BraTS-GLI-00003-000-t2f": "/s/BraTS-GLI-00003-000-t2f.nii.gz",
    "BraTS-GLI-00003-000-t2w": "/s/BraTS-GLI-00003-000-t2w.nii.gz",  # T2: ignored
}


class TestTwoContrastStudies(unittest.TestCase):
    @parameterized.expand(
        [
            ("sub01_flair", ("sub01", "flair")),
            ("sub02_T1", ("sub02", "t1")),  # suffixes match case-insensitively
            ("sub02_FLAIR", ("sub02", "flair")),
            ("BraTS-GLI-00003-000-t2f", ("BraTS-GLI-00003-000", "flair")),  # BraTS 2023 suffix of a BraTS name
            ("BraTS-GLI-00003-000-T1N", ("BraTS-GLI-00003-000", "t1")),
            ("sub01_t2", None),  # not in the bundle's set
            ("sub01_t1ce", None),
            ("BraTS-GLI-00003-000-t2w", None),
            ("sub01_seg", None),
            ("sub01", None),
        ]
    )
    def test_parse_image_id(self, image_id, expected):
        self.assertEqual(parse_image_id(image_id, WMH), expected)

    def test_brats_default_is_case_insensitive_too(self):
        self.assertEqual(parse_image_id("BraTS20_001_FLAIR"), ("BraTS20_001", "flair"))
        self.assertEqual(parse_image_id("BraTS20_001_T1CE", MODALITIES), ("BraTS20_001", "t1ce"))

    @parameterized.expand([("sub01",), ("sub01_flair",), ("sub01_seg",)])
    def test_resolve_study_ignores_unknown_contrasts(self, image):
        self.assertEqual(resolve_study(image, WMH_IMAGES, WMH), ("sub01", {"flair": "/s/sub01_flair.nii.gz"}))

    def test_resolve_study_in_bundle_order(self):
        study, files = resolve_study("sub02_T1", WMH_IMAGES, WMH)
        self.assertEqual((study, list(files.items())), ("sub02", [("flair", "/s/sub02_FLAIR.nii"), ("t1", "/s/sub02_T1.nii")]))  # fmt: skip
        study, files = resolve_study("BraTS-GLI-00003-000", WMH_IMAGES, WMH)
        self.assertEqual(files, {"flair": WMH_IMAGES["BraTS-GLI-00003-000-t2f"], "t1": WMH_IMAGES["BraTS-GLI-00003-000-t1n"]})  # fmt: skip

    @parameterized.expand(
        [
            (
                "nope",
                WMH,
                "no study 'nope' in the datastore: expected files named 'nope_<flair|t1>.nii.gz' (or BraTS 2023 '-t2f/-t1n').",
            ),  # fmt: skip
            ("sub01_t2", WMH, "no study 'sub01_t2'"),  # the file of an unknown contrast names no study
            ("nope", ("pd", "dwi"), "expected files named 'nope_<pd|dwi>.nii.gz'."),  # no BraTS name: no 2023 hint
            (
                "nope",
                MODALITIES,
                "expected files named 'nope_<t1|t1ce|t2|flair>.nii.gz' (or BraTS 2023 '-t1n/-t1c/-t2w/-t2f').",
            ),  # fmt: skip
        ]
    )
    def test_unknown_study_names_the_bundle_contrasts(self, image, modalities, message):
        with self.assertRaisesRegex(StudyError, re.escape(message)) as ctx:
            resolve_study(image, WMH_IMAGES, modalities)
        self.assertEqual(ctx.exception.status, 404)

    @parameterized.expand(
        [
            (None, ["flair"], ["t1"]),
            ("", ["t1"], ["flair"]),
            ("flair", ["flair", "t1"], ["flair"]),  # present: synthesized from the other
            (" t1 ", ["flair"], ["t1"]),
            (["t1"], ["flair", "t1"], ["t1"]),
        ]
    )
    def test_targets(self, target, present, expected):
        self.assertEqual(resolve_targets(target, present, WMH), expected)

    @parameterized.expand(
        [
            ("t2", ["flair"], "unknown target modality ['t2']: expected names from ['flair', 't1']."),
            ("t1ce,t1", ["flair"], "unknown target modality ['t1ce']: expected names from ['flair', 't1']."),
            (None, ["flair", "t1"], "the study has all of ['flair', 't1']: name the modality to synthesize"),
            ("t1,flair", ["flair", "t1"], "no input contrast left"),
        ]
    )
    def test_target_errors(self, target, present, message):
        with self.assertRaisesRegex(StudyError, re.escape(message)) as ctx:
            resolve_targets(target, present, WMH)
        self.assertEqual(ctx.exception.status, 400)


def _write_config(root: str, config) -> str:
    os.makedirs(os.path.join(root, "configs"), exist_ok=True)
    with open(os.path.join(root, "configs", "inference.json"), "w") as f:
        f.write(config if isinstance(config, str) else json.dumps(config))
    return os.path.join(root, "configs", "inference.json")


class TestBundleModalities(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    @parameterized.expand(
        [
            ({"align": True}, MODALITIES),  # no key: the BraTS default
            ({"modalities": ["flair", "t1"]}, WMH_MODALITIES),
            ({"modalities": ["t1", "t1ce", "t2", "flair"]}, MODALITIES),
            ({"modalities": ["pd"]}, ("pd",)),
            ({"modalities": ["t2star", "dwi1000"]}, ("t2star", "dwi1000")),
        ]
    )
    def test_reads_the_key(self, config, expected):
        _write_config(self.tmp.name, config)
        self.assertEqual(bundle_modalities(self.tmp.name), expected)
        self.assertEqual(bundle_modalities(Path(self.tmp.name)), expected)

    def test_the_bundle_reads_as_brats(self):
        self.assertEqual(bundle_modalities(BUNDLE_DIR), MODALITIES)

    @parameterized.expand(
        [
            ("empty", {"modalities": []}, "must be a non-empty list"),
            ("string", {"modalities": "flair"}, "got 'flair'"),
            ("reference", {"modalities": "@names"}, "got '@names'"),
            ("mapping", {"modalities": {"flair": 0}}, "must be a non-empty list"),
            ("upper case", {"modalities": ["FLAIR", "t1"]}, "invalid name(s) ['FLAIR']"),
            ("punctuation", {"modalities": ["t1", "t1-ce"]}, "invalid name(s) ['t1-ce']"),
            ("empty name", {"modalities": ["t1", ""]}, "invalid name(s) ['']"),
            ("not a string", {"modalities": ["t1", 2]}, "invalid name(s) [2]"),
            ("repeated", {"modalities": ["t1", "flair", "t1"]}, "repeated name(s) ['t1']"),
            ("null", {"modalities": None}, "got None"),
            ("top-level list", ["t1"], "expected a JSON object"),
            ("not JSON", "{modalities: [t1]", "not valid JSON"),
        ]
    )
    def test_invalid_configs_name_the_file(self, _, config, message):
        path = _write_config(self.tmp.name, config)
        with self.assertRaisesRegex(ValueError, re.escape(message)) as ctx:
            bundle_modalities(self.tmp.name)
        self.assertIn(path, str(ctx.exception))

    def test_no_config(self):
        with self.assertRaisesRegex(FileNotFoundError, "inference.json"):
            bundle_modalities(self.tmp.name)

    def test_check_modalities(self):
        self.assertEqual(check_modalities(["flair", "t1"]), ("flair", "t1"))
        with self.assertRaisesRegex(ValueError, r"^task: 'modalities' must be"):
            check_modalities(["Flair"], source="task")


@unittest.skipUnless(HAS_MONAILABEL, "needs the 'label' extra (monailabel); scripts/test.sh installs it")
class TestServedTwoContrastBundle(unittest.TestCase):
    """A 2-contrast bundle written by ``write_served_bundle`` (tiny network sizes, an untrained placeholder
    ``models/model.pt``: nothing here runs the network): the task and the app describe its contrasts, and the app's
    request checks use them."""

    @classmethod
    def setUpClass(cls):
        from monai_msgldm.bundle import write_served_bundle
        from tests.bundles.test_demo import TINY

        cls.tmp = tempfile.TemporaryDirectory()
        model = os.path.join(cls.tmp.name, "placeholder.pt")
        Path(model).touch()
        overrides = {"modalities": list(WMH), "spatial_size": 32}
        overrides.update({f"{part}_def#{k}": v for part, args in TINY.items() for k, v in args.items()})
        cls.bundle = write_served_bundle(
            BUNDLE_DIR, os.path.join(cls.tmp.name, "wmh_bundle"), model, overrides=overrides
        )
        cls.studies = os.path.join(cls.tmp.name, "studies")
        os.makedirs(cls.studies)
        for name in ("sub01_flair.nii.gz", "sub01_t2.nii.gz", "sub02_FLAIR.nii.gz", "sub02_T1.nii.gz"):
            Path(cls.studies, name).touch()  # never read: the requests below fail before the input checks

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_served_config_holds_the_set(self):
        self.assertEqual(bundle_modalities(self.bundle), WMH)

    def test_task_info_names_the_contrasts(self):
        from monai_msgldm.apps.monailabel.lib.infers import MSGLDMSynthesisTask

        for task in (MSGLDMSynthesisTask(self.bundle, {}), MSGLDMSynthesisTask(self.bundle, {}, modalities=WMH)):
            self.assertTrue(task.is_valid())
            self.assertEqual(task.modalities, WMH)
            info = task.info()
            self.assertEqual(info["modalities"], ["flair", "t1"])
            self.assertIn("FLAIR / T1 contrasts", info["description"])
            self.assertNotIn("T1CE", info["description"])

    def test_app(self):
        from fastapi import HTTPException
        from monailabel.config import settings

        from monai_msgldm.apps.monailabel.main import MODEL_NAME, MSGLDMApp

        quiet = {"MONAI_LABEL_DATASTORE_AUTO_RELOAD": False, "MONAI_LABEL_SESSIONS": False}
        with mock.patch.multiple(settings, **quiet):
            app = MSGLDMApp(str(REPO / "monai_msgldm" / "apps" / "monailabel"), self.studies, {"bundle": self.bundle})
        self.addCleanup(lambda: app._infers_threadpool and app._infers_threadpool.shutdown())
        self.assertEqual(app.modalities, WMH)
        info = app.info()
        self.assertIn("FLAIR / T1 contrasts", info["description"])
        self.assertEqual(info["models"][MODEL_NAME]["modalities"], ["flair", "t1"])
        for request, status, message in [
            ({"image": "sub09"}, 404, "expected files named 'sub09_<flair|t1>.nii.gz' (or BraTS 2023 '-t2f/-t1n')"),
            (
                {"image": "sub02", "target": "t2"},
                400,
                "unknown target modality ['t2']: expected names from ['flair', 't1']",
            ),  # fmt: skip
            ({"image": "sub02_T1"}, 400, "the study has all of ['flair', 't1']"),
            ({"image": "sub01", "target": "flair"}, 400, "no input contrast left: the study has ['flair']"),
        ]:
            with self.assertRaises(HTTPException) as ctx:
                app.infer({"model": MODEL_NAME, **request})
            self.assertEqual(ctx.exception.status_code, status, ctx.exception.detail)
            self.assertIn(message, ctx.exception.detail)

    def test_app_rejects_an_invalid_set_at_start(self):
        from monai_msgldm.apps.monailabel.main import MSGLDMApp

        config = os.path.join(self.bundle, "configs", "inference.json")
        with open(config) as f:
            original = f.read()
        self.addCleanup(Path(config).write_text, original)
        Path(config).write_text(json.dumps({**json.loads(original), "modalities": ["flair", "FLAIR"]}))
        with self.assertRaisesRegex(ValueError, re.escape(f"{config}: 'modalities' must be")):
            MSGLDMApp(str(REPO / "monai_msgldm" / "apps" / "monailabel"), self.studies, {"bundle": self.bundle})


if __name__ == "__main__":
    unittest.main()
