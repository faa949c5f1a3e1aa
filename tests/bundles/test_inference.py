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
from unittest import mock

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from parameterized import parameterized
from PIL import Image

from monai_msgldm.constants import MODALITIES
from monai_msgldm.data.phantom import generate_phantom_dataset
from monai_msgldm.data.validation import InvalidCaseError
from monai_msgldm.inferers import (
    ModalitySynthesisInferer,
    OnnxRuntimeForward,
    calibration_slices,
    case_io,
    inputs,
    model_loading,
    naming,
    outputs,
)
from monai_msgldm.inferers.inputs import check_case_files, synthesis_datalist
from monai_msgldm.inferers.naming import case_name_from_files
from monai_msgldm.inferers.outputs import SaveSynthesizedModalitiesd
from monai_msgldm.utils import cpu_has_amx

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"
CONFIG = BUNDLE_DIR / "configs" / "inference.json"
TRAIN_CONFIG = BUNDLE_DIR / "configs" / "train.json"
META = BUNDLE_DIR / "configs" / "metadata.json"
LOGGING = BUNDLE_DIR / "configs" / "logging.conf"

# tiny networks (as in test_train_diffusion.py), 64 px slices, one DDIM step
TINY = {
    "autoencoder_def#channels": [8, 8, 8, 8],
    "autoencoder_def#norm_num_groups": 4,
    "structure_def#structure_channels": [8, 8, 8, 8],
    "structure_def#style_channels": [4, 4, 4, 4, 4],
    "structure_def#mlp_hidden": 16,
    "unet_def#channels": [8, 8, 8],
    "unet_def#norm_num_groups": 4,
    "unet_def#num_head_channels": 8,
    "spatial_size": 64,
    "pixdim": [4.0, 4.0, 4.0],  # the working grid of the 4 mm phantom below
    "ddim_steps": 1,
    "slice_batch_size": 64,
}


def setUpModule() -> None:
    global _TMP, _CASE, _MODEL
    _TMP = tempfile.mkdtemp()
    _CASE = generate_phantom_dataset(os.path.join(_TMP, "data"), num_subjects=1, resolution=4.0, progress=False)[0]
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update(TINY)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    os.makedirs(os.path.join(_TMP, "bundle", "models"))
    _MODEL = os.path.join(_TMP, "bundle", "models", "model.pt")
    torch.save(network.state_dict(), _MODEL)


def tearDownModule() -> None:
    shutil.rmtree(_TMP, ignore_errors=True)


def _file(modality: str) -> str:
    return os.path.join(_CASE, f"Phantom_000_{modality}.nii.gz")


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def _all_files(folder: str) -> list[str]:
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs)


