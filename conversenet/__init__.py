"""conversenet: reverse convolution (Converse2D) and the ConverseNet family of restoration models.

Layers: ``conversenet.functional`` (math) -> ``conversenet.nn`` (modules) ->
``conversenet.models`` -> ``conversenet.data`` -> ``conversenet.metrics`` ->
training / evaluation -> ``conversenet.cli``.
"""

from . import functional, nn

__version__ = "0.1.0"

__all__ = ["functional", "nn", "__version__"]
