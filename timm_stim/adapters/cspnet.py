"""Adapter for timm's ``CspNet`` (cspresnet*, cspresnext50, cspdarknet53, darknet*, cs3*)."""

import torch.nn as nn
from timm.models.cspnet import BottleneckBlock, CspNet, DarkBlock, EdgeBlock

from ..errors import UnsupportedModelError
from ._registry import register_adapter
from .base import SkipFunction, StageAdapter, identity, skip_through_activation

__all__ = ['CspNetAdapter']


@register_adapter(CspNet)
class CspNetAdapter(StageAdapter):
    """timm's ``CspNet`` class.

    Stages are ``stages[i].blocks``: the residual blocks inside each ``CrossStage`` /
    ``CrossStage3`` / ``DarkStage``. The stage-level parts stay: ``conv_down``, ``conv_exp``,
    the cross-stage split, ``conv_transition(_b)`` and the concatenation. Every block of
    ``blocks`` has an identity shortcut with the same shape in and out (the CSP expansion is
    done by ``conv_exp``, outside the blocks); block 0 is kept by the general rule.
    ``BottleneckBlock`` (cspresnet/cspresnext, cs3*) computes ``act3(residual(x) + x)``, so a
    dropped one is ``act3(x)`` (``x`` itself for ReLU after a ReLU block; LeakyReLU is applied,
    it is not idempotent); ``DarkBlock`` and ``EdgeBlock`` return ``residual(x) + x``, so a
    dropped one is the identity.
    """
    family = 'cspnet'
    examples = ('cspresnet50, cspresnet50d, cspresnet50w, cspresnext50, cspdarknet53, darknet*, cs3* '
                '(blocks: BottleneckBlock, DarkBlock, EdgeBlock)')

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        if isinstance(block, (DarkBlock, EdgeBlock)):
            return identity
        if isinstance(block, BottleneckBlock):
            previous = self.stages(model)[stage_idx][block_idx - 1]
            return skip_through_activation(block.act3, type(getattr(previous, 'act3', None)) is nn.ReLU)
        raise UnsupportedModelError(
            f'CspNet block type {type(block).__name__} is unknown to timm_stim '
            f'(known: BottleneckBlock, DarkBlock, EdgeBlock).')
