"""Export a trained subnetwork as a plain, smaller timm model.

``python -m timm_stim export CHECKPOINT --model NAME --depths 3,3,4,3 --out DIR [--push-to-hub USER/REPO]``
builds the timm model of the smaller depth (``timm.create_model(name, layers=depths)``), copies
the kept blocks' weights into it and saves it in timm's Hugging Face format (``model.safetensors``
+ ``config.json`` whose ``model_args`` carry ``layers``), so that
``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``"hf-hub:USER/REPO"``) rebuilds it
without timm-stim. In eval mode its logits equal, exactly, those of the same subnetwork run
through ``Stimulator.activate`` on the original model; the command checks that on a random batch.

Supported families (``EXPORT_FAMILIES``): timm's ``ResNet`` class (resnet*, resnext*, seresnet*,
ecaresnet*, resnet*d, resnetrs*, skresnet*, resnest*, res2net*, ...) and ``ResNetV2``
(resnetv2_*) where its entry point takes ``layers`` (not the ``*_bit`` variants). Other families
are refused with this list.

``--depths`` keeps the first ``d`` blocks of each stage (the official rule); ``--blocks
"0,1,2;0,2;0,1,2,3;0,1"`` keeps any blocks (block 0 of each stage always), renumbered in order.
Every argument is checked before anything is written; the folder is written in a temporary
sibling and renamed into place, so it is never left half-written.
"""
import argparse
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from .checkpoints import LoadedModel, add_checkpoint_sources, check_writable_out, hub_repo_of, load_model
from ..errors import CommandFailed, InputError, command_main, command_prog
from ..extract import EXPORT_FAMILIES, export_subnet  # noqa: F401  (moved to the core; kept importable here)
from ..extract import stimulator_for_export as _stimulator, supported_families as _supported
from ..flops import model_stats
from ..loading import follow_umask
from ..stimulator import get_stimulator
from ..subnet import Subnet
from ..timm_options import copy_train_options
from .push import TokenMaskingParser

__all__ = ['EXPORT_FAMILIES', 'parse_depths', 'parse_blocks', 'export_subnet', 'save_exported', 'max_logit_diff',
           'main']


class ExportMismatchError(CommandFailed):
    """The exported model does not compute what the subnetwork computes (nothing is written)."""



def parse_depths(text: str, stage_depths: Sequence[int]) -> Subnet:
    """``"3,3,4,3"`` -> the subnet keeping the first d blocks of each stage; ``InputError`` naming what is wrong."""
    stage_depths = tuple(stage_depths)
    try:
        depths = [int(v) for v in text.split(',')]
    except ValueError:
        raise InputError(f'--depths {text!r}: expected comma-separated integers, one per stage, e.g. '
                         f'{",".join(map(str, stage_depths))} (the model\'s depths).') from None
    if len(depths) != len(stage_depths):
        raise InputError(f'--depths {text!r} gives {len(depths)} stages; the model has {len(stage_depths)} with '
                         f'depths {",".join(map(str, stage_depths))}: give one depth per stage.')
    for i, (d, full) in enumerate(zip(depths, stage_depths)):
        if not 1 <= d <= full:
            raise InputError(f'--depths {text!r}: stage {i} depth {d} is outside 1..{full} (each stage keeps at '
                             f'least 1 block and at most its {full}; model depths {",".join(map(str, stage_depths))}).')
    return Subnet.from_depths(depths)


def parse_blocks(text: str, stage_depths: Sequence[int]) -> Subnet:
    """``"0,1,2;0,2;..."`` -> the subnet keeping these blocks of each stage; ``InputError`` naming what is wrong."""
    stages = text.split(';')
    if len(stages) != len(stage_depths):
        raise InputError(f'--blocks {text!r} gives {len(stages)} stages; the model has {len(stage_depths)} with '
                         f'depths {",".join(map(str, stage_depths))}: separate stages with ";".')
    try:
        subnet = Subnet(tuple(tuple(int(b) for b in stage.split(',')) for stage in stages))
    except ValueError as e:
        raise InputError(f'--blocks {text!r}: {e} Example: "0,1;0;0,1;0,1".') from None
    for i, (kept, full) in enumerate(zip(subnet.blocks, stage_depths)):
        if kept[-1] >= full:
            raise InputError(f'--blocks {text!r}: stage {i} has blocks 0..{full - 1}, cannot keep block {kept[-1]}.')
    return subnet


