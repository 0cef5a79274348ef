"""Publish trained models to the Hugging Face Hub in timm's own format.

``python -m timm_stim push CHECKPOINT USER/REPO [--model NAME] ...`` and
``train_stim.py ... --push-to-hub USER/REPO`` publish what timm itself publishes
(``timm.models.push_to_hf_hub``): ``model.safetensors`` and ``config.json`` written by
``timm.models.save_for_hf``, plus a ``README.md`` model card (huggingface_hub's ``ModelCard``
with ``model-index`` results, the stimulative-training configuration and training arguments)
and ``training_curves.png``. The result loads anywhere with
``timm.create_model("hf-hub:USER/REPO", pretrained=True)``.

Safety: the token comes from ``HF_TOKEN`` or huggingface_hub's login cache (never a flag) and
is never written or printed; the upload folder is built in a temporary directory, so a failed
push changes no local file; transient errors (connection errors, 408, 429, 5xx) are retried
with exponential backoff; a failure raises ``HubPushError`` with a token-free message, and the
command-line front ends print the exact ``python -m timm_stim push ...`` command that retries.

Reusable pieces: ``push_folder`` (create the repo, upload a folder with retries, return the
URL), ``save_timm_hf_folder`` (write a model in timm's Hub format), ``build_model_card``,
``plot_training_curves`` and ``check_repo_id``.
"""
import argparse
import csv
import difflib
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    'HubPushError', 'PushInputError', 'check_repo_id', 'push_folder', 'save_timm_hf_folder', 'build_model_card',
    'plot_training_curves', 'read_summary', 'push_checkpoint', 'push_training_output', 'push_after_training',
    'dataset_label_names',
    'retry_command', 'main',
]

_logger = logging.getLogger(__name__)

CURVES_FILE = 'training_curves.png'
ARGS_FILE = 'args.yaml'
SUMMARY_FILE = 'summary.csv'
DEFAULT_LICENSE = 'apache-2.0'
DEFAULT_COMMIT_MESSAGE = 'Upload model with timm-stim'

# Transient failures are retried RETRY_ATTEMPTS times in all; the first retry waits
# $TIMM_STIM_HUB_RETRY_DELAY seconds (default 2), each next one twice as long.
RETRY_ATTEMPTS = 4
RETRY_DELAY_ENV = 'TIMM_STIM_HUB_RETRY_DELAY'
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)

# Label names longer than this (joined) are left out of a printed retry command.
_MAX_INLINE_LABELS_CHARS = 2000

# Hub dataset ids of timm dataset names whose Hub id is unambiguous (for the card's `datasets`).
_KNOWN_DATASETS = {
    'torch/cifar10': 'uoft-cs/cifar10',
    'torch/cifar100': 'uoft-cs/cifar100',
    'torch/mnist': 'ylecun/mnist',
    'torch/fashion_mnist': 'zalando-datasets/fashion_mnist',
    'torch/imagenet': 'ILSVRC/imagenet-1k',
    'tfds/imagenet2012': 'ILSVRC/imagenet-1k',
}

# pretrained_cfg keys describing the *default* pretrained weights of the architecture (their
# tag, source, paper, license, test-time recommendations): not true of the weights published here.
_SOURCE_CFG_KEYS = ('tag', 'hf_hub_id', 'hf_hub_filename', 'url', 'file', 'source', 'state_dict', 'origin_url',
                    'paper_ids', 'paper_name', 'notes', 'license', 'description', 'test_input_size',
                    'test_crop_pct', 'test_pool_size')

# args.yaml keys that describe this machine / run rather than the training recipe.
_LOCAL_ARG_KEYS = ('output', 'resume', 'data', 'local_rank', 'rank', 'world_size', 'device_id', 'distributed',
                   'push_to_hub', 'hub_private', 'hub_revision', 'hub_which', 'config', 'wandb_resume_id')
# args.yaml keys holding local paths: only their last component is shown.
_PATH_ARG_KEYS = ('data_dir', 'initial_checkpoint', 'pretrained_path', 'class_map')

_CITATION = """@inproceedings{ye2022stimulative,
  title     = {Stimulative Training of Residual Networks: A Social Psychology Perspective of Loafing},
  author    = {Ye, Peng and others},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2022}
}
@article{ye2023stimulative,
  title   = {Stimulative Training++: Go Beyond The Performance Limits of Residual Networks},
  author  = {Ye, Peng and others},
  journal = {arXiv preprint arXiv:2305.02507},
  year    = {2023}
}"""


# ---------------------------------------------------------------------------------------------
# Errors and checks
# ---------------------------------------------------------------------------------------------

