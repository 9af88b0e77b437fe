"""``conversenet eval``: run a published evaluation protocol and report PSNR/SSIM.

Example::

    conversenet eval --model converse_dncnn --weights official --dataset set12 --sigma 25
    conversenet eval --model converse_srresnet --weights official --dataset set5
    conversenet eval --model converse_usrnet --weights official --dataset bsd100 --kernel kernel_1

The model's task picks the protocol (see :mod:`conversenet.evaluate`). Outputs go to
``--out`` (default ``results/<model>_<dataset>[_<kernel>]``): ``restored/*.png``,
``compare/*.png`` (with ``--compare``), ``results.csv`` and ``results.json``.

Ctrl-C (SIGINT) or SIGTERM stops a run after the current network call with exit code 130
(143 for SIGTERM) and one line on stderr; ``results.csv``/``results.json`` then hold the images finished so far
(``"complete": false, "interrupted": true``), written atomically.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from . import CLIError, exit_code


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on a test set with the paper's protocol (PSNR/SSIM)",
        description="Runs the published protocol of the model's task (denoise: Table 4, sr: Table 5, "
        "deblur: Table 7) and reports per-image and average PSNR/SSIM.",
    )
    p.add_argument("--model", required=True, help="registered model name (see `conversenet.models.list_models()`); "
                   "with --weights official a name without the '_official' suffix picks its official preset")
    p.add_argument("--weights", default="official", help="'official' (the authors' checkpoint), 'builtin' (the "
                   "package's own weights), a .pth file, or 'none' for random initialisation (default: official)")
    p.add_argument("--dataset", required=True, help="set12, bsd68, cbsd68, set5, set14, bsd100 (under the data "
                   "root) or a folder of images")
    p.add_argument("--sigma", type=float, default=None, help="noise level in 0..255 units "
                   "(default: 25 for denoising, 2.55 for deblurring; none for SR)")
    p.add_argument("--scale", type=int, default=None, help="SR factor (must match the model; default: the model's)")
    p.add_argument("--kernel", default=None, help="blur kernel for deblurring: kernel_1..kernel_5 (under the data "
                   "root) or a .npy/.mat/image file")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    p.add_argument("--out", default=None, help="output folder (default: results/<model>_<dataset>[_<kernel>])")
    p.add_argument("--save-images", dest="save_images", action="store_true", default=True,
                   help="write restored images (default)")
    p.add_argument("--no-save-images", dest="save_images", action="store_false", help="do not write restored images")
    p.add_argument("--compare", action="store_true", help="also write degraded | restored | ground-truth PNGs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--data-root", default=None, help="data root holding testsets/ and kernels/ "
                   "(default: $CONVERSENET_DATA or ../shared/data)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def _resolve_model_name(name: str, weights: str) -> str:
    from ..models import list_models, model_info

    names = list_models()
    if name not in names:
        raise CLIError(f"unknown model {name!r}; valid names: {', '.join(names)}")
    if weights == "official" and model_info(name)["official_file"] is None:
        alt = f"{name}_official"
        if alt in names:
            return alt
        have = [n for n in names if model_info(n)["official_file"]]
        raise CLIError(f"no official weights for {name!r}; official weights exist for: {', '.join(have)}")
    if weights not in ("official", "builtin", "auto") and weights.lower() != "none" and Path(weights).is_file():
        # the authors' file under any name: recognised by its SHA-256, it needs their preset
        from ..models.weights import official_file_of

        official = official_file_of(weights)
        preset = next((n for n in names if official and model_info(n)["official_file"] == official), None)
        if preset is not None and name in (preset, preset.removesuffix("_official")):
            return preset
    return name


def _load_model(name: str, weights: str):
    from ..models import WeightsError, create
    from ..paths import default_official_weights_dir

    try:
        if weights == "official":
            return create(name, pretrained="official", weights_path=default_official_weights_dir())
        if weights.lower() == "none":
            return create(name).eval()
        if weights == "builtin":  # conversenet/weights/<name>.pth shipped with the package
            return create(name, pretrained="builtin")
        if not Path(weights).is_file():
            raise CLIError(f"weights file {weights!r} does not exist")
        return create(name, pretrained=weights)
    except (WeightsError, ValueError) as e:
        raise CLIError(str(e).splitlines()[0]) from e


def _device(spec: str):
    import torch

    if spec == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda requested but CUDA is not available")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(spec)


def _fmt_row(name: str, r: dict, y: bool, width: int) -> str:
    s = f"{name:<{width}}  {r['psnr']:8.2f}  {r['ssim']:7.4f}"
    if y:
        s += f"  {r.get('psnr_y', float('nan')):8.2f}  {r.get('ssim_y', float('nan')):7.4f}"
    if "time_s" in r:
        s += f"  {r['time_s']:8.1f}"
    return s


def run(args) -> int:
    """Entry point of ``conversenet eval``; see :func:`_run`. SIGINT and SIGTERM raise
    ``KeyboardInterrupt`` here whatever the inherited disposition (the dispatcher's
    :func:`conversenet.cli.stop_signals`); the rows finished so far are then written and the
    exit code is 130 (SIGINT) or 143 (SIGTERM)."""
    state: dict = {}
    try:
        return _run(args, state)
    except KeyboardInterrupt as e:
        return _interrupted(state, exit_code(e))


def _interrupted(state: dict, code: int = 130) -> int:
    """Writes the rows finished before the interrupt (if any) and prints one line; returns ``code``."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut this short write
            signal.signal(sig, signal.SIG_IGN)
    write = state.get("write_partial")
    rows = state.get("rows") or []
    if write is None or not rows:
        print("conversenet eval: interrupted before the first image was finished; no results written",
              file=sys.stderr)
        return code
    _, json_path = write(interrupted=True)
    print(f"conversenet eval: interrupted after {len(rows)} of {state['total']} images; "
          f"partial results: {json_path}", file=sys.stderr)
    return code


