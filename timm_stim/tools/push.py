"""``timm-stim push`` and ``train_stim.py --push-to-hub``: publish a checkpoint to the Hugging Face Hub, timm's format.

What timm's ``push_to_hf_hub`` publishes (``model.safetensors``, ``config.json``, a ``README.md`` card), plus the run's
``args.yaml``, ``summary.csv`` and ``training_curves.png``; it loads with ``timm.create_model("hf-hub:USER/REPO",
pretrained=True)``. ``timm_stim.tools.hub_folder`` prepares the files in a temporary folder (a failed push changes no
local file) and ``timm_stim.tools.hub`` publishes it; this module adds the options (``PushRequest``), the command that
retries a failed push, and ``TokenMaskingParser``, the command-line parser whose errors never show a token.
"""
import argparse
import logging
import os
import shlex
import sys
import tempfile
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from ..errors import InputError, command_main, command_prog
from .checkpoints import CHECKPOINT_EXTS, USE_EMA_HELP, read_train_args
from .hub import DEFAULT_COMMIT_MESSAGE, HubPushError, _mask, check_push_options, push_folder
from .hub_folder import dataset_label_names, prepare_push_folder
from .modelcard import DEFAULT_LICENSE

__all__ = ['PushRequest', 'push', 'push_training_output', 'push_after_training', 'retry_command',
           'TokenMaskingParser', 'create_push_parser', 'main']

_logger = logging.getLogger(__name__)

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


def retry_command(request: PushRequest) -> str:
    """The shell command ``python -m timm_stim push ...`` that makes ``request`` (quoted)."""
    return 'python -m timm_stim push ' + shlex.join(request.argv())


def push(request: PushRequest) -> str:
    """Publish ``request.checkpoint`` to ``request.repo_id`` from a temporary folder; return the URL.

    Raises:
        InputError: bad input, found before any network call; nothing was sent.
        HubPushError: the push failed (``retry_command`` set); no local file was changed.
    """
    from huggingface_hub import constants
    check_push_options(request.repo_id, request.revision, request.create_pr)
    source = request.checkpoint
    if not os.path.exists(source):
        raise InputError(f'checkpoint {source!r} does not exist.')
    if os.path.isfile(source) and not source.endswith(CHECKPOINT_EXTS):
        raise InputError(f'checkpoint {source!r}: expected a {", ".join(CHECKPOINT_EXTS)} file or a folder in '
                         f'timm\'s Hub format.')
    with tempfile.TemporaryDirectory(prefix='timm_stim_push_') as tmp:
        prepare_push_folder(request, tmp)
        _logger.info(f'Publishing {", ".join(sorted(os.listdir(tmp)))} to {request.repo_id} on {constants.ENDPOINT}')
        try:
            return push_folder(tmp, request.repo_id, private=request.private, revision=request.revision,
                               commit_message=request.commit_message, create_pr=request.create_pr,
                               replace_card=request.replace_card)
        except HubPushError as e:
            e.retry_command = retry_command(request)
            raise


# ---------------------------------------------------------------------------------------------------------------------
# After training (train_stim.py --push-to-hub)
# ---------------------------------------------------------------------------------------------------------------------

def _training_request(output_dir: str, repo_id: str, which: str, train_args: Dict[str, Any],
                      **options: Any) -> PushRequest:
    """The ``PushRequest`` of the ``which`` weights (best, last, ema) of a training output folder."""
    # best: timm's rule (the EMA weights when held), as `timm-stim push model_best.pth.tar` and model_best.safetensors.
    choices = {'best': ('model_best.pth.tar', None), 'last': ('last.pth.tar', False), 'ema': ('last.pth.tar', True)}
    if which not in choices:
        raise InputError(f'--hub-which {which!r}: expected best, last or ema.')
    checkpoint, use_ema = choices[which]
    return PushRequest(os.path.join(os.path.abspath(output_dir), checkpoint), repo_id, use_ema=use_ema,
                       model=train_args.get('model') or None, num_classes=train_args.get('num_classes'), **options)


def push_training_output(output_dir: str, repo_id: str, *, which: str = 'best', private: bool = False,
                         revision: Optional[str] = None, label_names: Optional[Sequence[str]] = None,
                         create_pr: bool = False, replace_card: bool = False,
                         train_args: Optional[Dict[str, Any]] = None) -> str:
    """Publish the ``which`` weights of a ``train_stim.py`` output folder; return the URL.

    Args:
        output_dir: the run's output folder.
        repo_id: ``USER/REPO``.
        which: ``best`` (model_best.pth.tar: its EMA weights when it holds them, timm's rule), ``last`` (the non-EMA
            weights of last.pth.tar) or ``ema`` (the EMA weights of last.pth.tar).
        private, revision, label_names, create_pr, replace_card: as ``PushRequest`` takes them.
        train_args: the run's options (default: its ``args.yaml``).

    Returns:
        The URL ``push`` returns.

    Raises:
        HubPushError: ``retry_command`` set; nothing in ``output_dir`` was changed.
    """
    train_args = read_train_args(output_dir) if train_args is None else train_args
    request = _training_request(output_dir, repo_id, which, train_args, private=private, revision=revision,
                                label_names=list(label_names) if label_names else None, create_pr=create_pr,
                                replace_card=replace_card)
    if request.label_names and '--label-names' not in request.argv():
        _logger.info('The label names are too long for a retry command: add --label-names @FILE (one a line) to it.')
    try:
        return push(request)
    except InputError as e:  # training is done: a bad checkpoint is a failed publication, with a retry
        raise HubPushError(str(e), repo_id=repo_id, retry_command=retry_command(request)) from None


