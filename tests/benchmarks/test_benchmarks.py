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
"""Smoke runs of the benchmark scripts with tiny settings, so that they do not rot (their figures are not checked)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import torch
from parameterized import parameterized

from monai_msgldm.data.phantom import ensure_phantom_dataset

__all__: list[str] = []

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

TINY_NETS = {
    "autoencoder_def#channels": [8, 8, 8],
    "autoencoder_def#norm_num_groups": 4,
    "autoencoder_def#with_encoder_nonlocal_attn": False,
    "autoencoder_def#with_decoder_nonlocal_attn": False,
    "structure_def#structure_channels": [8, 8, 8],
    "structure_def#strides": [1, 2, 2],
    "structure_def#style_channels": [4, 4, 4],
    "structure_def#mlp_hidden": 16,
    "unet_def#channels": [8, 8, 8],
    "unet_def#norm_num_groups": 4,
    "unet_def#num_head_channels": 8,
}
SHARED = {
    "phantom_subjects": 3,
    "phantom_resolution": 4.0,
    "phantom_seed": 0,
    "val_ratio": 0.34,
    "test_ratio": 0.0,
    "spatial_size": 32,
    "num_samples": 2,
    "batch_size": 1,
    "num_workers": 0,
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setUpModule() -> None:
    global _TMP
    _TMP = tempfile.mkdtemp()
    ensure_phantom_dataset(cache_dir=_TMP, num_subjects=3, resolution=4.0, seed=0)


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


class TestBundleTiming(unittest.TestCase):
    @parameterized.expand(
        [("autoencoder", None), ("structure", None), ("diffusion", None), ("diffusion", "baseline_ldm.json")]
    )
    def test_time_stage(self, stage, overlay):
        timing = _load("bundle_timing")
        workdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, workdir, True)
        overrides = {**SHARED, "phantom_cache_dir": _TMP, **TINY_NETS}  # train.json ids: every stage takes its own
        row = timing.time_stage(stage, overrides, 2, workdir, overlay)
        self.assertEqual(row["stage"], stage if overlay is None else f"{stage}+{overlay}")
        self.assertEqual(row["slices_per_batch"], 2)
        self.assertTrue(row["seconds_per_iteration"] > 0 and math.isfinite(row["seconds_per_iteration"]))

    def test_time_synthesis_extrapolates(self):
        timing = _load("bundle_timing")
        row = timing.time_synthesis({"spatial_size": 32, **TINY_NETS}, 2, 4, 6, 155, "cpu")
        self.assertEqual((row["spatial_size"], row["slices_timed"], row["volume_slices"]), (32, 6, 155))
        self.assertTrue(row["volume_extrapolated"])
        self.assertAlmostEqual(row["seconds_per_volume"], row["seconds_per_slice"] * 155)
        self.assertGreater(row["peak_process_memory_gb"], 0.0)

    def test_presets_read_from_the_bundle(self):
        timing = _load("bundle_timing")
        common = _load("common")
        demo = common.preset_parser("demo")
        self.assertEqual(demo.get_parsed_content("spatial_size"), 64)
        # the demo trains twice as long in bfloat16 on a CPU with AMX
        self.assertEqual(
            demo.get_parsed_content("epochs#diffusion"), 500 if demo.get_parsed_content("cpu_amp") else 250
        )
        values = timing.preset_values("demo")  # what the demo changes in inference.json
        self.assertNotIn("cpu_amp", values)  # the serving machine's choice, never the training machine's
        self.assertEqual((values["spatial_size"], values["prediction_type"]), (64, "v_prediction"))
        self.assertEqual(values["unet_def"]["channels"], [64, 128, 128])
        self.assertEqual(common.preset_parser("default").get_parsed_content("spatial_size"), 192)
        # the default preset trains on the 2 mm phantom: its working grid is what inference.json must be told
        self.assertEqual(
            timing.preset_values("default"), {"pixdim": [2.0, 2.0, 2.0], "prediction_type": "v_prediction"}
        )
        self.assertEqual(values["pixdim"], [3.0, 3.0, 3.0])


class TestSpeedBenchmark(unittest.TestCase):
    def test_main_tiny(self):
        """Sweeps, whole volumes in fresh processes and one end-to-end ``python -m monai.bundle run``, with the
        bundle's sampler (the baseline sampler is left out here: its speed-up is checked below)."""
        speed = _load("speed")
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        args = ["--no-training", "--steps", "1", "2", "--batch-sizes", "2", "--sweep-slices", "2"]
        args += ["--volume-size", "64", "--volume-depth", "6", "--phantom-resolution", "4", "--phantom-cache-dir", _TMP]
        args += ["--samplers", speed.DEFAULT_SAMPLER, "--bundle-samplers", speed.DEFAULT_SAMPLER]
        args += ["--output-dir", out, "--overrides", json.dumps(TINY_NETS)]
        self.assertEqual(speed.main(args), 0)
        with open(os.path.join(out, "speed.json")) as f:
            result = json.load(f)
        self.assertEqual(
            [(r["model"], r["ddim_steps"]) for r in result["steps_sweep"]],
            [("msgldm", 1), ("msgldm", 2), ("plain_ldm", 1), ("plain_ldm", 2)],
        )
        self.assertEqual(set(result["synthesis_ratios"]), {"1", "2"})
        batch = speed.inference_default("slice_batch_size")
        self.assertEqual(
            [(r["slice_batch_size"], r["optimised"]) for r in result["batch_sweep"]], [(2, True), (batch, False)]
        )
        self.assertEqual(
            [(r["model"], r["sampler"]) for r in result["volumes"]],
            [("msgldm", "inference.json"), ("plain_ldm", "inference.json")],
        )
        self.assertEqual(set(result["volume_ratios"]), {"seconds", "peak_memory"})
        row = result["volumes"][0]
        self.assertGreater(row["peak_process_memory_gb"], 0.0)
        self.assertLessEqual(row["slices_sampled_per_volume"], 6)
        # the default model (v-prediction, as train.json records it): 2 steps
        self.assertEqual(
            row["ddim_steps"], speed.inference_parser(overrides=speed.DEFAULT_MODEL).get_parsed_content("ddim_steps")
        )
        self.assertEqual(row["ddim_steps"], 2)
        (run,) = result["bundle"]
        self.assertEqual((run["sampler"], run["returncode"]), ("inference.json", 0))
        self.assertGreater(run["peak_process_memory_gb"], 0.0)
        # the volume target of the inferer row and of the bundle run, each judged on its own figures (no baseline here)
        self.assertEqual(len(result["checks"]), 2)
        for check, timed in zip(result["checks"], (row, run)):
            self.assertIn(f"{timed['seconds']:.0f} s", check["figures"])
            self.assertEqual(check["met"], timed["seconds"] <= 75 and timed["peak_process_memory_gb"] < 2.0)
        for name in ("speed.md", "time_vs_steps.png"):
            self.assertGreater(os.path.getsize(os.path.join(out, name)), 0)

    def test_speedups_and_baseline(self):
        speed = _load("speed")
        rows = [
            {"sampler": speed.BASELINE_SAMPLER, "seconds": 120.0, "model": "msgldm"},
            {"sampler": speed.DEFAULT_SAMPLER, "seconds": 40.0, "model": "msgldm"},
            {"sampler": speed.DEFAULT_SAMPLER, "seconds": 10.0, "model": "plain_ldm"},
        ]
        self.assertEqual(speed.speedups(rows), {speed.DEFAULT_SAMPLER: 3.0})
        self.assertEqual(speed.speedups(rows[1:]), {})
        # the baseline is bundle 0.7.0's sampling: 20 DDIM steps on the paper's epsilon schedule, 4 slices per batch
        baseline = speed.sampler(None, *speed.SAMPLERS[speed.BASELINE_SAMPLER])
        self.assertEqual(type(baseline.scheduler).__name__, "DDIMScheduler")
        self.assertEqual((baseline.num_inference_steps, baseline.scheduler.prediction_type), (20, "epsilon"))
        self.assertTrue(baseline.known_contrast_guidance)
        # the foreground crop: on in inference.json, off for 0.7.0's sampling and the row without it
        crops = {
            label: speed.inference_parser(*speed.SAMPLERS[label]).get_parsed_content("inferer").crop_foreground
            for label in (speed.BASELINE_SAMPLER, speed.DEFAULT_SAMPLER, speed.NO_CROP_SAMPLER)
        }
        self.assertEqual(list(crops.values()), [False, True, False])

    def test_precision_of_the_samplers(self):
        """bfloat16 on the CPU (``cpu_amp``, with ``channels_last``) only where inference.json turns it on, on a CPU
        with AMX; bundle 0.7.0's reference, the float32 row and the ONNX Runtime rows (whose graphs PyTorch's
        autocast would bypass) in float32."""
        speed = _load("speed")
        from monai_msgldm.utils import cpu_has_amx

        expected = {
            speed.BASELINE_SAMPLER: False,
            speed.DEFAULT_SAMPLER: cpu_has_amx(),
            speed.FLOAT32_SAMPLER: False,
            speed.ONNX_SAMPLER: False,
            speed.INT8_SAMPLER: False,
            speed.INT8_SAVED_SAMPLER: False,
        }
        for label, cpu_amp in expected.items():
            inferer = speed.inference_parser(*speed.SAMPLERS[label]).get_parsed_content("inferer")
            self.assertEqual((inferer.sampler.cpu_amp, inferer.channels_last), (cpu_amp, cpu_amp), label)

    def test_int8_row(self):
        """The ``onnx_int8.json`` rows: the network's image-resolution parts quantized, calibrated on the timed
        volume's given contrasts; the arena switch reaches the sessions."""
        speed = _load("speed")
        from monai_msgldm.inferers import OnnxRuntimeForward, calibration_slices

        volume = speed.phantom_volume(64, 6, 4, _TMP)
        for label, arena in ((speed.INT8_SAMPLER, False), (speed.INT8_ARENA_SAMPLER, True)):
            overlays, overrides = speed.SAMPLERS[label]
            net = speed.build_network("msgldm", {**TINY_NETS, **overrides})
            row = speed.time_bundle_inferer(net, volume, overlays, {**TINY_NETS, **overrides})
            self.assertGreater(row["warm_up_seconds"], 0.0)
            runtime = net.autoencoder.model.decoder.__dict__["forward"]
            self.assertIsInstance(runtime, OnnxRuntimeForward)
            self.assertEqual((runtime.exports, runtime.memory_arena), (1, arena))
            given = [True, True, True, False]  # FLAIR synthesized
            slices = calibration_slices(volume[0], given, 4)
            torch.testing.assert_close(
                net.autoencoder.model.encoder.__dict__["forward"].int8_calibration,
                slices[:, :3].reshape(-1, 1, *slices.shape[2:]),
            )

    def test_int8_saved_graphs_rows(self):
        """The saved-graphs rows: the graphs are saved beforehand (timed apart, ``export_seconds``) by
        ``save_int8_graphs`` in the worker and by the ``export_int8.json`` command end to end, then the timed run
        loads them; its row is judged against the targets like the others."""
        speed = _load("speed")
        spec = speed.SAMPLERS[speed.INT8_SAVED_SAMPLER]
        self.assertIn(speed.EXPORT_OVERLAY, spec[0])
        row = speed.whole_volume("msgldm", spec, json.dumps(TINY_NETS), 64, 6, 4, _TMP)
        self.assertGreater(row["export_seconds"], 0.0)
        self.assertGreater(row["seconds"], 0.0)
        run = speed.bundle_run(spec, {**TINY_NETS, "spatial_size": 64}, 4, _TMP)
        self.assertEqual(run["returncode"], 0)
        self.assertGreater(run["export_seconds"], 0.0)
        rows = [{**row, "sampler": speed.INT8_SAVED_SAMPLER, "scheduler": "DDIMScheduler", "slice_batch_size": 16}]
        result = {
            "volume": [64, 64, 6],
            "model_overrides": TINY_NETS,
            "volumes": rows,
            "bundle": [],
            "stage2_ratio": None,
        }
        (check,) = speed.target_checks(result)
        self.assertIn(speed.INT8_SAVED_SAMPLER, check["target"])


