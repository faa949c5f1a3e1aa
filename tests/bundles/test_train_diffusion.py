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
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from parameterized import parameterized

from monai_msgldm.data.phantom import ensure_phantom_dataset
from monai_msgldm.engines import LatentCache
from monai_msgldm.inferers import load_sampling_record
from monai_msgldm.networks.nets import MSGLDM, StructureStyleNet
from tests.bundles.utils import assert_tensorboard_images, state_equal

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
# the base and the stage overlay, merged in order (the model zoo's way)
CONFIG = [str(BUNDLE_DIR / "configs" / "train.json"), str(BUNDLE_DIR / "configs" / "train_diffusion.json")]
META = BUNDLE_DIR / "configs" / "metadata.json"
LOGGING = BUNDLE_DIR / "configs" / "logging.conf"

# a tiny run: 3 phantom subjects at 4 mm, split 2 training / 1 validation, 32 px slices (latent 4 x 4)
TINY_AE = {"channels": [8, 8, 8, 8], "norm_num_groups": 4}
TINY_STRUCTURE = {"structure_channels": [8, 8, 8, 8], "style_channels": [4, 4, 4, 4, 4], "mlp_hidden": 16}
TINY_UNET = {"channels": [8, 8, 8], "norm_num_groups": 4, "num_head_channels": 8}
TINY = {
    "val_ratio": 0.34,
    "test_ratio": 0.0,
    "spatial_size": 32,
    "max_epochs": 1,
    "num_samples": 2,
    "val_num_samples": 2,
    "batch_size": 1,
    "num_workers": 0,
    "val_ddim_steps": 2,
    **{f"autoencoder_def#{k}": v for k, v in TINY_AE.items()},
    **{f"structure_def#{k}": v for k, v in TINY_STRUCTURE.items()},
    **{f"unet_def#{k}": v for k, v in TINY_UNET.items()},
}
PHANTOM = {"phantom_subjects": 3, "phantom_resolution": 4.0, "phantom_seed": 0}


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


def _tiny_autoencoder() -> AutoencoderKL:
    return AutoencoderKL(
        spatial_dims=2,
        channels=TINY_AE["channels"],
        latent_channels=4,
        num_res_blocks=2,
        attention_levels=(False,) * 4,
        norm_num_groups=TINY_AE["norm_num_groups"],
        with_encoder_nonlocal_attn=True,
        with_decoder_nonlocal_attn=True,
    )


def _tiny_structure_net() -> StructureStyleNet:
    return StructureStyleNet(spatial_dims=2, num_modalities=4, seg_out_channels=3, **TINY_STRUCTURE)


def _write_stage_checkpoints(ckpt_dir: str, stages: tuple[str, ...] = ("autoencoder", "structure")) -> dict:
    """Stage-0/1 final checkpoints (key ``model``) of freshly initialised tiny networks; returns their state dicts."""
    os.makedirs(ckpt_dir, exist_ok=True)
    torch.manual_seed(123)
    states = {"autoencoder": _tiny_autoencoder().state_dict(), "structure": _tiny_structure_net().state_dict()}
    for stage in stages:
        torch.save({"model": states[stage]}, os.path.join(ckpt_dir, f"{stage}.pt"))
    return states


def _sub_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


