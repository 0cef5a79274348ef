"""``Publisher``: ``--push-to-hub`` for a training run, as a training callback the entry points plug in.

The options are checked before any work (a bad repository name must not cost a training
run), a missing token is said before the first epoch, and the trained model is pushed when the
run ends (``push_after_training``). ``timm_stim.cli.train`` (``train_stim.py``, ``timm-stim
train``) puts it in the run's callbacks; the training program itself never imports the tools.
"""
from typing import Optional

from timm import utils

from ..callbacks import TrainCallback
from ..errors import InputError
from .hub import check_push_options, warn_if_no_token
from .push import push_after_training

__all__ = ['Publisher']


class Publisher(TrainCallback):
    """Publishes the result of a training run (``--push-to-hub USER/REPO``); ``url`` is where, after the run."""

    acts_on = ('push_to_hub',)

    def __init__(self):
        self.args = None
        self.url: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.args is not None and self.args.push_to_hub is not None

    def on_options_checked(self, state) -> None:
        """Check the Hub options before anything is built; raise ``InputError``."""
        self.args = args = state.args
        if not self.enabled:
            return
        try:
            check_push_options(args.push_to_hub, args.hub_revision, args.hub_create_pr)
        except InputError as e:
            raise InputError(f'--push-to-hub: {e}') from None
        if args.hub_which == 'ema' and not args.model_ema:
            raise InputError('--hub-which ema publishes the EMA weights, but --model-ema is off: add --model-ema '
                             'or use --hub-which best / last.')

    def on_train_start(self, state) -> None:
        """Say before the first epoch, not after training, that no Hub token is set."""
        if self.enabled and utils.is_primary(state.args):
            warn_if_no_token(state.args.push_to_hub)

    def on_train_end(self, state) -> None:
        """Push the run's model (the primary process); an interrupted run logs the command that would."""
        output_dir = state.progress.output_dir
        if not self.enabled or output_dir is None:
            return
        self.url = push_after_training(state.run_args, output_dir, state.data.dataset_train,
                                       interrupted=state.progress.interrupted)
