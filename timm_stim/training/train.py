"""The training program behind ``train_stim.py`` and ``timm-stim train``: timm's ``train.py``, step by step.

Every option of timm's train.py has its meaning there, and everything timm provides is used as
is (datasets, loaders, mixup, losses, optimizers, schedulers, EMA, checkpoint saver,
distributed helpers, tasks). The loop is task-agnostic like timm's: it back-propagates the
task's ``loss``, clips ``task.get_clip_parameters()``, and logs every other scalar the task
returns. What train_stim.py adds is called through three named objects: ``stim``
(``StimTraining``: everything about stimulative training), ``run`` (``RunLifecycle``: output
folder, resume and recovery, per-sample seeding) and ``publisher`` (``Publisher``: the Hub).
"""
import json
import logging
import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from types import SimpleNamespace
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

from ..config import StimConfig
from ..devices import resolve_amp_dtype
from ..errors import EXIT_INTERRUPTED, InputError, run_command
from ..loading import create_model_from_options
from .args import check_args, parse_args
from .data import resolve_dataset, with_image_mode
from .lifecycle import RunLifecycle
from .publish import Publisher
from .runs import InterruptRequest, progress_record, trim_summary, update_summary
from .stim import StimTraining, train_input_sizes

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
        naflex_mode=False, scheduled_batch_mode=False, batch_size_reference=None, run=None, start_batch=0,
        updates_done=0, meters=None, interrupt=None):
    """One epoch, as timm's ``train_one_epoch``. Returns ordered metrics (and ``interrupted``)."""
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
        if run is not None:
            run.on_batch_start(epoch, batch_idx)
        if hasattr(task, 'set_progress'):
            task.set_progress(epoch, batch_idx)

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
                    optimizer.step()

        batch_size = input['patches'].shape[0] if naflex_mode else input.shape[0]
        local_scale, dist_scale, global_batch_size = _loss_scales(
            args, batch_size, batch_size_reference, naflex_mode, scheduled_batch_mode, device)

        def _step():
            loss, result = _forward()
            scaled_loss = loss
            if local_scale != 1.0 or dist_scale is not None:
                scaled_loss = local_scale * loss
                if dist_scale is not None:
                    scaled_loss = scaled_loss * dist_scale
            _backward(scaled_loss)
            return loss, result

        if has_no_sync and not need_update:
            with task.no_sync():
                loss, result = _step()
        else:
            loss, result = _step()

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
                import torchvision
                torchvision.utils.save_image(input, os.path.join(output_dir, 'train-batch-%d.jpg' % batch_idx),
                                             padding=0, normalize=True)

        stop = interrupt is not None and interrupt.poll(args.distributed, device) and not last_batch
        recover = stop or args.recovery_interval and (update_idx + 1) % args.recovery_interval == 0
        if recover and (saver is not None or args.distributed):  # every rank's running averages go in
            progress = progress_record(epoch, batch_idx + 1, update_idx + 1, scalar_m, args.distributed)
            if saver is not None:
                saver.save_recovery(epoch, batch_idx=update_idx, progress=progress)

        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=scalar_m['loss'].avg)

        update_sample_count = 0
        data_start_time = time.time()
        if stop:
            interrupted = True
            break

    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()

    metrics = OrderedDict()
    for name, meter in scalar_m.items():
        avg = meter.avg
        if args.distributed:
            avg = utils.reduce_tensor(torch.tensor([avg], device=device, dtype=torch.float32), args.world_size).item()
        metrics[name] = avg
    return metrics, interrupted


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

def _after_epoch(epoch: int, output_dir: Optional[str]) -> None:
    """Called after each epoch's checkpoint is written (a seam for tests that simulate a kill)."""


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


def main(argv: Optional[Sequence[str]] = None, config_cls: Type[StimConfig] = StimConfig) -> Dict[str, Any]:
    """Run training. Returns a dict with the best metric/epoch, the output dir and per-epoch results.

    Bad input ends with exit code 2 before any work; a failed Hub push after training with 1;
    an interrupted run (Ctrl-C) with 130, after saving a checkpoint to resume from.

    Args:
        argv: the command line (``sys.argv[1:]`` when None).
        config_cls: ``StimConfig`` or a subclass declaring more ``--stim-*`` options.
    """
    setup_logging()
    args, args_text = parse_args(argv, config_cls)
    result = run_command(lambda: _main(args, args_text, config_cls))
    if result.get('interrupted'):
        raise SystemExit(EXIT_INTERRUPTED)
    return result


