"""Minimal 16-bit PNG codec for the colour/alpha cases Pillow truncates to 8 bits.

Pillow reads 16-bit grayscale PNGs at full depth (mode ``I;16``) but decodes 16-bit
grey+alpha, RGB and RGBA PNGs to 8 bits and cannot write them. This module handles exactly
those: non-interlaced PNGs with bit depth 16 and colour type 0 (grey), 2 (RGB),
4 (grey+alpha) or 6 (RGBA), per the PNG specification (big-endian samples, five row
filters, zlib-compressed IDAT stream, CRC-checked chunks).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["read_png16", "write_png16", "is_png16"]

_SIG = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
_COLOR_TYPE = {v: k for k, v in _CHANNELS.items()}


def _chunks(data: bytes):
    pos = len(_SIG)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise ValueError("truncated PNG chunk")
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != struct.unpack(">I", crc)[0]:
            raise ValueError(f"CRC mismatch in PNG chunk {ctype!r}")
        yield ctype, body
        pos += 12 + length


def _header(data: bytes):
    if not data.startswith(_SIG):
        raise ValueError("not a PNG file")
    ctype, body = next(_chunks(data))
    if ctype != b"IHDR" or len(body) != 13:
        raise ValueError("PNG without IHDR")
    return struct.unpack(">IIBBBBB", body)  # w, h, depth, colour, compression, filter, interlace


def is_png16(path) -> bool:
    """True for a PNG file with bit depth 16 (any colour type)."""
    with open(path, "rb") as f:
        head = f.read(33)
    try:
        return _header(head)[2] == 16
    except (ValueError, StopIteration, struct.error):
        return False


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: bytes, h: int, stride: int, bpp: int) -> np.ndarray:
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size != h * (stride + 1):
        raise ValueError(f"PNG data has {buf.size} bytes, expected {h * (stride + 1)}")
    rows = buf.reshape(h, stride + 1)
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(h):
        ftype, line = int(rows[y, 0]), rows[y, 1:].astype(np.int64)
        if ftype == 0:
            cur = line
        elif ftype == 1:  # Sub: running sum per byte position within a pixel
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) % 256
        elif ftype == 2:  # Up
            cur = (line + prev) % 256
        elif ftype in (3, 4):  # Average / Paeth depend on the reconstructed left byte
            cur_l = [0] * stride
            ln, pv = line.tolist(), prev.tolist()
            for i in range(stride):
                left = cur_l[i - bpp] if i >= bpp else 0
                if ftype == 3:
                    pred = (left + pv[i]) >> 1
                else:
                    pred = _paeth(left, pv[i], pv[i - bpp] if i >= bpp else 0)
                cur_l[i] = (ln[i] + pred) & 0xFF
            cur = np.asarray(cur_l, dtype=np.int64)
        else:
            raise ValueError(f"unknown PNG filter type {ftype}")
        out[y] = cur
        prev = cur
    return out


def read_png16(path) -> np.ndarray:
    """Reads a non-interlaced 16-bit PNG into a uint16 array (H, W, C), C in {1, 2, 3, 4}."""
    with open(path, "rb") as f:
        data = f.read()
    w, h, depth, color, comp, filt, interlace = _header(data)
    if depth != 16 or color not in _CHANNELS:
        raise ValueError(f"unsupported PNG: bit depth {depth}, colour type {color}")
    if comp != 0 or filt != 0:
        raise ValueError("unsupported PNG compression/filter method")
    if interlace != 0:
        raise ValueError("interlaced 16-bit colour PNGs are not supported")
    idat = b"".join(body for ctype, body in _chunks(data) if ctype == b"IDAT")
    c = _CHANNELS[color]
    raw = zlib.decompress(idat)
    rows = _unfilter(raw, h, w * c * 2, c * 2)
    return rows.view(">u2").reshape(h, w, c).astype(np.uint16)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def write_png16(fileobj, img: np.ndarray) -> None:
    """Writes a uint16 array (H, W, C), C in {1, 2, 3, 4}, as a 16-bit PNG (no row filters)."""
    if img.dtype != np.uint16 or img.ndim != 3 or img.shape[2] not in _COLOR_TYPE:
        raise ValueError(f"expected uint16 (H, W, C) with C in 1..4, got {img.dtype} {img.shape}")
    h, w, c = img.shape
    rows = np.ascontiguousarray(img.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 16, _COLOR_TYPE[c], 0, 0, 0)
    fileobj.write(_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))
