"""A training run's files and lifecycle: output folder, safe resume, mid-epoch progress, interruption.

* ``check_output_dir``: a fresh run never writes into a non-empty experiment folder; an
  output path that is a file or cannot be written is refused before any work.
* ``read_resume_point``: reads a ``--resume`` checkpoint safely (``timm_stim.loading``) and
  checks it against the model before anything else is loaded or written.
* ``ProgressCheckpointSaver``: timm's ``CheckpointSaver`` whose recovery checkpoints also
  record how far into the epoch they were taken and the epoch's running averages, so a
  resumed run continues that epoch exactly; it reads its history back with ``timm_stim.loading``.
* ``trim_summary`` / ``remove_recovery_files``: a resumed run keeps one header and one row per
  epoch in summary.csv, and drops recovery files it no longer needs.
* ``InterruptRequest``: Ctrl-C stops the run at the next step boundary, with a recovery
  checkpoint, instead of in the middle of an optimizer step.
"""
import csv
import glob
import logging
import os
import re
import signal
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from timm import utils

from ..errors import InputError
from ..loading import load_checkpoint, require_state_dict

__all__ = [
    'ResumePoint', 'read_resume_point', 'check_output_dir', 'ProgressCheckpointSaver', 'trim_summary',
    'remove_recovery_files', 'InterruptRequest',
]

_logger = logging.getLogger(__name__)

PROGRESS_KEY = 'timm_stim_progress'

@dataclass
class ResumePoint:
    """Where a resumed run continues.

    Attributes:
        path: the checkpoint.
        epoch: the epoch to run next (the checkpoint's epoch + 1, or its own epoch when it was
            taken inside it).
        batches_done: batches of ``epoch`` already trained (0 at an epoch boundary).
        updates_done: optimizer updates of ``epoch`` already made.
        meters: the epoch's running sums and counts of the logged train metrics at that point.
        train_args: the options the checkpoint was trained with (its ``args``), if recorded.
    """
    path: str
    epoch: int
    batches_done: int = 0
    updates_done: int = 0
    meters: Dict[str, List[float]] = field(default_factory=dict)
    train_args: Dict[str, Any] = field(default_factory=dict)

    @property
    def mid_epoch(self) -> bool:
        return self.batches_done > 0