class _Run(SimpleNamespace):
    """What one training run builds, phase by phase: each phase of ``_main`` reads and adds attributes."""


def _main(args, args_text: str, config_cls: Type[StimConfig]) -> Dict[str, Any]:
    """timm's ``main``, in its phases."""
    r = _Run(args_text=args_text, config_cls=config_cls)
    _setup(args, r)
    try:
        _create_model(args, r)
        _create_loaders(args, r)
        _create_task(args, r)
        _prepare_run(args, r)
    except InputError:
        r.run.release_output_dir()  # bad input found before any file was written: leave no folder behind
        raise
    _train_epochs(args, r)
    return _finish(args, r)


def _setup(args, r: _Run) -> None:
    """Checks, devices and dtypes, seeding: before anything is built."""
    r.stim, r.run, r.publisher = StimTraining(args, r.config_cls), RunLifecycle(args), Publisher(args)
    check_args(args)  # cheap checks: nothing built, loaded or written yet
    r.stim.check()
    r.publisher.check()

    if args.device_modules:
        for module in args.device_modules:
            __import__(module)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise InputError(f'--device {args.device!r} but CUDA is not available here; pass --device cpu.')
    if args.sync_bn and args.device.startswith('cpu'):
        raise InputError('--sync-bn synchronizes BatchNorm across GPUs; torch\'s SyncBatchNorm does not run on CPU '
                         'tensors. Drop --sync-bn (or use --dist-bn reduce) for CPU training.')
    r.device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(
            'Training in distributed mode with multiple processes, 1 device per process.'
            f'Process {args.rank}, total {args.world_size}, device {args.device}.')
    else:
        _logger.info(f'Training with a single process on 1 device ({args.device}).')
    assert args.rank >= 0

    r.model_dtype = model_dtype_of(args)
    if r.model_dtype == torch.float16:
        _logger.warning('float16 is not recommended for training, for half precision bfloat16 is recommended.')
    r.amp_dtype = resolve_amp_dtype(args.amp_dtype, r.device, _logger if args.amp else None)
    r.publisher.warn_if_no_token()

    utils.random_seed(args.seed, args.rank)
    if args.fuser:
        utils.set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()


def _create_model(args, r: _Run) -> None:
    """The model; stimulative training attached; resume read; the output folder checked; AMP."""
    r.model = create_train_model(args)
    if args.num_classes is None:
        assert hasattr(r.model, 'num_classes'), 'Model must have `num_classes` attr if not set on cmd line/config.'
        args.num_classes = r.model.num_classes
    if args.grad_checkpointing:
        r.model.set_grad_checkpointing(enable=True)
    if utils.is_primary(args):
        _logger.info(
            f'Model {safe_model_name(args.model)} created, param count:{sum([m.numel() for m in r.model.parameters()])}')

    r.data_config = resolve_data_config(vars(args), model=r.model, verbose=utils.is_primary(args))
    r.stim.on_model_created(r.model, train_input_sizes(args, r.data_config['input_size']))

    r.num_aug_splits = args.aug_splits if args.aug_splits > 0 else 0
    if args.split_bn:
        r.model = convert_splitbn_model(r.model, max(r.num_aug_splits, 2))
    r.run.check_resume(r.model)

    # The output folder is decided and checked before any data is read or file written.
    r.output_dir = r.exp_name = None
    if utils.is_primary(args):
        r.exp_name = args.experiment or '-'.join([
            datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(r.data_config['input_size'][-1])])
        r.output_dir = os.path.join(args.output if args.output else './output/train', r.exp_name)
        r.run.check_output_dir(r.output_dir)

    r.model.to(device=r.device, dtype=r.model_dtype)
    if args.channels_last:
        r.model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''  # disable dist_bn when sync BN active
        r.model = convert_sync_batchnorm(r.model)
        if utils.is_primary(args):
            _logger.info(
                'Converted model to use Synchronized BatchNorm. WARNING: You may have issues if using '
                'zero initialized BN layers (enabled by default for ResNets) while sync-bn enabled.')
    r.model_patch_size = r.model.get_patch_size() if args.naflex_loader and hasattr(r.model, 'get_patch_size') else None
    if args.torchscript:
        r.model = torch.jit.script(r.model)

    r.amp_autocast = nullcontext
    r.loss_scaler = create_loss_scaler(r.device, r.amp_dtype, use_amp=args.amp)
    if args.amp:
        r.amp_autocast = partial(torch.autocast, device_type=r.device.type, dtype=r.amp_dtype)
        if utils.is_primary(args):
            _logger.info('Using native Torch AMP. Training in mixed precision.')
    elif utils.is_primary(args):
        _logger.info(f'AMP not enabled. Training in {r.model_dtype or torch.float32}.')


