#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh, with the dev and label extras: the MONAI Label app is tested against a real
# server) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MSGLDM_EXTRAS="${MSGLDM_EXTRAS:-dev,label}" bash "$root/scripts/setup.sh"
cd "$root"
exec "${MSGLDM_VENV:-$root/.venv}/bin/python" -m pytest tests -q "$@"
