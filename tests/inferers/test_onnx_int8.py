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
"""8-bit convolutions in ONNX Runtime: a convolution against a reference of the quantization arithmetic, the
calibration slices, which parts of a network are quantized and with what (the ``onnx`` extra)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest

import torch
from parameterized import parameterized

from monai_msgldm.inferers import (
    DecoderCalibration,
    OnnxRuntimeForward,
    calibration_slices,
    quantize_onnx_int8,
    save_int8_graphs,
    saved_int8_graphs,
    with_onnx_runtime_int8,
)
from tests.networks.nets.test_msgldm import tiny_msgldm
from tests.networks.nets.test_plain_ldm import _tiny as tiny_plain_ldm


def _affine_uint8(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``values`` through uint8 with ONNX Runtime's min-max parameters for the range ``[low, high]`` (widened to
    hold 0): quantized, then dequantized."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255
    zero = round(-low / scale)
    return (torch.clamp(torch.round(values / scale) + zero, 0, 255) - zero) * scale


def _reference_int8_conv(conv: torch.nn.Conv2d, x: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """The QDQ convolution computed by hand: uint8 input with the calibration's range, int8 symmetric weights per
    output channel, int32 bias at the product of the scales, uint8 output with the range of the float output on the
    calibration."""
    w = conv.weight.detach()
    w_scale = w.flatten(1).abs().amax(dim=1) / 127
    w_dq = torch.round(w / w_scale.view(-1, 1, 1, 1)) * w_scale.view(-1, 1, 1, 1)
    low, high = float(calibration.min()), float(calibration.max())
    x_scale = (max(high, 0.0) - min(low, 0.0)) / 255
    b_scale = x_scale * w_scale
    b_dq = torch.round(conv.bias.detach() / b_scale) * b_scale
    y = torch.nn.functional.conv2d(_affine_uint8(x, low, high), w_dq, b_dq, padding=conv.padding)
    with torch.no_grad():
        y_cal = conv(calibration)
    return _affine_uint8(y, float(y_cal.min()), float(y_cal.max())), (
        max(float(y_cal.max()), 0) - min(float(y_cal.min()), 0)
    ) / 255


class TestQuantizeOnnxInt8(unittest.TestCase):
    def test_convolution_matches_the_quantization_arithmetic(self):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(2, 3, 3, padding=1).eval()
        calibration = torch.rand(5, 2, 12, 12) * 3 - 1
        x = torch.rand(2, 2, 9, 7) * 2.5 - 0.8  # another size, inside the calibrated range
        runtime = OnnxRuntimeForward(conv, int8_calibration=calibration)
        with torch.inference_mode():
            got = runtime(x)
            exact = conv(x)
        expected, step = _reference_int8_conv(conv, x, calibration)
        self.assertEqual(runtime.exports, 1)
        # one output step at most (ONNX Runtime's integer rounding of the rescale)
        torch.testing.assert_close(got, expected, rtol=0, atol=step * 1.01)
        self.assertFalse(torch.equal(got, exact))  # not the float32 graph
        self.assertLess(float((got - exact).abs().max()), 4 * step)

    def test_ranges_span_every_calibration_batch(self):
        """The calibrator runs its inputs CALIBRATION_BATCH at a time (its memory); the quantized graph is the same
        for any batch, since each range is the least and largest value over all of them."""
        from unittest import mock

        import monai_msgldm.inferers.onnx_int8 as onnx_int8

        torch.manual_seed(0)
        conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 2, 1))
        conv = conv.eval()
        calibration = torch.randn(5, 1, 10, 10) * torch.linspace(0.1, 3.0, 5).view(-1, 1, 1, 1)  # ranges differ
        x = torch.randn(3, 1, 10, 10)
        outputs = []
        for batch in (1, 2, 5):
            with mock.patch.object(onnx_int8, "CALIBRATION_BATCH", batch), torch.inference_mode():
                outputs.append(OnnxRuntimeForward(conv, int8_calibration=calibration)(x))
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
        torch.testing.assert_close(outputs[2], outputs[0], rtol=0, atol=0)

    def test_calibration_function_is_called_at_each_export(self):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
        calls = []

        def calibration():
            calls.append(1)
            return torch.rand(2, 1, 8, 8)

        runtime = OnnxRuntimeForward(conv, int8_calibration=calibration)
        with torch.inference_mode():
            runtime(torch.rand(1, 1, 8, 8))
            runtime(torch.rand(1, 1, 8, 8))
        self.assertEqual(len(calls), 1)
        with torch.no_grad():
            conv.weight.mul_(2)  # new weights: exported, calibrated and quantized again
        with torch.inference_mode():
            runtime(torch.rand(1, 1, 8, 8))
        self.assertEqual((len(calls), runtime.exports), (2, 2))

    @parameterized.expand(
        [
            ("integer", torch.zeros(2, 1, 4, 4, dtype=torch.int64)),
            ("empty", torch.zeros(0, 1, 4, 4)),
            ("not finite", torch.full((1, 1, 4, 4), float("nan"))),
            ("one dimension", torch.zeros(4)),
        ]
    )
    def test_bad_calibration(self, _, calibration):
        with self.assertRaisesRegex(ValueError, "calibration"):
            quantize_onnx_int8(b"", calibration)

    def test_bad_calibration_argument(self):
        with self.assertRaisesRegex(ValueError, "int8_calibration"):
            OnnxRuntimeForward(torch.nn.Conv2d(1, 1, 3), int8_calibration=[1.0])


class TestCalibrationSlices(unittest.TestCase):
    def test_evenly_spaced_slices_with_content(self):
        volume = torch.zeros(2, 4, 5, 10)
        volume[0, 1:3, 1:4, 2:9] = torch.arange(7.0) + 1  # content in slices 2..8 of the given contrast
        volume[1, :, :, 0] = torch.rand(4, 5)  # an absent contrast's content does not count
        got = calibration_slices(volume, [True, False], num_slices=3)
        self.assertEqual(tuple(got.shape), (3, 2, 4, 5))
        torch.testing.assert_close(got, volume[..., [2, 5, 8]].permute(3, 0, 1, 2))
        all_of_them = calibration_slices(volume, torch.tensor([True, False]), num_slices=20)
        torch.testing.assert_close(all_of_them, volume[..., 2:9].permute(3, 0, 1, 2))
        along_first = calibration_slices(volume.permute(0, 3, 1, 2), [True, False], num_slices=3, slice_axis=0)
        torch.testing.assert_close(along_first, got)

    @parameterized.expand(
        [
            ("num_slices", torch.rand(2, 4, 4, 4), [True, True], {"num_slices": 0}, "num_slices"),
            ("bool num_slices", torch.rand(2, 4, 4, 4), [True, True], {"num_slices": True}, "num_slices"),
            ("3D images", torch.rand(2, 4, 4), [True, True], {}, "images of shape"),
            ("none given", torch.rand(2, 4, 4, 4), [False, False], {}, "at least one True"),
            ("wrong length", torch.rand(2, 4, 4, 4), [True], {}, "2 bools"),
            ("no content", torch.zeros(2, 4, 4, 4), [True, True], {}, "no slice"),
            ("axis", torch.rand(2, 4, 4, 4), [True, True], {"slice_axis": 3}, "slice_axis"),
        ]
    )
    def test_bad_input(self, _, images, available, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            calibration_slices(images, available, **kwargs)


class TestWithOnnxRuntimeInt8(unittest.TestCase):
    def test_parts_and_their_calibration(self):
        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=True).eval()
        volume = torch.rand(4, 16, 16, 6) * 2 - 1
        available = torch.tensor([True, False, True, True])
        keys = list(net.state_dict())
        x = volume[..., 1:4].permute(3, 0, 1, 2).contiguous()
        mask = available.expand(3, 4)
        with torch.no_grad():
            expected = net.given_latents(x, mask)
        self.assertIs(with_onnx_runtime_int8(net, volume, available, num_slices=2), net)
        self.assertEqual(list(net.state_dict()), keys)  # the checkpoint still loads
        ae, encoders = net.autoencoder.model, net.structure_net.structure_encoders
        slices = calibration_slices(volume, available, 2)
        encoder = ae.encoder.__dict__["forward"]
        torch.testing.assert_close(encoder.int8_calibration, slices[:, [0, 2, 3]].reshape(6, 1, 16, 16))
        for m in (0, 2, 3):
            torch.testing.assert_close(encoders[m].__dict__["forward"].int8_calibration, slices[:, m : m + 1])
        self.assertNotIn("forward", encoders[1].__dict__)  # absent: PyTorch
        # the decoder's calibration: the posterior means of the calibration contrasts with the weights of now
        with torch.no_grad():
            ae.quant_conv_mu.conv.weight.mul_(0.5)
            means = ae.post_quant_conv(ae.quant_conv_mu(type(ae.encoder).forward(ae.encoder, encoder.int8_calibration)))
        torch.testing.assert_close(ae.decoder.__dict__["forward"].int8_calibration(), means)
        with torch.no_grad():
            ae.quant_conv_mu.conv.weight.mul_(2.0)
        with torch.inference_mode():
            got = net.given_latents(x, mask)
        self.assertEqual(encoder.exports, 1)
        correlation = torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1]
        self.assertGreater(float(correlation), 0.9)  # random weights; trained models: docs/benchmarks.md
        self.assertFalse(torch.equal(got, expected))

    def test_copies_calibrate_with_their_own_autoencoder(self):
        """A deep copy of a wrapped network calibrates its decoder with its own autoencoder (new weights in the copy
        only), and the wrapped network pickles (its sessions are left out and made again)."""
        import copy
        import pickle

        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=False).eval()
        with_onnx_runtime_int8(net, torch.rand(4, 16, 16, 3) * 2 - 1, [True, True, True, False], num_slices=1)
        twin = copy.deepcopy(net)
        calibration = twin.autoencoder.model.decoder.__dict__["forward"].int8_calibration
        self.assertIsInstance(calibration, DecoderCalibration)
        self.assertIs(calibration.autoencoder, twin.autoencoder.model)
        before = net.autoencoder.model.decoder.__dict__["forward"].int8_calibration()
        with torch.no_grad():
            twin.autoencoder.model.quant_conv_mu.conv.weight.mul_(3.0)
        torch.testing.assert_close(net.autoencoder.model.decoder.__dict__["forward"].int8_calibration(), before)
        ae = twin.autoencoder.model
        with torch.no_grad():
            means = ae.post_quant_conv(ae.quant_conv_mu(type(ae.encoder).forward(ae.encoder, calibration.contrasts)))
        torch.testing.assert_close(calibration(), means)
        self.assertFalse(torch.allclose(calibration(), before))
        restored = pickle.loads(pickle.dumps(net))
        torch.testing.assert_close(restored.autoencoder.model.decoder.__dict__["forward"].int8_calibration(), before)

    def test_plain_ldm(self):
        torch.manual_seed(0)
        net = tiny_plain_ldm().eval()
        with_onnx_runtime_int8(net, torch.rand(4, 16, 16, 3), [True, True, True, True], num_slices=1)
        self.assertIsInstance(net.autoencoder.model.decoder.__dict__["forward"], OnnxRuntimeForward)

    def test_not_a_latent_model(self):
        with self.assertRaisesRegex(ValueError, "with_onnx_runtime_int8 expects a latent diffusion network"):
            with_onnx_runtime_int8(torch.nn.Conv2d(1, 1, 3), torch.rand(1, 4, 4, 4), [True])


def _cases(num: int, available: list[bool] | None = None) -> list[dict]:
    torch.manual_seed(1)
    flags = torch.tensor(available or [True] * 4)
    return [{"image": torch.rand(4, 16, 16, 5) * 2 - 1, "available": flags, "case": f"case{i}"} for i in range(num)]


class TestSaveInt8Graphs(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        torch.manual_seed(0)
        self.net = tiny_msgldm(hybrid_condition=True).eval()
        self.state = {k: v.clone() for k, v in self.net.state_dict().items()}

    def _fresh(self) -> torch.nn.Module:
        net = tiny_msgldm(hybrid_condition=True).eval()
        net.load_state_dict(self.state)
        return net

    def test_saved_graphs_are_the_calibration_of_every_case(self):
        """Each saved part runs exactly what a part exported now and calibrated on the same inputs runs: the encoder
        on every given contrast of the first num_cases cases, the decoder on their posterior means, each structure
        encoder on its contrast; the network that saved them runs them; nothing is exported again when loading."""
        cases = _cases(3)
        manifest = save_int8_graphs(self.net, cases, self.dir, num_cases=2, num_slices=2)
        parts = ["encoder", "decoder"] + [f"structure_encoder_{m}" for m in range(4)]
        self.assertEqual(sorted(manifest["parts"]), sorted(parts))
        self.assertEqual(manifest["calibration"], {"cases": ["case0", "case1"], "slices_per_case": 2})
        self.assertEqual(saved_int8_graphs(self.dir), manifest)
        with open(os.path.join(self.dir, "int8_graphs.json")) as f:
            self.assertEqual(json.load(f), manifest)
        self.assertEqual(sorted(os.listdir(self.dir)), sorted([f"{p}.onnx" for p in parts] + ["int8_graphs.json"]))

        slices = torch.cat([calibration_slices(c["image"], c["available"], 2) for c in cases[:2]])  # (4, 4, 16, 16)
        contrasts = slices.reshape(-1, 1, 16, 16)
        loaded = with_onnx_runtime_int8(self._fresh(), graph_dir=self.dir)
        reference = self._fresh()
        ae = reference.autoencoder.model
        calibration = {"encoder": contrasts, "decoder": DecoderCalibration(ae, contrasts)()}
        calibration.update({f"structure_encoder_{m}": slices[:, m : m + 1] for m in range(4)})
        modules = {"encoder": ae.encoder, "decoder": ae.decoder}
        modules.update({f"structure_encoder_{m}": e for m, e in enumerate(reference.structure_net.structure_encoders)})
        for name, module in modules.items():
            module.forward = OnnxRuntimeForward(module, int8_calibration=calibration[name])
        x = cases[2]["image"][..., 1:4].permute(3, 0, 1, 2).contiguous()
        mask = torch.tensor([True, False, True, True]).expand(3, 4)
        with torch.inference_mode():
            got, expected = loaded.given_latents(x, mask), reference.given_latents(x, mask)
            by_saver = self.net.given_latents(x, mask)
            got_s, expected_s = loaded.encode_structure(x, mask), reference.encode_structure(x, mask)
            z = torch.randn(3, ae.latent_channels, 4, 4)
            decoded = loaded.autoencoder.model.decoder(z)
            decoded_ref = ae.decoder(z)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(by_saver, expected, rtol=0, atol=0)
        torch.testing.assert_close(got_s, expected_s, rtol=0, atol=0)
        torch.testing.assert_close(decoded, decoded_ref, rtol=0, atol=0)
        for runtime in (loaded.autoencoder.model.encoder.forward, loaded.autoencoder.model.decoder.forward):
            self.assertEqual((runtime.exports, runtime.loads), (0, 1))
            self.assertIsNone(runtime.int8_calibration)

    def test_other_weights_are_refused(self):
        save_int8_graphs(self.net, _cases(1), self.dir, num_slices=1)
        net = with_onnx_runtime_int8(self._fresh(), graph_dir=self.dir)
        with torch.no_grad():
            net.autoencoder.model.decoder.blocks[0].conv.weight.add_(1e-3)  # a checkpoint saved since
        x = torch.rand(2, net.autoencoder.model.latent_channels, 4, 4)
        with self.assertRaisesRegex(ValueError, "decoder.onnx was not saved from the weights"):
            with torch.inference_mode():
                net.autoencoder.model.decoder(x)
        with torch.inference_mode():  # the encoder's weights are those it was saved from
            net.autoencoder.model.encoder(torch.rand(2, 1, 16, 16))

    def test_without_saved_graphs_calibrates_on_the_case(self):
        image = _cases(1)[0]["image"]
        net = with_onnx_runtime_int8(self._fresh(), image, [True, True, False, True], num_slices=1, graph_dir=self.dir)
        encoder = net.autoencoder.model.encoder.forward
        self.assertIsNone(encoder.graph_file)
        self.assertIsNotNone(encoder.int8_calibration)
        self.assertIsNone(saved_int8_graphs(self.dir))
        with self.assertRaisesRegex(ValueError, "needs images and available"):
            with_onnx_runtime_int8(self._fresh(), graph_dir=self.dir)

    @parameterized.expand(
        [
            ("no_case", [], {}, "at least one case"),
            ("num_cases", _cases(1), {"num_cases": 0}, "num_cases to be an int >= 1"),
            ("not_a_case", [torch.zeros(3)], {}, "case 0 to be a mapping with 'image' and 'available'"),
            (
                "contrast_never_given",
                _cases(2, [True, False, True, True]),
                {},
                r"contrast\(s\) \[1\] are given in none",
            ),
        ]
    )
    def test_bad_input(self, _, cases, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            save_int8_graphs(self.net, cases, self.dir, **kwargs)
        self.assertIsNone(saved_int8_graphs(self.dir))  # nothing usable left behind

    def test_parts_the_network_lacks(self):
        save_int8_graphs(self.net, _cases(1), self.dir, num_slices=1)
        with self.assertRaisesRegex(ValueError, "structure_encoder_0"):
            with_onnx_runtime_int8(tiny_plain_ldm().eval(), graph_dir=self.dir)


if __name__ == "__main__":
    unittest.main()