def _run(args, state: dict) -> int:
    import torch

    from .. import evaluate as ev
    from .._atomic import WriteError, check_writable_dir

    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    name = _resolve_model_name(args.model, args.weights)
    try:
        # everything that can be checked without the network is checked first
        folder = ev.resolve_dataset(args.dataset, args.data_root)
        files = ev.list_images(folder)
        if args.limit is not None:
            files = files[: args.limit]
        kernel, kname = (None, "")
        if args.kernel is not None:
            kernel, kname = ev.resolve_kernel(args.kernel, args.data_root)
        ds = Path(args.dataset).name if folder == Path(args.dataset) else args.dataset.lower()
        out = Path(args.out) if args.out else Path("results") / "_".join(x for x in (args.model, ds, kname) if x)
        if folder.resolve() in ((out / "restored").resolve(), (out / "compare").resolve()):
            raise CLIError(f"--out {out} would write into the dataset folder {folder}; choose another output folder")
        try:  # a read-only or missing place fails here, in one line, before the network runs
            check_writable_dir(out, "--out")
        except WriteError as e:
            raise CLIError(f"--out: {e}") from None
        model = _load_model(name, args.weights).to(device)
        proto = ev.protocol_for(model, sigma=args.sigma, scale=args.scale, kernel=kernel, kernel_name=kname)
        images = ev.load_images(files, int(getattr(model, "in_channels", 3)))
        min_side = ev.model_min_side(model)
        for iname, gt in images:
            ev.check_image_size(iname, gt.shape, proto, min_side)
    except ev.EvalError as e:
        raise CLIError(str(e)) from e

    y = proto.test_y
    width = max(12, max(len(n) for n, _ in images))
    print(f"model {name} ({args.weights}) on {folder} ({len(images)} images), device {device}, "
          f"threads {torch.get_num_threads()}")
    print(f"protocol: {proto.describe()}")
    head = f"{'image':<{width}}  {'PSNR':>8}  {'SSIM':>7}"
    if y:
        head += f"  {'PSNR-Y':>8}  {'SSIM-Y':>7}"
    head += f"  {'time s':>8}"
    print(head)
    print("-" * len(head))
    sys.stdout.flush()

    from tqdm import tqdm

    rows = []

    def write_partial(interrupted=False):
        meta = {"model": name, "weights": args.weights, "dataset": args.dataset, "complete": False,
                "images_total": len(images)}
        if interrupted:
            meta["interrupted"] = True
        return ev.write_results(ev.EvalResult(list(rows), ev.summarize(rows), proto, meta), out)

    state.update(rows=rows, total=len(images), write_partial=write_partial)

    def on_row(r):
        # the row is kept first: an interrupt during the print or the write below still saves it
        rows.append(r)
        tqdm.write(_fmt_row(r["image"], r, y, width))
        sys.stdout.flush()
        # partial results after every image, so that a killed long run keeps its numbers
        write_partial()

    t0 = time.perf_counter()
    try:
        res = ev.evaluate_arrays(model, images, proto, device=device, out_dir=out, save_images=args.save_images,
                                 compare=args.compare, progress=args.progress, on_row=on_row, protect=files)
    except ev.EvalError as e:
        raise CLIError(str(e)) from e
    wall = time.perf_counter() - t0
    res.meta.update({"model": name, "weights": args.weights, "dataset": args.dataset, "dataset_dir": str(folder),
                     "device": str(device), "threads": torch.get_num_threads(), "wall_time_s": round(wall, 1),
                     "limit": args.limit, "complete": True})
    print("-" * len(head))
    print(_fmt_row("average", {k: v for k, v in res.averages.items() if k != "time_s"}, y, width))
    csv_path, json_path = ev.write_results(res, out)
    print(f"wall time {wall:.1f} s; results: {csv_path}, {json_path}"
          + (f"; images: {out / 'restored'}" if args.save_images else ""))
    return 0
