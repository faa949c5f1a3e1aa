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
from tests.bundles.test_train_diffusion import _cause_chain, _write_stage_checkpoints
from tests.bundles.test_train_structure import TINY as STRUCTURE_TINY
from tests.bundles.utils import state_equal

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
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / config)])
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
            config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "train_autoencoder.json")],
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


class _Crash(RuntimeError):
    """Raised by a test handler to interrupt a training run."""


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class _ResumeVersusUninterrupted(unittest.TestCase):
    """A run crashed in its second epoch and resumed from the epoch-1 periodic checkpoint ends with exactly the
    checkpoint of an uninterrupted run (CPU, one thread, same operations in the same order: bit for bit)."""

    config: str
    prefix: str
    final: str
    tiny: dict

    def _workflow(self, root: str, **overrides) -> ConfigWorkflow:
        wf = ConfigWorkflow(
            config_file=[str(CONFIGS / "train.json"), str(CONFIGS / self.config)],
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type="train",
            bundle_root=root,
            phantom_cache_dir=_TMP,
            **{**PHANTOM, **self.tiny, "train#handlers#4#_disabled_": True, "save_interval": 1, **overrides},
        )
        wf.initialize()  # the stage re-seeds every random stream per epoch (train.json's reseed_every_epoch)
        return wf

    def _prepare(self, ckpt_dir: str) -> None:
        """Write what the stage needs before it starts (the earlier stages' checkpoints)."""

    def _runs(self, **overrides) -> tuple[str, str, ConfigWorkflow]:
        """Train 2 epochs uninterrupted in one folder; in another, crash at the first iteration of epoch 2 and resume.
        Returns the two checkpoint folders and the resumed workflow (finalized)."""
        dirs = []
        for _ in range(2):
            root = tempfile.mkdtemp()
            self.addCleanup(shutil.rmtree, root, True)
            dirs.append(os.path.join(root, "models"))
            self._prepare(dirs[-1])
        whole, resumed = dirs

        wf = self._workflow(os.path.dirname(whole), max_epochs=2, **overrides)
        self.assertIsNone(wf.parser.get_parsed_content("resume_ckpt"))
        wf.run()
        wf.finalize()
        self.assertEqual(wf.trainer.state.iteration, 4)

        wf = self._workflow(os.path.dirname(resumed), max_epochs=2, **overrides)

        def crash(engine) -> None:
            raise _Crash("interrupted")

        wf.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), crash)
        with self.assertRaises(Exception) as cm:  # the bundle wraps it: "Failed to evaluate ... run()"
            wf.run()
        self.assertTrue(any(isinstance(e, _Crash) for e in _cause_chain(cm.exception)), repr(cm.exception))
        wf.finalize()
        periodic = os.path.join(resumed, f"{self.prefix}checkpoint_epoch=1.pt")
        self.assertFalse(os.path.exists(os.path.join(resumed, f"{self.prefix}checkpoint_epoch=2.pt")))
        # the interrupted run got as far as the uninterrupted one at the end of epoch 1
        first, first_whole = _load(periodic), _load(os.path.join(whole, f"{self.prefix}checkpoint_epoch=1.pt"))
        self.assertEqual(first["trainer"]["iteration"], 2)
        self._assert_same_checkpoint(first, first_whole)

        wf = self._workflow(os.path.dirname(resumed), max_epochs=2, **overrides)
        self.assertEqual(wf.parser.get_parsed_content("resume_ckpt"), periodic)
        self.assertEqual(wf.parser.get_parsed_content("train#checkpoint_loader").load_path, periodic)
        epochs = []
        wf.trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
        wf.run()
        wf.finalize()
        self.assertEqual(epochs, [2])  # continued with the epoch it crashed in
        self.assertEqual((wf.trainer.state.epoch, wf.trainer.state.iteration), (2, 4))
        return whole, resumed, wf

    def _assert_same_checkpoint(self, a: dict, b: dict) -> None:
        self.assertEqual(set(a), set(b))
        for key in set(a) - {"optimizer"}:
            if key in ("model", "ema"):
                self.assertTrue(state_equal(a[key], b[key]), f"{key} differs")
            else:
                self.assertEqual(a[key], b[key], key)
        opt_a, opt_b = a["optimizer"], b["optimizer"]
        self.assertEqual(opt_a["param_groups"], opt_b["param_groups"])
        self.assertEqual(set(opt_a["state"]), set(opt_b["state"]))
        for i, state in opt_a["state"].items():
            self.assertTrue(state_equal(state, opt_b["state"][i]), f"optimizer state of parameter {i} differs")


