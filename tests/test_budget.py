"""--stim-budget: expected cost of subnetwork passes from FLOPs, the K it affords, refusals."""
import itertools
import math

import pytest
import timm
import torch
import yaml

import timm_stim
from timm_stim.training.args import parse_args
from timm_stim.budget import (BudgetPlan, affordable_subnets, check_budget, drop_probabilities,
                              input_size_choices, resolve_budget, subnet_cost)
from timm_stim.errors import InputError
from timm_stim.flops import block_flops, count_flops, shape_only_copy
from timm_stim.subnet import Subnet
from timm_stim.inputs import sample_input_size
from timm_stim.task import StimulativeTask


def _resnet18(space='uniform', mode='depth'):
    model = timm.create_model('resnet18', num_classes=10)
    return model, timm_stim.attach(model, space=space, mode=mode)


def _all_depth_subnets(stim):
    """Every subnetwork of a depth-mode space, each equally likely (one drop count per stage)."""
    per_stage = [range(m + 1) for m in stim.max_drops]
    return [Subnet.from_depths([d - n for d, n in zip(stim.stage_depths, drops)])
            for drops in itertools.product(*per_stage)]


@pytest.mark.slow
def test_subnet_cost_is_the_exact_mean_over_every_subnet_and_input_size():
    # The expectation from per-block FLOPs equals counting every (subnet, size) pair the task can draw.
    model, stim = _resnet18('uniform')
    cost, full = subnet_cost(stim, (3, 16, 16), 0.8, 1.0)
    assert full == count_flops(model, (3, 16, 16))
    sizes = input_size_choices(16, 16, 0.8, 1.0)
    assert sizes == [(12, 12), (13, 13), (14, 14), (15, 15), (16, 16)]
    # Counted on a shape-only copy (FLOPs depend on shapes only; nothing is computed).
    meta = shape_only_copy(model)
    meta_stim = timm_stim.get_stimulator(meta)
    counts = []
    for subnet in _all_depth_subnets(meta_stim):
        for size in sizes:
            with meta_stim.activate(subnet):
                counts.append(count_flops(meta, (3, *size), 'meta'))
    assert cost == pytest.approx(sum(counts) / len(counts) / full, rel=1e-12)
    assert 0.4 < cost < 1.0


def test_full_size_inputs_and_a_fixed_space_cost_one_full_pass():
    model, stim = _resnet18('0,0,0,0')
    cost, _ = subnet_cost(stim, (3, 32, 32))
    assert cost == 1.0


def test_block_flops_add_up_to_the_blocks_share_of_the_model():
    model, stim = _resnet18()
    blocks = [b for stage in stim.adapter.stages(model) for b in stage]
    total, per_block = block_flops(model, blocks, (3, 32, 32))
    assert total == count_flops(model, (3, 32, 32))
    # Dropping block 1 of every stage removes exactly those blocks' FLOPs.
    with stim.activate(Subnet.from_depths([1, 1, 1, 1])):
        assert count_flops(model, (3, 32, 32)) == total - sum(per_block[1::2])


@pytest.mark.parametrize('mode', ['depth', 'drop'])
def test_drop_probabilities_match_the_sampler(mode):
    model = timm.create_model('resnet34', num_classes=10)
    stim = timm_stim.attach(model, space='uniform', mode=mode)
    probs = drop_probabilities(stim.stage_depths, stim.max_drops, mode)
    generator = torch.Generator().manual_seed(0)
    draws = 3000
    dropped = [[0] * d for d in stim.stage_depths]
    for _ in range(draws):
        for s, blocks in enumerate(stim.sample(generator).dropped(stim.stage_depths)):
            for b in blocks:
                dropped[s][b] += 1
    for s, stage in enumerate(probs):
        assert stage[0] == 0.0 and dropped[s][0] == 0
        for b, p in enumerate(stage):
            assert dropped[s][b] / draws == pytest.approx(p, abs=0.035), (s, b)
    # depth mode: the last block of a 6-block stage (max drop 5) is dropped unless n == 0.
    if mode == 'depth':
        assert probs[2] == [0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6]
    else:
        assert probs[2] == [0] + [2.5 / 5] * 5


@pytest.mark.parametrize('height,width,lo,hi,multiple', [(32, 32, 0.5, 1.0, 1), (20, 30, 0.43, 0.9, 1),
                                                         (48, 48, 0.43, 1.0, 16), (30, 20, 0.6, 1.0, 1)])
