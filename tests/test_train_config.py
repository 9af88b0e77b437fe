"""Config loading, validation, extends/presets/overrides, and the CLI's handling of bad configs."""

from __future__ import annotations


import pytest

from conversenet.cli import main
from conversenet.train import ConfigError, config_from_dict, list_configs, load_config, parse_overrides, resolve_config
from conversenet.train.config import yaml_load

from _train_helpers import CONFIG_DIR, make_images

CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("base"))


def test_every_paper_experiment_has_a_config():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIGS}
    expected = (
        [f"table1/{n}.yaml" for n in ("init_uniform", "init_gaussian", "init_gaussian_softmax",
                                       "kernel3", "kernel5", "kernel7")]
        + [f"table2/mode_{m}.yaml" for m in ("zero", "reflect", "replicate", "circular")]
        + [f"table2/pad{p}.yaml" for p in (0, 2, 4, 5)]
        + [f"table3/{m}_x0_{x}.yaml" for m in ("dncnn", "srresnet") for x in ("zero", "interp")]
        + [f"table4/{m}.yaml" for m in ("converse_dncnn", "conv_dncnn", "convt_dncnn", "dncnn")]
        + [f"table5/{m}.yaml" for m in ("srresnet", "converse_srresnet", "conv_srresnet", "convt_srresnet")]
        + [f"table6/up_{u}.yaml" for u in ("pixelshuffle", "nearest", "convt", "converse")]
        + [f"table7/{m}.yaml" for m in ("convnet", "conversenet", "conv_usrnet", "converse_usrnet")]
    )
    assert set(expected) <= names
    assert {"denoise/blind_gray.yaml", "denoise/blind_color.yaml"} <= names  # issue #15, packaged too


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_config_loads_at_paper_scale_and_with_cpu_preset(path):
    full = load_config(path)
    assert full.train.loss == "l1" and full.train.gamma == 0.5
    if path.parent.name.startswith("table"):  # the paper's rows (the blind denoisers of denoise/ are sized for CPUs)
        # the paper's (DPIR/KAIR) settings come through the extends chain
        assert full.train.lr == 1e-4
        assert full.data.batch_size == 16
        assert full.data.patch_size in (96, 128)
    assert full.name.startswith(path.parent.name + "_")
    small = load_config(path, ["preset=cpu"])
    assert small.data.batch_size < full.data.batch_size
    assert small.data.patch_size < full.data.patch_size
    assert small.train.total_iter < full.train.total_iter
    assert small.data.val_images > 0
    assert small.model == full.model


def test_config_names_are_unique():
    names = [load_config(p).name for p in CONFIGS]
    assert len(names) == len(set(names))


def test_experiment_specific_args_reach_the_model():
    assert load_config(CONFIG_DIR / "table1/init_uniform.yaml").model.args == {"kernel_init": "uniform"}
    assert load_config(CONFIG_DIR / "table2/mode_zero.yaml").model.args["padding_mode"] == "constant"
    assert load_config(CONFIG_DIR / "table2/pad5.yaml").model.args["padding"] == 5
    assert load_config(CONFIG_DIR / "table3/srresnet_x0_zero.yaml").model.args == {"x0": "zero"}
    sr = load_config(CONFIG_DIR / "table5/converse_srresnet.yaml")
    assert sr.degradation.scale == 4 and sr.data.patch_size == 96 and sr.data.val == "testsets/set5"
    db = load_config(CONFIG_DIR / "table7/converse_usrnet.yaml")
    assert db.degradation.noise == 2.55 and db.degradation.kernel_size == 7
    assert sorted(db.degradation.kernel_types) == ["gaussian", "motion"]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"^train\.lrate: unknown key"):
        config_from_dict({"model": {"name": "x"}, "train": {"lrate": 1.0}})
    with pytest.raises(ConfigError, match=r"^colour: unknown key"):
        config_from_dict({"model": {"name": "x"}, "colour": 1})


