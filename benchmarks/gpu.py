"""Every GPU figure BENCHMARKS.md needs, in one run that fits a time limit, written to one folder.

Sections, in order (each a subprocess with its own log; a failed or timed-out section is
recorded and the next one runs):

1. ``cuda_tests``: ``python -m pytest -m cuda tests/test_cuda.py`` (float16 loss-scaler path
   of the subnetwork backward passes: scaled and unscaled steps give the same update).
2. ``step_cost``: measured / ideal step cost of ST and ST++ for ResNet-50 at 224 px and at
   the ST++ recipe's 200 px, bfloat16 AMP, channels-last (``step_cost.py``).
3. ``memory``: peak memory (``torch.cuda.max_memory_allocated``) of the plain, ST++ and naive
   ST++ steps, ResNet-50 at 224 px (``memory.py``).
4. ``budget_cost``: realized against expected cost at ``--stim-budget`` 0.75, 1, 2, 3 (``budget_cost.py``).
5. ``step_cost_compile``: section 2 at 224 px compiled as ``--torchcompile`` compiles ST++ (each
   block once, shared by the full network and every subnetwork), subnetwork inputs on a 32 px grid
   (``--stim-size-multiple 32``), with eager rows replaying the same subnetworks and the plain
   network compiled block-wise (its compile time against the whole network's).
6. ``budget_time``: realized against requested cost at ``--stim-budget`` 0.75, 1, 2, 3 with
   ``--stim-budget-unit time`` (``budget_time.py``, budgets in a shuffled order).
7. ``study``: as much of the accuracy study as fits, on all of Fashion-MNIST
   (``study.py --data fmnist``): seed by seed, runs in parallel on the one GPU, no run
   started that its variant's earlier run says would not finish in time.

Writes ``summary.md`` and ``summary.json`` (what ran, how long, the figures) into ``--out``,
beside each section's JSON and log. The Fashion-MNIST idx files must travel with the working
tree (nothing is downloaded): ``--fmnist-source`` (default ``benchmarks/data/fashion-mnist``,
then the Debian package's folder).

    mkdir -p benchmarks/data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz benchmarks/data/fashion-mnist/
    python benchmarks/gpu.py --out $OUT/gpu                  # on the GPU machine, about 8 minutes
    python benchmarks/gpu.py --device cpu --tiny --out /tmp/gpu-check   # the same code, tiny, on a CPU
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import ROOT

BENCH = os.path.join(ROOT, 'benchmarks')
FMNIST_SOURCES = (os.path.join(BENCH, 'data', 'fashion-mnist'), '/usr/share/datasets/fashion-mnist')


def sections(args) -> List[Dict[str, Any]]:
    """(name, command, cap in seconds, output file) of every section, for the GPU or the tiny CPU check."""
    py = sys.executable
    out = args.out
    tiny = args.tiny
    dev = ['--device', args.device]
    if tiny:
        models = ['resnet18:32:4']
        cost_opts = ['--repeats', '2', '--warmup', '1']
        memory = ['--model', 'resnet18', '--size', '32', '--batch', '4', '--steps', '1']
        budget = ['--model', 'resnet18', '--size', '32', '--batch', '4', '--budgets', '1', '--rounds', '2',
                  '--steps', '1', '--warmup', '1']
        compile_backend = 'eager'  # exercises the compiled path without inductor's minutes of codegen
        compile_opts = ['--size-multiple', '8']
        budget_time = ['--model', 'resnet18', '--size', '32', '--batch', '4', '--budgets', '1', '2', '--rounds', '1',
                       '--steps', '2', '--warmup', '3']
        study = ['--data', 'digits', '--model', 'resnet18', '--model-kwargs', 'channels=[8,16,32,64]', 'stem_width=8',
                 '--size', '32', '--epochs', '1', '--batches-per-epoch', '2', '--seeds', '0',
                 '--variants', 'baseline', 'stpp', '--jobs', '1', '--workers', '0', '--in-process']
        tests = ['--collect-only']  # no CUDA here: check that the marker selects the CUDA tests
    else:
        models = ['resnet50:224:128', 'resnet50:200:128']
        cost_opts = ['--amp', '--channels-last']
        memory = ['--model', 'resnet50', '--size', '224', '--batch', '128', '--amp', '--channels-last']
        budget = ['--model', 'resnet50', '--size', '224', '--batch', '128', '--amp', '--channels-last',
                  '--budgets', '0.75', '1', '2', '3']  # 0.5 is below one stpp subnetwork at 224 px (0.518)
        compile_backend = 'inductor'
        compile_opts = ['--size-multiple', '32']
        budget_time = ['--model', 'resnet50', '--size', '224', '--batch', '128', '--amp', '--channels-last',
                       '--budgets', '0.75', '1', '2', '3', '--warmup', '20']
        source = args.fmnist_source or next((s for s in FMNIST_SOURCES if os.path.isdir(s)), None)
        study = ['--data', 'fmnist', '--data-dir', os.path.join(args.scratch, 'fashion-mnist'),
                 *(['--fmnist-source', source] if source else []), '--epochs', str(args.study_epochs),
                 '--seeds', '0', '1', '2', '--variants', 'baseline', 'stpp', 'stpp_budget1', 'baseline_2x',
                 '--jobs', '4', '--workers', '3', '--threads', '2']
        tests = []
    return [
        {'name': 'cuda_tests', 'cap': 120, 'out': 'cuda_tests.xml',
         'cmd': [py, '-m', 'pytest', '-o', 'addopts=', '-m', 'cuda', '-q', '-p', 'no:cacheprovider', os.path.join(ROOT, 'tests', 'test_cuda.py'),
                 '--junitxml', os.path.join(out, 'cuda_tests.xml'), *tests]},
        {'name': 'step_cost', 'cap': 120, 'out': 'step_cost.json',
         'cmd': [py, os.path.join(BENCH, 'step_cost.py'), *dev, '--models', *models, *cost_opts,
                 '--out', os.path.join(out, 'step_cost.json')]},
        {'name': 'memory', 'cap': 90, 'out': 'memory.json',
         'cmd': [py, os.path.join(BENCH, 'memory.py'), *dev, *memory, '--out', os.path.join(out, 'memory.json')]},
        {'name': 'budget_cost', 'cap': 90, 'out': 'budget_cost.json',
         'cmd': [py, os.path.join(BENCH, 'budget_cost.py'), *dev, *budget, '--out', os.path.join(out, 'budget_cost.json')]},
        {'name': 'step_cost_compile', 'cap': 200, 'out': 'step_cost_compile.json',
         'cmd': [py, os.path.join(BENCH, 'step_cost.py'), *dev, '--models', models[0], *cost_opts, *compile_opts,
                 '--torchcompile', compile_backend, '--out', os.path.join(out, 'step_cost_compile.json')]},
        {'name': 'budget_time', 'cap': 90, 'out': 'budget_time.json',
         'cmd': [py, os.path.join(BENCH, 'budget_time.py'), *dev, *budget_time,
                 '--out', os.path.join(out, 'budget_time.json')]},
        {'name': 'study', 'cap': None, 'out': 'study/results.json',
         'cmd': [py, os.path.join(BENCH, 'study.py'), *dev, *study, '--no-analyze', '--out', os.path.join(out, 'study')]},
    ]


def run_section(section: Dict[str, Any], timeout: float, out: str, env: Dict[str, str]) -> Dict[str, Any]:
    log_path = os.path.join(out, section['name'] + '.log')
    cmd = list(section['cmd'])
    if section['name'] == 'study':
        cmd += ['--time-limit', str(max(1, int(timeout) - 15))]  # the study stops starting runs that would not fit
    start = time.time()
    status = 'ok'
    with open(log_path, 'w') as log:
        log.write('$ ' + ' '.join(cmd) + '\n')
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT)
            if proc.returncode:
                status = f'failed (exit {proc.returncode})'
        except subprocess.TimeoutExpired:
            status = f'timed out after {timeout:.0f} s'
    seconds = time.time() - start
    produced = os.path.exists(os.path.join(out, section['out']))
    print(f'{section["name"]}: {status} in {seconds:.0f} s' + ('' if produced else ' (no result file)'), flush=True)
    return {'name': section['name'], 'status': status, 'seconds': seconds, 'log': log_path,
            'result': os.path.join(out, section['out']) if produced else None}


def summarize(out: str, records: List[Dict[str, Any]], info: Dict[str, Any]) -> str:
    """summary.md: what ran, and the headline figures of each result file."""
    lines = [f'# GPU benchmark run: {info.get("gpu") or info.get("cpu")}, torch {info["torch"]}, timm {info["timm"]}, '
             f'{info["date"]}', '', '| section | status | seconds |', '|---|---|---|']
    lines += [f'| {r["name"]} | {r["status"]} | {r["seconds"]:.0f} |' for r in records]

    def load(name: str) -> Optional[Dict[str, Any]]:
        path = os.path.join(out, name)
        return json.load(open(path)) if os.path.exists(path) else None

    for name, title in (('step_cost.json', 'Step cost'), ('step_cost_compile.json', 'Step cost, --torchcompile')):
        data = load(name)
        if data:
            lines += ['', f'## {title}', '', '| model, input, batch | plain step | variant | measured | ideal | '
                      'measured / ideal | measured / (plain + standalone passes) |', '|---|---|---|---|---|---|---|']
            for r in data['results']:
                for v in ('st', 'stpp'):
                    lines.append(f'| {r["model"]}, {r["input_size"]} px, {r["batch_size"]} | '
                                 f'{r["plain"]["median_s"] * 1e3:.1f} ms | {v} | {r[v]["median_s"] * 1e3:.1f} ms | '
                                 f'{r[v]["ideal_s"] * 1e3:.1f} ms | {r[v]["measured_over_ideal"]:.3f} | '
                                 f'{r[v]["measured_over_empirical"]:.3f} |')
    data = load('memory.json')
    if data:
        lines += ['', '## Peak memory', '', '| variant | peak (MiB) | step (MiB) |', '|---|---|---|']
        lines += [f'| {v} | {r["peak_mb"]:.0f} | {r["step_mb"]:.0f} |' for v, r in data['results'].items()]
        lines += [f'| {v} / plain | {r["peak"]:.3f}x | {r["step"]:.3f}x |' for v, r in data['ratios'].items()]
    data = load('step_cost_compile.json')
    if data:
        lines += ['', '## Compiled against eager (same subnetworks)', '',
                  '| model, input | variant | compiled | eager | eager / compiled | compile (s) |', '|---|---|---|---|---|---|']
        for r in data['results']:
            rows = [('plain (whole network)', r['plain'], None), ('plain (block-wise)', r.get('plain_blockwise'), None)]
            rows += [(v, r[v], r[v].get('eager')) for v in ('st', 'stpp')]
            for name, t, eager in rows:
                if t is None:
                    continue
                lines.append(f'| {r["model"]}, {r["input_size"]} px | {name} | {t["median_s"] * 1e3:.1f} ms | '
                             + (f'{eager["median_s"] * 1e3:.1f} ms | {eager["over_compiled"]:.2f} |' if eager else '| |')
                             + f' {t.get("compile_s", float("nan")):.1f} |')
    data = load('budget_time.json')
    if data:
        lines += ['', '## Budget in time', '', '| requested | realized | realized / requested | K (FLOPs -> steered) |',
                  '|---|---|---|---|']
        lines += [f'| {r["requested"]:g} | {r["realized"]:.3f} | {r["realized_over_requested"]:.3f} | '
                  f'{r["flops_k"]:.2f} -> {r["mean_k"]:.2f} |' for r in data['results']]
    data = load('budget_cost.json')
    if data:
        lines += ['', '## Budget', '', '| budget | K | expected cost | realized cost |', '|---|---|---|---|']
        lines += [f'| {r["budget"]:g} | {r["num_subnets"]} | {r["expected_cost"]:.3f} | {r["realized_cost"]:.3f} |'
                  for r in data['results']]
    study_md = os.path.join(out, 'study', 'results.md')
    if os.path.exists(study_md):
        lines += ['', '## Accuracy study', '', open(study_md).read()]
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write(text)
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='folder for every result (created)')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--time-limit', type=float, default=470, help='seconds for the whole run (default: 470)')
    parser.add_argument('--tiny', action='store_true', help='tiny configuration (a CPU check of this script)')
    parser.add_argument('--fmnist-source', default=None, help='folder with the Fashion-MNIST idx files')
    parser.add_argument('--study-epochs', type=int, default=10)
    parser.add_argument('--scratch', default=None, help='where data is laid out (default: OUT/scratch)')
    parser.add_argument('--skip', nargs='*', default=[], help='sections to leave out')
    args = parser.parse_args(argv)
    start = time.time()
    args.out = os.path.abspath(args.out)
    args.scratch = os.path.abspath(args.scratch or os.path.join(args.out, 'scratch'))
    os.makedirs(args.out, exist_ok=True)
    import torch
    from _common import machine
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print('error: --device cuda but torch sees no CUDA device; use --device cpu --tiny to check the script',
              file=sys.stderr)
        return 2
    info = machine(torch.device(args.device))
    if args.device.startswith('cuda'):
        info['cuda'] = torch.version.cuda
        info['gpu_memory_gib'] = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    with open(os.path.join(args.out, 'environment.json'), 'w') as f:
        json.dump(info, f, indent=2)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep),
               TIMM_STIM_CACHE=os.path.join(args.scratch, 'cache'))
    if args.tiny:
        env.update(OMP_NUM_THREADS='1')
    records = []
    for section in sections(args):
        if section['name'] in args.skip:
            continue
        left = args.time_limit - (time.time() - start)
        if left < 20:
            records.append({'name': section['name'], 'status': 'not run: time limit', 'seconds': 0.0,
                            'log': None, 'result': None})
            continue
        timeout = left - 5 if section['cap'] is None else min(section['cap'], left - 5)
        records.append(run_section(section, timeout, args.out, env))
    summary = summarize(args.out, records, info)
    with open(os.path.join(args.out, 'summary.json'), 'w') as f:
        json.dump({'machine': info, 'sections': records, 'seconds': time.time() - start}, f, indent=2)
    print(summary)
    print(f'total {time.time() - start:.0f} s; results in {args.out}')
    return 0 if all(r['status'] == 'ok' for r in records) else 1


if __name__ == '__main__':
    sys.exit(main())
