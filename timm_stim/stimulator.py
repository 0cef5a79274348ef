"""Attach subnetwork sampling to a timm model instance.

``attach`` resolves the model's residual stages through its family's adapter and returns a
``Stimulator``. Nothing is added to the model's parameters or buffers; a subnetwork is run
by temporarily replacing the ``forward`` of each dropped block with what the block computes
without its residual branch, so dropped blocks cost nothing and get no gradient.
"""
import functools
import math
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.utils import unwrap_model
from torch.nn.modules.batchnorm import _BatchNorm

from .adapters import SkipFunction, StageAdapter, get_adapter
from .spaces import SpaceSpec, depth_choices, resolve_space
from .subnet import Subnet

__all__ = ['Stimulator', 'attach', 'get_stimulator', 'MODES', 'BN_MODES']

MODES = ('depth', 'drop')
BN_MODES = ('freeze', 'update')

# Plain (non-Module) attribute on the model pointing at its Stimulator: no parameter, buffer
# or state_dict key is added, and deepcopy (e.g. timm's ModelEma) gives the copy its own.
_ATTR = '_timm_stim_stimulator'
_MISSING = object()


def get_stimulator(model: nn.Module) -> Optional['Stimulator']:
    """The ``Stimulator`` attached to the model (DDP / compiled wrappers are looked through), or None."""
    return unwrap_model(model).__dict__.get(_ATTR)


