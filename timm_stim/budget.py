"""Stimulative training at a chosen compute budget: how many subnetworks a step can afford.

A stimulative step costs the plain step (the full network's forward and backward) plus one
forward and backward per subnetwork. A subnetwork's pass costs, relative to the full
network's, about its forward FLOPs relative to the full network's forward FLOPs (backward
FLOPs are in the same proportion). Its expectation over the sampling space and the input-size
range is

    cost of one subnetwork = E_s E_subnet[FLOPs(subnet at s)] / FLOPs(full at S)

where ``S`` is the training input size and the side ``s`` is drawn as ``StimulativeTask``
draws it. Stages are sampled independently and dropped blocks cost nothing, so

    E_subnet[FLOPs(subnet at s)] = FLOPs(full at s) - sum_b P(block b dropped) * FLOPs(block b at s)

with ``P(block b dropped)`` exact for the space and mode (``drop_probabilities``), and the
FLOPs of every block counted at each input side (``timm_stim.flops.block_flops``, on a
shape-only copy of the model, so nothing is computed).

``--stim-budget B`` asks for an expected extra cost of ``B`` full forward+backward passes per
step: the task runs ``K = B / cost`` subnetworks per step on average (``StimulativeTask`` draws
``floor(K)`` or ``floor(K) + 1`` each step from its own generator, so the mean is exact and a
resumed run draws the same). A budget below the cost of one subnetwork, or given together with
an explicit ``--stim-subnets``, is refused (``resolve_budget``).
"""
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import InputError
from .flops import block_flops, shape_only_copy
from .config import StimConfig
from .inputs import input_size_choices, subnet_size_multiple

__all__ = ['BudgetPlan', 'TimeBudget', 'check_budget', 'drop_probabilities', 'input_size_choices', 'subnet_cost',
           'affordable_subnets', 'resolve_budget']


@dataclass(frozen=True)
class BudgetPlan:
    """What a compute budget resolves to for one model, space and input-size range.

    Attributes:
        budget: the budget asked for (extra full forward+backward passes per step), or None
            when the number of subnetworks was given directly.
        num_subnets: subnetworks per step (K); with a budget, a mean such as 1.57 (each step runs
            ``floor(K)`` or ``floor(K) + 1``).
        subnet_cost: expected cost of one subnetwork pass, as a fraction of the full network's
            pass at the training size (FLOPs ratio, averaged over the space and input sizes).
        expected_cost: ``num_subnets * subnet_cost``: expected extra cost of a step, in full
            forward+backward passes (a step costs ``1 + expected_cost`` plain steps, ideally).
        full_flops: forward FLOPs of the full network for one image at the training size.
        input_size: training input size (C, H, W).
        subnet_sides: smallest and largest shorter side of a subnetwork input.
    """
    budget: Optional[float]
    num_subnets: float
    subnet_cost: float
    expected_cost: float
    full_flops: int
    input_size: Tuple[int, ...]
    subnet_sides: Tuple[int, int]

    def to_dict(self) -> Dict[str, Any]:
        """Plain types, for args.yaml's ``stim_resolved`` and logs (costs rounded to 4 digits)."""
        out = asdict(self)
        out['num_subnets'] = round(self.num_subnets, 4)
        out['subnet_cost'] = round(self.subnet_cost, 4)
        out['expected_cost'] = round(self.expected_cost, 4)
        out['input_size'] = list(self.input_size)
        out['subnet_sides'] = list(self.subnet_sides)
        return out

    def describe(self) -> str:
        """One line for the training log."""
        asked = f'budget {self.budget:g} -> ' if self.budget is not None else ''
        return (f'{asked}{self.num_subnets:.3g} subnetwork(s) per step, each {self.subnet_cost:.3f} of a full pass on '
                f'average (inputs {self.subnet_sides[0]}-{self.subnet_sides[1]} px of {self.input_size[-1]}): '
                f'expected extra cost {self.expected_cost:.3f} full forward+backward passes per step')


def check_budget(budget: Any) -> None:
    """Raise ``InputError`` unless ``budget`` is None or a finite number > 0 (``StimConfig``'s check)."""
    problem = StimConfig.check_value('budget', budget)
    if problem:
        raise InputError(problem)


def drop_probabilities(stage_depths: Sequence[int], max_drops: Sequence[int], mode: str) -> List[List[float]]:
    """Probability that each block is dropped when a subnetwork is sampled (``Stimulator.sample``).

    A stage of ``d`` blocks loses ``n ~ U{0..m}`` blocks (``m`` its largest drop). In ``depth``
    mode they are its last ``n``: block ``b`` is dropped when ``n >= d - b``. In ``drop`` mode
    they are ``n`` of the ``d - 1`` blocks after block 0, uniformly: ``P = E[n] / (d - 1)``.

    Returns:
        For each stage, one probability per block (block 0: always 0).
    """
    out = []
    for d, m in zip(stage_depths, max_drops):
        probs = [0.0] * d
        for b in range(1, d):
            if mode == 'depth':
                probs[b] = max(0, m - (d - b) + 1) / (m + 1)
            elif mode == 'drop':
                probs[b] = (m / 2) / (d - 1)
            else:
                raise ValueError(f'mode {mode!r}: expected depth or drop.')
        out.append(probs)
    return out


