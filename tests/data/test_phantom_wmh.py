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

import functools
import json
import os
import shutil
import tempfile
import unittest
from unittest import mock

import nibabel as nib
import numpy as np
from parameterized import parameterized

from monai_msgldm.constants import WMH_MODALITIES
from monai_msgldm.data import build_wmh_datalist
from monai_msgldm.data.phantom import (
    PHANTOM_COMPLETE_MARKER,
    WMH_PHANTOM_FILES,
    ensure_phantom_dataset,
    ensure_wmh_phantom_dataset,
    generate_wmh_phantom_dataset,
    generate_wmh_phantom_subject,
    phantom_subject_seed,
)
from monai_msgldm.data.phantom_mr import PHANTOM_TISSUES, PHANTOM_WMH_TISSUES, phantom_sequence_signal

__all__: list[str] = []

RES = 3.0  # 65 x 77 x 63 voxels


@functools.cache
def _subject(seed: int, resolution: float = RES, **kwargs) -> dict:
    return generate_wmh_phantom_subject(seed, resolution=resolution, return_fractions=True, **kwargs)


def _tissue_means(s: dict, modality: str) -> dict[str, float]:
    """Mean intensity over the lesion labels and over nearly pure normal tissue (fraction >= 0.9, no label)."""
    f, brain, seg = s["fractions"], s["brain_mask"], s["seg"]
    masks = {
        "wmh": seg == 1,
        "lacune": seg == 2,
        "wm": (f["wm"] >= 0.9) & (seg == 0) & brain,
        "csf": (f["csf"] >= 0.9) & brain,
    }
    return {k: float(s[modality][m].mean()) if m.sum() >= 3 else np.nan for k, m in masks.items()}


class TestWmhTissues(unittest.TestCase):
    def test_table_contrasts(self):
        # noise-free signals of the table values: WMH bright on FLAIR, mildly dark on T1; the lacune CSF-like
        tissues = {**PHANTOM_TISSUES, **PHANTOM_WMH_TISSUES}
        sig = {m: {t: float(phantom_sequence_signal(m, **v)) for t, v in tissues.items()} for m in WMH_MODALITIES}
        flair, t1 = sig["flair"], sig["t1"]
        self.assertGreater(flair["wmh"], 1.5 * flair["wm"])  # 0.275 vs 0.172
        self.assertLess(flair["wmh"], flair["edema"] * 1.05)  # milder than vasogenic edema
        self.assertTrue(t1["csf"] < t1["edema"] < t1["wmh"] < t1["wm"], t1)  # 0.172 < 0.309 < 0.355 < 0.422
        self.assertLess(flair["lacune"], 0.25 * flair["wm"])
        self.assertLess(t1["lacune"], 1.1 * t1["csf"])


