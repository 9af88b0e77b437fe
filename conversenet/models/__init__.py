"""The networks of the paper and their baselines, a registry, and checkpoint loading.

Every network subclasses :class:`~conversenet.models.base.RestorationModel`, which declares
``task`` ("denoise", "sr" or "deblur"), ``in_channels`` / ``out_channels``, ``scale`` (1
except for SR), ``takes_kernel`` (True for the non-blind deblurring models, whose forward is
``forward(x, kernel)``), ``min_input_size`` and one inference call ``restore(x, kernel=None)``.
A user's own module is wrapped once by :func:`~conversenet.models.base.as_restoration_model`.
"""

from .base import ModuleAdapter, RestorationModel, as_restoration_model
from .deblur import ConverseNet, ConverseUSRNet, ConvNet, ConvUSRNet, KernelConverse, KernelNet
from .denoise import ConvDnCNN, ConverseDnCNN, ConvTDnCNN, DnCNN
from .registry import LoadedModel, create, list_models, load_weights, model_info, register_model
from .unet import ConverseUNet
from .sr import UPSAMPLERS, ConverseSRResNet, ConvSRResNet, ConvTSRResNet, SRResNet
from .weights import WeightSet, WeightsError, get_weights, list_weights

__all__ = [
    "ConverseDnCNN", "ConvDnCNN", "ConvTDnCNN", "DnCNN", "ConverseUNet",
    "SRResNet", "ConverseSRResNet", "ConvSRResNet", "ConvTSRResNet", "UPSAMPLERS",
    "ConverseNet", "ConvNet", "ConverseUSRNet", "ConvUSRNet", "KernelNet", "KernelConverse",
    "RestorationModel", "ModuleAdapter", "as_restoration_model",
    "create", "load_weights", "LoadedModel", "list_models", "model_info", "register_model",
    "WeightSet", "WeightsError", "get_weights", "list_weights",
]
