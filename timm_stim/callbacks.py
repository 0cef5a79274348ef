"""``TrainCallback``: the one seam of the training program, with events that follow timm's train.py.

``timm_stim.training.train`` runs timm's flow and calls every callback at each event, in list
order. What the program adds to timm is itself written as callbacks (``StimTraining``:
stimulative training; ``RunLifecycle``: output folder, resume, seeding; the Hub ``Publisher``,
plugged in by the entry points), and a user passes their own from Python::

    from timm_stim.callbacks import TrainCallback
    from timm_stim.cli import train

    class GradNorm(TrainCallback):
        def on_validation_end(self, state, train_metrics, eval_metrics):
            train_metrics['my_metric'] = 1.0   # a column train_my_metric in summary.csv

    train(['--model', 'resnet18', ...], callbacks=[GradNorm()])

Every event gets ``state``, the run's ``timm_stim.training.state.TrainState``: ``state.args``
(the options, read-only once resolved), ``state.model`` (model and task), ``state.data``
(datasets and loaders), ``state.optim`` (optimizer, scheduler, AMP), ``state.progress`` (run
folder, epoch, best metric, results, interrupted). A group is ``None`` until its phase has run.
Callbacks read the state; the objects in it belong to the program. An ``InputError`` raised in
``on_options_checked`` ends the run with exit code 2 before anything is built.

==========================  =================================================================
``on_options_checked``      options parsed and checked, before they are resolved and anything
                            is built: check the options a callback acts on
``on_model_created``        the timm model exists, its data config is resolved (``state.model``)
``on_task_created``         the training task and optimizer exist; ``--resume`` weights are in
``on_train_start``          the run is prepared: loaders, scheduler, output folder, start point
``on_epoch_start``          before an epoch (``state.progress.epoch``, ``start_batch``)
``on_step_start``           before the forward pass of batch ``batch_idx`` of the epoch
``on_before_validation``    after an epoch's training, before its validation
``on_validation_end``       the epoch's metrics, before they are written to summary.csv: a key
                            added to ``train_metrics`` / ``eval_metrics`` becomes a column
``on_epoch_end``            after the epoch's checkpoint is written
``on_interrupted``          Ctrl-C (or SIGTERM) stopped training; a checkpoint to resume is saved
``on_train_end``            the run is over (finished, or interrupted: ``state.progress.interrupted``)
``on_failure``              an exception escaped the run (it is raised again afterwards)
==========================  =================================================================

This module is part of the core: the training program and the tools both import it.
"""
from typing import Any, Dict, Optional, Tuple

__all__ = ['TrainCallback']


class TrainCallback:
    """Base class of training callbacks: every event is a method that does nothing; override the ones you need.

    Attributes:
        acts_on: the option dests this callback carries out (e.g. ``('push_to_hub',)``). The program
            refuses a run that sets such an option when no callback in the list acts on it (an entry
            point that does not plug the callback in).
    """

    acts_on: Tuple[str, ...] = ()

    def on_options_checked(self, state: Any) -> None:
        """Options parsed and checked; nothing built. Raise ``InputError`` to refuse them (exit code 2)."""

    def on_model_created(self, state: Any) -> None:
        """The timm model is created and its data config resolved (``state.model``)."""

    def on_task_created(self, state: Any) -> None:
        """The task and optimizer exist; a ``--resume`` checkpoint's weights and optimizer state are loaded."""

    def on_train_start(self, state: Any) -> None:
        """Loaders, scheduler, output folder and start point are ready; the first epoch comes next."""

    def on_epoch_start(self, state: Any) -> None:
        """Before the epoch ``state.progress.epoch`` (from batch ``state.progress.start_batch`` on a resume)."""

    def on_step_start(self, state: Any, batch_idx: int) -> None:
        """Before the forward pass of batch ``batch_idx`` of epoch ``state.progress.epoch``."""

    def on_before_validation(self, state: Any) -> None:
        """The epoch's training is done; its validation comes next."""

    def on_validation_end(self, state: Any, train_metrics: Dict[str, Any],
                          eval_metrics: Optional[Dict[str, Any]]) -> None:
        """The epoch's metrics, before summary.csv: keys added become ``train_*`` / ``eval_*`` columns."""

    def on_epoch_end(self, state: Any) -> None:
        """The epoch's checkpoint is written (``state.progress.best_epoch`` is up to date)."""

    def on_interrupted(self, state: Any) -> None:
        """Training was stopped (Ctrl-C); ``state.progress.last_saved`` is the checkpoint to resume from."""

    def on_train_end(self, state: Any) -> None:
        """The run is over: finished, or interrupted (``state.progress.interrupted``). The last event."""

    def on_failure(self, state: Any, error: BaseException) -> None:
        """An exception escaped the run (``InputError``: bad input); it is raised again after the callbacks."""
