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
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_msgldm.bundle import (
    resume_checkpoint,
    run_training_stages,
    running_config,
    running_parser,
    stage_is_finished,
)
from monai_msgldm.data.phantom import ensure_phantom_dataset

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
CONFIG_DIR = BUNDLE_DIR / "configs"
CONFIG = CONFIG_DIR / "train.json"
META = CONFIG_DIR / "metadata.json"
LOGGING = CONFIG_DIR / "logging.conf"
STAGE_CONFIGS = {
    "autoencoder": CONFIG_DIR / "train_autoencoder.json",
    "structure": CONFIG_DIR / "train_structure.json",
    "diffusion": CONFIG_DIR / "train_diffusion.json",
}
LOGGER = "monai_msgldm.bundle.stages"

# tiny run (as in the stage tests): 3 phantom subjects at 4 mm, 2 training / 1 validation, 32 px slices
PHANTOM = {"phantom_subjects": 3, "phantom_resolution": 4.0, "phantom_seed": 0}
SHARED = {
    "val_ratio": 0.34,
    "test_ratio": 0.0,
    "spatial_size": 32,
    "max_epochs": 1,
    "num_samples": 2,
    "val_num_samples": 2,
    "batch_size": 1,
    "num_workers": 0,
}
TINY_AE = {"channels": [8, 8, 8, 8], "norm_num_groups": 4}
# base-level ids of train.json: every stage that uses them gets them (the autoencoder_def is stage 0's network_def)
EXTRA = {
    "val_ddim_steps": 2,
    "ema_decay": 0.5,
    "structure_def#structure_channels": [8, 8, 8, 8],
    "structure_def#style_channels": [4, 4, 4, 4, 4],
    "structure_def#mlp_hidden": 16,
    **{f"autoencoder_def#{k}": v for k, v in TINY_AE.items()},
    "unet_def#channels": [8, 8, 8],
    "unet_def#norm_num_groups": 4,
    "unet_def#num_head_channels": 8,
}
FINAL = ("autoencoder.pt", "structure.pt", "model.pt")


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


def _mtimes(ckpt_dir: str) -> dict[str, int]:
    return {f: os.stat(os.path.join(ckpt_dir, f)).st_mtime_ns for f in sorted(os.listdir(ckpt_dir))}


class TestTrainAllWorkflow(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.ckpt_dir = os.path.join(self.root, "models")

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self) -> list:
        wf = ConfigWorkflow(
            config_file=str(CONFIG),
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type="train",
            run_id="training",
            bundle_root=self.root,
            config_dir=str(CONFIG_DIR),
            phantom_cache_dir=_TMP,
            **EXTRA,
            **PHANTOM,
            **SHARED,
        )
        wf.initialize()
        out = wf.run()
        wf.finalize()
        return out

    def test_three_stages_then_skip_then_rerun_last(self):
        with self.assertLogs(LOGGER, level="INFO") as logs:
            self.assertEqual(self._run(), [["autoencoder", "structure", "diffusion"]])
        self.assertEqual(sum("running" in m for m in logs.output), 3)
        for name in FINAL:
            self.assertTrue(stage_is_finished(os.path.join(self.ckpt_dir, name)), name)
        # every stage wrote its outputs under the shared bundle_root, with the tiny settings
        for stage in ("autoencoder", "structure", "diffusion"):
            self.assertTrue(os.path.isfile(os.path.join(self.root, "eval", stage, "datalist.json")), stage)
        ae = torch.load(os.path.join(self.ckpt_dir, "autoencoder.pt"), map_location="cpu", weights_only=True)
        self.assertEqual((ae["trainer"]["max_epochs"], ae["trainer"]["iteration"]), (1, 2))
        self.assertEqual(tuple(ae["model"]["encoder.blocks.0.conv.weight"].shape), (8, 1, 3, 3))
        served = torch.load(os.path.join(self.ckpt_dir, "model.pt"), map_location="cpu", weights_only=True)
        # stage 2 loaded the stage-0 and stage-1 results (frozen): the served model holds them bit for bit
        structure = torch.load(os.path.join(self.ckpt_dir, "structure.pt"), map_location="cpu", weights_only=True)
        for prefix, state in (("autoencoder.model.", ae["model"]), ("structure_net.", structure["model"])):
            sub = {k[len(prefix) :]: v for k, v in served.items() if k.startswith(prefix)}
            self.assertEqual(sub.keys(), state.keys())
            self.assertTrue(all(torch.equal(sub[k], state[k]) for k in sub), prefix)

        # second run: all three stages skipped, nothing rewritten
        before = _mtimes(self.ckpt_dir)
        with self.assertLogs(LOGGER, level="INFO") as logs:
            self.assertEqual(self._run(), [[]])
        self.assertEqual(sum("skipped" in m for m in logs.output), 3, logs.output)
        self.assertEqual(_mtimes(self.ckpt_dir), before)

        # without model.pt only stage 2 runs again
        os.remove(os.path.join(self.ckpt_dir, "model.pt"))
        with self.assertLogs(LOGGER, level="INFO") as logs:
            self.assertEqual(self._run(), [["diffusion"]])
        after = _mtimes(self.ckpt_dir)
        for name in ("autoencoder.pt", "structure.pt", "autoencoder_best.pt", "structure_best.pt"):
            self.assertEqual(after[name], before[name], name)
        self.assertGreater(after["diffusion.pt"], before["diffusion.pt"])
        self.assertIn("model.pt", after)


