"""The ``README.md`` model card of a published model, rendered from a Jinja template.

``build_model_card`` fills ``templates/modelcard.md`` (shipped with the package) through
huggingface_hub's ``ModelCard.from_template``; the front matter is a ``ModelCardData``
(``library_name: timm``, tags, ``datasets``, ``base_model`` when training started from
pretrained weights on the Hub, and a ``model-index`` with the validation metrics). Callers add
named sections (``sections={'Exported subnetwork': text}``) instead of editing the text.

``stamp`` / ``is_unedited`` mark a card as written by timm-stim, so that a later push can
replace a card nobody changed and keep one that was edited on the Hub.
"""
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .checkpoints import LOCAL_DIR, hub_repo_of
from ..config import StimConfig
from ..errors import is_hub_name
from .summary import metric_row

__all__ = ['TEMPLATE_PATH', 'DEFAULT_LICENSE', 'CITATION', 'build_model_card', 'stim_config_of', 'base_model_of',
           'public_train_args', 'public_model_name', 'stamp', 'is_unedited']

TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'templates', 'modelcard.md')
DEFAULT_LICENSE = 'apache-2.0'

# Hub dataset ids of timm dataset names whose Hub id is unambiguous (for the card's `datasets`).
KNOWN_DATASETS = {
    'torch/cifar10': 'uoft-cs/cifar10',
    'torch/cifar100': 'uoft-cs/cifar100',
    'torch/mnist': 'ylecun/mnist',
    'torch/fashion_mnist': 'zalando-datasets/fashion_mnist',
    'torch/imagenet': 'ILSVRC/imagenet-1k',
    'tfds/imagenet2012': 'ILSVRC/imagenet-1k',
}

# args.yaml keys that describe this machine / run rather than the training recipe (not shown in the card).
LOCAL_ARG_KEYS = ('output', 'resume', 'data', 'local_rank', 'rank', 'world_size', 'device_id', 'distributed',
                  'push_to_hub', 'hub_private', 'hub_revision', 'hub_which', 'hub_create_pr', 'hub_replace_card',
                  'config', 'wandb_resume_id')
# args.yaml keys holding local paths: only their last component is published.
PATH_ARG_KEYS = ('data_dir', 'data', 'output', 'resume', 'config', 'initial_checkpoint', 'pretrained_path',
                 'class_map', 'kd_model_path')