def _counting_model(model):
    """(model to count on, device): a shape-only copy on the meta device, or the model itself where that fails."""
    try:
        copy = shape_only_copy(model)
    except Exception:  # e.g. a parameter type that cannot move to meta: count on the model itself
        return model, next(model.parameters()).device
    return copy, 'meta'


def subnet_cost(stimulator, input_size: Sequence[int], min_scale: float = 1.0,
                max_scale: float = 1.0, size_multiple: int = 1) -> Tuple[float, int]:
    """Expected cost of one subnetwork pass relative to the full network's pass at ``input_size``.

    Exact for the FLOPs torch counts: every distinct input size the task can draw is counted
    once (on a shape-only copy of the model, so nothing is computed), and per size the
    expectation over subnetworks follows from each block's FLOPs and its drop probability.

    Args:
        stimulator: the model's ``Stimulator`` (its space and mode define the subnetworks).
        input_size: training input size (C, H, W).
        min_scale, max_scale: subnetwork input size range, as ``StimulativeTask`` takes it.
        size_multiple: the grid of subnetwork input sides (``StimConfig.size_multiple``).

    Returns:
        (expected FLOPs of a subnetwork pass / FLOPs of the full pass, full forward FLOPs of one image).
    """
    from .stimulator import get_stimulator
    channels, height, width = (int(v) for v in input_size)
    scaled = (min_scale, max_scale) != (1.0, 1.0)
    multiple = subnet_size_multiple(stimulator, size_multiple) if scaled else 1
    sizes = input_size_choices(height, width, min_scale, max_scale, multiple)
    model, device = _counting_model(stimulator.model)
    stim = get_stimulator(model) if model is not stimulator.model else stimulator
    blocks = [b for stage in stim.adapter.stages(model) for b in stage]
    probs = [p for stage in drop_probabilities(stim.stage_depths, stim.max_drops, stim.mode) for p in stage]

    def expected_flops(size: Tuple[int, int]) -> float:
        total, per_block = block_flops(model, blocks, (channels, *size), device)
        return total - sum(p * f for p, f in zip(probs, per_block))

    full_flops, _ = block_flops(model, [], (channels, height, width), device)
    counted = {size: expected_flops(size) for size in sorted(set(sizes))}
    return sum(counted[size] for size in sizes) / len(sizes) / full_flops, full_flops


def affordable_subnets(cost: float, budget: float, num_subnets: int = 0, what: str = '') -> float:
    """Subnetworks per step, on average, whose expected cost ``cost`` each adds up to ``budget``.

    Args:
        cost: expected cost of one subnetwork pass (``subnet_cost``).
        budget: ``--stim-budget``.
        num_subnets: ``--stim-subnets``; must be 0 (not given) when a budget is.
        what: the space and sizes the cost is for, named in error messages.

    Raises:
        InputError: the budget is below one subnetwork per step, or a number of subnetworks was
            given too.
    """
    check_budget(budget)
    about = f' ({what})' if what else ''
    if num_subnets:
        raise InputError(f'--stim-subnets {num_subnets} and --stim-budget {budget:g}: give one of them. The budget '
                         f'runs {budget / cost:.3g} subnetworks per step on average, each costing {cost:.3f} of a full '
                         f'pass{about} (set --stim-subnets 0, e.g. in a -c config, to let the budget choose).')
    if budget < cost:
        smallest = math.ceil(cost * 100) / 100
        raise InputError(f'--stim-budget {budget:g} is below the cost of one subnetwork: each costs {cost:.3f} of a '
                         f'full forward+backward pass on average{about}. Use --stim-budget {smallest:g} or more, or '
                         f'make subnetworks cheaper (a space that drops more blocks, a lower --stim-min-scale or '
                         f'--stim-max-scale).')
    return budget / cost


def resolve_budget(stimulator, input_size: Sequence[int], min_scale: float = 1.0, max_scale: float = 1.0,
                   budget: Optional[float] = None, num_subnets: int = 0,
                   cost: Optional[float] = None, size_multiple: int = 1) -> BudgetPlan:
    """Subnetworks per step for a compute budget, and the expected cost of a step.

    With ``budget``: ``K = budget / subnet_cost`` subnetworks per step on average (a
    fraction: the task draws the whole number each step), so the expected extra cost is the
    budget; ``num_subnets`` must then be 0. Without ``budget``: the plan for ``num_subnets``
    as given (its expected cost, for the log).

    Args:
        stimulator: the model's ``Stimulator``.
        input_size: training input size (C, H, W).
        min_scale, max_scale: subnetwork input size range.
        budget: extra cost per step in full forward+backward passes (``--stim-budget``), or None.
        num_subnets: ``--stim-subnets`` (0: not given).
        cost: ``subnet_cost(...)[0]`` for the same model, space and sizes, when already counted.
        size_multiple: the grid of subnetwork input sides (``StimConfig.size_multiple``).

    Returns:
        The ``BudgetPlan``.

    Raises:
        InputError: a budget that is not a number > 0, below the cost of one subnetwork, or
            given together with ``num_subnets``.
    """
    check_budget(budget)  # before any counting
    if cost is None:
        cost, full_flops = subnet_cost(stimulator, input_size, min_scale, max_scale, size_multiple)
    else:
        from .flops import count_flops
        full_flops = count_flops(shape_only_copy(stimulator.model), input_size, 'meta')
    height, width = (int(v) for v in input_size[-2:])
    scaled = (min_scale, max_scale) != (1.0, 1.0)
    sizes = input_size_choices(height, width, min_scale, max_scale,
                               subnet_size_multiple(stimulator, size_multiple) if scaled else 1)
    sides = (min(min(s) for s in sizes), max(min(s) for s in sizes))
    if budget is None:
        k = num_subnets
    else:
        what = (f'space {stimulator.space!r} ({stimulator.mode} mode) of {type(stimulator.model).__name__}, inputs '
                f'{sides[0]}-{sides[1]} px of {min(height, width)}')
        k = affordable_subnets(cost, budget, num_subnets, what)
    return BudgetPlan(None if budget is None else float(budget), k, cost, k * cost, full_flops,
                      tuple(int(v) for v in input_size), sides)


