#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the bundle demo end to end on the built-in phantom: the three
# training stages (train.json + demo.json overlay), synthesis of the held-out subject's FLAIR and the 3->1 evaluation.
# Outputs land in outputs/demo/ (models/, loss_curves.png, synthesis/<case>/ NIfTI + preview, evaluation/ metrics
# and PNG grids). Extra arguments go to `python -m monai.bundle run` (e.g. --demo_dir /tmp/demo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
bundle="$root/bundles/brats_mri_msgldm"
exec "${MSGLDM_VENV:-$root/.venv}/bin/python" -m monai.bundle run training \
    --meta_file "$bundle/configs/metadata.json" \
    --config_file "['$bundle/configs/train.json','$bundle/configs/demo.json']" \
    --logging_file "$bundle/configs/logging.conf" \
    --bundle_root "$bundle" "$@"
