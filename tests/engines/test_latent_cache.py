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

import copy
import unittest

import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, OneOf, RandFlipd, RandGaussianNoised, ScaleIntensityd

from monai_msgldm.engines import LatentCache, LatentDiffusionTrainer, StaleLatentError, check_cacheable_transforms
from monai_msgldm.inferers import MultiContrastDiffusionInferer
from monai_msgldm.networks.nets import MSGLDM
from monai_msgldm.transforms import RandAxialSliceSamplesd, RandModalityDropoutd
from tests.engines.test_engine_utils import make_samples, setUpModule, tearDownModule  # noqa: F401
from tests.inferers.test_diffusion import ddpm
from tests.networks.nets.test_msgldm import tiny_msgldm
from tests.networks.nets.test_plain_ldm import _tiny as tiny_plain_ldm


def keyed_samples(num: int = 4) -> list[dict]:
    """make_samples with a case id and a slice index (in the meta data, as RandAxialSliceSamplesd records it)."""
    samples = make_samples(num)
    for i, s in enumerate(samples):
        s["subject"] = f"case{i // 2}"
        s["image"] = MetaTensor(s["image"], meta={"slice_index": i % 2})
    return samples


def volumes(num: int = 2, depth: int = 5) -> list[dict]:
    """3D volumes (4 contrasts, 16 x 16 x depth, MetaTensors as LoadImaged gives) to be sliced in the transform
    chain, as in the bundle."""
    g = torch.Generator().manual_seed(1)
    return [
        {"subject": f"vol{i}", "image": MetaTensor(torch.rand(4, 16, 16, depth, generator=g) * 2 - 1)}
        for i in range(num)
    ]


def slicing_chain(*extra) -> Compose:
    """What the bundle's stage-2 chain does after the volume transforms: pick slices, draw the input masks."""
    return Compose(
        [
            RandAxialSliceSamplesd(keys="image", num_samples=2, min_foreground_fraction=0.0),
            RandModalityDropoutd(keys="image", mask_key="input_available"),
            *extra,
        ]
    )


