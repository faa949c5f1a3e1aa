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
from monai_msgldm.inferers.foreground_crop import foreground_box
from monai_msgldm.utils import validate_availability
from tests.inferers.test_diffusion import ddim, ddpm
from tests.networks.nets.test_msgldm import tiny_msgldm
from tests.networks.nets.test_plain_ldm import _tiny as tiny_plain_ldm


def sampler(steps: int = 2) -> MultiContrastDiffusionInferer:
    return MultiContrastDiffusionInferer(ddim(), num_inference_steps=steps)


class _PointwiseSampler:
    """A deterministic per-voxel synthesis (each missing contrast is tanh(2 x the mean of the given ones)) that
    records the shape of every batch it is given."""

    def __init__(self):
        self.shapes = []

    def sample(self, images, network, available, noise=None, generator=None, checked=False):
        self.shapes.append(tuple(images.shape))
        given = available.view(*available.shape, *([1] * (images.ndim - 2)))
        mean = (images * given).sum(1, keepdim=True) / given.sum(1, keepdim=True)
        return torch.where(given, images, torch.tanh(2 * mean))


def _head(size: int = 32, depth: int = 6) -> torch.Tensor:
    """``(1, 4, size, size, depth)`` at -1 with a random 'brain' that shrinks towards both ends of the last axis."""
    torch.manual_seed(0)
    vol = -torch.ones(1, 4, size, size, depth)
    for k in range(depth):
        half = 2 + min(k, depth - 1 - k) * 3
        lo, hi = size // 2 - half, size // 2 + half
        vol[..., lo:hi, lo + 1 : hi - 2, k] = torch.rand(1, 4, hi - lo, hi - lo - 3) * 1.8 - 0.9
    return vol


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

    @parameterized.expand(
        [
            ("msgldm_ddim", tiny_msgldm, lambda: sampler(2)),
            ("msgldm_ddim_eta", tiny_msgldm, lambda: MultiContrastDiffusionInferer(ddim(), 3, eta=1.0)),
            ("msgldm_ddpm", tiny_msgldm, lambda: MultiContrastDiffusionInferer(ddpm(), 3)),
            ("plain_ddpm", tiny_plain_ldm, lambda: MultiContrastDiffusionInferer(ddpm(), 3)),
        ]
    )
    def test_same_seed_same_synthesis_whatever_the_slice_batch(self, _, make_net, make_sampler):
        """Each slice draws its noise (initial and stochastic steps) from its own generator seeded by (seed, volume,
        slice): slice_batch_size 1, 4 and 16, and skipping empty slices or not, give the same synthesis. Tolerance
        atol 1e-5: a batched convolution may differ from a single one in the last bits (on this CPU they agree
        exactly); a different noise would differ by O(1)."""
        torch.manual_seed(0)
        net = make_net().eval()
        vol = torch.rand(2, 4, 16, 16, 7) * 2 - 1
        vol[0, ..., 3] = -1.0  # an empty slice between slices with content: skipped
        available = [True, False, True, False]
        outs = {}
        for batch in (1, 4, 16):
            outs[batch] = ModalitySynthesisInferer(make_sampler(), batch, seed=5, progress=False)(vol, net, available)
        self.assertTrue(torch.all(outs[1][0, 1, ..., 3] == -1.0))
        for batch in (4, 16):
            torch.testing.assert_close(outs[batch], outs[1], rtol=0, atol=1e-5)
        # every slice sampled (the empty one too): the slices with content are unchanged
        full = ModalitySynthesisInferer(make_sampler(), 4, seed=5, progress=False, skip_empty_slices=False)
        out_full = full(vol, net, available)
        content = [k for k in range(7) if k != 3]
        torch.testing.assert_close(out_full[0, ..., content], outs[1][0, ..., content], rtol=0, atol=1e-5)
        torch.testing.assert_close(out_full[1], outs[1][1], rtol=0, atol=1e-5)
        # a slice synthesized from a sub-volume that keeps its index is unchanged too; another seed changes it
        part = ModalitySynthesisInferer(make_sampler(), 3, seed=5, progress=False)(vol[..., :5], net, available)
        torch.testing.assert_close(part, outs[1][..., :5], rtol=0, atol=1e-5)
        other = ModalitySynthesisInferer(make_sampler(), 4, seed=6, progress=False)(vol, net, available)
        for b in range(2):
            for k in content:
                self.assertFalse(torch.allclose(other[b, [1, 3], ..., k], outs[1][b, [1, 3], ..., k]), (b, k))

    def test_item_generators_are_distinct_and_reproducible(self):
        draw = lambda *key: torch.randn(4, generator=ModalitySynthesisInferer.item_generator(*key))  # noqa: E731
        keys = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (1, 1, 0), (-1, 0, 0), (2**64 - 2, 0, 0)]
        draws = torch.stack([draw(*key) for key in keys])
        self.assertEqual(len({tuple(d.tolist()) for d in draws}), len(keys))
        torch.testing.assert_close(draw(0, 1, 2), draw(0, 1, 2), rtol=0, atol=0)
        torch.testing.assert_close(draw(0, 3), draw(0, 3, 0), rtol=0, atol=0)

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
        # a 2D batch goes to the sampler as it is, with one generator per item seeded by (seed, b, 0): the same
        # result as the sampler alone with those generators
        direct = sampler().sample(
            x.as_tensor(),
            net,
            torch.tensor([[True, False, True, True]] * 2),
            generator=[ModalitySynthesisInferer.item_generator(0, b, 0) for b in range(2)],
        )
        torch.testing.assert_close(out.as_tensor(), direct)

    def test_crop_foreground_synthesizes_inside_each_batch_box(self):
        """With a per-voxel synthesis the cropped result equals the full-size one inside each slice batch's box and
        is background outside it; the sampler sees exactly the boxes of foreground_box (margin 2, the network's
        size_divisor 8)."""
        net = tiny_msgldm().eval()
        vol, available = _head(), [True, True, False, True]
        full_sampler, crop_sampler = _PointwiseSampler(), _PointwiseSampler()
        full = ModalitySynthesisInferer(full_sampler, 2, progress=False)(vol, net, available)
        cropped = ModalitySynthesisInferer(crop_sampler, 2, progress=False, crop_foreground=True, crop_margin=2)(
            vol, net, available
        )
        mask = torch.tensor([available] * 2)
        boxes = [foreground_box(vol[0, ..., k : k + 2].permute(3, 0, 1, 2), mask, 2, 8) for k in (0, 2, 4)]
        self.assertEqual(crop_sampler.shapes, [(2, 4, b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes])
        self.assertEqual(full_sampler.shapes, [(2, 4, 32, 32)] * 3)
        self.assertLess(boxes[0][0].stop - boxes[0][0].start, 32)  # the end slices are cropped
        for k, box in zip((0, 2, 4), boxes):
            region = (0, slice(None), *box, slice(k, k + 2))
            torch.testing.assert_close(cropped[region], full[region], rtol=0, atol=0)
            outside = cropped[0, 2, ..., k : k + 2].clone()
            outside[box] = -1.0
            self.assertTrue(torch.all(outside == -1.0))
        torch.testing.assert_close(cropped[:, [0, 1, 3]], vol[:, [0, 1, 3]], rtol=0, atol=0)
        # without content close to the edges of any batch, nothing is cropped: the same as the full synthesis
        whole = ModalitySynthesisInferer(_PointwiseSampler(), 6, progress=False, crop_foreground=True, crop_margin=8)
        torch.testing.assert_close(whole(vol, net, available), full, rtol=0, atol=0)

    def test_crop_foreground_with_a_diffusion_sampler_and_std(self):
        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=True).eval()
        vol = _head(32, 4)
        inferer = ModalitySynthesisInferer(
            MultiContrastDiffusionInferer(ddim(), 2),
            4,
            progress=False,
            num_samples=2,
            return_std=True,
            crop_foreground=True,
            crop_margin=0,
        )
        out = inferer(vol, net, ["t1", "t2"])
        self.assertEqual(out.shape, (1, 8, 32, 32, 4))
        mean, std = out[:, :4], out[:, 4:]
        box = foreground_box(vol[0].permute(3, 0, 1, 2), torch.tensor([[True, False, True, False]] * 4), 0, 8)
        self.assertIsNotNone(box)
        torch.testing.assert_close(mean[:, [0, 2]], vol[:, [0, 2]], rtol=0, atol=0)
        inside = (0, slice(None), *box)
        self.assertGreater(float(std[inside][[1, 3]].mean()), 0.0)  # two samples differ inside the box
        outside_mean, outside_std = mean[0, [1, 3]].clone(), std[0, [1, 3]].clone()
        outside_mean[(slice(None), *box)], outside_std[(slice(None), *box)] = -1.0, 0.0
        self.assertTrue(torch.all(outside_mean == -1.0) and torch.all(outside_std == 0.0))
        self.assertTrue(torch.all(std[:, [0, 2]] == 0))

    def test_sizes_the_denoising_unet_cannot_take_are_padded(self):
        """12 px is divisible by the tiny autoencoder's factor (4) but gives a 3-pixel latent, which the two-level
        UNet cannot take: size_divisor counts the UNet too, so the inferer pads to 16 and crops back."""
        net = tiny_msgldm().eval()
        self.assertEqual(net.size_divisor, 8)
        x = torch.rand(1, 4, 12, 12) * 2 - 1
        with self.assertRaises(RuntimeError):
            sampler().sample(x, net, torch.tensor([[True, True, True, False]]))
        out = ModalitySynthesisInferer(sampler(), progress=False)(x, net, ["t1", "t1ce", "t2"])
        self.assertEqual(out.shape, x.shape)
        self.assertTrue(torch.isfinite(out).all())

    def test_errors(self):
        net = tiny_msgldm()
        with self.assertRaisesRegex(ValueError, "crop_margin"):
            ModalitySynthesisInferer(crop_margin=-1)
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
