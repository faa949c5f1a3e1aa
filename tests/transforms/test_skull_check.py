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

import importlib.util
import os
import unittest
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from parameterized import parameterized
from scipy import ndimage

from monai_msgldm.data.phantom_subject import generate_phantom_subject
from monai_msgldm.transforms.skull_check import (
    CheckSkullStripped,
    CheckSkullStrippedD,
    CheckSkullStrippedd,
    CheckSkullStrippedDict,
    SkullStrippingWarning,
    skull_strip_figures,
)

__all__: list[str] = []

CONTRASTS = ("t1", "t1ce", "t2", "flair")
DEFAULT = CheckSkullStripped()

# margins the stripped inputs must keep from the thresholds (0.2 / 0.25 / 0.3)
MIN_STRIPPED_BACKGROUND, MAX_STRIPPED_VALLEY, MIN_STRIPPED_DARKEST = 0.6, 0.12, 0.5

# synthetic scalp and skull around a brain mask: (outer distance from the brain in mm, level in brain medians) of
# CSF, inner table, diploe (fatty marrow), outer table, scalp fat, skin; air beyond
LAYERS_MM = (2.0, 3.5, 7.0, 8.5, 13.0, 15.0)
LEVELS = {
    "t1": (0.3, 0.0, 0.9, 0.0, 1.3, 0.6),
    "t1ce": (0.3, 0.0, 0.9, 0.0, 1.3, 0.7),
    "t2": (2.0, 0.0, 0.8, 0.0, 1.1, 0.6),
    "flair": (0.13, 0.0, 0.9, 0.0, 1.2, 0.7),
}


def add_skull(img, mask, spacing, contrast: str, air: str = "noise", snr: float = 30.0, seed: int = 0) -> np.ndarray:
    """A "not skull-stripped" counterpart of a stripped ``img``: scalp and skull layers around ``mask``, Rician noise.

    ``air="noise"``: Rician noise in the air (a scan as it leaves the scanner); ``"zero"``: the air set to exactly 0
    (the hard case: a head whose background was zeroed).
    """
    rng = np.random.default_rng(seed)
    ref = float(np.median(img[mask]))
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing)
    signal = np.zeros(img.shape, np.float32)
    lower = 0.0
    for upper, level in zip(LAYERS_MM, LEVELS[contrast]):
        signal[(dist > lower) & (dist <= upper)] = level * ref
        lower = upper
    sigma = ref / snr
    noisy = np.hypot(signal + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape)).astype(np.float32)
    out = np.where(mask, img, noisy)
    if air == "zero":
        out[dist > LAYERS_MM[-1]] = 0.0
    return out


