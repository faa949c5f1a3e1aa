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
"""Draw ``docs/images/phantom.png``: one axial slice through the tumour of a phantom subject, the four contrasts
and a label overlay. ``python scripts/make_phantom_figure.py [--subject 0] [--resolution 1] [--output PATH]``."""

from __future__ import annotations

import argparse
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from monai_msgldm.constants import BRATS_LABELS_2020, MODALITIES  # noqa: E402
from monai_msgldm.data.phantom import generate_phantom_subject, phantom_case_id, phantom_subject_seed  # noqa: E402

__all__ = ["main"]

_TITLES = {"t1": "T1", "t1ce": "T1CE", "t2": "T2", "flair": "FLAIR"}
_COLOURS = {"necrosis": (0.9, 0.1, 0.1), "edema": (0.1, 0.8, 0.2), "enhancing": (1.0, 0.85, 0.0)}


def _axial(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice in radiological display (patient right on the image left, anterior up) of a RAS volume."""
    return volume[::-1, ::-1, z].T


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "docs", "images", "phantom.png")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", type=int, default=0, help="subject index in the default dataset (seed 0)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--resolution", type=float, default=1.0, help="voxel size in mm (default 1)")
    parser.add_argument("--output", default=default_out, help="PNG path (default docs/images/phantom.png)")
    args = parser.parse_args(argv)

    case = phantom_case_id(args.subject)
    subject = generate_phantom_subject(phantom_subject_seed(args.seed, args.subject), resolution=args.resolution)
    seg = subject["seg"]
    # the axial slice with the largest necrotic core (the ring of enhancement is best seen there)
    z = int(np.argmax((seg == BRATS_LABELS_2020["necrosis"]).sum(axis=(0, 1))))

    fig, axes = plt.subplots(1, 5, figsize=(14, 3.6), facecolor="black")
    for ax, name in zip(axes, MODALITIES):
        vol = subject[name]
        vmax = float(np.percentile(vol[subject["brain_mask"]], 99.5))
        ax.imshow(_axial(vol, z), cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(_TITLES[name], color="white")
    overlay_base = _axial(subject["t1ce"], z)
    axes[4].imshow(overlay_base, cmap="gray", vmin=0, vmax=float(np.percentile(overlay_base, 99.5)))
    lab = _axial(seg, z)
    rgba = np.zeros((*lab.shape, 4))
    for tissue, colour in _COLOURS.items():
        rgba[lab == BRATS_LABELS_2020[tissue]] = (*colour, 0.55)
    axes[4].imshow(rgba, interpolation="nearest")
    axes[4].set_title("labels", color="white")
    axes[4].legend(
        handles=[Patch(color=c, label=f"{BRATS_LABELS_2020[t]} {t}") for t, c in _COLOURS.items()],
        loc="lower right",
        fontsize=7,
        framealpha=0.6,
    )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.02, 0.5, "R", color="white", fontsize=8, transform=ax.transAxes)
    spacing = float(np.abs(subject["affine"][0, 0]))
    fig.suptitle(f"{case} (seed {args.seed}), {spacing:g} mm, axial slice {z}", color="white", fontsize=10)
    fig.tight_layout()

    out = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(out))
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=90, facecolor="black")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
