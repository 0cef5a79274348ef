"""Everything ``train_stim.py`` adds to timm's ``train.py``, in one place.

``timm_stim.training.train`` follows timm's train.py step by step and knows nothing of subnetworks. At a
few named points it calls ``TrainAdditions``:

==========================  =================================================================
``check_args``              before anything is built: every option checked (timm's own asserts
                            become messages; YAML values were checked by ``timm_stim.training.args``)
``on_model_created``        attach the stimulator, check subnetwork input sizes, resolve a
                            compute budget and print the stimulative configuration
``check_resume``            read ``--resume`` safely and check it against the model
``check_output_dir``        refuse a non-empty experiment folder for a fresh run
``wrap_train_dataset``      per-sample seeding (``--seed-scheme per-sample``, the default)
``on_train_loader``         PCA lighting / UniformAugment; the seeded epoch order
``create_task``             ``StimulativeTask`` (also over timm's distillation tasks)
``create_saver``            timm's saver, recording mid-epoch progress in recovery checkpoints
``on_epoch_start``          seed the epoch; tell the task the epoch
``on_batch_start``          seed the step (mixup, drop-path); tell the task its progress
``before_validation``       BatchNorm re-estimation (``--stim-bn-recal``)
``on_epoch_end``            ``model_best.safetensors``; drop recovery files the epoch supersedes
``after_training``          ``--push-to-hub``
==========================  =================================================================
"""
import logging
import math
import os
from contextlib import nullcontext
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import yaml
from timm import utils

from .data import is_embedded, resolve_dataset
from ..errors import InputError, UnsupportedModelError, check_model_name
from ..loading import check_checkpoint_path, check_weights_file
from .runs import ProgressCheckpointSaver, ResumePoint, check_output_dir, read_resume_point, remove_recovery_files
from .seeding import (PerSampleSeededDataset, derive_seed, install_per_sample_seeding, per_sample_seeding_unsupported,
                      seed_all)
from ..stimulator import Stimulator, attach
from ..budget import BudgetPlan, check_budget, resolve_budget
from ..task import StimulativeTask, check_scales, round_to_multiple, stable_start_epochs, stimulative_task_class

__all__ = ['TrainAdditions', 'recalibrate_bn', 'smallest_input_side', 'resolved_stim_config']

_logger = logging.getLogger('train_stim')


# ---------------------------------------------------------------------------------------------
# Checks of the options, before anything is built
# ---------------------------------------------------------------------------------------------

