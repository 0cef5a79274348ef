"""``StimConfig``: the one place where every stimulative-training option is declared.

Each field of ``StimConfig`` is one option: its name (the keyword of ``StimulativeTask``), its
default, its command-line flag (``--stim-*``), help text, choices and check. Everything else
is derived from these fields, with no second list anywhere:

* the ``--stim-*`` argparse group of ``train_stim.py`` (``add_config_args``), which also
  converts the values of ``-c`` YAML files;
* the checks of the values (``StimConfig.check``: type, range, NaN/inf/None, combinations);
* what ``args.yaml`` saves under ``stim_resolved.config`` and the model card shows;
* the option table of ``docs/training.md`` (``options_table``, kept in sync by a test).

Adding an option is a field here plus its use site: a subclass with one more field works
everywhere the class is passed (``create_train_parser(config_cls=...)``, ``main(...,
config_cls=...)``).

>>> cfg = StimConfig(num_subnets=6, space='stpp', normalize='all', min_scale=0.43)
>>> task = StimulativeTask(model, config=cfg)
"""
import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

__all__ = ['StimConfig', 'stim_option', 'add_config_args', 'add_config_option', 'options_table', 'ConfigError',
           'MAX_SUBNETS']

Check = Callable[[Any], Optional[str]]  # None when the value is fine, else what was expected


class ConfigError(ValueError):
    """A ``StimConfig`` value is not allowed; ``str(e)`` names the option, the value and what was expected."""


# Subnetworks per step (and --stim-budget, in full passes) above this are refused: each costs a
# forward+backward pass per step (ST++ runs 6), and far larger values only exhaust time and memory.
MAX_SUBNETS = 1000

# ---------------------------------------------------------------------------------------------
# Checks: each returns None for a good value, else "expected ..." (the caller names the option)
# ---------------------------------------------------------------------------------------------

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: float, what: str = 'a number', integer: bool = False, note: str = '') -> Check:
    """A finite number (an int when ``integer``) ``>= low``."""
    def check(value):
        ok = _number(value) and value >= low and (not integer or float(value).is_integer())
        return None if ok else f'expected {what} >= {low:g}{note}'
    return check


def at_most(high: float, inner: Check, why: str) -> Check:
    """A value ``inner`` accepts that is also ``<= high`` (a stated bound, ``why`` says why)."""
    def check(value):
        return inner(value) or (None if value is None or value <= high else f'expected at most {high:g}{why}')
    return check


def above(low: float, high: Optional[float] = None, what: str = 'a number', note: str = '') -> Check:
    """A finite number ``> low`` (and ``<= high`` when given)."""
    def check(value):
        ok = _number(value) and value > low and (high is None or value <= high)
        span = f'in ({low:g}, {high:g}]' if high is not None else f'> {low:g}'
        return None if ok else f'expected {what} {span}{note}'
    return check


def one_of(*choices: Any) -> Check:
    def check(value):
        return None if value in choices else f'expected one of {", ".join(map(str, choices))}'
    return check


def optional(inner: Check) -> Check:
    """None, or a value ``inner`` accepts."""
    def check(value):
        return None if value is None else inner(value)
    return check


def _space(value: Any) -> Optional[str]:
    ok = isinstance(value, str) and value.strip() or (
        isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                           for v in value))
    return None if ok else 'expected uniform, stpp, keep:K, or the largest drop per stage, e.g. "0,1,3,0"'


def _checked_by_attach(value: Any) -> Optional[str]:
    # mode and bn are the Stimulator's: ``attach`` checks them (and says so) when it attaches.
    return None


def stim_option(default: Any, help: str, check: Check, *, flag: Optional[str] = None, metavar: Optional[str] = None,
                type: Optional[Callable] = None, choices: Optional[Tuple] = None) -> Any:
    """A ``StimConfig`` field: its default and everything the command line and the checks need.

    Args:
        default: the default value (what plain timm training, or the official code, does).
        help: the ``--help`` text (the default is appended).
        check: returns None for a good value, else what was expected.
        flag: the command-line flag; default ``--stim-`` + the field name with dashes.
        metavar, choices: as argparse's.
        type: the command-line type (int, float, str or bool; bool makes ``--flag/--no-flag``).
    """
    return field(default=default, metadata=dict(help=help, check=check, flag=flag, metavar=metavar, type=type,
                                                choices=choices))


