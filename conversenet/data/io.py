"""Image files <-> numpy arrays <-> float tensors.

Reading (:func:`read_image`) returns the pixels as stored, channel last, in their native
dtype, plus an :class:`ImageInfo` record that a writer can use to keep format and depth:

=====================  ====================================  ===========
source                  returned array                        bit_depth
=====================  ====================================  ===========
1-bit, L (grey)         uint8 (H, W, 1) (1-bit: 0 / 255)      8
I;16 grey PNG/TIFF      uint16 (H, W, 1)                      16
RGB, CMYK, YCbCr        uint8 (H, W, 3) (converted to RGB)    8
16-bit RGB/RGBA/LA      uint16 (H, W, 3/4/2) (OpenCV          16
PNG and TIFF            decoder)
float TIFF              float32 (H, W, C), only with           32
                        ``allow_float=True`` (finite values)
P (palette)             expanded to RGB (or RGBA when the     8
                        palette has transparency)
RGBA, LA                see ``alpha`` below                   8
=====================  ====================================  ===========

``alpha`` says what happens to a transparency channel, explicitly:
``"drop"`` (default) discards it; ``"keep"`` returns it as the last channel (C = 2 or 4);
``"composite"`` blends the colour over a flat ``background`` (a fraction of white,
default 1.0 = white) and rounds to the native dtype; ``"error"`` raises
:class:`ImageReadError`. EXIF orientation tags are not applied (pixels as stored).
Files that cannot be read or hold an unsupported layout (float images unless
``allow_float=True``, 32-bit integer images) raise :class:`ImageReadError` naming the file,
as do float images holding NaN or infinity.

8-bit images and 16-bit grey images go through Pillow. 16-bit colour PNG/TIFF and float
TIFF, which Pillow truncates or cannot open, are decoded and encoded by OpenCV
(``opencv-python-headless``, imported only when such a file is met; its BGR(A) order is
turned into RGB(A) here).

Writing (:func:`write_image`) picks the format from the extension (.png, .tif/.tiff,
.jpg/.jpeg, .bmp) and the bit depth from the dtype (uint8 or uint16; 16 bits only for
PNG and TIFF; float32 only for TIFF). A 16-bit grey+alpha image is stored as 16-bit RGBA
(three equal colour channels: the encoder has no 16-bit grey+alpha layout). The file is written to a temporary name in the same folder and
moved into place with ``os.replace``, so a reader never sees half a file. Existing files
are only replaced with ``overwrite=True``, and never when they are listed in ``protect``.

Listing (:func:`list_images`): the image files directly in a folder, by extension, sorted
by name; a broken symbolic link with an image name is an error, not a skipped file.

Conversions: :func:`to_float` / :func:`from_float` (numpy, [0, 1] floats; clamp and
round back), :func:`to_tensor` / :func:`to_image` (torch (C, H, W) or (1, C, H, W)),
:func:`gray_to_rgb` / :func:`rgb_to_gray`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from .._atomic import atomic_open

__all__ = [
    "ImageReadError",
    "ImageInfo",
    "IMAGE_EXTENSIONS",
    "ALPHA_MODES",
    "list_images",
    "read_image",
    "probe_image",
    "chroma_subsampling",
    "write_image",
    "to_float",
    "from_float",
    "to_tensor",
    "to_image",
    "gray_to_rgb",
    "rgb_to_gray",
]

PathLike = Union[str, os.PathLike]

#: Extensions read and written, mapped to Pillow format names.
IMAGE_EXTENSIONS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}
ALPHA_MODES = ("drop", "keep", "composite", "error")
#: ITU-R BT.601 luma weights of R, G, B used by :func:`rgb_to_gray` (as Pillow's "L").
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


class ImageReadError(ValueError):
    """An image file could not be read or holds an unsupported layout (names the file)."""


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`read_image` found.

    Attributes:
        path: the file read.
        format: Pillow format name ("PNG", "JPEG", "BMP", "TIFF", ...).
        mode: the source's Pillow mode ("L", "RGB", "RGBA", "P", "I;16", ...; 16-bit
            colour PNGs report "RGB;16", "RGBA;16" or "LA;16").
        bit_depth: bits per sample of the returned array (8 or 16).
        channels: channels of the returned array.
        had_alpha: the source had a transparency channel (or a transparent palette).
    """

    path: str
    format: str
    mode: str
    bit_depth: int
    channels: int
    had_alpha: bool

    @property
    def max_value(self) -> int:
        """The value of white: 255 or 65535."""
        return (1 << self.bit_depth) - 1


