"""``timm-stim push`` and ``train_stim.py --push-to-hub``: publish a checkpoint to the Hugging Face Hub, timm's format.

What timm's ``push_to_hf_hub`` publishes (``model.safetensors``, ``config.json``, a ``README.md`` card), plus the run's
``args.yaml``, ``summary.csv`` and ``training_curves.png``; it loads with ``timm.create_model("hf-hub:USER/REPO",
pretrained=True)``. ``timm_stim.tools.hub_folder`` prepares the files in a temporary folder (a failed push changes no
local file) and ``timm_stim.tools.hub`` publishes it; this module adds the command (its options are the fields of
``timm_stim.tools.push_request.PushRequest``), the command that retries a failed push, and ``TokenMaskingParser``, the
command-line parser whose errors never show a token.
"""
import argparse
import glob
import logging
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import MISSING, fields
from typing import Any, Dict, List, Optional, Sequence

from ..errors import InputError, command_main, command_prog
from ..labels import dataset_label_names
from ..processes import process_alive
from ..tokens import TokenMaskingParser
from .checkpoints import CHECKPOINT_EXTS, check_preprocessing, read_train_args
from .hub import HubPushError, check_push_options, push_folder
from .hub_folder import prepare_push_folder
from .push_request import PushRequest

__all__ = ['PushRequest', 'push', 'push_training_output', 'push_after_training', 'retry_command',
           'remove_stale_push_folders', 'PUSH_FOLDER_PREFIX',
           'TokenMaskingParser', 'create_push_parser', 'main']

_logger = logging.getLogger(__name__)

PUSH_FOLDER_PREFIX = 'timm_stim_push_'  # + the pid of the push: its temporary copy of the weights


def remove_stale_push_folders() -> List[str]:
    """Remove the temporary folders of pushes whose process is gone (killed with -9 mid-push); return them.

    A push copies the weights into ``TMPDIR/timm_stim_push_PID_*`` and removes the copy when it ends,
    however it ends, except on a kill that no code sees: the next push removes that copy.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), PUSH_FOLDER_PREFIX + '*_*')):
        pid = os.path.basename(path)[len(PUSH_FOLDER_PREFIX):].split('_', 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid)) or not os.path.isdir(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        _logger.info(f'Removed {path}, the copy of a push that was killed.')
    return removed


def retry_command(request: PushRequest) -> str:
    """The shell command ``PYTHON -m timm_stim push ...`` that makes ``request``, every part quoted for the shell.

    ``PYTHON`` is the interpreter running now (``sys.executable``): the one that has timm_stim installed.
    """
    return shlex.join([sys.executable, '-m', 'timm_stim', 'push', *request.argv()])


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
    check_preprocessing({k: getattr(request, k) for k in ('input_size', 'mean', 'std', 'crop_pct')})
    remove_stale_push_folders()
    with tempfile.TemporaryDirectory(prefix=f'{PUSH_FOLDER_PREFIX}{os.getpid()}_') as tmp:
        prepare_push_folder(request, tmp)
        _logger.info(f'Publishing {", ".join(sorted(os.listdir(tmp)))} to {request.repo_id} on {constants.ENDPOINT}')
        try:
            return push_folder(tmp, request.repo_id, private=request.private, revision=request.revision,
                               commit_message=request.commit_message, create_pr=request.create_pr,
                               replace_card=request.replace_card)
        except HubPushError as e:
            e.retry_command = retry_command(request)
            raise
        except KeyboardInterrupt:  # exits 130 (run_command), saying how to publish
            _logger.error(f'Publishing to {request.repo_id} was interrupted; no local file was changed. To publish:\n'
                          f'  {retry_command(request)}')
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
