"""`conversenet eval` from the command line: outputs, and one-line errors for bad input.

Uses generated image folders and random-weight models (``--weights none``): no data needed.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conversenet.cli import main
from conversenet.data import read_image, write_image


def _img(h, w, c, seed=0):
    return (np.random.default_rng(seed).random((h, w, c)) * 255).round().astype(np.uint8)


@pytest.fixture
def grey_dir(tmp_path):
    d = tmp_path / "grey"
    write_image(d / "a.png", _img(16, 16, 1, 1))
    write_image(d / "b.png", _img(12, 20, 1, 2))
    return d


@pytest.fixture
def rgb_dir(tmp_path):
    d = tmp_path / "rgb"
    write_image(d / "c.png", _img(32, 24, 3, 3))
    return d


def _one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("conversenet eval: error:")
    for w in words:
        assert w in err, err
    return err


def test_eval_writes_table_images_csv_json_and_comparisons(grey_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(grey_dir),
               "--sigma", "25", "--out", str(out), "--compare", "--no-progress", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "\na " in text and "\nb " in text and "average" in text
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["image"] for r in rows] == ["a", "b", "average"]
    doc = json.loads((out / "results.json").read_text())
    assert doc["complete"] is True and doc["averages"]["n"] == 2
    # printed averages are those of the JSON
    assert f"{doc['averages']['psnr']:8.2f}" in text.splitlines()[-2]
    b, _ = read_image(out / "restored" / "b.png")
    assert b.shape == (12, 20, 1)
    c, _ = read_image(out / "compare" / "b.png")
    assert c.shape == (12, 60, 1)
    # inputs untouched
    a, _ = read_image(grey_dir / "a.png")
    assert np.array_equal(a, _img(16, 16, 1, 1))


def test_eval_no_save_images_and_limit(grey_dir, tmp_path, capsys):
    out = tmp_path / "o2"
    rc = main(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(grey_dir),
               "--out", str(out), "--no-save-images", "--limit", "1", "--no-progress"])
    assert rc == 0
    assert not (out / "restored").exists()
    assert json.loads((out / "results.json").read_text())["averages"]["n"] == 1


def test_missing_dataset(tmp_path, capsys):
    rc = main(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(tmp_path / "nowhere")])
    _one_line_error(capsys, rc, "nowhere", "neither a folder nor a known name")


def test_dataset_name_without_its_folder(tmp_path, capsys):
    rc = main(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", "bsd68",
               "--data-root", str(tmp_path)])
    _one_line_error(capsys, rc, "bsd68", "does not exist")


def test_image_too_small_for_the_scale(tmp_path, capsys):
    d = tmp_path / "small"
    write_image(d / "tiny.png", _img(12, 40, 3))
    rc = main(["eval", "--model", "converse_srresnet", "--weights", "none", "--dataset", str(d), "--no-progress"])
    _one_line_error(capsys, rc, "tiny", "too small for x4 SR")


def test_image_too_small_for_the_model(tmp_path, capsys):
    d = tmp_path / "thin"
    write_image(d / "thin.png", _img(40, 5, 1))
    rc = main(["eval", "--model", "converse_dncnn_official", "--weights", "none", "--dataset", str(d)])
    _one_line_error(capsys, rc, "thin", "too small")


def test_kernel_of_the_wrong_shape(rgb_dir, tmp_path, capsys):
    k = tmp_path / "k5.npy"
    np.save(k, np.ones((5, 5)) / 25)
    rc = main(["eval", "--model", "converse_usrnet", "--weights", "none", "--dataset", str(rgb_dir),
               "--kernel", str(k)])
    _one_line_error(capsys, rc, "5x5", "7x7")
    np.save(k, np.ones((7, 7, 3)))
    rc = main(["eval", "--model", "conversenet", "--weights", "none", "--dataset", str(rgb_dir), "--kernel", str(k)])
    _one_line_error(capsys, rc, "2-D")


def test_deblur_without_kernel_and_unknown_kernel(rgb_dir, tmp_path, capsys):
    rc = main(["eval", "--model", "conversenet", "--weights", "none", "--dataset", str(rgb_dir)])
    _one_line_error(capsys, rc, "--kernel")
    rc = main(["eval", "--model", "conversenet", "--weights", "none", "--dataset", str(rgb_dir),
               "--kernel", "kernel_7", "--data-root", str(tmp_path)])
    _one_line_error(capsys, rc, "kernel_7", "not found")


def test_grayscale_model_on_rgb_folder(rgb_dir, capsys):
    rc = main(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(rgb_dir)])
    _one_line_error(capsys, rc, "c.png", "grayscale")


def test_unknown_model_and_missing_weights_file(grey_dir, tmp_path, capsys):
    rc = main(["eval", "--model", "nonet", "--dataset", str(grey_dir)])
    _one_line_error(capsys, rc, "unknown model")
    rc = main(["eval", "--model", "converse_dncnn", "--weights", str(tmp_path / "w.pth"), "--dataset", str(grey_dir)])
    _one_line_error(capsys, rc, "w.pth", "does not exist")


@pytest.mark.parametrize("case", ["missing", "grey_on_rgb"])
def test_subprocess_errors_have_no_traceback(case, rgb_dir, tmp_path):
    ds = str(tmp_path / "missing") if case == "missing" else str(rgb_dir)
    r = subprocess.run(
        [sys.executable, "-m", "conversenet", "eval", "--model", "converse_dncnn", "--weights", "none",
         "--dataset", ds],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300,
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert r.stderr.strip().startswith("conversenet eval: error:") and len(r.stderr.strip().splitlines()) == 1


def test_output_folder_that_would_overwrite_the_inputs(tmp_path, capsys):
    d = tmp_path / "restored"
    write_image(d / "a.png", _img(16, 16, 1))
    rc = main(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(d), "--out", str(tmp_path)])
    _one_line_error(capsys, rc, "dataset folder")
    assert np.array_equal(read_image(d / "a.png")[0], _img(16, 16, 1))
