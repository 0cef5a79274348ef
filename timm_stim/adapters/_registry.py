"""Registry of model-family adapters, filled by the ``register_adapter`` decorator (timm style)."""
from typing import Callable, Dict, List, Optional, Tuple, Type

import torch.nn as nn

from ..errors import UnsupportedModelError
from .base import StageAdapter

__all__ = ['register_adapter', 'get_adapter', 'list_adapters', 'supported_families']

_adapters: Dict[Type[nn.Module], StageAdapter] = {}


def register_adapter(*model_classes: Type[nn.Module]) -> Callable[[Type[StageAdapter]], Type[StageAdapter]]:
    """Class decorator registering a ``StageAdapter`` subclass for one or more model classes.

    The adapter applies to these classes and their subclasses; the most specific registered
    class in a model's MRO wins.

    Args:
        *model_classes: the ``nn.Module`` classes of the family (e.g. ``timm.models.ResNet``).

    Returns:
        The decorator, which returns the adapter class unchanged.

    Example:
        >>> @register_adapter(MyNet)
        ... class MyNetAdapter(StageAdapter):
        ...     family = 'mynet'
        ...     def stages(self, model): return [list(s) for s in model.stages]
        ...     def skip_function(self, model, stage_idx, block_idx, block): return identity
    """
    if not model_classes:
        raise TypeError('register_adapter needs at least one model class.')

    def _register(adapter_cls: Type[StageAdapter]) -> Type[StageAdapter]:
        if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, StageAdapter)):
            raise TypeError(f'{adapter_cls!r} is not a StageAdapter subclass.')
        adapter = adapter_cls()
        for cls in model_classes:
            _adapters[cls] = adapter
        return adapter_cls

    return _register


def find_adapter(model: nn.Module) -> Optional[StageAdapter]:
    """The adapter registered for the model's class (most specific first), or None."""
    for cls in type(model).__mro__:
        if cls in _adapters:
            return _adapters[cls]
    return None


def list_adapters() -> List[Tuple[str, Type[nn.Module], StageAdapter]]:
    """(family name, model class, adapter) for every registration, in registration order."""
    return [(adapter.family, cls, adapter) for cls, adapter in _adapters.items()]


def supported_families() -> str:
    """One readable line per registered adapter (its model classes together), for error messages and docs."""
    classes: Dict[int, List[Type[nn.Module]]] = {}
    adapters: Dict[int, StageAdapter] = {}
    for _, cls, adapter in list_adapters():
        classes.setdefault(id(adapter), []).append(cls)
        adapters[id(adapter)] = adapter
    lines = []
    for key, adapter in adapters.items():
        names = ', '.join(f'{cls.__module__}.{cls.__qualname__}' for cls in classes[key])
        lines.append(f'  - {adapter.family} ({names}): {adapter.examples}')
    return '\n'.join(lines)


def get_adapter(model: nn.Module) -> StageAdapter:
    """The adapter for the model.

    Raises:
        UnsupportedModelError: naming the model's class and listing the supported families.
    """
    adapter = find_adapter(model)
    if adapter is None:
        raise UnsupportedModelError(
            f'No timm_stim adapter for {type(model).__module__}.{type(model).__qualname__}. '
            f'Stimulative training samples subnetworks of residual stages; supported families:\n'
            f'{supported_families()}\n'
            f'Register one for another family with @timm_stim.register_adapter(YourModelClass).')
    return adapter
