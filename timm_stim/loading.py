"""Reading checkpoints and building models from a run's options: one module for training and the tools.

Everything of timm_stim that reads a checkpoint file goes through ``load_checkpoint``:
``train_stim.py --resume``, ``--initial-checkpoint`` and ``--pretrained-path`` (checked before any
work), and ``analyze``, ``export`` and ``push`` (``timm_stim.tools.checkpoints.load_model``).

* ``load_checkpoint``: ``torch.load(weights_only=True)`` as timm reads training checkpoints
  (``argparse.Namespace`` allowed, as they carry their ``args``), memory-mapped where the file is
  in torch's zip format; ``.safetensors`` files through safetensors. Nothing in a file can run code.
* ``checkpoint_error``: the one message for a checkpoint that is missing, a folder, damaged,
  truncated or unsafe. It names the file (and the option that named it), says what was expected
  and how to fix it, including how to convert a trusted file that holds other Python objects.
* ``check_weights_file``: the up-front check of ``--initial-checkpoint`` / ``--pretrained-path``.
* ``state_dict_of`` / ``require_state_dict``: the weights in a checkpoint, picked as
  ``timm.models.load_state_dict`` picks them.
* ``create_model_from_options``: ``timm.create_model`` with the options of a run (parsed options
  or the ``args.yaml`` of a run), for training or for loading trained weights.
"""
import argparse
import json
import os
import pickle
import re
import shlex
import sys
from contextlib import nullcontext
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .errors import InputError

__all__ = [
    'SAFE_GLOBALS', 'EXPECTED_CHECKPOINT', 'checkpoint_error', 'check_checkpoint_path', 'load_checkpoint',
    'state_dict_of', 'require_state_dict', 'follow_umask', 'has_ema_weights', 'choose_weights', 'check_weights_file',
    'create_model_from_options',
]

# What a timm training checkpoint may hold besides tensors and plain data (timm allows the same).
SAFE_GLOBALS = (argparse.Namespace,)

EXPECTED_CHECKPOINT = ('a checkpoint written by train_stim.py, timm or torch.save (e.g. '
                       'OUTPUT/EXPERIMENT/last.pth.tar), or a .safetensors file')

# The first bytes of torch's zip format (torch >= 1.6); only such files can be memory-mapped.
_ZIP_MAGIC = b'PK\x03\x04'
# Formats timm reads without torch.load (JAX / NumPy weights of some models, loaded without pickle).
_NUMPY_EXTS = ('.npz', '.npy')


def _subject(path: str, option: Optional[str]) -> str:
    return f'{option} {path}' if option else path


def _convert_hint(path: str) -> str:
    """How to turn a trusted file with other Python objects into a plain state dict (a command quoted for the shell)."""
    converted = (path[:-len('.pth.tar')] if path.endswith('.pth.tar') else os.path.splitext(path)[0]) + '_weights.pth'
    # Python string literals in double quotes (json writes valid ones), so the shell quoting stays readable.
    code = (f'import torch; c = torch.load({json.dumps(path)}, map_location="cpu", weights_only=False); '
            f'torch.save(c.get("state_dict", c) if isinstance(c, dict) else c.state_dict(), {json.dumps(converted)})')
    return (f'If you trust this file (and only then), convert it once to a plain state dict (the weights only) and '
            f'pass that file:\n'
            f'  {shlex.quote(sys.executable)} -c {shlex.quote(code)}')


def _unsafe_globals(path: str, err: BaseException) -> List[str]:
    """The Python objects ``weights_only`` loading refused in ``path`` ([] when ``err`` is another failure)."""
    if not isinstance(err, pickle.UnpicklingError):
        return []
    names: List[str] = []
    try:  # a zip checkpoint can be searched for every global it names
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an old-format (non-zip) file, or an older torch: torch's message names the first one
        pass
    names = names or re.findall(r'GLOBAL ([\w.]+)', str(err))
    allowed = {f'{g.__module__}.{g.__qualname__}' for g in SAFE_GLOBALS}
    return [n for n in dict.fromkeys(names) if n not in allowed]


