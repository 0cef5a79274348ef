"""The training program behind ``train_stim.py`` and ``timm-stim train``: timm's ``train.py``, step by step.

Every option of timm's train.py has its meaning there, and everything timm provides is used as
is (datasets, loaders, mixup, losses, optimizers, schedulers, EMA, checkpoint saver,
distributed helpers, tasks). The loop is task-agnostic like timm's: it back-propagates the
task's ``loss``, clips ``task.get_clip_parameters()``, and logs every other scalar the task
returns. What train_stim.py adds lives in ``timm_stim.training.train_additions`` and is called at the
points marked ``stim.`` below.
"""
import json
import logging
import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from typing import Any, Dict, Optional, Sequence

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

from .args import parse_args
from .data import resolve_dataset, with_image_mode
from ..devices import resolve_amp_dtype
from ..errors import EXIT_INTERRUPTED, InputError, run_command
from ..loading import create_model_from_options
from .runs import InterruptRequest, trim_summary
from .train_additions import TrainAdditions

_logger = logging.getLogger('train_stim')


# ---------------------------------------------------------------------------------------------
# Pieces of timm's flow, as functions
# ---------------------------------------------------------------------------------------------

def create_train_model(args) -> nn.Module:
    """``timm.create_model`` with the keyword arguments timm's train.py passes (``timm_stim.loading``)."""
    return create_model_from_options(vars(args), for_training=True)


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


# ---------------------------------------------------------------------------------------------
# One epoch of training, one validation pass
# ---------------------------------------------------------------------------------------------

