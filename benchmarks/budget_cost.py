"""Does a step at ``--stim-budget B`` cost what the budget says? (BENCHMARKS.md, "ST at a chosen compute budget")

For each budget: ``timm_stim.budget.resolve_budget`` gives the mean K (the task draws the
whole number every step) and the expected extra cost (FLOPs); then plain timm steps and ST++
steps (stpp space, KL-, inputs
0.43-1) are timed in alternating rounds, the subnetworks and sizes drawn afresh every step
as in training (the expected cost is an average over draws, so every step draws). The
realized extra cost is ``mean ST step / mean plain step - 1``, in plain steps, to be compared
with the expected cost and with B.

    python benchmarks/budget_cost.py                          # CPU: resnet50, 128 px, batch 16
    python benchmarks/budget_cost.py --device cuda --amp --channels-last --model resnet50 --size 224 --batch 128
"""
import argparse
import copy
import statistics
import time
from contextlib import nullcontext
from functools import partial
from typing import Any, Dict, List

import _common  # noqa: F401  (puts the repository on sys.path)
import timm
import torch
import torch.nn as nn
from timm.task import ClassificationTask

from _common import describe, machine, resolve_device, sync, write_json
from timm_stim import StimulativeTask, attach
from timm_stim.budget import resolve_budget, subnet_cost

MIN_SCALE = 0.43


def timed_steps(task, optimizer, x, y, autocast, steps: int, device) -> List[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with autocast():
            out = task(x, y)
        out['loss'].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def setup(args, device: torch.device):
    """What both budget scripts time: the model, one batch, autocast, the loss, and the plain timm task.

    Returns:
        (model on the CPU, x, y, autocast context factory, criterion, plain task, its optimizer).
    """
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if args.amp else nullcontext
    torch.manual_seed(getattr(args, 'seed', 0))
    base = timm.create_model(args.model, num_classes=1000)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    criterion = nn.CrossEntropyLoss()
    plain_model = copy.deepcopy(base).to(device).train()
    plain = ClassificationTask(plain_model, criterion, device=device, verbose=False)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=1e-4, momentum=0.9)
    return base, x, y, autocast, criterion, plain, plain_opt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None)
    parser.add_argument('--model', default='resnet50')
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--budgets', type=float, nargs='+', default=[0.5, 1.0, 2.0])
    parser.add_argument('--rounds', type=int, default=4, help='alternating rounds of plain and ST steps')
    parser.add_argument('--steps', type=int, default=8, help='timed steps per variant and round')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    base, x, y, autocast, criterion, plain, plain_opt = setup(args, device)
    info = machine(device)
    print(f'# budget cost on {describe(info)}', flush=True)
    results: List[Dict[str, Any]] = []
    # One subnetwork's expected cost depends on the space and sizes only: count it once.
    probe = attach(copy.deepcopy(base), space='stpp')
    cost, _ = subnet_cost(probe, (3, args.size, args.size), MIN_SCALE, 1.0)
    # Every budget resolved before any step is timed: one that cannot afford a subnetwork stops
    # the run here, not after the others have been measured.
    plans = {budget: resolve_budget(probe, (3, args.size, args.size), MIN_SCALE, 1.0, budget=budget, cost=cost)
             for budget in args.budgets}
    for budget in args.budgets:
        model = copy.deepcopy(base).train()
        attach(model, space='stpp')
        plan = plans[budget]
        model.to(device)
        # plan.num_subnets is the mean the budget affords (e.g. 1.83): the task draws 1 or 2 every step.
        task = StimulativeTask(model, criterion, num_subnets=plan.num_subnets, min_scale=MIN_SCALE,
                               normalize='kl', device=device, verbose=False, seed=0)
        expected = plan.expected_cost
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        timed_steps(plain, plain_opt, x, y, autocast, args.warmup, device)
        timed_steps(task, opt, x, y, autocast, args.warmup, device)
        plain_times, st_times = [], []
        for r in range(args.rounds):
            # Alternate which goes first so that slow drifts of a shared machine hit both alike.
            order = (('plain', 'st') if r % 2 == 0 else ('st', 'plain'))
            for which in order:
                if which == 'plain':
                    plain_times += timed_steps(plain, plain_opt, x, y, autocast, args.steps, device)
                else:
                    st_times += timed_steps(task, opt, x, y, autocast, args.steps, device)
        p, s = statistics.mean(plain_times), statistics.mean(st_times)
        realized = s / p - 1
        k = f'{plan.num_subnets:.2f} on average'
        results.append({**plan.to_dict(), 'subnets_per_step': k,
                        'expected_cost': expected, 'plain_step_s': p, 'st_step_s': s, 'realized_cost': realized,
                        'realized_over_expected': realized / expected, 'realized_over_budget': realized / budget,
                        'plain_times_s': plain_times, 'st_times_s': st_times})
        print(f'budget {budget:g}: K={k} expected {expected:.3f}, plain {p * 1e3:.1f} ms, '
              f'ST {s * 1e3:.1f} ms -> realized {realized:.3f} ({realized / expected:.3f} of expected, '
              f'{realized / budget:.3f} of the budget)', flush=True)
    out = args.out or f'{_common.ROOT}/benchmarks/results/budget_cost_{device.type}.json'
    write_json(out, {'machine': info, 'args': vars(args), 'results': results})


if __name__ == '__main__':
    main()
