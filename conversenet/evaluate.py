"""The published evaluation protocols of the paper's Tables 4, 5 and 7, reusable from Python.

One :class:`Protocol` per task, chosen from the model's ``task`` attribute:

=========  ==================================================================================
task       what is done to a ground-truth image ``gt`` (uint8, H x W x C)
=========  ==================================================================================
denoise    ``lq = gt / 255 + N(0, sigma/255)`` drawn by ``numpy.random.seed(0)`` reset before
           every image (:func:`conversenet.data.add_awgn_np`), no clipping of ``lq``.
           Metrics on uint8, no border. (Table 4, sigma = 25.)
sr         ``gt`` cropped to a multiple of ``scale`` (:func:`~conversenet.data.modcrop`), then
           ``lq = imresize(gt / 255, 1/scale)``: MATLAB bicubic with antialiasing on the
           float image, not clipped or rounded. Metrics with ``crop_border = scale`` on RGB
           and on the MATLAB ``rgb2ycbcr`` luma (Y rounded to integers, as MATLAB does
           for uint8 images). (Table 5, x4.)
deblur     ``gt`` cropped to a multiple of 8; the uint8 image is blurred with the kernel
           with circular ("wrap") boundaries (uint8 result, as ``scipy.ndimage.convolve``),
           ``/ 255``, plus noise of sigma 2.55 (0..255 units) with seed 0
           (:func:`~conversenet.data.usrnet_degrade_np`). Metrics on RGB with a 1-pixel
           border. Non-blind models also receive the kernel. (Table 7.)
=========  ==================================================================================

In every task the network output is clamped to [0, 1] and rounded to uint8 before it is
measured (:func:`conversenet.data.to_image`). Single-channel images given to a 3-channel
model are replicated to three channels first (two Set14 images are grey). A 1-channel
(grayscale) model refuses colour images with :class:`EvalError` instead of converting them
silently: a grey conversion would give numbers that are not those of any published table.

Example (tiny random model, no files needed):
    >>> import numpy as np, torch
    >>> from conversenet.models import create
    >>> from conversenet.evaluate import protocol_for, evaluate_arrays
    >>> net = create("converse_dncnn", width=4, num_blocks=1).eval()
    >>> proto = protocol_for(net, sigma=25)
    >>> proto.task, proto.crop_border
    ('denoise', 0)
    >>> gt = (np.random.default_rng(0).random((24, 24, 1)) * 255).astype(np.uint8)
    >>> res = evaluate_arrays(net, [("a", gt)], proto, progress=False)
    >>> sorted(res.rows[0])[:3], res.averages["n"]
    (['height', 'image', 'psnr'], 1)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._atomic import write_text_atomic
from .data import (
    ImageReadError,
    KernelError,
    from_float,
    gray_to_rgb,
    list_images as _list_images,
    load_kernel,
    modcrop,
    read_image,
    to_image,
    to_tensor,
)
from .metrics import psnr, ssim
from .models.base import as_restoration_model
from .tasks import TASKS, Protocol, get_task

__all__ = [
    "EvalError",
    "Protocol",
    "EvalResult",
    "DATASETS",
    "KERNEL_NAMES",
    "protocol_for",
    "resolve_dataset",
    "resolve_kernel",
    "list_images",
    "load_images",
    "degrade",
    "restore_lq",
    "measure",
    "model_min_side",
    "check_image_size",
    "evaluate_arrays",
    "summarize",
    "evaluate",
    "write_results",
    "comparison_image",
]

#: Dataset names resolved under ``<data root>/testsets``.
DATASETS = ("set12", "bsd68", "cbsd68", "set5", "set14", "bsd100")
#: Kernel names resolved to ``<data root>/kernels/<name>.npy``.
KERNEL_NAMES = tuple(f"kernel_{i}" for i in range(1, 6))
#: SSIM's window: the measured region must be at least this large.
_SSIM_MIN = 11


class EvalError(ValueError):
    """A user error in an evaluation request (missing dataset, unusable image or kernel...)."""


@dataclass
class EvalResult:
    """Per-image rows (dicts: image, psnr, ssim, [psnr_y, ssim_y], time_s, ...) and averages."""

    rows: List[Dict]
    averages: Dict
    protocol: Protocol
    meta: Dict = field(default_factory=dict)

    def metric_names(self) -> List[str]:
        names = ["psnr", "ssim"]
        return names + (["psnr_y", "ssim_y"] if self.protocol.test_y else [])


# --------------------------------------------------------------------------------------
# resolving names
# --------------------------------------------------------------------------------------
def _data_root(data_root) -> Optional[Path]:
    """``data_root`` when given, else the one data-path lookup, :func:`conversenet.paths.data_root`."""
    from .paths import data_root as _dr

    return Path(data_root) if data_root is not None else _dr()


def resolve_dataset(spec: Union[str, os.PathLike], data_root=None) -> Path:
    """A dataset name (:data:`DATASETS`, under ``<data root>/testsets``) or a folder path.

    Raises:
        EvalError: neither an existing folder nor a known name with its folder present.
    """
    p = Path(spec)
    if p.is_dir():
        return p
    name = str(spec).lower()
    if name in DATASETS:
        root = _data_root(data_root)
        if root is None:
            raise EvalError(f"dataset {spec!r}: no data root found (set CONVERSENET_DATA or pass --data-root)")
        d = root / "testsets" / name
        if not d.is_dir():
            raise EvalError(f"dataset {spec!r} not found: {d} does not exist")
        return d
    raise EvalError(f"dataset {str(spec)!r} is neither a folder nor a known name ({', '.join(DATASETS)})")


def resolve_kernel(spec: Union[str, os.PathLike], data_root=None) -> Tuple[np.ndarray, str]:
    """A kernel name (``kernel_1`` .. ``kernel_5``, under ``<data root>/kernels``) or a file.

    The kernel is used as stored (not re-normalised), as the published script loads it with
    ``np.load``; it must be a 2-D array of finite numbers.

    Returns:
        ``(kernel float64 (kh, kw), name)``.
    """
    s = str(spec)
    path = Path(s)
    name = path.stem if path.suffix else s
    if not path.is_file() and s.lower() in KERNEL_NAMES:
        root = _data_root(data_root)
        if root is None:
            raise EvalError(f"kernel {s!r}: no data root found (set CONVERSENET_DATA or pass --data-root)")
        path = root / "kernels" / f"{s.lower()}.npy"
        name = s.lower()
    if not path.is_file():
        raise EvalError(f"kernel {s!r} not found (give a file or one of {', '.join(KERNEL_NAMES)})")
    try:
        return load_kernel(path, normalize=False), name
    except KernelError as e:
        raise EvalError(str(e)) from e


def list_images(folder: Union[str, os.PathLike]) -> List[Path]:
    """Image files (by extension) directly in ``folder``, sorted by name
    (:func:`conversenet.data.list_images`); a broken symbolic link with an image name, or no
    image at all, is an :class:`EvalError`."""
    try:
        return _list_images(folder, what="dataset")
    except FileNotFoundError as e:
        raise EvalError(str(e)) from e


def load_images(files: Sequence[Path], channels: int) -> List[Tuple[str, np.ndarray]]:
    """Reads ``files`` as uint8 (H, W, channels) ground truths: grey replicated to RGB for
    3-channel models; colour for a 1-channel model is an :class:`EvalError`. 16-bit images
    are reduced to 8 bits (the protocols are defined on uint8).

    Names are the file stems; files that share a stem (``a.png``, ``a.jpg``) are named
    ``a_png``, ``a_jpg`` so that their rows and output images stay apart."""
    out = []
    stems = [f.stem for f in files]
    for f in files:
        try:
            arr, info = read_image(f, alpha="drop")
        except ImageReadError as e:
            raise EvalError(str(e)) from e
        if arr.dtype == np.uint16:
            arr = from_float(arr / 65535.0, 8)
        c = arr.shape[2]
        if channels == 1 and c == 3:
            raise EvalError(
                f"{f.name} is a colour image but the model is grayscale (1 channel); the grayscale "
                f"protocol (Table 4) is defined on grey images: use set12/bsd68 or convert the folder to grey"
            )
        if channels == 3 and c == 1:
            arr = gray_to_rgb(arr)
        name = f.stem if stems.count(f.stem) == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"
        out.append((name, np.ascontiguousarray(arr)))
    return out


# --------------------------------------------------------------------------------------
# protocol steps
# --------------------------------------------------------------------------------------
def protocol_for(model, sigma: Optional[float] = None, scale: Optional[int] = None,
                 kernel: Optional[np.ndarray] = None, kernel_name: str = "", round_y: bool = True) -> Protocol:
    """The published protocol for ``model.task`` with the given overrides.

    Args:
        model: a conversenet model (attributes ``task``, ``scale``, ``needs_kernel``).
        sigma: noise level in 0..255 units; default 25 (denoise), 2.55 (deblur); SR has none.
        scale: SR factor; must equal the model's (default).
        kernel: (k, k) blur kernel, required for deblurring.
        round_y: SR Y channel rounded to integers (MATLAB convention, default).

    Raises:
        EvalError: options that do not fit the task.
    """
    model = as_restoration_model(model)
    mscale = int(model.scale)
    if sigma is not None and (not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0):
        raise EvalError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if model.task not in TASKS:
        raise EvalError(f"model has no known task (task={model.task!r}); expected denoise, sr or deblur")
    t = get_task(model.task)
    if "sigma" not in t.options and sigma not in (None, 0):
        raise EvalError(f"the {t.title} protocol adds no noise; --sigma {sigma} does not apply")
    if "kernel" not in t.options and kernel is not None:
        raise EvalError(f"--kernel does not apply to the {t.title} protocol")
    if not t.scaled and (scale not in (None, 1) or mscale != 1):
        raise EvalError(f"the {t.title} protocol is for scale 1 (got {scale or mscale})")
    if t.scaled and scale is not None and int(scale) != mscale:
        raise EvalError(f"--scale {scale} does not match the model's scale x{mscale}")
    if not t.uses_kernel:
        return t.protocol(sigma=sigma, scale=mscale, round_y=round_y)
    if kernel is None:
        raise EvalError(f"a {t.title} model needs --kernel (a file or one of kernel_1..kernel_5)")
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2:
        raise EvalError(f"kernel must be 2-D, got shape {k.shape}")
    ks = model.blur_kernel_size
    if model.takes_kernel and ks is not None and k.shape != (ks, ks):
        raise EvalError(f"kernel {kernel_name or ''} has shape {k.shape[0]}x{k.shape[1]}, "
                        f"but the model takes {ks}x{ks} kernels".replace("kernel  ", "kernel "))
    return t.protocol(sigma=sigma, kernel=k, kernel_name=kernel_name or f"{k.shape[0]}x{k.shape[1]} kernel")


def model_min_side(model) -> int:
    """Smallest input height/width the model accepts
    (:attr:`~conversenet.models.RestorationModel.min_input_size`)."""
    return as_restoration_model(model).min_input_size


def check_image_size(name: str, shape: Tuple[int, ...], protocol: Protocol, min_side: int) -> None:
    """Raises :class:`EvalError` when image ``name`` of ``shape`` (H, W, C) cannot be evaluated:
    smaller than the crop multiple, a model input below ``min_side``, or too small for
    SSIM after the border crop. Called for every image before any work."""
    h, w = int(shape[0]), int(shape[1])
    m = protocol.multiple
    hh, ww = h - h % m, w - w % m
    lh, lw = hh // protocol.scale, ww // protocol.scale
    need_gt = 2 * protocol.crop_border + _SSIM_MIN
    if hh < 1 or ww < 1 or min(hh, ww) < need_gt or min(lh, lw) < min_side:
        what = f"x{protocol.scale} {protocol.task.upper()}" if get_task(protocol.task).scaled else protocol.task
        need = max(need_gt, min_side * protocol.scale, m)
        raise EvalError(f"image {name} is {h}x{w}, too small for {what} with this model "
                        f"(needs at least {need}x{need} after cropping to a multiple of {m})")


def degrade(gt: np.ndarray, protocol: Protocol) -> Tuple[np.ndarray, np.ndarray]:
    """Applies the protocol's degradation.

    Args:
        gt: uint8 (H, W, C) ground truth.

    Returns:
        ``(gt_cropped uint8 (H', W', C), lq float32 (H'/s, W'/s, C))``.

    Example:
        >>> p = Protocol("sr", scale=4, crop_border=4, test_y=True, multiple=4)
        >>> g, lq = degrade(np.zeros((18, 21, 3), np.uint8), p)
        >>> g.shape, lq.shape, lq.dtype
        ((16, 20, 3), (4, 5, 3), dtype('float32'))
    """
    if not isinstance(gt, np.ndarray) or gt.dtype != np.uint8 or gt.ndim != 3:
        raise TypeError(f"gt must be a uint8 (H, W, C) array, got {getattr(gt, 'dtype', type(gt).__name__)}")
    task = get_task(protocol.task)
    if protocol.multiple > 1:
        gt = np.ascontiguousarray(modcrop(gt, protocol.multiple))
    return gt, task.degrade(gt, protocol)


def restore_lq(model, lq: np.ndarray, protocol: Protocol, device: Union[str, torch.device] = "cpu",
               self_ensemble: bool = False) -> np.ndarray:
    """Runs ``model`` on the protocol's float (H, W, C) input through the one inference path
    (:func:`conversenet.inference.run_model`, whole image: ``tile=0``; with ``self_ensemble``
    the average of 8 flipped/rotated passes); returns the clamped, rounded uint8 output.
    Non-blind models receive the protocol's kernel."""
    from .inference import run_model

    model = as_restoration_model(model)
    x = to_tensor(lq, batch=True, device=device)
    k = None
    if model.takes_kernel:
        k = torch.from_numpy(np.ascontiguousarray(protocol.kernel)).float()
    return to_image(run_model(model, x, k, tile=0, self_ensemble=self_ensemble))


