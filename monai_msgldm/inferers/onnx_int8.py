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
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_msgldm.inferers.onnx_runtime import OnnxRuntimeForward, _autoencoder_model
from monai_msgldm.inferers.sampler import unwrap_network

__all__ = ["quantize_onnx_int8", "calibration_slices", "DecoderCalibration", "with_onnx_runtime_int8"]

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


def with_onnx_runtime_int8(
    network: nn.Module,
    images: torch.Tensor,
    available: torch.Tensor | Sequence[bool],
    num_slices: int = 4,
    threads: int | None = None,
    memory_arena: bool = False,
) -> nn.Module:
    """``network`` with the image-resolution parts of synthesis run in ONNX Runtime with 8-bit convolutions
    (:func:`quantize_onnx_int8`), calibrated on :func:`calibration_slices` of one preprocessed case: the
    autoencoder's encoder (on the given contrasts of the slices), its decoder (on their posterior means, computed with
    the weights of the export) and, for MSG-LDM, the structure encoders of the given contrasts. Other contrasts'
    structure encoders stay in PyTorch. Anything that needs PyTorch (gradients, training, CUDA, autocast) runs it
    (:class:`OnnxRuntimeForward`); the state dict and checkpoint loading are unchanged.

    Args:
        network: a latent diffusion network (``MSGLDM``, ``PlainConditionalLDM``), possibly DDP-wrapped.
        images: ``(M, X, Y, Z)``, a case preprocessed as for synthesis (the bundle's ``dataset[0]["image"]``).
        available: ``(M,)`` bool, its given contrasts.
        num_slices: calibration slices (:func:`calibration_slices`).
        threads: see :class:`OnnxRuntimeForward`.
        memory_arena: ONNX Runtime's memory arena in the five sessions (:class:`OnnxRuntimeForward`). Off by default:
            on a default-size volume on 2 CPU cores it made synthesis 1.08x faster for a peak of 1.93 GiB instead of
            1.78 (docs/benchmarks.md, 0.15.0).

    Raises:
        ValueError: ``network`` has no autoencoder, or bad ``images`` / ``available`` / ``num_slices``.
        ImportError: onnx or onnxruntime is not installed.
    """
    inner = unwrap_network(network)
    autoencoder = _autoencoder_model(inner, "with_onnx_runtime_int8")
    slices = calibration_slices(images, available, num_slices)  # (K, M, *S)
    given = torch.nonzero(torch.as_tensor(available, dtype=torch.bool).flatten().cpu()).flatten().tolist()
    contrasts = slices[:, given].reshape(-1, 1, *slices.shape[2:]).contiguous()  # (K * G, 1, *S)
    encoder, decoder = autoencoder.encoder, autoencoder.decoder
    parts: list[tuple[nn.Module, object]] = [
        (encoder, contrasts),
        (decoder, DecoderCalibration(autoencoder, contrasts)),
    ]
    structure_net = getattr(inner, "structure_net", None)
    if structure_net is not None:
        c = int(structure_net.in_channels)
        parts += [(structure_net.structure_encoders[m], slices[:, m * c : (m + 1) * c].contiguous()) for m in given]
    for module, calibration in parts:
        module.forward = OnnxRuntimeForward(module, threads, memory_arena, int8_calibration=calibration)
    return network
