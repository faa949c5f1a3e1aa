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
"""MR physics of the phantom: tissue relaxation values, sequence parameters and signal equations.

All times are in milliseconds, proton density (PD) is relative to pure water, contrast-agent concentrations are in
mmol/L and relaxivities in L/(mmol*s). The values and their sources are listed in ``docs/data.md``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "PHANTOM_TISSUES",
    "PHANTOM_SEQUENCES",
    "GADOLINIUM_R1",
    "spin_echo_signal",
    "inversion_recovery_signal",
    "csf_nulling_inversion_time",
    "gadolinium_t1",
    "phantom_sequence_signal",
]

#: Relaxation values per tissue at 1.5 T: ``{"t1": ms, "t2": ms, "pd": relative}``. CSF, grey matter (GM) and white
#: matter (WM) are the BrainWeb values; the tumour tissues are chosen within the ranges reported at 1.5 T for
#: vasogenic edema, fluid-filled necrosis and viable (enhancing) glioma tissue (see ``docs/data.md``).
PHANTOM_TISSUES: dict[str, dict[str, float]] = {
    "csf": {"t1": 2569.0, "t2": 329.0, "pd": 1.0},
    "gm": {"t1": 833.0, "t2": 83.0, "pd": 0.86},
    "wm": {"t1": 500.0, "t2": 70.0, "pd": 0.77},
    "necrosis": {"t1": 1900.0, "t2": 260.0, "pd": 0.95},
    "edema": {"t1": 1100.0, "t2": 160.0, "pd": 0.90},
    "enhancing": {"t1": 1000.0, "t2": 110.0, "pd": 0.88},
}

#: T1 relaxivity of gadobutrol in human plasma at 1.5 T, 37 degC, L/(mmol*s) (Szomolanyi et al. 2019).
GADOLINIUM_R1: float = 4.78


def csf_nulling_inversion_time(t1: float, tr: float) -> float:
    """Inversion time that nulls a tissue of longitudinal relaxation ``t1`` in an inversion-recovery sequence.

    Solves ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``: ``TI = T1 ln(2 / (1 + exp(-TR/T1)))``, which tends to
    ``T1 ln 2`` when ``TR >> T1``.

    Args:
        t1: longitudinal relaxation time of the tissue to null (ms), > 0.
        tr: repetition time (ms), > 0.

    Example:
        >>> round(csf_nulling_inversion_time(2569.0, 9000.0))
        1705
    """
    if not t1 > 0:
        raise ValueError(f"csf_nulling_inversion_time expects t1 > 0 (ms), got {t1!r}.")
    if not tr > 0:
        raise ValueError(f"csf_nulling_inversion_time expects tr > 0 (ms), got {tr!r}.")
    return float(t1 * math.log(2.0 / (1.0 + math.exp(-tr / t1))))


#: The four acquisitions (1.5 T). ``"se"``: spin echo; ``"ir"``: inversion recovery (FLAIR, TI nulls CSF);
#: ``"contrast": True``: acquired after gadolinium injection (T1 of enhancing tissue shortened).
PHANTOM_SEQUENCES: dict[str, dict] = {
    "t1": {"kind": "se", "tr": 500.0, "te": 10.0, "contrast": False},
    "t1ce": {"kind": "se", "tr": 500.0, "te": 10.0, "contrast": True},
    "t2": {"kind": "se", "tr": 4000.0, "te": 100.0, "contrast": False},
    "flair": {
        "kind": "ir",
        "tr": 9000.0,
        "te": 100.0,
        "ti": csf_nulling_inversion_time(PHANTOM_TISSUES["csf"]["t1"], 9000.0),
        "contrast": False,
    },
}


def spin_echo_signal(pd, t1, t2, tr: float, te: float):
    """Spin-echo magnitude ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``.

    Args:
        pd: proton density (scalar or array).
        t1: longitudinal relaxation time in ms (scalar or array, broadcastable with ``pd``).
        t2: transverse relaxation time in ms (scalar or array).
        tr: repetition time (ms).
        te: echo time (ms).

    Returns:
        the signal, broadcast shape of the inputs.

    Example:
        >>> round(float(spin_echo_signal(0.77, 500.0, 70.0, tr=500.0, te=10.0)), 4)
        0.4218
    """
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery_signal(pd, t1, t2, tr: float, te: float, ti: float):
    """Inversion-recovery magnitude ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``.

    Args:
        pd: proton density (scalar or array).
        t1: longitudinal relaxation time in ms (scalar or array).
        t2: transverse relaxation time in ms (scalar or array).
        tr: repetition time (ms).
        te: echo time (ms).
        ti: inversion time (ms).

    Returns:
        the (non-negative) magnitude signal, broadcast shape of the inputs.

    Example:
        >>> ti = csf_nulling_inversion_time(2569.0, 9000.0)
        >>> float(inversion_recovery_signal(1.0, 2569.0, 329.0, tr=9000.0, te=100.0, ti=ti)) < 1e-12
        True
    """
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def gadolinium_t1(t1, concentration, r1: float = GADOLINIUM_R1):
    """T1 after contrast uptake, ``1/T1' = 1/T1 + r1 C``.

    Args:
        t1: native T1 (ms), scalar or array.
        concentration: tissue concentration of the agent (mmol/L), scalar or array, >= 0.
        r1: relaxivity in L/(mmol*s); converted to per-ms internally.

    Example:
        >>> round(float(gadolinium_t1(1000.0, 0.35)))
        374
    """
    return 1.0 / (1.0 / t1 + r1 * 1e-3 * concentration)


def phantom_sequence_signal(name: str, pd, t1, t2):
    """Signal of the phantom acquisition ``name`` (a key of :data:`PHANTOM_SEQUENCES`) for the given tissue values.

    The post-contrast T1 shortening is not applied here: pass the already shortened ``t1`` for ``"t1ce"``.

    Example:
        >>> s_wm = phantom_sequence_signal("t2", 0.77, 500.0, 70.0)
        >>> s_csf = phantom_sequence_signal("t2", 1.0, 2569.0, 329.0)
        >>> bool(s_csf > s_wm)
        True
    """
    if name not in PHANTOM_SEQUENCES:
        raise ValueError(f"phantom_sequence_signal expects name in {tuple(PHANTOM_SEQUENCES)}, got {name!r}.")
    seq = PHANTOM_SEQUENCES[name]
    if seq["kind"] == "ir":
        return inversion_recovery_signal(pd, t1, t2, tr=seq["tr"], te=seq["te"], ti=seq["ti"])
    return spin_echo_signal(pd, t1, t2, tr=seq["tr"], te=seq["te"])
