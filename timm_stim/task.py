"""``StimulativeTask``: timm training task with Stimulative Training (ST) and ST++ terms."""
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from timm.task import ClassificationTask

from .losses import logit_norm, stim_kl
from .spaces import SpaceSpec
from .adapters import get_adapter
from .stimulator import Stimulator, _unwrap, attach, get_stimulator
from .subnet import Subnet

__all__ = ['StimulativeTask', 'NORMALIZE_CHOICES', 'sample_input_size', 'round_to_multiple', 'resize_batch']

_logger = logging.getLogger(__name__)

NORMALIZE_CHOICES = ('none', 'kl', 'all')


def check_scales(min_scale: float, max_scale: float) -> None:
    """Raise ``ValueError`` unless ``0 < min_scale <= max_scale <= 1``."""
    for name, value in (('min_scale', min_scale), ('max_scale', max_scale)):
        if not isinstance(value, (int, float)) or not (0.0 < value <= 1.0):
            raise ValueError(f'{name}={value!r}: expected a number in (0, 1] (fraction of the training input size).')
    if min_scale > max_scale:
        raise ValueError(f'min_scale={min_scale} is above max_scale={max_scale}: expected min_scale <= max_scale.')


def sample_input_size(
        height: int,
        width: int,
        min_scale: float,
        max_scale: float,
        generator: Optional[torch.Generator] = None,
        multiple: int = 1,
) -> Tuple[int, int]:
    """Draw a subnetwork input size.

    The shorter side ``s`` is uniform over ``[floor(S * min_scale), floor(S * max_scale)]``
    (``S`` the shorter input side); the other side keeps the aspect ratio. With
    ``multiple > 1`` (e.g. a ViT's patch size) both sides are then rounded down to a multiple
    of it, at least ``multiple``.

    Returns:
        (height, width).
    """
    if min_scale == 1.0 and max_scale == 1.0:
        return height, width
    short = min(height, width)
    low = max(1, math.floor(short * min_scale))
    high = max(low, math.floor(short * max_scale))
    side = int(torch.randint(low, high + 1, (1,), generator=generator).item())
    if height == width:
        size = (side, side)
    else:
        ratio = side / short
        size = (side, max(1, round(width * ratio))) if height <= width else (max(1, round(height * ratio)), side)
    return round_to_multiple(size, multiple)


def round_to_multiple(size: Sequence[int], multiple: int) -> Tuple[int, ...]:
    """Each side rounded down to a multiple of ``multiple``, at least ``multiple`` (e.g. one ViT patch)."""
    return tuple(max(multiple, s - s % multiple) for s in size)


