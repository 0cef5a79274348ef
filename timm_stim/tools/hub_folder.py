"""What is published: a folder in timm's Hugging Face Hub format, from a checkpoint or a training output.

``save_timm_hf_folder`` writes a model with ``timm.models.save_for_hf``; ``prepare_push_folder`` writes everything a
``PushRequest`` publishes (the weights, ``config.json``, the ``README.md`` card built by ``timm_stim.tools.modelcard``,
the run's ``args.yaml``, ``summary.csv`` and ``training_curves.png``), loadable with
``timm.create_model("hf-hub:USER/REPO", pretrained=True)``. ``timm_stim.tools.hub`` publishes the folder.
"""
import json
import os
import shutil
from typing import Any, Dict, Optional, Tuple

from ..errors import InputError
from ..flops import model_stats
from ..guard import describe_non_finite, non_finite_tensors
from ..loading import follow_umask
from ..tokens import mask_tokens
from .checkpoints import (ARGS_FILE, LOCAL_DIR, LoadedModel, check_preprocessing, data_config_from_args, load_model,
                          read_train_args)
from .hub import CARD_FILE
from .modelcard import build_model_card, public_train_args, stamp
from .push_request import PushRequest
from .summary import CURVES_FILE, SUMMARY_FILE, plot_training_curves, read_summary

__all__ = ['write_model_card', 'save_timm_hf_folder', 'prepare_push_folder', 'ema_validated']

# pretrained_cfg keys describing the architecture's default weights (tag, paper, license, ...), not these weights.
SOURCE_CFG_KEYS = ('tag', 'hf_hub_id', 'hf_hub_filename', 'url', 'file', 'source', 'state_dict', 'origin_url',
                   'paper_ids', 'paper_name', 'notes', 'license', 'description', 'test_input_size', 'test_crop_pct',
                   'test_pool_size')


def write_model_card(folder: str, card: Any) -> str:
    """Write ``card`` (a ``ModelCard`` or text) as ``folder/README.md``, stamped and token-free; return its path."""
    path = os.path.join(folder, CARD_FILE)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(stamp(mask_tokens(str(card))))
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
    for entry in os.listdir(folder):
        if entry.endswith('.safetensors'):
            follow_umask(os.path.join(folder, entry))  # safetensors writes 0600; the other files follow the umask
    if model_card is not None:
        write_model_card(folder, model_card)
    return folder


def ema_validated(train_args: Dict[str, Any]) -> bool:
    """Whether a run validated (and chose model_best by) its EMA weights."""
    return bool(train_args.get('model_ema')) and not train_args.get('model_ema_force_cpu')


def _refuse_non_finite(loaded: LoadedModel) -> None:
    """``InputError`` naming the tensors when the weights to publish hold NaN or infinite values."""
    state_dict = loaded.model.state_dict()
    bad = non_finite_tensors(state_dict)
    if bad:
        raise InputError(f'{loaded.source}: not publishing NaN or infinite weights, in '
                         f'{describe_non_finite(bad, len(state_dict))}. Publish an earlier checkpoint of the run.')


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
    _refuse_non_finite(loaded)
    for entry in sorted(os.listdir(source)):
        if os.path.isfile(os.path.join(source, entry)) and not entry.startswith('.'):
            shutil.copyfile(os.path.join(source, entry), os.path.join(folder, entry))
    return loaded, dict(published=f'the weights of `{os.path.basename(os.path.normpath(source))}/`',
                        label_names=loaded.model.pretrained_cfg.get('label_names'), pretrained_cfg=loaded.data_config,
                        metrics_match_weights=not ema_validated(train_args))


def _convert_checkpoint(request: PushRequest, folder: str, train_args: Dict[str, Any]) -> Tuple[LoadedModel, Dict]:
    """Write a checkpoint in timm's Hub format with the run's args.yaml; return its model and what the card says."""
    loaded = load_model(request.checkpoint, request.model, request.num_classes, use_ema=request.use_ema)
    _refuse_non_finite(loaded)
    # The names --push-to-hub reads from the dataset, recorded by the training run in its checkpoints.
    classes, names = loaded.model.num_classes, request.label_names or (
        list(loaded.info.label_names) if loaded.info.label_names else None)
    if names is not None and len(names) != classes:
        raise InputError(f'--label-names gives {len(names)} names for a model with {classes} classes.')
    data_config = data_config_from_args(train_args, {k: getattr(request, k) for k in (
        'input_size', 'mean', 'std', 'crop_pct', 'interpolation')})
    check_preprocessing(data_config, f' (the preprocessing of {request.checkpoint}, from its args.yaml and the options)')
    model_config = {'pretrained_cfg': {'license': request.license}, **({'label_names': names} if names else {})}
    try:
        save_timm_hf_folder(loaded.model, folder, model_config=model_config, data_config=data_config)
    except (ValueError, AssertionError) as e:
        raise InputError(f'preprocessing settings do not fit {loaded.architecture}: {e}') from None
    if train_args:
        import yaml
        with open(os.path.join(folder, ARGS_FILE), 'w', encoding='utf-8') as f:  # local paths cut to their last name
            f.write(mask_tokens(yaml.safe_dump(public_train_args(train_args), sort_keys=False)))
    with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
        published_cfg = json.load(f).get('pretrained_cfg', {})  # as timm resolved it
    base, epoch = os.path.basename(request.checkpoint), loaded.info.epoch
    published = f'{"EMA weights" if loaded.use_ema else "weights"} of `{base}`' + (
        f' (epoch {epoch})' if epoch is not None else '')
    return loaded, dict(published=published, published_epoch=epoch, pick_best_row='best' in base, label_names=names,
                        pretrained_cfg=published_cfg,
                        metrics_match_weights=loaded.use_ema == ema_validated(train_args))


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
    input_size = described['pretrained_cfg'].get('input_size') or model.pretrained_cfg['input_size']
    write_model_card(folder, build_model_card(
        request.repo_id, architecture=loaded.architecture, num_classes=int(model.num_classes), train_args=train_args,
        summary_rows=rows, curves_file=CURVES_FILE if curves else None, license=request.license,
        model_stats=model_stats(model, input_size), dataset_id=request.dataset_id, **described))
