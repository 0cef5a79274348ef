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
* ``check_resume_output_dir``: a resume writes into its checkpoint's own folder or a new one,
  never into another run's.
* ``update_summary`` / ``check_summary``: every summary.csv row stays under its column, also
  when a resume logs other metrics.
* ``progress_record``: every process's running averages, for an exact mid-epoch resume under DDP.
* ``DiskFull``: a checkpoint write that runs out of space keeps the last complete checkpoint and
  says what to resume from.
"""
import csv
import errno
import glob
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import tempfile
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm import utils

from ..errors import CommandFailed, InputError, NonFiniteModelError
from ..guard import describe_non_finite, non_finite_tensors
from ..labels import LABEL_NAMES_KEY
from ..loading import choose_weights, follow_umask, load_checkpoint, require_state_dict
from ..processes import process_alive, process_start

__all__ = [
    'ResumePoint', 'read_resume_point', 'check_output_dir', 'ProgressCheckpointSaver', 'trim_summary',
    'remove_recovery_files', 'InterruptRequest', 'check_resume_output_dir', 'check_summary', 'update_summary',
    'progress_record', 'DiskFull', 'claim_output_dir', 'release_output_dir', 'read_claim', 'claim_is_stale',
    'discard_unstarted_run',
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
        meters: the epoch's running sums and counts of the logged train metrics at that point
            (rank 0's in a distributed run).
        train_args: the options the checkpoint was trained with (its ``args``), if recorded.
        world_size: the number of processes that trained it.
        rank_meters: every rank's ``meters`` (distributed runs; empty in records of earlier versions).
        recovery_without_progress: (epoch, update or None) of a recovery checkpoint taken inside
            that epoch with no record of how far (timm's train.py writes such); None otherwise.
    """
    path: str
    epoch: int
    batches_done: int = 0
    updates_done: int = 0
    meters: Dict[str, List[float]] = field(default_factory=dict)
    train_args: Dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    rank_meters: List[Dict[str, List[float]]] = field(default_factory=list)
    recovery_without_progress: Optional[Tuple[int, Optional[int]]] = None

    @property
    def mid_epoch(self) -> bool:
        return self.batches_done > 0

    def meters_of(self, rank: int) -> Dict[str, List[float]]:
        """The running sums and counts ``rank`` had (rank 0's where the record has only those)."""
        if self.rank_meters:
            return dict(self.rank_meters[rank])
        return self.meters


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


def check_training_checkpoint(checkpoint: Any, path: str) -> None:
    """``InputError`` unless ``checkpoint`` records a training state (``state_dict`` and ``epoch``), as --resume needs.

    A file of weights only (``model_best.safetensors``, a plain state dict) says nothing of where the run
    stood: resumed, it would start over at epoch 0 inside that run's folder, overwriting its checkpoints
    and dropping its summary rows.
    """
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint and 'epoch' in checkpoint:
        epoch = checkpoint['epoch']
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InputError(f'--resume {path} records epoch {epoch!r} ({type(epoch).__name__}); expected a whole '
                             f'number >= 0, as train_stim.py and timm write it. The file was changed or written by '
                             f'another tool: resume from another checkpoint of the run, or start a new run from its '
                             f'weights with --initial-checkpoint {shlex.quote(path)}.')
        return
    own = os.path.join(os.path.dirname(os.path.abspath(path)), 'last.pth.tar')
    continue_hint = (f'To continue the run in {os.path.dirname(own)}, pass --resume {shlex.quote(own)} (its own '
                     f'checkpoint). ' if os.path.isfile(own) and not os.path.samefile(own, path) else
                     'To continue a run, pass its own checkpoint (OUTPUT/EXPERIMENT/last.pth.tar). ')
    raise InputError(
        f'--resume {path} holds model weights only (no epoch or optimizer state of a run): it cannot resume a run, '
        f'and nothing was touched. {continue_hint}To start a new run from these weights, pass '
        f'--initial-checkpoint {shlex.quote(path)} (or --pretrained --pretrained-path {shlex.quote(path)}) with a '
        f'new --experiment.')


