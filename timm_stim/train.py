"""The training program behind ``train_stim.py``: timm's ``train.py`` flow plus Stimulative Training.

Everything timm provides is used as is (datasets, loaders, mixup, losses, optimizers,
schedulers, EMA, checkpoint saver, distributed helpers); this module adds the
``StimulativeTask``, the ``--stim-*`` options and the checks that stop bad input before any
data is loaded or anything is written.
"""
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import yaml
from timm import utils
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader, resolve_data_config
from timm.loss import create_classification_loss
from timm.layers import convert_splitbn_model, convert_sync_batchnorm, set_fast_norm
from timm.models import load_checkpoint, model_parameters, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask, load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import NativeScaler

from .args import parse_args
from .data import resolve_dataset, with_image_mode
from .errors import UnsupportedModelError
from .hub import HubPushError
from .spaces import resolve_space
from .stimulator import Stimulator, attach, get_stimulator
from .task import StimulativeTask, check_scales, round_to_multiple

_logger = logging.getLogger('train_stim')

class ConfigError(ValueError):
    """Bad command-line input, found before any data is loaded or file written."""


# ---------------------------------------------------------------------------------------------
# Checks and resolved configuration
# ---------------------------------------------------------------------------------------------

def check_args(args) -> None:
    """Cheap checks of the options timm_stim adds or depends on; raise ``ConfigError``."""
    if not timm.is_model(args.model) and not args.model.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')):
        import difflib
        close = difflib.get_close_matches(args.model, timm.list_models(), n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ' See timm.list_models().'
        raise ConfigError(f'--model {args.model!r} is not a timm model.{hint}')
    if args.stim_subnets < 0:
        raise ConfigError(f'--stim-subnets {args.stim_subnets}: expected an int >= 0 (0 turns ST off).')
    try:
        check_scales(args.stim_min_scale, args.stim_max_scale)
    except ValueError as e:
        raise ConfigError(f'--stim-min-scale/--stim-max-scale: {e}') from None
    if args.stim_weight < 0 or args.stim_temperature <= 0 or args.stim_amplitude <= 0:
        raise ConfigError(f'--stim-weight must be >= 0, --stim-temperature and --stim-amplitude > 0; got '
                          f'{args.stim_weight}, {args.stim_temperature}, {args.stim_amplitude}.')
    if args.stim_bn_recal < 0:
        raise ConfigError(f'--stim-bn-recal {args.stim_bn_recal}: expected a number of images >= 0.')
    if args.stim_subnets > 0 and args.kd_model_name:
        raise ConfigError('--kd-model-name with --stim-subnets > 0: knowledge distillation from a teacher and '
                          'stimulative training cannot be combined yet; use one of them.')
    if args.model_dtype not in (None, '', 'float32', 'float16', 'bfloat16'):
        raise ConfigError(f'--model-dtype {args.model_dtype!r}: expected float32, float16 or bfloat16.')
    if args.stim_subnets > 0 and args.naflex_loader:
        raise ConfigError('--naflex-loader is for NaFlex vision transformers (NaFlexVit), which timm_stim has no '
                          'adapter for. Drop --naflex-loader or set --stim-subnets 0.')
    if args.stim_subnets > 0 and args.opt.lower().split('_')[-1] == 'adahessian':
        # The task back-propagates every term itself (official order); a second-order backward
        # (create_graph=True) of the returned loss would see none of them.
        raise ConfigError(f'--opt {args.opt} is a second-order optimizer, which stimulative training does not '
                          f'support: use a first-order optimizer (e.g. sgd, adamw) or set --stim-subnets 0.')
    if args.data and not args.data_dir:
        args.data_dir = args.data  # positional data dir is timm's deprecated spelling
    try:
        resolve_dataset(args.dataset, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    if args.push_to_hub is not None:
        from .hub import check_repo_id
        try:
            check_repo_id(args.push_to_hub)
        except ValueError as e:
            raise ConfigError(f'--push-to-hub: {e}') from None
        if args.hub_which == 'ema' and not args.model_ema:
            raise ConfigError('--hub-which ema publishes the EMA weights, but --model-ema is off: add --model-ema '
                              'or use --hub-which best / last.')


def resolved_stim_config(args, stimulator: Optional[Stimulator], input_size: Sequence[int]) -> Dict[str, Any]:
    """What the ``--stim-*`` options resolve to for this model (printed and saved in args.yaml)."""
    if stimulator is None or args.stim_subnets == 0:
        return {'enabled': False}
    short = min(input_size[-2:])
    sides = [max(1, math.floor(short * scale)) for scale in (args.stim_min_scale, args.stim_max_scale)]
    # As StimulativeTask draws them (sample_input_size): scaled sizes are rounded to the
    # adapter's size multiple, full-size inputs are used as they are.
    scaled = (args.stim_min_scale, args.stim_max_scale) != (1.0, 1.0)
    multiple = stimulator.adapter.input_size_multiple(stimulator.model) if scaled else 1
    return {
        'enabled': True,
        'family': stimulator.adapter.family,
        'stage_depths': list(stimulator.stage_depths),
        'max_drops': list(stimulator.max_drops),
        'depth_choices': [list(c) for c in stimulator.depth_choices],
        'input_size': list(input_size),
        'subnet_input_short_side': list(round_to_multiple(sides, multiple)),
        'subnets_per_step': args.stim_subnets,
        'total_kl_weight': args.stim_subnets * args.stim_weight,
    }


# ---------------------------------------------------------------------------------------------
# Model, task, data
# ---------------------------------------------------------------------------------------------

def create_train_model(args) -> nn.Module:
    """``timm.create_model`` with the keyword arguments timm's train.py passes."""
    factory_kwargs = {}
    if args.pretrained_path:
        factory_kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path, num_classes=-1)
    model = timm.create_model(
        args.model,
        pretrained=args.pretrained,
        in_chans=args.in_chans,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path if args.drop_path is not None else args.drop_connect,
        drop_block_rate=args.drop_block,
        global_pool=args.gp,
        bn_momentum=args.bn_momentum,
        bn_eps=args.bn_eps,
        scriptable=args.torchscript,
        checkpoint_path=args.initial_checkpoint or None,
        **factory_kwargs,
        **args.model_kwargs,
    )
    if args.head_init_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(args.head_init_scale)
            model.get_classifier().bias.mul_(args.head_init_scale)
    if args.head_init_bias is not None:
        nn.init.constant_(model.get_classifier().bias, args.head_init_bias)
    return model


def create_train_criterion(args, mixup_active: bool) -> nn.Module:
    """The task loss for these options, from timm's own factory (as timm's train.py selects it)."""
    loss_type = 'jsd' if args.jsd_loss else ('bce' if args.bce_loss else None)
    return create_classification_loss(
        loss_type=loss_type, smoothing=args.smoothing, soft_targets=mixup_active,
        pos_weight=args.bce_pos_weight, bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum,
        jsd_splits=args.aug_splits if args.jsd_loss else 0)


def create_train_task(args, model: nn.Module, criterion: nn.Module, device: torch.device,
                      data_config: Optional[Dict[str, Any]] = None):
    """A ``StimulativeTask`` when ``--stim-subnets > 0``, else timm's own task for the options.

    ``data_config`` (timm's resolved data config; resolved from ``args`` and the model when None)
    gives the mean / std that ``--stim-resize official`` normalizes subnetwork inputs with.
    """
    if args.stim_subnets > 0:
        data_config = data_config or resolve_data_config(vars(args), model=model, verbose=False)
        return StimulativeTask(
            model, criterion,
            num_subnets=args.stim_subnets,
            min_scale=args.stim_min_scale, max_scale=args.stim_max_scale,
            resize=args.stim_resize, antialias=args.stim_antialias,
            input_mean=tuple(data_config['mean']), input_std=tuple(data_config['std']),
            kl_weight=args.stim_weight, normalize=args.stim_norm, amplitude=args.stim_amplitude,
            temperature=args.stim_temperature, start_epoch=args.stim_start_epoch,
            weight_sched=args.stim_weight_sched, weight_sched_step=args.stim_weight_sched_step,
            seed=args.seed,  # not rank dependent: every rank draws the same subnets and sizes
            device=device, verbose=utils.is_primary(args),
        )
    if args.kd_model_name:
        try:
            return create_distillation_task(args, model, criterion, device)
        except (OSError, RuntimeError, ValueError) as e:  # hub/cache/file errors while loading the teacher
            raise ConfigError(
                f'--kd-model-name {args.kd_model_name!r}: could not create the teacher with pretrained weights '
                f'({type(e).__name__}: {e}). Pass a model timm can load with pretrained=True here: a Hub model '
                f'in the local cache, or local-dir:DIR with config.json and model.safetensors.') from e
    return ClassificationTask(model, criterion, device=device, verbose=utils.is_primary(args))


def create_distillation_task(args, model: nn.Module, criterion: nn.Module, device: torch.device):
    """timm's distillation task for ``--kd-distill-type``, built exactly as timm's train.py builds it.

    The teacher is ``--kd-model-name`` created by timm with ``pretrained=True``: a Hub name
    (``hf-hub:...``, cached or downloaded) or a ``local-dir:DIR`` folder in timm's Hub format.
    """
    from timm.task import FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask
    common = dict(student_model=model, teacher_model=args.kd_model_name, criterion=criterion,
                  distill_loss_weight=args.distill_loss_weight, task_loss_weight=args.task_loss_weight,
                  device=device, dtype=_model_dtype(args), verbose=utils.is_primary(args))
    if args.kd_distill_type == 'logit':
        return LogitDistillationTask(loss_type=args.kd_loss_type, temperature=args.kd_temperature, **common)
    if args.kd_distill_type == 'feature':
        return FeatureDistillationTask(student_feature_dim=args.kd_student_feature_dim,
                                       teacher_feature_dim=args.kd_teacher_feature_dim, **common)
    if args.kd_distill_type == 'token':
        return TokenDistillationTask(distill_type=args.kd_token_distill_type, temperature=args.kd_temperature,
                                     **common)
    raise ConfigError(f'--kd-distill-type {args.kd_distill_type!r}: expected logit, feature or token.')


def _model_dtype(args) -> Optional[torch.dtype]:
    return getattr(torch, args.model_dtype) if args.model_dtype else None


def create_loss_scaler(device: torch.device, amp_dtype: torch.dtype, use_amp: bool) -> Optional[NativeScaler]:
    """timm's ``NativeScaler`` where AMP needs loss scaling: float16 autocast on CUDA (as timm's train.py)."""
    if use_amp and device.type == 'cuda' and amp_dtype == torch.float16:
        return NativeScaler(device=device.type)
    return None


# ---------------------------------------------------------------------------------------------
# BatchNorm re-estimation (official: 2000 images before each validation)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, num_images: int, device: torch.device, amp_autocast=nullcontext,
                   channels_last: bool = False) -> int:
    """Re-estimate every BatchNorm's running statistics of the full network on ``num_images``.

    Running statistics are reset and replaced by the exact average of the batch statistics
    (cumulative moving average, ``momentum=None``), as the official code does.

    Returns:
        Number of images used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or num_images <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        for input, _ in loader:
            input = input.to(device)
            if channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                model(input)
            seen += input.shape[0]
            if seen >= num_images:
                break
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return seen


# ---------------------------------------------------------------------------------------------
# One epoch of training, one validation pass
# ---------------------------------------------------------------------------------------------

def train_one_epoch(epoch, task, loader, optimizer, args, device, lr_scheduler=None, output_dir=None,
                    amp_autocast=nullcontext, loss_scaler=None, saver=None, mixup_fn=None,
                    num_updates_total=None):
    """One epoch, as timm's ``train_one_epoch`` with a task. Returns ordered metrics."""
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and loader.mixup_enabled:
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False

    second_order = hasattr(optimizer, 'is_second_order') and optimizer.is_second_order
    has_no_sync = hasattr(task, 'no_sync')
    update_time_m = utils.AverageMeter()
    data_time_m = utils.AverageMeter()
    losses_m = utils.AverageMeter()
    kl_m = utils.AverageMeter()
    stim = isinstance(task, StimulativeTask)
    model = task.get_trainable_module()

    task.train()
    num_batches = batches_per_epoch(loader, args)
    accum_steps = args.grad_accum_steps
    last_accum_steps = num_batches % accum_steps
    updates_per_epoch = (num_batches + accum_steps - 1) // accum_steps
    num_updates = epoch * updates_per_epoch
    last_batch_idx = num_batches - 1
    last_batch_idx_to_accum = num_batches - last_accum_steps

    data_start_time = update_start_time = time.time()
    optimizer.zero_grad()
    update_sample_count = 0
    for batch_idx, (input, target) in enumerate(loader):
        if batch_idx >= num_batches:
            break
        last_batch = batch_idx == last_batch_idx
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        update_idx = batch_idx // accum_steps
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps
        if hasattr(task, 'set_progress'):
            task.set_progress(epoch, batch_idx)

        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)

        data_time_m.update(accum_steps * (time.time() - data_start_time))

        def _forward():
            with amp_autocast():
                result = task(input, target)
                _loss = result['loss']
            if accum_steps > 1:
                _loss = _loss / accum_steps
            return result, _loss

        def _backward(_loss):
            if loss_scaler is not None:
                loss_scaler(
                    _loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                    parameters=model_parameters(model, exclude_head='agc' in args.clip_mode),
                    create_graph=second_order, need_update=need_update)
            else:
                _loss.backward(create_graph=second_order)
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(
                            model_parameters(model, exclude_head='agc' in args.clip_mode),
                            value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()

        if has_no_sync and not need_update:
            with task.no_sync():
                result, loss = _forward()
                _backward(loss)
        else:
            result, loss = _forward()
            _backward(loss)

        losses_m.update(loss.item() * accum_steps, input.size(0))
        if 'stim_kl' in result:
            kl_m.update(result['stim_kl'].item(), input.size(0))
        update_sample_count += input.size(0)

        if not need_update:
            data_start_time = time.time()
            continue

        num_updates += 1
        optimizer.zero_grad()
        task.update_ema(step=num_updates)

        if args.synchronize_step and device.type == 'cuda':
            torch.cuda.synchronize()
        time_now = time.time()
        update_time_m.update(time.time() - update_start_time)
        update_start_time = time_now

        if update_idx % args.log_interval == 0 or last_batch:
            lrl = [param_group['lr'] for param_group in optimizer.param_groups]
            lr = sum(lrl) / len(lrl)
            loss_avg, loss_now = losses_m.avg, losses_m.val
            if args.distributed:
                loss_avg = utils.reduce_tensor(loss.new([loss_avg]), args.world_size).item()
                loss_now = utils.reduce_tensor(loss.new([loss_now]), args.world_size).item()
                update_sample_count *= args.world_size
            if utils.is_primary(args):
                kl_text = f'  KL: {kl_m.val:.4f} ({kl_m.avg:.4f})  KL weight: {task.kl_weight:.3f}' if stim else ''
                _logger.info(
                    f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} '
                    f'({100. * (update_idx + 1) / updates_per_epoch:>3.0f}%)]  '
                    f'Loss: {loss_now:#.3g} ({loss_avg:#.3g}){kl_text}  '
                    f'Time: {update_time_m.val:.3f}s, {update_sample_count / update_time_m.val:>7.2f}/s  '
                    f'LR: {lr:.3e}  Data: {data_time_m.val:.3f} ({data_time_m.avg:.3f})')

        if saver is not None and args.recovery_interval and ((update_idx + 1) % args.recovery_interval == 0):
            saver.save_recovery(epoch, batch_idx=update_idx)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=losses_m.avg)
        update_sample_count = 0
        data_start_time = time.time()

    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()
    loss_avg = losses_m.avg
    if args.distributed:
        loss_avg = utils.reduce_tensor(torch.tensor([loss_avg], device=device), args.world_size).item()
    metrics = OrderedDict([('loss', loss_avg)])
    if stim:
        kl_avg = kl_m.avg
        if args.distributed:
            kl_avg = utils.reduce_tensor(torch.tensor([kl_avg], device=device), args.world_size).item()
        metrics['stim_kl'] = kl_avg
    return metrics


