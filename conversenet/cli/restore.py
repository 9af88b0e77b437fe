"""``conversenet denoise | sr | deblur | demo | degrade``: restore image files.

Examples::

    conversenet denoise photos/ -o clean/ --sigma 25
    conversenet sr small.png -o big.png --scale 4
    conversenet deblur blurred/*.jpg -o sharp/ --kernel gaussian:1.6
    conversenet deblur blurred.png -o sharp/ --blind
    conversenet degrade set12/ -o noisy/ --sigma 25 --format npy   # the test protocol's inputs
    conversenet demo

INPUT may be files, folders (their images, not recursing) or glob patterns. Each output
keeps its input's format, bit depth and channels (``.npy`` float inputs give ``.npy``
float32 outputs, float TIFF float TIFF). Inputs are never overwritten, outputs and
comparisons only with ``--overwrite``; outputs of one run that would share a name get
distinct ones (``a_png``, ``a_jpg``; a ``note:`` line says so). Every input (its header) and
every output path is checked before the model loads; a file that fails a check, cannot be
read or restored is reported (one line) and skipped, and the exit code is 1 when any file
failed. Broken symbolic links among the inputs are reported the same way. See
docs/RESTORE.md.

One module serves all five commands: ``add_parser`` registers them on its first call
(the dispatcher calls it once per command name).
"""

from __future__ import annotations

import errno
import functools
import glob
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import CLIError, check_flag

NPY = ".npy"


# --------------------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------------------
def _common(p, default_weights: str = "auto") -> None:
    p.add_argument("--model", default=None, help="registry name (default: the task's released network)")
    p.add_argument("--weights", default=default_weights,
                   help="auto (the authors' weights when found or downloadable, else the built-in ones), "
                        f"official, builtin, or a .pth file (default: {default_weights})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in input pixels (0: never tile; default: only when the image would "
                        "exceed --max-memory)")
    p.add_argument("--overlap", type=int, default=None, help="overlap of neighbouring tiles in input pixels (default 32)")
    p.add_argument("--max-memory", dest="max_memory", default=None,
                   help="working-memory budget of the network, e.g. 4GB, 512MB (default 4GB)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--self-ensemble", dest="self_ensemble", action="store_true",
                   help="average 8 flipped/rotated passes of the network (8x the time, usually a little better)")


def _files_args(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (or a file name when there is a single input)")
    p.add_argument("--compare", action="store_true", help="also write degraded | restored PNGs to OUT/compare/")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs are never replaced)")
    p.add_argument("--ground-truth", dest="ground_truth", default=None, metavar="DIR",
                   help="folder with clean images of the same names: print PSNR/SSIM as `conversenet eval` measures")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--workers", type=int, default=2,
                   help="processes reading images ahead of the network (0: read in the main process; default 2)")


