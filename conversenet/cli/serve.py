"""``conversenet serve``: the local web app (Gradio; ``pip install 'conversenet[web]'``).

Example::

    conversenet serve                      # then open http://127.0.0.1:7860
    conversenet serve --port 8080 --device cuda --max-pixels 8000000

Binds to 127.0.0.1 unless ``--host`` says otherwise. Uploads and results live in a fresh
server folder (deleted on exit); uploads are deleted when their request is answered.
See :mod:`conversenet.web`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from . import CLIError, check_flag


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="start the local web app (restore images, look inside a layer)",
                       description="Starts a Gradio web app for restoring images and drawing Figure 2 of a "
                                   "Converse2D layer. Needs the web extra: pip install 'conversenet[web]'.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--max-pixels", dest="max_pixels", type=int, default=None,
                   help="largest image a request may send, width x height in input pixels (default 16777216 = 4096^2)")
    p.add_argument("--max-memory", dest="max_memory", default=None,
                   help="working-memory budget of one model run before tiling, e.g. 4GB (default 4GB)")
    p.add_argument("--tile", type=int, default=None, help="tile side in input pixels, > 32 (default: tile only above --max-memory; 0: never)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if args.max_pixels is not None:
        check_flag("--max-pixels", args.max_pixels)
    if args.tile is not None and (args.tile < 0 or 0 < args.tile <= 32):
        raise CLIError(f"--tile must be 0 (never tile) or larger than the 32-pixel tile overlap, got {args.tile}")
    if args.threads is not None:
        check_flag("--threads", args.threads)
    from .. import restore as R

    try:
        R.resolve_device(args.device)
        if args.max_memory is not None:
            R.parse_memory(args.max_memory)
    except ValueError as e:
        raise CLIError(str(e)) from e
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    # the server's own folder for uploads and results; gradio reads it from the environment,
    # partly when it is imported, so it is set first
    root = tempfile.mkdtemp(prefix="conversenet-serve-")
    os.environ["GRADIO_TEMP_DIR"] = root
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        try:
            from ..web import app
        except ImportError as e:
            raise CLIError(f"the web app needs gradio: pip install 'conversenet[web]' ({e})") from e
        try:
            app.serve(root, host=args.host, port=args.port, device=args.device, max_pixels=args.max_pixels,
                      max_memory=args.max_memory, tile=args.tile)
        except OSError as e:  # port in use, address not available
            raise CLIError(f"cannot start the server on {args.host}:{args.port}: {e}") from e
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("conversenet serve: stopped; server files deleted", file=sys.stderr, flush=True)
    return 0
