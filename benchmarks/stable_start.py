"""Why ST++ starts slowly, and what starts it stably (BENCHMARKS.md, "A stable start").

Trains with ``train_stim.py`` in-process and records, at every step, the gradient norm of
each term of the step separately: the task loss, and each subnetwork's weighted KL term, as
the task back-propagates them one after the other. The norm of a term is measured as the
change of the accumulated ``.grad`` it causes, so the task's own code runs unchanged. Also
recorded: the norm of the whole step's gradient, the cosine between the task gradient and
the sum of the KL gradients, the spread (std over classes) of the full network's and each
subnetwork's logits, and the learning rate.

Each variant is a list of extra ``train_stim.py`` options on top of one recipe
(``--recipe``, default the quick start). Writes ``<out>/<variant>.json`` (per-step records
and per-epoch validation top-1) and ``<out>/summary.md``; ``--plot`` draws the gradient norms.

    python benchmarks/stable_start.py --variants baseline stpp stpp_ramp1
    python benchmarks/stable_start.py --variants stpp --recipe quickstart --extra --lr 0.05
"""
import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from typing import Any, Dict, List

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from _common import describe, machine

# Extra options per variant, on top of the recipe. ``baseline_traced`` is the baseline with the
# task's gradient recorded: one subnetwork of weight 0 adds nothing to any gradient, and its
# BatchNorm statistics are frozen, so its training is the baseline's (the subnetwork sampler
# has its own generator and takes nothing from the global RNG).
VARIANTS: Dict[str, List[str]] = {
    'baseline': ['--stim-subnets', '0'],
    'baseline_traced': ['--stim-subnets', '1', '--stim-weight', '0'],
    'stpp': [],  # the recipe as it is
    'stpp_const': ['--stim-weight-sched', 'const'],
    'stpp_ramp1': ['@warmin=1'],
    'stpp_ramp2': ['@warmin=2'],
    'stpp_ramp1_perk': ['@warmin=1', '--stim-weight', '0.5'],
    'stpp_perk_upd': ['--stim-weight', '0.5', '--sched-on-updates'],
    'stpp_upd': ['--sched-on-updates'],
    'stpp_ramp1_upd': ['@warmin=1', '--sched-on-updates'],
    'baseline_upd': ['--stim-subnets', '0', '--sched-on-updates'],
    'stpp_perk': ['--stim-weight', '0.5'],
    'stpp_clip1': ['--clip-grad', '1'],
    'stpp_clip5': ['--clip-grad', '5'],
    'stpp_amp0.5': ['--stim-amplitude', '0.5'],
    'stpp_amp2': ['--stim-amplitude', '2'],
    'stpp_start1': ['--stim-start-epoch', '1'],
    'stpp_plainkl': ['--stim-norm', 'none'],
}