def _handle_alpha(arr: np.ndarray, alpha: str, background: float, path: str) -> np.ndarray:
    """arr (H, W, C) with the alpha as last channel (C = 2 or 4)."""
    if alpha == "keep":
        return arr
    if alpha == "drop":
        return arr[..., :-1]
    if alpha == "error":
        raise ImageReadError(f"image {path!r} has an alpha channel (alpha='error')")
    maxv = float(np.iinfo(arr.dtype).max)
    a = arr[..., -1:].astype(np.float64) / maxv
    color = arr[..., :-1].astype(np.float64)
    out = color * a + background * maxv * (1.0 - a)
    return np.clip(np.round(out), 0, maxv).astype(arr.dtype)


def _cv2():
    """OpenCV, imported on first use (16-bit colour and float files only)."""
    if "cv2" not in sys.modules:
        # OpenCV's own decompression-bomb limit, read when it loads: the one Pillow enforces
        # (a float colour TIFF, which Pillow cannot open, reaches OpenCV without Pillow's check)
        from PIL import Image

        limit = Image.MAX_IMAGE_PIXELS
        if limit:
            os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2 * int(limit)))
    try:
        import cv2
    except ImportError as e:  # a core dependency; only a broken install gets here
        raise ImportError("16-bit colour and float images need OpenCV: pip install opencv-python-headless") from e
    return cv2


def _cv2_decode(spath: str) -> np.ndarray:
    """Decodes with OpenCV (``IMREAD_UNCHANGED``: native depth and channels) -> (H, W, C) in
    RGB(A) order."""
    cv2 = _cv2()
    with open(spath, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"cannot read image {spath!r}: OpenCV could not decode it")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 3:
        arr = arr[..., ::-1]  # BGR -> RGB
    elif arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    return np.ascontiguousarray(arr)


def _cv2_encode(ext: str, arr: np.ndarray) -> bytes:
    """(H, W, C) RGB(A) or grey -> encoded bytes (``ext`` ".png" or ".tiff")."""
    cv2 = _cv2()
    c = arr.shape[2]
    if c == 2:  # no 16-bit grey+alpha encoder: RGBA with equal colour channels
        arr = np.concatenate([arr[..., :1]] * 3 + [arr[..., 1:]], axis=2)
        c = 4
    if c == 3:
        arr = arr[..., ::-1]
    elif c == 4:
        arr = arr[..., [2, 1, 0, 3]]
    # TIFF: Adobe deflate (zlib) without predictor: lossless and readable without extra codecs (OpenCV's
    # defaults, LZW and for floats the floating-point predictor, are not decoded by every reader, e.g.
    # tifffile without imagecodecs)
    params = []
    if ext == ".tiff":
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 8]
        if hasattr(cv2, "IMWRITE_TIFF_PREDICTOR"):
            params += [cv2.IMWRITE_TIFF_PREDICTOR, 1]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(arr), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr.dtype} {arr.shape} image as {ext}")
    return buf.tobytes()


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_MODES = {"1", "L", "I;16", "I;16B", "I;16L", "I;16N", "I", "P", "RGBA", "LA", "PA", "RGB", "CMYK", "YCbCr",
          "LAB", "HSV", "RGBX"}


def _check_single_frame(im, spath: str) -> None:
    # MPO is how Pillow opens many camera JPEGs (the photo plus previews): the first frame is the photo
    frames = getattr(im, "n_frames", 1) if im.format != "MPO" else 1
    if frames > 1:
        raise ImageReadError(f"cannot read image {spath!r}: animated or multi-page {im.format} with {frames} frames "
                             "is not supported (extract the frame you want first)")


