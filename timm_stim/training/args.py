"""Parsing ``train_stim.py``'s command line: every option of timm's ``train.py`` plus timm_stim's.

The options are defined in the core (``timm_stim.timm_options``, shared with the tools);
``parse_args`` reads ``-c/--config`` YAML first, as timm's ``_parse_args`` does, but refuses a
missing file and unknown keys instead of failing later or ignoring them, and ``check_args`` checks
the values timm asserts on late or not at all, before any work.
"""
import argparse
import difflib
import math
import os
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Type

import yaml
from timm.utils import ParseKwargs

from ..config import StimConfig
from ..datasets import is_embedded, resolve_dataset
from ..errors import InputError, check_model_name
from ..loading import check_checkpoint_path, check_weights_file
from ..timm_options import (RecordingParser, add_hub_args, add_recipe_args, add_run_args, create_train_parser,
                            finite_float)

__all__ = [
    'create_train_parser', 'check_args', 'add_recipe_args', 'add_run_args', 'add_hub_args', 'parse_args',
    'INFORMATIONAL_CONFIG_KEYS', 'check_timm_options',
]

# Keys train_stim.py adds to the args.yaml it writes next to the checkpoints (resolved at run
# time, not options). They are accepted and dropped in -c files so that an output's args.yaml
# can be fed back as-is to reproduce the run.
INFORMATIONAL_CONFIG_KEYS = ('stim_resolved', 'prefetcher', 'distributed', 'world_size', 'rank', 'device_id',
                             'config')

# Keys of args.yaml files written by older timm versions' train.py, whose options timm has since
# removed: key -> (value that means "off", what to do instead when it is on).
LEGACY_CONFIG_KEYS = {
    'native_amp': (False, 'native AMP is timm\'s only AMP now: use amp: true'),
    'apex_amp': (False, 'NVIDIA apex AMP was removed from timm: use amp: true (native torch AMP)'),
    'amp_impl': ('native', 'timm has only native torch AMP now: drop amp_impl'),
    'aot_autograd': (False, 'functorch AOT autograd was removed from timm: use torchcompile: inductor'),
}


def _load_config(path: str, parser: 'RecordingParser') -> Dict[str, Any]:
    """Read a ``-c`` YAML file and check its keys against the parser's dests.

    timm's ``_parse_args`` passes the file straight to ``set_defaults``, so a misspelt key is
    silently ignored and the run trains with the wrong settings; here it stops before any work.

    Args:
        path: YAML file path, or the name of a shipped recipe (``timm_stim.training.recipes``).
        parser: the main parser (its dests are the valid keys).

    Returns:
        The defaults to set, with the informational keys of an output's args.yaml dropped.
    """
    from .recipes import list_recipes, resolve_config_path
    resolved = resolve_config_path(path)
    if resolved is None:
        parser.error(f'config file {path!r} (-c/--config) does not exist and is not the name of a shipped recipe '
                     f'({", ".join(r.name for r in list_recipes())}).')
    path = resolved
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        parser.error(f'config file {path!r} (-c/--config) could not be read as YAML: {e}')
    if cfg is None:  # an empty (or all-comments) file sets nothing, as in timm
        return {}
    if not isinstance(cfg, dict):
        parser.error(f'config file {path!r} (-c/--config) must be a mapping of option dests to values, '
                     f'got a {type(cfg).__name__}.')

    cfg = _translate_legacy_keys(cfg, path, parser)
    dests = sorted(d for d in parser.actions if d not in ('help', argparse.SUPPRESS))
    unknown = [k for k in cfg if k not in dests and k not in INFORMATIONAL_CONFIG_KEYS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key).replace('-', '_'), dests, n=1)
            hints.append(repr(key) + (f' (did you mean {close[0]!r}?)' if close else ''))
        parser.error(f'config file {path!r} has unknown option(s): {", ".join(hints)}. '
                     f'Keys are option dests, e.g. batch_size for --batch-size.')
    cfg = {k: v for k, v in cfg.items() if k not in INFORMATIONAL_CONFIG_KEYS}
    return {key: _config_value(parser.actions[key], value, path, parser) for key, value in cfg.items()}