@torch.no_grad()
def max_logit_diff(model: nn.Module, exported: nn.Module, subnet: Subnet, input_size: Sequence[int],
                   batch: int = 2, seed: int = 0) -> float:
    """Largest |difference| between ``exported`` and ``subnet`` run on ``model`` (eval mode, random input)."""
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    had_stim = get_stimulator(model) is not None
    stim = _stimulator(model)
    was_training = model.training
    model.eval()
    try:
        with stim.activate(subnet):
            expected = model(x)
    finally:
        model.train(was_training)
        if not had_stim:
            stim.detach()
    return float((exported.eval()(x) - expected).abs().max())


def save_exported(model: nn.Module, out_dir: str, *, data_config: Optional[Dict[str, Any]] = None,
                  model_config: Optional[Dict[str, Any]] = None, model_card: Optional[str] = None) -> str:
    """Write an exported model in timm's Hub format into ``out_dir`` (which must not exist or be empty).

    ``timm_stim.tools.hub_folder.save_timm_hf_folder`` (``timm.models.save_for_hf``) writes the files into a
    temporary sibling folder, which is then renamed to ``out_dir``: the folder is complete or absent.

    Returns:
        ``out_dir``.
    """
    from .hub_folder import save_timm_hf_folder
    _check_out_dir(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.export-', dir=parent)
    follow_umask(tmp, 0o777)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        save_timm_hf_folder(model, tmp, model_config=model_config, data_config=data_config, model_card=model_card)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _check_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise InputError(f'--out {out_dir!r} already exists and is not an empty folder; choose a new folder or '
                         f'remove it.')
    check_writable_out(out_dir, beside=True)  # written into a folder beside it, then renamed


def _model_card(repo_id: str, exported: nn.Module, loaded: LoadedModel, data_config: Dict[str, Any],
                model_config: Dict[str, Any], subnet: Subnet, original_depths: Sequence[int]):
    """The model card of an exported subnetwork: ``timm_stim.tools.modelcard``'s, with an "Exported subnetwork" section."""
    from .modelcard import base_model_of, build_model_card
    source = loaded.source
    section = (f'This model is a subnetwork of a `{loaded.architecture}` with stage depths '
               f'{", ".join(map(str, original_depths))}, exported by `timm-stim export`: it keeps blocks '
               f'`{";".join(",".join(map(str, s)) for s in subnet.blocks)}` of the stages (depths '
               f'{", ".join(map(str, subnet.depths))}, `model_args.layers` in config.json). Its logits equal those '
               f'of the same subnetwork of the original model.')
    return build_model_card(
        repo_id, architecture=loaded.architecture, num_classes=int(exported.num_classes), pretrained_cfg=data_config,
        published=f'subnetwork of `{os.path.basename(source)}`',
        base_model=hub_repo_of(source) or base_model_of(loaded.train_args),
        model_stats=model_stats(exported, data_config['input_size']), label_names=model_config.get('label_names'),
        sections={'Exported subnetwork': section})


def create_export_parser() -> argparse.ArgumentParser:
    parser = TokenMaskingParser(
        prog=command_prog('export'),
        description='Save a subnetwork of a trained residual network as a plain, smaller timm model in timm\'s '
                    'Hugging Face format (loads with timm.create_model("local-dir:DIR", pretrained=True)). '
                    'Supported: ' + '; '.join(EXPORT_FAMILIES.values()))
    add_checkpoint_sources(parser, many=False)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument('--depths', default=None, metavar='D1,D2,...',
                       help='blocks kept per stage, the first d of each (official rule), e.g. 3,3,4,3')
    which.add_argument('--blocks', default=None, metavar='B,B;B,...',
                       help='kept block indices per stage, stages separated by ";", e.g. "0,1,2;0,2;0,1,2,3;0,1"')
    parser.add_argument('--out', required=True, metavar='DIR', help='new folder for the exported model')
    copy_train_options(parser, ('--num-classes', '--input-size', '--mean', '--std', '--crop-pct'),
                       'Model and preprocessing (as in train_stim.py; default: from the checkpoint)')
    copy_train_options(parser, ('--push-to-hub', '--hub-private', '--hub-revision', '--hub-create-pr',
                                '--hub-replace-card'),
                       'Publishing to the Hugging Face Hub (as in train_stim.py; token from HF_TOKEN or hf auth login)')
    return parser


def run(args: argparse.Namespace) -> str:
    """Everything ``main`` does after parsing; return the output folder."""
    from timm.data import resolve_data_config
    from .hub import HubPushError, check_push_options
    from .push import push
    from .push_request import PushRequest
    if args.push_to_hub:
        try:
            check_push_options(args.push_to_hub, args.hub_revision, args.hub_create_pr)
        except InputError as e:
            raise InputError(f'--push-to-hub: {e}') from None
    _check_out_dir(args.out)
    loaded = load_model(args.checkpoint, args.model, args.num_classes, use_ema=args.use_ema)
    model = loaded.model
    stim = _stimulator(model)
    if stim.adapter.family not in EXPORT_FAMILIES:
        raise InputError(f'cannot export a {stim.adapter.family} model ({loaded.architecture}); export supports:\n'
                         f'{_supported()}')
    subnet = (parse_depths(args.depths, stim.stage_depths) if args.depths is not None
              else parse_blocks(args.blocks, stim.stage_depths))
    exported = export_subnet(model, subnet)
    overrides = {k: v for k, v in (('input_size', args.input_size), ('mean', args.mean), ('std', args.std),
                                   ('crop_pct', args.crop_pct)) if v is not None}
    data_config = resolve_data_config({**loaded.data_config, **overrides}, model=model)
    diff = max_logit_diff(model, exported, subnet, data_config['input_size'])
    if diff != 0.0:
        raise ExportMismatchError(f'the exported model\'s logits differ from the subnetwork\'s by up to {diff:g}; '
                                  f'nothing was written.')
    model_config = {}
    if model.pretrained_cfg.get('label_names'):
        model_config['label_names'] = model.pretrained_cfg['label_names']
    elif loaded.info.label_names:  # recorded in the checkpoint by the training run
        model_config['label_names'] = list(loaded.info.label_names)
    card = None
    if args.push_to_hub:
        card = _model_card(args.push_to_hub, exported, loaded, data_config, model_config, subnet,
                           stim.stage_depths)
    save_exported(exported, args.out, data_config=data_config, model_config=model_config, model_card=card)
    params = sum(p.numel() for p in exported.parameters()) / 1e6
    print(f'Exported blocks {";".join(",".join(map(str, s)) for s in subnet.blocks)} (depths '
          f'{",".join(map(str, subnet.depths))} of {",".join(map(str, stim.stage_depths))}) of {args.checkpoint} as '
          f'{loaded.architecture} with layers={list(subnet.depths)} ({params:.2f} M parameters) to {args.out}; '
          f'logits checked equal to the subnetwork\'s.')
    print(f'Load it with: timm.create_model("local-dir:{os.path.abspath(args.out)}", pretrained=True)')
    if args.push_to_hub:
        try:
            url = push(PushRequest(args.out, args.push_to_hub, private=args.hub_private, revision=args.hub_revision,
                                   create_pr=args.hub_create_pr, replace_card=args.hub_replace_card,
                                   commit_message='Upload subnetwork exported with timm-stim'))
        except HubPushError as e:
            e.saved_in = args.out
            raise
        except InputError as e:  # the folder is written: what remains is a failed publication
            raise HubPushError(str(e), repo_id=args.push_to_hub, saved_in=args.out) from None
        print(f'Published to {url}')
    return args.out


def _export_command(argv: Sequence[str]) -> str:
    args = create_export_parser().parse_args(argv)
    try:
        return run(args)
    except InputError as e:
        raise InputError(f'{e}\nNothing was written.') from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``timm-stim export``: 0 done; exits 2 on bad input (nothing written), 1 when the check or the Hub push failed."""
    command_main(_export_command, argv)
    return 0


if __name__ == '__main__':
    sys.exit(main())
