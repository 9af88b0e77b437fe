"""Image IO round trips (8/16-bit, grey/RGB/RGBA/palette), alpha modes, errors, atomic writes."""

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conversenet.data import (
    ImageReadError,
    from_float,
    gray_to_rgb,
    list_images,
    read_image,
    rgb_to_gray,
    to_float,
    to_image,
    to_tensor,
    write_image,
)

RNG = np.random.default_rng(0)
U8_RGB = RNG.integers(0, 256, (7, 9, 3)).astype(np.uint8)
U8_RGBA = RNG.integers(0, 256, (7, 9, 4)).astype(np.uint8)
U16_GRAY = RNG.integers(0, 65536, (7, 9)).astype(np.uint16)
U16_RGB = RNG.integers(0, 65536, (7, 9, 3)).astype(np.uint16)


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
@pytest.mark.parametrize("shape", [(7, 9), (7, 9, 3)])
def test_lossless_8bit_round_trip(tmp_path, ext, shape):
    img = U8_RGB[..., 0] if len(shape) == 2 else U8_RGB
    write_image(tmp_path / f"a{ext}", img)
    arr, info = read_image(tmp_path / f"a{ext}")
    assert arr.dtype == np.uint8 and info.bit_depth == 8 and info.channels == arr.shape[2]
    np.testing.assert_array_equal(arr, img.reshape(7, 9, -1))


def test_jpeg_round_trip_is_close(tmp_path):
    img = np.tile(np.linspace(0, 255, 32).astype(np.uint8)[None, :, None], (16, 1, 3))
    write_image(tmp_path / "a.jpg", img, quality=95)
    arr, info = read_image(tmp_path / "a.jpg")
    assert info.format == "JPEG" and arr.shape == (16, 32, 3) and arr.dtype == np.uint8
    assert np.abs(arr.astype(int) - img).max() <= 6


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_gray_round_trip(tmp_path, ext):
    write_image(tmp_path / f"g{ext}", U16_GRAY)
    arr, info = read_image(tmp_path / f"g{ext}")
    assert arr.dtype == np.uint16 and info.bit_depth == 16 and info.max_value == 65535
    np.testing.assert_array_equal(arr[..., 0], U16_GRAY)


@pytest.mark.parametrize("c", [2, 3, 4])
def test_16bit_colour_png_round_trip_and_pillow_sees_high_bytes(tmp_path, c):
    img = RNG.integers(0, 65536, (6, 5, c)).astype(np.uint16)
    write_image(tmp_path / "c.png", img)
    arr, info = read_image(tmp_path / "c.png", alpha="keep")
    assert info.bit_depth == 16 and info.had_alpha == (c in (2, 4))
    if c == 2:  # documented: 16-bit grey+alpha is stored as RGBA with equal colour channels
        img = np.concatenate([img[..., :1]] * 3 + [img[..., 1:]], axis=2)
    np.testing.assert_array_equal(arr, img)
    # an independent decoder (Pillow, which keeps the most significant byte) agrees
    with Image.open(tmp_path / "c.png") as im:
        pil = np.asarray(im.convert({3: "RGB", 4: "RGBA"}[img.shape[2]])).reshape(img.shape)
    np.testing.assert_array_equal(pil, (img >> 8).astype(np.uint8))