class HubPushError(RuntimeError):
    """Publishing to the Hub failed. The message never contains the token.

    Attributes:
        repo_id: the target repository.
        status_code: the HTTP status the Hub answered, if any.
        transient: whether the failure looked temporary (connection error, 408, 429, 5xx).
        retry_command: the ``python -m timm_stim push ...`` command that retries (set by the
            front ends that know it), or None.
        saved_in: the training output folder when publishing followed training, else None.
    """

    def __init__(self, message: str, *, repo_id: Optional[str] = None, status_code: Optional[int] = None,
                 transient: bool = False, retry_command: Optional[str] = None, saved_in: Optional[str] = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.status_code = status_code
        self.transient = transient
        self.retry_command = retry_command
        self.saved_in = saved_in  # the training output folder, when publishing followed training

    def report(self) -> str:
        """The multi-line text the command-line front ends print."""
        lines = [f'Publishing to the Hugging Face Hub failed: {self}']
        if self.saved_in:
            lines.append(f'The training results are saved, unchanged, in {self.saved_in}.')
        else:
            lines.append('No local file was changed.')
        if self.retry_command:
            lines += ['Retry with:', f'  {self.retry_command}']
        return '\n'.join(lines)


class PushInputError(ValueError):
    """Bad input to ``push``, found before any network call."""


_REPO_PART = re.compile(r'^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$')


def check_repo_id(repo_id: str) -> str:
    """Check that ``repo_id`` is a Hub model repository id ``USER/REPO``; return it.

    Raises:
        ValueError: with a message saying what is wrong.
    """
    if not isinstance(repo_id, str) or repo_id.count('/') != 1:
        raise ValueError(f'{repo_id!r} is not a Hub repository id: expected USER/REPO (or ORG/REPO), '
                         f'e.g. jane/resnet50-stpp.')
    namespace, name = repo_id.split('/')
    for label, part in (('user or organization', namespace), ('repository name', name)):
        if not part:
            raise ValueError(f'{repo_id!r}: the {label} is empty; expected USER/REPO.')
        if not _REPO_PART.match(part) or '--' in part or '..' in part:
            raise ValueError(f'{repo_id!r}: the {label} {part!r} may only contain letters, digits, "-", "_" and '
                             f'".", must start and end with a letter or digit and cannot contain "--" or "..".')
    if len(name) > 96:
        raise ValueError(f'{repo_id!r}: the repository name is longer than 96 characters.')
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(repo_id)
    except ValueError as e:
        raise ValueError(f'{repo_id!r} is not a valid Hub repository id: {e}') from None
    return repo_id


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


# ---------------------------------------------------------------------------------------------
# Upload with retries
# ---------------------------------------------------------------------------------------------

def _retry_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_DELAY_ENV, '2')))
    except ValueError:
        return 2.0


def _scrub(text: str, token: Optional[str]) -> str:
    if token and len(token) >= 8:  # real tokens are long; a short test value would mangle the text
        text = text.replace(token, '***')
    return text


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
        if status == 401:
            message = (f'{what}: the Hub refused the credentials (401 Unauthorized){detail}. The token from HF_TOKEN '
                       f'or `hf auth login` is invalid or expired.')
        elif status == 403:
            message = (f'{what}: the token may not write to {namespace!r} (403 Forbidden){detail}. Use a token with '
                       f'write access to that user or organization.')
        elif status in _TRANSIENT_STATUS:
            transient = True
            message = f'{what}: the Hub answered {status}{detail}.'
        else:
            message = f'{what}: the Hub answered {status}{detail}.'
    elif isinstance(err, _network_errors()):
        transient = True
        message = f'{what}: could not reach the Hub at {hub_endpoint()} ({type(err).__name__}: {err}).'
    else:
        message = f'{what}: {type(err).__name__}: {err}'
    return HubPushError(_scrub(message, token), repo_id=repo_id, status_code=status, transient=transient)


def _with_retries(what: str, fn: Callable[[], Any], repo_id: str, token: Optional[str]) -> Any:
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


def push_folder(folder: str, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
                commit_message: Optional[str] = None) -> str:
    """Create ``repo_id`` if needed and upload every file of ``folder`` to it; return the URL.

    The token comes from ``HF_TOKEN`` or huggingface_hub's login cache; the endpoint is
    huggingface_hub's (``HF_ENDPOINT``). Transient errors are retried with exponential backoff.
    ``revision`` is a branch; it is created (from main) when it does not exist yet.

    Args:
        folder: local folder to upload (its layout is kept in the repository).
        repo_id: ``USER/REPO``.
        private: create the repository as private (default: the namespace's default visibility; an
            existing repository keeps its visibility).
        revision: branch to commit to (default: main).
        commit_message: commit title (default: "Upload model with timm-stim").

    Returns:
        The repository URL (``{endpoint}/{repo_id}``, plus ``/tree/{revision}`` for a branch).

    Raises:
        HubPushError: with a clear message that never contains the token.
    """
    try:
        check_repo_id(repo_id)
    except ValueError as e:
        raise HubPushError(str(e), repo_id=repo_id) from None
    if not os.path.isdir(folder):
        raise HubPushError(f'{folder!r} is not a folder.', repo_id=repo_id)
    token = _token()
    if not token:
        raise HubPushError('no Hugging Face token found. Set HF_TOKEN to a token with write access, or run '
                           '`hf auth login`.', repo_id=repo_id)

    from huggingface_hub import HfApi
    from .version import __version__
    logging.getLogger('httpx2').setLevel(max(logging.getLogger('httpx2').level, logging.WARNING))
    api = HfApi(token=token, library_name='timm-stim', library_version=__version__)
    repo_url = _with_retries(f'creating {repo_id}', lambda: api.create_repo(repo_id, private=True if private else None, exist_ok=True),
                             repo_id, token)
    if revision and revision != 'main':
        _with_retries(f'creating branch {revision!r} of {repo_id}',
                      lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), repo_id, token)
    _with_retries(f'uploading to {repo_id}',
                  lambda: api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE),
                  repo_id, token)
    url = str(repo_url).rstrip('/') if repo_url else f'{api.endpoint}/{repo_id}'
    return f'{url}/tree/{revision}' if revision and revision != 'main' else url