class TestWmhPhantomSubject(unittest.TestCase):
    def test_deterministic(self):
        a = _subject(3)
        b = generate_wmh_phantom_subject(3, resolution=RES, return_fractions=True)
        c = _subject(4)
        for k in (*WMH_MODALITIES, "seg", "brain_mask", "affine"):
            self.assertEqual(a[k].tobytes(), b[k].tobytes(), k)
        for k in (*WMH_MODALITIES, "seg"):
            self.assertFalse(np.array_equal(a[k], c[k]), k)
        lesions_a, lesions_c = a["seg"] == 1, c["seg"] == 1
        overlap = (lesions_a & lesions_c).sum() / max(min(lesions_a.sum(), lesions_c.sum()), 1)
        self.assertLess(overlap, 0.5)  # other lesions, not the same lesions moved by the anatomy

    @parameterized.expand([(0,), (6,), (11,)])  # grades 3, 1, 1 (seed 11: about 0.6 mL of WMH)
    def test_lesion_contrast(self, seed):
        s = _subject(seed)
        flair, t1 = _tissue_means(s, "flair"), _tissue_means(s, "t1")
        # FLAIR: lesions clearly brighter than normal white matter, by more than 15 % of the WM-CSF range
        self.assertGreater(flair["wmh"] - flair["wm"], 0.15 * (flair["wm"] - flair["csf"]), flair)
        # T1: mildly dark, below white matter by more than 5 % of the WM-CSF range, but nearer WM than CSF
        self.assertGreater(t1["wm"] - t1["wmh"], 0.05 * (t1["wm"] - t1["csf"]), t1)
        self.assertGreater(t1["wmh"] - t1["csf"], 0.5 * (t1["wm"] - t1["csf"]), t1)

    @parameterized.expand([(0,), (6,), (11,)])
    def test_labels_in_white_matter(self, seed):
        s = _subject(seed)
        f, seg = s["fractions"], s["seg"]
        self.assertEqual(seg.dtype, np.uint8)
        self.assertTrue(set(np.unique(seg).tolist()) <= {0, 1, 2})
        self.assertFalse(np.any(seg[~s["brain_mask"]]))
        lesion = seg == 1
        self.assertGreater(int(lesion.sum()), 10)
        white = f["wm"] + f["wmh"]  # white matter before the lesions replaced part of it
        self.assertGreaterEqual(float((white[lesion] >= 0.5).mean()), 0.95)
        self.assertTrue(np.all(white[lesion] >= np.maximum(f["gm"], f["csf"])[lesion]))
        for m in WMH_MODALITIES:
            self.assertEqual(s[m].dtype, np.float32)
            self.assertEqual(s[m].shape, (65, 77, 63))
            self.assertTrue(np.all(s[m][~s["brain_mask"]] == 0))

    def test_lacune_other_pathology(self):
        s = _subject(6, num_lacunes=1)
        self.assertGreater(int((s["seg"] == 2).sum()), 0)
        flair, t1 = _tissue_means(s, "flair"), _tissue_means(s, "t1")
        self.assertLess(flair["lacune"], 0.7 * flair["wm"], flair)  # dark on FLAIR (CSF-like, nulled)
        self.assertLess(t1["lacune"], t1["wmh"], t1)  # darker on T1 than the WMH
        self.assertFalse(np.any(_subject(6, num_lacunes=0)["seg"] == 2))

    def test_load_follows_grade(self):
        volumes = {g: int((_subject(5, grade=g)["seg"] == 1).sum()) for g in (1, 2, 3)}
        self.assertTrue(0 < volumes[1] < volumes[2] < volumes[3], volumes)
        self.assertGreater(volumes[3], 3 * volumes[1], volumes)
        # the same seed on another grid: the same lesions (label-1 centroid in world mm)
        coarse = _subject(5, resolution=4.0, grade=2)

        def centroid(s):
            return (s["affine"] @ np.r_[np.argwhere(s["seg"] == 1).mean(axis=0), 1.0])[:3]

        self.assertLess(float(np.linalg.norm(centroid(coarse) - centroid(_subject(5, grade=2)))), 3.0)

    @parameterized.expand(
        [
            ({"seed": -1}, "seed"),
            ({"seed": 0, "resolution": 0.5}, "resolution"),
            ({"seed": 0, "snr": 0.0}, "snr"),
            ({"seed": 0, "grade": 0}, "grade"),
            ({"seed": 0, "grade": True}, "grade"),
            ({"seed": 0, "num_lacunes": 3}, "num_lacunes"),
        ]
    )
    def test_invalid(self, kwargs, word):
        with self.assertRaisesRegex(ValueError, word):
            generate_wmh_phantom_subject(**kwargs)


