"""Publish trained models to the Hugging Face Hub in timm's own format.

``timm-stim push CHECKPOINT USER/REPO [--model NAME] ...`` and ``train_stim.py ... --push-to-hub
USER/REPO`` publish what timm itself publishes (``timm.models.push_to_hf_hub``):
``model.safetensors`` and ``config.json`` written by ``timm.models.save_for_hf``, plus a
``README.md`` model card (``timm_stim.tools.modelcard``), the run's ``args.yaml`` and ``summary.csv``
and ``training_curves.png``. The result loads anywhere with
``timm.create_model("hf-hub:USER/REPO", pretrained=True)``.

This module publishes only: checkpoints are read by ``timm_stim.tools.checkpoints`` (safely), the card
comes from ``timm_stim.tools.modelcard``, the curves from ``timm_stim.tools.summary``.

Safety: the token comes from ``HF_TOKEN`` or huggingface_hub's login cache (never a flag) and
is never written or printed; the upload folder is built in a temporary directory, so a failed
push changes no local file. huggingface_hub retries its upload requests itself (``preupload``,
file transfers and, with hf_xet, the commit to an explicit branch; on connection errors, 408,
429 and 5xx); it does not retry creating a repository or a branch, which are idempotent here
(``exist_ok``), so only those are retried here, with exponential backoff. A failure raises
``HubPushError`` with a token-free message and the ``python -m timm_stim push ...`` command that
retries.

A model card on the Hub is kept when it was edited there (or not written by timm-stim), as
timm's ``push_to_hf_hub`` keeps an existing card; ``--replace-card`` replaces it. A card that
timm-stim wrote and nobody changed is updated with the new weights' metrics.
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
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .checkpoints import (ARGS_FILE, CHECKPOINT_EXTS, LOCAL_DIR, LoadedModel, data_config_from_args, load_model,
                          read_train_args)
from ..errors import CommandFailed, InputError, command_main
from .modelcard import DEFAULT_LICENSE, build_model_card, is_unedited, public_train_args, stamp
from .summary import CURVES_FILE, SUMMARY_FILE, plot_training_curves, read_summary

__all__ = [
    'HubPushError', 'PushRequest', 'check_repo_id', 'check_push_options', 'warn_if_no_token', 'push_folder',
    'save_timm_hf_folder',
    'write_model_card', 'prepare_push_folder', 'push', 'push_training_output', 'push_after_training',
    'dataset_label_names', 'retry_command', 'create_push_parser', 'main',
]

_logger = logging.getLogger(__name__)

CARD_FILE = 'README.md'
DEFAULT_COMMIT_MESSAGE = 'Upload model with timm-stim'

# Repository / branch creation is retried RETRY_ATTEMPTS times in all; the first retry waits
# $TIMM_STIM_HUB_RETRY_DELAY seconds (default 2), each next one twice as long.
RETRY_ATTEMPTS = 4
RETRY_DELAY_ENV = 'TIMM_STIM_HUB_RETRY_DELAY'
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)  # what huggingface_hub's own http_backoff retries

# Label names longer than this (joined) are left out of a printed retry command.
MAX_INLINE_LABELS_CHARS = 2000

# pretrained_cfg keys describing the *default* pretrained weights of the architecture (their
# tag, source, paper, license, test-time recommendations): not true of the weights published here.
SOURCE_CFG_KEYS = ('tag', 'hf_hub_id', 'hf_hub_filename', 'url', 'file', 'source', 'state_dict', 'origin_url',
                   'paper_ids', 'paper_name', 'notes', 'license', 'description', 'test_input_size',
                   'test_crop_pct', 'test_pool_size')


class HubPushError(CommandFailed):
    """Publishing to the Hub failed. The message never contains the token.

    Attributes:
        repo_id: the target repository.
        status_code: the HTTP status the Hub answered, if any.
        transient: whether the failure looked temporary (connection error, 408, 429, 5xx).
        retry_command: the ``python -m timm_stim push ...`` command that retries, or None.
        saved_in: the folder whose results are kept (training output or export), else None.
    """

    def __init__(self, message: str, *, repo_id: Optional[str] = None, status_code: Optional[int] = None,
                 transient: bool = False, retry_command: Optional[str] = None, saved_in: Optional[str] = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.status_code = status_code
        self.transient = transient
        self.retry_command = retry_command
        self.saved_in = saved_in

    def report(self) -> str:
        """The multi-line text the command-line front ends print."""
        lines = [f'Publishing to the Hugging Face Hub failed: {self}']
        lines.append(f'The results are saved, unchanged, in {self.saved_in}.' if self.saved_in
                     else 'No local file was changed.')
        if self.retry_command:
            lines += ['Retry with:', f'  {self.retry_command}']
        return '\n'.join(lines)


def check_repo_id(repo_id: str) -> str:
    """Check that ``repo_id`` is a Hub model repository id ``USER/REPO`` (huggingface_hub's rules); return it.

    Raises:
        InputError: with a message saying what is wrong.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if not isinstance(repo_id, str) or repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise InputError(f'{repo_id!r} is not a Hub repository id: expected USER/REPO (or ORG/REPO), '
                         f'e.g. jane/resnet50-stpp.')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InputError(f'{repo_id!r} is not a valid Hub repository id: {e}') from None
    return repo_id


def check_push_options(repo_id: str, revision: Optional[str] = None, create_pr: bool = False) -> None:
    """Check the target of a push before any work: the repository id, and a pull request only against main.

    huggingface_hub's upload opens pull requests against the default branch only.

    Raises:
        InputError: naming the value and the fix.
    """
    check_repo_id(repo_id)
    if create_pr and revision and revision != 'main':
        raise InputError(f'a pull request is opened against main (as huggingface_hub uploads do), not the branch '
                         f'{revision!r}: drop the revision to open it against main, or drop the pull request to '
                         f'commit to {revision!r}.')


def _token() -> Optional[str]:
    from huggingface_hub import get_token
    return get_token()


def hub_endpoint() -> str:
    """The Hub endpoint huggingface_hub uses (``HF_ENDPOINT``, read when it was imported)."""
    from huggingface_hub import constants
    return constants.ENDPOINT


def warn_if_no_token(repo_id: str) -> bool:
    """Log a warning at start of training when no token is found; return whether one is."""
    if _token():
        return True
    _logger.warning(f'--push-to-hub {repo_id}: no Hugging Face token found (HF_TOKEN or `hf auth login`). Training '
                    f'runs, but publishing at the end will fail unless you log in before then.')
    return False


def _scrub(text: str, token: Optional[str], values: Sequence[str] = ()) -> str:
    """``text`` with ``token`` (whatever its length: a server may echo even a short one) and ``values`` as ``***``.

    ``values`` (command-line values that may be tokens) are masked where they stand whole, so that a short one
    blanks out no letters of the message.
    """
    if token:
        text = text.replace(token, '***')
    for value in values:
        text = re.sub(rf'(?<![^\s\'"=]){re.escape(value)}(?![^\s\'",])', '***', text)
    return text


# ---------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------

def _network_errors() -> Tuple[type, ...]:
    """Connection / timeout exception types of the HTTP client huggingface_hub uses (httpx2, httpx or requests)."""
    import importlib
    errors: List[type] = [ConnectionError, TimeoutError]
    for module, names in (('httpx2', ('TimeoutException', 'NetworkError', 'RemoteProtocolError')),
                          ('httpx', ('TimeoutException', 'NetworkError', 'RemoteProtocolError')),
                          ('requests', ('ConnectionError', 'Timeout'))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(mod, name) for name in names if isinstance(getattr(mod, name, None), type)]
    return tuple(errors)


def _as_push_error(what: str, err: BaseException, repo_id: str, token: Optional[str]) -> HubPushError:
    """Turn whatever huggingface_hub / the network raised into a clear, token-free ``HubPushError``."""
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled

    namespace = repo_id.split('/')[0]
    status = None
    transient = False
    if isinstance(err, OfflineModeIsEnabled):
        message = f'{what}: HF_HUB_OFFLINE is set, so huggingface_hub makes no network call. Unset it to publish.'
    elif isinstance(err, HfHubHTTPError) and getattr(err, 'response', None) is not None:
        status = err.response.status_code
        server = (getattr(err, 'server_message', None) or '').strip().splitlines()
        detail = f' ({server[0]})' if server and server[0] else ''
        transient = status in TRANSIENT_STATUS
        message = {
            401: f'{what}: the Hub refused the credentials (401 Unauthorized){detail}. The token from HF_TOKEN or '
                 f'`hf auth login` is invalid or expired.',
            403: f'{what}: the token may not write to {namespace!r} (403 Forbidden){detail}. Use a token with write '
                 f'access to that user or organization.',
        }.get(status, f'{what}: the Hub answered {status}{detail}.')
    elif isinstance(err, _network_errors()):
        transient = True
        message = f'{what}: could not reach the Hub at {hub_endpoint()} ({type(err).__name__}: {err}).'
    else:
        message = f'{what}: {type(err).__name__}: {err}'
    return HubPushError(_scrub(message, token), repo_id=repo_id, status_code=status, transient=transient)


def _retry_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_DELAY_ENV, '2')))
    except ValueError:
        return 2.0


