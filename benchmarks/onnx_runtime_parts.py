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
"""ONNX Runtime against eager PyTorch on the fixed cost of synthesis, side by side in one process.

``python benchmarks/onnx_runtime_parts.py`` needs the package's ``onnx`` extra (``pip install 'monai_msgldm[onnx]'``:
onnx and onnxruntime, not dependencies of the package itself). It builds the bundle's default stage-2 network
(``train.json``: 192 px slices, random weights), takes ``--batch`` slices with content of a 1 mm phantom volume
(FLAIR missing) and runs each part of the sampling path that runs at image resolution through
:class:`monai_msgldm.inferers.OnnxRuntimeForward`, the code the bundle's ``onnx_runtime`` uses (export with MONAI's
``convert_to_onnx``, every size dynamic; an ONNX Runtime CPU session with ``--threads`` intra-op threads, spinning
off, its memory arena on):

- the autoencoder's encoder and posterior-mean convolution, on the 3 given contrasts of the slices;
- one structure encoder (``F_s`` runs one per given contrast), on one contrast;
- the autoencoder's decoder, on the missing contrast's latent.

Each part is timed eager (``torch.inference_mode``) and in ONNX Runtime, the two in alternation, ``--repeats``
calls each after a warm-up call: medians per slice, the ratio and its range, the seconds of the export and first
call, and the largest absolute difference of the outputs. Prints a table and writes ``onnx_runtime_parts.json`` to
``--output-dir``. A few minutes on 2 CPU cores: not part of CI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, write_json  # noqa: E402
from profile_synthesis import slice_batch  # noqa: E402
from speed import build_network, phantom_volume  # noqa: E402

from monai_msgldm.inferers import OnnxRuntimeForward  # noqa: E402

__all__ = ["main", "part_modules"]

logger = logging.getLogger("onnx_runtime_parts")


class _PosteriorMean(torch.nn.Module):
    """The autoencoder's encoder and posterior-mean convolution: ``(N, 1, H, W) -> (N, latent_channels, h, w)``."""

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.quant_conv_mu(self.autoencoder.encoder(x))


class _Decoder(torch.nn.Module):
    """The autoencoder's decoding of one contrast's latent: ``(N, latent_channels, h, w) -> (N, 1, H, W)``."""

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z)


def part_modules(
    net: torch.nn.Module, images: torch.Tensor, available: torch.Tensor
) -> dict[str, tuple[torch.nn.Module, torch.Tensor, int]]:
    """name -> (module, its input, slices it covers) for each image-resolution part of the sampling path on
    ``images`` ``(B, M, H, W)`` with ``available`` ``(B, M)`` (the same for every slice)."""
    given = torch.nonzero(available[0]).flatten().tolist()
    missing = torch.nonzero(~available[0]).flatten().tolist()
    b = images.shape[0]
    ae = net.autoencoder.model
    contrasts = images[:, given].reshape(b * len(given), 1, *images.shape[2:]).contiguous()
    with torch.inference_mode():
        latents = _PosteriorMean(ae)(images[:, missing[:1]].contiguous())
    return {
        f"encode {len(given)} given contrasts": (_PosteriorMean(ae), contrasts, b),
        "one structure encoder": (net.structure_net.structure_encoders[given[0]], images[:, given[:1]].contiguous(), b),
        "decode missing": (_Decoder(ae), latents.clone(), b),
    }


def _wall_seconds(fn: Callable[..., object], *args: object) -> float:
    """Wall seconds of one call ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--batch",
        type=int,
        default=4,
        help="slices per call (inference.json's image_batch_size before 0.15.0; 1 on the CPU since)",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="ONNX Runtime intra-op threads")
    parser.add_argument("--output-dir", default="outputs/benchmarks/onnx_runtime")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise SystemExit(f"onnx_runtime_parts needs the onnx extra (pip install 'monai_msgldm[onnx]'): {e}") from e

    torch.manual_seed(0)
    net = build_network("msgldm").eval()
    images, available = slice_batch(phantom_volume(), args.batch)
    images = images.as_subclass(torch.Tensor).contiguous()
    rows = {}
    for name, (module, x, slices) in part_modules(net, images, available).items():
        module.eval()
        runtime = OnnxRuntimeForward(module, threads=args.threads)  # what the bundle's onnx_runtime runs
        with torch.inference_mode():
            reference = module(x)
            start = time.perf_counter()
            got = runtime(x)  # the export, then the first call
            first_s = time.perf_counter() - start
            expected = reference if isinstance(reference, list) else [reference]
            got = got if isinstance(got, list) else [got]
            difference = max(float((g - e).abs().max()) for g, e in zip(got, expected))
            eager, in_runtime = [], []
            module(x)  # warm-up
            for _ in range(args.repeats):
                eager.append(_wall_seconds(module, x))
                in_runtime.append(_wall_seconds(runtime, x))
        eager_s, runtime_s = float(np.median(eager)) / slices, float(np.median(in_runtime)) / slices
        ratios = [e / r for e, r in zip(eager, in_runtime)]
        rows[name] = {
            "eager_s_per_slice": eager_s,
            "onnx_runtime_s_per_slice": runtime_s,
            "speedup": eager_s / runtime_s,
            "speedup_range": [min(ratios), max(ratios)],
            "export_and_first_call_seconds": first_s,
            "max_abs_difference": difference,
        }
        logger.info(f"{name}: {rows[name]}")
    result = {
        "device": device_description(),
        "batch": args.batch,
        "threads": args.threads,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "parts": rows,
    }
    print(f"ONNX Runtime {ort.__version__} against eager torch {torch.__version__}, {args.batch} slices per call")
    print(
        "| part | eager s / slice | ONNX Runtime s / slice | speed-up (range) | export + first call s | max abs difference |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        low, high = row["speedup_range"]
        print(
            f"| {name} | {row['eager_s_per_slice']:.3f} | {row['onnx_runtime_s_per_slice']:.3f} | "
            f"{row['speedup']:.2f}x ({low:.2f}-{high:.2f}) | {row['export_and_first_call_seconds']:.1f} | "
            f"{row['max_abs_difference']:.1e} |"
        )
    os.makedirs(args.output_dir, exist_ok=True)
    write_json(os.path.join(args.output_dir, "onnx_runtime_parts.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
