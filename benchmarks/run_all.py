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
"""Run every benchmark: ``python benchmarks/run_all.py [--output-dir outputs/benchmarks]``.

The quality benchmark first (it trains eight models; trained ones are kept in ``<output-dir>/quality/models`` and
reused), then the speed benchmark, so that the timings are taken on an otherwise idle machine. Each writes its JSON,
markdown and PNG files into its own sub-folder; ``summary.md`` puts the two markdown reports together. Hours on 2 CPU
cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402
import speed  # noqa: E402

from monai_msgldm.utils.files import atomic_write_text  # noqa: E402

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/benchmarks")
    parser.add_argument("--skip", nargs="*", default=[], choices=("quality", "speed"), help="benchmarks to leave out")
    args = parser.parse_args(argv)
    reports = []
    if "quality" not in args.skip:
        out = os.path.join(args.output_dir, "quality")
        quality.main(["--output-dir", out, "--work-dir", os.path.join(out, "models")])
        reports.append(os.path.join(out, "quality.md"))
    if "speed" not in args.skip:
        out = os.path.join(args.output_dir, "speed")
        speed.main(["--output-dir", out])
        reports.append(os.path.join(out, "speed.md"))
    text = ""
    for path in reports:
        with open(path) as f:
            text += f.read() + "\n"
    atomic_write_text(os.path.join(args.output_dir, "summary.md"), text)
    print(f"wrote {os.path.join(args.output_dir, 'summary.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