class TestMallocTuning(unittest.TestCase):
    def test_main_tiny(self):
        """Both settings in fresh processes: each worker runs with exactly its setting's MALLOC_ variables (none for
        glibc's default, even when the caller has some), and the speed-ups are against the default."""
        bench = _load("malloc_tuning")
        self.assertEqual(bench.SETTINGS["glibc default"], {})
        args = ["--slices", "2", "--rounds", "1", "--volume-size", "64", "--phantom-resolution", "4"]
        args += ["--phantom-cache-dir", _TMP, "--overrides", json.dumps(TINY_NETS)]
        previous = os.environ.get("MALLOC_TRIM_THRESHOLD_")
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "12345"  # inherited by the default run unless removed
        try:
            result = bench.main(args)
        finally:
            if previous is None:
                os.environ.pop("MALLOC_TRIM_THRESHOLD_")
            else:
                os.environ["MALLOC_TRIM_THRESHOLD_"] = previous
        self.assertEqual([r["setting"] for r in result["runs"]], list(bench.SETTINGS))
        for run in result["runs"]:
            self.assertEqual(run["environment"], bench.SETTINGS[run["setting"]] or {})
            self.assertEqual(run["slices"], 2)
            self.assertGreater(run["seconds_per_slice"], 0.0)
        self.assertEqual(result["speedups"]["glibc default"], 1.0)
        other = "no trim, 32 MiB mmap threshold"
        self.assertAlmostEqual(
            result["speedups"][other],
            result["summary"]["glibc default"]["seconds_per_slice"] / result["summary"][other]["seconds_per_slice"],
        )


