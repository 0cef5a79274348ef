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
==========================  =================================================================

and the loop's task is built by ``create_task`` (the stimulative version of classification or
distillation).

``summary`` is what ``args.yaml`` saves under ``stim_resolved``.
"""
import logging
from typing import Any, Dict, Optional, Sequence, Type

import torch
import torch.nn as nn
from timm import utils

from ..bn import recalibrate_bn
from ..callbacks import TrainCallback
from ..config import StimConfig
from ..errors import InputError, UnsupportedModelError
from ..inputs import smallest_input_side
from ..resolve import ResolvedStim, describe, resolve_config
from ..stimulator import Stimulator, attach
from ..task import stimulative_task_class

__all__ = ['StimTraining', 'train_input_sizes']

_logger = logging.getLogger('train_stim')

MANY_SUBNETS = 32  # above this, a step is so slow that the value is most likely a mistake: say so


def train_input_sizes(args, input_size: Sequence[int]) -> list:
    """Every input size (C, H, W) training feeds the model: each ``--train-img-sizes`` entry, else ``input_size``."""
    if args.train_img_sizes:
        return [(int(input_size[0]), int(s), int(s)) for s in args.train_img_sizes]
    return [tuple(int(v) for v in input_size)]


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
        self.prepare_model(state.model.model, train_input_sizes(self.args, state.model.data_config['input_size']))

    def on_task_created(self, state) -> None:
        if self.args.resume:
            self.after_resume(state.model.task)

    def on_before_validation(self, state) -> None:
        if state.data.loader_eval is not None:
            self.recalibrate_batchnorm(state.data.loader_train, state.model.device, state.optim.amp_autocast)

    def prepare_model(self, model: nn.Module, train_sizes: Sequence[Sequence[int]]) -> None:
        """Attach subnetwork sampling, check what subnetworks will be fed, resolve the config and log it.

        Args:
            model: the timm model.
            train_sizes: every input size (C, H, W) training feeds it (``train_input_sizes``).
        """
        self.model = model
        if not self.enabled:
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
        if utils.is_primary(self.args):
            for line in describe(self.resolved):
                _logger.info(line)
            for line in self.resolved.warnings:
                _logger.warning(line)
            k = self.resolved.config.num_subnets
            if k > MANY_SUBNETS:
                _logger.warning(f'{k:.0f} subnetworks per step: each step costs about {k:.0f} extra passes and may take '
                                f'minutes (ST++ runs 6). A smaller --stim-budget / --stim-subnets is likely meant.')

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
        smallest = min(train_sizes, key=lambda s: min(s[-2:]))  # the smallest inputs come from the smallest size
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