def measure(out: np.ndarray, gt: np.ndarray, protocol: Protocol) -> Dict[str, float]:
    """PSNR/SSIM of uint8 ``out`` vs ``gt`` (H, W, C) under the protocol (plus Y for SR)."""
    b = protocol.crop_border
    r = {"psnr": float(psnr(out, gt, crop_border=b)), "ssim": float(ssim(out, gt, crop_border=b))}
    if protocol.test_y and gt.shape[2] == 3:
        r["psnr_y"] = float(psnr(out, gt, crop_border=b, test_y_channel=True, round_y=protocol.round_y))
        r["ssim_y"] = float(ssim(out, gt, crop_border=b, test_y_channel=True, round_y=protocol.round_y))
    return r


def comparison_image(lq: np.ndarray, out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """degraded | restored | ground truth side by side (uint8). The degraded input is
    clamped/rounded and, for SR, enlarged by pixel repetition to the output size."""
    lq8 = from_float(lq, 8)
    fy, fx = gt.shape[0] // lq8.shape[0], gt.shape[1] // lq8.shape[1]
    if fy > 1 or fx > 1:
        lq8 = np.repeat(np.repeat(lq8, fy, axis=0), fx, axis=1)
    lq8 = lq8[: gt.shape[0], : gt.shape[1]]
    return np.concatenate([lq8, out, gt], axis=1)


# --------------------------------------------------------------------------------------
# whole runs
# --------------------------------------------------------------------------------------
def summarize(rows: List[Dict], names: Iterable[str] = ("psnr", "ssim", "psnr_y", "ssim_y")) -> Dict:
    """Averages of the metrics over ``rows`` (those present), ``n`` and the summed ``time_s``."""
    avg: Dict = {"n": len(rows)}
    for n in names:
        vals = [r[n] for r in rows if n in r]
        if vals:
            avg[n] = float(np.mean(vals))
    avg["time_s"] = float(sum(r.get("time_s", 0.0) for r in rows))
    return avg


def evaluate_arrays(
    model,
    images: Sequence[Tuple[str, np.ndarray]],
    protocol: Protocol,
    device: Union[str, torch.device] = "cpu",
    out_dir: Union[None, str, os.PathLike] = None,
    save_images: bool = True,
    compare: bool = False,
    progress: bool = True,
    on_row: Optional[Callable[[Dict], None]] = None,
    protect: Iterable[Union[str, os.PathLike]] = (),
    self_ensemble: bool = False,
) -> EvalResult:
    """Evaluates ``model`` on in-memory ground truths ``[(name, uint8 (H, W, C)), ...]``.

    Every image is size-checked before the first one is processed. With ``out_dir``,
    restored images go to ``out_dir/restored/<name>.png`` and, with ``compare``,
    ``out_dir/compare/<name>.png`` (written atomically; ``protect`` paths are never written).
    ``on_row`` is called with each finished row (e.g. to print it). ``self_ensemble``: each
    output is the average of 8 flipped/rotated passes (:func:`conversenet.inference.run_model`);
    recorded in the result's meta.
    """
    from tqdm import tqdm

    model = as_restoration_model(model)
    min_side = model.min_input_size
    for name, gt in images:
        check_image_size(name, gt.shape, protocol, min_side)
    model.eval()
    rows: List[Dict] = []
    out_dir = Path(out_dir) if out_dir is not None else None
    bar = tqdm(images, desc="eval", unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    try:  # the bar is cleared on an interrupt too (Ctrl-C), before the caller prints its message
        for name, gt in bar:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            g, lq = degrade(gt, protocol)
            out = restore_lq(model, lq, protocol, device, self_ensemble=self_ensemble)
            dt = time.perf_counter() - t0
            row = {"image": name, **measure(out, g, protocol), "height": int(g.shape[0]),
                   "width": int(g.shape[1]), "time_s": round(dt, 3)}
            if out_dir is not None and save_images:
                _write_png(out_dir / "restored" / f"{name}.png", out, protect)
            if out_dir is not None and compare:
                _write_png(out_dir / "compare" / f"{name}.png", comparison_image(lq, out, g), protect)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        bar.close()
    return EvalResult(rows, summarize(rows), protocol, {"self_ensemble": self_ensemble})


def _write_png(path: Path, img: np.ndarray, protect) -> None:
    from .data import write_image

    write_image(path, img, overwrite=True, protect=protect)


def evaluate(
    model,
    dataset: Union[str, os.PathLike],
    protocol: Protocol,
    limit: Optional[int] = None,
    data_root=None,
    **kwargs,
) -> EvalResult:
    """Evaluates ``model`` on a dataset name or folder (see :func:`evaluate_arrays` for kwargs)."""
    folder = resolve_dataset(dataset, data_root)
    files = list_images(folder)
    if limit is not None:
        if limit < 1:
            raise EvalError(f"limit must be >= 1, got {limit}")
        files = files[:limit]
    images = load_images(files, as_restoration_model(model).in_channels)
    kwargs.setdefault("protect", files)
    res = evaluate_arrays(model, images, protocol, **kwargs)
    res.meta.update({"dataset": str(dataset), "dataset_dir": str(folder)})
    return res


def write_results(result: EvalResult, out_dir: Union[str, os.PathLike], stem: str = "results") -> Tuple[Path, Path]:
    """Writes ``<stem>.csv`` (one row per image, then the average) and ``<stem>.json``
    (protocol, meta, rows, averages) into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    cols = ["image", *result.metric_names(), "height", "width", "time_s"]
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in result.rows:
        wr.writerow({k: (f"{v:.6f}" if isinstance(v, float) and k not in ("time_s",) else v) for k, v in r.items()})
    avg = {k: (f"{v:.6f}" if k != "time_s" else f"{v:.3f}") for k, v in result.averages.items() if k in cols}
    wr.writerow({"image": "average", **avg})
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    write_text_atomic(buf.getvalue(), csv_path)
    doc = {"protocol": result.protocol.to_dict(), "protocol_text": result.protocol.describe(), **result.meta,
           "averages": result.averages, "images": result.rows}
    write_text_atomic(json.dumps(doc, indent=2) + "\n", json_path)
    return csv_path, json_path
