"""``conversenet serve``: the engine behind the page (no browser needed) and the page itself,
driven in headless Chromium with Playwright against a server started on a free local port.

The browser tests need gradio, playwright and a Chromium binary (Debian's ``chromium``
package; ``.ci/run`` installs all three) and skip with the reason otherwise. References
(PSNR) are computed here in float64 from the files, not with the package's metrics.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _reference import psnr_ref
from conversenet.data import write_image
from conversenet.restore import sample_image
from conversenet.web.engine import Engine, WebError, clean_uploads

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CONVERSENET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


# --------------------------------------------------------------------------------------
# fixtures: a clean generated scene and its noisy copy (seeded Gaussian noise, sigma 25)
# --------------------------------------------------------------------------------------
def _clean_grey(size: int = 96) -> np.ndarray:
    rgb = sample_image(size, seed=3).astype(np.float64)
    return np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


def _noisy(clean: np.ndarray, sigma: float = 25.0, seed: int = 0, maxv: float = 255.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = clean.astype(np.float64) + rng.normal(0.0, sigma * maxv / 255.0, clean.shape)
    return np.clip(np.round(x), 0, maxv).astype(clean.dtype)


_psnr = psnr_ref  # (a, b, peak=255.0)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("CONVERSENET_OFFLINE", "1")


@pytest.fixture
def engine(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    return Engine(root, device="cpu", max_pixels=200 * 200)


# --------------------------------------------------------------------------------------
# engine (no browser)
# --------------------------------------------------------------------------------------
def test_import_conversenet_does_not_import_gradio():
    code = ("import sys, conversenet, conversenet.restore, conversenet.web.engine, conversenet.cli.serve; "
            "from conversenet.cli import build_parser; build_parser(); "
            "print('gradio' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_engine_denoise_16bit_grey_keeps_depth_and_improves(engine, tmp_path, offline):
    clean = _clean_grey().astype(np.uint16) * 257
    noisy = _noisy(clean, maxv=65535.0)
    src = tmp_path / "photo16.png"
    write_image(src, noisy)
    rep = engine.restore([str(src)], "Denoise", weights="Built-in")
    (r,) = rep.images
    assert "built-in" in rep.source and not rep.errors
    out = np.asarray(Image.open(r.path))
    assert r.path.suffix == ".png" and out.dtype == np.uint16 and out.shape == clean.shape
    assert _psnr(out, clean, 65535.0) > _psnr(noisy, clean, 65535.0) + 5


def test_engine_colour_jpeg_stays_jpeg_and_metrics_match_file(engine, tmp_path, offline):
    clean = sample_image(64, seed=1)
    noisy = _noisy(clean)
    src, ref = tmp_path / "cam.jpg", tmp_path / "cam.png"
    # 4:4:4: PIL's default 4:2:0 chroma subsampling blurs the colour noise into correlated
    # noise that the Gaussian-trained blind colour model leaves (its model card's limits)
    Image.fromarray(noisy).save(src, quality=98, subsampling=0)
    write_image(ref, clean)
    progress = []
    rep = engine.restore([str(src)], "Denoise", weights="Built-in", references=[str(ref)],
                         progress=lambda f, d: progress.append(f))
    (r,) = rep.images
    with Image.open(r.path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
    assert progress[-1] == 1.0 and progress == sorted(progress)
    # the page's PSNR is of the result as written at the input's bit depth; the JPEG file
    # itself is re-encoded, so compare with the rounded array the engine saved through
    lq = np.asarray(Image.open(src)).astype(np.float64)
    assert r.metrics["psnr_in"] == pytest.approx(_psnr(lq, clean), abs=1e-6)
    assert r.metrics["psnr"] > r.metrics["psnr_in"] + 3
    assert 0 < r.metrics["ssim_in"] < r.metrics["ssim"] <= 1


def test_engine_unknown_noise_level_picks_the_blind_model_of_each_image(engine, tmp_path, offline):
    # one request, a grey and a colour upload: each gets the blind denoiser of its channels
    grey_clean, colour_clean = _clean_grey(64), sample_image(64, seed=5)
    grey, colour = tmp_path / "g.png", tmp_path / "c.png"
    write_image(grey, _noisy(grey_clean, sigma=40.0, seed=1))
    write_image(colour, _noisy(colour_clean, sigma=40.0, seed=2))
    rep = engine.restore([str(grey), str(colour)], "Denoise", weights="Built-in")
    assert "converse_unet_blind_gray" in rep.source and "converse_unet_blind_color" in rep.source, rep.source
    assert not rep.errors and not rep.warnings
    for r, clean in zip(rep.images, (grey_clean, colour_clean)):
        out = np.asarray(Image.open(r.path))
        assert out.shape == clean.shape
        noisy = np.asarray(Image.open(tmp_path / r.name))
        assert _psnr(out, clean) > _psnr(noisy, clean) + 5, r.name
    # a level given: the sigma-trained built-in model, and a warning when it does not match
    rep = engine.restore([str(grey)], "Denoise", weights="Built-in", sigma=40.0)
    assert "dncnn" in rep.source and "blind" not in rep.source
    assert any("trained for noise level 25" in w for w in rep.warnings), rep.warnings
    with pytest.raises(WebError, match="noise level"):
        engine.restore([str(grey)], "Denoise", weights="Built-in", sigma=float("nan"))


def test_engine_self_ensemble_averages_eight_passes(engine, tmp_path):
    from conversenet.inference import run_model

    src = tmp_path / "g.png"
    write_image(src, _noisy(_clean_grey(48), sigma=25.0, seed=3))
    net = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)  # a one-sided blur: no symmetry
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 0.2, 0.8], [0.0, 0.0, 0.0]]]]))
    steps = []
    one = engine.restore([str(src)], "Denoise", model_override=net).images[0]
    eight = engine.restore([str(src)], "Denoise", model_override=net, self_ensemble=True,
                           progress=lambda f, d: steps.append(d)).images[0]
    a, b = (np.asarray(Image.open(r.path)).astype(np.int16) for r in (one, eight))
    noisy = torch.from_numpy(np.asarray(Image.open(src), np.float32)[None, None] / 255)
    want = np.round(run_model(net, noisy, tile=0, self_ensemble=True)[0, 0].clamp(0, 1).numpy() * 255)
    assert np.abs(b - want).max() <= 1 and np.abs(a - b).max() > 20
    assert any("step 8/8" in d for d in steps), steps
    with pytest.raises(WebError, match="self-ensemble"):
        engine.restore([str(src)], "Denoise", model_override=net, self_ensemble="yes")


@pytest.mark.parametrize("name,arr", [
    ("rgba16.png", np.random.default_rng(0).integers(0, 65536, (40, 36, 4)).astype(np.uint16)),
    ("grey16.tif", np.random.default_rng(1).integers(0, 65536, (40, 36, 1)).astype(np.uint16)),
    ("rgb8.tiff", np.random.default_rng(2).integers(0, 256, (40, 36, 3)).astype(np.uint8)),
    ("grey8.bmp", np.random.default_rng(3).integers(0, 256, (40, 36, 1)).astype(np.uint8)),
])
def test_engine_result_keeps_format_depth_channels(engine, tmp_path, name, arr):
    from conversenet.data import read_image
    from conversenet.models import create

    src = tmp_path / name
    write_image(src, arr)
    net = create("converse_dncnn", width=4, num_blocks=1)  # random weights: layout only
    (r,) = engine.restore([str(src)], "Denoise", model_override=net).images
    out, info = read_image(r.path, alpha="keep")
    assert r.path.suffix == src.suffix and out.shape == arr.shape and out.dtype == arr.dtype
    assert r.bit_depth == info.bit_depth == (16 if arr.dtype == np.uint16 else 8)
    if arr.shape[2] == 4:
        np.testing.assert_array_equal(out[..., 3], arr[..., 3])  # alpha passed through
    assert r.before.shape == r.after.shape == (40, 36, 3) and r.after.dtype == np.uint8


def test_engine_tiles_report_progress(tmp_path):
    from conversenet.models import create

    root = tmp_path / "srv"
    root.mkdir()
    eng = Engine(root, device="cpu", tile=48)
    src = tmp_path / "t.png"
    write_image(src, _clean_grey(80))
    net = create("converse_dncnn", width=4, num_blocks=1)
    seen = []
    rep = eng.restore([str(src)], "Denoise", model_override=net, progress=lambda f, d: seen.append((f, d)))
    whole = Engine(root, device="cpu", tile=0).restore([str(src)], "Denoise", model_override=net)
    tiles = [d for _, d in seen if "tile" in d]
    assert tiles and tiles[-1].endswith(f"tile {len(tiles)}/{len(tiles)}") and len(tiles) >= 4
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
    assert rep.images[0].after.shape == whole.images[0].after.shape


@pytest.mark.weights
def test_engine_official_sr_and_deblur(engine, tmp_path, official_dir):
    from conversenet.data import imresize

    clean = sample_image(96, seed=5)
    lr = np.clip(np.round(imresize(clean.astype(np.float64) / 255, 0.25) * 255), 0, 255).astype(np.uint8)
    src, ref = tmp_path / "s.png", tmp_path / "ref" / "s.png"
    write_image(src, lr)
    write_image(ref, clean)
    rep = engine.restore([str(src)], "Super-resolution ×4", weights="Auto", references=[str(ref)])
    (r,) = rep.images
    assert "authors' weights converse_srresnet.pth" in rep.source
    assert np.asarray(Image.open(r.path)).shape == clean.shape
    assert r.metrics["psnr"] > r.metrics["psnr_in"] + 1  # better than bicubic (Y channel, border 4)
    rep = engine.restore([str(ref)], "Deblur, Gaussian kernel", weights="Official", kernel_sigma=1.6)
    assert "converse_usrnet" in rep.source and rep.images[0].path.name == "s_deblurred.png"
    rep = engine.restore([str(ref)], "Deblur, blind", weights="Official")
    assert "conversenet" in rep.source


def test_engine_deletes_old_results(tmp_path):
    from conversenet.models import create

    root = tmp_path / "srv"
    root.mkdir()
    eng = Engine(root, device="cpu", result_max_age=600)
    src = tmp_path / "a.png"
    write_image(src, _clean_grey(32))
    net = create("converse_dncnn", width=4, num_blocks=1)
    first = eng.restore([str(src)], "Denoise", model_override=net).images[0].path.parent
    second = eng.restore([str(src)], "Denoise", model_override=net).images[0].path.parent
    assert first.is_dir() and second.is_dir() and first != second
    old = time.time() - 601
    os.utime(first, (old, old))
    third = eng.restore([str(src)], "Denoise", model_override=net).images[0].path.parent
    assert not first.exists() and second.is_dir() and third.is_dir()


def test_engine_one_bad_upload_among_several(engine, tmp_path, offline):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    write_image(good, _noisy(_clean_grey(48)))
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    rep = engine.restore([str(bad), str(good)], "Denoise", weights="Built-in")
    assert [r.name for r in rep.images] == ["good.png"]
    assert len(rep.errors) == 1 and "bad.png" in rep.errors[0] and str(tmp_path) not in rep.errors[0]
    with pytest.raises(WebError, match="bad.png"):
        engine.restore([str(bad)], "Denoise", weights="Built-in")


def test_engine_rejects_before_running(engine, tmp_path, offline):
    big = tmp_path / "big.png"
    write_image(big, np.zeros((201, 200), np.uint8))
    with pytest.raises(WebError, match=r"over this server's limit of 40,000 pixels \(--max-pixels\)"):
        engine.restore([str(big)], "Denoise", weights="Built-in")
    img = tmp_path / "x.png"
    write_image(img, _clean_grey(32))
    with pytest.raises(WebError, match="upload one or more images"):
        engine.restore([], "Denoise")
    with pytest.raises(WebError, match="task must be one of"):
        engine.restore([str(img)], "Colourise")
    with pytest.raises(WebError, match="kernel: upload a kernel file"):
        engine.restore([str(img)], "Deblur, uploaded kernel")
    with pytest.raises(WebError, match="upload a weights file"):
        engine.restore([str(img)], "Denoise", weights="Uploaded file")
    with pytest.raises(WebError, match="no built-in weights for task 'sr'"):
        engine.restore([str(img)], "Super-resolution ×4", weights="Built-in")


def test_engine_kernel_that_is_not_2d(engine, tmp_path):
    from conversenet.models import create

    img, k3 = tmp_path / "x.png", tmp_path / "k.npy"
    write_image(img, sample_image(32))
    np.save(k3, np.ones((3, 3, 3)))
    net = create("converse_usrnet")
    with pytest.raises(WebError, match=r"kernel k\.npy: .*2-D"):
        engine.restore([str(img)], "Deblur, uploaded kernel", kernel_file=str(k3), model_override=net)
    big = tmp_path / "big.npy"
    np.save(big, np.ones((9, 9)))
    with pytest.raises(WebError, match=r"kernel big\.npy: kernel is 9x9, larger than the 7x7"):
        engine.restore([str(img)], "Deblur, uploaded kernel", kernel_file=str(big), model_override=net)
    with pytest.raises(WebError, match="Gaussian kernel width must be > 0"):
        engine.restore([str(img)], "Deblur, Gaussian kernel", kernel_sigma=0.0, model_override=net)


def test_engine_uploaded_weights_are_checked(engine, tmp_path):
    from conversenet.models import create

    img = tmp_path / "x.png"
    write_image(img, _clean_grey(32))
    wrong = tmp_path / "upload" / "mine.pth"
    wrong.parent.mkdir()
    torch.save(create("converse_dncnn", width=8, num_blocks=1).state_dict(), wrong)
    with pytest.raises(WebError, match=r"weights file mine\.pth: checkpoint mine\.pth does not fit model") as ei:
        engine.restore([str(img)], "Denoise", weights="Uploaded file", weights_file=str(wrong))
    assert str(tmp_path) not in str(ei.value)  # the message names the upload, not the server's path

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "upload" / "evil.pth"
    torch.save({"w": Evil()}, evil)
    with pytest.raises(WebError, match=r"weights file evil\.pth: cannot load weights evil\.pth: it names the Python object posix\.system") as ei:
        engine.restore([str(img)], "Denoise", weights="Uploaded file", weights_file=str(evil))
    assert str(tmp_path) not in str(ei.value)
    # a fitting file with its network named in the page: used, and said so
    good = tmp_path / "upload" / "small.pth"
    net = create("converse_dncnn", width=8, num_blocks=1)
    torch.save(net.state_dict(), good)
    with pytest.raises(WebError, match="does not fit"):  # the task's default network is wider
        engine.restore([str(img)], "Denoise", weights="Uploaded file", weights_file=str(good))
    good.with_suffix(".json").write_text('{"model": "converse_dncnn", "args": {"width": 8, "num_blocks": 1}}')
    rep = engine.restore([str(img)], "Denoise", weights="Uploaded file", weights_file=str(good))
    assert rep.source == "uploaded file small.pth (converse_dncnn)"


def test_engine_layer_figure(engine, tmp_path):
    pytest.importorskip("matplotlib")
    layers = engine.layers_of("converse_dncnn")
    assert layers and "converse_dncnn_official" in engine.layer_models()
    img = tmp_path / "scene.png"
    write_image(img, sample_image(48))
    path, summary = engine.layer_figure("converse_dncnn", "Random (untrained)", layers[1], str(img), size=40,
                                        num_channels=2)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert f"layer `{layers[1]}`" in summary and "scene.png (40x40)" in summary
    with pytest.raises(WebError, match="no Converse2d layer 'nope'"):
        engine.layer_figure("converse_dncnn", "Random (untrained)", "nope")
    with pytest.raises(ValueError, match="tile must be 0"):
        Engine(tmp_path, tile=16)
    with pytest.raises(WebError, match="crop size"):
        engine.layer_figure("converse_dncnn", "Random (untrained)", None, size=8)


def test_clean_uploads_only_inside_root(tmp_path):
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "abc").mkdir(parents=True)
    other.mkdir()
    a, b = root / "abc" / "a.png", other / "b.png"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    assert clean_uploads([str(a), str(b), None, str(root / ".." / "other" / "b.png")], root) == 1
    assert not a.exists() and not (root / "abc").exists() and b.exists() and root.is_dir()


def test_cli_serve_bad_options(capsys):
    from conversenet.cli import main

    for args, msg in ((["--max-pixels", "0"], "--max-pixels must be >= 1"), (["--port", "70000"], "--port must be"),
                      (["--max-memory", "lots"], "max_memory must look like"), (["--tile", "20"], "--tile must be 0"),
                      (["--device", "tpu"], "device must be")):
        assert main(["serve", *args]) == 2  # refused before gradio is imported or a server starts
        assert msg in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# the page in a real browser
# --------------------------------------------------------------------------------------
def _browser_missing() -> str:
    missing = [m for m in ("gradio", "playwright") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install -e '.[web]' playwright)"
    if not CHROMIUM:
        return "no chromium binary (apt-get install chromium, or set CONVERSENET_CHROMIUM)"
    return ""


browser_test = pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    env = dict(os.environ, CONVERSENET_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "conversenet", "serve", "--port", str(port), "--device", "cpu",
                              "--max-pixels", "250000", "--threads", "2"], stdout=f, stderr=subprocess.STDOUT,
                             env=env, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300  # a safety net for a server that never comes up, not a speed check
    try:
        while True:
            m = re.search(r"server files in (\S+), deleted on exit", log.read_text())  # printed once it listens
            if m:
                with urllib.request.urlopen(url, timeout=30) as r:
                    assert r.status == 200
                break
            if p.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"conversenet serve did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield {"url": url, "proc": p, "root": Path(m.group(1)), "log": log}
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(120_000)  # generous: two shared CPU cores; this bounds a hang only
    pg.goto(server["url"])
    pg.wait_for_selector("#restore-run")
    yield pg
    ctx.close()


def _upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id}").get_by_text(path.stem, exact=False).first.wait_for()


def _wait_cleared(page) -> None:
    page.locator("#restore-input").get_by_text("Drop File Here").wait_for()


def _run_and_download(page, dest: Path) -> Path:
    page.locator("#restore-run").click()
    link = page.locator("#restore-download a[download]").first
    link.wait_for()
    with page.expect_download() as d:
        link.click()
    d.value.save_as(str(dest))
    return dest


@browser_test
def test_browser_denoise_with_builtin_weights(page, server, tmp_path):
    clean = _clean_grey(96)
    noisy = _noisy(clean)
    src, ref = tmp_path / "noisy_scene.png", tmp_path / "noisy_scene_ref.png"
    write_image(src, noisy)
    write_image(ref, clean)
    _upload(page, "restore-input", src)
    _upload(page, "restore-refs", ref)
    page.locator("#restore-weights").get_by_label("Built-in").check()
    # the noise level is unknown by default: no slider until the box says it is known
    assert not page.locator("#restore-sigma").is_visible()
    page.locator("#restore-sigma-known input").check()
    page.locator("#restore-sigma").wait_for(state="visible")
    page.locator("#restore-sigma-known input").uncheck()
    page.locator("#restore-sigma").wait_for(state="hidden")
    out = _run_and_download(page, tmp_path / "result.png")
    got = np.asarray(Image.open(out))
    assert got.shape == clean.shape and got.dtype == np.uint8
    p_noisy, p_out = _psnr(noisy, clean), _psnr(got, clean)
    assert p_out > p_noisy + 5, (p_noisy, p_out)
    status = page.locator("#restore-status").inner_text()
    assert "converse_unet_blind_gray" in status and "grey images" in status, status
    # the table shows the same PSNR as measured here from the downloaded file
    table = page.locator("#restore-table").inner_text()
    assert f"{p_noisy:.2f} → {p_out:.2f}" in table, table
    # the slider shows input and result side by side
    assert page.locator("#restore-slider img").count() == 2
    # uploads are gone from the server and from the page once answered
    _wait_cleared(page)
    left = [f.name for f in server["root"].rglob("*") if f.is_file()]
    assert "noisy_scene.png" not in left and "noisy_scene_ref.png" not in left, left
    assert "result.png" not in left and any(n == "noisy_scene_denoised.png" for n in left), left


@browser_test
def test_browser_bad_upload_then_good_one(page, server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    _upload(page, "restore-input", bad)
    page.locator("#restore-weights").get_by_label("Built-in").check()
    page.locator("#restore-run").click()
    page.get_by_text("cannot read image 'broken.png'").first.wait_for()
    _wait_cleared(page)  # the page empties the upload field after every answer (the upload is gone)
    # the server keeps serving: an image over --max-pixels, then a good one
    big = tmp_path / "huge.png"
    write_image(big, np.zeros((600, 500), np.uint8))
    _upload(page, "restore-input", big)
    page.locator("#restore-run").click()
    page.get_by_text("huge.png: 500x600 = 300,000 pixels is over this server's limit").first.wait_for()
    _wait_cleared(page)
    clean = _clean_grey(64)
    noisy = _noisy(clean, seed=1)
    good = tmp_path / "fine.png"
    write_image(good, noisy)
    _upload(page, "restore-input", good)
    got = np.asarray(Image.open(_run_and_download(page, tmp_path / "fine_out.png")))
    assert got.shape == clean.shape
    assert _psnr(got, clean) > _psnr(noisy, clean) + 3


@browser_test
def test_browser_inside_a_layer(page, server):
    page.get_by_role("tab", name="Inside a layer").click()
    page.locator("#layer-model input").first.wait_for()
    page.locator("#layer-weights").get_by_label("Random (untrained)").check()
    page.locator("#layer-run").click()
    page.locator("#layer-figure img").first.wait_for()
    summary = page.locator("#layer-summary").inner_text()
    from conversenet.models import create
    from conversenet.visualize import converse_layers

    first = converse_layers(create("converse_dncnn_official"))[0]  # the page's default model and layer
    assert f"layer {first} of converse_dncnn_official" in summary, summary
    assert "max |Y − X*⊗K|" in summary and "random weights" in summary, summary


@browser_test
def test_server_stops_and_deletes_its_files(server):
    p = server["proc"]
    assert server["root"].is_dir()
    p.terminate()
    try:
        p.wait(timeout=120)  # a safety net against a hang, not a speed check
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("conversenet serve did not stop on SIGTERM")
    log = server["log"].read_text()
    assert p.returncode == 0, log
    assert "server files deleted" in log and "Traceback" not in log, log
    assert not server["root"].exists()