# ---------------------------------------------------------------------------------------------
# timm's Hub format and the model card
# ---------------------------------------------------------------------------------------------

def save_timm_hf_folder(model, folder: str, *, model_config: Optional[Dict[str, Any]] = None,
                        data_config: Optional[Dict[str, Any]] = None, model_card=None,
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
    model.pretrained_cfg = {k: v for k, v in original_cfg.items() if k not in _SOURCE_CFG_KEYS}
    try:
        save_for_hf(model, folder, model_config=model_config, data_config=data_config, safe_serialization=True)
    finally:
        model.pretrained_cfg = original_cfg
    if model_card is not None:
        with open(os.path.join(folder, 'README.md'), 'w', encoding='utf-8') as f:
            f.write(str(model_card))
    for name, path in (extra_files or {}).items():
        shutil.copyfile(path, os.path.join(folder, name))
    return folder


def read_summary(path: Optional[str]) -> List[Dict[str, float]]:
    """Rows of timm's ``summary.csv`` as {column: float}; [] when missing or unreadable."""
    if not path or not os.path.isfile(path):
        return []
    rows = []
    try:
        with open(path, newline='') as f:
            for row in csv.DictReader(f):
                parsed = {}
                for key, value in row.items():
                    try:
                        parsed[key] = float(value)
                    except (TypeError, ValueError):
                        pass
                if 'epoch' in parsed:
                    rows.append(parsed)
    except (OSError, csv.Error) as e:
        _logger.warning(f'Could not read {path}: {e}')
        return []
    return rows


def plot_training_curves(rows: Sequence[Dict[str, float]], path: str, title: Optional[str] = None) -> bool:
    """Draw the curves of ``summary.csv`` rows (loss, accuracy, stimulative KL, learning rate) as a PNG.

    Uses matplotlib's Agg canvas directly, so the global backend is never changed.

    Returns:
        Whether an image was written (False without rows or plottable columns).
    """
    panels = [
        ('Loss', [('train_loss', 'train'), ('eval_loss', 'validation')]),
        ('Validation accuracy (%)', [('eval_top1', 'top-1'), ('eval_top5', 'top-5')]),
        ('Stimulative KL (mean per subnetwork)', [('train_stim_kl', 'KL')]),
        ('Learning rate', [('lr', 'lr')]),
    ]
    panels = [(name, [(k, label) for k, label in series if any(k in r for r in rows)]) for name, series in panels]
    panels = [(name, series) for name, series in panels if series]
    if not rows or not panels:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.0 * len(panels), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key, label in series:
            points = [(r['epoch'], r[key]) for r in rows if key in r and math.isfinite(r[key])]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker='o', markersize=3, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format='png')
    return True


def _dataset_info(train_args: Optional[Dict[str, Any]], dataset_id: Optional[str]) -> Tuple[Optional[str], str]:
    """(Hub dataset id or None, readable dataset name) from args.yaml / --dataset-id."""
    name = ''
    if train_args:
        name = str(train_args.get('dataset') or '')
        if not name and train_args.get('data_dir'):
            name = os.path.basename(os.path.normpath(str(train_args['data_dir'])))
    if not dataset_id and name:
        lowered = name.lower()
        if lowered.startswith(('hfds/', 'hfids/')):
            dataset_id = name.split('/', 1)[1]
        else:
            dataset_id = _KNOWN_DATASETS.get(lowered)
    return dataset_id, (name or dataset_id or 'unknown')


