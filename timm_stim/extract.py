"""Extract a subnetwork of a trained residual network as a plain, smaller timm model.

``export_subnet(model, depths)`` builds ``timm.create_model(architecture, layers=depths)`` and copies the
kept blocks' weights into it; in eval mode its logits equal those of the same subnetwork run through
``Stimulator.activate`` on the original model. ``timm-stim export`` (``timm_stim.tools.export``) saves
one such model, ``timm-stim family`` (``timm_stim.tools.family``) a whole Pareto front, and
``timm_stim.select_subnet`` returns one chosen under a cost limit.
"""
from typing import Any, Dict, Optional, Sequence, Union

import torch.nn as nn

from .adapters import identity
from .errors import InputError
from .stimulator import Stimulator, attach, get_stimulator
from .subnet import Subnet

__all__ = ['EXPORT_FAMILIES', 'export_subnet', 'supported_families', 'stimulator_for_export']

# Adapter family -> how the smaller model is built (all through timm.create_model(name, layers=...)).
EXPORT_FAMILIES = {
    'resnet': 'timm.models.resnet.ResNet: resnet*, resnext*, seresnet*, seresnext*, ecaresnet*, wide_resnet*, '
              'resnetrs*, resnet*d, resnetaa*, resnetblur*, skresnet*, resnest*, res2net* '
              '(timm.create_model(name, layers=[...]))',
    'resnetv2': 'timm.models.resnetv2.ResNetV2: resnetv2_* whose entry point takes layers, e.g. resnetv2_50, '
                'resnetv2_50d, resnetv2_18 (not the *_bit models)',
}


def supported_families() -> str:
    """The families ``export_subnet`` supports, one line each."""
    return '\n'.join(f'  - {family}: {text}' for family, text in EXPORT_FAMILIES.items())


def stimulator_for_export(model: nn.Module) -> Stimulator:
    """The model's Stimulator, attached (default settings) when it has none; ``InputError`` for other models."""
    stim = get_stimulator(model)
    if stim is not None:
        return stim
    try:
        return attach(model)
    except ValueError as e:
        raise InputError(f'cannot export subnetworks of {type(model).__name__}: {e}\nExport supports:\n'
                         f'{supported_families()}') from None


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    name = cfg.get('architecture')
    if not name:
        raise InputError(f'{type(model).__name__} has no pretrained_cfg architecture: create it with '
                         f'timm.create_model.')
    return name


def export_subnet(model: nn.Module, subnet_or_depths: Union[Subnet, Sequence[int]]) -> nn.Module:
    """A plain timm model of the subnetwork's depth holding the kept blocks' weights.

    The model is built with ``timm.create_model(architecture, layers=depths, **reconstruction args
    of the original)`` and loaded strictly; kept blocks are renumbered in order. The original
    model is not changed (a Stimulator is attached for the stage layout and detached again when
    it had none).

    Args:
        model: a timm model of a family in ``EXPORT_FAMILIES`` (with trained weights).
        subnet_or_depths: a ``Subnet``, or depths per stage (the first d blocks of each stage).

    Returns:
        The smaller model, in eval mode. In eval mode its logits equal those of
        ``with stim.activate(subnet): model(x)``.

    Raises:
        InputError: unsupported family, a subnet that does not fit, or a dropped block whose
            removal is not exactly what ``activate`` computes.
    """
    import timm
    from timm.models import get_model_args
    had_stim = get_stimulator(model) is not None
    stim = stimulator_for_export(model)
    try:
        family = stim.adapter.family
        if family not in EXPORT_FAMILIES:
            raise InputError(f'cannot export a {family} model ({type(model).__name__}); export supports:\n'
                             f'{supported_families()}')
        subnet = subnet_or_depths if isinstance(subnet_or_depths, Subnet) else Subnet.from_depths(subnet_or_depths)
        try:
            stim.check_subnet(subnet)
        except ValueError as e:
            raise InputError(str(e)) from None
        stages = stim.adapter.stages(stim.model)
        for s, dropped in enumerate(subnet.dropped(stim.stage_depths)):
            for b in dropped:
                if stim.adapter.skip_function(stim.model, s, b, stages[s][b]) is not identity:
                    raise InputError(
                        f'block {b} of stage {s} ends in an activation that is not the identity on its input, so '
                        f'a model without the block computes something else than the subnetwork; it cannot be '
                        f'exported as a plain timm model.')
        architecture = _architecture(model)
        kwargs: Dict[str, Any] = dict(get_model_args(model))
        kwargs['layers'] = list(subnet.depths)
        try:
            small = timm.create_model(architecture, pretrained=False, **kwargs)
        except Exception as e:
            raise InputError(f'timm cannot build {architecture} with {kwargs}: {type(e).__name__}: {e}\nExport '
                             f'supports:\n{supported_families()}') from None
        small_stages = stim.adapter.stages(small)
        names = {id(m): n for n, m in model.named_modules()}
        small_names = {id(m): n for n, m in small.named_modules()}
        rename: Dict[str, Optional[str]] = {}  # block prefix in the original -> in the small model (None: dropped)
        for s, blocks in enumerate(stages):
            kept = subnet.blocks[s]
            for b, block in enumerate(blocks):
                rename[names[id(block)] + '.'] = (small_names[id(small_stages[s][kept.index(b)])] + '.'
                                                  if b in kept else None)
        state_dict = {}
        for key, value in model.state_dict().items():
            prefix = next((p for p in rename if key.startswith(p)), None)
            if prefix is None:
                state_dict[key] = value
            elif rename[prefix] is not None:
                state_dict[rename[prefix] + key[len(prefix):]] = value
        small.load_state_dict(state_dict, strict=True)
    finally:
        if not had_stim and stim.attached:
            stim.detach()
    if hasattr(model, 'pretrained_cfg'):
        small.pretrained_cfg = dict(small.pretrained_cfg, **{
            k: v for k, v in model.pretrained_cfg.items()
            if k in ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation', 'label_names')})
    return small.eval()
