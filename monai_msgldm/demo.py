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
"""End-to-end smoke run of the whole MSG-LDM path on the built-in phantom.

``python -m monai_msgldm.demo --output outputs/demo`` generates (once, cached) a small phantom data set, builds a
datalist, preprocesses the volumes with the BraTS pipeline, trains a small MSG-LDM briefly stage by stage
(autoencoder, structure/style branch, diffusion UNet), synthesizes the FLAIR of a held-out subject from its T1,
T1CE and T2, and writes a PNG grid (inputs / synthesis / truth / error), loss curves, the synthesized FLAIR as
NIfTI in the subject's original geometry, and metrics. It shows the path works; it is not a trained model (that
is the bundle's job).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import nibabel as nib
import numpy as np
import torch
from monai.data import load_decathlon_datalist
from monai.losses import DiceCELoss
from monai.metrics import PSNRMetric, SSIMMetric
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.transforms import Invertd
from monai.utils import set_determinism
from tqdm import tqdm

from monai_msgldm.constants import MODALITIES
from monai_msgldm.data import build_brats_datalist, write_datalist
from monai_msgldm.data.phantom import ensure_phantom_dataset
from monai_msgldm.inferers import ModalitySynthesisInferer
from monai_msgldm.losses import StructureAwareLoss, StyleConsistencyLoss
from monai_msgldm.networks.nets import MSGLDM, StructureStyleNet
from monai_msgldm.transforms import RandModalityDropout, axial_slice_indices, brats_preprocessing_transforms

__all__ = ["main", "run_demo"]

logger = logging.getLogger("monai_msgldm.demo")


def _small_model(num_modalities: int, seg_channels: int) -> MSGLDM:
    """A small MSG-LDM for 96 px slices: autoencoder factor 4 and structure strides (1, 2, 2) -> 24 x 24 latent."""
    autoencoder = AutoencoderKL(
        spatial_dims=2,
        channels=(16, 32, 32),
        latent_channels=4,
        num_res_blocks=1,
        norm_num_groups=8,
        attention_levels=(False, False, False),
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )
    structure = StructureStyleNet(
        spatial_dims=2,
        num_modalities=num_modalities,
        structure_channels=(16, 32, 64),
        strides=(1, 2, 2),
        style_channels=(16, 32, 32),
        style_dim=8,
        seg_out_channels=seg_channels,
        msse_heads=4,
    )
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=num_modalities * 4 + 64,
        out_channels=num_modalities * 4,
        channels=(64, 64, 128),
        attention_levels=(False, False, True),
        num_res_blocks=1,
        norm_num_groups=16,
        num_head_channels=32,
    )
    return MSGLDM(2, num_modalities, autoencoder=autoencoder, structure_net=structure, unet=unet)


def _load_volumes(items: list[dict], preprocessing) -> list[dict]:
    return [preprocessing(dict(item)) for item in items]


def _brain_slices(volumes: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """All slices with brain of the preprocessed volumes: images (N, M, H, W), segmentations (N, 3, H, W)."""
    images, segs = [], []
    for vol in volumes:
        idx = axial_slice_indices(vol["image"], min_foreground_fraction=0.05)
        images.append(torch.as_tensor(vol["image"])[..., idx].permute(3, 0, 1, 2))
        segs.append(torch.as_tensor(vol["seg"])[..., idx].permute(3, 0, 1, 2))
    return torch.cat(images).float(), torch.cat(segs).float()


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator):
    for _ in range(steps):
        yield torch.as_tensor(rng.choice(n, size=min(batch_size, n), replace=False))


def _train_autoencoder(net: MSGLDM, images: torch.Tensor, steps: int, rng, curves: dict) -> None:
    ae = net.autoencoder.model.train()
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    flat = images.reshape(-1, 1, *images.shape[2:])
    for idx in tqdm(list(_batches(len(flat), 16, steps, rng)), desc="stage 0 autoencoder", leave=False):
        x = flat[idx]
        recon, mu, sigma = ae(x)
        kl = 0.5 * torch.mean(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1)
        loss = torch.nn.functional.l1_loss(recon, x) + 1e-6 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        curves["autoencoder"].append(loss.item())
    ae.eval().requires_grad_(False)


def _train_structure(net: MSGLDM, images, segs, steps: int, rng, curves: dict) -> None:
    model = net.structure_net.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    seg_loss = DiceCELoss(sigmoid=True, lambda_ce=0.5)
    style_loss = StyleConsistencyLoss()
    structure_loss = StructureAwareLoss(spatial_dims=2)
    dropout = RandModalityDropout(max_missing=len(MODALITIES) - 1)
    dropout.set_random_state(int(rng.integers(1 << 31)))
    for idx in tqdm(list(_batches(len(images), 8, steps, rng)), desc="stage 1 structure", leave=False):
        x, s = images[idx], segs[idx]
        available = torch.stack([torch.as_tensor(dropout(img)[1]) for img in x])
        out = model(x, available)
        loss = (
            2.0 * seg_loss(out["segmentation"], s)
            + 0.1 * style_loss(out["style"])
            + structure_loss(out["reconstruction"], x)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        curves["structure"].append(loss.item())
    model.eval().requires_grad_(False)


def _train_diffusion(net: MSGLDM, images, steps: int, rng, curves: dict) -> None:
    net.calibrate_scale_factor(images[: min(32, len(images))])
    opt = torch.optim.AdamW(net.unet.parameters(), lr=5e-4)
    dropout = RandModalityDropout(max_missing=len(MODALITIES) - 1)
    dropout.set_random_state(int(rng.integers(1 << 31)))
    net.unet.train()
    for idx in tqdm(list(_batches(len(images), 16, steps, rng)), desc="stage 2 diffusion", leave=False):
        x = images[idx]
        available = torch.stack([torch.as_tensor(dropout(img)[1]) for img in x])
        loss = net.diffusion_loss(x, available)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curves["diffusion"].append(loss.item())
    net.unet.eval()


def _save_grid(path: str, image: torch.Tensor, synth: torch.Tensor, target: int, slices: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = [m for m in range(image.shape[0]) if m != target]
    cols = [(MODALITIES[m], image[m]) for m in inputs]
    cols += [
        (f"synthesized {MODALITIES[target]}", synth[target]),
        (f"true {MODALITIES[target]}", image[target]),
        ("|error|", (synth[target] - image[target]).abs()),
    ]
    fig, axes = plt.subplots(len(slices), len(cols), figsize=(2.2 * len(cols), 2.2 * len(slices)), squeeze=False)
    for r, k in enumerate(slices):
        for c, (title, vol) in enumerate(cols):
            ax = axes[r][c]
            vmin, vmax = (0.0, 1.0) if title == "|error|" else (-1.0, 1.0)
            ax.imshow(
                np.rot90(vol[..., k].numpy()), cmap="magma" if title == "|error|" else "gray", vmin=vmin, vmax=vmax
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def _save_curves(path: str, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3))
    for ax, (name, values) in zip(axes, curves.items()):
        ax.plot(values)
        ax.set_title(f"stage: {name}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def run_demo(
    output_dir: str = "outputs/demo",
    data_dir: str | None = None,
    num_subjects: int = 4,
    steps: tuple[int, int, int] = (200, 100, 300),
    ddim_steps: int = 20,
    seed: int = 0,
) -> dict:
    """Run the smoke demo; returns the metrics written to ``<output_dir>/metrics.json``."""
    set_determinism(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rng = np.random.default_rng(seed)
    os.makedirs(output_dir, exist_ok=True)
    t0 = time.time()

    root = data_dir or ensure_phantom_dataset(num_subjects=num_subjects, resolution=2.0, seed=seed)
    logger.info("data: %s", root)
    datalist = build_brats_datalist(root, val_ratio=0.0, test_ratio=1.0 / num_subjects, seed=seed)
    datalist_path = os.path.join(output_dir, "datalist.json")
    write_datalist(datalist, datalist_path)
    train_items = load_decathlon_datalist(datalist_path, data_list_key="training", base_dir=root)
    test_items = load_decathlon_datalist(datalist_path, data_list_key="test", base_dir=root)
    preprocessing = brats_preprocessing_transforms(spatial_size=(96, 96))
    train = _load_volumes(train_items, preprocessing)
    images, segs = _brain_slices(train)
    logger.info("training on %d slices from %d subjects", len(images), len(train))

    net = _small_model(len(MODALITIES), segs.shape[1])
    curves: dict[str, list[float]] = {"autoencoder": [], "structure": [], "diffusion": []}
    logger.info("stage 0: autoencoder, %d iterations", steps[0])
    _train_autoencoder(net, images, steps[0], rng, curves)
    logger.info("stage 1: structure/style branch, %d iterations", steps[1])
    _train_structure(net, images, segs, steps[1], rng, curves)
    logger.info("stage 2: diffusion UNet, %d iterations", steps[2])
    _train_diffusion(net, images, steps[2], rng, curves)
    _save_curves(os.path.join(output_dir, "loss_curves.png"), curves)

    target = MODALITIES.index("flair")
    test = preprocessing(dict(test_items[0]))
    image = test["image"]
    available = [m for m in MODALITIES if m != "flair"]
    logger.info("synthesizing flair of %s from %s (%d DDIM steps)", test_items[0]["subject"], available, ddim_steps)
    inferer = ModalitySynthesisInferer(num_inference_steps=ddim_steps, slice_batch_size=32, seed=seed)
    with torch.no_grad():
        synth = inferer(image.unsqueeze(0), net, available=available)[0]

    brain = (image > -1).any(0)
    idx = axial_slice_indices(image, min_foreground_fraction=0.05)
    slices = [idx[len(idx) // 4], idx[len(idx) // 2], idx[3 * len(idx) // 4]]
    _save_grid(os.path.join(output_dir, "synthesis_grid.png"), image.as_tensor(), synth.as_tensor(), target, slices)

    pred = torch.where(brain, synth[target], torch.full_like(synth[target], -1.0)).as_tensor()[None, None]
    truth = image[target].as_tensor()[None, None]
    psnr = float(PSNRMetric(max_val=2.0)(pred, truth).mean())
    ssim = float(SSIMMetric(spatial_dims=3, data_range=2.0)(pred, truth).mean())

    # back to the subject's original geometry (inverse of crop / pad / orientation) and written as NIfTI
    subject = os.path.basename(os.path.normpath(test_items[0]["subject"]))
    test["flair_synth"] = synth[target : target + 1]
    test["flair_synth"].applied_operations = list(image.applied_operations)
    inverted = Invertd(keys="flair_synth", transform=preprocessing, orig_keys="image", nearest_interp=False)(test)
    volume = inverted["flair_synth"]
    nifti_path = os.path.join(output_dir, f"{subject}_flair_synth.nii.gz")
    tmp_nifti = os.path.join(output_dir, f".{subject}_flair_synth.tmp.nii.gz")
    nib.save(
        nib.Nifti1Image(volume[0].numpy().astype(np.float32), np.asarray(volume.affine, dtype=np.float64)), tmp_nifti
    )
    os.replace(tmp_nifti, nifti_path)

    metrics = {
        "subject": subject,
        "synthesized_nifti": nifti_path,
        "target": "flair",
        "available": available,
        "ddim_steps": ddim_steps,
        "psnr_db_volume_brain": round(psnr, 3),
        "ssim_volume": round(ssim, 4),
        "training_iterations": {"autoencoder": steps[0], "structure": steps[1], "diffusion": steps[2]},
        "final_losses": {k: round(float(np.mean(v[-20:])), 5) for k, v in curves.items() if v},
        "seconds": round(time.time() - t0, 1),
    }
    tmp = os.path.join(output_dir, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, os.path.join(output_dir, "metrics.json"))
    logger.info("done in %.0f s: %s", metrics["seconds"], json.dumps(metrics))
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_msgldm.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--data-dir", default=None, help="BraTS-2020-layout folder; default: the built-in phantom")
    parser.add_argument("--num-subjects", type=int, default=4, help="phantom subjects (one is held out)")
    parser.add_argument("--steps", type=int, nargs=3, default=(200, 100, 300), metavar=("AE", "STRUCT", "DIFF"))
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_subjects < 2:
        parser.error(f"--num-subjects must be >= 2 (one is held out), got {args.num_subjects}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    run_demo(args.output, args.data_dir, args.num_subjects, tuple(args.steps), args.ddim_steps, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
