"""Read trained timm models safely: checkpoint files and timm Hub folders, for ``analyze``, ``export`` and ``push``.

A source is a timm checkpoint (``.pth.tar``, ``.pth``, ``.safetensors``, ...; written by
``train_stim.py``, timm's ``train.py`` or ``torch.save``) or a model in timm's Hugging Face
format (``hf-hub:USER/REPO`` or ``local-dir:DIR``).

Loading never executes code from a file: every checkpoint file is read by
``timm_stim.loading.load_checkpoint``, as training reads ``--resume`` (``torch.load(weights_only=True)``
with ``argparse.Namespace`` allowed, as timm's training checkpoints carry one; ``.safetensors``
hold tensors only), and its weights are picked as ``timm.models.load_state_dict`` picks them
(``state_dict`` / ``state_dict_ema`` / ``model``, wrapper prefixes stripped). A file that holds
other Python objects, or is damaged, is refused with ``timm_stim.loading``'s one message.
Weights are loaded strictly, so a wrong ``--model`` / ``--num-classes`` is reported instead of
silently re-initializing layers.

The commands share ``train_stim.py``'s definitions of the options they have in common
(``timm_stim.timm_options.copy_train_options``); renamed options keep their old names as
deprecated aliases (``add_deprecated_alias``).
"""
import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import InputError, check_model_name, is_hub_name
from ..labels import checkpoint_label_names
from ..loading import checkpoint_error, choose_weights, create_model_from_options, has_ema_weights, load_checkpoint

__all__ = [
    'CHECKPOINT_EXTS', 'ARGS_FILE', 'LOCAL_DIR', 'CheckpointInfo', 'LoadedModel', 'hub_repo_of', 'read_train_args',
    'read_checkpoint_info', 'read_state_dict', 'load_weights', 'data_config_from_args', 'check_source',
    'load_model', 'add_checkpoint_sources', 'add_deprecated_alias', 'add_use_ema_option', 'check_writable_out',
    'check_preprocessing',
]

CHECKPOINT_EXTS = ('.pth.tar', '.pth', '.pt', '.bin', '.safetensors', '.ckpt')
ARGS_FILE = 'args.yaml'
LOCAL_DIR = 'local-dir:'  # the one HUB_PREFIXES entry that names a local folder

