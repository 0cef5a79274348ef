"""Adapter for timm's Vision Transformers: ``VisionTransformer`` (vit_*, deit_*, hybrid vit_*_resnet*),
``Eva`` (eva*, the RoPE / DINOv3 / PE vit_* models) and ``VisionTransformerRelPos`` (vit_relpos_*, vit_srelpos_*)."""
from typing import List

import torch.nn as nn
from timm.models.vision_transformer import (
    Block, DiffParallelScalingBlock, ParallelScalingBlock, ParallelThingsBlock, ResPostBlock, VisionTransformer)
from timm.models.eva import Eva, EvaBlock, EvaBlockPostNorm
from timm.models.vision_transformer_relpos import RelPosBlock, ResPostRelPosBlock, VisionTransformerRelPos

from ..errors import UnsupportedModelError
from ._registry import register_adapter
from .base import SkipFunction, StageAdapter, identity

__all__ = ['VisionTransformerAdapter']

# Every one of these returns x + branch(x) (twice for all but the parallel ones: attention then
# MLP), with nothing after the sums. Extra block arguments (Eva's rope / attn_mask, RelPos's
# shared_rel_pos) only feed the branches, so a dropped block ignores them.
_RESIDUAL_BLOCKS = (Block, ResPostBlock, ParallelScalingBlock, DiffParallelScalingBlock, ParallelThingsBlock,
                    EvaBlock, EvaBlockPostNorm, RelPosBlock, ResPostRelPosBlock)


@register_adapter(VisionTransformer, Eva, VisionTransformerRelPos)
class VisionTransformerAdapter(StageAdapter):
    """timm's ``VisionTransformer`` class (and subclasses: DeiT distilled, hybrid CNN-ViTs), ``Eva``
    (vit_* models with rotary position embeddings: ``*_rope_*``, ``*_dinov3``, ``vit_pe_*``; eva*)
    and ``VisionTransformerRelPos`` (vit_relpos_*, vit_srelpos_*).

    The encoder blocks ``model.blocks`` are one stage (block 0 is always kept, as in every
    stage). A block adds its residual branches to the tokens — ``x + ls1(attn(norm1(x)))``
    then ``x + ls2(mlp(norm2(x)))`` (or the parallel / post-norm variants) — with nothing
    after the sums, so a dropped block, both branches removed, is the identity.

    ``groups`` splits the blocks into that many consecutive stages of near-equal depth (each
    keeping its first block), so that per-stage spaces such as ``stpp`` apply; set it on a
    subclass registered in its place::

        @timm_stim.register_adapter(VisionTransformer)
        class GroupedViT(VisionTransformerAdapter):
            groups = 4  # ViT-S/B: 4 stages of 3 blocks

    Smaller subnetwork inputs need ``dynamic_img_size=True`` at creation (timm then
    interpolates the position embedding, or recomputes the rotary one); sides are rounded down
    to a multiple of the patch embedding's reduction (the patch size; patch size times the
    backbone stride for hybrids). ``VisionTransformerRelPos`` has relative-position tables for
    one input size only, so its subnetworks run at full size.
    """
    family = 'vit'
    examples = ('vit_* and deit_* built by VisionTransformer (incl. hybrid vit_*_resnet*), Eva (vit_*_rope_*, '
                'vit_*_dinov3, vit_pe_*, eva*) or VisionTransformerRelPos (vit_relpos_*) (blocks: Block, ResPostBlock, '
                'ParallelScalingBlock, DiffParallelScalingBlock, ParallelThingsBlock, EvaBlock, EvaBlockPostNorm, '
                'RelPosBlock, ResPostRelPosBlock)')

    groups: int = 1

    def stages(self, model: nn.Module) -> List[List[nn.Module]]:
        blocks = list(model.blocks)
        groups = max(1, min(self.groups, len(blocks)))
        bounds = [round(i * len(blocks) / groups) for i in range(groups + 1)]
        return [blocks[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        if not isinstance(block, _RESIDUAL_BLOCKS):
            raise UnsupportedModelError(
                f'{type(model).__name__} block type {type(block).__name__} is unknown to timm_stim '
                f'(known: {", ".join(c.__name__ for c in _RESIDUAL_BLOCKS)}).')
        return identity

    def input_size_multiple(self, model: nn.Module) -> int:
        return int(model.patch_embed.feat_ratio(as_scalar=True))

    def check_input_scaling(self, model: nn.Module, min_scale: float, max_scale: float) -> None:
        if (min_scale < 1 or max_scale < 1) and isinstance(model, VisionTransformerRelPos):
            raise ValueError(
                f'min_scale={min_scale}, max_scale={max_scale}: {type(model).__name__} (vit_relpos_*) has '
                f'relative-position tables for one input size only, so it cannot run subnetworks on smaller inputs. '
                f'Keep both scales at 1 (train_stim.py: --stim-min-scale 1 --stim-max-scale 1).')
        if (min_scale < 1 or max_scale < 1) and not getattr(model, 'dynamic_img_size', False):
            raise ValueError(
                f'min_scale={min_scale}, max_scale={max_scale}: this {type(model).__name__} was created for a fixed '
                f'input size, so it cannot run subnetworks on smaller inputs. Create it with dynamic_img_size=True '
                f'(train_stim.py: --model-kwargs dynamic_img_size=True) or keep both scales at 1.')