def test_input_size_choices_are_what_the_task_draws(height, width, lo, hi, multiple):
    choices = input_size_choices(height, width, lo, hi, multiple)
    generator = torch.Generator().manual_seed(0)
    drawn = {sample_input_size(height, width, lo, hi, generator, multiple) for _ in range(1500)}
    assert drawn == set(choices)
    short = min(height, width)
    assert len(choices) == math.floor(short * hi) - max(1, math.floor(short * lo)) + 1


@pytest.fixture(scope='module')
def stpp_plan():
    """resnet18, stpp space, 16 px inputs scaled 0.5-1: (stimulator, plan for budget 2)."""
    _, stim = _resnet18('stpp')
    return stim, resolve_budget(stim, (3, 16, 16), 0.5, 1.0, budget=2.0)


def test_budget_resolves_the_mean_number_of_subnets_that_costs_it(stpp_plan):
    stim, plan = stpp_plan
    cost, full = subnet_cost(stim, (3, 16, 16), 0.5, 1.0)
    assert plan.subnet_cost == cost and plan.full_flops == full and plan.budget == 2.0
    assert plan.num_subnets == pytest.approx(2.0 / cost) and plan.expected_cost == pytest.approx(2.0)
    assert plan.subnet_sides == (8, 16) and plan.input_size == (3, 16, 16)
    assert [affordable_subnets(0.5, b) for b in (0.5, 0.8, 1.0, 2.0)] == [1.0, 1.6, 2.0, 4.0]


def test_fractional_subnets_are_drawn_per_step_with_the_exact_mean():
    # K = 1.6: each step runs 1 or 2 subnetworks, 2 with probability 0.6, from the task's generator.
    model, _ = _resnet18('stpp')
    task = StimulativeTask(model, num_subnets=1.6, seed=3, verbose=False)
    counts = [task._subnets_this_step() for _ in range(4000)]
    assert set(counts) == {1, 2} and sum(counts) / len(counts) == pytest.approx(1.6, abs=0.03)
    again = StimulativeTask(model, num_subnets=1.6, seed=3, verbose=False)
    assert [again._subnets_this_step() for _ in range(4000)] == counts  # reproducible, so resume is exact
    whole = StimulativeTask(model, num_subnets=2, seed=3, verbose=False)
    state = whole.generator.get_state()
    assert whole._subnets_this_step() == 2 and torch.equal(whole.generator.get_state(), state)  # no draw


def test_no_budget_reports_the_cost_of_the_given_number(stpp_plan):
    stim, plan = stpp_plan
    # A cost counted before gives the same plan without counting every size again.
    assert resolve_budget(stim, (3, 16, 16), 0.5, 1.0, budget=2.0, cost=plan.subnet_cost) == plan
    given = resolve_budget(stim, (3, 16, 16), 0.5, 1.0, budget=None, num_subnets=3)
    assert given.budget is None and given.num_subnets == 3
    assert given.expected_cost == pytest.approx(3 * plan.subnet_cost)


def test_plan_is_saved_as_plain_yaml(stpp_plan):
    _, plan = stpp_plan
    saved = yaml.safe_load(yaml.safe_dump({'stim_resolved': plan.to_dict()}))['stim_resolved']
    assert saved == {'budget': 2.0, 'num_subnets': round(plan.num_subnets, 4), 'subnet_cost': round(plan.subnet_cost, 4),
                     'expected_cost': round(plan.expected_cost, 4), 'full_flops': plan.full_flops,
                     'input_size': [3, 16, 16], 'subnet_sides': [8, 16]}
    assert plan.describe().startswith(f'budget 2 -> {plan.num_subnets:.3g} subnetwork(s) per step')
    assert isinstance(plan, BudgetPlan)


def test_budget_below_one_subnet_is_refused_with_the_smallest_budget(stpp_plan):
    stim, plan = stpp_plan
    cost = plan.subnet_cost
    with pytest.raises(InputError) as e:
        resolve_budget(stim, (3, 16, 16), 0.5, 1.0, budget=cost / 2)
    message = str(e.value)
    assert f'--stim-budget {cost / 2:g} is below the cost of one subnetwork' in message
    assert f'{cost:.3f}' in message and "space 'stpp' (depth mode) of ResNet, inputs 8-16 px of 16" in message
    smallest = float(message.split('Use --stim-budget ')[1].split()[0])
    assert affordable_subnets(cost, smallest) >= 1 and smallest - 0.01 < cost <= smallest


def test_budget_with_stim_subnets_is_refused():
    with pytest.raises(InputError, match=r'--stim-subnets 6 and --stim-budget 1: give one of them\. The budget runs '
                                         r'3\.33 subnetworks per step on average, each costing 0\.300'):
        affordable_subnets(0.3, 1.0, 6)


