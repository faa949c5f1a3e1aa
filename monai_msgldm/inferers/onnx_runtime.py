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
"""ONNX Runtime for the autoencoder's encoder at inference on the CPU (the optional ``onnx`` extra).

The encoder of the given contrasts is the largest fixed cost of synthesis on the CPU (docs/benchmarks.md), and ONNX
Runtime runs it faster than eager PyTorch there (``benchmarks/onnx_runtime_parts.py``). The module keeps its weights
and its state dict: only its ``forward`` is replaced, by :class:`OnnxRuntimeForward`, which exports the module with
MONAI's ``convert_to_onnx`` on its first call without gradients and runs later calls in an ONNX Runtime session, so
the bundle still loads its one checkpoint into the same network, before or after this is applied.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from monai.networks.utils import convert_to_onnx
from monai.utils import optional_import

from monai_msgldm.inferers.sampler import unwrap_network

__all__ = ["OnnxRuntimeForward", "with_onnx_runtime_encoder", "weights_digest"]

_EXTRA = "pip install 'monai_msgldm[onnx]' (onnx and onnxruntime)"

#: the key of a saved graph's ONNX metadata that records :func:`weights_digest` of the module it was made from
WEIGHTS_DIGEST_KEY = "monai_msgldm.weights_sha256"
#: the key recording whether the module returns a list of tensors ("1") or one tensor ("0")
_LISTED_KEY = "monai_msgldm.listed_outputs"


def weights_digest(module: nn.Module) -> str:
    """SHA-256 (hex) of ``module``'s state dict: every entry's name, dtype, shape and bytes, in order. Equal for the
    same weights loaded from the same checkpoint, on any device; any changed value changes it."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