def read_resume_point(path: str, model: nn.Module, model_name: str) -> ResumePoint:
    """Check a ``--resume`` checkpoint before any data is loaded or file written, and say where to continue.

    Raises:
        InputError: missing, unreadable, truncated or unsafe file, or weights of another model.
    """
    checkpoint = load_checkpoint(path, '--resume')
    state_dict = require_state_dict(checkpoint, path, '--resume')
    check_training_checkpoint(checkpoint, path)
    train_args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    train_args = vars(train_args) if hasattr(train_args, '__dict__') else dict(train_args or {})
    check_fits_model(state_dict, model, path, model_name, trained_as=train_args.get('model'))
    epoch = 0
    if isinstance(checkpoint, dict) and 'epoch' in checkpoint:
        epoch = int(checkpoint['epoch']) + (1 if checkpoint.get('version', 1) > 1 else 0)
    progress = (checkpoint.get('saver') or {}).get(PROGRESS_KEY) if isinstance(checkpoint, dict) else None
    world_size = int((progress or {}).get('world_size') or train_args.get('world_size') or 1)
    if progress:
        return ResumePoint(path, int(progress['epoch']), int(progress['batches_done']), int(progress['updates_done']),
                           dict(progress.get('meters') or {}), train_args, world_size,
                           [dict(m) for m in progress.get('rank_meters') or []])
    return ResumePoint(path, epoch, train_args=train_args, world_size=world_size,
                       recovery_without_progress=_recovery_without_progress(path, checkpoint))


def _recovery_without_progress(path: str, checkpoint: Any) -> Optional[Tuple[int, Optional[int]]]:
    """(epoch, update) of a recovery checkpoint that records no progress, else None.

    timm's ``CheckpointSaver.save_recovery`` names them ``recovery-EPOCH-UPDATE.pth.tar`` and,
    unlike epoch checkpoints, stores no ``metric``; either tells (a file may have been renamed).
    """
    if not isinstance(checkpoint, dict) or 'epoch' not in checkpoint:
        return None
    match = _RECOVERY.search(os.path.basename(path))
    if match and int(match.group(1)) == int(checkpoint['epoch']):
        return int(checkpoint['epoch']), int(match.group(2))
    if isinstance(checkpoint.get('saver'), dict) and 'metric' not in checkpoint:
        return int(checkpoint['epoch']), None
    return None


