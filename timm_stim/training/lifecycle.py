"""``RunLifecycle``: what makes a run trustworthy, in one object the loop calls at named points.

An output folder that is never another run's, a ``--resume`` that is read safely and repeats
the uninterrupted run exactly (per-sample seeding, mid-epoch recovery checkpoints), and files
that stay consistent when a run is killed. The pieces live in ``runs.py`` (folders, resume
points, the saver) and ``seeding.py``; this object is how the loop uses them. Its calls at
fixed places of the flow:

==========================  =================================================================
``check_resume``            read ``--resume`` safely, check it fits the model and can be continued
``check_output_dir``        refuse a non-empty experiment folder for a fresh run, another run's
                            folder for a resume, a summary.csv whose rows do not fit its header,
                            a folder another live process claims; claim it for the run's life
``wrap_train_dataset``      per-sample seeding (``--seed-scheme per-sample``, the default)
``on_train_loader``         the seeded epoch order; refuse a mid-epoch resume it cannot continue
``create_saver``            timm's saver, recording mid-epoch progress in recovery checkpoints
``start_point``             where a resumed run starts (epoch, batch, updates, meters)
==========================  =================================================================

and the training events it acts on (it is a ``timm_stim.callbacks.TrainCallback``):

==========================  =================================================================
``on_train_start``          log when the same command repeats the run (``repeatability_note``)
``on_epoch_start``          seed the epoch and skip what a mid-epoch resume already did
``on_step_start``           seed the step (mixup, drop-path, dropout)
``on_epoch_end``            ``model_best.safetensors``; drop recovery files the epoch supersedes
``on_failure``              ``release``: drop the claim; a fresh run without a checkpoint leaves
                            no folder. A run that ends otherwise keeps its claim while the
                            entry point's callbacks run (a push) and drops it when the command
                            ends (``errors.at_command_exit``)
==========================  =================================================================
"""
import logging
import os
import shlex
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm import utils

from ..callbacks import TrainCallback
from ..errors import InputError, at_command_exit
from ..labels import dataset_label_names
from .runs import (CLAIM_FILE, ProgressCheckpointSaver, ResumePoint, check_output_dir, check_resume_output_dir,
                   check_summary, claim_output_dir, discard_unstarted_run, read_resume_point, release_output_dir,
                   remove_recovery_files, save_best_safetensors)
from .seeding import (PerSampleSeededDataset, derive_seed, install_per_sample_seeding, per_sample_seeding_unsupported,
                      seed_all)

__all__ = ['RunLifecycle']

_logger = logging.getLogger('train_stim')


def repeatability_note(device: torch.device) -> str:
    """The log line saying when the same command repeats this run bit for bit (docs/trustworthy-runs.md).

    On CPU, float32 and bfloat16 AMP alike, a run repeats exactly with the same number of intra-op
    threads: torch splits every reduction (convolution, matrix product, sum) into one partial sum
    per thread, so another count rounds differently, and those last-bit differences grow over the
    steps. CUDA runs use cuDNN autotuning and atomic adds (timm's train.py settings), which are not
    bit-repeatable.
    """
    if device.type == 'cpu':
        threads = torch.get_num_threads()
        return (f'Repeatable on this machine with {threads} CPU thread{"s" if threads != 1 else ""} '
                f'(torch.get_num_threads()): the same command gives the same summary.csv with as many threads; '
                f'another count (OMP_NUM_THREADS, a CPU affinity mask such as taskset or a container\'s cpuset) '
                f'rounds sums differently. Pin it with OMP_NUM_THREADS={threads} to repeat this run.')
    return (f'Not bit-repeatable on {device.type}: cuDNN autotuning and atomic adds (as in timm\'s train.py) '
            f'make two runs of the same command differ in the last bits; CPU runs repeat exactly.')


