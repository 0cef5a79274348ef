"""The entry points' composition: the training program with the tools it plugs in as callbacks.

``train_stim.py`` and ``timm-stim train`` both run ``train``. This is the one module that may
import both the training program (``timm_stim.training``) and the tools (``timm_stim.tools``):
neither of those imports the other.
"""
from typing import Any, Dict, List, Optional, Sequence, Type

from .callbacks import TrainCallback
from .config import StimConfig
from .tools.publish import Publisher
from .training.train import main as train_main

__all__ = ['train', 'main']


def train(argv: Optional[Sequence[str]] = None, callbacks: Sequence[TrainCallback] = (),
          config_cls: Type[StimConfig] = StimConfig) -> Dict[str, Any]:
    """Run training with the tools plugged in (``--push-to-hub``).

    Args:
        argv: the command line (``sys.argv[1:]`` when None).
        callbacks: the user's ``TrainCallback`` objects, called after the program's own.
        config_cls: ``StimConfig`` or a subclass declaring more ``--stim-*`` options.

    Returns:
        ``timm_stim.training.train.main``'s dict, plus ``hub_url`` (None when nothing was published).
    """
    publisher = Publisher()
    plugged: List[TrainCallback] = [*callbacks, publisher]
    result = train_main(argv, config_cls, callbacks=plugged)
    return {**result, 'hub_url': publisher.url}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``timm-stim train`` / ``train_stim.py``."""
    return train(argv)


if __name__ == '__main__':
    main()
