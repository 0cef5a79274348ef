"""Where stimulative training pays off: loafing, robustness and accuracy near convergence (BENCHMARKS.md 5-6).

One recipe, seven variants, several seeds (defaults: the CPU regime chosen in BENCHMARKS.md):

* ``baseline``; ``drop_path`` (timm's stochastic depth, ``--drop-path 0.1``);
* ``st``: ST (K=1, uniform space, plain KL); ``stpp``: the library's ST++ variant (K=3, stpp
  space, KL- on the subnetwork term, inputs 0.43-1 of the training size, each resized once from
  the batch, BN frozen); ``stpp_paper``: ST++ as the paper steps it (K=3; KL- on both terms, the
  official compounding resize, BN updated by subnetwork passes and re-estimated on 2000 training
  images before every validation); ``stpp_budget1``: ST++ at ``--stim-budget 1`` (the mean K the
  budget affords, resolved by ``timm_stim.budget``; the task draws the whole number every step);
* ``baseline_2x``: the baseline with twice the epochs (what ST++ at budget 1 costs);
* ``baseline_wall``: the baseline with the epochs that take as long as ``stpp`` (from the first
  seed's measured time ratio, or ``--wall-epochs``);
* ``baseline_flops``: the baseline with the training FLOPs of ``stpp_paper`` (its epochs times
  their FLOPs ratio, counted from the model, rounded: ``flops_epochs``).

Every run is a ``train_stim.py`` subprocess (``--jobs`` at a time, ``--threads`` torch threads
each); finished runs are kept, so an interrupted study resumes where it stopped (a run cut part-way
starts again from scratch, noted in ``events.log``). ``--variant-seeds`` gives a variant its
own seeds. With ``--score-split``, every finished run's final network is scored on that whole
split and its raw record (logits, labels, curve, times, commit) is kept in ``raw/`` (``_score.py``),
which also counts as the run being done when its checkpoints are gone. Then
``python -m timm_stim analyze`` evaluates the last checkpoints of the equal-epoch variants:
the full network, every network with one block removed and sampled subnetworks of the
uniform space and of the stpp space, with the checkpoint's BatchNorm statistics and with
statistics re-estimated on ``--bn-recal`` training images. Writes into ``--out``:
``results.md`` / ``results.json`` (accuracy table; loafing table), ``loafing.png`` (top-1
against blocks removed, one curve per variant, error bars over seeds) and
``accuracy_vs_time.png``; with the runs' cost (training time; training FLOPs, backward counted as
twice the forward, and BN re-estimation FLOPs), how much validation top-1 still moves over the
last quarter of the epochs (``plateau_table``) and ``curves.png`` (top-1 against epochs).

    python benchmarks/study.py                                  # the CPU study (about 2 h on 2 idle cores)
    python benchmarks/study.py --train-images 1500 --epochs 80 --val-interval 2 --val-split test2k \
        --variants baseline st stpp stpp_paper --analyze-subnets 16 16 --analyze-distinct --bn-recal 500 \
        --out benchmarks/results/study_converged            # a long cosine schedule (BENCHMARKS.md 10)
    python benchmarks/study.py --train-images 1500 --epochs 60 --cooldown-epochs 20 --min-lr 0.001 ... \
        --out benchmarks/results/study_plateau              # the same with a flat tail (BENCHMARKS.md 11)
    python benchmarks/study.py --data fmnist --device cuda ...  # full Fashion-MNIST (see gpu.py)
    python benchmarks/claim3.py --out benchmarks/results/claim3 # claim 3, pre-registered (benchmarks/preregistration)
"""
import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import _common  # noqa: F401  (puts the repository on sys.path)
import _score
from _common import ROOT, describe, machine

FMNIST_MEAN, FMNIST_STD = '0.2860', '0.3530'  # Fashion-MNIST training-set pixel statistics (grey, as RGB)

# The CPU regime (BENCHMARKS.md): a half-width ResNet-34 (12 droppable blocks) at 28 px on a
# class-balanced 10,000-image subset, 15 epochs.
DEFAULT_MODEL = 'resnet34'
DEFAULT_MODEL_KWARGS = ['channels=[32,64,128,256]', 'stem_width=32']
STPP = ['--stim-space', 'stpp', '--stim-norm', 'kl', '--stim-min-scale', '0.43']
# ST++ as the paper steps it (hparams/resnet50_imagenet_stpp.yaml with K=3): KL- on both terms,
# the official compounding resize, BN statistics updated by subnetwork passes and re-estimated on
# 2000 training images before every validation.
STPP_PAPER = ['--stim-space', 'stpp', '--stim-mode', 'depth', '--stim-norm', 'all', '--stim-min-scale', '0.43',
              '--stim-resize', 'official', '--stim-bn', 'update', '--stim-bn-recal', '2000']

# name -> (extra train_stim.py options, epochs: 1 = --epochs, 2 = twice, 'wall' = as long as stpp,
#          'flops' = stpp_paper's training FLOPs, analyzed)
VARIANTS: Dict[str, Tuple[List[str], Any, bool]] = {
    'baseline': ([], 1, True),
    'drop_path': (['--drop-path', '0.1'], 1, True),
    'st': (['--stim-subnets', '1', '--stim-space', 'uniform', '--stim-norm', 'none'], 1, True),
    'stpp': (['--stim-subnets', '3', *STPP], 1, True),
    'stpp_paper': (['--stim-subnets', '3', *STPP_PAPER], 1, True),
    'stpp_budget1': (['--stim-budget', '1', *STPP], 1, True),
    'baseline_2x': ([], 2, False),
    'baseline_wall': ([], 'wall', False),
    'baseline_flops': ([], 'flops', False),
}
ANALYZE_SPACES = ('uniform', 'stpp')
CONTROLS = ('stpp_budget1', 'baseline_2x')  # the compute-budget comparison (--control-seeds)
FLOPS_MATCHED = 'stpp_paper'  # whose training FLOPs baseline_flops is given


