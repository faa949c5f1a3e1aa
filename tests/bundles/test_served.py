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
"""write_served_bundle: overrides baked into the served configs, atomic replacement, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

from monai_msgldm.bundle import write_served_bundle
from monai_msgldm.inferers import load_sampling_record, recorded_prediction_type, sampling_record, save_sampling_record

__all__: list[str] = []

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm"


class TestWriteServedBundle(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.model = os.path.join(self.tmp, "model.pt")
        torch.save({"w": torch.zeros(1)}, self.model)

    def test_overrides_baked_in_and_replaced(self):
        out = os.path.join(self.tmp, "served")
        os.makedirs(out)
        with open(os.path.join(out, "stale.txt"), "w") as f:
            f.write("old")
        overrides = {"unet_def#channels": [8, 8, 8], "spatial_size": 32, "not_an_id": 1}
        self.assertEqual(write_served_bundle(BUNDLE_DIR, out, self.model, overrides), out)
        self.assertFalse(os.path.exists(os.path.join(out, "stale.txt")))
        # evaluate.json is an overlay of inference.json: the merged pair has the values
        for names in (["inference.json"], ["inference.json", "evaluate.json"]):
            parser = ConfigParser()
            parser.read_config([os.path.join(out, "configs", n) for n in names])
            self.assertEqual(parser.get("unet_def#channels"), [8, 8, 8])
            self.assertEqual(parser.get("spatial_size"), 32)
            self.assertNotIn("not_an_id", parser)
        self.assertIn("+imports", ConfigParser.load_config_file(os.path.join(out, "configs", "evaluate.json")))
        with (
            open(os.path.join(out, "configs", "metadata.json")) as f,
            open(BUNDLE_DIR / "configs" / "metadata.json") as g,
        ):
            served, source = json.load(f), json.load(g)
        # copied, with the network data format of the served model (32 px slices)
        fmt = source.pop("network_data_format")
        fmt["inputs"]["image"]["spatial_shape"] = fmt["outputs"]["pred"]["spatial_shape"] = [32, 32]
        self.assertEqual(served.pop("network_data_format"), fmt)
        self.assertEqual(served, source)
        self.assertTrue(torch.equal(torch.load(os.path.join(out, "models", "model.pt"))["w"], torch.zeros(1)))
        self.assertEqual(sorted(os.listdir(self.tmp)), ["model.pt", "served"])  # no temporary folder left

    def test_sampling_record_served(self):
        """The model's record is copied; with ``scheduler`` it is written from it (a model trained before records
        existed gets one), and a scheduler the source record contradicts is refused before anything is written."""
        out = os.path.join(self.tmp, "served")
        write_served_bundle(BUNDLE_DIR, out, self.model, {})
        self.assertEqual(sorted(os.listdir(os.path.join(out, "models"))), ["model.pt"])  # none to copy
        self.assertEqual(recorded_prediction_type(os.path.join(out, "models", "model.pt")), "epsilon")
        v_model = DDPMScheduler(1000, prediction_type="v_prediction")
        write_served_bundle(BUNDLE_DIR, out, self.model, {}, scheduler=v_model)
        served_model = os.path.join(out, "models", "model.pt")
        self.assertEqual(load_sampling_record(served_model), sampling_record(v_model))
        self.assertEqual(recorded_prediction_type(served_model), "v_prediction")
        save_sampling_record(self.model, RFlowScheduler(1000))
        write_served_bundle(BUNDLE_DIR, out, self.model, {})  # copied
        self.assertEqual(load_sampling_record(served_model)["scheduler"], "rflow")
        shutil.rmtree(out)
        with self.assertRaisesRegex(ValueError, "rflow.json"):
            write_served_bundle(BUNDLE_DIR, out, self.model, {}, scheduler=v_model)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["model.pt", "model.sampling.json"])  # nothing written

    def test_values_of_the_running_workflow(self):
        """Called from a running train.json workflow without overrides, the served configs get the values that
        workflow changed (network sizes, prediction_type, spatial_size, settings train.json lacks such as
        ddim_steps), evaluated to plain data, and never the run's locations."""
        out = os.path.join(self.tmp, "served")
        configs = BUNDLE_DIR / "configs"
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json")])
        parser.update(
            {
                "bundle_root": self.tmp,
                "ckpt_dir": "$os.path.join(@bundle_root, 'elsewhere')",
                "unet_def#channels": [8, 8, 8],
                "prediction_type": "epsilon",  # train.json's is v_prediction
                "spatial_size": "$16 * 2",
                "ddim_steps": 3,
                "phantom_resolution": 4.0,
                "cpu_amp": True,  # the training machine's precision (demo.json on a CPU with AMX)
                "serve": f"$monai_msgldm.bundle.write_served_bundle({str(BUNDLE_DIR)!r}, {out!r}, {self.model!r})",
            }
        )
        parser.parse()
        self.assertEqual(parser.get_parsed_content("serve"), out)
        inference = ConfigParser.load_config_file(os.path.join(out, "configs", "inference.json"))
        self.assertEqual(inference["unet_def"]["channels"], [8, 8, 8])
        self.assertEqual(
            (inference["prediction_type"], inference["spatial_size"], inference["ddim_steps"]), ("epsilon", 32, 3)
        )
        source = ConfigParser.load_config_file(str(configs / "inference.json"))
        for key in ("bundle_root", "ckpt_dir", "model_path", "output_dir", "datalist", "imports", "initialize"):
            self.assertEqual(inference[key], source[key], key)  # locations and workflow ids stay the bundle's
        # unchanged by the run, or the serving machine's to decide (cpu_amp): as written
        for key in ("structure_def", "autoencoder_def", "seed", "device", "cpu_amp"):
            self.assertEqual(inference[key], source[key], key)
        evaluate = ConfigParser.load_config_file(os.path.join(out, "configs", "evaluate.json"))
        self.assertEqual(evaluate["phantom_resolution"], 4.0)
        self.assertNotIn("unet_def", evaluate)  # the network stays in inference.json

    def test_missing_model_or_config(self):
        out = os.path.join(self.tmp, "served")
        with self.assertRaisesRegex(FileNotFoundError, "model_path"):
            write_served_bundle(BUNDLE_DIR, out, os.path.join(self.tmp, "none.pt"))
        with self.assertRaisesRegex(FileNotFoundError, "config"):
            write_served_bundle(BUNDLE_DIR, out, self.model, configs=["nope.json"])
        self.assertEqual(sorted(os.listdir(self.tmp)), ["model.pt"])


if __name__ == "__main__":
    unittest.main()
