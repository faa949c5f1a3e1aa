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
"""configs/train_segmenter.json: the fixed downstream segmenter of the BraSyn Dice (evaluate.json's
``downstream_dice``), trained on the training split with all four real contrasts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.losses import DiceLoss
from monai.networks.nets import SegResNet

from monai_msgldm.data.phantom import ensure_phantom_dataset
from monai_msgldm.evaluation import load_segmenter, region_dice
from tests.bundles.test_train_autoencoder import BUNDLE_DIR, LOGGING, META, PHANTOM
from tests.bundles.utils import collect_outputs, reference_mean_dice, state_equal

__all__: list[str] = []

BASE_CONFIG = BUNDLE_DIR / "configs" / "train.json"
# the base and the stage overlay, merged in order (the model zoo's way)
CONFIG = [str(BASE_CONFIG), str(BUNDLE_DIR / "configs" / "train_segmenter.json")]
EVALUATE = [str(BUNDLE_DIR / "configs" / "inference.json"), str(BUNDLE_DIR / "configs" / "evaluate.json")]

# 3 phantom subjects at 4 mm, 2 training / 1 validation, 32 px slices, one epoch of 2 volumes x 2 slices
TINY = {
    "val_ratio": 0.34,
    "test_ratio": 0.0,
    "spatial_size": 32,
    "epochs#segmenter": 1,
    "stage_num_samples#segmenter": 2,
    "batch_size": 1,
    "num_workers": 0,
    "progress": False,
}


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


class TestTrainSegmenterWorkflow(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root, True)

    def test_workflow(self):
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
        self.assertIsInstance(wf.trainer, SupervisedTrainer)
        self.assertIsInstance(wf.evaluator, SupervisedEvaluator)
        self.assertIsInstance(wf.trainer.loss_function, DiceLoss)
        self.assertTrue(wf.trainer.loss_function.sigmoid)
        net = wf.parser.get_parsed_content("network")
        self.assertIsInstance(net, SegResNet)
        with open(os.path.join(self.root, "eval", "segmenter", "datalist.json")) as f:
            datalist = json.load(f)
        self.assertEqual((len(datalist["training"]), len(datalist["validation"])), (2, 1))

        # a training item: an axial slice of the 4 real contrasts and the same slice of the TC/WT/ET label
        case = dict(wf.train_dataset.data[0])
        case["label"] = case.pop("seg")  # the datalist's seg file is loaded as the trainer's label
        volume = wf.parser.get_parsed_content("train#volume_transforms")(case)
        items = wf.train_dataset[0]
        self.assertEqual(len(items), 2)
        for item in items:
            self.assertEqual(tuple(item["image"].shape), (4, 32, 32))
            self.assertEqual(tuple(item["label"].shape), (3, 32, 32))
            self.assertNotIn("seg", item)
            self.assertEqual(item["available"].tolist(), [True] * 4)
            z = [k for k in range(volume["image"].shape[-1]) if torch.equal(volume["image"][..., k], item["image"])]
            self.assertTrue(z)
            self.assertTrue(torch.equal(volume["label"][..., z[0]], item["label"]))
        self.assertTrue(bool(volume["label"][1].any()))  # the training volume has tumour

        before = {k: v.detach().clone() for k, v in net.state_dict().items()}
        wf.run()
        self.assertEqual((wf.trainer.state.epoch, wf.trainer.state.iteration), (1, 2))
        metrics = dict(wf.evaluator.state.metrics)
        # validation: whole volumes, slice by slice, sigmoid > 0.5; the scores are Dice against the label
        pairs = collect_outputs(wf.evaluator, ("pred", "label"))
        wf.evaluator.run()
        self.assertEqual(len(pairs), 1)
        pred, label = pairs[0]
        self.assertEqual(pred.shape, label.shape)
        self.assertEqual(tuple(pred.shape[:3]), (3, 32, 32))
        self.assertTrue(bool(((pred == 0) | (pred == 1)).all()))
        self.assertAlmostEqual(metrics["val_mean_dice"], reference_mean_dice(pairs), places=5)
        dice = region_dice(pred.bool(), label.bool())
        for k, region in enumerate(("tc", "wt", "et")):
            self.assertAlmostEqual(metrics[f"val_dice_{region}"], float(dice[k]), places=5)
        wf.finalize()

        final = os.path.join(self.root, "models", "segmenter.pt")
        best = os.path.join(self.root, "models", "segmenter_best.pt")
        self.assertTrue(os.path.isfile(final) and os.path.isfile(best))
        ckpt = torch.load(final, map_location="cpu", weights_only=True)
        self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer"})
        self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["max_epochs"]), (2, 1))
        self.assertAlmostEqual(ckpt["optimizer"]["param_groups"][0]["lr"], 5e-4)  # 1e-3 halved by StepLR
        self.assertTrue(state_equal(ckpt["model"], net.state_dict()))
        self.assertFalse(state_equal(before, net.state_dict()))  # it trained
        # evaluate.json's segmenter loads it (strict) into its own definition: the two configs agree
        parser = ConfigParser()
        parser.read_config(EVALUATE)
        segmenter = load_segmenter(parser.get_parsed_content("segmenter_def"), final)
        self.assertTrue(state_equal(segmenter.state_dict(), net.state_dict()))
        self.assertFalse(segmenter.training)


class TestSegmenterConfig(unittest.TestCase):
    def test_same_network_as_evaluate(self):
        train = ConfigParser(ConfigParser.load_config_files(CONFIG))
        evaluate = ConfigParser(ConfigParser.load_config_files(EVALUATE))
        self.assertEqual(train["segmenter_def"], evaluate["segmenter_def"])
        self.assertEqual(train["network_def"], "@segmenter_def")
        net = train.get_parsed_content("segmenter_def")
        self.assertEqual((net.spatial_dims, net.in_channels), (2, 4))
        # a 192 x 192 slice of the 4 contrasts -> 3 region logits on the same grid
        with torch.no_grad():
            self.assertEqual(tuple(net(torch.zeros(1, 4, 192, 192)).shape), (1, 3, 192, 192))
        # the stage's knobs: own entries in train.json's per-stage tables, the others stages' untouched
        self.assertEqual(train.get_parsed_content("epochs")["segmenter"], 200)
        self.assertEqual(train.get_parsed_content("epochs")["diffusion"], train.get_parsed_content("max_epochs"))
        self.assertEqual(train.get_parsed_content("learning_rates")["segmenter"], 1e-3)
        self.assertEqual(train["train#checkpoint_saver#final_filename"], "segmenter.pt")
        self.assertEqual(train.get_parsed_content("learning_rates")["diffusion"], 1e-4)

    def test_overlay_after_demo(self):
        """With demo.json (which replaces the per-stage tables) before it, the segmenter keeps its entries and the
        demo's data settings."""
        configs = [str(BASE_CONFIG), str(BUNDLE_DIR / "configs" / "demo.json"), CONFIG[1]]
        parser = ConfigParser(ConfigParser.load_config_files(configs))
        self.assertEqual(parser.get_parsed_content("epochs")["segmenter"], 200)
        demo_scale = 2 if parser.get_parsed_content("cpu_amp") else 1  # the demo's budget doubles with AMX
        self.assertEqual(parser.get_parsed_content("epochs")["diffusion"], 250 * demo_scale)
        self.assertEqual(parser.get_parsed_content("stage_num_samples")["segmenter"], 8)
        self.assertEqual(parser.get_parsed_content("spatial_size"), 64)
        self.assertEqual(parser["run"], parser["training"])  # the stage's training, not the demo's pipeline
        self.assertEqual(len(parser["run"]), 1)
        self.assertIn("trainer.run()", parser["run"][0])


class TestTrainSegmenterCLI(unittest.TestCase):
    def test_run_training(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(META)]
        cmd += ["--config_file", json.dumps(CONFIG), "--logging_file", str(LOGGING)]
        cmd += ["--bundle_root", root, "--dataset_dir", _DATA]
        for key, value in TINY.items():
            cmd += [f"--{key}", json.dumps(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        final = os.path.join(root, "models", "segmenter.pt")
        self.assertTrue(os.path.isfile(final), proc.stdout[-3000:])
        ckpt = torch.load(final, map_location="cpu", weights_only=True)
        self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["max_epochs"]), (2, 1))
        segmenter = load_segmenter(SegResNet(2, 8, 4, 3, dropout_prob=0.2, blocks_down=(1, 2, 2, 4)), final)
        self.assertTrue(all(torch.isfinite(p).all() for p in segmenter.parameters()))
        self.assertIn("val_mean_dice", proc.stdout + proc.stderr)


if __name__ == "__main__":
    unittest.main()
