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
import importlib.util
import inspect
import os
import pkgutil
import shutil
import sys
import tempfile
import unittest
from unittest import mock

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
    "monai_msgldm.inferers": [
        "ModalitySynthesisInferer",
        "MultiContrastDiffusionInferer",
        "RegressionSynthesisInferer",
        "SynthesisSampler",
    ],
}


# Optional extras of ours: modules under the prefix need the extra, which installs these top-level packages (the
# first one is the extra's own package). Such a module may be skipped only when that package is not installed.
OPTIONAL_EXTRAS = {"monai_msgldm.apps.monailabel": ("monailabel", "fastapi")}


def _walk(package) -> tuple[dict[str, str], dict[str, BaseException]]:
    """``(classes, failures)``: class name -> module for every class defined in the modules of ``package``, and
    module -> exception for every module that could not be imported."""
    found: dict[str, str] = {}
    failures: dict[str, BaseException] = {}

    def onerror(name: str) -> None:  # a package that failed to import while walk_packages looked for its modules
        failures.setdefault(name, sys.exc_info()[1])

    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=onerror):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception as e:
            failures[info.name] = e
            continue
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__:
                found.setdefault(name, module.__name__)
    return found, failures


def _missing_extra(module: str, error: BaseException) -> str | None:
    """The optional extra package whose absence explains why our ``module`` failed to import, or ``None`` when the
    failure is a real error (the module needs no extra, the extra is installed, or something else is missing)."""
    for prefix, (extra, *brings) in OPTIONAL_EXTRAS.items():
        if module != prefix and not module.startswith(prefix + "."):
            continue
        if not isinstance(error, ModuleNotFoundError) or error.name is None:
            return None
        missing = error.name.partition(".")[0]
        if importlib.util.find_spec(extra) is None and missing in (extra, *brings):
            if importlib.util.find_spec(missing) is None:
                return extra
    return None


def _describe(failures: dict[str, BaseException]) -> str:
    return "; ".join(f"{m}: {type(e).__name__}: {e}" for m, e in sorted(failures.items()))


class TestPublicApi(unittest.TestCase):
    @parameterized.expand(list(PUBLIC.items()))
    def test_names_importable(self, module, names):
        mod = importlib.import_module(module)
        for name in names:
            self.assertTrue(hasattr(mod, name), f"{module}.{name} is missing")
            self.assertIn(name, mod.__all__, f"{name} not in {module}.__all__")

    def test_our_modules_import(self):
        found, failures = _walk(monai_msgldm)
        errors = {m: e for m, e in failures.items() if _missing_extra(m, e) is None}
        self.assertEqual(errors, {}, f"monai_msgldm modules that cannot be imported: {_describe(errors)}")
        self.assertIn("ModalitySynthesisInferer", found)
        if importlib.util.find_spec("monailabel") is not None:  # the app was walked, not skipped
            self.assertEqual(found.get("MSGLDMApp"), "monai_msgldm.apps.monailabel.main")
            self.assertEqual(found.get("MSGLDMSynthesisTask"), "monai_msgldm.apps.monailabel.lib.infers.synthesis")

    def test_no_class_name_clash_with_monai(self):
        ours, our_failures = _walk(monai_msgldm)
        errors = {m: e for m, e in our_failures.items() if _missing_extra(m, e) is None}
        self.assertEqual(errors, {}, f"monai_msgldm modules that cannot be imported: {_describe(errors)}")
        theirs, their_failures = _walk(monai)
        # MONAI modules whose optional dependencies are missing raise ImportError (OptionalImportError is one)
        errors = {m: e for m, e in their_failures.items() if not isinstance(e, ImportError)}
        self.assertEqual(errors, {}, f"MONAI modules that fail to import: {_describe(errors)}")
        self.assertIn("AutoencoderKL", theirs)  # the walk did reach MONAI's networks
        public_ours = {n: m for n, m in ours.items() if not n.startswith("_")}
        clashes = {n: (m, theirs[n]) for n, m in public_ours.items() if n in theirs}
        skipped = {**our_failures, **their_failures}
        self.assertEqual(
            clashes,
            {},
            f"class names repeating MONAI's: {clashes}; modules skipped (not installed): {_describe(skipped) or 'none'}",
        )


class TestWalkHelpers(unittest.TestCase):
    """The walk reports every module that fails to import, and only a missing optional extra excuses ours."""

    def test_walk_reports_failures(self):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        pkg = os.path.join(root, "_msgldm_fake_pkg")
        files = {
            "__init__.py": "",
            "good.py": "class Good:\n    pass\n",
            "broken.py": "raise RuntimeError('boom')\n",
            "needs/__init__.py": "import _msgldm_no_such_module\n",
            "needs/inner.py": "class Inner:\n    pass\n",
        }
        for name, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(pkg, name)), exist_ok=True)
            with open(os.path.join(pkg, name), "w") as f:
                f.write(text)
        sys.path.insert(0, root)
        self.addCleanup(sys.path.remove, root)
        for name in ("", ".good", ".broken", ".needs", ".needs.inner"):
            self.addCleanup(sys.modules.pop, "_msgldm_fake_pkg" + name, None)
        found, failures = _walk(importlib.import_module("_msgldm_fake_pkg"))
        self.assertEqual(found, {"Good": "_msgldm_fake_pkg.good"})
        self.assertEqual(set(failures), {"_msgldm_fake_pkg.broken", "_msgldm_fake_pkg.needs"})
        self.assertIsInstance(failures["_msgldm_fake_pkg.broken"], RuntimeError)
        self.assertEqual(failures["_msgldm_fake_pkg.needs"].name, "_msgldm_no_such_module")
        self.assertIn("_msgldm_fake_pkg.broken: RuntimeError: boom", _describe(failures))

    @parameterized.expand(
        [
            # module, error, packages not installed, excused by
            ("monai_msgldm.apps.monailabel.main", ModuleNotFoundError(name="monailabel"), {"monailabel"}, "monailabel"),
            ("monai_msgldm.apps.monailabel.main", ModuleNotFoundError(name="fastapi"), {"monailabel", "fastapi"},
             "monailabel"),
            ("monai_msgldm.apps.monailabel.lib.infers", ModuleNotFoundError(name="monailabel.interfaces"),
             {"monailabel"}, "monailabel"),
            # the extra is installed: a missing (sub)module is a broken install
            ("monai_msgldm.apps.monailabel.main", ModuleNotFoundError(name="monailabel.interfaces"), set(), None),
            ("monai_msgldm.apps.monailabel.main", ModuleNotFoundError(name="fastapi"), {"fastapi"}, None),
            # something the extra does not bring, or another error
            ("monai_msgldm.apps.monailabel.main", ModuleNotFoundError(name="nibabel"), {"monailabel", "nibabel"},
             None),
            ("monai_msgldm.apps.monailabel.main", RuntimeError("operator torchvision::nms does not exist"),
             {"monailabel"}, None),
            # not the app
            ("monai_msgldm.inferers.synthesis", ModuleNotFoundError(name="monailabel"), {"monailabel"}, None),
            ("monai_msgldm.apps.monailabel_x", ModuleNotFoundError(name="monailabel"), {"monailabel"}, None),
        ]
    )  # fmt: skip
    def test_missing_extra(self, module, error, not_installed, expected):
        def find_spec(name, *args):
            return None if name in not_installed else mock.sentinel.spec

        with mock.patch("importlib.util.find_spec", side_effect=find_spec):
            self.assertEqual(_missing_extra(module, error), expected)


if __name__ == "__main__":
    unittest.main()