CITATION = """@inproceedings{ye2022stimulative,
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

_STAMP = re.compile(r'\n<!-- written by timm-stim; sha256 of the text above: ([0-9a-f]{64}) -->\n\Z')


def stamp(text: str) -> str:
    """``text`` with a closing comment holding its hash: ``is_unedited`` tells whether it changed since."""
    return f'{text}\n<!-- written by timm-stim; sha256 of the text above: {_sha256(text)} -->\n'


def is_unedited(text: str) -> bool:
    """Whether ``text`` is a card ``stamp`` marked and nobody changed since (False for any other card)."""
    match = _STAMP.search(text)
    return bool(match) and _sha256(text[:match.start()]) == match.group(1)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def base_model_of(train_args: Dict[str, Any]) -> Optional[str]:
    """The Hub repository whose weights a run started from, as timm resolves ``--pretrained``; else None.

    ``--model hf-hub:ORG/NAME --pretrained`` started from ``ORG/NAME``; a timm name started from
    its pretrained config's ``hf_hub_id`` (e.g. ``timm/resnet50.a1_in1k``). None without
    ``--pretrained``, when ``--pretrained-path`` / ``--initial-checkpoint`` replaced the weights
    with a local file, or when the weights are not on the Hub.
    """
    if not train_args.get('pretrained') or train_args.get('pretrained_path') or train_args.get('initial_checkpoint'):
        return None
    name = str(train_args.get('model') or '')
    if is_hub_name(name):
        return hub_repo_of(name)
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name) if name else None
    return getattr(cfg, 'hf_hub_id', None) or None


def public_model_name(name: Any) -> Any:
    """A model name as it may be published: ``local-dir:/a/b/NAME`` becomes its architecture, never its path.

    The architecture comes from the folder's ``config.json`` (timm's Hub format); when it cannot be
    read, ``local-dir:NAME`` (the folder's last component). Other values are returned as they are.
    """
    if not isinstance(name, str) or not name.startswith(LOCAL_DIR):
        return name
    folder = name[len(LOCAL_DIR):]
    try:
        with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
            architecture = json.load(f).get('architecture')
    except (OSError, ValueError, AttributeError):
        architecture = None
    if isinstance(architecture, str) and architecture and os.sep not in architecture:
        return architecture
    return LOCAL_DIR + os.path.basename(os.path.normpath(folder))


def public_train_args(train_args: Dict[str, Any]) -> Dict[str, Any]:
    """``train_args`` as published: local paths (``PATH_ARG_KEYS``) reduced to their last component,
    ``local-dir:`` model names (``--model``, ``--kd-model-name``) to their architecture (``public_model_name``)."""
    shown = dict(train_args)
    for key in PATH_ARG_KEYS:
        if shown.get(key) and isinstance(shown[key], str):
            shown[key] = os.path.basename(os.path.normpath(shown[key]))
    return {k: public_model_name(v) for k, v in shown.items()}


def _dataset_info(train_args: Dict[str, Any], dataset_id: Optional[str]) -> Tuple[Optional[str], str]:
    """(Hub dataset id or None, readable dataset name) from args.yaml / --dataset-id."""
    name = str(train_args.get('dataset') or '')
    if not name and train_args.get('data_dir'):
        name = os.path.basename(os.path.normpath(str(train_args['data_dir'])))
    if not dataset_id and name:
        lowered = name.lower()
        dataset_id = name.split('/', 1)[1] if lowered.startswith(('hfds/', 'hfids/')) else KNOWN_DATASETS.get(lowered)
    return dataset_id, (name or dataset_id or 'unknown')


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    if isinstance(value, (list, tuple)):
        return ', '.join(_fmt(v) for v in value)
    return str(value)


def stim_config_of(train_args: Dict[str, Any]) -> StimConfig:
    """The stimulative options a run trained with: the resolved config of its ``args.yaml``
    (``stim_resolved.config``), else (an ``args.yaml`` written without it) its ``--stim-*`` options."""
    resolved = (train_args.get('stim_resolved') or {}).get('config')
    return StimConfig.from_dict(resolved) if isinstance(resolved, dict) else StimConfig.from_args(train_args)


def _ran_with(key: str, value: Any, resolved: Dict[str, Any]) -> str:
    """An option's cell in the card: what the run trained with where the resolved config decided it."""
    if key == 'stim_subnets' and resolved.get('budget') is not None and 'subnets_per_step' in resolved:
        return f'{_fmt(resolved["subnets_per_step"])} per step (from --stim-budget {_fmt(resolved["budget"])})'
    if key == 'stim_weight_warmup' and value is None and 'kl_weight_warmup_epochs' in resolved:
        return f'{_fmt(resolved["kl_weight_warmup_epochs"])} (the default)'
    return _fmt(value)


def _small(value: float) -> str:
    """A statistic as timm's cards round it (4.1, 11.1), with enough digits for tiny models (0.0031)."""
    return f'{value:.1f}' if value >= 1 else f'{value:.2g}'


def _summary(architecture: str, train_args: Dict[str, Any], method: Optional[str]) -> str:
    if method:
        return (f'A timm `{architecture}` image classifier trained with stimulative training ({method}) '
                f'using timm-stim\'s `train_stim.py`: at every step, randomly sampled subnetworks (shallower versions '
                f'of the network) are also trained towards the full network\'s predictions, so that they stop '
                f'"loafing". The weights are plain timm weights: no custom code is needed to use them.')
    if train_args:
        return (f'A timm `{architecture}` image classifier trained with timm-stim\'s `train_stim.py` (stimulative '
                f'training off, i.e. timm\'s own training). The weights are plain timm weights.')
    return f'A timm `{architecture}` image classifier, published in timm\'s format with timm-stim.'


def _results_table(rows: Sequence[Dict[str, float]], highlighted: Optional[Dict[str, float]]) -> List[str]:
    columns = [c for c in ('epoch', 'train_loss', 'train_stim_kl', 'eval_loss', 'eval_top1', 'eval_top5', 'lr')
               if any(c in r for r in rows)]
    table = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for r in rows:
        cells = [str(int(r[c])) if c == 'epoch' else (f'{r[c]:.4g}' if c in r else '') for c in columns]
        if r is highlighted:
            cells = [f'**{c}**' if c else c for c in cells]
        table.append('| ' + ' | '.join(cells) + ' |')
    return table


def build_model_card(repo_id: str, *, architecture: str, num_classes: int, pretrained_cfg: Dict[str, Any],
                     train_args: Optional[Dict[str, Any]] = None, summary_rows: Optional[List[Dict[str, float]]] = None,
                     published: str = 'the checkpoint', published_epoch: Optional[int] = None,
                     metrics_match_weights: bool = True, pick_best_row: bool = False, curves_file: Optional[str] = None,
                     num_params: Optional[int] = None, model_stats: Optional[Dict[str, Any]] = None,
                     label_names: Optional[Sequence[str]] = None,
                     license: str = DEFAULT_LICENSE, dataset_id: Optional[str] = None,
                     base_model: Optional[str] = None, sections: Optional[Dict[str, str]] = None):
    """The ``README.md`` model card (a ``huggingface_hub.ModelCard`` rendered from ``TEMPLATE_PATH``).

    Args:
        repo_id: ``USER/REPO`` the card is published to.
        architecture: timm model name.
        num_classes: classes of the published model.
        pretrained_cfg: the preprocessing the weights expect (input_size, mean, std, crop_pct, ...).
        train_args: the run's ``args.yaml`` ({} or None: not trained by train_stim.py, no training sections).
        summary_rows: the run's ``summary.csv`` rows (``timm_stim.tools.summary.read_summary``).
        published: what the weights are, in words (e.g. "weights of `model_best.pth.tar` (epoch 9)").
        published_epoch: epoch of the published weights, to pick their metrics.
        metrics_match_weights: False when ``summary.csv`` measured other weights (EMA vs not): no ``model-index``.
        pick_best_row: without ``published_epoch``, the weights are the best epoch's.
        curves_file: name of the training-curves image in the repository, if any.
        num_params: parameter count (shown when ``model_stats`` is not given).
        model_stats: ``timm_stim.flops.model_stats`` of the published model: Params (M), GMACs,
            Activations (M) and Image size, as timm's own cards list them.
        label_names: class names in label order.
        license: the card's license.
        dataset_id: Hub dataset id (default: derived from ``train_args`` when known).
        base_model: the Hub repository the weights were fine-tuned from (default: ``base_model_of(train_args)``).
        sections: extra sections, {heading: markdown}, placed before the training arguments.

    Returns:
        The card; ``str(card)`` is the README.md text.
    """
    import yaml
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    train_args = dict(train_args or {})
    architecture = public_model_name(architecture)  # a local-dir: model is published by its architecture, no path
    rows = list(summary_rows or [])
    stim_resolved = train_args.get('stim_resolved') or {}
    method = stim_config_of(train_args).method  # None: trained without stimulative training
    stim_on = method is not None
    dataset_id, dataset_name = _dataset_info(train_args, dataset_id)
    split = str(train_args.get('val_split') or 'validation')
    row = metric_row(rows, published_epoch, pick_best_row, str(train_args.get('eval_metric') or 'top1'))
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
        datasets=[dataset_id] if dataset_id else None, model_name=repo_name, eval_results=eval_results or None,
        base_model=base_model or base_model_of(train_args))

    in_chans = int((pretrained_cfg.get('input_size') or (3,))[0])
    image_mode = {3: 'RGB', 1: 'L'}.get(in_chans)
    details = [('Architecture', f'`{architecture}` (timm)'), ('Classes', str(num_classes))]
    if model_stats:
        stats = (('Params (M)', _small(model_stats['params_m'])), ('GMACs', _small(model_stats['gmacs'])),
                 ('Activations (M)', _small(model_stats['activations_m'])),
                 ('Image size', ' x '.join(map(str, model_stats['image_size']))))
        details.append(('Model stats', ''.join(f'\n  - {label}: {value}' for label, value in stats)))
    elif num_params:
        details.append(('Parameters', f'{num_params / 1e6:.2f} M'))
    details.append(('Weights', published))
    details.append(('Input size', ' x '.join(str(v) for v in pretrained_cfg.get('input_size', ()))))
    for key, label in (('mean', 'Mean'), ('std', 'Std'), ('crop_pct', 'Crop fraction'),
                       ('crop_mode', 'Crop mode'), ('interpolation', 'Interpolation')):
        if pretrained_cfg.get(key) is not None:
            details.append((label, _fmt(pretrained_cfg[key])))
    if train_args:
        link = f' ([{dataset_id}](https://huggingface.co/datasets/{dataset_id}))' if dataset_id else ''
        details.append(('Training data', f'`{dataset_name}`{link}'))
    if card_data.base_model:
        details.append(('Base model', f'[{card_data.base_model}](https://huggingface.co/{card_data.base_model})'))
    if label_names:
        shown = ', '.join(str(n) for n in list(label_names)[:20]) + (', ...' if len(label_names) > 20 else '')
        details.append(('Labels', shown + ' (all in config.json `label_names`)'))

    headline = None
    if row is not None and eval_results:
        values = ', '.join(f'{r.metric_name} **{r.metric_value:.2f}**' for r in eval_results)
        headline = (f'Validation ({split} split of `{dataset_name}`) at epoch {int(row["epoch"])}, the published '
                    f'weights: {values}.')
    elif rows and not metrics_match_weights:
        headline = 'The validation metrics below were measured on the EMA weights, not on the published ones.'
    shown_args = {k: v for k, v in sorted(public_train_args(train_args).items())
                  if not k.startswith('stim_') and k not in LOCAL_ARG_KEYS}
    return ModelCard.from_template(
        card_data, template_path=TEMPLATE_PATH, repo_id=repo_id, model_name=repo_name,
        summary=_summary(architecture, train_args, method), num_classes=num_classes,
        open_line=(f'img = Image.open("image.png").convert("{image_mode}")' if image_mode
                   else 'img = ...  # a PIL image with the channels the model expects'),
        details=details, stim_on=stim_on,
        stim_options=[(f'--{k.replace("_", "-")}', _ran_with(k, v, stim_resolved))
                      for k, v in sorted(train_args.items())
                      if k.startswith('stim_') and k != 'stim_resolved'] if train_args else None,
        stim_resolved=(yaml.safe_dump({'stim_resolved': stim_resolved}, sort_keys=False,
                                      default_flow_style=None).strip() if stim_on else None),
        results_headline=headline, results_table=_results_table(rows, row) if rows else None,
        curves_file=curves_file if rows else None, sections=dict(sections or {}),
        train_args_yaml=yaml.safe_dump(shown_args, default_flow_style=False).strip() if train_args else None,
        citation=CITATION)
