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
"""Training on incomplete studies: every loss counts only the contrasts a case has, and the "given" mask never
offers an absent contrast."""

from __future__ import annotations

import math
import os
import tempfile
import unittest

import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.transforms import Compose

from monai_msgldm.constants import MODALITIES
from monai_msgldm.data import build_brats_datalist, write_datalist
from monai_msgldm.engines import (
    AutoencoderTrainer,
    LatentDiffusionTrainer,
    ModalityMaskSampler,
    RegressionSynthesisTrainer,
    StructureStyleTrainer,
)
from monai_msgldm.engines.utils import present_contrast_loss
from monai_msgldm.inferers import MultiContrastDiffusionInferer
from monai_msgldm.losses import StructureAwareLoss, StyleConsistencyLoss
from monai_msgldm.transforms import RandAxialSliceSamplesd, RandModalityDropoutd, brats_preprocessing_transforms
from tests.data.test_datalist import make_brats_case
from tests.engines.test_autoencoder_engines import tiny_autoencoder
from tests.engines.test_engine_utils import make_samples, setUpModule, tearDownModule  # noqa: F401
from tests.engines.test_structure_engines import tiny_structure_net
from tests.inferers.test_diffusion import ddpm
from tests.networks.nets.test_msgldm import tiny_msgldm
from tests.networks.nets.test_regression import tiny_regression

#: data availability of the test batch: sample 0 lacks t1ce, sample 1 lacks t1 and flair (sample 2 has all)
INCOMPLETE = torch.tensor([[True, False, True, True], [False, True, True, False], [True, True, True, True]])
LATENT_CHANNELS = 2  # of tiny_msgldm's autoencoder


def incomplete_samples(available: torch.Tensor = INCOMPLETE, size: int = 16) -> list[dict]:
    """make_samples with the given availability: absent contrasts are -1 fills, as the preprocessing makes them."""
    samples = make_samples(len(available), size=size)
    for s, row in zip(samples, available):
        s["image"][~row] = -1.0
        s["available"] = row.clone()
    return samples


def loader_of(samples: list[dict]) -> DataLoader:
    return DataLoader(samples, batch_size=len(samples), shuffle=False, num_workers=0)


class RecordingInferer(MultiContrastDiffusionInferer):
    """The training inferer, keeping the iteration's ``(prediction, target)`` with the prediction's gradient."""

    def __call__(self, *args, **kwargs):
        prediction, target = super().__call__(*args, **kwargs)
        prediction.retain_grad()
        self.record = (prediction, target)
        return prediction, target


def record_output(network: torch.nn.Module, record: dict) -> None:
    """Keep the network's forward output, with its gradient after the backward pass."""

    def hook(_module, _inputs, output):
        output.retain_grad()
        record["output"] = output

    network.register_forward_hook(hook)