def check_args(args) -> None:
    """Cheap checks of every option timm_stim adds or that timm asserts on; raise ``InputError``."""
    check_model_name(args.model)
    if args.stim_subnets < 0:
        raise InputError(f'--stim-subnets {args.stim_subnets}: expected an int >= 0 (0 turns ST off).')
    check_budget(args.stim_budget)
    if args.stim_budget is not None and args.stim_subnets:
        raise InputError(f'--stim-subnets {args.stim_subnets} and --stim-budget {args.stim_budget:g}: give one of '
                         f'them (set --stim-subnets 0, e.g. in a -c config, to let the budget choose).')
    if args.stim_weight_warmup is not None and not args.stim_weight_warmup >= 0:
        raise InputError(f'--stim-weight-warmup {args.stim_weight_warmup}: expected a number of epochs >= 0 '
                         f'(0: no warm-in of the KL weight).')
    try:
        check_scales(args.stim_min_scale, args.stim_max_scale)
    except ValueError as e:
        raise InputError(f'--stim-min-scale/--stim-max-scale: {e}') from None
    if args.stim_weight < 0 or args.stim_temperature <= 0 or args.stim_amplitude <= 0:
        raise InputError(f'--stim-weight must be >= 0, --stim-temperature and --stim-amplitude > 0; got '
                         f'{args.stim_weight}, {args.stim_temperature}, {args.stim_amplitude}.')
    if args.stim_bn_recal < 0:
        raise InputError(f'--stim-bn-recal {args.stim_bn_recal}: expected a number of images >= 0.')
    if args.stim_start_epoch < 0:
        raise InputError(f'--stim-start-epoch {args.stim_start_epoch}: expected an epoch >= 0.')
    if stimulative(args):
        if args.kd_model_name and args.kd_distill_type == 'token':
            raise InputError('--kd-distill-type token with --stim-subnets > 0: token distillation trains a separate '
                             'distillation head, which subnetworks have no target for; use --kd-distill-type logit or '
                             'feature, or --stim-subnets 0.')
        if args.naflex_loader:
            raise InputError('--naflex-loader is for NaFlex vision transformers (NaFlexVit), which timm_stim has no '
                             'adapter for. Drop --naflex-loader or set --stim-subnets 0.')
        if args.opt.lower().split('_')[-1] == 'adahessian':
            # Subnetwork terms are back-propagated inside the task loss's backward, without a graph of
            # the gradients: a second-order backward (create_graph=True) would not see them.
            raise InputError(f'--opt {args.opt} is a second-order optimizer, which stimulative training does not '
                             f'support: use a first-order optimizer (e.g. sgd, adamw) or set --stim-subnets 0.')
        if args.torchscript:
            raise InputError('--torchscript with --stim-subnets > 0: a scripted model cannot skip blocks; use '
                             '--torchcompile (full network only) or no compilation.')
    if args.kd_model_name:
        check_model_name(args.kd_model_name, '--kd-model-name')
        folder = args.kd_model_name[len('local-dir:'):] if args.kd_model_name.startswith('local-dir:') else None
        if folder is not None and not os.path.isfile(os.path.join(folder, 'config.json')):
            raise InputError(f'--kd-model-name {args.kd_model_name}: no config.json in {folder}; expected a folder in '
                             f'timm\'s Hub format (config.json + model.safetensors, e.g. timm.models.save_for_hf).')
    if args.model_dtype not in (None, '', 'float32', 'float16', 'bfloat16'):
        raise InputError(f'--model-dtype {args.model_dtype!r}: expected float32, float16 or bfloat16.')
    if args.amp and args.model_dtype not in (None, '', 'float32'):
        raise InputError(f'--amp with --model-dtype {args.model_dtype}: AMP needs float32 weights; drop one of them.')
    if args.amp and args.amp_dtype not in ('float16', 'bfloat16'):
        raise InputError(f'--amp-dtype {args.amp_dtype!r}: expected float16 or bfloat16.')
    if args.aug_splits == 1 or args.aug_splits < 0:
        raise InputError(f'--aug-splits {args.aug_splits}: expected 0 (off) or >= 2.')
    if args.split_bn and args.aug_splits < 2 and not args.resplit:
        raise InputError('--split-bn needs --aug-splits >= 2 or --resplit.')
    if args.jsd_loss and args.aug_splits < 2:
        raise InputError('--jsd-loss needs --aug-splits >= 2.')
    if args.naflex_loader and args.train_img_sizes is not None:
        raise InputError('--naflex-loader and --train-img-sizes are alternative loader modes; use one of them.')
    if args.naflex_loader and args.use_multi_epochs_loader:
        raise InputError('--use-multi-epochs-loader is not supported with --naflex-loader.')
    if args.naflex_patch_size_probs and len(args.naflex_patch_size_probs) != len(args.naflex_patch_sizes or []):
        raise InputError('--naflex-patch-size-probs must have one value per --naflex-patch-sizes entry.')
    if args.torchscript and args.torchcompile:
        raise InputError('--torchscript and --torchcompile are alternatives; use one of them.')
    if args.seed_scheme != 'timm' and args.worker_seeding != 'all':
        raise InputError(f'--worker-seeding {args.worker_seeding} has no effect with --seed-scheme {args.seed_scheme} '
                         f'(every sample is seeded from its position); use --seed-scheme timm to seed workers as timm.')
    if args.data and not args.data_dir:
        args.data_dir = args.data  # positional data dir is timm's deprecated spelling
    if is_embedded(args.dataset) and args.data_dir:
        raise InputError(f'--data-dir {args.data_dir} with --dataset {args.dataset}: the embedded dataset ships with '
                         f'timm_stim and reads no folder. Drop --data-dir, or drop --dataset to train on the folder.')
    try:
        resolve_dataset(args.dataset, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise InputError(str(e)) from None
    if args.push_to_hub is not None:
        from ..tools.hub import check_push_options
        try:
            check_push_options(args.push_to_hub, args.hub_revision, args.hub_create_pr)
        except InputError as e:
            raise InputError(f'--push-to-hub: {e}') from None
        if args.hub_which == 'ema' and not args.model_ema:
            raise InputError('--hub-which ema publishes the EMA weights, but --model-ema is off: add --model-ema '
                             'or use --hub-which best / last.')
    # Checkpoint files, read as every checkpoint is (timm_stim.loading): --resume is read in full once the
    # model exists (its weights must fit it); the weights timm loads while creating the model are read now.
    if args.resume:
        check_checkpoint_path(args.resume, '--resume')
    weights = (('--initial-checkpoint', args.initial_checkpoint), ('--pretrained-path', args.pretrained_path))
    for option, path in weights:
        if path:
            check_weights_file(path, option)


# ---------------------------------------------------------------------------------------------
# Subnetwork inputs the model can take
# ---------------------------------------------------------------------------------------------

def _runs_at(model: nn.Module, in_chans: int, height: int, width: int) -> Optional[str]:
    """None when the model runs on a (1, C, height, width) input, else the error it raises."""
    try:
        model(torch.zeros(1, in_chans, height, width))
    except (RuntimeError, ValueError, AssertionError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


@torch.no_grad()
def smallest_input_side(model: nn.Module, input_size: Sequence[int], min_scale: float,
                        multiple: int = 1) -> Optional[Dict[str, Any]]:
    """Check that the model runs on the smallest subnetwork input; find the smallest side it takes if not.

    Subnetworks keep the first block of every stage, so they downsample as the full network
    does: one forward of the full network (eval mode, batch 1, CPU) at the smallest side the
    sampler can draw tells whether training will fail later.

    Returns:
        None when the smallest input works, else ``{'side', 'needed', 'min_scale', 'error'}``:
        the smallest drawn side, the smallest side that works and the smallest ``min_scale``
        that reaches it.
    """
    _, height, width = input_size
    short = min(height, width)
    side = round_to_multiple([max(1, math.floor(short * min_scale))], multiple)[0]
    if side >= short:
        return None

    def dims(s: int):
        ratio = s / short
        return (s, max(1, round(width * ratio))) if height <= width else (max(1, round(height * ratio)), s)

    was_training = model.training
    model.eval()
    try:
        error = _runs_at(model, input_size[0], *dims(side))
        if error is None:
            return None
        low, high = side, short  # fails at low; assume the training size works
        while high - low > multiple:
            mid = round_to_multiple([(low + high) // 2], multiple)[0]
            if mid <= low:
                break
            if _runs_at(model, input_size[0], *dims(mid)) is None:
                high = mid
            else:
                low = mid
    finally:
        model.train(was_training)
    needed = high
    return {'side': side, 'needed': needed, 'min_scale': math.ceil(needed / short * 1000) / 1000, 'error': error}


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


def stimulative(args) -> bool:
    """Whether the options turn stimulative training on (``--stim-subnets K > 0`` or ``--stim-budget B``)."""
    return args.stim_subnets > 0 or args.stim_budget is not None


def weight_warmup_epochs(args) -> float:
    """``--stim-weight-warmup``, or the stable-start default for this learning rate schedule."""
    if args.stim_weight_warmup is not None:
        return float(args.stim_weight_warmup)
    return stable_start_epochs(args.warmup_epochs, args.sched_on_updates)


def resolved_stim_config(args, stimulator: Optional[Stimulator], input_size: Sequence[int],
                         plan: Optional[BudgetPlan] = None) -> Dict[str, Any]:
    """What the ``--stim-*`` options resolve to for this model (printed and saved in args.yaml)."""
    if stimulator is None or not stimulative(args):
        return {'enabled': False}
    num_subnets = plan.num_subnets if plan is not None else args.stim_subnets
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
        'subnets_per_step': round(num_subnets, 4),
        'total_kl_weight': round(num_subnets * args.stim_weight, 4),
        'kl_weight_warmup_epochs': weight_warmup_epochs(args),
        **({'budget': plan.budget, 'subnet_cost': round(plan.subnet_cost, 4),
            'expected_cost': round(plan.expected_cost, 4), 'full_forward_flops': plan.full_flops}
           if plan is not None else {}),
    }


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


# ---------------------------------------------------------------------------------------------
# The hooks
# ---------------------------------------------------------------------------------------------

class TrainAdditions:
    """What ``train_stim.py`` does beyond timm's train.py, called at named points of its flow.

    Args:
        args: the parsed options.
    """

    def __init__(self, args):
        self.args = args
        self.stimulator: Optional[Stimulator] = None
        self.model: Optional[nn.Module] = None  # the timm model itself (not DDP / compiled wrappers)
        self.stim_resolved: Dict[str, Any] = {'enabled': False}
        self.epoch_order = None  # seeding.EpochOrderSampler of the train loader (per-sample scheme)
        self.resume_point: Optional[ResumePoint] = None
        self.num_subnets = args.stim_subnets  # a mean (fraction) with --stim-budget
        self._skip_batch_size = args.batch_size  # samples per batch the loader yields (per process)

    @property
    def per_sample(self) -> bool:
        return self.args.seed_scheme == 'per-sample'

    def check_args(self) -> None:
        check_args(self.args)

    def on_model_created(self, model: nn.Module, input_size: Sequence[int]) -> None:
        """Attach subnetwork sampling (``--stim-subnets > 0``) and check what subnetworks will be fed."""
        args = self.args
        self.model = model
        if not stimulative(args):
            return
        try:
            stimulator = attach(model, space=args.stim_space, mode=args.stim_mode, bn=args.stim_bn)
        except UnsupportedModelError as e:
            raise InputError(f'--model {args.model} with stimulative training: {e}') from None
        except ValueError as e:
            raise InputError(f'--stim-space {args.stim_space!r} for {args.model}: {e}') from None
        try:
            stimulator.adapter.check_input_scaling(model, args.stim_min_scale, args.stim_max_scale)
        except ValueError as e:
            stimulator.detach()
            raise InputError(f'--stim-min-scale/--stim-max-scale for {args.model}: {e}') from None
        if all(d == 0 for d in stimulator.max_drops) and (args.stim_min_scale, args.stim_max_scale) == (1.0, 1.0):
            stimulator.detach()
            raise InputError(
                f'--stim-space {args.stim_space} keeps every block of {args.model} (depths '
                f'{list(stimulator.stage_depths)}) and subnetwork inputs are full size: every subnetwork would be the '
                f'full network, costing a full step and teaching nothing. Use a space that drops blocks (e.g. uniform, '
                f'stpp) or --stim-min-scale < 1.')
        multiple = stimulator.adapter.input_size_multiple(model)
        problem = smallest_input_side(model, input_size, args.stim_min_scale, multiple)
        if problem is not None:
            stimulator.detach()
            raise InputError(
                f'--stim-min-scale {args.stim_min_scale}: subnetwork inputs go down to {problem["side"]} px, but '
                f'{args.model} needs at least {problem["needed"]} px ({problem["error"]}). Use --stim-min-scale '
                f'{problem["min_scale"]} or more (or a larger --input-size / --img-size).')
        plan = None
        if args.stim_budget is not None:
            try:
                plan = resolve_budget(stimulator, input_size, args.stim_min_scale, args.stim_max_scale,
                                      budget=args.stim_budget, num_subnets=args.stim_subnets)
            except InputError:
                stimulator.detach()
                raise
            self.num_subnets = plan.num_subnets
        else:
            self.num_subnets = args.stim_subnets
        self.stimulator = stimulator
        self.stim_resolved = resolved_stim_config(args, stimulator, input_size, plan)
        if utils.is_primary(args):
            _logger.info('Stimulative training: ' + yaml.safe_dump(self.stim_resolved, default_flow_style=True).strip())
            if plan is not None:
                _logger.info('Stimulative training cost: ' + plan.describe())

    def check_resume(self, model: nn.Module) -> Optional[ResumePoint]:
        """Read ``--resume`` (safely) and check it fits the model, before data or outputs."""
        if not self.args.resume:
            return None
        self.resume_point = read_resume_point(self.args.resume, model, self.args.model)
        return self.resume_point

    def check_output_dir(self, output_dir: str) -> None:
        check_output_dir(output_dir, resuming=bool(self.args.resume))

    def wrap_train_dataset(self, dataset):
        """Per-sample seeding of augmentations (map-style datasets, ``--seed-scheme per-sample``)."""
        if not self.per_sample or isinstance(dataset, torch.utils.data.IterableDataset):
            return dataset
        return PerSampleSeededDataset(dataset, seed=self.args.seed, rank=self.args.rank)

    def on_train_loader(self, loader, data_config: Dict[str, Any]) -> None:
        """Recipe transforms, then the seeded epoch order on the train loader."""
        args = self.args
        if args.lighting_std or args.uniform_augment:
            from .transforms import add_stim_transforms
            add_stim_transforms(loader, lighting_std=args.lighting_std, lighting_mode=args.lighting_mode,
                                uniform_augment=args.uniform_augment, uniform_augment_ops=args.uniform_augment_ops,
                                uniform_augment_variant=args.uniform_augment_variant, mean=data_config['mean'],
                                std=data_config['std'])
        if not self.per_sample:
            return
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

    def check_mid_epoch_resume(self, loader, batch_size: int) -> None:
        """Refuse a mid-epoch resume the loader cannot skip into exactly (variable batch sizes)."""
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

    def create_task(self, model: nn.Module, criterion: nn.Module, device: torch.device,
                    data_config: Dict[str, Any]):
        """The training task: timm's (classification / distillation), with ST when ``--stim-subnets > 0``.

        ``data_config`` (timm's resolved data config) gives the mean / std that
        ``--stim-resize official`` normalizes subnetwork inputs with again.
        """
        args = self.args
        verbose = utils.is_primary(args)
        base, kwargs = None, {}
        if args.kd_model_name:
            from timm.task import FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask
            base = {'logit': LogitDistillationTask, 'feature': FeatureDistillationTask,
                    'token': TokenDistillationTask}[args.kd_distill_type]
            kwargs = dict(student_model=model, teacher_model=args.kd_model_name, criterion=criterion,
                          distill_loss_weight=args.distill_loss_weight, task_loss_weight=args.task_loss_weight,
                          device=device, dtype=_model_dtype(args), verbose=verbose)
            if args.kd_distill_type == 'logit':
                kwargs.update(loss_type=args.kd_loss_type, temperature=args.kd_temperature)
            elif args.kd_distill_type == 'feature':
                kwargs.update(student_feature_dim=args.kd_student_feature_dim,
                              teacher_feature_dim=args.kd_teacher_feature_dim)
            else:
                kwargs.update(distill_type=args.kd_token_distill_type, temperature=args.kd_temperature)
        if stimulative(args):
            stim_kwargs = dict(
                num_subnets=self.num_subnets, weight_warmup_epochs=weight_warmup_epochs(args), min_scale=args.stim_min_scale, max_scale=args.stim_max_scale,
                resize=args.stim_resize, antialias=args.stim_antialias, input_mean=tuple(data_config['mean']),
                input_std=tuple(data_config['std']), weight_sched_step=args.stim_weight_sched_step,
                kl_weight=args.stim_weight, weight_sched=args.stim_weight_sched, normalize=args.stim_norm,
                amplitude=args.stim_amplitude, temperature=args.stim_temperature, start_epoch=args.stim_start_epoch,
                seed=args.seed)  # not rank dependent: every rank draws the same subnets and sizes
            if base is None:
                return StimulativeTask(model, criterion, device=device, dtype=_model_dtype(args), verbose=verbose,
                                       **stim_kwargs)
            cls = stimulative_task_class(base)
            return self._teacher_errors(lambda: cls(**kwargs, stim=stim_kwargs))
        if base is not None:
            return self._teacher_errors(lambda: base(**kwargs))
        return None  # timm's ClassificationTask, built by the caller as timm does

    def _teacher_errors(self, build):
        try:
            return build()
        except (OSError, RuntimeError, ValueError) as e:  # hub/cache/file errors while loading the teacher
            if not self.args.kd_model_name:
                raise
            raise InputError(
                f'--kd-model-name {self.args.kd_model_name!r}: could not create the teacher with pretrained weights '
                f'({type(e).__name__}: {e}). Pass a model timm can load with pretrained=True here: a Hub model in '
                f'the local cache, or local-dir:DIR with config.json and model.safetensors.') from e

    def create_saver(self, **kwargs) -> ProgressCheckpointSaver:
        saver = ProgressCheckpointSaver(**kwargs)
        if self.args.resume:
            saver.load_state_dict_from_checkpoint(self.args.resume)
        return saver

    def args_yaml(self, args_text: str) -> str:
        """timm's args.yaml text, plus the resolved stimulative configuration when ST is on."""
        if not self.stim_resolved.get('enabled'):
            return args_text
        return args_text + yaml.safe_dump({'stim_resolved': self.stim_resolved}, default_flow_style=False)

    def on_epoch_start(self, epoch: int, task, loader, start_batch: int = 0) -> None:
        """Seed the epoch (its order, and what runs before the first step) and tell the task."""
        args = self.args
        if self.per_sample:
            seed_all(derive_seed('epoch', args.seed, args.rank, epoch))
            if self.epoch_order is not None:
                self.epoch_order.set_epoch(epoch)
                self.epoch_order.skip_next(start_batch * self._skip_batch_size)
            erasing = getattr(loader, 'random_erasing', None)
            if hasattr(erasing, 'set_position'):
                erasing.set_position(epoch, start_batch)
        if hasattr(task, 'set_progress'):
            task.set_progress(epoch, start_batch)

    def on_batch_start(self, epoch: int, batch_idx: int, task) -> None:
        """Seed this step's main-process draws (mixup, drop-path, dropout) and tell the task its progress."""
        if self.per_sample:
            seed_all(derive_seed('step', self.args.seed, self.args.rank, epoch, batch_idx))
        if hasattr(task, 'set_progress'):
            task.set_progress(epoch, batch_idx)

    def before_validation(self, loader_train, device, amp_autocast) -> None:
        """Re-estimate the full network's BatchNorm statistics (``--stim-bn-recal N``)."""
        args = self.args
        if args.stim_bn_recal <= 0:
            return
        n = recalibrate_bn(self.model, loader_train, args.stim_bn_recal, device, amp_autocast, args.channels_last)
        if args.distributed:
            utils.distribute_bn(self.model, args.world_size, True)
        if utils.is_primary(args):
            _logger.info(f'Re-estimated BatchNorm statistics on {n} training images per process.')

    def on_epoch_end(self, epoch: int, output_dir: Optional[str], best_epoch: Optional[int], model_ema) -> None:
        if output_dir is None:
            return
        if best_epoch == epoch:
            save_best_safetensors(output_dir, use_ema=model_ema is not None and not self.args.model_ema_force_cpu)
        remove_recovery_files(output_dir, up_to_epoch=epoch)

    def after_training(self, output_dir: Optional[str], dataset_train, interrupted: bool) -> Optional[str]:
        if not self.args.push_to_hub or output_dir is None:
            return None
        from ..tools.hub import push_after_training
        return push_after_training(self.args, output_dir, dataset_train, interrupted=interrupted)


def _model_dtype(args) -> Optional[torch.dtype]:
    return getattr(torch, args.model_dtype) if args.model_dtype else None