class TestProfileSynthesis(unittest.TestCase):
    def test_slice_batch_takes_the_middle_slices_with_content(self):
        import torch

        profile = _load("profile_synthesis")
        volume = torch.full((1, 4, 8, 8, 10), -1.0)
        volume[0, :, 2:5, 2:5, 3:9] = torch.rand(4, 3, 3, 6)  # slices 3..8 have content
        images, available = profile.slice_batch(volume, 2)
        torch.testing.assert_close(images[:, :3], volume[0, :3, :, :, 5:7].permute(3, 0, 1, 2))
        self.assertTrue(bool((images[:, 3] == -1).all()))
        self.assertEqual(available.tolist(), [[True, True, True, False]] * 2)
        with self.assertRaisesRegex(ValueError, "fewer than batch=7"):
            profile.slice_batch(volume, 7)


class TestCompileParts(unittest.TestCase):
    def test_part_calls_time_what_the_sampler_runs(self):
        """The timed parts are the sampler's own image-resolution calls: the given contrasts' posterior means, F_s of
        the given contrasts and the decoding of the missing contrast only (here FLAIR, channel 3)."""
        import torch

        from tests.networks.nets.test_msgldm import tiny_msgldm

        compile_parts = _load("compile_parts")
        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=True).eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, True, True, False]] * 2)
        with torch.no_grad():
            calls = compile_parts.part_calls(net, images, available)
            latents = net.given_latents(images, available)
            torch.testing.assert_close(calls["encode given contrasts"](), latents)
            torch.testing.assert_close(calls["structure F_s"](), net.encode_structure(images, available))
            decoded = calls["decode missing"]()
            self.assertEqual(tuple(decoded.shape), (2, 1, 16, 16))
            torch.testing.assert_close(decoded, net.decode(latents)[:, 3:])