def _reason(err: BaseException) -> str:
    """The informative line of a reader's error (torch's weights_only errors wrap it in general advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    boilerplate = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    lines = [line for line in lines if not line.startswith(boilerplate)] or lines
    reason = lines[0].replace('WeightsUnpickler error:', '').strip() if lines else ''
    return f'{type(err).__name__}: {reason[:300]}' if reason else type(err).__name__


def checkpoint_error(path: str, err: Optional[BaseException] = None, option: Optional[str] = None) -> InputError:
    """The one ``InputError`` for a checkpoint file that cannot be used, whoever reads it.

    Args:
        path: the file.
        err: what reading it raised (None when it was not read: missing or a folder).
        option: the option that named the file (``--resume``), shown before it; None for a positional.

    Returns:
        An ``InputError`` naming the file, what was expected and how to fix it.
    """
    subject = _subject(path, option)
    if not os.path.exists(path):
        return InputError(f'{subject}: no such file; expected {EXPECTED_CHECKPOINT}.')
    if os.path.isdir(path):
        return InputError(f'{subject} is a folder; expected {EXPECTED_CHECKPOINT}: pass a checkpoint in it (e.g. '
                          f'{os.path.join(path, "last.pth.tar")}).')
    unsafe = _unsafe_globals(path, err) if err is not None else []
    if unsafe:
        return InputError(
            f'{subject} holds Python objects that are not allowed in a checkpoint ({", ".join(unsafe)}). timm-stim, '
            f'like timm, reads checkpoints with torch.load(weights_only=True), which loads tensors and plain data '
            f'only, so that a file cannot run code; nothing of it was executed.\n{_convert_hint(path)}')
    cause = f' ({_reason(err)})' if err is not None else ''
    return InputError(f'{subject} could not be read as a checkpoint{cause}; expected {EXPECTED_CHECKPOINT}. It may be '
                      f'truncated or damaged (e.g. the copy or the run that wrote it was interrupted): copy it again, '
                      f'or pass another checkpoint of the run.')


def check_checkpoint_path(path: str, option: Optional[str] = None) -> None:
    """Raise ``checkpoint_error`` unless ``path`` is an existing file (nothing is read)."""
    if not os.path.isfile(path):
        raise checkpoint_error(path, option=option)


def _is_zip(path: str) -> bool:
    with open(path, 'rb') as f:
        return f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC


def load_checkpoint(path: str, option: Optional[str] = None) -> Any:
    """Read a checkpoint file safely: nothing in it can run code.

    ``torch.save`` files are read with ``torch.load(weights_only=True)`` (``SAFE_GLOBALS``
    allowed), tensors on the CPU and memory-mapped where the file is in torch's zip format (only
    the pickle is read; tensors stay on disk until used). Old-format files
    (``torch.save(..., _use_new_zipfile_serialization=False)``) cannot be mapped and are read whole.
    ``.safetensors`` files are read with safetensors (a dict of tensors).

    Args:
        path: the file.
        option: the option that named it, for the message (e.g. ``'--resume'``).

    Returns:
        What the file holds (for timm checkpoints a dict with ``state_dict``, ``epoch``, ...).

    Raises:
        InputError: ``checkpoint_error``: missing, a folder, damaged, truncated, or unsafe.
    """
    check_checkpoint_path(path, option)
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        mmap = _is_zip(path)
        # safe_globals is torch >= 2.5; older versions refuse a Namespace, as timm's loader does there
        allowing = getattr(torch.serialization, 'safe_globals', None)
        with allowing(list(SAFE_GLOBALS)) if allowing is not None else nullcontext():
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except Exception as e:  # whatever the reader raises, the file is the cause (it is not a bug here)
        raise checkpoint_error(path, e, option) from None


def state_dict_of(checkpoint: Any, use_ema: bool = False) -> Optional[Dict[str, torch.Tensor]]:
    """The weights in a checkpoint, picked as ``timm.models.load_state_dict`` picks them, or None.

    ``state_dict_ema`` / ``model_ema`` (with ``use_ema``), then ``state_dict``, then ``model``, else
    the checkpoint itself; wrapper prefixes (DDP, torch.compile) removed.

    Returns:
        The state dict, or None when the checkpoint holds no dict of tensors there.
    """
    from timm.models import clean_state_dict
    if not isinstance(checkpoint, dict):
        return None
    keys = (('state_dict_ema', 'model_ema') if use_ema else ()) + ('state_dict', 'model')
    weights = next((checkpoint[k] for k in keys if checkpoint.get(k) is not None), checkpoint)
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return None
    return clean_state_dict(weights)


def require_state_dict(checkpoint: Any, path: str, option: Optional[str] = None,
                       use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """``state_dict_of(checkpoint, use_ema)``; ``InputError`` naming the file when it holds no weights."""
    state_dict = state_dict_of(checkpoint, use_ema)
    if state_dict is None:
        what = f'a {type(checkpoint).__name__}' if not isinstance(checkpoint, dict) else 'no state_dict of tensors'
        raise InputError(f'{_subject(path, option)} holds no model weights ({what}); expected {EXPECTED_CHECKPOINT}.')
    return state_dict


def follow_umask(path: str, mode: int = 0o666) -> None:
    """Give ``path`` the permissions a new file (``mode`` 0o666) or folder (0o777) gets under the process umask.

    safetensors writes its files 0600 and ``tempfile`` its folders 0700, where every other file a
    run writes follows the umask (e.g. 0644): the weights would be the one file others cannot read.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def has_ema_weights(checkpoint: Any) -> bool:
    """Whether a loaded checkpoint holds EMA weights (``state_dict_ema`` / ``model_ema``), as timm looks for them."""
    return isinstance(checkpoint, dict) and any(checkpoint.get(k) is not None for k in ('state_dict_ema', 'model_ema'))


