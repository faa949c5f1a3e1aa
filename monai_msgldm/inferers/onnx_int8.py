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
"""8-bit integer convolutions in ONNX Runtime for the image-resolution parts of synthesis (the optional ``onnx`` extra).

On the CPU the fixed cost of synthesis is convolution at image resolution: the autoencoder's encoder of the given
contrasts, their structure encoders and the decoder of the missing contrast (docs/benchmarks.md). ONNX Runtime's static
quantization runs those convolutions in 8-bit integers (VNNI on recent x86 CPUs). Weights are quantized per output
channel; each activation's range is the least and largest value it takes on calibration inputs, so the ranges must come
from data like what is synthesized: :func:`with_onnx_runtime_int8` takes evenly spaced slices with content of a
preprocessed case (the bundle's ``onnx_int8.json`` overlay uses the first case of its run). Calibrated on too little
content (e.g. the few lowest slices of a head), the ranges clip the brain's activations and the synthesis loses
about 2 dB (docs/benchmarks.md).

The weights stay those of the PyTorch modules: only their ``forward`` is replaced (:class:`OnnxRuntimeForward`), the
graph is exported and quantized on its first call without gradients and again when the weights change, so the bundle
loads its one checkpoint as before.

Calibrating, exporting and quantizing costs about 11 s per run at the default size on 2 CPU cores, and makes a case's
synthesis depend on which case came first in its run. :func:`save_int8_graphs` does it once, on several cases, and
writes the quantized graphs beside the checkpoint (the bundle's ``export_int8.json``, as the model zoo exports
TensorRT engines); :func:`with_onnx_runtime_int8` then runs them (``graph_dir``), after checking that each was saved
from the weights it replaces.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from monai_msgldm.inferers.naming import CASE_KEY
from monai_msgldm.inferers.onnx_runtime import OnnxRuntimeForward, _autoencoder_model
from monai_msgldm.inferers.sampler import unwrap_network
from monai_msgldm.utils.files import atomic_write_text

__all__ = [
    "quantize_onnx_int8",
    "calibration_slices",
    "DecoderCalibration",
    "with_onnx_runtime_int8",
    "save_int8_graphs",
    "saved_int8_graphs",
]

logger = logging.getLogger(__name__)

#: the manifest :func:`save_int8_graphs` writes in its folder: the parts' files and what they were calibrated on
INT8_MANIFEST = "int8_graphs.json"

#: calibration inputs per ONNX Runtime run of the calibrator; the ranges span all of them. One at a time: the
#: calibrator's session grows its memory arena to its largest run (at 192 px, 4 at a time took the encoder's
#: calibration 1.3 GiB above the process, one 0.1 GiB; docs/benchmarks.md) and takes no longer in all
CALIBRATION_BATCH = 1


def quantize_onnx_int8(model: bytes, calibration: torch.Tensor) -> bytes:
    """ONNX Runtime's static quantization of the convolutions of ``model`` (a serialized float32 ONNX model with one
    input): QDQ format, int8 weights per output channel, uint8 activations with min-max ranges over ``calibration``.

    Args:
        model: the serialized model (``onnx.ModelProto.SerializeToString()``).
        calibration: ``(N, C, *S)`` float inputs of the model, N >= 1, run in batches of :data:`CALIBRATION_BATCH`.

    Returns:
        the serialized quantized model.

    Raises:
        ValueError: ``calibration`` is not a finite float tensor with a batch of at least one item.
    """
    if not isinstance(calibration, torch.Tensor) or not calibration.is_floating_point() or calibration.ndim < 2:
        raise ValueError(
            "quantize_onnx_int8 expects calibration to be a float tensor (N, C, *S) of the model's inputs, got "
            f"{type(calibration).__name__} {getattr(calibration, 'shape', '')}."
        )
    if calibration.shape[0] < 1 or not bool(torch.isfinite(calibration).all()):
        raise ValueError(
            f"quantize_onnx_int8 expects at least one finite calibration input, got shape {tuple(calibration.shape)}."
        )
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load_from_string(model).graph.input[0].name
    data = calibration.detach().as_subclass(torch.Tensor).to("cpu", torch.float32).contiguous().numpy()

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(range(0, len(data), CALIBRATION_BATCH))

        def get_next(self) -> dict | None:
            start = next(self._batches, None)
            return None if start is None else {name: data[start : start + CALIBRATION_BATCH]}

    quiet = logging.getLogger().level
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"{stem}.onnx") for stem in ("float", "prepared", "int8")]
        with open(paths[0], "wb") as f:
            f.write(model)
        try:
            logging.getLogger().setLevel(max(quiet, logging.WARNING))  # the quantizer's notices at INFO
            quant_pre_process(paths[0], paths[1], skip_symbolic_shape=True)
            quantize_static(
                paths[1],
                paths[2],
                _Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv"],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        finally:
            logging.getLogger().setLevel(quiet)
        with open(paths[2], "rb") as f:
            return f.read()


def calibration_slices(
    images: torch.Tensor, available: torch.Tensor | Sequence[bool], num_slices: int = 4, slice_axis: int = -1
) -> torch.Tensor:
    """``num_slices`` evenly spaced slices of a volume among those where a given contrast has content (some voxel
    above its least value over the slice), from the first to the last: ``(M, X, Y, Z) -> (K, M, *S)``, ``K =
    min(num_slices, slices with content)``, ``S`` the two other spatial sizes.

    Args:
        images: ``(M, X, Y, Z)``, one preprocessed case (channels the contrasts).
        available: ``(M,)`` bool, the given contrasts.
        num_slices: slices to take, >= 1.
        slice_axis: the spatial axis the 2D model slices along (0, 1, 2 or negative).

    Raises:
        ValueError: bad shapes, no given contrast, no slice with content, or ``num_slices`` < 1.
    """
    if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
        raise ValueError(f"calibration_slices expects num_slices to be an int >= 1, got {num_slices!r}.")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"calibration_slices expects images of shape (M, X, Y, Z), got {tuple(getattr(images, 'shape', ()))}."
        )
    given = torch.as_tensor(available, dtype=torch.bool).flatten().cpu()
    if given.numel() != images.shape[0] or not bool(given.any()):
        raise ValueError(
            f"calibration_slices expects available to be {images.shape[0]} bools with at least one True, got "
            f"{given.tolist()}."
        )
    if not -3 <= slice_axis <= 2:
        raise ValueError(f"calibration_slices expects slice_axis in [-3, 2], got {slice_axis}.")
    slices = images.as_subclass(torch.Tensor).detach().movedim(1 + slice_axis % 3, 0).float().cpu()  # (N, M, *S)
    flat = slices[:, given].flatten(2)
    content = torch.nonzero((flat.amax(dim=-1) > flat.amin(dim=-1)).any(dim=1)).flatten()
    if content.numel() == 0:
        raise ValueError("calibration_slices found no slice where a given contrast has content.")
    picks = torch.linspace(0, content.numel() - 1, min(num_slices, content.numel())).round().long()
    return slices[content[picks]].contiguous()


class DecoderCalibration:
    """The calibration inputs of an autoencoder's decoder: the posterior means of ``contrasts`` with the autoencoder's
    weights at the time of the call (each export), computed in PyTorch, :data:`CALIBRATION_BATCH` at a time.

    A callable object rather than a closure, so that a copy (``copy.deepcopy``) or a pickle of the network calibrates
    its decoder with its own autoencoder.

    Args:
        autoencoder: a MONAI ``AutoencoderKL`` (``encoder``, ``quant_conv_mu``, ``post_quant_conv``).
        contrasts: ``(N, C, *S)`` images, the encoder's inputs.
    """

    def __init__(self, autoencoder: nn.Module, contrasts: torch.Tensor) -> None:
        self.autoencoder = autoencoder
        self.contrasts = contrasts

    def __call__(self) -> torch.Tensor:
        ae = self.autoencoder
        with torch.no_grad():
            return torch.cat(
                [
                    ae.post_quant_conv(ae.quant_conv_mu(type(ae.encoder).forward(ae.encoder, batch)))
                    for batch in self.contrasts.split(CALIBRATION_BATCH)
                ]
            )


def _int8_parts(network: nn.Module, caller: str) -> dict[str, nn.Module]:
    """The modules run with 8-bit convolutions, by the name of their saved graph: the autoencoder's ``encoder`` and
    ``decoder`` and, for MSG-LDM, ``structure_encoder_<m>`` for each contrast index ``m``."""
    autoencoder = _autoencoder_model(network, caller)
    parts = {"encoder": autoencoder.encoder, "decoder": autoencoder.decoder}
    structure_net = getattr(network, "structure_net", None)
    if structure_net is not None:
        parts.update({f"structure_encoder_{m}": e for m, e in enumerate(structure_net.structure_encoders)})
    return parts


def _case_calibration_inputs(
    network: nn.Module, parts: Mapping[str, nn.Module], slices: torch.Tensor, given: Sequence[int]
) -> dict[str, torch.Tensor]:
    """The calibration inputs one case's :func:`calibration_slices` ``(K, M, *S)`` gives each part that reads it, by
    part name: the encoder its given contrasts ``(K * G, 1, *S)``, each given contrast's structure encoder that
    contrast's channels (the decoder's come from the encoder's, :class:`DecoderCalibration`)."""
    inputs = {"encoder": slices[:, list(given)].reshape(-1, 1, *slices.shape[2:]).contiguous()}
    if "structure_encoder_0" in parts:
        c = int(network.structure_net.in_channels)
        inputs.update({f"structure_encoder_{m}": slices[:, m * c : (m + 1) * c].contiguous() for m in given})
    return inputs


