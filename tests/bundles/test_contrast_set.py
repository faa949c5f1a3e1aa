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
"""The contrast set is one key of the bundle (``modalities``): every count follows it, in every config.

The 4-contrast BraTS bundle (``train.json``, ``inference.json``...) is compared with the same configs plus the
``wmh.json`` overlay (FLAIR, T1 and the WMH lesion mask), and with an arbitrary 3-contrast set given on the
command line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from parameterized import parameterized

from monai_msgldm.bundle import contrast_network_data_format, write_served_bundle

__all__: list[str] = []

CONFIG_DIR = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_msgldm" / "configs"
WMH = str(CONFIG_DIR / "wmh.json")

# a small network (the demo's sizes) so that building it is quick
SMALL = {
    "autoencoder_def#channels": [8, 8, 8],
    "autoencoder_def#norm_num_groups": 4,
    "autoencoder_def#with_encoder_nonlocal_attn": False,
    "autoencoder_def#with_decoder_nonlocal_attn": False,
    "structure_def#structure_channels": [8, 8, 16],
    "structure_def#strides": [1, 2, 2],
    "structure_def#style_channels": [4, 4, 4],
    "unet_def#channels": [8, 8, 8],
    "unet_def#norm_num_groups": 4,
    "unet_def#num_head_channels": 8,
}

# (name, extra config files, command-line overrides, expected contrasts, expected segmentation classes)
CASES = [
    ("brats", [], {}, ["t1", "t1ce", "t2", "flair"], ["tc", "wt", "et"]),
    ("wmh", [WMH], {}, ["flair", "t1"], ["wmh"]),
    ("three", [], {"modalities": ["t1", "t2", "flair"]}, ["t1", "t2", "flair"], ["tc", "wt", "et"]),
]


def _parser(files: list[str], overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update({**SMALL, **overrides})
    return parser


class TestContrastSetCounts(unittest.TestCase):
    @parameterized.expand(CASES)
    def test_training_configs(self, _, extra, overrides, modalities, classes):
        m, latent = len(modalities), 4
        train = [CONFIG_DIR / "train.json", *extra]
        # no data is read: the label convention the datalist would report is given
        overrides = {**overrides, "datalist": {"format": "wmh" if extra else "brats2020"}}
        parser = _parser([*train, CONFIG_DIR / "train_diffusion.json"], overrides)
        self.assertEqual(parser.get_parsed_content("modalities"), modalities)
        self.assertEqual(parser.get_parsed_content("num_modalities"), m)
        self.assertEqual(parser.get_parsed_content("structure_def#seg_out_channels"), len(classes))
        # the MSG-LDM UNet (closed form of the channel counts): noisy joint latent + F_s + the hybrid condition's
        # given latents and mask in (the default), joint latent out; without it, the paper's F_s only
        self.assertEqual(parser.get_parsed_content("unet_def#in_channels"), m * latent + 16 + m * (latent + 1))
        self.assertEqual(parser.get_parsed_content("unet_def#out_channels"), m * latent)
        parser["hybrid_condition"] = False
        self.assertEqual(parser.get_parsed_content("unet_def#in_channels"), m * latent + 16)
        net = parser.get_parsed_content("network_def")
        self.assertEqual(net.num_modalities, m)
        self.assertEqual(net.structure_net.num_modalities, m)
        self.assertEqual(net.unet.conv_in.conv.in_channels, m * latent + 16)
        self.assertEqual(net.unet.out[-1].conv.out_channels, m * latent)
        # the stage-2 validation resolves its target among the bundle's contrasts
        self.assertEqual(parser.get_parsed_content("validate#evaluator#modalities"), modalities)
        # the preprocessing of every stage stacks the bundle's contrasts
        for stage in ("autoencoder", "structure", "diffusion"):
            stage_parser = _parser([*train, CONFIG_DIR / f"train_{stage}.json"], overrides)
            for part in ("train", "validate"):
                pre = stage_parser.get_parsed_content(f"{part}#volume_transforms")
                stack = next(t for t in pre.transforms if type(t).__name__ == "StackModalitiesd")
                self.assertEqual(list(stack.keys), modalities, (stage, part))
        # the baselines
        ldm = _parser([*train, CONFIG_DIR / "train_diffusion.json", CONFIG_DIR / "baseline_ldm.json"], overrides)
        self.assertEqual(ldm.get_parsed_content("network_def#num_modalities"), m)
        self.assertEqual(ldm.get_parsed_content("unet_def#in_channels"), 2 * m * latent + m)
        reg = _parser([*train, CONFIG_DIR / "train_diffusion.json", CONFIG_DIR / "baseline_regression.json"], overrides)
        self.assertEqual(reg.get_parsed_content("network_def#num_modalities"), m)
        seg = _parser([*train, CONFIG_DIR / "train_segmenter.json"], overrides)
        self.assertEqual(seg.get_parsed_content("segmenter_def#in_channels"), m)
        self.assertEqual(seg.get_parsed_content("segmenter_def#out_channels"), len(classes))

    @parameterized.expand(CASES)
    def test_serving_configs(self, _, extra, overrides, modalities, classes):
        m, latent = len(modalities), 4
        overrides = {**overrides, "split": None}  # no data is read: the label convention follows ``naming``
        parser = _parser([CONFIG_DIR / "inference.json", CONFIG_DIR / "evaluate.json", *extra], overrides)
        self.assertEqual(parser.get_parsed_content("modalities"), modalities)
        self.assertEqual(parser.get_parsed_content("structure_def#seg_out_channels"), len(classes))
        self.assertEqual(parser.get_parsed_content("network_def#num_modalities"), m)
        self.assertEqual(parser.get_parsed_content("unet_def#out_channels"), m * latent)
        stack = next(t for t in parser.get_parsed_content("preprocessing").transforms if hasattr(t, "available_key"))
        self.assertEqual(list(stack.keys), modalities)
        # every scenario of the contrast set: the 2^M - 2 proper non-empty subsets, ordered as documented
        scenarios = parser.get_parsed_content("scenario_samples").scenarios
        self.assertEqual(len(scenarios), 2**m - 2)
        self.assertTrue(all(set(given) | set(missing) == set(modalities) for given, missing in scenarios))
        self.assertEqual(parser.get_parsed_content("segmenter_def#in_channels"), m)
        self.assertEqual(parser.get_parsed_content("segmenter_def#out_channels"), len(classes))
        self.assertEqual(parser.get_parsed_content("evaluator#postprocessing").splitter.num_modalities, m)
        lesion = parser.get_parsed_content("additional_metrics#volume_ssim#metric_fn").tumour_channel
        self.assertEqual(classes[lesion], "wmh" if extra else "wt")

    def test_wmh_scenarios_are_the_papers(self):
        parser = _parser([CONFIG_DIR / "inference.json", CONFIG_DIR / "evaluate.json", WMH], {})
        scenarios = parser.get_parsed_content("scenario_samples").scenarios
        self.assertEqual(scenarios, [(("flair",), ("t1",)), (("t1",), ("flair",))])

    def test_inference_file_arguments(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        cases = [
            ({"t2": os.path.join(tmp, "a_t2.nii.gz")}, r"unknown modality name\(s\) \['t2'\].*\['flair', 't1'\]"),
            ({}, r"give at least one of \['flair', 't1'\]"),
        ]
        for overrides, message in cases:
            parser = _parser([CONFIG_DIR / "inference.json", WMH], overrides)
            with self.assertRaises(RuntimeError) as raised:  # MONAI's parser wraps the error of the expression
                parser.get_parsed_content("data")
            self.assertIsInstance(raised.exception.__cause__, ValueError)
            self.assertRegex(str(raised.exception.__cause__), message)


class TestContrastMetadata(unittest.TestCase):
    def setUp(self):
        with open(CONFIG_DIR / "metadata.json") as f:
            self.meta = json.load(f)

    def test_source_metadata_matches_train_json(self):
        parser = ConfigParser()
        parser.read_config(str(CONFIG_DIR / "train.json"))
        fmt = contrast_network_data_format(
            self.meta["network_data_format"],
            parser.get_parsed_content("modalities"),
            parser.get_parsed_content("spatial_size"),
        )
        self.assertEqual(fmt, self.meta["network_data_format"])

    def test_two_contrasts(self):
        fmt = contrast_network_data_format(self.meta["network_data_format"], ["flair", "t1"], 64)
        image, available, pred = fmt["inputs"]["image"], fmt["inputs"]["available"], fmt["outputs"]["pred"]
        self.assertEqual([image["num_channels"], available["num_channels"], pred["num_channels"]], [2, 2, 2])
        self.assertEqual(image["channel_def"], {"0": "FLAIR", "1": "T1"})
        self.assertEqual(pred["channel_def"], {"0": "FLAIR", "1": "T1"})
        self.assertEqual(available["channel_def"], {"0": "FLAIR given", "1": "T1 given"})
        self.assertEqual(image["spatial_shape"], [64, 64])
        self.assertIn("(B, 2)", available["description"])
        self.assertEqual(self.meta["network_data_format"]["inputs"]["image"]["num_channels"], 4)  # not modified
        with self.assertRaisesRegex(ValueError, "distinct contrast names"):
            contrast_network_data_format(self.meta["network_data_format"], ["t1", "t1"])

    def test_served_bundle_metadata_follows_the_model(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        model = os.path.join(tmp, "model.pt")
        torch.save({}, model)
        out = write_served_bundle(
            CONFIG_DIR.parent, os.path.join(tmp, "served"), model, {"modalities": ["flair", "t1"], "spatial_size": 64}
        )
        with open(os.path.join(out, "configs", "metadata.json")) as f:
            served = json.load(f)
        self.assertEqual(
            served["network_data_format"],
            contrast_network_data_format(self.meta["network_data_format"], ["flair", "t1"], 64),
        )
        self.assertEqual(
            {k: v for k, v in served.items() if k != "network_data_format"},
            {k: v for k, v in self.meta.items() if k != "network_data_format"},
        )
        parser = ConfigParser()
        parser.read_config(os.path.join(out, "configs", "inference.json"))
        self.assertEqual(parser.get_parsed_content("num_modalities"), 2)


if __name__ == "__main__":
    unittest.main()
