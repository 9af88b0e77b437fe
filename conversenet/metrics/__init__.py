"""Image-quality metrics: PSNR and SSIM with the field's conventions, BT.601 luma.

>>> from conversenet.metrics import psnr, ssim, rgb_to_y
"""

from .color import Y_COEFFS, rgb_to_y
from .psnr_ssim import gaussian_window, psnr, ssim

__all__ = ["psnr", "ssim", "rgb_to_y", "gaussian_window", "Y_COEFFS"]
