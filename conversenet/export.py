"""Export of Converse layers and models to ONNX and ``torch.export`` for a fixed input size.

Neither PyTorch ONNX exporter handles the solver's FFTs (the TorchScript path has no FFT
support, the dynamo path fails on 2-D inverse real FFTs) and onnxruntime has no complex
tensors. Tracing therefore runs inside :func:`conversenet.functional.export_mode`, where
Converse2D solves with real DFT matrices (exact for the traced size; see
:mod:`conversenet.functional._matrix_dft` and ``docs/LAYER.md`` for the cost in time and
file size). The exported graph holds only real operators (MatMul, Mul, Add, Pad, Conv,
...) and is valid for the exported input size (and batch) only.

Needs the ``export`` extra (``pip install "conversenet[export]"``: onnx, onnxscript, and
onnxruntime to run or check the file); ``torch.export`` needs nothing beyond torch.

Example:
    >>> import torch
    >>> from conversenet.export import export_program
    >>> from conversenet.nn import Converse2d
    >>> layer = Converse2d(4, 3, scale=2, padding=2).eval()
    >>> ep = export_program(layer, (10, 12))
    >>> ep.module()(torch.rand(1, 4, 10, 12)).shape
    torch.Size([1, 4, 20, 24])
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ._atomic import atomic_open
from .functional import export_mode
from .models.base import as_restoration_model

__all__ = [
    "ExportError",
    "check_size",
    "example_inputs",
    "input_names",
    "export_program",
    "export_onnx",
    "run_onnx",
    "FORMATS",
]

FORMATS = ("onnx", "pt2")
_PROTOBUF_LIMIT = 2**31 - 1


class ExportError(RuntimeError):
    """The model cannot be exported as asked (missing package, unsupported input, too large)."""


def _require(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(
            f"{module} is not installed; ONNX export needs the export extra: "
            f'pip install "conversenet[export]" (onnx, onnxscript, onnxruntime)'
        ) from e


def check_size(size: Sequence[int]) -> Tuple[int, int]:
    """Validates an input size (H, W) in pixels."""
    if isinstance(size, (str, bytes)) or len(size) != 2:
        raise ValueError(f"size must be (H, W), got {size!r}")
    h, w = size
    for name, v in (("H", h), ("W", w)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"size: {name} must be a positive integer, got {v!r}")
    return int(h), int(w)


def _in_channels(model: nn.Module) -> int:
    m = as_restoration_model(model)
    if not m.declares_channels:
        raise ExportError(
            f"cannot tell the input channels of {type(model).__name__}: "
            "pass inputs=(tensor, ...) explicitly"
        )
    return int(m.in_channels)


def input_names(model: nn.Module) -> List[str]:
    """``["x"]``, or ``["x", "kernel"]`` for models taking a blur kernel (non-blind deblurring)."""
    return ["x", "kernel"] if as_restoration_model(model).takes_kernel else ["x"]


def example_inputs(model: nn.Module, size: Sequence[int], batch: int = 1,
                   image: Optional[np.ndarray] = None, kernel: Optional[np.ndarray] = None
                   ) -> Tuple[torch.Tensor, ...]:
    """Float32 inputs of the model's kind for tracing and checking.

    Args:
        model: a registry model (``in_channels``, ``needs_kernel``) or a module with
            ``channels`` (e.g. :class:`conversenet.nn.Converse2d`).
        size: (H, W) input pixels.
        batch: N.
        image: optional (H, W) or (H, W, C) array in [0, 1] used for every sample;
            default: the package's generated sample scene (:func:`conversenet.data.sample_image`),
            converted to grey for one-channel models (its channels repeated in turn for
            other channel counts).
        kernel: optional (k, k) blur kernel for models taking one (default: Gaussian,
            sigma 1.6, of the model's ``blur_kernel_size``).

    Returns:
        ``(x,)`` with x (N, C, H, W), or ``(x, kernel)`` with kernel (N, 1, k, k).
    """
    h, w = check_size(size)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    c = _in_channels(model)
    generated = image is None
    if generated:
        from .data import sample_image

        image = sample_image(max(h, w, 16))[:h, :w].astype(np.float32) / 255.0
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[:2] != (h, w):
        raise ValueError(f"image is {image.shape[0]}x{image.shape[1]}, expected the export size {h}x{w}")
    if image.shape[2] != c:
        if c == 1 and image.shape[2] == 3:  # ITU-R BT.601 luma, as the data loaders use
            image = image @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        elif c == 3 and image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        elif generated:  # feature-map inputs of a bare layer: the scene's channels in turn
            image = image[..., np.arange(c) % image.shape[2]]
        else:
            raise ValueError(f"image has {image.shape[2]} channels, the model takes {c}")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].repeat(batch, 1, 1, 1)
    m = as_restoration_model(model)
    if not m.takes_kernel:
        return (x,)
    ks = int(m.blur_kernel_size)
    if kernel is None:
        from .data import make_kernel

        kernel = make_kernel("gaussian:1.6", ks)
    k = torch.as_tensor(np.asarray(kernel, dtype=np.float32)).reshape(1, 1, ks, ks).repeat(batch, 1, 1, 1)
    return (x, k)


def _inputs(model: nn.Module, size, batch: int, inputs) -> Tuple[torch.Tensor, ...]:
    if inputs is None:
        return example_inputs(model, size, batch)
    inputs = tuple(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
            raise ValueError(f"inputs[{i}] must be a float32 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    return inputs


def _prepared(model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Eval mode, CPU float32, and one eager forward: bad sizes raise here, before tracing."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    p = next(model.parameters(), None)
    if p is not None and (p.device.type != "cpu" or p.dtype != torch.float32):
        raise ValueError(f"export a CPU float32 model (call model.float().cpu()); got {p.dtype} on {p.device}")
    model.eval()
    with torch.no_grad():
        return model(*inputs)


def export_program(model: nn.Module, size: Optional[Sequence[int]] = None, *, batch: int = 1,
                   inputs: Optional[Sequence[torch.Tensor]] = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` (eval mode) for inputs of ``size`` in export mode.

    Args:
        model: CPU float32 module.
        size: (H, W) input pixels (ignored when ``inputs`` is given).
        batch: N of the traced inputs.
        inputs: explicit example inputs (float32), e.g. from :func:`example_inputs`.

    Returns:
        The exported program; ``.module()(*inputs)`` runs it.
    """
    inputs = _inputs(model, size, batch, inputs)
    _prepared(model, inputs)
    with torch.no_grad(), export_mode():
        return torch.export.export(model, inputs)


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], size: Optional[Sequence[int]] = None, *,
                batch: int = 1, inputs: Optional[Sequence[torch.Tensor]] = None,
                opset: Optional[int] = None, optimize: bool = True) -> Path:
    """Writes ``model`` as an ONNX file (one file, written atomically) for inputs of ``size``.

    Inputs are named ``x`` (N, C, H, W) and, for models taking a blur kernel, ``kernel``
    (N, 1, k, k); the output is ``y``. All float32. Identical constants (the DFT matrices
    every layer of one size shares) are stored once.

    Args:
        model: CPU float32 module.
        path: destination ``.onnx`` file (replaced if it exists).
        size, batch, inputs: as :func:`export_program`.
        opset: ONNX opset (default: the exporter's).
        optimize: run the exporter's graph optimizer (onnxscript: constant folding and
            rewrites). Measured on converse_srresnet_official at 24x20 (2 threads): the file
            is 13 % smaller and onnxruntime 2x faster, but the export takes 2x as long (most of
            it in the optimizer's pattern matching for deep networks). It also helps
            accuracy: converse_usrnet_official at 32x28 was 3.7e-6 from the float64 result
            optimized and 1.3e-4 without. ``False`` for quick trial exports.

    Returns:
        The path written.

    Raises:
        ExportError: onnx/onnxscript missing, or the model is over protobuf's 2 GiB.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output path {path} is a folder; give a file name such as model.onnx")
    _require("onnxscript")
    _require("onnx")
    import onnx_ir.passes.common as ir_passes

    inputs = _inputs(model, size, batch, inputs)
    _prepared(model, inputs)
    names = input_names(model) if len(inputs) == len(input_names(model)) else [f"input{i}" for i in range(len(inputs))]
    kwargs: Dict[str, object] = {"dynamo": True, "input_names": names, "output_names": ["y"], "verbose": False,
                                 "optimize": bool(optimize)}
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    with torch.no_grad(), export_mode():
        prog = torch.onnx.export(model, inputs, **kwargs)
    _contiguous_initializers(prog.model)  # the hashing pass refuses strided arrays
    ir_passes.DeduplicateHashedInitializersPass()(prog.model)
    ir_passes.RemoveUnusedNodesPass()(prog.model)
    proto = prog.model_proto
    nbytes = proto.ByteSize()
    if nbytes > _PROTOBUF_LIMIT:
        raise ExportError(f"the ONNX model is {nbytes / 2**30:.1f} GiB, over protobuf's 2 GiB; export a smaller size")
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


def _contiguous_initializers(model) -> None:
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        t = value.const_value
        if t is None:
            continue
        arr = t.numpy()
        if not arr.flags.c_contiguous:
            value.const_value = ir.tensor(np.ascontiguousarray(arr), name=t.name)


def run_onnx(path: Union[str, os.PathLike], *inputs: torch.Tensor, threads: Optional[int] = None) -> np.ndarray:
    """Runs an exported file with onnxruntime (CPU) and returns the output ``y``."""
    ort = _require("onnxruntime")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"{path} takes {len(names)} input(s) ({', '.join(names)}), got {len(inputs)}")
    feeds = {n: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
             for n, t in zip(names, inputs)}
    return sess.run(None, feeds)[0]
