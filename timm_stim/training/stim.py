"""``StimTraining``: what stimulative training adds to timm's training loop, in one object.

``timm_stim.training.train`` follows timm's train.py and knows nothing of subnetworks; this object
is one of its callbacks (``timm_stim.callbacks.TrainCallback``), every event it acts on about
stimulative training:

==========================  =================================================================
``on_options_checked``      before anything is built: the ``--stim-*`` values (``StimConfig``)
                            and the timm options stimulative training cannot work with (``check``)
``on_model_created``        attach the stimulator, check subnetwork inputs against the model,
                            resolve the config for the training sizes (budget, warm-in), log it
                            (``prepare_model``)
``on_task_created``         say when ``--resume`` had no subnetwork sampler state (it starts
                            as a fresh run's)
``on_before_validation``    BatchNorm re-estimation (``--stim-bn-recal``)
``on_validation_end``       score the fixed subnetworks of ``--stim-eval-subnets`` (their mean
                            and min top-1 become ``eval_subnet_top1_mean`` / ``_min``)
==========================  =================================================================

and the loop's task is built by ``create_task`` (the stimulative version of classification or
distillation).

``summary`` is what ``args.yaml`` saves under ``stim_resolved``.
"""
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Type

import torch
import torch.nn as nn
from timm import utils

from ..bn import recalibrate_bn
from ..callbacks import TrainCallback
from ..config import StimConfig
from ..errors import InputError, UnsupportedModelError
from ..inputs import cpu_bfloat16_conv_hazard, smallest_input_side
from ..resolve import ResolvedStim, describe, resolve_config
from ..stimulator import Stimulator, attach, get_stimulator
from ..subnet import Subnet
from ..task import stimulative_task_class
from .seeding import derive_seed

__all__ = ['StimTraining', 'train_input_sizes']

_logger = logging.getLogger('train_stim')

MANY_SUBNETS = 32  # above this, a step is so slow that the value is most likely a mistake: say so


def train_input_sizes(args, input_size: Sequence[int]) -> list:
    """Every input size (C, H, W) training feeds the model: each ``--train-img-sizes`` entry, else ``input_size``."""
    if args.train_img_sizes:
        return [(int(input_size[0]), int(s), int(s)) for s in args.train_img_sizes]
    return [tuple(int(v) for v in input_size)]


def smallest_train_size(train_sizes: Sequence[Sequence[int]]) -> Sequence[int]:
    """The training size with the shortest side: the smallest subnetwork inputs are drawn from it."""
    return min(train_sizes, key=lambda s: min(s[-2:]))


