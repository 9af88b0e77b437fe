"""The built wheel holds what an installed conversenet needs: every module, the packaged
training configs and the built-in weights (a packaging regression fails the suite, not only
the installed-wheel step of ``.ci/run``).

The reference is the source tree itself, listed here from the files on disk; the wheel is
built from a copy of the checkout without build outputs, so stale files cannot hide a
missing one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from _train_helpers import CONFIG_DIR, REPO

pytestmark = pytest.mark.slow

PKG = REPO / "conversenet"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", ".ci-venv", ".venv", "venv", "runs", "__pycache__",
        ".pytest_cache", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("conversenet-*.whl")
    with zipfile.ZipFile(whl) as z:
        yield z


def _source_files(pattern: str):
    return sorted(p for p in PKG.glob(pattern) if p.is_file())


def test_wheel_holds_every_packaged_config(wheel):
    configs = _source_files("configs/**/*.yaml")
    assert CONFIG_DIR / "table4" / "converse_dncnn.yaml" in configs and len(configs) > 30
    names = set(wheel.namelist())
    for p in configs:
        arc = p.relative_to(REPO).as_posix()
        assert arc in names, f"{arc} is missing from the wheel"
        assert wheel.read(arc) == p.read_bytes()


def test_wheel_holds_the_builtin_weights(wheel):
    from conversenet.models.weights import list_weights

    weights = [p for pat in ("weights/*.pth", "weights/*.safetensors", "weights/*.json", "weights/*.md")
               for p in _source_files(pat)]
    assert PKG / "weights" / "dncnn.pth" in weights
    # every file and model card of the package's own weight sets
    for ws in list_weights(origin="package"):
        assert PKG / "weights" / ws.file in weights
        if ws.card:
            assert REPO / ws.card in weights
    for p in weights:
        arc = p.relative_to(REPO).as_posix()
        assert arc in wheel.namelist(), f"{arc} is missing from the wheel"
        assert wheel.read(arc) == p.read_bytes()


def test_wheel_holds_every_module_and_the_command(wheel):
    names = set(wheel.namelist())
    missing = [p.relative_to(REPO).as_posix() for p in _source_files("**/*.py")
               if p.relative_to(REPO).as_posix() not in names]
    assert missing == []
    (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "conversenet = conversenet.cli:main" in wheel.read(ep).decode()
