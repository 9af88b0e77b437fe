"""The per-task table: everything that differs between denoising, super-resolution and
deblurring lives in one :class:`Task` row of :data:`TASKS`.

A row says which weight set is the task's default (by blind / non-blind mode, and by image
channels once there are grey and colour defaults), how the published evaluation protocol
degrades a ground truth and measures the result (:class:`Protocol`, built by
:meth:`Task.protocol`), and which command-line options apply (``--sigma``, ``--scale``,
``--kernel``). :mod:`conversenet.evaluate`, :mod:`conversenet.restore`, the restore and
eval commands and the web page read the table instead of testing ``task == ...``.

Example:
    >>> t = get_task("sr")
    >>> t.default_model(), t.protocol(scale=4).crop_border, t.options
    ('converse_srresnet_official', 4, ('scale',))
    >>> get_task("deblur").default_model(blind=True)
    'conversenet_official'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from .data import add_awgn_np, imresize, usrnet_degrade_np

__all__ = ["Protocol", "Task", "TASKS", "TASK_NAMES", "get_task"]


@dataclass(frozen=True)
class Protocol:
    """What is done to each image and how it is measured.

    Attributes:
        task: "denoise", "sr" or "deblur".
        sigma: noise standard deviation in 0..255 units (0 for SR).
        scale: SR factor (1 otherwise).
        crop_border: pixels removed from each side before measuring.
        test_y: also report PSNR/SSIM on the Y channel (SR).
        round_y: Y rounded to integers (MATLAB ``rgb2ycbcr`` on uint8).
        kernel_name: the blur kernel's name or file (deblur), else "".
        kernel: (k, k) float64 blur kernel (deblur), else None.
        multiple: the ground truth is cropped to a multiple of this (1 = no crop).
        seed: numpy seed reset before every image's noise.
    """

    task: str
    sigma: float = 0.0
    scale: int = 1
    crop_border: int = 0
    test_y: bool = False
    round_y: bool = True
    kernel_name: str = ""
    kernel: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    multiple: int = 1
    seed: int = 0

    def describe(self) -> str:
        """One line for logs and reports."""
        return get_task(self.task).describe(self)

    def to_dict(self) -> Dict:
        d = asdict(self)
        d.pop("kernel")
        return d


def _describe_denoise(p: Protocol) -> str:
    return f"denoise: AWGN sigma={p.sigma:g} (numpy seed {p.seed} per image), uint8 metrics, no border"


def _describe_sr(p: Protocol) -> str:
    return (f"sr x{p.scale}: modcrop {p.multiple}, MATLAB bicubic 1/{p.scale} (antialiasing), "
            f"metrics border {p.crop_border}, RGB and Y (Y {'rounded' if p.round_y else 'unrounded'})")


def _describe_deblur(p: Protocol) -> str:
    return (f"deblur: modcrop {p.multiple}, wrap blur with {p.kernel_name}, AWGN sigma={p.sigma:g} "
            f"(seed {p.seed}), RGB metrics border {p.crop_border}")


def _degrade_denoise(gt: np.ndarray, p: Protocol) -> np.ndarray:
    return add_awgn_np((gt / 255.0).astype(np.float32), p.sigma, p.seed)


def _degrade_sr(gt: np.ndarray, p: Protocol) -> np.ndarray:
    return imresize((gt / 255.0).astype(np.float32), 1.0 / p.scale)


def _degrade_deblur(gt: np.ndarray, p: Protocol) -> np.ndarray:
    return usrnet_degrade_np(gt, p.kernel, 1, p.sigma, p.seed)


def channel_kind(channels: int) -> int:
    """1 for grey images (1 channel, or 2: grey + alpha), 3 for colour ones (3, or 4 with
    alpha): the key of the per-kind defaults (``default_1`` / ``default_3``)."""
    return 1 if channels in (1, 2) else 3


@dataclass(frozen=True)
class Task:
    """One row of the task table.

    Attributes:
        name: "denoise", "sr" or "deblur".
        title: a few words for messages ("denoising").
        defaults: default weight set (a :func:`conversenet.models.create` name) by mode:
            ``"default"`` and, for deblurring, ``"blind"``; ``"default_1"`` / ``"default_3"``:
            the default for grey / colour images when the caller gives neither a model nor
            a noise level (denoising).
        eval_sigma: noise (0..255) of the published protocol when none is given; 0: none.
        scaled: the output is ``scale`` times larger (SR); ``--scale`` applies.
        uses_kernel: the degradation is a blur with a given kernel; ``--kernel`` applies.
        multiple: fixed crop multiple of the ground truth (None: the scale).
        border: fixed metric border (None: the scale).
        test_y: also measure on the Y channel (colour images).
        noisy_input: the degradation is white Gaussian noise of ``--sigma`` alone (denoising):
            the layer visualisation adds that noise to its clean input, and a ``--sigma`` other
            than the one the weights were trained for is warned about.
        degrade_fn: ``(gt uint8 (H, W, C), Protocol) -> float32 low-quality image``.
        describe: ``Protocol -> one line``.
    """

    name: str
    title: str
    defaults: Mapping[str, str]
    eval_sigma: float
    scaled: bool
    uses_kernel: bool
    multiple: Optional[int]
    border: Optional[int]
    test_y: bool
    noisy_input: bool
    degrade_fn: Callable[[np.ndarray, Protocol], np.ndarray]
    describe: Callable[[Protocol], str]

    @property
    def has_blind_mode(self) -> bool:
        """The task has a blind and a non-blind (kernel-taking) network (deblurring)."""
        return "blind" in self.defaults

    @property
    def picks_by_channels(self) -> bool:
        """The default weight set depends on the image's channels (grey / colour blind
        denoisers) when no model or noise level is given."""
        return self.default_model(channels=1) != self.default_model(channels=3)

    @property
    def options(self) -> Tuple[str, ...]:
        """The command-line options that apply: ``sigma`` (noise), ``scale``, ``kernel``."""
        return tuple(o for o, on in (("sigma", self.eval_sigma > 0), ("scale", self.scaled),
                                     ("kernel", self.uses_kernel)) if on)

    def default_model(self, blind: bool = False, channels: Optional[int] = None) -> str:
        """The default weight set; ``blind`` picks the blind deblurring one. ``channels``
        (1 or 3) prefers a ``"default_<channels>"`` entry when the row has one (denoising:
        the blind grey / colour denoisers, used when no model or noise level is given).

        >>> get_task("denoise").default_model(channels=3), get_task("denoise").default_model()
        ('converse_unet_blind_color', 'converse_dncnn_official')
        """
        mode = "blind" if blind and "blind" in self.defaults else "default"
        if channels is not None and f"{mode}_{channels}" in self.defaults:
            return self.defaults[f"{mode}_{channels}"]
        return self.defaults[mode]

    def protocol(self, sigma: Optional[float] = None, scale: int = 1, kernel: Optional[np.ndarray] = None,
                 kernel_name: str = "", seed: int = 0, round_y: bool = True) -> Protocol:
        """The published protocol of this task (``sigma`` None: :attr:`eval_sigma`)."""
        s = int(scale) if self.scaled else 1
        return Protocol(
            self.name, sigma=float(self.eval_sigma if sigma is None else sigma) if self.eval_sigma > 0 else 0.0,
            scale=s, crop_border=s if self.border is None else self.border, test_y=self.test_y, round_y=round_y,
            kernel_name=kernel_name, kernel=kernel, multiple=s if self.multiple is None else self.multiple,
            seed=seed)

    def degrade(self, gt: np.ndarray, protocol: Protocol) -> np.ndarray:
        """The protocol's low-quality image of an already cropped uint8 ground truth."""
        return self.degrade_fn(gt, protocol)