class RunLifecycle(TrainCallback):
    """Output folder, resume and recovery, per-sample seeding of one training run.

    Args:
        args: the parsed options.
    """

    def __init__(self, args):
        self.args = args
        self.epoch_order = None  # seeding.EpochOrderSampler of the train loader (per-sample scheme)
        self.resume_point: Optional[ResumePoint] = None
        self._skip_batch_size = args.batch_size  # samples per batch the loader yields (per process)
        self._claimed = []  # what claim_output_dir created: the run's claim on its folder, until release()
        self._output_dir: Optional[str] = None
        self.label_names = None  # the train dataset's class names (wrap_train_dataset), recorded in checkpoints

    @property
    def per_sample(self) -> bool:
        return self.args.seed_scheme == 'per-sample'

    def check_resume(self, model: nn.Module) -> Optional[ResumePoint]:
        """Read ``--resume`` (safely), check it fits the model and can be continued, before data or outputs."""
        if not self.args.resume:
            return None
        point = read_resume_point(self.args.resume, model, self.args.model)
        self._check_recovery_without_progress(point)
        self._check_processes(point)
        self.resume_point = point
        return point

    def _check_recovery_without_progress(self, point: ResumePoint) -> None:
        """Refuse a recovery checkpoint that does not say how far into its epoch it was (unless ``--start-epoch``)."""
        if point.recovery_without_progress is None or self.args.start_epoch is not None:
            return
        epoch, update = point.recovery_without_progress
        after = f' (after update {update})' if update is not None else ''
        last = epoch + 1 >= self.args.epochs
        skipped = 'and, as it is the last epoch, train nothing' if last else f'and go on at epoch {epoch + 1}'
        options = [f'--start-epoch {epoch} to train epoch {epoch} again from its start on these weights']
        if not last:
            options.append(f'--start-epoch {epoch + 1} to go on at the next epoch, as timm\'s train.py does')
        if epoch > 0:
            last_epoch = shlex.quote(os.path.join(os.path.dirname(point.path), 'last.pth.tar'))
            options.append(f'--resume {last_epoch} (the checkpoint of epoch {epoch - 1}) to repeat the uninterrupted run')
        raise InputError(
            f'--resume {point.path} is a recovery checkpoint taken inside epoch {epoch}{after} without a record of how '
            f'far into the epoch it was (timm\'s train.py writes none): resuming it would skip the rest of epoch '
            f'{epoch} {skipped}. Pass ' + '; or '.join(options) + '.')

    def _check_processes(self, point: ResumePoint) -> None:
        """Refuse a mid-epoch resume by another number of processes: each continues its own share of the epoch."""
        world_size = self.args.world_size if self.args.distributed else 1
        if not point.mid_epoch or point.world_size == world_size:
            return
        raise InputError(
            f'--resume {point.path} was saved inside epoch {point.epoch} by {point.world_size} processes; this run has '
            f'{world_size}. Each process continues its own share of the epoch, so it can be continued exactly only '
            f'by {point.world_size} processes: run with as many (e.g. torchrun --nproc_per_node {point.world_size}), '
            f'or resume from the last epoch checkpoint (last.pth.tar in the same folder).')

    def check_output_dir(self, output_dir: str) -> None:
        """Refuse an output folder the run must not write into; claim it for the run's whole life.

        Fresh runs and resumes alike hold the claim (``runs.claim_output_dir``) until ``release``,
        which runs by itself when the command ends (``errors.at_command_exit``), however it ends.
        """
        resuming = bool(self.args.resume)
        check_output_dir(output_dir, resuming=resuming)
        if resuming:
            check_resume_output_dir(output_dir, self.args.resume)
            check_summary(os.path.join(output_dir, 'summary.csv'))
        self._claimed = claim_output_dir(output_dir, resuming=resuming)
        self._output_dir = output_dir
        at_command_exit(lambda error: self.release())

    def output_dir_written(self) -> None:
        """The run's first file is in its folder. The claim stays until ``release`` (nothing to do here now)."""

    def release(self) -> None:
        """Give the output folder back: call once the run ends, however it ends (in a ``finally``).

        The claim file goes. A fresh run that wrote no checkpoint yet (bad input found late, Ctrl-C
        while the data loads, a crash before the first epoch ends) leaves no folder behind, so the
        same command can run again: its files (args.yaml) and the folders it created go too. A
        resume never removes anything but its claim. Safe to call more than once.
        """
        if not self._claimed:
            return
        if self.args.resume or not discard_unstarted_run(self._output_dir, self._claimed):
            release_output_dir([p for p in self._claimed if p.endswith(CLAIM_FILE)])
        self._claimed = []

    def release_output_dir(self) -> None:
        """``release`` (the name train.py calls when it stops on bad input before training)."""
        self.release()

    def wrap_train_dataset(self, dataset, num_classes: Optional[int] = None):
        """Per-sample seeding of augmentations (map-style datasets, ``--seed-scheme per-sample``).

        Also notes the dataset's class names, which the saver records in every checkpoint.
        """
        self.label_names = dataset_label_names(dataset, num_classes)
        if not self.per_sample or isinstance(dataset, torch.utils.data.IterableDataset):
            return dataset
        return PerSampleSeededDataset(dataset, seed=self.args.seed, rank=self.args.rank)

    def on_train_loader(self, loader, batch_size: int) -> None:
        """The seeded epoch order on the train loader; refuse a mid-epoch resume it cannot continue exactly."""
        self._check_mid_epoch_resume(loader, batch_size)
        if not self.per_sample:
            return
        args = self.args
        reason = per_sample_seeding_unsupported(loader)
        if reason is not None:
            if self.resume_point is not None and self.resume_point.mid_epoch:
                raise InputError(f'--resume {args.resume} was saved inside epoch {self.resume_point.epoch}, and this '
                                 f'loader cannot continue an epoch exactly: {reason}. Resume from the last epoch '
                                 f'checkpoint instead (last.pth.tar in the same folder).')
            if utils.is_primary(args):
                _logger.info(f'Per-sample seeding is off for this loader ({reason}): augmentations draw as in timm, so '
                             f'--resume repeats the uninterrupted run only up to data-loader randomness.')
            return
        self.epoch_order = install_per_sample_seeding(loader, seed=args.seed, rank=args.rank)

    def _check_mid_epoch_resume(self, loader, batch_size: int) -> None:
        point = self.resume_point
        if point is None or not point.mid_epoch:
            return
        batch_sampler = getattr(getattr(loader, 'loader', loader), 'batch_sampler', None)
        sizes = getattr(batch_sampler, 'batch_sizes', None) or [getattr(batch_sampler, 'batch_size', batch_size)]
        self._skip_batch_size = int(sizes[0])
        if len(set(sizes)) > 1:
            raise InputError(f'--resume {self.args.resume} was saved inside epoch {point.epoch}, and with several '
                             f'--train-batch-sizes the epoch cannot be continued exactly. Resume from the last epoch '
                             f'checkpoint instead (last.pth.tar in the same folder).')

    def create_saver(self, **kwargs) -> ProgressCheckpointSaver:
        saver = ProgressCheckpointSaver(**kwargs)
        saver.label_names = self.label_names
        if self.args.resume:
            saver.load_state_dict_from_checkpoint(self.args.resume)
            saver.set_resumed_from(self.args.resume)
        return saver

    def start_point(self, resume_epoch: Optional[int]) -> Tuple[int, int, int, Optional[Dict[str, Any]]]:
        """(epoch, batches done, updates done, running meters) to start at: ``--start-epoch``, the resume point, 0."""
        if self.args.start_epoch is not None:
            return self.args.start_epoch, 0, 0, None  # a specified start_epoch always overrides the resume epoch
        point = self.resume_point
        if point is not None:
            if point.mid_epoch:
                self._warn_inexact_mid_epoch(point)
                return point.epoch, point.batches_done, point.updates_done, point.meters_of(self.args.rank)
            return point.epoch, 0, 0, None
        return resume_epoch or 0, 0, 0, None

    def _warn_inexact_mid_epoch(self, point: ResumePoint) -> None:
        """Say when a mid-epoch resume cannot repeat the uninterrupted run (documented, but easy to miss)."""
        if not utils.is_primary(self.args):
            return
        if not self.per_sample:
            _logger.warning(f'--seed-scheme timm: resuming inside epoch {point.epoch} trains its remaining steps, but '
                            f'not exactly as the uninterrupted run (timm\'s seeding draws another data order and '
                            f'other augmentations); only --seed-scheme per-sample repeats it exactly.')
        if point.world_size > 1 and not point.rank_meters:
            _logger.warning(f'--resume {point.path} records only rank 0\'s running averages of epoch {point.epoch} '
                            f'(an earlier version wrote it): every rank continues from those, so this epoch\'s train '
                            f'metrics differ from the uninterrupted run\'s (the weights do not).')

    def on_train_start(self, state) -> None:
        """Say in the log what a repeat of this command needs to give the same summary.csv (one line)."""
        if utils.is_primary(self.args):
            _logger.info(repeatability_note(state.model.device))

    def on_epoch_start(self, state) -> None:
        """Seed the epoch (its order, and what runs before the first step); skip what a resume already did."""
        if not self.per_sample:
            return
        epoch, start_batch = state.progress.epoch, state.progress.start_batch
        seed_all(derive_seed('epoch', self.args.seed, self.args.rank, epoch))
        if self.epoch_order is not None:
            self.epoch_order.set_epoch(epoch)
            self.epoch_order.skip_next(start_batch * self._skip_batch_size)
        erasing = getattr(state.data.loader_train, 'random_erasing', None)
        if hasattr(erasing, 'set_position'):
            erasing.set_position(epoch, start_batch)

    def on_step_start(self, state, batch_idx: int) -> None:
        """Seed this step's main-process draws (mixup, drop-path, dropout)."""
        if self.per_sample:
            seed_all(derive_seed('step', self.args.seed, self.args.rank, state.progress.epoch, batch_idx))

    def on_epoch_end(self, state) -> None:
        """``model_best.safetensors`` when the epoch is the best; drop the recovery files it supersedes."""
        output_dir, epoch = state.progress.output_dir, state.progress.epoch
        if output_dir is None or state.progress.checkpoint_epoch != epoch:  # an epoch without checkpoint keeps them
            return
        if state.progress.best_epoch == epoch:
            save_best_safetensors(output_dir)  # the weights timm-stim push and --push-to-hub publish
        remove_recovery_files(output_dir, up_to_epoch=epoch)

    def on_failure(self, state, error: BaseException) -> None:
        """Whatever failed: drop the claim; a fresh run that wrote no checkpoint yet leaves no folder behind."""
        self.release()
