"""Claim 3, pre-registered (benchmarks/preregistration/claim3.md): the driver and its report.

Runs the plan's study with ``study.py`` (every arm and seed the plan names; finished runs are
kept and each run's raw record, with the final network's logits on all 10,000 test images, is
kept in ``raw/``, so the study continues where it stopped, across sessions), then writes
``results.md`` / ``results.json`` from the raw records alone: the primary endpoint per run
re-scored from its logits, and the planned tests (one-sided Welch, Holm over H1-H3) once every
planned run is there.

    python benchmarks/claim3.py --out benchmarks/results/claim3                  # run what is missing, report
    python benchmarks/claim3.py --out benchmarks/results/claim3 --time-limit 7200  # start no run that ends later
    python benchmarks/claim3.py --out benchmarks/results/claim3 --report-only    # only re-score the raw files

Options after the known ones go to study.py after the plan's (tests shrink the regime with them);
any such option, or seeds other than the plan's, is reported as a deviation.
"""
import argparse
import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

import _common  # noqa: F401  (puts the repository on sys.path)
import _score
from _common import ROOT

PLAN = 'benchmarks/preregistration/claim3.md'
MAIN_SEEDS = list(range(100, 111))  # baseline and stpp_paper: 11 new seeds
OTHER_SEEDS = list(range(100, 105))  # stpp and baseline_flops: 5
MAIN_ARMS = ('baseline', 'stpp_paper')
ARMS = ('baseline', 'stpp', 'stpp_paper', 'baseline_flops')  # study.py's VARIANTS order
# (name, arm, comparator): the one-sided alternative is "arm's mean > comparator's".
COMPARISONS = (('H1', 'stpp_paper', 'baseline'), ('H2', 'stpp', 'baseline'), ('H3', 'stpp_paper', 'baseline_flops'))
ALPHA = 0.05
SCORE_SPLIT = 'test'


def study_argv(out: str, main_seeds: Sequence[int] = MAIN_SEEDS, other_seeds: Sequence[int] = OTHER_SEEDS,
               score_split: str = SCORE_SPLIT) -> List[str]:
    """The study.py options the plan names (its section "Regime")."""
    others = ','.join(map(str, other_seeds))
    return ['--train-images', '1500', '--epochs', '80', '--val-interval', '2', '--val-split', 'test2k',
            '--variants', *ARMS, '--seeds', *map(str, main_seeds),
            '--variant-seeds', f'stpp={others}', f'baseline_flops={others}',
            '--no-analyze', '--score-split', score_split, '--results-name', 'study', '--jobs', '2', '--threads', '1',
            '--out', out]


def planned_runs(main_seeds: Sequence[int], other_seeds: Sequence[int]) -> List[Tuple[str, int]]:
    return [(arm, s) for arm in ARMS for s in (main_seeds if arm in MAIN_ARMS else other_seeds)]


# ---------------------------------------------------------------------------------------------
# The planned tests
# ---------------------------------------------------------------------------------------------

def welch(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """One-sided Welch t-test of mean(a) > mean(b), with the two-sided 95 % interval of the difference.

    t = (mean a - mean b) / se, se^2 = var a / n_a + var b / n_b (sample variances), degrees of
    freedom by Welch-Satterthwaite: se^4 / ((var a / n_a)^2 / (n_a - 1) + (var b / n_b)^2 / (n_b - 1)),
    p = P(T_df >= t) (scipy's t distribution). With no spread in either sample t, df and p are NaN.

    Returns:
        diff, se, t, df, p (one-sided), ci_low, ci_high (two-sided 95 %).
    """
    from scipy.stats import t as t_dist
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f'Welch\'s test needs 2 values a side, got {len(a)} and {len(b)}')
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        nan = float('nan')
        return {'diff': diff, 'se': 0.0, 't': nan, 'df': nan, 'p': nan, 'ci_low': diff, 'ci_high': diff}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = diff / se
    half = float(t_dist.isf(0.025, df)) * se
    return {'diff': diff, 'se': se, 't': t, 'df': df, 'p': float(t_dist.sf(t, df)),
            'ci_low': diff - half, 'ci_high': diff + half}