def add_parser(sub) -> None:
    if "denoise" in sub.choices:  # already registered by an earlier name of this module
        return
    d = sub.add_parser("denoise", help="remove Gaussian noise from images",
                       description="Denoise images. Without --model and --sigma each image is denoised by the "
                                   "package's blind denoiser of its kind (grey or colour, any noise level up to "
                                   "sigma 55). With --sigma (or --weights official) the paper's Converse-DnCNN "
                                   "(grey, trained for sigma 25; colour images channel by channel) is used.")
    _files_args(d)
    d.add_argument("--sigma", type=float, default=None,
                   help="noise level of the images in 0..255 units; given, the sigma-trained default model is used "
                        "(default: not given, the blind grey / colour denoiser picked by each image)")
    _common(d)
    d.set_defaults(func=run_files, task="denoise")

    s = sub.add_parser("sr", help="super-resolve images (x4)", description="Upscale images with a super-resolution model.")
    _files_args(s)
    s.add_argument("--scale", type=int, default=4, help="upscaling factor (must match the model; default 4)")
    _common(s)
    s.set_defaults(func=run_files, task="sr")

    b = sub.add_parser("deblur", help="remove blur from images",
                       description="Deblur images: non-blind with a known kernel (Converse-USRNet) or --blind (ConverseNet).")
    _files_args(b)
    g = b.add_mutually_exclusive_group(required=True)
    g.add_argument("--kernel", default=None,
                   help="blur kernel: a .npy/.mat/image file or gaussian:SIGMA (e.g. gaussian:1.6)")
    g.add_argument("--blind", action="store_true", help="the kernel is unknown (blind ConverseNet)")
    _common(b)
    b.set_defaults(func=run_files, task="deblur")

    m = sub.add_parser("demo", help="restore a generated sample image and show the result (offline)",
                       description="Generates a synthetic scene, degrades it, restores it with the built-in "
                                   "weights and writes clean | degraded | restored side by side.")
    m.add_argument("--task", default="denoise", choices=["denoise", "sr", "deblur"], help="default: denoise")
    m.add_argument("-o", "--output", default="conversenet-demo", metavar="DIR", help="default: ./conversenet-demo")
    m.add_argument("--size", type=int, default=192, help="side of the sample image (default 192)")
    m.add_argument("--seed", type=int, default=0, help="seed of the scene and the noise")
    _common(m, default_weights="builtin")
    m.set_defaults(func=run_demo)

    r = sub.add_parser("degrade", help="make degraded test inputs with the evaluation protocols",
                       description="Adds the published degradations (denoise: AWGN with numpy seed 0 per image; "
                                   "sr: MATLAB bicubic 1/scale; deblur: wrap blur + noise 2.55) to clean images.")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="clean image files, folders or glob patterns")
    r.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    r.add_argument("--task", default="denoise", choices=["denoise", "sr", "deblur"], help="default: denoise")
    r.add_argument("--sigma", type=float, default=None, help="noise level (default 25 denoise, 2.55 deblur)")
    r.add_argument("--scale", type=int, default=4, help="SR factor (default 4)")
    r.add_argument("--kernel", default="gaussian:1.6", help="deblur kernel (file or gaussian:SIGMA)")
    r.add_argument("--format", default="npy", choices=["npy", "png"],
                   help="npy: float32, unclipped (exactly the evaluation's input; default); png: clipped, rounded 8-bit")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    r.set_defaults(func=run_degrade)


# --------------------------------------------------------------------------------------
# inputs and outputs
# --------------------------------------------------------------------------------------
def _known_ext() -> set:
    from ..data import IMAGE_EXTENSIONS

    return set(IMAGE_EXTENSIONS) | {NPY}


def _broken_link(f: Path) -> Optional[str]:
    """Why the symbolic link ``f`` cannot be followed (loop, dangling), or None."""
    if not f.is_symlink():
        return None
    try:
        os.stat(f)
    except OSError as e:
        try:
            target = os.readlink(f)
        except OSError:
            target = "?"
        why = ("symbolic link loop" if e.errno == errno.ELOOP
               else "dangling symbolic link" if e.errno == errno.ENOENT else f"unreadable link ({e.strerror})")
        return f"{why} (-> {target})"
    return None


def collect_inputs(specs: List[str], problems: Optional[List[str]] = None) -> List[Tuple[Path, Path]]:
    """``[(file, relative output name)]`` for files, folders (their image files) and globs.

    Entries of a folder or glob that have an image name but are broken symbolic links
    (dangling, or a loop) are not inputs; each adds one line to ``problems``.
    """
    exts = _known_ext()
    out: List[Tuple[Path, Path]] = []
    seen = set()
    problems = [] if problems is None else problems

    def add(f: Path, rel: Path) -> None:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            out.append((f, rel))

    def consider(f: Path) -> None:
        if f.suffix.lower() not in exts:
            return
        why = _broken_link(f)
        if why is not None:
            problems.append(f"{f}: {why}; skipped")
        elif f.is_file():
            add(f, Path(f.name))

    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if not f.name.startswith("."):
                    consider(f)
        elif p.exists():
            add(p, Path(p.name))
        elif _broken_link(p) is not None:
            problems.append(f"{p}: {_broken_link(p)}; skipped")
        else:
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise CLIError(f"input {spec!r}: no such file, folder or matching pattern")
            for m in matches:
                consider(Path(m))
    if not out:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        raise CLIError("no input images found (supported: " + ", ".join(sorted(exts)) + ")")
    return out


