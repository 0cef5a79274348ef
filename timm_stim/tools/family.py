"""Train once, deploy a family: score every subnetwork of trained checkpoints, mark the Pareto front, export it.

``python -m timm_stim family CHECKPOINT [CHECKPOINT ...] --dataset/--data-dir ... [--stim-space stpp]``
enumerates the members of each checkpoint's space (``timm_stim.select.family_subnets``: all of them
up to ``--max-members``, else a grid of depths per stage), and for each one:

1. extracts it as a plain timm model (``timm_stim.extract.export_subnet``; its logits are checked equal
   to the subnetwork's on a random batch);
2. re-estimates its BatchNorm statistics on ``--stim-bn-recal`` training images (the full network keeps
   the checkpoint's), as ``analyze`` does;
3. counts parameters and FLOPs, scores top-1 / top-5 on the validation split;
4. measures its latency on ``--device`` at batch 1 and at ``--latency-batch-size`` (warmed up, the
   median of ``--latency-repeats``; ``--channels-last``, ``--amp`` and ``--torchcompile`` honoured).

It marks the Pareto front against FLOPs and against batch-1 latency, writes ``family.csv``,
``family.json`` and ``family.png`` into ``--out``, and exports every front member (and the
``--select``ed one) as a plain timm model folder under ``--out/members/LABEL/depths-D1-D2-...``
(config.json, model.safetensors, README.md card), which ``timm.create_model('local-dir:FOLDER',
pretrained=True)`` loads without timm-stim. ``--push-to-hub USER/NAME`` publishes them to one
repository, one branch per member (``hf-hub:USER/NAME@depths-3-3-4-3``), with the most accurate
member and the family card on ``main``.

Library use: ``timm_stim.select_subnet(model, rows, max_flops=...)`` with the rows of family.csv.
"""
import argparse
import csv
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import InputError, command_main
from ..extract import EXPORT_FAMILIES, export_subnet, supported_families
from ..flops import count_flops
from ..bn import recalibrate_bn
from ..devices import resolve_amp_dtype
from ..latency import check_device, measure_latency
from ..select import family_subnets, pareto_front, row_depths, select_row
from ..stimulator import attach
from ..config import StimConfig
from ..subnet import Subnet
from ..timm_options import copy_train_options
from ..tokens import TokenMaskingParser
from .analyze import (DATA_OPTIONS, BatchProgress, amp_autocast_of, analysis_data_config, analysis_loaders,
                      checkpoint_labels,
                      evaluate)
from .analyze import check_analyze_args as _check_analyze_args
from .checkpoints import LoadedModel, add_checkpoint_sources, hub_repo_of, load_model
from .export import ExportMismatchError, max_logit_diff, save_exported

__all__ = ['CSV_COLUMNS', 'FamilyMember', 'member_name', 'parse_select', 'mark_fronts',
           'plot_fronts', 'family_card', 'create_family_parser', 'run', 'main']

CSV_FILE, JSON_FILE, PLOT_FILE = 'family.csv', 'family.json', 'family.png'
MEMBERS_DIR = 'members'
CSV_COLUMNS = ('checkpoint', 'label', 'model', 'depths', 'num_blocks', 'params', 'flops', 'top1', 'top5',
               'bn_recal_images', 'latency_ms', 'latency_batch_ms', 'latency_batch_size', 'device', 'full',
               'front_flops', 'front_latency', 'selected', 'folder', 'hub')
SELECT_KEYS = {'max-flops': 'max_flops', 'max-latency-ms': 'max_latency_ms'}


@dataclass
class FamilyMember:
    """One scored member; ``bn_buffers`` are its re-estimated BatchNorm buffers (to export it again)."""
    subnet: Subnet
    row: Dict[str, Any]
    bn_buffers: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def member_name(depths: Sequence[int]) -> str:
    """Folder and Hub branch name of a member: ``depths-3-3-4-3``."""
    return 'depths-' + '-'.join(str(int(d)) for d in depths)


