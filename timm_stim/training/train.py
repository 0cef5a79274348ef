"""The training program behind ``train_stim.py`` and ``timm-stim train``: timm's ``train.py``, step by step.

Every option of timm's train.py has its meaning there, and everything timm provides is used as
is (datasets, loaders, mixup, losses, optimizers, schedulers, EMA, checkpoint saver,
distributed helpers, tasks). The loop is task-agnostic like timm's: it back-propagates the
task's ``loss``, clips ``task.get_clip_parameters()``, and logs every other scalar the task
returns. The run is held in a declared ``TrainState`` (``state.py``); ``args`` is read-only once
``resolve_args`` has run. What train_stim.py adds is called at the events of one callback protocol
(``timm_stim.callbacks.TrainCallback``): ``StimTraining`` (everything about stimulative
training), ``RunLifecycle`` (output folder, resume and recovery, per-sample seeding), then the
callbacks the caller passes (the entry points plug in the Hub publisher, ``timm_stim.cli``).
"""
import argparse
import json
import logging
import os
import shlex
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from typing import Any, Dict, Optional, Sequence, Type

import torch
import torch.nn as nn
from timm import utils
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader, resolve_data_config
from timm.layers import convert_splitbn_model, convert_sync_batchnorm, set_fast_norm
from timm.loss import create_classification_loss
from timm.models import safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask, load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import NativeScaler

from ..callbacks import TrainCallback
from ..config import StimConfig
from ..devices import resolve_amp_dtype
from ..errors import EXIT_INTERRUPTED, InputError, NonFiniteLossError, run_command
from ..guard import NonFiniteGuard, SkippedStep, StepGuard
from ..loading import create_model_from_options
from .args import check_args, parse_args
from .data import resolve_dataset, with_image_mode
from .lifecycle import RunLifecycle
from .runs import InterruptRequest, progress_record, trim_summary, update_summary
from .state import DataState, ModelState, OptimState, ProgressState, TrainState
from .stim import StimTraining

_logger = logging.getLogger('train_stim')


# ---------------------------------------------------------------------------------------------
# Pieces of timm's flow, as functions
# ---------------------------------------------------------------------------------------------

def create_train_model(args) -> nn.Module:
    """``timm.create_model`` with the keyword arguments timm's train.py passes (``timm_stim.loading``)."""
    return create_model_from_options(vars(args), for_training=True)


def model_dtype_of(args) -> Optional[torch.dtype]:
    """``--model-dtype`` as a torch dtype (None: the model's own, float32)."""
    return getattr(torch, args.model_dtype) if args.model_dtype else None


def create_train_criterion(args, mixup_active: bool, num_aug_splits: int) -> nn.Module:
    """The task loss for these options, from timm's own factory (as timm's train.py selects it)."""
    loss_type = 'jsd' if args.jsd_loss else ('bce' if args.bce_loss else None)
    return create_classification_loss(
        loss_type=loss_type, smoothing=args.smoothing, soft_targets=mixup_active,
        pos_weight=args.bce_pos_weight, bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum,
        jsd_splits=num_aug_splits if args.jsd_loss else 0)


def create_loss_scaler(device: torch.device, amp_dtype: torch.dtype, use_amp: bool) -> Optional[NativeScaler]:
    """timm's ``NativeScaler`` where AMP needs loss scaling: float16 autocast on CUDA (as timm's train.py)."""
    if use_amp and device.type == 'cuda' and amp_dtype == torch.float16:
        return NativeScaler(device=device.type)
    return None


def set_loader_epoch(loader, epoch: int) -> None:
    """Tell the dataset and sampler the epoch, as timm's train.py does."""
    if hasattr(loader.dataset, 'set_epoch'):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.batch_sampler, 'set_epoch'):
        loader.batch_sampler.set_epoch(epoch)
    elif hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)


def batches_per_epoch(loader, args) -> int:
    """Training batches per epoch: the loader's length, capped by ``--train-batches-per-epoch``."""
    if args.train_batches_per_epoch:
        return min(len(loader), args.train_batches_per_epoch)
    return len(loader)


def _create_dataset(name, root, split, **kwargs):
    try:
        return create_dataset(name, root=root, split=split, **kwargs)
    except (RuntimeError, FileNotFoundError, NotADirectoryError) as e:  # e.g. "Found 0 images in ..."
        where = f' in {root}' if root else ''
        raise InputError(f'the {split!r} split of --dataset {name or "(image folder)"}{where} cannot be read: '
                         f'{str(e).strip().splitlines()[0]}') from None


def _check_batch_fits(args, dataset) -> None:
    """Refuse a batch larger than a process's share of the training set: timm drops the last partial
    training batch, so the epoch would have no batch at all (and the run would crash later)."""
    if not hasattr(dataset, '__len__') or args.train_img_sizes is not None:
        return
    per_process = len(dataset) // max(args.world_size, 1)
    if per_process < args.batch_size:
        raise InputError(f'-b/--batch-size {args.batch_size} is larger than the training set ({len(dataset)} images'
                         f'{f" over {args.world_size} processes" if args.world_size > 1 else ""}): every training '
                         f'batch is full (the last partial one is dropped, as in timm), so an epoch would train '
                         f'nothing. Use -b {max(per_process, 1)} or less.')


