"""Train once, deploy a family: fronts of baseline, ST and ST++ checkpoints, and members against networks trained alone.

Trains, with study.py's recipe (SGD, cosine, the same epochs for every run), on a class-balanced
Fashion-MNIST subset (``_fmnist.layout_subset``, from the Debian package ``dataset-fashion-mnist``):

* ``baseline`` (no stimulative training), ``st`` (K=1, uniform space, plain KL) and ``stpp`` (K=3, the
  stpp space, study.py's ST++ options), all of the full depth;
* ``alone-D`` for each ``--alone`` depth D: the baseline recipe on ``timm.create_model(model, layers=D)``.

Then ``timm-stim family`` scores the three checkpoints' families in ``--space`` (every member of a
small space) on the ``test2k`` split with BN re-estimated on ``--bn-recal`` training images, and
the script writes ``results.md`` (the fronts, and at each ``--alone`` depth the family members against
the network trained alone, top-1 on the same split) and ``family.png`` (the fronts, from the command).

    python benchmarks/family_study.py --out benchmarks/results/family_cpu
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import ROOT, describe, machine
import study

VARIANTS = {
    'baseline': [],
    'st': ['--stim-subnets', '1', '--stim-space', 'uniform', '--stim-norm', 'none'],
    'stpp': ['--stim-subnets', '3', *study.STPP],
}


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='benchmarks/results/family_cpu')
    parser.add_argument('--train-images', type=int, default=1000)
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--model', default='resnet18')
    parser.add_argument('--model-kwargs', nargs='*', default=['channels=[16,32,64,128]', 'stem_width=16'])
    parser.add_argument('--alone', nargs='+', default=['1,1,1,1', '2,1,1,2'], metavar='D1,D2,...',
                        help='depths also trained on their own')
    parser.add_argument('--space', default='uniform', help='--stim-space of the family scoring')
    parser.add_argument('--bn-recal', type=int, default=500)
    parser.add_argument('--threads', type=int, default=1, help='torch threads per run')
    parser.add_argument('--jobs', type=int, default=2, help='runs at a time')
    parser.add_argument('--seed', type=int, default=0)
    return parser


def study_args(args) -> argparse.Namespace:
    """study.py's options for this recipe (its defaults otherwise)."""
    return study.create_parser().parse_args([
        '--data', 'fmnist-subset', '--train-images', str(args.train_images), '--model', args.model,
        '--model-kwargs', *args.model_kwargs, '--epochs', str(args.epochs), '--batch-size', '64',
        '--val-interval', str(args.epochs), '--workers', '0', '--out', args.out])


def train_all(args, sargs, data, runs: Dict[str, List[str]], env: Dict[str, str]) -> None:
    """The train_stim.py runs, ``--jobs`` at a time (finished ones are kept: a run with ``done`` is skipped)."""
    pending = [(name, extra) for name, extra in runs.items()
               if not os.path.exists(os.path.join(args.out, 'runs', name, 'done'))]
    running = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, extra = pending.pop(0)
            folder = os.path.join(args.out, 'runs', name)
            shutil.rmtree(folder, ignore_errors=True)  # a run stopped before it finished starts again
            argv = [*study.recipe(sargs, data, args.seed, args.epochs), '--val-split', 'test2k', *extra,
                    '--output', os.path.dirname(folder), '--experiment', name]
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            log = open(folder + '.log', 'w')
            proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train_stim.py'), *argv], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
            running.append((name, folder, proc, log, time.time()))
        time.sleep(2)
        for item in list(running):
            name, folder, proc, log, start = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode:
                raise SystemExit(f'{name} failed (exit {proc.returncode}); see {folder}.log')
            with open(os.path.join(folder, 'done'), 'w') as f:
                f.write(f'{time.time() - start:.1f}\n')
            print(f'trained {name} in {time.time() - start:.0f} s', flush=True)


def final_top1(folder: str) -> float:
    with open(os.path.join(folder, 'summary.csv')) as f:
        return float(list(csv.DictReader(f))[-1]['eval_top1'])


