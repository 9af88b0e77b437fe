"""Images and degradations: file IO, conversions, MATLAB bicubic resize, noise, blur, kernels.

Modules: :mod:`~conversenet.data.io` (read/write files, numpy <-> tensor),
:mod:`~conversenet.data.imresize` (MATLAB ``imresize``, ``modcrop``),
:mod:`~conversenet.data.degradations` (AWGN, circular blur, downsampling, USRNet pipeline),
:mod:`~conversenet.data.kernels` (Gaussian/motion kernels, loading, ``make_kernel`` specs),
:mod:`~conversenet.data.convert` (numpy / PIL / tensor images <-> float (H, W, C)),
:mod:`~conversenet.data.sample` (a generated sample scene).
scipy is only imported when a ``.mat`` kernel is loaded.

>>> from conversenet.data import read_image, imresize, add_awgn_np
"""

from .degradations import (
    add_awgn,
    add_awgn_np,
    blur_circular,
    blur_wrap_np,
    downsample,
    downsample_np,
    usrnet_degrade,
    usrnet_degrade_np,
)
from .imresize import cubic, imresize, modcrop, resize_weights
from .io import (
    ALPHA_MODES,
    IMAGE_EXTENSIONS,
    ImageInfo,
    ImageReadError,
    chroma_subsampling,
    from_float,
    gray_to_rgb,
    list_images,
    probe_image,
    read_image,
    rgb_to_gray,
    to_float,
    to_image,
    to_tensor,
    write_image,
)
from .convert import from_float_hwc, to_float_hwc
from .kernels import (
    KernelError,
    anisotropic_gaussian_kernel,
    check_kernel,
    gaussian_kernel,
    load_kernel,
    make_kernel,
    motion_kernel,
)
from .sample import sample_image

__all__ = [
    # io
    "ImageReadError", "ImageInfo", "IMAGE_EXTENSIONS", "ALPHA_MODES", "list_images", "read_image", "probe_image",
    "chroma_subsampling", "write_image",
    "to_float", "from_float", "to_tensor", "to_image", "gray_to_rgb", "rgb_to_gray",
    # resize
    "imresize", "modcrop", "cubic", "resize_weights",
    # degradations
    "add_awgn_np", "add_awgn", "blur_wrap_np", "blur_circular", "downsample_np", "downsample",
    "usrnet_degrade_np", "usrnet_degrade",
    # kernels
    "KernelError", "check_kernel", "gaussian_kernel", "anisotropic_gaussian_kernel", "motion_kernel", "load_kernel",
    "make_kernel",
    # any image kind <-> float (H, W, C); the generated sample scene
    "to_float_hwc", "from_float_hwc", "sample_image",
]