def create_train_task(args, model: nn.Module, criterion: nn.Module, device: torch.device,
                      data_config: Dict[str, Any], stim: StimTraining):
    """The loop's task: timm's (classification, or distillation with ``--kd-model-name``), stimulative when ST is on.

    Args:
        args: the parsed options.
        model: the model to train.
        criterion: the task loss.
        device: the training device.
        data_config: timm's resolved data config (mean / std for ``--stim-resize official``).
        stim: the run's ``StimTraining`` (after ``on_model_created``).
    """
    model_dtype = model_dtype_of(args)
    base, kwargs = ClassificationTask, dict(model=model, criterion=criterion, device=device, dtype=model_dtype,
                                            verbose=utils.is_primary(args))
    if args.kd_model_name:
        from timm.task import FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask
        base = {'logit': LogitDistillationTask, 'feature': FeatureDistillationTask,
                'token': TokenDistillationTask}[args.kd_distill_type]
        kwargs = dict(student_model=model, teacher_model=args.kd_model_name, criterion=criterion,
                      distill_loss_weight=args.distill_loss_weight, task_loss_weight=args.task_loss_weight,
                      device=device, dtype=model_dtype, verbose=utils.is_primary(args))
        if args.kd_distill_type == 'logit':
            kwargs.update(loss_type=args.kd_loss_type, temperature=args.kd_temperature)
        elif args.kd_distill_type == 'feature':
            kwargs.update(student_feature_dim=args.kd_student_feature_dim,
                          teacher_feature_dim=args.kd_teacher_feature_dim)
        else:
            kwargs.update(distill_type=args.kd_token_distill_type, temperature=args.kd_temperature)
    build = (lambda: stim.create_task(base, kwargs, data_config)) if stim.enabled else (lambda: base(**kwargs))
    try:
        return build()
    except (OSError, RuntimeError, ValueError) as e:  # hub/cache/file errors while loading the teacher
        if not args.kd_model_name:
            raise
        raise InputError(
            f'--kd-model-name {args.kd_model_name!r}: could not create the teacher with pretrained weights '
            f'({type(e).__name__}: {e}). Pass a model timm can load with pretrained=True here: a Hub model in '
            f'the local cache, or local-dir:DIR with config.json and model.safetensors.') from e


# ---------------------------------------------------------------------------------------------
# One epoch of training, one validation pass
# ---------------------------------------------------------------------------------------------

def train_one_epoch(
        epoch, model, loader, optimizer, args, task, device=torch.device('cuda'), lr_scheduler=None, saver=None,
        output_dir=None, amp_autocast=nullcontext, loss_scaler=None, model_dtype=None, mixup_fn=None,
        naflex_mode=False, scheduled_batch_mode=False, batch_size_reference=None, on_step_start=None, start_batch=0,
        updates_done=0, meters=None, interrupt=None, guard=None):
    """One epoch, as timm's ``train_one_epoch``, with ``on_step_start`` and ``guard``. Returns metrics, interrupted."""
    _mixup_off(args, epoch, loader, mixup_fn)
    second_order = hasattr(optimizer, 'is_second_order') and optimizer.is_second_order
    has_no_sync = args.distributed and hasattr(task.get_trainable_module(), 'no_sync')
    update_time_m = utils.AverageMeter()
    data_time_m = utils.AverageMeter()
    scalar_m = _scalar_meters(meters)

    task.get_trainable_module().train()

    num_batches = batches_per_epoch(loader, args)
    accum_steps = args.grad_accum_steps
    last_accum_steps = num_batches % accum_steps
    updates_per_epoch = (num_batches + accum_steps - 1) // accum_steps
    num_updates = epoch * updates_per_epoch + updates_done
    last_batch_idx = num_batches - 1
    last_batch_idx_to_accum = num_batches - last_accum_steps

    interrupted = False
    data_start_time = update_start_time = time.time()
    optimizer.zero_grad()
    update_sample_count = 0
    for batch_idx, (input, target) in enumerate(loader, start=start_batch):
        if batch_idx >= num_batches:
            break
        last_batch = batch_idx == last_batch_idx
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        update_idx = batch_idx // accum_steps
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps
        if on_step_start is not None:
            on_step_start(batch_idx)
        if hasattr(task, 'set_progress'):
            task.set_progress(epoch, batch_idx)
        if guard is not None:
            guard.at(epoch, batch_idx)

        if not args.prefetcher:
            input, target = input.to(device=device, dtype=model_dtype), target.to(device=device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)

        # multiply by accum steps to get equivalent for full update
        data_time_m.update(accum_steps * (time.time() - data_start_time))

        def _forward():
            with amp_autocast():
                result = task(input, target)
                _loss = result['loss']
            if accum_steps > 1:
                _loss /= accum_steps
            return _loss, result

        def _backward(_loss):
            clip_parameters = None
            if args.clip_grad is not None:
                clip_parameters = task.get_clip_parameters(exclude_head='agc' in args.clip_mode)
            if loss_scaler is not None:
                loss_scaler(
                    _loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                    parameters=clip_parameters, create_graph=second_order, need_update=need_update)
            else:
                _loss.backward(create_graph=second_order)
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(clip_parameters, value=args.clip_grad, mode=args.clip_mode)
                    if guard is not None:  # (timm's NativeScaler path skips non-finite gradients itself)
                        guard.check_grads(task.get_trainable_module().parameters())
                    optimizer.step()

        batch_size = input['patches'].shape[0] if naflex_mode else input.shape[0]
        local_scale, dist_scale, global_batch_size = _loss_scales(
            args, batch_size, batch_size_reference, naflex_mode, scheduled_batch_mode, device)

        def _step():
            loss, result = _forward()
            if guard is not None:
                guard.check_loss(result)
            scaled_loss = loss
            if local_scale != 1.0 or dist_scale is not None:
                scaled_loss = local_scale * loss
                if dist_scale is not None:
                    scaled_loss = scaled_loss * dist_scale
            _backward(scaled_loss)
            return loss, result

        try:
            with task.no_sync() if has_no_sync and not need_update else nullcontext():
                loss, result = _guarded(_step, guard)
        except SkippedStep:  # --nonfinite skip: no optimizer step, nothing of it in the running averages
            optimizer.zero_grad()
            update_sample_count = 0
            data_start_time = time.time()
            continue

        scalar_m['loss'].update(loss.item() * accum_steps, batch_size)
        for name, value in result.items():  # task-specific terms (task_loss, kd_loss, stim_kl, ...)
            if name not in ('loss', 'output') and isinstance(value, torch.Tensor) and value.numel() == 1:
                scalar_m.setdefault(name, utils.AverageMeter()).update(value.item(), batch_size)
        update_sample_count += global_batch_size

        if not need_update:
            data_start_time = time.time()
            continue

        num_updates += 1
        optimizer.zero_grad()
        task.update_ema(step=num_updates)

        if args.synchronize_step:
            _synchronize(device)
        time_now = time.time()
        update_time_m.update(time.time() - update_start_time)
        update_start_time = time_now

        if update_idx % args.log_interval == 0 or last_batch:
            _log_train_progress(args, epoch, update_idx, updates_per_epoch, optimizer, scalar_m, loss,
                                update_time_m, data_time_m, update_sample_count)
            if utils.is_primary(args) and args.save_images and output_dir and isinstance(input, torch.Tensor):
                _save_images(input, output_dir, batch_idx)

        # At the last step the epoch goes on to its validation and checkpoint, and the run stops there (_train_epochs)
        stop = interrupt is not None and interrupt.poll(args.distributed, device) and not last_batch
        if stop or args.recovery_interval and (update_idx + 1) % args.recovery_interval == 0:
            _save_recovery(args, saver, epoch, batch_idx, update_idx, scalar_m)

        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=scalar_m['loss'].avg)

        update_sample_count = 0
        data_start_time = time.time()
        if stop:
            interrupted = True
            break

    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()
    metrics = _epoch_averages(scalar_m, args, device)
    if guard is not None:
        metrics.update(guard.epoch_metrics())
    return metrics, interrupted


