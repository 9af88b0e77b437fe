"""Reliability acceptance tests of issue 12 through the command line (items 4, 5, 6, 9, 10).

- item 4: ``--compare`` never replaces a file without ``--overwrite``; outputs of one run
  that would share a name (``a.png`` and ``a.jpg``) get distinct names, said on stdout;
- item 5: a .npy or float TIFF input holding NaN/Inf is refused naming the file, before
  the network runs;
- item 6: every long-running command stops on SIGINT (130) and SIGTERM (143) even when it
  inherited SIGINT as ignored (a background job of a script), leaving no partial file. The
  commands run in subprocesses that block at a known point (a hook in the child, no
  timing): the signal is sent once the child says it is there;
- item 9: a read-only output folder or a full disk gives one line naming the file and a
  non-zero exit, and the previous files stay intact;
- item 10: all inputs and outputs are checked before the first network call; broken links
  in an input folder are reported; ``train --check`` checks the data paths.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import conversenet.restore as R
from conversenet.cli import main
from conversenet.data import read_image, write_image

from _train_helpers import REPO, cli_env, random_image as _img, sha256_file as _sha, tiny_config, write_config


def _denoise(inputs, out, tiny_ckpts, *extra):
    return main(["denoise", *map(str, inputs), "-o", str(out), "--weights", str(tiny_ckpts / "converse_dncnn.pth"),
                 "--no-progress", "--device", "cpu", *extra])


def _names(folder: Path):
    """The files a command wrote, less its resume journal (``.conversenet/``, docs/RESTORE.md)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".conversenet")


# --------------------------------------------------------------------------------------
# item 4: --compare
# --------------------------------------------------------------------------------------
def test_reliability_compare_never_replaces_an_existing_file(tiny_ckpts, tmp_path, capsys):
    write_image(tmp_path / "in" / "a.png", _img(0, (24, 24, 1)))
    mine = tmp_path / "out" / "compare" / "a.png"
    write_image(mine, _img(1, (10, 10, 3)))
    before = _sha(mine)
    rc = _denoise([tmp_path / "in"], tmp_path / "out", tiny_ckpts, "--compare")
    err = capsys.readouterr().err
    assert rc == 1 and "compare" in err and "exists" in err and "--overwrite" in err
    assert _sha(mine) == before
    assert not (tmp_path / "out" / "a.png").exists()  # refused before any work, not half done
    rc = _denoise([tmp_path / "in"], tmp_path / "out", tiny_ckpts, "--compare", "--overwrite")
    assert rc == 0 and _sha(mine) != before
    assert read_image(mine)[0].shape == (24, 2 * 24 + 4, 1)


def test_reliability_compare_outputs_of_one_run_never_collide(tiny_ckpts, tmp_path, capsys):
    png, jpg = _img(0, (24, 24, 1)), _img(1, (24, 24, 1))
    write_image(tmp_path / "in" / "a.png", png)
    write_image(tmp_path / "in" / "a.jpg", jpg)
    rc = _denoise([tmp_path / "in"], tmp_path / "out", tiny_ckpts, "--compare")
    out = capsys.readouterr().out
    assert rc == 0
    assert _names(tmp_path / "out") == ["a.jpg", "a.png", "compare"]
    assert _names(tmp_path / "out" / "compare") == ["a_jpg.png", "a_png.png"]
    assert "a_png.png" in out and "a_jpg.png" in out  # said on stdout
    # each comparison shows its own input on the left
    left_png = read_image(tmp_path / "out" / "compare" / "a_png.png")[0][:, :24]
    np.testing.assert_array_equal(left_png, png)
    left_jpg = read_image(tmp_path / "out" / "compare" / "a_jpg.png")[0][:, :24]
    np.testing.assert_array_equal(left_jpg, read_image(tmp_path / "in" / "a.jpg")[0])


