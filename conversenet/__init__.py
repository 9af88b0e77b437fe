"""conversenet: reverse convolution (Converse2D) and the ConverseNet family of restoration models.

Layers: ``conversenet.functional`` (math) -> ``conversenet.nn`` (modules) ->
``conversenet.models`` -> ``conversenet.data`` -> ``conversenet.metrics`` ->
training / evaluation -> ``conversenet.cli``.

Global state: every cache and workspace is listed by :func:`caches` and freed by
:func:`clear_caches` (see :mod:`conversenet._caches`); tuning constants live in
:mod:`conversenet._tuning`.
"""

from . import functional, nn
from ._caches import caches, clear_caches

__version__ = "0.1.0"

__all__ = ["functional", "nn", "restore", "caches", "clear_caches", "__version__"]


def __getattr__(name):
    # lazy: ``conversenet.restore(image, task=...)`` loads models/data only when first used
    if name == "restore":
        import importlib

        return importlib.import_module(".restore", __name__)  # a callable module, see restore.py
    raise AttributeError(f"module 'conversenet' has no attribute {name!r}")