def _guarded(step, guard):
    """``step()``, with a non-finite term the task found inside the backward decided by ``guard`` (skip or stop)."""
    try:
        return step()
    except NonFiniteLossError as e:
        if guard is None:
            raise
        guard.task_error(e)  # raises SkippedStep, or the error that stops the run
        raise


def _save_images(input: torch.Tensor, output_dir: str, batch_idx: int) -> None:
    """``--save-images``: the batch as a JPEG grid, as timm's train.py writes it."""
    import torchvision
    torchvision.utils.save_image(input, os.path.join(output_dir, 'train-batch-%d.jpg' % batch_idx), padding=0,
                                 normalize=True)


def _save_recovery(args, saver, epoch: int, batch_idx: int, update_idx: int, scalar_m) -> None:
    """A recovery checkpoint inside the epoch, with every rank's running averages."""
    if saver is not None or args.distributed:  # every rank takes part in gathering the averages
        progress = progress_record(epoch, batch_idx + 1, update_idx + 1, scalar_m, args.distributed)
        if saver is not None:
            saver.save_recovery(epoch, batch_idx=update_idx, progress=progress)


def _epoch_averages(scalar_m, args, device: torch.device) -> 'OrderedDict[str, float]':
    """The epoch's running averages, averaged over processes."""
    metrics = OrderedDict()
    for name, meter in scalar_m.items():
        avg = meter.avg
        if args.distributed:
            avg = utils.reduce_tensor(torch.tensor([avg], device=device, dtype=torch.float32), args.world_size).item()
        metrics[name] = avg
    return metrics


def _mixup_off(args, epoch: int, loader, mixup_fn) -> None:
    """Turn mixup off from ``--mixup-off-epoch`` on, as timm's train.py."""
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and loader.mixup_enabled:
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elif device.type == 'npu':
        torch.npu.synchronize()


def _scalar_meters(meters: Optional[Dict[str, Any]] = None) -> 'OrderedDict[str, utils.AverageMeter]':
    """Running averages of 'loss' and every other scalar the task returns; a resumed epoch continues ``meters``."""
    scalar_m = OrderedDict(loss=utils.AverageMeter())
    for name, (total, count) in (meters or {}).items():
        scalar_m.setdefault(name, utils.AverageMeter())
        scalar_m[name].sum, scalar_m[name].count = total, count
        scalar_m[name].avg = total / count if count else 0
    return scalar_m


def _loss_scales(args, batch_size: int, batch_size_reference, naflex_mode: bool, scheduled_batch_mode: bool,
                 device: torch.device):
    """(local scale, distributed scale or None, global batch size) of one batch, as timm's train.py."""
    local_scale, dist_scale = 1.0, None
    global_batch_size = batch_size * (args.world_size if args.distributed else 1)
    if naflex_mode or scheduled_batch_mode:
        loss_scale_mode = args.naflex_loss_scale if naflex_mode else args.variable_batch_loss_scale
        if loss_scale_mode and loss_scale_mode != 'none':
            local_scale = batch_size / batch_size_reference
            if loss_scale_mode == 'sqrt':
                local_scale = local_scale ** 0.5
        if naflex_mode and args.distributed:
            # ranks can hold different batch sizes: scale each rank's gradient by its share
            global_batch_size = utils.reduce_tensor(
                torch.tensor(batch_size, device=device, dtype=torch.float32), 1)
            dist_scale = args.world_size * batch_size / global_batch_size
    return local_scale, dist_scale, global_batch_size


def _log_train_progress(args, epoch: int, update_idx: int, updates_per_epoch: int, optimizer, scalar_m, loss,
                        update_time_m, data_time_m, update_sample_count) -> None:
    """timm's ``Train:`` log line, with every scalar the task returns (averaged over processes)."""
    lrl = [param_group['lr'] for param_group in optimizer.param_groups]
    lr = sum(lrl) / len(lrl)
    shown = OrderedDict((name, (m.val, m.avg)) for name, m in scalar_m.items())
    if args.distributed:
        # each process keeps its own running averages
        shown = OrderedDict((name, tuple(utils.reduce_tensor(loss.new([v]), args.world_size).item()
                                         for v in values)) for name, values in shown.items())
    if utils.is_primary(args):
        extra = ''.join(f'{name}: {now:#.3g} ({avg:#.3g})  ' for name, (now, avg) in shown.items()
                        if name != 'loss')
        _logger.info(
            f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} '
            f'({100. * (update_idx + 1) / updates_per_epoch:>3.0f}%)]  '
            f'Loss: {shown["loss"][0]:#.3g} ({shown["loss"][1]:#.3g})  {extra}'
            f'Time: {update_time_m.val:.3f}s, {update_sample_count / update_time_m.val:>7.2f}/s  '
            f'({update_time_m.avg:.3f}s, {update_sample_count / update_time_m.avg:>7.2f}/s)  '
            f'LR: {lr:.3e}  '
            f'Data: {data_time_m.val:.3f} ({data_time_m.avg:.3f})')


