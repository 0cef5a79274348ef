"""Publish a prepared folder to the Hugging Face Hub: ``push_folder`` and the checks and retries around it.

huggingface_hub does the publishing (``get_token``, ``validate_repo_id``, ``HfApi.create_repo``, ``create_branch``,
``upload_folder``, which commits with ``parent_commit`` and retries its own requests). This module adds what it does
not do: retrying the steps it does not retry (measured: docs/hub.md), keeping a card edited on the Hub and never
showing the token. ``timm_stim.tools.hub_folder`` prepares the folder in timm's format; ``timm_stim.tools.push`` is
``timm-stim push`` and ``train_stim.py --push-to-hub``.
"""
import logging
import os
import tempfile
import time
from typing import Any, Callable, Optional, Tuple

from ..errors import CommandFailed, InputError
from ..tokens import mask_tokens
from .modelcard import is_unedited

__all__ = ['HubPushError', 'check_push_options', 'warn_if_no_token', 'push_folder']

_logger = logging.getLogger(__name__)

CARD_FILE = 'README.md'
DEFAULT_COMMIT_MESSAGE = 'Upload model with timm-stim'
# The steps huggingface_hub does not retry (creating the repository or branch, reading the card) are tried
# RETRY_ATTEMPTS times in all; the first retry waits $TIMM_STIM_HUB_RETRY_DELAY s (default 2), each next twice as long.
RETRY_ATTEMPTS = 4
RETRY_DELAY_ENV = 'TIMM_STIM_HUB_RETRY_DELAY'
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)  # what huggingface_hub's own http_backoff retries
HEAD_MOVED = 412  # the Hub refuses a commit whose parent_commit is no longer the head of its branch




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
        super().__init__(mask_tokens(message))
        self.repo_id, self.status_code, self.transient = repo_id, status_code, transient
        self.retry_command, self.saved_in = retry_command, saved_in

    def report(self) -> str:
        """The text the command-line front ends print: what failed, what is kept, how to retry."""
        kept = (f'The results are saved, unchanged, in {self.saved_in}.' if self.saved_in
                else 'No local file was changed.')
        retry = f'\nRetry with:\n  {self.retry_command}' if self.retry_command else ''
        return mask_tokens(f'Publishing to the Hugging Face Hub failed: {self}\n{kept}{retry}')


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
