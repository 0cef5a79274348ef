"""``Publisher``: ``--push-to-hub``, the training program's one use of the Hub tools.

The options are checked before any work (a bad repository name must not cost a training
run), a missing token is said at the start, and the trained model is pushed at the end by
``timm_stim.tools.push`` (the Hub tools are imported only when a push is asked for).
"""
from typing import Optional

from timm import utils

from ..errors import InputError

__all__ = ['Publisher']


class Publisher:
    """Publishes the result of a training run (``--push-to-hub USER/REPO``).

    Args:
        args: the parsed options.
    """

    def __init__(self, args):
        self.args = args

    @property
    def enabled(self) -> bool:
        return self.args.push_to_hub is not None

    def check(self) -> None:
        """Check the Hub options before anything is built; raise ``InputError``."""
        args = self.args
        if not self.enabled:
            return
        from ..tools.hub import check_push_options
        try:
            check_push_options(args.push_to_hub, args.hub_revision, args.hub_create_pr)
        except InputError as e:
            raise InputError(f'--push-to-hub: {e}') from None
        if args.hub_which == 'ema' and not args.model_ema:
            raise InputError('--hub-which ema publishes the EMA weights, but --model-ema is off: add --model-ema '
                             'or use --hub-which best / last.')

    def warn_if_no_token(self) -> None:
        """Say at the start, not after training, that no Hub token is set."""
        if self.enabled and utils.is_primary(self.args):
            from ..tools.hub import warn_if_no_token
            warn_if_no_token(self.args.push_to_hub)

    def after_training(self, output_dir: Optional[str], dataset_train, interrupted: bool) -> Optional[str]:
        """Push the run's model; returns its URL (None when not asked or not the primary process)."""
        if not self.args.push_to_hub or output_dir is None:
            return None
        from ..tools.push import push_after_training
        return push_after_training(self.args, output_dir, dataset_train, interrupted=interrupted)