def _metric_row(rows: List[Dict[str, float]], epoch: Optional[int], pick_best: bool,
                eval_metric: str = 'top1') -> Optional[Dict[str, float]]:
    if not rows:
        return None
    if epoch is not None:
        for row in rows:
            if int(row['epoch']) == int(epoch):
                return row
    if pick_best:
        key = f'eval_{eval_metric}'
        scored = [r for r in rows if key in r]
        if scored:
            return (min if eval_metric == 'loss' else max)(scored, key=lambda r: r[key])
    return rows[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    if isinstance(value, (list, tuple)):
        return ', '.join(_fmt(v) for v in value)
    return str(value)


def build_model_card(repo_id: str, *, architecture: str, num_classes: int, pretrained_cfg: Dict[str, Any],
                     train_args: Optional[Dict[str, Any]] = None, summary_rows: Optional[List[Dict[str, float]]] = None,
                     published: str = 'the checkpoint', published_epoch: Optional[int] = None,
                     metrics_match_weights: bool = True, pick_best_row: bool = False, curves_file: Optional[str] = None,
                     num_params: Optional[int] = None, label_names: Optional[Sequence[str]] = None,
                     license: str = DEFAULT_LICENSE, dataset_id: Optional[str] = None):
    """The ``README.md`` model card (a ``huggingface_hub.ModelCard``).

    Front matter: library_name timm, license, pipeline_tag, tags (image-classification, timm,
    timm-stim, the architecture, stimulative-training when it was on), datasets when known, and
    ``model-index`` with the validation top-1 / top-5 of the published epoch (when they are
    the metrics of the published weights). Body: how to load it, model details, the
    stimulative-training configuration (``stim_*`` arguments and ``stim_resolved``), results per
    epoch with the training curves image, the training arguments and citations.
    """
    import yaml
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    train_args = dict(train_args or {})
    rows = list(summary_rows or [])
    stim_resolved = train_args.get('stim_resolved') or {}
    stim_on = bool(stim_resolved.get('enabled')) or int(train_args.get('stim_subnets') or 0) > 0
    dataset_id, dataset_name = _dataset_info(train_args, dataset_id)
    split = str(train_args.get('val_split') or 'validation')
    row = _metric_row(rows, published_epoch, pick_best_row, str(train_args.get('eval_metric') or 'top1'))
    repo_name = repo_id.split('/')[-1]

    eval_results = []
    if row is not None and metrics_match_weights and train_args:
        for key, name in (('eval_top1', 'Top-1 accuracy (%)'), ('eval_top5', 'Top-5 accuracy (%)')):
            if key in row:
                eval_results.append(EvalResult(
                    task_type='image-classification', task_name='Image Classification',
                    dataset_type=dataset_id or dataset_name, dataset_name=dataset_name, dataset_split=split,
                    metric_type='accuracy', metric_name=name, metric_value=round(row[key], 4)))

    tags = ['image-classification', 'timm', 'timm-stim', architecture]
    if stim_on:
        tags.insert(1, 'stimulative-training')
    card_data = ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification', tags=tags,
        datasets=[dataset_id] if dataset_id else None, model_name=repo_name,
        eval_results=eval_results or None)

    in_chans = int((pretrained_cfg.get('input_size') or (3,))[0])
    image_mode = 'RGB' if in_chans == 3 else ('L' if in_chans == 1 else None)
    open_line = (f'img = Image.open("image.png").convert("{image_mode}")' if image_mode
                 else 'img = ...  # a PIL image with the channels the model expects')
    s = []
    s.append(f'# Model card for {repo_name}\n')
    if stim_on:
        method = 'ST++' if (train_args.get('stim_norm') not in (None, 'none') or
                            float(train_args.get('stim_min_scale') or 1.0) < 1.0 or
                            train_args.get('stim_space') == 'stpp') else 'ST'
        s.append(f'A timm `{architecture}` image classifier trained with stimulative training ({method}) using '
                 f'timm-stim\'s `train_stim.py`: at every step, '
                 f'randomly sampled subnetworks (shallower versions of the network) are also trained towards the full '
                 f'network\'s predictions, so that they stop "loafing". The weights are plain timm weights: no '
                 f'custom code is needed to use them.\n')
    elif train_args:
        s.append(f'A timm `{architecture}` image classifier trained with timm-stim\'s `train_stim.py` '
                 f'(stimulative training off, i.e. timm\'s own training). The weights are plain timm weights.\n')
    else:
        s.append(f'A timm `{architecture}` image classifier, published in timm\'s format with timm-stim.\n')

    s.append('## How to use\n')
    s.append('```python\nimport timm\nimport torch\nfrom PIL import Image\n\n'
             f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()\n'
             'config = timm.data.resolve_data_config({}, model=model)\n'
             'transform = timm.data.create_transform(**config)\n\n'
             f'{open_line}\n'
             'with torch.inference_mode():\n'
             '    probabilities = model(transform(img).unsqueeze(0)).softmax(dim=-1)\n'
             f'top = probabilities.topk(min(5, {num_classes}))\n```\n')

    s.append('## Model details\n')
    details = [('Architecture', f'`{architecture}` (timm)'), ('Classes', str(num_classes))]
    if num_params:
        details.append(('Parameters', f'{num_params / 1e6:.2f} M'))
    details.append(('Weights', published))
    details.append(('Input size', ' x '.join(str(v) for v in pretrained_cfg.get('input_size', ()))))
    for key, label in (('mean', 'Mean'), ('std', 'Std'), ('crop_pct', 'Crop fraction'),
                       ('crop_mode', 'Crop mode'), ('interpolation', 'Interpolation')):
        if pretrained_cfg.get(key) is not None:
            details.append((label, _fmt(pretrained_cfg[key])))
    if train_args:
        details.append(('Training data', f'`{dataset_name}`' + (f' ([{dataset_id}](https://huggingface.co/datasets/'
                                                                  f'{dataset_id}))' if dataset_id else '')))
    if label_names:
        shown = ', '.join(str(n) for n in list(label_names)[:20]) + (', ...' if len(label_names) > 20 else '')
        details.append(('Labels', shown + ' (all in config.json `label_names`)'))
    s.append('\n'.join(f'- **{k}:** {v}' for k, v in details) + '\n')

    if train_args:
        s.append('## Stimulative training\n')
        stim_args = {k: v for k, v in sorted(train_args.items()) if k.startswith('stim_') and k != 'stim_resolved'}
        if not stim_on:
            s.append('Stimulative training was off (`--stim-subnets 0`): the network was trained by timm alone.\n')
        s.append('| option | value |\n|---|---|\n' +
                 '\n'.join(f'| `--{k.replace("_", "-")}` | {_fmt(v)} |' for k, v in stim_args.items()) + '\n')
        if stim_on:
            s.append('Resolved for this model (`stim_resolved` in args.yaml):\n')
            s.append('```yaml\n' + yaml.safe_dump({'stim_resolved': stim_resolved}, sort_keys=False,
                                                   default_flow_style=None).strip() + '\n```\n')

    if rows:
        s.append('## Results\n')
        if row is not None and eval_results:
            values = ', '.join(f'{r.metric_name} **{r.metric_value:.2f}**' for r in eval_results)
            s.append(f'Validation ({split} split of `{dataset_name}`) at epoch {int(row["epoch"])}, the published '
                     f'weights: {values}.\n')
        elif not metrics_match_weights:
            s.append('The validation metrics below were measured on the EMA weights, not on the published ones.\n')
        columns = [c for c in ('epoch', 'train_loss', 'train_stim_kl', 'eval_loss', 'eval_top1', 'eval_top5', 'lr')
                   if any(c in r for r in rows)]
        table = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
        for r in rows:
            cells = [str(int(r[c])) if c == 'epoch' else (f'{r[c]:.4g}' if c in r else '') for c in columns]
            if row is not None and r is row:
                cells = [f'**{c}**' if c else c for c in cells]
            table.append('| ' + ' | '.join(cells) + ' |')
        s.append('\n'.join(table) + '\n')
        if curves_file:
            s.append(f'![Training curves]({curves_file})\n')

    if train_args:
        shown_args = {k: v for k, v in sorted(train_args.items())
                      if not k.startswith('stim_') and k not in _LOCAL_ARG_KEYS}
        for key in _PATH_ARG_KEYS:
            if shown_args.get(key) and isinstance(shown_args[key], str):
                shown_args[key] = os.path.basename(os.path.normpath(shown_args[key]))
        s.append('## Training arguments\n')
        s.append('Every option of `train_stim.py` (timm\'s `train.py` options plus `--stim-*`), from the run\'s '
                 '`args.yaml` (paths of the training machine reduced to their last component):\n')
        s.append('<details>\n<summary>args.yaml</summary>\n\n```yaml\n' +
                 yaml.safe_dump(shown_args, default_flow_style=False).strip() + '\n```\n\n</details>\n')

    s.append('## Citation\n')
    s.append('```bibtex\n' + _CITATION + '\n```\n')

    body = '\n'.join(s)
    card = ModelCard(f'---\n{card_data.to_yaml()}\n---\n\n{body}')
    token = _token()
    if token and len(token) >= 8 and token in str(card):  # never publish a token, whatever is in args.yaml
        card = ModelCard(_scrub(str(card), token))
    return card


