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
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from parameterized import parameterized

from monai_msgldm.inferers import load_model_weights, require_checkpoint

__all__: list[str] = []


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def _assert_same(test: unittest.TestCase, a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        test.assertEqual(ka, kb)
        torch.testing.assert_close(va, vb, rtol=0, atol=0)


class TestModelLoading(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.path = os.path.join(self._tmp.name, "model.pt")
        self.src = _net(0)

    def tearDown(self):
        self._tmp.cleanup()

    @parameterized.expand([("plain_state_dict", False), ("saver_checkpoint", True)])
    def test_loads_strictly(self, _, wrapped):
        state = self.src.state_dict()
        torch.save({"model": state, "trainer": {"epoch": 3}} if wrapped else state, self.path)
        dst = _net(1)
        self.assertIs(load_model_weights(dst, Path(self.path)), dst)
        _assert_same(self, dst, self.src)

    def test_attached_to_an_engine(self):  # the inference.json pattern: loaded when the evaluator starts
        torch.save(self.src.state_dict(), self.path)
        dst = _net(1)
        engine = Engine(lambda engine, batch: None)
        CheckpointLoader(load_path=require_checkpoint(self.path), load_dict={"model": dst}).attach(engine)
        self.assertFalse(torch.equal(dst[0].weight, self.src[0].weight))
        engine.run([0], max_epochs=1)
        _assert_same(self, dst, self.src)

    def test_missing_file(self):
        missing = os.path.join(self._tmp.name, "nowhere.pt")
        with self.assertRaisesRegex(FileNotFoundError, f"{missing} does not exist.*train_diffusion.json.*--model_path"):
            load_model_weights(_net(1), missing)
        with self.assertRaisesRegex(FileNotFoundError, "written by the structure stage.*--structure_ckpt"):
            require_checkpoint(missing, option="structure_ckpt", written_by="the structure stage")
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            require_checkpoint(self._tmp.name)  # a folder is not a checkpoint
        torch.save({}, self.path)
        self.assertEqual(require_checkpoint(Path(self.path)), self.path)

    def test_wrong_architecture(self):
        torch.save(torch.nn.Linear(5, 2).state_dict(), self.path)
        with self.assertRaises(RuntimeError):  # strict: not a partial load
            load_model_weights(_net(1), self.path)


if __name__ == "__main__":
    unittest.main()
