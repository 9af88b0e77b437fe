"""Issue 12, load side: no code runs from a checkpoint or a config; the authors' file is
recognised by content; a tampered official file is reported; bad checkpoints and sidecars
give one line.

Every ``test_security_*`` / ``test_reliability_*`` test here fails on the code before the fix
(see the docstrings for how). The malicious files are built here: a class whose
``__reduce__`` makes unpickling call ``os.system("touch MARKER")``, saved with
``torch.save`` (torch's zip format) and with plain ``pickle`` (torch's legacy format).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_helpers import cli_env, make_images, tiny_config, write_config
from conversenet.cli import main
from conversenet.data import write_image
from conversenet.models import WeightsError, create


# ------------------------------------------------------------------ malicious files
class _RunsCode:
    """Unpickling this calls ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil(path: Path, marker: Path, kind: str = "torch") -> Path:
    """A .pth that runs code when unpickled; shaped like a training checkpoint so that an
    unsafe loader would go on to use it."""
    obj = {"format": "conversenet-train", "version": 1, "iteration": 1, "payload": _RunsCode(marker),
           "model": {"w": torch.zeros(1)}}
    if kind == "torch":
        torch.save(obj, path)
    else:  # plain pickle: torch.load's legacy path unpickles it too
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return path


def _sanity_the_payload_works(tmp_path):
    marker = tmp_path / "sanity"
    pickle.loads(pickle.dumps(_RunsCode(marker)))
    return marker.exists()


def _one_line(err: str, *words: str) -> str:
    err = err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert "weights_only" not in err, err  # never advise weights_only=False
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def evil(tmp_path):
    assert _sanity_the_payload_works(tmp_path), "the test's payload does not run code where it should"
    marker = tmp_path / "MARKER"
    return _evil(tmp_path / "evil.pth", marker), marker


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "in.png"
    write_image(p, (np.random.default_rng(0).random((24, 24, 1)) * 255).astype(np.uint8))
    return p