class StimTraining(TrainCallback):
    """Stimulative training in timm's loop.

    Args:
        args: the parsed options.
        config_cls: ``StimConfig`` or a subclass (the ``--stim-*`` options it declares).
    """

    def __init__(self, args, config_cls: Type[StimConfig] = StimConfig):
        self.args = args
        self.config = config_cls.from_args(args)
        self.resolved: Optional[ResolvedStim] = None
        self.stimulator: Optional[Stimulator] = None
        self.model: Optional[nn.Module] = None  # the timm model itself (not DDP / compiled wrappers)
        self.eval_subnets: List[Subnet] = []  # --stim-eval-subnets: drawn once, scored at every validation

    @property
    def enabled(self) -> bool:
        """Whether the options turn stimulative training on (``--stim-subnets K > 0`` or ``--stim-budget``)."""
        return self.config.enabled

    @property
    def summary(self) -> Dict[str, Any]:
        """``stim_resolved`` of ``args.yaml``: the resolved configuration, or ``{'enabled': False}``."""
        return self.resolved.summary if self.resolved is not None else {'enabled': False}

    def args_yaml(self, args_text: str) -> str:
        """timm's ``args.yaml`` text, plus the resolved configuration (``stim_resolved``) when ST is on."""
        if self.resolved is None:
            return args_text
        import yaml
        return args_text + yaml.safe_dump({'stim_resolved': self.summary}, default_flow_style=False)

    def check(self) -> None:
        """Check the ``--stim-*`` values and what stimulative training cannot work with; raise ``InputError``."""
        problems = self.config.problems(cli=True)
        if problems:
            raise InputError(problems[0])
        args = self.args
        if self.config.eval_subnets and not args.val_split:
            raise InputError(f'--stim-eval-subnets {self.config.eval_subnets} scores subnetworks at each validation, '
                             f'but --val-split is empty (no validation): pass --val-split or drop the option.')
        if not self.enabled:
            return
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
                             '--torchcompile (each block compiled, subnetworks too) or no compilation.')

    def on_options_checked(self, state) -> None:
        self.check()

    def on_model_created(self, state) -> None:
        self.prepare_model(state.model.model, train_input_sizes(self.args, state.model.data_config['input_size']),
                           cpu_bfloat16=bool(self.args.amp) and state.model.device.type == 'cpu')

    def on_task_created(self, state) -> None:
        if self.args.resume:
            self.after_resume(state.model.task)

    def on_before_validation(self, state) -> None:
        if state.data.loader_eval is not None:
            self.recalibrate_batchnorm(state.data.loader_train, state.model.device, state.optim.amp_autocast)

    def on_validation_end(self, state, train_metrics, eval_metrics) -> None:
        if self.eval_subnets and eval_metrics is not None:
            eval_metrics.update(self.score_eval_subnets(state))

    def prepare_model(self, model: nn.Module, train_sizes: Sequence[Sequence[int]], cpu_bfloat16: bool = False) -> None:
        """Attach subnetwork sampling, check what subnetworks will be fed, resolve the config and log it.

        Args:
            model: the timm model.
            train_sizes: every input size (C, H, W) training feeds it (``train_input_sizes``).
            cpu_bfloat16: training runs bfloat16 autocast on the CPU (``--amp`` there): warn when the
                smallest inputs reach convolutions whose bfloat16 weight gradient torch may get wrong.
        """
        self.model = model
        if not self.enabled:
            if self.config.eval_subnets:  # subnetworks to score only: the model trains as plain timm's
                self._draw_eval_subnets(self._attach(model))
            return
        stimulator = self._attach(model)
        try:
            self._check_inputs(model, stimulator, train_sizes)
            args = self.args
            self.resolved = resolve_config(self.config, stimulator, train_sizes, args.warmup_epochs,
                                           args.sched_on_updates, epochs=args.epochs,
                                           pretrained=bool(args.pretrained or args.initial_checkpoint))
        except InputError:
            stimulator.detach()  # the model is left as it was given
            raise
        self.stimulator = stimulator
        self._draw_eval_subnets(stimulator)
        if utils.is_primary(self.args):
            for line in describe(self.resolved):
                _logger.info(line)
            for line in self.resolved.warnings:
                _logger.warning(line)
            if cpu_bfloat16:
                self._warn_cpu_bfloat16(model, stimulator, train_sizes)
            k = self.resolved.config.num_subnets
            if k > MANY_SUBNETS:
                _logger.warning(f'{k:.0f} subnetworks per step: each step costs about {k:.0f} extra passes and may take '
                                f'minutes (ST++ runs 6). A smaller --stim-budget / --stim-subnets is likely meant.')

    def _warn_cpu_bfloat16(self, model: nn.Module, stimulator: Stimulator, train_sizes: Sequence[Sequence[int]]) -> None:
        smallest = smallest_train_size(train_sizes)
        hazard = cpu_bfloat16_conv_hazard(model, smallest, self.config.min_scale,
                                          stimulator.adapter.input_size_multiple(model))
        if hazard is None:
            return
        layers = hazard['layers']
        named = ', '.join(layers[:3]) + (f' and {len(layers) - 3} more' if len(layers) > 3 else '')
        fix = (f'--stim-min-scale {hazard["min_scale"]} or more (inputs of at least {hazard["needed"]} px)'
               if hazard['needed'] is not None else 'a larger --input-size')
        _logger.warning(
            f'--amp on the CPU trains in bfloat16, and subnetwork inputs down to {hazard["side"]} px make {named} '
            f'stride across a map 1 px high or wide, where torch\'s CPU bfloat16 convolution sometimes returns NaN '
            f'weight gradients (the run then stops at a non-finite step). Use {fix}, or train the CPU run in float32 '
            f'(no --amp).')

    def _attach(self, model: nn.Module) -> Stimulator:
        cfg, name = self.config, self.args.model
        try:
            return attach(model, space=cfg.space, mode=cfg.mode, bn=cfg.bn)
        except UnsupportedModelError as e:
            raise InputError(f'--model {name} with stimulative training: {e}') from None
        except ValueError as e:
            raise InputError(f'--stim-space {cfg.space!r} for {name}: {e}') from None

    def _check_inputs(self, model: nn.Module, stimulator: Stimulator, train_sizes: Sequence[Sequence[int]]) -> None:
        cfg, name = self.config, self.args.model
        try:
            stimulator.adapter.check_input_scaling(model, cfg.min_scale, cfg.max_scale)
        except ValueError as e:
            raise InputError(f'--stim-min-scale/--stim-max-scale for {name}: {e}') from None
        if all(d == 0 for d in stimulator.max_drops) and (cfg.min_scale, cfg.max_scale) == (1.0, 1.0):
            raise InputError(
                f'--stim-space {cfg.space} keeps every block of {name} (depths {list(stimulator.stage_depths)}) and '
                f'subnetwork inputs are full size: every subnetwork would be the full network, costing a full step '
                f'and teaching nothing. Use a space that drops blocks (e.g. uniform, stpp) or --stim-min-scale < 1.')
        multiple = stimulator.adapter.input_size_multiple(model)
        smallest = smallest_train_size(train_sizes)
        problem = smallest_input_side(model, smallest, cfg.min_scale, multiple)
        if problem is not None:
            raise InputError(
                f'--stim-min-scale {cfg.min_scale}: subnetwork inputs go down to {problem["side"]} px, but {name} '
                f'needs at least {problem["needed"]} px ({problem["error"]}). Use --stim-min-scale '
                f'{problem["min_scale"]} or more (or a larger --input-size / --img-size / --train-img-sizes).')

    def create_task(self, base: type, base_kwargs: Dict[str, Any], data_config: Dict[str, Any]):
        """The loop's task class ``base`` with stimulative training, built with its arguments ``base_kwargs``.

        ``data_config`` (timm's resolved data config) gives the mean / std that
        ``--stim-resize official`` normalizes subnetwork inputs with again.
        """
        stim = dict(config=self.resolved.config, stimulator=self.stimulator, input_mean=tuple(data_config['mean']),
                    input_std=tuple(data_config['std']),
                    seed=self.args.seed)  # not rank dependent: every rank draws the same subnets and sizes
        return stimulative_task_class(base)(**base_kwargs, stim=stim)

    def after_resume(self, task) -> None:
        """Say in one line when ``--resume`` had no subnetwork sampler state (a checkpoint of a run without ST).

        Starting stimulative training from such a checkpoint is a normal workflow: the task's
        generator then stays as seeded, as in a fresh run.
        """
        if self.enabled and not getattr(task, 'generator_restored', True) and utils.is_primary(self.args):
            _logger.info(f'--resume {self.args.resume} has no stimulative training state (a run without it: '
                         f'--stim-subnets 0 or timm\'s train.py): subnetworks are drawn from a fresh generator seeded '
                         f'with --seed {self.args.seed}, as in a fresh run.')

    def recalibrate_batchnorm(self, loader_train, device: torch.device, amp_autocast) -> None:
        """Re-estimate the full network's BatchNorm statistics (``--stim-bn-recal N``)."""
        args = self.args
        if self.config.bn_recal <= 0:
            return
        n = recalibrate_bn(self.model, loader_train, self.config.bn_recal, device, amp_autocast, args.channels_last)
        if args.distributed:
            utils.distribute_bn(self.model, args.world_size, True)
        if utils.is_primary(args):
            _logger.info(f'Re-estimated BatchNorm statistics on {n} training images per process.')

    def _draw_eval_subnets(self, stimulator: Stimulator) -> None:
        """Draw the ``--stim-eval-subnets`` subnetworks once, from a generator of their own seeded from ``--seed``.

        The training task's generator is not touched, so the run trains exactly as without the option.
        """
        n = self.config.eval_subnets
        if not n:
            return
        generator = torch.Generator().manual_seed(derive_seed('eval-subnets', self.args.seed))
        self.eval_subnets = [stimulator.sample(generator) for _ in range(n)]
        if utils.is_primary(self.args):
            _logger.info(f'--stim-eval-subnets {n}: scored at each validation: '
                         + ', '.join(repr(s) for s in self.eval_subnets))

    def score_eval_subnets(self, state) -> Dict[str, float]:
        """Top-1 of the ``--stim-eval-subnets`` subnetworks on the validation set; logs it with the time it took.

        The model scored is the one validation scored (the EMA's when there is one), in eval mode,
        with the BatchNorm statistics the run keeps (``--stim-bn``, ``--stim-bn-recal``: no
        re-estimation per subnetwork). The global random state is restored afterwards (iterating
        a loader draws from it), so training is unchanged.

        Returns:
            ``{'subnet_top1_mean': ..., 'subnet_top1_min': ...}`` (columns ``eval_subnet_top1_*``).
        """
        args, m = self.args, state.model
        use_ema = m.task.get_trainable_module(ema=True) is not None and not args.model_ema_force_cpu
        stimulator = get_stimulator(m.task.get_eval_model(ema=True) if use_ema else m.eval_model)
        start = time.time()
        with torch.random.fork_rng(devices=[]):
            top1 = [self._top1(stimulator, subnet, state) for subnet in self.eval_subnets]
        seconds = time.time() - start
        mean, low = sum(top1) / len(top1), min(top1)
        if utils.is_primary(args):
            _logger.info(f'Subnetworks ({len(top1)} fixed, {"EMA, " if use_ema else ""}--stim-bn {self.config.bn}): '
                         f'top-1 mean {mean:.3f}, min {low:.3f}  ({seconds:.1f}s more validation)')
        return {'subnet_top1_mean': mean, 'subnet_top1_min': low}

    def _top1(self, stimulator: Stimulator, subnet: Subnet, state) -> float:
        """Top-1 (percent) of ``subnet`` of the plain timm model under ``stimulator`` over the validation loader."""
        from timm.task import ClassificationEvaluator, evaluation_sample_limit
        args, m, loader = self.args, state.model, state.data.loader_eval
        model = stimulator.model  # the timm model itself: a compiled wrapper would not see dropped blocks
        evaluator = ClassificationEvaluator(m.device, max_samples=evaluation_sample_limit(loader))
        model.eval()
        with torch.inference_mode(), stimulator.activate(subnet):
            for input, target in loader:
                if not args.prefetcher:
                    input, target = input.to(device=m.device, dtype=m.dtype), target.to(device=m.device)
                if args.channels_last:
                    input = input.contiguous(memory_format=torch.channels_last)
                with state.optim.amp_autocast():
                    output = model(input)
                output = output[0] if isinstance(output, (tuple, list)) else output
                if args.tta > 1:  # as validation reduces test-time augmentation
                    output = output.unfold(0, args.tta, args.tta).mean(dim=2)
                    target = target[0:target.size(0):args.tta]
                evaluator.update(output, target)
        return float(evaluator.compute(distributed=args.distributed)['top1'])
