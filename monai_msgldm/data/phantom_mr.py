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
"""MR physics of the phantom: tissue relaxation values, sequence parameters, signal equations and the images.

:func:`phantom_images` turns the tissue fractions of a subject into its four contrasts (bias field, gains and Rician
noise included). All times are in milliseconds, proton density (PD) is relative to pure water, contrast-agent concentrations are in
mmol/L and relaxivities in L/(mmol*s). The values and their sources are listed in ``docs/data.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from monai_msgldm.constants import MODALITIES

__all__ = [
    "PHANTOM_TISSUES",
    "PHANTOM_SEQUENCES",
    "GADOLINIUM_R1",
    "spin_echo_signal",
    "inversion_recovery_signal",
    "csf_nulling_inversion_time",
    "gadolinium_t1",
    "phantom_sequence_signal",
    "jitter_tissues",
    "phantom_images",
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

_NORMAL_TISSUES = ("csf", "gm", "wm")
_GAIN = 1000.0  # signal scale (arbitrary units, like a scanner's receiver gain)

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


def jitter_tissues(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-subject relaxation values: small variations around :data:`PHANTOM_TISSUES` (3 % normal tissue, 8 % tumour).

    Example:
        >>> sorted(jitter_tissues(np.random.default_rng(0))["wm"])
        ['pd', 't1', 't2']
    """
    out = {}
    for name, vals in PHANTOM_TISSUES.items():
        s = 0.03 if name in _NORMAL_TISSUES else 0.08
        out[name] = {
            "t1": vals["t1"] * float(np.exp(rng.normal(0.0, s))),
            "t2": vals["t2"] * float(np.exp(rng.normal(0.0, s))),
            "pd": min(vals["pd"] * float(np.exp(rng.normal(0.0, s / 3))), 1.0),
        }
    return out


def phantom_images(
    fractions: Mapping[str, np.ndarray],
    tissues: Mapping[str, Mapping[str, float]],
    concentration: float,
    texture: np.ndarray,
    bias: np.ndarray,
    gains: np.ndarray,
    snr: float,
    brain_mask: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The four contrasts of a subject from its partial-volume tissue fractions.

    Each voxel's signal is the fraction-weighted sum of its tissues' signals (:func:`phantom_sequence_signal`), with
    smooth heterogeneity inside the tumour tissues (contrast uptake, edema and necrosis relaxation times), a bias field
    (a receive field shared by all contrasts plus a small per-contrast part), a per-contrast gain, Rician noise and 0
    outside the brain (skull-stripped, as BraTS).

    Args:
        fractions: tissue name (keys of :data:`PHANTOM_TISSUES`) -> fraction, float32 ``(X, Y, Z)``.
        tissues: the subject's relaxation values (:func:`jitter_tissues`).
        concentration: mean gadolinium concentration in the enhancing tissue (mmol/L).
        texture: ``(3, X, Y, Z)`` smooth fields of unit variance: enhancement, edema and necrosis heterogeneity.
        bias: ``(1 + len(MODALITIES), X, Y, Z)`` smooth fields of unit variance: shared, then per-contrast bias.
        gains: ``(len(MODALITIES),)`` relative gain of each contrast.
        snr: mean brain signal / noise level of each contrast; ``inf`` for no noise.
        brain_mask: bool ``(X, Y, Z)``.
        rng: draws the noise (two normal fields per contrast, in :data:`~monai_msgldm.constants.MODALITIES` order).

    Returns:
        modality name -> float32 ``(X, Y, Z)``, in :data:`~monai_msgldm.constants.MODALITIES` order.
    """
    conc = concentration * np.exp(0.35 * np.tanh(texture[0]))
    params = {k: dict(v) for k, v in tissues.items()}
    params["edema"]["t2"] = tissues["edema"]["t2"] * np.exp(0.1 * np.tanh(texture[1]))
    params["edema"]["t1"] = tissues["edema"]["t1"] * np.exp(0.06 * np.tanh(texture[1]))
    params["necrosis"]["t2"] = tissues["necrosis"]["t2"] * np.exp(0.1 * np.tanh(texture[2]))
    shape = brain_mask.shape
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(MODALITIES):
        signal = np.zeros(shape, np.float32)
        for tissue, frac in fractions.items():
            p = params[tissue]
            t1 = p["t1"]
            if PHANTOM_SEQUENCES[name]["contrast"] and tissue == "enhancing":
                t1 = gadolinium_t1(t1, conc, GADOLINIUM_R1)
            signal += frac * np.asarray(phantom_sequence_signal(name, p["pd"], t1, p["t2"]), dtype=np.float32)
        signal *= np.exp(0.12 * bias[0] + 0.04 * bias[1 + i]) * (_GAIN * gains[i])
        if math.isfinite(snr):
            sigma = float(signal[brain_mask].mean()) / snr
            real = signal + rng.normal(0.0, sigma, size=shape).astype(np.float32)
            imag = rng.normal(0.0, sigma, size=shape).astype(np.float32)
            signal = np.sqrt(real * real + imag * imag)
        signal[~brain_mask] = 0.0  # skull-stripped, as BraTS
        out[name] = signal.astype(np.float32, copy=False)
    return out
