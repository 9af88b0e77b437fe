"""Training: YAML configs, on-the-fly degraded patches, an exactly resumable loop, DDP.

``conversenet train CONFIG [key=value ...] [--resume] [--out DIR]`` drives it from the
command line (also under ``torchrun``); CONFIG is a YAML file or the name of a packaged
config (``table4/converse_dncnn``, see :func:`list_configs`). In Python:

    >>> from conversenet.train import config_from_dict
    >>> config_from_dict({"model": {"name": "converse_dncnn"}, "preset": "cpu",
    ...                   "presets": {"cpu": {"data": {"batch_size": 4}}}}).data.batch_size
    4
"""

from .config import (Config, ConfigError, config_from_dict, config_to_dict, list_configs, load_config,
                     parse_overrides, resolve_config)
from .checkpoint import CheckpointError
from .trainer import EMA, Trainer, build_model, train

__all__ = ["Config", "ConfigError", "CheckpointError", "config_from_dict", "config_to_dict", "load_config",
           "list_configs", "resolve_config", "parse_overrides", "Trainer", "train", "build_model", "EMA"]