def check_output_dir(output_dir: str, resuming: bool) -> None:
    """Refuse, before any work, an output folder a run must not write into.

    A fresh run never writes into a non-empty folder (its checkpoints and summary would mix with
    another run's); ``--resume`` continues in place; no run writes into a folder another live run
    claims (``claim_output_dir``). A path that is a file, or a folder that cannot be created or
    written, is refused too.
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
    if not os.path.isdir(output_dir):
        return
    entries = sorted(os.listdir(output_dir))
    record = read_claim(output_dir)
    if record is not None and not claim_is_stale(record):
        raise _in_use(output_dir, entries, _describe_claim(output_dir, record))
    if not resuming and [e for e in entries if e != CLAIM_FILE]:
        raise _in_use(output_dir, entries)


def _in_use(output_dir: str, entries: List[str], held: Optional[str] = None) -> InputError:
    shown = ', '.join(entries[:6]) + (', ...' if len(entries) > 6 else '')
    if held is not None:
        return InputError(f'output folder {output_dir} already holds another run ({len(entries)} entries: {shown}): '
                          f'{held}')
    return InputError(
        f'output folder {output_dir} already holds another run ({len(entries)} entries: {shown}). A new run '
        f'never writes into it: continue that run with --resume '
        f'{shlex.quote(os.path.join(output_dir, "last.pth.tar"))}, or pass another --experiment (or --output).')


CLAIM_FILE = '.timm-stim-run'  # in a run's folder for the run's whole life: who writes into it


def _claim_record() -> Dict[str, Any]:
    """Who claims a folder: this process (pid, host, when, and its start on this host's clock)."""
    pid = os.getpid()
    return {'pid': pid, 'host': socket.gethostname(), 'started': datetime.now().isoformat(timespec='seconds'),
            'process_start': process_start(pid)}


def read_claim(output_dir: str) -> Optional[Dict[str, Any]]:
    """The claim record in ``output_dir`` (``{}`` for a marker without one, as earlier versions wrote), or None."""
    try:
        with open(os.path.join(output_dir, CLAIM_FILE)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def claim_is_stale(record: Dict[str, Any]) -> bool:
    """Whether a claim was left by a process that is gone (it ended without releasing it: kill -9, power loss).

    Decidable only on the claiming host: its pid is not running, or runs a later process (another
    start time). A claim from another host (a shared file system) or without a record is never
    taken as stale: the message says how to clear it.
    """
    pid = record.get('pid')
    if not isinstance(pid, int) or record.get('host') != socket.gethostname():
        return False
    if not process_alive(pid):
        return True
    started = record.get('process_start')
    return started is not None and process_start(pid) not in (None, started)


def _describe_claim(output_dir: str, record: Dict[str, Any]) -> str:
    marker = os.path.join(output_dir, CLAIM_FILE)
    if not record:
        who = 'a run started meanwhile (its claim has no record yet, or an earlier version wrote it)'
    else:
        who = (f'process {record.get("pid")} on host {record.get("host")} (started {record.get("started")}'
               f'{", this process" if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname() else ""})')
    return (f'it is in use by {who}. Two runs writing into one folder would mix their checkpoints and summary rows: '
            f'wait for that run to end, or pass another --experiment (or --output). If no run is live there '
            f'(check on that host: ps -p {record.get("pid", "PID")}), remove {shlex.quote(marker)} and run again.')


def _take_claim(marker: str) -> bool:
    """Create ``marker`` with this process's record, atomically: False if it exists."""
    tmp = f'{marker}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    with open(tmp, 'w') as f:
        json.dump(_claim_record(), f)
    try:
        os.link(tmp, marker)  # atomic, and the marker appears with its record complete
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: O_EXCL, then the record
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, 'w') as f:
            json.dump(_claim_record(), f)
        return True
    finally:
        _remove_partial(tmp)


def claim_output_dir(output_dir: str, resuming: bool = False) -> List[str]:
    """Claim a run's output folder for the run's whole life, so that a second run is refused meanwhile.

    ``check_output_dir`` alone leaves a window: two runs started together both see an empty or
    missing folder, and a resume never looks whether another process writes there. The claim is
    a file (``CLAIM_FILE``) recording this process (pid, host, start time), created atomically:
    exactly one run gets the folder. A claim left by a process that is gone (same host, pid not
    running) is taken over, with a log line; one from another host is refused with how to clear it.

    Args:
        output_dir: the run's folder (created if missing).
        resuming: a ``--resume`` continuing the run in it (a fresh run needs it empty besides).

    Returns:
        What was created (folders, then the claim file), for ``release_output_dir``.

    Raises:
        InputError: another run holds the folder (or, fresh, filled it meanwhile).
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
    while not _take_claim(marker):
        record = read_claim(output_dir)
        if record is None:  # released meanwhile: try again
            continue
        if not claim_is_stale(record):
            release_output_dir(created)
            raise _in_use(output_dir, sorted(os.listdir(output_dir)), _describe_claim(output_dir, record))
        _logger.warning(f'{output_dir}: taking over the claim of process {record.get("pid")} on this host (started '
                        f'{record.get("started")}), which ended without releasing it.')
        stale = f'{marker}.stale-{os.getpid()}'
        try:
            os.rename(marker, stale)  # one of several runs taking it over at once wins; the others retry
            os.remove(stale)
        except OSError:
            pass
    entries = sorted(e for e in os.listdir(output_dir) if e != CLAIM_FILE)
    if entries and not resuming:  # filled between the check and the claim
        release_output_dir(created + [marker])
        raise _in_use(output_dir, entries)
    return created + [marker]


def _is_own_claim(marker: str) -> bool:
    record = read_claim(os.path.dirname(marker)) or {}
    return record.get('pid') == os.getpid() and record.get('host') == socket.gethostname()


def release_output_dir(created: List[str]) -> None:
    """Undo ``claim_output_dir`` (newest first), leaving anything a run wrote since.

    The claim file goes only while it is this process's (a run that took over a stale claim keeps its own).
    """
    for path in reversed(created):
        try:
            if os.path.isdir(path):
                os.rmdir(path)  # only when still empty
            elif not path.endswith(CLAIM_FILE) or _is_own_claim(path):
                os.remove(path)
        except OSError:
            pass


CHECKPOINT_PATTERN = '*.pth.tar'  # last, checkpoint-N, recovery-E-U, model_best: what a run can resume from


def discard_unstarted_run(output_dir: str, created: List[str]) -> bool:
    """Remove a fresh run's folder that holds no checkpoint yet, so that the same command can run again.

    Only for a folder taken empty by ``claim_output_dir`` (every file in it is the run's own):
    its files (args.yaml, summary.csv) go, then the folders the claim created.

    Returns:
        Whether it was discarded (False: a checkpoint is there, to resume from).
    """
    if not os.path.isdir(output_dir) or glob.glob(os.path.join(glob.escape(output_dir), CHECKPOINT_PATTERN)):
        return False
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name != CLAIM_FILE and os.path.isfile(path) and not os.path.islink(path):
            _remove_partial(path)
    release_output_dir(created)
    return True


def _is_checkpoint_folder(folder: str, checkpoint: str) -> bool:
    """Whether ``folder`` is the folder holding ``checkpoint`` (same file system entry: links, spellings)."""
    try:
        return os.path.samefile(os.path.dirname(os.path.abspath(checkpoint)), folder)
    except OSError:
        return False


def check_resume_output_dir(output_dir: str, resume: str) -> None:
    """Refuse, before any work, a resume into a folder that holds another run.

    A resume writes into its checkpoint's own folder (continuing that run) or into an empty or
    new one. Another run's folder would get this run's summary rows under its header, and its
    checkpoints and args.yaml overwritten.
    """
    if not os.path.isdir(output_dir) or _is_checkpoint_folder(output_dir, resume):
        return
    entries = sorted(os.listdir(output_dir))
    if not entries:
        return
    own = os.path.dirname(os.path.abspath(resume))
    shown = ', '.join(entries[:6]) + (', ...' if len(entries) > 6 else '')
    raise InputError(
        f'--resume {resume} continues the run in {own}, but the output folder {output_dir} holds another run '
        f'({len(entries)} entries: {shown}). A resume writes into the checkpoint\'s own folder or into an empty or '
        f'new one: pass --output {shlex.quote(os.path.dirname(own))} --experiment {shlex.quote(os.path.basename(own))} '
        f'to continue in '
        f'{own}, or another --experiment for a new folder.')


_BOM = '\ufeff'  # a UTF-8 byte-order mark, which spreadsheets (Excel) write before the header


def _read_rows(filename: str) -> Tuple[List[List[str]], bool]:
    """summary.csv's rows (blank lines left out), and whether its last line is complete (a BOM is no text)."""
    with open(filename, newline='', encoding='utf-8-sig') as f:
        text = f.read()
    rows = [row for row in csv.reader(io.StringIO(text, newline='')) if row]
    return rows, text.endswith(('\n', '\r'))


def check_summary(filename: str) -> None:
    """Refuse, before any work, a summary.csv whose rows do not fit its header.

    Earlier versions appended a resumed run's rows under the old header when the run logged
    other metrics; which value belongs to which column is then unknown, and trimming the file
    would drop such rows. A last row cut short by a kill is no problem (``trim_summary`` drops it).
    """
    if not os.path.isfile(filename):
        return
    rows, complete = _read_rows(filename)
    if not rows:
        return
    header = rows[0]
    for number, row in enumerate(rows[1:], start=2):
        cut_short = number == len(rows) and not complete
        if row == header or len(row) == len(header) or cut_short:
            continue
        raise InputError(
            f'{filename}: row {number} (epoch {row[0]}) has {len(row)} values under {len(header)} columns '
            f'({", ".join(header)}): an earlier version wrote it when a resume changed the logged metrics, and '
            f'which value belongs to which column is unknown. Fix or delete that row (or move the file away), or '
            f'resume into another --experiment.')


def update_summary(epoch: int, train_metrics: Dict[str, Any], eval_metrics: Optional[Dict[str, Any]],
                   filename: str, lr: Optional[float] = None, log_wandb: bool = False) -> None:
    """timm's ``update_summary``, keeping every row under its column when a resume logs other metrics.

    A resumed run can log metrics the run before it did not (``train_stim_kl`` when stimulative
    training is turned on) or miss some (turned off). New columns go after the file's own, left
    empty in earlier rows; a column this run does not log is left empty in its rows.

    Args:
        epoch: the epoch of the row.
        train_metrics: the epoch's train metrics (columns ``train_NAME``).
        eval_metrics: its validation metrics (``eval_NAME``), if any.
        filename: summary.csv.
        lr: the learning rate column.
        log_wandb: also log the row to wandb.
    """
    rows = _read_rows(filename)[0] if os.path.isfile(filename) else []
    header = rows[0] if rows else None
    row = OrderedDict(epoch=epoch)
    row.update(('train_' + k, v) for k, v in train_metrics.items())
    row.update(('eval_' + k, v) for k, v in (eval_metrics or {}).items())
    if lr is not None:
        row['lr'] = lr
    if header is None or header == list(row):
        utils.update_summary(epoch, train_metrics, eval_metrics, filename, lr=lr, log_wandb=log_wandb)
        return
    columns = header + [k for k in row if k not in header]
    if len(columns) > len(header):
        _add_summary_columns(filename, columns)
    if log_wandb:
        import wandb
        wandb.log(row)
    with open(filename, mode='a', newline='') as f:
        csv.DictWriter(f, fieldnames=columns, restval='').writerow(row)


def _add_summary_columns(filename: str, columns: List[str]) -> None:
    """Rewrite summary.csv under ``columns`` (its own, then new ones), earlier rows leaving the new ones empty."""
    rows, _ = _read_rows(filename)
    added = columns[len(rows[0]):]
    tmp = filename + '.tmp'
    with open(tmp, 'w', newline='') as f:  # written aside and renamed: a kill leaves the old file whole
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(row + [''] * len(added) for row in rows[1:])
    os.replace(tmp, filename)
    _logger.info(f'{filename}: this run also logs {", ".join(added)}; added as columns after the existing ones '
                 f'(empty in earlier rows).')


class DiskFull(CommandFailed):
    """A checkpoint could not be written for lack of space; the partial file is removed, the last complete one kept.

    Args:
        path: the file being written.
        resume_from: the newest complete checkpoint of the run, if any.
        reason: what ran out (``No space left on device (ENOSPC)``, or the quota).
        detail: the error as the writer reported it, when it did not name the cause.
    """

    def __init__(self, path: str, resume_from: Optional[str], reason: str, detail: str = ''):
        super().__init__(f'{reason} while writing {path}')
        self.path, self.resume_from, self.reason, self.detail = path, resume_from, reason, detail

    def report(self) -> str:
        detail = f' (the writer said: {self.detail}; the disk has no space left)' if self.detail else ''
        text = f'{self.reason} while writing {self.path}{detail}. The partial file was removed.'
        if self.resume_from:
            return (f'{text} The last complete checkpoint, {self.resume_from}, is kept. Once space is freed, resume '
                    f'with the same options plus --resume {shlex.quote(self.resume_from)}')
        folder = os.path.dirname(self.path) or '.'
        return (f'{text} No complete checkpoint was written yet: once space is freed, run again with another '
                f'--experiment (or after removing {folder}).')


# Less free space than this after a failed write means the disk is full (torch's own writer
# reports ENOSPC as "unexpected pos ...", without errno).
_FULL_BELOW_BYTES = 1 << 20


def _disk_full_reason(path: str, err: BaseException) -> Optional[str]:
    """Why writing ``path`` failed, if for lack of space: from errno, else from the free space left."""
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return 'No space left on device (ENOSPC)'
        if isinstance(e, OSError) and e.errno == errno.EDQUOT:
            return 'Disk quota exceeded (EDQUOT)'
    if isinstance(err, (OSError, RuntimeError)):
        try:
            if shutil.disk_usage(os.path.dirname(path) or '.').free < _FULL_BELOW_BYTES:
                return 'No space left on device (ENOSPC)'
        except OSError:
            pass
    return None


def _remove_partial(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class ProgressCheckpointSaver(utils.CheckpointSaver):
    """timm's ``CheckpointSaver``; recovery checkpoints also carry the epoch's progress.

    Set ``progress`` (``epoch``, ``batches_done``, ``updates_done``, ``meters``) before
    ``save_recovery``; epoch checkpoints carry none (the epoch is complete).

    A write that fails (a full disk, a second Ctrl-C) leaves no partial file; for lack of space
    it raises ``DiskFull``, naming ``last_complete``: the newest complete checkpoint, to resume from.
    Weights holding NaN or infinite values are never written (``NonFiniteModelError``, naming them and
    ``last_complete``). ``label_names`` (the train dataset's classes), when set, go in every
    checkpoint (``timm_stim.labels``), for ``timm-stim push``.
    """

    progress: Optional[Dict[str, Any]] = None
    last_complete: Optional[str] = None
    label_names: Optional[List[str]] = None

    def set_resumed_from(self, path: str) -> None:
        """The checkpoint this run resumed from is its last complete one, if it is in the run's folder."""
        if _is_checkpoint_folder(self.checkpoint_dir, path):
            self.last_complete = path

    def _save(self, save_path, epoch, metric=None):
        self._refuse_non_finite(save_path)
        self._write(save_path, super()._save, save_path, epoch, metric)

    def _refuse_non_finite(self, save_path: str) -> None:
        """``NonFiniteModelError`` (nothing written) when the model or its EMA holds NaN or infinite weights."""
        modules = [('model', self.model), ('EMA', self.model_ema)]
        if self.task is not None:
            modules = [('model', self.task.get_trainable_module()), ('EMA', self.task.get_trainable_module(ema=True))]
        for what, module in modules:
            if module is None:
                continue
            state_dict = utils.get_state_dict(module, self.unwrap_fn)
            bad = non_finite_tensors(state_dict)
            if bad:
                resume = (f' The last good checkpoint is {self.last_complete}: resume with --resume '
                          f'{self.last_complete}.' if self.last_complete else '')
                raise NonFiniteModelError(f'not saving {save_path}: the {what} weights hold NaN or infinite values in '
                                          f'{describe_non_finite(bad, len(state_dict))}.{resume}', bad)

    def _duplicate(self, src, dst):
        self._write(dst, super()._duplicate, src, dst)

    def _replace(self, src, dst):
        super()._replace(src, dst)
        self.last_complete = dst  # only complete files are renamed into place

    def _write(self, path: str, write, *args) -> None:
        try:
            write(*args)
        except BaseException as e:
            reason = _disk_full_reason(path, e)  # before the partial file frees its space
            _remove_partial(path)
            if reason is None:
                raise
            detail = '' if isinstance(e, OSError) else str(e).strip().splitlines()[0]
            raise DiskFull(path, self.last_complete, reason, detail) from None

    def state_dict(self, epoch=None, metric=None):
        state = super().state_dict(epoch, metric)
        if self.progress is not None:
            state[PROGRESS_KEY] = self.progress
        if self.label_names:
            state[LABEL_NAMES_KEY] = list(self.label_names)
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
    """Keep summary.csv's header and its rows before ``start_epoch``; every row dropped is said in the log.

    A last row without its line end was cut short by a kill: it is dropped (with a warning). Rows
    of ``start_epoch`` and later are dropped by timm's ``trim_summary``, which logs how many.
    """
    if not os.path.exists(filename):
        return
    rows, complete = _read_rows(filename)
    if rows:
        header = rows[0]
        body = [r for r in rows[1:] if r != header]  # a repeated header line is no row
        if body and not complete:
            _logger.warning(f'{filename}: dropping its last row ({",".join(body[-1])}), cut short when the run '
                            f'was stopped.')
            body = body[:-1]
        with open(filename, 'rb') as f:  # saved by a spreadsheet: rewritten without the mark, as timm reads it
            has_bom = f.read(3) == _BOM.encode()
        if len(body) != len(rows) - 1 or not complete or has_bom:
            tmp = filename + '.tmp'
            with open(tmp, 'w', newline='') as f:
                csv.writer(f).writerows([header] + body)
            os.replace(tmp, filename)
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
        """At a training step: whether to stop now; with ``distributed``, whether any rank was asked to."""
        return self.requested_on_any_rank(distributed, device)

    def requested_on_any_rank(self, distributed: bool = False, device: Optional[torch.device] = None) -> bool:
        """Whether a stop was asked for; with ``distributed``, on any rank (a collective: all ranks agree)."""
        if not distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def save_best_safetensors(output_dir: str, use_ema: Optional[bool] = None) -> Optional[str]:
    """Write ``model_best.safetensors`` (the weights of ``model_best.pth.tar``) beside it.

    Args:
        output_dir: the run's folder.
        use_ema: which weights, by ``timm_stim.loading.choose_weights`` (default None: the EMA weights
            when the checkpoint holds them, as ``timm-stim push`` and ``--push-to-hub`` publish).
    """
    from safetensors.torch import save_file
    best = os.path.join(output_dir, 'model_best.pth.tar')
    if not os.path.exists(best):
        return None
    # Read back what the saver wrote, so both files hold the same weights.
    state_dict, _ = choose_weights(load_checkpoint(best), best, use_ema)
    path = os.path.join(output_dir, 'model_best.safetensors')
    tmp = path + '.tmp'
    try:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp, metadata={'format': 'pt'})
        follow_umask(tmp)  # safetensors writes 0600; the run's other files follow the umask
    except BaseException as e:
        reason = _disk_full_reason(tmp, e)
        _remove_partial(tmp)
        if reason is None:
            raise
        raise DiskFull(tmp, os.path.join(output_dir, 'last.pth.tar'), reason) from None
    os.replace(tmp, path)
    return path


def progress_record(epoch: int, batches_done: int, updates_done: int, meters: Dict[str, utils.AverageMeter],
                    distributed: bool = False) -> Dict[str, Any]:
    """What a recovery checkpoint records of its epoch: the position, and the running sums and counts.

    Each process keeps its own running averages (the epoch's metrics average them over
    processes at its end), so a distributed run records every rank's: every process must call
    this then (a collective), and each continues its own on resume.

    Args:
        epoch: the epoch.
        batches_done: batches of it trained.
        updates_done: optimizer updates of it made.
        meters: this process's running averages, by metric name.
        distributed: gather every rank's meters.

    Returns:
        The record (``ProgressCheckpointSaver.progress``).
    """
    own = {name: [m.sum, m.count] for name, m in meters.items()}
    record = {'epoch': epoch, 'batches_done': batches_done, 'updates_done': updates_done, 'meters': own}
    if distributed:
        every = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every, own)
        record.update(meters=every[0], rank_meters=every, world_size=len(every))
    return record