class TestOnnxRuntimeParts(unittest.TestCase):
    def test_part_modules_compute_what_the_sampler_runs(self):
        """The exported parts are the sampler's own image-resolution computations: the given contrasts' posterior
        means (one contrast per item), a structure encoder's features, the decoding of the missing contrast."""
        import torch

        from tests.networks.nets.test_msgldm import tiny_msgldm

        onnx_parts = _load("onnx_runtime_parts")
        torch.manual_seed(0)
        net = tiny_msgldm(hybrid_condition=True).eval()
        images = torch.rand(2, 4, 16, 16) * 2 - 1
        available = torch.tensor([[True, True, False, True]] * 2)
        parts = onnx_parts.part_modules(net, images, available)
        self.assertEqual(list(parts), ["encode 3 given contrasts", "one structure encoder", "decode missing"])
        with torch.no_grad():
            encode, contrasts, slices = parts["encode 3 given contrasts"]
            means = net.autoencoder.encode_mean_of(images[:, [0, 1, 3]])  # (2, 3 * C, 4, 4)
            torch.testing.assert_close(encode(contrasts).reshape(means.shape), means)
            self.assertEqual(slices, 2)
            structure, x, _ = parts["one structure encoder"]
            for got, expected in zip(structure(x), net.structure_net.structure_encoders[0](images[:, :1])):
                torch.testing.assert_close(got, expected)
            decode, z, _ = parts["decode missing"]
            torch.testing.assert_close(z, net.autoencoder.encode_mean_of(images[:, 2:3]))
            full = net.autoencoder.encode_mean(images) * net.scale_factor
            torch.testing.assert_close(decode(z), net.decode(full)[:, 2:3])


TINY_BUDGET = {
    "phantom_subjects": 4,
    "phantom_resolution": 4.0,
    "phantom_seed": 0,
    "val_ratio": 0.25,
    "test_ratio": 0.25,
    "split_seed": 0,
    "epochs": {"autoencoder": 1, "structure": 1, "diffusion": 1},
}