def _with_retries(what: str, fn: Callable[[], Any], repo_id: str, token: Optional[str]) -> Any:
    """``fn()``, retried on transient failures: only for calls huggingface_hub does not retry itself."""
    delay = _retry_delay()
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return fn()
        except Exception as e:  # classified below; the original (with request objects) is not kept
            error = _as_push_error(what, e, repo_id, token)
        if not error.transient or attempt == RETRY_ATTEMPTS:
            if error.transient:
                error = HubPushError(f'{error} Gave up after {RETRY_ATTEMPTS} attempts.', repo_id=repo_id,
                                     status_code=error.status_code, transient=True)
            raise error
        _logger.warning(f'{error} Retrying in {delay:.3g} s (attempt {attempt + 1} of {RETRY_ATTEMPTS}).')
        time.sleep(delay)
        delay *= 2


def _card_on_hub(api, repo_id: str, revision: Optional[str]) -> Optional[str]:
    """The README.md of ``repo_id`` at ``revision``, or None when it has none."""
    from huggingface_hub.errors import EntryNotFoundError
    with tempfile.TemporaryDirectory(prefix='timm_stim_card_') as cache:
        try:
            path = api.hf_hub_download(repo_id, CARD_FILE, revision=revision, cache_dir=cache)
        except EntryNotFoundError:
            return None
        with open(path, encoding='utf-8') as f:
            return f.read()


