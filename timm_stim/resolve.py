"""Resolve a ``StimConfig`` for one model and its training sizes, once.

What the options mean for a run depends on the model and on the sizes training uses: a
compute budget becomes a number of subnetworks per step, the KL warm-in default follows the
learning rate's warm-up, and subnetwork input sizes follow every scheduled training size.
``resolve_config`` does all of it in one place and returns the resolved config that the task,
the log, ``args.yaml`` (``stim_resolved``) and the model card read.
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .budget import BudgetPlan, resolve_budget, subnet_cost
from .config import StimConfig
from .inputs import round_to_multiple, short_side_range, subnet_size_multiple
from .stimulator import Stimulator

__all__ = ['ResolvedStim', 'resolve_config', 'stable_start_epochs', 'default_warmin_epochs',
           'FINETUNE_WARMIN_FRACTION']

# From pretrained weights, the default KL warm-in is at most this fraction of the run: the body's
# features are already trained, only the new classifier starts small, and a fine-tune is short.
FINETUNE_WARMIN_FRACTION = 0.2
# A warm-in (given or default) over more than this fraction of the run is said in a warning.
LONG_WARMIN_FRACTION = 0.5


def stable_start_epochs(lr_warmup_epochs: float, lr_per_update: bool) -> float:
    """Epochs over which the KL weight warms in by default: a stable start (docs: "A stable start").

    At initialization the logits spread little (std ~0.3), so each KL- term's gradient, which
    the layer norm divides by that spread, is as large as the task loss's and K of them add up;
    the first steps at a high learning rate then blow the logits up (measured, BENCHMARKS.md).
    A learning rate that warms up per update lets the logits grow first: no warm-in is needed
    (0). A warm-up stepped per epoch jumps to a high rate at once after its last epoch, so the
    KL weight rises over the warm-up epochs plus one and is still partial at that jump. No
    warm-up (the paper's recipes): 0, as the official code.

    Args:
        lr_warmup_epochs: the learning rate's warm-up epochs (``--warmup-epochs``).
        lr_per_update: whether the schedule steps per update (``--sched-on-updates``).

    Returns:
        Epochs for ``StimConfig.weight_warmup_epochs``.
    """
    if lr_warmup_epochs <= 0 or lr_per_update:
        return 0.0
    return float(lr_warmup_epochs) + 1.0


@dataclass
class ResolvedStim:
    """A ``StimConfig`` resolved for a model and its training sizes.

    Attributes:
        config: the config with ``num_subnets`` (from the budget, which is then None) and
            ``weight_warmup_epochs`` (the stable-start default) filled in: what the task trains with.
        plan: the compute plan (``--stim-budget``), else None.
        summary: plain values for the log, ``args.yaml``'s ``stim_resolved`` and the model card.
        warmup_by_default: whether the KL warm-in comes from the default rule (not given).
        warnings: what the log should warn about (e.g. a warm-in covering most of the run).
        warmup_note: why the default warm-in has its length, for the log ('' for the stable-start rule).
    """
    config: StimConfig
    plan: Optional[BudgetPlan]
    summary: Dict[str, Any]
    warmup_by_default: bool = False
    warnings: List[str] = dataclasses.field(default_factory=list)
    warmup_note: str = ''


def _subnet_short_sides(stimulator: Stimulator, config: StimConfig,
                        train_sizes: Sequence[Sequence[int]]) -> Tuple[int, int]:
    """Smallest and largest shorter side subnetwork inputs get, over every training size."""
    scaled = (config.min_scale, config.max_scale) != (1.0, 1.0)
    multiple = subnet_size_multiple(stimulator, config.size_multiple) if scaled else 1
    lows, highs = [], []
    for size in train_sizes:
        short = min(int(size[-2]), int(size[-1]))
        if not scaled:  # full-size inputs are used as they are
            lows.append(short)
            highs.append(short)
            continue
        low, high = short_side_range(short, config.min_scale, config.max_scale)
        lows.append(round_to_multiple([low], multiple)[0])
        highs.append(round_to_multiple([high], multiple)[0])
    return min(lows), max(highs)


def _budget_plan(stimulator: Stimulator, config: StimConfig, train_sizes: Sequence[Sequence[int]]) -> BudgetPlan:
    """The compute plan over the training sizes (each scheduled size weighs the same)."""
    if len(train_sizes) == 1:
        return resolve_budget(stimulator, train_sizes[0], config.min_scale, config.max_scale, budget=config.budget,
                              num_subnets=_flops_subnets(config), size_multiple=config.size_multiple)
    costs = [subnet_cost(stimulator, size, config.min_scale, config.max_scale, config.size_multiple)[0]
             for size in train_sizes]
    largest = max(train_sizes, key=lambda s: int(s[-2]) * int(s[-1]))
    return resolve_budget(stimulator, largest, config.min_scale, config.max_scale, budget=config.budget,
                          num_subnets=_flops_subnets(config), cost=sum(costs) / len(costs),
                          size_multiple=config.size_multiple)


def _flops_subnets(config: StimConfig) -> float:
    """``num_subnets`` as the FLOPs plan checks it (a budget in time may come with a starting K)."""
    return 0 if config.budget_unit == 'time' else config.num_subnets


def default_warmin_epochs(lr_warmup_epochs: float, lr_per_update: bool, epochs: Optional[int] = None,
                          pretrained: bool = False) -> Tuple[float, str]:
    """The default KL warm-in (``--stim-weight-warmup`` not given) and, when shortened, why.

    The stable start (``stable_start_epochs``: timm's default ``--warmup-epochs 5`` gives 6
    epochs). From pretrained weights it is at most ``FINETUNE_WARMIN_FRACTION`` of the ``epochs``
    of the run: a fine-tune is short, and its trained body needs the subnetwork terms from early on.

    Returns:
        (epochs of warm-in, a note for the log, '' when the stable-start rule stands).
    """
    warmup = stable_start_epochs(lr_warmup_epochs, lr_per_update)
    if pretrained and epochs and warmup > FINETUNE_WARMIN_FRACTION * epochs:
        shortened = round(FINETUNE_WARMIN_FRACTION * epochs, 4)
        return shortened, (f'shortened from {warmup:g} (--warmup-epochs {lr_warmup_epochs:g} + 1) to '
                           f'{FINETUNE_WARMIN_FRACTION:g} of the {epochs} epochs: the run starts from pretrained '
                           f'weights')
    return warmup, ''


def resolve_config(config: StimConfig, stimulator: Stimulator, train_sizes: Sequence[Sequence[int]],
                   lr_warmup_epochs: float = 0.0, lr_per_update: bool = False, epochs: Optional[int] = None,
                   pretrained: bool = False) -> ResolvedStim:
    """Resolve ``config`` for the model ``stimulator`` is attached to.

    Args:
        config: the options as given (checked).
        stimulator: the model's ``Stimulator``.
        train_sizes: every input size (C, H, W) training feeds the full network (several with
            scheduled sizes, e.g. timm's ``--train-img-sizes``).
        lr_warmup_epochs, lr_per_update: the learning rate's warm-up, for the KL warm-in default.
        epochs: the run's epochs (``--epochs``), if known: a warm-in over more than half of them is
            warned about, and from pretrained weights the default is at most a fifth of them.
        pretrained: whether training starts from pretrained weights (``--pretrained``,
            ``--initial-checkpoint``): see ``default_warmin_epochs``.

    Returns:
        The ``ResolvedStim``.

    Raises:
        InputError: a budget below the cost of one subnetwork (``timm_stim.budget``).
    """
    train_sizes = [tuple(int(v) for v in size) for size in train_sizes]
    plan = _budget_plan(stimulator, config, train_sizes) if config.budget is not None else None
    by_default = config.weight_warmup_epochs is None
    warmup, note = (default_warmin_epochs(lr_warmup_epochs, lr_per_update, epochs, pretrained) if by_default
                    else (float(config.weight_warmup_epochs), ''))
    warnings = []
    if epochs and warmup > LONG_WARMIN_FRACTION * epochs:
        origin = (f'the default, --warmup-epochs {lr_warmup_epochs:g} + 1' if by_default
                  else '--stim-weight-warmup')
        warnings.append(f'The KL warm-in ({origin}) covers {warmup:g} of the {epochs} epochs: the subnetworks train '
                        f'at full weight for {max(epochs - warmup, 0):g} epochs or less. Set --stim-weight-warmup to '
                        f'a few epochs (or 0), or step the learning rate per update (--sched-on-updates).')
    # The budget is spent on K: the resolved config holds the K it affords (the plan keeps the budget).
    # A budget in time stays: the task steers K from measured passes, starting from the K given or the FLOPs one.
    in_time = config.budget_unit == 'time'
    k = (config.num_subnets or plan.num_subnets) if in_time else (
        plan.num_subnets if plan is not None else config.num_subnets)
    resolved = dataclasses.replace(config, num_subnets=k, budget=config.budget if in_time else None,
                                   weight_warmup_epochs=warmup)
    sides = _subnet_short_sides(stimulator, config, train_sizes)
    summary = {
        'enabled': True,
        'family': stimulator.adapter.family,
        'stage_depths': list(stimulator.stage_depths),
        'max_drops': list(stimulator.max_drops),
        'depth_choices': [list(c) for c in stimulator.depth_choices],
        'input_size': list(train_sizes[0]),
        **({'train_input_sizes': [list(s) for s in train_sizes]} if len(train_sizes) > 1 else {}),
        'subnet_input_short_side': list(sides),
        'subnets_per_step': round(resolved.num_subnets, 4),
        **({'budget_unit': 'time'} if in_time else {}),
        'total_kl_weight': round(resolved.num_subnets * resolved.kl_weight, 4),
        'kl_weight_warmup_epochs': warmup,
        **({'budget': plan.budget, 'subnet_cost': round(plan.subnet_cost, 4),
            'expected_cost': round(plan.expected_cost, 4), 'full_forward_flops': plan.full_flops}
           if plan is not None else {}),
        'config': resolved.to_dict(),
    }
    return ResolvedStim(config=resolved, plan=plan, summary=summary, warmup_by_default=by_default and warmup > 0,
                        warnings=warnings, warmup_note=note)


def describe(resolved: Optional[ResolvedStim]) -> List[str]:
    """Log lines for a resolved configuration."""
    if resolved is None:
        return []
    import yaml
    shown = {k: v for k, v in resolved.summary.items() if k != 'config'}
    # One option a line, each value as YAML on one line (``stage_depths: [2, 2, 2, 2]``).
    lines = ['Stimulative training:'] + [
        '  ' + yaml.safe_dump({k: v}, default_flow_style=True, width=10 ** 6).strip()[1:-1] for k, v in shown.items()]
    if resolved.plan is not None:
        lines.append('Stimulative training cost: ' + resolved.plan.describe())
    if resolved.warmup_by_default:
        lines.append(f'KL warm-in (timm-stim\'s stable start, not in the paper) on by default: the KL weight rises '
                     f'from 0 over {resolved.config.weight_warmup_epochs:g} epochs'
                     f'{f" ({resolved.warmup_note})" if resolved.warmup_note else ""}; --stim-weight-warmup 0 turns '
                     f'it off.')
    return lines
