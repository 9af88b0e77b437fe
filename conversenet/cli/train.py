"""``conversenet train CONFIG [key=value ...] [--resume [CKPT]] [--out DIR]``.

CONFIG is a YAML file or the name of a config shipped with the package, e.g.
``table4/converse_dncnn`` (``.yaml`` optional); a path to an existing file wins over a
name. ``conversenet train --list-configs`` prints the packaged names.

``conversenet train RUN/best.pth --export OUT.pth`` trains nothing: it writes the model
weights of a training checkpoint (the EMA weights when the run kept them) as a plain
float32 state dict, the format ``conversenet eval --weights OUT.pth`` and
``create(name, pretrained=OUT.pth)`` read; ``OUT.safetensors`` writes the same tensors in
the safetensors format (no pickle), read by the same commands.

Configs name registered models only; a config never imports or calls code. To train a
model of your own, register it (``conversenet.models.register_model``) in a module and
pass ``--import MODULE``: that module is imported, i.e. its code runs, before the config
is read. Checkpoints are loaded with ``torch.load(weights_only=True)`` only.

Fine-tuning: ``"model.args={pretrained: builtin}"`` (or ``official``, or a weights file)
starts a new run from those weights; ``--resume`` then reads its checkpoint, not that file.

Also under torchrun: ``torchrun --nproc_per_node=2 -m conversenet train CONFIG.yaml``.
Exit status: 0 finished, 130 / 143 stopped by SIGINT / SIGTERM after saving ``last.pth``, 2 on
a configuration or input error, 1 when a file cannot be written (full disk, read-only folder;
the previous ``last.pth`` stays intact), each with one line and no traceback. ``--check``
validates the config, builds the model and checks that the data paths exist.
"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model from a YAML config (e.g. table4/converse_dncnn), resumable, torchrun-aware",
        description="Train a model from a YAML config: a file, or the name of a packaged config such as "
                    "table4/converse_dncnn (--list-configs prints them). Overrides are dotted KEY=VALUE "
                    "pairs parsed as YAML, e.g. preset=cpu train.total_iter=200 data.num_workers=0.")
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config file or packaged config name (e.g. table4/converse_dncnn); "
                        "with --export, a training checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. preset=cpu")
    p.add_argument("--out", default=None, help="run folder (default: out_dir of the config, else runs/<name>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from OUT/last.pth (or the checkpoint given); an edited train.lr / "
                        "milestones / gamma or a new train.ema_decay applies from the resumed iteration on")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a checkpoint")
    p.add_argument("--check", action="store_true", help="validate the config, print it resolved, and exit")
    p.add_argument("--export", default=None, metavar="OUT.pth",
                   help="do not train: write the weights of the checkpoint given as CONFIG (e.g. RUN/best.pth) "
                        "as a plain float32 state dict to OUT.pth (or OUT.safetensors)")
    p.add_argument("--no-ema", dest="ema", action="store_false", default=None,
                   help="with --export: take the raw model weights even if the run kept an EMA")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    p.add_argument("--list-configs", action="store_true",
                   help="print the names of the configs shipped with the package and exit")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import the Python module MODULE first (runs its code: only name modules you trust), "
                        "e.g. one that registers models of your own with conversenet.models.register_model; "
                        "may be repeated")
    p.set_defaults(func=run)


def _import_user_modules(modules) -> None:
    """``--import MODULE``: the user's own code, run on purpose (it may register models)."""
    import importlib
    import os
    import sys

    from . import CLIError

    if not modules:
        return
    # modules in the current folder are found too, but after everything installed: a file in
    # the current folder never shadows a library, and the path is restored afterwards
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        for mod in modules:
            try:
                importlib.import_module(mod)
            except ImportError as e:
                raise CLIError(f"--import {mod}: cannot import it: {e}") from None
            except Exception as e:  # the module's own code failed
                raise CLIError(f"--import {mod}: importing it raised {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def run(args) -> int:
    import yaml

    from . import CLIError
    from ..train import ConfigError, config_to_dict, list_configs, load_config, train

    from ..train.checkpoint import CheckpointError

    if args.list_configs:
        if args.config is not None or args.overrides or args.export is not None:
            raise CLIError("--list-configs takes no config, overrides or --export")
        print("\n".join(list_configs()))
        return 0
    if args.config is None:
        raise CLIError("the config is required (a YAML file or a packaged name; --list-configs prints the names)")
    if args.export is not None:
        return _export(Path(args.config), Path(args.export), args)
    _import_user_modules(args.imports)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.check:
            from ..train.trainer import build_model

            build_model(cfg)
            _check_data_paths(cfg)
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.quiet:
            cfg.log.progress = False
        return train(cfg, out_dir=args.out, resume=args.resume, overwrite=args.overwrite, verbose=not args.quiet)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError) as e:
        raise CLIError(str(e)) from None


def _check_data_paths(cfg) -> None:
    """``--check``: the training and validation folders exist and hold images, and the
    validation kernel file exists (FileNotFoundError naming the config key otherwise)."""
    from ..train.data import list_images, resolve_folder
    from ..train.trainer import _resolve_file

    list_images(resolve_folder(cfg.data.train, "data.train"), "data.train")
    if cfg.data.val:
        list_images(resolve_folder(cfg.data.val, "data.val"), "data.val")
    if cfg.degradation.val_kernel:
        _resolve_file(cfg.degradation.val_kernel, "degradation.val_kernel")


def _export(ckpt: Path, out: Path, args) -> int:
    from . import CLIError
    from ..train.checkpoint import export_weights, load_checkpoint

    if args.overrides or args.resume or args.check or args.imports:
        raise CLIError("--export takes only a checkpoint and the output file (no overrides, --resume, --check "
                       "or --import)")
    if out.suffix not in (".pth", ".safetensors"):
        raise CLIError(f"--export: the output must end in .pth or .safetensors, got {out}")
    if not out.parent.is_dir():
        raise CLIError(f"--export: folder {out.parent} does not exist")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--export: {out} exists (use --overwrite)")
    try:
        if out.resolve() == ckpt.resolve():
            raise CLIError("--export: the output would replace the checkpoint itself")
        ema = False if args.ema is False else None
        state = export_weights(ckpt, out, ema=ema)
        ck = load_checkpoint(ckpt)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    n = sum(v.numel() for v in state.values() if v.is_floating_point())
    which = "EMA" if (ema is None and ck.get("ema") is not None) else "model"
    if not args.quiet:
        print(f"wrote {out}: {ck.get('model_name')} {which} weights from iteration {ck.get('iteration')} "
              f"(best val PSNR {float(ck.get('best_psnr', float('nan'))):.2f} dB @ {ck.get('best_iter')}), "
              f"{len(state)} tensors, {n} values, {out.stat().st_size / 1e6:.2f} MB")
    return 0
