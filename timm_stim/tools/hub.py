"""Publish trained models to the Hugging Face Hub in timm's format: ``timm-stim push`` and ``--push-to-hub``.

What timm's ``push_to_hf_hub`` publishes (``model.safetensors``, ``config.json``, a ``README.md`` card), plus the run's
``args.yaml``, ``summary.csv`` and ``training_curves.png``; it loads with ``timm.create_model("hf-hub:USER/REPO",
pretrained=True)``. huggingface_hub does the publishing (``get_token``, ``validate_repo_id``, ``HfApi.create_repo``,
``create_branch``, ``upload_folder``, which commits with ``parent_commit`` and retries its own requests; the card is
its ``ModelCard``, built by ``timm_stim.tools.modelcard``). This module adds what it does not do: retrying the steps it
does not retry (measured: docs/hub.md), keeping a card edited on the Hub, never showing the token, and printing the
command that retries a failed push. Files are prepared in a temporary folder: a failed push changes no local file.
"""
import argparse
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import CommandFailed, InputError, command_main
from .checkpoints import (ARGS_FILE, CHECKPOINT_EXTS, LOCAL_DIR, LoadedModel, data_config_from_args, load_model,
                          read_train_args)
from .modelcard import DEFAULT_LICENSE, build_model_card, is_unedited, public_train_args, stamp
from .summary import CURVES_FILE, SUMMARY_FILE, plot_training_curves, read_summary

__all__ = ['HubPushError', 'PushRequest', 'check_push_options', 'warn_if_no_token', 'push_folder',
           'save_timm_hf_folder', 'write_model_card', 'prepare_push_folder', 'push', 'push_training_output',
           'push_after_training', 'dataset_label_names', 'retry_command', 'create_push_parser', 'main']

_logger = logging.getLogger(__name__)

CARD_FILE = 'README.md'
DEFAULT_COMMIT_MESSAGE = 'Upload model with timm-stim'
# The steps huggingface_hub does not retry (creating the repository or branch, reading the card) are tried
# RETRY_ATTEMPTS times in all; the first retry waits $TIMM_STIM_HUB_RETRY_DELAY s (default 2), each next twice as long.
RETRY_ATTEMPTS = 4
RETRY_DELAY_ENV = 'TIMM_STIM_HUB_RETRY_DELAY'
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)  # what huggingface_hub's own http_backoff retries
HEAD_MOVED = 412  # the Hub refuses a commit whose parent_commit is no longer the head of its branch
MAX_INLINE_LABELS_CHARS = 2000  # longer label names are left out of a printed retry command
# pretrained_cfg keys describing the architecture's default weights (tag, paper, license, ...), not these weights.
SOURCE_CFG_KEYS = ('tag', 'hf_hub_id', 'hf_hub_filename', 'url', 'file', 'source', 'state_dict', 'origin_url',
                   'paper_ids', 'paper_name', 'notes', 'license', 'description', 'test_input_size', 'test_crop_pct',
                   'test_pool_size')


def _mask(text: str, values: Sequence[str] = ()) -> str:
    """``text`` with the token and ``values`` (command-line values that may be tokens) replaced by ``***``.

    The token is masked wherever it appears, whatever its length: a server may echo even a short one. ``values`` are
    masked where they stand whole, so that a short one blanks out no letters of the message.
    """
    from huggingface_hub import get_token
    token = get_token()
    text = text.replace(token, '***') if token else text
    for value in values:
        text = re.sub(rf'(?<![^\s\'"=]){re.escape(value)}(?![^\s\'",])', '***', text)
    return text


class HubPushError(CommandFailed):
    """Publishing to the Hub failed. The message never contains the token.

    Attributes:
        repo_id: the target repository. status_code: the HTTP status the Hub answered, if any.
        transient: whether the failure looked temporary (connection error, 408, 429, 5xx).
        retry_command: the ``python -m timm_stim push ...`` command that retries, or None.
        saved_in: the folder whose results are kept (training output or export), else None.
    """

    def __init__(self, message: str, *, repo_id: Optional[str] = None, status_code: Optional[int] = None,
                 transient: bool = False, retry_command: Optional[str] = None, saved_in: Optional[str] = None):
        super().__init__(_mask(message))
        self.repo_id, self.status_code, self.transient = repo_id, status_code, transient
        self.retry_command, self.saved_in = retry_command, saved_in

    def report(self) -> str:
        """The text the command-line front ends print: what failed, what is kept, how to retry."""
        kept = (f'The results are saved, unchanged, in {self.saved_in}.' if self.saved_in
                else 'No local file was changed.')
        retry = f'\nRetry with:\n  {self.retry_command}' if self.retry_command else ''
        return _mask(f'Publishing to the Hugging Face Hub failed: {self}\n{kept}{retry}')


