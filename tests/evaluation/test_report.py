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

import csv
import json
import math
import os
import shutil
import tempfile
import unittest

from monai_msgldm.evaluation import ROW_KEYS, summarize_metrics, write_metrics

__all__: list[str] = []


def _row(case, target, psnr, ssim=0.5, group="3->1"):
    return {
        "case": case,
        "scenario": f"s->{target}",
        "group": group,
        "available": "s",
        "target": target,
        "num_slices": 3,
        "psnr": psnr,
        "ssim": ssim,
        "ssim3d_brain": 0.4,
        "ssim3d_tumour": math.nan,
        "ssim3d_healthy": 0.3,
        "sharpness": 0.8,
    }


class TestWriteMetrics(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.out, True)

    def test_summary(self):
        rows = [_row("a", "t1", 10.0), _row("b", "t1", 20.0), _row("c", "t1", math.inf), _row("a", "t2", 5.0)]
        summary = summarize_metrics(rows)
        self.assertEqual([(e["scenario"], e["target"]) for e in summary], [("s->t1", "t1"), ("s->t2", "t2")])
        self.assertEqual(summary[0]["psnr"], {"mean": 15.0, "std": 5.0, "n": 2})
        brain = summary[0]["ssim3d_brain"]
        self.assertEqual(brain["n"], 3)
        self.assertAlmostEqual(brain["mean"], 0.4, places=12)
        self.assertAlmostEqual(brain["std"], 0.0, places=12)
        self.assertEqual(summary[0]["ssim3d_tumour"], {"mean": None, "std": None, "n": 0})
        self.assertEqual(summary[1]["psnr"], {"mean": 5.0, "std": 0.0, "n": 1})
        self.assertEqual(summary[0]["sharpness"]["n"], 3)
        self.assertAlmostEqual(summary[0]["sharpness"]["mean"], 0.8, places=12)

    def test_files(self):
        rows = [_row("a", "t1", 10.0), _row("b", "t1", 20.0), _row("a", "flair", math.inf, group="1->3")]
        paths = write_metrics(rows, os.path.join(self.out, "sub"))
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.out, "sub"))), ["metrics.csv", "metrics.json", "metrics.md"]
        )
        with open(paths["csv"]) as f:
            table = list(csv.DictReader(f))
        self.assertEqual(list(table[0]), list(ROW_KEYS))
        self.assertEqual(
            [(r["case"], r["target"], r["psnr"]) for r in table],
            [("a", "t1", "10.0"), ("b", "t1", "20.0"), ("a", "flair", "inf")],
        )
        self.assertEqual(table[0]["ssim3d_tumour"], "nan")
        with open(paths["json"]) as f:
            doc = json.load(f)
        self.assertEqual(
            doc["metrics"], ["psnr", "ssim", "ssim3d_brain", "ssim3d_tumour", "ssim3d_healthy", "sharpness"]
        )
        self.assertEqual(table[0]["sharpness"], "0.8")
        self.assertEqual(len(doc["rows"]), 3)
        self.assertIsNone(doc["rows"][2]["psnr"])
        self.assertIsNone(doc["rows"][0]["ssim3d_tumour"])
        by_group = {(e["group"], e["target"]): e for e in doc["aggregate"]["by_group_target"]}
        self.assertEqual(by_group[("3->1", "t1")]["psnr"], {"mean": 15.0, "std": 5.0, "n": 2})
        self.assertEqual(by_group[("1->3", "flair")]["psnr"], {"mean": None, "std": None, "n": 0})
        self.assertEqual(len(doc["aggregate"]["by_scenario_target"]), 2)
        with open(paths["md"]) as f:
            md = f.read()
        self.assertIn(
            "| 3->1 | t1 | 2 | 15.00 ± 5.00 | 50.00 ± 0.00 | 40.00 ± 0.00 | n/a | 30.00 ± 0.00 | 0.80 ± 0.00 |", md
        )
        self.assertIn("| SSIM3D healthy | sharpness |", md)
        self.assertIn("| 1->3 | flair | 1 | n/a | 50.00 ± 0.00 |", md)
        self.assertLess(md.index("| 3->1 |"), md.index("| 1->3 |"))
        self.assertFalse([f for f in os.listdir(os.path.join(self.out, "sub")) if f.startswith(".")])

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "at least one"):
            write_metrics([], self.out)
        bad = _row("a", "t1", 1.0)
        del bad["ssim"]
        with self.assertRaisesRegex(ValueError, "ssim"):
            write_metrics([bad], self.out)
        bad = _row("a", "t1", 1.0)
        del bad["sharpness"]
        with self.assertRaisesRegex(ValueError, "\\['sharpness'\\]"):
            write_metrics([bad], self.out)
        self.assertEqual(os.listdir(self.out), [])


if __name__ == "__main__":
    unittest.main()
