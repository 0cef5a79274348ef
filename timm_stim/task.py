"""``StimulativeTask``: timm training task with Stimulative Training (ST) and ST++ terms."""
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.task import ClassificationTask, TrainingTask
from timm.utils import unwrap_model

from .budget import TimeBudget
from .config import StimConfig
from .devices import synchronized_time
from .errors import NonFiniteLossError
from .inputs import input_size_choices, renormalize_batch, resize_batch, sample_input_size, subnet_size_multiple
from .losses import logit_norm, stim_kl
from .adapters import get_adapter
from .stimulator import Stimulator, attach, get_stimulator
from .subnet import Subnet

__all__ = ['StimulativeTask', 'StimulativeMixin', 'stimulative_task_class', 'kl_weight_at', 'NormalizedLogitsLoss']

_logger = logging.getLogger(__name__)



def kl_weight_at(base: float, schedule: str, progress: float, warmup: float = 0.0) -> float:
    """Weight of each subnetwork's KL term at training progress in [0, 1].

    ``const`` keeps ``base``; ``cos-up`` rises from 0 to ``base`` and ``cos-down`` falls from
    ``base`` to 0 along half a cosine (the official code's ``kl_cos`` / ``kl_rcos``). With
    ``warmup > 0`` (a fraction of training) the weight is also multiplied by
    ``min(1, progress / warmup)``: a linear warm-in from 0, the stable start of
    ``timm_stim.resolve.stable_start_epochs``.
    """
    progress = min(max(float(progress), 0.0), 1.0)
    ramp = min(1.0, progress / warmup) if warmup > 0 else 1.0
    if schedule == 'const':
        return base * ramp
    if schedule == 'cos-up':
        return base * ramp * 0.5 * (1.0 - math.cos(math.pi * progress))
    if schedule == 'cos-down':
        return base * ramp * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f'weight schedule {schedule!r}: expected const, cos-up or cos-down.')


def _check_resize_options(input_mean, input_std) -> None:
    for name, values in (('input_mean', input_mean), ('input_std', input_std)):
        if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f'{name}={values!r}: expected one number per input channel.')
    if len(input_mean) != len(input_std) or not all(v > 0 for v in input_std):
        raise ValueError(f'input_mean={input_mean!r}, input_std={input_std!r}: expected as many means as stds, '
                         f'every std > 0.')


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


# Arguments of the task that are not options: what it runs on, rather than how it trains.
_RUNTIME_ARGS = ('stimulator', 'input_mean', 'input_std', 'seed')
_OPTION_NAMES = frozenset(f.name for f in StimConfig.options())