def parse_select(text: Optional[str]) -> Dict[str, float]:
    """``'max-latency-ms=5'`` / ``'max-flops=2e9,max-latency-ms=5'`` -> ``select_row`` keyword arguments."""
    if text is None:
        return {}
    limits = {}
    for part in text.split(','):
        key, sep, value = part.partition('=')
        key = key.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or key not in SELECT_KEYS or number is None or number <= 0:
            raise InputError(f'--select {text!r}: expected LIMIT=VALUE[,LIMIT=VALUE] with LIMIT one of '
                             f'{", ".join(SELECT_KEYS)} and a positive number, e.g. max-latency-ms=5 or max-flops=2e9.')
        limits[SELECT_KEYS[key]] = number
    return limits


def mark_fronts(rows: Sequence[Dict[str, Any]]) -> None:
    """Set ``front_flops`` / ``front_latency`` of the rows of one checkpoint (top-1 against FLOPs / batch-1 latency)."""
    top1 = [float(r['top1']) for r in rows]
    for key, cost in (('front_flops', 'flops'), ('front_latency', 'latency_ms')):
        for r, on in zip(rows, pareto_front([float(r[cost]) for r in rows], top1)):
            r[key] = on


# ---------------------------------------------------------------------------------------------
# Plot and cards
# ---------------------------------------------------------------------------------------------

