"""Measure network loafing: how well the subnetworks of trained residual networks do on their own.

``python -m timm_stim analyze CHECKPOINT [CHECKPOINT ...] --model NAME --dataset/--data-dir ...``
evaluates, on the validation split and for every checkpoint, the full network, every network
with exactly one droppable block removed (block 0 of a stage holds the downsample and stays)
and ``--samples`` subnetworks sampled from ``--stim-space`` (``--stim-mode``). Each
subnetwork gets its own BatchNorm statistics first (``--stim-bn-recal`` training images, eval
transform, the same images in the same order for every subnetwork); the checkpoint's own
statistics are restored afterwards, and the full network is evaluated with them. It writes
``analyze.csv`` (one row per checkpoint and subnetwork), ``analyze.png`` (top-1 against FLOPs,
one colour per checkpoint) and prints a summary table. Options that mean what they mean in ``train_stim.py``
have its names, values and checks (``--stim-space``, ``--stim-mode``, ``--stim-bn-recal`` are ``StimConfig``'s);
the sample count has its own name, ``--samples``, as training's ``--stim-subnets`` counts subnetworks per step. The
former names ``--stim-subnets``, ``--subnets``, ``--space``, ``--mode`` and ``--bn-recal`` still work, with a
deprecation note.

Library use::

    from timm_stim.tools.analyze import analysis_subnets, evaluate_subnets
    stim = timm_stim.attach(model, bn='update')
    results = evaluate_subnets(model, val_loader, analysis_subnets(stim, 16), recal_batches=batches,
                               input_size=(3, 224, 224))
"""
import argparse
import csv
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoints import (LOCAL_DIR, LoadedModel, add_deprecated_alias, add_checkpoint_sources, check_writable_out,
                          hub_repo_of, load_model)
from ..devices import resolve_amp_dtype
from ..errors import InputError, command_main, command_prog
from ..timm_options import copy_train_options
from ..flops import count_flops
from ..stimulator import Stimulator, attach
from ..subnet import Subnet
from ..tokens import TokenMaskingParser
from ..bn import recalibrate_bn
from ..config import MAX_SUBNETS, ConfigError, StimConfig, add_config_option

__all__ = ['SubnetResult', 'analysis_subnets', 'count_flops', 'recalibrate_bn', 'preserved_bn_stats', 'evaluate',
           'collect_batches', 'evaluate_subnets', 'result_row', 'write_csv', 'plot_points', 'build_plot',
           'plot_results', 'summary_table', 'checkpoint_labels', 'CSV_COLUMNS', 'DATA_OPTIONS', 'BatchProgress',
           'amp_autocast_of', 'analysis_data_config', 'analysis_loaders', 'check_analyze_args', 'main']

CSV_FILE = 'analyze.csv'
PLOT_FILE = 'analyze.png'
CSV_COLUMNS = ('checkpoint', 'label', 'model', 'kind', 'depths', 'blocks', 'num_blocks', 'flops', 'top1', 'top5',
               'bn_recal_images')
KINDS = ('full', 'drop1', 'sampled')

# StimConfig's options analyze takes (names, values and checks as training's; --stim-bn-recal's default is its own).
_STIM_OPTIONS = ('space', 'mode', 'bn_recal')
# train_stim.py options analyze takes with the same names, defaults and meaning.
DATA_OPTIONS = ('--dataset', '--data-dir', '--train-split', '--val-split', '--class-map', '--input-img-mode',
                  '--input-key', '--target-key', '--dataset-trust-remote-code', '--val-num-samples',
                  '--num-classes', '--img-size', '--input-size', '--crop-pct', '--mean', '--std', '--interpolation',
                  '-b', '--workers', '--seed', '--amp', '--amp-dtype', '--channels-last')


@dataclass(frozen=True)
class SubnetResult:
    """One evaluated subnetwork.

    Attributes:
        kind: ``full``, ``drop1`` (exactly one droppable block removed) or ``sampled``.
        subnet: the blocks kept per stage.
        flops: floating-point operations of one image's forward pass (``FlopCounterMode``).
        top1, top5: validation accuracy in percent (top-5 is top-min(5, classes)).
        bn_recal_images: images its BatchNorm statistics were re-estimated on (0: the checkpoint's own).
    """
    kind: str
    subnet: Subnet
    flops: int
    top1: float
    top5: float
    bn_recal_images: int


