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
"""The MONAI Label app: study resolution, and a real ``monailabel start_server`` on 127.0.0.1 with a tiny trained
bundle and phantom studies, queried over REST."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from parameterized import parameterized

from monai_msgldm.apps.monailabel.lib.studies import (
    StudyError,
    parse_image_id,
    resolve_num_samples,
    resolve_study,
    resolve_targets,
)
from tests.apps.monailabel.server import LabelServer

__all__: list[str] = []

REPO = Path(__file__).resolve().parents[3]
BUNDLE_DIR = REPO / "bundles" / "brats_mri_msgldm"
HAS_MONAILABEL = importlib.util.find_spec("monailabel") is not None and importlib.util.find_spec("requests") is not None

IMAGES = {
    "BraTS20_001_t1": "/s/BraTS20_001_t1.nii.gz",
    "BraTS20_001_t1ce": "/s/BraTS20_001_t1ce.nii.gz",
    "BraTS20_001_t2": "/s/BraTS20_001_t2.nii.gz",
    "BraTS20_001_seg": "/s/BraTS20_001_seg.nii.gz",
    "BraTS-GLI-00002-000-t1n": "/s/BraTS-GLI-00002-000-t1n.nii.gz",
    "BraTS-GLI-00002-000-t2f": "/s/BraTS-GLI-00002-000-t2f.nii.gz",
}


class TestStudies(unittest.TestCase):
    @parameterized.expand(
        [
            ("BraTS20_001_t1ce", ("BraTS20_001", "t1ce")),
            ("BraTS20_001_t1", ("BraTS20_001", "t1")),
            ("BraTS-GLI-00002-000-t2f", ("BraTS-GLI-00002-000", "flair")),
            ("BraTS20_001_seg", None),
            ("BraTS20_001", None),
        ]
    )
    def test_parse_image_id(self, image_id, expected):
        self.assertEqual(parse_image_id(image_id), expected)

    @parameterized.expand([("BraTS20_001",), ("BraTS20_001_t2",), ("BraTS20_001_seg",)])
    def test_resolve_study_by_name_or_image(self, image):
        study, files = resolve_study(image, IMAGES)
        self.assertEqual(study, "BraTS20_001")
        self.assertEqual(list(files), ["t1", "t1ce", "t2"])
        self.assertEqual(files["t2"], "/s/BraTS20_001_t2.nii.gz")

    def test_resolve_study_2023_names(self):
        study, files = resolve_study("BraTS-GLI-00002-000", IMAGES)
        self.assertEqual((study, files), ("BraTS-GLI-00002-000", {"t1": IMAGES["BraTS-GLI-00002-000-t1n"],
                                                                   "flair": IMAGES["BraTS-GLI-00002-000-t2f"]}))  # fmt: skip

    @parameterized.expand([("nope", 404), ("", 400)])
    def test_unknown_study(self, image, status):
        with self.assertRaises(StudyError) as ctx:
            resolve_study(image, IMAGES)
        self.assertEqual(ctx.exception.status, status)

    @parameterized.expand(
        [
            (None, ["t1", "t2"], ["t1ce", "flair"]),
            ("", ["t1", "t2"], ["t1ce", "flair"]),
            ("flair", ["t1", "t2"], ["flair"]),
            ("t2", ["t1", "t2"], ["t2"]),  # present: synthesized from the others
            ("flair, t1ce", ["t1"], ["t1ce", "flair"]),
            (["t1ce"], ["t1"], ["t1ce"]),
        ]
    )
    def test_targets(self, target, present, expected):
        self.assertEqual(resolve_targets(target, present), expected)

    @parameterized.expand([(1, 1), ("4", 4), (" 2 ", 2)])
    def test_num_samples(self, value, expected):
        self.assertEqual(resolve_num_samples(value), expected)

    @parameterized.expand([(0,), ("two",), (True,), (-1,), (1.5,)])
    def test_num_samples_errors(self, value):
        with self.assertRaisesRegex(StudyError, "num_samples must be an integer >= 1"):
            resolve_num_samples(value)

    @parameterized.expand(
        [
            ("pd", ["t1"], "unknown target"),
            (None, ["t1", "t1ce", "t2", "flair"], "has all"),
            ("t1", ["t1"], "no input contrast left"),
        ]
    )
    def test_target_errors(self, target, present, msg):
        with self.assertRaisesRegex(StudyError, msg) as ctx:
            resolve_targets(target, present)
        self.assertEqual(ctx.exception.status, 400)


def _make_bundle_and_studies(root: str) -> tuple[str, str]:
    """A tiny bundle trained by the demo overlay (1-2 epochs per stage; its servable copy ``demo/bundle``) and a
    studies folder of two phantom subjects in the flat ``<study>_<modality>.nii.gz`` layout; the first study lacks
    FLAIR."""
    from monai.bundle import ConfigWorkflow

    from monai_msgldm.data.phantom import ensure_phantom_dataset
    from tests.bundles.test_demo import OVERRIDES

    data = ensure_phantom_dataset(cache_dir=root, num_subjects=3, resolution=4.0, seed=0)
    demo_dir = os.path.join(root, "demo")
    configs = [str(BUNDLE_DIR / "configs" / "train.json"), str(BUNDLE_DIR / "configs" / "demo.json")]
    wf = ConfigWorkflow(
        config_file=configs,
        meta_file=str(BUNDLE_DIR / "configs" / "metadata.json"),
        workflow_type="train",
        run_id="training",
        bundle_root=os.path.join(root, "bundle_root"),
        config_dir=str(BUNDLE_DIR / "configs"),
        phantom_cache_dir=root,
        demo_dir=demo_dir,
        **OVERRIDES,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    bundle = os.path.join(demo_dir, "bundle")  # the demo's servable copy: its sizes baked into inference.json

    studies = os.path.join(root, "studies")
    os.makedirs(studies)
    cases = sorted(c for c in os.listdir(data) if os.path.isdir(os.path.join(data, c)))
    for i, case in enumerate(cases[:2]):
        for name in sorted(os.listdir(os.path.join(data, case))):
            if name.endswith(".nii.gz") and not name.endswith("_seg.nii.gz"):
                if not (i == 0 and name.endswith("_flair.nii.gz")):
                    shutil.copy(os.path.join(data, case, name), studies)
    # a study whose T2 is on its own grid (2.5 x 2.5 x 5 mm) and moved 8 degrees and 4 mm: the app registers it
    from tests.bundles.test_clinical_input import _regrid, _rigid

    t1_path = os.path.join(data, cases[1], f"{cases[1]}_t1.nii.gz")
    shutil.copy(t1_path, os.path.join(studies, "ZY_grids_t1.nii.gz"))
    ref = nib.load(t1_path)
    centre = ref.affine[:3, :3] @ (np.asarray(ref.shape) / 2) + ref.affine[:3, 3]
    grid = np.diag([2.5, 2.5, 5.0, 1.0])
    grid[:3, 3] = ref.affine[:3, 3] - 5.0
    shape = tuple(int(n * 4.0 // z) + 4 for n, z in zip(ref.shape, (2.5, 2.5, 5.0)))
    t2_path = os.path.join(data, cases[1], f"{cases[1]}_t2.nii.gz")
    _regrid(
        t2_path, grid, shape, os.path.join(studies, "ZY_grids_t2.nii.gz"), moved=_rigid((0, 5, 6), (3, -2, 2), centre)
    )
    # a study whose T2 has NaN voxels (sorted after the phantom studies)
    t1 = nib.load(os.path.join(data, cases[0], f"{cases[0]}_t1.nii.gz"))
    nib.save(t1, os.path.join(studies, "ZZ_nan_t1.nii.gz"))
    broken = np.asarray(t1.dataobj, dtype=np.float32)
    broken[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(broken, t1.affine), os.path.join(studies, "ZZ_nan_t2.nii.gz"))
    return bundle, studies


@unittest.skipUnless(HAS_MONAILABEL, "needs the 'label' extra (monailabel); scripts/test.sh installs it")
class TestMONAILabelServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        try:
            cls.bundle, cls.studies = _make_bundle_and_studies(cls.tmp)
            cls.server = LabelServer(cls.bundle, cls.studies, cls.tmp)
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise
        cls.url, cls.info = cls.server.url, cls.server.info

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _infer(self, image: str, params: dict | None = None, output: str = "image"):
        return self.server.infer(image, params, output)

    def _study(self, index: int) -> str:
        names = sorted({f.rsplit("_", 1)[0] for f in os.listdir(self.studies) if f.endswith(".nii.gz")})
        return names[index]

    def test_info_lists_the_model(self):
        model = self.info["models"]["msgldm"]
        self.assertEqual(model["modalities"], ["t1", "t1ce", "t2", "flair"])
        self.assertIn("target", model["params"])

    def test_synthesizes_missing_flair_in_the_study_geometry(self):
        study = self._study(0)
        response = self._infer(study)
        self.assertEqual(response.status_code, 200, response.text[:500])
        path = os.path.join(self.tmp, "flair.nii.gz")
        with open(path, "wb") as f:
            f.write(response.content)
        out = nib.load(path)
        ref = nib.load(os.path.join(self.studies, f"{study}_t1.nii.gz"))
        self.assertEqual(out.shape, ref.shape)
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        self.assertEqual(out.get_data_dtype(), np.float32)
        volume = out.get_fdata()
        self.assertTrue(np.isfinite(volume).all())
        self.assertGreater(float(volume.std()), 0.0)
        for modality in ("t1", "t1ce", "t2"):
            given = nib.load(os.path.join(self.studies, f"{study}_{modality}.nii.gz")).get_fdata()
            self.assertFalse(np.allclose(volume, given), modality)
            scaled = (given - given.min()) / max(float(np.ptp(given)), 1e-6) * 2 - 1
            self.assertFalse(np.allclose(volume, scaled, atol=1e-3), modality)

    def test_contrasts_on_different_grids_are_registered(self):
        response = self._infer("ZY_grids", {"target": "flair"}, output="json")
        self.assertEqual(response.status_code, 200, response.text[:500])
        self.assertEqual(response.json()["inputs"], ["t1", "t2"])
        response = self._infer("ZY_grids", {"target": "flair"})
        self.assertEqual(response.status_code, 200, response.text[:500])
        out = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(response.content))
        ref = nib.load(os.path.join(self.studies, "ZY_grids_t1.nii.gz"))  # the reference: the T1's grid
        self.assertEqual(out.shape, ref.shape)
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        self.assertTrue(np.isfinite(out.get_fdata()).all())

    def test_json_result_and_present_target(self):
        response = self._infer(self._study(1), {"target": "t2"}, output="json")
        self.assertEqual(response.status_code, 200, response.text[:500])
        result = response.json()
        self.assertEqual(result["synthesized"], ["t2"])
        self.assertEqual(result["inputs"], ["t1", "t1ce", "flair"])

    def test_two_targets_give_a_4d_volume(self):
        study = self._study(0)
        response = self._infer(study, {"target": "flair,t2"})
        self.assertEqual(response.status_code, 200, response.text[:500])
        out = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(response.content))
        ref = nib.load(os.path.join(self.studies, f"{study}_t1.nii.gz"))
        self.assertEqual(out.shape, (*ref.shape, 2))

    def test_num_samples_adds_the_std_map(self):
        """``num_samples=2``: a 4D answer, the mean synthesis then its std map (``channels`` names them). Sample 0 is
        the plain seeded answer, so ``std >= sqrt(2) |plain - mean|`` on the study's grid (equality before the
        linear inverse resampling; the clipping of the synthesis is 1-Lipschitz)."""
        study = self._study(0)
        response = self._infer(study, {"target": "flair", "num_samples": 2}, output="json")
        self.assertEqual(response.status_code, 200, response.text[:500])
        self.assertEqual(response.json()["channels"], ["flair", "flair_std"])
        response = self._infer(study, {"target": "flair", "num_samples": 2})
        self.assertEqual(response.status_code, 200, response.text[:500])
        out = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(response.content)).get_fdata()
        plain_response = self._infer(study, {"target": "flair"})
        plain = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(plain_response.content)).get_fdata()
        ref = nib.load(os.path.join(self.studies, f"{study}_t1.nii.gz"))
        self.assertEqual(out.shape, (*ref.shape, 2))
        mean, std = out[..., 0], out[..., 1]
        self.assertTrue(np.isfinite(std).all() and std.min() >= 0.0 and std.max() > 1e-3)
        self.assertTrue(np.all(std >= np.sqrt(2.0) * np.abs(plain - mean) - 1e-4))

    def test_concurrent_requests(self):
        study = self._study(0)
        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(lambda _: self._infer(study), range(10)))
        self.assertEqual([r.status_code for r in responses], [200] * 10)
        first = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(responses[0].content)).get_fdata()
        for r in responses[1:]:
            other = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(r.content)).get_fdata()
            np.testing.assert_allclose(other, first, atol=1e-5)  # seeded sampling: the same answer every time

    @parameterized.expand(
        [
            ("unknown study", "NoSuchStudy", None, 404, "no study 'NoSuchStudy'"),
            ("unknown modality", 0, {"target": "pd"}, 400, "unknown target modality"),
            ("nothing missing", 1, None, 400, "name the modality to synthesize"),
            ("bad num_samples", 0, {"num_samples": "two"}, 400, "num_samples must be an integer >= 1"),
            ("zero num_samples", 0, {"num_samples": 0}, 400, "num_samples must be an integer >= 1"),
            ("NaN voxels", "ZZ_nan", None, 422, "non-finite voxels (1 NaN, 0 Inf)"),
        ]
    )
    def test_bad_requests_get_4xx_and_server_keeps_serving(self, _, study, params, status, message):
        import requests

        image = self._study(study) if isinstance(study, int) else study
        response = self._infer(image, params)
        self.assertEqual(response.status_code, status, response.text[:500])
        self.assertIn(message, response.json()["detail"])
        self.assertEqual(requests.get(f"{self.url}/info/", timeout=10).status_code, 200)


if __name__ == "__main__":
    unittest.main()
