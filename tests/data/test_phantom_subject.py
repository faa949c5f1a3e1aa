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
"""A phantom subject is bit-identical to the reference made before ``phantom.py`` was split into its parts.

The checksums were computed with the single-module generator (model version 1). A change of them means the images of
a seed changed: bump ``_MODEL_VERSION`` in ``phantom_writing.py`` (cached datasets are then regenerated) and update
them. A numpy / scipy release or a BLAS with other rounding can change the float bits too.
"""

from __future__ import annotations

import hashlib
import unittest

import numpy as np
from parameterized import parameterized

from monai_msgldm.constants import MODALITIES
from monai_msgldm.data.phantom import generate_phantom_subject

__all__: list[str] = []

REFERENCE = [
    ({"seed": 0, "resolution": 4.0}, "cddc095517d8bfe946970df9666229c03efe8b09ef29f40ee98e465d1c52d41c"),
    (
        {"seed": 7, "resolution": 6.0, "return_fractions": True},
        "876273fc50cf9c4d3b36ab377cb77fb018d72f6308bee69d6d99660de444ca92",
    ),
    (
        {"seed": 5, "resolution": 4.0, "num_tumours": 2, "snr": float("inf")},
        "1cb0a49998152d2ce0d46e5900b3308ea5f16bf5d10ef0bfcc82030b3bf35e9d",
    ),
]


def subject_digest(subject: dict) -> str:
    """SHA-256 of every array of a subject: name, dtype, shape and bytes (then the fractions, by tissue name)."""
    h = hashlib.sha256()
    for key in (*MODALITIES, "seg", "brain_mask", "affine"):
        array = np.ascontiguousarray(subject[key])
        h.update(key.encode())
        h.update(str(array.dtype).encode())
        h.update(str(array.shape).encode())
        h.update(array.tobytes())
    for tissue in sorted(subject.get("fractions", {})):
        h.update(tissue.encode())
        h.update(np.ascontiguousarray(subject["fractions"][tissue]).tobytes())
    return h.hexdigest()


class TestPhantomSubjectReference(unittest.TestCase):
    @parameterized.expand(REFERENCE)
    def test_bit_identical_to_reference(self, kwargs, expected):
        subject = generate_phantom_subject(**kwargs)
        self.assertEqual(set(subject) - {"fractions"}, {*MODALITIES, "seg", "brain_mask", "affine"})
        self.assertEqual("fractions" in subject, bool(kwargs.get("return_fractions")))
        self.assertEqual(subject_digest(subject), expected)


if __name__ == "__main__":
    unittest.main()
