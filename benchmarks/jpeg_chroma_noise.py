"""Usage: python benchmarks/jpeg_chroma_noise.py [N_IMAGES [SIGMA ...]] (CONVERSENET_DATA: the data root).

Blind colour model vs blind grey model channel by channel on noisy photos saved as JPEG
(q95) with 4:2:0 and 4:4:4 chroma, and as PNG: the first N CBSD68 images (centre 256x256),
Gaussian noise sigma in SIGMAS added before saving (numpy seed = image index). PSNR as
`conversenet eval` measures it (conversenet.metrics.psnr, uint8, no border)."""
import io, sys
import numpy as np
from PIL import Image
import conversenet as C
from conversenet.evaluate import list_images, resolve_dataset
from conversenet.metrics import psnr
N = int(sys.argv[1]) if len(sys.argv) > 1 else 8
SIGMAS = [float(s) for s in sys.argv[2:]] or [25.0]
files = list_images(resolve_dataset("cbsd68"))[:N]  # the data root of `conversenet eval`
print("| noise sigma | saved as | input PSNR | blind colour model | blind grey model, channel by channel |")
print("|---|---|---|---|---|")
for sigma in SIGMAS:
    res = {}
    for i, f in enumerate(files):
        g = np.asarray(Image.open(f).convert("RGB"))
        h, w = g.shape[:2]
        g = g[(h - 256) // 2:(h - 256) // 2 + 256, (w - 256) // 2:(w - 256) // 2 + 256]
        n = np.clip(np.round(g + np.random.default_rng(i).normal(0, sigma, g.shape)), 0, 255).astype(np.uint8)
        for sub in ("PNG", "JPEG q95 4:2:0", "JPEG q95 4:4:4"):
            if sub == "PNG":
                x = n
            else:
                b = io.BytesIO()
                Image.fromarray(n).save(b, "JPEG", quality=95, subsampling=2 if "4:2:0" in sub else 0)
                x = np.asarray(Image.open(b))
            row = [psnr(x, g)]
            for model in ("converse_unet_blind_color", "converse_unet_blind_gray"):
                o = C.restore(x.astype(np.float32) / 255, task="denoise", model=model, weights="builtin")
                row.append(psnr(np.round(np.clip(o, 0, 1) * 255).astype(np.uint8), g))
            res.setdefault(sub, []).append(row)
    for sub, r in res.items():
        a = np.array(r).mean(0)
        print(f"| {sigma:g} | {sub} | {a[0]:.2f} | {a[1]:.2f} | {a[2]:.2f} |")
