#!/usr/bin/env bash
# Sets up a virtual environment with monai_msgldm and its dependencies (idempotent, safe to re-run).
#
# torch is pinned through PIP_CONSTRAINT (constraints.txt) so that pip never replaces it: on a CPU-only
# machine with a local CPU wheel this keeps the CPU build; on a GPU machine the same pin installs the
# CUDA build from PyPI. Override the interpreter with PYTHON=..., the venv folder with MSGLDM_VENV=..., the
# extras with MSGLDM_EXTRAS=... (default "dev"; "dev,label" adds MONAI Label, which needs numpy < 2; "onnx" adds ONNX Runtime for the
# encoder at inference).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-python3}"
venv="${MSGLDM_VENV:-$root/.venv}"
export PIP_CONSTRAINT="$root/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export SAM2_BUILD_CUDA=0  # monailabel's SAM2 dependency must not try to build CUDA kernels
extras="${MSGLDM_EXTRAS:-dev}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $venv"
  "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
echo "[setup] installing monai_msgldm[$extras] and its dependencies (torch pinned by constraints.txt) ..."
# (the grep drops pip's notices about index folders this machine's pip.conf names but that do not exist)
"$py" -m pip install -q -e ".[$extras]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$py" -c "import torch, monai, monai_msgldm; print(f'[setup] ok: torch {torch.__version__}, monai {monai.__version__}, monai_msgldm {monai_msgldm.__version__}, cuda={torch.cuda.is_available()}')"
