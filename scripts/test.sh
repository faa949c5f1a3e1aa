#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh, with the dev, label and onnx extras: the MONAI Label app is tested against a
# real server, the ONNX Runtime encoder against PyTorch) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MSGLDM_EXTRAS="${MSGLDM_EXTRAS:-dev,label,onnx}" bash "$root/scripts/setup.sh"
cd "$root"
# two workers (pytest-xdist), one test file each at a time: the tests run one torch thread each (tests/conftest.py),
# so two files in parallel use both cores of a 2-core machine
exec "${MSGLDM_VENV:-$root/.venv}/bin/python" -m pytest tests -q -n "${MSGLDM_TEST_WORKERS:-2}" --dist loadfile "$@"