def batches_per_epoch(loader, args) -> int:
    """Training batches per epoch: the loader's length, capped by ``--train-batches-per-epoch``."""
    if args.train_batches_per_epoch:
        return min(len(loader), args.train_batches_per_epoch)
    return len(loader)


def validate(model, loader, loss_fn, args, device, amp_autocast=nullcontext, log_suffix=''):
    """Loss / top-1 / top-5 over the validation loader, accumulated by timm's ``ClassificationEvaluator``.

    Metrics are weighted by samples (not batches) and, in distributed runs, exclude the
    padding the distributed sampler adds, then are summed over ranks.
    """
    from timm.task import ClassificationEvaluator, evaluation_sample_limit
    evaluator = ClassificationEvaluator(device, max_samples=evaluation_sample_limit(loader), criterion=loss_fn)
    batch_time_m = utils.AverageMeter()
    model.eval()
    end = time.time()
    last_idx = len(loader) - 1
    with torch.inference_mode():
        for batch_idx, (input, target) in enumerate(loader):
            if not args.prefetcher:
                input, target = input.to(device), target.to(device)
            if args.channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                output = model(input)
            if isinstance(output, (tuple, list)):
                output = output[0]
            if args.tta > 1:
                output = output.unfold(0, args.tta, args.tta).mean(dim=2)
                target = target[0:target.size(0):args.tta]
            evaluator.update(output, target)
            batch_time_m.update(time.time() - end)
            end = time.time()
            if utils.is_primary(args) and (batch_idx == last_idx or batch_idx % args.log_interval == 0):
                running = evaluator.summary()
                _logger.info(
                    f'Test{log_suffix}: [{batch_idx:>4d}/{last_idx}]  Time: {batch_time_m.val:.3f} '
                    f'({batch_time_m.avg:.3f})  Loss: {running["loss"]:>6.3f}  Acc@1: {running["top1"]:>7.3f}  '
                    f'Acc@5: {running["top5"]:>7.3f}')
    return evaluator.compute(distributed=args.distributed)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def _after_epoch(epoch: int, output_dir: Optional[str]) -> None:
    """Called after each epoch's checkpoint is written (a seam for tests that simulate a kill)."""