TASKS: Dict[str, Task] = {
    # Table 4: AWGN, seed 0 per image, uint8 metrics without border
    # without a model or noise level, images are denoised by the blind model of their channels
    "denoise": Task("denoise", "denoising", {"default": "converse_dncnn_official",
                                             "default_1": "converse_unet_blind_gray",
                                             "default_3": "converse_unet_blind_color"}, eval_sigma=25.0,
                    scaled=False, uses_kernel=False, multiple=1, border=0, test_y=False,
                    noisy_input=True, degrade_fn=_degrade_denoise, describe=_describe_denoise),
    # Table 5: MATLAB bicubic 1/s, border s, RGB and Y
    "sr": Task("sr", "super-resolution", {"default": "converse_srresnet_official"}, eval_sigma=0.0,
               scaled=True, uses_kernel=False, multiple=None, border=None, test_y=True,
               noisy_input=False, degrade_fn=_degrade_sr, describe=_describe_sr),
    # Table 7: crop to 8, wrap blur, noise 2.55, RGB metrics border 1
    "deblur": Task("deblur", "deblurring", {"default": "converse_usrnet_official", "blind": "conversenet_official"},
                   eval_sigma=2.55, scaled=False, uses_kernel=True, multiple=8, border=1, test_y=False,
                   noisy_input=False, degrade_fn=_degrade_deblur, describe=_describe_deblur),
}
#: The task names, in table order.
TASK_NAMES = tuple(TASKS)


def get_task(name: str) -> Task:
    """The row of ``name``.

    Raises:
        ValueError: an unknown task (the message lists the known ones).
    """
    if name not in TASKS:
        raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")
    return TASKS[name]