def check_push_options(repo_id: str, revision: Optional[str] = None, create_pr: bool = False) -> None:
    """Check a push's target before any work: ``USER/REPO`` by huggingface_hub's rules, a pull request against main.

    Raises:
        InputError: naming the value, what is expected and the fix.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if not isinstance(repo_id, str) or repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise InputError(f'{repo_id!r} is not a Hub repository id: expected USER/REPO (or ORG/REPO), e.g. '
                         f'jane/resnet50-stpp.')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InputError(f'{repo_id!r} is not a valid Hub repository id: {e}') from None
    if create_pr and revision and revision != 'main':  # huggingface_hub opens pull requests against main only
        raise InputError(f'a pull request is opened against main (as huggingface_hub uploads do), not the branch '
                         f'{revision!r}: drop the revision, or drop the pull request to commit to {revision!r}.')


def warn_if_no_token(repo_id: str) -> bool:
    """Log a warning at the start of training when no token is found; return whether one is."""
    from huggingface_hub import get_token
    found = bool(get_token())
    if not found:
        _logger.warning(f'--push-to-hub {repo_id}: no Hugging Face token found (HF_TOKEN or `hf auth login`). '
                        f'Training runs, but publishing at the end fails unless you log in before then.')
    return found


def _as_push_error(what: str, err: BaseException, repo_id: str) -> HubPushError:
    """What huggingface_hub or the network raised while doing ``what``, as a clear ``HubPushError``."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled
    status = err.response.status_code if isinstance(err, HfHubHTTPError) and err.response is not None else None
    offline = isinstance(err, OfflineModeIsEnabled)  # a ConnectionError, though nothing was sent
    # The transport errors of whichever HTTP client huggingface_hub uses (httpx2, httpx or requests).
    network = not offline and status is None and any(
        c.__name__ in ('TransportError', 'ConnectionError', 'Timeout', 'TimeoutError') for c in type(err).__mro__)
    server = (getattr(err, 'server_message', None) or '').strip().splitlines()
    detail = f' ({server[0]})' if server and server[0] else ''
    if offline:
        message = 'HF_HUB_OFFLINE is set, so huggingface_hub makes no network call. Unset it to publish.'
    elif network:
        message = f'could not reach the Hub at {constants.ENDPOINT} ({type(err).__name__}: {err}).'
    elif status is None:
        message = f'{type(err).__name__}: {err}'
    else:
        message = {401: f'the Hub refused the credentials (401 Unauthorized){detail}. The token from HF_TOKEN or '
                        f'`hf auth login` is invalid or expired.',
                   403: f'the token may not write to {repo_id.split("/")[0]!r} (403 Forbidden){detail}. Use a token '
                        f'with write access to that user or organization.',
                   HEAD_MOVED: f'{repo_id} changed on the Hub while publishing ({HEAD_MOVED}){detail}.',
                   }.get(status, f'the Hub answered {status}{detail}.')
    return HubPushError(f'{what}: {message}', repo_id=repo_id, status_code=status,
                        transient=network or status in TRANSIENT_STATUS)


def _retry_delay() -> float:
    value = os.environ.get(RETRY_DELAY_ENV) or '2'
    try:
        return max(0.0, float(value))
    except ValueError:
        raise InputError(f'{RETRY_DELAY_ENV}={value!r} is not a number of seconds: set it to e.g. 2, or unset '
                         f'it.') from None


def _with_retries(what: str, fn: Callable[[], Any], repo_id: str,
                  retry_if: Callable[[HubPushError], bool] = lambda e: e.transient) -> Any:
    """``fn()``, tried ``RETRY_ATTEMPTS`` times in all while ``retry_if(error)``, waiting longer each time."""
    delay = _retry_delay()
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return fn()
        except Exception as e:  # raised below, outside the handler: the original holds the request and its headers
            error = e if isinstance(e, HubPushError) else _as_push_error(what, e, repo_id)
        if not retry_if(error):
            raise error
        if attempt == RETRY_ATTEMPTS:
            raise HubPushError(f'{error} Gave up after {RETRY_ATTEMPTS} attempts.', repo_id=repo_id,
                               status_code=error.status_code, transient=error.transient)
        _logger.warning(f'{error} Retrying in {delay:.3g} s (attempt {attempt + 1} of {RETRY_ATTEMPTS}).')
        time.sleep(delay)
        delay *= 2


