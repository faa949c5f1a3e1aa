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

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_msgldm.data.phantom import ensure_phantom_dataset
from monai_msgldm.engines import StructureStyleEvaluator, StructureStyleTrainer
from monai_msgldm.networks.nets import MSGLDM, StructureStyleNet
from tests.bundles.test_train_autoencoder import BUNDLE_DIR, LOGGING, META, PHANTOM
from tests.bundles.test_train_autoencoder import TINY as AUTOENCODER_TINY
from tests.bundles.utils import (
    assert_stage_checkpoints,
    assert_tensorboard_images,
    collect_outputs,
    reference_mean_dice,
    reference_psnr,
    state_equal,
)

__all__: list[str] = []

BASE_CONFIG = BUNDLE_DIR / "configs" / "train.json"
# the base and the stage overlay, merged in order (the model zoo's way)
CONFIG = [str(BASE_CONFIG), str(BUNDLE_DIR / "configs" / "train_structure.json")]

# the same tiny data knobs as stage 0 (3 phantom subjects at 4 mm, 2 training / 1 validation), a tiny network
TINY_NET = {
    "structure_def#structure_channels": [8, 8, 8, 8],
    "structure_def#style_channels": [8, 8, 8, 8, 8],
    "structure_def#mlp_hidden": 16,
    "structure_def#num_res_blocks": 1,
}
TINY = {k: v for k, v in AUTOENCODER_TINY.items() if not k.startswith("autoencoder_def")}
TINY.update({"spatial_size": 32, **TINY_NET})


def setUpModule() -> None:
    global _TMP, _DATA
    _TMP = tempfile.mkdtemp()
    _DATA = ensure_phantom_dataset(
        cache_dir=_TMP,
        num_subjects=PHANTOM["phantom_subjects"],
        resolution=PHANTOM["phantom_resolution"],
        seed=PHANTOM["phantom_seed"],
    )


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


def _tiny_net() -> StructureStyleNet:
    return StructureStyleNet(
        spatial_dims=2,
        num_modalities=4,
        seg_out_channels=3,
        structure_channels=(8, 8, 8, 8),
        style_channels=(8, 8, 8, 8, 8),
        mlp_hidden=16,
        num_res_blocks=1,
    )


