"""What an adapter tells the Stimulator about a model family."""
from functools import partial
from typing import Callable, List, Optional

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError

__all__ = ['StageAdapter', 'SkipFunction', 'identity', 'skip_through_activation']

SkipFunction = Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    """A dropped block whose residual sum is not followed by anything returns its input."""
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


class StageAdapter:
    """Describes the residual stages of one model family.

    Subclasses set ``family`` and ``examples`` and implement ``stages`` and ``skip_function``;
    ``register_adapter`` binds them to model classes.
    """
    family: str = ''
    examples: str = ''

    def stages(self, model: nn.Module) -> List[List[nn.Module]]:
        """The blocks of each residual stage, in execution order.

        Args:
            model: a model of this family.

        Returns:
            One list of block modules per stage.
        """
        raise NotImplementedError

    def skip_function(self, model: nn.Module, stage_idx: int, block_idx: int, block: nn.Module) -> SkipFunction:
        """What the block computes when dropped: the block with its residual branch removed.

        Only called for blocks with ``block_idx >= 1``; raise ``UnsupportedModelError`` when the
        block cannot be dropped (e.g. its shortcut is not the identity).
        """
        raise NotImplementedError

    def check_identity_shortcut(self, block: nn.Module, stage_idx: int, block_idx: int) -> None:
        """Refuse blocks whose shortcut changes the input (a projection or downsample)."""
        if getattr(block, 'downsample', None) is not None:
            raise UnsupportedModelError(
                f'Block {block_idx} of stage {stage_idx} ({type(block).__name__}) has a downsample shortcut; '
                f'only blocks with an identity shortcut can be dropped.')