def _create_loaders(args, r: _Run) -> None:
    """Datasets and loaders (train and eval), mixup, the learning rate from the batch size."""
    # Datasets.
    dataset_name, data_root = resolve_dataset(args.dataset, args.data_dir)
    if args.input_img_mode is None:
        input_img_mode = 'RGB' if r.data_config['input_size'][0] == 3 else 'L'
    else:
        input_img_mode = args.input_img_mode
    r.dataset_train = _create_dataset(
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
    r.dataset_train = with_image_mode(r.dataset_train, dataset_name, input_img_mode)
    _check_batch_fits(args, r.dataset_train)
    dataset_eval = with_image_mode(dataset_eval, dataset_name, input_img_mode)

    # Loaders.
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = r.data_config['interpolation']
    common_loader_kwargs = dict(
        mean=r.data_config['mean'], std=r.data_config['std'], pin_memory=args.pin_mem,
        img_dtype=r.model_dtype or torch.float32, device=r.device, distributed=args.distributed,
        use_prefetcher=args.prefetcher)
    train_loader_kwargs = dict(
        batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode,
        re_count=args.recount, re_split=args.resplit, train_crop_mode=args.train_crop_mode, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        num_aug_splits=r.num_aug_splits, interpolation=train_interpolation, num_workers=args.workers,
        worker_seeding=args.worker_seeding)

    r.mixup_fn = None
    mixup_args = {}
    r.mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if r.mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=args.num_classes)

    r.naflex_mode = False
    r.scheduled_batch_mode = args.train_img_sizes is not None
    r.batch_size_reference = float(args.batch_size)
    if args.naflex_loader:
        from timm.data import create_naflex_loader
        naflex_mixup_fn = None
        if r.mixup_active:
            from timm.data import NaFlexMixup
            mixup_args.pop('mode')
            mixup_args.pop('cutmix_minmax')
            naflex_mixup_fn = NaFlexMixup(**mixup_args)
        if r.model_patch_size is None:
            r.model_patch_size = (16, 16)
            if utils.is_primary(args):
                _logger.warning(f'Could not determine model patch size, using default: {r.model_patch_size}')
        patch_loader_kwargs = {}
        if args.naflex_patch_sizes:
            patch_loader_kwargs['patch_size_choices'] = args.naflex_patch_sizes
            if args.naflex_patch_size_probs:
                patch_loader_kwargs['patch_size_choice_probs'] = args.naflex_patch_size_probs
        else:
            patch_loader_kwargs['patch_size'] = r.model_patch_size
        r.naflex_mode = True
        r.loader_train = create_naflex_loader(
            dataset=r.dataset_train, train_seq_lens=args.naflex_train_seq_lens, mixup_fn=naflex_mixup_fn,
            rank=args.rank, world_size=args.world_size, patchify_channels_last=not args.naflex_patchify_channels_first,
            **patch_loader_kwargs, **common_loader_kwargs, **train_loader_kwargs)
    else:
        collate_fn = None
        if r.mixup_active:
            if args.prefetcher:
                assert not r.num_aug_splits  # collate conflict (need to support de-interleaving in collate mixup)
                collate_fn = FastCollateMixup(**mixup_args)
            else:
                r.mixup_fn = Mixup(**mixup_args)
        if r.num_aug_splits > 1:
            from timm.data import AugMixDataset
            r.dataset_train = AugMixDataset(r.dataset_train, num_splits=r.num_aug_splits)
        r.dataset_train = r.run.wrap_train_dataset(r.dataset_train)
        r.loader_train = create_loader(
            r.dataset_train, input_size=r.data_config['input_size'], input_size_choices=args.train_img_sizes,
            batch_size_choices=args.train_batch_sizes, batch_choice_weights=args.train_size_probs,
            batch_choice_seed=args.seed, batch_choice_schedule=args.train_size_schedule,
            batch_schedule_epochs=args.epochs if args.train_size_schedule == 'progressive' else None,
            batch_schedule_spread=args.train_size_schedule_spread,
            batch_schedule_random_mix=args.train_size_random_mix, num_batches=args.train_batches_per_epoch,
            collate_fn=collate_fn, use_multi_epochs_loader=args.use_multi_epochs_loader,
            **common_loader_kwargs, **train_loader_kwargs)
        if r.scheduled_batch_mode:
            scheduled_sampler = r.loader_train.batch_sampler
            r.batch_size_reference = scheduled_sampler.average_batch_size
            if utils.is_primary(args):
                _logger.info(f'Using scheduled training resolutions {args.train_img_sizes} with batch sizes '
                             f'{scheduled_sampler.batch_sizes}.')
        if args.lighting_std or args.uniform_augment:  # the paper recipe's train transforms timm lacks
            from .transforms import add_stim_transforms
            add_stim_transforms(r.loader_train, lighting_std=args.lighting_std, lighting_mode=args.lighting_mode,
                                uniform_augment=args.uniform_augment, uniform_augment_ops=args.uniform_augment_ops,
                                uniform_augment_variant=args.uniform_augment_variant, mean=r.data_config['mean'],
                                std=r.data_config['std'])
        r.run.on_train_loader(r.loader_train, args.batch_size)

    if not args.lr:
        global_batch_size = r.batch_size_reference * args.world_size * args.grad_accum_steps
        batch_ratio = global_batch_size / args.lr_base_size
        if not args.lr_base_scale:
            on = args.opt.lower()
            args.lr_base_scale = 'sqrt' if any([o in on for o in ('ada', 'lamb')]) else 'linear'
        if args.lr_base_scale == 'sqrt':
            batch_ratio = batch_ratio ** 0.5
        args.lr = args.lr_base * batch_ratio
        if utils.is_primary(args):
            _logger.info(f'Learning rate ({args.lr}) calculated from base learning rate ({args.lr_base}) '
                         f'and effective global batch size ({global_batch_size:g}) with {args.lr_base_scale} scaling.')

    r.loader_eval = None
    if args.val_split:
        eval_workers = args.workers
        if args.distributed and ('tfds' in args.dataset or 'wds' in args.dataset):
            eval_workers = min(2, args.workers)  # reduces validation padding issues with TFDS, WDS
        eval_loader_kwargs = dict(
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=r.data_config['interpolation'], num_workers=eval_workers, crop_pct=r.data_config['crop_pct'])
        if args.naflex_loader:
            from timm.data import create_naflex_loader
            r.loader_eval = create_naflex_loader(
                dataset=dataset_eval, patch_size=r.model_patch_size, max_seq_len=args.naflex_max_seq_len,
                patchify_channels_last=not args.naflex_patchify_channels_first,
                **common_loader_kwargs, **eval_loader_kwargs)
        else:
            r.loader_eval = create_loader(dataset_eval, input_size=r.data_config['input_size'],
                                        **common_loader_kwargs, **eval_loader_kwargs)