class TestTrainDiffusionWorkflow(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.ckpt_dir = os.path.join(self.root, "models")

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def _workflow(self, **overrides) -> ConfigWorkflow:
        return ConfigWorkflow(
            config_file=CONFIG,
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type="train",
            bundle_root=self.root,
            phantom_cache_dir=_TMP,
            **PHANTOM,
            **{**TINY, **overrides},
        )

    def test_workflow(self):
        stage_states = _write_stage_checkpoints(self.ckpt_dir)
        wf = self._workflow(**{"ema_decay": 0.5, "save_interval": 1, "train#handlers#4#_disabled_": True})
        wf.initialize()
        self.assertEqual(wf.check_properties(), [])
        self.assertEqual(wf.parser.get_parsed_content("data_root"), _DATA)
        self.assertTrue(os.path.isfile(os.path.join(self.root, "eval", "diffusion", "datalist.json")))

        net = wf.parser.get_parsed_content("network")
        self.assertIsInstance(net, MSGLDM)
        # the stage checkpoints are loaded in `initialize`, before training
        self.assertTrue(state_equal(net.autoencoder.model.state_dict(), stage_states["autoencoder"]))
        self.assertTrue(state_equal(net.structure_net.state_dict(), stage_states["structure"]))
        self.assertEqual(float(net.scale_factor), 1.0)
        # AdamW on the UNet only
        optimizer = wf.parser.get_parsed_content("optimizer")
        self.assertIsInstance(optimizer, torch.optim.AdamW)
        self.assertEqual({id(p) for p in optimizer.param_groups[0]["params"]}, {id(p) for p in net.unet.parameters()})
        self.assertEqual(optimizer.param_groups[0]["lr"], 1e-4)
        unet_init = {k: v.detach().clone() for k, v in net.unet.state_dict().items()}

        # the input masks are drawn in the transform chain (RandModalityDropoutd), the trainer draws none
        trainer = wf.trainer
        self.assertIsNone(trainer.mask_sampler)
        for item in wf.parser.get_parsed_content("train#dataset")[0]:
            self.assertEqual(item["input_available"].dtype, torch.bool)
            self.assertTrue(bool(item["input_available"].any()))
            self.assertFalse(bool((item["input_available"] & ~item["available"]).any()))
        given = []
        trainer.add_event_handler(
            Events.ITERATION_STARTED, lambda e: given.append(e.state.batch["input_available"].clone())
        )
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda e: self.assertTrue(torch.equal(torch.stack([o["available"] for o in e.state.output]), given[-1])),
        )

        # record the first batch and the UNet weights after each step, to check the calibration and the EMA values
        seen: dict = {"steps": []}

        def first_batch(e):
            seen["batch"] = e.state.batch["image"].clone()
            seen["rng"] = torch.get_rng_state()  # the calibration's draw of the posterior sample comes next

        trainer.add_event_handler(Events.ITERATION_STARTED(once=1), first_batch)
        # the latents are cached per (subject, slice index) by default (cache_latents)
        self.assertIsInstance(trainer.latent_cache, LatentCache)
        slice_keys: list = []
        trainer.add_event_handler(
            Events.ITERATION_STARTED, lambda e: slice_keys.extend(trainer.latent_cache.keys(e.state.batch))
        )
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda e: seen["steps"].append({k: v.detach().clone() for k, v in net.unet.state_dict().items()}),
        )
        wf.run()
        self.assertEqual((trainer.state.epoch, trainer.state.iteration), (1, 2))  # 2 volumes x 2 slices, batch 1
        psnr = wf.evaluator.state.metrics["val_psnr"]
        self.assertTrue(math.isfinite(psnr) and psnr > 0)
        self.assertTrue(math.isfinite(wf.evaluator.state.metrics["val_ssim"]))
        self.assertEqual(wf.evaluator.inferer.num_inference_steps, 2)
        self.assertIsInstance(wf.evaluator.inferer.scheduler, DDIMScheduler)
        self.assertIsInstance(trainer.inferer.scheduler, DDPMScheduler)
        self.assertEqual(wf.evaluator.targets, [3])  # flair
        cache = trainer.latent_cache
        subjects = {os.path.basename(k[0]) for k in slice_keys}
        self.assertTrue(subjects and all(s.startswith("Phantom_") for s in subjects), slice_keys)
        self.assertTrue(all(k in cache for k in slice_keys))
        self.assertEqual(
            (len(cache), cache.misses, cache.hits),
            (len(set(slice_keys)), len(set(slice_keys)), 4 - len(set(slice_keys))),
        )
        wf.finalize()

        # scale factor: 1 / std of the first batch's joint latent, the same posterior draw replayed
        scale = float(net.scale_factor)
        with torch.no_grad():
            torch.set_rng_state(seen["rng"])
            std = float(torch.std(net.autoencoder.encode_stage_2_inputs(seen["batch"])))
        self.assertNotEqual(scale, 1.0)
        self.assertAlmostEqual(scale * std, 1.0, places=5)

        ckpt = torch.load(os.path.join(self.ckpt_dir, "diffusion.pt"), map_location="cpu", weights_only=True)
        self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer", "ema"})
        self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["epoch_length"]), (2, 2))
        self.assertTrue(state_equal(ckpt["model"], net.state_dict()))
        # validation scored the EMA UNet: the best checkpoint holds it, and training went on with its own weights
        best = torch.load(os.path.join(self.ckpt_dir, "diffusion_best.pt"), map_location="cpu", weights_only=True)
        self.assertTrue(state_equal(_sub_state(best, "unet."), ckpt["ema"]))
        self.assertFalse(state_equal(ckpt["ema"], _sub_state(ckpt["model"], "unet.")))
        assert_tensorboard_images(self, os.path.join(self.root, "eval", "diffusion"))
        # the periodic checkpoint carries the stage prefix (stage 0 writes checkpoint_epoch=N.pt in the same folder)
        periodic = torch.load(
            os.path.join(self.ckpt_dir, "diffusion_checkpoint_epoch=1.pt"), map_location="cpu", weights_only=True
        )
        self.assertTrue(state_equal(periodic["ema"], ckpt["ema"]))

        served = torch.load(os.path.join(self.ckpt_dir, "model.pt"), map_location="cpu", weights_only=True)
        # beside it, what it predicts (inference.json reads it): train.json's v-prediction on the DDPM schedule
        self.assertEqual(
            load_sampling_record(os.path.join(self.ckpt_dir, "model.pt")),
            {
                "scheduler": "ddpm",
                "prediction_type": "v_prediction",
                "num_train_timesteps": 1000,
                "train_timesteps": None,
            },
        )
        # frozen stages: bit for bit the loaded checkpoints
        self.assertTrue(state_equal(_sub_state(served, "autoencoder.model."), stage_states["autoencoder"]))
        self.assertTrue(state_equal(_sub_state(served, "structure_net."), stage_states["structure"]))
        self.assertEqual(float(served["scale_factor"]), scale)
        # the UNet is the EMA one (decay 0.5 over 2 steps: init / 4 + w1 / 4 + w2 / 2), not the online one
        unet = _sub_state(served, "unet.")
        w1, w2 = seen["steps"]
        self.assertFalse(state_equal(w2, unet_init))
        self.assertTrue(state_equal(unet, ckpt["ema"]))
        self.assertFalse(state_equal(unet, net.unet.state_dict()))
        for k, v in unet.items():
            expected = 0.25 * unet_init[k] + 0.25 * w1[k] + 0.5 * w2[k]
            torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-6, msg=k)
        # the served file loads strictly into a fresh network_def
        fresh = wf.parser.get_parsed_content("network_def", lazy=False)
        self.assertIsNot(fresh, net)
        fresh.load_state_dict(served)
        self.assertTrue(state_equal(fresh.state_dict(), served))

    @parameterized.expand([("autoencoder", ("structure",)), ("structure", ("autoencoder",)), ("autoencoder", ())])
    def test_missing_stage_checkpoint(self, missing, present):
        _write_stage_checkpoints(self.ckpt_dir, present)
        wf = self._workflow()
        with self.assertRaises(Exception) as cm:
            wf.initialize()
        errors = [e for e in _cause_chain(cm.exception) if isinstance(e, FileNotFoundError)]
        self.assertEqual(len(errors), 1, repr(cm.exception))
        message = str(errors[0])
        self.assertIn(os.path.join(self.ckpt_dir, f"{missing}.pt"), message)
        self.assertIn(f"--{missing}_ckpt", message)
        self.assertFalse(os.path.exists(os.path.join(self.ckpt_dir, "model.pt")))


