"""``StimulativeTask``: timm training task with Stimulative Training (ST) and ST++ terms."""
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from timm.task import ClassificationTask, TrainingTask

from .losses import logit_norm, stim_kl
from .spaces import SpaceSpec
from .adapters import get_adapter
from .stimulator import Stimulator, _unwrap, attach, get_stimulator
from .subnet import Subnet

__all__ = [
    'StimulativeTask', 'StimulativeMixin', 'stimulative_task_class', 'NORMALIZE_CHOICES', 'WEIGHT_SCHEDULES',
    'kl_weight_at', 'stable_start_epochs', 'sample_input_size', 'round_to_multiple', 'resize_batch',
    'NormalizedLogitsLoss',
]

_logger = logging.getLogger(__name__)

NORMALIZE_CHOICES = ('none', 'kl', 'all')
WEIGHT_SCHEDULES = ('const', 'cos-up', 'cos-down')


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


def resize_batch(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of an already normalized batch (no second normalization)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


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
    if weight_sched not in WEIGHT_SCHEDULES:
        raise ValueError(f'weight_sched={weight_sched!r}: expected one of {WEIGHT_SCHEDULES}.')
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
        raise ValueError(f'start_epoch={start_epoch!r}: expected an int >= 0.')


class StimulativeMixin:
    """Adds Stimulative Training (ST / ST++) to a timm training task whose result has ``loss`` and ``output``.

    The base task's forward gives the full network's loss (e.g. cross-entropy, or
    cross-entropy plus a teacher's distillation term) and logits ``z``. That loss is
    back-propagated at once, freeing the full network's graph (the official step order);
    then for each of ``num_subnets`` sampled subnetworks, on an input resized to a random size
    in ``[min_scale, max_scale]`` of the original, ``w * stim_kl(f_k(x_k), z.detach())`` is
    back-propagated in turn, ``w`` the KL weight at the current training progress. So only
    one graph is alive at a time and peak memory stays that of a plain step.

    The returned ``loss`` carries the base loss's value for logging; the gradients of
    ``L_main + w * sum_k L_k`` are already accumulated, and the caller's usual
    ``loss.backward()`` (or timm's loss scaler) adds nothing to them. Under DDP that backward
    is what all-reduces the accumulated gradients (see ``_finish``). Second-order optimizers
    (``create_graph=True``) are not supported while subnetworks run.

    A training loop tells the task once how it scales and accumulates losses
    (``configure_training``), then where it is before each batch (``set_progress``); nothing
    else about subnetworks is the loop's business. Without ``configure_training`` the task
    assumes no loss scaler and no accumulation.

    Keyword Args:
        num_subnets: subnetworks per step, K (0 = the base task alone).
        stimulator: an attached ``Stimulator``; else the model's own, else ``attach(model,
            space, mode, bn)``.
        space, mode, bn: for ``attach`` (defaults 'uniform', 'depth', 'freeze').
        min_scale, max_scale: subnetwork input size range as a fraction of the input
            (ST++: 0.43, 1.0).
        kl_weight: weight of each subnetwork's KL term (total KL weight is K * kl_weight).
        weight_sched: 'const', 'cos-up' or 'cos-down' over training (see ``kl_weight_at``).
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

    def __init__(
            self,
            *args,
            num_subnets: int = 1,
            stimulator: Optional[Stimulator] = None,
            space: Optional[SpaceSpec] = None,
            mode: Optional[str] = None,
            bn: Optional[str] = None,
            min_scale: float = 1.0,
            max_scale: float = 1.0,
            kl_weight: float = 1.0,
            weight_sched: str = 'const',
            normalize: str = 'none',
            amplitude: float = 1.0,
            temperature: float = 1.0,
            start_epoch: int = 0,
            seed: int = 0,
            weight_warmup_epochs: float = 0.0,
            **kwargs,
    ):
        # Validate everything before anything is built or attached (a teacher can be expensive).
        _check_stim_options(num_subnets, min_scale, max_scale, normalize, amplitude, temperature, kl_weight,
                            weight_sched, start_epoch)
        _check_weight_warmup(weight_warmup_epochs)
        model = kwargs.get('model', kwargs.get('student_model', args[0] if args else None))
        if not isinstance(model, nn.Module):
            raise ValueError('StimulativeMixin: the base task\'s first argument must be the model to train.')
        model = _unwrap(model)
        existing = get_stimulator(model)
        adapter = (stimulator or existing).adapter if (stimulator or existing) else get_adapter(model)
        adapter.check_input_scaling(model, min_scale, max_scale)
        if stimulator is not None or existing is not None:
            if space is not None or mode is not None or bn is not None:
                raise ValueError('Pass either a Stimulator (or a model with one attached) or space/mode/bn, not both.')
            stimulator = stimulator or existing
            if get_stimulator(model) is not stimulator:
                raise ValueError('The stimulator passed is not attached to this model.')

        super().__init__(*args, **kwargs)
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
        self.weight_warmup_epochs = float(weight_warmup_epochs)
        self.kl_weight = (float(kl_weight) if weight_sched == 'const' and not weight_warmup_epochs
                          else kl_weight_at(kl_weight, weight_sched, 0.0, float(weight_warmup_epochs)))
        self.normalize = normalize
        self.amplitude = float(amplitude)
        self.temperature = float(temperature)
        self.start_epoch = start_epoch
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last_subnets: List[Tuple[Subnet, Tuple[int, int]]] = []
        # How the training loop scales and accumulates (configure_training), and where it is (set_progress).
        self.epoch = 0
        self._epochs = 1
        self._batches_per_epoch = 1
        self._grad_accum_steps = 1
        self._loss_scaler = None
        self._grad_divisor = 1.0
        if self.verbose:
            _logger.info(f'{type(self).__name__}: K={num_subnets}, {stimulator!r}, scales=({min_scale}, {max_scale}), '
                         f'normalize={normalize}, kl_weight={kl_weight} ({weight_sched}'
                         f'{f", warm-in over {weight_warmup_epochs:g} epochs" if weight_warmup_epochs else ""}), '
                         f'T={temperature}')

    def configure_training(self, *, epochs: int = 1, batches_per_epoch: int = 1, grad_accum_steps: int = 1,
                           loss_scaler: Optional[Any] = None) -> None:
        """Tell the task, once, how the training loop runs.

        Args:
            epochs: total epochs (the KL weight schedule spans them).
            batches_per_epoch: batches the loop runs per epoch.
            grad_accum_steps: batches per optimizer update; the loop divides each batch's loss by
                the number of batches in its update (fewer for a short last group of the epoch),
                and so does the task for its own backward passes.
            loss_scaler: timm's ``NativeScaler`` (float16 AMP) or a ``torch.amp.GradScaler``: its
                current scale multiplies the task's backward passes as it multiplies the loop's.
        """
        self._epochs = max(int(epochs), 1)
        self._batches_per_epoch = max(int(batches_per_epoch), 1)
        self._grad_accum_steps = max(int(grad_accum_steps), 1)
        self._loss_scaler = loss_scaler
        self.set_progress(self.epoch, 0)

    def set_progress(self, epoch: int, batch_idx: int = 0) -> None:
        """Tell the task which batch of which epoch comes next (KL weight, start epoch, accumulation)."""
        self.epoch = int(epoch)
        progress = (epoch + batch_idx / self._batches_per_epoch) / self._epochs
        self.kl_weight = kl_weight_at(self.base_kl_weight, self.weight_sched, progress,
                                      self.weight_warmup_epochs / self._epochs)
        # The loop's divisor for this batch: grad_accum_steps, or the size of the epoch's last, short group.
        accum, num_batches = self._grad_accum_steps, self._batches_per_epoch
        last_group = num_batches % accum
        self._grad_divisor = float(last_group if last_group and batch_idx >= num_batches - last_group else accum)

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
        return [p for p in _unwrap(self.trainable_module).parameters() if p.requires_grad]

    def _loss_scale(self) -> Optional[float]:
        # timm's NativeScaler and torch's GradScaler both report their scale in state_dict()
        # (empty while disabled).
        if self._loss_scaler is None:
            return None
        return self._loss_scaler.state_dict().get('scale')

    def _backward_now(self, loss: torch.Tensor, scale: Optional[float]) -> None:
        """Back-propagate one term of the step into ``.grad``, scaled as the caller scales its loss."""
        loss = loss / self._grad_divisor
        if scale is not None:
            loss = loss * scale
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

        Its value is the base loss; its backward adds zero to every gradient. Under DDP that
        backward passes through each parameter's gradient accumulator exactly once, which fires
        DDP's reducer on the gradients accumulated by ``_backward_now`` (honouring ``no_sync``).
        """
        done = loss.detach()
        if isinstance(self.trainable_module, DistributedDataParallel):
            return done + sum(p.sum() for p in self._trainable_parameters()) * 0.0
        return done.requires_grad_()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The base task's result, with K subnetwork KL terms back-propagated in the official order.

        Returns:
            The base task's dict: ``loss`` (back-propagate it as usual), ``output`` (full-network
            logits) and its other terms, plus ``stim_kl`` (mean KL term over the K subnetworks,
            detached) when subnetworks ran.
        """
        result = super().forward(input, target)
        if not self.active:
            return result
        loss, output = result['loss'], result['output']

        # Official order: the task loss first, so the full network's graph is freed before any
        # subnetwork runs and at most one graph is alive at a time.
        scale = self._loss_scale()
        self._backward_now(loss, scale)
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
                self._backward_now(self.kl_weight * kl, scale)
            kl_total += kl.detach()
        result = dict(result, loss=self._finish(loss), output=teacher)
        for key, value in result.items():
            if key not in ('loss', 'output') and isinstance(value, torch.Tensor):
                result[key] = value.detach()
        result['stim_kl'] = kl_total / self.num_subnets
        return result


class StimulativeTask(StimulativeMixin, ClassificationTask):
    """timm's ``ClassificationTask`` with Stimulative Training (see ``StimulativeMixin``).

    Args:
        model: the timm model.
        criterion: task loss (any timm criterion; soft mixup targets work). Created from
            ``criterion_kwargs`` by timm when None.
        criterion_kwargs: arguments for ``timm.loss.create_classification_loss``.
        **stim_and_task_kwargs: the stimulative options of ``StimulativeMixin`` (``num_subnets``,
            ``space``, ``min_scale``, ``normalize``, ...) and ``device``, ``dtype``, ``verbose``.
    """

    def __init__(self, model: nn.Module, criterion: Optional[Union[nn.Module, Callable]] = None,
                 criterion_kwargs: Optional[Dict[str, Any]] = None, **stim_and_task_kwargs):
        super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, **stim_and_task_kwargs)


_STIMULATIVE_CLASSES: Dict[type, type] = {ClassificationTask: StimulativeTask}


def stimulative_task_class(base: type) -> type:
    """The stimulative version of a timm task class (e.g. ``LogitDistillationTask``).

    The class takes the base class's arguments plus ``StimulativeMixin``'s keyword options.
    The base task's result must hold ``loss`` and the full network's logits in ``output``.
    """
    if not (isinstance(base, type) and issubclass(base, TrainingTask)):
        raise TypeError(f'{base!r} is not a timm TrainingTask class.')
    if base not in _STIMULATIVE_CLASSES:
        _STIMULATIVE_CLASSES[base] = type(f'Stimulative{base.__name__}', (StimulativeMixin, base),
                                          {'__doc__': f'timm\'s ``{base.__name__}`` with Stimulative Training.',
                                           '__module__': __name__})
    return _STIMULATIVE_CLASSES[base]