def _create_task(args, r: _Run) -> None:
    """Loss, task, optimizer, resumed state, EMA, compilation, DDP."""
    train_loss_fn = create_train_criterion(args, r.mixup_active, r.num_aug_splits).to(device=r.device)
    r.validate_loss_fn = nn.CrossEntropyLoss().to(device=r.device)

    r.task = create_train_task(args, r.model, train_loss_fn, r.device, r.data_config, r.stim)
    r.model = r.task.get_trainable_module()
    r.eval_model = r.task.get_eval_model()

    r.optimizer = create_optimizer_v2(r.model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    if utils.is_primary(args):
        defaults = dict(r.optimizer.defaults, weight_decay=args.weight_decay)  # weight_decay isn't in defaults
        logging.info(f'Created {type(r.optimizer).__name__} ({args.opt}) optimizer: '
                     + ', '.join(f'{k}: {v}' for k, v in defaults.items()))

    r.resume_epoch = None
    if args.resume:
        r.resume_epoch = resume_task_checkpoint(
            r.task, args.resume, optimizer=None if args.no_resume_opt else r.optimizer,
            loss_scaler=None if args.no_resume_opt else r.loss_scaler, log_info=utils.is_primary(args))
        r.stim.after_resume(r.task)

    if args.model_ema:
        # EMA after the model is on its device and before DDP
        r.task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            load_task_ema_checkpoint(r.task, args.resume)

    if args.torchcompile:
        # Before DDP: DDP stays out of the compiled graph. Subnetwork passes run the eager model.
        if utils.is_primary(args):
            _logger.info(f'Compiling task components with backend={args.torchcompile}, mode={args.torchcompile_mode}')
        r.task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        r.model = r.task.get_trainable_module()
        r.eval_model = r.task.get_eval_model()
        if r.task.has_ema():
            r.task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)

    if args.distributed:
        if utils.is_primary(args):
            _logger.info('Preparing task for distributed training')
        r.task.prepare_distributed(device_ids=[r.device] if r.device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb)
        r.model = r.task.get_trainable_module()