def plot_fronts(rows: Sequence[Dict[str, Any]], path: str, title: Optional[str] = None) -> str:
    """Top-1 against FLOPs (left) and against batch-1 latency (right): every member a dot, each checkpoint's
    front a line, the full network a star, front members labelled by depths (coinciding points share one label)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(r['label'] for r in rows))
    max_flops = max((float(r['flops']) for r in rows), default=0.0)
    scale, unit = (1e9, 'GFLOPs') if max_flops >= 1e9 else (1e6, 'MFLOPs')
    fig = Figure(figsize=(12.0, 5.2), dpi=100)
    FigureCanvasAgg(fig)
    device = rows[0]['device'] if rows else ''
    panels = ((('flops', scale), f'{unit} per image', 'front_flops'),
              (('latency_ms', 1.0), f'latency, batch 1, {device} (ms, median)', 'front_latency'))
    for i, ((key, div), xlabel, front_key) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for n, label in enumerate(labels):
            colour = f'C{n % 10}'
            mine = [r for r in rows if r['label'] == label]
            ax.scatter([float(r[key]) / div for r in mine], [float(r['top1']) for r in mine], color=colour, s=14,
                       alpha=0.35, zorder=2)
            front = sorted((r for r in mine if r[front_key]), key=lambda r: (float(r[key]), float(r['top1'])))
            ax.plot([float(r[key]) / div for r in front], [float(r['top1']) for r in front], color=colour,
                    marker='o', markersize=5, linewidth=1.4, zorder=3, label=f'{label}: front')
            for r in mine:
                if r['full']:
                    ax.scatter([float(r[key]) / div], [float(r['top1'])], marker='*', s=180, color=colour,
                               edgecolors='black', linewidths=0.6, zorder=4)
            # Members at the same point share one label, so coinciding points stay readable.
            at: Dict[Tuple[float, float], List[str]] = {}
            for r in front:
                at.setdefault((round(float(r[key]) / div, 4), round(float(r['top1']), 2)), []).append(r['depths'])
            for k, ((x, y), names) in enumerate(at.items()):
                ax.annotate(' | '.join(names), (x, y), xytext=(4, 6 if k % 2 == 0 else -11), textcoords='offset points',
                            fontsize=6.5, color=colour)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('validation top-1 (%)')
        ax.grid(alpha=0.3)
        if i == 0:
            ax.scatter([], [], marker='*', s=120, color='white', edgecolors='black', label='full network')
            ax.legend(fontsize=7, loc='lower right')
    fig.suptitle(title or 'The family of each checkpoint: Pareto fronts (labels: blocks per stage)', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format='png')
    return path


def _member_card(repo_id: str, loaded: LoadedModel, member: nn.Module, row: Dict[str, Any], data_config: Dict,
                 model_config: Dict, stage_depths: Sequence[int], val_split: str):
    from .modelcard import base_model_of, build_model_card
    recal = int(row['bn_recal_images'])
    with_stats = f' with BatchNorm statistics re-estimated on {recal} training images' if recal else ''
    section = (f'This model is a member of the family of a trained `{loaded.architecture}` '
               f'(`{loaded.source}`, stage depths {", ".join(map(str, stage_depths))}), exported by '
               f'`timm-stim family`: it keeps the first {", ".join(row["depths"].split(","))} blocks of its stages '
               f'(`model_args.layers` in config.json). Its logits equal those of the same subnetwork of the parent '
               f'model{with_stats}.\n\n'
               f'| parent | depths | parameters | FLOPs / image | top-1 | top-5 | latency, batch 1 | '
               f'latency, batch {row["latency_batch_size"]} |\n|---|---|---|---|---|---|---|---|\n'
               f'| `{loaded.architecture}` ({os.path.basename(loaded.source)}) | {row["depths"]} | '
               f'{int(row["params"]) / 1e6:.2f} M | {int(row["flops"]) / 1e6:.1f} M | {float(row["top1"]):.2f} % | '
               f'{float(row["top5"]):.2f} % | {float(row["latency_ms"]):.3f} ms | {float(row["latency_batch_ms"]):.3f} '
               f'ms |\n\nAccuracy on the `{val_split}` split; latency measured on {row["device"]} (median).')
    return build_model_card(
        repo_id, architecture=loaded.architecture, num_classes=int(member.num_classes), pretrained_cfg=data_config,
        published=f'family member {row["depths"]} of `{os.path.basename(loaded.source)}`',
        base_model=hub_repo_of(loaded.source) or base_model_of(loaded.train_args),
        num_params=int(row['params']), label_names=model_config.get('label_names'),
        sections={'Family member': section})


def family_card(repo_id: str, architecture: str, source: str, rows: Sequence[Dict[str, Any]], main_depths: str) -> str:
    """The family's README.md: every exported member with its figures and how to load it (``hf-hub:REPO@BRANCH``)."""
    lines = [
        '---', 'library_name: timm', 'pipeline_tag: image-classification', 'tags:', '- image-classification',
        '- timm', '- timm-stim', '- stimulative-training', '---', '',
        f'# Family of {architecture} subnetworks',
        '', f'One trained `{architecture}` (`{os.path.basename(source)}`), many deployable models: each member below '
            f'keeps the first blocks of each stage and is a plain timm model of that depth, on its own branch of this '
            f'repository. Load one with timm alone:', '', '```python', 'import timm',
        f'model = timm.create_model("hf-hub:{repo_id}@{member_name(row_depths(rows[0]))}", pretrained=True)', '```', '',
        f'`main` holds the most accurate member, depths {main_depths}.', '',
        '| depths | parameters | FLOPs / image | top-1 | top-5 | latency, batch 1 | front (FLOPs / latency) | load |',
        '|---|---|---|---|---|---|---|---|']
    for r in rows:
        branch = member_name(row_depths(r))
        fronts = ' / '.join('yes' if r[k] else 'no' for k in ('front_flops', 'front_latency'))
        lines.append(f'| {r["depths"]} | {int(r["params"]) / 1e6:.2f} M | {int(r["flops"]) / 1e6:.1f} M | '
                     f'{float(r["top1"]):.2f} % | {float(r["top5"]):.2f} % | {float(r["latency_ms"]):.3f} ms | '
                     f'{fronts} '
                     f'| [`hf-hub:{repo_id}@{branch}`](https://huggingface.co/{repo_id}/tree/{branch}) |')
    lines += ['', f'Latency measured on {rows[0]["device"]} (median of repeats, warmed up). Scored and exported with '
                  '`timm-stim family`.', '']
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def create_family_parser() -> argparse.ArgumentParser:
    parser = TokenMaskingParser(
        prog='python -m timm_stim family',
        description='Score every member of trained checkpoints\' families (accuracy, parameters, FLOPs, measured '
                    'latency), mark the Pareto fronts, write family.csv, family.json and family.png and export the '
                    'front members as plain timm models. Model and data options are train_stim.py\'s. Supported: '
                    + '; '.join(EXPORT_FAMILIES.values()))
    add_checkpoint_sources(parser)
    group = parser.add_argument_group('Family')
    group.add_argument('--max-members', type=int, default=64, metavar='N',
                       help='score every member when the space holds at most N, else a grid of depths per stage '
                            '(default: 64)')
    group.add_argument('--stim-bn-recal', type=int, default=1000, metavar='N',
                       help='training images (eval transform) each member\'s BN statistics are re-estimated on; the '
                            'full network keeps the checkpoint\'s; 0 keeps them for all (default: 1000)')
    group.add_argument('--latency-batch-size', type=int, default=32, metavar='N',
                       help='batch size of the second latency measurement (the first is batch 1; default: 32)')
    group.add_argument('--latency-repeats', type=int, default=20, metavar='N',
                       help='timed passes per latency; the median is reported (default: 20)')
    group.add_argument('--latency-warmup', type=int, default=5, metavar='N',
                       help='untimed passes before timing (default: 5)')
    group.add_argument('--select', default=None, metavar='LIMIT=VALUE',
                       help='also pick the most accurate member within max-flops=F and / or max-latency-ms=MS '
                            '(batch-1 latency), e.g. max-latency-ms=5 or max-flops=2e9,max-latency-ms=5')
    group.add_argument('--no-export', dest='export', action='store_false',
                       help='score only; export no member')
    group.add_argument('--out', default='output/family', metavar='DIR',
                       help=f'folder for {CSV_FILE}, {JSON_FILE}, {PLOT_FILE} and {MEMBERS_DIR}/ (default: '
                            f'output/family)')
    group.add_argument('--labels', default=None, metavar='A,B,...',
                       help='names of the checkpoints (default: their file names)')
    group.add_argument('--device', default=None,
                       help='device scoring and latency run on, e.g. cuda, cpu (default: cuda when available, '
                            'else cpu)')
    copy_train_options(parser, ('--stim-space',), 'Space (as in train_stim.py)')
    copy_train_options(parser, ('--torchcompile', '--torchcompile-mode'),
                       'Compilation of each member for its latency measurement (as in train_stim.py)')
    copy_train_options(parser, DATA_OPTIONS,
                       'Model and data (as in train_stim.py; classes and preprocessing default to the checkpoint\'s)')
    copy_train_options(parser, ('--push-to-hub', '--hub-private'),
                       'Publishing the family: one repository, one branch per member (token from HF_TOKEN or hf auth '
                       'login)')
    return parser