def choose_weights(checkpoint: Any, path: str, use_ema: Optional[bool] = None,
                   option: str = '--use-ema') -> Tuple[Dict[str, torch.Tensor], bool]:
    """The weights a checkpoint gives for a choice of EMA or not: the one rule of every command.

    timm's rule (``timm.models.load_checkpoint(..., use_ema=True)``, its default): the EMA weights
    when the checkpoint holds them, else its weights. ``timm-stim push`` / ``analyze`` / ``export``
    (``--use-ema`` / ``--no-use-ema``), ``--push-to-hub`` and ``model_best.safetensors`` all take
    their weights here, so that the same choice gives the same tensors everywhere.

    Args:
        checkpoint: a loaded checkpoint (``load_checkpoint``).
        path: its file, for messages.
        use_ema: None: timm's default (EMA when held); True: the EMA weights (refused when there
            are none); False: the trained (non-EMA) weights.
        option: the option that asked for EMA weights, named in the message.

    Returns:
        (state dict with wrapper prefixes removed, whether it is the EMA weights).

    Raises:
        InputError: EMA weights asked for but absent, or no weights in the file.
    """
    held = has_ema_weights(checkpoint)
    if use_ema and not held:
        if path.endswith('.safetensors'):
            raise InputError(f'{option}: {path} is a .safetensors file holding one set of weights; pass the '
                             f'.pth.tar checkpoint that holds state_dict_ema.')
        raise InputError(f'{option}: {path} holds no EMA weights (state_dict_ema); train with --model-ema or drop '
                         f'{option}.')
    chosen = held if use_ema is None else bool(use_ema)
    return require_state_dict(checkpoint, path, use_ema=chosen), chosen