def posterior_reference(net: MSGLDM, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The autoencoder's posterior of every contrast, ``(B, M * C, *L)``, straight from MONAI's AutoencoderKL."""
    b, m = images.shape[:2]
    with torch.no_grad():
        mu, sigma = net.autoencoder.model.encode(images.reshape(b * m, 1, *images.shape[2:]))
    return mu.reshape(b, -1, *mu.shape[2:]), sigma.reshape(b, -1, *sigma.shape[2:])


class CountingEncoder:
    """Wraps ``AutoencoderKL.encode`` and counts the (single-contrast) images it encodes."""

    def __init__(self, net: MSGLDM) -> None:
        self.images = 0
        self.calls = 0
        model = net.autoencoder.model
        self.original = model.encode

        def encode(x):
            self.calls += 1
            self.images += x.shape[0]
            return self.original(x)

        model.encode = encode


class TestLatentCache(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.net = tiny_msgldm().eval()
        self.net.scale_factor.fill_(0.7)
        self.batch = next(iter(DataLoader(keyed_samples(), batch_size=4)))
        self.images = self.batch["image"].as_tensor()

    def test_keys(self):
        cache = LatentCache()
        self.assertEqual(cache.keys(self.batch), [("case0", 0), ("case0", 1), ("case1", 0), ("case1", 1)])
        # a slice index in the batch itself; no slice index (2D data sets); the file name when there is no case key
        batch = {"image": self.images, "subject": ["a", "b", "c", "d"], "slice": torch.tensor([3, 4, 5, 6])}
        self.assertEqual(LatentCache(slice_key="slice").keys(batch), [("a", 3), ("b", 4), ("c", 5), ("d", 6)])
        self.assertEqual(LatentCache(slice_key=None).keys(batch), [("a",), ("b",), ("c",), ("d",)])
        named = MetaTensor(self.images, meta={"filename_or_obj": ["f0", "f1", "f2", "f3"], "slice_index": [1] * 4})
        self.assertEqual(LatentCache().keys({"image": named}), [("f0", 1), ("f1", 1), ("f2", 1), ("f3", 1)])
        with self.assertRaisesRegex(ValueError, "case identifier"):
            LatentCache().keys({"image": self.images})
        with self.assertRaisesRegex(ValueError, "slice index"):
            LatentCache().keys({"image": self.images, "subject": ["a"] * 4})
        with self.assertRaisesRegex(ValueError, "one case"):
            LatentCache(slice_key=None).keys({"image": self.images, "subject": ["a"] * 3})
        with self.assertRaisesRegex(ValueError, "dtype"):
            LatentCache(dtype=torch.int32)

    def test_values_are_the_autoencoder_posterior(self):
        cache = LatentCache()
        keys = cache.keys(self.batch)
        mean, std = cache.posterior(self.net, self.images, keys)
        ref_mu, ref_sigma = posterior_reference(self.net, self.images)
        self.assertEqual(mean.shape, (4, 8, 4, 4))
        torch.testing.assert_close(mean, ref_mu, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(std, ref_sigma, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mean, self.net.autoencoder.encode_mean(self.images), rtol=1e-6, atol=1e-6)
        self.assertGreater(float(std.min()), 0.0)
        # the sample with a given eps: scale_factor * (mean + std * eps)
        eps = torch.randn(mean.shape)
        z = cache.sample(mean, std, self.net.scale_factor, eps)
        torch.testing.assert_close(z, 0.7 * (ref_mu + ref_sigma * eps), rtol=1e-6, atol=1e-6)
        # with the RNG replayed, exactly what model.encode draws (MONAI's AutoencoderKL.sampling, then the scale)
        torch.manual_seed(7)
        expected = self.net.encode(self.images)
        torch.manual_seed(7)
        torch.testing.assert_close(cache.latents(self.net, self.images, keys), expected, rtol=1e-6, atol=1e-6)
        # the cached values come back from later visits, whatever the batch composition
        mean2, std2 = cache.posterior(self.net, self.images[[3, 0]], [keys[3], keys[0]])
        torch.testing.assert_close(mean2, ref_mu[[3, 0]], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(std2, ref_sigma[[3, 0]], rtol=1e-6, atol=1e-6)
        # size: 4 slices x 2 tensors x 8 x 4 x 4 float32, and 4 x 4 x 4 float64 fingerprints
        self.assertEqual(len(cache), 4)
        self.assertEqual(cache.nbytes, 4 * (2 * 8 * 16 * 4 + 16 * 8))
        self.assertEqual(cache.sample(mean, None, 2.0).tolist(), (2 * mean).tolist())
        with self.assertRaisesRegex(ValueError, "eps of shape"):
            cache.sample(mean, std, 1.0, torch.zeros(1))

    def test_half_precision_storage(self):
        cache = LatentCache(dtype=torch.float16)
        mean, std = cache.posterior(self.net, self.images, cache.keys(self.batch))
        ref_mu, ref_sigma = posterior_reference(self.net, self.images)
        self.assertEqual(mean.dtype, torch.float16)
        torch.testing.assert_close(mean.float(), ref_mu, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(std.float(), ref_sigma, rtol=1e-3, atol=1e-3)

    def test_filled_once_per_slice(self):
        counter = CountingEncoder(self.net)
        cache = LatentCache()
        keys = cache.keys(self.batch)
        for _ in range(3):
            for rows in ([0, 1], [2, 3], [3, 0]):
                cache.posterior(self.net, self.images[rows], [keys[i] for i in rows])
        self.assertEqual((counter.calls, counter.images), (2, 4 * 4))  # 2 batches with misses, 4 slices x 4 contrasts
        self.assertEqual((cache.misses, cache.hits, len(cache)), (4, 14, 4))
        # the same new slice twice in one batch: encoded once
        cache.clear()
        cache.posterior(self.net, self.images[[1, 1, 2]], [keys[1], keys[1], keys[2]])
        self.assertEqual((counter.calls, counter.images), (3, 4 * 4 + 2 * 4))
        self.assertEqual((cache.misses, cache.hits), (2, 1))

    def test_refuses_changed_images(self):
        cache = LatentCache()
        keys = cache.keys(self.batch)
        cache.posterior(self.net, self.images, keys)
        cache.posterior(self.net, self.images + 1e-7, keys)  # float noise of a recomputed slice: accepted
        changed = {
            "flip": torch.flip(self.images, dims=(-1,)),
            "noise": self.images + 0.01 * torch.randn(self.images.shape),
            "intensity": self.images * 1.01,
            "one contrast": torch.cat([self.images[:, :3], self.images[:, 3:].roll(1, dims=-2)], dim=1),
        }
        for what, images in changed.items():
            with self.subTest(what), self.assertRaisesRegex(StaleLatentError, "differs from the one"):
                cache.posterior(self.net, images, keys)
        with self.assertRaisesRegex(StaleLatentError, "case1"):  # a new slice twice in a batch, two images
            LatentCache().posterior(self.net, torch.stack([self.images[2], self.images[3]]), [keys[2], keys[2]])
        unchecked = LatentCache(atol=None)
        unchecked.posterior(self.net, self.images, keys)
        unchecked.posterior(self.net, changed["flip"], keys)

    def test_structure_features(self):
        """With structure_features the cache also keeps every contrast's structure encoder features (each encoder on
        its own contrast, as StructureEncoder computes them), encoded once per slice with the latents; the
        condition built from them equals the condition from the images, whatever mask is drawn later."""
        net = tiny_msgldm(hybrid_condition=True).eval()
        net.scale_factor.fill_(0.7)
        cache = LatentCache(structure_features=True)
        keys = cache.keys(self.batch)
        calls = []
        for encoder in net.structure_net.structure_encoders:
            encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
        found = cache.lookup(net, self.images[[0, 1]], keys[:2])
        found = cache.lookup(net, self.images, keys)
        self.assertEqual(calls, [2] * 4 + [2] * 4)  # the 2 new slices of each call, each contrast's encoder once
        ref_mu, ref_sigma = posterior_reference(net, self.images)
        torch.testing.assert_close(found["mean"], ref_mu, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(found["std"], ref_sigma, rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            for m, encoder in enumerate(net.structure_net.structure_encoders):
                for level, ref in enumerate(encoder(self.images[:, m : m + 1])):
                    torch.testing.assert_close(found["structure_features"][level][:, m], ref, rtol=1e-5, atol=1e-6)
            available = torch.tensor([[True, False, True, False], [False, True, False, False]] * 2)
            latents = LatentCache.sample(found["mean"], found["std"], net.scale_factor)
            torch.testing.assert_close(
                net.condition(self.images, available, latents, structure_features=found["structure_features"]),
                net.condition(self.images, available, latents),
                rtol=1e-5,
                atol=1e-6,
            )
        # size: per slice the posterior and fingerprint as before, plus 4 contrasts x (4*16*16 + 8*8*8 + 8*4*4) floats
        features_per_slice = 4 * (4 * 256 + 8 * 64 + 8 * 16) * 4
        self.assertEqual(cache.nbytes, 4 * (2 * 8 * 16 * 4 + 16 * 8 + features_per_slice))
        self.assertNotIn("structure_features", LatentCache().lookup(net, self.images, keys))
        with self.assertRaisesRegex(ValueError, "needs an MSGLDM, got PlainConditionalLDM"):
            cache.lookup(tiny_plain_ldm(), self.images, keys)

    def test_check_cacheable_transforms(self):
        check_cacheable_transforms(None)
        check_cacheable_transforms(slicing_chain(ScaleIntensityd(keys="image")))  # deterministic: fine
        check_cacheable_transforms(Compose([slicing_chain(), ScaleIntensityd(keys="image")]))  # nested
        refused = {
            "RandGaussianNoised": slicing_chain(RandGaussianNoised(keys="image", prob=1.0)),
            "RandModalityDropoutd": Compose([RandModalityDropoutd(keys="image")]),  # it fills the dropped channels
            "OneOf": slicing_chain(OneOf([ScaleIntensityd(keys="image"), RandFlipd(keys="image")])),
            "RandFlipd": Compose([RandFlipd(keys="image", prob=0.5), slicing_chain()]),  # before the slicer too
        }
        for name, chain in refused.items():
            with self.subTest(name), self.assertRaisesRegex(ValueError, f"change images: \\['{name}'\\]"):
                check_cacheable_transforms(chain)


class TestTrainerWithLatentCache(unittest.TestCase):
    def _run(self, net, latent_cache, chain=None, epochs=3, scheduler="epsilon"):
        """Train on 2 volumes x 2 random slices per epoch (batch 1 volume = 2 slices), as the bundle's chain does;
        the chain and the global RNG are seeded so that two runs see the same data and draws."""
        torch.manual_seed(11)  # MONAI's DataLoader seeds the data set's transforms from the global RNG
        loader = DataLoader(Dataset(volumes(), transform=chain or slicing_chain()), batch_size=1, num_workers=0)
        trainer = LatentDiffusionTrainer(
            "cpu",
            epochs,
            loader,
            net,
            torch.optim.SGD(net.unet.parameters(), 0.1),
            inferer=MultiContrastDiffusionInferer(ddpm(scheduler)),
            input_mask_key="input_available",
            latent_cache=latent_cache,
        )
        losses, keys = [], []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
        trainer.add_event_handler(
            Events.ITERATION_STARTED,
            lambda e: keys.extend(zip(e.state.batch["subject"], e.state.batch["image"].meta["slice_index"].tolist())),
        )
        trainer.run()
        return trainer, losses, keys

    def test_same_steps_with_and_without_cache(self):
        """In fp32 the cached run draws what the uncached one draws (noise, timesteps, eps in the inferer's order):
        same losses and the same UNet after 3 epochs (6 iterations), up to float rounding; the calibration of the
        scale factor (first batch, RNG before the draws) is the same too."""
        for scheduler in ("epsilon", "v_prediction"):
            with self.subTest(scheduler):
                torch.manual_seed(0)
                plain = tiny_msgldm()
                cached = copy.deepcopy(plain)
                _, losses_plain, keys_plain = self._run(plain, None, scheduler=scheduler)
                trainer, losses_cached, keys_cached = self._run(cached, True, scheduler=scheduler)
                self.assertIsInstance(trainer.latent_cache, LatentCache)
                self.assertEqual(keys_plain, keys_cached)
                self.assertEqual(len(losses_plain), 6)
                self.assertNotEqual(float(plain.scale_factor), 1.0)
                self.assertEqual(float(plain.scale_factor), float(cached.scale_factor))
                torch.testing.assert_close(losses_cached, losses_plain, rtol=1e-5, atol=1e-6)
                for (k, a), b in zip(plain.unet.state_dict().items(), cached.unet.state_dict().values()):
                    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)
                # it trained (the check is not vacuous) and the cache holds every slice seen
                self.assertEqual(len(trainer.latent_cache), len(set(keys_cached)))
                self.assertGreater(trainer.latent_cache.hits, 0)

    def test_same_steps_with_cached_structure_features(self):
        """Caching the structure encoders' features as well changes nothing but the work: the same losses and the
        same UNet as a run without any cache (F_s is recomputed from cached features with each iteration's mask),
        with each contrast's structure encoder run once per distinct slice."""
        torch.manual_seed(0)
        plain = tiny_msgldm(hybrid_condition=True)
        cached = copy.deepcopy(plain)
        calls = []
        for encoder in cached.structure_net.structure_encoders:
            encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
        _, losses_plain, _ = self._run(plain, None, scheduler="v_prediction")
        trainer, losses_cached, keys = self._run(cached, LatentCache(structure_features=True), scheduler="v_prediction")
        torch.testing.assert_close(losses_cached, losses_plain, rtol=1e-5, atol=1e-6)
        for (k, a), b in zip(plain.unet.state_dict().items(), cached.unet.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)
        self.assertEqual(sum(calls), 4 * len(set(keys)))  # the calibration of the scale factor encodes latents only
        self.assertLess(len(set(keys)), len(keys))
        # a cache of structure features with a network that has none: refused when the trainer is built
        with self.assertRaisesRegex(ValueError, "structure_features=False for PlainConditionalLDM"):
            self._run(tiny_plain_ldm(), LatentCache(structure_features=True))

    def test_encoder_calls(self):
        """Without the cache every iteration encodes its 2 slices; with it, only the slices never seen before."""
        torch.manual_seed(0)
        net = tiny_msgldm()
        net.scale_factor.fill_(0.5)  # no calibration (its encoder call would be counted too)
        plain, cached = CountingEncoder(net), None
        _, _, keys = self._run(net, None, epochs=4)
        self.assertEqual(plain.images, 8 * 2 * 4)  # 8 iterations x 2 slices x 4 contrasts
        torch.manual_seed(0)
        net = tiny_msgldm()
        net.scale_factor.fill_(0.5)
        cached = CountingEncoder(net)
        trainer, _, keys = self._run(net, LatentCache(), epochs=4)
        distinct = len(set(keys))
        self.assertLess(distinct, len(keys))  # 5 slices per volume, 8 draws per volume: some come back
        self.assertEqual(cached.images, distinct * 4)
        self.assertEqual((trainer.latent_cache.misses, trainer.latent_cache.hits), (distinct, len(keys) - distinct))

    def test_refusal(self):
        torch.manual_seed(0)
        net = tiny_msgldm()
        # random augmentation in the data set's transforms: refused when the trainer is built
        with self.assertRaisesRegex(ValueError, "RandGaussianNoised"):
            self._run(net, True, chain=slicing_chain(RandGaussianNoised(keys="image", prob=1.0)))
        with self.assertRaisesRegex(ValueError, "latent_cache to be"):
            self._run(net, "yes")
        # a randomness the check cannot see (here a data set whose images change): refused at the first changed visit
        data = [dict(s, image=s["image"].clone()) for s in keyed_samples(2)]
        loader = DataLoader(data, batch_size=2)
        trainer = LatentDiffusionTrainer(
            "cpu", 2, loader, net, torch.optim.SGD(net.unet.parameters(), 0.1), latent_cache=True
        )
        after_first = {}
        trainer.add_event_handler(
            Events.EPOCH_COMPLETED,
            lambda e: (data[1]["image"].mul_(0.5), after_first.update(copy.deepcopy(net.unet.state_dict()))),
        )
        with self.assertRaisesRegex(StaleLatentError, "'case0', 1"):
            trainer.run()
        # raised in the second iteration, before any step on the stale latents
        self.assertEqual(trainer.state.iteration, 2)
        for k, v in net.unet.state_dict().items():
            self.assertTrue(torch.equal(v, after_first[k]), k)


if __name__ == "__main__":
    unittest.main()
