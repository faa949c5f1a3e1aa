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
"""Time the phantom generator: ``python benchmarks/phantom_speed.py --num-subjects 10 --resolution 2``.

Prints the time to load the template (once per process), and to generate and write the dataset (NIfTI files in a
temporary folder unless ``--output`` is given; the folder is emptied first so every subject is generated).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-subjects", type=int, default=10, help="number of subjects (default 10)")
    parser.add_argument("--resolution", type=float, default=2.0, help="voxel size in mm (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--output", default=None, help="output folder (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    from monai_msgldm.data import phantom, phantom_anatomy

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    phantom_anatomy.load_phantom_template()
    phantom_anatomy.phantom_grid(float(args.resolution))
    t_template = time.perf_counter() - t0

    tmp = None
    output = args.output
    if output is None:
        tmp = tempfile.mkdtemp(prefix="phantom_speed_")
        output = tmp
    elif os.path.isdir(output):
        shutil.rmtree(output)
    try:
        t0 = time.perf_counter()
        cases = phantom.generate_phantom_dataset(
            output, num_subjects=args.num_subjects, resolution=args.resolution, seed=args.seed, progress=False
        )
        t_gen = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(c, f)) for c in cases for f in os.listdir(c))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    n = len(cases)
    print(f"phantom: {n} subjects at {args.resolution:g} mm, {size / 1e6:.1f} MB written")
    print(f"  import (torch, MONAI): {t_import:6.2f} s")
    print(f"  template load + smoothing: {t_template:6.2f} s (once per process)")
    print(f"  generate + write: {t_gen:6.2f} s ({t_gen / n:.2f} s per subject)")
    print(f"  total after import: {t_template + t_gen:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