def push_after_training(args: argparse.Namespace, output_dir: str, dataset_train: Any = None, *,
                        interrupted: bool = False) -> Optional[str]:
    """``train_stim.py --push-to-hub``: publish the run's ``--hub-which`` weights after training.

    Args:
        args: the run's options. output_dir: its output folder. dataset_train: its dataset, for the label names.
        interrupted: the run was interrupted: publish nothing, log the command that publishes what was saved.

    Returns:
        The URL, or None when interrupted.

    Raises:
        HubPushError: with ``retry_command`` and ``saved_in`` set; ``output_dir`` is unchanged.
    """
    options = dict(private=args.hub_private, revision=args.hub_revision, create_pr=args.hub_create_pr,
                   replace_card=args.hub_replace_card, label_names=dataset_label_names(dataset_train, args.num_classes))
    if interrupted:
        request = _training_request(output_dir, args.push_to_hub, args.hub_which, vars(args), **options)
        _logger.warning(f'Training was interrupted: nothing is published to {args.push_to_hub}. To publish what was '
                        f'saved:\n  {retry_command(request)}')
        return None
    _logger.info(f'Publishing the {args.hub_which} weights to the Hugging Face Hub repository {args.push_to_hub}')
    try:
        url = push_training_output(output_dir, args.push_to_hub, which=args.hub_which, train_args=vars(args), **options)
    except HubPushError as e:
        e.saved_in = output_dir
        raise
    _logger.info(f'Published to {url}')
    return url


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------

def _token_like(argv: Sequence[str]) -> List[str]:
    """The values of ``argv`` that may be a token: ``hf_...``, and the value of any option named like ``--*token*``."""
    values = []
    for i, arg in enumerate(argv):
        option, equals, value = arg.partition('=') if arg.startswith('-') else ('', '', arg)
        if 'token' in option.lower():
            values.append(value if equals else (argv[i + 1] if i + 1 < len(argv) else ''))
        elif value.startswith('hf_'):
            values.append(value)
    return [v for v in values if v]


class TokenMaskingParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors never show a token, for every command that may publish to the Hub.

    argparse's errors quote the values they refuse (``unrecognized arguments: --token hf_...``): here the token and
    every value of the command line that may be one (see ``_token_like``) show as ``***``. Build it as an
    ``ArgumentParser`` (``timm-stim push``, ``timm-stim export``).
    """

    def parse_known_args(self, args: Optional[Sequence[str]] = None,
                         namespace: Any = None) -> Tuple[argparse.Namespace, List[str]]:
        self._secrets = _token_like(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        hint = '; the token comes from HF_TOKEN or `hf auth login`, never from an option' if 'token' in message else ''
        super().error(_mask(message, getattr(self, '_secrets', ())) + hint)


def create_push_parser() -> argparse.ArgumentParser:
    """The ``timm-stim push`` parser: one argument per ``PushRequest`` field."""
    parser = TokenMaskingParser(
        prog=command_prog('push'),
        description='Publish a checkpoint to the Hugging Face Hub in timm\'s format, loadable '
        'with timm.create_model("hf-hub:USER/REPO", pretrained=True). The token comes from HF_TOKEN or `hf auth '
        'login`, the endpoint from HF_ENDPOINT.')
    for f in fields(PushRequest):
        if f.default is MISSING:
            parser.add_argument(f.name, **f.metadata)
        else:
            parser.add_argument('--' + f.name.replace('_', '-'), default=f.default, **f.metadata)
    return parser


def _push_command(argv: Sequence[str]) -> int:
    args = create_push_parser().parse_args(argv)
    try:
        request = PushRequest.from_args(args)
        url = push(request)
    except InputError as e:
        raise InputError(f'{e}\nNothing was sent to the Hub.') from None
    print(f'Published to {url}\nLoad it with: timm.create_model("hf-hub:{request.repo_id}'
          f'{"@" + request.revision if request.revision else ""}", pretrained=True)')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``timm-stim push``: 0 published; exits 2 on bad input (nothing sent), 1 when the push failed."""
    return command_main(_push_command, argv)


if __name__ == '__main__':
    sys.exit(main())
