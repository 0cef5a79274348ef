"""A trained network's family: which subnetworks it holds, which are worth deploying, and picking one.

Members keep the first ``d`` blocks of each stage (the official depth rule, what ``timm-stim export
--depths`` exports), with the depths the space allows (``Stimulator.depth_choices``).

* ``family_subnets`` enumerates them: every member when the space holds at most ``max_members``,
  otherwise a grid of depths per stage (see its docstring).
* ``pareto_front`` marks the members no other member beats: at most the cost and at least the
  accuracy, better in one of the two.
* ``select_row`` / ``select_subnet`` pick the most accurate member under a FLOPs and / or latency limit
  from a family table (the rows of ``timm-stim family``'s ``family.csv`` or ``family.json``), and
  ``select_subnet`` returns it as a plain timm model (``timm_stim.extract.export_subnet``).
"""
import itertools
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .bn import recalibrate_bn
from .extract import export_subnet
from .stimulator import Stimulator
from .subnet import Subnet

__all__ = ['family_subnets', 'grid_depths', 'pareto_front', 'select_row', 'select_subnet', 'row_depths']


def grid_depths(choices: Sequence[int], count: int) -> Tuple[int, ...]:
    """``count`` evenly spaced values of ``choices`` (ascending), always the smallest and the largest.

    >>> grid_depths((1, 2, 3, 4, 5, 6), 3)
    (1, 4, 6)
    """
    choices = tuple(choices)
    if count >= len(choices):
        return choices
    if count <= 1:
        return choices[-1:]
    return tuple(dict.fromkeys(choices[int(j * (len(choices) - 1) / (count - 1) + 0.5)] for j in range(count)))


def family_subnets(stim: Stimulator, max_members: int = 64) -> Tuple[List[Subnet], str]:
    """The members of the family of ``stim``'s model under its space, the full network first.

    Every member when the space holds at most ``max_members`` depth combinations (``'all'``).
    Otherwise a grid (``'grid'``): every stage takes ``k`` evenly spaced depths of its allowed
    ones (always its smallest and its largest; all of them when it has fewer than ``k``), with
    the largest ``k >= 2`` whose combinations number at most ``max_members``.

    Args:
        stim: the model's ``Stimulator`` (its ``depth_choices`` define the space).
        max_members: the most members to return.

    Returns:
        (subnets in descending depth order, the full network first; ``'all'`` or ``'grid'``).

    Raises:
        ValueError: the space holds only the full network, or even the grid of 2 depths per
            stage exceeds ``max_members`` (naming the least value that works).
    """
    choices = [tuple(c) for c in stim.depth_choices]
    size = 1
    for c in choices:
        size *= len(c)
    if size <= 1:
        raise ValueError(f'the space {stim.space!r} holds only the full network (stage depths {stim.stage_depths}, '
                         f'allowed depths {tuple(choices)}): there is no family to score; choose a space that lets '
                         f'stages lose blocks, e.g. stpp, uniform or keep:2.')
    if size <= max_members:
        how, picked = 'all', choices
    else:
        smallest = 1
        for c in choices:
            smallest *= min(2, len(c))
        if smallest > max_members:
            raise ValueError(f'the space {stim.space!r} holds {size} members and the smallest grid (the smallest and '
                             f'largest depth of each stage) {smallest}, more than {max_members}: allow at least '
                             f'{smallest} members.')
        k = 2
        while True:
            count = 1
            for c in choices:
                count *= min(k + 1, len(c))
            if count > max_members or k + 1 > max(len(c) for c in choices):
                break
            k += 1
        how, picked = 'grid', [grid_depths(c, k) for c in choices]
    members = [Subnet.from_depths(d) for d in itertools.product(*[tuple(reversed(c)) for c in picked])]
    return members, how


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> List[bool]:
    """Which points are on the Pareto front of lower cost and higher score.

    A point is on the front unless another one costs at most as much and scores at least as well,
    and is better in one of the two. Identical points do not beat each other: all stay.

    Args:
        costs: e.g. FLOPs or latency per member.
        scores: e.g. top-1 accuracy per member.

    Returns:
        One bool per point.
    """
    if len(costs) != len(scores):
        raise ValueError(f'{len(costs)} costs but {len(scores)} scores: give one of each per point.')
    points = list(zip(map(float, costs), map(float, scores)))
    return [not any(c2 <= c and s2 >= s and (c2 < c or s2 > s) for c2, s2 in points) for c, s in points]