class TestQualityBenchmark(unittest.TestCase):
    def test_validation_split(self):
        """``--split validation`` scores the split's validation subjects, never a test subject."""
        _load("quality")
        scoring = importlib.import_module("quality_scoring")
        budget = {**TINY_BUDGET, "phantom_cache_dir": _TMP}
        names = {}
        for split in ("validation", "test"):
            cases = scoring.test_cases(budget, split=split)
            names[split] = {scoring.subject_name(c, i) for i, c in enumerate(cases)}
            self.assertEqual(len(names[split]), 1, split)  # 4 subjects, ratios 0.25 / 0.25
        from monai_msgldm.data.datalist import split_subjects

        train, validation, test = split_subjects([f"Phantom_{i:03d}" for i in range(4)], 0.25, 0.25, 0)  # the bundle's
        self.assertEqual((names["validation"], names["test"]), (set(validation), set(test)))
        self.assertFalse(names["validation"] & names["test"])
        training = scoring.test_cases(budget, split="training")  # for probes fitted on the training subjects
        self.assertEqual({scoring.subject_name(c, i) for i, c in enumerate(training)}, set(train))
        with self.assertRaisesRegex(ValueError, "split 'test', 'validation' or 'training'"):
            scoring.test_cases(budget, split="train")

    def test_crop_sampling_variant(self):
        """``crop``: plain sampling inside each slice's foreground box, with a 3 px margin."""
        _load("quality")
        scoring = importlib.import_module("quality_scoring")
        plain, crop = (scoring.synthesis_inferer("msgldm", 2, s) for s in ("plain", "crop"))
        self.assertEqual((plain.crop_foreground, plain.slice_batch_size), (False, 64))
        self.assertEqual((crop.crop_foreground, crop.crop_margin, crop.slice_batch_size), (True, 3, 1))
        self.assertEqual((crop.num_samples, crop.sampler.known_contrast_guidance), (1, False))

    def test_int8_variant(self):
        """``int8``: the loaded latent model's parts quantized, calibrated on the first case with every contrast
        given, then plain sampling; ``int8_saved``: the graphs saved on the calibration (training) cases, then loaded;
        other variants leave the network alone."""
        _load("quality")
        scoring = importlib.import_module("quality_scoring")
        from unittest import mock

        from monai_msgldm.inferers import OnnxRuntimeForward, calibration_slices
        from tests.networks.nets.test_msgldm import tiny_msgldm

        cases = [{"image": torch.rand(1, 4, 16, 16, 5) * 2 - 1}, {"image": torch.rand(1, 4, 16, 16, 5)}]
        seen = {}
        training = [{"image": torch.rand(1, 4, 16, 16, 5) * 2 - 1, "subject": [f"train{i}"]} for i in range(5)]
        for sampling in ("int8", "int8_saved", "plain"):
            net = tiny_msgldm(hybrid_condition=True).eval()
            with (
                mock.patch.object(scoring, "load_model", return_value=net),
                mock.patch("monai_msgldm.evaluation.evaluate_synthesis", return_value=[{}]) as evaluate,
            ):
                if sampling == "int8_saved":
                    from monai_msgldm import inferers

                    with mock.patch.object(inferers, "save_int8_graphs", wraps=inferers.save_int8_graphs) as save:
                        rows = scoring.evaluate_model(
                            "msgldm_hybrid", _TMP, cases, ["3->1"], 2, sampling, calibration_cases=training[:4]
                        )
                    calibration = save.call_args.args[1]
                    self.assertEqual([c["case"] for c in calibration], ["train0", "train1", "train2", "train3"])
                    torch.testing.assert_close(calibration[0]["image"], training[0]["image"][0])
                else:
                    rows = scoring.evaluate_model("msgldm_hybrid", _TMP, cases, ["3->1"], 2, sampling)
            self.assertEqual(rows[0]["model"], scoring.variant_name("msgldm_hybrid", sampling))
            self.assertIs(evaluate.call_args.args[0], net)
            seen[sampling] = net.autoencoder.model.encoder.__dict__.get("forward")
        self.assertIsNone(seen["plain"])
        self.assertIsInstance(seen["int8"], OnnxRuntimeForward)
        saved = seen["int8_saved"]  # the graphs saved on the training cases, loaded as onnx_int8.json loads them
        self.assertEqual((os.path.basename(saved.graph_file), saved.int8_calibration), ("encoder.onnx", None))
        slices = calibration_slices(cases[0]["image"][0], [True] * 4, scoring.INT8_CALIBRATION_SLICES)
        torch.testing.assert_close(seen["int8"].int8_calibration, slices.reshape(-1, 1, 16, 16))

    def test_main_tiny(self):
        quality = _load("quality")
        quality.BUDGET = {**TINY_BUDGET, "phantom_cache_dir": _TMP}
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        models = ["msgldm", "plain_ldm", "regression"]
        args = ["--work-dir", os.path.join(out, "models"), "--output-dir", out, "--models", *models]
        args += ["--sampling", "plain", "guided", "--budgets", "1", "0.5", "--dice-epochs", "1"]
        self.assertEqual(quality.main(args + ["--ddim-steps", "2", "--curve-steps", "2"]), 0)
        with open(os.path.join(out, "quality.json")) as f:
            result = json.load(f)
        variants = ["msgldm+guided", "plain_ldm+guided"]
        curve_points = ["msgldm@0.5x", "plain_ldm@0.5x", "regression@0.5x"]
        self.assertEqual(sorted(result["summary"]), sorted(models + variants + curve_points + ["autoencoder_ceiling"]))
        for model in models + variants + curve_points:
            self.assertEqual(set(result["summary"][model]), {"3->1", "1->3"})
            self.assertEqual(set(result["summary"][model]["3->1"]["targets"]), {"t1", "t1ce", "t2", "flair"})
        # the 0.5x MSG-LDM reuses msgldm's stages 0 and 1 (as msgldm_hybrid does); only stage 2 trained again
        work = os.path.join(out, "models")
        for name in ("msgldm@0.5x",):
            for ckpt in ("autoencoder.pt", "structure.pt"):
                with open(os.path.join(work, "msgldm", "models", ckpt), "rb") as a:
                    with open(os.path.join(work, name, "models", ckpt), "rb") as b:
                        self.assertEqual(a.read(), b.read(), (name, ckpt))
        self.assertEqual(set(result["learning_curves"]), {"msgldm", "plain_ldm", "regression"})
        self.assertEqual(set(result["learning_curves"]["msgldm"]), {"0.5", "1"})
        self.assertEqual(
            result["learning_curves"]["msgldm"]["0.5"]["3->1"]["psnr"],
            result["summary"]["msgldm@0.5x"]["3->1"]["mean"]["psnr"],
        )
        self.assertEqual(set(result["steps_curve"]), {"msgldm", "plain_ldm"})
        self.assertEqual(set(result["steps_curve"]["msgldm"]), {"2"})
        # ahead of the two baselines in each group, the ceiling gap, the 3->1 over 1->3 gain and the downstream
        # Dice of each group (no 20/100 pair; no variant with several samples, so no Spearman)
        self.assertEqual(len(result["checks"]), 8)
        for model in models + variants:
            for group in ("3->1", "1->3"):
                mean = result["summary"][model][group]["mean"]
                self.assertTrue(0.0 <= mean["dice_wt"] <= 1.0 and 0.0 <= mean["dice_real_wt"] <= 1.0, model)
        self.assertTrue(os.path.isfile(os.path.join(work, "segmenter", "models", "segmenter.pt")))
        for name in (
            "quality.md",
            "quality_bars.png",
            "steps_vs_quality.png",
            "comparison_flair.png",
            "learning_curves.png",
        ):
            self.assertGreater(os.path.getsize(os.path.join(out, name)), 0)
        # a second run trains nothing again
        self.assertEqual(quality.train_model("plain_ldm", os.path.join(out, "models")), 0.0)
        # plain_ldm_wide_ae4x shares the autoencoder msgldm_hybrid_wide_ae4x trains with 4x the stage-0 epochs;
        # that one takes msgldm's structure net; each ceiling scores its own autoencoder
        quality.train_model("plain_ldm_wide_ae4x", work)

        def same(a_model, b_model, ckpt):
            with open(os.path.join(work, a_model, "models", ckpt), "rb") as a:
                with open(os.path.join(work, b_model, "models", ckpt), "rb") as b:
                    return a.read() == b.read()

        self.assertTrue(same("plain_ldm_wide_ae4x", "msgldm_hybrid_wide_ae4x", "autoencoder.pt"))
        self.assertFalse(same("msgldm", "msgldm_hybrid_wide_ae4x", "autoencoder.pt"))
        self.assertTrue(same("msgldm", "msgldm_hybrid_wide_ae4x", "structure.pt"))
        scoring = importlib.import_module("quality_scoring")
        cases = scoring.test_cases(quality.BUDGET)
        own = scoring.autoencoder_ceiling(work, cases, source="msgldm_hybrid_wide_ae4x")
        shared = scoring.autoencoder_ceiling(work, cases)
        self.assertEqual({r["model"] for r in own}, {"autoencoder_ceiling[msgldm_hybrid_wide_ae4x]"})
        self.assertNotEqual([r["psnr"] for r in own], [r["psnr"] for r in shared])