def validate(model, loader, loss_fn, args, device=torch.device('cuda'), amp_autocast=nullcontext, model_dtype=None,
             log_suffix=''):
    """Loss / top-1 / top-5 over the validation loader, accumulated by timm's ``ClassificationEvaluator``.

    Metrics are weighted by samples (not batches) and, in distributed runs, exclude the
    padding the distributed sampler adds, then are summed over ranks. Log lines are timm's.
    """
    from timm.task import ClassificationEvaluator, evaluation_sample_limit
    evaluator = ClassificationEvaluator(device, max_samples=evaluation_sample_limit(loader), criterion=loss_fn)
    batch_time_m = utils.AverageMeter()
    model.eval()
    end = time.time()
    last_idx = len(loader) - 1
    with torch.inference_mode():
        for batch_idx, (input, target) in enumerate(loader):
            last_batch = batch_idx == last_idx
            if not args.prefetcher:
                input = input.to(device=device, dtype=model_dtype)
                target = target.to(device=device)
            if args.channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                output = model(input)
                if isinstance(output, (tuple, list)):
                    output = output[0]
                reduce_factor = args.tta  # augmentation reduction
                if reduce_factor > 1:
                    output = output.unfold(0, reduce_factor, reduce_factor).mean(dim=2)
                    target = target[0:target.size(0):reduce_factor]
            evaluator.update(output, target)
            batch_time_m.update(time.time() - end)
            end = time.time()
            if utils.is_primary(args) and (last_batch or batch_idx % args.log_interval == 0):
                with amp_autocast():
                    batch_loss = loss_fn(output, target).item()
                acc1, acc5 = utils.accuracy(output, target, topk=(1, min(5, output.shape[-1])))
                running = evaluator.summary()
                _logger.info(
                    f'Test{log_suffix}: [{batch_idx:>4d}/{last_idx}]  '
                    f'Time: {batch_time_m.val:.3f} ({batch_time_m.avg:.3f})  '
                    f'Loss: {batch_loss:>7.3f} ({running["loss"]:>6.3f})  '
                    f'Acc@1: {acc1.item():>7.3f} ({running["top1"]:>7.3f})  '
                    f'Acc@5: {acc5.item():>7.3f} ({running["top5"]:>7.3f})')
    return evaluator.compute(distributed=args.distributed)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def setup_logging() -> None:
    """timm's console logging, exactly one handler per process, writing to the current stderr.

    ``timm.utils.setup_default_logging`` adds a handler on every call, so runs started
    in-process one after another (benchmarks, notebooks, tests) would print each line again
    per run; a handler from an earlier run may also hold a console that has been replaced
    since (pytest capture, notebooks). Earlier timm console handlers are replaced.
    """
    from timm.utils.log import FormatterNoInfo
    for handler in list(logging.root.handlers):
        if type(handler) is logging.StreamHandler and isinstance(handler.formatter, FormatterNoInfo):
            logging.root.removeHandler(handler)
    utils.setup_default_logging()


def main(argv: Optional[Sequence[str]] = None, config_cls: Type[StimConfig] = StimConfig,
         callbacks: Sequence[TrainCallback] = ()) -> Dict[str, Any]:
    """Run training. Returns a dict with the best metric/epoch, the output dir and per-epoch results.

    Bad input ends with exit code 2 before any work; a failed Hub push after training with 1;
    an interrupted run (Ctrl-C) with 130, after saving a checkpoint to resume from.

    Args:
        argv: the command line (``sys.argv[1:]`` when None).
        config_cls: ``StimConfig`` or a subclass declaring more ``--stim-*`` options.
        callbacks: ``timm_stim.callbacks.TrainCallback`` objects called at every event, after the
            program's own. ``--push-to-hub`` needs the Hub publisher the entry points plug in
            (``timm_stim.cli.train``, which ``train_stim.py`` and ``timm-stim train`` run).
    """
    setup_logging()
    args, args_text = parse_args(argv, config_cls)
    result = run_command(lambda: _main(args, args_text, config_cls, callbacks))
    if result.get('interrupted'):
        raise SystemExit(EXIT_INTERRUPTED)
    return result


def _main(args, args_text: str, config_cls: Type[StimConfig], callbacks: Sequence[TrainCallback]) -> Dict[str, Any]:
    """timm's ``main``, in its phases, with one line per callback event."""
    stim, run = StimTraining(args, config_cls), RunLifecycle(args)
    state = TrainState(args=args, args_text=args_text, stim=stim, run=run, callbacks=[stim, run, *callbacks])
    try:
        check_args(args)  # cheap checks: nothing built, loaded or written yet
        check_plugged_options(args, state.callbacks)
        state.emit('on_options_checked')
        device = resolve_args(args)  # args is read-only from here on
        _setup(args)
        _create_model(state, device)
        state.emit('on_model_created')
        _prepare_model(state)
        _create_loaders(state)
        _create_task(state)
        state.emit('on_task_created')
        _prepare_run(state)
        state.emit('on_train_start')
        _train_epochs(state)
        if state.progress.interrupted:
            state.emit('on_interrupted')
        result = _finish(state)
        state.emit('on_train_end')
        return result
    except BaseException as error:
        state.emit('on_failure', error)
        raise


# Options a callback plugged in by the entry point carries out (``TrainCallback.acts_on``).
PLUGGED_OPTIONS = ('push_to_hub',)


def check_plugged_options(args, callbacks: Sequence[TrainCallback]) -> None:
    """Refuse an option that only a plugged-in callback carries out (``--push-to-hub``) when none is plugged in."""
    for dest in PLUGGED_OPTIONS:
        if getattr(args, dest, None) is not None and not any(dest in getattr(c, 'acts_on', ()) for c in callbacks):
            raise InputError(f'--{dest.replace("_", "-")} is carried out by the Hub publisher, which this entry point '
                             f'does not plug in: run train_stim.py or `timm-stim train`, or call timm_stim.cli.train '
                             f'(or pass callbacks=[timm_stim.tools.publish.Publisher()]) from Python.')