def train_one_epoch(
        epoch, model, loader, optimizer, args, task, device=torch.device('cuda'), lr_scheduler=None, saver=None,
        output_dir=None, amp_autocast=nullcontext, loss_scaler=None, model_dtype=None, mixup_fn=None,
        naflex_mode=False, scheduled_batch_mode=False, batch_size_reference=None, stim=None, start_batch=0,
        updates_done=0, meters=None, interrupt=None):
    """One epoch, as timm's ``train_one_epoch``. Returns ordered metrics (and ``interrupted``)."""
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and loader.mixup_enabled:
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False

    second_order = hasattr(optimizer, 'is_second_order') and optimizer.is_second_order
    has_no_sync = args.distributed and hasattr(task.get_trainable_module(), 'no_sync')
    update_time_m = utils.AverageMeter()
    data_time_m = utils.AverageMeter()
    scalar_m = OrderedDict(loss=utils.AverageMeter())  # 'loss' and every other scalar the task returns
    for name, (total, count) in (meters or {}).items():  # a resumed epoch continues its averages
        scalar_m.setdefault(name, utils.AverageMeter())
        scalar_m[name].sum, scalar_m[name].count = total, count
        scalar_m[name].avg = total / count if count else 0

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
        if stim is not None:
            stim.on_batch_start(epoch, batch_idx, task)

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
            if device.type == 'cuda':
                torch.cuda.synchronize()
            elif device.type == 'npu':
                torch.npu.synchronize()
        time_now = time.time()
        update_time_m.update(time.time() - update_start_time)
        update_start_time = time_now

        if update_idx % args.log_interval == 0 or last_batch:
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
                if args.save_images and output_dir and isinstance(input, torch.Tensor):
                    import torchvision
                    torchvision.utils.save_image(input, os.path.join(output_dir, 'train-batch-%d.jpg' % batch_idx),
                                                 padding=0, normalize=True)

        stop = interrupt is not None and interrupt.poll(args.distributed, device) and not last_batch
        if saver is not None and (stop or args.recovery_interval and (update_idx + 1) % args.recovery_interval == 0):
            saver.save_recovery(epoch, batch_idx=update_idx, progress={
                'epoch': epoch, 'batches_done': batch_idx + 1, 'updates_done': update_idx + 1,
                'meters': {name: [m.sum, m.count] for name, m in scalar_m.items()}})

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


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run training. Returns a dict with the best metric/epoch, the output dir and per-epoch results.

    Bad input ends with exit code 2 before any work; a failed Hub push after training with 1;
    an interrupted run (Ctrl-C) with 130, after saving a checkpoint to resume from.
    """
    setup_logging()
    args, args_text = parse_args(argv)
    result = run_command(lambda: _main(args, args_text))
    if result.get('interrupted'):
        raise SystemExit(EXIT_INTERRUPTED)
    return result


def _main(args, args_text: str) -> Dict[str, Any]:
    stim = TrainAdditions(args)
    stim.check_args()  # cheap checks: nothing built, loaded or written yet

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
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(
            'Training in distributed mode with multiple processes, 1 device per process.'
            f'Process {args.rank}, total {args.world_size}, device {args.device}.')
    else:
        _logger.info(f'Training with a single process on 1 device ({args.device}).')
    assert args.rank >= 0

    model_dtype = getattr(torch, args.model_dtype) if args.model_dtype else None
    if model_dtype == torch.float16:
        _logger.warning('float16 is not recommended for training, for half precision bfloat16 is recommended.')
    amp_dtype = resolve_amp_dtype(args.amp_dtype, device, _logger if args.amp else None)
    if args.push_to_hub and utils.is_primary(args):
        from ..tools.hub import warn_if_no_token
        warn_if_no_token(args.push_to_hub)

    utils.random_seed(args.seed, args.rank)
    if args.fuser:
        utils.set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()

    model = create_train_model(args)
    if args.num_classes is None:
        assert hasattr(model, 'num_classes'), 'Model must have `num_classes` attr if not set on cmd line/config.'
        args.num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    if utils.is_primary(args):
        _logger.info(
            f'Model {safe_model_name(args.model)} created, param count:{sum([m.numel() for m in model.parameters()])}')

    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))
    stim.on_model_created(model, data_config['input_size'])

    num_aug_splits = args.aug_splits if args.aug_splits > 0 else 0
    if args.split_bn:
        model = convert_splitbn_model(model, max(num_aug_splits, 2))
    resume_point = stim.check_resume(model)

    # The output folder is decided and checked before any data is read or file written.
    output_dir = exp_name = None
    if utils.is_primary(args):
        exp_name = args.experiment or '-'.join([
            datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(data_config['input_size'][-1])])
        output_dir = os.path.join(args.output if args.output else './output/train', exp_name)
        stim.check_output_dir(output_dir)

    model.to(device=device, dtype=model_dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''  # disable dist_bn when sync BN active
        model = convert_sync_batchnorm(model)
        if utils.is_primary(args):
            _logger.info(
                'Converted model to use Synchronized BatchNorm. WARNING: You may have issues if using '
                'zero initialized BN layers (enabled by default for ResNets) while sync-bn enabled.')
    model_patch_size = model.get_patch_size() if args.naflex_loader and hasattr(model, 'get_patch_size') else None
    if args.torchscript:
        model = torch.jit.script(model)

    amp_autocast = nullcontext
    loss_scaler = create_loss_scaler(device, amp_dtype, use_amp=args.amp)
    if args.amp:
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if utils.is_primary(args):
            _logger.info('Using native Torch AMP. Training in mixed precision.')
    elif utils.is_primary(args):
        _logger.info(f'AMP not enabled. Training in {model_dtype or torch.float32}.')

    # Datasets.
    dataset_name, data_root = resolve_dataset(args.dataset, args.data_dir)
    if args.input_img_mode is None:
        input_img_mode = 'RGB' if data_config['input_size'][0] == 3 else 'L'
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
    dataset_eval = with_image_mode(dataset_eval, dataset_name, input_img_mode)

    # Loaders.
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    common_loader_kwargs = dict(
        mean=data_config['mean'], std=data_config['std'], pin_memory=args.pin_mem,
        img_dtype=model_dtype or torch.float32, device=device, distributed=args.distributed,
        use_prefetcher=args.prefetcher)
    train_loader_kwargs = dict(
        batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode,
        re_count=args.recount, re_split=args.resplit, train_crop_mode=args.train_crop_mode, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        num_aug_splits=num_aug_splits, interpolation=train_interpolation, num_workers=args.workers,
        worker_seeding=args.worker_seeding)

    mixup_fn = None
    mixup_args = {}
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=args.num_classes)

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
        if model_patch_size is None:
            model_patch_size = (16, 16)
            if utils.is_primary(args):
                _logger.warning(f'Could not determine model patch size, using default: {model_patch_size}')
        patch_loader_kwargs = {}
        if args.naflex_patch_sizes:
            patch_loader_kwargs['patch_size_choices'] = args.naflex_patch_sizes
            if args.naflex_patch_size_probs:
                patch_loader_kwargs['patch_size_choice_probs'] = args.naflex_patch_size_probs
        else:
            patch_loader_kwargs['patch_size'] = model_patch_size
        naflex_mode = True
        loader_train = create_naflex_loader(
            dataset=dataset_train, train_seq_lens=args.naflex_train_seq_lens, mixup_fn=naflex_mixup_fn,
            rank=args.rank, world_size=args.world_size, patchify_channels_last=not args.naflex_patchify_channels_first,
            **patch_loader_kwargs, **common_loader_kwargs, **train_loader_kwargs)
    else:
        collate_fn = None
        if mixup_active:
            if args.prefetcher:
                assert not num_aug_splits  # collate conflict (need to support de-interleaving in collate mixup)
                collate_fn = FastCollateMixup(**mixup_args)
            else:
                mixup_fn = Mixup(**mixup_args)
        if num_aug_splits > 1:
            from timm.data import AugMixDataset
            dataset_train = AugMixDataset(dataset_train, num_splits=num_aug_splits)
        dataset_train = stim.wrap_train_dataset(dataset_train)
        loader_train = create_loader(
            dataset_train, input_size=data_config['input_size'], input_size_choices=args.train_img_sizes,
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
        stim.on_train_loader(loader_train, data_config)
        stim.check_mid_epoch_resume(loader_train, args.batch_size)

    if not args.lr:
        global_batch_size = batch_size_reference * args.world_size * args.grad_accum_steps
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

    loader_eval = None
    if args.val_split:
        eval_workers = args.workers
        if args.distributed and ('tfds' in args.dataset or 'wds' in args.dataset):
            eval_workers = min(2, args.workers)  # reduces validation padding issues with TFDS, WDS
        eval_loader_kwargs = dict(
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], num_workers=eval_workers, crop_pct=data_config['crop_pct'])
        if args.naflex_loader:
            from timm.data import create_naflex_loader
            loader_eval = create_naflex_loader(
                dataset=dataset_eval, patch_size=model_patch_size, max_seq_len=args.naflex_max_seq_len,
                patchify_channels_last=not args.naflex_patchify_channels_first,
                **common_loader_kwargs, **eval_loader_kwargs)
        else:
            loader_eval = create_loader(dataset_eval, input_size=data_config['input_size'],
                                        **common_loader_kwargs, **eval_loader_kwargs)

    train_loss_fn = create_train_criterion(args, mixup_active, num_aug_splits).to(device=device)
    validate_loss_fn = nn.CrossEntropyLoss().to(device=device)

    task = stim.create_task(model, train_loss_fn, device, data_config)
    if task is None:
        task = ClassificationTask(model=model, criterion=train_loss_fn, device=device, dtype=model_dtype,
                                  verbose=utils.is_primary(args))
    model = task.get_trainable_module()
    eval_model = task.get_eval_model()

    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    if utils.is_primary(args):
        defaults = dict(optimizer.defaults, weight_decay=args.weight_decay)  # weight_decay isn't in defaults
        logging.info(f'Created {type(optimizer).__name__} ({args.opt}) optimizer: '
                     + ', '.join(f'{k}: {v}' for k, v in defaults.items()))

    resume_epoch = None
    if args.resume:
        resume_epoch = resume_task_checkpoint(
            task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
            loss_scaler=None if args.no_resume_opt else loss_scaler, log_info=utils.is_primary(args))

    if args.model_ema:
        # EMA after the model is on its device and before DDP
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)

    if args.torchcompile:
        # Before DDP: DDP stays out of the compiled graph. Subnetwork passes run the eager model.
        if utils.is_primary(args):
            _logger.info(f'Compiling task components with backend={args.torchcompile}, mode={args.torchcompile_mode}')
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        model = task.get_trainable_module()
        eval_model = task.get_eval_model()
        if task.has_ema():
            task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)

    if args.distributed:
        if utils.is_primary(args):
            _logger.info('Preparing task for distributed training')
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb)
        model = task.get_trainable_module()

    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    decreasing_metric = eval_metric == 'loss'
    best_metric = best_epoch = None
    saver = None
    if utils.is_primary(args):
        os.makedirs(output_dir, exist_ok=True)
        saver = stim.create_saver(
            model=model, optimizer=optimizer, args=args, amp_scaler=loss_scaler, checkpoint_dir=output_dir,
            recovery_dir=output_dir, decreasing=decreasing_metric, max_history=args.checkpoint_hist, task=task)
        best_metric, best_epoch = saver.best_metric, saver.best_epoch
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            f.write(stim.args_yaml(args_text))
        if args.log_wandb:
            try:
                import wandb
            except ImportError:
                _logger.warning("You've requested to log metrics to wandb but package not found. "
                                "Metrics not being logged to wandb, try `pip install wandb`")
                args.log_wandb = False
            else:
                assert not args.wandb_resume_id or args.resume
                wandb.init(project=args.wandb_project, name=exp_name,
                           config={**vars(args), 'stim_resolved': stim.stim_resolved},
                           tags=args.wandb_tags, resume='must' if args.wandb_resume_id else None,
                           id=args.wandb_resume_id or None)

    num_train_batches = batches_per_epoch(loader_train, args)
    updates_per_epoch = (num_train_batches + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=decreasing_metric), updates_per_epoch=updates_per_epoch)
    if hasattr(task, 'configure_training'):
        task.configure_training(epochs=args.epochs, batches_per_epoch=num_train_batches)
    start_epoch = 0
    start_batch = updates_done = 0
    meters = None
    if args.start_epoch is not None:
        start_epoch = args.start_epoch  # a specified start_epoch always overrides the resume epoch
    elif resume_point is not None:
        start_epoch = resume_point.epoch
        if resume_point.mid_epoch:
            start_batch, updates_done, meters = (resume_point.batches_done, resume_point.updates_done,
                                                 resume_point.meters)
    elif resume_epoch is not None:
        start_epoch = resume_epoch
    if lr_scheduler is not None and (start_epoch > 0 or updates_done):
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch + updates_done)
        else:
            lr_scheduler.step(start_epoch)
    if output_dir is not None and args.resume:
        trim_summary(os.path.join(output_dir, 'summary.csv'), start_epoch)
    if utils.is_primary(args):
        if start_batch:
            _logger.info(f'Resuming inside epoch {start_epoch}, after batch {start_batch - 1}.')
        _logger.info(f'Scheduled epochs: {num_epochs}. LR stepped per '
                     f'{"epoch" if lr_scheduler is None or lr_scheduler.t_in_epochs else "update"}.')

    results = []
    interrupted = False
    last_saved = None
    try:
        with InterruptRequest() as interrupt:
            for epoch in range(start_epoch, num_epochs):
                set_loader_epoch(loader_train, epoch)
                stim.on_epoch_start(epoch, task, loader_train, start_batch)

                train_metrics, interrupted = train_one_epoch(
                    epoch, model, loader_train, optimizer, args, task=task, device=device,
                    lr_scheduler=lr_scheduler, saver=saver, output_dir=output_dir, amp_autocast=amp_autocast,
                    loss_scaler=loss_scaler, model_dtype=model_dtype, mixup_fn=mixup_fn, naflex_mode=naflex_mode,
                    scheduled_batch_mode=scheduled_batch_mode, batch_size_reference=batch_size_reference, stim=stim,
                    start_batch=start_batch, updates_done=updates_done, meters=meters, interrupt=interrupt)
                start_batch = updates_done = 0
                meters = None
                if interrupted:
                    last_saved = saver.curr_recovery_file if saver is not None else None
                    break

                if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                    if utils.is_primary(args):
                        _logger.info('Distributing BatchNorm running means and vars')
                    utils.distribute_bn(model, args.world_size, args.dist_bn == 'reduce')

                if (epoch + 1) % args.val_interval != 0 and epoch + 1 != num_epochs:
                    if utils.is_primary(args):
                        _logger.info('Skipping eval and checkpointing ')
                    if lr_scheduler is not None:
                        lr_scheduler.step(epoch + 1, metric=None)
                    results.append({'epoch': epoch, 'train': train_metrics})
                    _after_epoch(epoch, output_dir)
                    continue

                eval_metrics = None
                if loader_eval is not None:
                    stim.before_validation(loader_train, device, amp_autocast)
                    eval_metrics = validate(eval_model, loader_eval, validate_loss_fn, args, device=device,
                                            amp_autocast=amp_autocast, model_dtype=model_dtype)
                    ema_model = task.get_trainable_module(ema=True)
                    if ema_model is not None and not args.model_ema_force_cpu:
                        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                            utils.distribute_bn(ema_model, args.world_size, args.dist_bn == 'reduce')
                        eval_metrics = validate(task.get_eval_model(ema=True), loader_eval, validate_loss_fn, args,
                                                device=device, amp_autocast=amp_autocast, log_suffix=' (EMA)')

                if output_dir is not None:
                    lrs = [param_group['lr'] for param_group in optimizer.param_groups]
                    utils.update_summary(epoch, train_metrics, eval_metrics,
                                         filename=os.path.join(output_dir, 'summary.csv'), lr=sum(lrs) / len(lrs),
                                         log_wandb=args.log_wandb)
                latest_metric = eval_metrics[eval_metric] if eval_metrics is not None else train_metrics[eval_metric]
                if saver is not None:
                    best_metric, best_epoch = saver.save_checkpoint(epoch, metric=latest_metric)
                    last_saved = os.path.join(output_dir, 'last.pth.tar')
                stim.on_epoch_end(epoch, output_dir, best_epoch, task.get_trainable_module(ema=True))
                if lr_scheduler is not None:
                    lr_scheduler.step(epoch + 1, latest_metric)

                latest_results = {'epoch': epoch, 'train': train_metrics}
                if eval_metrics is not None:
                    latest_results['validation'] = eval_metrics
                results.append(latest_results)
                _after_epoch(epoch, output_dir)
    except KeyboardInterrupt:
        interrupted = True

    if args.distributed:
        torch.distributed.destroy_process_group()
    if best_metric is not None:
        _logger.info(f'*** Best metric: {best_metric} (epoch {best_epoch})')
    if interrupted:
        resume_from = last_saved or (os.path.join(output_dir, 'last.pth.tar') if output_dir else None)
        hint = (f' Resume with the same options plus --resume {resume_from}' if resume_from and os.path.exists(resume_from)
                else ' No checkpoint was written yet.')
        _logger.error(f'Training was interrupted.{hint}')

    if utils.is_primary(args):
        # for parsable results display, dump top-10 summaries to avoid excess console spam
        display_results = sorted(
            results, key=lambda x: x.get('validation', x.get('train')).get(eval_metric, 0), reverse=decreasing_metric)
        print(f'--result\n{json.dumps(display_results[-10:], indent=4)}')

    hub_url = stim.after_training(output_dir, dataset_train, interrupted=interrupted)
    return {'best_metric': best_metric, 'best_epoch': best_epoch, 'output_dir': output_dir, 'epochs': results,
            'hub_url': hub_url, 'interrupted': interrupted}


if __name__ == '__main__':
    main()