@pytest.fixture
def train_cfg(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.total_iter": 2})
    return write_config(tmp_path / "cfg.yaml", cfg)


def _cli_cases(tmp_path, evil_file, img, cfg):
    out = tmp_path / "out"
    run = tmp_path / "run"
    cases = {
        "denoise --weights": ["denoise", str(img), "-o", str(out), "--weights", str(evil_file), "--device", "cpu"],
        "sr --weights": ["sr", str(img), "-o", str(out), "--weights", str(evil_file), "--device", "cpu"],
        "deblur --weights": ["deblur", str(img), "-o", str(out), "--kernel", "gaussian:1.6", "--weights",
                             str(evil_file), "--device", "cpu"],
        "deblur --blind --weights": ["deblur", str(img), "-o", str(out), "--blind", "--weights", str(evil_file),
                                     "--device", "cpu"],
        "eval --weights": ["eval", "--model", "converse_dncnn", "--weights", str(evil_file), "--dataset",
                           str(img.parent / "evalset"), "--out", str(out), "--no-progress", "--device", "cpu"],
        "visualize --weights": ["visualize", "-o", str(tmp_path / "fig.png"), "--weights", str(evil_file)],
        "train --resume FILE": ["train", str(cfg), "--out", str(run), "--resume", str(evil_file), "--quiet"],
        "train --export": ["train", str(evil_file), "--export", str(tmp_path / "exported.pth")],
    }
    return cases


CLI_CASES = ["denoise --weights", "sr --weights", "deblur --weights", "deblur --blind --weights", "eval --weights",
             "visualize --weights", "train --resume FILE", "train --export"]


@pytest.mark.parametrize("kind", ["torch", "pickle"])
@pytest.mark.parametrize("case", CLI_CASES)
def test_security_malicious_pth_runs_no_code_in_any_command(case, kind, tmp_path, img, train_cfg, capsys):
    """Before: --resume and --export ran the payload (torch.load(weights_only=False)); the
    --weights commands refused it but printed torch's multi-line text advising weights_only=False."""
    if case == "visualize --weights":
        pytest.importorskip("matplotlib")
    make_images(img.parent / "evalset", n=1, size=(16, 16))
    marker = tmp_path / "MARKER"
    evil_file = _evil(tmp_path / "evil.pth", marker, kind)
    rc = main(_cli_cases(tmp_path, evil_file, img, train_cfg)[case])
    err = capsys.readouterr().err
    assert not marker.exists(), f"{case}: the file's code ran"
    assert rc != 0
    _one_line(err, "evil.pth")
    if kind == "torch":  # the message says why (the named global), not just "cannot load"
        assert "posix.system" in err or "nt.system" in err, err
    assert not (tmp_path / "exported.pth").exists()


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_security_plain_resume_of_a_planted_last_pth_runs_no_code(kind, tmp_path, train_cfg, capsys):
    """``train CFG --resume`` reads RUN/last.pth: a file planted there must not run code.
    Before: the payload ran (marker created), then a KeyError traceback."""
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "MARKER"
    _evil(run / "last.pth", marker, kind)
    rc = main(["train", str(train_cfg), "--out", str(run), "--resume", "--quiet"])
    assert not marker.exists()
    assert rc == 2
    _one_line(capsys.readouterr().err, "last.pth")


def test_security_python_api_runs_no_code(evil, tmp_path):
    """create(pretrained=PATH), create(official, weights_path=PATH), restore(weights=PATH),
    load_model, load_checkpoint, export_weights and Trainer(resume=PATH). Before:
    load_checkpoint/export_weights/Trainer ran the payload; the others raised messages
    advising weights_only=False."""
    import conversenet
    from conversenet import restore as R
    from conversenet.train import Trainer, config_from_dict
    from conversenet.train.checkpoint import export_weights, load_checkpoint

    path, marker = evil
    calls = {
        "create(pretrained=PATH)": lambda: create("converse_dncnn", pretrained=path),
        "create(official, weights_path=PATH)": lambda: create("converse_dncnn_official", pretrained="official",
                                                              weights_path=path, download=False),
        "restore(weights=PATH)": lambda: conversenet.restore(np.zeros((16, 16), np.uint8), weights=str(path)),
        "load_model": lambda: R.load_model("denoise", weights=str(path)),
        "load_weights_file": lambda: R.load_weights_file(path, "denoise"),
        "load_checkpoint": lambda: load_checkpoint(path),
        "export_weights": lambda: export_weights(path, tmp_path / "x.pth"),
        "Trainer(resume=PATH)": lambda: Trainer(config_from_dict(tiny_config(tmp_path, **{"train.total_iter": 2})),
                                                out_dir=tmp_path / "run", resume=path, verbose=False).run(),
    }
    for what, call in calls.items():
        with pytest.raises((WeightsError, ValueError)) as e:
            call()
        assert not marker.exists(), f"{what}: the file's code ran"
        _one_line(str(e.value), str(path))
    assert not (tmp_path / "x.pth").exists()


def test_security_checkpoints_load_weights_only_and_resume_exactly(tmp_path):
    """A training checkpoint (model, optimizer, scheduler, EMA, RNG states, config) must load
    with torch.load(weights_only=True). Before: numpy's RNG state made it fail to load so."""
    from conversenet.train import Trainer, config_from_dict

    cfg = tiny_config(tmp_path, **{"train.total_iter": 4, "train.ema_decay": 0.9, "train.checkpoint_every": 2})
    assert Trainer(config_from_dict(cfg), out_dir=tmp_path / "full", verbose=False).run() == 0
    ck = torch.load(tmp_path / "full" / "last.pth", map_location="cpu", weights_only=True)
    assert ck["format"] == "conversenet-train" and ck["iteration"] == 4
    assert {"model", "optimizer", "scheduler", "ema", "rng", "config"} <= set(ck)
    # resume a 2-iteration run to 4: same weights as the uninterrupted run
    cfg2 = dict(cfg, train=dict(cfg["train"], total_iter=2))
    assert Trainer(config_from_dict(cfg2), out_dir=tmp_path / "half", verbose=False).run() == 0
    assert Trainer(config_from_dict(cfg), out_dir=tmp_path / "half", resume=True, verbose=False).run() == 0
    a = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "half" / "last.pth", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_checkpoint_of_format_1_still_resumes(tmp_path):
    """Checkpoints written before the change stored the RNG states as python/numpy objects; they
    still load (weights-only, with plain numpy arrays allowed) and set the same RNG states."""
    import random

    from conversenet.train.checkpoint import load_checkpoint, set_rng_state
    from conversenet.train import Trainer, config_from_dict

    cfg = tiny_config(tmp_path, **{"train.total_iter": 2})
    assert Trainer(config_from_dict(cfg), out_dir=tmp_path / "run", verbose=False).run() == 0
    ck = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    random.seed(123)
    np.random.seed(456)
    py, npy = random.getstate(), np.random.get_state()
    ck["version"] = 1
    ck["rng"] = {"python": py, "numpy": npy, "torch": torch.get_rng_state()}
    torch.save(ck, tmp_path / "old.pth")
    old = load_checkpoint(tmp_path / "old.pth")
    random.seed(0)
    np.random.seed(0)
    set_rng_state(old["rng"])
    assert random.getstate() == py
    got = np.random.get_state()
    assert got[0] == npy[0] and np.array_equal(got[1], npy[1]) and got[2:] == npy[2:]
    cfg4 = dict(cfg, train=dict(cfg["train"], total_iter=4))
    assert Trainer(config_from_dict(cfg4), out_dir=tmp_path / "run2", resume=tmp_path / "old.pth",
                   verbose=False).run() == 0


# ------------------------------------------------------------------ configs
def _marker_module(folder: Path, marker: Path) -> str:
    """A module that creates ``marker`` when imported and whose ``factory`` does too."""
    (folder / "cnet_marker_mod.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")
        def factory(**kw):
            Path({str(marker)!r}).write_text("called")
    """))
    return "cnet_marker_mod"


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("where", ["yaml", "override"])
def test_security_config_naming_a_non_registry_model_is_refused(where, check, tmp_path, monkeypatch, capsys):
    """``module:factory`` in the YAML file or as ``model.name=...``, with and without --check:
    one line, exit 2, nothing imported or called. Before: the module was imported and the
    function called (marker file and directory created)."""
    marker = tmp_path / "MARKER"
    mod = _marker_module(tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    made = tmp_path / "made_by_os_makedirs"
    cfgs = {
        f"{mod}:factory": {},
        "os:makedirs": {"name": str(made)},
        "os:system": {"command": f"touch '{marker}'"},
    }
    for name, args in cfgs.items():
        cfg = tiny_config(tmp_path, **{"train.total_iter": 2})
        argv = ["train"]
        if where == "yaml":
            cfg["model"] = {"name": name, "args": args}
            argv += [str(write_config(tmp_path / "c.yaml", cfg))]
        else:
            argv += [str(write_config(tmp_path / "c.yaml", cfg)), f"model.name={name}",
                     "model.args=" + json.dumps(args)]
        argv += ["--out", str(tmp_path / "run"), "--quiet"] + (["--check"] if check else [])
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        _one_line(err, "model.name", "unknown model", repr(name), "--import")
        assert not marker.exists() and not made.exists(), name
        assert mod not in sys.modules
        assert not (tmp_path / "run").exists()


def test_security_yaml_python_tags_run_nothing_and_error_in_one_line(tmp_path, capsys):
    """``!!python/object/apply:os.system`` in a config file or an override: nothing runs, one
    line. Before: the file's error was PyYAML's multi-line text."""
    marker = tmp_path / "MARKER"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tag}\n")
    rc = main(["train", str(cfg), "--check"])
    assert rc == 2 and not marker.exists()
    _one_line(capsys.readouterr().err, "c.yaml", "invalid YAML", "line 1")
    good = write_config(tmp_path / "g.yaml", tiny_config(tmp_path))
    rc = main(["train", str(good), f"model.args={tag}", "--check"])
    assert rc == 2 and not marker.exists()
    _one_line(capsys.readouterr().err, "model.args")


def test_security_build_model_never_imports(tmp_path, monkeypatch):
    """The API too: build_model(config) with a ``module:factory`` name raises ConfigError and
    imports nothing. Before: it imported the module and called the factory."""
    from conversenet.train import ConfigError, build_model, config_from_dict

    marker = tmp_path / "MARKER"
    mod = _marker_module(tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config_from_dict(tiny_config(tmp_path, **{"model.name": f"{mod}:factory", "model.args": {}}))
    with pytest.raises(ConfigError, match=r"^model\.name: unknown model"):
        build_model(cfg)
    assert not marker.exists() and mod not in sys.modules


def test_security_user_models_come_from_an_explicit_import_flag(tmp_path):
    """``--import MODULE`` (typed by the user) runs MODULE, which registers a model that the
    config can then name; without the flag the same config is refused. Before: no --import
    (argparse error), and registration was only possible through module:factory names."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        from conversenet.models import register_model

        @register_model("my_tiny_denoiser", defaults={"width": 4})
        class Tiny(nn.Module):
            task = "denoise"

            def __init__(self, width=8):
                super().__init__()
                self.in_channels, self.scale, self.needs_kernel = 1, 1, False
                self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(width, 1, 3, padding=1))

            def forward(self, x):
                return x - self.body(x)
    """))
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, **{"train.total_iter": 2,
                                                                     "model.name": "my_tiny_denoiser",
                                                                     "model.args": {}}))
    env = cli_env()
    base = [sys.executable, "-m", "conversenet", "train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]
    r = subprocess.run(base + ["--check"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "unknown model 'my_tiny_denoiser'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(base + ["--import", "my_models"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sd = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert sd["model_name"] == "my_tiny_denoiser" and sd["iteration"] == 2
    assert sd["model"]["body.0.weight"].shape == (4, 1, 3, 3)
    r = subprocess.run(base[:-3] + ["--import", "no_such_module_xyz", "--check"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2
    _one_line(r.stderr, "--import no_such_module_xyz")


def test_security_register_model_cannot_replace_the_package_models():
    import torch.nn as nn

    from conversenet.models import list_models, register_model

    class M(nn.Module):
        task = "denoise"

    with pytest.raises(ValueError, match="package's own"):
        register_model("converse_dncnn", M)
    with pytest.raises(ValueError, match="no ':'"):
        register_model("os:system", M)
    with pytest.raises(ValueError, match="task"):
        register_model("no_task_model", nn.Module)
    assert "os:system" not in list_models() and "no_task_model" not in list_models()


# ------------------------------------------------------------------ the authors' files
def _official(official_dir: Path, name: str) -> Path:
    p = official_dir / name
    if not p.is_file():
        pytest.skip(f"{name} not in {official_dir}")
    return p


def test_reliability_authors_file_under_its_own_name_loads(official_dir, tmp_path, img, capsys):
    """``--weights .../converse_dncnn.pth``: the authors' file (7x7 kernels) is recognised by its
    SHA-256, whatever it is called, not taken as the 5x5 registry model of the same stem.
    Before: a shape mismatch error."""
    from conversenet import restore as R

    src = _official(official_dir, "converse_dncnn.pth")
    for name in ("converse_dncnn.pth", "my_download.pth"):
        dst = tmp_path / "w" / name
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, dst)
        lm = R.load_model("denoise", weights=str(dst))
        assert lm.name == "converse_dncnn_official" and lm.sigma == 25 and "SHA-256" in lm.source
        ref = R.load_model("denoise", weights="official")
        for k, v in ref.model.state_dict().items():
            assert torch.equal(lm.model.state_dict()[k], v)
    rc = main(["denoise", str(img), "-o", str(tmp_path / "o1.png"), "--weights", str(tmp_path / "w" / "converse_dncnn.pth"),
               "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rc = main(["denoise", str(img), "-o", str(tmp_path / "o2.png"), "--weights", "official", "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    from conversenet.data import read_image

    assert np.array_equal(read_image(tmp_path / "o1.png")[0], read_image(tmp_path / "o2.png")[0])
    # eval --model converse_dncnn with the authors' file by path uses their preset too
    make_images(tmp_path / "set", n=1, size=(24, 24))
    rc = main(["eval", "--model", "converse_dncnn", "--weights", str(tmp_path / "w" / "converse_dncnn.pth"),
               "--dataset", str(tmp_path / "set"), "--out", str(tmp_path / "ev"), "--no-progress", "--device", "cpu",
               "--no-save-images"])
    assert rc == 0, capsys.readouterr().err
    assert "converse_dncnn_official" in capsys.readouterr().out


def test_reliability_weights_are_recognised_by_shapes_not_by_file_name(tmp_path):
    """A re-saved copy of the released architecture (other bytes, so no SHA match) named
    converse_dncnn.pth is matched to the registry model whose tensor shapes it has. Before:
    the stem picked the 5x5 model and loading failed."""
    from conversenet import restore as R

    torch.manual_seed(0)
    net = create("converse_dncnn_official")
    torch.save(net.state_dict(), tmp_path / "converse_dncnn.pth")
    lm = R.load_model("denoise", weights=str(tmp_path / "converse_dncnn.pth"))
    assert lm.name == "converse_dncnn_official" and "tensor shapes" in lm.source
    for k, v in net.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v)
    # and a 5x5 model saved under the released preset's name is the 5x5 model
    small = create("converse_dncnn")
    torch.save(small.state_dict(), tmp_path / "converse_dncnn_official.pth")
    assert R.load_model("denoise", weights=str(tmp_path / "converse_dncnn_official.pth")).name == "converse_dncnn"


def test_reliability_tampered_official_file_under_auto_is_reported_loudly(tmp_path, img, monkeypatch, capsys):
    """``--weights auto`` with a tampered converse_dncnn.pth in $CONVERSENET_WEIGHTS_DIR falls
    back to the built-in weights but says why on stderr, naming the file, even with output
    otherwise quiet. Before: a silent fallback."""
    from conversenet.models import weights as W

    folder = tmp_path / "official"
    folder.mkdir()
    bad = folder / "converse_dncnn.pth"
    torch.save(create("converse_dncnn_official").state_dict(), bad)  # right shapes, wrong bytes
    monkeypatch.setenv("CONVERSENET_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("CONVERSENET_OFFLINE", "1")
    monkeypatch.setattr(W, "hub_cache_dir", lambda: tmp_path / "hub")
    # --sigma: the paper's sigma-trained model is the one wanted (without it the blind
    # denoisers of the package are the default and the authors' file is not looked at)
    rc = main(["denoise", str(img), "-o", str(tmp_path / "o.png"), "--weights", "auto", "--sigma", "25",
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if "WARNING" in ln]
    assert len(warn) == 1, err
    assert "SHA-256 mismatch" in warn[0] and str(bad) in warn[0] and "NOT" in warn[0]
    # the API says it too
    from conversenet import restore as R

    lm = R.load_model("denoise", weights="auto")
    assert "checksum mismatch" in lm.source and "SHA-256 mismatch" in capsys.readouterr().err


# ------------------------------------------------------------------ one-line errors
def _train_ckpt(tmp_path: Path, **over) -> Path:
    from conversenet.train import Trainer, config_from_dict

    cfg = tiny_config(tmp_path, **{"train.total_iter": 2, **over})
    out = tmp_path / ("src_" + "_".join(f"{k}{v}" for k, v in over.items()).replace(".", ""))
    assert Trainer(config_from_dict(cfg), out_dir=out, verbose=False).run() == 0
    return out / "last.pth"


def test_reliability_resume_from_a_corrupt_or_foreign_file_is_one_line(tmp_path, train_cfg, capsys):
    """``train --resume FILE`` with a truncated checkpoint, a text file, an exported weights
    file, a list, and a checkpoint of another model: exit 2 and one line naming the file.
    Before: tracebacks (ValueError/KeyError/RuntimeError)."""
    good = _train_ckpt(tmp_path)
    wide = _train_ckpt(tmp_path, **{"model.args": {"width": 8, "num_blocks": 1}})
    files = {
        "truncated.pth": good.read_bytes()[: good.stat().st_size // 2],
        "text.pth": b"this is not a checkpoint\n",
        "empty.pth": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save(create("converse_dncnn", width=4, num_blocks=1).state_dict(), tmp_path / "exported_weights.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"format": "conversenet-train", "iteration": "x"}, tmp_path / "damaged.pth")
    shutil.copyfile(wide, tmp_path / "other_model.pth")
    for name in [*files, "exported_weights.pth", "list.pth", "damaged.pth", "other_model.pth"]:
        run = tmp_path / f"run_{name}"
        rc = main(["train", str(train_cfg), "--out", str(run), "--resume", str(tmp_path / name), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        _one_line(err, name)
        assert not (run / "last.pth").exists()
    # --export of the same foreign files: one line as well
    for name in ["text.pth", "exported_weights.pth", "list.pth", "damaged.pth"]:
        rc = main(["train", str(tmp_path / name), "--export", str(tmp_path / "e.pth")])
        assert rc == 2
        _one_line(capsys.readouterr().err, name)
    assert not (tmp_path / "e.pth").exists()


@pytest.mark.parametrize("side", [{"model": "converse_dncnn", "args": [4, 1]},
                                  {"model": "converse_dncnn", "args": "width=4"},
                                  {"model": ["converse_dncnn"]},
                                  {"model": "converse_dncnn", "args": {"width": 4, "num_blocks": 1}, "sigma": "25"}])
def test_reliability_sidecar_with_wrong_types_is_one_line(side, tmp_path, img, capsys):
    """A ``.json`` sidecar whose ``args`` is not a mapping (or ``model`` not a name, ``sigma``
    not a number): one line naming the sidecar. Before: TypeError tracebacks."""
    torch.save(create("converse_dncnn", width=4, num_blocks=1).state_dict(), tmp_path / "w.pth")
    (tmp_path / "w.json").write_text(json.dumps(side))
    rc = main(["denoise", str(img), "-o", str(tmp_path / "o.png"), "--weights", str(tmp_path / "w.pth"),
               "--device", "cpu", "--no-progress"])
    assert rc == 2
    _one_line(capsys.readouterr().err, "w.json")
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------ safetensors
def test_security_export_as_safetensors_is_read_by_every_weights_reader(tmp_path, img, capsys):
    """``train CKPT --export OUT.safetensors`` writes the weights without any pickle; create(),
    ``--weights`` (restore commands, eval) read it; a damaged one is one line. Before:
    ``--export`` accepted only .pth and .safetensors files could not be read."""
    from conversenet import restore as R

    ckpt = _train_ckpt(tmp_path)
    out = tmp_path / "w.safetensors"
    assert main(["train", str(ckpt), "--export", str(out)]) == 0
    assert out.read_bytes()[8:9] == b"{"  # 8-byte header length, then the JSON header
    ref = torch.load(ckpt, weights_only=True)["model"]
    net = create("converse_dncnn", pretrained=out, width=4, num_blocks=1)
    for k, v in ref.items():
        assert torch.equal(net.state_dict()[k], v.float()), k
    (tmp_path / "w.json").write_text(json.dumps({"model": "converse_dncnn", "args": {"width": 4, "num_blocks": 1}}))
    lm = R.load_model("denoise", weights=str(out))
    assert lm.name == "converse_dncnn"
    for k, v in ref.items():
        assert torch.equal(lm.model.state_dict()[k], v.float()), k
    capsys.readouterr()
    rc = main(["denoise", str(img), "-o", str(tmp_path / "o.png"), "--weights", str(out), "--device", "cpu",
               "--no-progress"])
    assert rc == 0 and (tmp_path / "o.png").is_file()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 32)
    with pytest.raises(WeightsError) as e:
        create("converse_dncnn", pretrained=bad)
    _one_line(str(e.value), "bad.safetensors", "not a readable .safetensors file")
