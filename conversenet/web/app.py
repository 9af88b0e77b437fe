"""The page of ``conversenet serve``, built with Gradio (``pip install 'conversenet[web]'``).

Two tabs over one :class:`~conversenet.web.engine.Engine`:

* **Restore**: images in, task, weights and their options, a before/after slider, the
  results for download in the input's format and bit depth, PSNR/SSIM against clean
  references, a progress bar while tiles run.
* **Inside a layer**: Figure 2 of the paper for a Converse2d layer of a model.

Requests go through Gradio's queue with one model run at a time (both tabs share one
concurrency group). Uploads are deleted from the server when their request has been
answered, and the upload fields are emptied; results stay in the server's folder until
they are an hour old or the server stops (see :func:`serve`).

Only :mod:`conversenet.cli.serve` imports this module.
"""

from __future__ import annotations

import os
import signal
import traceback
from pathlib import Path
from typing import List, Optional

import gradio as gr

from ..data import IMAGE_EXTENSIONS
from .engine import FROM_FILE, LAYER_WEIGHTS, TASKS, WEIGHTS, Engine, WebError, clean_uploads

__all__ = ["build_app", "serve", "theme", "RESULT_MAX_AGE_S"]

#: results older than this are deleted (checked every 10 minutes), as are all files on exit
RESULT_MAX_AGE_S = 3600
IMAGE_TYPES = list(IMAGE_EXTENSIONS)  # the one list of image extensions
KERNEL_TYPES = [".npy", ".mat", *IMAGE_EXTENSIONS]  # what conversenet.data.load_kernel reads
WEIGHT_TYPES = [".pth", ".pt"]
GROUP = "model"  # one concurrency group: one model run at a time for both tabs

INTRO = """\
# conversenet
Restore images with reverse convolution (Converse2D) networks, or look inside one of their
layers. Everything runs on this machine; uploads are deleted once their request is answered.
"""


def _paths(files) -> List[str]:
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [str(files)]
    return [str(getattr(f, "name", f)) for f in files if f]


def _missing(paths) -> Optional[str]:
    gone = [Path(p).name for p in paths if p and not os.path.isfile(p)]
    if gone:
        return (f"{', '.join(gone)} is no longer on the server (uploads are deleted after each request): "
                "upload it again")
    return None


def _md(text: str) -> str:
    """A file name as literal Markdown table text."""
    return "".join("\\" + c if c in "\\`*_[]|<>#" else c for c in text)