def _keep_card_on_hub(existing: Optional[str], replace_card: bool, repo_id: str) -> bool:
    """Whether the card on the Hub must be kept (not overwritten by this push); logs what happens."""
    if existing is None:
        return False
    if is_unedited(existing):
        _logger.info(f'Updating the model card of {repo_id}: timm-stim wrote it and it was not edited since.')
        return False
    if replace_card:
        _logger.warning(f'Replacing the model card of {repo_id}, which was edited on the Hub or not written by '
                        f'timm-stim, as --replace-card asks (its previous version stays in the repository history).')
        return False
    _logger.warning(f'Keeping the model card of {repo_id} (README.md): it was edited on the Hub or not written by '
                    f'timm-stim, so this push does not overwrite it; its metrics and configuration may describe '
                    f'earlier weights. Pass --replace-card (train_stim.py: --hub-replace-card) to replace it.')
    return True


def push_folder(folder: str, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
                commit_message: Optional[str] = None, create_pr: bool = False, replace_card: bool = False) -> str:
    """Create ``repo_id`` if needed and upload every file of ``folder`` to it in one commit; return the URL.

    The token comes from ``HF_TOKEN`` or huggingface_hub's login cache; the endpoint is
    huggingface_hub's (``HF_ENDPOINT``). Repository and branch creation are retried on transient
    errors; the upload requests are retried by huggingface_hub itself.

    Args:
        folder: local folder to upload (its layout is kept in the repository).
        repo_id: ``USER/REPO``.
        private: create the repository as private (default: the namespace's default visibility; an
            existing repository keeps its visibility).
        revision: branch to commit to, created from main when it does not exist (default: main).
        commit_message: commit title (default: "Upload model with timm-stim").
        create_pr: open a pull request (against main) with the files instead of committing.
        replace_card: replace a README.md on the Hub even when it was edited there (otherwise kept).

    Returns:
        The repository URL (``{endpoint}/{repo_id}``, plus ``/tree/{revision}`` for a branch), or
        the pull request's URL with ``create_pr``.

    Raises:
        InputError: a bad repository id or folder, or ``create_pr`` with a branch (nothing sent).
        HubPushError: with a clear message that never contains the token.
    """
    check_push_options(repo_id, revision, create_pr)
    if not os.path.isdir(folder):
        raise InputError(f'{folder!r} is not a folder.')
    token = _token()
    if not token:
        raise HubPushError('no Hugging Face token found. Set HF_TOKEN to a token with write access, or run '
                           '`hf auth login`.', repo_id=repo_id)

    from huggingface_hub import HfApi
    from ..version import __version__
    logging.getLogger('httpx2').setLevel(max(logging.getLogger('httpx2').level, logging.WARNING))
    api = HfApi(token=token, library_name='timm-stim', library_version=__version__)
    repo_url = _with_retries(f'creating {repo_id}',
                             lambda: api.create_repo(repo_id, private=True if private else None, exist_ok=True),
                             repo_id, token)
    branch = revision if revision and revision != 'main' else None
    if branch:
        _with_retries(f'creating branch {branch!r} of {repo_id}',
                      lambda: api.create_branch(repo_id, branch=branch, exist_ok=True), repo_id, token)
    keep_card = False
    if os.path.isfile(os.path.join(folder, CARD_FILE)):
        try:
            existing = _card_on_hub(api, repo_id, branch)
        except Exception as e:
            raise _as_push_error(f'reading the model card of {repo_id}', e, repo_id, token) from None
        keep_card = _keep_card_on_hub(existing, replace_card, repo_id)
    try:
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=branch, create_pr=create_pr,
                                   commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
                                   ignore_patterns=[CARD_FILE] if keep_card else None)
    except Exception as e:
        raise _as_push_error(f'uploading to {repo_id}', e, repo_id, token) from None
    if create_pr and commit.pr_url:
        return commit.pr_url
    url = str(repo_url).rstrip('/') if repo_url else f'{api.endpoint}/{repo_id}'
    return f'{url}/tree/{branch}' if branch else url