def block_mean(img: np.ndarray, factors) -> np.ndarray:
    """Average ``img`` over blocks of ``factors`` voxels (a coarser acquisition, with partial volume)."""
    shape = [n // f * f for n, f in zip(img.shape, factors)]
    img = img[: shape[0], : shape[1], : shape[2]]
    return img.reshape(shape[0] // factors[0], factors[0], shape[1] // factors[1], factors[1], -1, factors[2]).mean(
        axis=(1, 3, 5)
    )


def _nilearn_t1_template() -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = (
        Path(next(iter(spec.submodule_search_locations)))
        / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    return path if path.is_file() else None


def _nibabel_anatomical() -> Path:
    return Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "anatomical.nii"


class _Phantoms:
    """Phantom subjects shared by the tests (generated once)."""

    cache: dict = {}

    @classmethod
    def get(cls, resolution: float, seed: int = 0) -> dict:
        key = (resolution, seed)
        if key not in cls.cache:
            cls.cache[key] = generate_phantom_subject(seed=seed, resolution=resolution, num_tumours=1)
        return cls.cache[key]


def _stripped_cases():
    # (name, image, spacing): the skull-stripped phantom in every contrast, isotropic and anisotropic grids
    p3, p6 = _Phantoms.get(3.0), _Phantoms.get(6.0)
    cases = []
    for contrast in CONTRASTS:
        cases.append((f"{contrast}_3mm", p3[contrast], (3.0, 3.0, 3.0)))
        cases.append((f"{contrast}_6mm", p6[contrast], (6.0, 6.0, 6.0)))
        # thick slices with partial volume at the brain's edge
        cases.append((f"{contrast}_3x3x6mm", block_mean(p3[contrast], (1, 1, 2)), (3.0, 3.0, 6.0)))
        # fine in-plane voxels (0.5 mm: the figures are measured on every 4th voxel)
        fine = np.repeat(np.repeat(p6[contrast], 12, axis=0), 12, axis=1)
        cases.append((f"{contrast}_0.5x0.5x6mm", fine, (0.5, 0.5, 6.0)))
    return cases


class TestFiguresOnStrippedPhantom(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cases = _stripped_cases()

    def test_stripped_side_with_margin(self):
        for name, img, spacing in self.cases:
            with self.subTest(name):
                fig = skull_strip_figures(img, spacing)
                self.assertGreaterEqual(fig.background_share, MIN_STRIPPED_BACKGROUND)
                self.assertEqual(fig.background_value, 0.0)
                self.assertLessEqual(fig.shell_valley, MAX_STRIPPED_VALLEY)
                self.assertGreaterEqual(fig.darkest_shell, MIN_STRIPPED_DARKEST)
                self.assertEqual(DEFAULT.problems(fig), [])

    def test_rescaled_cropped_and_resampled_stay_stripped(self):
        img, mask = _Phantoms.get(3.0)["flair"], _Phantoms.get(3.0)["brain_mask"]
        box = ndimage.find_objects(mask.astype(np.int8))[0]
        variants = {  # name: (image, spacing)
            "scaled_to_[-1,1]": (2 * (img - img.min()) / (img.max() - img.min()) - 1, 3.0),  # background -1
            "cropped_to_brain": (img[box], 3.0),  # the brain's bounding box: background share about 0.5
            "bspline_to_6mm": (ndimage.zoom(img, 0.5, order=3), 6.0),  # a faint ringing halo around the brain
            "linear_to_3x3x1mm": (ndimage.zoom(img, (1, 1, 3), order=1), (3.0, 3.0, 1.0)),  # a 3 mm edge ramp
            "axial_slice_2d": (img[:, :, img.shape[2] // 2], 3.0),
        }
        for name, (variant, spacing) in variants.items():
            with self.subTest(name):
                fig = skull_strip_figures(variant, spacing)
                self.assertGreaterEqual(fig.background_share, 0.4)
                self.assertLessEqual(fig.shell_valley, MAX_STRIPPED_VALLEY)
                self.assertGreaterEqual(fig.darkest_shell, MIN_STRIPPED_DARKEST)

    def test_signed_image_skips_shell_figures(self):
        img, mask = _Phantoms.get(6.0)["t1"], _Phantoms.get(6.0)["brain_mask"]
        zscored = np.where(mask, (img - img[mask].mean()) / img[mask].std(), 0.0)  # 0 outside, tissue around 0
        fig = skull_strip_figures(zscored, 6.0)
        self.assertEqual(fig.background_value, 0.0)
        self.assertGreater(fig.background_share, MIN_STRIPPED_BACKGROUND)
        self.assertTrue(np.isnan(fig.shell_valley) and np.isnan(fig.darkest_shell))
        self.assertEqual(DEFAULT.problems(fig), [])


class TestFiguresOnHeads(unittest.TestCase):
    @parameterized.expand([(c,) for c in CONTRASTS])
    def test_head_with_air_noise_fires_on_background(self, contrast):
        p = _Phantoms.get(6.0)
        head = add_skull(p[contrast], p["brain_mask"], (6.0,) * 3, contrast, air="noise")
        fig = skull_strip_figures(head, 6.0)
        self.assertLess(fig.background_share, 0.02)
        self.assertTrue(DEFAULT.problems(fig))

    @parameterized.expand([(c,) for c in CONTRASTS])
    def test_head_with_zeroed_air_fires_on_shells(self, contrast):
        p = _Phantoms.get(3.0)
        head = add_skull(p[contrast], p["brain_mask"], (3.0,) * 3, contrast, air="zero")
        fig = skull_strip_figures(head, 3.0)
        self.assertGreater(fig.background_share, DEFAULT.min_background_share)  # not caught by the background
        self.assertGreater(fig.shell_valley, DEFAULT.max_shell_valley + 0.1)
        self.assertTrue(DEFAULT.problems(fig))
        # thick slices, with partial volume
        fig = skull_strip_figures(block_mean(head, (1, 1, 2)), (3.0, 3.0, 6.0))
        self.assertTrue(DEFAULT.problems(fig))

    def test_zero_filled_field_of_view_fires_on_darkest_shell(self):
        p = _Phantoms.get(6.0)
        head = add_skull(p["t1"], p["brain_mask"], (6.0,) * 3, "t1", air="noise")
        fov = np.zeros(head.shape, bool)
        fov[3:-3, 3:-3, 3:-3] = True
        fig = skull_strip_figures(np.where(fov, head, 0.0), 6.0)  # e.g. registered to an atlas, zero outside
        self.assertGreater(fig.background_share, DEFAULT.min_background_share)
        self.assertLess(fig.darkest_shell, 0.1)
        self.assertTrue(DEFAULT.problems(fig))


class TestFiguresOnRealData(unittest.TestCase):
    def test_nibabel_t1_not_stripped(self):
        path = _nibabel_anatomical()
        if not path.is_file():
            self.skipTest("nibabel's test data not installed")
        img = nib.load(str(path))
        fig = skull_strip_figures(np.asarray(img.dataobj), img.header.get_zooms()[:3])
        self.assertLess(fig.background_share, 0.01)  # real noise and tissue up to the edges: no constant background
        self.assertTrue(DEFAULT.problems(fig))

    def test_mni152_template(self):
        path = _nilearn_t1_template()
        if path is None:
            self.skipTest("nilearn's MNI152 template not installed")
        t1 = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        mask = t1 > 0.2  # nilearn.datasets.load_mni152_brain_mask: the template thresholded at 0.2
        stripped = skull_strip_figures(t1 * mask, 1.0)  # nilearn's template is itself skull-stripped
        self.assertGreater(stripped.background_share, MIN_STRIPPED_BACKGROUND)
        self.assertLessEqual(stripped.shell_valley, MAX_STRIPPED_VALLEY)
        self.assertGreaterEqual(stripped.darkest_shell, MIN_STRIPPED_DARKEST)
        self.assertEqual(DEFAULT.problems(stripped), [])
        t1, mask = t1[::2, ::2, ::2], mask[::2, ::2, ::2]  # 2 mm, so that the synthetic skull is quick to build
        for air in ("noise", "zero"):
            with self.subTest(air):
                head = skull_strip_figures(add_skull(t1, mask, (2.0,) * 3, "t1", air=air), 2.0)
                self.assertTrue(DEFAULT.problems(head))


def _raw(filename: str = "/data/c01/c01_t1.nii.gz") -> MetaTensor:
    data = torch.from_numpy(np.random.default_rng(0).rayleigh(1.0, (1, 24, 24, 16)).astype(np.float32))
    return MetaTensor(data, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])), meta={"filename_or_obj": filename})


def _stripped() -> MetaTensor:
    p = _Phantoms.get(6.0)
    return MetaTensor(torch.from_numpy(p["t2"][None]), affine=torch.diag(torch.tensor([6.0, 6.0, 6.0, 1.0])))


class TestCheckSkullStripped(unittest.TestCase):
    def test_warn_default(self):
        img = _raw()
        with self.assertLogs("monai_msgldm.transforms.skull_check", "WARNING") as logs:
            with self.assertWarns(SkullStrippingWarning) as caught:
                out = CheckSkullStripped()(img, name="t1")
        self.assertIs(out, img)
        message = str(caught.warning)
        self.assertIn("t1 file '/data/c01/c01_t1.nii.gz'", message)
        self.assertIn("background share 0.000 < threshold 0.2", message)
        for tool in ("HD-BET", "SynthStrip", "FSL BET"):
            self.assertIn(tool, message)
        self.assertIn(message, logs.output[0])

    def test_raise(self):
        with self.assertRaisesRegex(ValueError, r"t1 file '/data/c01/c01_t1.nii.gz' looks not skull-stripped.*HD-BET"):
            CheckSkullStripped(mode="raise")(_raw(), name="t1")

    def test_ignore_and_plain_array(self):
        img = np.random.default_rng(1).rayleigh(1.0, (1, 20, 20, 10)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            self.assertIs(CheckSkullStripped(mode="ignore")(img), img)
        with self.assertRaisesRegex(ValueError, "^'image' looks not skull-stripped"):
            CheckSkullStripped(mode="raise")(img)

    def test_stripped_passes_silently(self):
        img = _stripped()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            self.assertIs(CheckSkullStripped(mode="raise")(img), img)
            axial = img.as_tensor()[:, :, :, img.shape[3] // 2]  # one slice, (C, H, W)
            self.assertIs(CheckSkullStripped(mode="raise", spacing=6.0)(axial), axial)

    def test_spacing_from_meta_and_argument(self):
        p = _Phantoms.get(3.0)
        head = add_skull(p["t1"], p["brain_mask"], (3.0,) * 3, "t1", air="zero")
        as_meta = MetaTensor(torch.from_numpy(head[None]), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
        with self.assertRaisesRegex(ValueError, "shell valley"):
            CheckSkullStripped(mode="raise")(as_meta)
        with self.assertRaisesRegex(ValueError, "shell valley"):
            CheckSkullStripped(mode="raise", spacing=3.0)(head[None])

    def test_channels_named(self):
        stripped = _stripped().as_tensor()
        raw = torch.rand_like(stripped) + 0.5
        with self.assertRaisesRegex(ValueError, r"looks not skull-stripped: channel 1: only"):
            CheckSkullStripped(mode="raise", spacing=6.0)(torch.cat([stripped, raw]))

    @parameterized.expand(
        [
            ({"mode": "error"},),
            ({"mode": None},),
            ({"min_background_share": 1.0},),
            ({"min_background_share": -0.1},),
            ({"min_background_share": True},),
            ({"max_shell_valley": 0},),
            ({"max_shell_valley": float("inf")},),
            ({"min_darkest_shell": "0.3"},),
            ({"min_darkest_shell": float("nan")},),
            ({"spacing": 0.0},),
            ({"spacing": (1.0, -1.0, 1.0)},),
            ({"spacing": "1mm"},),
        ]
    )
    def test_invalid_arguments(self, kwargs):
        with self.assertRaisesRegex(ValueError, "^CheckSkullStripped expects"):
            CheckSkullStripped(**kwargs)

    def test_invalid_input(self):
        with self.assertRaisesRegex(ValueError, "channel-first"):
            CheckSkullStripped()(np.zeros((5, 5)))
        with self.assertRaisesRegex(ValueError, "spacing"):
            CheckSkullStripped(spacing=(1.0, 1.0))(np.zeros((1, 5, 5, 5)))

    def test_constant_and_empty_images(self):
        check = CheckSkullStripped(mode="raise")
        check(np.zeros((1, 8, 8, 8), np.float32))  # all background (CheckImageValues reports all-zero images)
        check(np.full((1, 8, 8, 8), np.nan, np.float32))  # nothing finite to measure


class TestCheckSkullStrippedd(unittest.TestCase):
    def test_aliases(self):
        self.assertIs(CheckSkullStrippedD, CheckSkullStrippedd)
        self.assertIs(CheckSkullStrippedDict, CheckSkullStrippedd)

    def test_names_key_and_file_and_keeps_data(self):
        data = {"t1": _raw("/d/c_t1.nii.gz"), "t2": _stripped(), "seg": "untouched"}
        with self.assertWarns(SkullStrippingWarning) as caught:
            out = CheckSkullStrippedd(["t1", "t2"])(data)
        self.assertIn("t1 file '/d/c_t1.nii.gz' looks not skull-stripped", str(caught.warning))
        self.assertNotIn("t2", str(caught.warning).split("looks")[0])
        self.assertIs(out["t1"], data["t1"])
        self.assertIs(out["t2"], data["t2"])
        self.assertEqual(out["seg"], "untouched")

    def test_missing_keys(self):
        check = CheckSkullStrippedd(["t1", "flair"], mode="raise", allow_missing_keys=True)
        data = {"t2": _raw()}
        self.assertEqual(check(data), data)  # no checked key present: nothing to check
        with self.assertRaisesRegex(ValueError, "^flair file"):
            check({"flair": _raw()})
        with self.assertRaises(KeyError):
            CheckSkullStrippedd(["t1", "flair"], mode="raise")({"t1": _stripped()})

    def test_invalid_arguments(self):
        with self.assertRaisesRegex(ValueError, "^CheckSkullStripped expects mode"):
            CheckSkullStrippedd(["t1"], mode="loud")


if __name__ == "__main__":
    unittest.main()