def _disambiguate(dests: List[Path], sources: List[Path], ext: str) -> Tuple[List[Path], List[str]]:
    """Output names that would collide (``a.png`` and ``a.jpg`` both giving ``a<ext>``) get the
    source's extension in the name (``a_png<ext>``, ``a_jpg<ext>``); returns the names and a
    note per renamed file."""
    keys = [str(d.resolve()) for d in dests]
    count: Dict[str, int] = {}
    for k in keys:
        count[k] = count.get(k, 0) + 1
    taken = {k for k in keys if count[k] == 1}
    out, notes = [], []
    for d, src, k in zip(dests, sources, keys):
        if count[k] == 1:
            out.append(d)
            continue
        stem = f"{d.stem}_{src.suffix.lstrip('.').lower() or 'noext'}"
        cand, i = d.with_name(stem + ext), 2
        while str(cand.resolve()) in taken:
            cand, i = d.with_name(f"{stem}_{i}{ext}"), i + 1
        taken.add(str(cand.resolve()))
        out.append(cand)
        notes.append(f"note: {src} -> {cand} ({d.name} would be the name of several outputs of this run)")
    return out, notes


def plan_outputs(items: List[Tuple[Path, Path]], output: str, ext: Optional[str] = None,
                 notes: Optional[List[str]] = None) -> List[Tuple[Path, Path]]:
    """``[(input, output path)]``; OUT is a file name only for a single input with an image extension.

    With ``ext`` (a format change, e.g. ``degrade --format npy``) inputs that differ only in
    their extension get distinct names (see :func:`_disambiguate`; a line in ``notes`` each).
    Inputs of the same name from different folders are refused (they cannot be told apart)."""
    outp = Path(output)
    if len(items) == 1 and outp.suffix.lower() in _known_ext() and not outp.is_dir():
        return [(items[0][0], outp)]
    if outp.exists() and not outp.is_dir():
        raise CLIError(f"output {output!r} exists and is not a folder")
    plans = []
    taken: Dict[str, Path] = {}
    for f, rel in items:
        dest = outp / rel
        key = str(dest.resolve())
        if key in taken:
            raise CLIError(f"inputs {taken[key]} and {f} would both be written to {dest}; restore them separately")
        taken[key] = f
        plans.append((f, dest))
    if ext:
        dests, more = _disambiguate([d.with_suffix(ext) for _, d in plans], [f for f, _ in plans], ext)
        plans = [(f, d) for (f, _), d in zip(plans, dests)]
        if notes is not None:
            notes.extend(more)
    return plans


def probe_input(path: Path) -> Optional[Tuple[int, int]]:
    """Checks an input from its header before any work: ``(height, width)`` (None when only
    the decoder knows). Raises ImageReadError naming the file."""
    import numpy as np

    from ..data import ImageReadError, probe_image

    if path.suffix.lower() == NPY:
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # ValueError, OSError, EOFError...: all mean an unreadable file
            raise ImageReadError(f"cannot read {str(path)!r}: {e}") from e
        _check_npy_layout(path, a)
        return int(a.shape[0]), int(a.shape[1])
    return probe_image(path, allow_float=True)


def _check_npy_layout(path: Path, a) -> None:
    from ..data import ImageReadError

    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 2, 3, 4))) or a.dtype.kind not in "fu" \
            or a.dtype.itemsize > 8 or (a.dtype.kind == "u" and a.dtype.itemsize > 2):
        raise ImageReadError(f"cannot read {str(path)!r}: expected an (H, W) or (H, W, C) float or uint8/uint16 "
                             f"array, got {a.dtype} {a.shape}")


def read_input(path: Path):
    """(float32 (H, W, C) image, bit depth 8/16 or 0 for float .npy/TIFF, original dtype).

    Float inputs holding NaN or infinity are refused (ImageReadError naming the file): the
    network would turn them into an all-NaN result."""
    import numpy as np

    from ..data import ImageReadError, read_image, to_float

    if path.suffix.lower() == NPY:
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:  # ValueError, OSError, EOFError...: all mean an unreadable file
            raise ImageReadError(f"cannot read {str(path)!r}: {e}") from e
        _check_npy_layout(path, a)
        if a.ndim == 2:
            a = a[..., None]
        if a.dtype.kind == "f":
            if not np.isfinite(a).all():
                bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
                raise ImageReadError(f"cannot read {str(path)!r}: {bad} value(s) are NaN or infinite")
            return a.astype(np.float32), 0, a.dtype
        return to_float(a), 16 if a.dtype == np.uint16 else 8, a.dtype
    arr, info = read_image(path, alpha="keep", allow_float=True)  # refuses non-finite float TIFF
    if arr.dtype.kind == "f":
        return arr, 0, arr.dtype
    return to_float(arr), info.bit_depth, arr.dtype


