"""``timm-stim push`` and ``train_stim.py --push-to-hub``: publish a checkpoint to the Hugging Face Hub, timm's format.

What timm's ``push_to_hf_hub`` publishes (``model.safetensors``, ``config.json``, a ``README.md`` card), plus the run's
``args.yaml``, ``summary.csv`` and ``training_curves.png``; it loads with ``timm.create_model("hf-hub:USER/REPO",
pretrained=True)``. ``timm_stim.tools.hub_folder`` prepares the files in a temporary folder (a failed push changes no
local file) and ``timm_stim.tools.hub`` publishes it; this module adds the command (its options are the fields of
``timm_stim.tools.push_request.PushRequest``), the command that retries a failed push, and ``TokenMaskingParser``, the
command-line parser whose errors never show a token.
"""
import argparse
import logging
import os
import shlex
import sys
import tempfile
from dataclasses import MISSING, fields
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from ..errors import InputError, command_main
from .checkpoints import CHECKPOINT_EXTS, read_train_args
from .hub import HubPushError, check_push_options, mask_secrets, push_folder
from .hub_folder import dataset_label_names, ema_validated, prepare_push_folder
from .push_request import PushRequest

__all__ = ['PushRequest', 'push', 'push_training_output', 'push_after_training', 'retry_command',
           'TokenMaskingParser', 'create_push_parser', 'main']

_logger = logging.getLogger(__name__)

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
    choices = {'best': ('model_best.pth.tar', ema_validated(train_args)),  # the weights the best metric measured
               'last': ('last.pth.tar', False), 'ema': ('last.pth.tar', True)}
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
        which: ``best`` (model_best.pth.tar, its EMA weights when EMA was validated), ``last`` or ``ema`` (the EMA
            weights of last.pth.tar).
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
        super().error(mask_secrets(message, getattr(self, '_secrets', ())) + hint)


def create_push_parser() -> argparse.ArgumentParser:
    """The ``timm-stim push`` parser: one argument per ``PushRequest`` field."""
    parser = TokenMaskingParser(
        prog='timm-stim push', description='Publish a checkpoint to the Hugging Face Hub in timm\'s format, loadable '
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
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stderr)
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
