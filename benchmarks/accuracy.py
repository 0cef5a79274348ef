"""Accuracy on real data: Fashion-MNIST, timm resnet18 at 32 px (BENCHMARKS.md, section 4).

One fixed recipe; for each seed: the baseline, timm's stochastic depth (--drop-path 0.1),
ST (K=1, uniform, KL), ST++ (K subnetworks, KL-, stpp space, inputs scaled 0.43-1; K=3 by
default, and K=6 as in the paper's ImageNet recipe), and the
baseline trained longer so that its training time equals ST++'s (its epochs are set from the
first seed's measured ST++ / baseline time ratio). Every run is a ``train_stim.py``
subprocess; finished runs are kept, so an interrupted sweep resumes where it stopped.
Writes ``results.json``, ``results.md`` and ``accuracy_vs_time.png`` into ``--out``.

    apt-get install dataset-fashion-mnist          # once; the Debian package, no download
    python benchmarks/accuracy.py                  # full CPU sweep (about an hour on 2 cores)
    python benchmarks/accuracy.py --quick          # a few minutes: 1 seed, short runs
    python benchmarks/accuracy.py --device cuda --epochs 30 --batches-per-epoch 0   # GPU variant
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import _common  # noqa: F401
import torch

from _common import ROOT, describe, machine

MEAN, STD = '0.2860', '0.3530'  # Fashion-MNIST training-set pixel statistics (grey, replicated to RGB)

VARIANTS: Dict[str, List[str]] = {
    'baseline': [],
    'drop_path_0.1': ['--drop-path', '0.1'],
    'st': ['--stim-subnets', '1', '--stim-space', 'uniform', '--stim-norm', 'none'],
    'stpp': ['--stim-subnets', '{K}', '--stim-space', 'stpp', '--stim-norm', 'kl', '--stim-min-scale', '0.43'],
    # The paper's ImageNet K: twice the subnetwork passes of the default above.
    'stpp_k6': ['--stim-subnets', '6', '--stim-space', 'stpp', '--stim-norm', 'kl', '--stim-min-scale', '0.43'],
    'baseline_long': [],
}


def recipe(args, seed: int, epochs: int) -> List[str]:
    return [
        '--dataset', 'torch/fashion_mnist', '--data-dir', args.data_dir, '--train-split', 'train',
        '--val-split', 'test', '--model', 'resnet18', '--num-classes', '10', '--device', args.device,
        '--input-size', '3', '32', '32', '--mean', MEAN, MEAN, MEAN, '--std', STD, STD, STD,
        '--crop-pct', '1.0', '--interpolation', 'bilinear', '--scale', '0.6', '1.0', '--hflip', '0.5',
        '-b', str(args.batch_size), '--validation-batch-size', '512', '--workers', str(args.workers),
        '--opt', 'sgd', '--lr', str(args.lr), '--momentum', '0.9', '--weight-decay', '5e-4',
        '--sched', 'cosine', '--warmup-epochs', '1', '--warmup-lr', '0.01', '--smoothing', '0',
        '--epochs', str(epochs), '--train-batches-per-epoch', str(args.batches_per_epoch),
        '--seed', str(seed), '--checkpoint-hist', '1', '--log-interval', '1000',
    ]


def run_dir(args, variant: str, seed: int) -> str:
    return os.path.join(args.out, 'runs', f'{variant}-seed{seed}')


def load_run(folder: str) -> Dict:
    with open(os.path.join(folder, 'summary.csv')) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(folder, 'train_times.json')) as f:
        times = json.load(f)
    # Rows exist for validated epochs only (--val-interval); times for every epoch.
    return {'epochs': len(times), 'validated_epochs': [int(r['epoch']) for r in rows],
            'top1': [float(r['eval_top1']) for r in rows], 'train_s': [times[int(r['epoch'])] for r in rows],
            'final_top1': float(rows[-1]['eval_top1']), 'train_time_s': times[-1]}


def train(args, variant: str, seed: int, epochs: int, val_interval: int = 1) -> Dict:
    folder = run_dir(args, variant, seed)
    if os.path.exists(os.path.join(folder, 'done')):
        return load_run(folder)
    extra = [a.replace('{K}', str(args.stpp_subnets)) for a in VARIANTS[variant]]
    cmd = [sys.executable, os.path.join(ROOT, 'benchmarks', '_train_timed.py'), *recipe(args, seed, epochs), *extra,
           '--val-interval', str(val_interval),
           '--output', os.path.dirname(folder), '--experiment', os.path.basename(folder)]
    start = time.time()
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + '.log', 'w') as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f'{variant} seed {seed} failed (exit {proc.returncode}); see {folder}.log')
    open(os.path.join(folder, 'done'), 'w').close()
    result = load_run(folder)
    print(f'{variant:>14} seed {seed}: top-1 {result["final_top1"]:.2f}%  train {result["train_time_s"]:.0f} s '
          f'({result["epochs"]} epochs, wall {time.time() - start:.0f} s incl. validation)', flush=True)
    return result


def plot(runs: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colors = dict(zip(VARIANTS, ('tab:gray', 'tab:orange', 'tab:blue', 'tab:red', 'tab:purple', 'black')))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (variant, seed), r in runs.items():
        ax.plot([t / 60 for t in r['train_s']], r['top1'], marker='.', color=colors[variant], alpha=0.8,
                label=variant if seed == min(s for v, s in runs if v == variant) else None)
    ax.set_xlabel('training time (min, excluding validation)')
    ax.set_ylabel('Fashion-MNIST test top-1 (%)')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--data-dir', default=os.path.expanduser('~/.cache/timm_stim/fashion-mnist'))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--batches-per-epoch', type=int, default=40, help='0: whole training set per epoch')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--lr', type=float, default=0.1)
    parser.add_argument('--stpp-subnets', type=int, default=3)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--long-epochs', type=int, default=None,
                        help='epochs of baseline_long (default: from the first seed\'s ST++ / baseline time ratio)')
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS),
                        help='run only these (default: all)')
    parser.add_argument('--quick', action='store_true', help='1 seed, 2 epochs of 20 batches')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    args.variants = [v for v in VARIANTS if v in args.variants]
    if 'baseline_long' in args.variants and args.long_epochs is None and not {'baseline', 'stpp'} <= set(args.variants):
        parser.error('--variants baseline_long needs --long-epochs, or baseline and stpp to measure the time ratio')
    if args.quick:
        args.seeds, args.epochs, args.batches_per_epoch = args.seeds[:1], 2, 20
    args.out = os.path.abspath(args.out or os.path.join(
        ROOT, 'benchmarks', 'results', f'accuracy_{args.device.split(":")[0]}{"_quick" if args.quick else ""}'))
    if not os.path.exists(os.path.join(args.data_dir, 'FashionMNIST', 'raw')):
        from timm_stim.datasets import layout_fashion_mnist
        layout_fashion_mnist(args.data_dir)  # clear error naming the Debian package when it is missing
    os.makedirs(args.out, exist_ok=True)

    runs, long_epochs = {}, args.long_epochs
    for seed in args.seeds:
        for variant in args.variants:
            if variant == 'baseline_long':
                if long_epochs is None:  # from the first seed: same recipe for every seed
                    ratio = runs[('stpp', seed)]['train_time_s'] / runs[('baseline', seed)]['train_time_s']
                    long_epochs = max(args.epochs, round(args.epochs * ratio))
                # Validate about as often as the other runs (validation time is not training time,
                # but it is most of a short run's wall-clock on a CPU).
                epochs, val_interval = long_epochs, max(1, round(long_epochs / args.epochs))
            else:
                epochs, val_interval = args.epochs, 1
            runs[(variant, seed)] = train(args, variant, seed, epochs, val_interval)

    table = {}
    for variant in args.variants:
        rs = [runs[(variant, s)] for s in args.seeds]
        top1 = [r['final_top1'] for r in rs]
        times = [r['train_time_s'] for r in rs]
        table[variant] = {'epochs': rs[0]['epochs'], 'top1_mean': statistics.mean(top1),
                          'top1_std': statistics.stdev(top1) if len(top1) > 1 else 0.0, 'top1': top1,
                          'train_time_s_mean': statistics.mean(times)}
    info = machine(torch.device(args.device))
    lines = [f'Fashion-MNIST, resnet18 at 32 px, {len(args.seeds)} seeds ({", ".join(map(str, args.seeds))}), '
             f'{args.batches_per_epoch or "all"} batches of {args.batch_size} per epoch; {describe(info)}', '',
             '| run | epochs | top-1 mean ± std (%) | training time (s) |', '|---|---|---|---|']
    for variant, r in table.items():
        lines.append(f'| {variant} | {r["epochs"]} | {r["top1_mean"]:.2f} ± {r["top1_std"]:.2f} | '
                     f'{r["train_time_s_mean"]:.0f} |')
    print('\n'.join(lines))
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump({'machine': info, 'args': vars(args), 'table': table,
                   'runs': {f'{v}-seed{s}': r for (v, s), r in runs.items()}}, f, indent=2)
    plot(runs, os.path.join(args.out, 'accuracy_vs_time.png'))
    print(f'wrote {args.out}/results.md, results.json, accuracy_vs_time.png')


if __name__ == '__main__':
    main()