# ---------------------------------------------------------------------------------------------
# Checkpoints -> timm Hub folder -> push
# ---------------------------------------------------------------------------------------------

_CHECKPOINT_EXTS = ('.pth.tar', '.pth', '.pt', '.bin', '.safetensors', '.ckpt')


def _load_yaml(path: str) -> Optional[Dict[str, Any]]:
    import yaml
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise PushInputError(f'{path} could not be read as YAML: {e}') from None
    return data if isinstance(data, dict) else None


def _read_checkpoint(path: str, use_ema: bool) -> Tuple[Dict[str, Any], Optional[int], bool]:
    """(state dict, epoch stored in the checkpoint or None, whether it had EMA weights)."""
    import torch
    from timm.models import clean_state_dict
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        if use_ema:
            raise PushInputError(f'--use-ema: {path} is a .safetensors file holding one set of weights; pass the '
                                 f'.pth.tar checkpoint that holds state_dict_ema.')
        return load_file(path, device='cpu'), None, False
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise PushInputError(f'{path} could not be read as a PyTorch checkpoint: {type(e).__name__}: {e}') from None
    if not isinstance(checkpoint, dict):
        raise PushInputError(f'{path} does not hold a state dict (got a {type(checkpoint).__name__}).')
    has_ema = any(checkpoint.get(k) is not None for k in ('state_dict_ema', 'model_ema'))
    epoch = checkpoint.get('epoch') if isinstance(checkpoint.get('epoch'), int) else None
    if use_ema:
        if not has_ema:
            raise PushInputError(f'--use-ema: {path} holds no EMA weights (state_dict_ema); train with --model-ema '
                                 f'or drop --use-ema.')
        key = 'state_dict_ema' if checkpoint.get('state_dict_ema') is not None else 'model_ema'
    elif 'state_dict' in checkpoint:
        key = 'state_dict'
    elif 'model' in checkpoint:
        key = 'model'
    else:
        key = None
    state_dict = checkpoint[key] if key else checkpoint
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise PushInputError(f'{path} does not look like a timm checkpoint: no state_dict / model entry of tensors.')
    return clean_state_dict(state_dict), epoch, has_ema