def _fmt(v: Optional[float], digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _table(rep) -> str:
    rows = ["| image | result | PSNR (dB) input → result | SSIM input → result |", "|---|---|---|---|"]
    for r in rep.images:
        m = r.metrics
        h, w = r.after.shape[:2]
        if m:
            ps = f"{_fmt(m.get('psnr_in'), 2)} → **{_fmt(m.get('psnr'), 2)}**"
            ss = f"{_fmt(m.get('ssim_in'), 4)} → **{_fmt(m.get('ssim'), 4)}**"
        else:
            ps = ss = r.note or "no reference"
        name, out = (_md(n) for n in (r.name, r.path.name))
        rows.append(f"| {name} | {out} ({w}×{h}, {r.bit_depth}-bit) | {ps} | {ss} |")
    return "\n".join(rows)


def build_app(engine: Engine, upload_root) -> gr.Blocks:
    """The Gradio page over ``engine``; uploads under ``upload_root`` are deleted after each request."""
    from ..models import registry

    layer_models = engine.layer_models()
    layer_default = layer_models[0]

    with gr.Blocks(title="conversenet", analytics_enabled=False,
                   delete_cache=(600, RESULT_MAX_AGE_S)) as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Restore", id="restore"):
            with gr.Row():
                with gr.Column(scale=1):
                    inp = gr.File(label="Images (PNG, JPEG, TIFF, BMP; 8 or 16 bits)", file_count="multiple",
                                  file_types=IMAGE_TYPES, elem_id="restore-input")
                    task = gr.Radio(list(TASKS), value="Denoise", label="Task", elem_id="restore-task")
                    known = gr.Checkbox(False, label="I know the noise level",
                                        info="Unchecked: blind denoisers, grey or colour by the image",
                                        elem_id="restore-sigma-known")
                    sigma = gr.Slider(0, 75, value=25, step=0.5, label="Noise level of the images (0–255)",
                                      visible=False, elem_id="restore-sigma")
                    ksig = gr.Slider(0.3, 4.0, value=1.6, step=0.1, label="Gaussian blur kernel width (pixels)",
                                     visible=False, elem_id="restore-kernel-sigma")
                    kfile = gr.File(label="Blur kernel (.npy, .mat or a grey image; 2-D, at most 7×7)",
                                    file_types=KERNEL_TYPES, visible=False, elem_id="restore-kernel")
                    weights = gr.Radio(list(WEIGHTS), value="Auto", label="Weights", elem_id="restore-weights",
                                       info="Auto: the authors' weights when available, else the built-in ones")
                    wfile = gr.File(label="Weights file (.pth, loaded weights-only)", file_types=WEIGHT_TYPES,
                                    visible=False, elem_id="restore-weights-file")
                    arch = gr.Dropdown([FROM_FILE] + registry.list_models(), value=FROM_FILE,
                                       label="Network of the weights file", visible=False, elem_id="restore-arch")
                    refs = gr.File(label="Clean references for PSNR/SSIM (optional; same file names)",
                                   file_count="multiple", file_types=IMAGE_TYPES, elem_id="restore-refs")
                    ens = gr.Checkbox(False, label="Self-ensemble", elem_id="restore-ensemble",
                                      info="Average 8 flipped/rotated passes: 8× slower, usually a little better")
                    run = gr.Button("Restore", variant="primary", elem_id="restore-run")
                with gr.Column(scale=2):
                    slider = gr.ImageSlider(label="Input | result (drag the handle)", type="numpy", format="png",
                                            interactive=False, elem_id="restore-slider", max_height=640)
                    pick = gr.Dropdown(label="Show", choices=[], visible=False, elem_id="restore-pick")
                    status = gr.Markdown(elem_id="restore-status")
                    table = gr.Markdown(elem_id="restore-table")
                    files_out = gr.File(label="Download (the input's format and bit depth)", file_count="multiple",
                                        interactive=False, elem_id="restore-download")
            shown = gr.State([])

        with gr.Tab("Inside a layer", id="layer"):
            with gr.Row():
                with gr.Column(scale=1):
                    lmodel = gr.Dropdown(layer_models, value=layer_default, label="Model", elem_id="layer-model")
                    lweights = gr.Radio(list(LAYER_WEIGHTS), value="Official", label="Weights", elem_id="layer-weights")
                    llayer = gr.Dropdown(engine.layers_of(layer_default), value=engine.layers_of(layer_default)[0],
                                         label="Converse2d layer", elem_id="layer-layer")
                    limg = gr.File(label="Image (optional; default: a generated scene)", file_types=IMAGE_TYPES,
                                   elem_id="layer-image")
                    lsigma = gr.Slider(0, 75, value=25, step=0.5, label="Noise added first (denoisers; 0–255)",
                                       elem_id="layer-sigma")
                    lsize = gr.Slider(32, 256, value=96, step=8, label="Centre crop (pixels)", elem_id="layer-size")
                    lch = gr.Slider(1, 6, value=3, step=1, label="Channels shown", elem_id="layer-channels")
                    lrun = gr.Button("Show the layer", variant="primary", elem_id="layer-run")
                with gr.Column(scale=2):
                    lfig = gr.Image(label="Y, K, X*, X* ⊗ K and Y − X* ⊗ K per channel", show_label=False,
                                    type="filepath", format="png", interactive=False, elem_id="layer-figure")
                    lsum = gr.Markdown(elem_id="layer-summary")

        # ------------------------------------------------------------------ events
        def on_task(t, k):
            _, blind, ks = TASKS.get(t, ("denoise", False, None))
            return (gr.update(visible=t == "Denoise"), gr.update(visible=t == "Denoise" and k),
                    gr.update(visible=ks == "gaussian"), gr.update(visible=ks == "file"))

        task.change(on_task, [task, known], [known, sigma, ksig, kfile], queue=False)
        known.change(lambda t, k: gr.update(visible=t == "Denoise" and k), [task, known], sigma, queue=False)

        def on_weights(w):
            up = WEIGHTS.get(w) == "upload"
            return gr.update(visible=up), gr.update(visible=up)

        weights.change(on_weights, weights, [wfile, arch], queue=False)

        def do_restore(files, t, k, s, ks, kf, w, wf, a, rf, e, progress=gr.Progress()):
            images, kpaths, wpaths, rpaths = _paths(files), _paths(kf), _paths(wf), _paths(rf)
            uploads = images + kpaths + wpaths + rpaths
            try:
                gone = _missing(uploads)
                if gone:
                    raise WebError(gone)
                rep = engine.restore(images, t, w, wpaths[0] if wpaths else None, a, float(s) if k else None, float(ks),
                                     kpaths[0] if kpaths else None, rpaths,
                                     progress=lambda f, d: progress(f, desc=d), self_ensemble=bool(e))
            except WebError as e:
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:  # a bug must not stop the server: say so in the page, log it
                traceback.print_exc()
                raise gr.Error(f"internal error ({type(e).__name__}: {e}); the server is still running") from None
            finally:
                clean_uploads(uploads, upload_root)
            for msg in rep.errors:
                gr.Warning(msg)
            for msg in rep.warnings:
                gr.Warning(msg)
            first = rep.images[0]
            names = [r.name for r in rep.images]
            lines = [f"Restored {len(rep.images)} image(s) in {rep.seconds:.1f} s on {engine.device}; "
                     f"weights: {rep.source}" + ("; self-ensemble (8 passes each)." if e else ".")]
            lines += [f"⚠️ {m}" for m in rep.errors + rep.warnings]
            return ((first.before, first.after),
                    gr.update(choices=names, value=names[0], visible=len(names) > 1),
                    "\n\n".join(lines), _table(rep), [str(r.path) for r in rep.images],
                    [(r.name, r.before, r.after) for r in rep.images])

        def clear_uploads():
            return None, None, None, None

        ran = run.click(do_restore, [inp, task, known, sigma, ksig, kfile, weights, wfile, arch, refs, ens],
                  [slider, pick, status, table, files_out, shown], concurrency_limit=1, concurrency_id=GROUP,
                  show_progress="full")
        # the uploads are gone from the server after every answer, so their fields are emptied
        # (gradio runs .then() after a success only; .failure() covers gr.Error)
        ran.success(clear_uploads, None, [inp, kfile, wfile, refs], queue=False)
        ran.failure(clear_uploads, None, [inp, kfile, wfile, refs], queue=False)

        def on_pick(name, items):
            for n, b, a in items or []:
                if n == name:
                    return (b, a)
            return gr.update()

        # .input, not .change: the dropdown is also set by do_restore, and re-sending the same
        # pictures would make gradio rewrite its cached copies while the browser reads them
        pick.input(on_pick, [pick, shown], slider, queue=False)

        def on_model(m):
            layers = engine.layers_of(m)
            return gr.update(choices=layers, value=layers[0] if layers else None)

        lmodel.change(on_model, lmodel, llayer, queue=False)

        def do_layer(m, w, layer, img, s, size, ch):
            uploads = _paths(img)
            try:
                gone = _missing(uploads)
                if gone:
                    raise WebError(gone)
                path, summary = engine.layer_figure(m, w, layer, uploads[0] if uploads else None, float(s), int(size),
                                                    int(ch))
            except (WebError, ValueError) as e:
                raise gr.Error(str(e), print_exception=False) from None
            except ImportError as e:  # matplotlib missing
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:
                traceback.print_exc()
                raise gr.Error(f"internal error ({type(e).__name__}: {e}); the server is still running") from None
            finally:
                clean_uploads(uploads, upload_root)
            return str(path), summary

        lran = lrun.click(do_layer, [lmodel, lweights, llayer, limg, lsigma, lsize, lch], [lfig, lsum],
                   concurrency_limit=1, concurrency_id=GROUP)
        lran.success(lambda: None, None, limg, queue=False)
        lran.failure(lambda: None, None, limg, queue=False)
    return demo


def theme() -> "gr.themes.Base":
    """Gradio's default look with the system's fonts (nothing is fetched from the internet)."""
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def serve(root, host: str = "127.0.0.1", port: int = 7860, device: str = "auto", max_pixels: Optional[int] = None,
          max_memory=None, tile: Optional[int] = None) -> None:
    """Starts the app and blocks until interrupted (Ctrl-C or SIGTERM).

    ``root`` is the server's own folder (fresh, unpredictable name) for uploads and
    results; it must already be ``$GRADIO_TEMP_DIR`` when gradio is imported (the
    ``serve`` command does that) and the caller deletes it afterwards.
    """
    from .engine import DEFAULT_MAX_PIXELS

    if os.path.realpath(os.environ.get("GRADIO_TEMP_DIR", "")) != os.path.realpath(root):
        raise RuntimeError("GRADIO_TEMP_DIR must name the server folder before gradio is imported")
    prev = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # let block_thread() close the server as on Ctrl-C (once)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    engine = Engine(root, device=device, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
                    max_memory=max_memory, tile=tile, result_max_age=RESULT_MAX_AGE_S)
    demo = build_app(engine, root)
    demo.queue(default_concurrency_limit=1)
    signal.signal(signal.SIGTERM, on_term)
    try:
        # uploads above this are refused by gradio before they are stored: room for an
        # uncompressed 16-bit RGBA image of max_pixels, and for weights files
        max_upload = max(8 * engine.max_pixels + 2**20, 256 * 2**20)
        _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                                show_error=False, ssr_mode=False, footer_links=[], mcp_server=False, theme=theme(),
                                max_file_size=max_upload)
        print(f"conversenet serve: open {url} (device {engine.device}, at most {engine.max_pixels:,} pixels "
              f"per image; server files in {root}, deleted on exit). Ctrl-C stops.", flush=True)
        demo.block_thread()
    finally:
        signal.signal(signal.SIGTERM, prev)
        try:
            demo.close()
        except Exception:  # already closed by block_thread()
            pass
