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

import os
import tempfile
import unittest

import torch

from monai_msgldm.engines import load_stage_checkpoint


class TestLoadStageCheckpoint(unittest.TestCase):
    def test_loads_strictly(self):
        src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "structure.pt")
            torch.save({"model": src.state_dict(), "trainer": {}}, path)
            self.assertIs(load_stage_checkpoint(dst, path, "structure"), dst)
        torch.testing.assert_close(dst.weight, src.weight)

    def test_errors(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "autoencoder.pt")
            with self.assertRaisesRegex(FileNotFoundError, r"autoencoder.pt.*--autoencoder_ckpt"):
                load_stage_checkpoint(torch.nn.Linear(3, 2), path, "autoencoder")
            torch.save({"state": {}}, path)
            with self.assertRaisesRegex(KeyError, "no key 'model'"):
                load_stage_checkpoint(torch.nn.Linear(3, 2), path, "autoencoder")
            torch.save({"model": torch.nn.Linear(4, 2).state_dict()}, path)
            with self.assertRaises(RuntimeError):  # strict: a wrong architecture is an error, not a partial load
                load_stage_checkpoint(torch.nn.Linear(3, 2), path, "autoencoder")


if __name__ == "__main__":
    unittest.main()