def write_output(dest: Path, out, bit_depth: int, overwrite: bool, protect) -> None:
    """float (H, W, C) in [0, 1] -> file; ``bit_depth`` 0 writes float32 (.npy or TIFF)."""
    import numpy as np

    from ..data import from_float, write_image

    if dest.suffix.lower() == NPY:
        _save_npy(dest, out.astype(np.float32) if bit_depth == 0 else from_float(out, bit_depth), overwrite, protect)
        return
    if bit_depth == 0 and dest.suffix.lower() in (".tif", ".tiff") and out.shape[2] != 2:
        write_image(dest, out.astype(np.float32), overwrite=overwrite, protect=protect)
        return
    write_image(dest, from_float(out, bit_depth or 8), overwrite=overwrite, protect=protect)


def _save_npy(dest: Path, arr, overwrite: bool, protect) -> None:
    import numpy as np

    from .._atomic import atomic_open

    for p in protect:
        if os.path.realpath(dest) == os.path.realpath(p):
            raise ValueError(f"refusing to write {str(dest)!r}: it is a protected (input) path")
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{str(dest)!r} exists (pass --overwrite to replace it)")
    with atomic_open(dest, "wb") as f:
        np.save(f, arr)


def output_problem(dest: Path, overwrite: bool, protect_real: set) -> Optional[str]:
    """Why ``dest`` cannot be written by this run (an input, exists without --overwrite, a
    format no writer has), or None."""
    if os.path.realpath(dest) in protect_real:
        return f"refusing to write {dest}: it is a protected path, an input (inputs are never replaced)"
    if dest.suffix.lower() not in _known_ext():
        return f"cannot write {dest}: no writer for {dest.suffix or 'a name without extension'} " \
               f"(use one of {', '.join(sorted(_known_ext()))})"
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        return f"{dest} exists (use --overwrite to replace it)"
    if dest.is_dir():
        return f"{dest} is a folder"
    return None


def check_output_folders(dests) -> None:
    """Every distinct output folder must accept new files (CLIError otherwise), checked before work."""
    from .._atomic import WriteError, check_writable_dir

    for folder in sorted({str(Path(d).parent) for d in dests}):
        try:
            check_writable_dir(folder)
        except WriteError as e:
            raise CLIError(f"output folder: {e}") from None