class TimeBudget:
    """Steers the number of subnetworks per step so that their passes take ``budget`` plain passes of time.

    ``--stim-budget B --stim-budget-unit time``: FLOPs are not time on a device (small inputs cost
    more than their FLOPs, a new shape costs a compile or a cuDNN search), so the task times each
    step's passes (after a device synchronization) and tells this controller:

    * the plain pass (full forward and backward) is the median of the last ``window`` timed ones;
    * a subnetwork pass costs its time over that; the cost of one pass, ``c``, is the mean over
      calibrated passes: the first pass at each input size (where a graph compiles or cuDNN
      searches) and passes above ``outlier`` times the estimate are left out;
    * the next step runs ``K = (B + D / horizon) / c`` subnetworks on average, ``D`` the budget
      left unspent so far (steps realize ``B`` on average; the task draws ``floor(K)`` or
      ``floor(K) + 1``).

    Before the first calibrated pass, ``K`` is ``start`` (the FLOPs estimate, or ``--stim-subnets``).

    Args:
        budget: extra cost per step in plain passes of measured time.
        start: K until passes are calibrated.
        warmup_steps: first steps left out of every estimate (allocator and autotuning warm-up).
        horizon: steps over which a deficit or surplus is paid back.
        window: plain passes the median is taken over.
        outlier: passes this many times the expected pass are left out of the estimate.
    """

    def __init__(self, budget: float, start: float, warmup_steps: int = 2, horizon: float = 10.0,
                 window: int = 50, outlier: float = 4.0):
        check_budget(budget)
        self.budget = float(budget)
        self.start = float(start) if start and start > 0 else float(budget)
        self.warmup_steps = int(warmup_steps)
        self.horizon = float(horizon)
        self.window = int(window)
        self.outlier = float(outlier)
        self.steps = 0
        self._plain: List[float] = []
        self._seen_sizes = set()
        self._pass_cost_sum = 0.0
        self._pass_count = 0
        self._deficit = 0.0

    @property
    def pass_cost(self) -> Optional[float]:
        """Calibrated cost of one subnetwork pass in plain passes, or None before any."""
        return self._pass_cost_sum / self._pass_count if self._pass_count else None

    def num_subnets(self) -> float:
        """Subnetworks to run next step, on average (``floor`` or ``ceil`` drawn by the task)."""
        cost = self.pass_cost
        if cost is None:
            return self.start
        wanted = self.budget + self._deficit / self.horizon
        return min(max(wanted, 0.0), 4.0 * self.budget) / cost

    def record(self, plain_s: float, passes: Sequence[Tuple[Tuple[int, int], float]]) -> float:
        """Record one step's timings; returns its realized extra cost, in plain passes.

        Args:
            plain_s: seconds of the full network's forward and backward.
            passes: ``(input size, seconds)`` of each subnetwork pass, in order.

        Returns:
            Sum of the subnetwork passes' seconds over the plain pass estimate (this step's cost).
        """
        self.steps += 1
        calibrating = self.steps > self.warmup_steps
        if calibrating:
            self._plain = (self._plain + [float(plain_s)])[-self.window:]
        plain = statistics.median(self._plain) if self._plain else float(plain_s)
        realized = sum(seconds for _, seconds in passes) / plain
        if not calibrating:
            self._seen_sizes.update(tuple(size) for size, _ in passes)
            return realized
        calibrated, warm = 0.0, 0  # warm-up passes count at the estimate in the budget's account
        for size, seconds in passes:
            cost = seconds / plain
            first = tuple(size) not in self._seen_sizes
            self._seen_sizes.add(tuple(size))
            estimate = self.pass_cost
            if first or (estimate is not None and cost > self.outlier * estimate):
                warm += 1
                continue
            self._pass_cost_sum += cost
            self._pass_count += 1
            calibrated += cost
        if self.pass_cost is not None:
            self._deficit += self.budget - (calibrated + warm * self.pass_cost)
        return realized