def check_fits_model(state_dict: Dict[str, Any], model: nn.Module, path: str, model_name: str,
                     trained_as: Optional[str] = None) -> None:
    """``InputError`` unless ``state_dict`` has exactly the model's keys and shapes (DDP prefixes ignored)."""
    from timm.models import clean_state_dict
    state_dict = clean_state_dict(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f'{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}' for k, v in expected.items()
              if k in state_dict and hasattr(state_dict[k], 'shape') and tuple(state_dict[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing keys (e.g. {", ".join(missing[:3])})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected keys (e.g. {", ".join(unexpected[:3])})')
    if shapes:
        parts.append(f'{len(shapes)} shape mismatches (e.g. {"; ".join(shapes[:2])})')
    origin = f' It was trained as --model {trained_as}.' if trained_as and trained_as != model_name else ''
    raise InputError(f'--resume {path} does not fit --model {model_name} with these options: {", ".join(parts)}.'
                     f'{origin} Pass the options the checkpoint was trained with (its args.yaml via -c).')


def read_resume_point(path: str, model: nn.Module, model_name: str) -> ResumePoint:
    """Check a ``--resume`` checkpoint before any data is loaded or file written, and say where to continue.

    Raises:
        InputError: missing, unreadable, truncated or unsafe file, or weights of another model.
    """
    checkpoint = load_checkpoint(path, '--resume')
    state_dict = require_state_dict(checkpoint, path, '--resume')
    train_args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    train_args = vars(train_args) if hasattr(train_args, '__dict__') else dict(train_args or {})
    check_fits_model(state_dict, model, path, model_name, trained_as=train_args.get('model'))
    epoch = 0
    if isinstance(checkpoint, dict) and 'epoch' in checkpoint:
        epoch = int(checkpoint['epoch']) + (1 if checkpoint.get('version', 1) > 1 else 0)
    progress = (checkpoint.get('saver') or {}).get(PROGRESS_KEY) if isinstance(checkpoint, dict) else None
    if progress:
        return ResumePoint(path, int(progress['epoch']), int(progress['batches_done']), int(progress['updates_done']),
                           dict(progress.get('meters') or {}), train_args)
    return ResumePoint(path, epoch, train_args=train_args)


def check_output_dir(output_dir: str, resuming: bool) -> None:
    """Refuse, before any work, an output folder a run must not write into.

    A fresh run never writes into a non-empty folder (its checkpoints and summary would mix with
    another run's); ``--resume`` continues in place. A path that is a file, or a folder that
    cannot be created or written, is refused too.
    """
    if os.path.isfile(output_dir):
        raise InputError(f'output folder {output_dir} is a file; pass another --output / --experiment.')
    probe = output_dir
    while not os.path.exists(probe):
        parent = os.path.dirname(probe.rstrip(os.sep)) or '.'
        if parent == probe:
            break
        probe = parent
    if os.path.isfile(probe):
        raise InputError(f'output folder {output_dir} cannot be created: {probe} is a file.')
    try:  # permissions alone do not tell (root, read-only mounts): try it, leaving nothing behind
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise InputError(f'output folder {output_dir} cannot be written (no file can be created in {probe}: '
                         f'{e.strerror}); pass another '
                         f'--output.') from None
    if os.path.isdir(output_dir) and not resuming:
        entries = sorted(os.listdir(output_dir))
        if entries:
            raise _in_use(output_dir, entries)


def _in_use(output_dir: str, entries: List[str]) -> InputError:
    shown = ', '.join(entries[:6]) + (', ...' if len(entries) > 6 else '')
    return InputError(
        f'output folder {output_dir} already holds another run ({len(entries)} entries: {shown}). A new run '
        f'never writes into it: continue that run with --resume {os.path.join(output_dir, "last.pth.tar")}, '
        f'or pass another --experiment (or --output).')


CLAIM_FILE = '.timm-stim-run'  # in a run's folder from the moment it is taken until its first file is written


def claim_output_dir(output_dir: str) -> List[str]:
    """Take a fresh run's output folder at once, so that a second run started meanwhile is refused.

    ``check_output_dir`` alone leaves a window: two runs started together both see an empty or
    missing folder. Creating a marker file in it with ``O_EXCL`` is atomic: exactly one run gets
    the folder; the other finds the marker (or, later, the run's files) and is refused.

    Returns:
        What was created (folders, then the marker), for ``release_output_dir``.

    Raises:
        InputError: another run took the folder first.
    """
    created: List[str] = []
    missing, folder = [], os.path.abspath(output_dir)
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
            created.append(folder)
        except FileExistsError:  # made by the other run meanwhile
            pass
    marker = os.path.join(output_dir, CLAIM_FILE)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        release_output_dir(created)
        raise _in_use(output_dir, sorted(os.listdir(output_dir))) from None
    entries = sorted(e for e in os.listdir(output_dir) if e != CLAIM_FILE)
    if entries:  # filled between the check and the claim
        release_output_dir(created + [marker])
        raise _in_use(output_dir, entries)
    return created + [marker]


def release_output_dir(created: List[str]) -> None:
    """Undo ``claim_output_dir`` (newest first), leaving anything a run wrote since."""
    for path in reversed(created):
        try:
            if os.path.isdir(path):
                os.rmdir(path)  # only when still empty
            else:
                os.remove(path)
        except OSError:
            pass


class ProgressCheckpointSaver(utils.CheckpointSaver):
    """timm's ``CheckpointSaver``; recovery checkpoints also carry the epoch's progress.

    Set ``progress`` (``epoch``, ``batches_done``, ``updates_done``, ``meters``) before
    ``save_recovery``; epoch checkpoints carry none (the epoch is complete).
    """

    progress: Optional[Dict[str, Any]] = None

    def state_dict(self, epoch=None, metric=None):
        state = super().state_dict(epoch, metric)
        if self.progress is not None:
            state[PROGRESS_KEY] = self.progress
        return state

    def load_state_dict_from_checkpoint(self, checkpoint_path: str) -> bool:
        """Restore the checkpoint history of ``--resume``, read as every checkpoint is (``timm_stim.loading``).

        timm's own method memory-maps the file, which fails for an old-format (non-zip) checkpoint
        and then silently starts the history afresh.
        """
        checkpoint = load_checkpoint(checkpoint_path, '--resume')
        state = checkpoint.get('saver') if isinstance(checkpoint, dict) else None
        if state is None:
            _logger.warning(f"No checkpoint history in '{checkpoint_path}', ranked checkpoints start fresh.")
            return False
        self.load_state_dict(state)
        return True

    def save_recovery(self, epoch, batch_idx=0, progress: Optional[Dict[str, Any]] = None):
        self.progress = progress
        try:
            super().save_recovery(epoch, batch_idx=batch_idx)
        finally:
            self.progress = None
        return self.curr_recovery_file


def trim_summary(filename: str, start_epoch: int) -> None:
    """Keep summary.csv's header and its rows before ``start_epoch``, dropping a row cut short by a kill."""
    if not os.path.exists(filename):
        return
    with open(filename, newline='') as f:
        rows = list(csv.reader(f))
    if rows:
        header = rows[0]
        body = [r for r in rows[1:] if len(r) == len(header) and r[0] != 'epoch']
        if len(body) != len(rows) - 1:
            with open(filename, 'w', newline='') as f:
                csv.writer(f).writerows([header] + body)
    utils.trim_summary(filename, start_epoch)


_RECOVERY = re.compile(r'recovery-(\d+)-(\d+)\.pth\.tar$')


def remove_recovery_files(output_dir: str, up_to_epoch: int, keep: Optional[str] = None) -> List[str]:
    """Delete recovery checkpoints of epochs ``<= up_to_epoch`` (their epoch checkpoint supersedes them)."""
    removed = []
    for path in glob.glob(os.path.join(output_dir, 'recovery-*.pth.tar')):
        match = _RECOVERY.search(os.path.basename(path))
        if match and int(match.group(1)) <= up_to_epoch and path != keep:
            try:
                os.remove(path)
                removed.append(path)
            except OSError as e:
                _logger.warning(f'Could not remove {path}: {e}')
    return removed


class InterruptRequest:
    """Turns the first Ctrl-C (SIGINT) into a request to stop at the next step boundary.

    A second Ctrl-C interrupts at once, as usual. Use as a context manager around training; in
    a thread other than the main one (where signal handlers cannot be set) it does nothing.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        _logger.warning('Ctrl-C: stopping after this step, with a checkpoint to resume from '
                        '(press Ctrl-C again to stop at once).')

    def __enter__(self) -> 'InterruptRequest':
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def poll(self, distributed: bool = False, device: Optional[torch.device] = None) -> bool:
        """Whether to stop now; with ``distributed``, whether any rank was asked to (all ranks agree)."""
        if not distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def save_best_safetensors(output_dir: str, use_ema: bool) -> Optional[str]:
    """Write ``model_best.safetensors`` (the weights of ``model_best.pth.tar``) beside it."""
    from safetensors.torch import save_file
    from timm.models import load_state_dict
    best = os.path.join(output_dir, 'model_best.pth.tar')
    if not os.path.exists(best):
        return None
    # Read back what the saver wrote, so both files hold the same weights; timm logs every
    # such read at INFO, which here would repeat a line per new best epoch.
    helpers_logger = logging.getLogger('timm.models._helpers')
    level = helpers_logger.level
    helpers_logger.setLevel(logging.WARNING)
    try:
        state_dict = load_state_dict(best, use_ema=use_ema)
    finally:
        helpers_logger.setLevel(level)
    path = os.path.join(output_dir, 'model_best.safetensors')
    tmp = path + '.tmp'
    save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp, metadata={'format': 'pt'})
    os.replace(tmp, path)
    return path