def _prepare_run(args, r: _Run) -> None:
    """Output files (saver, args.yaml, wandb), scheduler and the point to start from."""
    r.eval_metric = args.eval_metric if r.loader_eval is not None else 'loss'
    r.decreasing_metric = r.eval_metric == 'loss'
    r.best_metric = r.best_epoch = None
    r.saver = None
    if utils.is_primary(args):
        os.makedirs(r.output_dir, exist_ok=True)
        r.saver = r.run.create_saver(
            model=r.model, optimizer=r.optimizer, args=args, amp_scaler=r.loss_scaler, checkpoint_dir=r.output_dir,
            recovery_dir=r.output_dir, decreasing=r.decreasing_metric, max_history=args.checkpoint_hist, task=r.task)
        r.best_metric, r.best_epoch = r.saver.best_metric, r.saver.best_epoch
        with open(os.path.join(r.output_dir, 'args.yaml'), 'w') as f:
            f.write(r.stim.args_yaml(r.args_text))
        r.run.output_dir_written()
        if args.log_wandb:
            try:
                import wandb
            except ImportError:
                _logger.warning("You've requested to log metrics to wandb but package not found. "
                                "Metrics not being logged to wandb, try `pip install wandb`")
                args.log_wandb = False
            else:
                assert not args.wandb_resume_id or args.resume
                wandb.init(project=args.wandb_project, name=r.exp_name,
                           config={**vars(args), 'stim_resolved': r.stim.summary},
                           tags=args.wandb_tags, resume='must' if args.wandb_resume_id else None,
                           id=args.wandb_resume_id or None)

    num_train_batches = batches_per_epoch(r.loader_train, args)
    updates_per_epoch = (num_train_batches + args.grad_accum_steps - 1) // args.grad_accum_steps
    r.lr_scheduler, r.num_epochs = create_scheduler_v2(
        r.optimizer, **scheduler_kwargs(args, decreasing_metric=r.decreasing_metric), updates_per_epoch=updates_per_epoch)
    if hasattr(r.task, 'configure_training'):
        r.task.configure_training(epochs=args.epochs, batches_per_epoch=num_train_batches)
    r.start_epoch, r.start_batch, r.updates_done, r.meters = r.run.start_point(r.resume_epoch)
    if r.lr_scheduler is not None and (r.start_epoch > 0 or r.updates_done):
        if args.sched_on_updates:
            r.lr_scheduler.step_update(r.start_epoch * updates_per_epoch + r.updates_done)
        else:
            r.lr_scheduler.step(r.start_epoch)
    if r.output_dir is not None and args.resume:
        trim_summary(os.path.join(r.output_dir, 'summary.csv'), r.start_epoch)
    if utils.is_primary(args):
        if r.start_batch:
            _logger.info(f'Resuming inside epoch {r.start_epoch}, after batch {r.start_batch - 1}.')
        _logger.info(f'Scheduled epochs: {r.num_epochs}. LR stepped per '
                     f'{"r.epoch" if r.lr_scheduler is None or r.lr_scheduler.t_in_epochs else "update"}.')