def resolve_args(args) -> torch.device:
    """Resolve the options once, after they are checked; ``args`` is read-only afterwards. Returns the device.

    Sets what timm's train.py sets in its args along the way: the prefetcher, at least one
    accumulation step, the distributed device / rank / world size, no ``--dist-bn`` under
    ``--sync-bn``, the ``--lr-base`` scaling rule, ``--log-wandb`` off without wandb. What needs the
    model or the loaders (``num_classes``, ``lr``) lives in the run's state, and
    ``TrainState.run_args`` holds it for the checkpoints, as timm's train.py saves its args.
    ``args.yaml`` is the text parsed before any of this (as timm writes it).
    """
    if args.device_modules:
        for module in args.device_modules:
            __import__(module)
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise InputError(f'--device {args.device!r} but CUDA is not available here; pass --device cpu.')
    if args.sync_bn and args.device.startswith('cpu'):
        raise InputError('--sync-bn synchronizes BatchNorm across GPUs; torch\'s SyncBatchNorm does not run on CPU '
                         'tensors. Drop --sync-bn (or use --dist-bn reduce) for CPU training.')
    device = utils.init_distributed_device(args)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''  # disable dist_bn when sync BN active
    if not args.lr and not args.lr_base_scale:
        on = args.opt.lower()
        args.lr_base_scale = 'sqrt' if any([o in on for o in ('ada', 'lamb')]) else 'linear'
    if args.log_wandb and utils.is_primary(args):
        try:
            import wandb  # noqa: F401
        except ImportError:
            _logger.warning("You've requested to log metrics to wandb but package not found. "
                            "Metrics not being logged to wandb, try `pip install wandb`")
            args.log_wandb = False
    return device