def _translate_legacy_keys(cfg: Dict[str, Any], path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Accept the keys of older timm args.yaml files: dropped when off, refused with the replacement when on."""
    out = {}
    for key, value in cfg.items():
        if key not in LEGACY_CONFIG_KEYS:
            out[key] = value
            continue
        off, instead = LEGACY_CONFIG_KEYS[key]
        if key == 'native_amp' and value is True:
            out.setdefault('amp', True)  # what --native-amp meant
        elif value not in (off, None):
            parser.error(f'config file {path!r}: {key}: {value!r} is an option of an older timm that no longer '
                         f'exists; {instead}.')
    return out


def _config_value(action: argparse.Action, value: Any, path: str, parser: argparse.ArgumentParser) -> Any:
    """A YAML value checked and converted exactly as argparse checks the same value on the command line.

    YAML gives typed values that ``set_defaults`` would take as they are, bypassing the option's
    ``type``, ``choices`` and ``nargs`` (``stim_subnets: 2.7`` would train with 2.7 subnetworks).
    Each value is passed through the option's ``type`` as its command-line text would be.
    """
    where = f'config file {path!r}: {action.dest}: {value!r}'
    if value is None:
        if action.default is None or action.nargs == 0:
            return None  # "no value", as the defaults of many options
        # An option with a value by default needs one: null would reach the run as None.
        parser.error(f'{where} is null; {_flag(action)} needs a value (its default is {action.default!r}). '
                     f'Remove the key to use the default.')
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # switches
        if not isinstance(value, bool):
            parser.error(f'{where} is not true or false (the option {_flag(action)} is a switch).')
        return value
    many = action.nargs in ('*', '+') or isinstance(action.nargs, int)
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            parser.error(f'{where} must be a mapping of keyword arguments, e.g. {{key: value}}.')
        return value
    if many:
        if not isinstance(value, (list, tuple)):
            if action.nargs in ('*', '+'):
                value = [value]  # argparse accepts one value for a list option too
            else:
                parser.error(f'{where} must be a list of {action.nargs} values.')
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            parser.error(f'{where} must be a list of {action.nargs} values, got {len(value)}.')
        return [_convert(action, item, where, parser) for item in value]
    if isinstance(value, (list, tuple, dict)):
        parser.error(f'{where} must be a single value.')
    return _convert(action, value, where, parser)


def _type_function(action: argparse.Action):
    """The function argparse converts this option's text with (float options: ``finite_float``)."""
    return finite_float if action.type is float else action.type


def _flag(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def _convert(action: argparse.Action, value: Any, where: str, parser: argparse.ArgumentParser) -> Any:
    convert = _type_function(action)
    if convert is not None:
        if isinstance(value, bool):
            parser.error(f'{where} is a boolean; expected a value of type {getattr(convert, "__name__", convert)}.')
        try:
            value = convert(str(value))
        except argparse.ArgumentTypeError as e:
            parser.error(f'{where}: {e} (as {_flag(action)} on the command line).')
        except (TypeError, ValueError):
            parser.error(f'{where} is not a valid {getattr(convert, "__name__", "value")} '
                         f'(as {_flag(action)} on the command line).')
    if action.choices is not None and value not in action.choices:
        parser.error(f'{where} is not one of {", ".join(map(str, action.choices))} '
                     f'(the choices of {_flag(action)}).')
    return value


def parse_args(argv: Optional[Sequence[str]] = None,
               config_cls: Type[StimConfig] = StimConfig) -> Tuple[argparse.Namespace, str]:
    """Parse the command line like timm's train.py ``_parse_args``, checking the config file.

    ``-c/--config`` is parsed first; its YAML (keys are option dests) becomes the defaults of the
    main parser, which then parses the rest, so the command line overrides the file. Problems
    (missing file, unknown keys, bad values) exit through ``parser.error``: exit code 2 and a
    message, no traceback.

    Args:
        argv: the arguments; ``sys.argv[1:]`` when None.

    Returns:
        (args, args_text): the parsed options and their YAML dump (written as args.yaml).
    """
    config_parser, parser = create_train_parser(config_cls)
    args_config, remaining = config_parser.parse_known_args(argv)
    if args_config.config:
        parser.set_defaults(**_load_config(args_config.config, parser))

    # The main parser must refuse what it does not know: the leftovers from config_parser.
    args = parser.parse_args(remaining)
    args.config = args_config.config
    # As timm writes args.yaml: the parsed options, before the run changes any (its -c file is not one).
    args_text = yaml.safe_dump({k: v for k, v in args.__dict__.items() if k != 'config'}, default_flow_style=False)
    return args, args_text


def check_args(args) -> None:
    """Cheap checks of the options timm asserts on (late, or not at all), and of the data; raise ``InputError``.

    The ``--stim-*`` options are checked by ``StimTraining.check``, the Hub options by ``Publisher.check``.
    """
    check_model_name(args.model)
    if args.kd_model_name:
        check_model_name(args.kd_model_name, '--kd-model-name')
        folder = args.kd_model_name[len('local-dir:'):] if args.kd_model_name.startswith('local-dir:') else None
        if folder is not None and not os.path.isfile(os.path.join(folder, 'config.json')):
            raise InputError(f'--kd-model-name {args.kd_model_name}: no config.json in {folder}; expected a folder in '
                             f'timm\'s Hub format (config.json + model.safetensors, e.g. timm.models.save_for_hf).')
    for flag, value, low in (('-b/--batch-size', args.batch_size, 1), ('--epochs', args.epochs, 1),
                             ('-vb/--validation-batch-size', args.validation_batch_size, 1),
                             ('--grad-accum-steps', args.grad_accum_steps, 1), ('--workers', args.workers, 0),
                             ('--log-interval', args.log_interval, 1), ('--val-interval', args.val_interval, 1),
                             ('--checkpoint-hist', args.checkpoint_hist, 1), ('--lr-base-size', args.lr_base_size, 1),
                             ('--train-batches-per-epoch', args.train_batches_per_epoch, 1)):
        if value is not None and value < low:
            raise InputError(f'{flag} {value}: expected an int >= {low}.')
    if args.experiment:
        # A name is a folder under --output: one that leaves it would write another run's place.
        name = os.path.normpath(args.experiment)
        if os.path.isabs(args.experiment) or name in ('.', '..') or name.startswith('..' + os.sep):
            raise InputError(f'--experiment {args.experiment!r}: expected a folder name under --output (no absolute '
                             f'path, no ".."); pass the parent folder as --output instead.')
    if args.model_dtype not in (None, '', 'float32', 'float16', 'bfloat16'):
        raise InputError(f'--model-dtype {args.model_dtype!r}: expected float32, float16 or bfloat16.')
    if args.amp and args.model_dtype not in (None, '', 'float32'):
        raise InputError(f'--amp with --model-dtype {args.model_dtype}: AMP needs float32 weights; drop one of them.')
    if args.amp and args.amp_dtype not in ('float16', 'bfloat16'):
        raise InputError(f'--amp-dtype {args.amp_dtype!r}: expected float16 or bfloat16.')
    if args.aug_splits == 1 or args.aug_splits < 0:
        raise InputError(f'--aug-splits {args.aug_splits}: expected 0 (off) or >= 2.')
    if args.split_bn and args.aug_splits < 2 and not args.resplit:
        raise InputError('--split-bn needs --aug-splits >= 2 or --resplit.')
    if args.jsd_loss and args.aug_splits < 2:
        raise InputError('--jsd-loss needs --aug-splits >= 2.')
    if args.naflex_loader and args.train_img_sizes is not None:
        raise InputError('--naflex-loader and --train-img-sizes are alternative loader modes; use one of them.')
    if args.naflex_loader and args.use_multi_epochs_loader:
        raise InputError('--use-multi-epochs-loader is not supported with --naflex-loader.')
    if args.naflex_patch_size_probs and len(args.naflex_patch_size_probs) != len(args.naflex_patch_sizes or []):
        raise InputError('--naflex-patch-size-probs must have one value per --naflex-patch-sizes entry.')
    if args.torchscript and args.torchcompile:
        raise InputError('--torchscript and --torchcompile are alternatives; use one of them.')
    if args.nonfinite_max < 1:
        raise InputError(f'--nonfinite-max {args.nonfinite_max}: expected a number of steps in a row >= 1.')
    if args.seed_scheme != 'timm' and args.worker_seeding != 'all':
        raise InputError(f'--worker-seeding {args.worker_seeding} has no effect with --seed-scheme {args.seed_scheme} '
                         f'(every sample is seeded from its position); use --seed-scheme timm to seed workers as timm.')
    if args.data and not args.data_dir:
        args.data_dir = args.data  # positional data dir is timm's deprecated spelling
    if is_embedded(args.dataset) and args.data_dir:
        raise InputError(f'--data-dir {args.data_dir} with --dataset {args.dataset}: the embedded dataset ships with '
                         f'timm_stim and reads no folder. Drop --data-dir, or drop --dataset to train on the folder.')
    try:
        resolve_dataset(args.dataset, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise InputError(str(e)) from None
    check_timm_options(args)
    # Checkpoint files, read as every checkpoint is (timm_stim.loading): --resume is read in full once the
    # model exists (its weights must fit it); the weights timm loads while creating the model are read now.
    if args.resume:
        check_checkpoint_path(args.resume, '--resume')
    for option, path in (('--initial-checkpoint', args.initial_checkpoint), ('--pretrained-path', args.pretrained_path)):
        if path:
            check_weights_file(path, option)


EVAL_METRICS = ('top1', 'top5', 'loss')  # what validate() returns (without a validation split: train 'loss')


def _close(value: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value).lower(), list(names), n=3)
    return f' Did you mean {", ".join(close)}?' if close else ''


def _non_finite(value: Any) -> bool:
    """Whether a --model-kwargs value holds NaN or infinity (``1e999``, or text ``nan`` / ``inf`` timm keeps)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return value.strip().lower().lstrip('+-') in ('nan', 'inf', 'infinity')
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_non_finite(v) for v in value)
    return False


def check_timm_options(args) -> None:
    """Refuse, before any work, timm options that fail late (after the folder is taken) or train to NaN.

    Names are checked against timm's own registries and parsers (optimizers, schedulers,
    augmentation policies), so every value timm accepts passes.

    Raises:
        InputError: naming the option, the value and what is expected.
    """
    from timm.optim import get_optimizer_info, list_optimizers
    opt_name = str(args.opt).lower().split('_')[-1]
    try:
        get_optimizer_info(opt_name)
    except ValueError:
        raise InputError(f'--opt {args.opt!r} is not an optimizer of timm.{_close(opt_name, list_optimizers())} See '
                         f'timm.optim.list_optimizers() (a "lookahead_" prefix is allowed).') from None
    _check_scheduler(args)
    if args.aa:
        _check_auto_augment(args.aa)
    if args.eval_metric not in EVAL_METRICS:
        raise InputError(f'--eval-metric {args.eval_metric!r}: expected one of {", ".join(EVAL_METRICS)} (what '
                         f'validation reports).')
    if not 0 <= args.smoothing < 1:
        raise InputError(f'--smoothing {args.smoothing}: expected a label smoothing in [0, 1) (0.1 is usual).')
    for flag, value in (('--drop', args.drop), ('--drop-path', args.drop_path), ('--drop-block', args.drop_block),
                        ('--drop-connect', args.drop_connect)):
        if value is not None and not 0 <= value < 1:
            raise InputError(f'{flag} {value}: expected a rate in [0, 1).')
    if args.crop_pct is not None and not args.crop_pct > 0:
        raise InputError(f'--crop-pct {args.crop_pct}: expected a center-crop fraction > 0 (e.g. 0.875).')
    if args.std is not None and not all(v > 0 for v in args.std):
        raise InputError(f'--std {" ".join(map(str, args.std))}: expected values > 0 (the inputs are divided by them: '
                         f'0 trains on infinities); e.g. timm\'s ImageNet std 0.229 0.224 0.225.')
    bad = sorted(k for k, v in (args.model_kwargs or {}).items() if _non_finite(v))
    if bad:
        raise InputError(f'--model-kwargs {", ".join(f"{k}={args.model_kwargs[k]!r}" for k in bad)}: expected finite '
                         f'numbers (NaN or infinity trains to NaN).')


def _check_scheduler(args) -> None:
    """Build the schedule with timm's own factory on a throwaway optimizer: its errors, now instead of later."""
    import torch
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        with warnings.catch_warnings():  # a deprecation (plateau) is said once, when the run builds its schedule
            warnings.simplefilter('ignore')
            create_scheduler_v2(optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
                                updates_per_epoch=1)
    except (ValueError, AssertionError, TypeError, KeyError) as e:
        names = ('cosine', 'tanh', 'step', 'multistep', 'poly', 'wsd', 'rsqrt', 'constant', 'plateau', 'none')
        reason = str(e).rstrip('.') or type(e).__name__
        raise InputError(f'--sched {args.sched!r} with these schedule options: timm refuses it ({reason}). '
                         f'timm\'s schedulers: {", ".join(names)}.{_close(args.sched, names)}') from None


def _check_auto_augment(policy: str) -> None:
    """Parse ``--aa`` as timm's transforms do (RandAugment, AugMix, AutoAugment by its prefix)."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
    params = dict(translate_const=100, img_mean=(124, 116, 104))
    try:
        if policy.startswith('rand'):
            rand_augment_transform(policy, params)
        elif policy.startswith('augmix'):
            augment_and_mix_transform(policy, dict(params, translate_pct=0.3))
        else:
            auto_augment_transform(policy, params)
    except (ValueError, AssertionError, KeyError, IndexError, TypeError) as e:
        raise InputError(f'--aa {policy!r} is not an augmentation policy timm can parse ({e or type(e).__name__}); '
                         f'expected e.g. rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2, or v0 / original / '
                         f'v0r / originalr (AutoAugment).') from None