def check_weights_file(path: str, option: str) -> None:
    """Check, before any work, a file of weights that timm will load into a new model.

    For ``--initial-checkpoint`` and ``--pretrained-path``: the file is read as timm will read it
    (safely; memory-mapped where it can be, so this is cheap) and must hold a state dict.
    NumPy weights (``.npz`` / ``.npy``), which timm reads without pickle through the model's own
    loader, are only checked to exist.

    Raises:
        InputError: missing, unreadable, unsafe, or no model weights in it.
    """
    if path.lower().endswith(_NUMPY_EXTS):
        check_checkpoint_path(path, option)
        return
    require_state_dict(load_checkpoint(path, option), path, option)


def _in_chans(options: Mapping[str, Any]) -> Optional[int]:
    """Input channels the options ask for: ``in_chans``, else the C of ``input_size``, else None."""
    if options.get('in_chans') is not None:
        return int(options['in_chans'])
    if options.get('input_size'):
        return int(options['input_size'][0])
    return None


def create_model_from_options(options: Mapping[str, Any], *, name: Optional[str] = None,
                              num_classes: Optional[int] = None, for_training: bool = True) -> nn.Module:
    """``timm.create_model`` with the options of a run, as timm's train.py passes them.

    Both the training program (its parsed options, ``vars(args)``) and the tools (a run's
    ``args.yaml``) build models here, so a trained model is rebuilt with the options it was
    trained with: ``model``, ``num_classes``, ``in_chans`` / ``input_size``, ``gp``,
    ``bn_momentum``, ``bn_eps`` and ``model_kwargs``.

    Args:
        options: option dests and values (``vars(args)`` or an ``args.yaml`` dict).
        name: the timm model name (default: ``options['model']``).
        num_classes: classes (default: ``options['num_classes']``; None keeps the model's default).
        for_training: also what only training uses: ``pretrained`` weights, ``pretrained_path``,
            ``initial_checkpoint``, the drop rates, ``torchscript`` and the head init
            (``head_init_scale`` / ``head_init_bias``); in_chans defaults to 3, as in timm's train.py.
            False builds the architecture with random weights, for loading trained weights into it.

    Returns:
        The model.

    Raises:
        InputError: naming the model and options timm could not build it with.
    """
    import timm
    name = name or options.get('model')
    kwargs: Dict[str, Any] = dict(
        num_classes=num_classes if num_classes is not None else options.get('num_classes'),
        in_chans=_in_chans(options), global_pool=options.get('gp'), bn_momentum=options.get('bn_momentum'),
        bn_eps=options.get('bn_eps'))
    if for_training:
        drop_path = options.get('drop_path')
        kwargs.update(
            pretrained=bool(options.get('pretrained')), in_chans=kwargs['in_chans'] or 3,
            drop_rate=options.get('drop', 0.0),
            # --drop-connect is timm's deprecated name of --drop-path (timm's train.py no longer reads it)
            drop_path_rate=drop_path if drop_path is not None else options.get('drop_connect'),
            drop_block_rate=options.get('drop_block'), scriptable=options.get('torchscript'),
            checkpoint_path=options.get('initial_checkpoint') or None)
        if options.get('pretrained_path'):
            # 'file' has priority over 'url' and 'hf_hub'; num_classes=-1 adapts the head.
            kwargs['pretrained_cfg_overlay'] = dict(file=options['pretrained_path'], num_classes=-1)
    else:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}  # timm's defaults, as the model was built
    kwargs.update(options.get('model_kwargs') or {})
    try:
        model = timm.create_model(name, **kwargs)
    except Exception as e:  # the options (or the files they name) do not build this model
        shown = {k: v for k, v in kwargs.items() if v is not None}
        raise InputError(f'could not create --model {name} with {shown}: {type(e).__name__}: {e}') from None
    if for_training:
        _init_head(model, options.get('head_init_scale'), options.get('head_init_bias'))
    return model


def _init_head(model: nn.Module, scale: Optional[float], bias: Optional[float]) -> None:
    """``--head-init-scale`` / ``--head-init-bias``, as timm's train.py applies them."""
    if scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(scale)
            model.get_classifier().bias.mul_(scale)
    if bias is not None:
        nn.init.constant_(model.get_classifier().bias, bias)