# ---------------------------------------------------------------------------------------------
# timm's Hub format
# ---------------------------------------------------------------------------------------------

def write_model_card(folder: str, card: Any) -> str:
    """Write ``card`` (a ``ModelCard`` or text) as ``folder/README.md``, stamped and token-free; return the path."""
    path = os.path.join(folder, CARD_FILE)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(stamp(_scrub(str(card), _token())))
    return path


def save_timm_hf_folder(model, folder: str, *, model_config: Optional[Dict[str, Any]] = None,
                        data_config: Optional[Dict[str, Any]] = None, model_card: Any = None,
                        extra_files: Optional[Dict[str, str]] = None) -> str:
    """Write ``model`` in timm's Hub format: ``model.safetensors`` + ``config.json`` (+ ``README.md``).

    ``timm.models.save_for_hf`` writes the files; the architecture's default pretrained tag,
    source, paper and license are left out of ``config.json`` first, since they describe the
    architecture's default weights, not these.

    Args:
        model: a timm model.
        folder: output folder (created if needed).
        model_config: extra config (e.g. ``label_names``), as ``save_for_hf`` takes it.
        data_config: preprocessing used with these weights (input_size, mean, std, crop_pct,
            interpolation, ...), as ``save_for_hf`` takes it.
        model_card: README.md content: a ``huggingface_hub.ModelCard`` or a string.
        extra_files: {name in folder: local path} copied next to the weights.

    Returns:
        The folder.
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
    for name, path in (extra_files or {}).items():
        shutil.copyfile(path, os.path.join(folder, name))
    return folder


# ---------------------------------------------------------------------------------------------
# Checkpoints -> timm Hub folder -> push
# ---------------------------------------------------------------------------------------------

@dataclass
class PushRequest:
    """What to publish and where: the options of ``timm-stim push``, as objects.

    Attributes:
        checkpoint: a checkpoint file, or a folder in timm's Hub format.
        repo_id: ``USER/REPO``.
        model: timm architecture (default: args.yaml beside the checkpoint, or config.json).
        num_classes: classes of the checkpoint (default: its classifier).
        use_ema: publish the checkpoint's EMA weights.
        label_names: class names in label order.
        input_size, mean, std, crop_pct, interpolation: preprocessing (default: args.yaml / the model's).
        license: the card's license.
        dataset_id: Hub dataset id for the card.
        private, revision, create_pr, commit_message: as ``push_folder`` takes them.
        replace_card: replace a card that was edited on the Hub.
    """
    checkpoint: str
    repo_id: str
    model: Optional[str] = None
    num_classes: Optional[int] = None
    use_ema: bool = False
    label_names: Optional[List[str]] = None
    input_size: Optional[List[int]] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    crop_pct: Optional[float] = None
    interpolation: Optional[str] = None
    license: str = DEFAULT_LICENSE
    dataset_id: Optional[str] = None
    private: bool = False
    revision: Optional[str] = None
    create_pr: bool = False
    replace_card: bool = False
    commit_message: Optional[str] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> 'PushRequest':
        """The request of parsed ``push`` options (reads ``--label-names @FILE``)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        values['label_names'] = _parse_label_names(args.label_names)
        return cls(**values)

    def argv(self) -> List[str]:
        """The ``push`` arguments of this request (label names only when they fit on a command line)."""
        argv = [self.checkpoint, self.repo_id]
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default
            if f.name in ('checkpoint', 'repo_id') or value == default:
                continue
            option = '--' + f.name.replace('_', '-')
            if isinstance(value, bool):
                argv.append(option)
            elif f.name == 'label_names':
                joined = ','.join(str(n) for n in value)
                if len(joined) <= MAX_INLINE_LABELS_CHARS and all(',' not in str(n) for n in value):
                    argv += [option, joined]
            elif isinstance(value, (list, tuple)):
                argv += [option, *[str(v) for v in value]]
            else:
                argv += [option, str(value)]
        return argv


def retry_command(request: PushRequest) -> str:
    """The shell command ``python -m timm_stim push ...`` that makes ``request`` (quoted)."""
    return 'python -m timm_stim push ' + shlex.join(request.argv())


def _parse_label_names(value: Optional[str]) -> Optional[List[str]]:
    if not value:
        return None
    if value.startswith('@'):
        path = value[1:]
        try:
            with open(path, encoding='utf-8') as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise InputError(f'--label-names {value}: could not read {path}: {e}') from None
    else:
        names = [n.strip() for n in value.split(',')]
    return names or None


def _load_folder(request: PushRequest) -> LoadedModel:
    """The model of a folder in timm's Hub format, after checking that no checkpoint-only option is given."""
    source = request.checkpoint
    if not os.path.isfile(os.path.join(source, 'config.json')):
        raise InputError(f'{source} is a folder without config.json; expected a checkpoint file or a folder in '
                         f'timm\'s Hub format (config.json + model.safetensors, from timm.models.save_for_hf).')
    if (request.use_ema or request.label_names or request.input_size or request.mean or request.std
            or request.crop_pct or request.interpolation):
        raise InputError(f'{source} is already in timm\'s Hub format (its config.json holds the labels and '
                         f'preprocessing); --use-ema, --label-names and the preprocessing options apply to '
                         f'checkpoint files only.')
    return load_model(f'{LOCAL_DIR}{os.path.abspath(source)}', request.model, request.num_classes)


def prepare_push_folder(request: PushRequest, folder: str) -> None:
    """Write everything ``request`` publishes into ``folder`` (an empty temporary folder).

    A checkpoint file becomes timm's Hub format (``model.safetensors`` + ``config.json``), with a
    model card and, when they lie beside it, the run's ``args.yaml`` (local paths reduced to their
    last component) and ``summary.csv`` with its curves. A timm Hub folder is copied as it is (a
    card is added when it has none). Every check happens here, before any network call.

    Raises:
        InputError: naming what does not fit.
    """
    source = request.checkpoint
    folder_mode = os.path.isdir(source)
    run_dir = source if folder_mode else os.path.dirname(os.path.abspath(source))
    train_args = read_train_args(run_dir)
    rows = read_summary(os.path.join(run_dir, SUMMARY_FILE))
    ema_evaluated = bool(train_args.get('model_ema')) and not train_args.get('model_ema_force_cpu')

    if folder_mode:
        loaded = _load_folder(request)
        for entry in sorted(os.listdir(source)):
            path = os.path.join(source, entry)
            if os.path.isfile(path) and not entry.startswith('.'):
                shutil.copyfile(path, os.path.join(folder, entry))
        if os.path.isfile(os.path.join(folder, CARD_FILE)):
            return  # the folder brought its own model card
        epoch, pick_best, metrics_match = None, False, not ema_evaluated
        published = f'the weights of `{os.path.basename(os.path.normpath(source))}/`'
        label_names = loaded.model.pretrained_cfg.get('label_names')
        data_config = loaded.data_config
    else:
        loaded = load_model(source, request.model, request.num_classes, use_ema=request.use_ema)
        label_names = request.label_names
        if label_names is not None and len(label_names) != loaded.model.num_classes:
            raise InputError(f'--label-names gives {len(label_names)} names for a model with '
                             f'{loaded.model.num_classes} classes.')
        data_config = data_config_from_args(train_args, dict(
            input_size=request.input_size, mean=request.mean, std=request.std, crop_pct=request.crop_pct,
            interpolation=request.interpolation))
        model_config: Dict[str, Any] = {'pretrained_cfg': {'license': request.license}}
        if label_names:
            model_config['label_names'] = label_names
        try:
            save_timm_hf_folder(loaded.model, folder, model_config=model_config, data_config=data_config)
        except (ValueError, AssertionError) as e:
            raise InputError(f'preprocessing settings do not fit {loaded.architecture}: {e}') from None
        with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
            data_config = json.load(f).get('pretrained_cfg', {})  # as published (resolved by timm)
        if train_args:
            import yaml
            with open(os.path.join(folder, ARGS_FILE), 'w', encoding='utf-8') as f:
                f.write(_scrub(yaml.safe_dump(public_train_args(train_args), sort_keys=False), _token()))
        if rows:
            shutil.copyfile(os.path.join(run_dir, SUMMARY_FILE), os.path.join(folder, SUMMARY_FILE))
        base = os.path.basename(source)
        epoch, pick_best = loaded.info.epoch, 'best' in base
        metrics_match = request.use_ema == ema_evaluated
        published = (f'{"EMA weights" if request.use_ema else "weights"} of `{base}`'
                     + (f' (epoch {epoch})' if epoch is not None else ''))

    curves = CURVES_FILE if rows and plot_training_curves(rows, os.path.join(folder, CURVES_FILE),
                                                          title=request.repo_id) else None
    model = loaded.model
    card = build_model_card(
        request.repo_id, architecture=loaded.architecture, num_classes=int(model.num_classes),
        pretrained_cfg=data_config, train_args=train_args, summary_rows=rows, published=published,
        published_epoch=epoch, metrics_match_weights=metrics_match, pick_best_row=pick_best, curves_file=curves,
        num_params=sum(p.numel() for p in model.parameters()), label_names=label_names, license=request.license,
        dataset_id=request.dataset_id)
    write_model_card(folder, card)


def _check_request(request: PushRequest) -> None:
    check_push_options(request.repo_id, request.revision, request.create_pr)
    if not os.path.exists(request.checkpoint):
        raise InputError(f'checkpoint {request.checkpoint!r} does not exist.')
    if os.path.isfile(request.checkpoint) and not request.checkpoint.endswith(CHECKPOINT_EXTS):
        raise InputError(f'checkpoint {request.checkpoint!r}: expected a {", ".join(CHECKPOINT_EXTS)} file or a '
                         f'folder in timm\'s Hub format.')


def push(request: PushRequest) -> str:
    """Publish ``request.checkpoint`` to ``request.repo_id``; return the URL.

    Everything local is checked before any network call (``InputError``); the upload folder
    is a temporary directory, so no local file is changed whatever happens.

    Raises:
        InputError: bad input, nothing sent.
        HubPushError: the push failed (``retry_command`` set).
    """
    _check_request(request)
    with tempfile.TemporaryDirectory(prefix='timm_stim_push_') as tmp:
        prepare_push_folder(request, tmp)
        _logger.info(f'Publishing {", ".join(sorted(os.listdir(tmp)))} to {request.repo_id} on {hub_endpoint()}')
        try:
            return push_folder(tmp, request.repo_id, private=request.private, revision=request.revision,
                               commit_message=request.commit_message, create_pr=request.create_pr,
                               replace_card=request.replace_card)
        except HubPushError as e:
            e.retry_command = retry_command(request)
            raise


def _training_request(output_dir: str, repo_id: str, which: str, train_args: Dict[str, Any],
                      **options: Any) -> PushRequest:
    """The ``PushRequest`` that publishes the ``which`` weights of a ``train_stim.py`` output folder."""
    ema_evaluated = bool(train_args.get('model_ema')) and not train_args.get('model_ema_force_cpu')
    choices = {'best': ('model_best.pth.tar', ema_evaluated),  # the weights the best metric was measured on
               'last': ('last.pth.tar', False), 'ema': ('last.pth.tar', True)}
    if which not in choices:
        raise InputError(f'--hub-which {which!r}: expected best, last or ema.')
    checkpoint, use_ema = choices[which]
    return PushRequest(os.path.join(os.path.abspath(output_dir), checkpoint), repo_id,
                       model=train_args.get('model') or None, num_classes=train_args.get('num_classes'),
                       use_ema=use_ema, **options)


def push_training_output(output_dir: str, repo_id: str, *, which: str = 'best', private: bool = False,
                         revision: Optional[str] = None, label_names: Optional[Sequence[str]] = None,
                         create_pr: bool = False, replace_card: bool = False,
                         train_args: Optional[Dict[str, Any]] = None) -> str:
    """Publish the result of a ``train_stim.py`` run (its output folder); return the URL.

    ``which``: ``best`` (model_best.pth.tar; its EMA weights when EMA was validated, as for
    model_best.safetensors), ``last`` (last.pth.tar) or ``ema`` (the EMA weights of last.pth.tar).
    ``train_args``: the run's options (model, classes, EMA); default: its ``args.yaml``. The
    card always describes the ``args.yaml`` it publishes beside the weights.

    Raises:
        HubPushError: ``retry_command`` set; nothing in ``output_dir`` was changed.
    """
    request = _training_request(
        output_dir, repo_id, which, read_train_args(output_dir) if train_args is None else train_args,
        private=private, revision=revision, label_names=list(label_names) if label_names else None,
        create_pr=create_pr, replace_card=replace_card)
    if request.label_names and '--label-names' not in request.argv():
        _logger.info('The label names are too long for a retry command; add --label-names @FILE to it (one name '
                     'per line) to include them.')
    try:
        return push(request)
    except InputError as e:  # training is done: a bad checkpoint is a failed publication, with a retry
        raise HubPushError(str(e), repo_id=repo_id, retry_command=retry_command(request)) from None


def push_after_training(args: argparse.Namespace, output_dir: str, dataset_train=None, *,
                        interrupted: bool = False) -> Optional[str]:
    """``train_stim.py --push-to-hub``: publish the run's ``--hub-which`` weights (rank 0, after training).

    Label names come from the training dataset when it knows its classes. An interrupted run
    publishes nothing and logs the command that publishes what was saved.

    Raises:
        HubPushError: with ``retry_command`` and ``saved_in`` set; ``output_dir`` is unchanged.
    """
    label_names = dataset_label_names(dataset_train, args.num_classes) if dataset_train is not None else None
    options = dict(private=args.hub_private, revision=args.hub_revision, create_pr=args.hub_create_pr,
                   replace_card=args.hub_replace_card)
    if interrupted:
        request = _training_request(output_dir, args.push_to_hub, args.hub_which, vars(args),
                                    label_names=label_names, **options)
        _logger.warning(f'Training was interrupted: nothing is published to {args.push_to_hub}. To publish what was '
                        f'saved:\n  {retry_command(request)}')
        return None
    _logger.info(f'Publishing the {args.hub_which} weights to the Hugging Face Hub repository {args.push_to_hub}')
    try:
        url = push_training_output(output_dir, args.push_to_hub, which=args.hub_which, label_names=label_names,
                                   train_args=vars(args), **options)
    except HubPushError as e:
        e.saved_in = output_dir
        raise
    _logger.info(f'Published to {url}')
    return url


def dataset_label_names(dataset, num_classes: Optional[int] = None) -> Optional[List[str]]:
    """Class names of a timm / torchvision dataset in label order, or None when unknown."""
    seen = 0
    while dataset is not None and seen < 5:
        reader = getattr(dataset, 'reader', None)
        for source in (reader, dataset):
            class_to_idx = getattr(source, 'class_to_idx', None)
            if isinstance(class_to_idx, dict) and class_to_idx:
                names = [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
                if sorted(class_to_idx.values()) == list(range(len(names))):
                    return names if num_classes in (None, len(names)) else None
            classes = getattr(source, 'classes', None)
            if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
                return list(classes) if num_classes in (None, len(classes)) else None
        dataset = getattr(dataset, 'dataset', None)
        seen += 1
    return None


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

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
        super().error(_scrub(message, _token(), getattr(self, '_secrets', ())) + hint)


def create_push_parser() -> argparse.ArgumentParser:
    parser = _PushParser(
        prog='timm-stim push',
        description='Publish a checkpoint to the Hugging Face Hub in timm\'s format (model.safetensors, config.json, '
                    'README.md model card, args.yaml, summary.csv), loadable with '
                    'timm.create_model("hf-hub:USER/REPO", pretrained=True). The token comes from HF_TOKEN or '
                    '`hf auth login`; the endpoint from HF_ENDPOINT.')
    parser.add_argument('checkpoint', metavar='CHECKPOINT',
                        help='a timm checkpoint (.pth.tar, .pth, .safetensors; args.yaml and summary.csv beside it '
                             'are published and used for the model card) or a folder in timm\'s Hub format '
                             '(config.json + model.safetensors)')
    parser.add_argument('repo_id', metavar='USER/REPO', help='Hub model repository (created if needed)')
    parser.add_argument('--model', default=None, metavar='NAME',
                        help='timm architecture (default: from args.yaml beside the checkpoint or config.json)')
    parser.add_argument('--num-classes', type=int, default=None, metavar='N',
                        help='number of classes of the checkpoint (default: its classifier)')
    parser.add_argument('--use-ema', action='store_true', default=False,
                        help='publish the EMA weights (state_dict_ema) of a timm checkpoint')
    parser.add_argument('--label-names', default=None, metavar='A,B,... | @FILE',
                        help='class names in label order, comma-separated or @FILE with one per line')
    parser.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                        help='input size the weights expect (default: args.yaml, else the model default)')
    parser.add_argument('--mean', type=float, nargs='+', default=None, help='normalization mean')
    parser.add_argument('--std', type=float, nargs='+', default=None, help='normalization std')
    parser.add_argument('--crop-pct', type=float, default=None, help='center crop fraction at evaluation')
    parser.add_argument('--interpolation', default=None, help='resize interpolation (bilinear, bicubic, ...)')
    parser.add_argument('--license', default=DEFAULT_LICENSE, help=f'license of the card (default: {DEFAULT_LICENSE})')
    parser.add_argument('--dataset-id', default=None, metavar='HUB_DATASET',
                        help='Hub dataset id for the card\'s `datasets` (default: from args.yaml when known)')
    parser.add_argument('--private', action='store_true', default=False, help='create the repository as private')
    parser.add_argument('--revision', default=None, metavar='BRANCH', help='branch to push to (default: main)')
    parser.add_argument('--create-pr', action='store_true', default=False,
                        help='open a pull request with the files instead of committing to the branch')
    parser.add_argument('--replace-card', action='store_true', default=False,
                        help='replace the README.md on the Hub even when it was edited there (default: keep an '
                             'edited card; a card timm-stim wrote and nobody changed is updated)')
    parser.add_argument('--commit-message', default=None, help=f'default: "{DEFAULT_COMMIT_MESSAGE}"')
    return parser


def _push_command(argv: Sequence[str]) -> int:
    args = create_push_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stderr)
    logging.getLogger('httpx2').setLevel(logging.WARNING)
    try:
        request = PushRequest.from_args(args)
        url = push(request)
    except InputError as e:
        raise InputError(f'{e}\nNothing was sent to the Hub.') from None
    print(f'Published to {url}')
    print(f'Load it with: timm.create_model("hf-hub:{request.repo_id}'
          f'{"@" + request.revision if request.revision else ""}", pretrained=True)')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``timm-stim push``: 0 published; exits 2 on bad input (nothing sent), 1 when the push failed."""
    return command_main(_push_command, argv)


if __name__ == '__main__':
    sys.exit(main())