@pytest.mark.parametrize("raw, msg", [
    ({"train": {"lr": "fast"}}, "train.lr: expected float, got str"),
    ({"train": {"total_iter": 1.5}}, "train.total_iter: expected int, got float"),
    ({"train": {"total_iter": True}}, "train.total_iter: expected int, got bool"),
    ({"data": {"augment": "yes"}}, "data.augment: expected bool, got str"),
    ({"train": {"milestones": [1, "a"]}}, "train.milestones[1]: expected int, got str"),
    ({"train": {"milestones": 5}}, "train.milestones: expected list of int, got int"),
    ({"data": 3}, "data: expected a mapping, got int"),
    ({"train": {"loss": "l3"}}, "train.loss: expected one of"),
    ({"train": {"lr": -1.0}}, "train.lr: expected a positive number"),
    ({"degradation": {"sigma_range": [50, 0]}}, "degradation.sigma_range"),
    ({"degradation": {"sigma_focus": [5, 20]}}, "degradation.sigma_focus: needs degradation.sigma_range"),
    ({"degradation": {"sigma_range": [0, 55], "sigma_focus": [5, 60]}}, "degradation.sigma_focus: expected"),
    ({"degradation": {"sigma_focus_prob": 1.5}}, "degradation.sigma_focus_prob"),
    ({"degradation": {"kernel_types": ["box"]}}, "degradation.kernel_types[0]"),
])
def test_wrong_types_and_values_are_named(raw, msg):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {"name": "x"}, **raw})
    assert str(e.value).startswith(msg)


def test_int_is_accepted_for_float_and_yaml_exponents_are_floats():
    cfg = config_from_dict({"model": {"name": "x"}, "train": {"lr": 1}})
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert yaml_load("a: 1e-4\nb: 2E+3\nc: 7\nd: 1.5")== {"a": 1e-4, "b": 2000.0, "c": 7, "d": 1.5}


def test_extends_preset_and_override_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(
        "model: {name: m, args: {k: 1, j: 2}}\ntrain: {lr: 1e-3, total_iter: 100}\n"
        "presets: {cpu: {train: {total_iter: 5, lr: 5e-4}}}\n")
    (tmp_path / "sub" / "b.yaml").write_text("extends: ../a.yaml\nmodel: {args: {k: 3}}\ntrain: {log_every: 7}\n")
    cfg = load_config(tmp_path / "sub" / "b.yaml")
    assert cfg.model.args == {"k": 3, "j": 2}                      # mappings merge key by key
    assert (cfg.train.lr, cfg.train.total_iter, cfg.train.log_every) == (1e-3, 100, 7)
    assert cfg.name == "b"                                         # default name: file stem
    cfg = load_config(tmp_path / "sub" / "b.yaml", ["preset=cpu", "train.lr=2e-4"])
    assert cfg.train.total_iter == 5                               # from the preset
    assert cfg.train.lr == 2e-4                                    # command line beats the preset
    with pytest.raises(ConfigError, match="preset: unknown preset 'gpu'"):
        load_config(tmp_path / "sub" / "b.yaml", ["preset=gpu"])


def test_circular_extends_and_missing_files(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nothere.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "c.yaml")


# ------------------------------------------------------------------ packaged configs by name

def test_packaged_names_are_the_files_of_the_config_folder():
    # reference: the YAML files on disk, listed here independently of list_configs
    on_disk = {p.relative_to(CONFIG_DIR).as_posix()[:-len(".yaml")] for p in CONFIGS}
    assert set(list_configs()) == on_disk and len(list_configs()) == len(on_disk)
    for name in ("table4/converse_dncnn", "table7/converse_usrnet"):
        assert resolve_config(name) == resolve_config(name + ".yaml") == CONFIG_DIR / f"{name}.yaml"


