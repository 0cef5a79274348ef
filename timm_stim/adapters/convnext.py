"""Adapter for timm's ``ConvNeXt`` (convnext_*)."""

import torch.nn as nn
from timm.models.convnext import ConvNeXt

from ._registry import register_adapter
from .base import SkipFunction, StageAdapter, identity

__all__ = ['ConvNeXtAdapter']


@register_adapter(ConvNeXt)
class ConvNeXtAdapter(StageAdapter):
    """timm's ``ConvNeXt`` class.

    Stages are ``stages[i].blocks``; the stage's ``downsample`` (norm + strided conv) runs
    before them and stays. A ``ConvNeXtBlock`` computes
    ``drop_path(gamma * mlp(norm(conv_dw(x)))) + shortcut(x)`` with nothing after the sum and
    ``shortcut`` the identity whenever the block keeps the shape, so a dropped block is the
    identity. A block with a projection shortcut is refused.
    """
    family = 'convnext'
    examples = 'convnext_atto .. convnext_xxlarge, convnext_*_ols (ConvNeXtBlock)'

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        self.check_identity_shortcut(block, stage_idx, block_idx)
        return identity