def _setup(args) -> None:
    """Devices and seeding, as timm's train.py sets them before anything is built."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.distributed:
        _logger.info(
            'Training in distributed mode with multiple processes, 1 device per process.'
            f'Process {args.rank}, total {args.world_size}, device {args.device}.')
    else:
        _logger.info(f'Training with a single process on 1 device ({args.device}).')
    assert args.rank >= 0
    if model_dtype_of(args) == torch.float16:
        _logger.warning('float16 is not recommended for training, for half precision bfloat16 is recommended.')
    utils.random_seed(args.seed, args.rank)
    if args.fuser:
        utils.set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()


def _create_model(state: TrainState, device: torch.device) -> None:
    """The timm model and its resolved data config (``state.model``)."""
    args = state.args
    model = create_train_model(args)
    num_classes = args.num_classes
    if num_classes is None:
        assert hasattr(model, 'num_classes'), 'Model must have `num_classes` attr if not set on cmd line/config.'
        num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    if utils.is_primary(args):
        _logger.info(
            f'Model {safe_model_name(args.model)} created, param count:{sum([m.numel() for m in model.parameters()])}')
    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))
    state.model = ModelState(model=model, data_config=data_config, num_classes=num_classes, device=device,
                             dtype=model_dtype_of(args), num_aug_splits=args.aug_splits if args.aug_splits > 0 else 0)


def _prepare_model(state: TrainState) -> None:
    """Split BN; resume read; the output folder checked; device, sync BN, torchscript; AMP (``state.optim``)."""
    args, m = state.args, state.model
    if args.split_bn:
        m.model = convert_splitbn_model(m.model, max(m.num_aug_splits, 2))
    state.run.check_resume(m.model)

    # The output folder is decided and checked before any data is read or file written.
    output_dir = exp_name = None
    if utils.is_primary(args):
        exp_name = args.experiment or '-'.join([
            datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(m.data_config['input_size'][-1])])
        output_dir = os.path.join(args.output if args.output else './output/train', exp_name)
        state.run.check_output_dir(output_dir)
    eval_metric = args.eval_metric if args.val_split else 'loss'
    state.progress = ProgressState(output_dir=output_dir, exp_name=exp_name, eval_metric=eval_metric,
                                   decreasing_metric=eval_metric == 'loss')

    m.model.to(device=m.device, dtype=m.dtype)
    if args.channels_last:
        m.model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        m.model = convert_sync_batchnorm(m.model)
        if utils.is_primary(args):
            _logger.info(
                'Converted model to use Synchronized BatchNorm. WARNING: You may have issues if using '
                'zero initialized BN layers (enabled by default for ResNets) while sync-bn enabled.')
    m.patch_size = m.model.get_patch_size() if args.naflex_loader and hasattr(m.model, 'get_patch_size') else None
    if args.torchscript:
        m.model = torch.jit.script(m.model)

    amp_dtype = resolve_amp_dtype(args.amp_dtype, m.device, _logger if args.amp else None)
    amp_autocast = nullcontext
    loss_scaler = create_loss_scaler(m.device, amp_dtype, use_amp=args.amp)
    if args.amp:
        amp_autocast = partial(torch.autocast, device_type=m.device.type, dtype=amp_dtype)
        if utils.is_primary(args):
            _logger.info('Using native Torch AMP. Training in mixed precision.')
    elif utils.is_primary(args):
        _logger.info(f'AMP not enabled. Training in {m.dtype or torch.float32}.')
    state.optim = OptimState(lr=args.lr, amp_autocast=amp_autocast, loss_scaler=loss_scaler,
                             amp_dtype=amp_dtype if args.amp else None)


def _create_loaders(state: TrainState) -> None:
    """Datasets and loaders (train and eval), mixup (``state.data``); the learning rate from the batch size."""
    args, m, run = state.args, state.model, state.run
    # Datasets.
    dataset_name, data_root = resolve_dataset(args.dataset, args.data_dir)
    if args.input_img_mode is None:
        input_img_mode = 'RGB' if m.data_config['input_size'][0] == 3 else 'L'
    else:
        input_img_mode = args.input_img_mode
    dataset_train = _create_dataset(
        dataset_name, data_root, args.train_split, is_training=True, class_map=args.class_map,
        download=args.dataset_download, batch_size=args.batch_size, seed=args.seed, repeats=args.epoch_repeats,
        input_img_mode=input_img_mode, input_key=args.input_key, target_key=args.target_key,
        num_samples=args.train_num_samples, trust_remote_code=args.dataset_trust_remote_code)
    dataset_eval = None
    if args.val_split:
        dataset_eval = _create_dataset(
            dataset_name, data_root, args.val_split, is_training=False, class_map=args.class_map,
            download=args.dataset_download, batch_size=args.batch_size, input_img_mode=input_img_mode,
            input_key=args.input_key, target_key=args.target_key, num_samples=args.val_num_samples,
            trust_remote_code=args.dataset_trust_remote_code)
    dataset_train = with_image_mode(dataset_train, dataset_name, input_img_mode)
    _check_batch_fits(args, dataset_train)
    dataset_eval = with_image_mode(dataset_eval, dataset_name, input_img_mode)

    # Loaders.
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = m.data_config['interpolation']
    common_loader_kwargs = dict(
        mean=m.data_config['mean'], std=m.data_config['std'], pin_memory=args.pin_mem,
        img_dtype=m.dtype or torch.float32, device=m.device, distributed=args.distributed,
        use_prefetcher=args.prefetcher)
    train_loader_kwargs = dict(
        batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode,
        re_count=args.recount, re_split=args.resplit, train_crop_mode=args.train_crop_mode, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        num_aug_splits=m.num_aug_splits, interpolation=train_interpolation, num_workers=args.workers,
        worker_seeding=args.worker_seeding)

    mixup_fn = None
    mixup_args = {}
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=m.num_classes)

    naflex_mode = False
    scheduled_batch_mode = args.train_img_sizes is not None
    batch_size_reference = float(args.batch_size)
    if args.naflex_loader:
        from timm.data import create_naflex_loader
        naflex_mixup_fn = None
        if mixup_active:
            from timm.data import NaFlexMixup
            mixup_args.pop('mode')
            mixup_args.pop('cutmix_minmax')
            naflex_mixup_fn = NaFlexMixup(**mixup_args)
        if m.patch_size is None:
            m.patch_size = (16, 16)
            if utils.is_primary(args):
                _logger.warning(f'Could not determine model patch size, using default: {m.patch_size}')
        patch_loader_kwargs = {}
        if args.naflex_patch_sizes:
            patch_loader_kwargs['patch_size_choices'] = args.naflex_patch_sizes
            if args.naflex_patch_size_probs:
                patch_loader_kwargs['patch_size_choice_probs'] = args.naflex_patch_size_probs
        else:
            patch_loader_kwargs['patch_size'] = m.patch_size
        naflex_mode = True
        loader_train = create_naflex_loader(
            dataset=dataset_train, train_seq_lens=args.naflex_train_seq_lens, mixup_fn=naflex_mixup_fn,
            rank=args.rank, world_size=args.world_size, patchify_channels_last=not args.naflex_patchify_channels_first,
            **patch_loader_kwargs, **common_loader_kwargs, **train_loader_kwargs)
    else:
        collate_fn = None
        if mixup_active:
            if args.prefetcher:
                assert not m.num_aug_splits  # collate conflict (need to support de-interleaving in collate mixup)
                collate_fn = FastCollateMixup(**mixup_args)
            else:
                mixup_fn = Mixup(**mixup_args)
        if m.num_aug_splits > 1:
            from timm.data import AugMixDataset
            dataset_train = AugMixDataset(dataset_train, num_splits=m.num_aug_splits)
        dataset_train = run.wrap_train_dataset(dataset_train, state.model.num_classes)
        loader_train = create_loader(
            dataset_train, input_size=m.data_config['input_size'], input_size_choices=args.train_img_sizes,
            batch_size_choices=args.train_batch_sizes, batch_choice_weights=args.train_size_probs,
            batch_choice_seed=args.seed, batch_choice_schedule=args.train_size_schedule,
            batch_schedule_epochs=args.epochs if args.train_size_schedule == 'progressive' else None,
            batch_schedule_spread=args.train_size_schedule_spread,
            batch_schedule_random_mix=args.train_size_random_mix, num_batches=args.train_batches_per_epoch,
            collate_fn=collate_fn, use_multi_epochs_loader=args.use_multi_epochs_loader,
            **common_loader_kwargs, **train_loader_kwargs)
        if scheduled_batch_mode:
            scheduled_sampler = loader_train.batch_sampler
            batch_size_reference = scheduled_sampler.average_batch_size
            if utils.is_primary(args):
                _logger.info(f'Using scheduled training resolutions {args.train_img_sizes} with batch sizes '
                             f'{scheduled_sampler.batch_sizes}.')
        if args.lighting_std or args.uniform_augment:  # the paper recipe's train transforms timm lacks
            from .transforms import add_stim_transforms
            add_stim_transforms(loader_train, lighting_std=args.lighting_std, lighting_mode=args.lighting_mode,
                                uniform_augment=args.uniform_augment, uniform_augment_ops=args.uniform_augment_ops,
                                uniform_augment_variant=args.uniform_augment_variant, mean=m.data_config['mean'],
                                std=m.data_config['std'])
        run.on_train_loader(loader_train, args.batch_size)

    state.optim.lr = args.lr or lr_from_base(args, batch_size_reference)

    loader_eval = None
    if args.val_split:
        eval_workers = args.workers
        if args.distributed and ('tfds' in args.dataset or 'wds' in args.dataset):
            eval_workers = min(2, args.workers)  # reduces validation padding issues with TFDS, WDS
        eval_loader_kwargs = dict(
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=m.data_config['interpolation'], num_workers=eval_workers, crop_pct=m.data_config['crop_pct'])
        if args.naflex_loader:
            from timm.data import create_naflex_loader
            loader_eval = create_naflex_loader(
                dataset=dataset_eval, patch_size=m.patch_size, max_seq_len=args.naflex_max_seq_len,
                patchify_channels_last=not args.naflex_patchify_channels_first,
                **common_loader_kwargs, **eval_loader_kwargs)
        else:
            loader_eval = create_loader(dataset_eval, input_size=m.data_config['input_size'],
                                        **common_loader_kwargs, **eval_loader_kwargs)
    state.data = DataState(
        dataset_train=dataset_train, loader_train=loader_train, loader_eval=loader_eval, mixup_fn=mixup_fn,
        mixup_active=mixup_active, naflex_mode=naflex_mode, scheduled_batch_mode=scheduled_batch_mode,
        batch_size_reference=batch_size_reference)


def lr_from_base(args, batch_size_reference: float) -> float:
    """The learning rate from ``--lr-base`` and the effective global batch size, as timm's train.py computes it."""
    global_batch_size = batch_size_reference * args.world_size * args.grad_accum_steps
    batch_ratio = global_batch_size / args.lr_base_size
    if args.lr_base_scale == 'sqrt':
        batch_ratio = batch_ratio ** 0.5
    lr = args.lr_base * batch_ratio
    if utils.is_primary(args):
        _logger.info(f'Learning rate ({lr}) calculated from base learning rate ({args.lr_base}) '
                     f'and effective global batch size ({global_batch_size:g}) with {args.lr_base_scale} scaling.')
    return lr


