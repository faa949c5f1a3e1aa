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

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch

from monai_msgldm.data.phantom import ensure_phantom_dataset
from tests.bundles.test_train_all import EXTRA as TRAIN_ALL_TINY_NETWORKS
from tests.bundles.test_train_all import SHARED as TRAIN_ALL_SHARED
from tests.bundles.test_train_autoencoder import TINY as AUTOENCODER_TINY
from tests.bundles.test_train_diffusion import TINY as DIFFUSION_TINY
from tests.bundles.test_train_diffusion import _write_stage_checkpoints
from tests.bundles.test_train_structure import TINY as STRUCTURE_TINY
from tests.bundles.utils import state_equal

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
CONFIGS = BUNDLE_DIR / "configs"
META = CONFIGS / "metadata.json"
LOGGING = CONFIGS / "logging.conf"
PHANTOM = {"phantom_subjects": 3, "phantom_resolution": 4.0, "phantom_seed": 0}

# test-only overlay: every rank saves its own network weights before the process group is destroyed
RANK_DUMP = {
    "finalize": [
        "$torch.save(@network.state_dict(), os.path.join(@bundle_root, 'rank' + str(@rank) + '.pt'))",
        "$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()",
    ]
}


# test-only overlay for the full train.json run (base-level ids only, so that it reaches every stage): after each
# stage, every rank saves its network weights (the checkpoints come from rank 0 only)
STAGE_RANK_DUMP = {
    "progress": False,
    "+stage_finalize": [
        "$torch.save(@network.state_dict(), os.path.join(@bundle_root, @stage + '_rank' + str(@rank) + '.pt'))"
    ],
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


def _assert_one_adam_step_per_parameter(test: unittest.TestCase, ckpt: dict) -> None:
    """The optimizer of the 1-iteration run took exactly one step on every parameter of its group."""
    optimizer = ckpt["optimizer"]
    test.assertEqual(set(optimizer["state"]), set(optimizer["param_groups"][0]["params"]))
    test.assertEqual({float(s["step"]) for s in optimizer["state"].values()}, {1.0})


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class TestMultiGPUTraining(unittest.TestCase):
    """Two gloo processes on CPU through ``torch.distributed.run``, as the README documents with ``torchrun``."""

    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root, True)
        dump = os.path.join(self.root, "rank_dump.json")
        with open(dump, "w") as f:
            json.dump(RANK_DUMP, f)
        self.dump = dump

    def _run(self, configs: list[str], tiny: dict, overlay: str | None = None, timeout: int = 100) -> None:
        config_files = [str(CONFIGS / c) for c in configs] + [overlay or self.dump]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
        cmd += ["-m", "monai.bundle", "run", "training", "--meta_file", str(META), "--logging_file", str(LOGGING)]
        cmd += ["--config_file", json.dumps(config_files), "--bundle_root", self.root, "--dataset_dir", _DATA]
        for key, value in ({**tiny, "train#handlers#4#_disabled_": True} if overlay is None else tiny).items():
            cmd += [f"--{key}", json.dumps(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # own session: on a hang the launcher and both workers are killed together, no process is left behind
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            self.fail(
                f"torch.distributed.run did not finish in {timeout} s (collective mismatch between ranks?)\n"
                + err[-3000:]
            )
        self.assertEqual(proc.returncode, 0, out[-3000:] + err[-3000:])

    def _check_rank_zero_outputs(self, stage: str, final: str) -> dict:
        models = os.path.join(self.root, "models")
        ckpt = _load(os.path.join(models, final))
        # 2 training volumes (2 slices each, batch 1 volume) split over 2 ranks: 1 iteration per rank, not 2
        self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["epoch_length"]), (1, 1))
        self.assertTrue(os.path.isfile(os.path.join(models, final.replace(".pt", "_best.pt"))))
        # gradients are averaged over the ranks: both ranks end with the same weights, the saved ones
        rank0, rank1 = (_load(os.path.join(self.root, f"rank{r}.pt")) for r in (0, 1))
        self.assertTrue(state_equal(rank0, rank1))
        self.assertTrue(state_equal(ckpt["model"], rank0))
        # TensorBoard only on rank 0: every event file (training stats, validation stats and validation images
        # writers) comes from one process
        events = glob.glob(os.path.join(self.root, "eval", stage, "events.out.tfevents.*"))
        self.assertEqual(len(events), 3, events)
        self.assertEqual(len({os.path.basename(e).split(".")[-2] for e in events}), 1, events)
        return ckpt

    def test_autoencoder(self):
        self._run(["train.json", "train_autoencoder.json", "multi_gpu_train.json"], AUTOENCODER_TINY)
        ckpt = self._check_rank_zero_outputs("autoencoder", "autoencoder.pt")
        self.assertEqual(len(glob.glob(os.path.join(self.root, "models", "*.pt"))), 2)
        _assert_one_adam_step_per_parameter(self, ckpt)

    def test_structure(self):
        self._run(["train.json", "train_structure.json", "multi_gpu_train.json"], STRUCTURE_TINY)
        ckpt = self._check_rank_zero_outputs("structure", "structure.pt")
        self.assertEqual(len(glob.glob(os.path.join(self.root, "models", "*.pt"))), 2)
        _assert_one_adam_step_per_parameter(self, ckpt)

    def test_diffusion(self):
        stage_states = _write_stage_checkpoints(os.path.join(self.root, "models"))
        configs = ["train.json", "train_diffusion.json", "multi_gpu_train.json"]
        self._run(configs, {**DIFFUSION_TINY, "ema_decay": 0.5})
        ckpt = self._check_rank_zero_outputs("diffusion", "diffusion.pt")
        self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer", "ema"})
        # only the UNet trained: the frozen stages are bit for bit the loaded checkpoints on every rank
        model = ckpt["model"]
        for prefix, stage in (("autoencoder.model.", "autoencoder"), ("structure_net.", "structure")):
            sub = {k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}
            self.assertTrue(state_equal(sub, stage_states[stage]), stage)
        served = _load(os.path.join(self.root, "models", "model.pt"))
        self.assertTrue(state_equal({k[5:]: v for k, v in served.items() if k.startswith("unet.")}, ckpt["ema"]))
        self.assertNotEqual(float(served["scale_factor"]), 1.0)

    def test_train_all_stages(self):
        """train.json + multi_gpu_train.json trains the three stages in one torchrun launch: each stage shards
        the data over the ranks, and DDP keeps the ranks' weights identical (each rank saves here, to compare)."""
        overlay = os.path.join(self.root, "stage_rank_dump.json")
        with open(overlay, "w") as f:
            json.dump({**STAGE_RANK_DUMP, "config_dir": str(CONFIGS)}, f)  # the stage files of this bundle
        tiny = {**PHANTOM, **TRAIN_ALL_SHARED, **TRAIN_ALL_TINY_NETWORKS}
        self._run(["train.json", "multi_gpu_train.json"], tiny, overlay=overlay, timeout=300)
        models = os.path.join(self.root, "models")
        for stage, final in (
            ("autoencoder", "autoencoder.pt"),
            ("structure", "structure.pt"),
            ("diffusion", "diffusion.pt"),
        ):
            ckpt = _load(os.path.join(models, final))
            # 2 training volumes split over 2 ranks: 1 iteration per rank, not 2
            self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["epoch_length"]), (1, 1), stage)
            _assert_one_adam_step_per_parameter(self, ckpt)
            # gradients averaged over the ranks: both ranks end the stage with the same weights, the saved ones
            rank0, rank1 = (_load(os.path.join(self.root, f"{stage}_rank{r}.pt")) for r in (0, 1))
            self.assertTrue(state_equal(rank0, rank1), stage)
            self.assertTrue(state_equal(ckpt["model"], rank0), stage)
            self.assertTrue(os.path.isfile(os.path.join(self.root, "eval", stage, "datalist.json")), stage)
        # stage 2 trained on the stage-0 and stage-1 results of the same run; model.pt is written once, by rank 0
        served = _load(os.path.join(models, "model.pt"))
        for prefix, final in (("autoencoder.model.", "autoencoder.pt"), ("structure_net.", "structure.pt")):
            sub = {k[len(prefix) :]: v for k, v in served.items() if k.startswith(prefix)}
            self.assertTrue(state_equal(sub, _load(os.path.join(models, final))["model"]), final)


if __name__ == "__main__":
    unittest.main()
