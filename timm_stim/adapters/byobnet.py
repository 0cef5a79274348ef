"""Adapter for timm's ``ByobNet`` (byobnet.py and byoanet.py models: ``*ts``/``*t`` ResNets, lambda_resnet*)."""
from typing import List

import torch.nn as nn
from timm.models.byobnet import ByobNet

from ._registry import register_adapter
from .base import SkipFunction, StageAdapter, skip_through_activation, split_stages

__all__ = ['ByobNetAdapter']


def _droppable(block: nn.Module) -> bool:
    # BasicBlock, BottleneckBlock, DarkBlock, EdgeBlock and SelfAttnBlock compute
    # ``act(drop_path(residual(x)) + shortcut(x))``; ``shortcut`` is None for a block without
    # one, a projection for a block changing shape, nn.Identity otherwise. RepVggBlock and
    # MobileOneBlock have no ``shortcut`` (their identity branch is a BatchNorm, not x).
    return isinstance(getattr(block, 'shortcut', None), nn.Identity) and hasattr(block, 'act')


@register_adapter(ByobNet)
class ByobNetAdapter(StageAdapter):
    """timm's ``ByobNet`` class ("bring your own blocks"; also every byoanet model).

    Stages are ``stages[i]`` (each an ``nn.Sequential`` of blocks), split before any block
    whose shortcut is not the identity (a block without shortcut, a projection, or a
    RepVGG / MobileOne block), which then starts a stage of its own and is always kept; in
    the ResNet/ResNeXt models only block 0 of a stage has such a shortcut, so stages are
    unchanged. A block computes ``act(residual(x) + x)`` (``attn``/``attn_last`` and
    ``drop_path`` are in the residual branch), so a dropped block computes ``act(x)``: ``x``
    itself for ReLU after a ReLU block, ``silu(x)`` for the SiLU ``*ts`` models, ``x`` for
    ``linear_out`` blocks (``act`` is Identity).
    """
    family = 'byobnet'
    examples = ('resnet32ts, resnet33ts, resnet26ts, resnet51q, resnet61q, resnext26ts, seresnext26ts, '
                'eca_resnext26ts, gcresnext26ts, gcresnet33ts, eca_resnet33ts, bat_resnext26ts, lambda_resnet*, '
                'other ByobNet models (gernet, regnetz, ...) (blocks: Basic/Bottleneck/Dark/Edge/SelfAttnBlock)')

    def stages(self, model: nn.Module) -> List[List[nn.Module]]:
        return split_stages([list(stage) for stage in model.stages], _droppable, self.family)

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        self.check_identity_shortcut(block, stage_idx, block_idx)
        previous = self.stages(model)[stage_idx][block_idx - 1]
        return skip_through_activation(block.act, type(getattr(previous, 'act', None)) is nn.ReLU)