class TestInferenceWorkflow(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.out, True)

    def _run(self, overlays: tuple[str, ...] = (), **overrides) -> ConfigWorkflow:
        wf = ConfigWorkflow(
            config_file=[str(CONFIG), *(str(CONFIG.parent / f) for f in overlays)],
            meta_file=str(META),
            logging_file=str(LOGGING),
            workflow_type="infer",
            bundle_root=os.path.join(_TMP, "bundle"),
            output_dir=self.out,
            **{**TINY, **overrides},
        )
        wf.initialize()
        self.assertEqual(wf.check_properties(), [])
        wf.run()
        wf.finalize()
        return wf

    def _check_case(self, case: str, given: list[str]) -> None:
        missing = [m for m in MODALITIES if m not in given]
        case_dir = os.path.join(self.out, case)
        expected = [f"{case}_{m}_synth.nii.gz" for m in missing] + [f"{case}_preview.png"]
        self.assertEqual(sorted(os.listdir(case_dir)), sorted(expected))
        ref = nib.load(_file(given[0]))
        inputs = {m: nib.load(_file(m)).get_fdata() for m in MODALITIES}
        for m in missing:
            img = nib.load(os.path.join(case_dir, f"{case}_{m}_synth.nii.gz"))
            self.assertEqual(img.shape, ref.shape)
            np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
            self.assertEqual(img.get_data_dtype(), np.float32)
            data = img.get_fdata()
            self.assertTrue(np.isfinite(data).all())
            self.assertGreaterEqual(data.min(), -1.0)
            self.assertLessEqual(data.max(), 1.0)
            self.assertGreater(data.std(), 0.01)
            # outside the foreground crop the restored volume is background (-1), not the zero padding of Invertd
            self.assertEqual(data[0, 0, 0], -1.0)
            for x in inputs.values():  # not a copy of any input, raw or scaled to [-1, 1]
                scaled = (x - x.min()) / (x.max() - x.min()) * 2 - 1
                self.assertGreater(np.abs(data - scaled).max(), 0.1)
                self.assertFalse(np.allclose(data, x))
        with Image.open(os.path.join(case_dir, f"{case}_preview.png")) as png:
            self.assertEqual(png.format, "PNG")
            self.assertEqual(png.width % len(MODALITIES), 0)
            self.assertGreater(png.height, png.width // len(MODALITIES) * 3)
            pixels = np.asarray(png)
        self.assertGreater(pixels.std(), 10)

    @parameterized.expand([(["t1", "t2"],), (["flair"],)])
    def test_single_case(self, given):
        wf = self._run(**{m: _file(m) for m in given})
        inferer = wf.parser.get_parsed_content("inferer")
        self.assertIsInstance(inferer, ModalitySynthesisInferer)
        self.assertEqual((inferer.sampler.num_inference_steps, inferer.slice_batch_size), (1, 64))
        self.assertEqual(wf.evaluator.state.iteration, 1)
        self._check_case("Phantom_000", given)

    def test_posterior_mean_and_std_map(self):
        """``num_samples=2``: each missing contrast is the mean of two samples, written with its std map. Sample 0 is
        the plain (seeded) synthesis, so with two samples ``std = sqrt(2) |sample 0 - mean|`` before the inversion;
        the inverse resampling is linear and the clipping 1-Lipschitz, so on the file grid
        ``std >= sqrt(2) |plain - mean|`` with equality where no interpolation mixes voxels."""
        given = {m: _file(m) for m in ("t1", "t2")}
        self._run(**given)
        case_dir = os.path.join(self.out, "Phantom_000")
        plain = {
            m: nib.load(os.path.join(case_dir, f"Phantom_000_{m}_synth.nii.gz")).get_fdata() for m in ("t1ce", "flair")
        }
        shutil.rmtree(case_dir)
        wf = self._run(**given, num_samples=2)
        inferer = wf.parser.get_parsed_content("inferer")
        self.assertEqual((inferer.num_samples, inferer.return_std), (2, True))
        names = sorted(os.listdir(case_dir))
        self.assertEqual(
            names,
            sorted(
                [f"Phantom_000_{m}_synth{s}.nii.gz" for m in ("t1ce", "flair") for s in ("", "_std")]
                + ["Phantom_000_preview.png"]
            ),
        )
        ref = nib.load(_file("t1"))
        for m in ("t1ce", "flair"):
            mean = nib.load(os.path.join(case_dir, f"Phantom_000_{m}_synth.nii.gz")).get_fdata()
            std_img = nib.load(os.path.join(case_dir, f"Phantom_000_{m}_synth_std.nii.gz"))
            np.testing.assert_allclose(std_img.affine, ref.affine, atol=1e-5)
            std = std_img.get_fdata()
            self.assertTrue(np.isfinite(std).all() and std.min() >= 0.0)
            self.assertGreater(std.max(), 1e-3)
            self.assertEqual(std[0, 0, 0], 0.0)  # outside the synthesized field of view: no spread
            bound = np.sqrt(2.0) * np.abs(plain[m] - mean)
            self.assertTrue(np.all(std >= bound - 1e-4), float((bound - std).max()))
            self.assertFalse(np.allclose(mean, plain[m]))
        with Image.open(os.path.join(case_dir, "Phantom_000_preview.png")) as png:  # 4 contrasts + 2 std columns
            self.assertEqual(png.width % 6, 0)
            self.assertEqual(png.width // 6 * 4 % len(MODALITIES), 0)

    def test_sampling_switches_reach_the_sampler_and_network(self):
        parser = ConfigParser()
        parser.read_config(str(CONFIG))
        parser.update({**TINY, "known_contrast_guidance": True, "hybrid_condition": True})
        self.assertTrue(parser.get_parsed_content("sampler").known_contrast_guidance)
        network = parser.get_parsed_content("network_def")
        self.assertTrue(network.hybrid_condition)
        self.assertEqual(network.condition_channels, 8 + 4 * 4 + 4)
        self.assertFalse(parser.get_parsed_content("inferer").return_std)
        # pixel_condition: the given images on the factor-8 latent grid, 4 contrasts x 8 x 8 channels more
        parser = ConfigParser()
        parser.read_config(str(CONFIG))
        parser.update({**TINY, "pixel_condition": True})
        network = parser.get_parsed_content("network_def")
        self.assertTrue(network.pixel_condition)
        self.assertEqual(network.condition_channels, 8 + 4 * 4 + 4 + 4 * 64)

    def test_onnx_runtime_encoder(self):
        """``onnx_runtime``: the checkpoint loads into the network with the ONNX Runtime encoder (exported once,
        after the weights are in) and the written synthesis equals the PyTorch one."""
        given = {m: _file(m) for m in ("t1", "t2")}
        wf = self._run(onnx_runtime=True, **given)
        runtime = wf.parser.get_parsed_content("network").autoencoder.model.encoder.__dict__["forward"]
        self.assertIsInstance(runtime, OnnxRuntimeForward)
        self.assertEqual(runtime.exports, 1)
        with_runtime = {
            m: nib.load(os.path.join(self.out, "Phantom_000", f"Phantom_000_{m}_synth.nii.gz"))
            for m in ("t1ce", "flair")
        }
        with_runtime = {m: img.get_fdata() for m, img in with_runtime.items()}
        self._run(onnx_runtime=False, cpu_amp=False, **given)  # float32 in PyTorch, whatever the CPU
        for m, data in with_runtime.items():
            plain = nib.load(os.path.join(self.out, "Phantom_000", f"Phantom_000_{m}_synth.nii.gz")).get_fdata()
            np.testing.assert_allclose(data, plain, atol=1e-4)
        parser = ConfigParser()
        parser.read_config(str(CONFIG))
        parser.update(TINY)
        self.assertNotIn("forward", parser.get_parsed_content("network").autoencoder.model.encoder.__dict__)

    def test_onnx_int8_overlay(self):
        """``onnx_int8.json``: the checkpoint loads; the encoder, the decoder and the given contrasts' structure
        encoders run 8-bit convolutions calibrated on the run's first case (one export each); the written synthesis
        stays close to the float32 one."""
        given = {m: _file(m) for m in ("t1", "t2")}
        self._run(cpu_amp=False, **given)  # the float32 synthesis, whatever the CPU
        plain = {
            m: nib.load(os.path.join(self.out, "Phantom_000", f"Phantom_000_{m}_synth.nii.gz")).get_fdata()
            for m in ("t1ce", "flair")
        }
        wf = self._run(("onnx_int8.json",), **given)
        net = wf.parser.get_parsed_content("network")
        ae = net.autoencoder.model
        structure = net.structure_net.structure_encoders
        wrapped = [ae.encoder, ae.decoder, structure[MODALITIES.index("t1")], structure[MODALITIES.index("t2")]]
        for module in wrapped:
            runtime = module.__dict__["forward"]
            self.assertIsInstance(runtime, OnnxRuntimeForward)
            self.assertIsNotNone(runtime.int8_calibration)
            self.assertEqual(runtime.exports, 1)
        for m in ("t1ce", "flair"):  # absent contrasts: their structure encoders stay in PyTorch
            self.assertNotIn("forward", structure[MODALITIES.index(m)].__dict__)
        # calibrated on 4 slices with content of the run's preprocessed case, its 2 given contrasts
        case = wf.parser.get_parsed_content("dataset")[0]
        slices = calibration_slices(case["image"], case["available"], 4)
        given = [MODALITIES.index("t1"), MODALITIES.index("t2")]
        expected = slices[:, given].reshape(8, 1, *slices.shape[2:])
        torch.testing.assert_close(ae.encoder.__dict__["forward"].int8_calibration, expected)
        for m, reference in plain.items():
            data = nib.load(os.path.join(self.out, "Phantom_000", f"Phantom_000_{m}_synth.nii.gz")).get_fdata()
            self.assertEqual(data.shape, reference.shape)
            self.assertFalse(np.array_equal(data, reference), m)  # quantized, not the float32 graph
            # random 8-channel weights amplify the rounding (correlation about 0.65 here); trained models lose
            # 0.03-0.08 dB (docs/benchmarks.md). A broken graph or calibration would not correlate.
            self.assertGreater(np.corrcoef(data.ravel(), reference.ravel())[0, 1], 0.4, m)

    def test_cpu_amp(self):
        """``cpu_amp``: the whole synthesis in bfloat16 autocast with ``channels_last`` (the default on a CPU with
        AMX); the written synthesis stays within bfloat16 rounding of the float32 one and differs from it."""
        given = {m: _file(m) for m in ("t1", "t2")}
        written = {}
        for cpu_amp in (False, True):
            wf = self._run(cpu_amp=cpu_amp, **given)
            inferer = wf.parser.get_parsed_content("inferer")
            self.assertEqual((inferer.sampler.cpu_amp, inferer.channels_last), (cpu_amp, cpu_amp))
            written[cpu_amp] = {
                m: nib.load(os.path.join(self.out, "Phantom_000", f"Phantom_000_{m}_synth.nii.gz")).get_fdata()
                for m in ("t1ce", "flair")
            }
        for m, reference in written[False].items():
            data = written[True][m]
            self.assertFalse(np.array_equal(data, reference), m)
            self.assertLess(np.abs(data - reference).max(), 0.1, m)
            self.assertGreater(np.corrcoef(data.ravel(), reference.ravel())[0, 1], 0.999, m)

    def test_datalist(self):
        datalist = os.path.join(self.out, "list", "datalist.json")
        os.makedirs(os.path.dirname(datalist))
        items = [{"t1": _file("t1"), "seg": _file("seg"), "case": "caseA"}, {"t2": _file("t2"), "case": "caseB"}]
        with open(datalist, "w") as f:
            json.dump({"testing": items}, f)
        self._run(datalist=datalist)
        self._check_case("caseA", ["t1"])
        self._check_case("caseB", ["t2"])

    def test_missing_model(self):
        with self.assertRaises(Exception) as cm:
            self._run(t1=_file("t1"), model_path=os.path.join(self.out, "nowhere.pt"))
        errors = [e for e in _cause_chain(cm.exception) if isinstance(e, FileNotFoundError)]
        self.assertTrue(errors, repr(cm.exception))
        self.assertIn(os.path.join(self.out, "nowhere.pt"), str(errors[0]))
        self.assertIn("--model_path", str(errors[0]))
        self.assertEqual(_all_files(self.out), [])

    def _bad_inputs(self) -> dict:
        bad = os.path.join(_TMP, "bad")
        if not os.path.isdir(bad):
            os.makedirs(bad)
            ref = nib.load(_file("t2"))
            data = ref.get_fdata().astype(np.float32)
            nib.save(nib.Nifti1Image(data[:-1], ref.affine), os.path.join(bad, "shape.nii.gz"))
            nib.save(nib.Nifti1Image(data, ref.affine @ np.diag([2.0, 1, 1, 1])), os.path.join(bad, "affine.nii.gz"))
            nan = data.copy()
            nan[3, 4, 5] = np.nan
            nib.save(nib.Nifti1Image(nan, ref.affine), os.path.join(bad, "nan.nii.gz"))
            with open(os.path.join(bad, "garbage.nii.gz"), "wb") as f:
                f.write(b"not a nifti file at all")
        return {"dir": bad}

    @parameterized.expand(
        [
            (
                "missing_file",
                {"t2": "missing_t2.nii.gz"},
                FileNotFoundError,
                ["t2 file not found", "missing_t2.nii.gz"],
            ),
            ("unreadable", {"t2": "garbage.nii.gz"}, ValueError, ["t2 file", "garbage.nii.gz", "not a readable NIfTI"]),
            ("none_available", {}, ValueError, ["no available modality", "--t1"]),
            # case_files: the files by contrast name (what --t1 ... --flair fill), here with a name the model lacks
            ("unknown_modality", {"case_files": {"t1": "t1", "pd": "t1"}}, ValueError, ["'pd'", "unknown modality"]),
            # without align, contrasts on different grids are an error from the headers
            (
                "shape",
                {"t2": "shape.nii.gz", "align": False},
                ValueError,
                ["spatial shapes differ", "shape.nii.gz' has (48, 58, 47)"],
            ),
            ("affine", {"t2": "affine.nii.gz", "align": False}, ValueError, ["affines differ", "affine.nii.gz"]),
            # with it (the default), a T2 whose grid puts it 56 mm away fails the registration's bounds
            (
                "affine_aligned",
                {"t2": "affine.nii.gz"},
                ValueError,
                ["could not register 't2'", "affine.nii.gz", "max_translation_mm"],
            ),
            # found by the preprocessing when it loads the voxels (CheckImageValuesd), before anything is written
            ("nan", {"t2": "nan.nii.gz"}, ValueError, ["t2 file", "nan.nii.gz", "non-finite voxels (1 NaN, 0 Inf)"]),
            ("bad_case_name", {"case_name": "../x"}, ValueError, ["case name", "'../x'"]),
        ]
    )
    def test_bad_input(self, _, overrides, error, needles):
        bad = self._bad_inputs()["dir"]
        resolved = {}
        for k, v in overrides.items():
            if v == "t1":
                resolved[k] = _file("t1")
            elif isinstance(v, dict):
                resolved[k] = {m: _file("t1") for m in v}
            elif k in MODALITIES:
                resolved[k] = os.path.join(bad, v)
            else:
                resolved[k] = v
        if _ != "none_available":
            resolved.setdefault("t1", _file("t1"))
        with self.assertRaises(Exception) as cm:
            self._run(**resolved)
        errors = [e for e in _cause_chain(cm.exception) if isinstance(e, error)]
        self.assertTrue(errors, repr(cm.exception))
        if _ not in ("none_available", "unknown_modality", "bad_case_name", "affine_aligned"):  # file-level checks
            self.assertIsInstance(errors[0], InvalidCaseError)
        for needle in needles:
            self.assertIn(needle, str(errors[0]))
        self.assertEqual(_all_files(self.out), [])

    def test_default_config(self):
        parser = ConfigParser()
        parser.read_config(str(CONFIG))
        train = ConfigParser()
        train.read_config(str(TRAIN_CONFIG))
        # inference.json is self-contained (MONAI Label reads it alone): its copies of the network, scheduler and
        # preprocessing settings must stay those of train.json, the base the model trains with
        for key in (
            "autoencoder_def",
            "structure_def",
            "unet_def",
            "network_def",
            "hybrid_condition",
            "pixel_condition",
            "pixel_condition_channels",
            "sampling_scheduler",
            "spatial_size",
        ):
            self.assertEqual(parser.get(key), train.get(key), key)
        # the prediction type is the model's record (models/model.sampling.json, which train.json writes with its
        # own prediction_type); a model without one was trained before 0.10.0, when epsilon was the default
        self.assertEqual(train.get("prediction_type"), "v_prediction")
        self.assertEqual(
            parser.get("prediction_type"),
            "$monai_msgldm.inferers.recorded_prediction_type(@model_path, default='epsilon')",
        )
        self.assertEqual(parser.get_parsed_content("prediction_type"), "epsilon")  # ./models/model.pt, no record
        # DDIM steps follow the figures of the v-prediction models (docs/model.md); epsilon keeps 20
        self.assertEqual(parser.get_parsed_content("ddim_steps"), 20)
        # 16 slices per batch through the denoiser (benchmarks/speed.py)
        self.assertEqual(parser.get_parsed_content("slice_batch_size"), 16)
        self.assertEqual(parser.get_parsed_content("model_path"), os.path.join(".", "models", "model.pt"))
        self.assertEqual([parser.get(m) for m in MODALITIES], [None] * 4)
        inferer = parser.get_parsed_content("inferer")
        self.assertEqual((inferer.sampler.num_inference_steps, inferer.slice_batch_size), (20, 16))
        # on the CPU one slice at a time (benchmarks/speed.py: faster and less memory there); all at once on CUDA
        self.assertEqual(
            inferer.sampler.image_batch_size, 1 if parser.get_parsed_content("device").type == "cpu" else None
        )
        # bfloat16 with channels_last where it is fast (a CPU with AMX: 3x, docs/benchmarks.md); never over the ONNX
        # Runtime parts, which autocast would bypass
        self.assertEqual(parser.get_parsed_content("cpu_amp"), cpu_has_amx())
        self.assertEqual(inferer.sampler.cpu_amp, cpu_has_amx())
        self.assertEqual(inferer.channels_last, cpu_has_amx() and parser.get_parsed_content("device").type == "cpu")
        for overlays, overrides in (((), {"onnx_runtime": True}), (("onnx_int8.json",), {})):
            other = ConfigParser()
            other.read_config([str(CONFIG), *(str(CONFIG.parent / f) for f in overlays)])
            other.update(overrides)
            self.assertFalse(other.get_parsed_content("cpu_amp"), overlays or overrides)
        v_parser = ConfigParser()
        v_parser.read_config(str(CONFIG))
        v_parser["prediction_type"] = "v_prediction"
        self.assertEqual(v_parser.get_parsed_content("ddim_steps"), 2)


class TestCaseIO(unittest.TestCase):
    @parameterized.expand(
        [
            ({"t1": "/d/BraTS20_001/BraTS20_001_t1.nii.gz", "t2": "/e/BraTS20_001_t2.nii"}, "BraTS20_001"),
            (
                {"t1": "/d/B-00000-000/B-00000-000-t1n.nii.gz", "flair": "/d/B-00000-000/B-00000-000-t2f.nii.gz"},
                "B-00000-000",
            ),
            ({"t1": "/d/subj7/a.nii.gz", "t2": "/d/subj7/b.nii.gz"}, "subj7"),
            ({"t1": "/d/x/a.nii.gz", "t2": "/e/y/b.nii.gz"}, "a"),
        ]
    )
    def test_case_name(self, files, expected):
        self.assertEqual(case_name_from_files(files), expected)

    def test_case_io_reexports(self):  # bundles written for earlier versions reference case_io
        for module in (inputs, model_loading, naming, outputs):
            for name in module.__all__:
                if name in case_io.__all__:
                    self.assertIs(getattr(case_io, name), getattr(module, name), name)
        self.assertEqual(
            sorted(case_io.__all__),
            [
                "SaveSynthesizedModalitiesd",
                "case_name_from_files",
                "check_case_files",
                "load_model_weights",
                "synthesis_datalist",
            ],
        )

    def test_check_case_files(self):
        item = check_case_files({"t1": _file("t1"), "t1ce": None, "t2": "", "flair": _file("flair"), "seg": "x"})
        self.assertEqual(item, {"t1": _file("t1"), "flair": _file("flair"), "case": "Phantom_000"})
        # voxels: read when asked (MONAI Label's pre-run check); synthesis_datalist leaves it to the preprocessing
        with tempfile.TemporaryDirectory() as tmp:
            ref = nib.load(_file("t2"))
            data = ref.get_fdata().astype(np.float32)
            data[1, 2, 3] = np.nan
            nan = os.path.join(tmp, "Phantom_000_t2.nii.gz")
            nib.save(nib.Nifti1Image(data, ref.affine), nan)
            with self.assertRaisesRegex(InvalidCaseError, r"case 'c': t2 file '.*' has non-finite voxels \(1 NaN"):
                check_case_files({"t1": _file("t1"), "t2": nan}, case_name="c")
            self.assertEqual(check_case_files({"t2": nan}, check_content=False)["case"], "Phantom_000")
            self.assertEqual(synthesis_datalist({"t2": nan}), [{"t2": nan, "case": "Phantom_000"}])
        with self.assertRaisesRegex(ValueError, "either a case"):
            synthesis_datalist({"t1": _file("t1")}, datalist=_file("t1"))
        with self.assertRaisesRegex(FileNotFoundError, "nothing.json"):
            synthesis_datalist(None, datalist="nothing.json")

    def test_duplicate_case_names(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "list.json")
        with open(path, "w") as f:
            json.dump({"testing": [{"t1": _file("t1")}, {"t2": _file("t2")}]}, f)
        with self.assertRaisesRegex(ValueError, r"several cases named \['Phantom_000'\]"):
            synthesis_datalist(datalist=path)

    def test_saver_is_atomic(self):
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        from monai.data import MetaTensor

        ref = nib.load(_file("t1"))
        meta = {f"{m}_filename_or_obj": (_file(m) if m == "t1" else "") for m in MODALITIES}
        pred = MetaTensor(torch.rand(4, *ref.shape) * 4 - 2, meta=meta)
        saver = SaveSynthesizedModalitiesd("pred", output_dir=out)
        with mock.patch.object(Image.Image, "save", side_effect=OSError("disk full")):
            with self.assertRaisesRegex(OSError, "disk full"):
                saver({"pred": pred, "case": "c"})
        self.assertEqual(_all_files(out), [])
        result = saver({"pred": pred, "case": "c"})
        self.assertEqual(len(result["pred_files"]), 4)
        self.assertEqual(
            sorted(os.listdir(os.path.join(out, "c"))), sorted(os.path.basename(p) for p in result["pred_files"])
        )
        t2 = nib.load(os.path.join(out, "c", "c_t2_synth.nii.gz")).get_fdata()
        np.testing.assert_allclose(t2, np.clip(pred[2].numpy(), -1, 1), atol=1e-6)
        with self.assertRaisesRegex(ValueError, "shape"):
            saver({"pred": MetaTensor(torch.zeros(4, 8, 8, 8), meta=meta), "case": "d"})
        self.assertFalse(os.path.exists(os.path.join(out, "d")))


class TestInferenceCLI(unittest.TestCase):
    def test_run(self):
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", str(META), "--config_file", str(CONFIG)]
        cmd += ["--logging_file", str(LOGGING), "--bundle_root", os.path.join(_TMP, "bundle"), "--output_dir", out]
        cmd += ["--t1ce", _file("t1ce"), "--t2", _file("t2"), "--flair", _file("flair")]
        for key, value in TINY.items():
            cmd += [f"--{key}", json.dumps(value)]
        cmd += ["--onnx_runtime", "true"]  # the encoder in ONNX Runtime here, PyTorch in the in-process run below
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        self.assertEqual(
            sorted(os.listdir(os.path.join(out, "Phantom_000"))),
            ["Phantom_000_preview.png", "Phantom_000_t1_synth.nii.gz"],
        )
        img = nib.load(os.path.join(out, "Phantom_000", "Phantom_000_t1_synth.nii.gz"))
        ref = nib.load(_file("t2"))
        self.assertEqual(img.shape, ref.shape)
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        # the same synthesis as an in-process run on the same served model.pt and seed (PyTorch's encoder)
        wf = ConfigWorkflow(
            config_file=str(CONFIG),
            workflow_type="infer",
            bundle_root=os.path.join(_TMP, "bundle"),
            output_dir=os.path.join(out, "inproc"),
            t1ce=_file("t1ce"),
            t2=_file("t2"),
            flair=_file("flair"),
            cpu_amp=False,  # float32, as the ONNX Runtime encoder turns off bfloat16 in the command
            **TINY,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        inproc = nib.load(os.path.join(out, "inproc", "Phantom_000", "Phantom_000_t1_synth.nii.gz")).get_fdata()
        np.testing.assert_allclose(img.get_fdata(), inproc, atol=1e-3)

    def test_export_int8_then_run(self):
        """``export_int8.json`` through the command line saves the 8-bit graphs of every part beside the checkpoint,
        calibrated on the datalist's cases; ``onnx_int8.json`` then runs them without calibrating on its first case
        (nothing exported, no case read for it); a checkpoint saved since is refused with the graph's name."""
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work, True)
        graphs = os.path.join(work, "int8")
        configs = [str(CONFIG), str(CONFIG.parent / "onnx_int8.json"), str(CONFIG.parent / "export_int8.json")]
        cmd = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--meta_file",
            str(META),
            "--config_file",
            json.dumps(configs),
        ]
        cmd += ["--logging_file", str(LOGGING), "--bundle_root", os.path.join(_TMP, "bundle")]
        cmd += ["--int8_graph_dir", graphs, "--int8_calibration_slices", "2"]
        cmd += [arg for m in MODALITIES for arg in (f"--{m}", _file(m))]
        for key, value in TINY.items():
            cmd += [f"--{key}", json.dumps(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        with open(os.path.join(graphs, "int8_graphs.json")) as f:
            manifest = json.load(f)
        parts = ["encoder", "decoder"] + [f"structure_encoder_{m}" for m in range(len(MODALITIES))]
        self.assertEqual(sorted(manifest["parts"]), sorted(parts))
        self.assertEqual(manifest["calibration"], {"cases": ["Phantom_000"], "slices_per_case": 2})

        overrides = {**TINY, "int8_graph_dir": graphs, "t1": _file("t1"), "t2": _file("t2")}
        wf = ConfigWorkflow(
            config_file=[str(CONFIG), str(CONFIG.parent / "onnx_int8.json")],
            workflow_type="infer",
            bundle_root=os.path.join(_TMP, "bundle"),
            output_dir=os.path.join(work, "out"),
            **overrides,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        self.assertEqual(wf.parser.get_parsed_content("int8_calibration_case"), {})
        net = wf.parser.get_parsed_content("network")
        structure = net.structure_net.structure_encoders
        for name, module in (("encoder", net.autoencoder.model.encoder), ("decoder", net.autoencoder.model.decoder)):
            runtime = module.__dict__["forward"]
            self.assertEqual(runtime.graph_file, os.path.join(graphs, f"{name}.onnx"))
            self.assertEqual((runtime.exports, runtime.loads), (0, 1))
        for m in ("t1", "t2"):
            self.assertEqual(structure[MODALITIES.index(m)].__dict__["forward"].loads, 1)
        for m in ("t1ce", "flair"):  # not given: never called
            self.assertEqual(structure[MODALITIES.index(m)].__dict__["forward"].loads, 0)
            out = nib.load(os.path.join(work, "out", "Phantom_000", f"Phantom_000_{m}_synth.nii.gz")).get_fdata()
            self.assertTrue(np.isfinite(out).all())

        changed = os.path.join(work, "model.pt")
        state = torch.load(_MODEL, weights_only=True)
        state[next(k for k in state if k.startswith("autoencoder.model.encoder."))] += 0.01
        torch.save(state, changed)
        wf = ConfigWorkflow(
            config_file=[str(CONFIG), str(CONFIG.parent / "onnx_int8.json")],
            workflow_type="infer",
            bundle_root=os.path.join(_TMP, "bundle"),
            output_dir=os.path.join(work, "stale"),
            model_path=changed,
            **overrides,
        )
        wf.initialize()
        with self.assertRaises(Exception) as raised:
            wf.run()
        messages = " ".join(str(e) for e in _cause_chain(raised.exception))
        self.assertIn("encoder.onnx was not saved from the weights", messages)
        self.assertFalse(os.path.exists(os.path.join(work, "stale", "Phantom_000")))


if __name__ == "__main__":
    unittest.main()