class TestPresentContrastLoss(unittest.TestCase):
    def test_values_and_gradient(self):
        g = torch.Generator().manual_seed(0)
        prediction = torch.randn(3, 4 * LATENT_CHANNELS, 5, 5, generator=g, requires_grad=True)
        target = torch.randn(3, 4 * LATENT_CHANNELS, 5, 5, generator=g)
        loss = present_contrast_loss(torch.nn.MSELoss(), prediction, target, INCOMPLETE)
        loss.backward()
        grads, prediction = prediction.grad, prediction.detach()
        # by hand: contrast m holds channels 2m, 2m+1; the mean over the 2 * 9 present contrasts' channels
        squares, count = 0.0, 0
        for b in range(3):
            for m in range(4):
                if INCOMPLETE[b, m]:
                    block = slice(m * LATENT_CHANNELS, (m + 1) * LATENT_CHANNELS)
                    squares += float(((prediction[b, block] - target[b, block]) ** 2).sum())
                    count += LATENT_CHANNELS * 25
        self.assertEqual(count, 9 * LATENT_CHANNELS * 25)
        self.assertAlmostEqual(float(loss.detach()), squares / count, places=5)
        for b in range(3):
            for m in range(4):
                grad = grads[b, m * LATENT_CHANNELS : (m + 1) * LATENT_CHANNELS]
                if INCOMPLETE[b, m]:
                    expected = 2 * (prediction - target)[b, m * LATENT_CHANNELS : (m + 1) * LATENT_CHANNELS] / count
                    torch.testing.assert_close(grad, expected)
                else:
                    self.assertTrue(bool((grad == 0).all()), (b, m))

    def test_complete_is_the_plain_call(self):
        g = torch.Generator().manual_seed(1)
        prediction, target = torch.randn(2, 8, 6, 6, generator=g), torch.randn(2, 8, 6, 6, generator=g)
        complete = torch.ones(2, 4, dtype=torch.bool)
        for loss_function in (torch.nn.MSELoss(), torch.nn.L1Loss(), torch.nn.MSELoss(reduction="none")):
            self.assertTrue(
                torch.equal(
                    present_contrast_loss(loss_function, prediction, target, complete),
                    loss_function(prediction, target),
                )
            )
        # 0/1 masks work as bools; single-channel images (C = 1) too
        images = torch.randn(2, 4, 6, 6, generator=g)
        loss = present_contrast_loss(torch.nn.L1Loss(), images, torch.zeros_like(images), INCOMPLETE[:2].int())
        self.assertAlmostEqual(float(loss), float(images[INCOMPLETE[:2]].abs().mean()), places=6)

    def test_errors(self):
        x = torch.zeros(2, 8, 4, 4)
        with self.assertRaisesRegex(ValueError, "same shape"):
            present_contrast_loss(torch.nn.MSELoss(), x, torch.zeros(2, 6, 4, 4), torch.ones(2, 4, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "available of shape \\(B, M\\)"):
            present_contrast_loss(torch.nn.MSELoss(), x, x, torch.ones(2, 3, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "available of shape \\(B, M\\)"):
            present_contrast_loss(torch.nn.MSELoss(), x, x, torch.ones(3, 4, dtype=torch.bool))


class TestGivenMask(unittest.TestCase):
    """The input ("given") mask is drawn among the present contrasts only, and keeps one."""

    def test_sampler_and_transform_never_give_an_absent_contrast(self):
        data = torch.tensor([[True, False, True, True], [False, False, True, False], [False, True, False, True]])
        sampler = ModalityMaskSampler(min_available=1).set_random_state(0)
        transform = RandModalityDropoutd(keys="image", mask_key="input_available").set_random_state(0)
        seen = set()
        for _ in range(100):
            masks = sampler(data)
            drawn = torch.stack(
                [transform({"image": torch.zeros(4, 2, 2), "available": row})["input_available"] for row in data]
            )
            for mask in (masks, drawn):
                self.assertFalse(bool((mask & ~data).any()))
                self.assertTrue(bool(mask.any(dim=1).all()))
                # the single present contrast of row 1 is always given
                self.assertEqual(mask[1].tolist(), [False, False, True, False])
            seen.add(tuple(masks[0].tolist()))
        # row 0: every non-empty subset of its 3 present contrasts is drawn, and nothing else
        self.assertEqual(len(seen), 7)


class TestStage2(unittest.TestCase):
    def _iteration(self, samples: list[dict]):
        torch.manual_seed(0)
        net = tiny_msgldm()
        net.scale_factor.fill_(0.5)
        inferer = RecordingInferer(ddpm())
        trainer = LatentDiffusionTrainer(
            "cpu", 1, loader_of(samples), net, torch.optim.SGD(net.unet.parameters(), 0.0), inferer=inferer
        )
        trainer.run()
        prediction, target = inferer.record
        return trainer, prediction, target

    def test_loss_counts_present_channels_only(self):
        trainer, prediction, target = self._iteration(incomplete_samples())
        keep = INCOMPLETE.repeat_interleave(LATENT_CHANNELS, dim=1)  # (3, 8)
        self.assertEqual(int(keep.sum()), 9 * LATENT_CHANNELS)
        expected = ((prediction - target)[keep] ** 2).mean()
        loss = trainer.state.output[0]["loss"]
        self.assertAlmostEqual(float(loss), float(expected), places=6)
        self.assertNotAlmostEqual(float(loss), float(((prediction - target) ** 2).mean()), places=4)
        # gradient of the loss: exactly zero in the absent contrasts' latent channels, 2 (p - t) / n elsewhere
        grad = prediction.grad
        self.assertTrue(bool((grad[~keep] == 0).all()))
        n = int(keep.sum()) * prediction[0, 0].numel()
        torch.testing.assert_close(grad[keep], (2 * (prediction - target)[keep] / n).detach())
        # the given masks were drawn among the present contrasts
        given = torch.stack([o["available"] for o in trainer.state.output])
        self.assertFalse(bool((given & ~INCOMPLETE).any()))

    def test_complete_batch_loss_is_unchanged(self):
        complete = torch.ones(3, 4, dtype=torch.bool)
        trainer, prediction, target = self._iteration(incomplete_samples(complete))
        loss = trainer.state.output[0]["loss"]
        self.assertTrue(torch.equal(torch.as_tensor(loss), F.mse_loss(prediction, target).detach()))


class TestStage1(unittest.TestCase):
    def setUp(self):
        self.images = torch.stack([s["image"] for s in incomplete_samples()])
        self.seg = torch.zeros(3, 3, 16, 16)

    def _trainer(self, **kwargs) -> StructureStyleTrainer:
        net = tiny_structure_net(0)
        return StructureStyleTrainer(
            "cpu", 1, loader_of(incomplete_samples()), net, torch.optim.SGD(net.parameters(), 0.0), **kwargs
        )

    def test_reconstruction_term(self):
        g = torch.Generator().manual_seed(2)
        reconstruction = torch.rand(3, 4, 16, 16, generator=g).mul(2).sub(1).requires_grad_(True)
        outputs = {"reconstruction": reconstruction, "style": torch.zeros(3, 4, 4), "segmentation": self.seg}
        # L1 (by hand: the mean absolute error over the 9 present contrast images)
        trainer = self._trainer(seg_weight=0.0, style_weight=0.0, structure_loss=torch.nn.L1Loss())
        loss, parts = trainer.compute_losses(outputs, self.images, INCOMPLETE, None)
        total, count = 0.0, 0
        for b in range(3):
            for m in range(4):
                if INCOMPLETE[b, m]:
                    total += float((reconstruction[b, m] - self.images[b, m]).abs().sum())
                    count += 16 * 16
        self.assertAlmostEqual(float(loss), total / count, places=6)
        self.assertAlmostEqual(float(parts["loss_structure"]), total / count, places=6)
        loss.backward()
        self.assertTrue(bool((reconstruction.grad[~INCOMPLETE] == 0).all()))
        self.assertTrue(bool((reconstruction.grad[INCOMPLETE] != 0).any(dim=(1, 2)).all()))
        # the default structure-aware loss (L1 + frequency SSIM): the loss of the present images, stacked
        reconstruction.grad = None
        trainer = self._trainer(seg_weight=0.0, style_weight=0.0)
        loss, _ = trainer.compute_losses(outputs, self.images, INCOMPLETE, None)
        expected = StructureAwareLoss(spatial_dims=2)(
            reconstruction[INCOMPLETE].unsqueeze(1), self.images[INCOMPLETE].unsqueeze(1)
        )
        self.assertAlmostEqual(float(loss), float(expected), places=6)
        loss.backward()
        self.assertTrue(bool((reconstruction.grad[~INCOMPLETE] == 0).all()))

    def test_style_term(self):
        g = torch.Generator().manual_seed(3)
        style = torch.randn(3, 4, 4, generator=g)
        style[~INCOMPLETE] = float("nan")  # absent contrasts' codes must not enter the loss at all
        style.requires_grad_(True)
        outputs = {"reconstruction": self.images.clone(), "style": style, "segmentation": self.seg}
        trainer = self._trainer(seg_weight=0.0, style_weight=1.0, structure_weight=0.0)
        loss, _ = trainer.compute_losses(outputs, self.images, INCOMPLETE, None)
        loss.backward()
        # by hand: BCE-with-logits of s * cos over every pair of present codes, target 1 for the same contrast
        present = [(b, m) for m in range(4) for b in range(3) if INCOMPLETE[b, m]]
        terms = []
        for bp, mp in present:
            for bq, mq in present:
                cos = F.cosine_similarity(style[bp, mp], style[bq, mq], dim=0)
                z, t = float(cos) / 0.07, 1.0 if mp == mq else 0.0
                terms.append(max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z))))
        self.assertEqual(len(terms), 81)
        self.assertAlmostEqual(float(loss), sum(terms) / len(terms), places=4)
        self.assertTrue(torch.isfinite(style.grad).all())
        self.assertTrue(bool((style.grad[~INCOMPLETE] == 0).all()))
        self.assertTrue(bool((style.grad[INCOMPLETE] != 0).any(dim=1).all()))
        self.assertAlmostEqual(float(loss), float(StyleConsistencyLoss()(style.detach(), INCOMPLETE)), places=6)