class TestTrainProperties(unittest.TestCase):
    def test_check_properties(self):
        """train.json is a complete MONAI train workflow: its train/validate sections are the served stage's
        (stage 2, the model.pt network), so MONAI's required train properties all resolve."""
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        wf = ConfigWorkflow(
            config_file=str(CONFIG),
            meta_file=str(META),
            logging_file=False,
            workflow_type="train",
            bundle_root=root,
            phantom_cache_dir=_TMP,
            **EXTRA,
            **PHANTOM,
            **SHARED,
        )
        wf.initialize()
        self.assertEqual(wf.check_properties(), [])
        self.assertEqual(type(wf.trainer).__name__, "LatentDiffusionTrainer")
        self.assertEqual(wf.max_epochs, 1)
        self.assertEqual(type(wf.network_def).__name__, "MSGLDM")
        self.assertEqual(len(wf.train_dataset), 2)
        self.assertEqual(wf.device, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        wf.finalize()


class TestStageHelpers(unittest.TestCase):
    def test_stage_configs_are_thin_overlays(self):
        """train.json is the base; each stage file holds only its own engine, never a base setting."""
        base = ConfigParser.load_config_file(str(CONFIG))
        self.assertNotIn("stage_overrides", base)
        self.assertEqual([s["final_ckpt"] for s in base["stages"]], ["autoencoder.pt", "structure.pt", "model.pt"])
        self.assertIn("training", base)
        self.assertIn("run", base)
        for key in ("dataset_dir", "datalist", "spatial_size", "device", "seed", "amp", "network_def"):
            self.assertIn(key, base)
        for key in ("autoencoder_def", "structure_def", "unet_def", "noise_scheduler", "sampling_scheduler"):
            self.assertIn(key, base)
        own = {"stage", "network_def", "optimizer", "train", "validate", "initialize", "run", "training", "finalize"}
        for stage, path in STAGE_CONFIGS.items():
            overlay = ConfigParser.load_config_file(str(path))
            self.assertLessEqual(set(overlay), own, stage)
            self.assertEqual(overlay["stage"], stage)
            merged = ConfigParser()
            merged.read_config([str(CONFIG), str(path)])
            self.assertEqual(merged.get("stage"), stage)
            self.assertEqual(merged.get("datalist"), base["datalist"])  # the base's data, not a copy

    def test_running_parser(self):
        """The parser evaluating an expression is found from inside it; outside any config there is none."""
        parser = ConfigParser(
            {
                "imports": ["$import monai_msgldm", "$import monai_msgldm.bundle"],
                "spatial_size": 32,
                "found": "$monai_msgldm.bundle.running_parser()",
                "copy": "$monai_msgldm.bundle.running_config()",
            }
        )
        parser.parse()  # runs the imports, as ConfigWorkflow.initialize does
        self.assertIs(parser.get_parsed_content("found"), parser)
        copied = parser.get_parsed_content("copy")
        self.assertEqual(copied["spatial_size"], 32)
        copied["spatial_size"] = 64  # a deep copy: the running config is untouched
        self.assertEqual(parser.get("spatial_size"), 32)
        with self.assertRaisesRegex(RuntimeError, "ConfigParser"):
            running_parser()
        with self.assertRaisesRegex(RuntimeError, "ConfigParser"):
            running_config()

    def test_stage_is_finished(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        path = os.path.join(root, "x.pt")
        self.assertFalse(stage_is_finished(path))
        torch.save({"w": torch.zeros(1)}, path)
        self.assertTrue(stage_is_finished(path))  # a plain state dict (e.g. model.pt)
        # CheckpointSaver also writes the final file on an exception: an incomplete trainer state is not finished
        torch.save({"model": {}, "trainer": {"iteration": 3, "epoch_length": 2, "max_epochs": 2}}, path)
        self.assertFalse(stage_is_finished(path))
        torch.save({"model": {}, "trainer": {"iteration": 4, "epoch_length": 2, "max_epochs": 2}}, path)
        self.assertTrue(stage_is_finished(path))

    def test_resume_checkpoint(self):
        root = tempfile.mkdtemp(suffix="[x]")  # glob characters in the folder name are taken literally
        self.addCleanup(shutil.rmtree, root, True)
        self.assertIsNone(resume_checkpoint(root, "diffusion", "diffusion.pt"))
        for name in ("diffusion_checkpoint_epoch=2.pt", "diffusion_checkpoint_epoch=10.pt", "x_checkpoint_epoch=99.pt"):
            torch.save({"model": {}}, os.path.join(root, name))
        torch.save({"model": {}}, os.path.join(root, "checkpoint_epoch=7.pt"))
        # the largest epoch of the stage's own prefix (10 > 2: a number, not a string comparison)
        self.assertEqual(
            resume_checkpoint(root, "diffusion", "diffusion.pt"), os.path.join(root, "diffusion_checkpoint_epoch=10.pt")
        )
        self.assertEqual(resume_checkpoint(root, None, "final.pt"), os.path.join(root, "checkpoint_epoch=7.pt"))
        # an unfinished final checkpoint (saved on an exception) still resumes; a finished one does not
        final = os.path.join(root, "diffusion.pt")
        torch.save({"model": {}, "trainer": {"iteration": 3, "epoch_length": 2, "max_epochs": 2}}, final)
        self.assertTrue(resume_checkpoint(root, "diffusion", "diffusion.pt").endswith("epoch=10.pt"))
        torch.save({"model": {}, "trainer": {"iteration": 4, "epoch_length": 2, "max_epochs": 2}}, final)
        self.assertIsNone(resume_checkpoint(root, "diffusion", "diffusion.pt"))

    def test_bad_arguments(self):
        stage = {"name": "autoencoder", "config": str(STAGE_CONFIGS["autoencoder"]), "final_ckpt": "autoencoder.pt"}
        with self.assertRaisesRegex(ValueError, "stages"):
            run_training_stages([], ckpt_dir=_TMP)
        with self.assertRaisesRegex(ValueError, "final_ckpt"):
            run_training_stages([{"name": "a", "config": stage["config"]}], ckpt_dir=_TMP)
        with self.assertRaisesRegex(FileNotFoundError, "nope.json"):
            run_training_stages([{**stage, "config": os.path.join(_TMP, "nope.json")}], ckpt_dir=_TMP)
        with self.assertRaisesRegex(ValueError, "skip_finished"):
            run_training_stages([stage], ckpt_dir=_TMP, skip_finished="false")
        with self.assertRaisesRegex(RuntimeError, "ConfigParser"):  # only from a running bundle config
            run_training_stages([stage], ckpt_dir=_TMP)


class TestTrainAllCLI(unittest.TestCase):
    def test_run_training(self):
        """The real command line trains the three stages in order; an overlay and command-line overrides of
        train.json ids reach the stages."""
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        ckpt_dir = os.path.join(root, "models")
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(META)]
        cmd += ["--logging_file", str(LOGGING), "--bundle_root", root]
        overlay = os.path.join(root, "overlay.json")  # a user overlay after train.json: plain base-level ids
        with open(overlay, "w") as f:
            json.dump({"eval_dir": "$os.path.join(@bundle_root, 'logs')", **EXTRA}, f)
        cmd += ["--config_file", json.dumps([str(CONFIG), overlay])]
        cmd += ["--config_dir", str(CONFIG_DIR), "--dataset_dir", _DATA]
        for key, value in {**SHARED, "max_epochs": 2, "epochs#autoencoder": 1, "epochs#structure": 1}.items():
            cmd += [f"--{key}", json.dumps(value)]
        cmd += ["--epochs#diffusion", "1", "--learning_rates#diffusion", "0.0005"]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        out = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 0, out[-3000:])
        positions = [out.index(f"stage '{stage}': done") for stage in ("autoencoder", "structure", "diffusion")]
        self.assertEqual(positions, sorted(positions))
        for name in FINAL:
            self.assertTrue(stage_is_finished(os.path.join(ckpt_dir, name)), name)
        ckpt = torch.load(os.path.join(ckpt_dir, "diffusion.pt"), map_location="cpu", weights_only=True)
        self.assertEqual((ckpt["trainer"]["max_epochs"], ckpt["trainer"]["iteration"]), (1, 2))
        # the lr scheduler halved the stage's learning rate after its single epoch (step_size max(1, 1 // 2))
        self.assertAlmostEqual(ckpt["optimizer"]["param_groups"][0]["lr"], 0.0005 * 0.5)
        ae = torch.load(os.path.join(ckpt_dir, "autoencoder.pt"), map_location="cpu", weights_only=True)
        self.assertEqual(ae["trainer"]["max_epochs"], 1)
        self.assertAlmostEqual(ae["optimizer"]["param_groups"][0]["lr"], 1e-4 * 0.5)
        self.assertEqual(tuple(ae["model"]["encoder.blocks.0.conv.weight"].shape), (8, 1, 3, 3))  # the overlay's size
        for stage in ("autoencoder", "structure", "diffusion"):  # the overlay's eval_dir
            self.assertTrue(os.path.isfile(os.path.join(root, "logs", stage, "datalist.json")), stage)
        # a typo in an override is refused before anything runs
        proc = subprocess.run(
            cmd[:-4] + ["--unet_deff#channels", json.dumps([8])],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=env,
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("unet_deff", proc.stdout + proc.stderr)  # MONAI: "By 'unet_deff', did you mean 'unet_def'?"


if __name__ == "__main__":
    unittest.main()
