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
            ("ddpm_eps", _ddpm(), {"scheduler": "ddpm", "prediction_type": "epsilon", "num_train_timesteps": 1000}),
            (
                "ddpm_v",
                _ddpm("v_prediction", 500),
                {"scheduler": "ddpm", "prediction_type": "v_prediction", "num_train_timesteps": 500},
            ),
            (
                "ddim_sample",
                _ddim("sample"),
                {"scheduler": "ddpm", "prediction_type": "sample", "num_train_timesteps": 1000},
            ),
            (
                "rflow",
                RFlowScheduler(1000),
                {"scheduler": "rflow", "prediction_type": "v_prediction", "num_train_timesteps": 1000},
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


if __name__ == "__main__":
    unittest.main()
