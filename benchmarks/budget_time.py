"""Does ``--stim-budget B --stim-budget-unit time`` cost B plain steps of time? (BENCHMARKS.md, section 13)

For each requested budget, in a shuffled order (so that a drift of a shared machine does not
line up with the budgets): an ST++ task (stpp space, KL-, inputs 0.43-1, optionally on a grid)
steers its number of subnetworks from timed passes (``timm_stim.budget.TimeBudget``), starting
from the FLOPs estimate. After ``--warmup`` untimed steps (the controller calibrates, every size
gets drawn), plain timm steps and ST++ steps run in alternating rounds, drawing subnetworks and
sizes afresh every step as in training. The realized extra cost is ``mean ST++ step / mean
plain step - 1`` (means: the budget is a mean), reported with the median, min and max of both.
``cudnn.benchmark`` is on on CUDA, as in training.

    python benchmarks/budget_time.py                       # CPU: resnet18, 32 px, batch 64
    python benchmarks/budget_time.py --device cuda --amp --channels-last --model resnet50 --size 224 --batch 128
"""
import argparse
import copy
import random
import statistics
from typing import Any, Dict, List

import _common  # noqa: F401  (puts the repository on sys.path)
import timm
import torch

from _common import describe, machine, resolve_device, write_json
from budget_cost import MIN_SCALE, setup, timed_steps
from timm_stim import StimulativeTask, attach
from timm_stim.budget import resolve_budget


def spread(times: List[float]) -> Dict[str, float]:
    return {'mean_s': statistics.mean(times), 'median_s': statistics.median(times), 'min_s': min(times),
            'max_s': max(times), 'steps': len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None)
    parser.add_argument('--model', default='resnet18')
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--budgets', type=float, nargs='+', default=[0.75, 1.0, 2.0, 3.0])
    parser.add_argument('--size-multiple', type=int, default=1, help='--stim-size-multiple (1: every size)')
    parser.add_argument('--rounds', type=int, default=3, help='alternating rounds of plain and ST++ steps')
    parser.add_argument('--steps', type=int, default=10, help='timed steps per variant and round')
    parser.add_argument('--warmup', type=int, default=15, help='untimed ST++ steps first (calibration)')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--seed', type=int, default=0, help='seed of the budget order and the draws')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    base, x, y, autocast, criterion, plain, plain_opt = setup(args, device)
    info = machine(device)
    print(f'# budget in time on {describe(info)}', flush=True)
    timed_steps(plain, plain_opt, x, y, autocast, 3, device)
    order = list(args.budgets)
    random.Random(args.seed).shuffle(order)
    results: List[Dict[str, Any]] = []
    for budget in order:
        model = copy.deepcopy(base).train()
        stim = attach(model, space='stpp')
        start = resolve_budget(stim, (3, args.size, args.size), MIN_SCALE, 1.0, budget=budget,
                               size_multiple=args.size_multiple).num_subnets  # what training starts from
        model.to(device)
        task = StimulativeTask(model, criterion, budget=budget, budget_unit='time', num_subnets=start,
                               min_scale=MIN_SCALE, normalize='kl', size_multiple=args.size_multiple,
                               device=device, verbose=False, seed=args.seed)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        timed_steps(task, opt, x, y, autocast, args.warmup, device)
        plain_times, st_times, ks = [], [], []
        steps_before = task.time_budget.steps
        for r in range(args.rounds):
            for which in (('plain', 'st') if r % 2 == 0 else ('st', 'plain')):
                if which == 'plain':
                    plain_times += timed_steps(plain, plain_opt, x, y, autocast, args.steps, device)
                else:
                    for _ in range(args.steps):
                        ks.append(task.time_budget.num_subnets())
                        st_times += timed_steps(task, opt, x, y, autocast, 1, device)
        assert task.time_budget.steps - steps_before == len(st_times)
        p, s = statistics.mean(plain_times), statistics.mean(st_times)
        realized = s / p - 1
        results.append({'requested': budget, 'realized': realized, 'realized_over_requested': realized / budget,
                        'flops_k': start, 'mean_k': statistics.mean(ks), 'calibrated_pass_cost': task.time_budget.pass_cost,
                        'plain_step': spread(plain_times), 'st_step': spread(st_times)})
        print(f'budget {budget:g} (time): K {start:.2f} by FLOPs -> {statistics.mean(ks):.2f} steered; plain '
              f'{p * 1e3:.1f} ms, ST++ {s * 1e3:.1f} ms -> realized {realized:.3f} ({realized / budget:.3f} of the '
              f'budget)', flush=True)
    results.sort(key=lambda r: r['requested'])
    out = args.out or f'{_common.ROOT}/benchmarks/results/budget_time_{device.type}.json'
    write_json(out, {'machine': info, 'args': vars(args), 'order': order, 'results': results})


if __name__ == '__main__':
    main()
