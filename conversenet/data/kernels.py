"""Blur kernels: Gaussian (isotropic/anisotropic) and random motion generators, loading, checks.

All kernels are float64 numpy arrays (kh, kw), non-negative and normalised to sum 1, with
their centre at ``(kh // 2, kw // 2)`` (the convention of
:mod:`conversenet.data.degradations`). Coordinates: ``x`` runs along columns (right),
``y`` along rows (down); angles are in radians, counter-clockwise from the x axis as
seen on screen (i.e. towards negative y).

Motion blur trajectory model (:func:`motion_kernel`): a 2-D random walk with inertia. A
point starts at the origin with a uniformly random heading and moves ``n_steps`` steps of
equal length; at each step the heading turns by ``N(0, jitter^2)`` radians. The polyline
is scaled so that its total length is ``length`` pixels, centred on its bounding box,
shrunk if needed to fit inside the kernel, sampled densely and splatted bilinearly
into the grid (exposure uniform in time), then normalised. ``jitter=0`` gives a straight
line; larger values curlier paths.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ..checks import check_int, check_int_tuple, check_positive_number
from .io import IMAGE_EXTENSIONS

__all__ = [
    "check_kernel",
    "gaussian_kernel",
    "anisotropic_gaussian_kernel",
    "motion_kernel",
    "load_kernel",
    "KernelError",
]

Size = Union[int, Tuple[int, int]]


class KernelError(ValueError):
    """A kernel (array or file) is unusable; the message says why."""


def check_kernel(kernel, normalize: bool = True, name: str = "kernel") -> np.ndarray:
    """Validates a blur kernel and returns it as float64, normalised to sum 1 by default.

    Raises:
        KernelError: not 2-D, empty, non-finite values, or a sum <= 0.

    >>> check_kernel([[1, 1], [1, 1]]).tolist()
    [[0.25, 0.25], [0.25, 0.25]]
    """
    try:
        k = np.asarray(kernel, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise KernelError(f"{name} must be a numeric 2-D array: {e}") from e
    if k.ndim != 2 or k.size == 0:
        raise KernelError(f"{name} must be a non-empty 2-D array, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise KernelError(f"{name} contains NaN or inf")
    total = float(k.sum())
    if total <= 0:
        raise KernelError(f"{name} must have a positive sum, got {total:g}")
    return k / total if normalize else k


def _size(size: Size) -> Tuple[int, int]:
    return check_int_tuple("size", size, 2)  # type: ignore[return-value]



def _grid(size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Offsets (y, x) of every pixel from the kernel centre (kh // 2, kw // 2)."""
    kh, kw = size
    y = np.arange(kh, dtype=np.float64) - kh // 2
    x = np.arange(kw, dtype=np.float64) - kw // 2
    return np.meshgrid(y, x, indexing="ij")


def gaussian_kernel(size: Size, sigma: float) -> np.ndarray:
    """Isotropic Gaussian ``exp(-(x^2 + y^2) / (2 sigma^2))`` centred at (kh//2, kw//2), sum 1.

    >>> k = gaussian_kernel(5, 1.0)
    >>> k.shape, round(float(k.sum()), 12), bool(k[2, 2] == k.max())
    ((5, 5), 1.0, True)
    """
    sigma = check_positive_number("sigma", sigma)
    yy, xx = _grid(_size(size))
    return check_kernel(np.exp(-(xx**2 + yy**2) / (2.0 * sigma**2)))


def anisotropic_gaussian_kernel(size: Size, sigma_x: float, sigma_y: float, theta: float = 0.0) -> np.ndarray:
    """Anisotropic Gaussian with covariance ``R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``.

    ``sigma_x`` is the spread along the direction at angle ``theta`` (radians, counter-
    clockwise on screen from the column axis), ``sigma_y`` across it. Sum 1.

    >>> k = anisotropic_gaussian_kernel(9, 3.0, 1.0, 0.0)
    >>> bool(k[4, 8] > k[8, 4])  # wider along x (columns) than along y (rows)
    True
    """
    sx, sy = check_positive_number("sigma_x", sigma_x), check_positive_number("sigma_y", sigma_y)
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not math.isfinite(theta):
        raise ValueError(f"theta must be a finite number (radians), got {theta!r}")
    yy, xx = _grid(_size(size))
    # screen coordinates: u = x, v = -y (up); rotate into the ellipse frame
    u, v = xx, -yy
    c, s = math.cos(theta), math.sin(theta)
    along = c * u + s * v
    across = -s * u + c * v
    return check_kernel(np.exp(-0.5 * ((along / sx) ** 2 + (across / sy) ** 2)))


