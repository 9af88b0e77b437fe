"""Images of any kind the public API accepts (numpy, PIL, tensor) to float (H, W, C) and back."""

from __future__ import annotations

import numpy as np
import torch

from .io import from_float, to_float

__all__ = ["to_float_hwc", "from_float_hwc"]


def to_float_hwc(image):
    """Any supported image kind -> ``(kind, float32 (H, W, C), info)``; ``info`` is what
    :func:`from_float_hwc` needs to give the result back in the same kind.

    Kinds: numpy (H, W) / (H, W, C) uint8, uint16 or float in [0, 1]; a PIL image; a float
    tensor (C, H, W) or (1, C, H, W).

    >>> kind, a, info = to_float_hwc(np.full((2, 3), 255, np.uint8))
    >>> kind, a.shape, a.dtype, float(a.max())
    ('numpy', (2, 3, 1), dtype('float32'), 1.0)
    >>> from_float_hwc(a, kind, info).dtype
    dtype('uint8')
    """

    if isinstance(image, torch.Tensor):
        if not image.is_floating_point() or image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1):
            raise ValueError(f"image tensor must be float (C, H, W) or (1, C, H, W), got {image.dtype} {tuple(image.shape)}")
        t = image[0] if image.dim() == 4 else image
        return "tensor", t.detach().float().permute(1, 2, 0).cpu().numpy(), (image.dim(), image.dtype, image.device)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L"):
            a = np.asarray(image).astype(np.uint16)[..., None]
        elif mode in ("L", "RGB", "RGBA", "LA"):
            a = np.asarray(image)
            a = a[..., None] if a.ndim == 2 else a
        else:
            image = image.convert("RGB")
            a = np.asarray(image)
        return "pil", to_float(np.ascontiguousarray(a)), (image.mode,)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1..4, got shape {image.shape}")
        a = image[..., None] if image.ndim == 2 else image
        if a.dtype.kind == "f":
            f = a.astype(np.float32)
        elif a.dtype in (np.uint8, np.uint16):
            f = to_float(a)
        else:
            raise TypeError(f"image must be uint8, uint16 or float, got {image.dtype}")
        return "numpy", f, (image.ndim, image.dtype)
    raise TypeError(f"image must be a numpy array, a PIL image or a torch tensor, got {type(image).__name__}")


def from_float_hwc(out: np.ndarray, kind: str, meta):
    """Float (H, W, C) in [0, 1] -> the kind :func:`to_float_hwc` was given (same dtype,
    layout and device; PIL: same mode)."""

    if kind == "tensor":
        ndim, dtype, dev = meta
        t = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).to(dev, dtype)
        return t[None] if ndim == 4 else t
    if kind == "pil":
        from PIL import Image

        (mode,) = meta
        if mode.startswith("I;16"):
            return Image.fromarray(from_float(out[..., 0], 16))
        u8 = from_float(out, 8)
        return Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8, mode=mode if mode in ("L", "RGB", "RGBA", "LA") else None)
    ndim, dtype = meta
    if dtype.kind == "f":
        res = out.astype(dtype)
    else:
        res = from_float(out, 16 if dtype == np.uint16 else 8)
    return res[..., 0] if ndim == 2 else res