def _png16_with_filters(img, filters):
    """Test-side PNG encoder applying the spec's forward filters (one type per row)."""
    h, w, c = img.shape
    raw = img.astype(">u2").view(np.uint8).reshape(h, w * c * 2).astype(np.int64)
    bpp = c * 2
    out = []
    for y in range(h):
        ft, cur = filters[y % len(filters)], raw[y]
        prev = raw[y - 1] if y else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if ft == 0:
            pred = np.zeros_like(cur)
        elif ft == 1:
            pred = left
        elif ft == 2:
            pred = prev
        elif ft == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - ul
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        out.append(bytes([ft]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b"")


def test_16bit_png_decoder_handles_all_row_filters(tmp_path):
    img = RNG.integers(0, 65536, (10, 7, 3)).astype(np.uint16)
    (tmp_path / "f.png").write_bytes(_png16_with_filters(img, [0, 1, 2, 3, 4]))
    arr, _ = read_image(tmp_path / "f.png")
    np.testing.assert_array_equal(arr, img)


def test_alpha_modes(tmp_path):
    write_image(tmp_path / "a.png", U8_RGBA)
    drop, info = read_image(tmp_path / "a.png")
    assert info.had_alpha and drop.shape == (7, 9, 3)
    np.testing.assert_array_equal(drop, U8_RGBA[..., :3])
    keep, _ = read_image(tmp_path / "a.png", alpha="keep")
    np.testing.assert_array_equal(keep, U8_RGBA)
    comp, _ = read_image(tmp_path / "a.png", alpha="composite", background=0.0)
    a = U8_RGBA[..., 3:] / 255.0
    np.testing.assert_array_equal(comp, np.round(U8_RGBA[..., :3] * a).astype(np.uint8))
    white, _ = read_image(tmp_path / "a.png", alpha="composite")
    np.testing.assert_array_equal(white, np.round(U8_RGBA[..., :3] * a + 255 * (1 - a)).astype(np.uint8))
    with pytest.raises(ImageReadError, match="alpha"):
        read_image(tmp_path / "a.png", alpha="error")
    with pytest.raises(ValueError, match="alpha"):
        read_image(tmp_path / "a.png", alpha="nope")


def test_palette_and_bilevel_and_la(tmp_path):
    idx = RNG.integers(0, 4, (5, 6)).astype(np.uint8)
    pal = [10, 20, 30, 200, 0, 0, 0, 255, 0, 5, 6, 7]
    im = Image.fromarray(idx, mode="P")
    im.putpalette(pal + [0] * (768 - len(pal)))
    im.save(tmp_path / "p.png")
    arr, info = read_image(tmp_path / "p.png")
    assert info.mode == "P" and arr.shape == (5, 6, 3)
    np.testing.assert_array_equal(arr, np.array(pal).reshape(4, 3)[idx])
    im.save(tmp_path / "pt.png", transparency=1)
    arr, info = read_image(tmp_path / "pt.png", alpha="keep")
    assert info.had_alpha and arr.shape == (5, 6, 4)
    np.testing.assert_array_equal(arr[..., 3], np.where(idx == 1, 0, 255))
    bits = RNG.integers(0, 2, (4, 8)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    arr, _ = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(arr[..., 0], bits * 255)
    la = RNG.integers(0, 256, (4, 5, 2)).astype(np.uint8)
    write_image(tmp_path / "la.png", la)
    np.testing.assert_array_equal(read_image(tmp_path / "la.png", alpha="keep")[0], la)
    assert read_image(tmp_path / "la.png")[0].shape == (4, 5, 1)


def test_unreadable_files_raise_naming_the_file(tmp_path):
    for name, data in [("junk.png", b"not an image at all"), ("empty.jpg", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
    good = tmp_path / "t.png"
    write_image(good, U16_RGB)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="trunc.png"):
        read_image(tmp_path / "trunc.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((3, 3), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="f.tif"):
        read_image(tmp_path / "f.tif")
    assert issubclass(ImageReadError, ValueError)


def test_write_refuses_overwrite_protects_inputs_and_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "out.png"
    write_image(p, U8_RGB)
    with pytest.raises(FileExistsError):
        write_image(p, U8_RGB[::-1].copy())
    np.testing.assert_array_equal(read_image(p)[0], U8_RGB)
    write_image(p, U8_RGB[::-1].copy(), overwrite=True)
    np.testing.assert_array_equal(read_image(p)[0], U8_RGB[::-1])
    with pytest.raises(ValueError, match="protected"):
        write_image(p, U8_RGB, overwrite=True, protect=[str(p)])

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(RuntimeError):
        write_image(tmp_path / "new.png", U8_RGB)
    with pytest.raises(RuntimeError):
        write_image(p, U8_RGB, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no partial file, no temp left
    np.testing.assert_array_equal(read_image(p)[0], U8_RGB[::-1])  # old content intact


def test_write_rejects_what_a_format_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="8-bit"):
        write_image(tmp_path / "a.jpg", U16_GRAY)
    with pytest.raises(ValueError, match="8-bit"):
        write_image(tmp_path / "a.bmp", U16_RGB)
    with pytest.raises(ValueError, match="float32 for TIFF"):
        write_image(tmp_path / "a.png", (U8_RGB / 255.0).astype(np.float32))
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "a.jpg", U8_RGBA)
    with pytest.raises(ValueError, match="from_float"):
        write_image(tmp_path / "a.png", U8_RGB / 255.0)
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "a.gif", U8_RGB)
    assert os.listdir(tmp_path) == []


def test_float_conversions_round_trip_exactly():
    u8 = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(from_float(to_float(u8)), u8)
    u16 = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(from_float(to_float(u16), 16), u16)
    assert to_float(u8).dtype == np.float32 and to_float(u8)[51] == np.float32(0.2)
    np.testing.assert_array_equal(from_float(np.array([-1.0, 0.0019, 0.0021, 2.0])), [0, 0, 1, 255])
    t = to_tensor(U8_RGB, batch=True)
    assert t.shape == (1, 3, 7, 9) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    np.testing.assert_array_equal(to_image(t), U8_RGB)
    np.testing.assert_array_equal(to_image(to_tensor(U16_GRAY), bit_depth=16)[..., 0], U16_GRAY)
    assert to_tensor(U16_GRAY).shape == (1, 7, 9)
    with pytest.raises(ValueError, match="one image"):
        to_image(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="bit_depth"):
        from_float(np.zeros(3), 12)


def test_gray_rgb_helpers():
    g = U8_RGB[..., :1]
    rgb = gray_to_rgb(g)
    assert rgb.shape == (7, 9, 3) and (rgb == g).all()
    np.testing.assert_array_equal(rgb_to_gray(rgb), g)
    ref = np.round(U8_RGB @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8)
    np.testing.assert_array_equal(rgb_to_gray(U8_RGB), ref)
    t = torch.rand(2, 3, 4, 5)
    tg = rgb_to_gray(t)
    assert tg.shape == (2, 1, 4, 5)
    assert torch.allclose(tg[:, 0], 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])
    assert gray_to_rgb(tg).shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="channels"):
        rgb_to_gray(np.zeros((2, 2, 2)))


def test_list_images_sorted_by_name_filters_extensions_and_refuses_broken_links(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.tiff", "notes.txt", "readme", "d.npy"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()  # a folder with an image name is not an image
    (tmp_path / "sub.png" / "inner.png").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff"]
    (tmp_path / "e.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match=r"data.val: broken symbolic link.*e\.png"):
        list_images(tmp_path, "data.val")
    (tmp_path / "e.png").unlink()
    (tmp_path / "f.bmp").symlink_to(tmp_path / "f.bmp")  # a loop
    with pytest.raises(FileNotFoundError, match=r"broken symbolic link.*f\.bmp"):
        list_images(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="dataset: no images .* in .*empty"):
        list_images(empty, what="dataset")
    with pytest.raises(FileNotFoundError, match="data.train: .*missing is not a folder"):
        list_images(tmp_path / "missing", "data.train")
