"""Non-finite values in training: caught at the step, kept out of checkpoints and off the Hub.

A step whose loss, KL term or gradient norm is NaN or infinite would, once the optimizer steps,
turn the weights non-finite for good; every later epoch then trains, validates and saves NaN
without a word. These helpers find such values where they appear:

* ``find_non_finite(result, grad_norm)``: the first non-finite scalar of a task's result dict
  (``loss``, ``task_loss``, ``stim_kl``, ...) or of the gradient norm, by name;
* ``non_finite_tensors`` / ``state_dict_is_finite`` / ``model_is_finite``: weights before they are
  saved or published;
* ``NonFiniteGuard``: what a training loop does at such a step: stop (the default), naming the
  epoch, step, term, AMP dtype and learning rate and the checkpoint to resume from, or skip the
  step (``--nonfinite skip``), counted, up to ``--nonfinite-max`` steps in a row;
* ``StepGuard``: the same at a training loop's step: it knows the epoch, step, learning rate and
  last complete checkpoint, and raises ``SkippedStep`` for a step to skip.

``StimulativeTask`` raises ``timm_stim.errors.NonFiniteLossError`` itself when a subnetwork's KL
term (computed inside the loss's backward) is not finite, before the optimizer steps.
"""
import logging
import math
import shlex
from typing import Any, Dict, Iterable, List, Mapping, Optional

import torch
import torch.nn as nn

from .errors import NonFiniteLossError

__all__ = ['NONFINITE_MODES', 'find_non_finite', 'non_finite_tensors', 'state_dict_is_finite', 'model_is_finite',
           'describe_non_finite', 'total_grad_norm', 'NonFiniteGuard', 'SkippedStep', 'StepGuard']

_logger = logging.getLogger(__name__)

NONFINITE_MODES = ('stop', 'skip')


