"""Deblurring networks of the paper's Table 7.

Blind: :class:`ConverseNet`, :class:`ConvNet`. Non-blind (``forward(x, kernel)``):
:class:`ConverseUSRNet` (kernel-conditioned Converse2d in feature space, with
:class:`KernelNet`) and :class:`ConvUSRNet` (USRNet-style closed-form data step on the
image itself).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..checks import check_positive_number, lam_from_bias
from ..functional import converse2d
from ._common import BlockStack, block_stack, check_image, check_pos_int
from .base import RestorationModel
from .weights import OFFICIAL_URL, Score, WeightSet, register_weights

__all__ = ["ConverseNet", "ConvNet", "KernelNet", "KernelConverse", "ConverseUSRNet", "ConvUSRNet"]


def _check_kernel(kernel, n: int, size: int) -> torch.Tensor:
    """Validates a blur kernel batch and returns it as (N or 1, 1, size, size)."""
    if not isinstance(kernel, torch.Tensor):
        raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
    if kernel.is_complex() or not kernel.is_floating_point():
        raise TypeError(f"kernel must have a real floating dtype, got {kernel.dtype}")
    if kernel.dim() == 3:
        kernel = kernel.unsqueeze(1)
    if kernel.dim() != 4 or kernel.shape[1] != 1 or tuple(kernel.shape[-2:]) != (size, size):
        raise ValueError(
            f"kernel must have shape (N, {size}, {size}) or (N, 1, {size}, {size}), got {tuple(kernel.shape)}"
        )
    if kernel.shape[0] not in (1, n):
        raise ValueError(f"kernel batch must be 1 or N={n}, got {kernel.shape[0]}")
    return kernel


class ConverseNet(RestorationModel):
    """ConverseNet for blind deblurring (Table 7), the released checkpoint's structure.

    ``conv1`` 1x1 in_channels -> C, then the stack ``p`` of ``num_blocks`` converse blocks
    (3x3 kernels, circular padding 2) applied ``iterations`` times with shared weights,
    then ``conv2`` 1x1 C -> in_channels. 243,267 parameters at the defaults.

    Args:
        in_channels: image channels.
        width: feature channels C.
        num_blocks: converse blocks in ``p``.
        iterations: how many times ``p`` is applied.
        kernel_size, padding, padding_mode, eps, x0, kernel_init: of every Converse2d.

    Shape: (N, in_channels, H, W) -> (N, in_channels, H, W).

    Example:
        >>> import torch
        >>> from conversenet.models import ConverseNet
        >>> ConverseNet(width=8, num_blocks=1, iterations=2)(torch.rand(1, 3, 12, 9)).shape
        torch.Size([1, 3, 12, 9])
    """

    task = "deblur"
    spatial = "converse"

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        num_blocks: int = 7,
        iterations: int = 5,
        kernel_size: int = 3,
        padding: Optional[int] = 2,
        padding_mode: str = "circular",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
    ) -> None:
        super().__init__()
        self.in_channels = check_pos_int("in_channels", in_channels)
        self.iterations = check_pos_int("iterations", iterations)
        self.scale = 1
        self.p = BlockStack(
            block_stack(num_blocks, width, kernel_size, padding, padding_mode, eps, x0, kernel_init, spatial=self.spatial)
        )
        self.conv1 = nn.Conv2d(in_channels, width, 1)
        self.conv2 = nn.Conv2d(width, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        f = self.conv1(x)
        for _ in range(self.iterations):
            f = self.p(f)
        return self.conv2(f)


class ConvNet(ConverseNet):
    """ConvNet (Table 7, blind): :class:`ConverseNet` with every Converse2d replaced by a
    depthwise convolution of the same kernel size ("same" size, ``padding_mode`` boundary).

    Shape: (N, in_channels, H, W) -> (N, in_channels, H, W).

    Example:
        >>> import torch
        >>> from conversenet.models import ConvNet
        >>> ConvNet(width=8, num_blocks=1, iterations=2)(torch.rand(1, 3, 12, 9)).shape
        torch.Size([1, 3, 12, 9])
    """

    spatial = "conv"


class KernelNet(nn.Module):
    """Blur-kernel embedding of Converse-USRNet.

    The k x k kernel is flattened -> ``fc1`` (k^2 -> hidden) -> GELU -> ``fc2`` -> GELU ->
    ``fc3`` (hidden -> out_channels * k^2), reshaped to (out_channels, k, k).

    Shape: kernel (N, k, k) or (N, 1, k, k) -> (N, out_channels, k, k).

    Example:
        >>> import torch
        >>> from conversenet.models import KernelNet
        >>> KernelNet()(torch.rand(2, 7, 7)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(self, kernel_size: int = 7, hidden: int = 64, out_channels: int = 16) -> None:
        super().__init__()
        self.kernel_size = check_pos_int("kernel_size", kernel_size)
        self.out_channels = check_pos_int("out_channels", out_channels)
        self.fc1 = nn.Linear(kernel_size * kernel_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out_channels * kernel_size * kernel_size)
        self.act = nn.GELU()

    def forward(self, kernel: torch.Tensor) -> torch.Tensor:
        if not isinstance(kernel, torch.Tensor):
            raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
        kernel = _check_kernel(kernel, kernel.shape[0], self.kernel_size)
        n, k = kernel.shape[0], self.kernel_size
        h = kernel.reshape(n, k * k).to(self.fc1.weight.dtype)
        h = self.fc3(self.act(self.fc2(self.act(self.fc1(h)))))
        return h.reshape(n, self.out_channels, k, k)


class KernelConverse(nn.Module):
    """Data module of Converse-USRNet: a Converse2d whose kernel is a forward argument.

    Its only weight is ``alpha`` (1, C, 1, 1), the per-channel b of
    ``lam = sigmoid(alpha - 9) + eps`` (eps 1e-3). X0 is the nearest interpolation of the
    input; no padding by default (the blur is circular).

    Shape: x (N, C, H, W), kernel (1 or N, C, k, k) -> (N, C, H*scale, W*scale).

    Example:
        >>> import torch
        >>> from conversenet.models import KernelConverse
        >>> d = KernelConverse(4)
        >>> d(torch.rand(2, 4, 10, 8), torch.rand(2, 4, 7, 7), scale=2).shape
        torch.Size([2, 4, 20, 16])
    """

    def __init__(self, channels: int = 64, eps: float = 1e-3, padding: int = 0,
                 padding_mode: str = "circular", x0: str = "interp") -> None:
        super().__init__()
        check_pos_int("channels", channels)
        self.eps = check_positive_number("eps", eps)
        self.padding = check_pos_int("padding", padding, 0)
        self.padding_mode = padding_mode
        self.x0 = x0
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @property
    def lam(self) -> torch.Tensor:
        return lam_from_bias(self.alpha, self.eps)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor, scale: int = 1) -> torch.Tensor:
        return converse2d(x, kernel, self.lam, scale, self.padding, self.padding_mode, self.x0)


