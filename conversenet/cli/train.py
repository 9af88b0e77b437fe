"""``conversenet train CONFIG.yaml [key=value ...] [--resume [CKPT]] [--out DIR]``.

Also under torchrun: ``torchrun --nproc_per_node=2 -m conversenet train CONFIG.yaml``.
Exit status: 0 finished, 130 stopped by SIGINT/SIGTERM after saving ``last.pth``, 2 on a
configuration or input error (one line, no traceback).
"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model from a YAML config (configs/...), resumable, torchrun-aware",
        description="Train a model from a YAML config. Overrides are dotted KEY=VALUE pairs parsed as "
                    "YAML, e.g. preset=cpu train.total_iter=200 data.num_workers=0.")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. preset=cpu")
    p.add_argument("--out", default=None, help="run folder (default: out_dir of the config, else runs/<name>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from OUT/last.pth (or the checkpoint given)")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a checkpoint")
    p.add_argument("--check", action="store_true", help="validate the config, print it resolved, and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    p.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from . import CLIError
    from ..train import ConfigError, config_to_dict, load_config, train

    path = Path(args.config)
    if not path.is_file():
        raise CLIError(f"config file not found: {path}")
    try:
        cfg = load_config(path, args.overrides)
        if args.check:
            from ..train.trainer import build_model

            build_model(cfg)
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.quiet:
            cfg.log.progress = False
        return train(cfg, out_dir=args.out, resume=args.resume, overwrite=args.overwrite, verbose=not args.quiet)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        raise CLIError(str(e)) from None
