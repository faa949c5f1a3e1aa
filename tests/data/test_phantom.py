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

import filecmp
import json
import math
import os
import shutil
import tempfile
import unittest
from unittest import mock

import nibabel as nib
import numpy as np
from parameterized import parameterized
from scipy import ndimage

from monai_msgldm.constants import BRATS2020_SUFFIXES, MODALITIES
from monai_msgldm.data.phantom import (
    PHANTOM_COMPLETE_MARKER,
    ensure_phantom_dataset,
    generate_phantom_dataset,
    generate_phantom_subject,
    phantom_cache_dir,
    phantom_case_id,
    phantom_subject_seed,
)
from monai_msgldm.data.phantom_mr import (
    PHANTOM_SEQUENCES,
    PHANTOM_TISSUES,
    csf_nulling_inversion_time,
    gadolinium_t1,
    inversion_recovery_signal,
    phantom_sequence_signal,
    spin_echo_signal,
)

__all__: list[str] = []

RES = 4.0  # coarse grid: 49 x 58 x 47 voxels


def _means(subject, modality, threshold=0.75):
    """Mean intensity of each tissue over the voxels where it is dominant (fraction >= threshold)."""
    out = {}
    for tissue, frac in subject["fractions"].items():
        mask = (frac >= threshold) & subject["brain_mask"]
        out[tissue] = float(subject[modality][mask].mean()) if mask.sum() >= 3 else math.nan
    return out


class TestPhantomPhysics(unittest.TestCase):
    def test_signal_equations(self):
        # spin echo, by hand: WM at TR 500 TE 10
        expected = 0.77 * (1 - math.exp(-500 / 500)) * math.exp(-10 / 70)
        self.assertAlmostEqual(float(spin_echo_signal(0.77, 500.0, 70.0, tr=500.0, te=10.0)), expected, places=12)
        # the FLAIR inversion time nulls CSF, and tends to T1 ln 2 for long TR
        ti = csf_nulling_inversion_time(2569.0, 9000.0)
        self.assertAlmostEqual(ti, 2569.0 * math.log(2 / (1 + math.exp(-9000 / 2569))), places=9)
        self.assertAlmostEqual(csf_nulling_inversion_time(2569.0, 1e7), 2569.0 * math.log(2), places=6)
        self.assertLess(float(inversion_recovery_signal(1.0, 2569.0, 329.0, tr=9000.0, te=100.0, ti=ti)), 1e-12)
        self.assertAlmostEqual(PHANTOM_SEQUENCES["flair"]["ti"], ti, places=9)
        # gadolinium: 1/T1' = 1/T1 + r1 C
        self.assertAlmostEqual(float(gadolinium_t1(1000.0, 0.5, r1=4.0)), 1.0 / (1e-3 + 4e-3 * 0.5), places=9)
        self.assertEqual(float(gadolinium_t1(1000.0, 0.0)), 1000.0)

    def test_table_contrasts(self):
        sig = {
            m: {t: float(phantom_sequence_signal(m, v["pd"], v["t1"], v["t2"])) for t, v in PHANTOM_TISSUES.items()}
            for m in PHANTOM_SEQUENCES
        }
        self.assertTrue(sig["t1"]["wm"] > sig["t1"]["gm"] > sig["t1"]["csf"])
        self.assertTrue(sig["t2"]["csf"] > sig["t2"]["gm"] > sig["t2"]["wm"])
        self.assertLess(sig["flair"]["csf"], 1e-6)
        self.assertTrue(sig["flair"]["edema"] > sig["flair"]["necrosis"] > sig["flair"]["csf"])

    def test_bad_sequence(self):
        with self.assertRaisesRegex(ValueError, "name"):
            phantom_sequence_signal("dwi", 1.0, 1000.0, 100.0)
        with self.assertRaisesRegex(ValueError, "t1"):
            csf_nulling_inversion_time(0.0, 9000.0)


