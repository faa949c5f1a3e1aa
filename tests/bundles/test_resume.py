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

import logging
import os
import shutil
import tempfile
import unittest

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from parameterized import parameterized

from monai_msgldm.data.phantom import ensure_phantom_dataset
from tests.bundles.test_train_autoencoder import BUNDLE_DIR, LOGGING, META, PHANTOM, TINY
from tests.bundles.test_train_diffusion import TINY as DIFFUSION_TINY
from tests.bundles.test_train_diffusion import _write_stage_checkpoints

__all__: list[str] = []

CONFIGS = BUNDLE_DIR / "configs"

# stage config, prefix of its periodic checkpoints, its final checkpoint
STAGES = [
    ("train_autoencoder.json", "", "autoencoder.pt"),
    ("train_structure.json", "structure_", "structure.pt"),
    ("train_diffusion.json", "diffusion_", "diffusion.pt"),
]


def setUpModule() -> None:
    global _TMP
    _TMP = tempfile.mkdtemp()
    ensure_phantom_dataset(
        cache_dir=_TMP,
        num_subjects=PHANTOM["phantom_subjects"],
        resolution=PHANTOM["phantom_resolution"],
        seed=PHANTOM["phantom_seed"],
    )


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


def _parser(config: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update(overrides)
    return parser


def _touch(path: str, obj) -> None:
    torch.save(obj, path)


class TestResumeCheckpointSelection(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.ckpt_dir = os.path.join(self.root, "models")
        os.makedirs(self.ckpt_dir)

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    @parameterized.expand(STAGES)
    def test_newest_periodic_checkpoint(self, config, prefix, final):
        parser = _parser(config, bundle_root=self.root)
        self.assertTrue(parser.get_parsed_content("resume"))
        self.assertEqual(parser["train#checkpoint_saver#final_filename"], final)
        self.assertEqual(parser["train#checkpoint_saver"].get("file_prefix", ""), prefix.rstrip("_"))
        # nothing to resume from
        self.assertIsNone(parser.get_parsed_content("resume_ckpt"))

        # periodic files of this stage (epochs 2 and 10: numeric order, not lexical) and of the other stages
        for p, _ in {(s[1], s[2]) for s in STAGES}:
            for epoch in (2, 10) if p == prefix else (30,):
                _touch(os.path.join(self.ckpt_dir, f"{p}checkpoint_epoch={epoch}.pt"), {})
        newest = os.path.join(self.ckpt_dir, f"{prefix}checkpoint_epoch=10.pt")
        self.assertEqual(_parser(config, bundle_root=self.root).get_parsed_content("resume_ckpt"), newest)
        self.assertIsNone(_parser(config, bundle_root=self.root, resume=False).get_parsed_content("resume_ckpt"))

        # an unfinished final checkpoint (written on an exception): resume from the periodic one
        trainer_state = {"iteration": 6, "epoch_length": 2, "max_epochs": 10}
        _touch(os.path.join(self.ckpt_dir, final), {"trainer": trainer_state})
        self.assertEqual(_parser(config, bundle_root=self.root).get_parsed_content("resume_ckpt"), newest)
        # a finished stage does not resume
        _touch(os.path.join(self.ckpt_dir, final), {"trainer": {**trainer_state, "iteration": 20}})
        self.assertIsNone(_parser(config, bundle_root=self.root).get_parsed_content("resume_ckpt"))


class TestResumeAutoencoder(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def _workflow(self, **overrides) -> ConfigWorkflow:
        wf = ConfigWorkflow(
            config_file=str(CONFIGS / "train_autoencoder.json"),
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type="train",
            bundle_root=self.root,
            phantom_cache_dir=_TMP,
            save_interval=1,
            **{**PHANTOM, **TINY, **{"train#handlers#4#_disabled_": True}, **overrides},
        )
        wf.initialize()
        return wf

    def test_resume_after_interruption(self):
        ckpt_dir = os.path.join(self.root, "models")
        periodic = os.path.join(ckpt_dir, "checkpoint_epoch=1.pt")
        final = os.path.join(ckpt_dir, "autoencoder.pt")

        wf = self._workflow(max_epochs=1)
        self.assertIsNone(wf.parser.get_parsed_content("train#checkpoint_loader"))  # fresh start
        wf.run()
        wf.finalize()
        self.assertTrue(os.path.isfile(periodic) and os.path.isfile(final))
        first = torch.load(periodic, map_location="cpu", weights_only=True)
        # ignite keeps iteration and epoch_length: epoch = iteration // epoch_length
        self.assertEqual((first["trainer"]["iteration"], first["trainer"]["epoch_length"]), (2, 2))
        os.remove(final)  # interrupted after the first periodic checkpoint

        wf = self._workflow(max_epochs=2)
        self.assertEqual(wf.parser.get_parsed_content("resume_ckpt"), periodic)
        loader = wf.parser.get_parsed_content("train#checkpoint_loader")
        self.assertEqual(set(loader.load_dict), {"model", "optimizer", "lr_scheduler", "trainer"})
        epochs = []
        wf.trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
        with self.assertLogs(wf.trainer.logger, level=logging.INFO) as logs:
            wf.run()
        wf.finalize()
        self.assertTrue(any(f"Restored all variables from {periodic}" in line for line in logs.output), logs.output)
        self.assertEqual(epochs, [2])  # continues with the next epoch
        self.assertEqual((wf.trainer.state.epoch, wf.trainer.state.iteration), (2, 4))

        ckpt = torch.load(final, map_location="cpu", weights_only=True)
        self.assertEqual(ckpt["trainer"]["iteration"], 2 * ckpt["trainer"]["epoch_length"])  # epoch 2
        self.assertEqual((ckpt["trainer"]["epoch_length"], ckpt["trainer"]["max_epochs"]), (2, 2))
        # the optimizer and the scheduler went on from their restored states: 4 Adam steps, two StepLR halvings
        steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
        self.assertEqual(steps, {4.0})
        self.assertEqual(ckpt["lr_scheduler"]["last_epoch"], 2)
        self.assertAlmostEqual(ckpt["optimizer"]["param_groups"][0]["lr"], 2.5e-5)
        self.assertTrue(os.path.isfile(os.path.join(ckpt_dir, "checkpoint_epoch=2.pt")))
        # a finished stage started again does not resume
        self.assertIsNone(self._workflow(max_epochs=2).parser.get_parsed_content("resume_ckpt"))


class TestResumeDiffusion(unittest.TestCase):
    def test_resume_with_ema(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        ckpt_dir = os.path.join(root, "models")
        _write_stage_checkpoints(ckpt_dir)

        def workflow(max_epochs: int) -> ConfigWorkflow:
            overrides = {"max_epochs": max_epochs, "ema_decay": 0.5, "save_interval": 1}
            wf = ConfigWorkflow(
                config_file=str(CONFIGS / "train_diffusion.json"),
                meta_file=str(META),
                logging_file=str(LOGGING),
                workflow_type="train",
                bundle_root=root,
                phantom_cache_dir=_TMP,
                **{**PHANTOM, **DIFFUSION_TINY, "train#handlers#4#_disabled_": True, **overrides},
            )
            wf.initialize()
            return wf

        wf = workflow(1)
        wf.run()
        wf.finalize()
        periodic = os.path.join(ckpt_dir, "diffusion_checkpoint_epoch=1.pt")
        first = torch.load(periodic, map_location="cpu", weights_only=True)
        os.remove(os.path.join(ckpt_dir, "diffusion.pt"))

        wf = workflow(2)
        loader = wf.parser.get_parsed_content("train#checkpoint_loader")
        self.assertEqual(loader.load_path, periodic)
        self.assertEqual(set(loader.load_dict), {"model", "optimizer", "lr_scheduler", "trainer", "ema"})
        epochs = []
        wf.trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
        wf.trainer.add_event_handler(Events.STARTED, lambda engine: epochs.append(float(engine.network.scale_factor)))
        wf.run()
        wf.finalize()
        # the calibrated latent scale and the EMA UNet came from the checkpoint, training went on at epoch 2
        self.assertEqual(epochs, [float(first["model"]["scale_factor"]), 2])
        ckpt = torch.load(os.path.join(ckpt_dir, "diffusion.pt"), map_location="cpu", weights_only=True)
        self.assertEqual(ckpt["trainer"]["iteration"], 2 * ckpt["trainer"]["epoch_length"])
        self.assertEqual({float(s["step"]) for s in ckpt["optimizer"]["state"].values()}, {4.0})
        self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer", "ema"})


if __name__ == "__main__":
    unittest.main()
