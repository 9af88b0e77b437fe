"""Stateless operators: the math of Converse2D and its forward model."""

from .converse import (
    FFT_SIZES,
    PADDING_MODES,
    X0_MODES,
    conv_down,
    converse2d,
    converse_filter,
    fft_pads,
    kernel_otf,
)
from ._matrix_dft import export_active, export_mode
from .converse_nd import converse1d, converse3d

__all__ = ["converse2d", "conv_down", "converse_filter", "kernel_otf", "PADDING_MODES", "X0_MODES", "FFT_SIZES", "fft_pads",
           "converse1d", "converse3d", "export_mode", "export_active"]