class TestStage0AndRegression(unittest.TestCase):
    def test_autoencoder_never_sees_absent_contrasts(self):
        """The absent contrasts' images are NaN here: the loss is finite, as only the present slices are encoded."""
        samples = incomplete_samples()
        for s in samples:
            s["image"][~s["available"]] = float("nan")
        torch.manual_seed(0)
        ae = tiny_autoencoder()
        trainer = AutoencoderTrainer("cpu", 1, loader_of(samples), ae, torch.optim.SGD(ae.parameters(), 1e-3))
        trainer.run()
        out = trainer.state.output
        self.assertEqual(len(out), 9)  # the 9 present contrast images of the batch
        self.assertTrue(math.isfinite(float(out[0]["loss"])))
        self.assertTrue(all(torch.isfinite(p).all() for p in ae.parameters()))

    def test_regression_loss_counts_present_contrasts_only(self):
        torch.manual_seed(0)
        net = tiny_regression()
        record: dict = {}
        record_output(net, record)
        trainer = RegressionSynthesisTrainer(
            "cpu", 1, loader_of(incomplete_samples(size=32)), net, torch.optim.SGD(net.parameters(), 0.0)
        )
        trainer.run()
        prediction = record["output"]
        images = torch.stack([s["image"] for s in incomplete_samples(size=32)])
        expected = (prediction - images)[INCOMPLETE].abs().mean()
        self.assertAlmostEqual(float(trainer.state.output[0]["loss"]), float(expected), places=6)
        self.assertTrue(bool((prediction.grad[~INCOMPLETE] == 0).all()))
        self.assertTrue(bool((prediction.grad[INCOMPLETE] != 0).any(dim=(1, 2)).all()))


