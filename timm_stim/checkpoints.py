"""Load any trained timm model for ``analyze`` and ``export``: checkpoint files or timm Hub folders.

A source is a timm checkpoint (``.pth.tar``, ``.pth``, ``.safetensors``, ...; written by
``train_stim.py``, timm's ``train.py`` or ``torch.save``) or a model in timm's Hugging Face
format (``hf-hub:USER/REPO`` or ``local-dir:DIR``). The reading itself is ``timm_stim.hub``'s
(the same code ``python -m timm_stim push`` uses): weights are loaded strictly, so a wrong
``--model`` / ``--num-classes`` is reported instead of silently re-initializing layers.
"""
import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn

from . import hub

__all__ = ['InputError', 'LoadedModel', 'load_model', 'check_source', 'is_hub_source', 'copy_train_options']

_HUB_PREFIXES = ('hf-hub:', 'hf_hub:', 'local-dir:')


class InputError(ValueError):
    """Bad command-line input, found before any expensive work or any file is written."""


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
    """
    model: nn.Module
    source: str
    architecture: str
    train_args: Dict[str, Any] = field(default_factory=dict)
    data_config: Dict[str, Any] = field(default_factory=dict)


def is_hub_source(source: str) -> bool:
    """Whether ``source`` names a model in timm's Hub format (``hf-hub:``, ``local-dir:``) rather than a file."""
    return source.startswith(_HUB_PREFIXES)


def check_source(source: str) -> None:
    """Cheap check that ``source`` can be a model source; raise ``InputError`` naming it otherwise."""
    if is_hub_source(source):
        if source.startswith('local-dir:') and not os.path.isfile(os.path.join(source[len('local-dir:'):],
                                                                                'config.json')):
            raise InputError(f'{source}: no config.json in that folder; expected a folder in timm\'s Hub format '
                             f'(config.json + model.safetensors, e.g. written by `python -m timm_stim export`).')
        return
    if os.path.isdir(source):
        raise InputError(f'{source} is a folder; pass it as local-dir:{source} if it is in timm\'s Hub format, or '
                         f'pass a checkpoint file inside it.')
    if not os.path.isfile(source):
        raise InputError(f'checkpoint {source!r} does not exist.')
    if not source.endswith(hub._CHECKPOINT_EXTS):
        raise InputError(f'checkpoint {source!r}: expected a {", ".join(hub._CHECKPOINT_EXTS)} file, or '
                         f'hf-hub:USER/REPO / local-dir:DIR.')


def _classes_in(state_dict: Dict[str, Any], architecture: str) -> Optional[int]:
    """Number of classes of a checkpoint: rows of its classifier weight (None when unknown)."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(architecture)
    classifier = getattr(cfg, 'classifier', None) if cfg is not None else None
    if not isinstance(classifier, str):
        return None
    weight = state_dict.get(f'{classifier}.weight')
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None


def load_model(source: str, model_name: Optional[str] = None, num_classes: Optional[int] = None) -> LoadedModel:
    """Build the timm model of ``source`` and load its weights (strictly).

    Args:
        source: a checkpoint file, ``hf-hub:USER/REPO`` or ``local-dir:DIR``.
        model_name: timm architecture of a checkpoint file (default: ``model`` of the
            ``args.yaml`` beside it). Ignored for Hub sources, which name their architecture.
        num_classes: classes of the checkpoint (default: the rows of its classifier weight).

    Returns:
        A ``LoadedModel`` with the model in eval mode on the CPU.

    Raises:
        InputError: the source is missing or unreadable, or does not fit the model / classes.
    """
    import timm
    check_source(source)
    if is_hub_source(source):
        try:
            model = timm.create_model(source, pretrained=True)
        except Exception as e:
            raise InputError(f'timm cannot load {source}: {type(e).__name__}: {e}') from None
        if num_classes is not None and num_classes != model.num_classes:
            raise InputError(f'--num-classes {num_classes} but {source} has {model.num_classes} classes; '
                             f'drop --num-classes.')
        architecture = model.pretrained_cfg.get('architecture') or model_name or ''
        keys = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
        data_config = {k: model.pretrained_cfg[k] for k in keys if model.pretrained_cfg.get(k) is not None}
        return LoadedModel(model.eval(), source, architecture, {}, data_config)

    train_args = hub._load_yaml(os.path.join(os.path.dirname(os.path.abspath(source)), hub.ARGS_FILE)) or {}
    name = model_name or train_args.get('model')
    if not name:
        raise InputError(f'--model is required: {source} has no {hub.ARGS_FILE} beside it to read the '
                         f'architecture from.')
    try:
        hub._check_model_name(name)
        state_dict, _, _ = hub._read_checkpoint(source, use_ema=False)
        if num_classes is None:
            num_classes = _classes_in(state_dict, name)
        model = hub._create_model(name, train_args, num_classes)
        hub._load_into(model, state_dict, source, name)
    except hub.PushInputError as e:
        raise InputError(str(e)) from None
    return LoadedModel(model.eval(), source, name, train_args, hub._data_config(train_args, {}))


def copy_train_options(parser: argparse.ArgumentParser, options: Sequence[str], title: str) -> None:
    """Add ``train_stim.py``'s definitions of ``options`` (same names, defaults, help) to ``parser``.

    The options are taken from ``timm_stim.args.create_train_parser`` so that a command shares
    them with training exactly (``-b``, ``--workers``, ``--img-size``, ``--mean``, ...).

    Args:
        parser: the command's parser.
        options: option strings as train_stim.py spells them (``'--crop-pct'``).
        title: title of the argument group they are shown under in ``--help``.
    """
    from .args import create_train_parser
    _, train_parser = create_train_parser()
    by_option = {s: a for a in train_parser._actions for s in a.option_strings}
    missing = [o for o in options if o not in by_option]
    if missing:
        raise KeyError(f'train_stim.py defines no option {", ".join(missing)}')
    group = parser.add_argument_group(title)
    added: List[argparse.Action] = []
    for option in options:
        action = by_option[option]
        if action not in added:
            group._add_action(action)
            added.append(action)
