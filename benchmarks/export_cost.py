"""What ONNX export costs: file size, onnxruntime time vs PyTorch eager, and the difference.

For each MODEL:WEIGHTS:H:W it exports with ``conversenet.export.export_onnx`` (Converse2D
by real DFT matrices), then times (median of --repeat runs after one warm-up, same thread
count for both) PyTorch eager (FFT solver), PyTorch eager in export mode (matrix solver)
and onnxruntime, and prints the max abs difference of the onnxruntime output from eager.
Input: Set12 01.png (grey) or the sample scene when the data is absent. Usage:

    CONVERSENET_WEIGHTS_DIR=../shared/weights/official python benchmarks/export_cost.py --threads 2
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from conversenet import paths
from conversenet.export import example_inputs, export_onnx
from conversenet.functional import export_mode
from conversenet.models import create

DEFAULT = [
    "converse_dncnn_official:official:256:256",
    "dncnn:builtin:256:256",
    "converse_srresnet_official:official:64:64",
    "converse_usrnet_official:official:256:256",
]


def _image(h, w):
    root = paths.data_root()
    f = None if root is None else root / "testsets" / "set12" / "01.png"
    if f is None or not f.is_file():
        return None, "sample scene"
    from conversenet.data import read_image, to_float

    img, _ = read_image(f)
    return to_float(img)[:h, :w], "Set12 01.png"


def _median_time(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("specs", nargs="*", default=DEFAULT, help="MODEL:WEIGHTS:H:W (weights: official|builtin|none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    for spec in args.specs:
        name, weights, h, w = spec.split(":")
        h, w = int(h), int(w)
        torch.manual_seed(0)
        net = create(name, pretrained=None if weights == "none" else weights).eval()
        img, src = _image(h, w)
        inputs = example_inputs(net, (h, w), image=img)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.onnx")
            t0 = time.perf_counter()
            export_onnx(net, path, inputs=inputs)
            t_export = time.perf_counter() - t0
            size = os.path.getsize(path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            t0 = time.perf_counter()
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            t_load = time.perf_counter() - t0
        feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
        with torch.no_grad():
            ref = net(*inputs).numpy()
            t_eager = _median_time(lambda: net(*inputs), args.repeat)
            with export_mode():
                t_matrix = _median_time(lambda: net(*inputs), args.repeat)
        out = sess.run(None, feeds)[0]
        t_ort = _median_time(lambda: sess.run(None, feeds), args.repeat)
        params = sum(p.numel() for p in net.parameters()) * 4
        print(
            f"{name} ({weights}) {h}x{w} on {src}: ONNX {size / 2**20:.1f} MiB (parameters {params / 2**20:.1f} MiB), "
            f"export {t_export:.0f} s, session load {t_load:.1f} s; eager {t_eager:.2f} s, eager matrix-DFT "
            f"{t_matrix:.2f} s, onnxruntime {t_ort:.2f} s ({t_ort / t_eager:.1f}x eager); "
            f"max abs diff {float(np.abs(out - ref).max()):.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