def test_reliability_degrade_format_change_never_collides(tmp_path, capsys):
    write_image(tmp_path / "in" / "a.png", _img(0, (16, 16, 1)))
    write_image(tmp_path / "in" / "a.bmp", _img(1, (16, 16, 1)))
    rc = main(["degrade", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr()
    assert _names(tmp_path / "out") == ["a_bmp.npy", "a_png.npy"]
    assert "a_png.npy" in capsys.readouterr().out


# --------------------------------------------------------------------------------------
# item 5: non-finite inputs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_reliability_nonfinite_npy_refused_before_the_network(tiny_ckpts, tmp_path, monkeypatch, capsys, bad):
    a = np.random.default_rng(0).random((24, 24), dtype=np.float32)
    a[3, 4] = bad
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "x.npy", a)
    calls = []
    real = R.restore_array
    monkeypatch.setattr(R, "restore_array", lambda img, *k, **kw: calls.append(img) or real(img, *k, **kw))
    rc = _denoise([tmp_path / "in" / "x.npy"], tmp_path / "out", tiny_ckpts)
    err = capsys.readouterr().err
    assert rc == 1 and calls == []
    assert "x.npy" in err and "NaN or infinite" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or _names(tmp_path / "out") == []


def test_reliability_nonfinite_float_tiff_refused(tiny_ckpts, tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(0).random((24, 24), dtype=np.float32)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "ok.tif", a)
    a[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "in" / "nan.tif", a)
    rc = _denoise([tmp_path / "in"], tmp_path / "out", tiny_ckpts)
    err = capsys.readouterr().err
    assert rc == 1 and "nan.tif" in err and "NaN" in err
    assert _names(tmp_path / "out") == ["ok.tif"]
    out, info = read_image(tmp_path / "out" / "ok.tif", allow_float=True)  # float in, float out
    assert out.dtype == np.float32 and out.shape == (24, 24, 1) and np.isfinite(out).all()


# --------------------------------------------------------------------------------------
# item 6: SIGINT / SIGTERM
# --------------------------------------------------------------------------------------
# The child blocks at a known point and says so on stderr:
#   fsync:N   inside the N-th atomic write (fsync of a .tmp file), after its bytes are written to the temporary
#             file (so a partial file exists at that moment), before it is moved into place;
#   setup     in the trainer's setup (data, model), before its own handlers are installed;
#   forward:N in the trainer's N-th forward pass, until the trainer has seen the signal.
CHILD = textwrap.dedent("""
    import os, sys, time
    from conversenet.cli import main

    kind, _, n = os.environ["BLOCK_AT"].partition(":")
    calls = []

    def hold():
        print("@@BLOCKED@@", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.01)

    if kind == "fsync":
        real = os.fsync

        def fsync(fd):
            # count the atomic writes' temporaries only (not the resume journal's appends)
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                name = ""
            if name.endswith(".tmp"):
                calls.append(fd)
                if len(calls) == int(n):
                    hold()
            return real(fd)

        os.fsync = fsync
    elif kind == "setup":
        import conversenet.train.trainer as T

        T.Trainer._setup = lambda self: hold()
    elif kind == "forward":
        import conversenet.train.trainer as T

        real_fwd = T.Trainer._forward

        def fwd(self, net, batch):
            calls.append(1)
            if len(calls) == int(n):
                print("@@BLOCKED@@", file=sys.stderr, flush=True)
                while self._stop_signal is None:
                    time.sleep(0.01)
            return real_fwd(self, net, batch)

        T.Trainer._forward = fwd
    sys.exit(main(sys.argv[1:]))
""")


def _run_and_signal(args, block_at, sig):
    env = cli_env()
    env["BLOCK_AT"] = block_at
    p = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as `cmd &` in a script
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "@@BLOCKED@@" in line:
            break
    assert seen and "@@BLOCKED@@" in seen[-1], "".join(seen) + p.stdout.read()
    p.send_signal(sig)
    try:  # a safety net against a hang (the bug guarded against), not a speed check
        out, err = p.communicate(timeout=float(os.environ.get("CONVERSENET_TEST_HANG_S", "600")))
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"{signal.Signals(sig).name} did not stop {args[0]}")
    return p.returncode, out, "".join(seen) + err


def _no_temps(folder: Path):
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


@pytest.fixture
def three_images(tmp_path):
    d = tmp_path / "in"
    for i, n in enumerate("abc"):
        write_image(d / f"{n}.png", _img(i, (24, 24, 1)))
    return d


@pytest.mark.parametrize("command,sig", [("denoise", signal.SIGINT), ("denoise", signal.SIGTERM),
                                         ("sr", signal.SIGINT), ("deblur", signal.SIGTERM)])
