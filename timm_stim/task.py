"""``StimulativeTask``: timm training task with Stimulative Training (ST) and ST++ terms."""
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.task import ClassificationTask, TrainingTask
from timm.utils import unwrap_model

from .losses import logit_norm, stim_kl
from .spaces import SpaceSpec
from .adapters import get_adapter
from .stimulator import Stimulator, attach, get_stimulator
from .subnet import Subnet

__all__ = [
    'StimulativeTask', 'StimulativeMixin', 'stimulative_task_class', 'NORMALIZE_CHOICES', 'WEIGHT_SCHEDULES',
    'kl_weight_at', 'stable_start_epochs', 'sample_input_size', 'round_to_multiple', 'resize_batch',
    'NormalizedLogitsLoss', 'RESIZE_MODES', 'WEIGHT_SCHED_STEPS', 'renormalize_batch',
]

_logger = logging.getLogger(__name__)

NORMALIZE_CHOICES = ('none', 'kl', 'all')
WEIGHT_SCHEDULES = ('const', 'cos-up', 'cos-down')
RESIZE_MODES = ('independent', 'official')
WEIGHT_SCHED_STEPS = ('batch', 'epoch')


def kl_weight_at(base: float, schedule: str, progress: float, warmup: float = 0.0) -> float:
    """Weight of each subnetwork's KL term at training progress in [0, 1].

    ``const`` keeps ``base``; ``cos-up`` rises from 0 to ``base`` and ``cos-down`` falls from
    ``base`` to 0 along half a cosine (the official code's ``kl_cos`` / ``kl_rcos``). With
    ``warmup > 0`` (a fraction of training) the weight is also multiplied by
    ``min(1, progress / warmup)``: a linear warm-in from 0, the stable start of
    ``stable_start_epochs``.
    """
    progress = min(max(float(progress), 0.0), 1.0)
    ramp = min(1.0, progress / warmup) if warmup > 0 else 1.0
    if schedule == 'const':
        return base * ramp
    if schedule == 'cos-up':
        return base * ramp * 0.5 * (1.0 - math.cos(math.pi * progress))
    if schedule == 'cos-down':
        return base * ramp * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f'weight schedule {schedule!r}: expected one of {WEIGHT_SCHEDULES}.')


def stable_start_epochs(lr_warmup_epochs: float, lr_per_update: bool) -> float:
    """Epochs over which the KL weight warms in by default: a stable start (docs: "A stable start").

    At initialization the logits spread little (std ~0.3), so each KL- term's gradient, which
    the layer norm divides by that spread, is as large as the task loss's and K of them add up;
    the first steps at a high learning rate then blow the logits up (measured, BENCHMARKS.md).
    A learning rate that warms up per update lets the logits grow first: no warm-in is needed
    (0). A warm-up stepped per epoch jumps to a high rate at once after its last epoch, so the
    KL weight rises over the warm-up epochs plus one and is still partial at that jump. No
    warm-up (the paper's recipes): 0, as the official code.

    Args:
        lr_warmup_epochs: the learning rate's warm-up epochs (``--warmup-epochs``).
        lr_per_update: whether the schedule steps per update (``--sched-on-updates``).

    Returns:
        Epochs for ``StimulativeMixin(weight_warmup_epochs=...)``.
    """
    if lr_warmup_epochs <= 0 or lr_per_update:
        return 0.0
    return float(lr_warmup_epochs) + 1.0


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