class TestPhantomSubject(unittest.TestCase):
    @parameterized.expand([(0,), (7,)])
    def test_contrasts_follow_mri(self, seed):
        s = generate_phantom_subject(seed, resolution=3.0, return_fractions=True)
        t1, t1ce, t2, flair = (_means(s, m) for m in MODALITIES)
        self.assertTrue(t1["wm"] > t1["gm"] > t1["csf"], t1)
        self.assertTrue(t2["csf"] > t2["gm"] > t2["wm"], t2)
        self.assertLess(flair["csf"], min(flair["gm"], flair["wm"]), flair)
        self.assertGreater(t1ce["enhancing"], max(t1ce["edema"], t1ce["necrosis"]), t1ce)
        self.assertGreater(t1ce["enhancing"], 1.2 * t1ce["wm"], t1ce)
        self.assertGreater(t2["edema"], t2["wm"], t2)
        self.assertGreater(flair["edema"], flair["wm"], flair)
        self.assertGreater(flair["edema"], flair["necrosis"], flair)
        # the contrast agent brightens the enhancing tissue only (same anatomy, same noise-free ratio elsewhere)
        ratio_enh = t1ce["enhancing"] / t1["enhancing"]
        ratio_wm = t1ce["wm"] / t1["wm"]
        self.assertGreater(ratio_enh, 1.5 * ratio_wm)

    @parameterized.expand([(0,), (1,), (2,), (3,)])
    def test_labels_and_types(self, seed):
        s = generate_phantom_subject(seed, resolution=RES)
        shape = (49, 58, 47)
        for m in MODALITIES:
            self.assertEqual(s[m].dtype, np.float32)
            self.assertEqual(s[m].shape, shape)
            self.assertTrue(np.all(s[m][~s["brain_mask"]] == 0))  # skull-stripped like BraTS
            self.assertGreater(float(np.median(s[m][s["brain_mask"]])), 0.0)
        self.assertEqual(s["seg"].dtype, np.uint8)
        self.assertEqual(s["brain_mask"].dtype, bool)
        self.assertEqual(set(np.unique(s["seg"]).tolist()), {0, 1, 2, 4})
        self.assertFalse(np.any(s["seg"][~s["brain_mask"]]))
        volume_litre = s["brain_mask"].sum() * RES**3 * 1e-6  # brain incl. cerebellum and stem: 1.2-2.2 L
        self.assertTrue(1.2 < volume_litre < 2.2, volume_litre)
        np.testing.assert_allclose(np.abs(np.diag(s["affine"])[:3]), [RES] * 3)
        self.assertEqual(nib.aff2axcodes(s["affine"]), ("R", "A", "S"))

    @parameterized.expand([(1,), (2,)])
    def test_num_tumours(self, num):
        s = generate_phantom_subject(5, resolution=RES, num_tumours=num)
        _, count = ndimage.label(np.isin(s["seg"], (1, 4)))
        self.assertEqual(count, num)

    def test_deterministic(self):
        a = generate_phantom_subject(11, resolution=RES)
        b = generate_phantom_subject(11, resolution=RES)
        c = generate_phantom_subject(12, resolution=RES)
        for k in (*MODALITIES, "seg", "brain_mask", "affine"):
            self.assertEqual(a[k].tobytes(), b[k].tobytes(), k)
        for k in (*MODALITIES, "seg", "brain_mask"):
            self.assertFalse(np.array_equal(a[k], c[k]), k)

    def test_noise_level_and_resolution_independence(self):
        clean = generate_phantom_subject(3, resolution=RES, snr=float("inf"))
        noisy = generate_phantom_subject(3, resolution=RES, snr=20.0)
        np.testing.assert_array_equal(clean["seg"], noisy["seg"])
        mask = clean["brain_mask"]
        for m in MODALITIES:
            sigma = clean[m][mask].mean() / 20.0
            bright = mask & (clean[m] > 5 * sigma)  # Rician ~ Gaussian at high signal
            diff = (noisy[m] - clean[m])[bright]
            # Rician magnitude |A + n| at A >> sigma: ~ A + N(sigma^2 / (2A), sigma^2) (second-order expansion);
            # thousands of voxels: the std and mean estimates are good to about 1 %
            self.assertGreater(int(bright.sum()), 5000)
            self.assertAlmostEqual(float(diff.std()) / sigma, 1.0, delta=0.03)
            bias = float(np.mean(sigma**2 / (2.0 * clean[m][bright])))
            self.assertAlmostEqual(float(diff.mean()) / sigma, bias / sigma, delta=0.03)
        # same seed, another grid: the same tumour (centroid in world mm)
        fine = generate_phantom_subject(3, resolution=3.0, snr=float("inf"))

        def centroid(s):
            ijk = np.argwhere(s["seg"] > 0).mean(axis=0)
            return (s["affine"] @ np.r_[ijk, 1.0])[:3]

        self.assertLess(float(np.linalg.norm(centroid(fine) - centroid(clean))), 3.0)

    @parameterized.expand(
        [
            ({"seed": -1}, "seed"),
            ({"seed": 1.5}, "seed"),
            ({"seed": 0, "resolution": 0.5}, "resolution"),
            ({"seed": 0, "resolution": "2"}, "resolution"),
            ({"seed": 0, "snr": 0.0}, "snr"),
            ({"seed": 0, "num_tumours": 0}, "num_tumours"),
            ({"seed": 0, "num_tumours": 4}, "num_tumours"),
        ]
    )
    def test_invalid(self, kwargs, word):
        with self.assertRaisesRegex(ValueError, word):
            generate_phantom_subject(**kwargs)