def main(argv=None) -> Dict:
    args = create_parser().parse_args(argv)
    sargs = study_args(args)
    data = study.prepare_data(sargs)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    runs = dict(VARIANTS)
    for depths in args.alone:
        kwargs = [k for k in args.model_kwargs if not k.startswith('layers=')] + [f'layers=[{depths}]']
        runs['alone-' + depths.replace(',', '-')] = ['--model-kwargs', *kwargs]
    train_all(args, sargs, data, runs, env)
    checkpoints = {name: os.path.join(args.out, 'runs', name, 'last.pth.tar') for name in VARIANTS}
    alone = {d: final_top1(os.path.join(args.out, 'runs', 'alone-' + d.replace(',', '-'))) for d in args.alone}

    family_out = os.path.join(args.out, 'family')
    if not os.path.exists(os.path.join(family_out, 'family.json')):
        mean, std = [data['mean']] * 3, [data['std']] * 3
        subprocess.run([sys.executable, '-m', 'timm_stim', 'family', *checkpoints.values(),
                        '--labels', ','.join(checkpoints), *data['analyze'], '--train-split', 'train',
                        '--val-split', 'test2k', '--stim-space', args.space, '--stim-bn-recal', str(args.bn_recal),
                        '--mean', *mean, '--std', *std, '--crop-pct', '1.0', '--interpolation', 'bilinear',
                        '-b', '250', '-j', '0', '--device', 'cpu', '--latency-batch-size', '32',
                        '--latency-repeats', '20', '--no-export', '--out', family_out],
                       env=env, check=True, cwd=ROOT)
    with open(os.path.join(family_out, 'family.json')) as f:
        document = json.load(f)

    import torch
    torch.set_num_threads(args.threads)
    lines = [f'# Train once, deploy a family ({describe(machine(torch.device("cpu")))})', '',
             f'{args.model} {" ".join(args.model_kwargs)}, {args.epochs} epochs on {args.train_images} Fashion-MNIST '
             f'training images (study.py recipe, seed {args.seed}); every member of the `{args.space}` space scored on '
             f'test2k (2,000 test images) with BN re-estimated on {args.bn_recal} training images (the full network '
             f'keeps its own); latency: batch 1, CPU, {document["latency"]["repeats"]} repeats, median, '
             f'{args.threads} threads.', '',
             '## Fronts (top-1 against FLOPs)', '',
             '| checkpoint | full network top-1 | front members (depths: top-1 %, MFLOPs) | members within 1 point of '
             'the full network |', '|---|---|---|---|']
    by_label = {c['label']: c['members'] for c in document['checkpoints']}
    for label, members in by_label.items():
        full = next(m for m in members if m['full'])
        front = sorted((m for m in members if m['front_flops']), key=lambda m: m['flops'])
        near = sum(1 for m in members if m['top1'] >= full['top1'] - 1)
        lines.append(f'| {label} | {full["top1"]:.2f} | ' + '; '.join(
            f'{m["depths"]}: {m["top1"]:.2f}, {m["flops"] / 1e6:.2f}' for m in front)
            + f' | {near} of {len(members)} |')
    lines += ['', '## Train once against train each (top-1 %, test2k)', '',
              '| depths | MFLOPs | trained alone | ' + ' | '.join(f'{label} member' for label in by_label) + ' |',
              '|---|---|---|' + '---|' * len(by_label)]
    for depths, top1 in alone.items():
        cells = []
        flops = ''
        for label, members in by_label.items():
            member = next((m for m in members if m['depths'] == depths), None)
            cells.append(f'{member["top1"]:.2f}' if member else '-')
            flops = flops or (f'{member["flops"] / 1e6:.2f}' if member else '')
        lines.append(f'| {depths} | {flops} | {top1:.2f} | ' + ' | '.join(cells) + ' |')
    full_row = {label: next(m for m in members if m['full'])['top1'] for label, members in by_label.items()}
    lines.append(f'| full | | - | ' + ' | '.join(f'{v:.2f}' for v in full_row.values()) + ' |')
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(text)
    print(text)
    return {'alone': alone, 'family': document}


if __name__ == '__main__':
    main()
