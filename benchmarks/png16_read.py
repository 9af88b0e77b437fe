"""Reading a 16-bit RGB PNG vs the same picture as an 8-bit PNG, side by side (issue 12, item 11).

    python benchmarks/png16_read.py [--size 4000x3000] [--repeat 3]

Writes both files to a temporary folder (a smooth scene plus noise, so that the files
compress like photographs), then times :func:`conversenet.data.read_image` on each,
alternating, and prints the medians and their ratio (16-bit / 8-bit; the target is <= 3).
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT (default 4000x3000)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))

    from conversenet.data import read_image, write_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    scene = np.stack([0.5 + 0.4 * np.sin(7 * xx + k) * np.cos(5 * yy - k) for k in range(3)], -1)
    scene = np.clip(scene + rng.normal(0, 0.02, scene.shape).astype(np.float32), 0, 1)
    with tempfile.TemporaryDirectory() as d:
        p8, p16 = Path(d) / "rgb8.png", Path(d) / "rgb16.png"
        write_image(p8, np.round(scene * 255).astype(np.uint8))
        write_image(p16, np.round(scene * 65535).astype(np.uint16))
        read_image(p8), read_image(p16)  # warm-up (imports, page cache)
        t8, t16 = [], []
        for _ in range(a.repeat):
            for path, acc in ((p8, t8), (p16, t16)):
                t0 = time.perf_counter()
                arr, info = read_image(path)
                acc.append(time.perf_counter() - t0)
            assert arr.dtype == np.uint16 and arr.shape == (h, w, 3)
        m8, m16 = statistics.median(t8), statistics.median(t16)
        print(f"{w}x{h} RGB PNG: 8-bit {p8.stat().st_size / 1e6:.1f} MB read in {m8:.3f} s; "
              f"16-bit {p16.stat().st_size / 1e6:.1f} MB read in {m16:.3f} s; ratio {m16 / m8:.2f} "
              f"(median of {a.repeat})")


if __name__ == "__main__":
    main()