def _scalar(value: Any) -> Optional[float]:
    """A Python float of a number or a one-element tensor; None for anything else."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item()) if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def find_non_finite(result: Mapping[str, Any], grad_norm: Any = None) -> Optional[str]:
    """The name of the first non-finite scalar of a step: a term of ``result``, else ``grad_norm``.

    Args:
        result: a timm task's result dict; its one-element tensors and numbers are checked
            (``loss`` first, then the others in order; ``output`` and larger tensors are not).
        grad_norm: the step's total gradient norm, if the loop has it.

    Returns:
        ``'loss'``, ``'stim_kl'``, ... or ``'grad_norm'``; None when every value is finite.
    """
    names = (['loss'] if 'loss' in result else []) + [k for k in result if k not in ('loss', 'output')]
    for name in names:
        value = _scalar(result[name])
        if value is not None and not math.isfinite(value):
            return name
    value = _scalar(grad_norm)
    if value is not None and not math.isfinite(value):
        return 'grad_norm'
    return None


def non_finite_tensors(state_dict: Mapping[str, Any]) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` holding a NaN or an infinity, in order."""
    return [name for name, t in state_dict.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def state_dict_is_finite(state_dict: Mapping[str, Any]) -> bool:
    """Whether every floating-point tensor of ``state_dict`` is finite."""
    return not non_finite_tensors(state_dict)


def model_is_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer of ``model`` is finite."""
    return state_dict_is_finite(model.state_dict())


def describe_non_finite(names: List[str], total: int, shown: int = 5) -> str:
    """``'102 of 122 tensors (conv1.weight, bn1.weight, ... and 97 more)'``."""
    listed = ', '.join(names[:shown]) + (f' and {len(names) - shown} more' if len(names) > shown else '')
    return f'{len(names)} of {total} tensors ({listed})'


def total_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together (no clipping), as ``torch.nn.utils.clip_grad_norm_`` computes it."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


class NonFiniteGuard:
    """What a training loop does at a step with a non-finite loss, KL term or gradient norm.

    Call ``check_step`` after the backward and before the optimizer steps (or ``on_error`` with the
    ``NonFiniteLossError`` the task raised inside the backward). It returns ``'ok'`` or ``'skip'``
    (then the loop zeroes the gradients and does not step), or raises ``NonFiniteLossError``
    whose message names the epoch, step, term, AMP dtype and learning rate, and the checkpoint
    to resume from.

    Args:
        mode: ``stop`` (default) or ``skip``.
        max_in_row: in ``skip`` mode, the run stops at this many non-finite steps in a row.
        amp_dtype: the AMP dtype (named in the message), or None when AMP is off.
    """

    def __init__(self, mode: str = 'stop', max_in_row: int = 10, amp_dtype: Optional[torch.dtype] = None):
        if mode not in NONFINITE_MODES:
            raise ValueError(f'nonfinite mode {mode!r}: expected one of {", ".join(NONFINITE_MODES)}.')
        if not isinstance(max_in_row, int) or max_in_row < 1:
            raise ValueError(f'nonfinite max {max_in_row!r}: expected an int >= 1.')
        self.mode, self.max_in_row, self.amp_dtype = mode, max_in_row, amp_dtype
        self.skipped = 0  # non-finite steps skipped so far (summary.csv's nonfinite_skipped counts an epoch's)
        self.in_a_row = 0
        self._epoch_start = 0

    def check_step(self, result: Mapping[str, Any], grad_norm: Any = None, *, epoch: int, step: int, lr: float,
                   resume_from: Optional[str] = None) -> str:
        """``'ok'``, or ``'skip'`` for a non-finite step in skip mode; raises ``NonFiniteLossError`` to stop."""
        term = find_non_finite(result, grad_norm)
        if term is None:
            self.in_a_row = 0
            return 'ok'
        value = _scalar(grad_norm) if term == 'grad_norm' else _scalar(result[term])
        return self._non_finite(term, value, epoch, step, lr, resume_from)

    def on_error(self, error: NonFiniteLossError, *, epoch: int, step: int, lr: float,
                 resume_from: Optional[str] = None) -> str:
        """The decision for a ``NonFiniteLossError`` the task raised at this step: ``'skip'`` or raise."""
        return self._non_finite(error.term, error.value, epoch, step, lr, resume_from)

    def _non_finite(self, term: str, value: Optional[float], epoch: int, step: int, lr: float,
                    resume_from: Optional[str]) -> str:
        amp = str(self.amp_dtype).replace('torch.', '') if self.amp_dtype is not None else 'off (float32)'
        where = f'epoch {epoch}, step {step}: {term} = {value} (AMP {amp}, LR {lr:.4g})'
        self.in_a_row += 1
        if self.mode == 'skip' and self.in_a_row <= self.max_in_row:
            self.skipped += 1
            _logger.warning(f'Non-finite step skipped at {where}; {self.skipped} skipped so far '
                            f'({self.in_a_row} in a row, the run stops at {self.max_in_row + 1}).')
            return 'skip'
        resume = (f' Resume from the last good checkpoint with --resume {shlex.quote(resume_from)}' if resume_from
                  else ' No checkpoint was saved yet to resume from.')
        if self.mode == 'skip':
            why = f'{self.in_a_row} non-finite steps in a row (--nonfinite-max {self.max_in_row})'
        else:
            why = 'a non-finite step (--nonfinite skip skips such steps instead)'
        error = NonFiniteLossError(term, value if value is not None else float('nan'),
                                   f'Training stopped at {why}: {where}. The weights were not updated by it and '
                                   f'no checkpoint of it was saved.{resume} (a lower --lr, --clip-grad or AMP off '
                                   f'may avoid it).')
        error.decided = True  # the guard's verdict, not a term to decide on again
        raise error

    def epoch_metrics(self) -> Dict[str, int]:
        """``{'nonfinite_skipped': N}``: steps skipped since the last call (for the epoch's log and summary.csv)."""
        skipped, self._epoch_start = self.skipped - self._epoch_start, self.skipped
        return {'nonfinite_skipped': skipped}


class SkippedStep(Exception):
    """A non-finite step that ``--nonfinite skip`` drops: the loop zeroes its gradients and does not step."""


class StepGuard:
    """A ``NonFiniteGuard`` at a training loop's steps: it knows where the loop is and what to resume from.

    The loop calls ``at(epoch, step)`` before each step, ``check_loss(result)`` before the
    backward, ``check_grads(parameters)`` between the backward and the optimizer step (where no
    loss scaler skips non-finite gradients itself), and ``task_error(error)`` with a
    ``NonFiniteLossError`` the task raised inside the backward. Each returns when the step is fine,
    raises ``SkippedStep`` to skip it, or raises ``NonFiniteLossError`` to stop the run.

    Args:
        guard: the decisions (``--nonfinite``, ``--nonfinite-max``).
        optimizer: its learning rate is named in the message.
        saver: the run's checkpoint saver (``last_complete`` is the checkpoint to resume from), or None.
        distributed: under DDP the loss is not checked before the backward: a process that skipped its
            backward alone would leave the others waiting in DDP's all-reduce. The gradients, reduced
            over the processes, are checked instead, the same on every process.
    """

    def __init__(self, guard: NonFiniteGuard, optimizer: Any, saver: Any = None, distributed: bool = False):
        self.guard, self.optimizer, self.saver, self.distributed = guard, optimizer, saver, distributed
        self.epoch = self.step = 0

    def at(self, epoch: int, step: int) -> None:
        self.epoch, self.step = int(epoch), int(step)

    def _where(self) -> Dict[str, Any]:
        lrs = [group['lr'] for group in self.optimizer.param_groups]
        return dict(epoch=self.epoch, step=self.step, lr=sum(lrs) / len(lrs),
                    resume_from=getattr(self.saver, 'last_complete', None))

    @staticmethod
    def _decide(decision: str) -> None:
        if decision == 'skip':
            raise SkippedStep()

    def check_loss(self, result: Mapping[str, Any]) -> None:
        """Before the backward: the task's scalars (its loss, ...)."""
        if not self.distributed:
            self._decide(self.guard.check_step(result, None, **self._where()))

    def check_grads(self, parameters: Iterable[torch.Tensor]) -> None:
        """Before the optimizer step: the gradient norm."""
        self._decide(self.guard.check_step({}, total_grad_norm(parameters), **self._where()))

    def task_error(self, error: NonFiniteLossError) -> None:
        """A ``NonFiniteLossError`` the task raised at this step (a verdict of this guard is raised again)."""
        if getattr(error, 'decided', False):
            raise error
        self._decide(self.guard.on_error(error, **self._where()))

    def epoch_metrics(self) -> Dict[str, int]:
        """``{'nonfinite_skipped': N}`` with ``--nonfinite skip`` (a column of summary.csv), else nothing."""
        return self.guard.epoch_metrics() if self.guard.mode == 'skip' else {}