def analysis_subnets(stim: Stimulator, num_sampled: int, seed: int = 42,
                     distinct: bool = False) -> List[Tuple[str, Subnet]]:
    """The subnetworks ``analyze`` evaluates, as (kind, subnet).

    The full network, then every network with exactly one droppable block removed (stage by
    stage, block by block; block 0 of a stage is never removed), then ``num_sampled`` draws of
    ``stim.sample`` from a generator seeded with ``seed`` (so every checkpoint of the same
    architecture gets the same subnetworks).

    Args:
        stim: the model's ``Stimulator``; its space and mode define the draws.
        num_sampled: how many subnetworks to sample.
        seed: seed of the draws.
        distinct: draw until ``num_sampled`` different subnetworks other than the full network
            (every one of them when the space holds fewer); otherwise draws may repeat and may be
            the full network, as training draws them.

    Returns:
        ``[('full', full), ('drop1', ...), ..., ('sampled', ...), ...]``.
    """
    full = stim.full()
    subnets = [('full', full)]
    for s, kept in enumerate(full.blocks):
        for b in kept[1:]:
            blocks = list(full.blocks)
            blocks[s] = tuple(i for i in kept if i != b)
            subnets.append(('drop1', Subnet(tuple(blocks))))
    generator = torch.Generator().manual_seed(seed)
    if not distinct:
        return subnets + [('sampled', stim.sample(generator)) for _ in range(num_sampled)]
    wanted = min(num_sampled, stim.space_size() - 1)
    drawn: List[Subnet] = []
    while len(drawn) < wanted:
        subnet = stim.sample(generator)
        if subnet != full and subnet not in drawn:
            drawn.append(subnet)
    return subnets + [('sampled', s) for s in drawn]