# Preprocessing keys of args.yaml / a Hub config that describe how the weights expect their input.
DATA_CONFIG_KEYS = ('input_size', 'img_size', 'in_chans', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file says about itself besides its weights.

    Attributes:
        epoch: the epoch stored in a timm training checkpoint, or None.
        has_ema: whether it holds EMA weights (``state_dict_ema`` / ``model_ema``).
        label_names: the class names the training run recorded in it (``timm_stim.labels``), or None.
    """
    epoch: Optional[int] = None
    has_ema: bool = False
    label_names: Optional[Tuple[str, ...]] = None


@dataclass
class LoadedModel:
    """A model read from a source, and what is known about how it was trained.

    Attributes:
        model: the timm model, in eval mode, with the source's weights.
        source: the checkpoint path or ``hf-hub:`` / ``local-dir:`` name it was read from.
        architecture: the timm model name (e.g. ``resnet18``).
        train_args: the training run's ``args.yaml`` beside a checkpoint file ({} when none).
        data_config: preprocessing the weights were trained / published with (args.yaml or the
            Hub config), as ``timm.data.resolve_data_config`` args; CLI options override it.
        info: epoch / EMA of a checkpoint file (empty for Hub sources).
        use_ema: whether the model holds the checkpoint's EMA weights (``timm_stim.loading.choose_weights``).
    """
    model: nn.Module
    source: str
    architecture: str
    train_args: Dict[str, Any] = field(default_factory=dict)
    data_config: Dict[str, Any] = field(default_factory=dict)
    info: CheckpointInfo = field(default_factory=CheckpointInfo)
    use_ema: bool = False


def check_preprocessing(config: Dict[str, Any], where: str = '') -> None:
    """``InputError`` unless the preprocessing in ``config`` can be used: every user of a published model applies it.

    ``mean``: finite numbers; ``std``: finite numbers > 0 (inputs are divided by them); ``crop_pct``: a
    finite fraction > 0; ``input_size``: positive sizes. Absent (None) values are not checked.

    Args:
        config: preprocessing keys (``DATA_CONFIG_KEYS``), e.g. the push options or a data config.
        where: where the values come from, for the message (e.g. ``' (from args.yaml)'``).
    """
    def numbers(value: Any) -> List[Any]:
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    rules = (('mean', lambda v: finite(v), 'finite numbers'),
             ('std', lambda v: finite(v) and v > 0, 'finite numbers > 0 (the inputs are divided by them)'),
             ('crop_pct', lambda v: finite(v) and v > 0, 'a finite center-crop fraction > 0 (e.g. 0.875)'),
             ('input_size', lambda v: finite(v) and v >= 1, 'positive sizes C H W'))
    for key, ok, expected in rules:
        value = config.get(key)
        if value is not None and not all(ok(v) for v in numbers(value)):
            shown = ' '.join(map(str, numbers(value)))
            raise InputError(f'--{key.replace("_", "-")} {shown}{where}: expected {expected}. Every user of the '
                             f'published model would apply it.')


def check_writable_out(out_dir: str, option: str = '--out', beside: bool = False) -> None:
    """``InputError`` unless ``out_dir`` is (or can be made) a folder a file can be written into.

    Tried, not read from the permissions (root, read-only mounts); nothing is left behind.

    Args:
        out_dir: the output folder.
        option: its option, for the message.
        beside: the folder is written beside it and renamed (``export``): its parent must be writable.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f'{option} {out_dir!r} is a file; expected a folder.')
    probe = os.path.abspath(out_dir)
    if beside:
        probe = os.path.dirname(probe)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise InputError(f'{option} {out_dir!r} cannot be written (no file can be created in {probe}: {e.strerror}); '
                         f'pass another {option}. Nothing was computed.') from None


def hub_repo_of(source: str) -> Optional[str]:
    """The Hub repository of an ``hf-hub:ORG/NAME`` source; None for ``local-dir:`` folders and files."""
    return source.split(':', 1)[1] if is_hub_name(source) and not source.startswith(LOCAL_DIR) else None


def read_train_args(folder: str) -> Dict[str, Any]:
    """The ``args.yaml`` of a training run in ``folder`` as a dict ({} when there is none).

    Raises:
        InputError: the file exists but is not YAML.
    """
    import yaml
    path = os.path.join(folder, ARGS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f'{path} could not be read as YAML: {e}') from None
    return data if isinstance(data, dict) else {}


def _info_of(checkpoint: Any) -> CheckpointInfo:
    """What a loaded checkpoint says about itself (epoch, EMA weights)."""
    if not isinstance(checkpoint, dict):
        return CheckpointInfo()
    epoch, names = checkpoint.get('epoch'), checkpoint_label_names(checkpoint)
    return CheckpointInfo(epoch=epoch if isinstance(epoch, int) else None, has_ema=has_ema_weights(checkpoint),
                          label_names=tuple(names) if names else None)


def read_checkpoint_info(path: str) -> CheckpointInfo:
    """Epoch and EMA presence of a checkpoint file, read safely (``timm_stim.loading.load_checkpoint``).

    Raises:
        InputError: the file is missing, truncated, damaged or holds objects that are not allowed.
    """
    return _info_of(load_checkpoint(path))