def holm(pvalues: Dict[str, float], alpha: float = ALPHA) -> Dict[str, Dict[str, Any]]:
    """Holm's step-down procedure: adjusted p-values and which nulls are rejected at family-wise ``alpha``.

    Sorted ascending, the i-th (from 1) of m is rejected if it and every smaller one are below
    alpha / (m - i + 1); its adjusted p is the running maximum of (m - i + 1) p, capped at 1. A NaN
    p is never rejected and sorts last.
    """
    order = sorted(pvalues, key=lambda k: (math.isnan(pvalues[k]), pvalues[k]))
    m = len(order)
    out: Dict[str, Dict[str, Any]] = {}
    running, still = 0.0, True
    for i, name in enumerate(order):
        p = pvalues[name]
        if math.isnan(p):
            out[name] = {'p_holm': float('nan'), 'rejected': False}
            still = False
            continue
        running = max(running, min(1.0, (m - i) * p))
        still = still and p < alpha / (m - i)
        out[name] = {'p_holm': running, 'rejected': still}
    return out


# ---------------------------------------------------------------------------------------------
# The report, from raw files only
# ---------------------------------------------------------------------------------------------

def read_record(folder: str, split: str) -> Dict[str, Any]:
    """One run's raw record: top-1 re-scored from its logits, and what its small files say."""
    import csv
    path = _score.logits_file(folder, split)
    with open(os.path.join(folder, 'summary.csv')) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(folder, 'train_times.json')) as f:
        times = json.load(f)
    with open(os.path.join(folder, 'args.yaml')) as f:
        train_args = yaml.safe_load(f) or {}
    with open(os.path.join(folder, 'meta.json')) as f:
        meta = json.load(f)
    import numpy as np
    with np.load(path) as f:
        images = int(len(f['labels']))
    return {'top1': _score.top1_of(path), 'images': images, 'epochs': len(times), 'train_time_s': times[-1],
            'last_val_top1': float(rows[-1]['eval_top1']), 'seed': train_args.get('seed'),
            'commit': meta.get('commit'), 'dirty': meta.get('dirty')}