def _check_family_args(args: argparse.Namespace) -> Dict[str, float]:
    from .hub import check_push_options
    # The options shared with analyze are checked by its rule (it reads no sample count of ours: 0).
    # analyze's checks, for the options family shares with it (family samples nothing, in depth mode)
    _check_analyze_args(argparse.Namespace(**{'stim_mode': StimConfig().mode, **vars(args)}, samples=0))
    for option, value, least in (('--max-members', args.max_members, 2),
                                 ('--latency-batch-size', args.latency_batch_size, 1),
                                 ('--latency-repeats', args.latency_repeats, 1),
                                 ('--latency-warmup', args.latency_warmup, 0)):
        if value < least:
            raise InputError(f'{option} {value}: expected a number >= {least}.')
    if args.push_to_hub:
        if len(args.checkpoints) != 1:
            raise InputError(f'--push-to-hub publishes the family of one checkpoint; {len(args.checkpoints)} were '
                             f'given: run once per checkpoint.')
        if not args.export:
            raise InputError('--push-to-hub publishes the exported members: drop --no-export.')
        try:
            check_push_options(args.push_to_hub)
        except InputError as e:
            raise InputError(f'--push-to-hub: {e}') from None
    return parse_select(args.select)


def _slug(label: str) -> str:
    return re.sub(r'[^A-Za-z0-9._-]+', '_', label).strip('_') or 'checkpoint'