class TestWmhPhantomDataset(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_files_and_datalist(self):
        out = os.path.join(self.tmp, "wmh")
        cases = generate_wmh_phantom_dataset(out, num_subjects=2, resolution=RES, seed=2, progress=False)
        self.assertEqual(cases, [os.path.join(out, "Phantom_000"), os.path.join(out, "Phantom_001")])
        self.assertEqual(sorted(os.listdir(cases[0])), ["pre", "wmh.nii.gz"])
        self.assertEqual(sorted(os.listdir(os.path.join(cases[0], "pre"))), ["FLAIR.nii.gz", "T1.nii.gz"])
        subject = generate_wmh_phantom_subject(phantom_subject_seed(2, 1), resolution=RES)
        for key, rel in WMH_PHANTOM_FILES.items():
            img = nib.load(os.path.join(cases[1], rel))
            self.assertEqual(img.get_data_dtype(), np.uint8 if key == "seg" else np.float32)
            self.assertEqual(tuple(float(z) for z in img.header.get_zooms()), (RES, RES, RES))
            self.assertEqual(nib.aff2axcodes(img.affine), ("R", "A", "S"))
            np.testing.assert_allclose(img.affine, subject["affine"], atol=1e-5)
            np.testing.assert_array_equal(np.asarray(img.dataobj), subject[key])
        # the WMH reader takes the folder as it is, voxel checks included
        datalist = build_wmh_datalist(out, val_ratio=0.0, test_ratio=0.0, check_content=True)
        self.assertEqual(datalist["format"], "wmh")
        self.assertEqual(datalist["skipped"], [])
        items = sorted(datalist["training"], key=lambda item: item["subject"])
        self.assertEqual(
            items,
            [
                {"subject": c, "flair": f"{c}/pre/FLAIR.nii.gz", "t1": f"{c}/pre/T1.nii.gz", "seg": f"{c}/wmh.nii.gz"}
                for c in ("Phantom_000", "Phantom_001")
            ],
        )
        with open(os.path.join(out, "phantom_dataset.json")) as f:
            self.assertEqual(json.load(f)["generator"], "monai_msgldm.phantom_wmh")

    def test_ensure(self):
        cache = os.path.join(self.tmp, "cache")
        folder = ensure_wmh_phantom_dataset(cache, num_subjects=1, resolution=4.0, seed=1)
        self.assertEqual(folder, os.path.join(cache, "wmh_phantom_n1_r4.0_s1"))
        with open(os.path.join(folder, PHANTOM_COMPLETE_MARKER)) as f:
            marker = json.load(f)
        self.assertEqual((marker["generator"], marker["num_subjects"]), ("monai_msgldm.phantom_wmh", 1))
        files = sorted(os.path.join(r, n) for r, _, fs in os.walk(folder) for n in fs if n.endswith(".nii.gz"))
        self.assertEqual(len(files), 3)
        stamps = {p: os.stat(p).st_mtime_ns for p in files}
        # a complete cache is reused: nothing is generated (checked by call) or rewritten (checked by mtime)
        with mock.patch(
            "monai_msgldm.data.phantom_wmh.generate_wmh_phantom_subject", side_effect=AssertionError("regenerated")
        ):
            self.assertEqual(ensure_wmh_phantom_dataset(cache, num_subjects=1, resolution=4.0, seed=1), folder)
        self.assertEqual({p: os.stat(p).st_mtime_ns for p in files}, stamps)
        # another parameter, another folder; the tumour phantom lives beside it in the same cache root
        other = ensure_wmh_phantom_dataset(cache, num_subjects=1, resolution=4.0, seed=2)
        self.assertEqual(other, os.path.join(cache, "wmh_phantom_n1_r4.0_s2"))
        self.assertEqual(
            ensure_phantom_dataset(cache, num_subjects=1, resolution=6.0, seed=1),
            os.path.join(cache, "phantom_n1_r6.0_s1"),
        )
        # a bundle's phantom_layout reaches it through ensure_phantom_dataset (the same folder, reused)
        with mock.patch(
            "monai_msgldm.data.phantom_wmh.generate_wmh_phantom_subject", side_effect=AssertionError("regenerated")
        ):
            self.assertEqual(ensure_phantom_dataset(cache, 1, 4.0, 1, layout="wmh"), folder)
        with self.assertRaisesRegex(ValueError, "layout 'brats' or 'wmh', got 'wmh2017'"):
            ensure_phantom_dataset(cache, 1, 4.0, 1, layout="wmh2017")
        # a folder made by the tumour phantom is not taken for a WMH dataset
        with self.assertRaisesRegex(ValueError, "overwrite"):
            generate_wmh_phantom_dataset(
                os.path.join(cache, "phantom_n1_r6.0_s1"), num_subjects=1, resolution=6.0, seed=1, progress=False
            )


if __name__ == "__main__":
    unittest.main()