class TestResumeStructure(_ResumeVersusUninterrupted):
    config, prefix, final, tiny = "train_structure.json", "structure_", "structure.pt", STRUCTURE_TINY

    def test_resume_matches_uninterrupted_run(self):
        whole, resumed, wf = self._runs()
        ckpt, reference = _load(os.path.join(resumed, self.final)), _load(os.path.join(whole, self.final))
        self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer"})
        self._assert_same_checkpoint(ckpt, reference)
        # 4 Adam steps, two StepLR halvings (step_size max(1, 2 // 2))
        self.assertEqual({float(s["step"]) for s in ckpt["optimizer"]["state"].values()}, {4.0})
        self.assertAlmostEqual(ckpt["optimizer"]["param_groups"][0]["lr"], 2.5e-5)
        # the network in memory is the saved one, and epoch 2 did change it
        self.assertTrue(state_equal(wf.parser.get_parsed_content("network").state_dict(), ckpt["model"]))
        first = _load(os.path.join(resumed, f"{self.prefix}checkpoint_epoch=1.pt"))
        self.assertFalse(state_equal(first["model"], ckpt["model"]))


class TestResumeDiffusion(_ResumeVersusUninterrupted):
    config, prefix, final, tiny = "train_diffusion.json", "diffusion_", "diffusion.pt", DIFFUSION_TINY

    def _prepare(self, ckpt_dir: str) -> None:
        _write_stage_checkpoints(ckpt_dir)

    def test_resume_with_ema(self):
        whole, resumed, wf = self._runs(ema_decay=0.5)
        loader = wf.parser.get_parsed_content("train#checkpoint_loader")
        self.assertEqual(set(loader.load_dict), {"model", "optimizer", "lr_scheduler", "trainer", "ema"})
        first = _load(os.path.join(resumed, f"{self.prefix}checkpoint_epoch=1.pt"))
        # the calibrated latent scale came from the checkpoint (not calibrated again on the resumed run's batch)
        self.assertNotEqual(float(first["model"]["scale_factor"]), 1.0)
        self.assertEqual(
            float(wf.parser.get_parsed_content("network").scale_factor), float(first["model"]["scale_factor"])
        )

        ckpt, reference = _load(os.path.join(resumed, self.final)), _load(os.path.join(whole, self.final))
        self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer", "ema"})
        self.assertEqual(ckpt["trainer"]["iteration"], 2 * ckpt["trainer"]["epoch_length"])
        self.assertEqual({float(s["step"]) for s in ckpt["optimizer"]["state"].values()}, {4.0})
        # the UNet, the EMA UNet (and every other weight, the optimizer moments, the scheduler) are the uninterrupted
        # run's, bit for bit
        self._assert_same_checkpoint(ckpt, reference)
        unet = {k[len("unet.") :]: v for k, v in ckpt["model"].items() if k.startswith("unet.")}
        self.assertTrue(state_equal(wf.trainer.ema_model.state_dict(), reference["ema"]))
        self.assertTrue(state_equal(wf.parser.get_parsed_content("network").unet.state_dict(), unet))
        # neither is trivially equal: the EMA is not the online UNet, and both moved during epoch 2
        self.assertFalse(state_equal(ckpt["ema"], unet))
        self.assertFalse(state_equal(first["ema"], ckpt["ema"]))
        self.assertFalse(state_equal(first["model"], ckpt["model"]))
        # the served model holds the EMA UNet, as the uninterrupted run's does
        served, served_whole = _load(os.path.join(resumed, "model.pt")), _load(os.path.join(whole, "model.pt"))
        self.assertTrue(state_equal(served, served_whole))
        self.assertTrue(
            state_equal({k[len("unet.") :]: v for k, v in served.items() if k.startswith("unet.")}, ckpt["ema"])
        )


if __name__ == "__main__":
    unittest.main()
