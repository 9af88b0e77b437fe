"""Ctrl-C (SIGINT) stops a running `conversenet eval`: exit code 130, one line on stderr,
and the rows finished so far in valid, atomically written results files.

The run is a real `conversenet eval` in a subprocess (random weights, generated images, no
data needed). So that the outcome does not depend on timing, the child's second image waits
in a sleep loop until a signal arrives; SIGINT is sent once the first per-image line has
been printed. Both ways a process can inherit SIGINT are covered: the default disposition
(a terminal's Ctrl-C) and SIG_IGN, which a shell without job control gives to background
jobs (`cmd &` in a script) and which Python then keeps unless the program installs a handler.
"""

import csv
import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conversenet.data import write_image

CHILD = textwrap.dedent("""
    import sys, time
    import conversenet.evaluate as ev
    from conversenet.cli import main

    calls = []
    measure = ev.measure

    def slow_measure(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # second image: wait here until the test's signal arrives
            while True:
                time.sleep(0.01)
        return measure(*a, **k)

    ev.measure = slow_measure
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def grey_dir(tmp_path):
    d = tmp_path / "grey"
    rng = np.random.default_rng(0)
    for n in ("a", "b", "c"):
        write_image(d / f"{n}.png", (rng.random((24, 24, 1)) * 255).round().astype(np.uint8))
    return d


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_sigint_stops_eval_with_130_and_partial_results(inherited, grey_dir, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "--model", "converse_dncnn", "--weights", "none", "--dataset", str(grey_dir), "--sigma", "25",
            "--out", str(out), "--no-progress", "--no-save-images", "--device", "cpu", "--threads", "1"]

    def preexec():
        signal.signal(signal.SIGINT, signal.SIG_DFL if inherited == "default" else signal.SIG_IGN)

    p = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=preexec)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("a "):  # the first image's row: the child now waits in image b
            break
    assert seen and seen[-1].startswith("a "), "".join(seen) + p.stderr.read()
    p.send_signal(signal.SIGINT)
    try:  # a safety net against a hang (the bug this test guards against), not a speed check
        rest, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"SIGINT ({inherited} disposition inherited) did not stop conversenet eval")

    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conversenet eval: interrupted after 1 of 3 images"), err
    assert "average" not in rest  # no final table

    doc = json.loads((out / "results.json").read_text())
    assert doc["complete"] is False and doc["interrupted"] is True
    assert doc["images_total"] == 3 and doc["averages"]["n"] == 1
    assert [r["image"] for r in doc["images"]] == ["a"]
    assert doc["averages"]["psnr"] == pytest.approx(doc["images"][0]["psnr"])
    # the printed row is the recorded one
    assert f"{doc['images'][0]['psnr']:8.2f}" in seen[-1]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["image"] for r in rows] == ["a", "average"]
    assert float(rows[0]["psnr"]) == pytest.approx(doc["images"][0]["psnr"], abs=1e-6)
    # atomic writes: no temporary files left behind
    assert sorted(x.name for x in out.iterdir()) == [".conversenet", "results.csv", "results.json"]
    # the per-image journal (what a rerun resumes from) holds image a, one complete line
    lines = (out / ".conversenet" / "rows-r0.jsonl").read_text().splitlines()
    assert [json.loads(x)["row"]["image"] for x in lines] == ["a"]