def list_images(folder: PathLike, what: str = "image folder") -> List[Path]:
    """The image files (an extension of :data:`IMAGE_EXTENSIONS`, any case) directly in
    ``folder``, sorted by name; sub-folders and other files are ignored.

    Args:
        folder: the folder to list.
        what: what the folder is, for messages (``"data.train"``, ``"dataset"``).

    Raises:
        FileNotFoundError: ``folder`` is not a folder; an entry with an image name is a
            broken symbolic link (dangling or a loop: a missing image would silently change
            averages over the folder); no image is found. Each message names ``what`` and
            the folder.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for n in ("b.PNG", "a.jpg", "notes.txt"):
    ...     _ = (d / n).write_bytes(b"")
    >>> [p.name for p in list_images(d)]
    ['a.jpg', 'b.PNG']
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: {folder} is not a folder")
    entries = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: p.name)
    broken = [p.name for p in entries if p.is_symlink() and not p.exists()]
    if broken:
        raise FileNotFoundError(f"{what}: broken symbolic link(s) (dangling or a loop) in {folder}: "
                                + ", ".join(broken))
    files = [p for p in entries if p.is_file()]
    if not files:
        raise FileNotFoundError(f"{what}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    return files


def probe_image(path: PathLike, allow_float: bool = False) -> Optional[Tuple[int, int]]:
    """Checks from the header, without decoding the pixels, that :func:`read_image` can read
    the file: one frame, a supported layout. Cheap enough to run on every input before any
    work starts.

    Returns:
        ``(height, width)``, or None for a float colour TIFF (whose size only the decoder knows).

    Raises:
        ImageReadError: naming the file and the problem (missing, not an image, animated,
        unsupported mode).
    """
    from PIL import Image, UnidentifiedImageError

    spath = str(path)
    if not os.path.isfile(spath):
        raise ImageReadError(f"cannot read image {spath!r}: no such file")
    try:
        with Image.open(spath) as im:
            _check_single_frame(im, spath)
            if im.mode not in _MODES and not (im.mode == "F" and im.format == "TIFF" and allow_float):
                what = "float images are not supported here" if im.mode == "F" else f"unsupported image mode {im.mode!r}"
                raise ImageReadError(f"cannot read image {spath!r}: {what}")
            return im.size[1], im.size[0]
    except ImageReadError:
        raise
    except UnidentifiedImageError as e:
        with open(spath, "rb") as f:
            if allow_float and f.read(4) in _TIFF_MAGIC:
                return None
        raise ImageReadError(f"cannot read image {spath!r}: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read image {spath!r}: {e}") from e


def chroma_subsampling(path: PathLike) -> Optional[str]:
    """``"4:2:0"`` or ``"4:2:2"`` for a colour JPEG that stores its colour (Cb, Cr) at reduced
    resolution, read from the header; None for anything else (4:4:4, grey, other formats,
    unreadable files). Noise in such files is blurred in colour and left at full resolution
    in brightness, so it is nearly the same in R, G and B: not the independent per-channel
    noise a colour Gaussian denoiser is trained on."""
    from PIL import Image, JpegImagePlugin

    try:
        with Image.open(str(path)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "YCbCr"):
                return None
            return {1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(im))
    except (OSError, SyntaxError, ValueError):
        return None


def read_image(path: PathLike, alpha: str = "drop", background: float = 1.0,
               allow_float: bool = False) -> Tuple[np.ndarray, ImageInfo]:
    """Reads an image file (PNG, JPEG, BMP, TIFF and what else Pillow opens).

    Args:
        path: file to read.
        alpha: "drop", "keep", "composite" or "error" (see the module docstring).
        background: for "composite": grey level of the background, 0.0 (black) .. 1.0 (white).
        allow_float: return float TIFFs as float32 arrays (values as stored, not scaled;
            ``bit_depth`` 32) instead of refusing them. NaN or infinity is refused either way.

    Returns:
        ``(array, info)``: uint8 or uint16 (or float32) array (H, W, C), C in {1, 3} (or
        {2, 4} with ``alpha="keep"``), and its :class:`ImageInfo`.

    Raises:
        ImageReadError: missing, unreadable or unsupported file (message names it).

    Example:
        >>> import numpy as np, tempfile, os
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "x.png")
        >>> write_image(p, np.full((2, 3), 7, np.uint16))
        >>> arr, info = read_image(p)
        >>> arr.shape, arr.dtype, info.bit_depth
        ((2, 3, 1), dtype('uint16'), 16)
    """
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    if not (0.0 <= float(background) <= 1.0):
        raise ValueError(f"background must be in [0, 1], got {background!r}")
    from PIL import Image, UnidentifiedImageError

    spath = str(path)
    if not os.path.isfile(spath):
        raise ImageReadError(f"cannot read image {spath!r}: no such file")
    mode_alpha, rawmode = False, ""
    try:
        with Image.open(spath) as im:
            fmt, mode = im.format or "?", im.mode
            _check_single_frame(im, spath)
            tile = im.tile[0] if im.tile else None
            rawmode = ""
            if tile is not None:
                args = tile.args if hasattr(tile, "args") else tile[3]
                rawmode = args if isinstance(args, str) else (args[0] if args else "")
            sixteen = ";16" in str(rawmode) and mode in ("RGB", "RGBA", "LA", "RGBX")
            if sixteen or mode == "F":
                if fmt not in ("PNG", "TIFF"):
                    raise ImageReadError(f"cannot read image {spath!r}: 16-bit colour or float {fmt} is not supported")
                arr = None  # decoded below by OpenCV
            elif mode == "1":
                arr = np.asarray(im.convert("L"))[..., None]
            elif mode == "L":
                arr = np.asarray(im)[..., None]
            elif mode.startswith("I;16"):
                arr = np.asarray(im).astype(np.uint16)[..., None]
            elif mode == "I":
                a = np.asarray(im)
                if a.size and (a.min() < 0 or a.max() > 65535):
                    raise ImageReadError(f"cannot read image {spath!r}: 32-bit integer data is not supported")
                arr = a.astype(np.uint16)[..., None]
            elif mode == "P":
                has_t = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
                arr = np.asarray(im.convert("RGBA" if has_t else "RGB"))
                mode_alpha = has_t
            elif mode in ("RGBA", "LA", "PA"):
                arr = np.asarray(im.convert("RGBA") if mode == "PA" else im)
            elif mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
                arr = np.asarray(im.convert("RGB"))
            else:
                raise ImageReadError(f"cannot read image {spath!r}: unsupported image mode {mode!r}")
            if arr is not None:
                arr = np.array(arr)  # own, writable copy detached from Pillow
    except ImageReadError:
        raise
    except UnidentifiedImageError as e:
        with open(spath, "rb") as f:
            head = f.read(4)
        if head not in _TIFF_MAGIC:  # Pillow opens no float colour TIFF: OpenCV may
            raise ImageReadError(f"cannot read image {spath!r}: {e}") from e
        fmt, mode, arr = "TIFF", "?", None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read image {spath!r}: {e}") from e

    if arr is None:
        try:
            arr = _cv2_decode(spath)
        except ImageReadError:
            raise
        except Exception as e:  # cv2.error, OSError: all mean a bad file
            why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            if "MAX_IMAGE_PIXELS" in why:
                why = f"more than {os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS')} pixels (decompression-bomb limit)"
            raise ImageReadError(f"cannot read image {spath!r}: {why}") from e
        if (mode == "LA" or str(rawmode).startswith("LA")) and arr.shape[2] == 4:  # OpenCV gives grey+alpha as BGRA
            arr = np.ascontiguousarray(arr[..., [0, 3]])
        if arr.dtype.kind == "f":
            if not allow_float:
                raise ImageReadError(f"cannot read image {spath!r}: float images are not supported here")
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise ImageReadError(f"cannot read image {spath!r}: it holds NaN or infinite values")
            mode = {1: "F", 2: "LA;F", 3: "RGB;F", 4: "RGBA;F"}.get(arr.shape[2], "?")
        elif arr.dtype == np.uint16:
            mode = {1: "I;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}.get(arr.shape[2], "?")
        elif arr.dtype == np.uint8:
            mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(arr.shape[2], "?")
        else:
            raise ImageReadError(f"cannot read image {spath!r}: unsupported sample type {arr.dtype}")
    had_alpha = arr.shape[2] in (2, 4) if mode != "P" else mode_alpha
    if arr.shape[2] in (2, 4):
        if arr.dtype.kind == "f" and alpha == "composite":
            raise ImageReadError(f"cannot read image {spath!r}: alpha='composite' needs an integer image")
        arr = _handle_alpha(arr, alpha, float(background), spath)
    depth = {np.dtype(np.uint16): 16, np.dtype(np.float32): 32}.get(arr.dtype, 8)
    return arr, ImageInfo(spath, fmt, mode, depth, int(arr.shape[2]), bool(had_alpha))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_image(
    path: PathLike,
    img: np.ndarray,
    *,
    overwrite: bool = False,
    protect: Iterable[PathLike] = (),
    quality: int = 95,
) -> None:
    """Writes a uint8/uint16 (or float32 TIFF) image atomically (temp file + ``os.replace``).

    Args:
        path: destination; its extension picks the format (see :data:`IMAGE_EXTENSIONS`).
            Missing parent folders are created.
        img: uint8 or uint16 numpy array (H, W) or (H, W, C), C = 1 (grey), 2 (grey +
            alpha; 16 bits: stored as RGBA), 3 (RGB) or 4 (RGBA); float32 for ``.tif``
            (values as they are). Convert floats with :func:`from_float` first otherwise.
        overwrite: replace an existing file (default: refuse with FileExistsError).
        protect: paths that must never be written (e.g. the input images), whatever
            ``overwrite`` says (ValueError).
        quality: JPEG quality (1..95 recommended).

    Raises:
        ValueError: unknown extension, wrong dtype/shape, a depth or channel layout the
            format cannot store (16-bit JPEG/BMP, float outside TIFF, alpha in JPEG),
            a protected path.
        FileExistsError: the file exists and ``overwrite`` is False.
    """
    dest = Path(path)
    ext = dest.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"cannot write {str(dest)!r}: unknown image extension {ext!r} (use {sorted(IMAGE_EXTENSIONS)})")
    fmt = IMAGE_EXTENSIONS[ext]
    floating = isinstance(img, np.ndarray) and img.dtype == np.float32 and fmt == "TIFF"
    if not isinstance(img, np.ndarray) or (img.dtype not in (np.uint8, np.uint16) and not floating):
        raise ValueError(
            f"img must be a uint8 or uint16 numpy array (or float32 for TIFF), got "
            f"{getattr(img, 'dtype', type(img).__name__)} (convert floats with conversenet.data.from_float)"
        )
    arr = img[..., None] if img.ndim == 2 else img
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"img must be (H, W) or (H, W, C) with C in 1..4, got shape {img.shape}")
    c, sixteen = arr.shape[2], arr.dtype == np.uint16
    if sixteen and fmt in ("JPEG", "BMP"):
        raise ValueError(f"cannot write {str(dest)!r}: {fmt} stores 8-bit images only (use from_float(..., bit_depth=8))")
    if floating and c == 2:
        raise ValueError(f"cannot write {str(dest)!r}: float grey+alpha TIFF is not supported")
    if fmt == "JPEG" and c in (2, 4):
        raise ValueError(f"cannot write {str(dest)!r}: JPEG has no alpha channel")
    if fmt == "BMP" and c == 2:
        raise ValueError(f"cannot write {str(dest)!r}: BMP has no grey+alpha layout")
    for p in protect:
        if _same_file(dest, Path(p)) or dest.resolve() == Path(p).resolve():
            raise ValueError(f"refusing to write {str(dest)!r}: it is a protected (input) path")
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{str(dest)!r} exists (pass overwrite=True to replace it)")

    from PIL import Image

    if (sixteen and c > 1) or floating:  # Pillow cannot store these: OpenCV (encoded before the file opens)
        data = _cv2_encode(".png" if fmt == "PNG" else ".tiff", arr)
    with atomic_open(dest, "wb") as f:
        if (sixteen and c > 1) or floating:
            f.write(data)
        else:
            pil_mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
            data = arr[..., 0] if c == 1 else arr
            if sixteen:
                im = Image.fromarray(np.ascontiguousarray(data.astype(np.uint16)))  # mode I;16
            else:
                im = Image.fromarray(np.ascontiguousarray(data), mode=pil_mode) if c > 1 else Image.fromarray(
                    np.ascontiguousarray(data)
                )
            kwargs = {"quality": int(quality)} if fmt == "JPEG" else {}
            im.save(f, format=fmt, **kwargs)


# --------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------
def _max_value(dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise ValueError(f"expected a uint8 or uint16 image, got {dtype}")


def _check_bit_depth(bit_depth) -> int:
    if bit_depth not in (8, 16) or isinstance(bit_depth, bool):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    return int(bit_depth)


def to_float(img: np.ndarray, dtype=np.float32) -> np.ndarray:
    """uint8 / uint16 array -> float array in [0, 1] (``img / 255`` or ``img / 65535``).

    The division is done in float64, then cast (as KAIR's ``uint2single``).

    >>> to_float(np.array([0, 51, 255], np.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f"img must be a numpy array, got {type(img).__name__}")
    return (img / _max_value(img.dtype)).astype(dtype)


def from_float(x: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """float array in [0, 1] -> uint8/uint16: clamp to [0, 1], scale, round half to even.

    >>> from_float(np.array([-0.2, 0.5, 1.3]), 8).tolist()
    [0, 128, 255]
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError(f"x must be a floating point numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
    bd = _check_bit_depth(bit_depth)
    maxv = float((1 << bd) - 1)
    return np.round(np.clip(x.astype(np.float64), 0.0, 1.0) * maxv).astype(np.uint8 if bd == 8 else np.uint16)


def to_tensor(
    img: np.ndarray, batch: bool = False, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """numpy image (H, W) or (H, W, C) -> tensor (C, H, W), or (1, C, H, W) with ``batch``.

    uint8/uint16 are scaled to [0, 1]; float arrays are taken as already in [0, 1].

    >>> to_tensor(np.zeros((4, 5, 3), np.uint8), batch=True).shape
    torch.Size([1, 3, 4, 5])
    """
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise ValueError(f"img must be a numpy array (H, W) or (H, W, C), got {getattr(img, 'shape', type(img).__name__)}")
    if img.dtype.kind == "f":
        arr = img.astype(np.float64)
    else:
        arr = img / _max_value(img.dtype)
    if arr.ndim == 2:
        arr = arr[..., None]
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(dtype=dtype, device=device)
    return t[None] if batch else t


def to_image(t: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """Tensor (C, H, W) or (1, C, H, W) in [0, 1] -> numpy (H, W, C) uint8/uint16.

    Clamps to [0, 1], scales and rounds (half to even), like KAIR's ``tensor2uint``.

    >>> import torch
    >>> to_image(torch.tensor([[[0.5, 2.0]]])).tolist()
    [[[128], [255]]]
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"t must hold one image, got batch of {t.shape[0]} (shape {tuple(t.shape)})")
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"t must be (C, H, W) or (1, C, H, W), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"t must be floating point, got {t.dtype}")
    bd = _check_bit_depth(bit_depth)
    maxv = float((1 << bd) - 1)
    x = (t.detach().to("cpu", torch.float64).clamp(0, 1) * maxv).round()
    return x.permute(1, 2, 0).numpy().astype(np.uint8 if bd == 8 else np.uint16)


def _channel_axis(img) -> int:
    if isinstance(img, torch.Tensor):
        if img.ndim < 3:
            raise ValueError(f"tensor must be (C, H, W) or (N, C, H, W), got shape {tuple(img.shape)}")
        return img.ndim - 3
    if isinstance(img, np.ndarray):
        if img.ndim != 3:
            raise ValueError(f"array must be (H, W, C), got shape {img.shape}")
        return 2
    raise TypeError(f"expected a numpy array or torch tensor, got {type(img).__name__}")


def gray_to_rgb(img):
    """Repeats a single channel three times: numpy (H, W, 1) -> (H, W, 3), torch
    (..., 1, H, W) -> (..., 3, H, W). A 3-channel input is returned unchanged.

    >>> gray_to_rgb(np.zeros((2, 2, 1), np.uint8)).shape
    (2, 2, 3)
    """
    ax = _channel_axis(img)
    c = img.shape[ax]
    if c == 3:
        return img
    if c != 1:
        raise ValueError(f"gray_to_rgb needs 1 channel, got {c} (shape {tuple(img.shape)})")
    if isinstance(img, torch.Tensor):
        return img.repeat_interleave(3, dim=ax)
    return np.repeat(img, 3, axis=ax)


def rgb_to_gray(img):
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (Pillow's "L"), keeping a channel axis.

    numpy (H, W, 3) -> (H, W, 1), integer dtypes rounded back to their dtype; torch
    (..., 3, H, W) -> (..., 1, H, W) in the tensor's float dtype. A 1-channel input is
    returned unchanged.

    >>> rgb_to_gray(np.array([[[255, 255, 255]]], np.uint8)).tolist()
    [[[255]]]
    """
    ax = _channel_axis(img)
    c = img.shape[ax]
    if c == 1:
        return img
    if c != 3:
        raise ValueError(f"rgb_to_gray needs 3 channels, got {c} (shape {tuple(img.shape)})")
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise TypeError(f"tensor must be floating point, got {img.dtype}")
        w = torch.tensor(GRAY_WEIGHTS, dtype=img.dtype, device=img.device).reshape(3, 1, 1)
        return (img * w).sum(dim=ax, keepdim=True)
    y = img.astype(np.float64) @ np.asarray(GRAY_WEIGHTS)
    if img.dtype.kind in "ui":
        info = np.iinfo(img.dtype)
        y = np.clip(np.round(y), info.min, info.max)
    return y[..., None].astype(img.dtype)
