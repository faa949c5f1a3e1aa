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
"""MONAI Label app for MSG-LDM missing-contrast synthesis.

Start it with ``monailabel start_server --app <this folder> --studies <folder of NIfTI studies>
--conf bundle <path of bundles/brats_mri_msgldm>`` (see docs/monailabel.md). The model is served as
``msgldm``; ``POST /infer/msgldm?image=<study>`` returns the synthesized contrast(s) as NIfTI.
"""

from __future__ import annotations

# must run before anything imports torchvision (monailabel's task modules do)
from monai_msgldm.apps.monailabel.lib.compat import define_torchvision_schemas

define_torchvision_schemas()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from fastapi import HTTPException  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402

from monai_msgldm.apps.monailabel.lib.infers import MSGLDMSynthesisTask  # noqa: E402
from monai_msgldm.apps.monailabel.lib.studies import (  # noqa: E402
    StudyError,
    bundle_modalities,
    resolve_num_samples,
    resolve_study,
    resolve_targets,
)
from monai_msgldm.inferers.case_io import check_case_files  # noqa: E402

logger = logging.getLogger(__name__)

MODEL_NAME = "msgldm"


def default_bundle_path() -> str:
    """``bundles/brats_mri_msgldm`` of the source checkout this package runs from."""
    return str(Path(__file__).resolve().parents[3] / "bundles" / "brats_mri_msgldm")


class MSGLDMApp(MONAILabelApp):
    """Serves the brats_mri_msgldm bundle as the inference model ``msgldm``, for the bundle's contrast set (the
    ``modalities`` list of its ``configs/inference.json``, read once here; by default the BraTS four).

    Configuration (``--conf key value``): ``bundle`` (the bundle folder; default the checkout's
    ``bundles/brats_mri_msgldm``), ``preload`` (load the network at start, default false).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_path = os.path.abspath(conf.get("bundle") or default_bundle_path())
        for required in ("configs/inference.json", "configs/metadata.json", "models/model.pt"):
            if not os.path.isfile(os.path.join(self.bundle_path, required)):
                raise FileNotFoundError(
                    f"MSG-LDM app: the bundle at '{self.bundle_path}' has no {required} "
                    "(give --conf bundle <bundle folder> with a trained models/model.pt)."
                )
        self.modalities = bundle_modalities(self.bundle_path)  # ValueError naming the file when invalid
        # contrasts on different grids are registered by the bundle's preprocessing when its inference.json aligns
        with open(os.path.join(self.bundle_path, "configs", "inference.json")) as f:
            self.same_grid = not bool(json.load(f).get("align", False))
        names = " / ".join(m.upper() for m in self.modalities)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MSG-LDM missing-contrast synthesis",
            description=f"Synthesizes missing {names} contrasts of a brain MRI study with MSG-LDM",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        task = MSGLDMSynthesisTask(self.bundle_path, self.conf, modalities=self.modalities)
        if not task.is_valid():
            raise RuntimeError(f"MSG-LDM app: the bundle at '{self.bundle_path}' could not be loaded.")
        return {MODEL_NAME: task}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """Resolve the study (404 when unknown), the targets (400 when unknown) and ``num_samples`` (400 unless a
        whole number >= 1), and check its files (422 when
        unreadable, with NaN voxels or on different grids) before running the task."""
        if request.get("model") == MODEL_NAME:
            store = datastore if datastore else self.datastore()
            images = {i: store.get_image_uri(i) for i in store.list_images()}
            try:
                study, files = resolve_study(str(request.get("image", "")), images, self.modalities)
                resolve_targets(request.get("target"), list(files), self.modalities)
                if request.get("num_samples") is not None:
                    resolve_num_samples(request["num_samples"])
            except StudyError as e:
                raise HTTPException(status_code=e.status, detail=str(e)) from e
            try:  # readable 3D NIfTI, no NaN (one grid unless the bundle aligns): the bundle's input checks
                check_case_files(files, case_name=study, source=f"study '{study}'", same_grid=self.same_grid)
            except (ValueError, FileNotFoundError, OSError) as e:
                raise HTTPException(status_code=422, detail=str(e)) from e
            request = {**request, "study": study, "study_files": files, "image": next(iter(files.values()))}
        return super().infer(request, datastore)
