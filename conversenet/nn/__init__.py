"""Layers: Converse2d, LayerNorm2d and the converse block."""

from .converse import KERNEL_INITS, SPATIAL_OPS, Converse2d, ConverseBlock, LayerNorm2d, clear_workspace

__all__ = ["Converse2d", "ConverseBlock", "LayerNorm2d", "KERNEL_INITS", "SPATIAL_OPS", "clear_workspace"]
