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

__all__: list[str] = []

import unittest

import torch
from parameterized import parameterized

from monai_msgldm.constants import MODALITIES
from monai_msgldm.networks.blocks import HighFrequencyInjectionBlock, MultiscaleStructureEnhancement
from monai_msgldm.networks.nets import StructureStyleNet
from monai_msgldm.utils import strict_availability_checks

M = len(MODALITIES)
TINY = {"structure_channels": (4, 8), "strides": (1, 2), "style_channels": (4, 8, 8), "mlp_hidden": 8, "msse_heads": 2}
AVAILABLE = torch.tensor([[True, True, True, False], [False, True, False, False]])


def _net(sd, **kwargs):
    return StructureStyleNet(sd, num_modalities=M, **{**TINY, **kwargs})


def _size(sd):
    return (16, 12) if sd == 2 else (8, 8, 4)


def _total(out):
    return sum(v.sum() if torch.is_tensor(v) else sum(f.sum() for f in v) for v in out.values())


class TestStructureStyleNet(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    @parameterized.expand([[2], [3]])
    def test_outputs(self, sd):
        net = _net(sd, seg_out_channels=3)
        size = _size(sd)
        images = torch.randn(2, M, *size)
        out = net(images, AVAILABLE)
        top = [s // 2 for s in size]
        self.assertEqual(tuple(out["structure"].shape), (2, 8, *top))
        self.assertEqual([tuple(f.shape) for f in out["fused"]], [(2, 4, *size), (2, 8, *top)])
        self.assertEqual(tuple(out["reconstruction"].shape), (2, M, *size))
        self.assertEqual(tuple(out["segmentation"].shape), (2, 3, *size))
        self.assertEqual(tuple(out["style"].shape), (2, M, 8))
        self.assertTrue(bool((out["reconstruction"].abs() < 1).all()))
        # style m comes from modality m's image through style encoder m; reconstruction m from decoder m
        for m in range(M):
            torch.testing.assert_close(out["style"][:, m], net.style_encoders[m](images[:, m : m + 1]))
            torch.testing.assert_close(
                out["reconstruction"][:, m : m + 1],
                net.reconstruction_decoders[m](out["structure"], out["style"][:, m]),
            )
        torch.testing.assert_close(out["segmentation"], net.segmentation_decoder(out["fused"]))

    @parameterized.expand([[2], [3]])
    def test_absent_modalities_do_not_leak(self, sd):
        net = _net(sd)
        images = torch.randn(2, M, *_size(sd))
        out = net(images, AVAILABLE)
        changed = images.clone()
        changed[~AVAILABLE] = torch.randn_like(changed[~AVAILABLE]) * 100.0  # modality 3 absent from every row
        changed[1, 0] = float("nan")
        out2 = net(changed, AVAILABLE)
        for key in ("structure", "segmentation"):
            self.assertTrue(torch.equal(out[key], out2[key]), key)
        for a, b in zip(out["fused"], out2["fused"]):
            self.assertTrue(torch.equal(a, b))
        # but an available modality's image does change F_s
        changed[0, 1] += 1.0
        self.assertFalse(torch.equal(net.encode_structure(changed, AVAILABLE), out["structure"]))

    def test_single_sample_matches_batch(self):
        net = _net(2)
        images = torch.randn(2, M, 16, 16)
        out = net(images, AVAILABLE)
        single = net(images[1:], AVAILABLE[1:])
        for key in ("structure", "reconstruction", "segmentation", "style"):
            torch.testing.assert_close(single[key], out[key][1:], atol=1e-5, rtol=1e-5)

    def test_encode_structure(self):
        net = _net(2)
        images = torch.randn(2, M, 16, 16)
        out = net(images, AVAILABLE)
        self.assertTrue(torch.equal(net.encode_structure(images, AVAILABLE), out["structure"]))
        self.assertTrue(torch.equal(net.encode_style(images), out["style"]))
        # the structure branch alone never calls the style encoders or decoders
        calls = []
        for module in list(net.style_encoders) + list(net.reconstruction_decoders) + [net.segmentation_decoder]:
            module.register_forward_hook(lambda *args: calls.append(1))
        net.encode_structure(images, AVAILABLE)
        self.assertEqual(calls, [])

    @parameterized.expand([[2], [3]])
    def test_encode_modalities_and_structure_from_features(self, sd):
        """encode_modalities is each modality's encoder on its own image, stacked per level; F_s from those features
        equals F_s computed from the images, for any availability mask (the features do not depend on it)."""
        net = _net(sd).eval()
        images = torch.randn(2, M, *_size(sd))
        with torch.no_grad():
            features = net.encode_modalities(images)
            top = [s // 2 for s in _size(sd)]
            self.assertEqual([tuple(f.shape) for f in features], [(2, M, 4, *_size(sd)), (2, M, 8, *top)])
            for m in range(M):
                for level, ref in enumerate(net.structure_encoders[m](images[:, m : m + 1])):
                    self.assertTrue(torch.equal(features[level][:, m], ref))
            masks = [AVAILABLE, torch.tensor([[True, False, False, True], [True, True, True, True]])]
            for available in masks:
                expected = net.encode_structure(images, available)
                torch.testing.assert_close(net.encode_structure(images, available, features), expected)
            # absent modalities' features are zeroed as their images are: garbage in them changes nothing
            spoiled = [f.clone() for f in features]
            for f in spoiled:
                f[~AVAILABLE] = float("nan")
            torch.testing.assert_close(
                net.encode_structure(images, AVAILABLE, spoiled), net.encode_structure(images, AVAILABLE)
            )
        with self.assertRaisesRegex(ValueError, "one tensor per level \\(2\\), got 1"):
            net.encode_structure(images, AVAILABLE, features[:1])
        with self.assertRaisesRegex(ValueError, "features\\[1\\] of shape"):
            net.encode_structure(images, AVAILABLE, [features[0], features[1][:1]])

    def test_absent_encoder_skipped_only_outside_training(self):
        net = _net(2)
        images = torch.randn(2, M, 16, 16)
        calls = []
        net.structure_encoders[3].register_forward_hook(lambda *args: calls.append(1))
        net.train()
        _total(net(images, AVAILABLE)).backward()  # modality 3 is absent from every row
        self.assertEqual(len(calls), 1)
        self.assertTrue(all(p.grad is not None for p in net.structure_encoders[3].parameters()))
        self.assertTrue(all(float(p.grad.abs().sum()) == 0.0 for p in net.structure_encoders[3].parameters()))
        with torch.no_grad():
            net(images, AVAILABLE)
        net.eval()
        net.encode_structure(images, AVAILABLE)
        self.assertEqual(len(calls), 1)

    @parameterized.expand([[2, "add"], [3, "concat"]])
    def test_gradients_reach_every_parameter(self, sd, hfib_mode):
        net = _net(sd, hfib_mode=hfib_mode, fusion_combine="concat" if hfib_mode == "concat" else "sum")
        out = net(torch.randn(2, M, *_size(sd)), torch.ones(2, M, dtype=torch.bool))
        _total(out).backward()
        params = dict(net.named_parameters())
        missing = [name for name, p in params.items() if p.grad is None]
        self.assertEqual(missing, [])
        self.assertTrue(all(torch.isfinite(p.grad).all() for p in params.values()))
        sigmas = [n for n in params if n.endswith("sigma")]
        self.assertEqual(len(sigmas), M * 2)
        self.assertGreater(params["enhance.alpha"].grad.abs().item(), 0)
        self.assertGreater(sum(params[n].grad.abs().item() for n in sigmas), 0)

    def test_ablations(self):
        images = torch.randn(2, M, 16, 16)
        no_hfib = _net(2, use_hfib=False)
        self.assertFalse(any(isinstance(m, HighFrequencyInjectionBlock) for m in no_hfib.modules()))
        self.assertEqual(len([m for m in _net(2).modules() if isinstance(m, HighFrequencyInjectionBlock)]), 2 * M)
        no_msse = _net(2, use_msse=False)
        self.assertFalse(any(isinstance(m, MultiscaleStructureEnhancement) for m in no_msse.modules()))
        out = no_msse(images, AVAILABLE)
        self.assertTrue(torch.equal(out["structure"], out["fused"][-1]))
        with_msse = _net(2)(images, AVAILABLE)
        self.assertFalse(torch.equal(with_msse["structure"], with_msse["fused"][-1]))
        no_gates = _net(2, use_fusion_gates=False)
        self.assertTrue(all(not f.gated for f in no_gates.fusions))
        fixed_alpha = _net(2, learnable_msse_alpha=False, msse_alpha=0.25)
        self.assertNotIn("enhance.alpha", dict(fixed_alpha.named_parameters()))
        for net in (no_hfib, no_gates, fixed_alpha):
            self.assertEqual(tuple(net(images, AVAILABLE)["reconstruction"].shape), (2, M, 16, 16))

    def test_multichannel_modalities_and_strides(self):
        net = _net(2, in_channels=2, structure_channels=(4, 8, 8), strides=(2, 2, 1))
        self.assertEqual(net.num_upsamples, 2)
        out = net(torch.randn(1, 2 * M, 16, 16), AVAILABLE[:1])
        self.assertEqual(tuple(out["structure"].shape), (1, 8, 4, 4))
        self.assertEqual(tuple(out["reconstruction"].shape), (1, 2 * M, 16, 16))
        self.assertEqual(tuple(out["segmentation"].shape), (1, 4, 16, 16))

    @parameterized.expand(
        [
            [{"spatial_dims": 1}, "spatial_dims"],
            [{"num_modalities": 0}, "num_modalities"],
            [{"strides": (1, 2, 2)}, "strides to be 2 positive ints"],
            [{"strides": (1, 3)}, "prod\\(strides\\) to be a power of 2"],
            [{"num_upsamples": 2}, "num_upsamples = log2"],
            [{"structure_channels": (4, 6), "strides": (2, 2)}, "structure_channels\\[-1\\] divisible"],
            [{"structure_channels": (8,), "strides": (2,)}, "at least 2 levels"],
        ]
    )
    def test_bad_args(self, kwargs, msg):
        kwargs = {"spatial_dims": 2, **TINY, **kwargs}
        with self.assertRaisesRegex(ValueError, f"StructureStyleNet expects {msg}"):
            StructureStyleNet(**kwargs)

    def test_bad_inputs(self):
        net = _net(2)
        images = torch.randn(2, M, 16, 16)
        with self.assertRaisesRegex(ValueError, r"StructureStyleNet expects images of shape \(B, 4"):
            net(images[:, :3], AVAILABLE)
        with self.assertRaisesRegex(ValueError, "StructureStyleNet expects images of shape"):
            net(images[..., None], AVAILABLE)
        with self.assertRaisesRegex(
            ValueError, r"images with spatial sizes divisible by prod\(strides\) = 2, got \[16, 15\]"
        ):
            net.encode_structure(images[..., :15], AVAILABLE)
        with self.assertRaisesRegex(ValueError, r"StructureStyleNet expects available of shape \(2, 4\)"):
            net(images, AVAILABLE[:, :3])
        bad = AVAILABLE.clone()
        bad[1] = False
        # the values are validated where the mask enters the model; here only in the strict (test) mode
        with strict_availability_checks(), self.assertRaisesRegex(ValueError, r"none in batch rows \[1\]"):
            net.encode_structure(images, bad)
        with self.assertRaisesRegex(ValueError, "available to be a bool tensor"):
            net(images, AVAILABLE.long())
        with self.assertRaisesRegex(ValueError, "StructureStyleNet expects style of shape"):
            net.reconstruct(torch.randn(2, 8, 8, 8), torch.randn(2, 3, 8))


if __name__ == "__main__":
    unittest.main()