def _card_on_hub(api, repo_id: str, revision: Optional[str]) -> Tuple[str, Optional[str]]:
    """The head commit of ``revision`` and the README.md text at that commit (None when there is none)."""
    info = api.model_info(repo_id, revision=revision)
    if CARD_FILE not in {s.rfilename for s in info.siblings or ()}:
        return info.sha, None
    with tempfile.TemporaryDirectory(prefix='timm_stim_card_') as cache:  # not the user's cache: nothing local changes
        with open(api.hf_hub_download(repo_id, CARD_FILE, revision=info.sha, cache_dir=cache), encoding='utf-8') as f:
            return info.sha, f.read()


def _keep_card(card: Optional[str], replace_card: bool, repo_id: str) -> bool:
    """Whether the card on the Hub stays (it was edited there or not written by timm-stim); logs what happens."""
    if card is None:
        return False
    if is_unedited(card):
        _logger.info(f'Updating the model card of {repo_id}: timm-stim wrote it and it was not edited since.')
        return False
    if replace_card:
        _logger.warning(f'Replacing the model card of {repo_id}, which was edited on the Hub or not written by '
                        f'timm-stim, as --replace-card asks (the repository history keeps it).')
        return False
    _logger.warning(f'Keeping the model card of {repo_id} (README.md): it was edited on the Hub or not written by '
                    f'timm-stim, so its metrics may describe earlier weights. Pass --replace-card (train_stim.py: '
                    f'--hub-replace-card) to replace it.')
    return True


def _upload(api, folder: str, repo_id: str, branch: Optional[str], create_pr: bool, replace_card: bool,
            commit_message: Optional[str]):
    """Commit ``folder`` onto the head its card was read at: if the card changed since, the Hub refuses (412)."""
    head, keep_card = None, False
    if os.path.isfile(os.path.join(folder, CARD_FILE)):
        head, card = _with_retries(f'reading the model card of {repo_id}', lambda: _card_on_hub(api, repo_id, branch),
                                   repo_id)
        keep_card = _keep_card(card, replace_card, repo_id)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=branch, create_pr=create_pr,
                             commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
                             ignore_patterns=[CARD_FILE] if keep_card else None,
                             parent_commit=None if create_pr else head)  # a pull request moves no branch's head


def push_folder(folder: str, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
                commit_message: Optional[str] = None, create_pr: bool = False, replace_card: bool = False) -> str:
    """Create ``repo_id`` if needed and upload every file of ``folder`` to it in one commit.

    The token and the endpoint are huggingface_hub's (``HF_TOKEN`` or ``hf auth login``; ``HF_ENDPOINT``).

    Args:
        folder: the files to publish (their layout is kept).
        repo_id: ``USER/REPO``.
        private: create the repository as private (an existing one keeps its visibility).
        revision: branch to commit to, created from main when missing (default: main).
        commit_message: commit title (default: "Upload model with timm-stim").
        create_pr: open a pull request against main with the files instead of committing.
        replace_card: replace a README.md that was edited on the Hub (by default it is kept).

    Returns:
        The repository URL (with ``/tree/BRANCH`` for a branch), or the pull request's URL.

    Raises:
        InputError: bad input; nothing was sent.
        HubPushError: the push failed; its message never contains the token.
    """
    from huggingface_hub import HfApi, get_token
    from ..version import __version__
    check_push_options(repo_id, revision, create_pr)
    if not os.path.isdir(folder):
        raise InputError(f'{folder!r} is not a folder: expected the folder of the files to publish.')
    _retry_delay()  # a bad value is refused before any network call
    if not get_token():
        raise HubPushError('no Hugging Face token found. Set HF_TOKEN to a token with write access, or run `hf auth '
                           'login`.', repo_id=repo_id)
    logging.getLogger('httpx2').setLevel(max(logging.getLogger('httpx2').level, logging.WARNING))  # a line a request
    api = HfApi(token=get_token(), library_name='timm-stim', library_version=__version__)
    url = _with_retries(f'creating {repo_id}', lambda: api.create_repo(repo_id, private=private or None, exist_ok=True),
                        repo_id)
    branch = revision if revision not in (None, 'main') else None
    if branch:
        _with_retries(f'creating branch {branch!r} of {repo_id}',
                      lambda: api.create_branch(repo_id, branch=branch, exist_ok=True), repo_id)
    # A card edited between our reading it and the commit makes the Hub refuse the commit (412): read it again.
    commit = _with_retries(f'uploading to {repo_id}',
                           lambda: _upload(api, folder, repo_id, branch, create_pr, replace_card, commit_message),
                           repo_id, retry_if=lambda e: e.status_code == HEAD_MOVED)
    if create_pr and commit.pr_url:
        return commit.pr_url
    return str(url).rstrip('/') + (f'/tree/{branch}' if branch else '')