class TestDefaultNetworks(unittest.TestCase):
    def test_default_network_def(self):
        parser = ConfigParser()
        parser.read_config(CONFIG)
        self.assertEqual(parser.get_parsed_content("ema_decay"), 0.9999)
        self.assertIs(parser.get_parsed_content("cache_latents"), True)
        cache = parser.get_parsed_content("train#latent_cache")
        self.assertIsInstance(cache, LatentCache)
        self.assertFalse(cache.structure_features)  # 35 MiB per slice at the paper's size: off by default
        parser["cache_latents"] = False
        self.assertIsNone(parser.get_parsed_content("train#latent_cache", lazy=False))
        parser["cache_latents"] = True
        # the demo turns the structure features' cache on; the plain LDM baseline has none to cache
        for overlays, expected in ((["demo.json"], True), (["demo.json", "baseline_ldm.json"], False)):
            overlaid = ConfigParser()
            overlaid.read_config(CONFIG + [str(BUNDLE_DIR / "configs" / f) for f in overlays])
            self.assertIs(overlaid.get_parsed_content("train#latent_cache").structure_features, expected, overlays)
        self.assertEqual(parser.get_parsed_content("val_ddim_steps"), 2)  # v-prediction (epsilon: 10)
        self.assertEqual(parser.get_parsed_content("image_loss_weight"), 0.0)  # the paper's latent loss alone
        self.assertEqual(parser.get_parsed_content("learning_rate"), 1e-4)
        self.assertEqual(parser.get_parsed_content("spatial_size"), 192)
        unet = parser.get_parsed_content("unet_def")
        self.assertIsInstance(unet, DiffusionModelUNet)
        self.assertEqual(
            (unet.in_channels, unet.out_channels, list(unet.block_out_channels)), (292, 16, [128, 128, 256])
        )  # 16 latent + 256 F_s + the hybrid condition's 16 given latents and 4 mask channels (the default)
        structure = parser.get_parsed_content("structure_def")
        self.assertIsInstance(structure, StructureStyleNet)
        net = parser.get_parsed_content("network_def")
        # same shapes as the package's defaults (paper's scheduler, structure net with 3 segmentation channels)
        torch.manual_seed(0)
        reference = MSGLDM(
            spatial_dims=2, structure_net=StructureStyleNet(spatial_dims=2, seg_out_channels=3), hybrid_condition=True
        )
        self.assertEqual(
            {k: v.shape for k, v in net.state_dict().items()}, {k: v.shape for k, v in reference.state_dict().items()}
        )
        # the paper's schedule is the config's schedulers': training DDPM and sampling DDIM share it
        for key, kind in (("noise_scheduler", DDPMScheduler), ("sampling_scheduler", DDIMScheduler)):
            scheduler = parser.get_parsed_content(key)
            self.assertIsInstance(scheduler, kind)
            self.assertEqual((scheduler.num_train_timesteps, scheduler.prediction_type), (1000, "v_prediction"))
            reference_betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
            torch.testing.assert_close(scheduler.betas, reference_betas)
        # the autoencoder is exactly the stage-0 network_def
        stage0 = ConfigParser()
        stage0.read_config([CONFIG[0], str(BUNDLE_DIR / "configs" / "train_autoencoder.json")])
        self.assertEqual(stage0.get("network_def"), "@autoencoder_def")  # the one definition of the base
        raw0, raw2 = dict(stage0.get("autoencoder_def")), dict(parser.get("autoencoder_def"))
        self.assertEqual(stage0.get_parsed_content("autoencoder_def#attention_levels"), [False] * 4)
        self.assertEqual(parser.get_parsed_content("autoencoder_def#attention_levels"), [False] * 4)
        raw0.pop("attention_levels"), raw2.pop("attention_levels")
        self.assertEqual(raw0, raw2)
        # a stage-0 checkpoint loads strictly into the autoencoder of this network_def
        stage0_state = stage0.get_parsed_content("network_def").state_dict()
        net.autoencoder.model.load_state_dict(stage0_state)
        self.assertTrue(state_equal(net.autoencoder.model.state_dict(), stage0_state))


