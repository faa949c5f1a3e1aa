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
"""Command line for the data tools: ``monai-msgldm-data`` or ``python -m monai_msgldm.data``.

Sub-commands:

* ``phantom``: write a synthetic phantom dataset (BraTS 2020 layout, or with ``--layout wmh`` the WMH one);
* ``preprocess``: turn loose files of one subject (contrasts on different grids) into a co-registered case in the
  BraTS layout, with the registration that the bundle's inference runs (``data.preprocess.preprocess_case``);
* ``datalist``: scan a BraTS / WMH folder, validate every case and write a JSON datalist with a
  subject-level train/validation/test split. As a one-off validation tool it reads every voxel by default
  (NaN/Inf, empty modality, label values); ``--no-content-check`` reads the NIfTI headers only, as the bundle
  configs do (their preprocessing checks the voxels when it loads them); ``--allow-incomplete`` keeps cases that
  lack some contrasts (listed as ``"incomplete"`` in the datalist and in the summary).

Expected errors (bad argument, missing or invalid file) print one line on stderr and exit with code 2.

Example::

    monai-msgldm-data datalist --data-root /data/BraTS2020 --output /data/BraTS2020/datalist.json --skip-invalid
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

PROG = "monai-msgldm-data"


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


class _OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2), like the other errors here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of :func:`main`."""
    from monai_msgldm.data.datalist import DATALIST_FORMATS

    parser = _OneLineErrorParser(prog=PROG, description="MSG-LDM data tools: phantom dataset and datalists.")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{phantom,datalist,preprocess}", parser_class=_OneLineErrorParser
    )

    ph = sub.add_parser("phantom", help="write a synthetic phantom dataset (BraTS 2020 or WMH layout)")
    ph.add_argument("--output", required=True, metavar="DIR", help="output folder")
    ph.add_argument("--num-subjects", type=_positive_int, default=10, help="number of subjects (default 10)")
    ph.add_argument("--resolution", type=_positive_float, default=2.0, help="voxel size in mm (default 2)")
    ph.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    ph.add_argument("--snr", type=_positive_float, default=30.0, help="signal-to-noise ratio (default 30)")
    ph.add_argument("--overwrite", action="store_true", help="replace existing subjects")
    ph.add_argument(
        "--layout",
        choices=("brats", "wmh"),
        default="brats",
        help="brats: tumours, T1/T1CE/T2/FLAIR (default); wmh: white-matter hyperintensities, FLAIR/T1, WMH layout",
    )

    dl = sub.add_parser("datalist", help="scan a BraTS/WMH folder and write a JSON datalist")
    dl.add_argument("--data-root", required=True, metavar="DIR", help="dataset folder")
    dl.add_argument(
        "--format", choices=("auto", *DATALIST_FORMATS), default="auto", help="folder layout (default auto)"
    )
    dl.add_argument("--output", required=True, metavar="FILE", help="output datalist .json")
    dl.add_argument("--val-ratio", type=_fraction, default=0.1, help="validation fraction (default 0.1)")
    dl.add_argument("--test-ratio", type=_fraction, default=0.1, help="test fraction (default 0.1)")
    dl.add_argument("--seed", type=_non_negative_int, default=0, help="split seed (default 0)")
    dl.add_argument("--skip-invalid", action="store_true", help="skip invalid cases with a warning")
    dl.add_argument("--no-seg", action="store_true", help="inference-only list: no segmentation key")
    dl.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="accept cases that lack some (not all) contrasts: their items have no key for the absent ones",
    )
    dl.add_argument(
        "--no-content-check", action="store_true", help="check the NIfTI headers only (default: read every voxel too)"
    )

    pp = sub.add_parser("preprocess", help="register the loose files of one subject into a BraTS-layout case")
    for modality in ("t1", "t1ce", "t2", "flair"):
        pp.add_argument(f"--{modality}", metavar="FILE", help=f"the {modality.upper()} NIfTI file, if acquired")
    pp.add_argument("--output", required=True, metavar="DIR", help="dataset folder to write the case into")
    pp.add_argument("--case", required=True, help="case name (the folder and file-name prefix)")
    pp.add_argument(
        "--reference",
        choices=("t1", "t1ce", "t2", "flair"),
        default=None,
        help="contrast the others are registered to (default: the first given of t1, t1ce, t2, flair)",
    )
    pp.add_argument("--no-register", action="store_true", help="resample by scanner coordinates only")
    pp.add_argument("--overwrite", action="store_true", help="replace the case's existing files")
    return parser


def _run_preprocess(args: argparse.Namespace) -> int:
    import logging

    from monai_msgldm.data.preprocess import preprocess_case

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = {m: getattr(args, m) for m in ("t1", "t1ce", "t2", "flair")}
    written = preprocess_case(
        files, args.output, args.case, reference=args.reference, register=not args.no_register, overwrite=args.overwrite
    )
    print(f"case '{args.case}' written to '{os.path.abspath(args.output)}': {', '.join(sorted(written))}")
    return 0


def _run_phantom(args: argparse.Namespace) -> int:
    from monai_msgldm.data.phantom import generate_phantom_dataset, generate_wmh_phantom_dataset

    generate = generate_wmh_phantom_dataset if args.layout == "wmh" else generate_phantom_dataset
    written = generate(
        args.output,
        num_subjects=args.num_subjects,
        resolution=args.resolution,
        seed=args.seed,
        snr=args.snr,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    names = [os.path.basename(os.path.normpath(c)) for c in written]
    print(f"phantom dataset '{os.path.abspath(args.output)}': {len(names)} subject(s) {', '.join(names)}")
    return 0


def _run_datalist(args: argparse.Namespace) -> int:
    from monai_msgldm.data.datalist import build_datalist, write_datalist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # skipped cases are reported in the summary below
        datalist = build_datalist(
            args.data_root,
            format=args.format,
            val_ratio=args.val_ratio,
            test_ratio=args.test_ratio,
            seed=args.seed,
            require_seg=not args.no_seg,
            check_content=not args.no_content_check,
            skip_invalid=args.skip_invalid,
            allow_incomplete=args.allow_incomplete,
        )
    path = write_datalist(datalist, args.output)
    counts = {k: len(datalist[k]) for k in ("training", "validation", "test")}
    skipped = datalist.get("skipped", [])
    incomplete = datalist.get("incomplete", [])
    print(
        f"wrote '{path}': format {datalist['format']}, {sum(counts.values())} subjects "
        f"(training {counts['training']}, validation {counts['validation']}, test {counts['test']}), "
        f"{len(skipped)} skipped, {len(incomplete)} incomplete"
    )
    for s in skipped:
        print(f"skipped '{s['subject']}': {s['reason']}")
    for s in incomplete:
        print(f"incomplete '{s['subject']}': lacks {', '.join(s['missing'])}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``monai-msgldm-data``; returns the exit code (0 success, 2 expected error).

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv[1:]``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        if args.command == "phantom":
            return _run_phantom(args)
        if args.command == "preprocess":
            return _run_preprocess(args)
        return _run_datalist(args)
    except (ValueError, OSError) as e:  # expected errors: bad input data or arguments, file system problems
        message = " ".join(str(e).split())
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
