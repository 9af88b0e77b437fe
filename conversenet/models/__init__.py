"""The networks of the paper and their baselines, a registry, and checkpoint loading.

Every model has a class attribute ``task`` ("denoise", "sr" or "deblur") and instance
attributes ``in_channels``, ``scale`` (1 except for SR) and ``needs_kernel`` (True for
the non-blind deblurring models, whose forward is ``forward(x, kernel)``).
"""

from .deblur import ConverseNet, ConverseUSRNet, ConvNet, ConvUSRNet, KernelConverse, KernelNet
from .denoise import ConvDnCNN, ConverseDnCNN, ConvTDnCNN, DnCNN
from .registry import create, list_models, model_info, register_model
from .unet import ConverseUNet
from .sr import UPSAMPLERS, ConverseSRResNet, ConvSRResNet, ConvTSRResNet, SRResNet
from .weights import WeightsError

__all__ = [
    "ConverseDnCNN", "ConvDnCNN", "ConvTDnCNN", "DnCNN", "ConverseUNet",
    "SRResNet", "ConverseSRResNet", "ConvSRResNet", "ConvTSRResNet", "UPSAMPLERS",
    "ConverseNet", "ConvNet", "ConverseUSRNet", "ConvUSRNet", "KernelNet", "KernelConverse",
    "create", "list_models", "model_info", "register_model", "WeightsError",
]