def per_epoch_recipe(name: str, folder: str) -> str:
    """A copy of the recipe whose schedule steps per epoch (the quick start now steps it per update)."""
    import yaml
    from timm_stim.training.recipes import resolve_config_path
    with open(resolve_config_path(name)) as f:
        config = yaml.safe_load(f)
    config['sched_on_updates'] = False
    path = os.path.join(folder, 'recipe.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(config, f)
    return path


def _flat_grad(params: List[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])


def traced_run(argv: List[str], trace: bool = True) -> Dict[str, Any]:
    """Run ``train_stim.py argv`` in-process, recording every term's gradient norm; return the records.

    ``@warmin=N`` in ``argv`` sets the task's KL weight warm-in to N epochs
    (``weight_warmup_epochs``; without it, 0: no warm-in, whatever train_stim.py's default). With ``trace=False`` nothing is recorded
    per step (the run is as fast as train_stim.py).
    """
    warmin = [float(a.split('=', 1)[1]) for a in argv if a.startswith('@warmin=')]
    argv = [a for a in argv if not a.startswith('@')]
    import timm_stim.task as task_mod
    import timm_stim.training.train as train_mod

    steps: List[Dict[str, Any]] = []
    current: Dict[str, Any] = {}
    holder: Dict[str, Any] = {}

    original_kl = task_mod.stim_kl

    def traced_kl(student, teacher, *args, **kwargs):
        current.setdefault('student_std', []).append(float(student.detach().float().std(-1).mean()))
        current['teacher_std'] = float(teacher.detach().float().std(-1).mean())
        return original_kl(student, teacher, *args, **kwargs)

    class TracedTask(train_mod.StimulativeTask):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # The script decides the warm-in, whatever train_stim.py's default is.
            self.config = dataclasses.replace(self.config, weight_warmup_epochs=warmin[0] if warmin else 0.0)

        def forward(self, input, target):
            if not trace:
                return super().forward(input, target)
            current.clear()
            current.update(epoch=self.epoch, kl_weight=self.kl_weight,
                           lr=holder['optimizer'].param_groups[0]['lr'] if 'optimizer' in holder else None)
            self._terms = []
            result = super().forward(input, target)
            if self._terms:
                params = self._trainable_parameters()
                total = _flat_grad(params)
                task_grad = self._terms[0][1]
                kl_grad = total - task_grad
                norm = lambda v: float(v.norm())  # noqa: E731
                cos = float(torch.dot(task_grad, kl_grad) / (task_grad.norm() * kl_grad.norm() + 1e-30))
                current.update(task_grad=norm(task_grad), kl_grads=[n for n, _ in self._terms[1:]],
                               kl_sum_grad=norm(kl_grad), total_grad=norm(total), cos_task_kl=cos,
                               loss=float(result['loss']), stim_kl=float(result['stim_kl']))
                current['kl_grads'] = [t[0] for t in self._terms[1:]]
                steps.append(dict(current))
            return result

        def _backward_now(self, loss, scale):
            if not trace:
                return super()._backward_now(loss, scale)
            params = self._trainable_parameters()
            before = _flat_grad(params)
            super()._backward_now(loss, scale)
            delta = _flat_grad(params) - before
            # Keep the task term's vector (for the cosine); the KL terms only need their norm.
            self._terms.append((float(delta.norm()), delta if not self._terms else None))

    original_task, original_opt = train_mod.StimulativeTask, train_mod.create_optimizer_v2

    def create_optimizer(*args, **kwargs):
        holder['optimizer'] = original_opt(*args, **kwargs)
        return holder['optimizer']

    train_mod.StimulativeTask, train_mod.create_optimizer_v2 = TracedTask, create_optimizer
    if trace:
        task_mod.stim_kl = traced_kl
    try:
        start = time.perf_counter()
        out = train_mod.main(argv)
        seconds = time.perf_counter() - start
    finally:
        train_mod.StimulativeTask, train_mod.create_optimizer_v2 = original_task, original_opt
        task_mod.stim_kl = original_kl
    top1 = [e['validation']['top1'] if e['validation'] else None for e in out['epochs']]
    train_loss = [e['train']['loss'] for e in out['epochs']]
    return {'argv': argv, 'top1': top1, 'train_loss': train_loss, 'steps': steps, 'seconds': seconds}


def epoch_summary(run: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per epoch: median gradient norms (task, one KL term, all KL terms), cosine, logit spreads."""
    rows = []
    epochs = sorted({s['epoch'] for s in run['steps']})
    for e in epochs:
        mine = [s for s in run['steps'] if s['epoch'] == e]
        med = lambda key: statistics.median(s[key] for s in mine)  # noqa: E731
        kl_each = [g for s in mine for g in s['kl_grads']]
        students = [v for s in mine for v in s.get('student_std', [])]
        rows.append({
            'epoch': e, 'steps': len(mine), 'lr': mine[0]['lr'], 'kl_weight': mine[0]['kl_weight'],
            'task_grad': med('task_grad'), 'kl_grad_each': statistics.median(kl_each) if kl_each else 0.0,
            'kl_sum_grad': med('kl_sum_grad'), 'total_grad': med('total_grad'),
            'max_total_grad': max(s['total_grad'] for s in mine), 'cos_task_kl': med('cos_task_kl'),
            'teacher_std': med('teacher_std'), 'student_std': statistics.median(students) if students else None,
            'loss': statistics.mean(s['loss'] for s in mine),
        })
    return rows


def seed_table(folder: str) -> List[str]:
    """Markdown: per variant, validation top-1 after epoch 1 and after the last epoch, over the seeds run."""
    import glob
    by: Dict[str, Dict[int, List[float]]] = {}
    for path in sorted(glob.glob(os.path.join(folder, '*-seed*.json'))):
        name, seed = os.path.basename(path)[:-len('.json')].rsplit('-seed', 1)
        by.setdefault(name, {})[int(seed)] = json.load(open(path))['top1']
    lines = ['| variant | seeds | top-1 after epoch 1: mean | last epoch: per seed | mean ± std | min |',
             '|---|---|---|---|---|---|']
    for name, seeds in by.items():
        last = [t[-1] for t in seeds.values()]
        first = [t[1] for t in seeds.values()]
        sd = statistics.stdev(last) if len(last) > 1 else 0.0
        lines.append(f'| {name} | {", ".join(map(str, seeds))} | {statistics.mean(first):.1f} | '
                     f'{", ".join(f"{t:.1f}" for t in last)} | {statistics.mean(last):.1f} ± {sd:.1f} | {min(last):.1f} |')
    return lines


def plot(runs: Dict[str, Dict[str, Any]], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(14, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)
    for i, (name, run) in enumerate(runs.items()):
        colour = f'C{i % 10}'
        xs = list(range(len(run['steps'])))
        ax1.plot(xs, [s['task_grad'] for s in run['steps']], color=colour, lw=1, label=f'{name}: task')
        if any(s['kl_grads'] for s in run['steps']) and name != 'baseline_traced':
            ax1.plot(xs, [s['kl_sum_grad'] for s in run['steps']], color=colour, lw=1, ls='--',
                     label=f'{name}: sum of KL terms')
        ax2.plot(xs, [s['loss'] for s in run['steps']], color=colour, lw=1, label=name)
        ax3.plot(xs, [s['teacher_std'] for s in run['steps']], color=colour, lw=1, label=name)
    ax1.set_yscale('log')
    ax1.set_xlabel('step')
    ax1.set_ylabel('gradient norm')
    ax1.legend(fontsize=6)
    ax2.set_xlabel('step')
    ax2.set_ylabel('task loss')
    ax2.legend(fontsize=6)
    ax3.set_xlabel('step')
    ax3.set_ylabel('std of the full network\'s logits over classes')
    ax3.legend(fontsize=6)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--variants', nargs='+', default=['baseline_traced', 'stpp'], choices=list(VARIANTS))
    parser.add_argument('--recipe', default='quickstart',
                        help='train_stim.py -c config (default: quickstart); its learning rate schedule is made to '
                             'step per epoch (sched_on_updates: false), as timm\'s default, and the _upd variants '
                             'step it per update')
    parser.add_argument('--seeds', type=int, nargs='+', default=[42])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', default=os.path.join(_common.ROOT, 'benchmarks', 'results', 'stable_start'))
    parser.add_argument('--plot', action='store_true')
    parser.add_argument('--table', action='store_true', help='only print the per-variant table of the runs in --out')
    parser.add_argument('--replot', action='store_true', help='only redraw the plot from the variants\' JSON in --out')
    parser.add_argument('--no-trace', dest='trace', action='store_false',
                        help='only train and validate (no per-step gradient norms; as fast as train_stim.py)')
    parser.add_argument('--extra', nargs=argparse.REMAINDER, default=[],
                        help='more train_stim.py options for every variant (put last)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    if args.table:
        print('\n'.join(seed_table(args.out)))
        return
    if args.replot:
        plot({v: json.load(open(os.path.join(args.out, f'{v}.json'))) for v in args.variants},
             os.path.join(args.out, 'grad_norms.png'))
        return
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = per_epoch_recipe(args.recipe, tmp)
        for variant in args.variants:
            for seed in args.seeds:
                name = variant if len(args.seeds) == 1 else f'{variant}-seed{seed}'
                argv = ['-c', recipe, '--output', tmp, '--experiment', name, '--seed', str(seed),
                        '--log-interval', '1000', *VARIANTS[variant], *args.extra]
                run = traced_run(argv, args.trace)
                run['epochs'] = epoch_summary(run) if run['steps'] else []
                runs[name] = run
                with open(os.path.join(args.out, f'{name}.json'), 'w') as f:
                    json.dump(run, f)
                top1 = ' / '.join(f'{t:.1f}' for t in run['top1'] if t is not None)
                print(f'{name}: top-1 by epoch {top1}  ({run["seconds"]:.0f} s)', flush=True)
                for r in run['epochs']:
                    print(f'  epoch {r["epoch"]}: lr {r["lr"]:.3g} w {r["kl_weight"]:.2f}  |g_task| {r["task_grad"]:.2f}'
                          f'  |g_kl| each {r["kl_grad_each"]:.2f} sum {r["kl_sum_grad"]:.2f}  |g| {r["total_grad"]:.2f}'
                          f' (max {r["max_total_grad"]:.1f})  cos {r["cos_task_kl"]:+.2f}  logit std full '
                          f'{r["teacher_std"]:.2f} sub {r["student_std"] if r["student_std"] is None else round(r["student_std"], 2)}'
                          f'  loss {r["loss"]:.3f}', flush=True)
    info = machine(torch.device('cpu'))
    lines = [f'recipe {args.recipe} {" ".join(args.extra)}; {describe(info)}', '',
             '| run | top-1 by epoch (%) | train loss by epoch | seconds |', '|---|---|---|---|']
    for name, run in runs.items():
        lines.append(f'| {name} | {" / ".join(f"{t:.1f}" for t in run["top1"] if t is not None)} | '
                     f'{" / ".join(f"{l:.2f}" for l in run["train_loss"])} | {run["seconds"]:.0f} |')
    with open(os.path.join(args.out, 'summary.md'), 'a') as f:
        f.write('\n'.join(lines) + '\n\n')
    print('\n'.join(lines))
    if args.plot:
        plot(runs, os.path.join(args.out, 'grad_norms.png'))


if __name__ == '__main__':
    main()
