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

import unittest

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Flipd, Invertd, Rotate90d, SpatialPad
from parameterized import parameterized

from monai_msgldm.constants import MODALITIES
from monai_msgldm.transforms import StackModalitiesD, StackModalitiesd, StackModalitiesDict

__all__: list[str] = []

AFFINE = torch.tensor([[-1.0, 0.0, 0.0, 5.0], [0.0, -1.2, 0.0, 3.0], [0.0, 0.0, 2.5, -4.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (1, 6, 5, 4)


def _modality(value: float, affine: torch.Tensor = AFFINE, shape=SHAPE, name: str = "") -> MetaTensor:
    data = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape) + value
    return MetaTensor(data, affine=affine.clone(), meta={"filename_or_obj": name})


class TestStackModalitiesd(unittest.TestCase):
    def test_aliases(self):
        self.assertIs(StackModalitiesD, StackModalitiesd)
        self.assertIs(StackModalitiesDict, StackModalitiesd)

    @parameterized.expand([(("t1", "t1ce", "t2", "flair"),), (("t2",),), (("t1ce", "flair"),)])
    def test_stack_and_fill(self, present):
        data = {m: _modality(100.0 * (i + 1), name=f"/data/{m}.nii.gz") for i, m in enumerate(MODALITIES)}
        data = {m: v for m, v in data.items() if m in present}
        data["seg"] = "untouched"
        out = StackModalitiesd(fill_value=-7.0)(data)
        image = out["image"]
        self.assertIsInstance(image, MetaTensor)
        self.assertEqual(tuple(image.shape), (4, *SHAPE[1:]))
        self.assertEqual(out["available"].dtype, torch.bool)
        self.assertEqual(out["available"].tolist(), [m in present for m in MODALITIES])
        for c, m in enumerate(MODALITIES):
            if m in present:
                torch.testing.assert_close(image[c].as_tensor(), data[m][0].as_tensor(), rtol=0, atol=0)
                self.assertEqual(image.meta[f"{m}_filename_or_obj"], f"/data/{m}.nii.gz")
            else:
                self.assertTrue(bool((image[c] == -7.0).all()))
                self.assertEqual(image.meta[f"{m}_filename_or_obj"], "")
        torch.testing.assert_close(image.affine, AFFINE.double())
        self.assertEqual(image.meta["filename_or_obj"], f"/data/{present[0]}.nii.gz")
        self.assertEqual(out["seg"], "untouched")

    def test_keeps_applied_operations_and_inverts(self):
        pad = SpatialPad(spatial_size=(8, 5, 4))
        data = {m: pad(_modality(float(i))) for i, m in enumerate(("t1", "t2"))}
        out = StackModalitiesd(keys=("t1", "t2", "flair"))(data)
        self.assertEqual([op["class"] for op in out["image"].applied_operations], ["SpatialPad"])
        # later geometric transforms on the stacked image are inverted by Invertd
        stack = StackModalitiesd(keys=("t1", "t2"))
        pipeline = Compose([stack, Flipd("image", spatial_axis=0), Rotate90d("image", k=1, spatial_axes=(0, 1))])
        raw = {"t1": _modality(0.0), "t2": _modality(50.0)}
        expected = stack(raw)["image"]
        result = pipeline(raw)
        self.assertEqual(tuple(result["image"].shape), (2, 5, 6, 4))
        inverted = Invertd(keys="image", transform=pipeline, orig_keys="image")(result)["image"]
        torch.testing.assert_close(inverted.as_tensor(), expected.as_tensor(), rtol=0, atol=0)
        torch.testing.assert_close(inverted.affine, AFFINE.double())

    def test_numpy_inputs(self):
        data = {"t1": np.ones(SHAPE, dtype=np.float32), "flair": np.full(SHAPE, 3.0, dtype=np.float32)}
        out = StackModalitiesd()(data)
        self.assertIsInstance(out["image"], torch.Tensor)
        expected = np.stack([np.ones(SHAPE[1:]), np.zeros(SHAPE[1:]), np.zeros(SHAPE[1:]), np.full(SHAPE[1:], 3.0)])
        np.testing.assert_array_equal(out["image"].numpy(), expected)

    def test_shape_mismatch_names_both_keys(self):
        data = {"t1": _modality(0.0), "t2": _modality(0.0, shape=(1, 6, 5, 5))}
        with self.assertRaisesRegex(
            ValueError, r"one voxel grid.*spatial shapes differ: 't1' has \(6, 5, 4\), 't2' has"
        ):
            StackModalitiesd()(data)
        named = {"t1": _modality(0.0, name="/d/c_t1.nii.gz"), "t2": _modality(0.0, shape=(1, 6, 5, 5), name="/d/t2")}
        with self.assertRaisesRegex(ValueError, r"'t1' \('/d/c_t1.nii.gz'\) has .*'t2' \('/d/t2'\) has \(6, 5, 5\)"):
            StackModalitiesd()(named)

    def test_affine_mismatch_names_both_keys(self):
        shifted = AFFINE.clone()
        shifted[0, 3] += 0.5
        with self.assertRaisesRegex(
            ValueError, r"affines differ \(max abs difference 0.5 > atol 0.0001\): 't1ce' and 'flair'"
        ):
            StackModalitiesd()({"t1ce": _modality(0.0), "flair": _modality(0.0, affine=shifted)})
        nearly = AFFINE.clone()
        nearly[0, 3] += 1e-5
        out = StackModalitiesd()({"t1ce": _modality(0.0), "flair": _modality(0.0, affine=nearly)})
        self.assertEqual(out["available"].tolist(), [False, True, False, True])

    def test_check_keys(self):
        seg = _modality(0.0, shape=(1, 6, 5, 3))
        with self.assertRaisesRegex(ValueError, "'t1' has .*'seg' has"):
            StackModalitiesd(check_keys="seg")({"t1": _modality(0.0), "seg": seg})
        StackModalitiesd()({"t1": _modality(0.0), "seg": seg})  # not checked unless asked

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "at least one of the keys"):
            StackModalitiesd()({"seg": _modality(0.0)})
        with self.assertRaisesRegex(ValueError, "single-channel.*'t2'"):
            StackModalitiesd()({"t2": _modality(0.0, shape=(2, 6, 5, 4))})
        with self.assertRaises(KeyError):
            StackModalitiesd(allow_missing_keys=False)({"t1": _modality(0.0)})
        with self.assertRaisesRegex(ValueError, "distinct"):
            StackModalitiesd(keys=("t1", "image"))


if __name__ == "__main__":
    unittest.main()