@pytest.mark.parametrize('budget', [0, -1.0, float('nan'), float('inf'), '1', True])
def test_budget_that_is_not_a_positive_number_is_refused(budget):
    with pytest.raises(InputError, match=r'--stim-budget .*: expected a number > 0'):
        check_budget(budget)
    check_budget(None)
    check_budget(0.5)


def test_stim_budget_option():
    args, _ = parse_args(['--stim-budget', '1.5'])
    assert args.stim_budget == 1.5 and args.stim_subnets == 0
    assert parse_args([])[0].stim_budget is None
    with pytest.raises(SystemExit):
        parse_args(['--stim-budget', 'much'])


def test_size_grid_draws_multiples_and_the_budget_counts_what_it_draws():
    # --stim-size-multiple 4: sides 8..16 of a 16 px batch are rounded down to 8, 12 or 16.
    model, stim = _resnet18('stpp')
    task = StimulativeTask(model, num_subnets=2, min_scale=0.5, size_multiple=4, seed=0, verbose=False)
    x = torch.randn(2, 3, 16, 16)
    drawn = set()
    for _ in range(40):
        task.forward(x, torch.randint(0, 10, (2,)))
        drawn.update(size for _, size in task.last_subnets)
    assert drawn == {(8, 8), (12, 12), (16, 16)}
    sizes = input_size_choices(16, 16, 0.5, 1.0, 4)
    cost, full = subnet_cost(stim, (3, 16, 16), 0.5, 1.0, size_multiple=4)
    meta = shape_only_copy(model)
    meta_stim = timm_stim.get_stimulator(meta)
    counts = []
    for subnet in _all_depth_subnets(meta_stim):
        with meta_stim.activate(subnet):
            counts += [count_flops(meta, (3, *size), 'meta') for size in sizes]
    assert cost == pytest.approx(sum(counts) / len(counts) / full, rel=1e-12)
    assert cost < subnet_cost(stim, (3, 16, 16), 0.5, 1.0)[0]  # rounding down: smaller inputs on average


def test_time_budget_steers_k_to_the_budget_in_measured_time():
    # Plain pass 2 s; each subnetwork pass at 8 px takes 0.5 s, at 16 px 1.5 s (cost 0.25 and 0.75,
    # mean 0.5): a budget of 1.5 plain passes affords K = 3. The first pass at each size (a
    # compile) takes 100 s and is left out of the calibration.
    budget = timm_stim.budget.TimeBudget(1.5, start=1.0)
    generator = torch.Generator().manual_seed(0)
    realized, ks = [], []
    seen = set()
    for step in range(400):
        k = budget.num_subnets()
        ks.append(k)
        count = math.floor(k) + int(torch.rand((), generator=generator).item() < k - math.floor(k))
        passes = []
        for _ in range(count):
            side = 8 if torch.rand((), generator=generator).item() < 0.5 else 16
            seconds = 100.0 if side not in seen and step >= 2 else (0.5 if side == 8 else 1.5)
            seen.add(side)
            passes.append(((side, side), seconds))
        realized.append(budget.record(2.0, passes))
    assert ks[0] == 1.0  # the starting K until passes are timed
    assert budget.pass_cost == pytest.approx(0.5, rel=0.05)  # the mean of the calibrated passes
    assert sum(ks[-100:]) / 100 == pytest.approx(3.0, rel=0.1)
    assert sum(realized[-300:]) / 300 == pytest.approx(1.5, rel=0.05)  # the budget holds in time


def test_time_budget_reaches_the_task_and_its_cost_is_in_the_result():
    model, _ = _resnet18('stpp')
    task = StimulativeTask(model, budget=1.0, budget_unit='time', min_scale=0.5, seed=0, verbose=False)
    assert task.active and task.subnets_per_step == 1.0  # no K given: start at one subnetwork per budget unit
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    for _ in range(4):
        result = task.forward(x, y)
        result['loss'].backward()
        assert result['stim_cost'].item() > 0 and len(task._pass_times) == len(task.last_subnets)
    assert task.time_budget.steps == 4
    plain = StimulativeTask(model, num_subnets=1, verbose=False)
    assert 'stim_cost' not in plain.forward(x, y)  # FLOPs mode: nothing is timed


def test_time_unit_needs_a_budget_and_takes_a_starting_k():
    assert timm_stim.StimConfig(budget_unit='time').problems(cli=True) == [
        '--stim-budget-unit time needs --stim-budget: the budget to hold in measured time.']
    assert timm_stim.StimConfig(budget=1.0, num_subnets=2, budget_unit='time').problems() == []
    assert 'give one of them' in timm_stim.StimConfig(budget=1.0, num_subnets=2).problems()[0]