@contextmanager
def preserved_bn_stats(model: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm's running statistics (mean, var, batches tracked) on exit."""
    saved = [(m, {k: v.clone() for k, v in m._buffers.items() if v is not None})
             for m in model.modules() if isinstance(m, _BatchNorm)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, v in buffers.items():
                    m._buffers[k].copy_(v)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: Any = 'cpu', amp_autocast: Callable = nullcontext,
             channels_last: bool = False) -> Tuple[float, float]:
    """(top-1, top-5) accuracy in percent of ``model`` in eval mode over ``loader``, weighted by images.

    Accumulated by timm's ``timm.task.ClassificationEvaluator``, as training's validation is
    (top-5 is top-min(5, classes)).

    Args:
        model: the model (its current mode is set to eval).
        loader: (input, target) batches.
        device: where the model is.
        amp_autocast: context manager the forward passes run in (e.g. ``torch.autocast``).
        channels_last: pass inputs in the channels_last memory layout.
    """
    from timm.task import ClassificationEvaluator, evaluation_sample_limit
    evaluator = ClassificationEvaluator(device, max_samples=evaluation_sample_limit(loader))
    model.eval()
    for input, target in loader:
        input, target = input.to(device), target.to(device)
        if channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(input)
        if isinstance(output, (tuple, list)):
            output = output[0]
        evaluator.update(output, target)
    if not evaluator.num_samples:
        raise InputError('the validation split holds no images.')
    metrics = evaluator.compute()
    return metrics['top1'], metrics['top5']


def collect_batches(loader: Iterable, num_images: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The first ``num_images`` images of ``loader`` as (input, target) batches kept in memory (last one cut)."""
    batches = []
    seen = 0
    if num_images <= 0:
        return batches
    for input, target in loader:
        take = min(input.shape[0], num_images - seen)
        batches.append((input[:take], target[:take]))
        seen += take
        if seen >= num_images:
            break
    return batches


def evaluate_subnets(
        model: nn.Module,
        loader: Iterable,
        subnets: Sequence[Tuple[str, Subnet]],
        *,
        recal_batches: Optional[Sequence[Tuple[torch.Tensor, torch.Tensor]]] = None,
        input_size: Sequence[int] = (3, 224, 224),
        device: Any = 'cpu',
        amp_autocast: Callable = nullcontext,
        channels_last: bool = False,
        progress: Optional[Callable[[int, int, SubnetResult], None]] = None,
) -> List[SubnetResult]:
    """Evaluate subnetworks of one model on ``loader``.

    Every subnetwork except the full network first gets BatchNorm statistics re-estimated on
    ``recal_batches`` (exact averages, ``recalibrate_bn``); the model's own statistics are
    restored after each one, so the model is unchanged when this returns. Subnetworks that
    repeat are evaluated once.

    Args:
        model: a timm model with a ``Stimulator`` attached with ``bn='update'`` (so that
            re-estimation inside ``activate`` updates the statistics).
        loader: validation (input, target) batches.
        subnets: (kind, subnet) pairs, e.g. from ``analysis_subnets``.
        recal_batches: training (input, target) batches for BN re-estimation; None or [] to skip.
        input_size: C, H, W for counting FLOPs.
        device: where the model is.
        amp_autocast: context manager the forward passes run in (e.g. ``torch.autocast``).
        channels_last: pass inputs in the channels_last memory layout.
        progress: called as ``progress(done, total, result)`` after each subnetwork.

    Returns:
        One ``SubnetResult`` per entry of ``subnets``, in order.
    """
    from ..stimulator import get_stimulator
    stim = get_stimulator(model)
    if stim is None or stim.bn != 'update':
        raise ValueError('evaluate_subnets needs a model with timm_stim.attach(model, bn="update") done.')
    recal_batches = list(recal_batches or [])
    recal_images = sum(int(x.shape[0]) for x, _ in recal_batches)
    done: Dict[Tuple[Subnet, bool], Tuple[int, float, float, int]] = {}
    results = []
    for i, (kind, subnet) in enumerate(subnets):
        recal = kind != 'full' and recal_images > 0
        key = (subnet, recal)
        if key not in done:
            with preserved_bn_stats(model), stim.activate(subnet):
                flops = count_flops(model, input_size, device)
                if recal:
                    recalibrate_bn(model, recal_batches, recal_images, torch.device(device), amp_autocast,
                                   channels_last)
                top1, top5 = evaluate(model, loader, device, amp_autocast, channels_last)
            done[key] = (flops, top1, top5, recal_images if recal else 0)
        flops, top1, top5, used = done[key]
        results.append(SubnetResult(kind, subnet, flops, top1, top5, used))
        if progress is not None:
            progress(i + 1, len(subnets), results[-1])
    return results


# ---------------------------------------------------------------------------------------------
# CSV, plot, summary
# ---------------------------------------------------------------------------------------------

def result_row(checkpoint: str, label: str, model_name: str, result: SubnetResult) -> Dict[str, Any]:
    """The CSV row of one result (``CSV_COLUMNS``)."""
    return {
        'checkpoint': checkpoint, 'label': label, 'model': model_name, 'kind': result.kind,
        'depths': ','.join(str(d) for d in result.subnet.depths),
        'blocks': ';'.join(','.join(str(b) for b in stage) for stage in result.subnet.blocks),
        'num_blocks': result.subnet.num_blocks, 'flops': result.flops,
        'top1': round(result.top1, 4), 'top5': round(result.top5, 4), 'bn_recal_images': result.bn_recal_images,
    }


def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> str:
    """Write rows (``result_row``) to ``path`` (replaced atomically); return the path."""
    tmp = path + '.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def plot_points(rows: Sequence[Dict[str, Any]], label: str, kind: str, x: str = 'flops',
                scale: float = 1.0) -> List[Tuple[float, float, int]]:
    """The distinct (x, top-1) points of one checkpoint's networks of one kind, each with how many networks lie there.

    Networks with equal FLOPs (or blocks) and equal top-1 would print over each other: they are one point,
    counted, in first-seen order.
    """
    counts: Dict[Tuple[float, float], int] = {}
    for r in rows:
        if r['label'] == label and r['kind'] == kind:
            key = (float(r['flops']) / scale if x == 'flops' else int(r['num_blocks']), float(r['top1']))
            counts[key] = counts.get(key, 0) + 1
    return [(px, py, n) for (px, py), n in counts.items()]


def build_plot(rows: Sequence[Dict[str, Any]], x: str = 'flops', title: Optional[str] = None):
    """The figure of ``plot_results``: one panel per checkpoint label, each with its own top-1 range.

    A panel's y axis spans its own networks (a good model's spread is not squashed by another's
    range); identical points are drawn once, larger, with their count; the legend (marker kinds)
    sits below the panels, off every point.

    Returns:
        A matplotlib ``Figure`` on an Agg canvas (the global backend is never changed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    labels = list(dict.fromkeys(r['label'] for r in rows)) or ['']
    max_flops = max((float(r['flops']) for r in rows), default=0.0)
    scale, unit = (1e9, 'GFLOPs') if max_flops >= 1e9 else (1e6, 'MFLOPs')
    styles = {'full': dict(marker='*', s=160, zorder=4), 'drop1': dict(marker='^', s=40, zorder=3),
              'sampled': dict(marker='o', s=22, alpha=0.6, zorder=2)}
    names = {'full': 'full network', 'drop1': 'one block removed', 'sampled': 'sampled subnetwork'}
    fig = Figure(figsize=(7.0, 1.2 + 3.0 * len(labels)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(labels), 1, squeeze=False)[:, 0]
    for i, (label, ax) in enumerate(zip(labels, axes)):
        colour = f'C{i % 10}'
        for kind in KINDS:
            points = plot_points(rows, label, kind, x, scale)
            if not points:
                continue
            ax.scatter([p[0] for p in points], [p[1] for p in points], color=colour,
                       sizes=[styles[kind]['s'] * (1 + 0.5 * (p[2] - 1)) ** 0.5 for p in points],
                       edgecolors='black' if kind == 'full' else 'none', linewidths=0.6,
                       **{k: v for k, v in styles[kind].items() if k != 's'})
            for px, py, n in points:
                if n > 1:
                    ax.annotate(f'x{n}', (px, py), xytext=(4, 3), textcoords='offset points', fontsize=7)
        low, high = ax.get_ylim()
        if high - low < 1.0:  # one top-1 value: show a 1-point range around it
            middle = (high + low) / 2
            ax.set_ylim(middle - 0.5, middle + 0.5)
        ax.set_title(label, fontsize=9, loc='left')
        ax.set_ylabel('top-1 (%)')
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(unit + ' per image' if x == 'flops' else 'blocks kept')
    handles = [Line2D([], [], color='grey', linestyle='none', marker=styles[k]['marker'],
                      markersize=9 if k == 'full' else 6, markeredgecolor='black' if k == 'full' else 'none',
                      label=names[k]) for k in KINDS]
    fig.suptitle(title or 'Subnetworks on their own (network loafing); xN: N networks at one point', fontsize=10)
    fig.legend(handles=handles, loc='lower center', ncol=len(KINDS), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))  # room for the legend below the panels
    return fig


def plot_results(rows: Sequence[Dict[str, Any]], path: str, x: str = 'flops', title: Optional[str] = None) -> str:
    """Top-1 against FLOPs (``x='flops'``) or blocks kept (``x='blocks'``): one panel per checkpoint label.

    Full networks are stars, one-block-removed networks triangles, sampled subnetworks dots
    (``build_plot``). Writes a PNG to ``path`` and returns it.
    """
    build_plot(rows, x=x, title=title).savefig(path, format='png')
    return path


def summary_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Per checkpoint: full network top-1, one-block-removed mean / min, sampled mean / min / max (markdown)."""
    def stats(values: List[float]) -> Tuple[str, str, str]:
        if not values:
            return '-', '-', '-'
        return f'{sum(values) / len(values):.2f}', f'{min(values):.2f}', f'{max(values):.2f}'

    lines = ['| checkpoint | full top-1 | one block removed: mean | min | sampled subnets: mean | min | max |',
             '|---|---|---|---|---|---|---|']
    for label in dict.fromkeys(r['label'] for r in rows):
        mine = [r for r in rows if r['label'] == label]
        full = [float(r['top1']) for r in mine if r['kind'] == 'full']
        drop_mean, drop_min, _ = stats([float(r['top1']) for r in mine if r['kind'] == 'drop1'])
        s_mean, s_min, s_max = stats([float(r['top1']) for r in mine if r['kind'] == 'sampled'])
        lines.append(f'| {label} | {full[0]:.2f} | {drop_mean} | {drop_min} | {s_mean} | {s_min} | {s_max} |'
                     if full else f'| {label} | - | {drop_mean} | {drop_min} | {s_mean} | {s_min} | {s_max} |')
    return '\n'.join(lines)


def checkpoint_labels(sources: Sequence[str]) -> List[str]:
    """Short, unique names for sources: the fewest trailing path components that tell them apart."""
    prefixes, parts = [], []
    for source in sources:
        prefix = LOCAL_DIR if source.startswith(LOCAL_DIR) else ''
        prefixes.append(prefix)
        parts.append([source] if hub_repo_of(source) else source[len(prefix):].rstrip('/').split('/'))
    for k in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = [prefix + '/'.join(p[-k:]) for prefix, p in zip(prefixes, parts)]
        if len(set(labels)) == len(labels):
            return labels
    return [f'{i}:{s}' for i, s in enumerate(sources)]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def create_analyze_parser() -> argparse.ArgumentParser:
    parser = TokenMaskingParser(
        prog=command_prog('analyze'),
        description='Evaluate the full network, every network with one block removed and sampled subnetworks of '
                    'timm checkpoints on the validation split (network loafing); write analyze.csv and analyze.png '
                    'and print a summary. Model and data options are train_stim.py\'s; --val-num-samples also '
                    'takes a seeded subset of map-style datasets (image folders, torch/, hfds/).')
    add_checkpoint_sources(parser)
    group = parser.add_argument_group('Analysis')
    samples = group.add_argument('--samples', type=int, default=64, metavar='N',
                                 help='subnetworks sampled per checkpoint (default: 64; formerly --stim-subnets and '
                                      '--subnets)')
    group.add_argument('--distinct', action='store_true',
                       help='sample --samples different subnetworks other than the full network (all of them '
                            'when the space holds fewer); by default draws may repeat, as in training')
    bn_recal = add_config_option(
        group, 'bn_recal', default=1000,
        help='training images (eval transform) BN statistics are re-estimated on for each subnetwork; 0 keeps the '
             'checkpoint\'s statistics (formerly --bn-recal)')
    group.add_argument('--out', default='output/analyze', metavar='DIR',
                       help=f'folder for {CSV_FILE} and {PLOT_FILE} (default: output/analyze)')
    group.add_argument('--labels', default=None, metavar='A,B,...',
                       help='names of the checkpoints in the CSV, plot and summary (default: their file names)')
    group.add_argument('--plot-x', default='flops', choices=('flops', 'blocks'),
                       help='x axis of the plot (default: flops)')
    group.add_argument('--device', default=None,
                       help='device, e.g. cuda, cpu (default: cuda when available, else cpu)')
    sampling = parser.add_argument_group('Subnetworks sampled (as in train_stim.py; formerly --space, --mode)')
    space, mode = (add_config_option(sampling, name) for name in _STIM_OPTIONS[:2])
    copy_train_options(parser, DATA_OPTIONS,
                       'Model and data (as in train_stim.py; classes and preprocessing default to the checkpoint\'s: '
                       'its classifier, args.yaml beside it or its Hub config)')
    # --stim-subnets is training's "subnetworks per step": analyze's count per checkpoint has its own name.
    for old in ('--stim-subnets', '--subnets'):
        add_deprecated_alias(group, old, samples, note='subnetworks sampled per checkpoint; in train_stim.py '
                                                       '--stim-subnets means subnetworks per step')
    for old, new in (('--bn-recal', bn_recal), ('--space', space), ('--mode', mode)):
        add_deprecated_alias(group, old, new)
    return parser


def analysis_data_config(args: argparse.Namespace, loaded: LoadedModel) -> Dict[str, Any]:
    from timm.data import resolve_data_config
    overrides = dict(loaded.data_config)
    cli = {k: getattr(args, k) for k in ('img_size', 'input_size', 'crop_pct', 'mean', 'std', 'interpolation')}
    if cli['img_size'] is not None or cli['input_size'] is not None:
        overrides.pop('input_size', None)
        overrides.pop('img_size', None)
    overrides.update({k: v for k, v in cli.items() if v not in (None, '')})
    return resolve_data_config(overrides, model=loaded.model)


def check_analyze_args(args: argparse.Namespace) -> None:
    if not 0 <= args.samples <= MAX_SUBNETS:
        raise InputError(f'--samples {args.samples}: expected a number of sampled subnetworks >= 0 and '
                         f'<= {MAX_SUBNETS} (each is evaluated on the whole validation split).')
    try:
        StimConfig.check_options(args, _STIM_OPTIONS)  # as training checks them
    except ConfigError as e:
        raise InputError(str(e)) from None
    if args.batch_size < 1:
        raise InputError(f'-b/--batch-size {args.batch_size}: expected >= 1.')
    if args.val_num_samples is not None and args.val_num_samples < 1:
        raise InputError(f'--val-num-samples {args.val_num_samples}: expected a number of images >= 1.')
    if args.amp_dtype not in ('float16', 'bfloat16'):
        raise InputError(f'--amp-dtype {args.amp_dtype!r}: expected float16 or bfloat16.')
    if args.labels is not None and len(args.labels.split(',')) != len(args.checkpoints):
        raise InputError(f'--labels {args.labels!r} gives {len(args.labels.split(","))} names for '
                         f'{len(args.checkpoints)} checkpoints; give one name per checkpoint, comma-separated.')
    check_writable_out(args.out)


def amp_autocast_of(args: argparse.Namespace, device: torch.device) -> Callable:
    """``torch.autocast`` as training uses it for ``--amp`` (bfloat16 on CPU), or ``nullcontext``."""
    if not args.amp:
        return nullcontext
    dtype = resolve_amp_dtype(args.amp_dtype, device)
    print(f'Evaluating in mixed precision ({dtype}{", as autocast on CPU supports" if device.type == "cpu" else ""})',
          flush=True)
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def _seeded_subset(dataset, num_images: int, seed: int):
    """``num_images`` images of a map-style dataset drawn with ``seed``, in the drawn (fixed, mixed) order.

    Image folders list images class by class: the first N would hold only the first classes, and
    batches of one class would bias BatchNorm re-estimation.
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images]
    return torch.utils.data.Subset(dataset, order.tolist())


def analysis_loaders(args: argparse.Namespace, data_config: Dict[str, Any], device: torch.device):
    """(validation loader, BN re-estimation batches) for one data config."""
    from timm.data import create_dataset, create_loader
    from ..datasets import resolve_dataset, with_image_mode
    dataset_name, root = resolve_dataset(args.dataset, args.data_dir)
    img_mode = args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L')

    def loader(split: str, num_images: Optional[int] = None):
        dataset = create_dataset(dataset_name, root=root, split=split, is_training=False, class_map=args.class_map,
                                 batch_size=args.batch_size, input_img_mode=img_mode, input_key=args.input_key,
                                 target_key=args.target_key, num_samples=num_images,
                                 trust_remote_code=args.dataset_trust_remote_code)
        dataset = with_image_mode(dataset, dataset_name, img_mode)
        loader = create_loader(dataset, input_size=data_config['input_size'], batch_size=args.batch_size,
                               is_training=False, interpolation=data_config['interpolation'], mean=data_config['mean'],
                               std=data_config['std'], crop_pct=data_config['crop_pct'],
                               crop_mode=data_config.get('crop_mode'), num_workers=args.workers, device=device,
                               use_prefetcher=False)
        if num_images is None or not hasattr(dataset, '__getitem__'):
            return loader  # iterable datasets stop at num_samples themselves
        # A seeded subset, with the eval transform create_loader set on the dataset.
        return torch.utils.data.DataLoader(_seeded_subset(dataset, min(num_images, len(dataset)), args.seed),
                                           batch_size=args.batch_size, shuffle=False, num_workers=args.workers)

    recal = (collect_batches(loader(args.train_split, args.stim_bn_recal), args.stim_bn_recal)
             if args.stim_bn_recal > 0 else [])
    return loader(args.val_split, args.val_num_samples), recal


class BatchProgress:
    """Iterates ``loader`` under a transient progress bar (on a terminal only); other attributes are the loader's."""

    def __init__(self, loader: Iterable, desc: str):
        self.loader = loader
        self.desc = desc

    def __getattr__(self, name: str) -> Any:  # only called for names this wrapper lacks
        if name == 'loader':
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        from tqdm import tqdm
        total = len(self.loader) if hasattr(self.loader, '__len__') else None
        yield from tqdm(self.loader, desc=self.desc, total=total, leave=False, disable=None, unit='batch')


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Everything ``main`` does after parsing: check, load, evaluate, write; return the CSV rows."""
    from tqdm import tqdm
    from ..datasets import resolve_dataset
    check_analyze_args(args)
    try:
        resolve_dataset(args.dataset, args.data_dir)  # missing data is reported before any model is built
    except (ValueError, OSError) as e:
        raise InputError(str(e)) from None
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    labels = args.labels.split(',') if args.labels else checkpoint_labels(args.checkpoints)

    # Every checkpoint is loaded and checked against the space before any data is read.
    loaded = []
    for source in args.checkpoints:
        item = load_model(source, args.model, args.num_classes, use_ema=args.use_ema)
        try:
            stim = attach(item.model, space=args.stim_space, mode=args.stim_mode, bn='update')
        except ValueError as e:
            raise InputError(f'{source} ({item.architecture}): {e}') from None
        loaded.append((item, stim, analysis_data_config(args, item)))

    plans = [analysis_subnets(stim, args.samples, args.seed, args.distinct) for _, stim, _ in loaded]
    total = sum(len(p) for p in plans)
    recal_text = (f'BN statistics re-estimated on {args.stim_bn_recal} {args.train_split!r} images per subnetwork'
                  if args.stim_bn_recal else 'the checkpoints\' BN statistics')
    print(f'Evaluating {total} networks of {len(loaded)} checkpoint(s) on the {args.val_split!r} split ({recal_text})',
          flush=True)
    amp_autocast = amp_autocast_of(args, device)
    loaders: Dict[str, Any] = {}  # (validation loader, recal batches) per data config
    for _, _, data_config in loaded:
        key = repr(sorted(data_config.items()))
        if key not in loaders:
            try:
                loaders[key] = analysis_loaders(args, data_config, device)
            except (OSError, ValueError) as e:
                raise InputError(f'could not read the {args.train_split!r} / {args.val_split!r} splits of '
                                 f'{args.dataset or args.data_dir}: {type(e).__name__}: {e}') from None
    os.makedirs(args.out, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    start = time.time()
    done = 0
    # One bar over all networks on a terminal (tqdm disables itself otherwise); a line per network always.
    with tqdm(total=total, desc='networks', unit='net', disable=None, file=sys.stderr) as bar:
        for (item, stim, data_config), plan, label in zip(loaded, plans, labels):
            val_loader, recal_batches = loaders[repr(sorted(data_config.items()))]

            def progress(_done: int, _total: int, result: SubnetResult, label: str = label) -> None:
                nonlocal done
                done += 1
                bar.update(1)
                depths = ','.join(map(str, result.subnet.depths))
                tqdm.write(f'[{done}/{total}] {label} {result.kind:<7} depths {depths}'
                           f'  {result.flops / 1e6:.1f} MFLOPs  top-1 {result.top1:.2f}  top-5 {result.top5:.2f}'
                           f'  ({time.time() - start:.0f} s)', file=sys.stdout)

            item.model.to(device)
            if args.channels_last:
                item.model.to(memory_format=torch.channels_last)
            results = evaluate_subnets(item.model, BatchProgress(val_loader, f'{label} validation'), plan,
                                       recal_batches=recal_batches, input_size=data_config['input_size'],
                                       device=device, amp_autocast=amp_autocast, channels_last=args.channels_last,
                                       progress=progress)
            rows += [result_row(item.source, label, item.architecture, r) for r in results]
            item.model.to('cpu')
            write_csv(rows, os.path.join(args.out, CSV_FILE))  # partial results survive an interruption

    plot_results(rows, os.path.join(args.out, PLOT_FILE), x=args.plot_x)
    print(summary_table(rows))
    print(f'Wrote {os.path.join(args.out, CSV_FILE)} and {os.path.join(args.out, PLOT_FILE)}')
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``timm-stim analyze``: 0 done; exits 2 on bad input (reported before any evaluation)."""
    command_main(lambda args: run(create_analyze_parser().parse_args(args)), argv)
    return 0


if __name__ == '__main__':
    sys.exit(main())