def test_reliability_restore_commands_stop_on_signals(tiny_ckpts, three_images, tmp_path, command, sig):
    out = tmp_path / "out"
    model = {"denoise": "converse_dncnn", "sr": "converse_srresnet", "deblur": "converse_usrnet"}[command]
    extra = ["--kernel", "gaussian:1.6"] if command == "deblur" else []
    rc, _, err = _run_and_signal([command, three_images, "-o", out, "--weights", tiny_ckpts / f"{model}.pth",
                                  "--no-progress", "--device", "cpu", "--threads", "1", *extra],
                                 "fsync:2", sig)  # inside the write of b.png
    assert rc == 128 + sig, err
    assert "Traceback" not in err and "interrupted" in err
    assert _names(out) == ["a.png"] and _no_temps(out) == []  # b.png neither final nor partial
    assert read_image(out / "a.png")[0].shape[:2] == ((96, 96) if command == "sr" else (24, 24))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_reliability_eval_stops_on_signals(three_images, tmp_path, sig):
    out = tmp_path / "out"
    # fsync 1-2: results.csv/json after image a; 3: the csv after image b
    rc, _, err = _run_and_signal(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset",
                                  three_images, "--out", out, "--no-progress", "--no-save-images", "--device", "cpu",
                                  "--threads", "1"], "fsync:3", sig)
    assert rc == 128 + sig, err
    assert "interrupted after" in err and "Traceback" not in err
    doc = json.loads((out / "results.json").read_text())
    assert doc["interrupted"] is True and doc["complete"] is False
    assert [r["image"] for r in doc["images"]] in (["a"], ["a", "b"])
    assert _names(out) == ["results.csv", "results.json"]


@pytest.mark.parametrize("block_at,sig", [("setup", signal.SIGINT), ("forward:3", signal.SIGTERM),
                                          ("forward:3", signal.SIGINT)])
def test_reliability_train_stops_on_signals(tmp_path, block_at, sig):
    cfg = tiny_config(tmp_path, **{"train.total_iter": 50})
    path = write_config(tmp_path / "tiny.yaml", cfg)
    out = tmp_path / "run"
    rc, _, err = _run_and_signal(["train", path, "--out", out], block_at, sig)
    assert rc == 128 + sig, err
    assert "Traceback" not in err
    if block_at == "setup":
        assert not (out / "last.pth").exists()
    else:  # the loop's own handler saved a checkpoint first
        assert "continue with --resume" in err
        from conversenet.train.checkpoint import load_checkpoint

        assert load_checkpoint(out / "last.pth")["iteration"] == 3
    assert not out.exists() or _no_temps(out) == []


def test_reliability_visualize_stops_on_sigint(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig"
    rc, _, err = _run_and_signal(["visualize", "-o", out / "f.png", "--weights", "none", "--size", "32"],
                                 "fsync:1", signal.SIGINT)
    assert rc == 130, err
    assert "Traceback" not in err
    assert not out.exists() or _names(out) == []


# --------------------------------------------------------------------------------------
# item 9: read-only folder, full disk
# --------------------------------------------------------------------------------------
def _read_only_dir():
    """A real place where even root cannot create files (sysfs), or skip."""
    import tempfile

    try:
        fd, p = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys/conversenet-test-out")
    os.close(fd)
    os.unlink(p)
    pytest.skip("no read-only folder available (/sys is writable here)")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_reliability_eval_out_read_only(three_images, capsys, monkeypatch):
    ro = _read_only_dir()
    loaded = []
    import conversenet.cli.eval as E

    real = E._load_model
    monkeypatch.setattr(E, "_load_model", lambda *a: loaded.append(a) or real(*a))
    rc = main(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(three_images),
               "--out", str(ro), "--no-progress", "--device", "cpu"])
    line = _one_line(capsys.readouterr().err)
    assert rc != 0 and "--out" in line and "/sys" in line
    assert loaded == []  # refused before the model was even built


def _fail_fsync(monkeypatch, when):
    """os.fsync raising ENOSPC for the temporary files ``when(name, count)`` selects."""
    real = os.fsync
    counts = {}

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        key = name.split(".")[1] if name.startswith(".") else name
        counts[key] = counts.get(key, 0) + 1
        if when(name, counts[key]):
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_reliability_eval_full_disk_keeps_previous_results(three_images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(three_images),
            "--out", str(out), "--no-progress", "--device", "cpu", "--threads", "1"]
    assert main(args) == 0
    capsys.readouterr()
    before = {p.relative_to(out): _sha(p) for p in out.rglob("*") if p.is_file()}
    _fail_fsync(monkeypatch, lambda name, n: True)
    rc = main(args)
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and "No space left on device" in line and str(out) in line
    assert {p.relative_to(out): _sha(p) for p in out.rglob("*") if p.is_file()} == before


