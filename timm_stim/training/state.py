"""``TrainState``: what one training run holds, declared and grouped by what it is.

``timm_stim.training.train`` fills the groups phase by phase, as timm's train.py builds its
local variables: ``model`` when the model is created (the task joins it later), ``data`` with
the loaders, ``optim`` with the optimizer, ``progress`` when the run is prepared. A group is
``None`` until then. Every callback event receives the state (``timm_stim.callbacks``).

``args`` is read-only once ``resolve_args`` has run; values timm's train.py writes into its
args at run time (``num_classes`` from the model, ``lr`` from ``--lr-base``) live in the groups,
and ``run_args`` is the namespace checkpoints save as timm's train.py saves its args.
"""
import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..callbacks import TrainCallback
from .lifecycle import RunLifecycle
from .stim import StimTraining

__all__ = ['ModelState', 'DataState', 'OptimState', 'ProgressState', 'TrainState']


@dataclass
class ModelState:
    """The model and its task (``_create_model``, then ``_create_task``)."""
    model: nn.Module  # the trainable module: the timm model, later the task's (DDP / compiled) wrapper
    data_config: Dict[str, Any]  # timm's resolved data config (input size, mean, std, crop, interpolation)
    num_classes: int  # --num-classes, or the model's when not given
    device: torch.device
    dtype: Optional[torch.dtype]  # --model-dtype (None: float32)
    num_aug_splits: int = 0
    patch_size: Optional[Tuple[int, int]] = None  # NaFlex loaders
    task: Optional[nn.Module] = None  # timm's task (classification / distillation, stimulative when ST is on)
    eval_model: Optional[nn.Module] = None


@dataclass
class DataState:
    """Datasets and loaders (``_create_loaders``)."""
    dataset_train: Any
    loader_train: Any
    loader_eval: Any  # None without --val-split
    mixup_fn: Optional[Callable] = None  # mixup in the loop (no prefetcher)
    mixup_active: bool = False
    naflex_mode: bool = False
    scheduled_batch_mode: bool = False  # --train-img-sizes
    batch_size_reference: float = 0.0  # the (average) batch size per process


@dataclass
class OptimState:
    """What optimizes: learning rate, losses, optimizer, scheduler, AMP (``_create_loaders`` .. ``_prepare_run``)."""
    lr: float  # --lr, or computed from --lr-base and the global batch size
    amp_autocast: Callable
    loss_scaler: Any  # timm's NativeScaler for float16 AMP, else None
    amp_dtype: Optional[torch.dtype] = None  # the autocast dtype with --amp, else None
    train_loss_fn: Optional[nn.Module] = None
    validate_loss_fn: Optional[nn.Module] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    lr_scheduler: Any = None
    num_epochs: int = 0  # scheduled epochs (the scheduler's, cooldown included)


@dataclass
class ProgressState:
    """The run folder and how far the run is (``_prepare_run``, then every epoch)."""
    output_dir: Optional[str]  # None on processes other than the primary
    exp_name: Optional[str]
    eval_metric: str
    decreasing_metric: bool
    saver: Any = None  # the checkpoint saver (primary process)
    start_epoch: int = 0
    start_batch: int = 0  # batches of start_epoch already done (a mid-epoch resume)
    updates_done: int = 0
    meters: Optional[Dict[str, Any]] = None  # running averages a mid-epoch resume continues
    epoch: int = 0
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    results: List[Dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    checkpoint_epoch: Optional[int] = None  # the last epoch whose checkpoint was written
    last_saved: Optional[str] = None  # the checkpoint an interrupted run resumes from


@dataclass
class TrainState:
    """One training run: the options, the objects that extend timm's loop, and the groups the phases build."""
    args: argparse.Namespace
    args_text: str  # args.yaml as timm writes it: the parsed options
    stim: StimTraining
    run: RunLifecycle
    callbacks: Sequence[TrainCallback]
    model: Optional[ModelState] = None
    data: Optional[DataState] = None
    optim: Optional[OptimState] = None
    progress: Optional[ProgressState] = None
    run_args: Optional[argparse.Namespace] = None  # args as checkpoints save them (timm's run-time values in)

    def emit(self, event: str, *event_args) -> None:
        """Call ``event`` on every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, event)(self, *event_args)