class TestRealPreprocessing(unittest.TestCase):
    """Files with a contrast missing -> datalist (allow_incomplete) -> brats_preprocessing_transforms -> trainers."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name
        make_brats_case(self.root, "A")
        make_brats_case(self.root, "B", keys=("t1", "t2", "flair", "seg"))  # no t1ce

    def tearDown(self):
        self._tmp.cleanup()

    def _loader(self) -> DataLoader:
        dl = build_brats_datalist(self.root, allow_incomplete=True, val_ratio=0, test_ratio=0)
        self.assertEqual(dl["incomplete"], [{"subject": "B", "missing": ["t1ce"]}])
        path = write_datalist(dl, os.path.join(self.root, "datalist.json"))
        items = load_decathlon_datalist(path, data_list_key="training", base_dir=dl["data_root"])
        chain = Compose(
            [
                brats_preprocessing_transforms(spatial_size=(16, 16)),
                RandAxialSliceSamplesd(keys=["image", "seg"], num_samples=2, min_foreground_fraction=0.0),
            ]
        )
        chain.set_random_state(0)
        # each item gives 2 slices: a batch of one case is 2 slices
        return DataLoader(Dataset(items, transform=chain), batch_size=1, shuffle=False, num_workers=0)

    def test_batch_and_training_iterations(self):
        loader = self._loader()
        batches = list(loader)
        self.assertEqual(len(batches), 2)  # one per case, 2 slices each
        a, b = batches
        self.assertEqual(a["available"].tolist(), [[True] * 4] * 2)
        self.assertEqual(b["available"].tolist(), [[True, False, True, True]] * 2)
        self.assertEqual(tuple(b["image"].shape), (2, len(MODALITIES), 16, 16))
        self.assertTrue(bool((b["image"][:, 1] == -1).all()))  # the absent t1ce: the -1 fill
        self.assertTrue(bool((b["image"][:, [0, 2, 3]] > -1).any()))
        # stage 2: the loss counts the present channels only, absent ones get no gradient
        torch.manual_seed(0)
        net = tiny_msgldm()
        inferer = RecordingInferer(ddpm())
        trainer = LatentDiffusionTrainer(
            "cpu", 1, loader, net, torch.optim.SGD(net.unet.parameters(), 1e-3), inferer=inferer
        )
        trainer.run()
        self.assertEqual(trainer.state.iteration, 2)
        prediction, target = inferer.record  # the last iteration: case B
        keep = torch.tensor([[True, False, True, True]] * 2).repeat_interleave(LATENT_CHANNELS, dim=1)
        loss = float(trainer.state.output[0]["loss"])
        self.assertTrue(math.isfinite(loss))
        self.assertAlmostEqual(loss, float(((prediction - target)[keep] ** 2).mean()), places=6)
        self.assertTrue(bool((prediction.grad[~keep] == 0).all()))
        given = torch.stack([o["available"] for o in trainer.state.output])
        self.assertFalse(bool(given[:, 1].any()))
        # stage 1 runs on the same batches (segmentation, style and reconstruction terms)
        structure = tiny_structure_net(0)
        stage1 = StructureStyleTrainer("cpu", 1, loader, structure, torch.optim.Adam(structure.parameters(), 1e-3))
        stage1.run()
        self.assertTrue(math.isfinite(float(stage1.state.output[0]["loss"])))


if __name__ == "__main__":
    unittest.main()