class OnnxRuntimeForward:
    """A drop-in ``forward`` for ``module`` (one tensor in; one tensor or a list of tensors out) that runs it in an ONNX Runtime CPU
    session when nothing needs PyTorch: float32 CPU input, no gradient (``torch.no_grad`` or
    ``torch.inference_mode``), ``module`` in eval mode, no autocast. Otherwise the module's own ``forward`` runs.

    The graph is exported on the first such call (``monai.networks.utils.convert_to_onnx``, TorchScript tracing, the
    batch and every spatial size dynamic, so one export serves every box and slice batch) and again whenever the
    module's parameters or buffers changed since (a checkpoint loaded into it, a move to another device): their
    version counters and storage are compared at each call. The session uses ``torch.get_num_threads()`` intra-op
    threads (or ``threads``) with spinning off, so that its idle threads do not take the cores from PyTorch's.
    Results agree with PyTorch to float32 rounding (``benchmarks/onnx_runtime_parts.py`` prints the difference).

    :meth:`save` writes the exported (and quantized) graph to a file, with the digest of the weights it was made from;
    ``OnnxRuntimeForward(module, graph_file=...)`` runs such a file instead of exporting, after checking the digest.

    Install with ``module.forward = OnnxRuntimeForward(module)`` (:func:`with_onnx_runtime_encoder` does it for the
    latent diffusion networks); ``del module.forward`` restores PyTorch.

    Args:
        module: the module to run; its ``forward`` takes one tensor ``(B, C, *S)`` and returns one tensor or a list
            of them (e.g. a structure encoder's multiscale features).
        threads: intra-op threads of the session; None: ``torch.get_num_threads()`` at export.
        int8_calibration: quantize the exported graph to 8-bit integers (:func:`~monai_msgldm.inferers.onnx_int8.quantize_onnx_int8`:
            ONNX Runtime's static quantization of the convolutions, per-channel int8 weights, uint8 activations whose
            ranges are the least and largest values seen on these inputs) at each export. A tensor ``(N, C, *S)`` of
            inputs like the module's, or a function returning one when it is needed (called at each export, with the
            weights of that time). None: float32. The ranges hold for inputs like these only: calibrate on data like
            what will be run (:func:`~monai_msgldm.inferers.onnx_int8.with_onnx_runtime_int8` uses slices of the case).
        memory_arena: ONNX Runtime's CPU memory arena (its default): it keeps the memory of past calls for the next
            ones, which is faster than allocating it again but keeps the largest call's activations (and the arena's
            power-of-two growth) reserved beside PyTorch's memory. On a default-size volume on 2 CPU cores: 113 s and
            a 2.6 GiB peak with it, 125 s and 1.9 GiB without (PyTorch alone: 129 s, 1.95 GiB; docs/benchmarks.md).
        graph_file: a graph written by :meth:`save` for this module, run instead of exporting (and calibrating) it:
            at the first call, and whenever the weights change, the file must record the module's
            :func:`weights_digest`, otherwise the call raises a ``ValueError`` naming it. Not with
            ``int8_calibration`` (the saved graph was calibrated when it was saved).

    Raises:
        ImportError: onnx or onnxruntime is not installed (the ``onnx`` extra).
        FileNotFoundError: ``graph_file`` is not a file.
    """

    def __init__(
        self,
        module: nn.Module,
        threads: int | None = None,
        memory_arena: bool = True,
        int8_calibration: torch.Tensor | Callable[[], torch.Tensor] | None = None,
        graph_file: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"OnnxRuntimeForward expects module to be a torch.nn.Module, got {type(module).__name__}.")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"OnnxRuntimeForward expects threads to be None or an int >= 1, got {threads!r}.")
        for name in ("onnx", "onnxruntime"):
            if not optional_import(name)[1]:
                raise ImportError(f"OnnxRuntimeForward needs {name}: {_EXTRA}.")
        if not (int8_calibration is None or callable(int8_calibration) or isinstance(int8_calibration, torch.Tensor)):
            raise ValueError(
                "OnnxRuntimeForward expects int8_calibration to be None, a tensor (N, C, *S) of the module's inputs "
                f"or a function returning one, got {type(int8_calibration).__name__}."
            )
        if graph_file is not None:
            if int8_calibration is not None:
                raise ValueError(
                    "OnnxRuntimeForward expects either graph_file (a saved graph, calibrated when it was saved) or "
                    "int8_calibration, not both."
                )
            graph_file = os.path.abspath(os.fspath(graph_file))
            if not os.path.isfile(graph_file):
                raise FileNotFoundError(f"OnnxRuntimeForward: the graph_file {graph_file} does not exist.")
        self.module = module
        self.threads = threads
        self.memory_arena = bool(memory_arena)
        self.int8_calibration = int8_calibration
        self.graph_file = graph_file
        self.exports = 0
        self.loads = 0
        self._session: Any = None
        self._listed = False
        self._fingerprint: tuple | None = None

    def uses_runtime(self, x: Any) -> bool:
        """Whether a call on ``x`` runs in ONNX Runtime (see the class)."""
        return (
            isinstance(x, torch.Tensor)
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not self.module.training
            and not torch.is_autocast_enabled("cpu")
        )

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | list[torch.Tensor]:
        if args or kwargs or not self.uses_runtime(x):
            return type(self.module).forward(self.module, x, *args, **kwargs)
        x = x.as_subclass(torch.Tensor).contiguous()
        if self._session is None or self._fingerprint != self._current_fingerprint():
            if self.graph_file is not None:
                self._load_graph()
            else:
                self._open(self._exported_graph(x))
                self.exports += 1
        outputs = [torch.from_numpy(y) for y in self._session.run(None, {"x": x.numpy()})]
        return outputs if self._listed else outputs[0]

    def save(self, path: str | os.PathLike, x: torch.Tensor, metadata: dict[str, str] | None = None) -> str:
        """Export the module on ``x`` as a first call would (quantized with ``int8_calibration`` when set) and write
        the graph to ``path`` (atomically), recording the module's :func:`weights_digest` and ``metadata`` in the
        ONNX model's metadata, for ``OnnxRuntimeForward(module, graph_file=path)`` to run later. Later calls of this
        object run the saved graph.

        Args:
            path: the ``.onnx`` file to write.
            x: ``(B, C, *S)``, an input like the module's (float32, CPU); only its first item is traced.
            metadata: strings to record beside the digest (e.g. what the ranges were calibrated on).

        Returns:
            the absolute path written.
        """
        import onnx

        from monai_msgldm.utils.files import atomic_write_bytes

        if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dtype != torch.float32:
            raise ValueError(
                f"OnnxRuntimeForward.save expects x to be a float32 CPU tensor, got {type(x).__name__} "
                f"{getattr(x, 'dtype', '')} {getattr(x, 'device', '')}."
            )
        if self.module.training:
            raise ValueError(
                f"OnnxRuntimeForward.save expects the {type(self.module).__name__} in eval mode (module.eval()): the "
                "saved graph runs it as at inference."
            )
        with torch.no_grad():
            model = onnx.load_from_string(self._exported_graph(x.as_subclass(torch.Tensor).contiguous()))
        entries = {
            **{str(k): str(v) for k, v in (metadata or {}).items()},
            WEIGHTS_DIGEST_KEY: weights_digest(self.module),
            _LISTED_KEY: str(int(self._listed)),
        }
        for key, value in entries.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        written = atomic_write_bytes(path, model.SerializeToString())
        self.graph_file, self.int8_calibration = written, None
        self._load_graph()
        return written

    def _current_fingerprint(self) -> tuple:
        tensors = itertools.chain(self.module.parameters(), self.module.buffers())
        return tuple((t._version, t.data_ptr()) for t in tensors)

    def _exported_graph(self, x: torch.Tensor) -> bytes:
        """The module's graph, serialized: exported on ``x[:1]`` and quantized when ``int8_calibration`` is set."""
        module = self.module
        # traced on one item (every size is dynamic): tracing keeps each intermediate of the traced call alive, which
        # on a whole slice batch of contrasts at image resolution is over a GiB
        x = x[:1]
        probe = type(module).forward(module, x)  # how many outputs, and of which rank
        self._listed = isinstance(probe, (list, tuple))
        probe = list(probe) if self._listed else [probe]
        names = [f"y{i}" for i in range(len(probe))]
        # every size dynamic, each output's own (an encoder's output is smaller than its input)
        dynamic = {"x": {0: "batch", **{d: f"x_size{d}" for d in range(2, x.ndim)}}}
        dynamic.update({n: {0: "batch", **{d: f"{n}_size{d}" for d in range(2, y.ndim)}} for n, y in zip(names, probe)})
        own = module.__dict__.pop("forward", None)  # export the module's own forward, not this one
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's and the constant folding's notices
                onnx_model = convert_to_onnx(
                    module,
                    (x,),
                    input_names=["x"],
                    output_names=names,
                    dynamic_axes=dynamic,
                    use_trace=True,
                    dynamo=False,
                )
        finally:
            if own is not None:
                module.forward = own
        model_bytes = onnx_model.SerializeToString()
        if self.int8_calibration is not None:
            from monai_msgldm.inferers.onnx_int8 import quantize_onnx_int8

            calibration = self.int8_calibration
            model_bytes = quantize_onnx_int8(model_bytes, calibration() if callable(calibration) else calibration)
        return model_bytes

    def _open(self, model: bytes | str) -> Any:
        """An ONNX Runtime CPU session of ``model`` (serialized bytes or a file) with this object's settings, kept
        for the calls as long as the weights stay those of now."""
        ort, _ = optional_import("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = self.memory_arena
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._fingerprint = self._current_fingerprint()
        return self._session

    def _load_graph(self) -> None:
        """Run :attr:`graph_file`, after checking that it was saved from the module's current weights."""
        session = self._open(self.graph_file)
        recorded = session.get_modelmeta().custom_metadata_map
        if recorded.get(WEIGHTS_DIGEST_KEY) != weights_digest(self.module):
            self._session, self._fingerprint = None, None
            raise ValueError(
                f"the ONNX graph {self.graph_file} was not saved from the weights of the {type(self.module).__name__} "
                f"it is used for (its {WEIGHTS_DIGEST_KEY} differs): the checkpoint changed since it was saved; save "
                "the graphs again (configs/export_int8.json) or remove them."
            )
        self._listed = recorded.get(_LISTED_KEY) == "1"
        self.loads += 1

    def __getstate__(self) -> dict:
        """Copies and pickles (``copy.deepcopy`` of the network) leave the session out: it is made again."""
        state = dict(self.__dict__)
        state["_session"], state["_fingerprint"] = None, None
        return state


def with_onnx_runtime_encoder(
    network: nn.Module, enabled: bool = True, threads: int | None = None, memory_arena: bool = True
) -> nn.Module:
    """``network`` with its autoencoder's encoder run by :class:`OnnxRuntimeForward` when ``enabled`` (the bundle's
    ``onnx_runtime`` key); ``network`` itself, unchanged, when not. The state dict keeps its keys and the checkpoint
    may be loaded before or after. The encoder then runs in ONNX Runtime wherever it runs without gradients on the
    CPU in float32 (the given contrasts' encodings at inference); training, CUDA and autocast run PyTorch.

    Args:
        network: a latent diffusion network (:py:class:`~monai_msgldm.networks.nets.MultiContrastLDM`: its
            ``autoencoder.model.encoder``), possibly DDP-wrapped.
        enabled: apply it (False returns ``network`` as it is).
        threads, memory_arena: see :class:`OnnxRuntimeForward`.

    Raises:
        ValueError: ``network`` has no autoencoder encoder.
        ImportError: onnx or onnxruntime is not installed.
    """
    if not enabled:
        return network
    encoder = _autoencoder_model(unwrap_network(network), "with_onnx_runtime_encoder").encoder
    if not isinstance(encoder.__dict__.get("forward"), OnnxRuntimeForward):
        encoder.forward = OnnxRuntimeForward(encoder, threads=threads, memory_arena=memory_arena)
    return network


def _autoencoder_model(network: nn.Module, caller: str) -> nn.Module:
    """The MONAI ``AutoencoderKL`` of a latent diffusion network (``network.autoencoder.model``, with an encoder and
    a decoder); ``caller`` names the function in the error."""
    model = getattr(getattr(network, "autoencoder", None), "model", None)
    if not all(isinstance(getattr(model, part, None), nn.Module) for part in ("encoder", "decoder")):
        raise ValueError(
            f"{caller} expects a latent diffusion network with autoencoder.model.encoder and .decoder "
            f"(MSGLDM, PlainConditionalLDM), got {type(network).__name__}."
        )
    return model
