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
from parameterized import parameterized

from monai_msgldm.bundle import applicable_overrides, run_training_stages, stage_is_finished
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
# applied by train.json where they fit: structure_def in stages 1 and 2, autoencoder_def and unet_def in stage 2
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
# network_def is a different network in each stage: the stage-0 autoencoder gets its own override
STAGE0 = {f"network_def#{k}": v for k, v in TINY_AE.items()}
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
            extra_overrides=EXTRA,
            **{"stages#0#overrides": STAGE0},
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


class TestStageHelpers(unittest.TestCase):
    def test_train_json_defaults_match_stage_configs(self):
        parser = ConfigParser()
        parser.read_config(str(CONFIG))
        shared = parser.get("stage_overrides")
        self.assertGreater(len(shared), 20)
        # exactly the settings that train.json and every stage config define (not the workflow sections)
        common = set(parser.get())
        for path in STAGE_CONFIGS.values():
            common &= set(ConfigParser.load_config_file(str(path)))
        self.assertEqual(set(shared), common - {"imports", "initialize", "run", "training", "finalize"})
        for key, ref in shared.items():
            self.assertEqual(ref, f"@{key}")  # forwards the train.json id of the same name
            for stage, path in STAGE_CONFIGS.items():
                stage_parser = ConfigParser()
                stage_parser.read_config(str(path))
                self.assertEqual(parser.get(key), stage_parser.get(key), f"{key} in {stage}")
        self.assertEqual(
            [s["final_ckpt"] for s in parser.get("stages")], ["autoencoder.pt", "structure.pt", "model.pt"]
        )
        self.assertIn("training", parser)
        self.assertIn("run", parser)

    @parameterized.expand(
        [
            ("autoencoder", {"max_epochs", "network_def#channels", "train#handlers#0#print_lr"}),
            ("structure", {"max_epochs", "structure_def#mlp_hidden", "structure_def#num_res_blocks"}),
            (
                "diffusion",
                {
                    "max_epochs",
                    "ema_decay",
                    "structure_def#mlp_hidden",
                    "structure_def#num_res_blocks",
                    "network_def#channels",
                    "autoencoder_def#channels",
                },
            ),
        ]
    )
    def test_applicable_overrides(self, stage, expected):
        parser = ConfigParser()
        parser.read_config(str(STAGE_CONFIGS[stage]))
        overrides = {
            "max_epochs": 1,  # every stage
            "ema_decay": 0.5,  # top-level id of stage 2 only
            "network_def#channels": [8],  # parent dict in stages 0 and 2, a reference string in stage 1
            "autoencoder_def#channels": [8],  # stage 2 only
            "structure_def#mlp_hidden": 16,  # stages 1 and 2
            "structure_def#num_res_blocks": 1,  # a new argument of an existing component
            "train#handlers#0#print_lr": False,
            "missing#key": 1,
        }
        selected = applicable_overrides(parser, overrides)
        if stage != "autoencoder":  # the handler list differs per stage; check the id on its own
            selected.pop("train#handlers#0#print_lr", None)
        self.assertEqual(set(selected), expected)
        self.assertTrue(all(selected[k] == overrides[k] for k in selected))

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

    def test_bad_arguments(self):
        stage = {"name": "autoencoder", "config": str(STAGE_CONFIGS["autoencoder"]), "final_ckpt": "autoencoder.pt"}
        with self.assertRaisesRegex(ValueError, "stages"):
            run_training_stages([], ckpt_dir=_TMP)
        with self.assertRaisesRegex(ValueError, "final_ckpt"):
            run_training_stages([{"name": "a", "config": stage["config"]}], ckpt_dir=_TMP)
        with self.assertRaisesRegex(FileNotFoundError, "nope.json"):
            run_training_stages([{**stage, "config": os.path.join(_TMP, "nope.json")}], ckpt_dir=_TMP)
        with self.assertRaisesRegex(ValueError, "not_an_id"):
            run_training_stages([stage], ckpt_dir=_TMP, overrides={"not_an_id": 1})
        with self.assertRaisesRegex(ValueError, "skip_finished"):
            run_training_stages([stage], ckpt_dir=_TMP, skip_finished="false")
        with self.assertRaisesRegex(ValueError, "unet_def#channels"):
            run_training_stages([stage], ckpt_dir=_TMP, extra_overrides={"unet_def#channels": [8]})


class TestTrainAllCLI(unittest.TestCase):
    def test_run_training(self):
        """The real command line trains the three stages in order."""
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        ckpt_dir = os.path.join(root, "models")
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(META)]
        cmd += ["--config_file", str(CONFIG), "--logging_file", str(LOGGING), "--bundle_root", root]
        cmd += ["--config_dir", str(CONFIG_DIR), "--dataset_dir", _DATA]
        for key, value in SHARED.items():
            cmd += [f"--{key}", json.dumps(value)]
        cmd += ["--extra_overrides", json.dumps(EXTRA), "--stages#0#overrides", json.dumps(STAGE0)]
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
        # a typo in an extra override is refused before anything runs
        proc = subprocess.run(
            cmd[:-4] + ["--extra_overrides", json.dumps({"unet_deff#channels": [8]})],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=env,
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("unet_deff#channels", proc.stdout + proc.stderr)


if __name__ == "__main__":
    unittest.main()