def test_reliability_checkpoint_write_on_full_disk(tmp_path, capsys, monkeypatch):
    cfg = tiny_config(tmp_path, **{"train.total_iter": 6, "train.checkpoint_every": 2, "train.val_every": 100})
    path = write_config(tmp_path / "tiny.yaml", cfg)
    out = tmp_path / "run"
    # the first last.pth is written; the second write of it finds the disk full
    _fail_fsync(monkeypatch, lambda name, n: name.startswith(".last.pth.") and n == 2)
    rc = main(["train", str(path), "--out", str(out), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 1
    assert line == f"conversenet train: error: cannot write {str(out / 'last.pth')!r}: No space left on device"
    from conversenet.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "last.pth")["iteration"] == 2  # the previous checkpoint, intact
    assert _no_temps(out) == []


# --------------------------------------------------------------------------------------
# item 10: checks before work
# --------------------------------------------------------------------------------------
def test_reliability_all_inputs_and_outputs_checked_before_the_first_network_call(tiny_ckpts, tmp_path, monkeypatch,
                                                                                   capsys):
    from PIL import Image

    d = tmp_path / "in"
    write_image(d / "a.png", _img(0, (24, 24, 1)))
    write_image(d / "b.png", _img(1, (24, 24, 1)))
    frames = [Image.fromarray(np.full((24, 24), v, np.uint8)) for v in (0, 255)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    write_image(out / "b.png", _img(2, (5, 5, 1)))  # exists, no --overwrite
    before_b = _sha(out / "b.png")
    err_at_first_call = []
    real = R.restore_array

    def spy(*a, **k):
        if not err_at_first_call:
            err_at_first_call.append(capsys.readouterr().err)
        return real(*a, **k)

    monkeypatch.setattr(R, "restore_array", spy)
    rc = _denoise([d / "a.png", d / "anim.gif", d / "b.png"], out, tiny_ckpts)
    assert rc == 1
    early = err_at_first_call[0]
    assert "anim.gif" in early and "2 frames" in early
    assert "b.png" in early and "exists" in early
    assert len(err_at_first_call) == 1 and (out / "a.png").is_file()
    assert _sha(out / "b.png") == before_b and not (out / "anim.gif").exists()


def test_reliability_broken_links_in_an_input_folder_are_reported(tiny_ckpts, tmp_path, capsys):
    d = tmp_path / "in"
    write_image(d / "a.png", _img(0, (24, 24, 1)))
    (d / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (d / "loop1.png").symlink_to(d / "loop2.png")
    (d / "loop2.png").symlink_to(d / "loop1.png")
    rc = _denoise([d], tmp_path / "out", tiny_ckpts)
    err = capsys.readouterr().err.splitlines()
    assert rc == 1
    assert len([ln for ln in err if "dangling.png:" in ln and "dangling symbolic link" in ln]) == 1
    assert len([ln for ln in err if "loop1.png:" in ln and "symbolic link loop" in ln]) == 1
    assert len([ln for ln in err if "loop2.png:" in ln and "symbolic link loop" in ln]) == 1
    assert _names(tmp_path / "out") == ["a.png"]


def test_reliability_eval_refuses_a_dataset_with_a_broken_link(three_images, tmp_path, capsys):
    (three_images / "d.png").symlink_to(tmp_path / "gone.png")
    rc = main(["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(three_images),
               "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "d.png" in line and "broken symbolic link" in line


def test_reliability_unwritable_output_folder_stops_before_the_model(tiny_ckpts, tmp_path, monkeypatch, capsys):
    ro = _read_only_dir()
    write_image(tmp_path / "a.png", _img(0, (24, 24, 1)))
    monkeypatch.setattr(R, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    rc = main(["denoise", str(tmp_path / "a.png"), "-o", str(ro), "--no-progress", "--device", "cpu"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "/sys" in line


def test_reliability_train_check_checks_the_data_paths(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["data"]["train"] = str(tmp_path / "missing_train")
    path = write_config(tmp_path / "c.yaml", cfg)
    r = subprocess.run([sys.executable, "-m", "conversenet", "train", str(path), "--check"], capture_output=True,
                       text=True, env=cli_env())
    assert r.returncode == 2
    assert "data.train" in r.stderr and "missing_train" in r.stderr and "Traceback" not in r.stderr
    cfg = tiny_config(tmp_path)
    (tmp_path / "empty").mkdir()
    cfg["data"]["val"] = str(tmp_path / "empty")
    r = subprocess.run([sys.executable, "-m", "conversenet", "train", str(write_config(tmp_path / "d.yaml", cfg)),
                        "--check"], capture_output=True, text=True, env=cli_env())
    assert r.returncode == 2 and "data.val" in r.stderr and "no images" in r.stderr
