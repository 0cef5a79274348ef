"""``timm_stim.create_model``: ``timm.create_model`` plus ``attach``."""
from typing import Any

import timm
import torch.nn as nn

from .errors import check_model_name
from .spaces import SpaceSpec
from .stimulator import BN_MODES, MODES, attach

__all__ = ['create_model']


def create_model(
        model_name: str,
        *,
        stim_space: SpaceSpec = 'uniform',
        stim_mode: str = 'depth',
        stim_bn: str = 'freeze',
        **timm_kwargs: Any,
) -> nn.Module:
    """Create a timm model and attach subnetwork sampling to it.

    Args:
        model_name: any timm model name of a supported family (see ``timm_stim.list_adapters``).
        stim_space, stim_mode, stim_bn: ``space``, ``mode`` and ``bn`` of ``timm_stim.attach``.
        **timm_kwargs: passed to ``timm.create_model`` (``pretrained``, ``num_classes``, ...).

    Returns:
        The timm model itself (same class, same state_dict keys); its ``Stimulator`` is
        ``timm_stim.get_stimulator(model)``.
    """
    check_model_name(model_name, option='model_name')
    # Cheap checks first so a bad setting fails before the model is built.
    if stim_mode not in MODES:
        raise ValueError(f'Invalid stim_mode {stim_mode!r}: expected one of {MODES}.')
    if stim_bn not in BN_MODES:
        raise ValueError(f'Invalid stim_bn {stim_bn!r}: expected one of {BN_MODES}.')
    model = timm.create_model(model_name, **timm_kwargs)
    attach(model, space=stim_space, mode=stim_mode, bn=stim_bn)
    return model