def test_config_by_name_equals_config_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nowhere near the checkout: only the package can supply it
    by_name = load_config("table5/converse_srresnet", ["preset=cpu"])
    assert by_name == load_config(CONFIG_DIR / "table5/converse_srresnet.yaml", ["preset=cpu"])
    assert by_name.name == "table5_converse_srresnet" and by_name.degradation.scale == 4  # extends: followed


def test_an_existing_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table4").mkdir()
    (tmp_path / "table4" / "converse_dncnn.yaml").write_text("name: mine\nmodel: {name: dncnn}\n")
    assert load_config("table4/converse_dncnn.yaml").name == "mine"          # the file in the cwd
    assert load_config("table4/converse_dncnn").name == "table4_converse_dncnn"  # no such file: the name


def test_own_file_extends_a_packaged_config_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("extends: table4/dncnn\nname: mine\ntrain: {lr: 3e-4}\n")
    mine, ref = load_config(tmp_path / "mine.yaml"), load_config(CONFIG_DIR / "table4/dncnn.yaml")
    assert (mine.name, mine.train.lr, mine.model, mine.data) == ("mine", 3e-4, ref.model, ref.data)
    (tmp_path / "table4").mkdir()  # a file beside it wins over the packaged name
    (tmp_path / "table4" / "dncnn").write_text("model: {name: converse_dncnn}\n")
    assert load_config(tmp_path / "mine.yaml").model.name == "converse_dncnn"


@pytest.mark.parametrize("bad", ["table4/nosuch", "nosuch.yaml", "../pyproject", "/table4/converse_dncnn", ""])
def test_unknown_config_error_lists_the_packaged_names(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        resolve_config(bad)
    msg = str(e.value)
    assert msg.startswith(f"config file not found: {bad}")
    assert "table4/converse_dncnn, " in msg and "table1/kernel3" in msg


def test_missing_packaged_folder_is_said(tmp_path, monkeypatch):
    import conversenet.train.config as C

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(C, "_packaged_dir", lambda: tmp_path / "configs")  # a wheel built without them
    assert list_configs() == []
    with pytest.raises(ConfigError, match=r"packaged: none, .*configs holds no configs"):
        load_config("table4/converse_dncnn")


def test_cli_trains_by_name_and_lists_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--list-configs"]) == 0
    assert capsys.readouterr().out.split() == list_configs()
    train, val = make_images(tmp_path / "train", n=1), make_images(tmp_path / "val", n=1)
    assert main(["train", "table4/converse_dncnn", "preset=cpu", f"data.train={train}", f"data.val={val}",
                 "--check"]) == 0
    assert yaml_load(capsys.readouterr().out)["name"] == "table4_converse_dncnn"
    assert main(["train", "--list-configs", "table4/dncnn"]) == 2
    assert "--list-configs takes no config" in capsys.readouterr().err
    assert main(["train"]) == 2 and "the config is required" in capsys.readouterr().err


def test_parse_overrides():
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "d=hello", "e=null"]) == \
        {"a": {"b": 3, "c": [1, 2]}, "d": "hello", "e": None}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    cfg = CONFIG_DIR / "table4/dncnn.yaml"
    rc = main(["train", str(cfg), "train.lr=abc", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.lr: expected float, got str" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written before validation passed
    rc = main(["train", str(cfg), "model.name=nosuchnet", "--check"])
    assert rc == 2 and "model.name: unknown model 'nosuchnet'" in capsys.readouterr().err
    rc = main(["train", str(tmp_path / "missing.yaml")])
    assert rc == 2 and "config file not found" in capsys.readouterr().err


def test_cli_check_prints_resolved_config(capsys):
    rc = main(["train", str(CONFIG_DIR / "table4/converse_dncnn.yaml"), "preset=cpu", "--check"])
    out = capsys.readouterr().out
    assert rc == 0
    resolved = yaml_load(out)
    assert resolved["name"] == "table4_converse_dncnn" and resolved["data"]["batch_size"] == 4