def _create_task(state: TrainState) -> None:
    """Loss, task, optimizer, resumed state, EMA, compilation, DDP (``state.model.task``, ``state.optim``)."""
    args, m, o = state.args, state.model, state.optim
    o.train_loss_fn = create_train_criterion(args, state.data.mixup_active, m.num_aug_splits).to(device=m.device)
    o.validate_loss_fn = nn.CrossEntropyLoss().to(device=m.device)

    m.task = create_train_task(args, m.model, o.train_loss_fn, m.device, m.data_config, state.stim)
    m.model = m.task.get_trainable_module()
    m.eval_model = m.task.get_eval_model()

    state.run_args = _with_run_values(args, state)
    o.optimizer = create_optimizer_v2(m.model, **optimizer_kwargs(cfg=state.run_args), **args.opt_kwargs)
    if utils.is_primary(args):
        defaults = dict(o.optimizer.defaults, weight_decay=args.weight_decay)  # weight_decay isn't in defaults
        logging.info(f'Created {type(o.optimizer).__name__} ({args.opt}) optimizer: '
                     + ', '.join(f'{k}: {v}' for k, v in defaults.items()))

    if args.resume:  # the epoch to start at, unless the run's own records say more (RunLifecycle.start_point)
        state.progress.start_epoch = resume_task_checkpoint(
            m.task, args.resume, optimizer=None if args.no_resume_opt else o.optimizer,
            loss_scaler=None if args.no_resume_opt else o.loss_scaler, log_info=utils.is_primary(args)) or 0

    if args.model_ema:
        # EMA after the model is on its device and before DDP
        m.task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                         device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            load_task_ema_checkpoint(m.task, args.resume)

    if args.torchcompile:
        # Before DDP: DDP stays out of the compiled graph. With ST the task compiles block by block,
        # so that every subnetwork runs the compiled blocks (timm_stim.task.StimulativeMixin.compile).
        if utils.is_primary(args):
            _logger.info(f'Compiling task components with backend={args.torchcompile}, mode={args.torchcompile_mode}')
        m.task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        m.model = m.task.get_trainable_module()
        m.eval_model = m.task.get_eval_model()
        if m.task.has_ema():
            m.task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)

    if args.distributed:
        if utils.is_primary(args):
            _logger.info('Preparing task for distributed training')
        m.task.prepare_distributed(device_ids=[m.device] if m.device.type == 'cuda' else None,
                                   broadcast_buffers=not args.no_ddp_bb)
        m.model = m.task.get_trainable_module()


def _with_run_values(args, state: TrainState) -> argparse.Namespace:
    """``args`` with the values timm's train.py writes into its args at run time: what its checkpoints save."""
    return argparse.Namespace(**{**vars(args), 'num_classes': state.model.num_classes, 'lr': state.optim.lr})


def _prepare_run(state: TrainState) -> None:
    """Output files (saver, args.yaml, wandb), scheduler and the point to start from (``state.progress``)."""
    args, m, o, p = state.args, state.model, state.optim, state.progress
    if utils.is_primary(args):
        os.makedirs(p.output_dir, exist_ok=True)
        p.saver = state.run.create_saver(
            model=m.model, optimizer=o.optimizer, args=state.run_args, amp_scaler=o.loss_scaler,
            checkpoint_dir=p.output_dir, recovery_dir=p.output_dir, decreasing=p.decreasing_metric,
            max_history=args.checkpoint_hist, task=m.task)
        p.best_metric, p.best_epoch = p.saver.best_metric, p.saver.best_epoch
        with open(os.path.join(p.output_dir, 'args.yaml'), 'w') as f:
            f.write(state.stim.args_yaml(state.args_text))
        state.run.output_dir_written()
        if args.log_wandb:
            import wandb
            assert not args.wandb_resume_id or args.resume
            wandb.init(project=args.wandb_project, name=p.exp_name,
                       config={**vars(state.run_args), 'stim_resolved': state.stim.summary},
                       tags=args.wandb_tags, resume='must' if args.wandb_resume_id else None,
                       id=args.wandb_resume_id or None)

    num_train_batches = batches_per_epoch(state.data.loader_train, args)
    updates_per_epoch = (num_train_batches + args.grad_accum_steps - 1) // args.grad_accum_steps
    o.lr_scheduler, o.num_epochs = create_scheduler_v2(
        o.optimizer, **scheduler_kwargs(args, decreasing_metric=p.decreasing_metric), updates_per_epoch=updates_per_epoch)
    if hasattr(m.task, 'configure_training'):
        m.task.configure_training(epochs=args.epochs, batches_per_epoch=num_train_batches)
    p.start_epoch, p.start_batch, p.updates_done, p.meters = state.run.start_point(
        p.start_epoch if args.resume else None)
    if o.lr_scheduler is not None and (p.start_epoch > 0 or p.updates_done):
        if args.sched_on_updates:
            o.lr_scheduler.step_update(p.start_epoch * updates_per_epoch + p.updates_done)
        else:
            o.lr_scheduler.step(p.start_epoch)
    if p.output_dir is not None and args.resume:
        trim_summary(os.path.join(p.output_dir, 'summary.csv'), p.start_epoch)
    if utils.is_primary(args):
        if p.start_batch:
            _logger.info(f'Resuming inside epoch {p.start_epoch}, after batch {p.start_batch - 1}.')
        _logger.info(f'Scheduled epochs: {o.num_epochs}. LR stepped per '
                     f'{"epoch" if o.lr_scheduler is None or o.lr_scheduler.t_in_epochs else "update"}.')


