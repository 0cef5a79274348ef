"""timm-stim: Stimulative Training (ST) and ST++ of residual networks for timm.

>>> import timm_stim
>>> model = timm_stim.create_model('resnet50', stim_space='stpp', num_classes=10)
>>> stim = timm_stim.get_stimulator(model)
>>> with stim.activate(stim.sample()):
...     logits = model(x)
"""
from .adapters import StageAdapter, get_adapter, list_adapters, register_adapter
from .config import StimConfig
from .errors import UnsupportedModelError
from .factory import create_model
from .losses import logit_norm, stim_kl
from .select import select_subnet
from .spaces import resolve_space
from .stimulator import Stimulator, attach, get_stimulator
from .subnet import Subnet
from .task import StimulativeMixin, StimulativeTask, stimulative_task_class
from .version import __version__

__all__ = [
    'attach', 'create_model', 'get_stimulator', 'StimConfig', 'register_adapter', 'get_adapter', 'list_adapters',
    'StageAdapter', 'Stimulator', 'Subnet', 'StimulativeTask', 'StimulativeMixin', 'stimulative_task_class',
    'UnsupportedModelError',
    'stim_kl', 'logit_norm', 'resolve_space', 'select_subnet', '__version__',
]
