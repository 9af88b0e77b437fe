"""How much do the released checkpoints' outputs move with this package's operator?

Runs each official model on one real test input three ways: this package in float32
(default settings), the same network in float64 (the exact reference), and the same
float32 network with the paper's Algorithm 1 swapped in (``conversenet.bench.with_operator``).
Prints max abs differences. Usage:

    CONVERSENET_WEIGHTS_DIR=../shared/weights/official python benchmarks/checkpoint_drift.py
"""

import argparse
import time

import numpy as np
import torch

from conversenet import paths
from conversenet.bench import with_operator
from conversenet.data import imresize, modcrop, read_image, to_float
from conversenet.models import create


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="converse_dncnn_official,converse_srresnet_official")
    ap.add_argument("--image", default="01", help="Set12 image for the denoiser (01-07: 256x256, 08-12: 512x512)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = paths.data_root()
    inputs = {}
    img, _ = read_image(root / f"testsets/set12/{args.image}.png")
    clean = to_float(img, np.float64)[..., 0]
    rng = np.random.RandomState(0)
    inputs["converse_dncnn_official"] = torch.from_numpy(clean + rng.normal(0, 25 / 255, clean.shape))[None, None]
    hr, _ = read_image(root / "testsets/set5/baby.png")
    lr = imresize(modcrop(to_float(hr, np.float64), 4), 0.25)[:96, :96]
    inputs["converse_srresnet_official"] = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None]
    for name in args.models.split(","):
        x = inputs[name]
        m = create(name, pretrained="official").eval()
        with torch.no_grad():
            t = time.time()
            y32 = m(x.float()).double()
            t32 = time.time() - t
            y64 = m.double()(x)
            m.float()
            base = with_operator(m, "baseline")  # a copy sharing m's (float32) parameters
            t = time.time()
            yb = base(x.float()).double()
            tb = time.time() - t
        print(f"{name}: input {tuple(x.shape)}")
        print(f"  ours float32 vs float64 exact : max abs {float((y32 - y64).abs().max()):.2e}  ({t32:.1f} s)")
        print(f"  Alg.1 float32 vs float64 exact: max abs {float((yb - y64).abs().max()):.2e}  ({tb:.1f} s)")
        print(f"  ours float32 vs Alg.1 float32 : max abs {float((y32 - yb).abs().max()):.2e}")


if __name__ == "__main__":
    main()
