"""``PushRequest``: what ``timm-stim push`` publishes and where, each field one of its arguments.

``timm_stim.tools.hub_folder`` prepares the files a request publishes and ``timm_stim.tools.push``
publishes them; both read the request from here.
"""
import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, List, Optional

from ..errors import InputError
from .checkpoints import USE_EMA_HELP
from .hub import DEFAULT_COMMIT_MESSAGE
from .modelcard import DEFAULT_LICENSE

__all__ = ['PushRequest', 'MAX_INLINE_LABELS_CHARS']

MAX_INLINE_LABELS_CHARS = 2000  # longer label names are left out of a printed retry command


def _option(default: Any = MISSING, help: str = '', **argparse_kwargs: Any) -> Any:
    """A ``PushRequest`` field that is also a ``timm-stim push`` argument (positional when it has no default)."""
    return field(default=default, metadata=dict(help=help, **argparse_kwargs))


@dataclass
class PushRequest:
    """What to publish and where: each field is the ``timm-stim push`` argument of its name; see its help."""
    checkpoint: str = _option(help='a timm checkpoint (.pth.tar, .pth, .safetensors; args.yaml and summary.csv beside '
                                   'it are published too) or a folder in timm\'s Hub format', metavar='CHECKPOINT')
    repo_id: str = _option(help='Hub model repository (created if needed)', metavar='USER/REPO')
    model: Optional[str] = _option(None, 'timm architecture (default: args.yaml or config.json)', metavar='NAME')
    num_classes: Optional[int] = _option(None, 'classes of the checkpoint (default: its classifier)', type=int,
                                         metavar='N')
    use_ema: Optional[bool] = _option(None, USE_EMA_HELP, action=argparse.BooleanOptionalAction)
    label_names: Optional[List[str]] = _option(None, 'class names in label order: A,B,... or @FILE, one a line',
                                               metavar='A,B,...|@FILE')
    input_size: Optional[List[int]] = _option(None, 'input size (default: args.yaml, else the model\'s)', type=int,
                                              nargs=3, metavar=('C', 'H', 'W'))
    mean: Optional[List[float]] = _option(None, 'normalization mean', type=float, nargs='+')
    std: Optional[List[float]] = _option(None, 'normalization std', type=float, nargs='+')
    crop_pct: Optional[float] = _option(None, 'center crop fraction at evaluation', type=float)
    interpolation: Optional[str] = _option(None, 'resize interpolation (bilinear, bicubic, ...)')
    license: str = _option(DEFAULT_LICENSE, f'license of the card (default: {DEFAULT_LICENSE})')
    dataset_id: Optional[str] = _option(None, 'Hub dataset id for the card (default: from args.yaml when known)',
                                          metavar='HUB_DATASET')
    private: bool = _option(False, 'create the repository as private', action='store_true')
    revision: Optional[str] = _option(None, 'branch to push to (default: main)', metavar='BRANCH')
    create_pr: bool = _option(False, 'open a pull request against main instead of committing', action='store_true')
    replace_card: bool = _option(False, 'replace a README.md edited on the Hub (default: keep it)', action='store_true')
    commit_message: Optional[str] = _option(None, f'default: "{DEFAULT_COMMIT_MESSAGE}"')

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> 'PushRequest':
        """The request of parsed ``push`` arguments (``--label-names`` split, or read from ``@FILE``)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        return cls(**{**values, 'label_names': _parse_label_names(args.label_names)})

    def argv(self) -> List[str]:
        """The ``push`` arguments that make this request (label names only when they fit on a command line)."""
        argv = [self.checkpoint, self.repo_id]
        for f in fields(self)[2:]:
            value = getattr(self, f.name)
            if f.name == 'label_names' and value:
                joined = ','.join(map(str, value))
                # Left out when too long for a command line, or when a name holds a comma.
                fits = len(joined) <= MAX_INLINE_LABELS_CHARS and joined.count(',') == len(value) - 1
                value = joined if fits else None
            if value is not None and value != f.default:
                option = '--' + f.name.replace('_', '-')
                listed = value if isinstance(value, (list, tuple)) else [value]
                if value is False:  # a flag whose default is None (--no-use-ema)
                    argv.append('--no-' + f.name.replace('_', '-'))
                else:
                    argv += [option] if value is True else [option, *map(str, listed)]
        return argv


def _parse_label_names(value: Optional[str]) -> Optional[List[str]]:
    """The names of ``--label-names``: ``A,B,...``, or ``@FILE`` with one name a line."""
    if value and value.startswith('@'):
        try:
            with open(value[1:], encoding='utf-8') as f:
                return [line.strip() for line in f if line.strip()] or None
        except OSError as e:
            raise InputError(f'--label-names {value}: could not read {value[1:]}: {e}') from None
    return [n.strip() for n in value.split(',')] if value else None
