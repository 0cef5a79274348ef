"""Cost of a stimulative training step against its arithmetic (BENCHMARKS.md, section 1).

For each model, in one process: the plain timm step (``timm.task.ClassificationTask``), the
ST step (K=1, uniform space, full-size inputs) and the ST++ step (K=6, stpp space, KL-,
input scale in [0.43, 1]). Every repetition of a variant replays one fixed sequence of
subnetworks and sizes (the task's generator is reset before each step). The arithmetic
ideal of a step is ``plain_step * (1 + sum_k FLOPs(subnet_k at s_k) / FLOPs(full at S))``
(forward FLOPs from ``torch.utils.flop_counter``); the figure of merit is measured / ideal.
Because small or odd-sized inputs run below peak FLOP efficiency, the script also times each
subnetwork pass on its own (plain forward + backward of that subnet at that size) and reports
measured / (plain step + those passes): the cost of the ST machinery itself.

    python benchmarks/step_cost.py                 # CPU (or CUDA when available)
    python benchmarks/step_cost.py --device cuda --amp
    python benchmarks/step_cost.py --quick         # resnet18 only, fewer repetitions
    python benchmarks/step_cost.py --device cuda --amp --channels-last --models resnet50:224:128 resnet50:200:128
    python benchmarks/step_cost.py ... --torchcompile inductor   # compiled as --torchcompile, eager rows beside

With ``--torchcompile`` the plain step is timm's (the network compiled whole) and the ST / ST++
steps compile as ``train_stim.py --torchcompile`` does (``StimulativeTask.compile``: each block
once, shared by the full network and every subnetwork); each variant is also timed eager on a
copy replaying the same subnetworks and sizes (the generator's state is taken before the step
that triggers compilation), and the plain step block-wise (``plain_blockwise``: compile time and
speed of the same regions without subnetworks). The ideal stays the compiled plain step times
``1 +`` the subnetworks' FLOPs share. Warm-up replays the timed sequence, so every subnetwork
and size is compiled (and, on CUDA, its cuDNN plan chosen: ``cudnn.benchmark`` is on, as in
training) before anything is timed.
"""
import argparse
import copy
import time
from contextlib import nullcontext
from functools import partial
from typing import Any, Dict, List

import _common  # noqa: F401  (puts the repository on sys.path)
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode
from timm.task import ClassificationTask

from _common import describe, machine, median_time, resolve_device, sync, write_json
from timm_stim import StimulativeTask, attach
from timm_stim.inputs import resize_batch

# (model, input size, CPU batch, CUDA batch)
MODELS = [
    ('resnet18', 32, 64, 256),
    ('resnet50', 128, 16, 128),
    ('resnext50_32x4d', 128, 16, 128),
]
VARIANTS = {
    'st': dict(num_subnets=1, space='uniform', min_scale=1.0, normalize='none'),
    'stpp': dict(num_subnets=6, space='stpp', min_scale=0.43, normalize='kl'),
}


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def make_step(task, optimizer, x, y, autocast, generator_state=None):
    def step():
        if generator_state is not None:
            task.generator.set_state(generator_state)  # replay the same subnets and sizes
        with autocast():
            out = task(x, y)
        out['loss'].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def compile_task(task, model, x, y, autocast, args, generator_state=None):
    """With ``--torchcompile``: compile the task as train_stim.py does and run one step, replaying
    ``generator_state`` (the timed sequence), to trigger compilation; its seconds, else None."""
    if not args.torchcompile:
        return None
    task.compile(backend=args.torchcompile)
    if generator_state is not None:
        task.generator.set_state(generator_state)
    start = time.perf_counter()
    with autocast():
        out = task(x, y)
    out['loss'].backward()
    model.zero_grad(set_to_none=True)
    sync(x.device)
    return time.perf_counter() - start


def make_subnet_pass(model, stim, subnet, x, y, autocast):
    def run():
        with stim.activate(subnet):
            with autocast():
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
        model.zero_grad(set_to_none=True)
    return run


def parse_model(spec: str):
    """``name`` (one of MODELS) or ``name:size:batch`` -> (name, size, CPU batch, CUDA batch)."""
    parts = spec.split(':')
    if len(parts) == 3:
        return parts[0], int(parts[1]), int(parts[2]), int(parts[2])
    known = [m for m in MODELS if m[0] == spec]
    if len(parts) != 1 or not known:
        raise SystemExit(f'--models {spec!r}: expected one of {", ".join(m[0] for m in MODELS)} or NAME:SIZE:BATCH')
    return known[0]