# ---------------------------------------------------------------------------------------------
# Data and recipe
# ---------------------------------------------------------------------------------------------

def prepare_data(args) -> Dict[str, Any]:
    """Lay out the data once; the train_stim.py data options and the splits analyze uses."""
    if args.data == 'digits':
        return {'train': ['--dataset', 'embedded/digits'], 'analyze': ['--dataset', 'embedded/digits'],
                'val_split': 'validation', 'analyze_split': 'validation', 'mean': '0.5', 'std': '0.5'}
    if args.data == 'fmnist':
        from timm_stim.datasets import layout_fashion_mnist
        data_dir = args.data_dir or os.path.expanduser('~/.cache/timm_stim/fashion-mnist')
        if not os.path.exists(os.path.join(data_dir, 'FashionMNIST', 'raw', 't10k-labels-idx1-ubyte')):
            layout_fashion_mnist(data_dir, args.fmnist_source)
        spec = ['--dataset', 'torch/fashion_mnist', '--data-dir', data_dir]
        return {'train': spec, 'analyze': spec, 'val_split': 'test', 'analyze_split': 'test',
                'mean': FMNIST_MEAN, 'std': FMNIST_STD}
    from _fmnist import layout_subset
    data_dir = args.data_dir or os.path.expanduser(f'~/.cache/timm_stim/fmnist-{args.train_images}')
    layout_subset(data_dir, args.train_images, source_dir=args.fmnist_source)
    return {'train': ['--data-dir', data_dir], 'analyze': ['--data-dir', data_dir], 'val_split': 'test',
            'analyze_split': 'test2k', 'mean': FMNIST_MEAN, 'std': FMNIST_STD}


def recipe(args, data: Dict[str, Any], seed: int, epochs: int, cooldown: int = 0) -> List[str]:
    """train_stim.py options shared by every variant: ``epochs`` of cosine, then ``cooldown`` at ``--min-lr``."""
    mean, std = [data['mean']] * 3, [data['std']] * 3
    argv = [
        *data['train'], '--train-split', 'train', '--val-split', data['val_split'],
        '--model', args.model, '--num-classes', '10', '--device', args.device,
        '--input-size', '3', str(args.size), str(args.size), '--mean', *mean, '--std', *std,
        '--crop-pct', '1.0', '--interpolation', 'bilinear', '--scale', '0.6', '1.0', '--hflip', '0.5',
        '-b', str(args.batch_size), '--validation-batch-size', '500', '--workers', str(args.workers),
        '--opt', 'sgd', '--lr', str(args.lr), '--momentum', '0.9', '--weight-decay', '5e-4',
        '--sched', 'cosine', '--sched-on-updates', '--warmup-epochs', '1', '--warmup-lr', '0.01',
        '--smoothing', '0', '--epochs', str(epochs), '--seed', str(seed), '--checkpoint-hist', '1',
        '--log-interval', '1000', '--val-interval', str(args.val_interval),
    ]
    if args.min_lr or cooldown:
        # A flat tail: cosine to --min-lr over the epochs, then the cooldown epochs at it (timm adds them).
        argv += ['--min-lr', str(args.min_lr), '--cooldown-epochs', str(cooldown)]
    if args.model_kwargs:
        argv += ['--model-kwargs', *args.model_kwargs]
    if args.batches_per_epoch:
        argv += ['--train-batches-per-epoch', str(args.batches_per_epoch)]
    if args.amp:
        argv += ['--amp', '--amp-dtype', 'bfloat16', '--channels-last']
    return argv


def create_study_model(args):
    """The study's model, built as train_stim.py builds it from ``--model`` and ``--model-kwargs``."""
    import ast
    import timm
    kwargs = {}
    for item in args.model_kwargs or []:
        key, value = item.split('=', 1)
        kwargs[key] = ast.literal_eval(value)
    return timm.create_model(args.model, num_classes=10, **kwargs)


def budget_subnets(args, budget: float) -> float:
    """The mean K ``--stim-budget`` resolves to for the study's model, space and input sizes (for the report)."""
    import timm_stim
    from timm_stim.budget import resolve_budget
    model = create_study_model(args)
    stim = timm_stim.attach(model, space='stpp')
    return resolve_budget(stim, (3, args.size, args.size), 0.43, 1.0, budget=budget).num_subnets


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def run_dir(args, variant: str, seed: int) -> str:
    return os.path.join(args.out, 'runs', f'{variant}-seed{seed}')


def raw_dir(args, variant: str, seed: int) -> str:
    """A scored run's raw record (``--score-split``): kept, and committed, where checkpoints are not."""
    return os.path.join(args.out, 'raw', f'{variant}-seed{seed}')


def note_event(args, text: str) -> None:
    """Append a line to ``events.log`` in ``--out``: runs restarted or failed, for the report."""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'events.log'), 'a') as f:
        f.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} {text}\n')


def load_run(folder: str) -> Dict[str, Any]:
    import yaml
    with open(os.path.join(folder, 'summary.csv')) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(folder, 'train_times.json')) as f:
        times = json.load(f)
    with open(os.path.join(folder, 'args.yaml')) as f:
        resolved = (yaml.safe_load(f) or {}).get('stim_resolved') or {}
    return {'epochs': len(times), 'validated_epochs': [int(r['epoch']) for r in rows],
            'top1': [float(r['eval_top1']) for r in rows], 'train_s': [times[int(r['epoch'])] for r in rows],
            'final_top1': float(rows[-1]['eval_top1']), 'train_time_s': times[-1], 'stim_resolved': resolved}


class Job:
    """One train_stim.py or analyze command; ``ready`` says when its inputs exist."""

    def __init__(self, name: str, make_argv, ready=lambda: True, done_file: Optional[str] = None,
                 kind: str = 'train', log: Optional[str] = None, variant: str = '', also_done: Optional[str] = None):
        self.name, self.make_argv, self.ready, self.done_file, self.kind, self.log, self.variant = (
            name, make_argv, ready, done_file, kind, log, variant)
        self.also_done = also_done  # another file that says the job's work is done (a scored run's record)

    @property
    def done(self) -> bool:
        return any(p is not None and os.path.exists(p) for p in (self.done_file, self.also_done))

    def mark_done(self) -> None:
        """Record the job as done: a score job's done file is its own output, which must exist."""
        if self.kind != 'score':
            open(self.done_file, 'w').close()
        elif not os.path.exists(self.done_file):
            raise SystemExit(f'{self.name} ended without writing {self.done_file}; see {self.log}')


