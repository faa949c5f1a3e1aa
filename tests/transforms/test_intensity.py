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
import warnings

import torch
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityRangePercentiles
from parameterized import parameterized

from monai_msgldm.transforms import ScalePresentModalities, ScalePresentModalitiesd


class TestScalePresentModalities(unittest.TestCase):
    @parameterized.expand([((8, 8),), ((6, 8, 5),)])
    def test_present_channels_match_monai_and_absent_are_filled_without_warning(self, spatial):
        torch.manual_seed(0)
        img = torch.rand(4, *spatial) * 500
        img[1] = 0.0  # an absent modality: a constant fill channel
        available = torch.tensor([True, False, True, True])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # MONAI's "Divide by zero (a_min == a_max)" would raise here
            out = ScalePresentModalities(0.5, 99.5, -1.0, 1.0)(img, available)
        reference = ScaleIntensityRangePercentiles(0.5, 99.5, -1.0, 1.0, clip=True, channel_wise=True)(img[[0, 2, 3]])
        torch.testing.assert_close(torch.as_tensor(out)[[0, 2, 3]], torch.as_tensor(reference))
        self.assertTrue(bool((out[1] == -1.0).all()))

    def test_dict_version_keeps_meta_and_reads_the_mask(self):
        img = MetaTensor(torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4), meta={"x": 1})
        out = ScalePresentModalitiesd("image", fill_value=-3.0)({"image": img, "available": torch.tensor([0, 1])})
        self.assertIsInstance(out["image"], MetaTensor)
        self.assertEqual(out["image"].meta["x"], 1)
        self.assertTrue(bool((out["image"][0] == -3.0).all()))
        self.assertEqual((float(out["image"][1].min()), float(out["image"][1].max())), (-1.0, 1.0))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "percentiles"):
            ScalePresentModalities(50, 10)
        with self.assertRaisesRegex(ValueError, r"shape \(2,\)"):
            ScalePresentModalities()(torch.rand(2, 4, 4), torch.tensor([True]))
        with self.assertRaisesRegex(ValueError, "available_key 'available'"):
            ScalePresentModalitiesd("image")({"image": torch.rand(2, 4, 4)})


if __name__ == "__main__":
    unittest.main()