def report(out: str, main_seeds: Sequence[int], other_seeds: Sequence[int], split: str,
           deviations: Sequence[str] = ()) -> Dict[str, Any]:
    """Write ``results.md`` and ``results.json`` into ``out`` from ``out/raw`` (and ``events.log``); return the json."""
    planned = planned_runs(main_seeds, other_seeds)
    records = {}
    for arm, s in planned:
        folder = os.path.join(out, 'raw', f'{arm}-seed{s}')
        if os.path.exists(_score.logits_file(folder, split)):
            records[(arm, s)] = read_record(folder, split)
    complete = len(records) == len(planned)
    deviations = list(deviations)
    commits = sorted({f'{r["commit"]}{" (with local changes)" if r["dirty"] else ""}' for r in records.values()})
    if len(commits) > 1:
        deviations.append(f'the runs ran on {len(commits)} commits: {", ".join(commits)}')
    for (arm, s), r in records.items():
        if r['seed'] != s:
            deviations.append(f'{arm}-seed{s}: its args.yaml says seed {r["seed"]}')
    events_path = os.path.join(out, 'events.log')
    events = open(events_path).read().splitlines() if os.path.exists(events_path) else []

    arms: Dict[str, Dict[str, Any]] = {}
    for arm in ARMS:
        rs = [(s, records[(arm, s)]) for s in (main_seeds if arm in MAIN_ARMS else other_seeds) if (arm, s) in records]
        if not rs:
            continue
        top1 = [r['top1'] for _, r in rs]
        arms[arm] = {'seeds': [s for s, _ in rs], 'top1': top1, 'mean': statistics.mean(top1),
                     'std': statistics.stdev(top1) if len(top1) > 1 else 0.0,
                     'epochs': sorted({r['epochs'] for _, r in rs}), 'images': sorted({r['images'] for _, r in rs}),
                     'last_val_top1_mean': statistics.mean(r['last_val_top1'] for _, r in rs),
                     'train_time_s_mean': statistics.mean(r['train_time_s'] for _, r in rs)}
    tests: Dict[str, Dict[str, Any]] = {}
    if complete:
        for name, arm, other in COMPARISONS:
            tests[name] = {'arm': arm, 'against': other, **welch(arms[arm]['top1'], arms[other]['top1'])}
        for name, adjusted in holm({k: v['p'] for k, v in tests.items()}).items():
            tests[name].update(adjusted)
            tests[name]['verdict'] = 'supported' if adjusted['rejected'] else 'not shown'

    lines = ['# Claim 3, pre-registered: results', '',
             f'Plan: [{PLAN}](../../preregistration/claim3.md). Primary endpoint: full-network top-1 (%) of the final '
             f'network on every image of the {split!r} split, re-scored from each run\'s `raw/*/logits_{split}.npz` '
             f'by `benchmarks/claim3.py --report-only`. Runs with a raw record: {len(records)} of {len(planned)} '
             f'planned. Commit(s): {", ".join(commits) or "-"}.', '']
    if not complete:
        missing = [f'{a}-seed{s}' for a, s in planned if (a, s) not in records]
        lines += [f'**Incomplete: no test is computed until every planned run is there** (the plan\'s rule). '
                  f'Missing: {", ".join(missing)}.', '']
    lines += ['| arm | epochs | seeds | images scored | top-1 mean ± std (%) | per seed | last test2k validation '
              '(mean, %) | training time (s, mean) |', '|---|---|---|---|---|---|---|---|']
    for arm, a in arms.items():
        lines.append(f'| {arm} | {", ".join(map(str, a["epochs"]))} | {len(a["seeds"])} | '
                     f'{", ".join(map(str, a["images"]))} | {a["mean"]:.2f} ± {a["std"]:.2f} | '
                     f'{", ".join(f"{x:.2f}" for x in a["top1"])} | {a["last_val_top1_mean"]:.2f} | '
                     f'{a["train_time_s_mean"]:.0f} |')
    if tests:
        lines += ['', f'One-sided Welch t-tests, Holm over H1-H3 at family-wise alpha {ALPHA:g}:', '',
                  '| hypothesis | arm > against | difference (points) | 95 % interval | t | df | p | Holm p '
                  '| verdict |',
                  '|---|---|---|---|---|---|---|---|---|']
        for name, t in tests.items():
            lines.append(f'| {name} | {t["arm"]} > {t["against"]} | {t["diff"]:+.3f} | {t["ci_low"]:+.3f} to '
                         f'{t["ci_high"]:+.3f} | {t["t"]:.3f} | {t["df"]:.1f} | {t["p"]:.4f} | {t["p_holm"]:.4f} | '
                         f'{t["verdict"]} |')
    lines += ['', 'Deviations from the plan: ' + ('; '.join(deviations) if deviations else 'none.'), '',
              'Runs restarted or failed (`events.log`): ' + ('' if events else 'none.')]
    lines += [f'- {e}' for e in events]
    result = {'plan': PLAN, 'split': split, 'complete': complete, 'planned': len(planned), 'recorded': len(records),
              'commits': commits, 'deviations': deviations, 'events': events, 'arms': arms, 'tests': tests,
              'runs': {f'{a}-seed{s}': r for (a, s), r in records.items()}}
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(result, f, indent=1)
    print('\n'.join(lines))
    return result


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'claim3'))
    parser.add_argument('--report-only', action='store_true', help='write results.md / .json from raw/ only')
    parser.add_argument('--time-limit', type=float, default=None,
                        help='seconds: start only runs expected to end by then (study.py), changing no run')
    parser.add_argument('--main-seeds', type=int, nargs='+', default=MAIN_SEEDS, help='the plan\'s; tests only')
    parser.add_argument('--other-seeds', type=int, nargs='+', default=OTHER_SEEDS, help='the plan\'s; tests only')
    parser.add_argument('--score-split', default=SCORE_SPLIT, help='the plan\'s (test); tests only')
    return parser


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args, extra = create_parser().parse_known_args(argv)
    out = os.path.abspath(args.out)
    deviations = [f'study.py options beyond the plan: {" ".join(extra)}'] if extra else []
    if (args.main_seeds, args.other_seeds, args.score_split) != (MAIN_SEEDS, OTHER_SEEDS, SCORE_SPLIT):
        deviations.append(f'seeds {args.main_seeds} / {args.other_seeds}, split {args.score_split!r} '
                          f'instead of the plan\'s')
    if not args.report_only:
        import study
        argv_study = study_argv(out, args.main_seeds, args.other_seeds, args.score_split) + extra
        if args.time_limit is not None:
            argv_study += ['--time-limit', str(args.time_limit)]
        study.main(argv_study)
    return report(out, args.main_seeds, args.other_seeds, args.score_split, deviations)


if __name__ == '__main__':
    main()
