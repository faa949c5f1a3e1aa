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
"""Clinical input through the real ``inference.json``: voxel size, orientation, field of view and contrasts on
different grids, checked voxel by voxel with a stand-in network that returns a given contrast as its "synthesis"
(so the output must overlay that contrast exactly where it was acquired)."""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn
from monai.bundle import ConfigWorkflow
from parameterized import parameterized
from scipy.spatial.transform import Rotation

from monai_msgldm.constants import MODALITIES
from monai_msgldm.data.phantom import generate_phantom_dataset
from monai_msgldm.transforms import SkullStrippingWarning, resample_onto_grid
from tests.transforms.test_skull_check import add_skull

__all__ = ["CopyContrastNet"]

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
CONFIG = BUNDLE_DIR / "configs" / "inference.json"
PIXDIM = 2.0  # the working grid of this test: the phantom's own 2 mm


class CopyContrastNet(nn.Module):
    """A stand-in synthesis network: every output channel is the input channel of ``source`` (a given contrast),
    so a "synthesized" contrast is that contrast, moved through every spatial step of the pipeline and back."""

    num_modalities = len(MODALITIES)
    spatial_dims = 2
    size_divisor = 1

    def __init__(self, source: str = "t1") -> None:
        super().__init__()
        self.source = MODALITIES.index(source)

    def forward(self, images: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        return images[:, self.source : self.source + 1].expand_as(images).clone()


def setUpModule() -> None:
    global _TMP, _FILES, _MODEL
    _TMP = tempfile.mkdtemp()
    case = generate_phantom_dataset(os.path.join(_TMP, "data"), num_subjects=1, resolution=PIXDIM, progress=False)[0]
    _FILES = {m: os.path.join(case, f"{os.path.basename(case)}_{m}.nii.gz") for m in MODALITIES}
    _MODEL = os.path.join(_TMP, "model.pt")
    torch.save(CopyContrastNet().state_dict(), _MODEL)


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


def _load(path: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _save(data: np.ndarray, affine: np.ndarray, path: str) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
    return path


def _rigid(degrees: tuple[float, float, float], shift_mm: tuple[float, float, float], centre: np.ndarray) -> np.ndarray:
    """A 4x4 RAS rotation about ``centre`` followed by a shift."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    m[:3, 3] = centre - m[:3, :3] @ centre + np.asarray(shift_mm)
    return m


def _regrid(path: str, affine: np.ndarray, shape: tuple[int, ...], out: str, moved: np.ndarray | None = None) -> str:
    """The image of ``path`` resampled onto the grid (affine, shape); with ``moved`` (a RAS world transform applied
    to the object) the object moves in the world too."""
    data, src_affine = _load(path)
    transform = None if moved is None else np.linalg.inv(moved)  # output world -> input world
    img = resample_onto_grid(data[None], affine, shape, transform=transform, fill_value=0.0, img_affine=src_affine)
    return _save(np.clip(np.asarray(img[0]), 0, None), affine, out)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


class TestClinicalInput(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=_TMP)
        self.out = os.path.join(self.dir, "out")

    def _run(self, source: str = "t1", **overrides) -> ConfigWorkflow:
        settings = {
            "network_def": {"_target_": f"{__name__}.CopyContrastNet", "source": source},
            "sampler": {"_target_": "monai_msgldm.inferers.RegressionSynthesisInferer", "amp": False},
            "pixdim": [PIXDIM] * 3,
            "spatial_size": 96,
            "slice_batch_size": 64,
            "preview": False,
        }
        wf = ConfigWorkflow(
            config_file=str(CONFIG),
            workflow_type="infer",
            bundle_root=self.dir,
            model_path=_MODEL,
            output_dir=self.out,
            **{**settings, **overrides},
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        return wf

    def _output(self, case: str, modality: str = "flair", postfix: str = "synth") -> nib.Nifti1Image:
        return nib.load(os.path.join(self.out, case, f"{case}_{modality}_{postfix}.nii.gz"))

    def _variant(self, kind: str) -> str:
        """The phantom's T1 as a clinic might give it."""
        t1 = _FILES["t1"]
        data, affine = _load(t1)
        out = os.path.join(self.dir, f"{kind}_t1.nii.gz")
        if kind == "lps":  # same voxels, stored L->R / P->A
            flip = np.diag([-1.0, -1.0, 1.0, 1.0])
            flip[:3, 3] = [data.shape[0] - 1, data.shape[1] - 1, 0]
            return _save(data[::-1, ::-1], affine @ flip, out)
        if kind == "oblique":  # the same voxels on a grid rotated 20 degrees in the scanner
            centre = affine[:3, :3] @ (np.asarray(data.shape) / 2) + affine[:3, 3]
            return _save(data, _rigid((20.0, 0.0, 10.0), (0.0, 0.0, 0.0), centre) @ affine, out)
        if kind == "anisotropic":  # 0.9 x 0.9 x 5 mm axial, as a clinical FLAIR
            extent = np.asarray(data.shape) * PIXDIM
            grid = np.diag([0.9, 0.9, 5.0, 1.0])
            grid[:3, 3] = affine[:3, 3]
            return _regrid(t1, grid, tuple(int(e // s) for e, s in zip(extent, (0.9, 0.9, 5.0))), out)
        if kind == "large_fov":  # a 256 x 256 matrix (512 mm) around the head
            big = np.zeros((256, 256, data.shape[2]), dtype=np.float32)
            big[60 : 60 + data.shape[0], 70 : 70 + data.shape[1]] = data
            shifted = affine.copy()
            shifted[:3, 3] -= affine[:3, :3] @ np.array([60, 70, 0])
            return _save(big, shifted, out)
        raise ValueError(kind)

    @parameterized.expand([("lps",), ("oblique",), ("anisotropic",), ("large_fov",)])
    def test_output_overlays_the_reference(self, kind):
        path = self._variant(kind)
        self._run(t1=path, case_name=kind)
        reference = nib.load(path)
        out = self._output(kind)
        self.assertEqual(out.shape, reference.shape)
        np.testing.assert_allclose(out.affine, reference.affine, atol=1e-4)
        self.assertEqual(out.get_data_dtype(), np.float32)
        truth = np.asarray(reference.dataobj, dtype=np.float32)
        # LPS storage, the oblique affine and the 256 x 256 matrix are undone exactly (orientation flips, a crop and
        # pad; Spacingd keeps the acquisition's direction cosines at the same voxel size): measured 1.0000. The
        # 0.9 x 0.9 x 5 mm grid goes to 2 mm and back through two linear interpolations: measured 0.9994. A one-voxel
        # shift or a flipped axis gives < 0.9 on this phantom
        self.assertGreater(_corr(out.get_fdata(), truth), 0.9999 if kind != "anisotropic" else 0.995, kind)

    def test_two_contrasts_on_different_grids(self):
        """T2 on its own grid (3 x 3 x 4 mm) and moved 9.4 degrees and 5.4 mm in the scanner: registered to the T1 and
        written on the T1's grid, the copied T2 overlays the phantom's true T2 there."""
        t1_data, t1_affine = _load(_FILES["t1"])
        centre = t1_affine[:3, :3] @ (np.asarray(t1_data.shape) / 2) + t1_affine[:3, 3]
        grid = np.diag([3.0, 3.0, 4.0, 1.0])
        grid[:3, 3] = t1_affine[:3, 3] - 10.0
        shape = tuple(int(s * PIXDIM // z) + 6 for s, z in zip(t1_data.shape, (3.0, 3.0, 4.0)))
        moved = _rigid((0.0, 5.0, 8.0), (4.0, -3.0, 2.0), centre)
        t2 = _regrid(_FILES["t2"], grid, shape, os.path.join(self.dir, "moved_t2.nii.gz"), moved=moved)
        truth = np.asarray(nib.load(_FILES["t2"]).dataobj, dtype=np.float32)

        self._run(source="t2", t1=_FILES["t1"], t2=t2, case_name="registered", also_on=["t2"])
        out = self._output("registered")
        self.assertEqual(out.shape, t1_data.shape)
        np.testing.assert_allclose(out.affine, t1_affine, atol=1e-4)
        registered = _corr(out.get_fdata(), truth)
        # also written on the T2's own grid: there it overlays the T2 file as given
        on_t2 = self._output("registered", postfix="synth_on_t2")
        np.testing.assert_allclose(on_t2.affine, nib.load(t2).affine, atol=1e-4)
        on_own = _corr(on_t2.get_fdata(), nib.load(t2).get_fdata())

        self._run(source="t2", t1=_FILES["t1"], t2=t2, case_name="unregistered", register=False)
        unregistered = _corr(self._output("unregistered").get_fdata(), truth)
        # 3 x 3 x 4 mm -> 2 mm and back: 0.976 when aligned, 0.996 back on the T2's own grid (measured); the scanner
        # coordinates alone leave the 9 degree / 5 mm motion in: 0.874 on this smooth phantom
        self.assertGreater(registered, 0.95)
        self.assertGreater(on_own, 0.98)
        self.assertLess(unregistered, registered - 0.08)

    def test_brain_larger_than_the_field_of_view(self):
        with self.assertRaises(Exception) as cm:
            self._run(t1=_FILES["t1"], case_name="big", spatial_size=48)
        chain, e = [], cm.exception
        while e is not None:
            chain.append(str(e))
            e = e.__cause__ or e.__context__
        message = next((m for m in chain if "field of view" in m), "")
        self.assertIn("larger than the model's field of view of 48 x 48 voxels (96 x 96 mm)", message)
        self.assertIn(_FILES["t1"], message)
        self.assertFalse(os.path.exists(os.path.join(self.out, "big")))

    def test_not_skull_stripped_input_warns_with_what_to_do(self):
        data, affine = _load(_FILES["t1"])
        head = add_skull(data, data > 0, (PIXDIM,) * 3, "t1", air="noise")
        path = _save(head, affine, os.path.join(self.dir, "head_t1.nii.gz"))
        with self.assertWarns(SkullStrippingWarning) as cm:
            self._run(t1=path, case_name="head", field_of_view="crop")
        message = str(cm.warning)
        self.assertIn(path, message)
        self.assertIn("SynthStrip", message)

    def test_registration_that_cannot_converge(self):
        noise = np.random.default_rng(0).uniform(0, 1, nib.load(_FILES["t1"]).shape).astype(np.float32)
        grid = nib.load(_FILES["t1"]).affine.copy()
        grid[:3, 3] += 1.5  # another grid: registration runs
        t2 = _save(noise, grid, os.path.join(self.dir, "noise_t2.nii.gz"))
        with self.assertRaises(Exception) as cm:
            self._run(t1=_FILES["t1"], t2=t2, case_name="noise")
        chain, e = [], cm.exception
        while e is not None:
            chain.append(str(e))
            e = e.__cause__ or e.__context__
        self.assertTrue(any("could not register 't2'" in m and "max_metric" in m for m in chain), chain[-1][:500])
        self.assertFalse(os.path.exists(os.path.join(self.out, "noise")))


if __name__ == "__main__":
    unittest.main()
