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

from . import CLIError, check_flag, exit_code


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on a test set with the paper's protocol (PSNR/SSIM)",
        description="Runs the published protocol of the model's task (denoise: Table 4, sr: Table 5, "
        "deblur: Table 7) and reports per-image and average PSNR/SSIM.",
    )
    p.add_argument("--model", required=True, nargs="+", help="registered model name(s) (see "
                   "`conversenet.models.list_models()`); with --weights official a name without the '_official' "
                   "suffix picks its official preset. Several --model/--dataset/--sigma/--kernel values make a "
                   "sweep: every combination is evaluated and summarised in OUT/sweep.csv")
    p.add_argument("--weights", default="official", help="'official' (the authors' checkpoint), 'builtin' (the "
                   "package's own weights), a .pth file, or 'none' for random initialisation (default: official)")
    p.add_argument("--dataset", required=True, nargs="+", help="set12, bsd68, cbsd68, set5, set14, bsd100 (under the data "
                   "root) or a folder of images")
    p.add_argument("--sigma", type=float, default=None, nargs="+", help="noise level(s) in 0..255 units "
                   "(default: 25 for denoising, 2.55 for deblurring; none for SR)")
    p.add_argument("--scale", type=int, default=None, help="SR factor (must match the model; default: the model's)")
    p.add_argument("--kernel", default=None, nargs="+", help="blur kernel(s) for deblurring: kernel_1..kernel_5 (under the data "
                   "root) or a .npy/.mat/image file")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    p.add_argument("--out", default=None, help="output folder (default: results/<model>_<dataset>[_<kernel>]; "
                   "a sweep: results/, one sub-folder per combination)")
    p.add_argument("--overwrite", action="store_true", help="start afresh: forget the per-image results of an "
                   "earlier (interrupted) run in the output folder instead of resuming it")
    p.add_argument("--save-images", dest="save_images", action="store_true", default=True,
                   help="write restored images (default)")
    p.add_argument("--no-save-images", dest="save_images", action="store_false", help="do not write restored images")
    p.add_argument("--compare", action="store_true", help="also write degraded | restored | ground-truth PNGs")
    p.add_argument("--self-ensemble", dest="self_ensemble", action="store_true",
                   help="average 8 flipped/rotated passes per image (8x the time; the published tables "
                        "do not use it, so results are kept apart: the output folder name ends in _x8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--data-root", default=None, help="data root holding testsets/ and kernels/ "
                   "(default: $CONVERSENET_DATA or ../shared/data)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def _resolve_model_name(name: str, weights: str) -> str:
    """The registry name to build: with ``official`` weights, the authors' weight set for
    ``name`` (itself, or the one for its architecture); for the authors' file under any name
    (recognised by its SHA-256), the weight set it is."""
    from ..models import list_models
    from ..models import weights as W

    names = list_models()
    if name not in names:
        raise CLIError(f"unknown model {name!r}; valid names: {', '.join(names)}")
    if weights == "official":
        sets = W.weights_for(name, origin="authors")
        if not sets:
            have = [w.name for w in W.list_weights(origin="authors")]
            raise CLIError(f"no official weights for {name!r}; official weights exist for: {', '.join(have)}")
        return sets[0].name
    if weights not in ("official", "builtin", "auto") and weights.lower() != "none" and Path(weights).is_file():
        ws = W.match_file(weights)
        if ws is not None and name in (ws.name, ws.model):
            return ws.name
    return name


def _load_model(name: str, weights: str):
    from ..models import WeightsError, create, load_weights

    try:
        if weights == "official":
            return create(name, pretrained="official")
        if weights.lower() == "none":
            return create(name).eval()
        if weights == "builtin":  # the package's own weight set for this name
            return create(name, pretrained="builtin")
        if not Path(weights).is_file():
            raise CLIError(f"weights file {weights!r} does not exist")
        return load_weights(name, weights).model
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
    if write is None and rows:  # one rank of several: its rows are in the journal
        print(f"conversenet eval: interrupted after {len(rows)} images of this process; a rerun of the same "
              f"command resumes from the per-image journal", file=sys.stderr)
        return code
    if write is None or not rows:
        print("conversenet eval: interrupted before the first image was finished; no results written",
              file=sys.stderr)
        return code
    _, json_path = write(interrupted=True)
    print(f"conversenet eval: interrupted after {len(rows)} of {state['total']} images; "
          f"partial results: {json_path}", file=sys.stderr)
    return code


def _run(args, state: dict) -> int:
    """Checks every combination (cell) of the sweep before any work, then runs the cells one
    after the other; under ``torchrun`` each rank takes every ``world``-th image of a cell."""
    from ..distributed import setup as join_job

    ctx = join_job(args.device, args.threads)
    try:
        return _run_cells(args, state, ctx)
    finally:
        ctx.close()


def _run_cells(args, state: dict, ctx) -> int:
    import itertools

    import torch

    from .. import evaluate as ev
    from .._atomic import WriteError, check_writable_dir
    from ..models import as_restoration_model

    if args.limit is not None:
        check_flag("--limit", args.limit)
    if args.threads is not None:
        torch.set_num_threads(check_flag("--threads", args.threads))
    device = _device(args.device)
    combos = list(itertools.product(_unique(args.model), _unique(args.dataset), _unique(args.kernel or [None]),
                                    _unique(args.sigma or [None])))
    sweep = len(combos) > 1
    models: dict = {}
    folders: dict = {}
    images_of: dict = {}
    kernels: dict = {}
    cells = []
    try:
        # everything that can be checked without the network is checked first, for every cell
        for mname, dspec, kspec, sigma in combos:
            name = _resolve_model_name(mname, args.weights)
            if dspec not in folders:
                folder = ev.resolve_dataset(dspec, args.data_root)
                files = ev.list_images(folder)
                folders[dspec] = (folder, files[: args.limit] if args.limit is not None else files)
            folder, files = folders[dspec]
            if kspec not in kernels:
                kernels[kspec] = (None, "") if kspec is None else ev.resolve_kernel(kspec, args.data_root)
            kernel, kname = kernels[kspec]
            ds = Path(dspec).name if folder == Path(dspec) else dspec.lower()
            parts = [mname, ds, kname] + ([f"sigma{sigma:g}"] if sweep and sigma is not None else []) \
                + (["x8"] if args.self_ensemble else [])
            stem = "_".join(x for x in parts if x)
            if sweep:
                out = Path(args.out or "results") / stem
            else:
                out = Path(args.out) if args.out else Path("results") / stem
            if folder.resolve() in ((out / "restored").resolve(), (out / "compare").resolve()):
                raise CLIError(f"--out {out} would write into the dataset folder {folder}; choose another output folder")
            try:  # a read-only or missing place fails here, in one line, before the network runs
                check_writable_dir(out, "--out")
            except WriteError as e:
                raise CLIError(f"--out: {e}") from None
            if name not in models:
                models[name] = as_restoration_model(_load_model(name, args.weights)).to(device)
            model = models[name]
            proto = ev.protocol_for(model, sigma=sigma, scale=args.scale, kernel=kernel, kernel_name=kname)
            chans = int(model.in_channels)
            if (dspec, chans) not in images_of:
                images_of[(dspec, chans)] = ev.load_images(files, chans)
            images = images_of[(dspec, chans)]
            min_side = model.min_input_size
            for iname, gt in images:
                ev.check_image_size(iname, gt.shape, proto, min_side)
            cells.append(dict(name=name, model=model, dataset=dspec, folder=folder, files=files, images=images,
                              proto=proto, kernel=kname, sigma=sigma, out=out))
    except ev.EvalError as e:
        raise CLIError(str(e)) from e

    summary = []
    for cell in cells:
        avg = _run_cell(args, state, ctx, device, cell)
        if avg is not None:
            summary.append({"model": cell["name"], "weights": args.weights, "dataset": cell["dataset"],
                            "kernel": cell["kernel"], "sigma": cell["proto"].sigma,
                            "self_ensemble": args.self_ensemble, **avg, "out": str(cell["out"])})
    if sweep and ctx.is_main:
        _write_sweep(summary, Path(args.out or "results"))
    return 0


def _unique(values):
    """The values in the order given, each once."""
    return list(dict.fromkeys(values))


def _weights_id(weights: str) -> str:
    p = Path(weights)
    if p.is_file():  # a different file under the same name makes earlier rows stale
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return weights


def _run_cell(args, state: dict, ctx, device, cell):
    """Evaluates one cell: this rank's images not already in the cell's journal; rank 0
    gathers every rank's rows, prints the table and writes results.csv/json. Returns the
    averages on rank 0 (None elsewhere)."""
    import hashlib

    import torch

    from .. import evaluate as ev
    from ..batch import Journal, JobBar, file_digest, settings_key, verify_files
    from ..distributed import barrier, gather

    name, model, proto, out, images = cell["name"], cell["model"], cell["proto"], cell["out"], cell["images"]
    y = proto.test_y
    width = max(12, max(len(n) for n, _ in images))
    order = {n: i for i, (n, _) in enumerate(images)}
    # per-image rows of this cell, appended as they are measured: a rerun computes only the rest
    journal = Journal(out / ".conversenet", ctx.rank, "rows")
    if args.overwrite:
        barrier(ctx)
        if ctx.local_rank == 0:
            journal.clear()
        barrier(ctx)
    kern = b"" if proto.kernel is None else proto.kernel.tobytes()
    key = settings_key({"model": name, "weights": _weights_id(args.weights), "protocol": proto.to_dict(),
                        "kernel": hashlib.sha256(kern).hexdigest(), "save_images": args.save_images,
                        "compare": args.compare, "self_ensemble": args.self_ensemble})
    done = {}
    for rec in journal.read():
        row = rec.get("row")
        if rec.get("k") == key and isinstance(row, dict) and row.get("image") in order \
                and verify_files(out, rec.get("files") or {}):
            done[row["image"]] = row
    mine = [(n, gt) for i, (n, gt) in enumerate(images) if i % ctx.world == ctx.rank]
    todo = [(n, gt) for n, gt in mine if n not in done]
    rows = [done[n] for n, _ in mine if n in done]
    resumed = len(images) - len(todo) if ctx.world == 1 else None
    live = ctx.world == 1 and not rows  # rows printed as they come; else the whole table at the end

    head = f"{'image':<{width}}  {'PSNR':>8}  {'SSIM':>7}"
    if y:
        head += f"  {'PSNR-Y':>8}  {'SSIM-Y':>7}"
    head += f"  {'time s':>8}"
    if ctx.is_main:
        print(f"model {name} ({args.weights}) on {cell['folder']} ({len(images)} images), device {device}, "
              f"threads {torch.get_num_threads()}" + (f", {ctx.world} processes" if ctx.distributed else ""))
        print(f"protocol: {proto.describe()}" + ("; self-ensemble: mean of 8 flipped/rotated passes"
                                                 if args.self_ensemble else ""))
        if resumed:
            print(f"resuming: {resumed} of {len(images)} images already measured in {journal.folder}")
        print(head)
        print("-" * len(head))
        sys.stdout.flush()

    from tqdm import tqdm

    def write_partial(interrupted=False):
        meta = {"model": name, "weights": args.weights, "dataset": cell["dataset"], "complete": False,
                "images_total": len(images), "self_ensemble": args.self_ensemble}
        if interrupted:
            meta["interrupted"] = True
        part = sorted(rows, key=lambda r: order[r["image"]])
        return ev.write_results(ev.EvalResult(part, ev.summarize(part), proto, meta), out)

    # partial results files only make sense when one process holds every row
    state.update(rows=rows, total=len(images), write_partial=write_partial if ctx.world == 1 else None)
    bar = JobBar(ctx, f"eval/{out}", "eval", total=len(images), enabled=args.progress)
    bar.tick(len(images) - len(todo) if ctx.world == 1 else len(mine) - len(todo))

    def on_row(r):
        # the row is kept first: an interrupt during the print or the write below still saves it
        rows.append(r)
        files = {}
        for sub, on in (("restored", args.save_images), ("compare", args.compare)):
            if on:
                f = out / sub / f"{r['image']}.png"
                files[f"{sub}/{f.name}"] = list(file_digest(f))
        journal.append({"k": key, "row": r, "files": files})
        bar.tick()
        if live:
            tqdm.write(_fmt_row(r["image"], r, y, width))
            sys.stdout.flush()
            # partial results after every image, so that a killed long run keeps its numbers
            write_partial()

    t0 = time.perf_counter()
    try:
        ev.evaluate_arrays(model, todo, proto, device=device, out_dir=out, save_images=args.save_images,
                           compare=args.compare, progress=False, on_row=on_row, protect=cell["files"],
                           self_ensemble=args.self_ensemble)
    except ev.EvalError as e:
        raise CLIError(str(e)) from e
    finally:
        journal.close()
    bar.close(len(images))
    wall = time.perf_counter() - t0
    parts = gather(ctx, (rows, len(mine) - len(todo)))
    if not ctx.is_main:
        return None
    all_rows = sorted((r for p, _ in parts for r in p), key=lambda r: order[r["image"]])
    if not live:
        for r in all_rows:
            print(_fmt_row(r["image"], r, y, width))
    res = ev.EvalResult(all_rows, ev.summarize(all_rows), proto)
    res.meta.update({"model": name, "weights": args.weights, "dataset": cell["dataset"],
                     "dataset_dir": str(cell["folder"]), "device": str(device), "threads": torch.get_num_threads(),
                     "processes": ctx.world, "wall_time_s": round(wall, 1), "limit": args.limit,
                     "resumed": sum(n for _, n in parts), "complete": True, "self_ensemble": args.self_ensemble})
    print("-" * len(head))
    print(_fmt_row("average", {k: v for k, v in res.averages.items() if k != "time_s"}, y, width))
    csv_path, json_path = ev.write_results(res, out)
    print(f"wall time {wall:.1f} s; results: {csv_path}, {json_path}"
          + (f"; images: {out / 'restored'}" if args.save_images else ""))
    sys.stdout.flush()
    return {k: v for k, v in res.averages.items() if k != "time_s"}


def _write_sweep(summary, root: Path) -> None:
    """One table for the whole sweep: ``root/sweep.csv`` and ``root/sweep.json`` (atomic)."""
    import csv
    import io
    import json

    from .._atomic import write_text_atomic

    cols = ["model", "weights", "dataset", "kernel", "sigma", "self_ensemble", "n", "psnr", "ssim", "psnr_y",
            "ssim_y", "out"]
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in summary:
        wr.writerow({k: (f"{v:.6f}" if isinstance(v, float) and k != "sigma" else v) for k, v in r.items()})
    write_text_atomic(buf.getvalue(), root / "sweep.csv")
    write_text_atomic(json.dumps({"cells": summary}, indent=2) + "\n", root / "sweep.json")
    y = any("psnr_y" in r for r in summary)
    print(f"\nsweep: {len(summary)} cells" + (", each the mean of 8 flipped/rotated passes (self-ensemble)"
                                            if any(r.get("self_ensemble") for r in summary) else ""))
    print(f"{'model':<28} {'dataset':<10} {'kernel':<10} {'sigma':>6} {'n':>4} {'PSNR':>8} {'SSIM':>7}"
          + (f" {'PSNR-Y':>8}" if y else ""))
    for r in summary:
        print(f"{r['model']:<28} {Path(r['dataset']).name:<10} {r['kernel'] or '-':<10} {r['sigma']:>6g} {r['n']:>4} "
              f"{r['psnr']:8.2f} {r['ssim']:7.4f}" + (f" {r.get('psnr_y', float('nan')):8.2f}" if y else ""))
    print(f"sweep table: {root / 'sweep.csv'}, {root / 'sweep.json'}")