def _quality_models():
    """``benchmarks/quality_models.py`` as ``quality.py`` imports it (with the benchmarks folder on the path)."""
    _load("quality")
    return importlib.import_module("quality_models")


class TestQualityModelNames(unittest.TestCase):
    @parameterized.expand(
        [
            ("msgldm", "msgldm", 1.0, 300),
            ("plain_ldm@4x", "plain_ldm", 4.0, 1200),
            ("regression@0.5x", "regression", 0.5, 150),
            ("msgldm_hybrid@0.25x", "msgldm_hybrid", 0.25, 75),
            ("msgldm@0.001x", "msgldm", 0.001, 1),  # at least one epoch
        ]
    )
    def test_budget_multiplier(self, name, base, multiplier, epochs):
        models = _quality_models()
        self.assertEqual(models.parse_model(name), (base, multiplier))
        scaled = models.scaled_budget(models.BUDGET, multiplier)
        self.assertEqual(scaled["epochs"]["diffusion"], epochs)
        self.assertEqual(
            {k: v for k, v in scaled["epochs"].items() if k != "diffusion"},
            {k: v for k, v in models.BUDGET["epochs"].items() if k != "diffusion"},
        )

    @parameterized.expand(
        [
            ("msgldm", "msgldm"),
            ("plain_ldm@2x", "msgldm"),
            ("regression", None),
            ("msgldm_hybrid_wide_ae4x", "msgldm_hybrid_wide_ae4x"),
            ("msgldm_hybrid_wide_ae4x@2x", "msgldm_hybrid_wide_ae4x"),
            ("plain_ldm_wide_ae4x", "msgldm_hybrid_wide_ae4x"),
            ("msgldm_hybrid_wide_ae4x_seed1000", "msgldm_hybrid_wide_ae4x"),
            ("plain_ldm_wide_ae4x_seed2000", "msgldm_hybrid_wide_ae4x"),
        ]
    )
    def test_autoencoder_source(self, name, source):
        self.assertEqual(_quality_models().autoencoder_source(name), source)

    def test_seed_variants(self):
        """``<model>_seed<k>``: the model's overrides with ``seed`` k, its stage-0 autoencoder, and for MSG-LDM its
        stage-1 structure net (stage 2 alone retrained)."""
        models = _quality_models()
        for base, seeds in models.SEED_VARIANTS.items():
            for k in seeds:
                name = f"{base}_seed{k}"
                self.assertEqual(models.model_overrides(name), {**models.model_overrides(base), "seed": k})
                self.assertEqual(models.MODELS[name][0], models.MODELS[base][0])
                self.assertEqual(models.autoencoder_source(name), models.autoencoder_source(base))
                self.assertEqual(name in models.STAGE2_ONLY, models.MODELS[base][0] == "msgldm", name)
        self.assertNotIn("seed", models.model_overrides("msgldm_hybrid_wide_ae4x"))

    def test_seed_spread(self):
        """Mean and sample standard deviation over a model and its ``_seed<k>`` retrainings, per group."""
        _load("quality")
        scoring = importlib.import_module("quality_scoring")

        def entry(psnr, ssim):
            return {"3->1": {"mean": {"psnr": psnr, "ssim": ssim, "ssim3d_tumour": None}}}

        summary = {
            "m": entry(26.0, 0.70),
            "m_seed1000": entry(27.0, 0.74),
            "m_seed2000": entry(28.0, 0.72),
            "other": entry(20.0, 0.5),
            "lone_seed5": entry(1.0, 0.1),  # no base model: left out
        }
        spread = scoring.seed_spread(summary)
        self.assertEqual(list(spread), ["m"])
        self.assertEqual(spread["m"]["seeds"], [0, 1000, 2000])
        group = spread["m"]["groups"]["3->1"]
        self.assertAlmostEqual(group["psnr"]["mean"], 27.0)
        self.assertAlmostEqual(group["psnr"]["std"], 1.0)
        self.assertAlmostEqual(group["ssim"]["mean"], 0.72)
        self.assertAlmostEqual(group["ssim"]["std"], 0.02)
        self.assertNotIn("ssim3d_tumour", group)  # not measured
        lines = importlib.import_module("quality_report").seed_spread_lines(spread)
        self.assertIn("| m | 0, 1000, 2000 | 3->1 | 27.00 +- 1.00 | 72.00 +- 2.00 | - |", lines)
        self.assertEqual(importlib.import_module("quality_report").seed_spread_lines({}), [])

    def test_stage0_multiplier(self):
        models = _quality_models()
        self.assertEqual(
            models.scaled_budget(models.BUDGET, 2.0, 4.0)["epochs"],
            {"autoencoder": 240, "structure": 40, "diffusion": 600},
        )

    @parameterized.expand([("unknown@2x",), ("msgldm@0x",), ("msgldm@-1x",), ("msgldm@twox",), ("msgldm@2",)])
    def test_bad_names(self, name):
        with self.assertRaisesRegex(ValueError, "unknown benchmark model"):
            _quality_models().parse_model(name)

    def test_paper_model_and_hybrid(self):
        """``msgldm`` and its ablations stay the paper's F_s-only model whatever the bundle default is."""
        models = _quality_models().MODELS
        for name, (kind, overrides) in models.items():
            if kind == "msgldm":
                self.assertEqual(overrides["hybrid_condition"], name.startswith("msgldm_hybrid"), name)

    def test_two_step_and_wide_models(self):
        """``*_2step`` train stage 2 at the 2-step DDIM sampler's timesteps; ``msgldm_hybrid_wide`` doubles the UNet;
        ``*_imgloss`` add the image-space loss; all reuse msgldm's stages 0 and 1 (MSG-LDM) and are resolved by the bundle config itself."""
        from monai.bundle import ConfigParser

        models = _quality_models()
        for name, key, expected in (
            ("msgldm_hybrid_2step", "train#inferer", [499, 999]),
            ("plain_ldm_2step", "train#inferer", [499, 999]),
            ("msgldm_hybrid", "train#inferer", None),
            ("msgldm_hybrid_wide", "unet_def", [64, 128, 128]),
            ("msgldm_hybrid", "unet_def", [32, 64, 64]),  # the benchmark's UNet, not the demo's (64/128/128)
            ("plain_ldm", "unet_def", [32, 64, 64]),
            ("msgldm_hybrid_imgloss", "train#trainer", 1.0),
            ("plain_ldm_imgloss", "train#trainer", 1.0),
            ("plain_ldm", "train#trainer", 0.0),
        ):
            parser = ConfigParser()
            parser.read_config(models.model_configs(name) + [str(models.CONFIGS / "train_diffusion.json")])
            parser.update({"bundle_root": str(models.BUNDLE), **models.model_overrides(name)})
            value = parser.get_parsed_content(key)
            if key == "unet_def":
                self.assertEqual(list(value.block_out_channels), expected, name)
            elif key == "train#trainer":
                self.assertEqual(value.image_loss_weight, expected, name)
            else:
                got = value.train_timesteps
                self.assertEqual(None if got is None else got.tolist(), expected, name)
        for name in ("msgldm_hybrid_2step", "msgldm_hybrid_wide", "msgldm_hybrid_imgloss", "msgldm_hybrid_wide_pixels"):
            self.assertIn(name, models.STAGE2_ONLY)
        # *_pixels: the given images on the demo's 16 x 16 latent grid, 4 contrasts x 4 x 4 pixels more channels
        channels = {}
        for name in ("msgldm_hybrid_wide", "msgldm_hybrid_wide_pixels", "plain_ldm_wide", "plain_ldm_wide_pixels"):
            parser = ConfigParser()
            parser.read_config(models.model_configs(name))
            parser.update({"bundle_root": str(models.BUNDLE), **models.model_overrides(name)})
            net = parser.get_parsed_content("network_def")
            self.assertEqual(net.pixel_condition, name.endswith("_pixels"), name)
            channels[name] = net.condition_channels
        self.assertEqual(channels["msgldm_hybrid_wide_pixels"] - channels["msgldm_hybrid_wide"], 64)
        self.assertEqual(channels["plain_ldm_wide_pixels"] - channels["plain_ldm_wide"], 64)

    def test_rectified_flow_models(self):
        """The ``*_rflow`` models train and sample with ``rflow.json`` last: MONAI's RFlowScheduler; the others
        with the demo's DDIM."""
        from monai.networks.schedulers import DDIMScheduler, RFlowScheduler

        models = _quality_models()
        for name, scheduler in (
            ("msgldm_hybrid_rflow", RFlowScheduler),
            ("plain_ldm_rflow", RFlowScheduler),
            ("plain_ldm", DDIMScheduler),
            ("msgldm_hybrid", DDIMScheduler),
        ):
            files = models.model_configs(name)
            self.assertEqual(os.path.basename(files[-1]) == "rflow.json", name.endswith("_rflow"), name)
            sampler = models.model_sampler(name, 3)
            self.assertIsInstance(sampler.scheduler, scheduler, name)
            self.assertEqual(sampler.num_inference_steps, 3)
        self.assertIn("msgldm_hybrid_rflow", models.STAGE2_ONLY)
        self.assertEqual(
            [os.path.basename(f) for f in models.model_configs("plain_ldm_rflow@2x")][-3:],
            ["train_diffusion.json", "baseline_ldm.json", "rflow.json"],
        )

    def test_rflow_checks(self):
        """The fewest rectified-flow steps within 0.3 dB of DDIM at 20 steps."""
        _load("quality")
        scoring = importlib.import_module("quality_scoring")
        curve = {
            "plain_ldm": {"20": {"psnr": 25.0}},
            "plain_ldm_rflow": {"1": {"psnr": 24.0}, "2": {"psnr": 24.8}, "4": {"psnr": 25.1}, "20": {"psnr": 25.2}},
            "msgldm_hybrid": {"20": {"psnr": 26.0}},
            "msgldm_hybrid_rflow": {"1": {"psnr": 24.0}, "20": {"psnr": 25.6}},
        }
        checks = scoring.rflow_checks(curve)
        self.assertEqual([c["met"] for c in checks], [False, True])
        self.assertIn("fewest steps within: 2", checks[1]["figures"])
        self.assertIn("none within", checks[0]["figures"])
        self.assertEqual(scoring.rflow_checks({"plain_ldm_rflow": curve["plain_ldm_rflow"]}), [])


