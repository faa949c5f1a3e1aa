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
"""Splitting a synthesis from its std map (``ModalitySynthesisInferer(return_std=True)``)."""

from __future__ import annotations

import unittest

import numpy as np
import torch
from monai.data import MetaTensor
from parameterized import parameterized

from monai_msgldm.transforms import SplitSynthesisStd, SplitSynthesisStdd


class TestSplitSynthesisStd(unittest.TestCase):
    @parameterized.expand([("tensor", torch.arange), ("numpy", np.arange)])
    def test_channel_first(self, _, arange):
        img = arange(8 * 3 * 2).reshape(8, 3, 2)
        mean, std = SplitSynthesisStd(4)(img)
        np.testing.assert_array_equal(np.asarray(mean), np.asarray(img[:4]))
        np.testing.assert_array_equal(np.asarray(std), np.asarray(img[4:]))

    def test_batch_and_plain_synthesis(self):
        img = torch.randn(2, 6, 5, 5)
        mean, std = SplitSynthesisStd(3, channel_dim=1)(img)
        torch.testing.assert_close(mean, img[:, :3], rtol=0, atol=0)
        torch.testing.assert_close(std, img[:, 3:], rtol=0, atol=0)
        plain = torch.randn(2, 3, 5, 5)
        out, none = SplitSynthesisStd(3, channel_dim=1)(plain)
        self.assertIs(out, plain)
        self.assertIsNone(none)

    def test_dict_keeps_meta_and_adds_nothing_without_std(self):
        img = MetaTensor(torch.randn(8, 4, 4), meta={"t1_filename_or_obj": "a.nii.gz"})
        out = SplitSynthesisStdd("pred", std_key="pred_std")({"pred": img, "case": "c"})
        torch.testing.assert_close(out["pred_std"].as_tensor(), img[4:].as_tensor(), rtol=0, atol=0)
        self.assertEqual(out["pred"].meta["t1_filename_or_obj"], "a.nii.gz")
        self.assertEqual(out["pred_std"].meta["t1_filename_or_obj"], "a.nii.gz")
        plain = SplitSynthesisStdd("pred")({"pred": torch.randn(4, 4, 4)})
        self.assertNotIn("pred_std", plain)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, r"4 channels \(a synthesis\) or 8"):
            SplitSynthesisStd(4)(torch.zeros(5, 2, 2))
        with self.assertRaisesRegex(ValueError, "num_modalities >= 1"):
            SplitSynthesisStd(0)
        with self.assertRaisesRegex(ValueError, "channel_dim 0 or 1"):
            SplitSynthesisStd(4, channel_dim=2)
        with self.assertRaisesRegex(ValueError, "std_key other than"):
            SplitSynthesisStdd("pred", std_key="pred")
        with self.assertRaisesRegex(ValueError, "exactly one key"):
            SplitSynthesisStdd(["a", "b"])


if __name__ == "__main__":
    unittest.main()
