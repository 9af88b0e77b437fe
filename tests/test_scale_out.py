"""Batch commands at scale: several processes under torchrun (CPU, gloo), resuming after a
SIGKILL, the per-rank journal, lazy listing and eval sweeps.

The multi-process runs are real ``python -m torch.distributed.run --standalone
--nproc_per_node=2`` launches in a subprocess on folders of generated images with the
built-in DnCNN. Where a run must die part-way, the child blocks at a chosen point (inside
the journal write of its n-th "done" record, i.e. after that image's output file was
renamed into place but before it was recorded) and the test sends SIGKILL once every
process is there, so the outcome does not depend on timing.
"""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conversenet.batch import Journal, file_digest, iter_inputs, iter_plans, verify_files
from conversenet.data import write_image
from conversenet.distributed import env_world, shard

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["CONVERSENET_OFFLINE"] = "1"
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(cmd, cwd=None, check=True):
    p = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True)
    if check:
        assert p.returncode == 0, f"{cmd}\nrc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def _digests(d: Path):
    """name -> sha256 of the output images (the journal folder is not an output)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(7):  # grey and colour, several sizes; a prime count so shares are unequal
        c = 3 if i % 3 == 0 else 1
        write_image(d / f"img{i:02d}.png", rng.integers(0, 256, (24 + 2 * i, 24, c)).astype(np.uint8))
    return d


DENOISE = ["denoise", "--weights", "builtin", "--device", "cpu", "--no-progress", "--workers", "1"]


# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------
def test_shard_is_a_disjoint_cover_in_order():
    items = list(range(23))
    parts = [list(shard(iter(items), r, 4)) for r in range(4)]
    assert sorted(x for p in parts for x in p) == items
    assert all(p == sorted(p) for p in parts) and parts[1][:3] == [1, 5, 9]
    with pytest.raises(ValueError, match="rank"):
        list(shard(items, 4, 4))


def test_env_world_without_and_with_torchrun(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert env_world() == (0, 1, 0, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert env_world() == (3, 4, 1, 2)


def test_lazy_listing_order_dedup_and_collisions(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, names in ((a, ["z.png", "m.JPG", ".hidden.png", "t.txt"]), (b, ["m.JPG", "c.tif"])):
        d.mkdir()
        for n in names:
            (d / n).write_bytes(b"")
    exts = {".png", ".jpg", ".tif"}
    got = [str(p.relative_to(tmp_path)) for p, _ in iter_inputs([str(a), str(a / "z.png"), str(b)], exts)]
    assert got == ["a/m.JPG", "a/z.png", "b/c.tif", "b/m.JPG"]  # per folder sorted; z.png once
    gen = iter_inputs([str(a)], exts)
    assert not isinstance(gen, (list, tuple))  # a generator: nothing is listed up front
    plans = list(iter_plans([str(a), str(b)], exts, tmp_path / "out", None))
    assert [p.index for p in plans] == [0, 1, 2, 3]
    assert [bool(p.error) for p in plans] == [False, False, False, True]  # b/m.JPG -> out/m.JPG again
    assert "a/m.JPG" in plans[3].error


def test_journal_ignores_a_torn_line_and_appends_after_it(tmp_path):
    j = Journal(tmp_path / "j", rank=1, stem="rows")
    j.append({"n": 1})
    j.close()
    with open(j.path, "ab") as f:
        f.write(b'{"n": 2, "tor')  # a writer killed mid-line
    assert [r["n"] for r in j.read()] == [1]
    j2 = Journal(tmp_path / "j", rank=1, stem="rows")
    j2.append({"n": 3})
    j2.close()
    assert [r["n"] for r in Journal(tmp_path / "j", stem="rows").read()] == [1, 3]
    Journal(tmp_path / "j", rank=0, stem="rows").append({"n": 0})
    assert sorted(r["n"] for r in j.read()) == [0, 1, 3]  # every rank's file
    j.clear()
    assert list(j.read()) == []


def test_verify_files_detects_changes(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    rec = {"x.bin": list(file_digest(f))}
    assert rec["x.bin"] == [3, hashlib.sha256(b"abc").hexdigest()]
    assert verify_files(tmp_path, rec)
    f.write_bytes(b"abd")  # same size, other bytes
    assert not verify_files(tmp_path, rec)
    f.unlink()
    assert not verify_files(tmp_path, rec)


# --------------------------------------------------------------------------------------
# restore: one process vs two, resuming
# --------------------------------------------------------------------------------------
def test_two_processes_write_the_same_bytes_as_one(images, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = _run([sys.executable, "-m", "conversenet", *DENOISE, str(images), "-o", str(one)])
    p2 = _run([*TORCHRUN, "-m", "conversenet", *DENOISE, str(images), "-o", str(two)])
    assert "done: 7 written, 0 failed" in p1.stdout
    assert "2 processes" in p2.stdout and "done: 7 written, 0 failed" in p2.stdout  # rank 0's whole-job count
    d1, d2 = _digests(one), _digests(two)
    assert len(d1) == 7 and d1 == d2
    # each rank wrote its own share (index % 2), recorded in its own journal
    for r in (0, 1):
        lines = (two / ".conversenet" / f"restore-r{r}.jsonl").read_text().splitlines()
        done = sorted(json.loads(x)["o"] for x in lines if json.loads(x)["s"] == "done")
        assert done == [f"img{i:02d}.png" for i in range(r, 7, 2)]
    # rerun: everything complete, nothing written
    p3 = _run([*TORCHRUN, "-m", "conversenet", *DENOISE, str(images), "-o", str(two)])
    assert "done: 0 written, 0 failed, 7 skipped (already complete)" in p3.stdout
    assert _digests(two) == d1


def test_rerun_checks_content_settings_and_inputs(images, tmp_path):
    out = tmp_path / "out"
    base = [sys.executable, "-m", "conversenet", *DENOISE, str(images), "-o", str(out)]
    _run(base)
    ref = _digests(out)
    # a damaged output (same size) is not complete: made again; a changed input likewise
    data = bytearray((out / "img01.png").read_bytes())
    data[-20] ^= 0xFF
    (out / "img01.png").write_bytes(bytes(data))
    st = (images / "img04.png").stat()
    os.utime(images / "img04.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    p = _run(base)
    assert "img01.png ->" in p.stdout and "img04.png ->" in p.stdout
    assert "done: 2 written, 0 failed, 5 skipped (already complete)" in p.stdout
    assert _digests(out) == ref
    # other settings (tiles): earlier outputs are not this job's, so they are not replaced
    p = _run(base + ["--tile", "16", "--overlap", "4"], check=False)
    assert p.returncode == 1 and "done: 0 written, 7 failed" in p.stdout and "--overwrite" in p.stderr
    # --overwrite starts afresh: the journal is replaced and everything is written
    p = _run(base + ["--overwrite"])
    assert "done: 7 written, 0 failed" in p.stdout and "skipped" not in p.stdout
    lines = (out / ".conversenet" / "restore-r0.jsonl").read_text().splitlines()
    assert len(lines) == 14  # start + done per image: the earlier runs' lines are gone


CHILD = textwrap.dedent("""
    # conversenet restore that blocks while recording its BLOCK_AT-th finished output
    # (after the file was renamed into place, before its "done" line is written)
    import os, sys, time
    import conversenet.batch as B
    from conversenet.cli import main

    append = B.Journal.append
    n_done = []

    def blocking_append(self, rec):
        if rec.get("s") == "done":
            n_done.append(1)
            if len(n_done) == int(os.environ["BLOCK_AT"]):
                ready = os.environ["READY_DIR"] + f"/rank{os.environ.get('RANK', '0')}"
                with open(ready + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(ready + ".tmp", ready)
                while True:
                    time.sleep(0.05)
        return append(self, rec)

    B.Journal.append = blocking_append
    sys.exit(main(sys.argv[1:]))
""")


def _kill_when_ready(cmd, ready: Path, n_ready: int):
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    while len(list(ready.glob("rank?"))) < n_ready:
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"the run ended before it was killed (rc {p.returncode}):\n{out}\n{err}")
        time.sleep(0.05)
    # every process at once: the launcher, and each rank with its loader worker (torchrun
    # starts every rank in a process group of its own)
    os.killpg(p.pid, signal.SIGKILL)
    for f in ready.glob("rank?"):
        try:
            os.killpg(os.getpgid(int(f.read_text())), signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.communicate()
    assert p.returncode == -signal.SIGKILL


def _state(out: Path):
    """output name -> (inode, mtime_ns) and the number of "done" lines per output."""
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    done = {}
    for rec in Journal(out / ".conversenet", stem="restore").read():
        if rec["s"] == "done":
            done[rec["o"]] = done.get(rec["o"], 0) + 1
    return files, done


def _killed_and_resumed(images, tmp_path, launcher, ranks):
    ref, out, ready = tmp_path / "ref", tmp_path / "out", tmp_path / "ready"
    ready.mkdir()
    _run([sys.executable, "-m", "conversenet", *DENOISE, str(images), "-o", str(ref)])
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    os.environ["READY_DIR"] = str(ready)
    os.environ["BLOCK_AT"] = "2"
    try:
        _kill_when_ready([*launcher, str(child), *DENOISE, str(images), "-o", str(out)], ready, ranks)
    finally:
        os.environ.pop("READY_DIR")
        os.environ.pop("BLOCK_AT")
    files, done = _state(out)
    finished = sorted(done)
    assert len(finished) == ranks and all(v == 1 for v in done.values())  # 1 recorded image per rank
    # each rank's 2nd output was renamed into place but never recorded: present, not complete
    assert len(files) == 2 * ranks
    with open(out / ".conversenet" / "restore-r0.jsonl", "ab") as f:
        f.write(b'{"k": "x", "o": "img0')  # and a torn line, as a kill inside a write leaves
    # the same command again
    p = _run([*launcher, "-m", "conversenet", *DENOISE, str(images), "-o", str(out)])
    assert f"done: {7 - ranks} written, 0 failed, {ranks} skipped (already complete)" in p.stdout
    assert _digests(out) == _digests(ref)
    files2, done2 = _state(out)
    for name in finished:  # recorded outputs were not made again: same file (inode), same mtime
        assert files2[name] == files[name], name
    assert sorted(done2) == sorted(_digests(ref)) and all(v == 1 for v in done2.values()), done2


def test_sigkill_part_way_then_rerun_one_process(images, tmp_path):
    _killed_and_resumed(images, tmp_path, [sys.executable], 1)


@pytest.mark.slow
def test_sigkill_part_way_then_rerun_two_processes(images, tmp_path):
    _killed_and_resumed(images, tmp_path, TORCHRUN, 2)


# --------------------------------------------------------------------------------------
# eval: two processes, resuming, sweeps
# --------------------------------------------------------------------------------------
EVAL = ["eval", "--model", "dncnn", "--weights", "builtin", "--device", "cpu", "--no-progress"]


def _rows(path: Path):
    """(image, psnr, ssim) per CSV row, timings left out (they differ from run to run)."""
    return [(r["image"], r["psnr"], r["ssim"]) for r in csv.DictReader(open(path))]


def _table(text: str):
    """The printed per-image table and average, without the time column."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and (parts[0].startswith("img") or parts[0] == "average"):
            out.append(tuple(parts[:3]))
    return out


def test_two_process_eval_equals_one_process(images, tmp_path):
    grey = tmp_path / "grey"
    for p in sorted(images.iterdir()):  # the grey model's protocol needs grey images
        if int(p.stem[-2:]) % 3:
            grey.mkdir(exist_ok=True)
            (grey / p.name).write_bytes(p.read_bytes())
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = _run([sys.executable, "-m", "conversenet", *EVAL, "--dataset", str(grey), "--out", str(one)])
    p2 = _run([*TORCHRUN, "-m", "conversenet", *EVAL, "--dataset", str(grey), "--out", str(two)])
    assert _rows(one / "results.csv") == _rows(two / "results.csv")
    assert len(_rows(one / "results.csv")) == 5  # 4 images + average
    t1, t2 = _table(p1.stdout), _table(p2.stdout)
    assert t1 == t2 and len(t1) == 5
    j1, j2 = json.loads((one / "results.json").read_text()), json.loads((two / "results.json").read_text())
    assert j1["averages"]["psnr"] == j2["averages"]["psnr"] and j2["processes"] == 2
    # the rows were measured by both ranks: two journals
    assert {len((two / ".conversenet" / f"rows-r{r}.jsonl").read_text().splitlines()) for r in (0, 1)} == {2}


def test_eval_sweep_resumes_each_cell(images, tmp_path, capsys, monkeypatch):
    import conversenet.evaluate as ev
    from conversenet.cli import main

    grey = tmp_path / "grey"
    grey.mkdir()
    for p in sorted(images.iterdir()):
        if int(p.stem[-2:]) % 3:
            (grey / p.name).write_bytes(p.read_bytes())
    calls = []
    measure = ev.measure

    def counting(*a, **k):
        calls.append(1)
        return measure(*a, **k)

    monkeypatch.setattr(ev, "measure", counting)
    out = tmp_path / "sweep"
    args = [*EVAL, "--dataset", str(grey), "--sigma", "15", "25", "--out", str(out), "--no-save-images",
            "--threads", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert len(calls) == 8  # 2 cells x 4 images
    cells = {r["sigma"]: r for r in csv.DictReader(open(out / "sweep.csv"))}
    assert sorted(cells) == ["15.0", "25.0"]
    for s in ("15", "25"):
        res = json.loads((out / f"dncnn_grey_sigma{s}" / "results.json").read_text())
        assert res["protocol"]["sigma"] == float(s) and res["averages"]["n"] == 4
        assert float(cells[f"{s}.0"]["psnr"]) == pytest.approx(res["averages"]["psnr"], abs=1e-6)
    assert float(cells["15.0"]["psnr"]) > float(cells["25.0"]["psnr"])  # less noise, better result

    # lose the last two rows of the sigma-25 cell (one of them torn) and run again
    j = out / "dncnn_grey_sigma25" / ".conversenet" / "rows-r0.jsonl"
    lines = j.read_text().splitlines(keepends=True)
    j.write_text("".join(lines[:2]) + lines[2][:15])
    calls.clear()
    assert main(args) == 0
    again = capsys.readouterr().out
    assert len(calls) == 2  # only the missing rows were measured
    assert "resuming: 4 of 4" in again and "resuming: 2 of 4" in again
    assert _table(again) == _table(first)
    assert {r["sigma"]: r["psnr"] for r in csv.DictReader(open(out / "sweep.csv"))} == \
        {k: v["psnr"] for k, v in cells.items()}

    # --overwrite measures everything again
    calls.clear()
    assert main(args + ["--overwrite"]) == 0
    assert len(calls) == 8 and "resuming" not in capsys.readouterr().out
