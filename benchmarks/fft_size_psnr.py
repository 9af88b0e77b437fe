"""PSNR of converse_dncnn_official with fft_size="exact" (published) and "fast", and the
float32 output against a float64 run of the paper's Algorithm 1 (the baseline operator).

Protocol (weights README): grayscale uint8 -> [0,1], + numpy.random.normal(0, 25/255)
after numpy.random.seed(0) per image, no clipping of the input; output clamped to [0,1]
and rounded to uint8; PSNR on uint8, no border.

    python benchmarks/fft_size_psnr.py --images 01,02,03,04 [--threads 2] [--check64 01]
"""

import argparse
import math
import time

import numpy as np
import torch
from PIL import Image

from conversenet import models
from conversenet.bench import with_operator
from conversenet.nn import Converse2d
from conversenet.paths import data_root


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / mse)


def set_fft_size(model, mode):
    for m in model.modules():
        if isinstance(m, Converse2d):
            m.fft_size = mode
            m._cache = None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images", default="01,02,03,04")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check64", default="", help="images also run with the float64 baseline operator")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = models.create("converse_dncnn_official", pretrained="official").eval()
    folder = data_root() / "testsets" / "set12"
    print("| image | size | PSNR exact | PSNR fast | fast - exact (dB) | max abs out diff | time exact s | time fast s |")
    print("|---|---|---|---|---|---|---|---|")
    d_all = []
    for name in args.images.split(","):
        gt = np.array(Image.open(folder / f"{name}.png").convert("L"))
        np.random.seed(0)
        noisy = gt / 255.0 + np.random.normal(0, 25 / 255.0, gt.shape)
        x = torch.from_numpy(noisy).float()[None, None]
        outs, psnrs, secs = {}, {}, {}
        for mode in ("exact", "fast"):
            set_fft_size(model, mode)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model(x)
            secs[mode] = time.perf_counter() - t0
            outs[mode] = out
            img = (out.clamp(0, 1)[0, 0].numpy() * 255.0).round().astype(np.uint8)
            psnrs[mode] = psnr(img, gt)
        diff = (outs["fast"] - outs["exact"]).abs().max().item()
        d_all.append(psnrs["fast"] - psnrs["exact"])
        print(f"| {name} | {gt.shape[1]}x{gt.shape[0]} | {psnrs['exact']:.3f} | {psnrs['fast']:.3f} | "
              f"{psnrs['fast'] - psnrs['exact']:+.4f} | {diff:.2e} | {secs['exact']:.1f} | {secs['fast']:.1f} |")
        if name in args.check64.split(","):
            set_fft_size(model, "exact")
            m64 = model.double()
            with torch.no_grad():
                ref = with_operator(m64, "baseline")(x.double())
            model.float()
            print(f"<!-- {name}: max |float32 converse2d - float64 Algorithm 1| = "
                  f"{(outs['exact'].double() - ref).abs().max().item():.2e} -->")
    print(f"\nmean PSNR change (fast - exact): {np.mean(d_all):+.4f} dB over {len(d_all)} images")


if __name__ == "__main__":
    main()