def motion_kernel(
    size: Size = 15,
    length: Optional[float] = None,
    jitter: float = 0.3,
    n_steps: int = 64,
    seed: Union[int, np.random.Generator, None] = None,
) -> np.ndarray:
    """Random motion blur kernel (trajectory model in the module docstring).

    Args:
        size: kernel size (int or (kh, kw)).
        length: path length in pixels; default: uniform in [size/4, size*3/4] (size = the
            smaller side).
        jitter: std of the heading change per step, radians (0: straight line).
        n_steps: segments of the random walk.
        seed: int or ``numpy.random.Generator`` (same seed -> same kernel).

    Returns:
        float64 (kh, kw), non-negative, sum 1.

    >>> k = motion_kernel(15, seed=0)
    >>> k.shape, round(float(k.sum()), 12), bool((k >= 0).all())
    ((15, 15), 1.0, True)
    """
    kh, kw = _size(size)
    n_steps = check_int("n_steps", n_steps, 1)
    if isinstance(jitter, bool) or not isinstance(jitter, numbers.Real) or not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter must be a finite number >= 0, got {jitter!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    side = min(kh, kw)
    if length is None:
        length = rng.uniform(side / 4.0, side * 3.0 / 4.0)
    length = check_positive_number("length", length)
    heading = rng.uniform(0.0, 2.0 * math.pi) + np.cumsum(np.concatenate([[0.0], rng.normal(0.0, jitter, n_steps - 1)]))
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * (length / n_steps)
    pts = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])  # (n+1, 2) as (x, y)
    pts -= (pts.max(axis=0) + pts.min(axis=0)) / 2.0
    # fit inside the grid: offsets allowed in [-(k//2), k - 1 - k//2], keep one pixel margin
    half = np.array([min(kw // 2, kw - 1 - kw // 2), min(kh // 2, kh - 1 - kh // 2)], dtype=np.float64)
    ext = np.abs(pts).max(axis=0)
    shrink = np.min(np.where(ext > 0, np.maximum(half - 0.0, 0.0) / np.maximum(ext, 1e-12), np.inf))
    if shrink < 1.0:
        pts *= shrink
    # dense sampling along the polyline, uniform in time (each segment equally long)
    t = np.linspace(0.0, 1.0, 16, endpoint=False)
    seg0, seg1 = pts[:-1], pts[1:]
    dense = (seg0[:, None, :] * (1 - t)[None, :, None] + seg1[:, None, :] * t[None, :, None]).reshape(-1, 2)
    dense = np.concatenate([dense, pts[-1:]])
    col = dense[:, 0] + kw // 2
    row = dense[:, 1] + kh // 2
    k = np.zeros((kh, kw), dtype=np.float64)
    r0, c0 = np.floor(row).astype(int), np.floor(col).astype(int)
    fr, fc = row - r0, col - c0
    for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = np.clip(r0 + dr, 0, kh - 1), np.clip(c0 + dc, 0, kw - 1)
        np.add.at(k, (rr, cc), wgt)
    return check_kernel(k)


def load_kernel(path: Union[str, os.PathLike], key: Optional[str] = None, index: int = 0, normalize: bool = True) -> np.ndarray:
    """Loads a 2-D blur kernel from ``.npy``, ``.mat`` or an image file; validated, sum 1.

    Args:
        path: the file. ``.npy``: a 2-D array. ``.mat`` (needs scipy): the variable
            ``key``, or the only 2-D numeric variable; a cell array/object array variable
            gives its element ``index`` (flat order). Images (.png/.jpg/.bmp/.tif): grey
            levels (colour averaged over channels), scaled to [0, 1].
        normalize: divide by the sum (default).

    Raises:
        KernelError: missing/unreadable file, wrong shape (not 2-D), bad values, unknown
            extension, ambiguous or missing ``.mat`` variable.
        ImportError: a ``.mat`` file without scipy installed (with the install hint).
    """
    p = Path(path)
    if not p.is_file():
        raise KernelError(f"kernel file {str(p)!r} does not exist")
    ext = p.suffix.lower()
    name = f"kernel in {str(p)!r}"
    if ext == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise KernelError(f"cannot read kernel file {str(p)!r}: {e}") from e
    elif ext == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError as e:
            raise ImportError(
                f"reading the .mat kernel {str(p)!r} needs scipy: pip install scipy (or conversenet[mat])"
            ) from e
        try:
            data = loadmat(p)
        except Exception as e:  # scipy raises several types for corrupt files
            raise KernelError(f"cannot read kernel file {str(p)!r}: {e}") from e
        names = [n for n in data if not n.startswith("__")]
        if key is None:
            cands = [n for n in names if isinstance(data[n], np.ndarray) and (data[n].dtype == object or data[n].ndim == 2)]
            if len(cands) != 1:
                raise KernelError(f"{str(p)!r} holds variables {names}: pass key= to choose the kernel")
            key = cands[0]
        if key not in data:
            raise KernelError(f"{str(p)!r} has no variable {key!r} (variables: {names})")
        arr = data[key]
        if isinstance(arr, np.ndarray) and arr.dtype == object:
            flat = arr.reshape(-1)
            if not 0 <= index < flat.size:
                raise KernelError(f"index {index} out of range for the {flat.size} kernels in {str(p)!r}:{key}")
            arr = np.asarray(flat[index])
        name = f"kernel {key!r} in {str(p)!r}"
    elif ext in IMAGE_EXTENSIONS:
        from .io import ImageReadError, read_image, to_float

        try:
            img, _ = read_image(p, alpha="drop")
        except ImageReadError as e:
            raise KernelError(str(e)) from e
        arr = to_float(img, np.float64).mean(axis=2)
    else:
        raise KernelError(f"kernel file {str(p)!r}: unknown extension {ext!r} (use .npy, .mat or an image)")
    arr = np.asarray(arr)
    if arr.dtype.kind not in "uif":
        raise KernelError(f"{name} must be numeric, got dtype {arr.dtype}")
    return check_kernel(arr, normalize=normalize, name=name)


def make_kernel(spec: Union[str, os.PathLike, np.ndarray], size: int = 7) -> np.ndarray:
    """A (size, size) float64 blur kernel, sum 1, from a spec.

    ``spec``: ``"gaussian:SIGMA"`` (isotropic Gaussian of that standard deviation in
    pixels), a kernel file (.npy/.mat/image, :func:`load_kernel`) or an array. The one
    kernel reader of the package: restore, the web page, ``degrade``, the demo, the
    evaluation protocols (``normalize=False`` there) and training all use these functions. Odd kernels smaller than ``size`` are zero-padded around their centre; larger
    ones are an error (the non-blind model was trained on ``size x size`` kernels).

    >>> make_kernel("gaussian:1.6").shape
    (7, 7)
    >>> make_kernel(np.ones((3, 3)))[2:5, 2:5].round(3).tolist()[0]
    [0.111, 0.111, 0.111]
    """
    if isinstance(spec, np.ndarray):
        k = check_kernel(spec, name="kernel")
    elif isinstance(spec, str) and spec.lower().startswith("gaussian:"):
        try:
            sigma = float(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"kernel must look like gaussian:SIGMA (e.g. gaussian:1.6), got {spec!r}") from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"kernel: the Gaussian sigma must be > 0, got {spec!r}")
        k = gaussian_kernel(size, sigma)
    elif isinstance(spec, (str, os.PathLike)):
        k = load_kernel(spec)
    else:
        raise TypeError(f"kernel must be 'gaussian:SIGMA', a file path or an array, got {type(spec).__name__}")
    kh, kw = k.shape
    if kh > size or kw > size:
        raise ValueError(f"kernel is {kh}x{kw}, larger than the {size}x{size} the model takes")
    if (size - kh) % 2 or (size - kw) % 2:
        raise ValueError(f"kernel is {kh}x{kw}; it can only be centred in {size}x{size} when both sides are odd")
    out = np.zeros((size, size), np.float64)
    t, l = (size - kh) // 2, (size - kw) // 2
    out[t:t + kh, l:l + kw] = k
    return out / out.sum()
