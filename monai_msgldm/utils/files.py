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
"""Atomic file writing: write under a temporary name in the destination folder, then ``os.replace`` it.

A reader (or a crashed run) never sees a half-written file: either the old file or the complete new one exists.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, make_dirs: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error it is removed.

    The temporary name keeps the extension of ``path`` (``.nii.gz``, ``.png``, ``.json``...) so that writers that
    choose their format from the name (nibabel, PIL, matplotlib) behave as for the final name. The file gets the
    usual permissions (umask applied), not ``mkstemp``'s owner-only ones.

    Args:
        path: the final file.
        make_dirs: create missing parent folders.

    Example::

        with atomic_path("out/case_flair.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    final = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(final)
    if os.path.isdir(final):
        raise IsADirectoryError(f"atomic_path expects path to be a file, got the folder '{final}'.")
    if make_dirs:
        os.makedirs(folder, exist_ok=True)
    suffix = "".join(_extensions(name))
    tmp = os.path.join(folder, f".{name[: len(name) - len(suffix)]}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _extensions(name: str) -> list[str]:
    """``["", ".nii", ".gz"]``-style extensions of a file name: the double ones medical formats use are kept."""
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double) and len(name) > len(double):
            return [name[-len(double) :]]
    stem, ext = os.path.splitext(name)
    return [ext] if stem else []


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns the absolute path."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return os.path.abspath(os.fspath(path))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` atomically (no newline translation); returns the absolute path."""
    return atomic_write_bytes(path, text.encode(encoding))