class TestRunAll(unittest.TestCase):
    def test_runs_quality_then_speed_and_joins_the_reports(self):
        run_all = _load("run_all")
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        calls = []

        def fake(name):
            def main(argv):
                calls.append((name, list(argv)))
                folder = argv[argv.index("--output-dir") + 1]
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"{name}.md"), "w") as f:
                    f.write(f"# {name} report\n")
                return 0

            return main

        originals = run_all.quality.main, run_all.speed.main
        self.addCleanup(
            lambda: (setattr(run_all.quality, "main", originals[0]), setattr(run_all.speed, "main", originals[1]))
        )
        run_all.quality.main, run_all.speed.main = fake("quality"), fake("speed")
        self.assertEqual(run_all.main(["--output-dir", out]), 0)
        self.assertEqual([c[0] for c in calls], ["quality", "speed"])
        self.assertIn(os.path.join(out, "quality", "models"), calls[0][1])
        with open(os.path.join(out, "summary.md")) as f:
            self.assertEqual(f.read(), "# quality report\n\n# speed report\n\n")
        calls.clear()
        run_all.main(["--output-dir", out, "--skip", "quality"])
        self.assertEqual([c[0] for c in calls], ["speed"])


if __name__ == "__main__":
    unittest.main()


def _probe_case(seed: int, flair: str) -> dict:
    """A 16 x 16 x 4 case: a brain disc with smooth random T1 / T1CE / T2 and a FLAIR that is either a per-voxel
    function of them (``"pointwise"``) or independent of them (``"independent"``); -1 outside the disc."""
    import torch

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disc = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 49)[..., None].expand(16, 16, 4)
    given = torch.nn.functional.avg_pool3d(torch.rand(3, 16, 16, 4, generator=g)[None], 3, 1, 1)[0] * 1.6 - 0.8
    if flair == "pointwise":
        target = 0.5 * given[0] - 0.6 * given[1] * given[2] + 0.1
    else:
        target = torch.rand(16, 16, 4, generator=g) * 1.6 - 0.8
    image = torch.where(disc, torch.cat([given, target[None]]), torch.tensor(-1.0))
    return {"image": image[None], "subject": [f"Phantom_{seed:03d}"]}


