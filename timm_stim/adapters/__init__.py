"""Model-family adapters: which blocks form the residual stages, and what a dropped block computes."""
from ._registry import find_adapter, get_adapter, list_adapters, register_adapter, supported_families
from .base import SkipFunction, StageAdapter, identity, skip_through_activation, split_stages
from .resnet import LegacySENetAdapter, ResNetAdapter, ResNetV2Adapter, TResNetAdapter
from .byobnet import ByobNetAdapter
from .convnext import ConvNeXtAdapter
from .cspnet import CspNetAdapter
from .nfnet import NormFreeNetAdapter
from .vit import VisionTransformerAdapter
