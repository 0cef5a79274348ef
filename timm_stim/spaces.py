"""Sampling spaces: how many blocks each residual stage may lose.

A space is resolved against a model's stage depths into the largest number of blocks each
stage may drop. Depth per stage is then drawn uniformly over its allowed depths,
independently per stage, as the official code does.

Spaces (for ResNet-50, depths ``(3, 4, 6, 3)``):

============ ==================================== =================================
space        rule                                 ResNet-50 depths
============ ==================================== =================================
``uniform``  any depth >= 1 per stage (ST)        1-3, 1-4, 1-6, 1-3
``keep:K``   each stage keeps >= min(K, d)        ``keep:2``: 2-3, 2-4, 2-6, 2-3
``stpp``     first/last stage fixed, a middle     3, 3-4, 3-6, 3 (official space3)
             stage keeps >= min(3, d - 1)
``0,1,3,0``  largest drop per stage, explicit     3, 3-4, 3-6, 3
============ ==================================== =================================
"""
import re
from typing import Sequence, Tuple, Union

__all__ = ['SpaceSpec', 'SPACE_NAMES', 'resolve_space', 'depth_choices']

SpaceSpec = Union[str, Sequence[int]]
SPACE_NAMES = ('uniform', 'stpp', 'keep:K', 'comma-separated largest drops per stage, e.g. "0,1,3,0"')

_INT_LIST = re.compile(r'^\s*-?\d+(\s*,\s*-?\d+)*\s*$')


def _expected(stage_depths: Sequence[int]) -> str:
    return (f"expected 'uniform', 'stpp', 'keep:K' (K >= 1) or one largest drop per stage "
            f"(this model has {len(stage_depths)} stages with depths {tuple(stage_depths)}, "
            f"e.g. '{','.join('0' for _ in stage_depths)}')")


def _stpp_drops(stage_depths: Sequence[int]) -> Tuple[int, ...]:
    # ST++ inter-stage rule: the first and last stages are never sampled; a middle stage of
    # d >= 2 blocks keeps at least min(3, d - 1). On ResNet-50 this is the official space3.
    last = len(stage_depths) - 1
    drops = []
    for i, d in enumerate(stage_depths):
        if i == 0 or i == last or d < 2:
            drops.append(0)
        else:
            drops.append(d - min(3, d - 1))
    return tuple(drops)


def resolve_space(space: SpaceSpec, stage_depths: Sequence[int]) -> Tuple[int, ...]:
    """Resolve a space into the largest number of blocks each stage may drop.

    Args:
        space: ``'uniform'``, ``'stpp'``, ``'keep:K'``, a comma-separated string of per-stage
            largest drops (``'0,1,3,0'``) or a sequence of ints.
        stage_depths: number of blocks in each residual stage of the model.

    Returns:
        One int per stage, ``0 <= drop <= depth - 1`` (a stage always keeps one block).

    Raises:
        ValueError: naming the value and what was expected, for unknown, malformed or
            impossible spaces.
    """
    stage_depths = tuple(int(d) for d in stage_depths)
    if isinstance(space, str):
        text = space.strip().lower()
        if text == 'uniform':
            return tuple(d - 1 for d in stage_depths)
        if text == 'stpp':
            return _stpp_drops(stage_depths)
        if text.startswith('keep:'):
            k_text = text[len('keep:'):].strip()
            if not k_text.isdigit() or int(k_text) < 1:
                raise ValueError(f"Invalid space {space!r}: 'keep:K' needs an integer K >= 1, e.g. 'keep:2'.")
            k = int(k_text)
            return tuple(d - min(k, d) for d in stage_depths)
        if not _INT_LIST.match(text):
            raise ValueError(f'Unknown space {space!r}: {_expected(stage_depths)}.')
        drops = tuple(int(v) for v in text.split(','))
    else:
        try:
            drops = tuple(space)
        except TypeError:
            raise ValueError(f'Invalid space {space!r}: {_expected(stage_depths)}.') from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in drops):
            raise ValueError(f'Invalid space {space!r}: per-stage drops must be ints; {_expected(stage_depths)}.')

    if len(drops) != len(stage_depths):
        raise ValueError(
            f'Space {space!r} gives {len(drops)} per-stage drops but the model has {len(stage_depths)} stages '
            f'with depths {stage_depths}: give exactly one value per stage.')
    for i, (drop, d) in enumerate(zip(drops, stage_depths)):
        if drop < 0:
            raise ValueError(f'Space {space!r}: stage {i} drop {drop} is negative; drops are >= 0 '
                             f'(model stage depths {stage_depths}).')
        if drop > d - 1:
            raise ValueError(
                f'Space {space!r}: stage {i} has {d} blocks, so at most {d - 1} can be dropped '
                f'(a stage keeps at least one block), got {drop} (model stage depths {stage_depths}).')
    return drops


def depth_choices(max_drops: Sequence[int], stage_depths: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """Allowed depths per stage, ascending, for the given largest drops."""
    return tuple(tuple(range(d - m, d + 1)) for m, d in zip(max_drops, stage_depths))
