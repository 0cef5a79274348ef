"""Adapter for timm's normalizer-free ``NormFreeNet`` (nf_resnet*, nf_ecaresnet*, nf_seresnet*, nf_regnet*, nfnet*)."""

import torch.nn as nn
from timm.models.nfnet import NormFreeBlock, NormFreeNet

from ..errors import UnsupportedModelError
from ._registry import register_adapter
from .base import SkipFunction, StageAdapter, identity

__all__ = ['NormFreeNetAdapter']


@register_adapter(NormFreeNet)
class NormFreeNetAdapter(StageAdapter):
    """timm's ``NormFreeNet`` class.

    Stages are ``stages[i]``. A pre-activation ``NormFreeBlock`` computes
    ``alpha * skipinit_gain * residual(beta * act1(x)) + shortcut`` where the shortcut is
    ``downsample(beta * act1(x))`` when the block has a ``downsample`` (block 0 of a stage,
    never dropped) and exactly ``x`` otherwise; nothing follows the sum. A dropped block is
    therefore the identity (``act1``, ``beta``, ``alpha`` and the skip-init gain all belong to
    the residual branch).
    """
    family = 'nfnet'
    examples = 'nf_resnet*, nf_ecaresnet*, nf_seresnet*, nf_regnet*, nfnet_*, dm_nfnet_*, eca_nfnet_* (NormFreeBlock)'

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        if not isinstance(block, NormFreeBlock):
            raise UnsupportedModelError(
                f'NormFreeNet block type {type(block).__name__} is unknown to timm_stim (known: NormFreeBlock).')
        self.check_identity_shortcut(block, stage_idx, block_idx)
        return identity
