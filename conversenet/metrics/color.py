"""Colour conversions used by the metrics (BT.601 luma as MATLAB's ``rgb2ycbcr``).

MATLAB's ``rgb2ycbcr`` maps RGB in [0, 1] to the "studio swing" range::

    Y = 16 + 65.481 R + 128.553 G + 24.966 B        (Y in [16, 235] on the 0..255 scale)

Super-resolution papers report PSNR/SSIM on this Y channel.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_positive_number

__all__ = ["rgb_to_y", "Y_COEFFS"]

#: Weights of R, G, B (inputs in [0, 1]) in MATLAB's ``rgb2ycbcr`` luma row.
Y_COEFFS = (65.481, 128.553, 24.966)


def rgb_to_y(img, input_range: float = 255.0, round_y: bool = False) -> np.ndarray:
    """BT.601 luma of an RGB image, as MATLAB ``rgb2ycbcr`` computes it.

    Args:
        img: numpy array (H, W, 3) RGB (channel last), any real dtype, values in
            ``[0, input_range]``.
        input_range: the value of white in ``img`` (255 for uint8-like data, 1 for [0, 1]).
        round_y: round Y to integers, as MATLAB (and KAIR's ``rgb2ycbcr``) do when the input
            is uint8. ``False`` keeps the exact float value (BasicSR's ``to_y_channel``).

    Returns:
        float64 array (H, W) with Y on the 0..255 scale (16 for black, 235 for white).

    Example:
        >>> import numpy as np
        >>> float(rgb_to_y(np.ones((1, 1, 3)), input_range=1.0)[0, 0])  # white
        235.0
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"img must have shape (H, W, 3), got {arr.shape}")
    check_positive_number("input_range", input_range)
    rgb = arr.astype(np.float64) / float(input_range)
    y = 16.0 + rgb @ np.asarray(Y_COEFFS, dtype=np.float64)
    return np.round(y) if round_y else y