def read_state_dict(path: str, use_ema: Optional[bool] = None) -> Tuple[Dict[str, torch.Tensor], CheckpointInfo, bool]:
    """The weights of a checkpoint file, read safely and picked by ``timm_stim.loading.choose_weights``.

    Args:
        path: a ``.safetensors`` file or a ``torch.save`` file (a state dict, or a dict with
            ``state_dict`` / ``state_dict_ema`` / ``model`` as timm's saver writes).
        use_ema: None: the EMA weights when the file holds them (timm's default); True: the EMA
            weights, refused when the file has none; False: the non-EMA weights.

    Returns:
        (state dict with wrapper prefixes removed, what the file says about itself, whether the EMA weights were taken).

    Raises:
        InputError: unreadable or unsafe file, missing EMA weights, or no tensors where weights belong.
    """
    checkpoint = load_checkpoint(path)  # refuses unsafe or damaged files with timm_stim.loading's message
    state_dict, used_ema = choose_weights(checkpoint, path, use_ema)
    return state_dict, _info_of(checkpoint), used_ema


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: str, name: str) -> None:
    """Load ``state_dict`` strictly; ``InputError`` naming the model and classes when it does not fit."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        details = ' '.join(line.strip() for line in lines[1:4])
        raise InputError(f'{path} does not fit --model {name} with {model.num_classes} classes: {details} '
                         f'(set --model / --num-classes to those of the training run).') from None


def data_config_from_args(train_args: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The preprocessing of a run's ``args.yaml`` (``DATA_CONFIG_KEYS``), with non-None ``overrides`` on top."""
    config = {k: train_args.get(k) for k in DATA_CONFIG_KEYS}
    config.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return {k: v for k, v in config.items() if v not in (None, '')}