class Stimulator:
    """Samples and runs subnetworks of one model instance. Create it with ``timm_stim.attach``.

    Attributes:
        model: the timm model.
        stage_depths: blocks per residual stage.
        max_drops: the largest number of blocks each stage may lose under the space.
        depth_choices: allowed depths per stage under the space.
        space, mode, bn: the settings it was attached with.
    """

    def __init__(
            self,
            model: nn.Module,
            adapter: StageAdapter,
            stages: List[List[nn.Module]],
            skip_functions: List[List[Optional[SkipFunction]]],
            max_drops: Tuple[int, ...],
            space: SpaceSpec,
            mode: str,
            bn: str,
    ):
        self.model = model
        self.adapter = adapter
        self._stages = stages
        self._skip = skip_functions
        self.stage_depths = tuple(len(s) for s in stages)
        self.max_drops = max_drops
        self.depth_choices = depth_choices(max_drops, self.stage_depths)
        self.space = space
        self.mode = mode
        self.bn = bn
        self._active: Optional[Subnet] = None
        self._attached = True
        self._compiled_blocks: List[nn.Module] = []

    def __repr__(self) -> str:
        return (f'Stimulator(model={type(self.model).__name__}, family={self.adapter.family!r}, '
                f'stage_depths={self.stage_depths}, space={self.space!r}, depth_choices={self.depth_choices}, '
                f'mode={self.mode!r}, bn={self.bn!r})')

    @property
    def active(self) -> Optional[Subnet]:
        """The subnetwork running now, or None."""
        return self._active

    @property
    def attached(self) -> bool:
        return self._attached

    def full(self) -> Subnet:
        """The full network as a ``Subnet``."""
        return Subnet.from_depths(self.stage_depths)

    def sample(self, generator: Optional[torch.Generator] = None) -> Subnet:
        """Draw a subnetwork from the space.

        Each stage independently loses ``n ~ U{0..max_drop}`` blocks: in ``depth`` mode its
        last ``n`` blocks (the official rule), in ``drop`` mode ``n`` uniformly chosen blocks
        other than block 0.

        Args:
            generator: source of randomness; torch's global generator when None.

        Returns:
            The sampled ``Subnet``.
        """
        blocks = []
        for depth, max_drop in zip(self.stage_depths, self.max_drops):
            n_drop = int(torch.randint(0, max_drop + 1, (1,), generator=generator).item()) if max_drop else 0
            if self.mode == 'depth' or n_drop == 0:
                blocks.append(tuple(range(depth - n_drop)))
            else:
                dropped = set((torch.randperm(depth - 1, generator=generator)[:n_drop] + 1).tolist())
                blocks.append(tuple(b for b in range(depth) if b not in dropped))
        return Subnet(tuple(blocks))

    def space_size(self) -> int:
        """How many distinct subnetworks ``sample`` can draw, the full network included.

        ``depth`` mode: each stage keeps one of ``max_drop + 1`` depths. ``drop`` mode: each stage
        loses any set of at most ``max_drop`` of its blocks other than block 0.
        """
        size = 1
        for depth, max_drop in zip(self.stage_depths, self.max_drops):
            size *= max_drop + 1 if self.mode == 'depth' else sum(math.comb(depth - 1, n) for n in range(max_drop + 1))
        return size

    def check_subnet(self, subnet: Subnet) -> None:
        """Raise ``ValueError`` unless the subnet fits this model's stages."""
        if not isinstance(subnet, Subnet):
            raise TypeError(f'Expected a timm_stim.Subnet, got {type(subnet).__name__}: {subnet!r}')
        if len(subnet.blocks) != len(self.stage_depths):
            raise ValueError(
                f'{subnet!r} has {len(subnet.blocks)} stages; the model has {len(self.stage_depths)} '
                f'with depths {self.stage_depths}.')
        for i, (kept, depth) in enumerate(zip(subnet.blocks, self.stage_depths)):
            if kept[-1] >= depth:
                raise ValueError(f'{subnet!r}: stage {i} has blocks 0..{depth - 1}, cannot keep block {kept[-1]}.')

    @contextmanager
    def activate(self, subnet: Subnet) -> Iterator[Subnet]:
        """Run ``subnet`` inside the ``with`` block: ``with stim.activate(s): logits = model(x)``.

        Dropped blocks are never executed; their parameters get no gradient. With
        ``bn='freeze'`` BatchNorm layers in train mode normalize with batch statistics but do
        not update their running statistics. Everything is restored on exit, also on error.
        Backward passes that recompute (gradient checkpointing) must happen inside the block.

        Args:
            subnet: any ``Subnet`` fitting the model (sampled, ``full()``, or hand-made).
        """
        if not self._attached:
            raise RuntimeError('This Stimulator was detached; attach the model again with timm_stim.attach().')
        if self._active is not None:
            raise RuntimeError(f'{self._active!r} is already active; subnetworks cannot be nested.')
        self.check_subnet(subnet)
        patched: List[Tuple[nn.Module, object]] = []
        frozen: List[Tuple[_BatchNorm, bool]] = []
        try:
            for stage_idx, kept in enumerate(subnet.blocks):
                kept = set(kept)
                for block_idx, block in enumerate(self._stages[stage_idx]):
                    if block_idx not in kept:
                        patched.append((block, block.__dict__.get('forward', _MISSING)))
                        # An instance attribute shadows the class's forward for nn.Module.__call__.
                        block.forward = self._skip[stage_idx][block_idx]
            if self.bn == 'freeze':
                for m in self.model.modules():
                    if isinstance(m, _BatchNorm) and m.track_running_stats:
                        frozen.append((m, m.track_running_stats))
                        # Train-mode BN without tracking uses batch statistics and leaves the
                        # running buffers (and num_batches_tracked) untouched.
                        m.track_running_stats = False
            self._active = subnet
            yield subnet
        finally:
            self._active = None
            for m, value in frozen:
                m.track_running_stats = value
            for block, previous in patched:
                if previous is _MISSING:
                    del block.forward
                else:
                    block.forward = previous

    @property
    def compiled(self) -> bool:
        """Whether ``compile_blocks`` has compiled the blocks."""
        return bool(self._compiled_blocks)

    def block_kinds(self) -> int:
        """How many distinct compiled graphs one input size needs at most: blocks differing in class,
        parameter shapes or stride (blocks that only differ in their weights share a graph)."""
        # A block's repr names its layers' shapes and strides: blocks with equal reprs trace alike.
        kinds = {(type(block), repr(block)) for stage in self._stages for block in stage}
        return len(kinds)

    def compile_blocks(self, **compile_kwargs: Any) -> int:
        """Compile every residual block once, for the full network and every subnetwork alike.

        Each block class's ``forward`` is compiled once (``torch.compile(..., dynamic=False)``)
        and every block of the stages calls it (an instance ``forward``, a ``functools.partial``
        so that a deep copy, e.g. an EMA, calls its own block). Blocks of one class and shapes
        share one compiled graph per input size; a dropped block still runs its skip function
        (``activate`` replaces the compiled forward while it is dropped), so nothing of a
        dropped block is computed. What is outside the blocks (stem, head) runs eager.

        Args:
            **compile_kwargs: ``torch.compile`` arguments (``backend``, ``mode``, ...);
                ``dynamic`` defaults to False: every input size gets its own graph (dynamic
                shapes fail in inductor's batch-norm backward on the CPU, and static graphs are
                the fastest), so few input sizes (``StimConfig.size_multiple``) mean few compiles.

        Returns:
            The number of blocks compiled.
        """
        if self._active is not None:
            raise RuntimeError(f'Cannot compile while {self._active!r} is active.')
        if self._compiled_blocks:
            return len(self._compiled_blocks)
        compile_kwargs.setdefault('dynamic', False)
        compiled: Dict[Callable, Callable] = {}
        for stage in self._stages:
            for block in stage:
                if 'forward' in block.__dict__:
                    raise RuntimeError(f'{type(block).__name__} has an instance forward already; cannot compile it.')
                forward = type(block).forward
                if forward not in compiled:
                    compiled[forward] = torch.compile(forward, **compile_kwargs)
                block.forward = functools.partial(compiled[forward], block)
                self._compiled_blocks.append(block)
        return len(self._compiled_blocks)

    def detach(self) -> None:
        """Remove everything ``attach`` added; the model is then exactly the plain timm model."""
        if self._active is not None:
            raise RuntimeError(f'Cannot detach while {self._active!r} is active.')
        for block in self._compiled_blocks:
            block.__dict__.pop('forward', None)
        self._compiled_blocks = []
        if self.model.__dict__.get(_ATTR) is self:
            del self.model.__dict__[_ATTR]
        self._attached = False


