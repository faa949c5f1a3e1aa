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
"""The sampling record beside a served model: written from the training scheduler, read back by inference.json,
contradicting schedulers refused."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

from monai.bundle import ConfigParser
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler
from parameterized import parameterized

from monai_msgldm.inferers import (
    check_sampling_record,
    ddim_step_timesteps,
    load_sampling_record,
    recorded_prediction_type,
    sampling_record,
    sampling_record_path,
    save_sampling_record,
)

__all__: list[str] = []

INFERENCE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm" / "configs" / "inference.json"


def _ddpm(prediction_type="epsilon", steps=1000):
    return DDPMScheduler(steps, schedule="scaled_linear_beta", prediction_type=prediction_type)


def _ddim(prediction_type="epsilon", steps=1000):
    return DDIMScheduler(steps, schedule="scaled_linear_beta", prediction_type=prediction_type)


class TestSamplingRecord(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.model = os.path.join(self.tmp, "models", "model.pt")

    @parameterized.expand(
        [
            (
                "ddpm_eps",
                _ddpm(),
                {
                    "scheduler": "ddpm",
                    "prediction_type": "epsilon",
                    "num_train_timesteps": 1000,
                    "train_timesteps": None,
                },
            ),
            (
                "ddpm_v",
                _ddpm("v_prediction", 500),
                {
                    "scheduler": "ddpm",
                    "prediction_type": "v_prediction",
                    "num_train_timesteps": 500,
                    "train_timesteps": None,
                },
            ),
            (
                "ddim_sample",
                _ddim("sample"),
                {
                    "scheduler": "ddpm",
                    "prediction_type": "sample",
                    "num_train_timesteps": 1000,
                    "train_timesteps": None,
                },
            ),
            (
                "rflow",
                RFlowScheduler(1000),
                {
                    "scheduler": "rflow",
                    "prediction_type": "v_prediction",
                    "num_train_timesteps": 1000,
                    "train_timesteps": None,
                },
            ),
        ]
    )
    def test_round_trip(self, _, scheduler, expected):
        self.assertEqual(sampling_record(scheduler), expected)
        self.assertIsNone(load_sampling_record(self.model))
        path = save_sampling_record(self.model, scheduler)
        self.assertEqual(path, os.path.join(self.tmp, "models", "model.sampling.json"))
        self.assertEqual(path, sampling_record_path(self.model))
        with open(path) as f:
            self.assertEqual(json.load(f), expected)
        self.assertEqual(load_sampling_record(self.model), expected)
        self.assertEqual(recorded_prediction_type(self.model), expected["prediction_type"])
        self.assertEqual([f for f in os.listdir(os.path.dirname(path))], ["model.sampling.json"])  # no temp left

    def test_default_without_record(self):
        self.assertEqual(recorded_prediction_type(self.model), "epsilon")
        self.assertEqual(recorded_prediction_type(self.model, default="sample"), "sample")
        self.assertIsNone(check_sampling_record(self.model, _ddim("v_prediction")))  # nothing to check against

    def test_matching_samplers_pass(self):
        save_sampling_record(self.model, _ddpm("v_prediction"))  # DDPM trains, DDIM samples the same model
        self.assertEqual(check_sampling_record(self.model, _ddim("v_prediction"))["prediction_type"], "v_prediction")
        save_sampling_record(self.model, RFlowScheduler(1000))
        self.assertEqual(check_sampling_record(self.model, RFlowScheduler(1000))["scheduler"], "rflow")

    @parameterized.expand(
        [
            ("prediction", _ddpm("v_prediction"), _ddim("epsilon"), "--prediction_type v_prediction"),
            ("steps", _ddpm("epsilon", 1000), _ddim("epsilon", 500), "num_train_timesteps to 1000"),
            ("rflow_model", RFlowScheduler(1000), _ddim("v_prediction"), "add configs/rflow.json"),
            ("ddpm_model", _ddpm("v_prediction"), RFlowScheduler(1000), "remove rflow.json"),
        ]
    )
    def test_contradicting_sampler_refused(self, _, trained, sampler, fix):
        save_sampling_record(self.model, trained)
        with self.assertRaises(ValueError) as ctx:
            check_sampling_record(self.model, sampler)
        self.assertIn(fix, str(ctx.exception))
        self.assertIn(sampling_record_path(self.model), str(ctx.exception))

    @parameterized.expand(
        [
            ("not_json", "{oops", "not readable JSON"),
            ("list", "[1]", "expects"),
            ("family", '{"scheduler": "pndm", "prediction_type": "epsilon", "num_train_timesteps": 10}', "expects"),
            ("type", '{"scheduler": "ddpm", "prediction_type": "eps", "num_train_timesteps": 10}', "expects"),
            ("steps", '{"scheduler": "ddpm", "prediction_type": "epsilon", "num_train_timesteps": true}', "expects"),
            (
                "trained_range",
                '{"scheduler": "ddpm", "prediction_type": "epsilon", "num_train_timesteps": 10, "train_timesteps": [10]}',
                "expects",
            ),
            (
                "trained_empty",
                '{"scheduler": "ddpm", "prediction_type": "epsilon", "num_train_timesteps": 10, "train_timesteps": []}',
                "expects",
            ),
        ]
    )
    def test_malformed_record(self, _, text, message):
        os.makedirs(os.path.dirname(self.model))
        with open(sampling_record_path(self.model), "w") as f:
            f.write(text)
        with self.assertRaisesRegex(ValueError, message):
            load_sampling_record(self.model)
        with self.assertRaisesRegex(ValueError, "model.sampling.json"):
            recorded_prediction_type(self.model)

    def test_restricted_timesteps_recorded_and_checked(self):
        """A model trained only at the 2-step DDIM sampler's timesteps records them; sampling it with 2 (or 1) DDIM
        steps passes, with 20 it is refused naming --ddim_steps 2."""
        trained = ddim_step_timesteps(_ddim("v_prediction"), 2)
        self.assertEqual(trained.tolist(), [999, 499])
        save_sampling_record(self.model, _ddpm("v_prediction"), trained)
        self.assertEqual(load_sampling_record(self.model)["train_timesteps"], [499, 999])
        for steps in (1, 2):  # 1 step calls the network at 999 alone
            check_sampling_record(self.model, _ddim("v_prediction"), steps)
        check_sampling_record(self.model, _ddim("v_prediction"))  # no step count: scheduler checks only
        with self.assertRaisesRegex(ValueError, r"trained only at the timesteps \[499, 999\].*--ddim_steps 2"):
            check_sampling_record(self.model, _ddim("v_prediction"), 20)
        with self.assertRaisesRegex(ValueError, "--ddim_steps 1"):  # 999 alone: only 1 step fits
            save_sampling_record(self.model, _ddpm("v_prediction"), [999, 3])
            check_sampling_record(self.model, _ddim("v_prediction"), 2)
        # a DDPM sampler (no DDIM timesteps): its own set_timesteps, the scheduler left untouched
        ddpm = _ddpm("v_prediction")
        save_sampling_record(self.model, ddpm, range(1000))
        check_sampling_record(self.model, ddpm, 1000)
        self.assertEqual(len(ddpm.timesteps), 1000)
        save_sampling_record(self.model, ddpm, [999])
        with self.assertRaisesRegex(ValueError, "trained only at"):
            check_sampling_record(self.model, ddpm, 10)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "Scheduler"):
            sampling_record(object())

    def test_inference_config_follows_the_record(self):
        """inference.json: a recorded v-prediction model samples with 2 steps, an unrecorded one (trained before
        0.10.0) as epsilon with 20; --prediction_type against the record is refused in initialize."""

        def parsed(overrides=None):
            parser = ConfigParser()
            parser.read_config(str(INFERENCE))
            parser.update({"model_path": self.model, **(overrides or {})})
            return parser

        parser = parsed()
        self.assertEqual(
            (parser.get_parsed_content("prediction_type"), parser.get_parsed_content("ddim_steps")), ("epsilon", 20)
        )
        save_sampling_record(self.model, _ddpm("v_prediction"))
        parser = parsed()
        self.assertEqual(parser.get_parsed_content("prediction_type"), "v_prediction")
        self.assertEqual(parser.get_parsed_content("ddim_steps"), 2)
        self.assertEqual(parser.get_parsed_content("sampling_scheduler").prediction_type, "v_prediction")
        check = parser.get("initialize")[1]
        self.assertIn("check_sampling_record", check)
        parser.get_parsed_content("initialize#1")  # consistent: passes
        with self.assertRaises(RuntimeError) as ctx:  # ConfigParser wraps the ValueError
            parsed({"prediction_type": "epsilon"}).get_parsed_content("initialize#1")
        cause = ctx.exception
        while cause.__cause__ is not None:
            cause = cause.__cause__
        self.assertIsInstance(cause, ValueError)
        self.assertIn("--prediction_type v_prediction", str(cause))
        # a model trained at the 2-step sampler's timesteps: the default 2 steps pass, --ddim_steps 20 is refused
        save_sampling_record(self.model, _ddpm("v_prediction"), [499, 999])
        parsed().get_parsed_content("initialize#1")
        with self.assertRaises(RuntimeError) as ctx:
            parsed({"ddim_steps": 20}).get_parsed_content("initialize#1")
        self.assertIn("--ddim_steps 2", str(ctx.exception.__cause__ or ctx.exception))


if __name__ == "__main__":
    unittest.main()
