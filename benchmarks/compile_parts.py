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
"""``torch.compile`` against eager on the fixed cost of synthesis, side by side in one process.

``python benchmarks/compile_parts.py`` builds the bundle's default stage-2 network (``train.json``: 192 px slices,
random weights), takes ``--batch`` slices with content of a 1 mm phantom volume (FLAIR missing) and times, per part
of the sampling path that runs at image resolution (the given contrasts' encoding, the structure condition ``F_s``,
the decoding of the missing contrast):

- eager (``torch.inference_mode``), median of ``--repeats`` calls after a warm-up call;
- the same after ``nn.Module.compile`` (inductor) of the autoencoder's encoder and decoder and the structure
  encoders (the state dict keeps its keys), with ``--dynamic`` shapes or not and, with ``--freezing``, inductor's
  weight freezing: the seconds of the first calls (compilation), then the median;
- the largest absolute difference of the compiled parts' outputs from eager.

Prints a table and writes ``compile_parts.json`` to ``--output-dir``. A few minutes on 2 CPU cores: not part of CI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, write_json  # noqa: E402
from profile_synthesis import _seconds, slice_batch  # noqa: E402
from speed import build_network, phantom_volume  # noqa: E402

__all__ = ["main", "part_calls"]

logger = logging.getLogger("compile_parts")


def part_calls(net: torch.nn.Module, images: torch.Tensor, available: torch.Tensor) -> dict:
    """name -> zero-argument call of each image-resolution part of the sampling path on ``images`` ``(B, M, H, W)``."""
    missing = torch.nonzero(~available.all(dim=0)).flatten().tolist()
    latents = net.given_latents(images, available)
    return {
        "encode given contrasts": lambda: net.given_latents(images, available),
        "structure F_s": lambda: net.encode_structure(images, available),
        "decode missing": lambda: net.decode(latents, modalities=missing),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--batch",
        type=int,
        default=4,
        help="slices per call (inference.json's image_batch_size before 0.15.0; 1 on the CPU since)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=True)")
    parser.add_argument("--freezing", action="store_true", help="inductor's weight freezing (no_grad calls)")
    parser.add_argument("--output-dir", default="outputs/benchmarks/compile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    torch.manual_seed(0)
    net = build_network("msgldm")
    images, available = slice_batch(phantom_volume(), args.batch)
    images = images.as_subclass(torch.Tensor).contiguous()  # torch.compile does not trace MetaTensor
    with torch.inference_mode():
        eager = {
            name: _seconds(fn, args.repeats) / args.batch for name, fn in part_calls(net, images, available).items()
        }
        reference = {name: fn().clone() for name, fn in part_calls(net, images, available).items()}
    if args.freezing:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    keys = list(net.state_dict())
    ae = net.autoencoder.model
    for module in (ae.encoder, ae.decoder, *net.structure_net.structure_encoders):
        module.compile(dynamic=args.dynamic)
    if list(net.state_dict()) != keys:
        raise RuntimeError("compile_parts: nn.Module.compile changed the state dict keys.")
    # freezing needs no_grad rather than inference_mode
    context = torch.no_grad if args.freezing else torch.inference_mode
    with context():
        start = time.perf_counter()
        outputs = {name: fn() for name, fn in part_calls(net, images, available).items()}
        first = time.perf_counter() - start
        compiled = {
            name: _seconds(fn, args.repeats) / args.batch for name, fn in part_calls(net, images, available).items()
        }
    rows = {
        name: {
            "eager_s_per_slice": eager[name],
            "compiled_s_per_slice": compiled[name],
            "speedup": eager[name] / compiled[name],
            "max_abs_difference": float((outputs[name] - reference[name]).abs().max()),
        }
        for name in eager
    }
    result = {
        "device": device_description(),
        "batch": args.batch,
        "dynamic": args.dynamic,
        "freezing": args.freezing,
        "first_calls_seconds": first,
        "parts": rows,
    }
    print(f"torch.compile (dynamic={args.dynamic}, freezing={args.freezing}), {args.batch} slices per call")
    print(f"first calls (compilation): {first:.1f} s")
    print("| part | eager s / slice | compiled s / slice | speed-up | max abs difference |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['eager_s_per_slice']:.3f} | {row['compiled_s_per_slice']:.3f} | {row['speedup']:.2f}x | "
            f"{row['max_abs_difference']:.1e} |"
        )
    os.makedirs(args.output_dir, exist_ok=True)
    write_json(os.path.join(args.output_dir, "compile_parts.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