def saved_int8_graphs(graph_dir: str | os.PathLike | None) -> dict | None:
    """The manifest of the graphs :func:`save_int8_graphs` wrote in ``graph_dir`` (``int8_graphs.json``), or None
    when there is none (``graph_dir`` None, missing, or without a manifest)."""
    if graph_dir is None:
        return None
    path = os.path.join(os.fspath(graph_dir), INT8_MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), dict):
        raise ValueError(f"{path} is not a manifest of int8 graphs (no 'parts' mapping); save the graphs again.")
    return manifest


def with_onnx_runtime_int8(
    network: nn.Module,
    images: torch.Tensor | None = None,
    available: torch.Tensor | Sequence[bool] | None = None,
    num_slices: int = 4,
    threads: int | None = None,
    memory_arena: bool = False,
    graph_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """``network`` with the image-resolution parts of synthesis run in ONNX Runtime with 8-bit convolutions
    (:func:`quantize_onnx_int8`): the autoencoder's encoder, its decoder and, for MSG-LDM, the structure encoders of
    the given contrasts. Anything that needs PyTorch (gradients, training, CUDA, autocast) runs it
    (:class:`OnnxRuntimeForward`); the state dict and checkpoint loading are unchanged.

    The graphs come from one of two places:

    - ``graph_dir`` holding graphs saved by :func:`save_int8_graphs` (its manifest ``int8_graphs.json``): they are
      run as saved (``images`` and ``available`` are not needed), each after checking, at its first call, that it was
      saved from the weights it replaces (a ``ValueError`` names the file otherwise);
    - otherwise each part is exported and quantized at its first call, calibrated on :func:`calibration_slices` of
      ``images``: the encoder on its given contrasts, the decoder on their posterior means (computed with the weights
      of the export), each given contrast's structure encoder on that contrast. Other contrasts' structure encoders
      stay in PyTorch.

    Args:
        network: a latent diffusion network (``MSGLDM``, ``PlainConditionalLDM``), possibly DDP-wrapped.
        images: ``(M, X, Y, Z)``, a case preprocessed as for synthesis (the bundle's ``dataset[0]["image"]``); needed
            unless ``graph_dir`` holds saved graphs.
        available: ``(M,)`` bool, its given contrasts.
        num_slices: calibration slices (:func:`calibration_slices`).
        threads: see :class:`OnnxRuntimeForward`.
        memory_arena: ONNX Runtime's memory arena in the sessions (:class:`OnnxRuntimeForward`). Off by default:
            on a default-size volume on 2 CPU cores it made synthesis 1.08x faster for a peak of 1.93 GiB instead of
            1.78 (docs/benchmarks.md, 0.15.0).
        graph_dir: a folder where :func:`save_int8_graphs` may have saved the graphs; None: calibrate on ``images``.

    Raises:
        ValueError: ``network`` has no autoencoder, the manifest names a part it lacks, or bad ``images`` /
            ``available`` / ``num_slices`` (or none given without saved graphs).
        ImportError: onnx or onnxruntime is not installed.
    """
    inner = unwrap_network(network)
    parts = _int8_parts(inner, "with_onnx_runtime_int8")
    manifest = saved_int8_graphs(graph_dir)
    if manifest is not None:
        unknown = sorted(set(manifest["parts"]) - set(parts))
        if unknown:
            raise ValueError(
                f"with_onnx_runtime_int8: the int8 graphs in {graph_dir} are for parts this "
                f"{type(inner).__name__} does not have ({unknown}); save them again for this network."
            )
        for name, file in manifest["parts"].items():
            module = parts[name]
            path = os.path.join(os.fspath(graph_dir), file)
            module.forward = OnnxRuntimeForward(module, threads, memory_arena, graph_file=path)
        logger.info(f"8-bit graphs saved in {graph_dir}: {', '.join(manifest['parts'])}.")
        return network
    if images is None or available is None:
        raise ValueError(
            "with_onnx_runtime_int8 needs images and available (a case to calibrate on) when no graphs were saved "
            f"by save_int8_graphs in graph_dir ({graph_dir})."
        )
    autoencoder = _autoencoder_model(inner, "with_onnx_runtime_int8")
    slices = calibration_slices(images, available, num_slices)  # (K, M, *S)
    given = torch.nonzero(torch.as_tensor(available, dtype=torch.bool).flatten().cpu()).flatten().tolist()
    calibration: dict[str, object] = dict(_case_calibration_inputs(inner, parts, slices, given))
    calibration["decoder"] = DecoderCalibration(autoencoder, calibration["encoder"])
    for name, inputs in calibration.items():
        parts[name].forward = OnnxRuntimeForward(parts[name], threads, memory_arena, int8_calibration=inputs)
    if graph_dir is not None:
        logger.info(f"no 8-bit graphs saved in {graph_dir}: calibrating on the run's first case.")
    return network


def save_int8_graphs(
    network: nn.Module,
    cases: Sequence[Mapping],
    graph_dir: str | os.PathLike,
    num_cases: int = 4,
    num_slices: int = 4,
    threads: int | None = None,
) -> dict:
    """Calibrate, export and quantize the parts :func:`with_onnx_runtime_int8` runs with 8-bit convolutions, once, on
    :func:`calibration_slices` of the first ``num_cases`` of ``cases``, and write them to ``graph_dir``: one ``.onnx``
    file per part, each recording the digest of the weights it was made from, and the manifest
    ``int8_graphs.json`` (written last, so a folder without it has no usable graphs).

    Each part is calibrated on every case that gives its input: the encoder on all given contrasts, the decoder on
    their posterior means, each structure encoder on its contrast. Calibrate on cases like those to be synthesized
    (e.g. a few validation cases, preprocessed as for synthesis).

    Args:
        network: a latent diffusion network with the weights to serve (on the CPU), possibly DDP-wrapped.
        cases: mappings with ``"image"`` ``(M, X, Y, Z)`` and ``"available"`` ``(M,)`` (the bundle's ``dataset``).
        graph_dir: the folder to write (created when missing; files there of the same names are replaced).
        num_cases: how many of the first cases to calibrate on, >= 1.
        num_slices: calibration slices per case (:func:`calibration_slices`).
        threads: see :class:`OnnxRuntimeForward`.

    Returns:
        the manifest written.

    Raises:
        ValueError: no case, ``num_cases`` < 1, a case without ``"image"`` / ``"available"``, or a contrast given
            in none of the cases (its structure encoder would have nothing to calibrate on).
    """
    if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 1:
        raise ValueError(f"save_int8_graphs expects num_cases to be an int >= 1, got {num_cases!r}.")
    if len(cases) == 0:
        raise ValueError("save_int8_graphs expects at least one case to calibrate on, got none.")
    inner = unwrap_network(network).eval()
    parts = _int8_parts(inner, "save_int8_graphs")
    autoencoder = _autoencoder_model(inner, "save_int8_graphs")
    per_part: dict[str, list[torch.Tensor]] = {}
    names = []
    for i in range(min(num_cases, len(cases))):
        case = cases[i]
        if not isinstance(case, Mapping) or "image" not in case or "available" not in case:
            raise ValueError(f"save_int8_graphs expects case {i} to be a mapping with 'image' and 'available'.")
        available = torch.as_tensor(case["available"], dtype=torch.bool).flatten().cpu()
        slices = calibration_slices(case["image"], available, num_slices)  # (K, M, *S)
        given = torch.nonzero(available).flatten().tolist()
        for name, inputs in _case_calibration_inputs(inner, parts, slices, given).items():
            per_part.setdefault(name, []).append(inputs)
        names.append(str(case.get(CASE_KEY, i)))
    missing = sorted(int(name.rsplit("_", 1)[1]) for name in set(parts) - set(per_part) - {"decoder"})
    if missing:
        raise ValueError(
            f"save_int8_graphs: contrast(s) {missing} are given in none of the {len(names)} calibration cases; "
            "calibrate on cases with every contrast."
        )
    calibration = {name: torch.cat(inputs).contiguous() for name, inputs in per_part.items()}
    calibration["decoder"] = DecoderCalibration(autoencoder, calibration["encoder"])()
    described = f"{len(names)} case(s) ({', '.join(names)}), {num_slices} slices each"
    manifest_path = os.path.join(os.fspath(graph_dir), INT8_MANIFEST)
    if os.path.isfile(manifest_path):
        os.remove(manifest_path)  # until the new one is written, the folder holds no usable graphs
    files = {}
    for name, module in parts.items():
        logger.info(f"calibrating, exporting and quantizing {name} on {len(calibration[name])} inputs.")
        module.__dict__.pop("forward", None)  # PyTorch's forward for the calibration inputs and the export
        runtime = OnnxRuntimeForward(module, threads, memory_arena=False, int8_calibration=calibration[name])
        runtime.save(
            os.path.join(os.fspath(graph_dir), f"{name}.onnx"), calibration[name][:1], {"calibration": described}
        )
        module.forward = runtime  # the network now runs the saved graph
        files[name] = f"{name}.onnx"
    import onnxruntime

    from monai_msgldm import __version__

    manifest = {
        "parts": files,
        "calibration": {"cases": names, "slices_per_case": num_slices},
        "monai_msgldm": __version__,
        "onnxruntime": onnxruntime.__version__,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    logger.info(f"8-bit graphs of {', '.join(files)} saved in {graph_dir}, calibrated on {described}.")
    return manifest