class ConverseUSRNet(RestorationModel):
    """Converse-USRNet for non-blind deblurring (paper Fig. 3c), the released structure.

    ``KernelNet`` embeds the blur kernel into 16 x k x k; per iteration i a 1x1 conv
    ``convs[i]`` (16 -> C) turns it into a C-channel kernel (used as is, not normalised)
    that drives the data module ``d`` (:class:`KernelConverse`, shared λ). Flow:
    ``conv1`` (1x1 in_channels -> C); ``iterations`` times: ``d`` (scale ``scale`` on the
    first iteration, 1 after) then the shared prior ``p`` (converse blocks with
    residual scales ``alpha1``/``alpha2`` initialised to 0); ``conv2`` (1x1 C -> in_channels).
    307,987 parameters at the defaults.

    Args:
        in_channels: image channels.
        width: feature channels C (the data module's channels).
        num_blocks, kernel_size, padding, padding_mode, eps, x0, kernel_init: of the prior.
        iterations: unrolled iterations.
        blur_kernel_size: size k of the input blur kernel (7).
        embed_channels: KernelNet output channels (16).
        data_eps: eps of the data module's λ (1e-3).
        scale: SR factor of the first data step (1 for deblurring).

    Shape: x (N, in_channels, H, W), kernel (N, k, k) or (N, 1, k, k)
    -> (N, in_channels, H*scale, W*scale). H and W must be >= k.

    Example:
        >>> import torch
        >>> from conversenet.models import ConverseUSRNet
        >>> net = ConverseUSRNet(width=8, num_blocks=1, iterations=2)
        >>> net(torch.rand(1, 3, 16, 12), torch.rand(1, 7, 7)).shape
        torch.Size([1, 3, 16, 12])
    """

    task = "deblur"
    takes_kernel = True

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        num_blocks: int = 7,
        iterations: int = 5,
        kernel_size: int = 3,
        padding: Optional[int] = 2,
        padding_mode: str = "circular",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
        blur_kernel_size: int = 7,
        embed_channels: int = 16,
        data_eps: float = 1e-3,
        scale: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = check_pos_int("in_channels", in_channels)
        self.iterations = check_pos_int("iterations", iterations)
        self.scale = check_pos_int("scale", scale)
        self.blur_kernel_size = check_pos_int("blur_kernel_size", blur_kernel_size)
        self.d = KernelConverse(width, data_eps)
        self.p = BlockStack(
            block_stack(num_blocks, width, kernel_size, padding, padding_mode, eps, x0, kernel_init,
                        residual_scale=True)
        )
        self.conv1 = nn.Conv2d(in_channels, width, 1)
        self.conv2 = nn.Conv2d(width, in_channels, 1)
        self.kernelnet = KernelNet(blur_kernel_size, 64, embed_channels)
        self.convs = nn.ModuleList([nn.Conv2d(embed_channels, width, 1) for _ in range(iterations)])

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        kernel = _check_kernel(kernel, x.shape[0], self.blur_kernel_size)
        emb = self.kernelnet(kernel)
        f = self.conv1(x)
        for i, to_kernel in enumerate(self.convs):
            f = self.d(f, to_kernel(emb), self.scale if i == 0 else 1)
            f = self.p(f)
        return self.conv2(f)