def side_by_side(*imgs, gap: int = 4):
    """uint8 (H, W, C) images (sizes may differ; smaller ones are enlarged by pixel repetition
    to the largest height) concatenated left to right on a white background."""
    import numpy as np

    c = max(i.shape[2] for i in imgs)
    h = max(i.shape[0] for i in imgs)
    parts = []
    for i in imgs:
        if i.shape[2] != c:
            i = np.repeat(i[..., :1], c, axis=2)
        f = h // i.shape[0]
        if f > 1:
            i = np.repeat(np.repeat(i, f, axis=0), f, axis=1)
        pad = np.full((h, i.shape[1], c), 255, np.uint8)
        pad[: i.shape[0]] = i[:h]
        parts += [pad, np.full((h, gap, c), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def _kernel_for(args, lm):
    from .. import restore as R

    if not lm.model.takes_kernel:
        return None
    try:
        return R.make_kernel(args.kernel, lm.model.blur_kernel_size)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from e
    except Exception as e:  # KernelError / ImportError from the loaders
        raise CLIError(str(e)) from e


def _setup(args):
    """Validated options shared by the commands: (device, tile, overlap, budget)."""
    import torch

    from .. import restore as R

    if args.threads is not None:
        torch.set_num_threads(check_flag("--threads", args.threads))
    if args.tile is not None and args.tile < 0:
        raise CLIError(f"--tile must be >= 0, got {args.tile}")
    overlap = R.DEFAULT_OVERLAP if args.overlap is None else args.overlap
    if overlap < 0:
        raise CLIError(f"--overlap must be >= 0, got {overlap}")
    if args.tile and overlap >= args.tile:
        raise CLIError(f"--overlap ({overlap}) must be smaller than --tile ({args.tile})")
    try:
        budget = R.parse_memory(args.max_memory if args.max_memory is not None else R.DEFAULT_MAX_MEMORY)
        device = R.resolve_device(args.device)
    except ValueError as e:
        raise CLIError(str(e)) from e
    return device, args.tile, overlap, budget


def _load(args, task: str, device, blind: bool = False, log=None, channels=None):
    from .. import restore as R

    try:
        return R.load_model(task, args.model, args.weights, device, blind=blind, log=log, channels=channels)
    except (R.RestoreError, ValueError) as e:
        raise CLIError(str(e)) from e


def _load_for_images(args, task: str, device, log) -> Dict[int, Any]:
    """``{channels: LoadedModel}`` for grey (1) and colour (3) images: the task's default for
    each kind when the task picks by channels and neither --model nor --sigma is given (the
    blind denoisers), else one model for both."""
    from ..restore import by_image_kind

    blind = getattr(args, "blind", False)
    if by_image_kind(task, args.model, args.weights, getattr(args, "sigma", None)):
        grey = _load(args, task, device, blind=blind, channels=1)
        colour = _load(args, task, device, blind=blind, channels=3)
        if grey.name != colour.name:
            log(f"weights for grey images: {grey.source}")
            log(f"weights for colour images: {colour.source}")
            return {1: grey, 3: colour}
        log(f"weights: {grey.source}")  # no per-channel files here: the one fallback model
        return {1: grey, 3: grey}
    lm = _load(args, task, device, blind=blind, log=log)
    return {1: lm, 3: lm}


# --------------------------------------------------------------------------------------
# denoise / sr / deblur
# --------------------------------------------------------------------------------------
def run_files(args) -> int:
    """``denoise | sr | deblur``: one process, or one rank of a ``torchrun`` job
    (:mod:`conversenet.distributed`); inputs streamed and outputs resumable (:mod:`conversenet.batch`).

    Order: options, inputs and OUT, the output folders (writable), the model, then every
    input (header) and output path of this process's share (up to
    :data:`conversenet.batch.PRECHECK_MAX` inputs; beyond, each when its turn comes), then
    one image at a time. Problems are reported one line each and those files are skipped
    (exit code 1); a folder that cannot take the outputs stops the run (exit code 2)."""
    from ..distributed import setup as join_job

    ctx = join_job(args.device, args.threads)
    try:
        return _run_files(args, ctx)
    finally:
        ctx.close()


def check_item(item, may_replace: bool, protect_real: set, min_side: int = 1) -> Optional[str]:
    """Why ``item`` (a :class:`conversenet.batch.Item`) cannot be restored, or None: a broken
    link or unreadable header, an image smaller than ``min_side``, an output (or comparison)
    that is an input or exists without ``may_replace``. Runs in the read-ahead workers (and
    before the first network call)."""
    from ..data import ImageReadError

    why = _broken_link(item.src)
    if why is None:
        try:
            size = probe_input(item.src)
            if size is not None and min(size) < min_side:
                why = f"image is {size[0]}x{size[1]}, smaller than the model's minimum side {min_side}"
        except ImageReadError as e:
            why = str(e)
    if why is None:
        why = output_problem(item.dest, may_replace, protect_real)
    if why is None and item.cmp is not None:
        why = output_problem(item.cmp, may_replace, protect_real)
    if why is None:
        return None
    return why if str(item.src) in why else f"{item.src}: {why}"


def _run_files(args, ctx) -> int:
    import numpy as np

    from .. import batch as B
    from .. import restore as R
    from ..tasks import channel_kind, get_task

    task = args.task
    device, tile, overlap, budget = _setup(args)
    job = B.RestoreJob(ctx, args.inputs, args.output, _known_ext(), read_input, overwrite=args.overwrite,
                       workers=args.workers, progress=args.progress, desc=task, check=check_item,
                       compare=args.compare)
    try:
        job.prepare()
    except B.BatchError as e:
        raise CLIError(str(e)) from e
    gt_dir = Path(args.ground_truth) if args.ground_truth else None
    if gt_dir is not None and not gt_dir.is_dir():
        raise CLIError(f"--ground-truth {args.ground_truth!r} is not a folder")
    out_dir = job.single.parent if job.single is not None else job.root
    check_output_folders([out_dir / "x"] + ([out_dir / "compare" / "x"] if args.compare else []))
    say = print if ctx.is_main else (lambda *a, **k: None)
    lms = _load_for_images(args, task, device, log=say)
    lm = lms[3]
    net = lm.model
    if get_task(task).scaled and args.scale != net.scale:
        raise CLIError(f"--scale {args.scale}: the model {lm.name} upscales by {net.scale}")
    if (get_task(task).noisy_input and lm.sigma is not None and args.sigma is not None and args.sigma != lm.sigma
            and ctx.is_main):
        print(f"warning: {lm.name} was trained for sigma={lm.sigma:g}; results at sigma={args.sigma:g} may be poor "
              f"(without --sigma the blind denoisers are used)", file=sys.stderr)
    kernel = _kernel_for(args, lm)
    min_side = max(m.model.min_input_size for m in lms.values())
    job.check = functools.partial(check_item, min_side=min_side)
    # what changes the files written: outputs made with other settings are not "complete"
    job.resume({"task": task, "model": " | ".join(sorted({m.name for m in lms.values()})),
                "weights": " | ".join(sorted({m.source for m in lms.values()})), "kernel": getattr(args, "kernel", None),
                "blind": getattr(args, "blind", False), "tile": tile, "overlap": overlap, "max_memory": budget,
                "compare": args.compare, "ground_truth": str(gt_dir) if gt_dir else None,
                "self_ensemble": args.self_ensemble})
    # every input and output checked before the first network call (see PRECHECK_MAX)
    for item, why in job.precheck():
        print(f"error: {why}", file=sys.stderr)
    say(f"{task}: {' '.join(args.inputs)} -> {args.output} on {device}"
        + (f", {ctx.world} processes" if ctx.distributed else "")
        + (f", tiles <= {tile}" if tile else ", tiling only above " + f"{budget / 2**30:.3g} GiB")
        + f", overlap {overlap}" + (", self-ensemble (8 passes)" if args.self_ensemble else ""))
    sys.stdout.flush()

    noted_chroma = False
    for kind, item, payload in job:
        src, dest = item.src, item.dest
        if kind == "error":
            job.write(f"error: {payload}", err=True)
            continue
        t0 = time.perf_counter()
        try:
            img, depth, _ = payload
            if min(img.shape[:2]) < min_side:
                raise ValueError(f"image is {img.shape[0]}x{img.shape[1]}, smaller than the model's minimum side {min_side}")
            used = lms[channel_kind(img.shape[2])]  # grey (+ alpha): the grey model; colour: the colour one
            if used is not lms[1] and not noted_chroma:
                noted_chroma = _note_chroma(job, src, lms)
            out = R.restore_array(img, used, kernel, tile=tile, overlap=overlap, max_memory=budget,
                                  progress=_tile_bar(args.progress and ctx.world == 1, src.name),
                                  self_ensemble=args.self_ensemble)
            job.begin(item)
            protect = [src] + [p for p in (dest, item.cmp) if p is not None and job.is_input(p)]
            write_output(dest, out, depth, True, protect)
            written = [dest]
            msg = f"{src} -> {dest} ({out.shape[1]}x{out.shape[0]}, {time.perf_counter() - t0:.1f} s)"
            extra, psnrs = None, []
            if gt_dir is not None:
                msg += _psnr_note(src, out, task, used.model, gt_dir, psnrs)
                extra = list(psnrs[-1]) if psnrs else None
            if item.cmp is not None:
                from ..data import from_float, write_image

                lq8 = from_float(np.clip(img[..., : out.shape[2]], 0, 1), 8)
                write_image(item.cmp, side_by_side(lq8, from_float(np.clip(out, 0, 1), 8)), overwrite=True,
                            protect=protect)
                written.append(item.cmp)
                msg += f"; comparison {item.cmp}"
            job.done(item, written, extra)
            job.write(msg)
        except Exception as e:  # one bad file must not stop the others
            job.failed()
            job.write(f"error: {src}: {e}" if str(src) not in str(e) else f"error: {e}", err=True)
    total = job.finish()
    if not ctx.is_main:
        return 1 if total.failed else 0
    if total.extras:
        print(f"average PSNR {np.mean([p for _, (p, _) in total.extras]):.4f} dB, "
              f"SSIM {np.mean([s for _, (_, s) in total.extras]):.4f} over {len(total.extras)} image(s)")
    print(f"done: {total.written} written, {total.failed} failed"
          + (f", {total.skipped} skipped (already complete)" if total.skipped else ""))
    return 1 if total.failed else 0


def _note_chroma(job, src: Path, lms) -> bool:
    """Says (once per run) when a colour JPEG with subsampled colour goes to the colour model
    chosen by channels: its noise is nearly the same in R, G and B, which that model (trained
    on independent noise per channel) removes poorly; the grey one channel by channel does
    better there (measured in its model card)."""
    from ..data import chroma_subsampling

    sub = chroma_subsampling(src)
    if sub is None:
        return False
    job.write(f"note: {src} stores its colour at reduced resolution (JPEG {sub}); noise in such files is "
              f"nearly the same in R, G and B, which {lms[3].name} removes poorly: --model {lms[1].name} "
              f"(channel by channel) usually does better there (see its model card)")
    return True


def _tile_bar(enabled: bool, name: str):
    """A progress callback for one image: its tiles, times the passes of a self-ensemble (a bar
    appears only when tiling or with --self-ensemble)."""
    if not enabled:
        return None
    from tqdm import tqdm

    state = {}

    def cb(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None or bar.total != total:
            bar = state["bar"] = tqdm(total=total, desc=f"  {name}", unit="step", leave=False,
                                      dynamic_ncols=True, file=sys.stderr)
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()
            state.pop("bar")

    return cb


def _psnr_note(src: Path, out, task: str, net, gt_dir: Path, acc) -> str:
    """PSNR/SSIM of the rounded output vs the ground truth of the same stem, measured as
    :func:`conversenet.evaluate.measure` does for the task."""
    from ..data import from_float, gray_to_rgb, modcrop, read_image
    from ..evaluate import measure
    from ..tasks import get_task

    cands = [p for p in gt_dir.iterdir() if p.stem == src.stem and p.suffix.lower() != NPY]
    if not cands:
        return f"; no ground truth {src.stem}.* in {gt_dir}"
    gt, _ = read_image(cands[0])
    proto = get_task(task).protocol(scale=net.scale)  # only its crop multiple and metrics are used
    gt = modcrop(gt, proto.multiple) if proto.multiple > 1 else gt
    o8 = from_float(out, 8)
    if gt.shape[2] == 1 and o8.shape[2] == 3:
        gt = gray_to_rgb(gt)
    if gt.shape != o8.shape:
        return f"; ground truth {cands[0].name} is {gt.shape}, output {o8.shape}: not compared"
    r = measure(o8, gt, proto)
    acc.append((r.get("psnr_y", r["psnr"]), r.get("ssim_y", r["ssim"])))
    if "psnr_y" in r:
        return f"; PSNR-Y {r['psnr_y']:.4f} dB, SSIM-Y {r['ssim_y']:.4f} (RGB {r['psnr']:.4f})"
    return f"; PSNR {r['psnr']:.4f} dB, SSIM {r['ssim']:.4f}"


# --------------------------------------------------------------------------------------
# degrade
# --------------------------------------------------------------------------------------
def run_degrade(args) -> int:
    import numpy as np

    from ..data import from_float, make_kernel, read_image, write_image
    from ..evaluate import degrade
    from ..tasks import get_task

    if args.sigma is not None and not (args.sigma >= 0):
        raise CLIError(f"--sigma must be >= 0, got {args.sigma}")
    check_flag("--scale", args.scale)
    t = get_task(args.task)
    k = None
    if t.uses_kernel:
        try:
            k = make_kernel(args.kernel, 7)
        except Exception as e:
            raise CLIError(str(e)) from e
    proto = t.protocol(sigma=args.sigma, scale=args.scale, kernel=k, kernel_name=args.kernel if k is not None else "")
    problems: List[str] = []
    notes: List[str] = []
    items = collect_inputs(args.inputs, problems)
    plans = plan_outputs(items, args.output, ext="." + args.format, notes=notes)
    protect = [f for f, _ in plans]
    protect_real = {os.path.realpath(f) for f in protect}
    check_output_folders([d for _, d in plans])
    todo = []
    for src, dest in plans:  # all inputs and outputs checked before any work
        why = None
        try:
            probe_input(src)
        except Exception as e:  # ImageReadError
            why = str(e)
        if why is None:
            why = output_problem(dest, args.overwrite, protect_real)
        if why is None:
            todo.append((src, dest))
        else:
            problems.append(why if str(src) in why else f"{src}: {why}")
    for line in notes:
        print(line)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    failed = len(problems)
    n_total = len(todo) + failed
    for src, dest in todo:
        try:
            gt, info = read_image(src)
            if gt.dtype != np.uint8:
                raise ValueError("the evaluation protocols are defined for 8-bit images")
            _, lq = degrade(gt, proto)
            if args.format == "npy":
                _save_npy(dest, lq.astype(np.float32), args.overwrite, protect)
            else:
                write_image(dest, from_float(lq, 8), overwrite=args.overwrite, protect=protect)
            print(f"{src} -> {dest} ({proto.describe()})")
        except Exception as e:
            failed += 1
            print(f"error: {src}: {e}", file=sys.stderr)
    print(f"done: {n_total - failed} written, {failed} failed")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------
def run_demo(args) -> int:
    import numpy as np

    from .. import restore as R
    from ..data import from_float, imresize, make_kernel, write_image
    from ..evaluate import degrade, measure
    from ..tasks import get_task

    device, tile, overlap, budget = _setup(args)
    if args.size < 48:
        raise CLIError(f"--size must be >= 48, got {args.size}")
    task = args.task
    lm = _load(args, task, device, blind=False, log=print, channels=3)  # the scene is a colour one
    net = lm.model
    s = int(net.scale)
    size = args.size - args.size % (8 * s)
    scene = R.sample_image(size, seed=args.seed)
    if net.in_channels == 1:
        from ..data import rgb_to_gray

        scene = rgb_to_gray(scene)
    t = get_task(task)
    kernel = make_kernel("gaussian:1.6", net.blur_kernel_size or 7) if t.uses_kernel else None
    proto = t.protocol(sigma=lm.sigma, scale=s, kernel=kernel,
                       kernel_name="gaussian:1.6" if t.uses_kernel else "", seed=args.seed)
    gt, lq = degrade(scene, proto)
    t0 = time.perf_counter()
    out = R.restore_array(lq, lm, kernel, tile=tile, overlap=overlap, max_memory=budget,
                          self_ensemble=args.self_ensemble)
    dt = time.perf_counter() - t0
    o8 = from_float(out, 8)
    if t.scaled:
        base = from_float(np.clip(imresize(lq.astype(np.float64), s), 0, 1), 8)
        base_name = "bicubic"
    else:
        base = from_float(np.clip(lq, 0, 1), 8)
        base_name = "degraded"
    r0, r1 = measure(base, gt, proto), measure(o8, gt, proto)
    key = "psnr_y" if "psnr_y" in r1 else "psnr"
    dest = Path(args.output) / f"demo_{task}.png"
    write_image(dest, side_by_side(gt, from_float(np.clip(lq, 0, 1), 8), o8), overwrite=True)
    print(f"demo: a {gt.shape[1]}x{gt.shape[0]} generated scene; {proto.describe()}; restored in {dt:.1f} s "
          f"on {device}")
    print(f"PSNR {base_name}: {r0[key]:.2f} dB   restored: {r1[key]:.2f} dB"
          + ("  (Y channel, border 4)" if key == "psnr_y" else ""))
    print(f"wrote {dest} (clean | {'low-resolution' if t.scaled else 'degraded'} | restored)")
    return 0
