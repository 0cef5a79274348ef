"""Adapters for timm's ResNet-style classes: ResNet, ResNetV2, legacy SENet and TResNet."""
from typing import Dict, List, Type

import torch.nn as nn
from timm.models.res2net import Bottle2neck
from timm.models.resnest import ResNestBottleneck
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from timm.models.resnetv2 import Bottleneck as V2Bottleneck, PreActBasic, PreActBottleneck, ResNetV2
from timm.models.senet import Bottleneck as SENetBottleneck, SENet, SEResNetBlock
from timm.models.sknet import SelectiveKernelBasic, SelectiveKernelBottleneck
from timm.models.tresnet import BasicBlock as TResNetBasic, Bottleneck as TResNetBottleneck, TResNet

from ..errors import UnsupportedModelError
from ._registry import register_adapter
from .base import SkipFunction, StageAdapter, identity, skip_through_activation

__all__ = ['ResNetAdapter', 'ResNetV2Adapter', 'LegacySENetAdapter', 'TResNetAdapter']


def _lookup(table: Dict[Type[nn.Module], object], block: nn.Module):
    for cls in type(block).__mro__:
        if cls in table:
            return table[cls]
    return None


def _is_relu(module) -> bool:
    return type(module) is nn.ReLU


@register_adapter(ResNet)
class ResNetAdapter(StageAdapter):
    """timm's ``ResNet`` class, whatever its block type.

    Stages are ``layer1``..``layer4``. Every block computes ``act(residual(x) + shortcut(x))``;
    blocks after the first of a stage have an identity shortcut, so a dropped block computes
    ``act(x)`` — the input itself when ``act`` is ReLU and the input is a ReLU output.
    """
    family = 'resnet'
    examples = ('resnet*, resnext*, seresnet*, seresnext*, ecaresnet*, wide_resnet*, resnetrs*, resnet*d, '
                'resnetaa*, resnetblur*, skresnet*, skresnext*, resnest*, res2net*, res2next* '
                '(blocks: BasicBlock, Bottleneck, Bottle2neck, ResNestBottleneck, SelectiveKernel*)')

    # Attribute holding the activation applied after the residual sum, per block class.
    # Extend with ``ResNetAdapter.final_activation[MyBlock] = 'act'`` for custom block_fn.
    final_activation: Dict[Type[nn.Module], str] = {
        BasicBlock: 'act2',
        Bottleneck: 'act3',
        Bottle2neck: 'relu',
        ResNestBottleneck: 'act3',
        SelectiveKernelBasic: 'act',
        SelectiveKernelBottleneck: 'act',
    }

    def stages(self, model: nn.Module) -> List[List[nn.Module]]:
        return [list(getattr(model, f'layer{i}')) for i in range(1, 5)]

    def _final_act(self, block: nn.Module) -> nn.Module:
        attr = _lookup(self.final_activation, block)
        if attr is None:
            known = ', '.join(sorted(c.__name__ for c in self.final_activation))
            raise UnsupportedModelError(
                f'ResNet block type {type(block).__name__} is unknown to timm_stim (known: {known}); '
                f"add it with ResNetAdapter.final_activation[{type(block).__name__}] = '<attr of its final act>'.")
        return getattr(block, attr)

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        self.check_identity_shortcut(block, stage_idx, block_idx)
        previous = self.stages(model)[stage_idx][block_idx - 1]
        return skip_through_activation(self._final_act(block), _is_relu(self._final_act(previous)))


@register_adapter(ResNetV2)
class ResNetV2Adapter(StageAdapter):
    """timm's ``ResNetV2`` (pre-activation, BiT) class.

    Stages are ``stages[i].blocks``. Pre-activation blocks return ``residual(x) + x`` with
    nothing after the sum, so a dropped one is the identity; the non-pre-activation
    ``Bottleneck`` variant ends in ``act3`` like timm's ResNet.
    """
    family = 'resnetv2'
    examples = 'resnetv2_* (blocks: PreActBasic, PreActBottleneck, Bottleneck)'

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        self.check_identity_shortcut(block, stage_idx, block_idx)
        if isinstance(block, (PreActBasic, PreActBottleneck)):
            return identity
        if isinstance(block, V2Bottleneck):
            previous = self.stages(model)[stage_idx][block_idx - 1]
            return skip_through_activation(block.act3, _is_relu(getattr(previous, 'act3', None)))
        raise UnsupportedModelError(
            f'ResNetV2 block type {type(block).__name__} is unknown to timm_stim '
            f'(known: PreActBasic, PreActBottleneck, Bottleneck).')


@register_adapter(SENet)
class LegacySENetAdapter(ResNetAdapter):
    """timm's legacy ``SENet`` class (Cadene's port).

    Stages are ``layer1``..``layer4`` (``layer0`` is the stem). Every block computes
    ``relu(se_module(residual(x)) + shortcut(x))``; blocks after the first of a stage have no
    ``downsample``, so a dropped block computes ``relu(x)`` — exactly ``x``, since its input
    is the previous block's ReLU output.
    """
    family = 'legacy_senet'
    examples = 'legacy_seresnet*, legacy_seresnext*, legacy_senet154 (blocks: SEResNetBlock, SE*Bottleneck)'
    final_activation: Dict[Type[nn.Module], str] = {SENetBottleneck: 'relu', SEResNetBlock: 'relu'}


@register_adapter(TResNet)
class TResNetAdapter(ResNetAdapter):
    """timm's ``TResNet`` class.

    Stages are ``body.layer1``..``body.layer4``. Every block computes
    ``relu(residual(x) + shortcut(x))`` (the LeakyReLUs are inside the residual branch);
    blocks after the first of a stage have no ``downsample``, so a dropped block is ``relu(x)``
    — exactly ``x``, its input being the previous block's ReLU output. The space-to-depth stem
    needs input sides that are a multiple of its block size (4): smaller subnetwork inputs are
    rounded down to one.
    """
    family = 'tresnet'
    examples = 'tresnet_m, tresnet_l, tresnet_xl, tresnet_v2_l (blocks: BasicBlock, Bottleneck)'
    final_activation: Dict[Type[nn.Module], str] = {TResNetBasic: 'act', TResNetBottleneck: 'act'}

    def stages(self, model: nn.Module) -> List[List[nn.Module]]:
        return [list(getattr(model.body, f'layer{i}')) for i in range(1, 5)]

    def input_size_multiple(self, model: nn.Module) -> int:
        return int(getattr(model.body[0], 'bs', 1))