class ImageDataStep(nn.Module):
    """USRNet's closed-form data step on the image, with one learnable λ per iteration.

    Iteration i returns ``argmin_x ||y - (x (x) k)|s||^2 + lam_i ||x - z||^2`` per channel,
    with ``lam_i = sigmoid(bias[i] - 9) + eps`` (``bias`` (iterations, C), zeros).

    Shape: y (N, C, H, W), kernel (1 or N, C, k, k), z (N, C, H*s, W*s) or None
    (nearest interpolation of y) -> (N, C, H*s, W*s).
    """

    def __init__(self, channels: int, iterations: int, eps: float = 1e-3, padding_mode: str = "circular") -> None:
        super().__init__()
        self.eps = check_positive_number("eps", eps)
        self.padding_mode = padding_mode
        self.bias = nn.Parameter(torch.zeros(iterations, channels))

    def forward(self, y, kernel, i: int, z: Optional[torch.Tensor] = None, scale: int = 1) -> torch.Tensor:
        lam = lam_from_bias(self.bias[i], self.eps)
        return converse2d(y, kernel, lam, scale, 0, self.padding_mode, "interp" if z is None else z)


class ConvUSRNet(RestorationModel):
    """Conv-USRNet (Table 7, non-blind): USRNet's unrolled scheme with the data step on the
    image and a convolutional prior (our design; the paper gives no details).

    ``z = y``; for i in 0..iterations-1: ``x = d(y, kernel, z)`` (closed form with the true
    kernel, :class:`ImageDataStep`, X0 = z; nearest-upsampled y on the first step when
    ``scale > 1``), then the residual prior ``z = x + conv2(p(conv1(x)))`` where ``p`` is
    ``num_blocks`` converse blocks with depthwise convs (``spatial="conv"``, residual
    scales) shared over iterations. Returns z.

    Args: as :class:`ConverseUSRNet`; ``spatial`` picks the prior's spatial op.

    Shape: x (N, in_channels, H, W), kernel (N, k, k) or (N, 1, k, k)
    -> (N, in_channels, H*scale, W*scale).

    Example:
        >>> import torch
        >>> from conversenet.models import ConvUSRNet
        >>> net = ConvUSRNet(width=8, num_blocks=1, iterations=2)
        >>> net(torch.rand(1, 3, 16, 12), torch.rand(1, 1, 7, 7)).shape
        torch.Size([1, 3, 16, 12])
    """

    task = "deblur"
    takes_kernel = True

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        num_blocks: int = 7,
        iterations: int = 5,
        kernel_size: int = 3,
        padding: Optional[int] = 2,
        padding_mode: str = "circular",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
        blur_kernel_size: int = 7,
        data_eps: float = 1e-3,
        scale: int = 1,
        spatial: str = "conv",
    ) -> None:
        super().__init__()
        self.in_channels = check_pos_int("in_channels", in_channels)
        self.iterations = check_pos_int("iterations", iterations)
        self.scale = check_pos_int("scale", scale)
        self.blur_kernel_size = check_pos_int("blur_kernel_size", blur_kernel_size)
        self.d = ImageDataStep(in_channels, iterations, data_eps)
        self.p = BlockStack(
            block_stack(num_blocks, width, kernel_size, padding, padding_mode, eps, x0, kernel_init,
                        spatial=spatial, residual_scale=True)
        )
        self.conv1 = nn.Conv2d(in_channels, width, 1)
        self.conv2 = nn.Conv2d(width, in_channels, 1)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        kernel = _check_kernel(kernel, x.shape[0], self.blur_kernel_size)
        k = kernel.to(x.dtype).expand(-1, self.in_channels, -1, -1)
        z = None
        for i in range(self.iterations):
            if i == 0 and self.scale == 1:
                z = x
            est = self.d(x, k, i, z, self.scale)
            z = est + self.conv2(self.p(self.conv1(est)))
        return z