class TestTrainDiffusionCLI(unittest.TestCase):
    def test_run_training_without_ema(self):
        """The CLI run, without EMA and without the latent cache (both switches off from the command line), with the
        image-space loss on (``--image_loss_weight``)."""
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        ckpt_dir = os.path.join(root, "models")
        stage_states = _write_stage_checkpoints(ckpt_dir)
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(META)]
        cmd += ["--config_file", json.dumps(CONFIG), "--logging_file", str(LOGGING)]
        cmd += ["--bundle_root", root, "--dataset_dir", _DATA, "--ema_decay", "$None", "--cache_latents", "False"]
        cmd += ["--image_loss_weight", "0.5"]
        for key, value in TINY.items():
            cmd += [f"--{key}", json.dumps(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        self.assertIn("val_psnr", proc.stdout + proc.stderr)
        self.assertIn("image-space loss: 0.5 x L1Loss", proc.stdout + proc.stderr)
        ckpt = torch.load(os.path.join(ckpt_dir, "diffusion.pt"), map_location="cpu", weights_only=True)
        self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer"})  # no EMA
        self.assertEqual((ckpt["trainer"]["iteration"], ckpt["trainer"]["max_epochs"]), (2, 1))
        served = torch.load(os.path.join(ckpt_dir, "model.pt"), map_location="cpu", weights_only=True)
        # without EMA the served model is the trained network itself
        self.assertTrue(state_equal(served, ckpt["model"]))
        self.assertTrue(state_equal(_sub_state(served, "autoencoder.model."), stage_states["autoencoder"]))
        self.assertTrue(state_equal(_sub_state(served, "structure_net."), stage_states["structure"]))
        self.assertNotEqual(float(served["scale_factor"]), 1.0)
        unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=16 + TINY_STRUCTURE["structure_channels"][-1] + 16 + 4,  # the default hybrid condition
            out_channels=16,
            channels=TINY_UNET["channels"],
            attention_levels=(False, True, True),
            num_res_blocks=1,
            num_head_channels=TINY_UNET["num_head_channels"],
            norm_num_groups=TINY_UNET["norm_num_groups"],
        )
        model = MSGLDM(
            spatial_dims=2,
            autoencoder=_tiny_autoencoder(),
            structure_net=_tiny_structure_net(),
            unet=unet,
            hybrid_condition=True,
        )
        model.load_state_dict(served)
        self.assertTrue(all(torch.isfinite(p).all() for p in model.parameters()))


if __name__ == "__main__":
    unittest.main()
