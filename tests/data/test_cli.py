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

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from parameterized import parameterized

from monai_msgldm.data.cli import main
from tests.data.test_datalist import make_brats_case, make_wmh_subject
from tests.data.test_validation import write_nifti

__all__: list[str] = []


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai_msgldm.data", *args], capture_output=True, text=True, timeout=120, check=False
    )


def run_main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


class TestCliSubprocess(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = os.path.join(self._tmp.name, "data")
        self.out = os.path.join(self._tmp.name, "out", "datalist.json")

    def tearDown(self):
        self._tmp.cleanup()

    def test_help(self):
        proc = run_cli("--help")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("usage: monai-msgldm-data", proc.stdout)
        self.assertIn("datalist", proc.stdout)
        self.assertIn("phantom", proc.stdout)

    def test_datalist_success_and_bad_input(self):
        for case in ("A", "B", "C", "D", "E"):
            make_brats_case(self.root, case)
        proc = run_cli("datalist", "--data-root", self.root, "--output", self.out, "--val-ratio", "0.2", "--seed", "2")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("format brats2020, 5 subjects (training 3, validation 1, test 1), 0 skipped", proc.stdout)
        with open(self.out) as f:
            dl = json.load(f)
        self.assertEqual(dl["split"], {"val_ratio": 0.2, "test_ratio": 0.1, "seed": 2})
        self.assertEqual(len(dl["training"]), 3)
        # a corrupt file: exit code 2, one line naming the case and the file, no traceback
        bad = os.path.join(self.root, "C", "C_t2.nii.gz")
        with open(bad, "wb") as f:
            f.write(b"garbage")
        proc = run_cli("datalist", "--data-root", self.root, "--output", self.out)
        self.assertEqual(proc.returncode, 2)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertIn("case 'C'", proc.stderr)
        self.assertIn(bad, proc.stderr)

    def test_phantom_then_datalist(self):
        out_dir = os.path.join(self._tmp.name, "phantom")
        proc = run_cli("phantom", "--output", out_dir, "--num-subjects", "1", "--resolution", "4", "--seed", "1")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(f"phantom dataset '{out_dir}': 1 subject(s) Phantom_000", proc.stdout)
        code, out, err = run_main(
            "datalist", "--data-root", out_dir, "--output", self.out, "--val-ratio", "0", "--test-ratio", "0"
        )
        self.assertEqual(code, 0, err)
        self.assertIn("format brats2020, 1 subjects (training 1, validation 0, test 0), 0 skipped", out)
        with open(self.out) as f:
            item = json.load(f)["training"][0]
        self.assertEqual(item["subject"], "Phantom_000")
        self.assertEqual(item["t1ce"], "Phantom_000/Phantom_000_t1ce.nii.gz")
        # bad phantom arguments are one-line errors too
        code, out, err = run_main("phantom", "--output", out_dir, "--resolution", "0.5")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("monai-msgldm-data phantom: error: ", err)
        self.assertIn("resolution", err)

    def test_wmh_phantom_then_datalist(self):
        out_dir = os.path.join(self._tmp.name, "wmh")
        code, out, err = run_main(
            "phantom", "--output", out_dir, "--num-subjects", "1", "--resolution", "4", "--layout", "wmh"
        )
        self.assertEqual(code, 0, err)
        self.assertIn("1 subject(s) Phantom_000", out)
        code, out, err = run_main(
            "datalist", "--data-root", out_dir, "--output", self.out, "--val-ratio", "0", "--test-ratio", "0"
        )
        self.assertEqual(code, 0, err)
        self.assertIn("format wmh, 1 subjects", out)
        with open(self.out) as f:
            item = json.load(f)["training"][0]
        self.assertEqual(item, {"subject": "Phantom_000", "flair": "Phantom_000/pre/FLAIR.nii.gz",
                                "t1": "Phantom_000/pre/T1.nii.gz", "seg": "Phantom_000/wmh.nii.gz"})  # fmt: skip


class TestCliMain(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = os.path.join(self._tmp.name, "data")
        self.out = os.path.join(self._tmp.name, "datalist.json")

    def tearDown(self):
        self._tmp.cleanup()

    def test_skip_invalid_no_seg_wmh(self):
        for subject in ("Utrecht/0", "Utrecht/1", "Singapore/50"):
            make_wmh_subject(self.root, subject, keys=("flair", "t1"))
        write_nifti(os.path.join(self.root, "Utrecht", "1", "pre", "T1.nii.gz"), np.zeros((8, 8, 8), np.float32))
        code, out, err = run_main(
            "datalist",
            "--data-root",
            self.root,
            "--output",
            self.out,
            "--no-seg",
            "--skip-invalid",
            "--test-ratio",
            "0",
        )
        self.assertEqual(code, 0, err)
        self.assertIn("format wmh, 2 subjects (training 2, validation 0, test 0), 1 skipped", out)
        self.assertIn("skipped 'Utrecht/1': t1 file", out)
        with open(self.out) as f:
            dl = json.load(f)
        self.assertEqual([i["subject"] for i in dl["training"]], ["Singapore/50", "Utrecht/0"])
        self.assertNotIn("seg", dl["training"][0])
        self.assertEqual(dl["skipped"][0]["subject"], "Utrecht/1")
        # header-only checks accept the empty T1
        code, out, _ = run_main(
            "datalist", "--data-root", self.root, "--output", self.out, "--no-seg", "--no-content-check"
        )
        self.assertEqual(code, 0)
        self.assertIn("3 subjects", out)

    def test_allow_incomplete(self):
        for case in ("A", "C"):
            make_brats_case(self.root, case)
        make_brats_case(self.root, "B", keys=("t1", "t2", "flair", "seg"))  # no t1ce
        code, out, err = run_main("datalist", "--data-root", self.root, "--output", self.out)
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("case 'B': t1ce file not found", err)
        self.assertIn(os.path.join(self.root, "B", "B_t1ce.nii.gz"), err)
        self.assertIn("--allow-incomplete", err)
        self.assertFalse(os.path.exists(self.out))
        code, out, err = run_main(
            "datalist", "--data-root", self.root, "--output", self.out, "--allow-incomplete", "--val-ratio", "0"
        )
        self.assertEqual(code, 0, err)
        self.assertIn("format brats2020, 3 subjects (training 3, validation 0, test 0), 0 skipped, 1 incomplete", out)
        self.assertIn("incomplete 'B': lacks t1ce", out)
        with open(self.out) as f:
            dl = json.load(f)
        self.assertEqual(dl["incomplete"], [{"subject": "B", "missing": ["t1ce"]}])
        item = next(i for i in dl["training"] if i["subject"] == "B")
        self.assertEqual(set(item), {"subject", "t1", "t2", "flair", "seg"})
        # a case without any contrast is still an error
        make_brats_case(self.root, "D", keys=("seg",))
        code, _, err = run_main("datalist", "--data-root", self.root, "--output", self.out, "--allow-incomplete")
        self.assertEqual(code, 2)
        self.assertIn("case 'D': no contrast file found", err)

    @parameterized.expand(
        [
            [["datalist", "--output", "x.json"], "--data-root"],
            [["datalist", "--data-root", ".", "--output", "x.json", "--val-ratio", "1.5"], "--val-ratio"],
            [["datalist", "--data-root", ".", "--output", "x.json", "--format", "dicom"], "--format"],
            [["datalist", "--data-root", ".", "--output", "x.json", "--seed", "-3"], "--seed"],
            [["phantom", "--output", "x", "--num-subjects", "0"], "--num-subjects"],
            [["unknown"], "invalid choice"],
        ]
    )
    def test_usage_errors(self, argv, fragment):
        code, out, err = run_main(*argv)
        self.assertEqual(code, 2)
        self.assertEqual(out, "")
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(fragment, err)

    def test_data_errors(self):
        code, _, err = run_main("datalist", "--data-root", self.root, "--output", self.out)
        self.assertEqual(
            (code, err.strip()), (2, f"monai-msgldm-data datalist: error: data_root '{self.root}' does not exist.")
        )
        os.makedirs(self.root)
        code, _, err = run_main("datalist", "--data-root", self.root, "--output", self.out)
        self.assertEqual(code, 2)
        self.assertIn(f"no dataset found in data_root '{self.root}'", err)
        make_brats_case(self.root, "A", keys=("t1", "t1ce", "t2", "flair"))
        code, _, err = run_main(
            "datalist", "--data-root", self.root, "--output", self.out, "--val-ratio", "0.6", "--test-ratio", "0.6"
        )
        self.assertEqual(code, 2)
        self.assertIn("val_ratio + test_ratio <= 1", err)
        code, _, err = run_main("datalist", "--data-root", self.root, "--output", self.out)
        self.assertEqual(code, 2)
        self.assertIn(f"case 'A': seg file not found: expected '{os.path.join(self.root, 'A', 'A_seg.nii.gz')}'", err)
        self.assertFalse(os.path.exists(self.out))


if __name__ == "__main__":
    unittest.main()
