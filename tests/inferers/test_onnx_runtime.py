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
"""The ONNX Runtime encoder: the same values as PyTorch, one export for every shape, a new export after new weights,
PyTorch wherever gradients, training mode or autocast need it (the ``onnx`` extra, installed by scripts/test.sh)."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import unittest
from unittest import mock

import torch
from parameterized import parameterized

import monai_msgldm.inferers.onnx_runtime as onnx_runtime
from monai_msgldm.inferers import (
    ModalitySynthesisInferer,
    MultiContrastDiffusionInferer,
    OnnxRuntimeForward,
    weights_digest,
    with_onnx_runtime_encoder,
)
from tests.inferers.test_diffusion import ddim
from tests.networks.nets.test_msgldm import tiny_msgldm
from tests.networks.nets.test_plain_ldm import _tiny as tiny_plain_ldm


def _runtime(net) -> OnnxRuntimeForward:
    return net.autoencoder.model.encoder.__dict__["forward"]


class TestOnnxRuntimeEncoder(unittest.TestCase):
    @parameterized.expand([("msgldm", lambda: tiny_msgldm(hybrid_condition=True)), ("plain", tiny_plain_ldm)])
    def test_same_values_one_export_for_every_shape(self, _, make_net):
        torch.manual_seed(0)
        net = make_net().eval()
        batches = [
            (torch.rand(2, 4, 16, 24) * 2 - 1, torch.tensor([[True, True, False, True]] * 2)),
            (torch.rand(3, 4, 32, 8) * 2 - 1, torch.tensor([[False, True, False, False]] * 3)),
        ]
        with torch.no_grad():
            expected = [net.given_latents(x, a) for x, a in batches]
        keys = list(net.state_dict())
        self.assertIs(with_onnx_runtime_encoder(net), net)
        self.assertEqual(list(net.state_dict()), keys)  # the checkpoint still loads
        with torch.inference_mode():
            got = [net.given_latents(x, a) for x, a in batches]
        for g, e in zip(got, expected):
            self.assertIs(type(g), torch.Tensor)
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
        self.assertEqual(_runtime(net).exports, 1)  # batch and spatial sizes are dynamic
        with_onnx_runtime_encoder(net)  # applying it twice keeps the one session
        self.assertEqual(_runtime(net).exports, 1)

    def test_a_list_of_outputs(self):
        """A module with several outputs of other sizes than its input (a structure encoder's multiscale features)
        returns the same list as PyTorch, at two input sizes from one export."""
        torch.manual_seed(0)
        encoder = tiny_msgldm().structure_net.structure_encoders[0].eval()
        inputs = [torch.rand(2, 1, 16, 24), torch.rand(1, 1, 32, 8)]
        with torch.no_grad():
            expected = [encoder(x) for x in inputs]
            runtime = OnnxRuntimeForward(encoder)
            got = [runtime(x) for x in inputs]
        self.assertEqual(runtime.exports, 1)
        for g, e in zip(got, expected):
            self.assertIsInstance(g, list)
            self.assertEqual(len(g), len(e))
            for a, b in zip(g, e):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)

    def test_new_weights_are_exported_again(self):
        """A checkpoint loaded after the first call (in place: the version counters move) is exported again, as is
        a deep copy (its session is not copied)."""
        torch.manual_seed(0)
        net = with_onnx_runtime_encoder(tiny_msgldm().eval())
        x, available = torch.rand(2, 4, 16, 16) * 2 - 1, torch.tensor([[True, False, True, True]] * 2)
        with torch.no_grad():
            net.given_latents(x, available)
            state = {k: v * 1.05 if v.is_floating_point() else v for k, v in net.state_dict().items()}
            net.load_state_dict(state)
            got = net.given_latents(x, available)
            twin = copy.deepcopy(net)
            from_copy = twin.given_latents(x, available)
        self.assertEqual(_runtime(net).exports, 2)
        self.assertIs(_runtime(twin).module, twin.autoencoder.model.encoder)
        self.assertEqual(_runtime(twin).exports, 3)  # its own export, after the two it was copied with
        reference = tiny_msgldm().eval()
        reference.load_state_dict(state)
        with torch.no_grad():
            expected = reference.given_latents(x, available)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(from_copy, expected, rtol=1e-4, atol=1e-5)

    def test_pytorch_where_it_is_needed(self):
        """Gradients, training mode and autocast run the module's own forward (nothing exported); ``del forward``
        restores it for good."""
        torch.manual_seed(0)
        net = with_onnx_runtime_encoder(tiny_msgldm().eval())
        encoder = net.autoencoder.model.encoder
        x = torch.rand(2, 1, 16, 16)
        self.assertTrue(encoder(x).requires_grad)  # gradients enabled
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            encoder(x)
        encoder.train()
        with torch.no_grad():
            encoder(x)
        self.assertEqual(_runtime(net).exports, 0)
        encoder.eval()
        with torch.no_grad():
            encoder(x)
        self.assertEqual(_runtime(net).exports, 1)
        del encoder.forward
        self.assertNotIn("forward", encoder.__dict__)

    def test_synthesis_matches_pytorch(self):
        """A whole seeded volume synthesis (foreground crop, guidance, hybrid condition) with the encoder in ONNX
        Runtime equals the PyTorch one to float32 rounding."""
        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=True).eval()
        vol = torch.rand(1, 4, 32, 32, 3) * 2 - 1
        inferer = ModalitySynthesisInferer(
            MultiContrastDiffusionInferer(ddim(), 2, known_contrast_guidance=True),
            2,
            progress=False,
            crop_foreground=True,
        )
        expected = inferer(vol, net, ["t1", "t2", "flair"])
        got = inferer(vol, with_onnx_runtime_encoder(net), ["t1", "t2", "flair"])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        self.assertEqual(_runtime(net).exports, 1)

    def test_disabled_and_errors(self):
        net = tiny_msgldm()
        self.assertIs(with_onnx_runtime_encoder(net, enabled=False), net)
        self.assertNotIn("forward", net.autoencoder.model.encoder.__dict__)
        wrapped = with_onnx_runtime_encoder(torch.nn.DataParallel(net), threads=1, memory_arena=False)
        self.assertIsInstance(wrapped, torch.nn.DataParallel)
        self.assertEqual((_runtime(net).threads, _runtime(net).memory_arena), (1, False))
        x = torch.rand(1, 1, 8, 8)
        with torch.no_grad():
            expected = type(net.autoencoder.model.encoder).forward(net.autoencoder.model.encoder, x)
            torch.testing.assert_close(net.autoencoder.model.encoder(x), expected, rtol=1e-4, atol=1e-5)
        with self.assertRaisesRegex(ValueError, "autoencoder.model.encoder"):
            with_onnx_runtime_encoder(torch.nn.Linear(2, 2))
        with self.assertRaisesRegex(ValueError, "threads to be None or an int >= 1"):
            OnnxRuntimeForward(torch.nn.Linear(2, 2), threads=0)
        with self.assertRaisesRegex(ValueError, "torch.nn.Module"):
            OnnxRuntimeForward(lambda x: x)
        with mock.patch.object(onnx_runtime, "optional_import", return_value=(None, False)):
            with self.assertRaisesRegex(ImportError, r"needs onnx: pip install 'monai_msgldm\[onnx\]'"):
                with_onnx_runtime_encoder(tiny_msgldm())


class TestSavedGraph(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_saved_graph_runs_as_exported(self):
        """A saved float32 graph (a list of outputs) gives what the exporting object gives, after a new module with
        the same weights loads it, with no export; the metadata holds the weights' digest and what was passed."""
        import onnx

        torch.manual_seed(0)
        encoder = tiny_msgldm().structure_net.structure_encoders[0].eval()
        x = torch.rand(2, 1, 16, 24)
        saver = OnnxRuntimeForward(encoder)
        path = saver.save(os.path.join(self.dir, "part.onnx"), x, {"calibration": "none"})
        self.assertEqual(path, os.path.join(self.dir, "part.onnx"))
        self.assertEqual(os.listdir(self.dir), ["part.onnx"])  # no temporary file left
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        self.assertEqual(meta["calibration"], "none")
        self.assertEqual(meta["monai_msgldm.weights_sha256"], weights_digest(encoder))
        twin = copy.deepcopy(encoder)
        loader = OnnxRuntimeForward(twin, graph_file=path)
        with torch.no_grad():
            expected, got, direct = saver(x), loader(x), encoder(x)
        self.assertEqual((saver.exports, saver.loads, loader.exports, loader.loads), (0, 1, 0, 1))
        self.assertIsInstance(got, list)
        for g, e, d in zip(got, expected, direct):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
            torch.testing.assert_close(g, d, rtol=1e-3, atol=1e-4)

    def test_weights_digest(self):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(2, 3, 3)
        twin = torch.nn.Conv2d(2, 3, 3)
        twin.load_state_dict(conv.state_dict())
        self.assertEqual(weights_digest(conv), weights_digest(twin))
        self.assertRegex(weights_digest(conv), "^[0-9a-f]{64}$")
        with torch.no_grad():
            twin.bias[0] += 1e-7
        self.assertNotEqual(weights_digest(conv), weights_digest(twin))
        self.assertNotEqual(weights_digest(conv), weights_digest(torch.nn.Conv2d(3, 2, 3)))

    def test_errors(self):
        conv = torch.nn.Conv2d(1, 1, 3).eval()
        with self.assertRaisesRegex(FileNotFoundError, "graph_file .*missing.onnx does not exist"):
            OnnxRuntimeForward(conv, graph_file=os.path.join(self.dir, "missing.onnx"))
        path = OnnxRuntimeForward(conv).save(os.path.join(self.dir, "c.onnx"), torch.rand(1, 1, 8, 8))
        with self.assertRaisesRegex(ValueError, "either graph_file .* or int8_calibration, not both"):
            OnnxRuntimeForward(conv, graph_file=path, int8_calibration=torch.rand(1, 1, 8, 8))
        with self.assertRaisesRegex(ValueError, "save expects x to be a float32 CPU tensor"):
            OnnxRuntimeForward(conv).save(path, torch.rand(1, 1, 8, 8).double())
        with self.assertRaisesRegex(ValueError, "save expects the Conv2d in eval mode"):
            OnnxRuntimeForward(conv.train()).save(path, torch.rand(1, 1, 8, 8))


if __name__ == "__main__":
    unittest.main()