def _first_not_none(*values):
    # Compiled modules refuse bool() (it calls len()), so `a or b` cannot pick between modules.
    return next(v for v in values if v is not None)


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
    """Run training. Returns a dict with the best metric/epoch and the output dir."""
    setup_logging()
    args, args_text = parse_args(argv)
    try:
        return _main(args)
    except ConfigError as e:
        _logger.error(str(e))
        raise SystemExit(2)
    except HubPushError as e:  # training finished and its results are saved; only publishing failed
        _logger.error(e.report())
        raise SystemExit(1)


def _main(args) -> Dict[str, Any]:
    check_args(args)  # cheap checks: nothing built, loaded or written yet
    args.prefetcher = not args.no_prefetcher

    if args.device_modules:
        for module in args.device_modules:
            __import__(module)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f'--device {args.device!r} but CUDA is not available here; pass --device cpu.')
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(f'Training in distributed mode with {args.world_size} processes, rank {args.rank}, '
                     f'device {args.device}.')
    else:
        _logger.info(f'Training with a single process on device {args.device}.')
    assert args.rank >= 0
    if args.push_to_hub and utils.is_primary(args):
        from .hub import warn_if_no_token
        warn_if_no_token(args.push_to_hub)

    model_dtype = _model_dtype(args)
    if args.sync_bn and args.distributed and device.type == 'cpu':
        raise ConfigError('--sync-bn synchronizes BatchNorm across GPUs; torch\'s SyncBatchNorm does not run on '
                          'CPU tensors. Drop --sync-bn (or use --dist-bn reduce) for CPU training.')
    use_amp = None
    amp_dtype = torch.float16
    if args.amp:
        assert args.amp_dtype in ('float16', 'bfloat16')
        use_amp = 'native'
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' or device.type == 'cpu' else torch.float16
        if device.type == 'cpu' and args.amp_dtype == 'float16':
            _logger.info('AMP on CPU uses bfloat16 (float16 autocast is a CUDA feature).')

    utils.random_seed(args.seed, args.rank)
    if args.fuser:
        utils.set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()

    in_chans = 3
    if args.in_chans is not None:
        in_chans = args.in_chans
    elif args.input_size is not None:
        in_chans = args.input_size[0]

    model = create_train_model(args)
    if args.num_classes is None:
        assert hasattr(model, 'num_classes'), 'Model must have `num_classes` attr if not set on cmd line/config.'
        args.num_classes = model.num_classes

    stimulator = None
    if args.stim_subnets > 0:
        try:
            stimulator = attach(model, space=args.stim_space, mode=args.stim_mode, bn=args.stim_bn)
        except UnsupportedModelError as e:
            raise ConfigError(f'--model {args.model} with --stim-subnets {args.stim_subnets}: {e}') from None
        except ValueError as e:
            raise ConfigError(f'--stim-space {args.stim_space!r} for {args.model}: {e}') from None
        try:
            stimulator.adapter.check_input_scaling(model, args.stim_min_scale, args.stim_max_scale)
        except ValueError as e:
            raise ConfigError(f'--stim-min-scale/--stim-max-scale for {args.model}: {e}') from None

    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))
    stim_resolved = resolved_stim_config(args, stimulator, data_config['input_size'])
    if utils.is_primary(args):
        _logger.info(f'Model {safe_model_name(args.model)} created, param count: '
                     f'{sum(m.numel() for m in model.parameters())}')
        _logger.info('Stimulative training: ' + yaml.safe_dump(stim_resolved, default_flow_style=True).strip())

    # Data sources are checked before anything is loaded or written.
    dataset_name, data_root = resolve_dataset(args.dataset, args.data_dir)

    num_aug_splits = 0
    if args.aug_splits > 0:
        assert args.aug_splits > 1, 'A split of 1 makes no sense'
        num_aug_splits = args.aug_splits
    if args.split_bn:
        assert num_aug_splits > 1 or args.resplit
        model = convert_splitbn_model(model, max(num_aug_splits, 2))

    model.to(device=device, dtype=model_dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = convert_sync_batchnorm(model)
        if stimulator is not None:
            # SyncBatchNorm conversion builds new norm modules; the stimulator keeps block references.
            stimulator = get_stimulator(model) or stimulator
    if args.torchscript:
        assert not args.torchcompile, 'Cannot use torchscript with torch.compile'
        if args.stim_subnets > 0:
            raise ConfigError('--torchscript with --stim-subnets > 0: a scripted model cannot skip blocks; '
                              'use --torchcompile (full network only) or no compilation.')
        model = torch.jit.script(model)

    if not args.lr:
        global_batch_size = args.batch_size * args.world_size * args.grad_accum_steps
        batch_ratio = global_batch_size / args.lr_base_size
        if not args.lr_base_scale:
            on = args.opt.lower()
            args.lr_base_scale = 'sqrt' if any([o in on for o in ('ada', 'lamb')]) else 'linear'
        if args.lr_base_scale == 'sqrt':
            batch_ratio = batch_ratio ** 0.5
        args.lr = args.lr_base * batch_ratio
        if utils.is_primary(args):
            _logger.info(f'Learning rate ({args.lr}) calculated from base learning rate ({args.lr_base}) '
                         f'and effective global batch size ({global_batch_size}) with {args.lr_base_scale} scaling.')

    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)

    amp_autocast = nullcontext
    loss_scaler = create_loss_scaler(device, amp_dtype, use_amp=use_amp == 'native')
    if use_amp == 'native':
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if utils.is_primary(args):
            _logger.info(f'Using native Torch AMP ({amp_dtype}). Training in mixed precision.')
    elif utils.is_primary(args):
        _logger.info('AMP not enabled. Training in float32.')

    # Mixup / loss.
    collate_fn = None
    mixup_fn = None
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            assert not num_aug_splits
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
    train_loss_fn = create_train_criterion(args, mixup_active).to(device=device)
    validate_loss_fn = nn.CrossEntropyLoss().to(device=device)

    task = create_train_task(args, model, train_loss_fn, device)

    resume_epoch = None
    if args.resume:
        resume_epoch = resume_task_checkpoint(
            task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
            loss_scaler=None if args.no_resume_opt else loss_scaler, log_info=utils.is_primary(args))

    model_ema = None
    if args.model_ema:
        model_ema = task.setup_ema(
            decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
            device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)

    eval_model = model
    if args.torchcompile:
        assert hasattr(torch, 'compile'), 'A version of torch w/ torch.compile() is required for --compile'
        # Only the full network is compiled; subnetwork passes run the eager model.
        compiled = task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        eval_model = compiled if compiled is not None else model
        if model_ema is not None:
            task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb)

    # Datasets and loaders.
    if args.input_img_mode is None:
        input_img_mode = 'RGB' if data_config['input_size'][0] == 3 else 'L'
    else:
        input_img_mode = args.input_img_mode
    dataset_train = create_dataset(
        dataset_name, root=data_root, split=args.train_split, is_training=True, class_map=args.class_map,
        download=args.dataset_download, batch_size=args.batch_size, seed=args.seed, repeats=args.epoch_repeats,
        input_img_mode=input_img_mode, input_key=args.input_key, target_key=args.target_key,
        num_samples=args.train_num_samples, trust_remote_code=args.dataset_trust_remote_code)
    dataset_eval = None
    if args.val_split:
        dataset_eval = create_dataset(
            dataset_name, root=data_root, split=args.val_split, is_training=False, class_map=args.class_map,
            download=args.dataset_download, batch_size=args.batch_size, input_img_mode=input_img_mode,
            input_key=args.input_key, target_key=args.target_key, num_samples=args.val_num_samples,
            trust_remote_code=args.dataset_trust_remote_code)
    dataset_train = with_image_mode(dataset_train, dataset_name, input_img_mode)
    dataset_eval = with_image_mode(dataset_eval, dataset_name, input_img_mode)
    if num_aug_splits > 1:
        from timm.data import AugMixDataset
        dataset_train = AugMixDataset(dataset_train, num_splits=num_aug_splits)

    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        re_split=args.resplit, train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio,
        hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob or 0.,
        gaussian_blur_prob=args.gaussian_blur_prob or 0., auto_augment=args.aa,
        num_aug_repeats=args.aug_repeats, num_aug_splits=num_aug_splits, interpolation=train_interpolation,
        mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
        distributed=args.distributed, collate_fn=collate_fn, pin_memory=args.pin_mem, device=device,
        use_prefetcher=args.prefetcher, use_multi_epochs_loader=args.use_multi_epochs_loader,
        worker_seeding=args.worker_seeding, img_dtype=model_dtype or torch.float32,
        input_size_choices=args.train_img_sizes, batch_size_choices=args.train_batch_sizes,
        batch_choice_weights=args.train_size_probs, batch_choice_seed=args.seed,
        batch_choice_schedule=args.train_size_schedule, batch_schedule_epochs=args.epochs,
        batch_schedule_spread=args.train_size_schedule_spread,
        batch_schedule_random_mix=args.train_size_random_mix, num_batches=args.train_batches_per_epoch)
    apply_stim_transforms(loader_train, args, data_config)

    loader_eval = None
    if dataset_eval is not None:
        eval_workers = args.workers
        if args.distributed and ('tfds' in args.dataset or 'wds' in args.dataset):
            eval_workers = min(2, args.workers)
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'],
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
            num_workers=eval_workers, distributed=args.distributed, crop_pct=data_config['crop_pct'],
            pin_memory=args.pin_mem, device=device, use_prefetcher=args.prefetcher,
            img_dtype=model_dtype or torch.float32)

    # Output directory: created only now, after every check passed.
    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    decreasing_metric = eval_metric == 'loss'
    saver = None
    output_dir = None
    if utils.is_primary(args):
        if args.experiment:
            exp_name = args.experiment
        else:
            exp_name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model),
                                 str(data_config['input_size'][-1])])
        output_dir = utils.get_outdir(args.output if args.output else './output/train', exp_name)
        saver = utils.CheckpointSaver(
            model=model, optimizer=optimizer, args=args, model_ema=model_ema, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=decreasing_metric,
            max_history=args.checkpoint_hist, task=task)
        if args.resume:
            saver.load_state_dict_from_checkpoint(args.resume)
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            f.write(yaml.safe_dump({**vars(args), 'stim_resolved': stim_resolved}, default_flow_style=False))

    if utils.is_primary(args) and args.log_wandb:
        try:
            import wandb
        except ImportError:
            _logger.warning('You requested to log results to wandb but it is not installed: pip install wandb')
            args.log_wandb = False
        else:
            # The run's config is args.yaml's: every option plus the resolved stimulative configuration.
            wandb.init(project=args.wandb_project, name=exp_name, config={**vars(args), 'stim_resolved': stim_resolved},
                       tags=args.wandb_tags, resume='must' if args.wandb_resume_id else None,
                       id=args.wandb_resume_id or None)

    updates_per_epoch = (batches_per_epoch(loader_train, args) + args.grad_accum_steps - 1) // args.grad_accum_steps
    if hasattr(task, 'configure_training'):
        task.configure_training(epochs=args.epochs, batches_per_epoch=batches_per_epoch(loader_train, args),
                                grad_accum_steps=args.grad_accum_steps, loss_scaler=loss_scaler)
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=decreasing_metric),
        updates_per_epoch=updates_per_epoch)
    start_epoch = 0
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    elif resume_epoch is not None:
        start_epoch = resume_epoch
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    if utils.is_primary(args):
        _logger.info(f'Scheduled epochs: {num_epochs}. LR stepped per {"update" if args.sched_on_updates else "epoch"}.')

    results = []
    best_metric = best_epoch = None
    interrupted = False
    summary_started = False  # the first row this process writes carries the header
    try:
        for epoch in range(start_epoch, num_epochs):
            # Per-epoch seeding makes an epoch's data order and augmentation depend only on the
            # seed and the epoch, so a resumed run repeats the uninterrupted run exactly.
            utils.random_seed(args.seed + epoch, args.rank)
            if hasattr(dataset_train, 'set_epoch'):
                dataset_train.set_epoch(epoch)
            elif args.distributed and hasattr(loader_train.sampler, 'set_epoch'):
                loader_train.sampler.set_epoch(epoch)

            train_metrics = train_one_epoch(
                epoch, task, loader_train, optimizer, args, device, lr_scheduler=lr_scheduler,
                output_dir=output_dir, amp_autocast=amp_autocast, loss_scaler=loss_scaler, saver=saver,
                mixup_fn=mixup_fn)

            if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                if utils.is_primary(args):
                    _logger.info('Distributing BatchNorm running means and vars')
                utils.distribute_bn(model, args.world_size, args.dist_bn == 'reduce')

            if (epoch + 1) % args.val_interval != 0 and epoch + 1 != num_epochs:
                # As timm's train.py: between --val-interval epochs no validation, no summary row
                # and no checkpoint; the scheduler steps without a metric.
                if utils.is_primary(args):
                    _logger.info(f'Epoch {epoch}: skipping validation and checkpointing (--val-interval '
                                 f'{args.val_interval}).')
                if lr_scheduler is not None:
                    lr_scheduler.step(epoch + 1, None)
                results.append({'epoch': epoch, 'train': dict(train_metrics), 'validation': None,
                                'lr': sum(g['lr'] for g in optimizer.param_groups) / len(optimizer.param_groups)})
                _after_epoch(epoch, output_dir)
                continue

            eval_metrics = None
            if loader_eval is not None:
                if args.stim_bn_recal > 0:
                    n = recalibrate_bn(model, loader_train, args.stim_bn_recal, device, amp_autocast,
                                       args.channels_last)
                    if args.distributed:
                        utils.distribute_bn(model, args.world_size, True)
                    if utils.is_primary(args):
                        _logger.info(f'Re-estimated BatchNorm statistics on {n} training images per process.')
                if loader_eval is not None:
                    eval_metrics = validate(_first_not_none(task.get_eval_model(), eval_model), loader_eval, validate_loss_fn,
                                            args, device=device, amp_autocast=amp_autocast)
                    if model_ema is not None and not args.model_ema_force_cpu:
                        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                            utils.distribute_bn(model_ema, args.world_size, args.dist_bn == 'reduce')
                        ema_eval_metrics = validate(task.get_eval_model(ema=True), loader_eval, validate_loss_fn,
                                                    args, device=device, amp_autocast=amp_autocast,
                                                    log_suffix=' (EMA)')
                        eval_metrics = ema_eval_metrics
                if utils.is_primary(args) and eval_metrics is not None:
                    _logger.info(f'Epoch {epoch}: validation top-1 {eval_metrics["top1"]:.2f}  '
                                 f'top-5 {eval_metrics["top5"]:.2f}  loss {eval_metrics["loss"]:.4f}')

            if output_dir is not None:
                lrs = [param_group['lr'] for param_group in optimizer.param_groups]
                utils.update_summary(
                    epoch, train_metrics, eval_metrics or {}, filename=os.path.join(output_dir, 'summary.csv'),
                    lr=sum(lrs) / len(lrs), write_header=not summary_started, log_wandb=args.log_wandb)
                summary_started = True
            latest_metric = eval_metrics[eval_metric] if eval_metrics else train_metrics[eval_metric]
            if saver is not None:
                best_metric, best_epoch = saver.save_checkpoint(epoch, metric=latest_metric)
                if best_epoch == epoch:
                    save_best_safetensors(output_dir, use_ema=model_ema is not None and not args.model_ema_force_cpu)
            if lr_scheduler is not None:
                lr_scheduler.step(epoch + 1, latest_metric)
            results.append({'epoch': epoch, 'train': dict(train_metrics), 'validation': eval_metrics,
                            'lr': sum(g['lr'] for g in optimizer.param_groups) / len(optimizer.param_groups)})
            _after_epoch(epoch, output_dir)
    except KeyboardInterrupt:
        interrupted = True

    if args.distributed:
        torch.distributed.destroy_process_group()
    if best_metric is not None and utils.is_primary(args):
        _logger.info(f'*** Best metric: {best_metric} (epoch {best_epoch})')
    hub_url = None
    if args.push_to_hub and output_dir is not None:  # rank 0; a HubPushError exits with 1 in main()
        from .hub import push_after_training
        hub_url = push_after_training(args, output_dir, dataset_train, interrupted=interrupted)
    return {'best_metric': best_metric, 'best_epoch': best_epoch, 'output_dir': output_dir, 'epochs': results,
            'hub_url': hub_url}


def apply_stim_transforms(loader, args, data_config) -> None:
    """Add the recipe's PCA lighting / UniformAugment options to the train loader's transform."""
    if not args.lighting_std and not args.uniform_augment:
        return
    from .transforms import add_stim_transforms
    add_stim_transforms(loader, lighting_std=args.lighting_std, lighting_mode=args.lighting_mode,
                        uniform_augment=args.uniform_augment, uniform_augment_ops=args.uniform_augment_ops,
                        uniform_augment_variant=args.uniform_augment_variant, mean=data_config['mean'],
                        std=data_config['std'])


if __name__ == '__main__':
    main()