def row_depths(row: Mapping[str, Any]) -> Tuple[int, ...]:
    """The depths of a family table row (``'3,3,4,3'`` as written in family.csv, or a sequence)."""
    depths = row['depths']
    if isinstance(depths, str):
        return tuple(int(d) for d in depths.split(','))
    return tuple(int(d) for d in depths)


def select_row(table: Iterable[Mapping[str, Any]], *, max_flops: Optional[float] = None,
               max_latency_ms: Optional[float] = None) -> Mapping[str, Any]:
    """The most accurate member of one checkpoint's family table within the limits.

    Ties in top-1 go to fewer FLOPs, then to lower latency.

    Args:
        table: rows with ``depths``, ``flops``, ``latency_ms`` (batch 1) and ``top1`` (strings as read
            from family.csv are fine), all of one checkpoint.
        max_flops: the most FLOPs per image allowed.
        max_latency_ms: the most batch-1 latency allowed, in milliseconds (as measured for the table).

    Returns:
        The chosen row.

    Raises:
        ValueError: no limit given, rows of several checkpoints, or no member within the limits
            (naming the cheapest member).
    """
    rows = list(table)
    if max_flops is None and max_latency_ms is None:
        raise ValueError('give max_flops and / or max_latency_ms: without a limit the full network is the choice.')
    checkpoints = {r['checkpoint'] for r in rows if 'checkpoint' in r}
    if len(checkpoints) > 1:
        raise ValueError(f'the table holds the families of {len(checkpoints)} checkpoints ({sorted(checkpoints)}); '
                         f'pass the rows of one of them.')
    if not rows:
        raise ValueError('the family table is empty.')
    fits = [r for r in rows
            if (max_flops is None or float(r['flops']) <= max_flops)
            and (max_latency_ms is None or float(r['latency_ms']) <= max_latency_ms)]
    if not fits:
        cheapest = min(rows, key=lambda r: (float(r['flops']), float(r['latency_ms'])))
        raise ValueError(f'no member within max_flops={max_flops}, max_latency_ms={max_latency_ms}: the cheapest, '
                         f'depths {",".join(map(str, row_depths(cheapest)))}, needs {float(cheapest["flops"]):.4g} '
                         f'FLOPs and {float(cheapest["latency_ms"]):.4g} ms.')
    return max(fits, key=lambda r: (float(r['top1']), -float(r['flops']), -float(r['latency_ms'])))


def select_subnet(model: nn.Module, table: Iterable[Mapping[str, Any]], *, max_flops: Optional[float] = None,
                  max_latency_ms: Optional[float] = None,
                  recal_batches: Optional[Sequence[Tuple[torch.Tensor, Any]]] = None,
                  device: Any = 'cpu') -> nn.Module:
    """The best member of ``model``'s family within the limits, as a plain timm model.

    Args:
        model: the trained model the table was measured on (ResNet / ResNetV2 family, see
            ``timm_stim.extract.EXPORT_FAMILIES``); it is not changed.
        table: its family table (``select_row``).
        max_flops: the most FLOPs per image allowed.
        max_latency_ms: the most batch-1 latency allowed, in milliseconds.
        recal_batches: (input, target) training batches to re-estimate the member's BatchNorm statistics
            on, as ``timm-stim family --stim-bn-recal N`` did before scoring it (the same images give
            the same statistics; only for rows with ``bn_recal_images`` > 0); None keeps the checkpoint's.
            The folders ``timm-stim family``
            exports already hold the re-estimated statistics.
        device: where ``model`` and the batches go for re-estimation.

    Returns:
        ``timm.create_model(architecture, layers=depths)`` holding the member's weights, in eval mode.

    Raises:
        ValueError: as ``select_row``; InputError: a family ``export_subnet`` does not support.
    """
    row = select_row(table, max_flops=max_flops, max_latency_ms=max_latency_ms)
    member = export_subnet(model, row_depths(row))
    if recal_batches and int(row.get('bn_recal_images') or 0) > 0:  # the full network keeps the checkpoint's
        member.to(device)
        recalibrate_bn(member, recal_batches, sum(int(x.shape[0]) for x, _ in recal_batches), torch.device(device))
    return member.eval()
