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
from collections.abc import Mapping, Sequence

import numpy as np

from monai_msgldm.constants import MODALITIES

__all__ = [
    "PHANTOM_TISSUES",
    "PHANTOM_WMH_TISSUES",
    "PHANTOM_SEQUENCES",
    "GADOLINIUM_R1",
    "spin_echo_signal",
    "inversion_recovery_signal",
    "csf_nulling_inversion_time",
    "gadolinium_t1",
    "phantom_sequence_signal",
    "jitter_tissues",
    "phantom_contrast_images",
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

#: Small-vessel-disease tissues of the WMH phantom (1.5 T), kept apart from :data:`PHANTOM_TISSUES` so that the
#: draws of the tumour phantom do not change. ``"wmh"``: a white-matter hyperintensity (demyelination, gliosis and
#: raised interstitial water: T1 and T2 about 1.6 and 1.7 times those of white matter, PD +8 %; a milder change
#: than vasogenic edema), bright on T2 / FLAIR and mildly dark on T1. ``"lacune"``: the fluid-filled cavity of an old
#: lacunar infarct, close to CSF (dark on T1 and FLAIR).
PHANTOM_WMH_TISSUES: dict[str, dict[str, float]] = {
    "wmh": {"t1": 800.0, "t2": 120.0, "pd": 0.83},
    "lacune": {"t1": 2400.0, "t2": 300.0, "pd": 0.97},
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
        0.4219
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


def jitter_tissues(
    rng: np.random.Generator, table: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, dict[str, float]]:
    """Per-subject relaxation values: small log-normal variations around ``table`` (3 % for the normal tissues CSF,
    GM and WM, 8 % for the lesions; PD a third of that, at most 1).

    Args:
        rng: draws three normal numbers per tissue, in the order of ``table``.
        table: tissue name -> ``{"t1", "t2", "pd"}``; None for :data:`PHANTOM_TISSUES`.

    Example:
        >>> sorted(jitter_tissues(np.random.default_rng(0))["wm"])
        ['pd', 't1', 't2']
    """
    out = {}
    for name, vals in (PHANTOM_TISSUES if table is None else table).items():
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
    return phantom_contrast_images(fractions, params, MODALITIES, bias, gains, snr, brain_mask, rng, concentration=conc)


def phantom_contrast_images(
    fractions: Mapping[str, np.ndarray],
    params: Mapping[str, Mapping],
    modalities: Sequence[str],
    bias: np.ndarray,
    gains: np.ndarray,
    snr: float,
    brain_mask: np.ndarray,
    rng: np.random.Generator,
    concentration=None,
) -> dict[str, np.ndarray]:
    """The contrasts ``modalities`` of a subject from its partial-volume tissue fractions and relaxation values.

    Each voxel's signal is the fraction-weighted sum of its tissues' signals (:func:`phantom_sequence_signal`),
    times a bias field (a receive field shared by all contrasts plus a small per-contrast part) and a per-contrast
    gain; then Rician noise, and 0 outside the brain (skull-stripped). This is the acquisition step shared by the
    tumour phantom (:func:`phantom_images`) and the WMH phantom.

    Args:
        fractions: tissue name (a key of ``params``) -> fraction, float32 ``(X, Y, Z)``.
        params: tissue name -> ``{"t1", "t2", "pd"}``, scalars or arrays broadcastable to ``(X, Y, Z)``.
        modalities: keys of :data:`PHANTOM_SEQUENCES`, in output (and noise-drawing) order.
        bias: ``(1 + len(modalities), X, Y, Z)`` smooth fields of unit variance: shared, then per-contrast bias.
        gains: ``(len(modalities),)`` relative gain of each contrast.
        snr: mean brain signal / noise level of each contrast; ``inf`` for no noise.
        brain_mask: bool ``(X, Y, Z)``.
        rng: draws the noise (two normal fields per contrast, in ``modalities`` order).
        concentration: gadolinium concentration (mmol/L, scalar or ``(X, Y, Z)``) of the ``"enhancing"`` tissue in
            post-contrast acquisitions; needed only when such an acquisition and that tissue are present.

    Returns:
        modality name -> float32 ``(X, Y, Z)``, in ``modalities`` order.

    Example:
        >>> frac = {"wm": np.ones((4, 4, 4), np.float32)}
        >>> images = phantom_contrast_images(frac, {"wm": PHANTOM_TISSUES["wm"]}, ("flair", "t1"),
        ...     np.zeros((3, 4, 4, 4)), np.ones(2), float("inf"), np.ones((4, 4, 4), bool), np.random.default_rng(0))
        >>> round(float(images["t1"][0, 0, 0]), 1)
        421.9
    """
    caller = "phantom_contrast_images"
    unknown = [m for m in modalities if m not in PHANTOM_SEQUENCES]
    if unknown:
        raise ValueError(f"{caller} expects modalities among {tuple(PHANTOM_SEQUENCES)}, got {list(modalities)}.")
    missing = sorted(set(fractions) - set(params))
    if missing:
        raise ValueError(f"{caller} expects params for every tissue of fractions, missing {missing}.")
    shape = brain_mask.shape
    if np.shape(bias) != (1 + len(modalities), *shape):
        raise ValueError(f"{caller} expects bias of shape {(1 + len(modalities), *shape)}, got {np.shape(bias)}.")
    if np.shape(gains) != (len(modalities),):
        raise ValueError(f"{caller} expects gains of shape {(len(modalities),)}, got {np.shape(gains)}.")
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(modalities):
        signal = np.zeros(shape, np.float32)
        for tissue, frac in fractions.items():
            p = params[tissue]
            t1 = p["t1"]
            if PHANTOM_SEQUENCES[name]["contrast"] and tissue == "enhancing":
                if concentration is None:
                    raise ValueError(f"{caller} expects a concentration for the enhancing tissue in '{name}'.")
                t1 = gadolinium_t1(t1, concentration, GADOLINIUM_R1)
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