def _score_member(args: argparse.Namespace, item: LoadedModel, subnet: Subnet, full: bool, input_size: Sequence[int],
                  val_loader: Any, recal_batches: Sequence, device: torch.device,
                  amp_autocast: Callable) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """One member's figures (a CSV row without checkpoint / front columns) and its BatchNorm buffers."""
    member = export_subnet(item.model, subnet)
    diff = max_logit_diff(item.model, member, subnet, input_size)
    if diff != 0.0:
        raise ExportMismatchError(f'member {subnet.depths}: the plain model\'s logits differ from the subnetwork\'s by '
                                  f'up to {diff:g}.')
    member.to(device)
    if args.channels_last:
        member.to(memory_format=torch.channels_last)
    recal_images = 0 if full else sum(int(x.shape[0]) for x, _ in recal_batches)
    if recal_images:
        recalibrate_bn(member, recal_batches, recal_images, device, amp_autocast, args.channels_last)
    flops = count_flops(member, input_size, device)
    top1, top5 = evaluate(member, val_loader, device, amp_autocast, args.channels_last)
    timed: nn.Module = member
    if args.torchcompile:
        timed = torch.compile(member, backend=args.torchcompile, mode=args.torchcompile_mode)
    latency = {b: measure_latency(timed, input_size, b, device=device, warmup=args.latency_warmup,
                                  repeats=args.latency_repeats, channels_last=args.channels_last,
                                  amp_autocast=amp_autocast)
               for b in dict.fromkeys((1, args.latency_batch_size))}
    row = {'depths': ','.join(map(str, subnet.depths)), 'num_blocks': subnet.num_blocks,
           'params': sum(p.numel() for p in member.parameters()), 'flops': flops, 'top1': round(top1, 4),
           'top5': round(top5, 4), 'bn_recal_images': recal_images, 'latency_ms': round(latency[1], 4),
           'latency_batch_ms': round(latency[args.latency_batch_size], 4),
           'latency_batch_size': args.latency_batch_size, 'device': str(device), 'full': full}
    buffers = {k: v.detach().to('cpu', copy=True) for k, v in member.named_buffers()}
    return row, buffers


def _export_member(item: LoadedModel, member: FamilyMember, folder: str, data_config: Dict[str, Any],
                   stage_depths: Sequence[int], repo_id: str, val_split: str) -> nn.Module:
    """Write one member (with its re-estimated BatchNorm statistics) as a plain timm model folder with its card."""
    plain = export_subnet(item.model, member.subnet)
    plain.load_state_dict({**plain.state_dict(), **member.bn_buffers}, strict=True)
    model_config = {}
    if item.model.pretrained_cfg.get('label_names'):
        model_config['label_names'] = item.model.pretrained_cfg['label_names']
    card = _member_card(repo_id, item, plain, member.row, data_config, model_config, stage_depths, val_split)
    save_exported(plain, folder, data_config=data_config, model_config=model_config, model_card=card)
    return plain


def _publish(args: argparse.Namespace, item: LoadedModel, exported: List[FamilyMember]) -> None:
    """Every exported member to its branch of one repository; the most accurate one and the family card to main."""
    from .hub import HubPushError
    repo_id = args.push_to_hub
    try:
        _publish_members(args, item, exported, repo_id)
    except HubPushError as e:
        e.saved_in = args.out
        raise


