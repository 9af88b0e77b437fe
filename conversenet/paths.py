"""Where data and weights are looked up (configurable; nothing is bundled).

* ``CONVERSENET_DATA``: data root holding ``testsets/``, ``trainsets/``, ``kernels/``.
  Default: ``../shared/data`` relative to the current directory or to the source
  checkout, when it exists.
* ``CONVERSENET_WEIGHTS_DIR``: folder with the authors' checkpoints (see
  :mod:`conversenet.models.weights`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

_CHECKOUT = Path(__file__).resolve().parent.parent


def _first_existing(*cands: Path) -> Optional[Path]:
    for c in cands:
        if c.is_dir():
            return c
    return None


def data_root() -> Optional[Path]:
    """The data root, or None when neither the variable nor a default folder exists."""
    env = os.environ.get("CONVERSENET_DATA")
    if env:
        return Path(env)
    return _first_existing(Path.cwd().parent / "shared" / "data", _CHECKOUT.parent / "shared" / "data")


def weights_dir() -> Optional[Path]:
    """Folder named by CONVERSENET_WEIGHTS_DIR, or None."""
    env = os.environ.get("CONVERSENET_WEIGHTS_DIR")
    return Path(env) if env else None


def default_official_weights_dir() -> Optional[Path]:
    """CONVERSENET_WEIGHTS_DIR, else ../shared/weights/official beside a checkout (dev use)."""
    return weights_dir() or _first_existing(
        Path.cwd().parent / "shared" / "weights" / "official",
        _CHECKOUT.parent / "shared" / "weights" / "official",
    )
