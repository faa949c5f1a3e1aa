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
"""The MONAI Label inference task: synthesize missing contrasts of a study with the brats_mri_msgldm bundle (any
contrast set: the bundle's ``modalities``)."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import SaveImaged

from ..compat import define_torchvision_schemas

define_torchvision_schemas()  # monailabel's task modules import torchvision

from monailabel.interfaces.tasks.infer_v2 import InferType  # noqa: E402
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: E402

from monai_msgldm.inferers.outputs import SaveSynthesizedModalitiesd  # noqa: E402

from ..studies import (  # noqa: E402
    StudyError,
    bundle_modalities,
    check_modalities,
    resolve_num_samples,
    resolve_targets,
)

__all__ = ["MSGLDMSynthesisTask"]

logger = logging.getLogger(__name__)


class MSGLDMSynthesisTask(BundleInferTask):
    """Synthesize missing MRI contrasts of a study with the bundle's ``inference.json`` and ``models/model.pt``.

    The stock ``BundleInferTask`` assumes segmentation; this one differs where image-to-image synthesis needs it:

    - contrasts: the bundle's contrast set (``modalities`` of its ``inference.json``, by default the BraTS four),
      given by the app, which reads it once at start;
    - inputs: the request carries the study's contrast files (``study_files``: modality -> path, set by the app
      from the datastore, see :mod:`..studies`); the bundle's preprocessing loads and stacks them;
    - targets: the request parameter ``target`` (a modality name or a comma-separated list) selects what to
      synthesize; by default every contrast the study lacks. A target the study has is left out of the inputs;
    - restore: the bundle's own ``Invertd`` (linear) brings the synthesis back to the input grid; MONAI Label's
      nearest-neighbour ``Restored`` is not added;
    - output: float32 NIfTI with the affine and header of the study's first input file: 3D for one target,
      4D (``X, Y, Z, K``) for several, in the order given by the result's ``synthesized`` list;
    - uncertainty: the request parameter ``num_samples`` (an integer, default the bundle's ``num_samples``) makes
      the synthesis the mean of that many samples; with more than one, the answer is 4D with each target's
      per-voxel standard deviation after the targets (the result's ``channels`` list names every volume, e.g.
      ``["flair", "flair_std"]``).

    Args:
        path: the bundle folder (with ``configs/inference.json`` and ``models/model.pt``).
        conf: the app's configuration (``--conf`` pairs).
        modalities: the bundle's contrast set in channel order; None (the default) reads it from the bundle with
            :func:`..studies.bundle_modalities`.
        kwargs: further ``BundleInferTask`` arguments.
    """

    def __init__(
        self, path: str, conf: Mapping[str, str], modalities: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        self.modalities = bundle_modalities(path) if modalities is None else check_modalities(modalities)
        super().__init__(
            path,
            dict(conf),
            type=InferType.OTHERS,
            post_filter=[SaveImaged, SaveSynthesizedModalitiesd],
            extend_load_image=False,
            add_post_restore=False,
            load_strict=True,
            **kwargs,
        )
        names = " / ".join(m.upper() for m in self.modalities)
        self.description = f"MSG-LDM: synthesize missing {names} contrasts from the available ones"

    def info(self) -> dict[str, Any]:
        d = super().info()
        d["modalities"] = list(self.modalities)
        d["params"] = {
            "target": "modality name(s), comma-separated; default: every missing one",
            "num_samples": "samples averaged per voxel (int >= 1); more than one adds their std maps to the answer",
        }
        return d

    def __call__(self, request: Mapping[str, Any], callbacks: Any = None):  # type: ignore[override]
        files = request.get("study_files")
        if not isinstance(files, Mapping) or not files:
            raise StudyError("the request carries no study files (use the MSG-LDM app, which resolves them).", 400)
        targets = resolve_targets(request.get("target"), list(files), self.modalities)
        inputs = {m: os.fspath(p) for m, p in files.items() if m not in targets}
        req = dict(request)
        for m in self.modalities:  # only the study's files are inputs
            req.pop(m, None)
        req.update(inputs)
        req["case"] = str(request.get("study", "study"))
        req["synthesize"] = targets
        req["synthesis_inputs"] = list(inputs)
        if request.get("num_samples") is not None:
            req["num_samples"] = resolve_num_samples(request["num_samples"])
        req["image"] = next(iter(inputs.values()))
        return super().__call__(req, callbacks)

    def run_pre_transforms(self, data: dict[str, Any], transforms: Any) -> dict[str, Any]:  # type: ignore[override]
        """MONAI Label's pre-transforms run, with MONAI Label's string items ``image_path``... set aside: MONAI's
        ``Spacingd`` (the working grid) updates every ``image_*`` item with the image's meta data."""
        aside = {k: data.pop(k) for k in list(data) if str(k).startswith("image_") and not isinstance(data[k], dict)}
        out = super().run_pre_transforms(data, transforms)
        out.update(aside)
        return out

    def inferer(self, data: Mapping[str, Any] | None = None):  # type: ignore[override]
        """The bundle's inferer, given the study's availability mask: MONAI Label calls ``inferer(inputs, network)``
        without the batch, so the mask the preprocessing made (``StackModalitiesd`` writes it under ``available``)
        is bound here, as the bundle's evaluator passes it with ``PrepareBatchExtraInput``."""
        inferer = super().inferer(data)
        if data is not None and data.get("num_samples") is not None and hasattr(inferer, "with_samples"):
            inferer = inferer.with_samples(int(data["num_samples"]))
        if data is None or "available" not in data:
            return inferer
        available = torch.as_tensor(data["available"], dtype=torch.bool).reshape(1, -1)
        return functools.partial(inferer, available=available)

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None):  # type: ignore[override]
        targets: Sequence[str] = data["synthesize"]
        folder = tempfile.mkdtemp(prefix="msgldm_label_")
        try:
            saver = SaveSynthesizedModalitiesd(
                "pred",
                output_dir=folder,
                modalities=self.modalities,
                case_key="case",
                preview=False,
                std_key="pred_std",
            )
            written = saver(data)["pred_files"]
            by_name = {
                f"{m}{std}": p
                for p in written
                for m in targets
                for std in ("", "_std")
                if p.endswith(f"_{m}_synth{std}.nii.gz")
            }
            channels = list(targets) + ([f"{m}_std" for m in targets] if "pred_std" in data else [])
            fd, result = tempfile.mkstemp(prefix="msgldm_", suffix=".nii.gz")
            os.close(fd)
            if len(channels) == 1:  # the saver's file (float32, the input's header) is the answer as it is
                os.replace(by_name[channels[0]], result)
                shape = list(nib.load(result).shape)
            else:  # several volumes: one 4D volume, the targets (then their std maps) along the last axis
                images = [nib.load(by_name[m]) for m in channels]
                volume = np.stack([np.asarray(im.dataobj, dtype=np.float32) for im in images], axis=-1)
                out = nib.Nifti1Image(volume, images[0].affine, header=images[0].header)
                out.set_data_dtype(np.float32)
                nib.save(out, result)
                shape = list(volume.shape)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        params = {
            "study": data["case"],
            "synthesized": list(targets),
            "channels": channels,
            "inputs": list(data["synthesis_inputs"]),
            "shape": shape,
            "intensity_range": [-1.0, 1.0],
        }
        return result, params
