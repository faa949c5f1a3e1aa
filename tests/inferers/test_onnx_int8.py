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

import unittest

import torch
from parameterized import parameterized

from monai_msgldm.inferers import (
    DecoderCalibration,
    OnnxRuntimeForward,
    calibration_slices,
    quantize_onnx_int8,
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


if __name__ == "__main__":
    unittest.main()
