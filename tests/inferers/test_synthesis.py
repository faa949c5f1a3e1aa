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
from unittest import mock

import torch
from monai.data import MetaTensor
from parameterized import parameterized

from monai_msgldm.inferers import ModalitySynthesisInferer, MultiContrastDiffusionInferer, resolve_availability
from monai_msgldm.utils import validate_availability
from tests.inferers.test_diffusion import ddim
from tests.networks.nets.test_msgldm import tiny_msgldm


def sampler(steps: int = 2) -> MultiContrastDiffusionInferer:
    return MultiContrastDiffusionInferer(ddim(), num_inference_steps=steps)


class TestResolveAvailability(unittest.TestCase):
    @parameterized.expand(
        [
            (["t1", "flair"], [[True, False, False, True]] * 2),
            ([True, True, False, False], [[True, True, False, False]] * 2),
            (torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]]), [[True, False, True, True], [False, True, False, False]]),
        ]
    )
    def test_sources(self, available, expected):
        torch.testing.assert_close(resolve_availability(available, 2), torch.tensor(expected))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "unknown modalities"):
            resolve_availability(["t1", "pd"], 1)
        with self.assertRaisesRegex(ValueError, "at least one"):
            resolve_availability([False] * 4, 1)
        with self.assertRaisesRegex(ValueError, "shape"):
            resolve_availability([True, False], 1)
        with self.assertRaisesRegex(ValueError, "booleans or 0/1"):
            resolve_availability(torch.tensor([[2, 0, 1, 1]]), 1)


class TestModalitySynthesisInferer(unittest.TestCase):
    def test_volume_with_2d_model_matches_per_slice(self):
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        vol = torch.rand(1, 4, 14, 16, 5) * 2 - 1  # 14 is not divisible by 4: padded and cropped back
        inferer = ModalitySynthesisInferer(sampler(), slice_batch_size=2, seed=3, progress=False)
        out = inferer(vol, net, available=["t1", "t1ce", "t2"])
        self.assertEqual(out.shape, vol.shape)
        torch.testing.assert_close(out[:, :3], vol[:, :3], rtol=0, atol=0)
        self.assertTrue(torch.isfinite(out).all())
        self.assertGreater(float(out[:, 3].std()), 0.0)
        # deterministic with the same seed; a different seed gives another sample
        again = ModalitySynthesisInferer(sampler(), slice_batch_size=2, seed=3, progress=False)
        torch.testing.assert_close(again(vol, net, available=["t1", "t1ce", "t2"]), out)
        other = ModalitySynthesisInferer(sampler(), slice_batch_size=2, seed=4, progress=False)
        self.assertFalse(torch.allclose(other(vol, net, available=["t1", "t1ce", "t2"]), out))
        # slice k of the volume result equals synthesizing that slice alone when it is alone in its batch
        single = ModalitySynthesisInferer(sampler(), slice_batch_size=1, seed=3, progress=False)
        first = single(vol[..., :1], net, available=["t1", "t1ce", "t2"])
        direct = single(vol[..., 0], net, available=["t1", "t1ce", "t2"])
        torch.testing.assert_close(first[..., 0], direct)

    def test_empty_slices_are_background_and_not_sampled(self):
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        vol = torch.rand(1, 4, 16, 16, 6) * 2 - 1
        vol[..., :2] = -1.0  # two empty slices below the head
        vol[..., 5] = -0.5  # and one constant slice above it
        seen = []
        sampling = sampler()
        sample = sampling.sample
        sampling.sample = lambda images, *a, **k: seen.append(images.shape[0]) or sample(images, *a, **k)
        inferer = ModalitySynthesisInferer(sampling, slice_batch_size=2, seed=0, progress=False)
        out = inferer(vol, net, available=["t1", "t1ce", "t2"])
        self.assertEqual(sum(seen), 3)  # only the slices with content were sampled
        self.assertTrue(torch.all(out[0, 3, :, :, :2] == -1.0) and torch.all(out[0, 3, :, :, 5] == -0.5))
        torch.testing.assert_close(out[:, :3], vol[:, :3], rtol=0, atol=0)
        seen.clear()
        full = ModalitySynthesisInferer(sampling, 2, seed=0, progress=False, skip_empty_slices=False)
        full(vol, net, available=["t1", "t1ce", "t2"])
        self.assertEqual(sum(seen), 6)

    def test_availability_validated_once_per_volume(self):
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        vol = torch.rand(1, 4, 16, 16, 5) * 2 - 1
        import monai_msgldm.inferers.sampler as sampler_module
        import monai_msgldm.inferers.synthesis as synthesis_module

        with (
            mock.patch.object(synthesis_module, "validate_availability", wraps=validate_availability) as outer,
            mock.patch.object(sampler_module, "validate_availability", wraps=validate_availability) as inner,
        ):
            ModalitySynthesisInferer(sampler(), slice_batch_size=2, progress=False)(vol, net, ["t1", "t2"])
        self.assertEqual((outer.call_count, inner.call_count), (1, 0))

    def test_channels_last_gives_the_same_synthesis(self):
        torch.manual_seed(0)
        net = tiny_msgldm().eval()
        vol = torch.rand(1, 4, 16, 16, 3) * 2 - 1
        plain = ModalitySynthesisInferer(sampler(), 3, seed=1, progress=False, channels_last=False)
        reference = plain(vol, net, available=["t1", "t2"])
        conv = next(m for m in net.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        self.assertFalse(conv.weight.is_contiguous(memory_format=torch.channels_last))
        fast = ModalitySynthesisInferer(sampler(), 3, seed=1, progress=False, channels_last=True)(
            vol, net, available=["t1", "t2"]
        )
        self.assertTrue(conv.weight.is_contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)

    def test_2d_input_and_metatensor(self):
        net = tiny_msgldm().eval()
        x = MetaTensor(torch.rand(2, 4, 16, 16) * 2 - 1)
        inferer = ModalitySynthesisInferer(sampler(), progress=False, available=[True, False, True, True])
        out = inferer(x, net)
        self.assertIsInstance(out, MetaTensor)
        torch.testing.assert_close(out.as_tensor()[:, [0, 2, 3]], x.as_tensor()[:, [0, 2, 3]])
        # a 2D batch goes to the sampler as it is: the same result as the sampler alone with the same seed
        direct = sampler().sample(
            x.as_tensor(),
            net,
            torch.tensor([[True, False, True, True]] * 2),
            generator=torch.Generator().manual_seed(0),
        )
        torch.testing.assert_close(out.as_tensor(), direct)

    def test_errors(self):
        net = tiny_msgldm()
        with self.assertRaisesRegex(ValueError, "slice_batch_size"):
            ModalitySynthesisInferer(slice_batch_size=0)
        with self.assertRaisesRegex(ValueError, "sample\\(\\) method"):
            ModalitySynthesisInferer(torch.nn.Identity())
        with self.assertRaisesRegex(ValueError, r"inputs must have shape \(B, 4"):
            ModalitySynthesisInferer(progress=False)(torch.rand(1, 3, 16, 16), net, ["t1"])
        with self.assertRaisesRegex(ValueError, "num_modalities"):
            ModalitySynthesisInferer(progress=False)(torch.rand(1, 4, 16, 16), torch.nn.Identity(), ["t1"])
        with self.assertRaisesRegex(ValueError, "expects available"):
            ModalitySynthesisInferer(progress=False)(torch.rand(1, 4, 16, 16), net)


if __name__ == "__main__":
    unittest.main()
