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
"""The public names the bundles and docs rely on exist, and none repeats a MONAI name.

MONAI's bundle config resolver scans every loaded module whose name starts with "monai" (ours too) for short
class names; a clash would resolve silently to whichever module was found first.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import unittest

import monai
from parameterized import parameterized

import monai_msgldm

PUBLIC = {
    "monai_msgldm.networks.blocks": [
        "HighFrequencyInjectionBlock",
        "MultimodalStructureFusion",
        "MultiscaleStructureEnhancement",
    ],
    "monai_msgldm.networks.nets": [
        "StructureEncoder",
        "StyleEncoder",
        "ReconstructionDecoder",
        "SegmentationDecoder",
        "StructureStyleNet",
        "MSGLDM",
        "ModalityWiseAutoencoder",
    ],
    "monai_msgldm.losses": ["FrequencySSIMLoss", "StructureAwareLoss", "StyleConsistencyLoss"],
    "monai_msgldm.transforms": ["RandModalityDropout", "RandModalityDropoutd"],
    "monai_msgldm.inferers": ["ModalitySynthesisInferer"],
}


def _classes_under(package) -> dict[str, str]:
    """Class name -> module for every class defined in the modules of ``package``."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception:  # optional dependencies of MONAI that are not installed
            continue
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__:
                found.setdefault(name, module.__name__)
    return found


class TestPublicApi(unittest.TestCase):
    @parameterized.expand(list(PUBLIC.items()))
    def test_names_importable(self, module, names):
        mod = importlib.import_module(module)
        for name in names:
            self.assertTrue(hasattr(mod, name), f"{module}.{name} is missing")
            self.assertIn(name, mod.__all__, f"{name} not in {module}.__all__")

    def test_no_class_name_clash_with_monai(self):
        ours = _classes_under(monai_msgldm)
        theirs = _classes_under(monai)
        public_ours = {n: m for n, m in ours.items() if not n.startswith("_")}
        clashes = {n: (m, theirs[n]) for n, m in public_ours.items() if n in theirs}
        self.assertEqual(clashes, {}, f"class names repeating MONAI's: {clashes}")


if __name__ == "__main__":
    unittest.main()
