"""The value that names one subnetwork of a residual network."""
from dataclasses import dataclass
from typing import Iterable, Sequence, Tuple

__all__ = ['Subnet']


@dataclass(frozen=True)
class Subnet:
    """Which blocks of every residual stage run; all others are skipped.

    Immutable and hashable, so it can key dicts, be logged and be compared. Block indices
    are per stage, sorted, and always include block 0 (it holds a stage's downsample).

    Args:
        blocks: for each stage, the indices of the kept blocks,
            e.g. ``((0, 1, 2), (0, 1, 2), (0, 1, 2, 3, 4), (0, 1, 2))``.
    """
    blocks: Tuple[Tuple[int, ...], ...]

    def __post_init__(self):
        try:
            blocks = tuple(tuple(int(b) for b in stage) for stage in self.blocks)
        except TypeError as e:
            raise ValueError(f'Subnet blocks must be a sequence of per-stage index sequences, got {self.blocks!r}') from e
        for i, stage in enumerate(blocks):
            if not stage or stage[0] != 0 or list(stage) != sorted(set(stage)):
                raise ValueError(
                    f'Subnet stage {i} keeps blocks {stage!r}: expected sorted, unique indices starting with 0 '
                    f'(block 0 holds the stage downsample and is always kept).')
        object.__setattr__(self, 'blocks', blocks)

    @classmethod
    def from_depths(cls, depths: Iterable[int]) -> 'Subnet':
        """The subnetwork keeping the first ``depths[i]`` blocks of stage ``i`` (the official rule).

        Args:
            depths: blocks kept per stage, each >= 1.

        Returns:
            The matching ``Subnet``.
        """
        depths = tuple(int(d) for d in depths)
        if any(d < 1 for d in depths):
            raise ValueError(f'Subnet depths {depths!r}: every stage keeps at least 1 block.')
        return cls(tuple(tuple(range(d)) for d in depths))

    @property
    def depths(self) -> Tuple[int, ...]:
        """Number of blocks kept per stage."""
        return tuple(len(stage) for stage in self.blocks)

    @property
    def num_blocks(self) -> int:
        """Total number of blocks kept."""
        return sum(self.depths)

    def dropped(self, stage_depths: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
        """Indices of the skipped blocks per stage, for a model with these stage depths."""
        return tuple(tuple(b for b in range(d) if b not in kept) for d, kept in zip(stage_depths, self.blocks))