def run_jobs(jobs: List[Job], args) -> List[str]:
    """Run jobs ``args.jobs`` at a time, in order as they become ready.

    With ``args.time_limit``, a job starts only if the same variant's last run says it will end
    within the limit (a variant not timed yet starts while the limit has not passed), and jobs
    still running at the limit are stopped. Returns the names of the jobs that did not finish.
    """
    start = time.time()
    pending = [j for j in jobs if not j.done]
    running: List[Tuple[Job, subprocess.Popen, Any, float]] = []
    durations: Dict[str, float] = {}
    unfinished: List[str] = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))

    def fits(job: Job) -> bool:
        if args.time_limit is None:
            return True
        elapsed = time.time() - start
        return elapsed + 1.1 * durations.get(job.variant, 0.0) < args.time_limit

    while pending or running:
        for job in list(pending):
            if len(running) >= args.jobs:
                break
            if not job.ready() or not fits(job):
                continue
            pending.remove(job)
            if job.kind == 'train' and os.path.isdir(job.log[:-len('.log')]):
                # A run stopped before it finished (no 'done'): start it again from scratch.
                shutil.rmtree(job.log[:-len('.log')])
                note_event(args, f'{job.name}: found unfinished, restarted from scratch with the same seed')
            argv = job.make_argv()
            os.makedirs(os.path.dirname(job.log), exist_ok=True)
            if args.in_process:
                began = time.time()
                _run_in_process(job, argv)
                durations[job.variant] = time.time() - began
                continue
            script = {'train': os.path.join(ROOT, 'benchmarks', '_train_timed.py'),
                      'score': os.path.join(ROOT, 'benchmarks', '_score.py')}.get(job.kind, '-m timm_stim analyze')
            cmd = [sys.executable, *script.split()] + argv
            log = open(job.log, 'w')
            running.append((job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                            time.time()))
            print(f'[{time.time() - start:6.0f} s] start {job.name}', flush=True)
        over = args.time_limit is not None and time.time() - start > args.time_limit
        if over:
            for job, proc, log, _ in running:
                proc.terminate()
                proc.wait()
                log.close()
                unfinished.append(job.name)
            running = []
        if not running and (over or not any(j.ready() and fits(j) for j in pending)):
            if pending and args.time_limit is None:
                raise SystemExit(f'jobs waiting for inputs that will not come: {", ".join(j.name for j in pending)}')
            unfinished += [j.name for j in pending]
            if unfinished:
                print(f'time limit ({args.time_limit:.0f} s): not finished: {", ".join(unfinished)}', flush=True)
            return unfinished
        time.sleep(0.5 if running else 0)
        for item in list(running):
            job, proc, log, began = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode:
                for other, p, _, _ in running:
                    p.kill()
                note_event(args, f'{job.name}: failed (exit {proc.returncode}), see {job.log}; '
                                 f'the next call reruns it with the same seed')
                raise SystemExit(f'{job.name} failed (exit {proc.returncode}); see {job.log}')
            job.mark_done()
            durations[job.variant] = time.time() - began
            print(f'[{time.time() - start:6.0f} s] done  {job.name} ({durations[job.variant]:.0f} s)', flush=True)
    return unfinished


def _run_in_process(job: Job, argv: List[str]) -> None:
    import logging
    import _train_timed
    from timm_stim.tools.analyze import main as analyze_main
    # The log a subprocess would write (training_flops reads it).
    handler = logging.FileHandler(job.log, mode='w')
    handler.setFormatter(logging.Formatter('%(message)s'))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        if job.kind == 'train':
            _train_timed.run(argv)
        elif job.kind == 'score':
            _score.main(argv)
        elif analyze_main(argv) != 0:
            raise SystemExit(f'{job.name} failed')
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    job.mark_done()


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------

def mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def accuracy_table(runs: Dict[Tuple[str, int], Dict], variants: List[str], seeds: List[int]) -> Tuple[Dict, List[str]]:
    """Per variant: top-1 mean / std over seeds, difference to the baseline and whether it exceeds the spread."""
    table: Dict[str, Dict[str, Any]] = {}
    for v in variants:
        rs = [runs[(v, s)] for s in seeds if (v, s) in runs]
        if not rs:
            continue
        top1 = [r['final_top1'] for r in rs]
        m, sd = mean_std(top1)
        table[v] = {'epochs': rs[0]['epochs'], 'top1_mean': m, 'top1_std': sd, 'top1': top1,
                    'train_time_s_mean': statistics.mean(r['train_time_s'] for r in rs),
                    'subnets': rs[0]['stim_resolved'].get('subnets_per_step')}
    lines = ['| run | epochs | top-1 mean ± std (%) | per seed | vs baseline | beyond the spread? | training time (s) |',
             '|---|---|---|---|---|---|---|']
    base = table.get('baseline')
    for v, r in table.items():
        diff, beyond = '', ''
        if base is not None and v != 'baseline':
            d = r['top1_mean'] - base['top1_mean']
            diff = f'{d:+.2f}'
            r['diff_vs_baseline'] = d
            if len(r['top1']) > 1 and len(base['top1']) > 1:
                # Beyond the seed-to-seed spread: the mean ± std intervals do not overlap.
                beyond = 'yes' if abs(d) > r['top1_std'] + base['top1_std'] else 'no'
                r['beyond_spread'] = beyond == 'yes'
            else:
                beyond = '- (one seed)'
        lines.append(f'| {v} | {r["epochs"]} | {r["top1_mean"]:.2f} ± {r["top1_std"]:.2f} | '
                     f'{", ".join(f"{t:.2f}" for t in r["top1"])} | {diff} | {beyond} | {r["train_time_s_mean"]:.0f} |')
    return table, lines