def bench_model(name: str, size: int, batch: int, device: torch.device, args) -> Dict[str, Any]:
    torch.manual_seed(0)
    base = timm.create_model(name, num_classes=1000).to(device)
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if args.amp else nullcontext
    criterion = nn.CrossEntropyLoss()
    result: Dict[str, Any] = {'model': name, 'input_size': size, 'batch_size': batch}

    model = copy.deepcopy(base).train()
    task = ClassificationTask(model, criterion, device=device, verbose=False)
    compile_s = compile_task(task, model, x, y, autocast, args)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    result['plain'] = median_time(make_step(task, optimizer, x, y, autocast), device, args.warmup, args.repeats)
    if compile_s is not None:
        result['plain']['compile_s'] = compile_s
        # The same network compiled block by block (the regions ST / ST++ share), no subnetworks.
        model_b = copy.deepcopy(base).train()
        task_b = ClassificationTask(model_b, criterion, device=device, verbose=False)
        attach(model_b).compile_blocks(backend=args.torchcompile)
        start = time.perf_counter()
        make_step(task_b, torch.optim.SGD(model_b.parameters(), lr=0.0), x, y, autocast)()
        sync(device)
        blockwise_s = time.perf_counter() - start
        optimizer_b = torch.optim.SGD(model_b.parameters(), lr=1e-4, momentum=0.9)
        result['plain_blockwise'] = {**median_time(make_step(task_b, optimizer_b, x, y, autocast), device, args.warmup,
                                                   args.repeats), 'compile_s': blockwise_s}
    full_flops = forward_flops(model, x)
    result['full_forward_gflops'] = full_flops / 1e9

    for variant, kwargs in VARIANTS.items():
        model = copy.deepcopy(base).train()
        kwargs = dict(kwargs)
        space = kwargs.pop('space')
        if variant == 'stpp':
            kwargs['size_multiple'] = args.size_multiple
        stim = attach(model, space=space)
        task = StimulativeTask(model, criterion, device=device, verbose=False, seed=args.seed, **kwargs)
        state = task.generator.get_state()  # before the compile trigger: compiled and eager replay the same
        compile_s = compile_task(task, model, x, y, autocast, args, state)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        timing = median_time(make_step(task, optimizer, x, y, autocast, state), device, args.warmup, args.repeats)
        if compile_s is not None:
            timing['compile_s'] = compile_s
            eager_model = copy.deepcopy(base).train()
            attach(eager_model, space=space)
            eager_task = StimulativeTask(eager_model, criterion, device=device, verbose=False, seed=args.seed, **kwargs)
            eager_opt = torch.optim.SGD(eager_model.parameters(), lr=1e-4, momentum=0.9)
            timing['eager'] = median_time(make_step(eager_task, eager_opt, x, y, autocast, state), device,
                                          args.warmup, args.repeats)
            assert eager_task.last_subnets == task.last_subnets  # the same subnetworks and sizes
        subnets = list(task.last_subnets)  # the fixed sequence every repetition ran
        ratios, standalone = [], []
        for subnet, sub_size in subnets:
            x_k = resize_batch(x, sub_size)
            with stim.activate(subnet):
                ratios.append(forward_flops(model, x_k) / full_flops)
            standalone.append(median_time(make_subnet_pass(model, stim, subnet, x_k, y, autocast), device,
                                          1, max(3, args.repeats // 2))['median_s'])
        ideal = result['plain']['median_s'] * (1 + sum(ratios))
        if 'eager' in timing:
            timing['eager']['over_compiled'] = timing['eager']['median_s'] / timing['median_s']
        # The same subnetwork passes timed one by one as plain forward+backward: what the
        # hardware charges for those shapes, without the ST machinery (KL, resize, bookkeeping).
        empirical = result['plain']['median_s'] + sum(standalone)
        result[variant] = {
            **timing,
            'subnets': [{'depths': list(s.depths), 'input': list(sz), 'flops_ratio': r}
                        for (s, sz), r in zip(subnets, ratios)],
            'sum_flops_ratio': sum(ratios),
            'ideal_s': ideal,
            'measured_over_ideal': timing['median_s'] / ideal,
            'standalone_passes_s': standalone,
            'empirical_ideal_s': empirical,
            'measured_over_empirical': timing['median_s'] / empirical,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--models', nargs='+', default=None,
                        help='subset of ' + ', '.join(m[0] for m in MODELS) + ', or NAME:SIZE:BATCH')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--torchcompile', default=None, metavar='BACKEND',
                        help='torch.compile the full network with this backend (e.g. inductor; eager for a quick check)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the fixed subnet/size sequence')
    parser.add_argument('--size-multiple', type=int, default=1,
                        help='ST++ subnetwork input sides on a grid of N px (--stim-size-multiple; 1: every size)')
    parser.add_argument('--quick', action='store_true', help='resnet18 only, 5 repetitions')
    parser.add_argument('--out', default=None, help='JSON file (default: benchmarks/results/step_cost_<device>.json)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = list(MODELS) if args.models is None else [parse_model(m) for m in args.models]
    if args.quick:
        models, args.repeats, args.warmup = models[:1], 5, 2
    info = machine(device)
    print(f'# step cost on {describe(info)}')
    results: List[Dict[str, Any]] = []
    for name, size, cpu_batch, cuda_batch in models:
        batch = cuda_batch if device.type == 'cuda' else cpu_batch
        r = bench_model(name, size, batch, device, args)
        results.append(r)
        print(f"{name} {size}px b{batch}: plain {r['plain']['median_s'] * 1e3:.1f} ms | "
              + ' | '.join(f"{v} {r[v]['median_s'] * 1e3:.1f} ms (ideal {r[v]['ideal_s'] * 1e3:.1f}, "
                           f"sum FLOPs ratio {r[v]['sum_flops_ratio']:.2f}) -> {r[v]['measured_over_ideal']:.3f}, "
                           f"vs standalone passes {r[v]['measured_over_empirical']:.3f}"
                           for v in VARIANTS), flush=True)
    out = args.out or f'{_common.ROOT}/benchmarks/results/step_cost_{device.type}{"_quick" if args.quick else ""}.json'
    write_json(out, {'machine': info, 'amp': args.amp, 'channels_last': args.channels_last,
                     'torchcompile': args.torchcompile, 'size_multiple': args.size_multiple,
                     'cudnn_benchmark': torch.backends.cudnn.benchmark, 'results': results})


if __name__ == '__main__':
    main()