# ---------------------------------------------------------------------------------------------------------------------
# What is published: timm's Hub format, from a checkpoint or a folder
# ---------------------------------------------------------------------------------------------------------------------

def write_model_card(folder: str, card: Any) -> str:
    """Write ``card`` (a ``ModelCard`` or text) as ``folder/README.md``, stamped and token-free; return its path."""
    path = os.path.join(folder, CARD_FILE)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(stamp(_mask(str(card))))
    return path


def save_timm_hf_folder(model, folder: str, *, model_config: Optional[Dict[str, Any]] = None,
                        data_config: Optional[Dict[str, Any]] = None, model_card: Any = None) -> str:
    """Write ``model`` in timm's Hub format into ``folder`` with ``timm.models.save_for_hf``, and its card.

    Args:
        model: a timm model; its architecture's default tag, paper and license are left out of ``config.json``.
        folder: output folder (created if needed).
        model_config: extra config (e.g. ``label_names``), as ``save_for_hf`` takes it.
        data_config: the preprocessing used with these weights, as ``save_for_hf`` takes it.
        model_card: README.md content, a ``huggingface_hub.ModelCard`` or text (None: no card).

    Returns:
        ``folder``.
    """
    from timm.models import save_for_hf
    original_cfg = getattr(model, 'pretrained_cfg', None) or {}
    model.pretrained_cfg = {k: v for k, v in original_cfg.items() if k not in SOURCE_CFG_KEYS}
    try:
        save_for_hf(model, folder, model_config=model_config, data_config=data_config, safe_serialization=True)
    finally:
        model.pretrained_cfg = original_cfg
    if model_card is not None:
        write_model_card(folder, model_card)
    return folder


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
    use_ema: bool = _option(False, 'publish the EMA weights (state_dict_ema) of a checkpoint', action='store_true')
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


def _ema_evaluated(train_args: Dict[str, Any]) -> bool:
    """Whether a run validated (and chose model_best by) its EMA weights."""
    return bool(train_args.get('model_ema')) and not train_args.get('model_ema_force_cpu')


def _copy_hub_folder(request: PushRequest, folder: str, train_args: Dict[str, Any]) -> Tuple[LoadedModel, Dict]:
    """Copy a folder in timm's Hub format into ``folder``; return its model and what the card says of it."""
    source = request.checkpoint
    if not os.path.isfile(os.path.join(source, 'config.json')):
        raise InputError(f'{source} is a folder without config.json; expected a checkpoint file or a folder in '
                         f'timm\'s Hub format (config.json + model.safetensors, from timm.models.save_for_hf).')
    if request.use_ema or any(getattr(request, k) for k in ('label_names', 'input_size', 'mean', 'std', 'crop_pct',
                                                            'interpolation')):
        raise InputError(f'{source} is already in timm\'s Hub format (its config.json holds the labels and '
                         f'preprocessing): --use-ema, --label-names and the preprocessing options are for checkpoints.')
    loaded = load_model(f'{LOCAL_DIR}{os.path.abspath(source)}', request.model, request.num_classes)
    for entry in sorted(os.listdir(source)):
        if os.path.isfile(os.path.join(source, entry)) and not entry.startswith('.'):
            shutil.copyfile(os.path.join(source, entry), os.path.join(folder, entry))
    return loaded, dict(published=f'the weights of `{os.path.basename(os.path.normpath(source))}/`',
                        label_names=loaded.model.pretrained_cfg.get('label_names'), pretrained_cfg=loaded.data_config,
                        metrics_match_weights=not _ema_evaluated(train_args))


