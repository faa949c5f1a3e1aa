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

import json
import os
import random
import re
import tempfile
import unittest
import warnings

import numpy as np
from monai.data import load_decathlon_datalist
from parameterized import parameterized

from monai_msgldm.constants import BRATS2020_SUFFIXES, BRATS2023_SUFFIXES, MODALITIES
from monai_msgldm.data.datalist import (
    build_brats_datalist,
    build_datalist,
    build_wmh_datalist,
    detect_datalist_format,
    find_wmh_subjects,
    split_subjects,
    write_datalist,
)
from monai_msgldm.data.validation import InvalidCaseError, MissingCaseFileError
from tests.data.test_validation import write_nifti

__all__ = ["make_brats_case", "make_wmh_subject"]

_NAMINGS = {"brats2020": ("_", BRATS2020_SUFFIXES), "brats2023": ("-", BRATS2023_SUFFIXES)}


def make_brats_case(root: str, case: str, naming: str = "brats2020", keys=(*MODALITIES, "seg"), ext=".nii.gz"):
    """Write one tiny BraTS case folder; returns key -> absolute path."""
    sep, suffixes = _NAMINGS[naming]
    os.makedirs(os.path.join(root, case), exist_ok=True)
    paths = {}
    for i, key in enumerate(keys):
        path = os.path.join(root, case, f"{case}{sep}{suffixes[key]}{ext}")
        if key == "seg":
            data = np.zeros((8, 8, 8), np.uint8)
            data[3:5, 3:5, 3:5] = 2
            write_nifti(path, data)
        else:
            write_nifti(path, seed=i)
        paths[key] = path
    return paths


def make_wmh_subject(root: str, subject: str, flat: bool = False, keys=("flair", "t1", "seg")):
    """Write one tiny WMH subject (challenge layout with ``pre/`` or flat); returns key -> absolute path."""
    folder = os.path.join(root, *subject.split("/"))
    pre = folder if flat else os.path.join(folder, "pre")
    os.makedirs(pre, exist_ok=True)
    paths = {}
    if "flair" in keys:
        paths["flair"] = write_nifti(os.path.join(pre, "FLAIR.nii.gz"), seed=1)
    if "t1" in keys:
        paths["t1"] = write_nifti(os.path.join(pre, "T1.nii.gz"), seed=2)
    if "seg" in keys:
        data = np.zeros((8, 8, 8), np.uint8)
        data[1:3, 1:3, 1:3] = 1
        paths["seg"] = write_nifti(os.path.join(folder, "wmh.nii.gz"), data)
    return paths


