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
import tempfile
import unittest

import torch
from monai.data import DataLoader, Dataset, MetaTensor, PatchDataset
from parameterized import parameterized

from monai_msgldm.constants import MODALITIES
from monai_msgldm.evaluation import (
    ScenarioSamples,
    evaluation_datalist,
    missing_modality_scenarios,
    scenario_group,
    scenario_name,
)
from monai_msgldm.transforms import ApplyModalityMaskd

__all__: list[str] = []


class TestScenarios(unittest.TestCase):
    def test_all(self):
        scenarios = missing_modality_scenarios()
        self.assertEqual(len(scenarios), 14)
        self.assertEqual(sum(len(t) for _, t in scenarios), 28)
        self.assertEqual(len({s for s, _ in scenarios}), 14)
        for available, targets in scenarios:
            self.assertEqual(sorted(available + targets), sorted(MODALITIES))
        self.assertEqual([len(s) for s, _ in scenarios], [3] * 4 + [2] * 6 + [1] * 4)
        self.assertEqual(scenarios[0], (("t1", "t1ce", "t2"), ("flair",)))
        self.assertEqual(scenarios[-1], (("flair",), ("t1", "t1ce", "t2")))

    def test_restrict(self):
        self.assertEqual(
            [s for s, _ in missing_modality_scenarios(["3->1"])], [s for s, _ in missing_modality_scenarios()[:4]]
        )
        self.assertEqual(len(missing_modality_scenarios("2->2")), 6)
        self.assertEqual(missing_modality_scenarios(["flair+t1"]), [(("t1", "flair"), ("t1ce", "t2"))])
        both = missing_modality_scenarios(["1->3", "t2"])  # duplicates are listed once
        self.assertEqual([s for s, _ in both], [("t1",), ("t1ce",), ("t2",), ("flair",)])
        self.assertEqual(scenario_group(("t1", "t2")), "2->2")
        self.assertEqual(scenario_name(("t1", "t2"), ("t1ce", "flair")), "t1+t2->t1ce+flair")

    @parameterized.expand([(["4->0"],), (["0->4"],), (["t5"],), (["t1+t1ce+t2+flair"],), (["t1+t1"],), ([3],)])
    def test_bad(self, scenarios):
        with self.assertRaisesRegex(ValueError, "scenarios"):
            missing_modality_scenarios(scenarios)


class TestEvaluationDatalist(unittest.TestCase):
    def test_items_and_errors(self):
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        path = os.path.join(out, "list.json")
        with open(path, "w") as f:
            json.dump({"test": [{"t1": "a/a_t1.nii.gz", "subject": "a"}], "training": []}, f)
        os.makedirs(os.path.join(out, "a"))
        open(os.path.join(out, "a", "a_t1.nii.gz"), "wb").close()
        items = evaluation_datalist(path, "test")  # relative paths: from the datalist's folder
        # MONAI makes every entry naming an existing path absolute: the subject folder too
        self.assertEqual(items, [{"t1": os.path.join(out, "a", "a_t1.nii.gz"), "subject": os.path.join(out, "a")}])
        with self.assertRaisesRegex(ValueError, "no case under 'training'"):
            evaluation_datalist(path, "training")
        with self.assertRaisesRegex(ValueError, "no list under data_list_key 'testing'"):
            evaluation_datalist(path, "testing")
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            evaluation_datalist(os.path.join(out, "nope.json"))


def _case(seed: int = 0, name: str | None = "c0") -> dict:
    g = torch.Generator().manual_seed(seed)
    case = {"image": torch.rand(1, 4, 8, 8, 3, generator=g) * 2 - 1, "seg": torch.zeros(1, 3, 8, 8, 3)}
    case["available"] = torch.ones(1, 4, dtype=torch.bool)
    if name is not None:
        case["subject"] = [f"/data/{name}"]
    return case


class TestScenarioSamples(unittest.TestCase):
    def test_items(self):
        batch = _case()
        samples = ScenarioSamples(["3->1", "t2"])
        self.assertEqual(len(samples), 5)
        items = samples(batch)
        self.assertEqual(len(items), 5)
        self.assertEqual(
            [i["scenario"] for i in items],
            ["t1+t1ce+t2->flair", "t1+t1ce+flair->t2", "t1+t2+flair->t1ce", "t1ce+t2+flair->t1", "t2->t1+t1ce+flair"],
        )
        self.assertEqual(items[0]["available"].tolist(), [True, True, True, False])
        self.assertEqual(items[4]["available"].tolist(), [False, False, True, False])
        for item in items:
            self.assertEqual(item["case"], "c0")  # the basename of "subject"
            self.assertEqual(item["available"].dtype, torch.bool)
            # the truth and the image are the case's image (not copies): a case is held once for all scenarios
            self.assertIs(item["label"], item["image"])
            torch.testing.assert_close(item["label"], batch["image"][0])
            torch.testing.assert_close(item["seg"], batch["seg"][0])

    def test_case_names(self):
        batch = _case(name=None)
        self.assertEqual(ScenarioSamples("t1")(dict(batch, case=["x1"]))[0]["case"], "x1")
        image = MetaTensor(batch["image"])
        image.meta.update({f"{m}_filename_or_obj": [f"/d/BraTS20_007/BraTS20_007_{m}.nii.gz"] for m in MODALITIES})
        self.assertEqual(ScenarioSamples("t1")(dict(batch, image=image))[0]["case"], "BraTS20_007")
        samples = ScenarioSamples("t1")
        self.assertEqual([samples(batch)[0]["case"], samples(batch)[0]["case"]], ["case_0000", "case_0001"])

    def test_errors(self):
        samples = ScenarioSamples("3->1")
        batch = _case()
        with self.assertRaisesRegex(ValueError, "lacks \\['t1ce'\\]"):
            samples(dict(batch, available=torch.tensor([[True, False, True, True]])))
        with self.assertRaisesRegex(ValueError, "batch_size 1"):
            samples({k: torch.cat([v, v]) for k, v in batch.items() if k != "subject"})
        with self.assertRaisesRegex(ValueError, "\\(4, \\*spatial\\)"):
            samples(dict(batch, image=batch["image"][:, :3]))
        with self.assertRaisesRegex(ValueError, "'label'"):
            samples(dict(batch, label=batch["seg"]))

    def test_patch_dataset_loads_each_case_once(self):
        calls = []

        def load(case):
            calls.append(case["subject"])
            return {"subject": case["subject"], **{k: v[0] for k, v in _case(len(calls)).items() if k != "subject"}}

        cases = DataLoader(Dataset([{"subject": "a"}, {"subject": "b"}], transform=load), batch_size=1)
        samples = ScenarioSamples()
        dataset = PatchDataset(cases, samples, len(samples), ApplyModalityMaskd("image", fill_value=-1.0))
        self.assertEqual(len(dataset), 28)
        items = list(DataLoader(dataset, batch_size=1))
        self.assertEqual(calls, ["a", "b"])
        self.assertEqual([i["case"][0] for i in items], ["a"] * 14 + ["b"] * 14)
        for item in items:
            hidden = ~item["available"][0]
            self.assertTrue(bool((item["image"][0, hidden] == -1).all()))
            torch.testing.assert_close(item["image"][0, ~hidden], item["label"][0, ~hidden])
            self.assertFalse(bool((item["label"][0, hidden] == -1).all()))  # the truth keeps every contrast


if __name__ == "__main__":
    unittest.main()