def attach(
        model: nn.Module,
        space: SpaceSpec = 'uniform',
        mode: str = 'depth',
        bn: str = 'freeze',
) -> Stimulator:
    """Attach subnetwork sampling to a timm model instance.

    Every argument is checked before the model is touched: on error the model is unchanged.

    Args:
        model: a timm model of a family with a registered adapter (DDP/compiled wrappers are
            looked through).
        space: which depths are allowed (``'uniform'``, ``'stpp'``, ``'keep:K'``, ``'0,1,3,0'``
            or a sequence of per-stage largest drops); see ``timm_stim.spaces``.
        mode: ``'depth'`` keeps the first blocks of each stage (official), ``'drop'`` drops
            uniformly chosen blocks other than block 0 (stochastic-depth style).
        bn: ``'freeze'`` keeps BatchNorm running statistics unchanged during subnetwork
            passes, ``'update'`` lets them update (official behaviour).

    Returns:
        The model's ``Stimulator``.

    Raises:
        UnsupportedModelError: no adapter for the model's class, or a block cannot be dropped.
        ValueError: invalid space, mode or bn; or a Stimulator is already attached.
        TypeError: ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'attach expects a timm model (a torch.nn.Module, e.g. timm.create_model("resnet50")); got '
                        f'{type(model).__name__} {model!r:.80}.')
    model = unwrap_model(model)
    if mode not in MODES:
        raise ValueError(f'Invalid mode {mode!r}: expected one of {MODES}.')
    if bn not in BN_MODES:
        raise ValueError(f'Invalid bn {bn!r}: expected one of {BN_MODES}.')
    if get_stimulator(model) is not None:
        raise ValueError(
            f'{type(model).__name__} already has a Stimulator attached ({get_stimulator(model)!r}); '
            f'call timm_stim.get_stimulator(model).detach() first to attach with other settings.')
    adapter = get_adapter(model)
    stages = adapter.stages(model)
    stage_depths = tuple(len(s) for s in stages)
    max_drops = resolve_space(space, stage_depths)
    skip = [
        [None if b == 0 else adapter.skip_function(model, s, b, block) for b, block in enumerate(blocks)]
        for s, blocks in enumerate(stages)
    ]
    stim = Stimulator(model, adapter, stages, skip, max_drops, space, mode, bn)
    model.__dict__[_ATTR] = stim
    return stim