def _convert_checkpoint(request: PushRequest, folder: str, train_args: Dict[str, Any]) -> Tuple[LoadedModel, Dict]:
    """Write a checkpoint in timm's Hub format with the run's args.yaml; return its model and what the card says."""
    loaded = load_model(request.checkpoint, request.model, request.num_classes, use_ema=request.use_ema)
    classes, names = loaded.model.num_classes, request.label_names
    if names is not None and len(names) != classes:
        raise InputError(f'--label-names gives {len(names)} names for a model with {classes} classes.')
    data_config = data_config_from_args(train_args, {k: getattr(request, k) for k in (
        'input_size', 'mean', 'std', 'crop_pct', 'interpolation')})
    model_config = {'pretrained_cfg': {'license': request.license}, **({'label_names': names} if names else {})}
    try:
        save_timm_hf_folder(loaded.model, folder, model_config=model_config, data_config=data_config)
    except (ValueError, AssertionError) as e:
        raise InputError(f'preprocessing settings do not fit {loaded.architecture}: {e}') from None
    if train_args:
        import yaml
        with open(os.path.join(folder, ARGS_FILE), 'w', encoding='utf-8') as f:  # local paths cut to their last name
            f.write(_mask(yaml.safe_dump(public_train_args(train_args), sort_keys=False)))
    with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
        published_cfg = json.load(f).get('pretrained_cfg', {})  # as timm resolved it
    base, epoch = os.path.basename(request.checkpoint), loaded.info.epoch
    published = f'{"EMA weights" if request.use_ema else "weights"} of `{base}`' + (
        f' (epoch {epoch})' if epoch is not None else '')
    return loaded, dict(published=published, published_epoch=epoch, pick_best_row='best' in base, label_names=names,
                        pretrained_cfg=published_cfg,
                        metrics_match_weights=request.use_ema == _ema_evaluated(train_args))


def prepare_push_folder(request: PushRequest, folder: str) -> None:
    """Write everything ``request`` publishes into the empty ``folder``; every check happens here, before the push.

    A checkpoint file becomes timm's Hub format with a model card, and the run's ``args.yaml`` and ``summary.csv``
    (with its curves) when they lie beside it; a timm Hub folder is copied as it is, with a card if it has none.

    Raises:
        InputError: naming what does not fit.
    """
    folder_mode = os.path.isdir(request.checkpoint)
    run_dir = request.checkpoint if folder_mode else os.path.dirname(os.path.abspath(request.checkpoint))
    train_args, rows = read_train_args(run_dir), read_summary(os.path.join(run_dir, SUMMARY_FILE))
    loaded, described = (_copy_hub_folder if folder_mode else _convert_checkpoint)(request, folder, train_args)
    if rows and not os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
        shutil.copyfile(os.path.join(run_dir, SUMMARY_FILE), os.path.join(folder, SUMMARY_FILE))
    if os.path.isfile(os.path.join(folder, CARD_FILE)):
        return  # the Hub folder brought its own card
    curves = rows and plot_training_curves(rows, os.path.join(folder, CURVES_FILE), title=request.repo_id)
    model = loaded.model
    write_model_card(folder, build_model_card(
        request.repo_id, architecture=loaded.architecture, num_classes=int(model.num_classes), train_args=train_args,
        summary_rows=rows, curves_file=CURVES_FILE if curves else None, license=request.license,
        num_params=sum(p.numel() for p in model.parameters()), dataset_id=request.dataset_id, **described))


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
    choices = {'best': ('model_best.pth.tar', _ema_evaluated(train_args)),  # the weights the best metric measured
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


def dataset_label_names(dataset: Any, num_classes: Optional[int] = None) -> Optional[List[str]]:
    """Class names of a timm / torchvision dataset (or of one it wraps) in label order.

    Returns:
        The names, or None when unknown or when there are not ``num_classes`` of them.
    """
    for _ in range(5):  # a dataset wrapping a dataset wrapping ...
        for source in (getattr(dataset, 'reader', None), dataset):
            class_to_idx = getattr(source, 'class_to_idx', None)
            names = getattr(source, 'classes', None)
            if isinstance(class_to_idx, dict) and sorted(class_to_idx.values()) == list(range(len(class_to_idx))):
                names = sorted(class_to_idx, key=class_to_idx.get)
            if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
                return list(names) if num_classes in (None, len(names)) else None
        dataset = getattr(dataset, 'dataset', None)
    return None


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


class _PushParser(argparse.ArgumentParser):
    """argparse whose errors never show a token: they quote the values they refuse (e.g. ``--token hf_...``)."""

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None):
        self._secrets = _token_like(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        hint = '; the token comes from HF_TOKEN or `hf auth login`, never from an option' if 'token' in message else ''
        super().error(_mask(message, getattr(self, '_secrets', ())) + hint)


def create_push_parser() -> argparse.ArgumentParser:
    """The ``timm-stim push`` parser: one argument per ``PushRequest`` field."""
    parser = _PushParser(prog='timm-stim push', description='Publish a checkpoint to the Hugging Face Hub in timm\'s '
                         'format, loadable with timm.create_model("hf-hub:USER/REPO", pretrained=True). The token '
                         'comes from HF_TOKEN or `hf auth login`, the endpoint from HF_ENDPOINT.')
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