class TestSplitSubjects(unittest.TestCase):
    def test_known_split(self):
        # numpy.random.RandomState(0).permutation(10) == [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
        ids = [f"case{i:02d}" for i in range(10)]
        train, val, test = split_subjects(ids, val_ratio=0.2, test_ratio=0.1, seed=0)
        self.assertEqual(val, ["case02", "case08"])
        self.assertEqual(test, ["case04"])
        self.assertEqual(train, ["case00", "case01", "case03", "case05", "case06", "case07", "case09"])

    def test_order_independent_and_disjoint(self):
        ids = [f"s{i}" for i in range(37)]
        ref = split_subjects(ids, 0.15, 0.25, seed=3)
        shuffled = list(ids)
        random.Random(5).shuffle(shuffled)
        self.assertEqual(split_subjects(shuffled, 0.15, 0.25, seed=3), ref)
        train, val, test = ref
        self.assertEqual(sorted(train + val + test), sorted(ids))
        self.assertEqual(len(set(train) | set(val) | set(test)), 37)
        self.assertEqual((len(train), len(val), len(test)), (22, 6, 9))  # round(5.55)=6, round(9.25)=9
        self.assertNotEqual(split_subjects(ids, 0.15, 0.25, seed=4), ref)

    @parameterized.expand(
        [[5, 0.1, 0.1, (3, 1, 1)], [4, 0.0, 0.0, (4, 0, 0)], [3, 0.5, 0.5, (0, 2, 1)], [0, 0.1, 0.1, (0, 0, 0)]]
    )
    def test_sizes(self, n, val_ratio, test_ratio, sizes):
        out = split_subjects([str(i) for i in range(n)], val_ratio, test_ratio, seed=0)
        self.assertEqual(tuple(len(x) for x in out), sizes)

    @parameterized.expand(
        [
            [{"val_ratio": -0.1}, "val_ratio"],
            [{"test_ratio": 1.5}, "test_ratio"],
            [{"val_ratio": 0.6, "test_ratio": 0.6}, "val_ratio \\+ test_ratio"],
            [{"seed": -1}, "seed"],
            [{"seed": 1.5}, "seed"],
        ]
    )
    def test_bad_options(self, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            split_subjects(["a", "b"], **kwargs)

    def test_duplicates(self):
        with self.assertRaisesRegex(ValueError, r"duplicates \['a'\]"):
            split_subjects(["a", "b", "a"])


class TestBuildBrats(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    @parameterized.expand(
        [["brats2020", "auto"], ["brats2023", "auto"], ["brats2020", "brats2020"], ["brats2023", "brats2023"]]
    )
    def test_build(self, naming, requested):
        sep, suffixes = _NAMINGS[naming]
        cases = [f"BraTS-{i:03d}" for i in range(6)]
        for case in cases:
            make_brats_case(self.root, case, naming, ext=".nii" if case.endswith("1") else ".nii.gz")
        # unknown extra files and folders are ignored
        open(os.path.join(self.root, "name_mapping.csv"), "w").close()
        write_nifti(os.path.join(self.root, cases[0], f"{cases[0]}{sep}t1_backup.nii.gz"))
        os.makedirs(os.path.join(self.root, "notes"))
        dl = build_brats_datalist(self.root, naming=requested, val_ratio=0.2, test_ratio=0.2, seed=0)
        self.assertEqual(dl["format"], naming)
        self.assertEqual(dl["modalities"], ["t1", "t1ce", "t2", "flair"])
        self.assertEqual(dl["data_root"], os.path.abspath(self.root))
        self.assertEqual(dl["skipped"], [])
        self.assertEqual([len(dl[k]) for k in ("training", "validation", "test")], [4, 1, 1])
        items = dl["training"] + dl["validation"] + dl["test"]
        self.assertEqual(sorted(i["subject"] for i in items), cases)
        for item in items:
            case = item["subject"]
            self.assertEqual(set(item), {"subject", "t1", "t1ce", "t2", "flair", "seg"})
            ext = ".nii" if case.endswith("1") else ".nii.gz"
            for key in (*MODALITIES, "seg"):
                self.assertEqual(item[key], f"{case}/{case}{sep}{suffixes[key]}{ext}")
        # the split is the one of split_subjects on the case ids
        _, val, test = split_subjects(cases, 0.2, 0.2, seed=0)
        self.assertEqual([i["subject"] for i in dl["validation"]], val)
        self.assertEqual([i["subject"] for i in dl["test"]], test)

    def test_same_split_whatever_creation_order(self):
        other = tempfile.TemporaryDirectory()
        self.addCleanup(other.cleanup)
        cases = [f"c{i}" for i in range(8)]
        for case in cases:
            make_brats_case(self.root, case, keys=MODALITIES)
        for case in reversed(cases):
            make_brats_case(other.name, case, keys=MODALITIES)
        a = build_brats_datalist(self.root, seed=7, require_seg=False, check_content=False)
        b = build_brats_datalist(other.name, seed=7, require_seg=False, check_content=False)
        for key in ("training", "validation", "test"):
            self.assertEqual(a[key], b[key])

    def test_missing_modality_names_expected_file(self):
        make_brats_case(self.root, "A")
        make_brats_case(self.root, "B", keys=("t1", "t1ce", "flair", "seg"))
        expected = os.path.join(self.root, "B", "B_t2.nii.gz")
        with self.assertRaises(InvalidCaseError) as ctx:
            build_brats_datalist(self.root)
        self.assertIn("case 'B'", str(ctx.exception))
        self.assertIn(expected, str(ctx.exception))

    def test_duplicate_match_names_both(self):
        make_brats_case(self.root, "A")
        make_brats_case(self.root, "A", keys=("t1",), ext=".nii")
        with self.assertRaises(InvalidCaseError) as ctx:
            build_brats_datalist(self.root, naming="brats2020")
        msg = str(ctx.exception)
        self.assertIn("several files match t1", msg)
        self.assertIn(os.path.join(self.root, "A", "A_t1.nii"), msg)
        self.assertIn(os.path.join(self.root, "A", "A_t1.nii.gz"), msg)

    def test_require_seg_false(self):
        for case in ("A", "B", "C"):
            make_brats_case(self.root, case, keys=MODALITIES if case != "B" else (*MODALITIES, "seg"))
        with self.assertRaisesRegex(InvalidCaseError, "case 'A': seg file not found"):
            build_brats_datalist(self.root)
        dl = build_brats_datalist(self.root, require_seg=False, val_ratio=0, test_ratio=0)
        self.assertEqual(dl["labels"], [])
        self.assertEqual([i["subject"] for i in dl["training"]], ["A", "B", "C"])
        for item in dl["training"]:
            self.assertEqual(set(item), {"subject", *MODALITIES})

    def test_skip_invalid(self):
        for case in ("A", "B", "C", "D"):
            make_brats_case(self.root, case)
        write_nifti(os.path.join(self.root, "B", "B_t1ce.nii.gz"), np.full((8, 8, 8), np.nan, np.float32))
        write_nifti(os.path.join(self.root, "D", "D_flair.nii.gz"), np.ones((8, 8, 7), np.float32))
        with self.assertRaisesRegex(InvalidCaseError, "case 'B'.*B_t1ce.nii.gz.*non-finite"):
            build_brats_datalist(self.root, check_content=True)
        with (
            warnings.catch_warnings(record=True) as warned,
            self.assertLogs("monai_msgldm.data.datalist", "WARNING") as logs,
        ):
            warnings.simplefilter("always")
            dl = build_brats_datalist(self.root, skip_invalid=True, check_content=True, val_ratio=0, test_ratio=0)
        messages = [str(w.message) for w in warned if issubclass(w.category, UserWarning)]
        self.assertEqual(len(messages), 2)
        self.assertIn("skipping case 'B'", messages[0])
        self.assertIn("skipping case 'D'", messages[1])
        self.assertIn(os.path.join(self.root, "D", "D_flair.nii.gz"), messages[1])
        self.assertEqual([s["subject"] for s in dl["skipped"]], ["B", "D"])
        self.assertIn("non-finite", dl["skipped"][0]["reason"])
        self.assertIn("shapes differ", dl["skipped"][1]["reason"])
        self.assertIn("2 of 4 brats2020 cases", logs.output[0])
        self.assertEqual([i["subject"] for i in dl["training"]], ["A", "C"])
        # header-only checks (the default) let the NaN case through: the preprocessing finds it when it loads it
        for options in ({}, {"check_content": False}):
            with self.assertWarnsRegex(UserWarning, "skipping case 'D'"):
                dl = build_brats_datalist(self.root, skip_invalid=True, val_ratio=0, test_ratio=0, **options)
            self.assertEqual([s["subject"] for s in dl["skipped"]], ["D"])

    def test_all_invalid(self):
        make_brats_case(self.root, "A", keys=("t1",))
        with self.assertWarns(UserWarning), self.assertRaisesRegex(ValueError, "no valid brats2020 case.*1 of 1"):
            build_brats_datalist(self.root, skip_invalid=True)

    def test_errors_name_the_folder(self):
        with self.assertRaisesRegex(ValueError, f"no BraTS case found in data_root '{self.root}'"):
            build_brats_datalist(self.root)
        make_brats_case(self.root, "A", "brats2020")
        make_brats_case(self.root, "B", "brats2023")
        with self.assertRaisesRegex(ValueError, f"'{self.root}' holds several BraTS namings"):
            build_brats_datalist(self.root)
        with self.assertRaisesRegex(ValueError, "naming"):
            build_brats_datalist(self.root, naming="brats2019")
        with self.assertRaisesRegex(NotADirectoryError, "data_root .*missing"):
            build_brats_datalist(os.path.join(self.root, "missing"))
        with self.assertRaisesRegex(ValueError, "val_ratio"):
            build_brats_datalist(self.root, naming="brats2020", val_ratio=2)


class TestBuildWmh(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def test_challenge_and_flat_layouts(self):
        make_wmh_subject(self.root, "Utrecht/0")
        make_wmh_subject(self.root, "Utrecht/2")
        make_wmh_subject(self.root, "Singapore/50")
        make_wmh_subject(self.root, "Amsterdam/GE3T/100")
        # the challenge's orig/ folder (unregistered images) must not become a subject
        os.makedirs(os.path.join(self.root, "Utrecht", "0", "orig"))
        write_nifti(os.path.join(self.root, "Utrecht", "0", "orig", "FLAIR.nii.gz"))
        write_nifti(os.path.join(self.root, "Utrecht", "0", "orig", "3DT1.nii.gz"))
        make_wmh_subject(self.root, "flat/7", flat=True)
        subjects = ["Amsterdam/GE3T/100", "Singapore/50", "Utrecht/0", "Utrecht/2", "flat/7"]
        self.assertEqual(find_wmh_subjects(self.root), subjects)
        self.assertEqual(detect_datalist_format(self.root), "wmh")
        dl = build_datalist(self.root, val_ratio=0.2, test_ratio=0.2, seed=1)
        self.assertEqual(dl["format"], "wmh")
        self.assertEqual(dl["modalities"], ["flair", "t1"])
        items = {i["subject"]: i for k in ("training", "validation", "test") for i in dl[k]}
        self.assertEqual(sorted(items), subjects)
        self.assertEqual(
            items["Utrecht/0"],
            {
                "subject": "Utrecht/0",
                "flair": "Utrecht/0/pre/FLAIR.nii.gz",
                "t1": "Utrecht/0/pre/T1.nii.gz",
                "seg": "Utrecht/0/wmh.nii.gz",
            },
        )
        self.assertEqual(
            items["flat/7"],
            {"subject": "flat/7", "flair": "flat/7/FLAIR.nii.gz", "t1": "flat/7/T1.nii.gz", "seg": "flat/7/wmh.nii.gz"},
        )
        _, val, test = split_subjects(subjects, 0.2, 0.2, seed=1)
        self.assertEqual([i["subject"] for i in dl["validation"]], val)
        self.assertEqual([i["subject"] for i in dl["test"]], test)

    def test_missing_and_duplicate(self):
        make_wmh_subject(self.root, "S/1", keys=("flair", "seg"))
        with self.assertRaises(InvalidCaseError) as ctx:
            build_wmh_datalist(self.root)
        self.assertIn("case 'S/1': t1 file not found", str(ctx.exception))
        self.assertIn(os.path.join(self.root, "S", "1", "pre", "T1.nii.gz"), str(ctx.exception))
        make_wmh_subject(self.root, "S/1")
        write_nifti(os.path.join(self.root, "S", "1", "FLAIR.nii.gz"))  # also flat: ambiguous
        with self.assertRaisesRegex(InvalidCaseError, "several files match flair") as ctx:
            build_wmh_datalist(self.root)
        self.assertIn(os.path.join(self.root, "S", "1", "pre", "FLAIR.nii.gz"), str(ctx.exception))
        self.assertIn(os.path.join(self.root, "S", "1", "FLAIR.nii.gz"), str(ctx.exception))

    def test_no_seg(self):
        make_wmh_subject(self.root, "S/1", keys=("flair", "t1"))
        make_wmh_subject(self.root, "S/2", flat=True, keys=("flair", "t1"))
        dl = build_wmh_datalist(self.root, require_seg=False, val_ratio=0.5, test_ratio=0)
        items = dl["training"] + dl["validation"]
        self.assertEqual(sorted(i["subject"] for i in items), ["S/1", "S/2"])
        self.assertTrue(all(set(i) == {"subject", "flair", "t1"} for i in items))

    def test_nothing_found(self):
        with self.assertRaisesRegex(ValueError, f"no WMH subject found in data_root '{self.root}'"):
            build_wmh_datalist(self.root)


class TestIncompleteStudies(unittest.TestCase):
    """``allow_incomplete``: cases that lack some (not all) contrasts are kept, without a key for the absent ones."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name
        make_brats_case(self.root, "A")
        make_brats_case(self.root, "B", keys=("t1", "t2", "flair", "seg"))  # no t1ce
        make_brats_case(self.root, "C")

    def tearDown(self):
        self._tmp.cleanup()

    def test_rejected_by_default_with_a_message_naming_case_file_and_option(self):
        for build in (build_brats_datalist, build_datalist):
            with self.subTest(build.__name__), self.assertRaises(MissingCaseFileError) as ctx:
                build(self.root)
            msg = str(ctx.exception)
            self.assertTrue(msg.startswith("case 'B': t1ce file not found: expected "), msg)
            self.assertIn(os.path.join(self.root, "B", "B_t1ce.nii.gz"), msg)
            self.assertIn("allow_incomplete=True", msg)
            self.assertIn("--allow-incomplete", msg)
            self.assertIsInstance(ctx.exception, FileNotFoundError)
            self.assertEqual(ctx.exception.paths, (os.path.join(self.root, "B", "B_t1ce.nii.gz"),))
        # two absent contrasts are named together
        os.remove(os.path.join(self.root, "B", "B_t2.nii.gz"))
        with self.assertRaisesRegex(
            MissingCaseFileError, "case 'B': t1ce, t2 files not found: expected .*B_t1ce.*B_t2"
        ):
            build_brats_datalist(self.root)

    def test_accepted_with_allow_incomplete(self):
        with self.assertLogs("monai_msgldm.data.datalist", "WARNING") as logs:
            dl = build_brats_datalist(self.root, allow_incomplete=True, val_ratio=0, test_ratio=0)
        self.assertEqual(len(logs.output), 1)
        self.assertIn("1 of 3 brats2020 cases", logs.output[0])
        self.assertIn("'B' lacks t1ce", logs.output[0])
        self.assertEqual(dl["incomplete"], [{"subject": "B", "missing": ["t1ce"]}])
        self.assertEqual(dl["skipped"], [])
        self.assertEqual(dl["modalities"], list(MODALITIES))
        items = {i["subject"]: i for i in dl["training"]}
        self.assertEqual(sorted(items), ["A", "B", "C"])
        self.assertEqual(
            items["B"],
            {
                "subject": "B",
                "t1": "B/B_t1.nii.gz",
                "t2": "B/B_t2.nii.gz",
                "flair": "B/B_flair.nii.gz",
                "seg": "B/B_seg.nii.gz",
            },
        )
        self.assertEqual(set(items["A"]), {"subject", *MODALITIES, "seg"})
        # build_datalist (format auto) passes the option on and gives the same list
        self.assertEqual(build_datalist(self.root, allow_incomplete=True, val_ratio=0, test_ratio=0), dl)
        # MONAI's loader keeps the absent key absent (what the preprocessing's allow_missing_keys expects)
        path = write_datalist(dl, os.path.join(self.root, "datalist.json"))
        loaded = {
            os.path.basename(i["subject"]): i
            for i in load_decathlon_datalist(path, data_list_key="training", base_dir=dl["data_root"])
        }
        self.assertNotIn("t1ce", loaded["B"])
        self.assertEqual(loaded["B"]["t2"], os.path.join(self.root, "B", "B_t2.nii.gz"))

    def test_incomplete_always_listed(self):
        make_brats_case(self.root, "B")  # complete again
        for allow in (False, True):
            self.assertEqual(build_brats_datalist(self.root, allow_incomplete=allow)["incomplete"], [])
        with self.assertRaisesRegex(ValueError, "allow_incomplete to be a bool"):
            build_brats_datalist(self.root, allow_incomplete="yes")

    def test_still_invalid(self):
        # no contrast at all (a folder with only the segmentation)
        make_brats_case(self.root, "D", keys=("seg",))
        with self.assertRaises(MissingCaseFileError) as ctx:
            build_brats_datalist(self.root, allow_incomplete=True)
        msg = str(ctx.exception)
        self.assertIn("case 'D': no contrast file found: expected at least one of", msg)
        for key in MODALITIES:
            self.assertIn(os.path.join(self.root, "D", f"D_{key}.nii.gz"), msg)
        with self.assertWarnsRegex(UserWarning, "skipping case 'D'"):
            dl = build_brats_datalist(self.root, allow_incomplete=True, skip_invalid=True, val_ratio=0, test_ratio=0)
        self.assertEqual([s["subject"] for s in dl["skipped"]], ["D"])
        self.assertEqual(dl["incomplete"], [{"subject": "B", "missing": ["t1ce"]}])
        self.assertEqual([i["subject"] for i in dl["training"]], ["A", "B", "C"])
        os.remove(os.path.join(self.root, "D", "D_seg.nii.gz"))
        os.rmdir(os.path.join(self.root, "D"))
        # a missing segmentation when require_seg
        os.remove(os.path.join(self.root, "B", "B_seg.nii.gz"))
        with self.assertRaisesRegex(MissingCaseFileError, "case 'B': seg file not found"):
            build_brats_datalist(self.root, allow_incomplete=True)
        dl = build_brats_datalist(self.root, allow_incomplete=True, require_seg=False, val_ratio=0, test_ratio=0)
        self.assertEqual(dl["incomplete"], [{"subject": "B", "missing": ["t1ce"]}])
        make_brats_case(self.root, "B", keys=("seg",))
        # several files for one key
        make_brats_case(self.root, "B", keys=("t2",), ext=".nii")
        with self.assertRaisesRegex(InvalidCaseError, "case 'B': several files match t2"):
            build_brats_datalist(self.root, allow_incomplete=True)
        os.remove(os.path.join(self.root, "B", "B_t2.nii"))
        # the present files must share one grid
        write_nifti(os.path.join(self.root, "B", "B_flair.nii.gz"), np.ones((8, 8, 7), np.float32))
        with self.assertRaisesRegex(InvalidCaseError, "case 'B': spatial shapes differ.*B_t1.nii.gz.*B_flair.nii.gz"):
            build_brats_datalist(self.root, allow_incomplete=True)

    def test_wmh(self):
        root = os.path.join(self.root, "wmh")
        make_wmh_subject(root, "S/1", keys=("flair", "seg"))
        make_wmh_subject(root, "S/2")
        with self.assertRaisesRegex(MissingCaseFileError, "case 'S/1': t1 file not found.*allow_incomplete=True"):
            build_wmh_datalist(root)
        dl = build_datalist(root, allow_incomplete=True, val_ratio=0, test_ratio=0)
        self.assertEqual(dl["incomplete"], [{"subject": "S/1", "missing": ["t1"]}])
        items = {i["subject"]: i for i in dl["training"]}
        self.assertEqual(items["S/1"], {"subject": "S/1", "flair": "S/1/pre/FLAIR.nii.gz", "seg": "S/1/wmh.nii.gz"})
        self.assertEqual(set(items["S/2"]), {"subject", "flair", "t1", "seg"})


class TestModalitySubset(unittest.TestCase):
    """``modalities``: a model's contrast set, a subset of the format's, listed in its order."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name
        make_brats_case(self.root, "A")
        make_brats_case(self.root, "B", keys=("t1", "t2", "flair", "seg"))  # no t1ce

    def tearDown(self):
        self._tmp.cleanup()

    def test_subset_in_the_given_order(self):
        dl = build_datalist(self.root, modalities=["flair", "t1"], val_ratio=0, test_ratio=0)
        self.assertEqual(dl["modalities"], ["flair", "t1"])
        self.assertEqual(dl["incomplete"], [])  # B lacks only a contrast the model does not use
        for item in dl["training"]:
            self.assertEqual(sorted(item), ["flair", "seg", "subject", "t1"])
            self.assertEqual(item["t1"], f"{item['subject']}/{item['subject']}_t1.nii.gz")

    def test_unknown_or_repeated_names(self):
        for names, needle in ((["t1", "pd"], "['pd'] not in the data"), (["t1", "t1"], "distinct"), ([], "distinct")):
            with self.subTest(names), self.assertRaisesRegex(ValueError, re.escape(needle)):
                build_datalist(self.root, modalities=names)
        wmh = os.path.join(self.root, "wmh")
        make_wmh_subject(wmh, "s0", flat=True)
        with self.assertRaisesRegex(ValueError, r"the wmh format holds the contrasts \['flair', 't1'\]"):
            build_datalist(wmh, format="wmh", modalities=["t1", "t2"])
        self.assertEqual(
            build_datalist(wmh, format="wmh", modalities=["t1"], val_ratio=0, test_ratio=0)["modalities"], ["t1"]
        )


class TestDetectAndWrite(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def test_detect(self):
        with self.assertRaisesRegex(ValueError, f"no dataset found in data_root '{self.root}'"):
            detect_datalist_format(self.root)
        make_brats_case(self.root, "BraTS-GLI-00000-000", "brats2023")
        self.assertEqual(detect_datalist_format(self.root), "brats2023")
        make_wmh_subject(self.root, "Utrecht/0")
        with self.assertRaisesRegex(ValueError, f"'{self.root}' holds several dataset layouts.*brats2023.*wmh"):
            detect_datalist_format(self.root)
        with self.assertRaisesRegex(ValueError, "format"):
            build_datalist(self.root, format="nifti")

    def test_write_and_load_with_monai(self):
        for case in ("A", "B", "C", "D", "E"):
            make_brats_case(self.root, case)
        dl = build_datalist(self.root, val_ratio=0.2, test_ratio=0.2)
        out_dir = tempfile.TemporaryDirectory()
        self.addCleanup(out_dir.cleanup)
        path = os.path.join(out_dir.name, "sub", "datalist.json")
        self.assertEqual(write_datalist(dl, path), path)
        self.assertEqual(write_datalist(dl, path), path)  # overwrite in place
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["datalist.json"])  # no temporary file left
        with open(path) as f:
            self.assertEqual(json.load(f), dl)
        total = 0
        for key in ("training", "validation", "test"):
            loaded = load_decathlon_datalist(path, data_list_key=key, base_dir=dl["data_root"])
            self.assertEqual(len(loaded), len(dl[key]))
            for item, raw in zip(loaded, dl[key]):
                # MONAI joins base_dir to any value naming an existing path: the subject id is the case folder
                self.assertEqual(item["subject"], os.path.join(self.root, raw["subject"]))
                for k in (*MODALITIES, "seg"):
                    self.assertEqual(item[k], os.path.join(self.root, raw[k]))
                    self.assertTrue(os.path.isfile(item[k]))
                total += 1
        self.assertEqual(total, 5)

    def test_write_errors(self):
        with self.assertRaisesRegex(ValueError, "'training' list"):
            write_datalist({"validation": []}, os.path.join(self.root, "x.json"))
        with self.assertRaisesRegex(IsADirectoryError, "path"):
            write_datalist({"training": []}, self.root)
        with self.assertRaises(TypeError):
            write_datalist({"training": [object()]}, os.path.join(self.root, "x.json"))
        self.assertEqual(os.listdir(self.root), [])  # the failed write left nothing behind


class TestPackageExports(unittest.TestCase):
    def test_all_names_resolve(self):
        import monai_msgldm.data as data

        for name in data.__all__:
            self.assertTrue(hasattr(data, name), name)
        self.assertIs(data.build_datalist, build_datalist)
        self.assertEqual(data.generate_phantom_dataset.__module__, "monai_msgldm.data.phantom")
        with self.assertRaises(AttributeError):
            _ = data.no_such_name


if __name__ == "__main__":
    unittest.main()