def _train_epochs(args, r: _Run) -> None:
    """The epochs: train, validate, summarize, checkpoint; stops cleanly on Ctrl-C."""
    r.results = []
    r.interrupted = False
    r.last_saved = None
    try:
        with InterruptRequest() as interrupt:
            for r.epoch in range(r.start_epoch, r.num_epochs):
                set_loader_epoch(r.loader_train, r.epoch)
                r.run.on_epoch_start(r.epoch, r.loader_train, r.start_batch)
                if hasattr(r.task, 'set_progress'):  # the task's schedule (e.g. the KL weight) follows the loop
                    r.task.set_progress(r.epoch, r.start_batch)

                train_metrics, r.interrupted = train_one_epoch(
                    r.epoch, r.model, r.loader_train, r.optimizer, args, task=r.task, device=r.device,
                    lr_scheduler=r.lr_scheduler, saver=r.saver, output_dir=r.output_dir, amp_autocast=r.amp_autocast,
                    loss_scaler=r.loss_scaler, model_dtype=r.model_dtype, mixup_fn=r.mixup_fn, naflex_mode=r.naflex_mode,
                    scheduled_batch_mode=r.scheduled_batch_mode, batch_size_reference=r.batch_size_reference, run=r.run,
                    start_batch=r.start_batch, updates_done=r.updates_done, meters=r.meters, interrupt=interrupt)
                r.start_batch = r.updates_done = 0
                r.meters = None
                if r.interrupted:
                    r.last_saved = r.saver.curr_recovery_file if r.saver is not None else None
                    break

                if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                    if utils.is_primary(args):
                        _logger.info('Distributing BatchNorm running means and vars')
                    utils.distribute_bn(r.model, args.world_size, args.dist_bn == 'reduce')

                if (r.epoch + 1) % args.val_interval != 0 and r.epoch + 1 != r.num_epochs:
                    if utils.is_primary(args):
                        _logger.info('Skipping eval and checkpointing ')
                    if r.lr_scheduler is not None:
                        r.lr_scheduler.step(r.epoch + 1, metric=None)
                    r.results.append({'epoch': r.epoch, 'train': train_metrics})
                    _after_epoch(r.epoch, r.output_dir)
                    continue

                eval_metrics = None
                if r.loader_eval is not None:
                    r.stim.before_validation(r.loader_train, r.device, r.amp_autocast)
                    eval_metrics = validate(r.eval_model, r.loader_eval, r.validate_loss_fn, args, device=r.device,
                                            amp_autocast=r.amp_autocast, model_dtype=r.model_dtype)
                    ema_model = r.task.get_trainable_module(ema=True)
                    if ema_model is not None and not args.model_ema_force_cpu:
                        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                            utils.distribute_bn(ema_model, args.world_size, args.dist_bn == 'reduce')
                        eval_metrics = validate(r.task.get_eval_model(ema=True), r.loader_eval, r.validate_loss_fn, args,
                                                device=r.device, amp_autocast=r.amp_autocast, log_suffix=' (EMA)')

                if r.output_dir is not None:
                    lrs = [param_group['lr'] for param_group in r.optimizer.param_groups]
                    update_summary(r.epoch, train_metrics, eval_metrics,
                                   filename=os.path.join(r.output_dir, 'summary.csv'), lr=sum(lrs) / len(lrs),
                                   log_wandb=args.log_wandb)
                latest_metric = eval_metrics[r.eval_metric] if eval_metrics is not None else train_metrics[r.eval_metric]
                if r.saver is not None:
                    r.best_metric, r.best_epoch = r.saver.save_checkpoint(r.epoch, metric=latest_metric)
                    r.last_saved = os.path.join(r.output_dir, 'last.pth.tar')
                r.run.on_epoch_end(r.epoch, r.output_dir, r.best_epoch, r.task.get_trainable_module(ema=True))
                if r.lr_scheduler is not None:
                    r.lr_scheduler.step(r.epoch + 1, latest_metric)

                latest_results = {'epoch': r.epoch, 'train': train_metrics}
                if eval_metrics is not None:
                    latest_results['validation'] = eval_metrics
                r.results.append(latest_results)
                _after_epoch(r.epoch, r.output_dir)
    except KeyboardInterrupt:
        r.interrupted = True


def _finish(args, r: _Run) -> Dict[str, Any]:
    """Close the run: best metric, how to resume an interrupted run, the --result JSON, the Hub."""
    if args.distributed:
        torch.distributed.destroy_process_group()
    if r.best_metric is not None:
        _logger.info(f'*** Best metric: {r.best_metric} (epoch {r.best_epoch})')
    if r.interrupted and utils.is_primary(args):  # the primary process writes the checkpoints, and says where
        resume_from = r.last_saved or (os.path.join(r.output_dir, 'last.pth.tar') if r.output_dir else None)
        hint = (f' Resume with the same options plus --resume {resume_from}' if resume_from and os.path.exists(resume_from)
                else ' No checkpoint was written yet.')
        _logger.error(f'Training was interrupted.{hint}')

    if utils.is_primary(args):
        # for parsable results display, dump top-10 summaries to avoid excess console spam
        display_results = sorted(
            r.results, key=lambda x: x.get('validation', x.get('train')).get(r.eval_metric, 0), reverse=r.decreasing_metric)
        print(f'--result\n{json.dumps(display_results[-10:], indent=4)}')

    hub_url = r.publisher.after_training(r.output_dir, r.dataset_train, interrupted=r.interrupted)
    return {'best_metric': r.best_metric, 'best_epoch': r.best_epoch, 'output_dir': r.output_dir, 'epochs': r.results,
            'hub_url': hub_url, 'interrupted': r.interrupted}


if __name__ == '__main__':
    main()