class TestTrainStructureWorkflow(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def test_workflow(self):
        # dataset_dir stays null: the built-in phantom, found in the cache made by setUpModule
        wf = ConfigWorkflow(
            config_file=CONFIG,
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type="train",
            bundle_root=self.root,
            phantom_cache_dir=_TMP,
            **PHANTOM,
            **TINY,
        )
        wf.initialize()
        self.assertEqual(wf.check_properties(), [])
        self.assertEqual(wf.parser.get_parsed_content("data_root"), _DATA)
        self.assertEqual(wf.max_epochs, 1)
        self.assertEqual(wf.parser.get_parsed_content("ckpt_dir"), self.root + "/models")
        self.assertIsInstance(wf.trainer, StructureStyleTrainer)
        self.assertIsInstance(wf.evaluator, StructureStyleEvaluator)
        trainer = wf.trainer
        self.assertEqual((trainer.seg_weight, trainer.style_weight, trainer.structure_weight), (2.0, 0.1, 1.0))

        with open(os.path.join(self.root, "eval", "structure", "datalist.json")) as f:
            datalist = json.load(f)
        train_ids = {item["subject"] for item in datalist["training"]}
        val_ids = {item["subject"] for item in datalist["validation"]}
        self.assertEqual((len(train_ids), len(val_ids)), (2, 1))
        self.assertFalse(train_ids & val_ids)

        # the volume keeps seg as 3 nested regions (TC, WT, ET) with tumour in it
        volume_transforms = wf.parser.get_parsed_content("train#volume_transforms")
        volume = volume_transforms(dict(wf.train_dataset.data[0]))
        seg = volume["seg"]
        self.assertEqual(tuple(seg.shape[:3]), (3, 32, 32))
        self.assertEqual(set(torch.unique(seg).tolist()), {0.0, 1.0})
        tc, wt, et = seg[0] > 0, seg[1] > 0, seg[2] > 0
        self.assertTrue(bool(wt.any()) and bool(et.any()))
        self.assertTrue(bool((tc <= wt).all()) and bool((et <= tc).all()))

        # a training item: image and seg sliced at the same axial index
        items = wf.train_dataset[0]
        self.assertEqual(len(items), 2)
        for item in items:
            self.assertEqual(tuple(item["image"].shape), (4, 32, 32))
            self.assertEqual(tuple(item["seg"].shape), (3, 32, 32))
            self.assertEqual(item["available"].tolist(), [True] * 4)
            self.assertGreaterEqual(float(item["image"].min()), -1.0)
            self.assertLessEqual(float(item["image"].max()), 1.0)
            matches = [
                z for z in range(volume["image"].shape[-1]) if torch.equal(volume["image"][..., z], item["image"])
            ]
            self.assertTrue(matches)
            self.assertTrue(torch.equal(volume["seg"][..., matches[0]], item["seg"]))

        net = wf.parser.get_parsed_content("network")
        self.assertIsInstance(net, StructureStyleNet)
        self.assertEqual((net.num_modalities, net.structure_channels), (4, (8, 8, 8, 8)))
        before = {k: v.detach().clone() for k, v in net.state_dict().items()}

        wf.run()
        evaluator = wf.evaluator
        self.assertEqual(trainer.state.epoch, 1)
        self.assertEqual(trainer.state.iteration, 2)  # 2 volumes x 2 slices, batch 1 volume
        out = trainer.state.output[0]
        parts = (out["loss_segmentation"], out["loss_style"], out["loss_structure"])
        self.assertTrue(all(math.isfinite(p) and p > 0 for p in parts))
        self.assertAlmostEqual(float(out["loss"]), 2.0 * parts[0] + 0.1 * parts[1] + 1.0 * parts[2], places=4)
        dice, psnr = evaluator.state.metrics["val_mean_dice"], evaluator.state.metrics["val_recon_psnr"]
        # the validation slices are re-drawn with the same seed every validation: same slices, same score
        masks, recons = (
            collect_outputs(evaluator, ("pred", "label")),
            collect_outputs(evaluator, ("reconstruction", "image")),
        )
        evaluator.run()
        self.assertAlmostEqual(evaluator.state.metrics["val_mean_dice"], dice, places=5)
        self.assertAlmostEqual(evaluator.state.metrics["val_recon_psnr"], psnr, places=4)
        # the scores are the Dice of the thresholded segmentation (TC, WT, ET) and the PSNR (range 2) of the
        # reconstructed modalities, over the validation slices (1 volume x 2 slices)
        self.assertEqual((len(masks), len(recons)), (2, 2))
        self.assertEqual(tuple(masks[0][0].shape), (3, 32, 32))
        self.assertAlmostEqual(dice, reference_mean_dice(masks), places=5)
        self.assertAlmostEqual(psnr, reference_psnr(recons, max_val=2.0), places=4)
        wf.finalize()

        # StepLR halves the rate after max(1, max_epochs // 2) epochs
        assert_stage_checkpoints(self, os.path.join(self.root, "models"), "structure", wf, net, before, lr=5e-5)
        assert_tensorboard_images(self, os.path.join(self.root, "eval", "structure"))


class TestStructureConfig(unittest.TestCase):
    def test_default_network(self):
        parser = ConfigParser()
        parser.read_config(CONFIG)
        self.assertEqual(parser.get_parsed_content("learning_rate"), 1e-4)
        self.assertEqual(
            [parser.get_parsed_content(k) for k in ("seg_weight", "style_weight", "structure_weight")], [2.0, 0.1, 1.0]
        )
        net = parser.get_parsed_content("network_def")
        self.assertIs(net, parser.get_parsed_content("structure_def"))
        # every argument at its default but the 3 segmentation channels (TC, WT, ET)
        torch.manual_seed(0)
        reference = StructureStyleNet(spatial_dims=2, num_modalities=4, seg_out_channels=3)
        shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        self.assertEqual(shapes, {k: tuple(v.shape) for k, v in reference.state_dict().items()})
        # F_s of a 192 x 192 slice: 256 x 24 x 24, the grid of the stage-0 latent, as the diffusion UNet expects
        with torch.no_grad():
            fs = net.encode_structure(torch.zeros(1, 4, 192, 192), torch.tensor([[True, True, False, True]]))
        self.assertEqual(tuple(fs.shape), (1, 256, 24, 24))
        # the trained weights load (strict) into the structure network of an MSG-LDM model
        model = MSGLDM(spatial_dims=2, structure_net=reference)
        model.structure_net.load_state_dict(net.state_dict())
        self.assertTrue(state_equal(model.structure_net.state_dict(), net.state_dict()))

    def test_overlay_of_the_base(self):
        """train_structure.json adds stage 1's engine to train.json: the network is the base's structure_def, the
        data and the knobs (stage 0's included, unused) are the base's."""
        base = ConfigParser.load_config_file(BASE_CONFIG)
        merged = ConfigParser(ConfigParser.load_config_files(CONFIG))
        merged.update({"structure_def#structure_channels": [8, 8, 8, 8], "structure_def#style_channels": [8] * 5})
        self.assertIsInstance(merged.get_parsed_content("network_def"), StructureStyleNet)
        self.assertEqual(merged["train#checkpoint_saver#final_filename"], "structure.pt")
        self.assertEqual(merged["kl_weight"], base["kl_weight"])  # stage-0 knobs stay, unused
        for key in ("datalist", "data_root", "spatial_size", "seed", "naming"):
            self.assertEqual(merged[key], base[key], key)


class TestTrainStructureCLI(unittest.TestCase):
    def test_run_training_merged(self):
        # the base and the stage-1 overlay merged in order: stage 1 runs
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        configs = json.dumps(CONFIG)
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(META)]
        cmd += ["--config_file", configs, "--logging_file", str(LOGGING)]
        cmd += ["--bundle_root", root, "--dataset_dir", _DATA, "--train#handlers#4#_disabled_", "true"]
        for key, value in TINY.items():
            cmd += [f"--{key}", json.dumps(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        final = os.path.join(root, "models", "structure.pt")
        self.assertTrue(os.path.isfile(final), proc.stdout[-3000:])
        self.assertFalse(os.path.exists(os.path.join(root, "models", "autoencoder.pt")))
        ckpt = torch.load(final, map_location="cpu", weights_only=True)
        self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["max_epochs"]), (2, 1))
        net = _tiny_net()
        net.load_state_dict(ckpt["model"])
        self.assertTrue(all(torch.isfinite(p).all() for p in net.parameters()))
        self.assertIn("val_mean_dice", proc.stdout + proc.stderr)
        self.assertTrue(os.path.isfile(os.path.join(root, "eval", "structure", "datalist.json")))


if __name__ == "__main__":
    unittest.main()
