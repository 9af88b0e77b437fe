"""Layers: Converse2d (and Converse1d/3d, ConverseUpsample), LayerNorm2d and the converse block."""

from .converse import KERNEL_INITS, SPATIAL_OPS, Converse2d, ConverseBlock, LayerNorm2d, clear_workspace
from .converse_nd import Converse1d, Converse3d
from .upsample import ConverseUpsample

__all__ = ["Converse2d", "ConverseBlock", "LayerNorm2d", "KERNEL_INITS", "SPATIAL_OPS", "clear_workspace",
           "Converse1d", "Converse3d", "ConverseUpsample"]
