"""The model contract: what every restoration network of the package declares about itself.

Every network in :mod:`conversenet.models` subclasses :class:`RestorationModel`, which
declares, as attributes rather than things to probe for:

* ``task``: "denoise", "sr" or "deblur" (class attribute);
* ``takes_kernel``: whether the forward pass takes a blur kernel (class attribute; the
  non-blind deblurring networks); ``blur_kernel_size`` is then the side k of that kernel;
* ``in_channels`` / ``out_channels`` and ``scale`` (instance attributes);
* ``min_input_size``: the smallest input height/width the network accepts;
* one call for inference, :meth:`RestorationModel.restore` ``(x, kernel=None)``.

A module of the user's own that only carries (some of) these attributes is accepted
wherever a model is: :func:`as_restoration_model` wraps it once, in a
:class:`ModuleAdapter`, which reads its attributes in one place (this module).

Example:
    >>> import torch
    >>> from conversenet.models import create
    >>> net = create("converse_dncnn", width=4, num_blocks=1).eval()
    >>> net.task, net.in_channels, net.out_channels, net.scale, net.takes_kernel
    ('denoise', 1, 1, 1, False)
    >>> net.restore(torch.rand(1, 1, 16, 16)).shape
    torch.Size([1, 1, 16, 16])
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["TASKS", "RestorationModel", "ModuleAdapter", "as_restoration_model", "class_contract"]

#: The tasks a restoration model can declare.
TASKS = ("denoise", "sr", "deblur")


class RestorationModel(nn.Module):
    """Base class of the package's restoration networks (see the module docstring).

    Subclasses set the class attributes ``task`` and (for non-blind deblurring)
    ``takes_kernel = True``, and in ``__init__`` the instance attributes ``in_channels``,
    ``scale`` (default 1) and, when they take a kernel, ``blur_kernel_size``. Their
    ``forward`` is ``forward(x)`` or, with ``takes_kernel``, ``forward(x, kernel)``;
    :meth:`restore` is the one signature callers use for both.
    """

    task: str = ""
    takes_kernel: bool = False
    blur_kernel_size: Optional[int] = None
    in_channels: int
    scale: int = 1
    #: False only for a wrapped module that names no input channels (3 is then assumed)
    declares_channels: bool = True

    @property
    def out_channels(self) -> int:
        """Channels of the output (the package's networks keep the input's)."""
        return self.in_channels

    @property
    def needs_kernel(self) -> bool:
        """Older name of :attr:`takes_kernel` (kept for existing code)."""
        return self.takes_kernel

    @property
    def min_input_size(self) -> int:
        """Smallest input height/width accepted: circular padding (of a Converse2d or a
        Conv2d) must not exceed the image, an unpadded Converse2d needs
        ``side >= k - 2 * padding``, and the blur-kernel data step needs
        ``side >= blur_kernel_size``."""
        from ..nn import Converse2d

        need = int(self.blur_kernel_size or 1) if self.takes_kernel else 1
        for m in self.modules():
            if isinstance(m, Converse2d) and m.weight is not None:
                k, pad = max(m.kernel_size), int(m.padding)
                if m.padding_mode == "circular":
                    need = max(need, pad)
                need = max(need, k - 2 * pad)
            elif isinstance(m, nn.Conv2d) and m.padding_mode == "circular":
                # torch's circular padding may not wrap around more than once
                if m.padding == "same":
                    pad = max(-(-d * (k - 1) // 2) for d, k in zip(m.dilation, m.kernel_size))
                else:
                    pad = max(m.padding)
                need = max(need, pad)
        return max(need, 1)

    def restore(self, x: torch.Tensor, kernel: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The network on ``x`` (N, in_channels, H, W) -> (N, out_channels, H*scale, W*scale).

        ``kernel``: the blur kernel, (k, k), (1, 1, k, k) or (N, 1, k, k), required exactly
        when :attr:`takes_kernel` (moved to x's device and dtype, repeated over the batch).
        No ``torch.no_grad`` here: callers choose.
        """
        return self(*self.inputs(x, kernel))

    def inputs(self, x: torch.Tensor, kernel: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        """The positional arguments of ``forward`` for image ``x`` and an optional blur kernel:
        ``(x,)`` or ``(x, kernel)`` (see :meth:`restore`). For callers that must call the
        module itself (a DistributedDataParallel wrapper, a compiled module)."""
        if not self.takes_kernel:
            if kernel is not None:
                raise ValueError(f"kernel was given but {self.describe()} does not take a blur kernel")
            return (x,)
        if kernel is None:
            raise ValueError(f"{self.describe()} needs a blur kernel (kernel=...)")
        k = kernel.to(x.device, x.dtype)
        if k.dim() == 2:
            k = k[None, None]
        if k.dim() == 4 and k.shape[0] == 1 and x.shape[0] > 1:
            k = k.expand(x.shape[0], -1, -1, -1)
        return (x, k)

    def describe(self) -> str:
        """The class name, for messages."""
        return type(self).__name__


class ModuleAdapter(RestorationModel):
    """A user's ``nn.Module`` seen through the model contract (see :func:`as_restoration_model`).

    The wrapped module keeps its parameters (``adapter.module``); attributes it lacks get
    the defaults a plain image-to-image network has: no kernel, scale 1. ``in_channels``
    falls back to ``channels`` and then to 3 (RGB), ``task`` to the one the caller asks for.
    """

    def __init__(self, module: nn.Module, task: Optional[str] = None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(module).__name__}")
        self.module = module
        # the one place where a foreign module's capabilities are read
        self.task = getattr(module, "task", None) or task or ""
        self.takes_kernel = bool(getattr(module, "takes_kernel", getattr(module, "needs_kernel", False)))
        ch = getattr(module, "in_channels", None)
        if ch is None:
            ch = getattr(module, "channels", None)
        self.declares_channels = ch is not None
        self.in_channels = int(ch) if ch is not None else 3
        self.scale = int(getattr(module, "scale", 1) or 1)
        ks = getattr(module, "blur_kernel_size", None)
        self.blur_kernel_size = int(ks) if ks is not None else (7 if self.takes_kernel else None)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.module(*args)

    def describe(self) -> str:
        return type(self.module).__name__


def as_restoration_model(model: nn.Module, task: Optional[str] = None) -> RestorationModel:
    """``model`` itself when it follows the contract, else a :class:`ModuleAdapter` around it.

    Args:
        model: any ``nn.Module``.
        task: the task assumed when a foreign module declares none.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if isinstance(model, RestorationModel):
        return model
    return ModuleAdapter(model, task)


def class_contract(cls: type) -> Tuple[Optional[str], bool]:
    """``(task, takes_kernel)`` that a model class declares, without building it.

    For a class of the user's own (registered with
    :func:`~conversenet.models.register_model`) the class attributes ``task`` and
    ``takes_kernel`` (or the older ``needs_kernel``) are read here; absent ones read as
    ``None`` / ``False``.
    """
    if isinstance(cls, type) and issubclass(cls, RestorationModel):
        return (cls.task or None), bool(cls.takes_kernel)
    task = getattr(cls, "task", None)
    takes = getattr(cls, "takes_kernel", getattr(cls, "needs_kernel", False))
    return task, takes is True