def _split_stim(stim: Union[StimConfig, Dict[str, Any], None]) -> Tuple[StimConfig, Dict[str, Any]]:
    """``(config, runtime arguments)`` of the ``stim`` argument: a ``StimConfig``, or a dict of
    ``StimConfig`` fields (``num_subnets`` 1 unless given) and runtime arguments, optionally
    with ``config`` (a ``StimConfig`` the other fields override)."""
    if isinstance(stim, StimConfig):
        return stim, {}
    stim = dict(stim or {})
    runtime = {k: stim.pop(k) for k in _RUNTIME_ARGS if k in stim}
    base = stim.pop('config', None)
    names = {f.name for f in StimConfig.options()}
    unknown = sorted(set(stim) - names)
    if unknown:
        raise TypeError(f'unknown stimulative option(s) {unknown}; expected some of '
                        f'{sorted(names) + list(_RUNTIME_ARGS)} or config=StimConfig(...).')
    if base is None:
        runtime['explicit_space'] = any(k in stim for k in ('space', 'mode', 'bn'))
        stim.setdefault('num_subnets', 1)  # a stimulative task without options trains one subnetwork, as ST
        return StimConfig(**stim), runtime
    return dataclasses.replace(base, **stim), runtime


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

    Options: the fields of ``StimConfig`` (``timm_stim.config``: the one place they are declared,
    with their defaults and help). A fraction ``num_subnets`` (e.g. 1.6, what a compute budget
    affords) is a mean: each step runs ``floor(K)`` subnetworks, plus one with probability
    ``K - floor(K)``, drawn from the task's generator.

    Runtime arguments (beside the options in the ``stim`` dict):
        stimulator: an attached ``Stimulator``; else the model's own, else ``attach(model,
            space, mode, bn)`` with the config's.
        input_mean, input_std: the dataset normalization, used by ``resize='official'``
            (default: ImageNet's, as the official code).
        seed: seed of the task's own generator for subnets and sizes (same on every rank).
    """

    def __init__(self, *args, stim: Union[StimConfig, Dict[str, Any], None] = None, **kwargs):
        """Args: the base task's arguments, and ``stim``: a ``StimConfig``, or a dict of its fields
        and the runtime arguments ``stimulator``, ``input_mean``, ``input_std``, ``seed``."""
        config, runtime = _split_stim(stim)
        self._init_stimulative(args, kwargs, config, **runtime)

    def _init_stimulative(
            self,
            base_args: tuple,
            base_kwargs: Dict[str, Any],
            config: StimConfig,
            stimulator: Optional[Stimulator] = None,
            input_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            input_std: Sequence[float] = IMAGENET_DEFAULT_STD,
            seed: int = 0,
            explicit_space: bool = False,
    ) -> None:
        # Validate everything before anything is built or attached (a teacher can be expensive).
        config.check()
        _check_resize_options(input_mean, input_std)
        model = base_kwargs.get('model', base_kwargs.get('student_model', base_args[0] if base_args else None))
        if not isinstance(model, nn.Module):
            raise ValueError('StimulativeMixin: the base task\'s first argument must be the model to train.')
        model = unwrap_model(model)
        existing = get_stimulator(model)
        adapter = (stimulator or existing).adapter if (stimulator or existing) else get_adapter(model)
        adapter.check_input_scaling(model, config.min_scale, config.max_scale)
        if stimulator is not None or existing is not None:
            stimulator = stimulator or existing
            if get_stimulator(model) is not stimulator:
                raise ValueError('The stimulator passed is not attached to this model.')
            if explicit_space:
                raise ValueError('Pass either a Stimulator (or a model with one attached) or space/mode/bn, not both.')

        super().__init__(*base_args, **base_kwargs)
        if stimulator is None:
            stimulator = attach(model, config.space, config.mode, config.bn)
        if config.normalize == 'all':
            self.criterion = NormalizedLogitsLoss(self.criterion, config.amplitude)
        # The task reads its options from its config, resolved here for what it trains with: an antialias
        # that follows the resize mode, and no KL warm-in when none was resolved (timm_stim.resolve).
        config = dataclasses.replace(
            config, antialias=(config.resize == 'independent') if config.antialias is None else bool(config.antialias),
            weight_warmup_epochs=float(config.weight_warmup_epochs or 0.0))
        # The KL weight now (set_progress moves it); the config's kl_weight is its base.
        self.kl_weight = (config.kl_weight if config.weight_sched == 'const' and not config.weight_warmup_epochs
                          else kl_weight_at(config.kl_weight, config.weight_sched, 0.0, config.weight_warmup_epochs))
        self.config = config
        self.stimulator = stimulator
        # Every subnetwork input side is a multiple of this: the model's (e.g. a ViT's patch) and the grid's.
        self.input_multiple = subnet_size_multiple(stimulator, config.size_multiple)
        # --stim-budget-unit time: K is steered from the measured passes (timm_stim.budget.TimeBudget);
        # otherwise it is the config's (a fraction: its floor or ceiling, drawn so the mean is exact).
        self.time_budget = TimeBudget(config.budget, config.num_subnets) if config.budget_unit == 'time' else None
        self._steered_subnets = self.time_budget.start if self.time_budget is not None else None
        self._step_start = 0.0
        self._pass_times: List[Tuple[Tuple[int, int], float]] = []
        self._compile_sizes: set = set()  # training sizes the dynamo recompile limit accounts for
        self._compile_log = (0, 0.0)  # graphs compiled when last logged, and when
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.generator_restored = False  # whether load_task_state found the generator's state
        self.last_subnets: List[Tuple[Subnet, Tuple[int, int]]] = []
        # How long training is (configure_training) and where it is (set_progress): the KL schedule.
        self.epoch = 0
        self._epochs = 1
        self._batches_per_epoch = 1
        if self.verbose:
            warmup = self.config.weight_warmup_epochs
            _logger.info(f'{type(self).__name__}: K={config.num_subnets}, {stimulator!r}, scales=({config.min_scale}, '
                         f'{config.max_scale}), normalize={config.normalize}, kl_weight={config.kl_weight} '
                         f'({config.weight_sched}{f", warm-in over {warmup:g} epochs" if warmup else ""}), '
                         f'T={config.temperature}')

    def __getattr__(self, name: str) -> Any:
        """An option the task reads from ``self.config`` (``task.num_subnets`` is ``task.config.num_subnets``).

        Only names the task and its base do not define themselves (a distillation task's
        ``temperature`` stays the teacher's). Read-only: to change an option, replace ``task.config``
        (``dataclasses.replace``).
        """
        config = self.__dict__.get('config')
        if isinstance(config, StimConfig) and name in _OPTION_NAMES:
            return getattr(config, name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Setting ``task.num_subnets`` would change nothing the task reads: say so instead.
        if name in _OPTION_NAMES and isinstance(self.__dict__.get('config'), StimConfig) and name not in self.__dict__:
            raise AttributeError(f'{type(self).__name__}.{name} is read from task.config; set '
                                 f'task.config = dataclasses.replace(task.config, {name}=...) instead.')
        super().__setattr__(name, value)

    def configure_training(self, *, epochs: int = 1, batches_per_epoch: int = 1) -> None:
        """Tell the task, once, how long training is (the KL weight schedule spans ``epochs``)."""
        self._epochs = max(int(epochs), 1)
        self._batches_per_epoch = max(int(batches_per_epoch), 1)
        self.set_progress(self.epoch, 0)

    def set_progress(self, epoch: int, batch_idx: int = 0) -> None:
        """Tell the task which batch of which epoch comes next (KL weight schedule, start epoch)."""
        self.epoch = int(epoch)
        config = self.config
        batch_progress = (epoch + batch_idx / self._batches_per_epoch) / self._epochs
        schedule_progress = epoch / self._epochs if config.weight_sched_step == 'epoch' else batch_progress
        # The warm-in of a stable start moves batch by batch, whatever the schedule's step.
        ramp = kl_weight_at(1.0, 'const', batch_progress, config.weight_warmup_epochs / self._epochs)
        self.kl_weight = kl_weight_at(config.kl_weight, config.weight_sched, schedule_progress) * ramp

    def set_epoch(self, epoch: int) -> None:
        """``set_progress(epoch, 0)``."""
        self.set_progress(epoch, 0)

    @property
    def subnets_per_step(self) -> float:
        """Subnetworks per step now: ``config.num_subnets``, or what ``--stim-budget-unit time`` steers it to."""
        return self._steered_subnets if self.time_budget is not None else self.config.num_subnets

    @property
    def base_kl_weight(self) -> float:
        """The KL weight before its schedule and warm-in (``config.kl_weight``); ``kl_weight`` is the current one."""
        return float(self.config.kl_weight)

    @property
    def active(self) -> bool:
        """Whether the next training forward adds subnetwork terms."""
        return ((self.subnets_per_step > 0 or self.time_budget is not None) and self.epoch >= self.config.start_epoch
                and self.stimulator.model.training and torch.is_grad_enabled())

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """The base task's state plus the sampler's RNG state (a resumed run draws the same subnets)."""
        state = dict(super().get_task_state(module=module, ema=ema))
        if not ema:
            state['stim_generator_state'] = self.generator.get_state()
        return state

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        """The base task's state, and the sampler's RNG state when the checkpoint has one.

        A checkpoint of a run without stimulative training (timm's train.py, ``--stim-subnets 0``)
        has none: the generator then stays as seeded, as in a fresh run, and
        ``generator_restored`` is False (the training program says so in its log).
        """
        state = dict(state or {})
        generator_state = state.pop('stim_generator_state', None)
        super().load_task_state(state or None, strict=strict, module=module, ema=ema)
        if ema:
            return
        self.generator_restored = generator_state is not None
        if generator_state is not None:
            self.generator.set_state(generator_state)

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
        config = self.config
        if config.min_scale == 1.0 and config.max_scale == 1.0:
            return input  # small inputs off: every subnetwork sees the full network's input (official too)
        if config.resize == 'independent':
            return resize_batch(input, size, config.antialias)
        return renormalize_batch(resize_batch(previous, size, config.antialias), self.input_mean, self.input_std)

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
        if self.stimulator.compiled:
            self._compiled_step(input)
        timed = self.time_budget is not None and self.active
        if timed:
            self._steered_subnets = self.time_budget.num_subnets()
            self._step_start = synchronized_time(input.device)
        result = super().forward(input, target)
        if not self.active:
            return result
        loss, output = result['loss'], result['output']
        plan = []
        height, width = input.shape[-2:]
        for _ in range(self._subnets_this_step()):
            subnet = self.stimulator.sample(self.generator)
            size = sample_input_size(height, width, self.config.min_scale, self.config.max_scale, self.generator,
                                     self.input_multiple)
            plan.append((subnet, size))
        self.last_subnets = list(plan)
        stim_kl = torch.zeros((), device=output.device)
        if isinstance(self.trainable_module, DistributedDataParallel):
            # Zero-valued, through every parameter: its backward fires DDP's reducer once (see _backward_now).
            trigger = sum(p.sum() for p in self._trainable_parameters()) * 0.0
        else:
            trigger = torch.zeros((), device=output.device, requires_grad=True)
        stim_cost = torch.zeros(()) if timed else None
        deferred = _StimulativeBackward.apply(self, plan, input, output.detach(), stim_kl, [loss, stim_cost], trigger)
        result = {key: (value.detach() if key not in ('loss', 'output') and isinstance(value, torch.Tensor)
                        else value) for key, value in result.items()}
        result.update(loss=deferred, output=output.detach(), stim_kl=stim_kl)
        if timed:
            result['stim_cost'] = stim_cost  # subnetwork passes' time over the plain pass's, filled in by backward
        return result

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> Optional[nn.Module]:
        """Compile the base task's components, with the network compiled block by block.

        The base task compiles what it compiles (e.g. a distillation teacher); the trained
        network is then compiled one residual block at a time (``Stimulator.compile_blocks``)
        instead of as a whole, so that the full network and every subnetwork run the same
        compiled blocks (a whole-network graph would need one compile per subnetwork). A family
        whose adapter says its blocks cannot be compiled alone keeps the base's whole-network
        compile, with eager subnetworks, and the log says so.

        Returns:
            The eval-facing module (the network, its blocks compiled).
        """
        compiled = super().compile(backend=backend, mode=mode, **compile_kwargs)
        adapter = self.stimulator.adapter
        original = getattr(self.trainable_module, '_orig_mod', None)  # torch.compile is lazy: nothing ran yet
        if not adapter.blockwise_compile or original is None:
            _logger.info(f'{type(self).__name__}: {adapter.family} blocks cannot be compiled one by one; the full '
                         f'network runs compiled, subnetworks run eager.')
            return compiled
        self.trainable_module = original
        if getattr(self, 'eval_model', None) is compiled:
            self.eval_model = original
        count = self.stimulator.compile_blocks(backend=backend, mode=mode, **compile_kwargs)
        _logger.info(f'{type(self).__name__}: compiling {count} {adapter.family} blocks one by one '
                     f'({self.stimulator.block_kinds()} distinct), shared by the full network and every subnetwork '
                     f'(stem and head eager); each input size compiles once per distinct block.')
        return self.trainable_module

    def _compiled_step(self, input: torch.Tensor) -> None:
        """Before a step of compiled blocks: room for every graph the run needs, and the compile time so far.

        Every input size of a distinct block is a graph of one compiled function (static shapes),
        in train and eval mode: dynamo's recompile limit (8 per function by default, then eager)
        is raised to what the training size and the subnetwork sizes drawn from it need.
        """
        import torch._dynamo
        height, width = (int(v) for v in input.shape[-2:])
        if (height, width) not in self._compile_sizes:
            self._compile_sizes.add((height, width))
            sizes = set()
            for h, w in self._compile_sizes:
                sizes.add((h, w))
                if (self.config.min_scale, self.config.max_scale) != (1.0, 1.0):
                    sizes.update(input_size_choices(h, w, self.config.min_scale, self.config.max_scale,
                                                    self.input_multiple))
            needed = self.stimulator.block_kinds() * (len(sizes) + 2) * 2
            config = torch._dynamo.config
            if config.recompile_limit < needed or config.accumulated_recompile_limit < 2 * needed:
                config.recompile_limit = max(config.recompile_limit, needed)
                config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 2 * needed)
                if self.verbose:
                    _logger.info(f'torch._dynamo recompile_limit raised to {config.recompile_limit} '
                                 f'({self.stimulator.block_kinds()} distinct blocks x {len(sizes)} input sizes, train '
                                 f'and eval): --stim-size-multiple draws fewer sizes, so fewer compiles.')
        if self.verbose:
            from torch._dynamo.utils import compilation_time_metrics  # read for the log only
            times = compilation_time_metrics.get('_compile.compile_inner', [])
            logged, when = self._compile_log
            if len(times) != logged and (not logged or time.monotonic() - when > 60):
                self._compile_log = (len(times), time.monotonic())
                _logger.info(f'torch.compile so far: {len(times)} graphs in {sum(times):.1f} s')

    def _subnets_this_step(self) -> int:
        """``num_subnets``, or for a fractional mean, its floor or ceiling drawn so the mean is exact."""
        count = math.floor(self.subnets_per_step)
        fraction = self.subnets_per_step - count
        # Whole K draws nothing, so the task's random stream is that of a plain K.
        if fraction > 0 and torch.rand((), generator=self.generator).item() < fraction:
            count += 1
        return int(count)

    def _stimulate(self, plan, input: torch.Tensor, teacher: torch.Tensor, grad: torch.Tensor,
                   base_loss: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The subnetwork forward and backward passes; returns the mean KL term (detached).

        Raises:
            NonFiniteLossError: ``base_loss`` (the task's loss) or a subnetwork's KL term is NaN or
                infinite, naming which; raised inside the loss's backward, before the optimizer steps.
        """
        model, config = self.stimulator.model, self.config
        kl_total = torch.zeros((), device=teacher.device)
        kls = []
        subnet_input = input  # resize='official': each subnetwork resizes the previous one's input
        self._pass_times = []
        for subnet, size in plan:
            start = synchronized_time(input.device) if self.time_budget is not None else 0.0
            with self.stimulator.activate(subnet):
                subnet_input = self.subnet_input(input, subnet_input, size)
                student = model(subnet_input)
                kl = stim_kl(student, teacher, config.temperature, config.normalize != 'none', config.amplitude)
                # Backward inside activate (gradient checkpointing recomputes with the same subnet).
                self._backward_now(grad * (self.kl_weight * kl))
            if self.time_budget is not None:
                self._pass_times.append((tuple(subnet_input.shape[-2:]), synchronized_time(input.device) - start))
            kl_total += kl.detach()
            kls.append(kl.detach().float())
        if base_loss is not None or kls:  # one sync per step, before the optimizer steps on these gradients
            _raise_if_non_finite(base_loss, kls, plan, isinstance(self.trainable_module, DistributedDataParallel))
        return kl_total / max(len(plan), 1)


def _raise_if_non_finite(base_loss: Optional[torch.Tensor], kls: List[torch.Tensor], plan,
                         distributed: bool = False) -> None:
    """``NonFiniteLossError`` naming the task loss or the first subnetwork whose KL term is NaN or infinite.

    With ``distributed`` (DDP) the processes agree first (one all-reduce of a flag): every one raises
    when any has a non-finite term, so that none waits in DDP's gradient all-reduce for the others.
    """
    terms = ([base_loss.detach().float().reshape(())] if base_loss is not None else []) + kls
    finite = torch.isfinite(torch.stack(terms))
    any_bad = (~finite).any()
    if distributed:
        flag = any_bad.float().reshape(1)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if bool(flag.item()) and bool(finite.all()):
            raise NonFiniteLossError('another process', float('nan'), 'a term of this step is not finite on '
                                                                      'another process.')
    if not bool(any_bad):
        return
    first = int((~finite).nonzero()[0])
    if base_loss is not None and first == 0:
        raise NonFiniteLossError('task_loss', float(terms[0]), f'the task loss of this step is {float(terms[0])}.')
    i = first - (base_loss is not None)
    subnet, size = plan[i]
    term, value = f'stim_kl[{i}]', float(kls[i])
    raise NonFiniteLossError(term, value, f'the KL term of subnetwork {i} of {len(plan)} of this step (depths '
                                          f'{",".join(map(str, subnet.depths))}, input {size[0]}x{size[1]}), {term}, '
                                          f'is {value}.')


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
        loss, ctx.stim_cost = loss_holder  # in a list, so that autograd does not see them as inputs
        ctx.task, ctx.plan, ctx.stim_kl = task, plan, stim_kl
        ctx.input, ctx.teacher, ctx.loss = input, teacher, loss
        device = input.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        task = ctx.task
        with torch.enable_grad():
            base_loss = ctx.loss.detach()
            task._backward_now(ctx.loss * grad)
            ctx.loss = None  # the full network's graph is freed before any subnetwork runs
            plain_s = synchronized_time(ctx.input.device) - task._step_start if ctx.stim_cost is not None else 0.0
            device, enabled, dtype = ctx.autocast
            with torch.autocast(device_type=device, dtype=dtype, enabled=enabled):
                ctx.stim_kl.copy_(task._stimulate(ctx.plan, ctx.input, ctx.teacher, grad, base_loss))
            if ctx.stim_cost is not None:
                ctx.stim_cost.fill_(task.time_budget.record(plain_s, task._pass_times))
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
        config: the stimulative options (``StimConfig``); keyword arguments below override it.
        stim: the same as a ``StimConfig`` or dict (what ``stimulative_task_class`` classes take).
        **stim_kwargs: ``StimConfig`` fields (``num_subnets`` (1 unless given or in ``config``),
            ``space``, ``min_scale``, ``normalize``, ``temperature``, ...) and the runtime
            arguments ``stimulator``, ``input_mean``, ``input_std``, ``seed``.
    """

    def __init__(self, model: nn.Module, criterion: Optional[Union[nn.Module, Callable]] = None,
                 criterion_kwargs: Optional[Dict[str, Any]] = None, *, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None, verbose: bool = True, config: Optional[StimConfig] = None,
                 stim: Union[StimConfig, Dict[str, Any], None] = None, **stim_kwargs):
        options = dict(stim) if isinstance(stim, dict) else ({'config': stim} if stim is not None else {})
        if config is not None:
            options['config'] = config
        options.update(stim_kwargs)
        super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype,
                         verbose=verbose, stim=options)


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