def read_analyze(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def loafing_table(rows_by: Dict[Tuple[str, str, int], List[Dict]], variants: List[str], seeds: List[int]
                  ) -> Tuple[Dict, List[str]]:
    """Per variant and BN setting: full, one-block-removed mean / min, sampled means (mean ± std over seeds)."""
    out: Dict[str, Dict[str, Any]] = {}
    lines = ['| run | BN statistics | full top-1 | one block removed: mean | min | sampled, uniform space: mean '
             '| sampled, stpp space: mean |', '|---|---|---|---|---|---|---|']
    for v in variants:
        for recal in ('own', 'recal'):
            per_seed: Dict[str, List[float]] = {k: [] for k in ('full', 'drop1_mean', 'drop1_min', 'uniform', 'stpp')}
            for s in seeds:
                uni = [r for r in rows_by.get((v, 'uniform', recal), []) if r['label'] == f'{v}-seed{s}']
                stp = [r for r in rows_by.get((v, 'stpp', recal), []) if r['label'] == f'{v}-seed{s}']
                if not uni:
                    continue
                top = lambda rows, kind: [float(r['top1']) for r in rows if r['kind'] == kind]  # noqa: E731
                per_seed['full'].append(top(uni, 'full')[0])
                per_seed['drop1_mean'].append(statistics.mean(top(uni, 'drop1')))
                per_seed['drop1_min'].append(min(top(uni, 'drop1')))
                per_seed['uniform'].append(statistics.mean(top(uni, 'sampled')))
                if top(stp, 'sampled'):
                    per_seed['stpp'].append(statistics.mean(top(stp, 'sampled')))
            if not per_seed['full']:
                continue
            stats = {k: mean_std(vals) for k, vals in per_seed.items() if vals}
            out.setdefault(v, {})[recal] = {k: {'mean': m, 'std': sd, 'per_seed': per_seed[k]}
                                            for k, (m, sd) in stats.items()}
            cell = lambda k: f'{stats[k][0]:.2f} ± {stats[k][1]:.2f}' if k in stats else '-'  # noqa: E731
            label = 'checkpoint\'s' if recal == 'own' else 're-estimated'
            lines.append(f'| {v} | {label} | {cell("full")} | {cell("drop1_mean")} | {cell("drop1_min")} | '
                         f'{cell("uniform")} | {cell("stpp")} |')
    return out, lines


def removed_curves(rows_by, variants: List[str], seeds: List[int], recal: str) -> Dict[str, Dict[int, Tuple]]:
    """variant -> blocks removed -> (mean over seeds, std over seeds) of the mean top-1 of those networks.

    The networks are the full one, the one-block-removed ones and the uniform-space samples.
    """
    curves: Dict[str, Dict[int, Tuple[float, float]]] = {}
    for v in variants:
        by_removed: Dict[int, List[float]] = {}
        for s in seeds:
            rows = [r for r in rows_by.get((v, 'uniform', recal), []) if r['label'] == f'{v}-seed{s}']
            if not rows:
                continue
            full_blocks = max(int(r['num_blocks']) for r in rows)
            groups: Dict[int, List[float]] = {}
            for r in rows:
                groups.setdefault(full_blocks - int(r['num_blocks']), []).append(float(r['top1']))
            for removed, tops in groups.items():
                by_removed.setdefault(removed, []).append(statistics.mean(tops))
        if by_removed:
            curves[v] = {k: mean_std(vals) + (len(vals),) for k, vals in sorted(by_removed.items())}
    return curves


def plateau_table(runs: Dict[Tuple[str, int], Dict], variants: List[str], seeds: List[int], epochs: int
                  ) -> Tuple[Dict, List[str]]:
    """Per variant: how much validation top-1 still moves over the last quarter of its epochs.

    The curve is the mean over seeds at each validated epoch from ``E - E // 4`` on, E the
    variant's own number of epochs (a run's ``epochs``, else ``epochs``: baseline_2x's last
    quarter is 120-160). How far it moves is its trend: the least-squares line through it, read
    from the first of those epochs to the last. A plateau when that is smaller than the seed spread
    (std over seeds) of the final top-1. The range (max - min) and the change (last - first) are
    reported beside it, not judged: they measure the epoch-to-epoch noise as much as any movement
    (the range of 11 points of a flat curve is about 3 times their std).
    """
    out: Dict[str, Dict[str, Any]] = {}
    lines = ['| run | last quarter: validated epochs | mean-over-seeds range (max - min) | change (last - first) '
             '| trend (least-squares fit) | seed std of final top-1 | plateau (trend < std)? |',
             '|---|---|---|---|---|---|---|']
    for v in variants:
        rs = [runs[(v, s)] for s in seeds if (v, s) in runs]
        if len(rs) < 2:
            continue
        total = rs[0].get('epochs', epochs)
        start = total - total // 4
        common = sorted(set.intersection(*(set(e + 1 for e in r['validated_epochs']) for r in rs)))
        tail = [e for e in common if e >= start]
        if len(tail) < 2:
            continue
        curve = [statistics.mean(r['top1'][[x + 1 for x in r['validated_epochs']].index(e)] for r in rs) for e in tail]
        spread = statistics.stdev(r['final_top1'] for r in rs)
        rng, change = max(curve) - min(curve), curve[-1] - curve[0]
        mean_e, mean_c = statistics.mean(tail), statistics.mean(curve)
        slope = (sum((e - mean_e) * (c - mean_c) for e, c in zip(tail, curve))
                 / sum((e - mean_e) ** 2 for e in tail))
        trend = slope * (tail[-1] - tail[0])
        plateau = abs(trend) < spread
        out[v] = {'epochs': tail, 'curve': curve, 'range': rng, 'change': change, 'trend': trend,
                  'final_std': spread, 'plateau': plateau}
        lines.append(f'| {v} | {tail[0]}-{tail[-1]} ({len(tail)}) | {rng:.2f} | {change:+.2f} | {trend:+.2f} | '
                     f'{spread:.2f} | {"yes" if plateau else "no"} |')
    return out, lines


def cost_table(runs: Dict[Tuple[str, int], Dict], variants: List[str], seeds: List[int]) -> List[str]:
    """Per variant: training time and FLOPs per run (mean over seeds) and both as multiples of the baseline's."""
    lines = ['| run | K | training time per run (s) | x baseline | training FLOPs per run (TFLOP) | x baseline '
             '| + BN re-estimation (TFLOP) |', '|---|---|---|---|---|---|---|']
    mean = lambda v, f: statistics.mean(f(runs[(v, s)]) for s in seeds if (v, s) in runs)  # noqa: E731
    have = [v for v in variants if any((v, s) in runs for s in seeds)]
    if 'baseline' not in have:
        return []
    base_t, base_f = mean('baseline', lambda r: r['train_time_s']), mean('baseline', lambda r: r['flops']['train_flops'])
    for v in have:
        t, fl = mean(v, lambda r: r['train_time_s']), mean(v, lambda r: r['flops']['train_flops'])
        k = mean(v, lambda r: r['flops']['subnets_per_step'])
        recal = mean(v, lambda r: r['flops']['bn_recal_flops'])
        lines.append(f'| {v} | {k:g} | {t:.0f} | {t / base_t:.2f} | {fl / 1e12:.1f} | {fl / base_f:.2f} | '
                     f'{recal / 1e12:.1f} |')
    return lines


def forward_flops(args, variant: str, subnets: bool = True) -> Tuple[float, float]:
    """(full forward FLOPs, expected subnetwork forward as a share of it) for a variant's model, space and sizes.

    The share is ``timm_stim.budget.subnet_cost`` at the variant's ``--stim-min-scale`` /
    ``--stim-max-scale``; 0 with ``subnets=False``.
    """
    import timm_stim
    from timm_stim.budget import subnet_cost
    from timm_stim.flops import count_flops
    model = create_study_model(args)
    size = (3, args.size, args.size)
    full = float(count_flops(model, size))
    if not subnets:
        return full, 0.0
    extra = VARIANTS[variant][0]
    opt = lambda name, default: extra[extra.index(name) + 1] if name in extra else default  # noqa: E731
    stim = timm_stim.attach(model, space=opt('--stim-space', 'uniform'), mode=opt('--stim-mode', 'depth'))
    cost, _ = subnet_cost(stim, size, float(opt('--stim-min-scale', 1.0)), float(opt('--stim-max-scale', 1.0)))
    return full, cost


def flops_epochs(args, forward: Optional[Tuple[float, float]] = None) -> int:
    """Epochs of ``baseline_flops``: ``--epochs`` x the training-FLOPs ratio of ``FLOPS_MATCHED`` to the baseline.

    Per image both pay 3 x the full forward (backward = 2x forward, ``training_flops``) and
    ``FLOPS_MATCHED`` also K x its expected subnetwork share, so the ratio is 1 + K x share
    (2.9049 for the half-width resnet34 at 28 px: 80 epochs -> 232.39, rounded to 232).
    ``forward``: ``forward_flops(args, FLOPS_MATCHED)`` when known.
    """
    extra = VARIANTS[FLOPS_MATCHED][0]
    k = int(extra[extra.index('--stim-subnets') + 1])
    _, share = forward or forward_flops(args, FLOPS_MATCHED)
    return round(args.epochs * (1 + k * share))


def training_flops(args, variant: str, run: Dict[str, Any], log_path: str,
                   forward: Optional[Tuple[float, float]] = None) -> Dict[str, float]:
    """FLOPs of one run as torch counts them: training (backward = 2x forward) and BN re-estimation.

    Training: epochs x images per epoch (whole batches, as the log counts them) x 3 x
    (full forward + K x the expected subnetwork forward, ``timm_stim.budget.subnet_cost``, at
    the variant's space and input sizes). BN re-estimation: the forward passes of the images
    the run's log says it re-estimated on. ``forward``: ``forward_flops(args, variant)`` when known
    (it takes seconds to count).
    """
    import re
    k = float(run['stim_resolved'].get('subnets_per_step') or 0) if run['stim_resolved'].get('enabled') else 0.0
    full, cost = forward or forward_flops(args, variant, subnets=bool(k))
    cost = cost if k else 0.0
    with open(log_path) as f:
        log = f.read()
    # Batches per epoch from timm's progress line ("Train: 0 [   0/11 ..."): whole batches only.
    images = int(re.search(r'Train: \d+ \[\s*\d+/(\d+)', log).group(1)) * args.batch_size * run['epochs']
    train = 3.0 * images * full * (1 + k * cost)
    recal_images = sum(int(n) for n in re.findall(r'Re-estimated BatchNorm statistics on (\d+)', log))
    return {'full_forward_flops': full, 'subnets_per_step': k, 'subnet_cost': cost, 'train_flops': train,
            'bn_recal_flops': float(recal_images * full), 'total_flops': train + recal_images * full}


def plot_curves(runs, variants: List[str], seeds: List[int], epochs: int, path: str) -> None:
    """Validation top-1 against epochs, mean over seeds with the seeds' min-max band; right: the last half."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    for i, first in enumerate((0, epochs // 2)):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, v in enumerate(variants):
            rs = [runs[(v, s)] for s in seeds if (v, s) in runs]
            if not rs:
                continue
            common = sorted(set.intersection(*(set(e + 1 for e in r['validated_epochs']) for r in rs)))
            xs = [e for e in common if e > first]
            ys = [[r['top1'][[x + 1 for x in r['validated_epochs']].index(e)] for r in rs] for e in xs]
            ax.plot(xs, [statistics.mean(y) for y in ys], color=f'C{j}', lw=1.2, label=f'{v} ({len(rs)} seeds)')
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=f'C{j}', alpha=0.15, lw=0)
        ax.axvspan(epochs - epochs // 4, epochs, color='grey', alpha=0.08, lw=0)
        ax.set_xlabel('epoch')
        ax.set_ylabel('validation top-1 (%)')
        ax.set_title('whole run' if not first else 'second half (grey: the last quarter)', fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def plot_loafing(rows_by, variants, seeds, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    for i, (recal, title) in enumerate((('own', 'checkpoint\'s BN statistics'),
                                        ('recal', 'BN statistics re-estimated per subnetwork'))):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, (v, curve) in enumerate(removed_curves(rows_by, variants, seeds, recal).items()):
            xs = list(curve)
            ax.errorbar([x + (j - 2) * 0.06 for x in xs], [curve[x][0] for x in xs], yerr=[curve[x][1] for x in xs],
                        marker='o', ms=3, capsize=2, lw=1, label=v)
        ax.set_xlabel('blocks removed')
        ax.set_ylabel('test top-1 (%)')
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def plot_accuracy(runs, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours = {v: f'C{i}' for i, v in enumerate(VARIANTS)}
    labelled = set()
    for (v, s), r in runs.items():
        ax.plot([t / 60 for t in r['train_s']], r['top1'], marker='.', color=colours[v], alpha=0.8,
                label=None if v in labelled else v)
        labelled.add(v)
    ax.set_xlabel('training time (min, excluding validation)')
    ax.set_ylabel('test top-1 (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default='fmnist-subset', choices=('fmnist-subset', 'fmnist', 'digits'),
                        help='fmnist-subset: --train-images balanced training images; fmnist: all 60,000; '
                             'digits: the embedded digits (tests)')
    parser.add_argument('--train-images', type=int, default=10000)
    parser.add_argument('--data-dir', default=None, help='where the data is laid out (default: ~/.cache/timm_stim/...)')
    parser.add_argument('--fmnist-source', default=None, help='folder with the idx files (default: the Debian package)')
    parser.add_argument('--model', default=DEFAULT_MODEL)
    parser.add_argument('--model-kwargs', nargs='*', default=DEFAULT_MODEL_KWARGS)
    parser.add_argument('--size', type=int, default=28)
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--cooldown-epochs', type=int, default=0,
                        help='epochs at --min-lr after the cosine (timm\'s --cooldown-epochs; they add to --epochs)')
    parser.add_argument('--min-lr', type=float, default=0.0, help='the cosine\'s floor (timm\'s --min-lr)')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--batches-per-epoch', type=int, default=None, help='cap (tests)')
    parser.add_argument('--lr', type=float, default=0.1)
    parser.add_argument('--val-interval', type=int, default=5,
                        help='validate every N epochs (the last one always; validation is not training time)')
    parser.add_argument('--val-split', default=None,
                        help='split validated during training (default: the data\'s test split; fmnist-subset '
                             'also has test2k, the class-balanced 2,000 test images analyze uses)')
    parser.add_argument('--workers', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true', help='bfloat16 AMP and channels-last (GPU)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--control-seeds', type=int, nargs='+', default=None,
                        help=f'seeds of the {" and ".join(CONTROLS)} controls, a subset of --seeds (default: --seeds)')
    parser.add_argument('--variant-seeds', nargs='+', default=[], metavar='VARIANT=SEEDS',
                        help='a variant\'s own seeds, comma-separated, e.g. stpp=100,101,102 (default: --seeds, '
                             'and --control-seeds for the controls)')
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS),
                        default=[v for v in VARIANTS if v not in ('stpp_paper', 'baseline_flops')],
                        help='default: all but stpp_paper and baseline_flops (the sections 7-8 study; BENCHMARKS.md '
                             '10 names its own)')
    parser.add_argument('--wall-epochs', type=int, default=None,
                        help='epochs of baseline_wall (default: from the first seed\'s stpp / baseline time ratio)')
    parser.add_argument('--jobs', type=int, default=2, help='runs at a time')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per run')
    parser.add_argument('--analyze-subnets', type=int, nargs=2, default=[12, 6], metavar=('UNIFORM', 'STPP'),
                        help='subnetworks sampled per checkpoint from the uniform and the stpp space')
    parser.add_argument('--bn-recal', type=int, default=1000, help='images for BN re-estimation in analyze')
    parser.add_argument('--analyze-distinct', action='store_true',
                        help='analyze scores distinct subnetworks, never the full one (all of a smaller space)')
    parser.add_argument('--no-analyze', dest='analyze', action='store_false')
    parser.add_argument('--analyze-variants', nargs='+', choices=[v for v in VARIANTS if VARIANTS[v][2]], default=None,
                        help='variants analyze evaluates (default: every equal-epoch variant that runs)')
    parser.add_argument('--time-limit', type=float, default=None,
                        help='seconds: start only runs expected to end by then, stop what still runs at it')
    parser.add_argument('--score-split', default=None,
                        help='score every finished run\'s final network on this whole split and keep its logits, '
                             'labels, curve and times in raw/ (e.g. test: all 10,000 Fashion-MNIST test images)')
    parser.add_argument('--results-name', default='results', help='base name of the .md / .json summary')
    parser.add_argument('--in-process', action='store_true', help='run every job here, one by one (tests)')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'study_cpu'))
    return parser


def parse_variant_seeds(items: List[str], variants: List[str]) -> Dict[str, List[int]]:
    """``['stpp=1,2']`` -> ``{'stpp': [1, 2]}``; a variant not run, a repeat or a seed that is no integer is refused."""
    out: Dict[str, List[int]] = {}
    for item in items:
        name, _, seeds = item.partition('=')
        try:
            parsed = [int(x) for x in seeds.split(',')]
        except ValueError:
            parsed = []
        if name not in variants or name in out or not parsed:
            raise SystemExit(f'--variant-seeds {item!r}: expected VARIANT=SEED,SEED,... once per variant, the '
                             f'variant one of --variants ({", ".join(variants)}); e.g. stpp=100,101,102')
        out[name] = parsed
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = create_parser().parse_args(argv)
    args.out = os.path.abspath(args.out)
    variants = [v for v in VARIANTS if v in args.variants]
    variant_seeds = parse_variant_seeds(args.variant_seeds, variants)
    if 'baseline_wall' in variants and args.wall_epochs is None and not {'baseline', 'stpp'} <= set(variants):
        raise SystemExit('--variants baseline_wall needs --wall-epochs, or baseline and stpp to measure the time ratio')
    if args.cooldown_epochs < 0 or not 0 <= args.min_lr < args.lr:
        raise SystemExit(f'--cooldown-epochs {args.cooldown_epochs} / --min-lr {args.min_lr:g}: expected epochs >= 0 '
                         f'and a floor 0 <= min-lr < --lr ({args.lr:g}); e.g. --cooldown-epochs 20 --min-lr 0.001')
    for scaled in ('baseline_wall', 'baseline_flops'):
        if scaled in variants and args.cooldown_epochs:
            # How to split a scaled budget between the cosine and the flat tail is a choice no one made yet.
            raise SystemExit(f'--variants {scaled} does not take --cooldown-epochs (got {args.cooldown_epochs}): '
                             f'run it without a flat tail, or leave {scaled} out')
    data = prepare_data(args)
    if args.val_split:
        data['val_split'] = args.val_split
    os.makedirs(args.out, exist_ok=True)
    budget_k = budget_subnets(args, 1.0) if 'stpp_budget1' in variants else None

    def scored(v: str, s: int) -> Optional[str]:
        """The run's raw logits file when it exists (``--score-split``), else None."""
        path = _score.logits_file(raw_dir(args, v, s), args.score_split) if args.score_split else None
        return path if path and os.path.exists(path) else None

    # A run is done when its folder says so, or when its scored record is kept (its checkpoints may be gone).
    done = lambda v, s: os.path.exists(os.path.join(run_dir(args, v, s), 'done')) or bool(scored(v, s))  # noqa: E731
    forward: Dict[Tuple, Tuple[float, float]] = {}  # forward_flops, counted once per space and sizes (seconds each)

    def forward_of(v: str) -> Tuple[float, float]:
        extra = VARIANTS[v][0]
        stimulated = bool({'--stim-subnets', '--stim-budget'} & set(extra))
        key = tuple((o, extra[extra.index(o) + 1]) for o in ('--stim-space', '--stim-mode', '--stim-min-scale',
                                                             '--stim-max-scale') if o in extra) if stimulated else None
        if key not in forward:
            forward[key] = forward_flops(args, v, subnets=stimulated)
        return forward[key]

    state: Dict[str, Any] = {'wall_epochs': args.wall_epochs, 'flops_epochs': (
        flops_epochs(args, forward_of(FLOPS_MATCHED)) if 'baseline_flops' in variants else None)}

    def train_job(v: str, s: int) -> Job:
        extra, factor, _ = VARIANTS[v]
        extra = list(extra)

        def make_argv() -> List[str]:
            if factor == 'flops':
                epochs, cooldown = state['flops_epochs'], 0
            elif factor == 'wall':
                if state['wall_epochs'] is None:
                    s0 = args.seeds[0]
                    ratio = (load_run(run_dir(args, 'stpp', s0))['train_time_s']
                             / load_run(run_dir(args, 'baseline', s0))['train_time_s'])
                    state['wall_epochs'] = max(args.epochs, round(args.epochs * ratio))
                epochs, cooldown = state['wall_epochs'], 0
            else:  # twice the epochs: twice the cosine and twice the flat tail
                epochs, cooldown = args.epochs * factor, args.cooldown_epochs * factor
            folder = run_dir(args, v, s)
            return [*recipe(args, data, s, epochs, cooldown), *extra, '--output', os.path.dirname(folder),
                    '--experiment', os.path.basename(folder)]

        ready = (lambda: done('baseline', args.seeds[0]) and done('stpp', args.seeds[0])) \
            if factor == 'wall' and args.wall_epochs is None else (lambda: True)
        folder = run_dir(args, v, s)
        also = _score.logits_file(raw_dir(args, v, s), args.score_split) if args.score_split else None
        return Job(f'{v}-seed{s}', make_argv, ready, os.path.join(folder, 'done'), 'train', folder + '.log', v, also)

    def score_job(v: str, s: int) -> Job:
        folder, raw = run_dir(args, v, s), raw_dir(args, v, s)
        argv = [folder, folder + '.log', args.score_split, raw, '--device', args.device]
        return Job(f'score {v}-seed{s}', lambda: argv,
                   lambda: os.path.exists(os.path.join(folder, 'done')), _score.logits_file(raw, args.score_split),
                   'score', raw + '.score.log', 'score')

    control_seeds = args.seeds if args.control_seeds is None else args.control_seeds
    seeds_of = lambda v: variant_seeds.get(v, control_seeds if v in CONTROLS else args.seeds)  # noqa: E731
    # Every seed any variant runs, --seeds first, in the order given.
    all_seeds = list(dict.fromkeys([*args.seeds, *(s for v in variants for s in seeds_of(v))]))

    def train_and_score(v: str, s: int) -> List[Job]:
        return [train_job(v, s)] + ([score_job(v, s)] if args.score_split else [])

    def analyze_job(v: str, space: str, recal: int) -> Job:
        folder = os.path.join(args.out, 'analyze', f'{v}-{space}-{"recal" if recal else "own"}')
        subnets = args.analyze_subnets[ANALYZE_SPACES.index(space)]

        def make_argv() -> List[str]:
            ckpts = [os.path.join(run_dir(args, v, s), 'last.pth.tar') for s in seeds_of(v)]
            return [*ckpts, '--labels', ','.join(f'{v}-seed{s}' for s in seeds_of(v)), *data['analyze'],
                    '--val-split', data['analyze_split'], '--train-split', 'train', '--stim-space', space,
                    '--samples', str(subnets), '--stim-bn-recal', str(recal), '-b', '250', '--workers', '0',
                    '--device', args.device, '--out', folder, *(['--distinct'] if args.analyze_distinct else [])]

        return Job(f'analyze {v} {space} {"recal" if recal else "own BN"}', make_argv,
                   lambda: all(done(v, s) for s in seeds_of(v)), os.path.join(folder, 'done'), 'analyze',
                   folder + '.log', 'analyze')

    # Seed by seed, so the first seed's baseline and stpp (which set baseline_wall's epochs) come first.
    jobs = [j for s in all_seeds for v in variants if v not in CONTROLS and s in seeds_of(v)
            for j in train_and_score(v, s)]
    # The budget controls come last: after the analyses, which start as soon as their runs are done.
    controls = [j for s in all_seeds for v in variants if v in CONTROLS and s in seeds_of(v)
                for j in train_and_score(v, s)]
    analyzed = [v for v in variants
                if VARIANTS[v][2] and (args.analyze_variants is None or v in args.analyze_variants)]
    if args.analyze:
        # Space by space, so the uniform space's figures of every variant come first.
        jobs += [analyze_job(v, space, recal) for space in ANALYZE_SPACES for v in analyzed
                 for recal in (0, args.bn_recal)]
    jobs += controls
    if args.in_process:
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)  # as OMP_NUM_THREADS does for the subprocesses
        try:
            unfinished = run_jobs(jobs, args)
        finally:
            torch.set_num_threads(threads)
    else:
        unfinished = run_jobs(jobs, args)

    runs: Dict[Tuple[str, int], Dict[str, Any]] = {}
    for v in variants:
        for s in seeds_of(v):
            if not done(v, s):
                continue
            # The run's own folder, or its raw record when only that is kept (the same files).
            record = scored(v, s)
            folder, log = ((run_dir(args, v, s), run_dir(args, v, s) + '.log')
                           if os.path.exists(os.path.join(run_dir(args, v, s), 'done')) or not record
                           else (raw_dir(args, v, s), os.path.join(raw_dir(args, v, s), 'train.log')))
            runs[(v, s)] = load_run(folder)
            runs[(v, s)]['flops'] = training_flops(args, v, runs[(v, s)], log, forward_of(v))
            if record:
                runs[(v, s)]['score_top1'] = _score.top1_of(record)
    acc, acc_lines = accuracy_table(runs, variants, all_seeds)
    plateau, plateau_lines = plateau_table(runs, variants, all_seeds, args.epochs + args.cooldown_epochs)
    cost_lines = cost_table(runs, variants, all_seeds)
    rows_by: Dict[Tuple[str, str, str], List[Dict]] = {}
    for v in analyzed:
        for space in ANALYZE_SPACES:
            for recal, key in ((0, 'own'), (args.bn_recal, 'recal')):
                path = os.path.join(args.out, 'analyze', f'{v}-{space}-{"recal" if recal else "own"}', 'analyze.csv')
                if args.analyze and os.path.exists(path):
                    rows_by[(v, space, key)] = read_analyze(path)
    loaf, loaf_lines = loafing_table(rows_by, analyzed, all_seeds)
    info = machine(_device(args.device))
    # The runs, not this driver, are what the header describes: --threads torch threads each.
    info['torch_threads'], info['runs_at_a_time'] = args.threads, args.jobs
    schedule = f'{args.epochs} epochs' + (
        f' + {args.cooldown_epochs} at the floor (lr {args.lr:g}, cosine to {args.min_lr:g} over the first '
        f'{args.epochs}, then flat)' if args.cooldown_epochs else
        f' (lr {args.lr:g}, cosine to {args.min_lr:g})' if args.min_lr else '')
    head = (f'{args.data} ({args.train_images if args.data == "fmnist-subset" else "all"} training images), '
            f'{args.model} {" ".join(args.model_kwargs or [])} at {args.size} px, {schedule}, seeds '
            f'{", ".join(map(str, args.seeds))}'
            + ''.join(f' ({v}: {", ".join(map(str, ss))})' for v, ss in variant_seeds.items())
            + (f'; baseline_flops: {state["flops_epochs"]} epochs' if state['flops_epochs'] else '')
            + f'; {describe(info)}; {args.jobs} runs at a time')
    note = [f'Not finished within the time limit: {", ".join(unfinished)}', ''] if unfinished else []
    text = '\n'.join([head, '', *note, *acc_lines, '', *cost_lines, '', *plateau_lines, '', *loaf_lines]) + '\n'
    with open(os.path.join(args.out, f'{args.results_name}.md'), 'w') as f:
        f.write(text)
    curves = {recal: removed_curves(rows_by, analyzed, all_seeds, recal) for recal in ('own', 'recal')}
    with open(os.path.join(args.out, f'{args.results_name}.json'), 'w') as f:
        json.dump({'machine': info, 'args': vars(args), 'budget1_subnets': budget_k, 'unfinished': unfinished,
                   'wall_epochs': state['wall_epochs'], 'flops_epochs': state['flops_epochs'], 'accuracy': acc,
                   'plateau': plateau, 'loafing': loaf,
                   'blocks_removed': {r: {v: {str(k): list(x) for k, x in c.items()} for v, c in cs.items()}
                                      for r, cs in curves.items()},
                   'runs': {f'{v}-seed{s}': r for (v, s), r in runs.items()}}, f, indent=1)
    if runs:
        plot_accuracy(runs, os.path.join(args.out, 'accuracy_vs_time.png'))
        plot_curves(runs, variants, all_seeds, args.epochs + args.cooldown_epochs, os.path.join(args.out, 'curves.png'))
    if rows_by:
        plot_loafing(rows_by, analyzed, all_seeds, os.path.join(args.out, 'loafing.png'))
    print(text)
    print(f'wrote {args.out}/{args.results_name}.md, {args.results_name}.json and the plots')
    return {'accuracy': acc, 'loafing': loaf, 'runs': runs, 'wall_epochs': state['wall_epochs'],
            'flops_epochs': state['flops_epochs'], 'budget1_subnets': budget_k, 'unfinished': unfinished}


def _device(name: str):
    import torch
    return torch.device(name)


if __name__ == '__main__':
    main()