class TestPointwiseProbes(unittest.TestCase):
    def test_fit_recovers_a_known_function(self):
        import torch

        pointwise = _load("quality_pointwise")
        x = torch.rand(20000, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
        y = (0.6 * x[:, 0] - 0.4 * x[:, 1] ** 2 + 0.2)[:, None]
        model = pointwise.fit_pointwise(x, y, steps=600)
        with torch.no_grad():
            self.assertLess(float(torch.nn.functional.mse_loss(model(x), y)), 1e-3)
            # applied at every position of a feature map, it is the same function
            grid = x[:16].T.reshape(1, 2, 4, 4)
            self.assertTrue(torch.allclose(model(grid).reshape(1, 16).T, model(x[:16]), atol=1e-6))
        with self.assertRaisesRegex(ValueError, "fit_pointwise expects inputs"):
            pointwise.fit_pointwise(x, y[:10])

    @parameterized.expand([("pointwise", 35.0, None), ("independent", None, 20.0)])
    def test_image_probe_measures_how_pointwise_the_target_is(self, flair, above, below):
        import torch
        from monai.networks.nets import AutoencoderKL

        from monai_msgldm.networks.nets import ModalityWiseAutoencoder

        pointwise = _load("quality_pointwise")
        torch.manual_seed(0)
        autoencoder = AutoencoderKL(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=(4, 4),
            latent_channels=2,
            num_res_blocks=1,
            norm_num_groups=2,
            attention_levels=(False, False),
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )
        net = type("Net", (), {})()
        net.autoencoder = ModalityWiseAutoencoder(autoencoder, num_modalities=4).eval()
        net.scale_factor = torch.tensor(0.5)
        rows = pointwise.probe_rows(
            net, [_probe_case(1, flair), _probe_case(2, flair)], [_probe_case(3, flair)], groups=["3->1"], steps=400
        )
        self.assertEqual(len(rows), 4 * len(pointwise.PROBES))  # 4 targets of 3->1, one case
        self.assertEqual({r["model"] for r in rows}, set(pointwise.PROBES))
        flair_image = [r for r in rows if r["model"] == "pointwise_image" and r["target"] == "flair"]
        self.assertEqual(flair_image[0]["given"], ["t1", "t1ce", "t2"])
        if above is not None:
            self.assertGreater(flair_image[0]["psnr"], above)
        if below is not None:
            self.assertLess(flair_image[0]["psnr"], below)
        self.assertIn("| pointwise_latent |", pointwise.render(rows))
