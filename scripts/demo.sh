#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the end-to-end demo on the built-in phantom.
# Outputs land in outputs/demo/ (PNG grid, loss curves, synthesized NIfTI, metrics.json). Extra arguments go
# to `python -m monai_msgldm.demo` (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "${MSGLDM_VENV:-$root/.venv}/bin/python" -m monai_msgldm.demo "$@"
