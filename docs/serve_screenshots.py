"""Redraws docs/img/serve_restore.png and docs/img/serve_layer.png (the README's web-app pictures).

Needs the web extra, playwright and Debian's chromium; uses the authors' weights when found
(CONVERSENET_WEIGHTS_DIR or ../shared/weights/official), else the built-in ones.

    python docs/serve_screenshots.py
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

from conversenet.data import write_image
from conversenet.restore import sample_image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp())
    clean = sample_image(256, seed=0)
    rng = np.random.default_rng(0)
    noisy = np.clip(np.round(clean + rng.normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    write_image(tmp / "scene.png", noisy)
    (tmp / "ref").mkdir()
    write_image(tmp / "ref" / "scene.png", clean)
    log = open(tmp / "server.log", "w")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "conversenet", "serve", "--port", str(port)], stdout=log,
                         stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    try:
        while not re.search("deleted on exit", (tmp / "server.log").read_text()):
            if p.poll() is not None:
                raise SystemExit((tmp / "server.log").read_text())
            time.sleep(0.5)
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = b.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(300_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#restore-input input[type=file]").set_input_files(str(tmp / "scene.png"))
            page.locator("#restore-input").get_by_text("scene").first.wait_for()
            page.locator("#restore-refs input[type=file]").set_input_files(str(tmp / "ref" / "scene.png"))
            page.locator("#restore-refs").get_by_text("scene").first.wait_for()
            page.locator("#restore-run").click()
            page.locator("#restore-download a[download]").first.wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(OUT / "serve_restore.png"), full_page=True)
            page.get_by_role("tab", name="Inside a layer").click()
            page.locator("#layer-run").click()
            page.locator("#layer-figure img").first.wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(OUT / "serve_layer.png"), full_page=True)
            b.close()
    finally:
        p.terminate()
        p.wait()
    print(f"wrote {OUT / 'serve_restore.png'} and {OUT / 'serve_layer.png'}")


if __name__ == "__main__":
    main()