def _classes_in(state_dict: Dict[str, Any], architecture: str) -> Optional[int]:
    """Number of classes of a checkpoint: rows of its classifier weight (None when unknown)."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(architecture)
    classifier = getattr(cfg, 'classifier', None) if cfg is not None else None
    if not isinstance(classifier, str):
        return None
    weight = state_dict.get(f'{classifier}.weight')
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None


def check_source(source: str) -> None:
    """Cheap check that ``source`` can be a model source; raise ``InputError`` naming it otherwise."""
    if is_hub_name(source):
        if source.startswith(LOCAL_DIR) and not os.path.isfile(os.path.join(source[len(LOCAL_DIR):], 'config.json')):
            raise InputError(f'{source}: no config.json in that folder; expected a folder in timm\'s Hub format '
                             f'(config.json + model.safetensors, e.g. written by `timm-stim export`).')
        return
    if os.path.isdir(source):
        raise InputError(f'{source} is a folder; pass it as local-dir:{source} if it is in timm\'s Hub format, or '
                         f'pass a checkpoint file inside it.')
    if not os.path.isfile(source):
        raise checkpoint_error(source)
    if not source.endswith(CHECKPOINT_EXTS):
        raise InputError(f'checkpoint {source!r}: expected a {", ".join(CHECKPOINT_EXTS)} file, or '
                         f'hf-hub:USER/REPO / local-dir:DIR.')


def load_model(source: str, model_name: Optional[str] = None, num_classes: Optional[int] = None, *,
               use_ema: Optional[bool] = None) -> LoadedModel:
    """Build the timm model of ``source`` and load its weights (strictly, and safely).

    Args:
        source: a checkpoint file, ``hf-hub:USER/REPO`` or ``local-dir:DIR``.
        model_name: timm architecture of a checkpoint file (default: ``model`` of the
            ``args.yaml`` beside it). For Hub sources it must match the one they name.
        num_classes: classes of the checkpoint (default: the rows of its classifier weight, else args.yaml).
        use_ema: a checkpoint file's EMA weights (True), its non-EMA weights (False), or timm's default (None: the
            EMA weights when it holds them); see ``timm_stim.loading.choose_weights``.

    Returns:
        A ``LoadedModel`` with the model in eval mode on the CPU.

    Raises:
        InputError: the source is missing, unreadable or unsafe, or does not fit the model / classes.
    """
    import timm
    check_source(source)
    if is_hub_name(source):
        if use_ema:
            raise InputError(f'--use-ema: {source} is in timm\'s Hub format, which holds one set of weights.')
        try:
            model = timm.create_model(source, pretrained=True)
        except Exception as e:
            raise InputError(f'timm cannot load {source}: {type(e).__name__}: {e}') from None
        architecture = model.pretrained_cfg.get('architecture') or model_name or ''
        if model_name and model_name != architecture:
            raise InputError(f'--model {model_name} but {source} holds a {architecture}; drop --model.')
        if num_classes is not None and num_classes != model.num_classes:
            raise InputError(f'--num-classes {num_classes} but {source} has {model.num_classes} classes; '
                             f'drop --num-classes.')
        keys = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
        data_config = {k: model.pretrained_cfg[k] for k in keys if model.pretrained_cfg.get(k) is not None}
        return LoadedModel(model.eval(), source, architecture, {}, data_config)

    train_args = read_train_args(os.path.dirname(os.path.abspath(source)))
    name = model_name or train_args.get('model')
    if not name:
        raise InputError(f'--model is required: {source} has no {ARGS_FILE} beside it to read the '
                         f'architecture from.')
    check_model_name(name)
    state_dict, info, use_ema = read_state_dict(source, use_ema=use_ema)
    if num_classes is None:  # the checkpoint's own classifier says best (args.yaml may be of another run)
        num_classes = _classes_in(state_dict, name)
    model = create_model_from_options(train_args, name=name, num_classes=num_classes, for_training=False)
    load_weights(model, state_dict, source, name)
    return LoadedModel(model.eval(), source, name, train_args, data_config_from_args(train_args), info, use_ema)


USE_EMA_HELP = ('the EMA weights of a checkpoint (--use-ema) or its trained, non-EMA weights (--no-use-ema); default: '
                'the EMA weights when it holds them, as timm.models.load_checkpoint')


def add_use_ema_option(parser: Any) -> argparse.Action:
    """Add ``--use-ema`` / ``--no-use-ema`` to ``parser`` (default None: ``choose_weights``' rule)."""
    return parser.add_argument('--use-ema', action=argparse.BooleanOptionalAction, default=None, help=USE_EMA_HELP)


def add_checkpoint_sources(parser: Any, many: bool = True) -> None:
    """Add the checkpoint source(s), ``--model`` and ``--use-ema``: what analyze, family and export read.

    Args:
        parser: the command's parser.
        many: ``checkpoints``, one or more (analyze, family); else ``checkpoint``, exactly one (export).
    """
    if many:
        parser.add_argument('checkpoints', nargs='+', metavar='CHECKPOINT',
                            help='timm checkpoints (.pth.tar, .safetensors, ...), hf-hub:USER/REPO or local-dir:DIR')
    else:
        parser.add_argument('checkpoint', metavar='CHECKPOINT',
                            help='a timm checkpoint (.pth.tar, .safetensors, ...), hf-hub:USER/REPO or local-dir:DIR')
    parser.add_argument('--model', default=None, metavar='MODEL',
                        help='timm architecture of the checkpoint file(s) (default: from args.yaml beside each)')
    add_use_ema_option(parser)


class _DeprecatedAlias(argparse.Action):
    """An old option name: stores into the new option's dest and says on stderr to use the new name."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_option: str = '', note: str = '', **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_option, self.note = new_option, note

    def __call__(self, parser, namespace, values, option_string=None):
        print(f'{parser.prog}: {option_string} is deprecated; use {self.new_option} ({self.note}).', file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: Any, old: str, new: argparse.Action,
                         note: str = 'same meaning, as in train_stim.py') -> None:
    """Keep ``old`` working as a hidden alias of the option ``new`` (same dest, type and choices).

    Using it prints one deprecation note on stderr naming the new option; its value goes where
    the new option's would.

    Args:
        parser: the parser or argument group ``new`` was added to.
        old: the old option string (``'--subnets'``).
        new: the action of the new option (what ``add_argument`` returned).
        note: what the note says of the new option, in brackets after its name.
    """
    parser.add_argument(old, action=_DeprecatedAlias, dest=new.dest, new_option=new.option_strings[-1], note=note,
                        type=new.type, choices=new.choices, metavar=new.metavar, nargs=new.nargs,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
