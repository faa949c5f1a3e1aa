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

import os
import shutil
import tempfile
import unittest

import nibabel as nib
import numpy as np
from parameterized import parameterized

from monai_msgldm.utils.files import atomic_path, atomic_write_bytes, atomic_write_text

__all__: list[str] = []

NAMES = [
    ("datalist.json", ".json"),
    ("Phantom_000_t1.nii.gz", ".nii.gz"),
    ("plot.PNG", ".PNG"),
    ("archive.tar.gz", ".tar.gz"),
    ("README", ""),
    (".phantom_complete", ""),
]


class TestAtomicFiles(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    @parameterized.expand(NAMES)
    def test_temporary_name_keeps_extension(self, name, ext):
        path = os.path.join(self.tmp, name)
        with atomic_path(path) as tmp:
            self.assertEqual(os.path.dirname(tmp), self.tmp)  # same folder: the rename is atomic
            self.assertTrue(os.path.basename(tmp).startswith("."))  # hidden while it is written
            self.assertTrue(tmp.endswith(ext), tmp)
            self.assertNotEqual(tmp, path)
            self.assertFalse(os.path.exists(tmp))
            with open(tmp, "wb") as f:
                f.write(b"data")
            self.assertFalse(os.path.exists(path))  # nothing at the final name until the block ends
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"data")
        self.assertEqual(os.listdir(self.tmp), [name])

    def test_writers_choosing_format_from_name(self):
        path = os.path.join(self.tmp, "image.nii.gz")
        array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        with atomic_path(path) as tmp:
            nib.save(nib.Nifti1Image(array, np.eye(4)), tmp)
        with open(path, "rb") as f:
            self.assertEqual(f.read(2), b"\x1f\x8b")  # gzipped, as the final name asks
        np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), array)

    def test_write_bytes_and_text(self):
        path = os.path.join(self.tmp, "sub", "deeper", "out.bin")  # missing folders are created
        self.assertEqual(atomic_write_bytes(path, b"\x00\x01\xff"), os.path.abspath(path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"\x00\x01\xff")
        text_path = os.path.join(self.tmp, "report.md")
        self.assertEqual(atomic_write_text(text_path, "a\r\nb\u00e9\n"), os.path.abspath(text_path))
        with open(text_path, "rb") as f:
            self.assertEqual(f.read(), "a\r\nb\u00e9\n".encode())  # utf-8, no newline translation
        atomic_write_text(text_path, "\u00e9", encoding="latin-1")
        with open(text_path, "rb") as f:
            self.assertEqual(f.read(), b"\xe9")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["report.md", "sub"])

    def test_usual_permissions(self):
        old = os.umask(0o027)
        try:
            path = atomic_write_text(os.path.join(self.tmp, "a.txt"), "x")
        finally:
            os.umask(old)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)  # 0o666 with the umask applied, not mkstemp's 0o600

    @parameterized.expand([(False,), (True,)])
    def test_error_leaves_nothing_and_keeps_old_file(self, existing):
        path = os.path.join(self.tmp, "datalist.json")
        if existing:
            atomic_write_text(path, "old")
        seen = []
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            with atomic_path(path) as tmp:
                with open(tmp, "w") as f:
                    f.write("half")
                seen.append(tmp)
                raise RuntimeError("interrupted")
        self.assertFalse(os.path.exists(seen[0]))
        self.assertEqual(os.listdir(self.tmp), ["datalist.json"] if existing else [])
        if existing:
            with open(path) as f:
                self.assertEqual(f.read(), "old")

    def test_error_before_anything_written(self):
        with self.assertRaises(KeyboardInterrupt):
            with atomic_path(os.path.join(self.tmp, "x.png")):
                raise KeyboardInterrupt
        self.assertEqual(os.listdir(self.tmp), [])

    def test_folder_rejected(self):
        folder = os.path.join(self.tmp, "folder")
        os.makedirs(folder)
        with self.assertRaisesRegex(IsADirectoryError, "path"):
            with atomic_path(folder):
                pass
        with self.assertRaises(IsADirectoryError):
            atomic_write_bytes(folder, b"x")
        self.assertEqual(os.listdir(folder), [])
        self.assertEqual(os.listdir(self.tmp), ["folder"])

    def test_no_make_dirs(self):
        path = os.path.join(self.tmp, "missing", "a.txt")
        with self.assertRaises(FileNotFoundError):
            with atomic_path(path, make_dirs=False) as tmp:
                with open(tmp, "w") as f:
                    f.write("x")
        self.assertEqual(os.listdir(self.tmp), [])


if __name__ == "__main__":
    unittest.main()