def _publish_members(args: argparse.Namespace, item: LoadedModel, exported: List[FamilyMember], repo_id: str) -> None:
    import shutil
    import tempfile
    from .hub import push_folder
    best = max(exported, key=lambda m: (float(m.row['top1']), -int(m.row['flops'])))
    for m in exported:
        branch = member_name(m.subnet.depths)
        url = push_folder(m.row['folder'], repo_id, private=args.hub_private, revision=branch,
                          commit_message=f'Family member {m.row["depths"]} (timm-stim family)', replace_card=True)
        m.row['hub'] = f'hf-hub:{repo_id}@{branch}'
        print(f'Published {m.row["depths"]} to {url}', flush=True)
    with tempfile.TemporaryDirectory(prefix='.family-main-', dir=args.out) as tmp:
        for name in os.listdir(best.row['folder']):
            if name != 'README.md':
                shutil.copy2(os.path.join(best.row['folder'], name), tmp)
        with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as f:
            f.write(family_card(repo_id, item.architecture, item.source, [m.row for m in exported], best.row['depths']))
        url = push_folder(tmp, repo_id, private=args.hub_private,
                          commit_message='Family card and most accurate member (timm-stim family)', replace_card=True)
    print(f'Published the family card to {url} (main: depths {best.row["depths"]})', flush=True)


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Everything ``main`` does after parsing: check, load, score, mark, write, export; return the CSV rows."""
    from tqdm import tqdm
    limits = _check_family_args(args)
    try:
        device = check_device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    except ValueError as e:
        raise InputError(f'--device: {e}') from None
    labels = args.labels.split(',') if args.labels else checkpoint_labels(args.checkpoints)

    # Every checkpoint is loaded and its family enumerated before any data is read.
    plans = []
    for source, label in zip(args.checkpoints, labels):
        item = load_model(source, args.model, args.num_classes, use_ema=args.use_ema)
        try:
            stim = attach(item.model, space=args.stim_space)
        except ValueError as e:
            raise InputError(f'{source} ({item.architecture}): {e}\nfamily supports:\n{supported_families()}') from None
        if stim.adapter.family not in EXPORT_FAMILIES:
            raise InputError(f'{source} is a {stim.adapter.family} model ({item.architecture}); its members cannot be '
                             f'plain timm models. family supports:\n{supported_families()}')
        try:
            subnets, how = family_subnets(stim, args.max_members)
        except ValueError as e:
            raise InputError(f'{source} ({item.architecture}), --stim-space {args.stim_space!r}: {e}') from None
        members_dir = os.path.join(args.out, MEMBERS_DIR, _slug(label))
        if args.export and os.path.isdir(members_dir) and os.listdir(members_dir):
            raise InputError(f'{members_dir} already holds exported members; choose a new --out or remove it.')
        plans.append((item, stim, label, subnets, how, analysis_data_config(args, item), members_dir))

    total = sum(len(p[3]) for p in plans)
    amp_autocast = amp_autocast_of(args, device)
    loaders: Dict[str, Any] = {}
    for plan in plans:
        key = repr(sorted(plan[5].items()))
        if key not in loaders:
            try:
                loaders[key] = analysis_loaders(args, plan[5], device)
            except (OSError, ValueError) as e:
                raise InputError(f'could not read the {args.train_split!r} / {args.val_split!r} splits of '
                                 f'{args.dataset or args.data_dir}: {type(e).__name__}: {e}') from None
    for item, stim, label, subnets, how, _, _ in plans:
        print(f'{label}: {len(subnets)} members of {stim.space_size()} in space '
              f'{args.stim_space!r} ({"every one" if how == "all" else "a grid of depths per stage"}), depths per '
              f'stage {stim.depth_choices}', flush=True)
    recal_text = (f'BN statistics re-estimated on {args.stim_bn_recal} {args.train_split!r} images per member'
                  if args.stim_bn_recal else 'the checkpoints\' BN statistics')
    print(f'Scoring {total} members of {len(plans)} checkpoint(s) on the {args.val_split!r} split ({recal_text}); '
          f'latency on {device} at batch 1 and {args.latency_batch_size}', flush=True)

    os.makedirs(args.out, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    families: List[Tuple[Any, ...]] = []
    start, done = time.time(), 0
    with tqdm(total=total, desc='members', unit='net', disable=None, file=sys.stderr) as bar:
        for item, stim, label, subnets, how, data_config, members_dir in plans:
            val_loader, recal_batches = loaders[repr(sorted(data_config.items()))]
            full = stim.full()
            stim.detach()
            members = []
            for subnet in subnets:
                row, buffers = _score_member(args, item, subnet, subnet == full, data_config['input_size'],
                                             BatchProgress(val_loader, f'{label} validation'), recal_batches, device,
                                             amp_autocast)
                row = {'checkpoint': item.source, 'label': label, 'model': item.architecture, **row,
                       'front_flops': False, 'front_latency': False, 'selected': False, 'folder': '', 'hub': ''}
                members.append(FamilyMember(subnet, row, buffers))
                done += 1
                bar.update(1)
                tqdm.write(f'[{done}/{total}] {label} depths {row["depths"]}  {row["params"] / 1e6:.2f} M params  '
                           f'{row["flops"] / 1e6:.1f} MFLOPs  top-1 {row["top1"]:.2f}  top-5 {row["top5"]:.2f}  '
                           f'{row["latency_ms"]:.3f} ms (batch 1)  {row["latency_batch_ms"]:.3f} ms (batch '
                           f'{args.latency_batch_size})  ({time.time() - start:.0f} s)', file=sys.stdout)
            mark_fronts([m.row for m in members])
            if limits:
                try:
                    chosen = select_row([m.row for m in members], **limits)
                except ValueError as e:
                    print(f'{label}: --select {args.select}: {e}', flush=True)
                else:
                    chosen['selected'] = True
                    print(f'{label}: --select {args.select} picks depths {chosen["depths"]} '
                          f'(top-1 {chosen["top1"]:.2f}, '
                          f'{chosen["flops"] / 1e6:.1f} MFLOPs, {chosen["latency_ms"]:.3f} ms)', flush=True)
            rows += [m.row for m in members]
            families.append((item, stim.stage_depths, label, how, data_config, members_dir, members))
            _write_table(args, rows, families, device)  # partial results survive an interruption

    if args.export:
        for item, stage_depths, label, _, data_config, members_dir, members in families:
            exported = [m for m in members if m.row['front_flops'] or m.row['front_latency'] or m.row['selected']]
            for m in exported:
                folder = os.path.join(members_dir, member_name(m.subnet.depths))
                branch = member_name(m.subnet.depths)
                repo_id = f'{args.push_to_hub or "USER/" + _slug(label) + "-family"}@{branch}'
                _export_member(item, m, folder, data_config, stage_depths, repo_id, args.val_split)
                m.row['folder'] = folder
            print(f'{label}: exported {len(exported)} front member(s) to {members_dir}; load one with '
                  f'timm.create_model("local-dir:{os.path.abspath(exported[0].row["folder"])}", pretrained=True)',
                  flush=True)
            if args.push_to_hub:
                _write_table(args, rows, families, device)
                _publish(args, item, exported)
    _write_table(args, rows, families, device)
    plot_fronts(rows, os.path.join(args.out, PLOT_FILE))
    print(f'Wrote {os.path.join(args.out, CSV_FILE)}, {JSON_FILE} and {PLOT_FILE}')
    return rows


def _write_table(args: argparse.Namespace, rows: Sequence[Dict[str, Any]], families: Sequence[Tuple[Any, ...]],
                 device: torch.device) -> None:
    """family.csv (one row per member) and family.json (settings, and the members per checkpoint), atomically."""
    path = os.path.join(args.out, CSV_FILE)
    with open(path + '.tmp', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + '.tmp', path)
    document = {
        'space': args.stim_space, 'max_members': args.max_members, 'bn_recal_images': args.stim_bn_recal,
        'val_split': args.val_split, 'device': str(device),
        'latency': {'batch_sizes': [1, args.latency_batch_size], 'warmup': args.latency_warmup,
                    'repeats': args.latency_repeats, 'statistic': 'median', 'channels_last': args.channels_last,
                    'amp': str(resolve_amp_dtype(args.amp_dtype, device)).replace('torch.', '') if args.amp else None,
                    'torchcompile': args.torchcompile},
        'checkpoints': [{'checkpoint': item.source, 'label': label, 'model': item.architecture,
                         'use_ema': item.use_ema, 'stage_depths': list(stage_depths), 'enumeration': how,
                         'members': [m.row for m in members]}
                        for item, stage_depths, label, how, _, _, members in families]}
    path = os.path.join(args.out, JSON_FILE)
    with open(path + '.tmp', 'w') as f:
        json.dump(document, f, indent=1)
    os.replace(path + '.tmp', path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``timm-stim family``: 0 done; exits 2 on bad input (reported before any scoring), 1 when publishing failed."""
    command_main(lambda args: run(create_family_parser().parse_args(args)), argv)
    return 0


if __name__ == '__main__':
    sys.exit(main())