def resize_batch(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of an already normalized batch (no second normalization)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class StimulativeTask(ClassificationTask):
    """Full-network task loss plus K subnetwork KL terms (Stimulative Training / ST++).

    Each training call follows the official step order: the full network's logits ``z`` give
    the task loss (on ``logit_norm(z)`` when ``normalize='all'``), which is back-propagated at
    once, freeing the full network's graph; then for each of ``num_subnets`` sampled
    subnetworks, on an input resized to a random size in ``[min_scale, max_scale]`` of the
    original, ``kl_weight * stim_kl(f_k(x_k), z.detach())`` is back-propagated in turn. So
    only one graph is alive at a time and peak memory stays that of a plain step.

    The returned ``loss`` carries the task loss's value for logging; the gradients of
    ``L_main + kl_weight * sum_k L_k`` are already accumulated, and the caller's usual
    ``loss.backward()`` (or timm's loss scaler) adds nothing to them. Under DDP that backward
    is what all-reduces the accumulated gradients (see ``_finish``). Second-order optimizers
    (``create_graph=True``) are not supported while subnetworks run.

    The eager backward passes follow the caller's loss scaling: call
    ``set_backward_scaling(grad_scaler, grad_accum_steps)`` when using AMP loss scaling or
    gradient accumulation.

    Args:
        model: the timm model.
        criterion: task loss (any timm criterion; soft mixup targets work). Created from
            ``criterion_kwargs`` by timm when None.
        criterion_kwargs: arguments for ``timm.loss.create_classification_loss``.
        num_subnets: subnetworks per step, K (0 = plain classification).
        stimulator: an attached ``Stimulator``; else the model's own, else ``attach(model,
            space, mode, bn)``.
        space, mode, bn: for ``attach`` (defaults 'uniform', 'depth', 'freeze').
        min_scale, max_scale: subnetwork input size range as a fraction of the input
            (ST++: 0.43, 1.0).
        kl_weight: weight of each subnetwork's KL term (total KL weight is K * kl_weight).
        normalize: 'none' (plain KL), 'kl' (KL-), 'all' (KL-, and the task loss sees the
            normalized logits as in the official ST++ code).
        amplitude: KL- amplitude.
        temperature: KL temperature.
        start_epoch: first epoch (see ``set_epoch``) with subnetwork terms.
        seed: seed of the task's own generator for subnets and sizes (same on every rank).
    """

    def __init__(
            self,
            model: nn.Module,
            criterion: Optional[Union[nn.Module, Callable]] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            *,
            num_subnets: int = 1,
            stimulator: Optional[Stimulator] = None,
            space: Optional[SpaceSpec] = None,
            mode: Optional[str] = None,
            bn: Optional[str] = None,
            min_scale: float = 1.0,
            max_scale: float = 1.0,
            kl_weight: float = 1.0,
            normalize: str = 'none',
            amplitude: float = 1.0,
            temperature: float = 1.0,
            start_epoch: int = 0,
            seed: int = 0,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        # Validate everything before anything is built or attached.
        if isinstance(num_subnets, bool) or not isinstance(num_subnets, int) or num_subnets < 0:
            raise ValueError(f'num_subnets={num_subnets!r}: expected an int >= 0 (0 turns stimulative training off).')
        check_scales(min_scale, max_scale)
        if normalize not in NORMALIZE_CHOICES:
            raise ValueError(f'normalize={normalize!r}: expected one of {NORMALIZE_CHOICES}.')
        for name, value in (('temperature', temperature), ('amplitude', amplitude)):
            if not value > 0:
                raise ValueError(f'{name}={value!r}: expected a number > 0.')
        if not kl_weight >= 0:
            raise ValueError(f'kl_weight={kl_weight!r}: expected a number >= 0.')
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f'start_epoch={start_epoch!r}: expected an int >= 0.')
        existing = get_stimulator(model)
        adapter = (stimulator or existing).adapter if (stimulator or existing) else get_adapter(_unwrap(model))
        adapter.check_input_scaling(_unwrap(model), min_scale, max_scale)
        if stimulator is not None or existing is not None:
            if space is not None or mode is not None or bn is not None:
                raise ValueError('Pass either a Stimulator (or a model with one attached) or space/mode/bn, not both.')
            stimulator = stimulator or existing
            if get_stimulator(model) is not stimulator:
                raise ValueError('The stimulator passed is not attached to this model.')

        super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype,
                         verbose=verbose)
        if stimulator is None:
            stimulator = attach(model, space if space is not None else 'uniform', mode or 'depth', bn or 'freeze')
        self.stimulator = stimulator
        self.size_multiple = stimulator.adapter.input_size_multiple(stimulator.model)
        self.num_subnets = num_subnets
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.kl_weight = float(kl_weight)
        self.normalize = normalize
        self.amplitude = float(amplitude)
        self.temperature = float(temperature)
        self.start_epoch = start_epoch
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last_subnets: List[Tuple[Subnet, Tuple[int, int]]] = []
        self._grad_scaler = None
        self._grad_divisor = 1.0
        if self.verbose:
            _logger.info(f'{type(self).__name__}: K={num_subnets}, {stimulator!r}, scales=({min_scale}, {max_scale}), '
                         f'normalize={normalize}, kl_weight={kl_weight}, T={temperature}')

    def set_epoch(self, epoch: int) -> None:
        """Tell the task the current epoch (subnetwork terms start at ``start_epoch``)."""
        self.epoch = int(epoch)

    def set_backward_scaling(self, grad_scaler: Optional[Any] = None, grad_accum_steps: int = 1) -> None:
        """Scale subnetwork backward passes as the training loop scales the task loss.

        Args:
            grad_scaler: a ``torch.amp.GradScaler`` or timm ``NativeScaler`` (its scale is applied
                to each subnetwork loss before backward), or None.
            grad_accum_steps: the loop divides the loss by this; so is each subnetwork loss.
        """
        self._grad_scaler = getattr(grad_scaler, '_scaler', grad_scaler)
        self._grad_divisor = float(grad_accum_steps)

    @property
    def active(self) -> bool:
        """Whether the next training forward adds subnetwork terms."""
        return (self.num_subnets > 0 and self.epoch >= self.start_epoch and self.stimulator.model.training
                and torch.is_grad_enabled())

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """The sampler's RNG state (saved in checkpoints so a resumed run draws the same subnets)."""
        if ema:
            return {}
        return {'stim_generator_state': self.generator.get_state()}

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if ema or not state:
            return
        if 'stim_generator_state' in state:
            self.generator.set_state(state['stim_generator_state'])
        elif strict:
            raise KeyError(f'Task state has no stim_generator_state (keys: {sorted(state)}).')

    def _trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.stimulator.model.parameters() if p.requires_grad]

    def _backward_now(self, loss: torch.Tensor) -> None:
        """Back-propagate one term of the step into ``.grad``, scaled as the caller scales its loss."""
        loss = loss / self._grad_divisor
        if self._grad_scaler is not None:
            loss = self._grad_scaler.scale(loss)
        if isinstance(self.trainable_module, DistributedDataParallel):
            # DDP all-reduces from hooks on each parameter's gradient accumulation and expects
            # one backward per forward. autograd.grad does not run those hooks; its result is
            # added to .grad, and the backward of ``_finish``'s loss all-reduces the total.
            params = self._trainable_parameters()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        else:
            loss.backward()

    def _finish(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss handed back once every term has been back-propagated.

        Its value is the task loss; its backward adds zero to every gradient. Under DDP that
        backward passes through each parameter's gradient accumulator exactly once, which fires
        DDP's reducer on the gradients accumulated by ``_backward_now`` (honouring ``no_sync``).
        """
        done = loss.detach()
        if isinstance(self.trainable_module, DistributedDataParallel):
            return done + sum(p.sum() for p in self._trainable_parameters()) * 0.0
        return done.requires_grad_()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Full-network task loss and K subnetwork KL terms, back-propagated in the official order.

        Returns:
            ``loss`` (the task loss; back-propagate it as usual), ``output`` (full-network logits)
            and, when subnetworks ran, ``stim_kl`` (mean KL term over the K subnetworks, detached).
        """
        output = self.trainable_module(input)
        logits = logit_norm(output, self.amplitude) if self.normalize == 'all' else output
        loss = self.criterion(logits, target)
        if not self.active:
            return {'loss': loss, 'output': output}

        # Official order: the task loss first, so the full network's graph is freed before any
        # subnetwork runs and at most one graph is alive at a time.
        self._backward_now(loss)
        teacher = output.detach()
        model = self.stimulator.model
        height, width = input.shape[-2:]
        kl_total = torch.zeros((), device=output.device)
        self.last_subnets = []
        for _ in range(self.num_subnets):
            subnet = self.stimulator.sample(self.generator)
            size = sample_input_size(height, width, self.min_scale, self.max_scale, self.generator,
                                     self.size_multiple)
            self.last_subnets.append((subnet, size))
            with self.stimulator.activate(subnet):
                student = model(resize_batch(input, size))
                kl = stim_kl(student, teacher, self.temperature, self.normalize != 'none', self.amplitude)
                # Backward inside activate (gradient checkpointing recomputes with the same subnet).
                self._backward_now(self.kl_weight * kl)
            kl_total += kl.detach()
        return {'loss': self._finish(loss), 'output': teacher,
                'stim_kl': kl_total / self.num_subnets}
