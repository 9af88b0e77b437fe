"""What the web app does, without any web library (so it is tested and used without Gradio).

:class:`Engine` serves one device. Every request is checked before a model runs: image
files must decode and stay under ``max_pixels``, kernels must be 2-D and fit the model,
weights files must be weights-only torch files that fit the chosen network. Problems are
raised as :class:`WebError` with a message meant for the page; a bad image among several
is reported and the others are restored. Model runs hold a lock, so one runs at a time.

Results are written under ``workdir`` (a folder the server owns and deletes on exit) in
the input's format and bit depth: PNG/TIFF/BMP/JPEG, 8 or 16 bits, grey, colour or with
alpha, as :func:`conversenet.data.write_image` stores them.

Example (a random network, so the "restored" image means nothing; shows the calls only):
    >>> import tempfile, numpy as np
    >>> from conversenet.data import write_image
    >>> from conversenet.models import create
    >>> d = tempfile.mkdtemp()
    >>> write_image(f"{d}/in.png", np.zeros((24, 20), np.uint16))
    >>> eng = Engine(d, device="cpu")
    >>> net = create("converse_dncnn", width=4, num_blocks=1)
    >>> rep = eng.restore([f"{d}/in.png"], "Denoise", model_override=net)
    >>> r = rep.images[0]
    >>> r.path.name, r.after.shape, r.after.dtype
    ('in_denoised.png', (24, 20, 3), dtype('uint8'))
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..models.base import as_restoration_model
from ..tasks import channel_kind, get_task

__all__ = ["TASKS", "WEIGHTS", "LAYER_WEIGHTS", "FROM_FILE", "DEFAULT_MAX_PIXELS", "WebError", "RestoredImage",
           "RestoreReport", "Engine", "clean_uploads"]

#: task label in the page -> (task, blind, where the kernel comes from)
TASKS: Dict[str, Tuple[str, bool, Optional[str]]] = {
    "Denoise": ("denoise", False, None),
    "Super-resolution ×4": ("sr", False, None),
    "Deblur, blind": ("deblur", True, None),
    "Deblur, Gaussian kernel": ("deblur", False, "gaussian"),
    "Deblur, uploaded kernel": ("deblur", False, "file"),
}
#: weights label -> :func:`conversenet.restore.load_model` ``weights`` ("upload": a file sent with the request)
WEIGHTS = {"Auto": "auto", "Built-in": "builtin", "Official": "official", "Uploaded file": "upload"}
LAYER_WEIGHTS = {"Official": "official", "Random (untrained)": "random"}
#: model choice meaning "the file's sidecar / file name / the task's default network"
FROM_FILE = "(task default / from the file name)"
#: default image size limit of a request (input pixels): 4096 x 4096
DEFAULT_MAX_PIXELS = 4096 * 4096
_TAGS = {"denoise": "denoised", "sr": "x4", "deblur": "deblurred"}


class WebError(ValueError):
    """A problem with a request, worded for the page (names the upload, says what to do)."""


@dataclass
class RestoredImage:
    """One restored upload.

    Attributes:
        name: the upload's file name.
        before, after: uint8 (H, W, 3) pictures for the page (SR: ``before`` is the input
            enlarged with MATLAB bicubic to the result's size).
        path: the result file (the input's format and bit depth).
        metrics: with a reference: ``psnr``/``ssim`` of the result and ``psnr_in``/``ssim_in``
            of the input (SR: of the bicubic enlargement).
        note: why metrics are missing, when they are.
    """

    name: str
    before: np.ndarray
    after: np.ndarray
    path: Path
    bit_depth: int
    metrics: Dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class RestoreReport:
    images: List[RestoredImage]
    errors: List[str]
    warnings: List[str]
    source: str
    seconds: float


def _scrub(msg: str, path, name: str) -> str:
    """Error text with the server-side upload path replaced by the file's name, and the
    upload's folder (named too, e.g. for a sidecar beside it) dropped."""
    if not path:
        return str(msg)
    folder = os.path.dirname(str(path))
    msg = str(msg).replace(str(path), name)
    return msg.replace(folder + os.sep, "") if folder else msg


def _display(img: np.ndarray) -> np.ndarray:
    """float (H, W, C) -> uint8 (H, W, 3) for the page (alpha dropped, grey repeated)."""
    from ..data import from_float

    c = img.shape[2]
    col = img[..., : 3 if c >= 3 else 1]
    u8 = from_float(np.clip(col, 0, 1), 8)
    return np.repeat(u8, 3, axis=2) if u8.shape[2] == 1 else u8


class Engine:
    """Restores uploads and draws Figure 2 on one device; safe to call from several threads.

    Args:
        workdir: folder for results (each request gets a fresh sub-folder with an
            unpredictable name); the caller owns and deletes it.
        device: "auto", "cpu" or "cuda[:N]".
        max_pixels: largest image (input pixels, width x height) a request may send.
        max_memory, tile: tiling of :func:`conversenet.restore.run_model`.
        result_max_age: result folders older than this (seconds) are deleted when the
            next request comes.
    """

    def __init__(self, workdir, device="auto", max_pixels: int = DEFAULT_MAX_PIXELS, max_memory=None,
                 tile: Optional[int] = None, result_max_age: float = 3600.0):
        from .. import restore as R

        if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        self.workdir = Path(workdir)
        if not self.workdir.is_dir():
            raise ValueError(f"workdir {str(workdir)!r} is not a folder")
        self.device = R.resolve_device(device)
        self.max_pixels = int(max_pixels)
        self.max_memory = R.parse_memory(R.DEFAULT_MAX_MEMORY if max_memory is None else max_memory)
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 0
                                 or 0 < tile <= R.DEFAULT_OVERLAP):
            raise ValueError(f"tile must be 0 (never tile) or larger than the {R.DEFAULT_OVERLAP}-pixel overlap, "
                             f"got {tile!r}")
        self.tile = tile
        self.result_max_age = float(result_max_age)
        self._models: Dict[Tuple, object] = {}
        self._layer_cache: Dict[str, Tuple[List[str], bool]] = {}
        self._lock = threading.Lock()  # one model run at a time on this device

    def _new_result_dir(self, prefix: str) -> Path:
        """A fresh folder for one request's outputs; old ones are deleted first."""
        import shutil

        now = time.time()
        for d in self.workdir.iterdir():
            if d.name.startswith(("result-", "layer-")) and d.is_dir() and not d.is_symlink():
                try:
                    if now - d.stat().st_mtime > self.result_max_age:
                        shutil.rmtree(d, ignore_errors=True)
                except OSError:
                    pass
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.workdir))

    # ----------------------------------------------------------------------------------
    # uploads
    # ----------------------------------------------------------------------------------
    def read_upload(self, path) -> Tuple[str, np.ndarray, int]:
        """``(name, float32 (H, W, C) image in [0, 1], bit depth)``; alpha kept as last channel.

        Raises:
            WebError: not an image this package reads, unreadable, or over ``max_pixels``
                (checked from the header, before the pixels are decoded).
        """
        from PIL import Image

        from ..data import IMAGE_EXTENSIONS, ImageReadError, read_image, to_float

        p = Path(path)
        name = p.name
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise WebError(f"{name}: not an image file this app reads (PNG, JPEG, TIFF or BMP)")
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Image.DecompressionBombError:
            raise WebError(f"{name}: the image is larger than this server accepts "
                           f"({self.max_pixels:,} pixels, --max-pixels)") from None
        except Exception:  # not decodable: read_image says why below
            w = h = 0
        if w * h > self.max_pixels:
            raise WebError(f"{name}: {w}x{h} = {w * h:,} pixels is over this server's limit of "
                           f"{self.max_pixels:,} pixels (--max-pixels)")
        try:
            arr, info = read_image(p, alpha="keep")
        except ImageReadError as e:
            raise WebError(_scrub(e, p, name)) from None
        if arr.shape[0] * arr.shape[1] > self.max_pixels:  # a header that lied
            raise WebError(f"{name}: {arr.shape[1]}x{arr.shape[0]} pixels is over this server's limit of "
                           f"{self.max_pixels:,} pixels (--max-pixels)")
        return name, to_float(arr), info.bit_depth

    # ----------------------------------------------------------------------------------
    # models
    # ----------------------------------------------------------------------------------
    def load(self, task: str, blind: bool, weights: str = "Auto", weights_file=None, model: Optional[str] = None,
             channels: Optional[int] = None):
        """The :class:`conversenet.restore.LoadedModel` for a request (named weights are cached;
        an uploaded file is read with ``torch.load(weights_only=True)`` and not kept).

        ``channels`` (of the image) picks the task's default for such images where it has one
        (denoising with no model named: the blind grey / colour denoisers), as
        :func:`conversenet.restore.load_model` does."""
        from .. import restore as R

        if weights not in WEIGHTS:
            raise WebError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        w = WEIGHTS[weights]
        model = None if model in (None, "", FROM_FILE) else model
        if w == "upload":
            if not weights_file:
                raise WebError("weights: upload a weights file (.pth), or pick Auto, Built-in or Official")
            name = Path(weights_file).name
            try:
                lm = R.load_weights_file(weights_file, task, model, blind)
            except (R.RestoreError, ValueError) as e:
                raise WebError(f"weights file {name}: {_scrub(e, weights_file, name)}") from None
            if get_task(task).has_blind_mode and lm.model.takes_kernel == bool(blind):
                want = "a blind model (conversenet)" if blind else "a model taking a kernel (converse_usrnet)"
                raise WebError(f"weights file {name} holds {lm.name}, which does not fit this deblurring mode: need {want}")
            lm.model.to(self.device)
            lm.source = f"uploaded file {name} ({lm.name})"
            return lm
        by_channels = channels if get_task(task).picks_by_channels else None
        key = (task, bool(blind), w, model, by_channels)
        lm = self._models.get(key)
        if lm is None:
            try:
                lm = R.load_model(task, model, w, self.device, blind=blind, channels=by_channels)
            except (R.RestoreError, ValueError) as e:
                raise WebError(f"weights: {e}") from None
            self._models[key] = lm
        return lm

    # ----------------------------------------------------------------------------------
    # restore tab
    # ----------------------------------------------------------------------------------
    def restore(self, files: Sequence, task: str, weights: str = "Auto", weights_file=None,
                model: Optional[str] = None, sigma: Optional[float] = None, kernel_sigma: float = 1.6,
                kernel_file=None,
                references: Sequence = (), progress: Optional[Callable[[float, str], None]] = None,
                model_override=None, self_ensemble: bool = False) -> RestoreReport:
        """Restores each upload in ``files`` (paths) with the task labelled ``task`` (:data:`TASKS`).

        Args:
            weights, weights_file, model: see :meth:`load`.
            sigma: denoise: the noise level of the uploads (0..255), or None (unknown): each
                image then gets the default for its channels (the blind grey / colour
                denoisers with Auto or Built-in weights). A warning says when the weights
                were trained for another level than the one given.
            kernel_sigma / kernel_file: non-blind deblurring with a Gaussian or a kernel file.
            references: clean images; one whose name (without extension) is an upload's
                is its reference; a single reference goes with a single upload.
            progress: called with (fraction done, what) while images and tiles finish.
            model_override: an ``nn.Module`` used instead of loading weights (tests, API).
            self_ensemble: average 8 flipped/rotated passes per image (8x the time).

        Raises:
            WebError: nothing to do, a bad option, no usable weights or kernel, or every
                upload failed (the messages of the failures).
        """
        from .. import restore as R
        from ..data import KernelError, write_image, from_float

        t0 = time.perf_counter()
        files = [f for f in (files or []) if f]
        if not files:
            raise WebError("upload one or more images (PNG, JPEG, TIFF or BMP)")
        if task not in TASKS:
            raise WebError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        tname, blind, ksrc = TASKS[task]
        if not isinstance(self_ensemble, bool):
            raise WebError(f"self-ensemble must be on or off, got {self_ensemble!r}")
        if sigma is not None and not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise WebError(f"noise level must be a number >= 0 (or unknown), got {sigma!r}")
        kspec, kname = None, None
        if ksrc == "gaussian":
            if not (isinstance(kernel_sigma, (int, float)) and math.isfinite(kernel_sigma) and kernel_sigma > 0):
                raise WebError(f"Gaussian kernel width must be > 0, got {kernel_sigma!r}")
            kspec = kname = f"gaussian:{float(kernel_sigma):g}"
        elif ksrc == "file":
            if not kernel_file:
                raise WebError("kernel: upload a kernel file (.npy, .mat or a grey image), or pick another deblur mode")
            kspec, kname = str(kernel_file), Path(kernel_file).name

        # everything is read and checked before a model runs
        errors: List[str] = []
        images = []
        for f in files:
            try:
                images.append(self.read_upload(f))
            except WebError as e:
                errors.append(str(e))
        refs = {}
        for f in references or []:
            if not f:
                continue
            try:
                n, a, _ = self.read_upload(f)
                refs[Path(n).stem] = (n, a)
            except WebError as e:
                errors.append(f"reference {e}")
        if not images:
            raise WebError("; ".join(errors))
        if model_override is not None:
            over = as_restoration_model(model_override, tname)
            lm = R.LoadedModel(over.eval().to(self.device), over.describe(), "module passed in", {})
            models = {None: lm}
        elif R.by_image_kind(tname, None if model in (None, "", FROM_FILE) else model, WEIGHTS.get(weights), sigma):
            # noise level unknown: each image gets the default for its kind (grey + alpha is grey)
            models = {c: self.load(tname, blind, weights, weights_file, model, channels=c)
                      for c in sorted({channel_kind(img.shape[2]) for _, img, _ in images})}
        else:
            models = {None: self.load(tname, blind, weights, weights_file, model)}
        for m in models.values():
            self._check_model(m, tname, kspec)
        net = next(iter(models.values())).model
        kernel = None
        if net.takes_kernel:
            try:
                kernel = R.make_kernel(kspec, net.blur_kernel_size)
            except (KernelError, ValueError, TypeError, ImportError) as e:
                raise WebError(f"kernel {kname}: {_scrub(e, kspec, kname)}") from None
        warnings = []
        for m in models.values():
            if not get_task(tname).noisy_input or m.sigma is None:
                continue
            if sigma is None:
                warnings.append(f"{m.name} was trained for noise level {m.sigma:g} only; for an unknown level "
                                f"use Auto or Built-in weights (the blind denoisers)")
            elif float(sigma) != m.sigma:
                warnings.append(f"{m.name} was trained for noise level {m.sigma:g}; results at {float(sigma):g} "
                                f"may be poor")
        out_dir = self._new_result_dir("result-")
        scale = int(net.scale)  # the same for every model of one task
        done: List[RestoredImage] = []
        used = set()
        n = len(images)
        for i, (name, img, depth) in enumerate(images):
            lm = models.get(channel_kind(img.shape[2]), models.get(None))
            min_side = lm.model.min_input_size
            if min(img.shape[:2]) < min_side:
                errors.append(f"{name}: {img.shape[1]}x{img.shape[0]} is smaller than the model's minimum side {min_side}")
                continue
            if progress is not None:
                progress(i / n, f"{name} ({i + 1}/{n})")
            def tile_progress(k, total, i=i, name=name):  # tiles (times the ensemble's passes) of this image
                progress((i + k / total) / n, f"{name}: {'step' if self_ensemble else 'tile'} {k}/{total}")
            cb = tile_progress if progress is not None else None
            try:
                with self._lock:
                    out = R.restore_array(img, lm, kernel, tile=self.tile, max_memory=self.max_memory, progress=cb,
                                          self_ensemble=self_ensemble)
            except (ValueError, RuntimeError) as e:  # e.g. out of memory: this image fails, the server goes on
                errors.append(f"{name}: {e}")
                continue
            p = Path(name)
            stem = f"{p.stem}_{_TAGS[tname]}"
            dest = out_dir / f"{stem}{p.suffix.lower()}"
            k = 2
            while dest.name in used:
                dest = out_dir / f"{stem}_{k}{p.suffix.lower()}"
                k += 1
            used.add(dest.name)
            try:
                write_image(dest, from_float(out, depth), quality=95)
            except (ValueError, OSError) as e:
                errors.append(f"{name}: cannot write the result: {e}")
                continue
            base = img
            if scale != 1:
                from ..data import imresize

                base = np.clip(imresize(img.astype(np.float64), scale), 0, 1).astype(np.float32)
            r = RestoredImage(name, _display(base), _display(out), dest, depth)
            ref = refs.get(p.stem) or (next(iter(refs.values())) if len(refs) == 1 and n == 1 else None)
            if ref is not None:
                r.metrics, r.note = self._measure(out, base, ref, depth, tname, scale)
            done.append(r)
        if progress is not None:
            progress(1.0, "done")
        if not done:
            raise WebError("; ".join(errors))
        return RestoreReport(done, errors, warnings, "; ".join(dict.fromkeys(m.source for m in models.values())),
                             time.perf_counter() - t0)

    @staticmethod
    def _check_model(lm, task: str, kspec) -> None:
        if lm.model.task != task:
            raise WebError(f"{lm.name} is a {lm.model.task} network, not {task}")
        if lm.model.takes_kernel and kspec is None:
            raise WebError(f"{lm.name} needs a blur kernel: pick 'Deblur, Gaussian kernel' or 'Deblur, uploaded kernel'")

    @staticmethod
    def _measure(out: np.ndarray, base: np.ndarray, ref, depth: int, task: str, scale: int):
        """PSNR/SSIM (:mod:`conversenet.metrics`) of the result as saved (``depth`` bits) and
        of ``base`` (the input, or its bicubic enlargement) against the reference: colour
        channels only; SR on the Y channel with a ``scale``-pixel border, as ``conversenet eval``."""
        from ..data import from_float, rgb_to_gray
        from ..metrics import psnr, ssim

        rname, r = ref
        c = out.shape[2] - (1 if out.shape[2] in (2, 4) else 0)
        o, b = out[..., :c], base[..., :c]
        g = r[..., : 3 if r.shape[2] >= 3 else 1]
        if g.shape[2] == 3 and c == 1:
            g = rgb_to_gray(g)
        if g.shape != o.shape:
            return {}, (f"reference {rname} is {g.shape[1]}x{g.shape[0]}x{g.shape[2]}, the result "
                        f"{o.shape[1]}x{o.shape[0]}x{o.shape[2]}: not compared")
        qo, qb, qg = (from_float(np.clip(a, 0, 1), depth) for a in (o, b, g))
        t = get_task(task)
        y = t.test_y and c == 3
        kw = dict(crop_border=scale if t.scaled else 0, test_y_channel=y, input_range=float(2**depth - 1),
                  round_y=y and depth == 8)
        try:
            return {"psnr": float(psnr(qo, qg, **kw)), "ssim": float(ssim(qo, qg, **kw)),
                    "psnr_in": float(psnr(qb, qg, **kw)), "ssim_in": float(ssim(qb, qg, **kw))}, ""
        except ValueError as e:
            return {}, f"not compared: {e}"

    # ----------------------------------------------------------------------------------
    # inside-a-layer tab
    # ----------------------------------------------------------------------------------
    def layer_models(self) -> List[str]:
        """Registry models with Converse2d layers, the released presets first."""
        from ..models import registry

        names = [n for n in registry.list_models() if self.layers_of(n)]
        return sorted(names, key=lambda n: (registry.model_info(n)["official_file"] is None, n))

    def layers_of(self, model: str) -> List[str]:
        """Names of ``model``'s Converse2d layers (built once with random weights)."""
        from .. import visualize as V
        from ..models import registry

        if model not in self._layer_cache:
            if model not in registry.list_models():
                raise WebError(f"unknown model {model!r}")
            net = registry.create(model)
            self._layer_cache[model] = (V.converse_layers(net), bool(as_restoration_model(net).takes_kernel))
        return self._layer_cache[model][0]

    def layer_figure(self, model: str, weights: str = "Official", layer: Optional[str] = None, image=None,
                     sigma: float = 25.0, size: int = 96, num_channels: int = 3) -> Tuple[Path, str]:
        """Figure 2 (:func:`conversenet.visualize.figure2`) of one Converse2d layer for the
        upload ``image`` (default: the generated sample scene); returns (PNG path, summary).

        The image is centre-cropped to ``size``; a denoiser's input gets noise ``sigma``,
        a non-blind deblurring model a Gaussian kernel of 1.6 pixels
        (:func:`conversenet.visualize.prepare_input`)."""
        from .. import restore as R
        from .. import visualize as V
        from ..data import to_float
        from ..models import registry

        if weights not in LAYER_WEIGHTS:
            raise WebError(f"weights must be one of {', '.join(LAYER_WEIGHTS)}, got {weights!r}")
        layers = self.layers_of(model)
        if not layers:
            raise WebError(f"{model} has no Converse2d layer with a learned kernel")
        if layer in (None, ""):
            layer = layers[0]
        if layer not in layers:
            raise WebError(f"{model} has no Converse2d layer {layer!r}; pick one from the list")
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not 16 <= size <= 512:
            raise WebError(f"crop size must be between 16 and 512, got {size!r}")
        if not (isinstance(num_channels, (int, float)) and 1 <= num_channels <= 16):
            raise WebError(f"channels must be between 1 and 16, got {num_channels!r}")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise WebError(f"noise level must be a number >= 0, got {sigma!r}")
        task = registry.model_info(model)["task"]
        if image:
            name, img, _ = self.read_upload(image)
            img = img[..., : 3 if img.shape[2] >= 3 else 1]
        else:
            name, img = "the generated sample scene", to_float(R.sample_image(max(int(size), 16)))
        needs_kernel = self._layer_cache[model][1]
        if LAYER_WEIGHTS[weights] == "random":
            net = registry.create(model).eval().to(self.device)
            source = f"{model} with random weights"
        else:
            lm = self.load(task, not needs_kernel, "Official", None, model)
            net, source = lm.model, lm.source
        noise = float(sigma) if get_task(task).noisy_input else 0.0  # the noise a denoiser expects
        x, kernel = V.prepare_input(net, img, size=int(size), sigma=noise)
        x = x.to(self.device)
        kernel = None if kernel is None else kernel.to(self.device)
        with self._lock:
            maps = V.converse_maps(net, x, layer, None, int(num_channels), kernel)
        out_dir = self._new_result_dir("layer-")
        dest = out_dir / "figure2.png"
        V.figure2(maps, dest, title=f"Converse2D layer {maps['layer']} of {model}")
        err = float(np.abs(maps["E"]).max())
        summary = (f"layer `{maps['layer']}` of {model}, channels {maps['channels']}, input {name} "
                   f"({x.shape[-1]}x{x.shape[-2]}), max |Y − X*⊗K| = {err:.3g}; weights: {source}")
        return dest, summary


def clean_uploads(paths: Sequence, root) -> int:
    """Deletes uploaded files that lie inside ``root`` (the server's upload folder) and their
    folders when emptied; returns how many files went. Paths elsewhere are never touched."""
    root_r = os.path.realpath(root)
    n = 0
    for p in paths:
        if not p:
            continue
        rp = os.path.realpath(p)
        if os.path.commonpath([rp, root_r]) != root_r or rp == root_r or not os.path.isfile(rp):
            continue
        try:
            os.unlink(rp)
            n += 1
            d = os.path.dirname(rp)
            if d != root_r and os.path.commonpath([d, root_r]) == root_r and not os.listdir(d):
                os.rmdir(d)
        except OSError:
            pass
    return n