@dataclass
class StimConfig:
    """Every stimulative-training option, with its default (see each field's help).

    ``StimulativeTask(model, config=StimConfig(...))`` trains with it; ``train_stim.py`` builds
    one from its ``--stim-*`` options. ``num_subnets=0`` (the default) turns stimulative
    training off unless ``budget`` is given.
    """
    num_subnets: float = stim_option(
        0, 'subnetworks per step, K; 0 turns stimulative training off unless --stim-budget is given (ST: 1, '
           'ST++: 6). Through the Python API a fraction is a mean (each step draws floor or ceil)',
        at_most(MAX_SUBNETS, at_least(0, 'an int', note=' (0 turns stimulative training off), or a fraction such as '
                                                         '1.6 (subnetworks per step on average)'),
                ' subnetworks per step, each a forward+backward pass (ST++ runs 6)'),
        flag='--stim-subnets', metavar='K', type=int)
    budget: Optional[float] = stim_option(
        None, 'instead of K: the expected extra cost per step, in full forward+backward passes, estimated from '
              'FLOPs of the space and the input sizes; K = budget / cost on average, drawn per step (printed and '
              'saved in args.yaml). 1: a step costs about two plain steps',
        at_most(MAX_SUBNETS, optional(above(0, note=', the extra cost per step in full forward+backward passes (e.g. '
                                                     '1: a step costs about twice a plain step)')),
                ' full passes of extra cost per step'),
        metavar='B', type=float)
    budget_unit: str = stim_option(
        'flops', 'what --stim-budget counts: flops (estimated before training, K fixed) or time (measured on the '
                 'running device: K is steered every step so that subnetwork passes take B plain passes of time; '
                 '--stim-subnets, if given, is the K of the first steps; the realized cost per step, in plain passes, '
                 'is stim_cost in the log and summary.csv)', one_of('flops', 'time'), type=str, choices=('flops', 'time'))
    space: Union[str, Tuple[int, ...]] = stim_option(
        'uniform', 'sampling space: uniform, stpp, keep:K, or the largest number of blocks each stage may drop, '
                   'e.g. "0,1,3,0"', _space, metavar='S', type=str)
    mode: str = stim_option(
        'depth', 'depth: keep the first blocks of each stage (official); drop: drop randomly chosen blocks',
        _checked_by_attach, type=str, choices=('depth', 'drop'))
    normalize: str = stim_option(
        'none', 'logit normalization: none; kl: KL- on both logits; all: the task loss also sees normalized '
                'logits, as the official ST++ code', one_of('none', 'kl', 'all'), flag='--stim-norm', type=str,
        choices=('none', 'kl', 'all'))
    amplitude: float = stim_option(1.0, 'amplitude of the normalized logits of KL-', above(0), metavar='A',
                                   type=float)
    temperature: float = stim_option(1.0, 'softmax temperature of the subnetwork KL', above(0), metavar='T',
                                     type=float)
    kl_weight: float = stim_option(1.0, "weight of each subnetwork's KL term (the total KL weight is K times it)",
                                   at_least(0), flag='--stim-weight', metavar='W', type=float)
    weight_sched: str = stim_option(
        'const', 'KL weight over training: constant, cosine up from 0 or cosine down to 0 (official kl_cos / '
                 'kl_rcos)', one_of('const', 'cos-up', 'cos-down'), type=str, choices=('const', 'cos-up', 'cos-down'))
    weight_sched_step: str = stim_option(
        'batch', 'move the KL weight schedule every batch, or once per epoch as the official code',
        one_of('batch', 'epoch'), type=str, choices=('batch', 'epoch'))
    weight_warmup_epochs: Optional[float] = stim_option(
        None, 'a stable start (timm-stim, not in the paper): the KL weight rises linearly from 0 over the first E '
              'epochs; 0 => off; None => --warmup-epochs + 1 when the learning rate warms up per epoch, else 0',
        optional(at_least(0, 'a number of epochs', note=' (0: no warm-in of the KL weight)')), flag='--stim-weight-warmup',
        metavar='E', type=float)
    min_scale: float = stim_option(
        1.0, 'smallest subnetwork input side as a fraction of the training size (ST++: 0.43)',
        above(0, 1, note=' (fraction of the training input size)'), metavar='F', type=float)
    max_scale: float = stim_option(
        1.0, 'largest subnetwork input side as a fraction of the training size (ST++: 1)',
        above(0, 1, note=' (fraction of the training input size)'), metavar='F', type=float)
    size_multiple: int = stim_option(
        1, 'draw subnetwork input sides from a grid: each drawn side is rounded down to a multiple of N px (e.g. 16 '
           'or 32), so that few shapes recur (cuDNN plans and compiled graphs are reused); 1: every size, as the paper',
        at_least(1, 'an int', integer=True, note=' (px; 1: every size)'), metavar='N', type=int)
    resize: str = stim_option(
        'independent', 'how smaller subnetwork inputs are made: independent (each subnetwork resizes the original '
                       'batch) or official (each resizes the previous subnetwork\'s input and normalizes it again '
                       'with the dataset mean/std, as the authors\' code)', one_of('independent', 'official'),
        type=str, choices=('independent', 'official'))
    antialias: Optional[bool] = stim_option(
        None, 'antialiased resizing of smaller subnetwork inputs (None: on for --stim-resize independent, off for '
              'official, as the official runs)', one_of(None, True, False), type=bool)
    start_epoch: int = stim_option(0, 'first epoch that trains subnetworks', at_least(0, 'an int', integer=True), metavar='E',
                                   type=int)
    bn: str = stim_option('freeze', 'BatchNorm running statistics during subnetwork passes: freeze, or update '
                                    '(official)', _checked_by_attach, type=str, choices=('freeze', 'update'))
    bn_recal: int = stim_option(
        0, 'training program: re-estimate the full network\'s BatchNorm statistics on N training images before '
           'each validation; 0 => off (official: 2000)', at_least(0, 'a number of images', integer=True), metavar='N',
        type=int)
    eval_subnets: int = stim_option(
        0, 'training program: at each validation also score N subnetworks, drawn once from --seed (the same every '
           'epoch, training draws unchanged), with the BatchNorm statistics the run keeps; their mean and min top-1 '
           'go into the log and summary.csv (eval_subnet_top1_mean / _min); 0 => off',
        at_most(MAX_SUBNETS, at_least(0, 'an int', integer=True), ' subnetworks, each a full validation pass'),
        metavar='N', type=int)

    # -----------------------------------------------------------------------------------------
    @classmethod
    def options(cls) -> List[dataclasses.Field]:
        """The fields, in declaration order."""
        return list(dataclasses.fields(cls))

    @staticmethod
    def flag(f: dataclasses.Field) -> str:
        """The command-line flag of field ``f`` (``--stim-...``)."""
        return f.metadata.get('flag') or '--stim-' + f.name.replace('_', '-')

    @classmethod
    def dest(cls, f: dataclasses.Field) -> str:
        """The argparse dest (and ``-c`` YAML / ``args.yaml`` key) of field ``f``."""
        return cls.flag(f)[2:].replace('-', '_')

    @classmethod
    def from_args(cls, args: Any) -> 'StimConfig':
        """The config of parsed options (an ``argparse.Namespace`` or a dict keyed by dest)."""
        values = args if isinstance(args, dict) else vars(args)
        return cls(**{f.name: values[cls.dest(f)] for f in cls.options() if cls.dest(f) in values})

    def to_dict(self) -> Dict[str, Any]:
        """Plain values keyed by field name (spaces given as a sequence become a list)."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f, v in self._items()}

    def _items(self) -> Iterator[Tuple[dataclasses.Field, Any]]:
        for f in self.options():
            yield f, getattr(self, f.name)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'StimConfig':
        """The config of ``to_dict``'s values (keyed by field name; keys of no field, e.g. a subclass's, are left out)."""
        names = {f.name for f in cls.options()}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def enabled(self) -> bool:
        """Whether the options turn stimulative training on (K > 0 or a budget)."""
        return self.budget is not None or (_number(self.num_subnets) and self.num_subnets > 0)

    @property
    def method(self) -> Optional[str]:
        """The method these options train with, as the paper names it; None when stimulative training is off.

        ``'ST++'`` when any of ST++'s additions is on: logit normalization (``normalize``), its
        sampling space (``space='stpp'``) or smaller subnetwork inputs (``min_scale < 1``);
        otherwise ``'ST'``.
        """
        if not self.enabled:
            return None
        stpp = self.normalize != 'none' or self.space == 'stpp' or float(self.min_scale) < 1.0
        return 'ST++' if stpp else 'ST'

    @classmethod
    def check_value(cls, name: str, value: Any, cli: bool = True) -> Optional[str]:
        """None when field ``name`` accepts ``value``, else the message (naming its flag when ``cli``)."""
        f = cls.__dataclass_fields__[name]
        expected = f.metadata['check'](value)
        if not expected:
            return None
        return f'{cls.flag(f)} {value!r}: {expected}.' if cli else f'{f.name}={value!r}: {expected}.'

    @classmethod
    def check_options(cls, args: Any, names: Sequence[str]) -> None:
        """Check the options of fields ``names`` in parsed ``args`` (read by dest) as ``check`` checks them.

        For a command that takes some of the options (``add_config_option``).

        Raises:
            ConfigError: naming the first bad value by its flag.
        """
        values = args if isinstance(args, dict) else vars(args)
        for name in names:
            problem = cls.check_value(name, values[cls.dest(cls.__dataclass_fields__[name])])
            if problem:
                raise ConfigError(problem)

    def problems(self, cli: bool = False) -> List[str]:
        """Every value that is not allowed, as messages naming the option (its flag when ``cli``).

        Args:
            cli: name options by their flags (``--stim-weight nan``) rather than as keywords
                (``kl_weight=nan``).
        """
        out = [problem for problem in (self.check_value(f.name, value, cli) for f, value in self._items()) if problem]
        if not out:
            out += self._combination_problems(cli)
        return out

    def _combination_problems(self, cli: bool) -> List[str]:
        name = (lambda n: self.flag(self.__dataclass_fields__[n])) if cli else (lambda n: n)
        out = []
        if self.min_scale > self.max_scale:
            where = f'{name("min_scale")} {self.min_scale} and {name("max_scale")} {self.max_scale}: ' if cli else ''
            out.append(f'{where}min_scale={self.min_scale} is above max_scale={self.max_scale}; expected '
                       f'min_scale <= max_scale.')
        if self.budget_unit == 'time' and self.budget is None:
            out.append(f'{name("budget_unit")} time needs {name("budget")}: the budget to hold in measured time.')
        if self.budget is not None and self.num_subnets and self.budget_unit != 'time':
            out.append(f'{name("num_subnets")} {self.num_subnets} and {name("budget")} {self.budget:g}: give one of '
                       f'them (set {name("num_subnets")} to 0, e.g. in a -c config, to let the budget choose).')
        return out

    def check(self, cli: bool = False) -> 'StimConfig':
        """Raise ``ConfigError`` naming the first bad value; returns ``self`` for chaining."""
        problems = self.problems(cli)
        if problems:
            raise ConfigError(problems[0])
        return self


# ---------------------------------------------------------------------------------------------
# The command line, derived from the fields
# ---------------------------------------------------------------------------------------------

def add_config_args(parser: argparse.ArgumentParser,
                    config_cls: Type[StimConfig] = StimConfig) -> argparse.ArgumentParser:
    """Add the ``--stim-*`` options of ``config_cls`` as one argparse group.

    Every default means plain timm training: ``--stim-subnets 0`` turns ST off whatever the
    other ``--stim-*`` values are.

    Args:
        parser: parser to add the "Stimulative training" group to.
        config_cls: ``StimConfig`` or a subclass with more fields.

    Returns:
        The same parser, for chaining.
    """
    group = parser.add_argument_group(
        'Stimulative training',
        'Stimulative Training (ST) and ST++ of residual networks: each step also trains K sampled '
        'subnetworks towards the full network (KL). Off unless --stim-subnets > 0 or --stim-budget.')
    for f in config_cls.options():
        add_config_option(group, f.name, config_cls)
    return parser


def add_config_option(parser: Any, name: str, config_cls: Type[StimConfig] = StimConfig, *,
                      default: Any = dataclasses.MISSING, help: Optional[str] = None) -> argparse.Action:
    """Add the option of field ``name`` (its flag, dest, type, metavar and choices) to ``parser``.

    Another command that takes an option meaning what training's means (``timm-stim analyze
    --stim-space``) adds it here and checks it with ``config_cls.check_options``, so it has
    training's name, values and checks; only its default and help may be its own.

    Args:
        parser: a parser or argument group.
        name: the field name (``'bn_recal'``).
        config_cls: ``StimConfig`` or a subclass.
        default, help: the command's own default and help text (default: the field's).

    Returns:
        The added action.
    """
    f = config_cls.__dataclass_fields__[name]
    meta = f.metadata
    default = f.default if default is dataclasses.MISSING else default
    help_ = f'{meta["help"] if help is None else help} (default: {default})'
    if meta['type'] is bool:
        return parser.add_argument(config_cls.flag(f), dest=config_cls.dest(f), action=argparse.BooleanOptionalAction,
                                   default=default, help=help_)
    # Values are converted here (float: finite, see timm_stim.timm_options) and checked by StimConfig.check.
    return parser.add_argument(config_cls.flag(f), dest=config_cls.dest(f), type=meta['type'], default=default,
                               metavar=meta['metavar'], choices=meta['choices'], help=help_)


def options_table(config_cls: Type[StimConfig] = StimConfig) -> str:
    """The markdown table of the ``--stim-*`` options (docs/training.md holds it; a test keeps them equal)."""
    rows = ['| flag | default | meaning |', '|---|---|---|']
    for f in config_cls.options():
        meta = f.metadata
        flag = config_cls.flag(f) + (f' {meta["metavar"]}' if meta['metavar'] else '')
        if meta['type'] is bool:
            flag = f'{config_cls.flag(f)}, --no-{config_cls.flag(f)[2:]}'
        choices = f' ({" / ".join(meta["choices"])})' if meta['choices'] else ''
        text = meta['help'].replace('|', '/') + choices
        rows.append(f'| `{flag}` | {f.default} | {text} |')
    return '\n'.join(rows) + '\n'