class TestPhantomDataset(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_files(self):
        out = os.path.join(self.tmp, "a")
        cases = generate_phantom_dataset(out, num_subjects=2, resolution=RES, seed=4, progress=False)
        self.assertEqual(cases, [os.path.join(out, "Phantom_000"), os.path.join(out, "Phantom_001")])
        self.assertEqual(phantom_case_id(1), "Phantom_001")
        subject = generate_phantom_subject(phantom_subject_seed(4, 1), resolution=RES)
        for key, suffix in BRATS2020_SUFFIXES.items():
            img = nib.load(os.path.join(cases[1], f"Phantom_001_{suffix}.nii.gz"))
            self.assertEqual(img.get_data_dtype(), np.uint8 if key == "seg" else np.float32)
            self.assertEqual(tuple(float(z) for z in img.header.get_zooms()), (RES, RES, RES))
            np.testing.assert_allclose(img.affine, subject["affine"], atol=1e-5)
            np.testing.assert_array_equal(np.asarray(img.dataobj), subject[key])
        self.assertEqual(
            sorted(os.listdir(cases[0])), sorted(f"Phantom_000_{s}.nii.gz" for s in BRATS2020_SUFFIXES.values())
        )
        # byte-identical files for the same seed, different for another seed
        again = generate_phantom_dataset(os.path.join(self.tmp, "b"), 2, RES, seed=4, progress=False)
        other = generate_phantom_dataset(os.path.join(self.tmp, "c"), 1, RES, seed=5, progress=False)
        for suffix in BRATS2020_SUFFIXES.values():
            name = f"Phantom_000_{suffix}.nii.gz"
            self.assertTrue(filecmp.cmp(os.path.join(cases[0], name), os.path.join(again[0], name), shallow=False))
            self.assertFalse(filecmp.cmp(os.path.join(cases[0], name), os.path.join(other[0], name), shallow=False))
        self.assertNotEqual(phantom_subject_seed(4, 0), phantom_subject_seed(4, 1))

    def test_keep_overwrite_and_mismatch(self):
        out = os.path.join(self.tmp, "d")
        (case,) = generate_phantom_dataset(out, num_subjects=1, resolution=RES, seed=0, progress=False)
        t1 = os.path.join(case, "Phantom_000_t1.nii.gz")
        os.utime(t1, ns=(1, 1))
        generate_phantom_dataset(out, num_subjects=1, resolution=RES, seed=0, progress=False)
        self.assertEqual(os.stat(t1).st_mtime_ns, 1)  # kept
        os.makedirs(os.path.join(out, "Phantom_001.tmp"))  # an interrupted case
        generate_phantom_dataset(out, num_subjects=2, resolution=RES, seed=0, progress=False)
        self.assertFalse(os.path.exists(os.path.join(out, "Phantom_001.tmp")))
        self.assertEqual(len(os.listdir(os.path.join(out, "Phantom_001"))), 5)
        generate_phantom_dataset(out, num_subjects=1, resolution=RES, seed=0, overwrite=True, progress=False)
        self.assertNotEqual(os.stat(t1).st_mtime_ns, 1)  # rewritten
        with self.assertRaisesRegex(ValueError, "overwrite"):
            generate_phantom_dataset(out, num_subjects=1, resolution=RES, seed=1, progress=False)
        with self.assertRaisesRegex(ValueError, "num_subjects"):
            generate_phantom_dataset(out, num_subjects=0, progress=False)

    def test_ensure(self):
        cache = os.path.join(self.tmp, "cache")
        folder = ensure_phantom_dataset(cache, num_subjects=2, resolution=RES, seed=1)
        self.assertEqual(folder, os.path.join(cache, "phantom_n2_r4.0_s1"))
        marker = os.path.join(folder, PHANTOM_COMPLETE_MARKER)
        self.assertEqual(json.load(open(marker))["num_subjects"], 2)
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f.endswith(".nii.gz"))
        self.assertEqual(len(files), 10)
        stamps = {f: os.stat(f).st_mtime_ns for f in files}
        with open(files[-1], "rb") as f:
            reference = f.read()
        # a complete cache is reused as it is: no subject is generated again (checked by call, not by timing)
        with mock.patch(
            "monai_msgldm.data.phantom_writing.generate_phantom_subject", side_effect=AssertionError("regenerated")
        ):
            self.assertEqual(ensure_phantom_dataset(cache, num_subjects=2, resolution=RES, seed=1), folder)
        self.assertEqual({f: os.stat(f).st_mtime_ns for f in files}, stamps)
        # an interrupted run: marker not yet written, one case missing, a half-written case left behind
        os.remove(marker)
        shutil.rmtree(os.path.join(folder, "Phantom_001"))
        os.makedirs(os.path.join(folder, "Phantom_001.tmp"))
        self.assertEqual(ensure_phantom_dataset(cache, num_subjects=2, resolution=RES, seed=1), folder)
        self.assertTrue(os.path.isfile(marker))
        self.assertFalse(os.path.exists(os.path.join(folder, "Phantom_001.tmp")))
        for f in files:
            if "Phantom_000" in f:
                self.assertEqual(os.stat(f).st_mtime_ns, stamps[f])  # the complete case is untouched
        with open(files[-1], "rb") as f:
            self.assertEqual(f.read(), reference)  # regenerated identically
        # the default cache root
        with mock.patch.dict(os.environ, {"MONAI_MSGLDM_CACHE": cache}):
            self.assertEqual(phantom_cache_dir(), cache)
            self.assertEqual(ensure_phantom_dataset(num_subjects=2, resolution=RES, seed=1), folder)
        with mock.patch.dict(os.environ, {"MONAI_MSGLDM_CACHE": ""}):
            self.assertEqual(phantom_cache_dir(), os.path.join(os.path.expanduser("~"), ".cache", "monai_msgldm"))


if __name__ == "__main__":
    unittest.main()
