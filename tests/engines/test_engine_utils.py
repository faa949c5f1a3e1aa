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

import numpy as np
import torch
from monai.data import DataLoader, MetaTensor
from parameterized import parameterized

from monai_msgldm.engines import (
    ModalityMaskSampler,
    PrepareMultiModalBatch,
    evaluate_with_ema_weights,
    kl_divergence,
    resolve_amp,
)

__all__ = ["DATA_AVAILABLE", "make_loader", "make_samples", "setUpModule", "tearDownModule"]

_THREADS: list[int] = []


def setUpModule() -> None:  # noqa: N802 (unittest name)
    """Tiny networks: one intra-op thread (several threads on a busy 2-core machine are ~100x slower here)."""
    _THREADS.append(torch.get_num_threads())
    torch.set_num_threads(1)


def tearDownModule() -> None:  # noqa: N802 (unittest name)
    if _THREADS:
        torch.set_num_threads(_THREADS.pop())


#: data availability of the 4 test samples: the second lacks t1ce, the fourth lacks t1 and flair
DATA_AVAILABLE = [
    [True, True, True, True],
    [True, False, True, True],
    [True, True, True, True],
    [False, True, True, False],
]


def make_samples(num: int = 4, size: int = 16, seed: int = 0) -> list[dict]:
    """Small synthetic samples in the collated-batch format: image (4, S, S) in [-1, 1], available (4,), seg (3, S, S)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num):
        base = torch.rand(1, size, size, generator=g)
        image = torch.cat([base * (0.5 + 0.2 * m) + 0.1 * torch.rand(1, size, size, generator=g) for m in range(4)])
        image = image.clamp(0, 1) * 2 - 1
        available = torch.tensor(DATA_AVAILABLE[i % len(DATA_AVAILABLE)])
        image[~available] = -1.0
        wt = (base[0] > 0.5).float()
        tc = (base[0] > 0.7).float()
        et = (base[0] > 0.85).float()
        samples.append({"image": image, "available": available, "seg": torch.stack([tc, wt, et])})
    return samples


def make_loader(num: int = 4, batch_size: int = 2, size: int = 16) -> DataLoader:
    return DataLoader(make_samples(num, size), batch_size=batch_size, shuffle=False, num_workers=0)


class TestModalityMaskSampler(unittest.TestCase):
    def test_never_empty_and_subset(self):
        data = torch.tensor(DATA_AVAILABLE * 25)
        sampler = ModalityMaskSampler(min_available=1).set_random_state(3)
        masks = torch.stack([sampler(data) for _ in range(4)])
        self.assertEqual(masks.dtype, torch.bool)
        self.assertTrue(bool(masks.any(dim=-1).all()))  # never all missing
        self.assertFalse(bool((masks & ~data).any()))  # only among data-available modalities
        # every number of kept modalities 1..4 occurs for the full rows, and something is dropped sometimes
        kept = masks[:, data.all(dim=1)].sum(dim=-1)
        self.assertEqual(sorted(set(kept.flatten().tolist())), [1, 2, 3, 4])

    def test_reproducible(self):
        data = torch.tensor(DATA_AVAILABLE * 4)
        a = ModalityMaskSampler().set_random_state(7)(data)
        b = ModalityMaskSampler().set_random_state(7)(data)
        c = ModalityMaskSampler().set_random_state(8)(data)
        torch.testing.assert_close(a, b)
        self.assertFalse(torch.equal(a, c))

    def test_min_available_and_max_missing(self):
        data = torch.ones(200, 4, dtype=torch.bool)
        masks = ModalityMaskSampler(min_available=2, max_missing=1).set_random_state(0)(data)
        self.assertEqual(set(masks.sum(dim=1).tolist()), {3, 4})

    @parameterized.expand(
        [(torch.zeros(2, 4, dtype=torch.bool), "none in rows"), (torch.ones(4, dtype=torch.bool), "(B, M)")]
    )
    def test_errors(self, available, msg):
        with self.assertRaisesRegex(ValueError, msg):
            ModalityMaskSampler()(available)


class TestPrepareAndKL(unittest.TestCase):
    def test_prepare(self):
        batch = next(iter(make_loader()))
        images, seg, (available,), kwargs = PrepareMultiModalBatch()(batch, "cpu")
        self.assertEqual(tuple(images.shape), (2, 4, 16, 16))
        self.assertEqual(tuple(seg.shape), (2, 3, 16, 16))
        torch.testing.assert_close(available, torch.tensor(DATA_AVAILABLE[:2]))
        self.assertEqual(kwargs, {})
        _, seg, (available,), _ = PrepareMultiModalBatch()({"image": torch.zeros(3, 4, 8, 8)})
        self.assertIsNone(seg)
        self.assertTrue(bool(available.all()))
        with self.assertRaisesRegex(ValueError, "'available' expects available of shape"):
            PrepareMultiModalBatch()({"image": torch.zeros(3, 4, 8, 8), "available": torch.ones(3, 2)})
        with self.assertRaisesRegex(ValueError, "key 'image'"):
            PrepareMultiModalBatch()({"img": torch.zeros(3, 4, 8, 8)})
        # track_meta=False: the same values as plain tensors (the trainers' choice), the batch keeps its meta data
        meta_batch = {
            "image": MetaTensor(torch.as_tensor(batch["image"]), meta={"slice_index": [1, 2]}),
            "seg": batch["seg"],
        }
        tracked, tracked_seg, _, _ = PrepareMultiModalBatch()(meta_batch, "cpu")
        plain, plain_seg, (plain_available,), _ = PrepareMultiModalBatch(track_meta=False)(meta_batch, "cpu")
        self.assertIsInstance(tracked, MetaTensor)
        for value in (plain, plain_seg):
            self.assertIs(type(value), torch.Tensor)
        self.assertTrue(torch.equal(plain, tracked.as_tensor()))
        self.assertTrue(torch.equal(plain_seg, torch.as_tensor(tracked_seg)))
        self.assertIsInstance(meta_batch["image"], MetaTensor)
        self.assertEqual(meta_batch["image"].meta["slice_index"], [1, 2])

    def test_kl(self):
        mu, sigma = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
        self.assertEqual(float(kl_divergence(mu, sigma)), 0.0)
        # closed form: 0.5 * (mu^2 + s^2 - log s^2 - 1) per element, summed per sample (48 elements), batch mean
        mu = torch.full((2, 3, 4, 4), 0.5)
        sigma = torch.full((2, 3, 4, 4), 2.0)
        expected = 48 * 0.5 * (0.25 + 4.0 - np.log(4.0) - 1.0)
        self.assertAlmostEqual(float(kl_divergence(mu, sigma)), expected, places=4)

    def test_amp_only_on_cuda(self):
        self.assertFalse(resolve_amp(True, "cpu"))
        self.assertFalse(resolve_amp(False, "cuda"))
        self.assertTrue(resolve_amp(True, "cuda:0"))


class TestEvaluateWithEmaWeights(unittest.TestCase):
    def _setup(self):
        from ignite.engine import Engine

        torch.manual_seed(0)
        model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        trained = {k: v.clone() for k, v in model.state_dict().items()}
        seen = []
        evaluator = Engine(lambda engine, batch: seen.append(model.weight.detach().clone()))
        return model, ema, trained, seen, evaluator

    def test_scores_ema_then_restores(self):
        model, ema, trained, seen, evaluator = self._setup()
        evaluate_with_ema_weights(evaluator, model, ema)
        evaluator.run([0, 1], max_epochs=1)
        self.assertEqual(len(seen), 2)
        for w in seen:
            torch.testing.assert_close(w, ema.weight.detach())
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, trained[k])

    def test_restores_and_reraises_on_error(self):
        from ignite.engine import Engine

        model, ema, trained, _, _ = self._setup()

        def fail(engine, batch):
            raise RuntimeError("boom")

        evaluator = Engine(fail)
        evaluate_with_ema_weights(evaluator, model, ema)
        with self.assertRaisesRegex(RuntimeError, "boom"):
            evaluator.run([0], max_epochs=1)
        torch.testing.assert_close(model.weight.detach(), trained["weight"])

    def test_none_and_mismatch(self):
        model, _, trained, seen, evaluator = self._setup()
        evaluate_with_ema_weights(evaluator, model, None)
        evaluator.run([0], max_epochs=1)
        torch.testing.assert_close(seen[0], trained["weight"])
        with self.assertRaisesRegex(ValueError, "same state keys"):
            evaluate_with_ema_weights(evaluator, model, torch.nn.Linear(3, 2, bias=False))


if __name__ == "__main__":
    unittest.main()