def _check_model_name(name: str) -> None:
    import timm
    if name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ' See timm.list_models().'
    raise PushInputError(f'--model {name!r} is not a timm model.{hint}')


def _create_model(name: str, train_args: Dict[str, Any], num_classes: Optional[int]):
    import timm
    kwargs = dict(num_classes=num_classes if num_classes is not None else train_args.get('num_classes'),
                  in_chans=train_args.get('in_chans'), global_pool=train_args.get('gp'),
                  bn_eps=train_args.get('bn_eps'), bn_momentum=train_args.get('bn_momentum'))
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(train_args.get('model_kwargs') or {})
    if 'in_chans' not in kwargs and train_args.get('input_size'):
        kwargs['in_chans'] = int(train_args['input_size'][0])
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:
        raise PushInputError(f'could not create --model {name} with {kwargs}: {type(e).__name__}: {e}') from None


def _load_into(model, state_dict: Dict[str, Any], path: str, name: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        details = ' '.join(line.strip() for line in first[1:4])
        raise PushInputError(f'{path} does not fit --model {name} with {model.num_classes} classes: {details} '
                             f'(set --model / --num-classes to those of the training run).') from None


def _data_config(train_args: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    keys = ('input_size', 'img_size', 'in_chans', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
    config = {k: train_args.get(k) for k in keys}
    config.update({k: v for k, v in overrides.items() if v is not None})
    if not config.get('interpolation'):
        config['interpolation'] = None
    return {k: v for k, v in config.items() if v is not None}


def _parse_label_names(value: Optional[str]) -> Optional[List[str]]:
    if not value:
        return None
    if value.startswith('@'):
        path = value[1:]
        try:
            with open(path, encoding='utf-8') as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise PushInputError(f'--label-names {value}: could not read {path}: {e}') from None
    else:
        names = [n.strip() for n in value.split(',')]
    return names or None


def retry_command(argv: Sequence[str]) -> str:
    """The shell command ``python -m timm_stim push ARGV`` (quoted)."""
    return 'python -m timm_stim push ' + shlex.join([str(a) for a in argv])


def _prepare_checkpoint(args: argparse.Namespace, tmp: str) -> None:
    """Write the timm Hub folder of a checkpoint file (or a timm Hub folder) into ``tmp``."""
    source = args.checkpoint
    folder_mode = os.path.isdir(source)
    train_args = _load_yaml(os.path.join(source if folder_mode else os.path.dirname(os.path.abspath(source)),
                                         ARGS_FILE)) or {}
    summary_path = os.path.join(source if folder_mode else os.path.dirname(os.path.abspath(source)), SUMMARY_FILE)
    rows = read_summary(summary_path)
    label_names = _parse_label_names(args.label_names)

    if folder_mode:
        model, config, published, epoch, pick_best = _prepare_folder(args, source, tmp)
        metrics_match = not train_args.get('model_ema') or bool(train_args.get('model_ema_force_cpu'))
        label_names = config.get('label_names') or label_names
    else:
        name = args.model or train_args.get('model')
        if not name:
            raise PushInputError(f'--model is required: {source} has no {ARGS_FILE} beside it to read the '
                                 f'architecture from.')
        _check_model_name(name)
        state_dict, epoch, _ = _read_checkpoint(source, args.use_ema)
        model = _create_model(name, train_args, args.num_classes)
        _load_into(model, state_dict, source, name)
        model.eval()
        if label_names is not None and len(label_names) != model.num_classes:
            raise PushInputError(f'--label-names gives {len(label_names)} names for a model with '
                                 f'{model.num_classes} classes.')
        overrides = dict(input_size=args.input_size, mean=args.mean, std=args.std, crop_pct=args.crop_pct,
                         interpolation=args.interpolation)
        model_config = {'pretrained_cfg': {'license': args.license}}
        if label_names:
            model_config['label_names'] = label_names
        try:
            save_timm_hf_folder(model, tmp, model_config=model_config, data_config=_data_config(train_args, overrides))
        except (ValueError, AssertionError) as e:
            raise PushInputError(f'preprocessing settings do not fit {name}: {e}') from None
        with open(os.path.join(tmp, 'config.json')) as f:
            config = json.load(f)
        base = os.path.basename(source)
        ema_evaluated = bool(train_args.get('model_ema')) and not train_args.get('model_ema_force_cpu')
        metrics_match = bool(args.use_ema) == ema_evaluated
        pick_best = 'best' in base
        kind = 'EMA weights' if args.use_ema else 'weights'
        published = f'{kind} of `{base}`' + (f' (epoch {epoch})' if epoch is not None else '')

    if folder_mode and os.path.isfile(os.path.join(tmp, 'README.md')):
        return  # the folder brought its own model card
    curves = None
    if rows and plot_training_curves(rows, os.path.join(tmp, CURVES_FILE), title=args.repo_id):
        curves = CURVES_FILE
    architecture = config.get('architecture') or getattr(model, 'default_cfg', {}).get('architecture', '')
    card = build_model_card(
        args.repo_id, architecture=architecture, num_classes=int(config.get('num_classes', model.num_classes)),
        pretrained_cfg=config.get('pretrained_cfg', {}), train_args=train_args, summary_rows=rows,
        published=published, published_epoch=epoch, metrics_match_weights=metrics_match, pick_best_row=pick_best,
        curves_file=curves, num_params=sum(p.numel() for p in model.parameters()), label_names=label_names,
        license=args.license, dataset_id=args.dataset_id)
    with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as f:
        f.write(str(card))


def _prepare_folder(args: argparse.Namespace, source: str, tmp: str):
    """Check a folder in timm's Hub format (config.json + weights), copy it into ``tmp``."""
    import timm
    config_path = os.path.join(source, 'config.json')
    if not os.path.isfile(config_path):
        raise PushInputError(f'{source} is a folder without config.json; expected a checkpoint file or a folder in '
                             f'timm\'s Hub format (config.json + model.safetensors, from timm.models.save_for_hf).')
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise PushInputError(f'{config_path} could not be read as JSON: {e}') from None
    architecture = config.get('architecture')
    if not architecture:
        raise PushInputError(f'{config_path} names no architecture; it is not timm\'s Hub format.')
    if args.model and args.model != architecture:
        raise PushInputError(f'--model {args.model} but {config_path} holds a {architecture}.')
    if args.num_classes is not None and args.num_classes != config.get('num_classes'):
        raise PushInputError(f'--num-classes {args.num_classes} but {config_path} has {config.get("num_classes")}.')
    if (args.use_ema or args.label_names or args.input_size or args.mean or args.std or args.crop_pct
            or args.interpolation):
        raise PushInputError(f'{source} is already in timm\'s Hub format (its config.json holds the labels and '
                             f'preprocessing); --use-ema, --label-names and the preprocessing options apply to '
                             f'checkpoint files only.')
    _check_model_name(architecture)
    try:
        model = timm.create_model(f'local-dir:{os.path.abspath(source)}', pretrained=True)
    except Exception as e:
        raise PushInputError(f'timm cannot load {source}: {type(e).__name__}: {e}') from None
    for entry in sorted(os.listdir(source)):
        path = os.path.join(source, entry)
        if os.path.isfile(path) and not entry.startswith('.'):
            shutil.copyfile(path, os.path.join(tmp, entry))
    published = f'the weights of `{os.path.basename(os.path.normpath(source))}/`'
    return model, config, published, None, False


def push_checkpoint(args: argparse.Namespace) -> str:
    """Publish ``args.checkpoint`` (parsed ``push`` options) to ``args.repo_id``; return the URL.

    Everything local (repo id, files, model, weights, preprocessing) is checked before any
    network call (raising ``PushInputError``); the upload folder is built in a temporary
    directory, so no local file is changed whatever happens.
    """
    try:
        check_repo_id(args.repo_id)
    except ValueError as e:
        raise PushInputError(str(e)) from None
    if not os.path.exists(args.checkpoint):
        raise PushInputError(f'checkpoint {args.checkpoint!r} does not exist.')
    if os.path.isfile(args.checkpoint) and not args.checkpoint.endswith(_CHECKPOINT_EXTS):
        raise PushInputError(f'checkpoint {args.checkpoint!r}: expected a {", ".join(_CHECKPOINT_EXTS)} file or a '
                             f'folder in timm\'s Hub format.')
    with tempfile.TemporaryDirectory(prefix='timm_stim_push_') as tmp:
        _prepare_checkpoint(args, tmp)
        _logger.info(f'Publishing {", ".join(sorted(os.listdir(tmp)))} to {args.repo_id} on {hub_endpoint()}')
        return push_folder(tmp, args.repo_id, private=args.private, revision=args.revision,
                           commit_message=args.commit_message)


def _training_push_argv(output_dir: str, repo_id: str, which: str, train_args: Dict[str, Any], private: bool,
                        revision: Optional[str], label_names: Optional[Sequence[str]]) -> Tuple[List[str], bool]:
    """The ``push`` arguments that publish a training output (also the printed retry command).

    Returns:
        (argv, whether the label names are in argv: they are left out when too long for a command).
    """
    ema_evaluated = bool(train_args.get('model_ema')) and not train_args.get('model_ema_force_cpu')
    if which == 'best':
        checkpoint, use_ema = 'model_best.pth.tar', ema_evaluated  # the weights the best metric was measured on
    elif which == 'last':
        checkpoint, use_ema = 'last.pth.tar', False
    elif which == 'ema':
        checkpoint, use_ema = 'last.pth.tar', True
    else:
        raise PushInputError(f'--hub-which {which!r}: expected best, last or ema.')
    argv = [os.path.join(os.path.abspath(output_dir), checkpoint), repo_id]
    if train_args.get('model'):
        argv += ['--model', str(train_args['model'])]
    if train_args.get('num_classes') is not None:
        argv += ['--num-classes', str(train_args['num_classes'])]
    if use_ema:
        argv.append('--use-ema')
    if private:
        argv.append('--private')
    if revision:
        argv += ['--revision', revision]
    inline = False
    if label_names:
        joined = ','.join(str(n) for n in label_names)
        if len(joined) <= _MAX_INLINE_LABELS_CHARS and all(',' not in str(n) for n in label_names):
            argv += ['--label-names', joined]
            inline = True
    return argv, inline


def push_training_output(output_dir: str, repo_id: str, *, which: str = 'best', private: bool = False,
                         revision: Optional[str] = None, label_names: Optional[Sequence[str]] = None) -> str:
    """Publish the result of a ``train_stim.py`` run (its output folder); return the URL.

    ``which``: ``best`` (model_best.pth.tar; its EMA weights when EMA was validated, as for
    model_best.safetensors), ``last`` (last.pth.tar) or ``ema`` (the EMA weights of last.pth.tar).
    It runs what ``python -m timm_stim push`` runs with the arguments printed as the retry
    command (a long list of label names, too long for a command line, is passed through a
    temporary file instead).

    Raises:
        HubPushError: ``retry_command`` set; nothing in ``output_dir`` was changed.
    """
    train_args = _load_yaml(os.path.join(output_dir, ARGS_FILE)) or {}
    argv, labels_inline = _training_push_argv(output_dir, repo_id, which, train_args, private, revision, label_names)
    command = retry_command(argv)
    args = create_push_parser().parse_args(argv)
    try:
        if label_names and not labels_inline:
            _logger.info('The label names are too long for the retry command; add --label-names @FILE to it '
                         '(one name per line) to include them.')
            return _push_with_labels(args, label_names)
        return push_checkpoint(args)
    except PushInputError as e:
        raise HubPushError(f'{e}', repo_id=repo_id, retry_command=command) from None
    except HubPushError as e:
        e.retry_command = command
        raise


def push_after_training(args: argparse.Namespace, output_dir: str, dataset_train=None, *,
                        interrupted: bool = False) -> Optional[str]:
    """``train_stim.py --push-to-hub``: publish the run's ``--hub-which`` weights (rank 0, after training).

    Label names come from the training dataset when it knows its classes. An interrupted run
    publishes nothing and logs the command that publishes what was saved.

    Raises:
        HubPushError: with ``retry_command`` and ``saved_in`` set; ``output_dir`` is unchanged.
    """
    label_names = dataset_label_names(dataset_train, args.num_classes) if dataset_train is not None else None
    if interrupted:
        argv, _ = _training_push_argv(output_dir, args.push_to_hub, args.hub_which, vars(args), args.hub_private,
                                      args.hub_revision, label_names)
        _logger.warning(f'Training was interrupted: nothing is published to {args.push_to_hub}. To publish what was '
                        f'saved:\n  {retry_command(argv)}')
        return None
    _logger.info(f'Publishing the {args.hub_which} weights to the Hugging Face Hub repository {args.push_to_hub}')
    try:
        url = push_training_output(output_dir, args.push_to_hub, which=args.hub_which, private=args.hub_private,
                                   revision=args.hub_revision, label_names=label_names)
    except HubPushError as e:
        e.saved_in = output_dir
        raise
    _logger.info(f'Published to {url}')
    return url


def _push_with_labels(args: argparse.Namespace, label_names: Sequence[str]) -> str:
    fd, path = tempfile.mkstemp(prefix='timm_stim_labels_', suffix='.txt')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write('\n'.join(str(n) for n in label_names) + '\n')
        args.label_names = '@' + path
        return push_checkpoint(args)
    finally:
        os.unlink(path)


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

def create_push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_stim push',
        description='Publish a checkpoint to the Hugging Face Hub in timm\'s format (model.safetensors, config.json, '
                    'README.md model card), loadable with timm.create_model("hf-hub:USER/REPO", pretrained=True). '
                    'The token comes from HF_TOKEN or `hf auth login`; the endpoint from HF_ENDPOINT.')
    parser.add_argument('checkpoint', metavar='CHECKPOINT',
                        help='a timm checkpoint (.pth.tar, .pth, .safetensors; args.yaml and summary.csv beside it '
                             'are used for the model card) or a folder in timm\'s Hub format (config.json + '
                             'model.safetensors)')
    parser.add_argument('repo_id', metavar='USER/REPO', help='Hub model repository (created if needed)')
    parser.add_argument('--model', default=None, metavar='NAME',
                        help='timm architecture (default: from args.yaml beside the checkpoint or config.json)')
    parser.add_argument('--num-classes', type=int, default=None, metavar='N',
                        help='number of classes of the checkpoint (default: args.yaml, else the model default)')
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
    parser.add_argument('--commit-message', default=None, help=f'default: "{DEFAULT_COMMIT_MESSAGE}"')
    return parser


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stderr)
    logging.getLogger('httpx2').setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m timm_stim push``: 0 published, 2 bad input (nothing sent), 1 the push failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = create_push_parser().parse_args(argv)
    _setup_logging()
    try:
        url = push_checkpoint(args)
    except PushInputError as e:
        print(f'error: {e}\nNothing was sent to the Hub.', file=sys.stderr)
        return 2
    except HubPushError as e:
        e.retry_command = retry_command(argv)
        print(e.report(), file=sys.stderr)
        return 1
    print(f'Published to {url}')
    print(f'Load it with: timm.create_model("hf-hub:{args.repo_id}'
          f'{"@" + args.revision if args.revision else ""}", pretrained=True)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
