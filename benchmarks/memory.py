"""Peak memory of the ST++ step against the plain step (BENCHMARKS.md, section 2).

Variants: ``plain`` (timm ClassificationTask), ``stpp`` (StimulativeTask, K=6, stpp, scale
0.43-1: one subnetwork graph alive at a time) and ``stpp_joint`` (the same K=6 subnetworks
with all graphs kept and one backward of the summed loss, as a naive implementation does;
shown to explain why timm_stim back-propagates each subnetwork at once).
CUDA: ``torch.cuda.max_memory_allocated``. CPU: peak RSS of a fresh subprocess per variant,
reported in total and above the RSS reached before the first step (model, optimizer, batch).

    python benchmarks/memory.py [--device cuda] [--model resnet50 --size 128 --batch 16]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
from contextlib import nullcontext
from functools import partial
from typing import Dict

import _common  # noqa: F401
import torch
import torch.nn as nn

from _common import describe, machine, resolve_device, write_json

VARIANTS = ('plain', 'stpp', 'stpp_joint')


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_variant(variant: str, model_name: str, size: int, batch: int, steps: int, device: torch.device,
                amp: bool = False, channels_last: bool = False) -> Dict:
    import timm
    from timm.task import ClassificationTask
    from timm_stim import StimulativeTask, stim_kl
    from timm_stim.inputs import resize_batch, sample_input_size
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=1000).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if amp else nullcontext
    y = torch.randint(0, 1000, (batch,), device=device)
    criterion = nn.CrossEntropyLoss()
    if variant == 'plain':
        task = ClassificationTask(model, criterion, device=device, verbose=False)
    else:
        task = StimulativeTask(model, criterion, num_subnets=6, space='stpp', min_scale=0.43, normalize='kl',
                               device=device, verbose=False)
    state = task.generator.get_state() if variant != 'plain' else None

    def step():
        if variant == 'stpp_joint':
            # Naive: keep every subnetwork graph alive and back-propagate the sum once.
            task.generator.set_state(state)
            with autocast():
                output = model(x)
                loss = criterion(output, y)
                for _ in range(6):
                    subnet = task.stimulator.sample(task.generator)
                    sub_size = sample_input_size(size, size, 0.43, 1.0, task.generator)
                    with task.stimulator.activate(subnet):
                        loss = loss + stim_kl(model(resize_batch(x, sub_size)), output.detach(), 1.0, True, 1.0)
            loss.backward()
        else:
            if state is not None:
                task.generator.set_state(state)
            with autocast():
                loss = task(x, y)['loss']
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _peak_rss_mb()
    for _ in range(steps):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
        before = before / 2 ** 20
    else:
        peak = _peak_rss_mb()
    return {'variant': variant, 'before_mb': before, 'peak_mb': peak, 'step_mb': peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None)
    parser.add_argument('--model', default='resnet50')
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--batch', type=int, default=None, help='default: 16 on CPU, 128 on CUDA')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--out', default=None)
    parser.add_argument('--_child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    batch = args.batch or (128 if device.type == 'cuda' else 16)
    if args._child:
        print(json.dumps(run_variant(args._child, args.model, args.size, batch, args.steps, device, args.amp,
                                     args.channels_last)))
        return
    results = {}
    for variant in VARIANTS:
        # A fresh process per variant: peak RSS (and the CUDA caching allocator) start clean.
        cmd = [sys.executable, os.path.abspath(__file__), '--_child', variant, '--device', str(device),
               '--model', args.model, '--size', str(args.size), '--batch', str(batch), '--steps', str(args.steps),
               *(['--amp'] if args.amp else []), *(['--channels-last'] if args.channels_last else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[variant] = json.loads(out)
        r = results[variant]
        print(f"{variant:>10}: peak {r['peak_mb']:.0f} MiB (before first step {r['before_mb']:.0f}, "
              f"step {r['step_mb']:.0f})", flush=True)
    plain = results['plain']
    ratios = {v: {'peak': results[v]['peak_mb'] / plain['peak_mb'],
                  'step': results[v]['step_mb'] / max(plain['step_mb'], 1e-9)} for v in VARIANTS[1:]}
    for v, r in ratios.items():
        print(f'{v} / plain: peak {r["peak"]:.3f}x, step memory {r["step"]:.3f}x')
    info = machine(device)
    print(f'# on {describe(info)}')
    out = args.out or f'{_common.ROOT}/benchmarks/results/memory_{device.type}.json'
    write_json(out, {'machine': info, 'model': args.model, 'size': args.size, 'batch': batch, 'steps': args.steps,
                     'amp': args.amp, 'channels_last': args.channels_last, 'results': results, 'ratios': ratios})


if __name__ == '__main__':
    main()