def resize_batch(x: torch.Tensor, size: Tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of an already normalized batch (no second normalization).

    Args:
        x: (B, C, H, W) batch.
        size: (height, width) to resize to; ``x`` itself is returned when it already has it.
        antialias: low-pass filter when shrinking (torch's ``antialias=True``). Without it a
            bilinear shrink below half size samples only some input pixels (aliasing); the
            official runs had none (torchvision < 0.17 resized tensors without antialias).

    Returns:
        The resized batch, in ``x``'s memory format.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=antialias)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def renormalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel: the official small-input branch's second normalization.

    The official code applies torchvision's ``Normalize`` (built for [0, 1] images) to the
    already normalized, resized batch, in the same arithmetic as here (subtract, then divide).

    Args:
        x: (B, C, H, W) batch.
        mean, std: one value per channel (the dataset's normalization).

    Returns:
        A new tensor.
    """
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub(mean_t).div(std_t)


def _check_resize_options(resize, antialias, input_mean, input_std, weight_sched_step) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f'resize={resize!r}: expected one of {RESIZE_MODES}.')
    if antialias not in (None, True, False):
        raise ValueError(f'antialias={antialias!r}: expected True, False or None (None: on for independent, '
                         f'off for official).')
    for name, values in (('input_mean', input_mean), ('input_std', input_std)):
        if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f'{name}={values!r}: expected one number per input channel.')
    if len(input_mean) != len(input_std) or not all(v > 0 for v in input_std):
        raise ValueError(f'input_mean={input_mean!r}, input_std={input_std!r}: expected as many means as stds, '
                         f'every std > 0.')
    if weight_sched_step not in WEIGHT_SCHED_STEPS:
        raise ValueError(f'weight_sched_step={weight_sched_step!r}: expected one of {WEIGHT_SCHED_STEPS}.')


class NormalizedLogitsLoss(nn.Module):
    """A task criterion applied to ``logit_norm(logits)`` (the official ST++ ``norm`` for the task loss).

    Argmax, and so accuracy, is unchanged; the loss sees logits of fixed spread ``amplitude``.
    """

    def __init__(self, criterion: Callable, amplitude: float = 1.0):
        super().__init__()
        self.criterion = criterion
        self.amplitude = float(amplitude)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(logit_norm(logits, self.amplitude), target)


def _check_weight_warmup(weight_warmup_epochs) -> None:
    if isinstance(weight_warmup_epochs, bool) or not isinstance(weight_warmup_epochs, (int, float)) \
            or not weight_warmup_epochs >= 0 or math.isinf(weight_warmup_epochs):
        raise ValueError(f'weight_warmup_epochs={weight_warmup_epochs!r}: expected a number of epochs >= 0 '
                         f'(0: no warm-in of the KL weight).')


def _check_stim_options(num_subnets, min_scale, max_scale, normalize, amplitude, temperature, kl_weight,
                        weight_sched, start_epoch) -> None:
    if isinstance(num_subnets, bool) or not isinstance(num_subnets, (int, float)) or num_subnets < 0 \
            or not math.isfinite(num_subnets):
        raise ValueError(f'num_subnets={num_subnets!r}: expected an int >= 0 (0 turns stimulative training off), or '
                         f'a fraction such as 1.6 (subnetworks per step on average).')
    check_scales(min_scale, max_scale)
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f'normalize={normalize!r}: expected one of {NORMALIZE_CHOICES}.')
    for name, value in (('temperature', temperature), ('amplitude', amplitude)):
        if not value > 0:
            raise ValueError(f'{name}={value!r}: expected a number > 0.')
    if not kl_weight >= 0:
        raise ValueError(f'kl_weight={kl_weight!r}: expected a number >= 0.')
    if weight_sched not in WEIGHT_SCHEDULES:
        raise ValueError(f'weight_sched={weight_sched!r}: expected one of {WEIGHT_SCHEDULES}.')
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
        raise ValueError(f'start_epoch={start_epoch!r}: expected an int >= 0.')


_STIM_OPTIONS = ('num_subnets', 'stimulator', 'space', 'mode', 'bn', 'min_scale', 'max_scale', 'kl_weight',
                 'weight_sched', 'weight_sched_step', 'resize', 'antialias', 'input_mean', 'input_std', 'normalize',
                 'amplitude', 'temperature', 'start_epoch', 'seed', 'weight_warmup_epochs')


class StimulativeMixin:
    """Adds Stimulative Training (ST / ST++) to a timm training task whose result has ``loss`` and ``output``.

    The base task's forward gives the full network's loss (e.g. cross-entropy, or
    cross-entropy plus a teacher's distillation term) and logits ``z``, and the task draws
    ``num_subnets`` subnetworks and their input sizes. When the returned loss is
    back-propagated, the base loss's backward runs first, freeing the full network's graph
    (the official step order); then for each subnetwork, on an input resized to a random size
    in ``[min_scale, max_scale]`` of the original, ``w * stim_kl(f_k(x_k), z.detach())`` is
    forwarded and back-propagated in turn, ``w`` the KL weight at the current training
    progress. So only one graph is alive at a time and peak memory stays that of a plain step.

    Every term is multiplied by the gradient the training loop sends into the loss, so timm's
    loss scaler, gradient accumulation (the loop divides the loss) and variable-batch loss
    scaling apply to the subnetwork terms exactly as to the task loss, with no configuration.
    Under DDP the accumulated gradients are all-reduced once, at the end of that backward.
    Second-order optimizers (``create_graph=True``) are not supported while subnetworks run.

    The training loop tells the task how long training is (``configure_training``) and where
    it is before each batch (``set_progress``), for the KL weight schedule and start epoch;
    nothing else about subnetworks is the loop's business.

    Stimulative options (``stim`` dict; keyword arguments of ``StimulativeTask``):
        num_subnets: subnetworks per step, K (0 = the base task alone). A fraction (e.g. 1.6, what
            a compute budget affords, ``timm_stim.budget``) is a mean: each step runs
            ``floor(K)`` subnetworks, plus one with probability ``K - floor(K)``, drawn from the
            task's generator.
        stimulator: an attached ``Stimulator``; else the model's own, else ``attach(model,
            space, mode, bn)``.
        space, mode, bn: for ``attach`` (defaults 'uniform', 'depth', 'freeze').
        min_scale, max_scale: subnetwork input size range as a fraction of the input
            (ST++: 0.43, 1.0).
        kl_weight: weight of each subnetwork's KL term (total KL weight is K * kl_weight).
        weight_sched: 'const', 'cos-up' or 'cos-down' over training (see ``kl_weight_at``).
        weight_sched_step: 'batch' (the schedule moves every batch) or 'epoch' (it moves once
            per epoch, as the official ``kl_cos`` / ``kl_rcos``).
        resize: how smaller subnetwork inputs are made (only when ``min_scale`` or
            ``max_scale`` < 1). 'independent': each subnetwork resizes the original batch.
            'official': as the authors' loop, each subnetwork resizes the previous
            subnetwork's input (the first one the original batch) and normalizes the result
            again with ``input_mean`` / ``input_std``.
        antialias: antialiased resizing; None means on for 'independent' (a smaller input that
            looks like a smaller photo, not an aliased one) and off for 'official' (as the
            official runs).
        input_mean, input_std: the dataset normalization, used by ``resize='official'``
            (default: ImageNet's, as the official code).
        normalize: 'none' (plain KL), 'kl' (KL-), 'all' (KL-, and the task criterion sees the
            normalized logits as in the official ST++ code).
        amplitude: KL- amplitude.
        temperature: KL temperature.
        start_epoch: first epoch (see ``set_progress``) with subnetwork terms.
        seed: seed of the task's own generator for subnets and sizes (same on every rank).
        weight_warmup_epochs: the KL weight rises linearly from 0 over these first epochs,
            batch by batch (``set_progress``), on top of ``weight_sched``; 0 (default) keeps
            the official behaviour. See ``stable_start_epochs`` for when it is needed.
    """

    def __init__(self, *args, stim: Optional[Dict[str, Any]] = None, **kwargs):
        """Args: the base task's arguments, and ``stim``: the stimulative options (Keyword Args above)."""
        stim = dict(stim or {})
        unknown = sorted(set(stim) - set(_STIM_OPTIONS))
        if unknown:
            raise TypeError(f'unknown stimulative option(s) {unknown}; expected some of {list(_STIM_OPTIONS)}.')
        self._init_stimulative(args, kwargs, **stim)

    def _init_stimulative(
            self,
            base_args: tuple,
            base_kwargs: Dict[str, Any],
            num_subnets: int = 1,
            stimulator: Optional[Stimulator] = None,
            space: Optional[SpaceSpec] = None,
            mode: Optional[str] = None,
            bn: Optional[str] = None,
            min_scale: float = 1.0,
            max_scale: float = 1.0,
            kl_weight: float = 1.0,
            weight_sched: str = 'const',
            weight_sched_step: str = 'batch',
            resize: str = 'independent',
            antialias: Optional[bool] = None,
            input_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            input_std: Sequence[float] = IMAGENET_DEFAULT_STD,
            normalize: str = 'none',
            amplitude: float = 1.0,
            temperature: float = 1.0,
            start_epoch: int = 0,
            seed: int = 0,
            weight_warmup_epochs: float = 0.0,
    ) -> None:
        # Validate everything before anything is built or attached (a teacher can be expensive).
        _check_stim_options(num_subnets, min_scale, max_scale, normalize, amplitude, temperature, kl_weight,
                            weight_sched, start_epoch)
        _check_resize_options(resize, antialias, input_mean, input_std, weight_sched_step)
        _check_weight_warmup(weight_warmup_epochs)
        model = base_kwargs.get('model', base_kwargs.get('student_model', base_args[0] if base_args else None))
        if not isinstance(model, nn.Module):
            raise ValueError('StimulativeMixin: the base task\'s first argument must be the model to train.')
        model = unwrap_model(model)
        existing = get_stimulator(model)
        adapter = (stimulator or existing).adapter if (stimulator or existing) else get_adapter(model)
        adapter.check_input_scaling(model, min_scale, max_scale)
        if stimulator is not None or existing is not None:
            if space is not None or mode is not None or bn is not None:
                raise ValueError('Pass either a Stimulator (or a model with one attached) or space/mode/bn, not both.')
            stimulator = stimulator or existing
            if get_stimulator(model) is not stimulator:
                raise ValueError('The stimulator passed is not attached to this model.')

        super().__init__(*base_args, **base_kwargs)
        if stimulator is None:
            stimulator = attach(model, space if space is not None else 'uniform', mode or 'depth', bn or 'freeze')
        if normalize == 'all':
            self.criterion = NormalizedLogitsLoss(self.criterion, amplitude)
        self.stimulator = stimulator
        self.size_multiple = stimulator.adapter.input_size_multiple(stimulator.model)
        self.num_subnets = num_subnets
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.base_kl_weight = float(kl_weight)
        self.weight_sched = weight_sched
        self.weight_sched_step = weight_sched_step
        self.resize = resize
        self.antialias = (resize == 'independent') if antialias is None else bool(antialias)
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        self.weight_warmup_epochs = float(weight_warmup_epochs)
        self.kl_weight = (float(kl_weight) if weight_sched == 'const' and not weight_warmup_epochs
                          else kl_weight_at(kl_weight, weight_sched, 0.0, float(weight_warmup_epochs)))
        self.normalize = normalize
        self.amplitude = float(amplitude)
        self.temperature = float(temperature)
        self.start_epoch = start_epoch
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last_subnets: List[Tuple[Subnet, Tuple[int, int]]] = []
        # How long training is (configure_training) and where it is (set_progress): the KL schedule.
        self.epoch = 0
        self._epochs = 1
        self._batches_per_epoch = 1
        if self.verbose:
            _logger.info(f'{type(self).__name__}: K={num_subnets}, {stimulator!r}, scales=({min_scale}, {max_scale}), '
                         f'normalize={normalize}, kl_weight={kl_weight} ({weight_sched}'
                         f'{f", warm-in over {weight_warmup_epochs:g} epochs" if weight_warmup_epochs else ""}), '
                         f'T={temperature}')

    def configure_training(self, *, epochs: int = 1, batches_per_epoch: int = 1) -> None:
        """Tell the task, once, how long training is (the KL weight schedule spans ``epochs``)."""
        self._epochs = max(int(epochs), 1)
        self._batches_per_epoch = max(int(batches_per_epoch), 1)
        self.set_progress(self.epoch, 0)

    def set_progress(self, epoch: int, batch_idx: int = 0) -> None:
        """Tell the task which batch of which epoch comes next (KL weight schedule, start epoch)."""
        self.epoch = int(epoch)
        batch_progress = (epoch + batch_idx / self._batches_per_epoch) / self._epochs
        schedule_progress = epoch / self._epochs if self.weight_sched_step == 'epoch' else batch_progress
        # The warm-in of a stable start moves batch by batch, whatever the schedule's step.
        ramp = kl_weight_at(1.0, 'const', batch_progress, self.weight_warmup_epochs / self._epochs)
        self.kl_weight = kl_weight_at(self.base_kl_weight, self.weight_sched, schedule_progress) * ramp

    def set_epoch(self, epoch: int) -> None:
        """``set_progress(epoch, 0)``."""
        self.set_progress(epoch, 0)

    @property
    def active(self) -> bool:
        """Whether the next training forward adds subnetwork terms."""
        return (self.num_subnets > 0 and self.epoch >= self.start_epoch and self.stimulator.model.training
                and torch.is_grad_enabled())

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """The base task's state plus the sampler's RNG state (a resumed run draws the same subnets)."""
        state = dict(super().get_task_state(module=module, ema=ema))
        if not ema:
            state['stim_generator_state'] = self.generator.get_state()
        return state

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        state = dict(state or {})
        generator_state = state.pop('stim_generator_state', None)
        super().load_task_state(state or None, strict=strict, module=module, ema=ema)
        if ema:
            return
        if generator_state is not None:
            self.generator.set_state(generator_state)
        elif strict and self.num_subnets > 0:
            raise KeyError(f'Task state has no stim_generator_state (keys: {sorted(state)}).')

    def _trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in unwrap_model(self.trainable_module).parameters() if p.requires_grad]

    def _backward_now(self, loss: torch.Tensor) -> None:
        """Back-propagate one term of the step into ``.grad`` (inside the returned loss's backward)."""
        if isinstance(self.trainable_module, DistributedDataParallel):
            # DDP all-reduces from hooks on each parameter's gradient accumulation and expects
            # one backward per forward. autograd.grad does not run those hooks; its result is
            # added to .grad, and the zero-valued anchor of ``forward`` then passes every
            # parameter's accumulator once, which all-reduces the total (honouring no_sync).
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

    def subnet_input(self, input: torch.Tensor, previous: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """A subnetwork's input of ``size``: ``input`` resized, or (official) ``previous`` resized and re-normalized.

        Args:
            input: the full network's (normalized) input batch.
            previous: the previous subnetwork's input in this step (``input`` for the first).
            size: (height, width) drawn for this subnetwork.
        """
        if self.min_scale == 1.0 and self.max_scale == 1.0:
            return input  # small inputs off: every subnetwork sees the full network's input (official too)
        if self.resize == 'independent':
            return resize_batch(input, size, self.antialias)
        return renormalize_batch(resize_batch(previous, size, self.antialias), self.input_mean, self.input_std)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The base task's result; its ``loss`` back-propagates the subnetwork terms too.

        The subnetworks and their input sizes are drawn here. ``result['loss'].backward()`` (or
        timm's loss scaler) then runs, in this order: the base loss's backward, and for each
        subnetwork a forward and the backward of ``w * stim_kl`` (the official step order: one
        graph alive at a time). Every term is multiplied by the gradient the loop sends into the
        loss, so loss scaling, gradient accumulation and any other factor the loop applies to
        the loss apply to the subnetwork terms alike.

        Returns:
            The base task's dict: ``loss`` (its value is the base loss), ``output`` (full-network
            logits) and its other terms, plus ``stim_kl``: the mean KL term over the K
            subnetworks, a tensor filled in when ``loss.backward()`` has run.
        """
        result = super().forward(input, target)
        if not self.active:
            return result
        loss, output = result['loss'], result['output']
        plan = []
        height, width = input.shape[-2:]
        for _ in range(self._subnets_this_step()):
            subnet = self.stimulator.sample(self.generator)
            size = sample_input_size(height, width, self.min_scale, self.max_scale, self.generator,
                                     self.size_multiple)
            plan.append((subnet, size))
        self.last_subnets = list(plan)
        stim_kl = torch.zeros((), device=output.device)
        if isinstance(self.trainable_module, DistributedDataParallel):
            # Zero-valued, through every parameter: its backward fires DDP's reducer once (see _backward_now).
            trigger = sum(p.sum() for p in self._trainable_parameters()) * 0.0
        else:
            trigger = torch.zeros((), device=output.device, requires_grad=True)
        deferred = _StimulativeBackward.apply(self, plan, input, output.detach(), stim_kl, [loss], trigger)
        result = {key: (value.detach() if key not in ('loss', 'output') and isinstance(value, torch.Tensor)
                        else value) for key, value in result.items()}
        result.update(loss=deferred, output=output.detach(), stim_kl=stim_kl)
        return result

    def _subnets_this_step(self) -> int:
        """``num_subnets``, or for a fractional mean, its floor or ceiling drawn so the mean is exact."""
        count = math.floor(self.num_subnets)
        fraction = self.num_subnets - count
        # Whole K draws nothing, so the task's random stream is that of a plain K.
        if fraction > 0 and torch.rand((), generator=self.generator).item() < fraction:
            count += 1
        return int(count)

    def _stimulate(self, plan, input: torch.Tensor, teacher: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The subnetwork forward and backward passes; returns the mean KL term (detached)."""
        model = self.stimulator.model
        kl_total = torch.zeros((), device=teacher.device)
        subnet_input = input  # resize='official': each subnetwork resizes the previous one's input
        for subnet, size in plan:
            with self.stimulator.activate(subnet):
                subnet_input = self.subnet_input(input, subnet_input, size)
                student = model(subnet_input)
                kl = stim_kl(student, teacher, self.temperature, self.normalize != 'none', self.amplitude)
                # Backward inside activate (gradient checkpointing recomputes with the same subnet).
                self._backward_now(grad * (self.kl_weight * kl))
            kl_total += kl.detach()
        return kl_total / max(len(plan), 1)


class _StimulativeBackward(torch.autograd.Function):
    """Identity on the base loss's value; its backward runs the base loss's and the subnetworks' backward.

    Runs the passes inside the caller's backward so that they see exactly the gradient the
    caller sends into the loss (loss scale, accumulation divisor, ...), under the autocast
    state of the forward.

    The base loss is held on the context, not passed as a differentiable input: the engine must
    not walk into its graph after this backward has consumed and freed it. ``trigger`` is the
    differentiable input that makes the output require grad (under DDP, a zero through every
    parameter, whose backward then fires DDP's reducer).
    """

    @staticmethod
    def forward(ctx, task, plan, input, teacher, stim_kl, loss_holder, trigger):
        (loss,) = loss_holder  # in a list, so that autograd does not see it as an input
        ctx.task, ctx.plan, ctx.stim_kl = task, plan, stim_kl
        ctx.input, ctx.teacher, ctx.loss = input, teacher, loss
        device = input.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        task = ctx.task
        with torch.enable_grad():
            task._backward_now(ctx.loss * grad)
            ctx.loss = None  # the full network's graph is freed before any subnetwork runs
            device, enabled, dtype = ctx.autocast
            with torch.autocast(device_type=device, dtype=dtype, enabled=enabled):
                ctx.stim_kl.copy_(task._stimulate(ctx.plan, ctx.input, ctx.teacher, grad))
        ctx.input = ctx.teacher = None
        return None, None, None, None, None, None, torch.zeros_like(grad)


class StimulativeTask(StimulativeMixin, ClassificationTask):
    """timm's ``ClassificationTask`` with Stimulative Training (see ``StimulativeMixin``).

    Args:
        model: the timm model.
        criterion: task loss (any timm criterion; soft mixup targets work). Created from
            ``criterion_kwargs`` by timm when None.
        criterion_kwargs: arguments for ``timm.loss.create_classification_loss``.
        device, dtype, verbose: as timm's ``ClassificationTask``.
        **stim: the stimulative options of ``StimulativeMixin`` (``num_subnets``, ``space``,
            ``min_scale``, ``normalize``, ``temperature``, ...).
    """

    def __init__(self, model: nn.Module, criterion: Optional[Union[nn.Module, Callable]] = None,
                 criterion_kwargs: Optional[Dict[str, Any]] = None, *, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None, verbose: bool = True, **stim):
        super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype,
                         verbose=verbose, stim=stim)


_STIMULATIVE_CLASSES: Dict[type, type] = {ClassificationTask: StimulativeTask}


def stimulative_task_class(base: type) -> type:
    """The stimulative version of a timm task class (e.g. ``LogitDistillationTask``).

    The class takes the base class's arguments plus ``stim``, a dict of ``StimulativeMixin``'s
    options (a dict, as e.g. ``temperature`` means the teacher's in timm's distillation tasks):
    ``stimulative_task_class(LogitDistillationTask)(model, 'resnet50', stim={'num_subnets': 2})``.
    The base task's result must hold ``loss`` and the full network's logits in ``output``.
    """
    if not (isinstance(base, type) and issubclass(base, TrainingTask)):
        raise TypeError(f'{base!r} is not a timm TrainingTask class.')
    if base not in _STIMULATIVE_CLASSES:
        _STIMULATIVE_CLASSES[base] = type(f'Stimulative{base.__name__}', (StimulativeMixin, base),
                                          {'__doc__': f'timm\'s ``{base.__name__}`` with Stimulative Training.',
                                           '__module__': __name__})
    return _STIMULATIVE_CLASSES[base]