def _train_epochs(state: TrainState) -> None:
    """The epochs: train, validate, summarize, checkpoint; stops cleanly on Ctrl-C (``state.progress``)."""
    args, m, d, o, p = state.args, state.model, state.data, state.optim, state.progress
    guard = StepGuard(NonFiniteGuard(args.nonfinite, args.nonfinite_max, o.amp_dtype),
                      o.optimizer, p.saver, args.distributed)
    try:
        with InterruptRequest() as interrupt:
            for p.epoch in range(p.start_epoch, o.num_epochs):
                set_loader_epoch(d.loader_train, p.epoch)
                state.emit('on_epoch_start')
                if hasattr(m.task, 'set_progress'):  # the task's schedule (e.g. the KL weight) follows the loop
                    m.task.set_progress(p.epoch, p.start_batch)

                train_metrics, p.interrupted = train_one_epoch(
                    p.epoch, m.model, d.loader_train, o.optimizer, args, task=m.task, device=m.device,
                    lr_scheduler=o.lr_scheduler, saver=p.saver, output_dir=p.output_dir, amp_autocast=o.amp_autocast,
                    loss_scaler=o.loss_scaler, model_dtype=m.dtype, mixup_fn=d.mixup_fn, naflex_mode=d.naflex_mode,
                    scheduled_batch_mode=d.scheduled_batch_mode, batch_size_reference=d.batch_size_reference,
                    on_step_start=partial(state.emit, 'on_step_start'), start_batch=p.start_batch,
                    updates_done=p.updates_done, meters=p.meters, interrupt=interrupt, guard=guard)
                p.start_batch = p.updates_done = 0
                p.meters = None
                if p.interrupted:
                    p.last_saved = p.saver.curr_recovery_file if p.saver is not None else None
                    break

                if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                    if utils.is_primary(args):
                        _logger.info('Distributing BatchNorm running means and vars')
                    utils.distribute_bn(m.model, args.world_size, args.dist_bn == 'reduce')

                if (p.epoch + 1) % args.val_interval != 0 and p.epoch + 1 != o.num_epochs:
                    if utils.is_primary(args):
                        _logger.info('Skipping eval and checkpointing ')
                    if o.lr_scheduler is not None:
                        o.lr_scheduler.step(p.epoch + 1, metric=None)
                    p.results.append({'epoch': p.epoch, 'train': train_metrics})
                    state.emit('on_epoch_end')
                    continue

                state.emit('on_before_validation')
                eval_metrics = _validate_epoch(state) if d.loader_eval is not None else None
                state.emit('on_validation_end', train_metrics, eval_metrics)
                if p.output_dir is not None:
                    lrs = [param_group['lr'] for param_group in o.optimizer.param_groups]
                    update_summary(p.epoch, train_metrics, eval_metrics,
                                   filename=os.path.join(p.output_dir, 'summary.csv'), lr=sum(lrs) / len(lrs),
                                   log_wandb=args.log_wandb)
                latest_metric = eval_metrics[p.eval_metric] if eval_metrics is not None else train_metrics[p.eval_metric]
                if p.saver is not None:
                    p.best_metric, p.best_epoch = p.saver.save_checkpoint(p.epoch, metric=latest_metric)
                    p.checkpoint_epoch = p.epoch
                    p.last_saved = os.path.join(p.output_dir, 'last.pth.tar')
                if o.lr_scheduler is not None:
                    o.lr_scheduler.step(p.epoch + 1, latest_metric)

                latest_results = {'epoch': p.epoch, 'train': train_metrics}
                if eval_metrics is not None:
                    latest_results['validation'] = eval_metrics
                p.results.append(latest_results)
                state.emit('on_epoch_end')
                # Ctrl-C at the last step (or in validation) of the last epoch: the run is interrupted, not
                # finished (nothing is published). Earlier epochs stop at the next step, as before.
                last_epoch = p.epoch + 1 == o.num_epochs
                if last_epoch and interrupt.requested_on_any_rank(args.distributed, m.device):
                    p.interrupted = True  # stop at this epoch's checkpoint: a resume from it is an epoch-boundary one
                    if utils.is_primary(args):
                        _logger.warning(f'Ctrl-C: stopped after the checkpoint of epoch {p.epoch}.')
                    break
    except KeyboardInterrupt:
        p.interrupted = True


def _validate_epoch(state: TrainState) -> Dict[str, Any]:
    """The epoch's validation metrics: the model's, or its EMA's when there is one (as timm's train.py)."""
    args, m, d, o = state.args, state.model, state.data, state.optim
    eval_metrics = validate(m.eval_model, d.loader_eval, o.validate_loss_fn, args, device=m.device,
                            amp_autocast=o.amp_autocast, model_dtype=m.dtype)
    ema_model = m.task.get_trainable_module(ema=True)
    if ema_model is not None and not args.model_ema_force_cpu:
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(ema_model, args.world_size, args.dist_bn == 'reduce')
        eval_metrics = validate(m.task.get_eval_model(ema=True), d.loader_eval, o.validate_loss_fn, args,
                                device=m.device, amp_autocast=o.amp_autocast, log_suffix=' (EMA)')
    return eval_metrics


def _finish(state: TrainState) -> Dict[str, Any]:
    """Close the run: best metric, how to resume an interrupted run, the --result JSON; returns ``main``'s dict."""
    args, p = state.args, state.progress
    if args.distributed:
        torch.distributed.destroy_process_group()
    if p.best_metric is not None:
        _logger.info(f'*** Best metric: {p.best_metric} (epoch {p.best_epoch})')
    if p.interrupted and utils.is_primary(args):  # the primary process writes the checkpoints, and says where
        resume_from = p.last_saved or (os.path.join(p.output_dir, 'last.pth.tar') if p.output_dir else None)
        hint = (f' Resume with the same options plus --resume {shlex.quote(resume_from)}' if resume_from and os.path.exists(resume_from)
                else ' No checkpoint was written yet.')
        _logger.error(f'Training was interrupted.{hint}')

    if utils.is_primary(args):
        # for parsable results display, dump top-10 summaries to avoid excess console spam
        display_results = sorted(
            p.results, key=lambda x: x.get('validation', x.get('train')).get(p.eval_metric, 0),
            reverse=p.decreasing_metric)
        print(f'--result\n{json.dumps(display_results[-10:], indent=4)}')
    return {'best_metric': p.best_metric, 'best_epoch': p.best_epoch, 'output_dir': p.output_dir,
            'epochs': p.results, 'interrupted': p.interrupted}


if __name__ == '__main__':
    main()