# ------------------------------------------------------------------------ weight sets
_EVAL = "conversenet eval --model {model} --weights official --dataset bsd100 --kernel {k} --device cuda"
_LICENCE = "as published by the authors in github.com/cszn/ConverseNet (not redistributed here)"

CONVERSE_USRNET_OFFICIAL = register_weights(WeightSet(
    name="converse_usrnet_official", model="converse_usrnet", task="deblur", channels=3, takes_kernel=True,
    file="converse_usrnet.pth", origin="authors", url=OFFICIAL_URL + "converse_usrnet.pth",
    sha256="729529b8bc8cbda152d6b60734b01032b49c20fcb8b6da2fb33141d9c3378d82",
    scores=tuple(Score(f"bsd100 {k}", {"psnr": p, "ssim": s}, _EVAL.format(model="converse_usrnet", k=k))
                 for k, p, s in (("kernel_1", 32.46, 0.9115), ("kernel_2", 31.20, 0.8861), ("kernel_3", 38.40, 0.9732),
                                 ("kernel_4", 32.21, 0.9047), ("kernel_5", 34.62, 0.9429))),
    source="the paper's authors, released Converse-USRNet (non-blind: takes the 7x7 kernel), RGB, "
           "noise 2.55 (docs/REPRODUCTION.md, Table 7)",
    licence=_LICENCE,
))

CONVERSENET_OFFICIAL = register_weights(WeightSet(
    name="conversenet_official", model="conversenet", task="deblur", channels=3,
    file="conversenet.pth", origin="authors", url=OFFICIAL_URL + "conversenet.pth",
    sha256="603cbb29075178410db9ab6166b247d2ddff32f349c59a7e1763c46feca270bd",
    scores=tuple(Score(f"bsd100 {k}", {"psnr": p, "ssim": s}, _EVAL.format(model="conversenet", k=k))
                 for k, p, s in (("kernel_1", 27.69, 0.8186), ("kernel_2", 24.42, 0.6767), ("kernel_3", 31.28, 0.9295),
                                 ("kernel_4", 27.64, 0.8195), ("kernel_5", 27.32, 0.8320))),
    source="the paper's authors, released ConverseNet (blind), RGB, noise 2.55 (docs/REPRODUCTION.md, Table 7)",
    licence=_LICENCE,
))
