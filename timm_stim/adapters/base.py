"""What an adapter tells the Stimulator about a model family."""
from functools import partial
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError

__all__ = ['StageAdapter', 'SkipFunction', 'identity', 'skip_through_activation', 'split_stages']

SkipFunction = Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A dropped block whose residual sum is not followed by anything returns its input.

    Extra arguments (e.g. a ViT block's ``attn_mask``) are accepted and ignored.
    """
    return x


def _activation_out_of_place(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # An in-place activation would overwrite the previous block's output, which autograd may
    # have saved for its backward; a copy keeps the graph valid.
    if getattr(act, 'inplace', False):
        x = x.clone()
    return act(x)


def skip_through_activation(act: Optional[nn.Module], input_is_relu_output: bool) -> SkipFunction:
    """What a block computing ``act(residual(x) + x)`` computes with its residual branch removed.

    Args:
        act: the block's final activation (None or Identity for none).
        input_is_relu_output: the block's input is always the output of a ReLU (true inside a
            stage whose blocks all end in ReLU).

    Returns:
        ``identity`` where ``act(x) == x`` exactly, else a function applying ``act`` out of place.
    """
    if act is None or isinstance(act, nn.Identity):
        return identity
    if type(act) is nn.ReLU and input_is_relu_output:
        # relu(x) == x for x >= 0, and the gradient matches too: where x == 0 the previous
        # ReLU's backward already zeroes the gradient. Skipping it saves a full memory pass.
        return identity
    return partial(_activation_out_of_place, act)


def split_stages(
        stages: Sequence[Sequence[nn.Module]],
        droppable: Callable[[nn.Module], bool],
        family: str,
) -> List[List[nn.Module]]:
    """Split stages so that every block that cannot be dropped starts a stage (and is always kept).

    Args:
        stages: the model's stages, each a sequence of blocks.
        droppable: whether a block may be dropped (identity shortcut, same shape in and out).
        family: for the error message.

    Returns:
        The stages, split before each non-droppable block after the first of a stage.

    Raises:
        UnsupportedModelError: no block of the model can be dropped.
    """
    out: List[List[nn.Module]] = []
    for blocks in stages:
        for b, block in enumerate(blocks):
            if b == 0 or not droppable(block):
                out.append([])
            out[-1].append(block)
    if not any(len(s) > 1 for s in out):
        raise UnsupportedModelError(
            f'This {family} model has no block with an identity shortcut after the first of a stage '
            f'(block types: {sorted({type(b).__name__ for s in stages for b in s})}); there is nothing to sample.')
    return out


class StageAdapter:
    """Describes the residual stages of one model family.

    Subclasses set ``family`` and ``examples`` and implement ``stages`` and ``skip_function``;
    ``register_adapter`` binds them to model classes.
    """
    family: str = ''
    examples: str = ''
    # Whether each block can be compiled alone (``Stimulator.compile_blocks``); False: a compiled
    # run compiles the full network whole and runs subnetworks eager.
    blockwise_compile: bool = True

    def stages(self, model: nn.Module) -> List[List[nn.Module]]:
        """The blocks of each residual stage, in execution order.

        The default reads timm's most common layout: ``model.stages``, each stage a sequence of
        blocks or holding them in ``.blocks``; families laid out otherwise override it.

        Args:
            model: a model of this family.

        Returns:
            One list of block modules per stage.
        """
        return [list(getattr(stage, 'blocks', stage)) for stage in model.stages]

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        """What the block computes when dropped: the block with its residual branch removed.

        Only called for blocks with ``block_idx >= 1``; raise ``UnsupportedModelError`` when the
        block cannot be dropped (e.g. its shortcut is not the identity).
        """
        raise NotImplementedError

    def input_size_multiple(self, model: nn.Module) -> int:
        """Subnetwork input sides are rounded down to a multiple of this (e.g. a ViT's patch size)."""
        return 1

    def check_input_scaling(self, model: nn.Module, min_scale: float, max_scale: float) -> None:
        """Raise ``ValueError`` naming the fix when the model cannot take inputs scaled by these factors."""

    def check_identity_shortcut(self, block: nn.Module, stage_idx: int, block_idx: int) -> None:
        """Refuse blocks whose shortcut changes the input (a ``downsample``, or a ``shortcut`` that is not Identity)."""
        downsample = getattr(block, 'downsample', None)
        shortcut = getattr(block, 'shortcut', nn.Identity())
        if downsample is not None or not isinstance(shortcut, nn.Identity):
            what = f'downsample {type(downsample).__name__}' if downsample is not None else f'shortcut {shortcut!r}'
            raise UnsupportedModelError(
                f'Block {block_idx} of stage {stage_idx} ({type(block).__name__}) has a non-identity shortcut '
                f'({what.splitlines()[0]}); only blocks with an identity shortcut can be dropped.')
