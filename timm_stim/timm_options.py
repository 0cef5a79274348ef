"""The command-line options of ``train_stim.py``, as data: every option of timm's ``train.py`` plus timm_stim's.

``create_train_parser`` rebuilds timm 1.0.x's train.py parsers with the same option strings,
dest, type, default, nargs, action, const and choices (``tests/data/timm-train-flags.tsv`` holds
timm's table and the tests compare against it), so any timm command line or YAML config works
unchanged. The options timm lacks live in their own groups, so ``--help`` shows them apart:

* ``timm_stim.config.add_config_args``: the ``--stim-*`` options, derived from the fields of
  ``StimConfig`` (the only place they are declared); their defaults mean plain timm training.
* ``add_recipe_args``: train transforms of the paper's recipe (PCA lighting, UniformAugment).
* ``add_run_args``: how a run draws its random numbers.
* ``add_hub_args``: publishing the result to the Hugging Face Hub.

The options live in the core so that both layers above read one definition: the training
program parses with them (``timm_stim.training.args``) and the tools take the ones they share
with training by name (``copy_train_options``: ``timm-stim analyze`` / ``export``).
"""
import argparse
import copy
import math
from typing import Any, Dict, Optional, Sequence, Tuple, Type

from timm.utils import ParseKwargs

from .config import StimConfig, add_config_args
from .errors import command_prog
from .tokens import TokenMaskingParser

__all__ = ['create_train_parser', 'copy_train_options', 'add_recipe_args', 'add_run_args', 'add_hub_args',
           'RecordingParser', 'finite_float', 'SEED_SCHEMES']

# --seed-scheme: timm_stim.training.seeding implements them.
SEED_SCHEMES = ('per-sample', 'timm')


def finite_float(text: str) -> float:
    """argparse ``type`` of every float option: a number, never NaN or infinite (they train to NaN or crash late)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'{text!r}: expected a finite number')
    return value


finite_float.__name__ = 'float'



class _Exclusive(tuple):
    """Rows of options that exclude each other: added as an argparse mutually exclusive group."""


# timm's train.py options, group by group, as data: the parser adds each group's rows in order, so
# they show in --help as in timm's. A row is (option strings separated by spaces, keyword arguments
# of add_argument, help). A bare name is a positional: added to the parser itself, as timm does.
_DATASET_ARGS = (
    ('data', dict(nargs='?', metavar='DIR', const=None),
     'path to dataset (positional is *deprecated*, use --data-dir)'),
    ('--data-dir', dict(metavar='DIR'), 'path to dataset (root dir)'),
    ('--dataset', dict(metavar='NAME', default=''),
     'dataset type + name "<type>/<name>", e.g. torch/cifar10, hfds/..., embedded/digits '
     '(default: ImageFolder/ImageTar if empty)'),
    ('--train-split', dict(metavar='NAME', default='train'), 'dataset train split (default: train)'),
    ('--val-split', dict(metavar='NAME', default='validation'), 'dataset validation split (default: validation)'),
    ('--train-num-samples', dict(default=None, type=int, metavar='N'),
     'number of samples in the train split, for iterable datasets'),
    ('--val-num-samples', dict(default=None, type=int, metavar='N'),
     'number of samples in the validation split, for iterable datasets'),
    ('--dataset-download', dict(action='store_true', default=False),
     'allow download of torch/ and tfds/ datasets that support it'),
    ('--class-map', dict(default='', type=str, metavar='FILENAME'),
     'path to a class name -> index mapping file (default: "")'),
    ('--input-img-mode', dict(default=None, type=str), 'image mode the dataset converts inputs to (e.g. RGB, L)'),
    ('--input-key', dict(default=None, type=str), 'dataset field holding the input image'),
    ('--target-key', dict(default=None, type=str), 'dataset field holding the target label'),
    ('--dataset-trust-remote-code', dict(action='store_true', default=False),
     'let Hugging Face datasets run code from the dataset repository'),
)

_MODEL_ARGS = (
    ('--model', dict(default='resnet50', type=str, metavar='MODEL'),
     'name of the timm model to train (default: "resnet50")'),
    ('--pretrained', dict(action='store_true', default=False),
     'start from the pretrained weights of the model (if available)'),
    ('--pretrained-path', dict(default=None, type=str),
     'load this file as the pretrained weights, adapting classifier and input channels like a pretrained download '
     '(default: none)'),
    ('--initial-checkpoint', dict(default='', type=str, metavar='PATH'),
     'load this checkpoint into the model after creation (default: none)'),
    ('--resume', dict(default='', type=str, metavar='PATH'),
     'resume model and optimizer state from this checkpoint (default: none)'),
    ('--no-resume-opt', dict(action='store_true', default=False), 'do not restore the optimizer state when resuming'),
    ('--num-classes', dict(type=int, default=None, metavar='N'), 'number of label classes (model default if None)'),
    ('--gp', dict(default=None, type=str, metavar='POOL'),
     'global pool type: fast, avg, max, avgmax, avgmaxc (model default if None)'),
    ('--img-size', dict(type=int, default=None, metavar='N'), 'square image size (default: None => model default)'),
    ('--in-chans', dict(type=int, default=None, metavar='N'), 'number of input image channels (default: None => 3)'),
    ('--input-size', dict(default=None, nargs=3, type=int, metavar='N N N'),
     'input dimensions C H W, e.g. --input-size 3 224 224 (model default if empty)'),
    ('--crop-pct', dict(default=None, type=float, metavar='N'), 'center crop fraction of the validation images'),
    ('--mean', dict(type=float, nargs='+', default=None, metavar='MEAN'),
     'override the mean pixel value of the dataset'),
    ('--std', dict(type=float, nargs='+', default=None, metavar='STD'),
     'override the pixel std deviation of the dataset'),
    ('--interpolation', dict(default='', type=str, metavar='NAME'),
     'image resize interpolation (overrides the model default)'),
    ('-b --batch-size', dict(type=int, default=128, metavar='N'), 'training batch size per process (default: 128)'),
    ('-vb --validation-batch-size', dict(type=int, default=None, metavar='N'),
     'validation batch size (default: None => --batch-size)'),
    ('--channels-last', dict(action='store_true', default=False), 'use the channels_last memory layout'),
    ('--fuser', dict(default='', type=str), "TorchScript fuser: '', 'te', 'old' or 'nvfuser'"),
    ('--grad-accum-steps', dict(type=int, default=1, metavar='N'),
     'number of batches to accumulate gradients over per optimizer step'),
    ('--grad-checkpointing', dict(action='store_true', default=False),
     'enable gradient checkpointing through model blocks/stages'),
    ('--fast-norm', dict(action='store_true', default=False), "enable timm's experimental fast normalization layers"),
    ('--model-kwargs', dict(nargs='*', default={}, action=ParseKwargs),
     'extra keyword arguments for create_model, as key=value'),
    ('--head-init-scale', dict(default=None, type=float), 'scale applied to the classifier head weights at init'),
    ('--head-init-bias', dict(default=None, type=float), 'value the classifier head bias is initialized to'),
    ('--torchcompile-mode', dict(type=str, default=None), 'torch.compile mode (default: None => torch default)'),
    # Scripting and compiling the model are two alternative ways to optimize it: timm refuses both.
    _Exclusive((
        ('--torchscript', dict(dest='torchscript', action='store_true'), 'torch.jit.script the full model'),
        ('--torchcompile', dict(nargs='?', type=str, default=None, const='inductor'),
         'torch.compile the model with this backend (default when given without a value: inductor)'),
    )),
)

_DEVICE_ARGS = (
    ('--device', dict(default='cuda', type=str), 'device (accelerator) to use, e.g. cuda, cpu, mps (default: cuda)'),
    ('--amp', dict(action='store_true', default=False), 'use mixed precision training (automatic mixed precision)'),
    ('--amp-dtype', dict(default='float16', type=str),
     'lower precision AMP dtype: float16 or bfloat16 (default: float16)'),
    ('--model-dtype', dict(default=None, type=str),
     'dtype of the model weights without AMP: float32, float16, bfloat16 (default: None => float32)'),
    ('--no-ddp-bb', dict(action='store_true', default=False),
     'turn off broadcast of buffers in native DistributedDataParallel'),
    ('--synchronize-step', dict(action='store_true', default=False),
     'synchronize the device at the end of each step (for accurate timings)'),
    ('--local_rank', dict(default=0, type=int), 'local process rank (set by the distributed launcher)'),
    ('--device-modules', dict(default=None, type=str, nargs='+'),
     'Python modules to import that register a device backend'),
)

_OPTIMIZER_ARGS = (
    ('--opt', dict(default='sgd', type=str, metavar='OPTIMIZER'),
     'optimizer name, see timm.optim.list_optimizers() (default: "sgd")'),
    ('--opt-eps', dict(default=None, type=float, metavar='EPSILON'),
     'optimizer epsilon (default: None => optimizer default)'),
    ('--opt-betas', dict(default=None, type=float, nargs='+', metavar='BETA'),
     'optimizer betas (default: None => optimizer default)'),
    ('--momentum', dict(type=float, default=0.9, metavar='M'), 'optimizer momentum (default: 0.9)'),
    ('--weight-decay', dict(type=float, default=2e-5), 'weight decay (default: 2e-5)'),
    ('--clip-grad', dict(type=float, default=None, metavar='NORM'),
     'gradient clipping threshold (default: None => no clipping)'),
    ('--clip-mode', dict(type=str, default='norm'), 'gradient clipping mode: norm, value or agc (default: norm)'),
    ('--layer-decay', dict(type=float, default=None), 'layer-wise learning rate decay factor (default: None => off)'),
    ('--layer-decay-min-scale', dict(type=float, default=0),
     'lower bound of the layer-wise learning rate scale (default: 0)'),
    ('--layer-decay-no-opt-scale', dict(type=float, default=None),
     'leave layers whose layer-decay scale is below this out of the optimizer'),
    ('--opt-kwargs', dict(nargs='*', default={}, action=ParseKwargs),
     'extra keyword arguments for the optimizer, as key=value'),
)

_SCHEDULER_ARGS = (
    ('--sched', dict(type=str, default='cosine', metavar='SCHEDULER'), 'LR scheduler (default: "cosine")'),
    ('--sched-on-updates', dict(action='store_true', default=False),
     'step the LR scheduler on every optimizer update instead of every epoch'),
    ('--lr', dict(type=float, default=None, metavar='LR'),
     'learning rate; when None it is computed from --lr-base and the global batch size'),
    ('--lr-base', dict(type=float, default=0.1, metavar='LR'),
     'base learning rate: lr = lr_base * global_batch_size / lr_base_size'),
    ('--lr-base-size', dict(type=int, default=256, metavar='DIV'),
     'batch size divisor of the base learning rate (default: 256)'),
    ('--lr-base-scale', dict(type=str, default='', metavar='SCALE'),
     'how lr scales with batch size: "linear" or "sqrt" (empty => by optimizer)'),
    ('--lr-noise', dict(type=float, nargs='+', default=None, metavar='pct, pct'),
     'epoch fractions where learning rate noise turns on/off'),
    ('--lr-noise-pct', dict(type=float, default=0.67, metavar='PERCENT'), 'learning rate noise limit (default: 0.67)'),
    ('--lr-noise-std', dict(type=float, default=1.0, metavar='STDDEV'), 'learning rate noise std-dev (default: 1.0)'),
    ('--lr-cycle-mul', dict(type=float, default=1.0, metavar='MULT'),
     'multiplier of the learning rate cycle length (default: 1.0)'),
    ('--lr-cycle-decay', dict(type=float, default=0.5, metavar='MULT'),
     'decay of the peak learning rate at each new cycle (default: 0.5)'),
    ('--lr-cycle-limit', dict(type=int, default=1, metavar='N'),
     'number of learning rate cycles; cycles are on if > 1'),
    ('--lr-k-decay', dict(type=float, default=1.0), 'k-decay for cosine/poly schedules (default: 1.0)'),
    ('--warmup-lr', dict(type=float, default=1e-5, metavar='LR'),
     'learning rate at the start of warmup (default: 1e-5)'),
    ('--min-lr', dict(type=float, default=0, metavar='LR'),
     'lowest learning rate of schedules that decay to 0 (default: 0)'),
    ('--epochs', dict(type=int, default=300, metavar='N'), 'number of epochs to train (default: 300)'),
    ('--epoch-repeats', dict(type=float, default=0., metavar='N'),
     'number of passes over the dataset per training epoch (0 => 1)'),
    ('--start-epoch', dict(default=None, type=int, metavar='N'), 'epoch number to start from (useful on restarts)'),
    ('--decay-milestones', dict(default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES'),
     'increasing epochs at which the multistep schedule decays the learning rate'),
    ('--decay-epochs', dict(type=float, default=90, metavar='N'),
     'epoch interval between learning rate decays (step schedule)'),
    ('--warmup-epochs', dict(type=int, default=5, metavar='N'),
     'epochs of learning rate warmup, if the scheduler supports it'),
    ('--warmup-prefix', dict(action='store_true', default=False), 'keep the warmup epochs out of the decay schedule'),
    ('--cooldown-epochs', dict(type=int, default=0, metavar='N'), 'epochs at min_lr after a cyclic schedule ends'),
    ('--patience-epochs', dict(type=int, default=10, metavar='N'),
     'patience epochs of the plateau scheduler (default: 10)'),
    ('--decay-rate --dr', dict(type=float, default=0.1, metavar='RATE'), 'learning rate decay factor (default: 0.1)'),
)

_AUGMENTATION_ARGS = (
    ('--no-aug', dict(action='store_true', default=False),
     'disable all training augmentation, overriding the other augmentation options'),
    ('--train-crop-mode', dict(type=str, default=None),
     'training random crop mode (default: None => random resized crop)'),
    ('--scale', dict(type=float, nargs='+', default=[0.08, 1.0], metavar='PCT'),
     'random resized crop area range (default: 0.08 1.0)'),
    ('--ratio', dict(type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO'),
     'random resized crop aspect ratio range (default: 0.75 1.33)'),
    ('--hflip', dict(type=float, default=0.5), 'horizontal flip probability'),
    ('--vflip', dict(type=float, default=0.), 'vertical flip probability'),
    ('--color-jitter', dict(type=float, default=0.4, metavar='PCT'), 'color jitter strength (default: 0.4)'),
    ('--color-jitter-prob', dict(type=float, default=None, metavar='PCT'),
     'probability of applying color jitter (default: None => always)'),
    ('--grayscale-prob', dict(type=float, default=None, metavar='PCT'),
     'probability of converting to grayscale (default: None => never)'),
    ('--gaussian-blur-prob', dict(type=float, default=None, metavar='PCT'),
     'probability of a Gaussian blur (default: None => never)'),
    ('--aa', dict(type=str, default=None, metavar='NAME'),
     'auto-augment policy, e.g. "v0", "original" or "rand-m9-mstd0.5" (default: None)'),
    ('--aug-repeats', dict(type=float, default=0),
     'number of repeated augmentations per sample (distributed only, default: 0)'),
    ('--aug-splits', dict(type=int, default=0), 'number of augmentation splits (default: 0, valid: 0 or >= 2)'),
    ('--jsd-loss', dict(action='store_true', default=False),
     'Jensen-Shannon divergence + cross-entropy loss; use with --aug-splits'),
    ('--bce-loss', dict(action='store_true', default=False), 'binary cross-entropy loss (works with mixup/cutmix)'),
    ('--bce-sum', dict(action='store_true', default=False), 'sum the BCE loss over classes instead of averaging'),
    ('--bce-target-thresh', dict(type=float, default=None),
     'threshold binarizing soft BCE targets (default: None => off)'),
    ('--bce-pos-weight', dict(type=float, default=None), 'weight of positive targets in the BCE loss'),
    ('--reprob', dict(type=float, default=0., metavar='PCT'), 'random erasing probability (default: 0.)'),
    ('--remode', dict(type=str, default='pixel'), 'random erasing fill mode (default: "pixel")'),
    ('--recount', dict(type=int, default=1), 'random erasing count (default: 1)'),
    ('--resplit', dict(action='store_true', default=False), 'do not random-erase the first (clean) augmentation split'),
    ('--mixup', dict(type=float, default=0.0), 'mixup alpha; mixup is on if > 0 (default: 0.)'),
    ('--cutmix', dict(type=float, default=0.0), 'cutmix alpha; cutmix is on if > 0 (default: 0.)'),
    ('--cutmix-minmax', dict(type=float, nargs='+', default=None),
     'cutmix min/max box ratio; overrides alpha and turns cutmix on if set'),
    ('--mixup-prob', dict(type=float, default=1.0), 'probability of applying mixup or cutmix when either is on'),
    ('--mixup-switch-prob', dict(type=float, default=0.5), 'probability of cutmix instead of mixup when both are on'),
    ('--mixup-mode', dict(type=str, default='batch'),
     'how mixup/cutmix parameters are drawn: per "batch", "pair" or "elem"'),
    ('--mixup-off-epoch', dict(default=0, type=int, metavar='N'),
     'turn mixup off from this epoch on; 0 keeps it (default: 0)'),
    ('--smoothing', dict(type=float, default=0.1), 'label smoothing (default: 0.1)'),
    ('--train-interpolation', dict(type=str, default='random'),
     'training resize interpolation: random, bilinear, bicubic (default: "random")'),
    ('--drop', dict(type=float, default=0.0, metavar='PCT'), 'dropout rate (default: 0.)'),
    ('--drop-connect', dict(type=float, default=None, metavar='PCT'),
     'drop connect rate, DEPRECATED: use --drop-path (default: None)'),
    ('--drop-path', dict(type=float, default=None, metavar='PCT'), 'drop path (stochastic depth) rate (default: None)'),
    ('--drop-block', dict(type=float, default=None, metavar='PCT'), 'drop block rate (default: None)'),
)

_BN_ARGS = (
    ('--bn-momentum', dict(type=float, default=None), 'BatchNorm momentum override (if not None)'),
    ('--bn-eps', dict(type=float, default=None), 'BatchNorm epsilon override (if not None)'),
    ('--sync-bn', dict(action='store_true', default=False), 'synchronize BatchNorm statistics across processes'),
    ('--dist-bn', dict(type=str, default='reduce'),
     'after each epoch, "broadcast" or "reduce" BatchNorm statistics across processes, or "" to leave them '
     '(default: "reduce")'),
    ('--split-bn', dict(action='store_true', default=False), 'separate BatchNorm layers for each augmentation split'),
)

_EMA_ARGS = (
    ('--model-ema', dict(action='store_true', default=False),
     'track an exponential moving average (EMA) of the model weights'),
    ('--model-ema-force-cpu', dict(action='store_true', default=False),
     'keep the EMA on the CPU and validate it there'),
    ('--model-ema-decay', dict(type=float, default=0.9998), 'EMA decay factor (default: 0.9998)'),
    ('--model-ema-warmup', dict(action='store_true', default=False),
     'warm the EMA decay up from a lower value at the start of training'),
)

_MISC_ARGS = (
    ('--seed', dict(type=int, default=42, metavar='S'), 'random seed (default: 42)'),
    ('--worker-seeding', dict(type=str, default='all'), 'data loader worker seeding mode (default: all)'),
    ('--log-interval', dict(type=int, default=50, metavar='N'), 'batches between training status logs'),
    ('--val-interval', dict(type=int, default=1, metavar='N'), 'epochs between validations'),
    ('--recovery-interval', dict(type=int, default=0, metavar='N'), 'batches between recovery checkpoints (0 => off)'),
    ('--checkpoint-hist', dict(type=int, default=10, metavar='N'), 'number of checkpoints to keep (default: 10)'),
    ('-j --workers', dict(type=int, default=4, metavar='N'), 'data loading worker processes (default: 4)'),
    ('--save-images', dict(action='store_true', default=False),
     'save input batch images at each log interval, for debugging'),
    ('--pin-mem', dict(action='store_true', default=False),
     'pin CPU memory in the data loader for faster transfer to the GPU'),
    ('--no-prefetcher', dict(action='store_true', default=False), 'disable the fast prefetcher'),
    ('--output', dict(default='', type=str, metavar='PATH'), 'output folder (default: ./output/train)'),
    ('--experiment', dict(default='', type=str, metavar='NAME'),
     'name of the experiment, the sub-folder of the output'),
    ('--eval-metric', dict(default='top1', type=str, metavar='EVAL_METRIC'),
     'validation metric that picks the best checkpoint (default: "top1")'),
    ('--tta', dict(type=int, default=0, metavar='N'), 'test-time augmentation factor (default: 0 => off)'),
    ('--use-multi-epochs-loader', dict(action='store_true', default=False), 'reuse data loader workers across epochs'),
    ('--log-wandb', dict(action='store_true', default=False), 'log training and validation metrics to wandb'),
    ('--wandb-project', dict(default=None, type=str), 'wandb project name'),
    ('--wandb-tags', dict(default=[], type=str, nargs='+'), 'wandb tags'),
    ('--wandb-resume-id', dict(default='', type=str), 'wandb run id to resume logging to'),
)

_VARIABLE_SIZE_ARGS = (
    ('--train-img-sizes', dict(type=int, nargs='+', default=None, metavar='SIZE'),
     'training image sizes to sample from (default: None => fixed size)'),
    ('--train-batch-sizes', dict(type=int, nargs='+', default=None, metavar='N'),
     'batch size for each of --train-img-sizes (default: --batch-size for every size, as timm)'),
    ('--train-size-probs', dict(type=float, nargs='+', default=None, metavar='P'),
     'sampling probability of each training size (default: uniform)'),
    ('--train-size-schedule', dict(type=str, default='constant', choices=('constant', 'progressive')),
     'size sampling over training: constant, or progressive from small to large'),
    ('--train-size-schedule-spread', dict(type=float, default=0.65),
     'width of the size distribution of the progressive schedule'),
    ('--train-size-random-mix', dict(type=float, default=0.1),
     'fraction of uniformly random sizes mixed into the progressive schedule'),
    ('--train-batches-per-epoch --train-steps-per-epoch',
     dict(type=int, default=None, dest='train_batches_per_epoch', metavar='N'),
     'number of batches per training epoch (default: None => from the dataset)'),
    ('--variable-batch-loss-scale', dict(type=str, default='none', choices=('none', 'sqrt', 'linear')),
     'scale the loss by the batch size relative to --batch-size: none, sqrt or linear'),
)

_NAFLEX_ARGS = (
    ('--naflex-loader', dict(action='store_true', default=False),
     'use the NaFlex loader (variable resolution and aspect ratio patches)'),
    ('--naflex-train-seq-lens', dict(type=int, nargs='+', default=[128, 256, 576, 784, 1024]),
     'training patch sequence lengths to sample from'),
    ('--naflex-max-seq-len', dict(type=int, default=576), 'patch sequence length used for validation (default: 576)'),
    ('--naflex-patch-sizes', dict(type=int, nargs='+', default=None),
     'patch sizes to sample from during training (default: None => model patch size)'),
    ('--naflex-patch-size-probs', dict(type=float, nargs='+', default=None),
     'sampling probability of each of --naflex-patch-sizes (default: uniform)'),
    ('--naflex-loss-scale', dict(type=str, default='linear', choices=('none', 'sqrt', 'linear')),
     'scale the loss by the batch size of each sequence length: none, sqrt or linear'),
    ('--naflex-patchify-channels-first', dict(action='store_true', default=False),
     'patchify with channels first instead of channels last'),
)

_DISTILL_ARGS = (
    ('--kd-model-name', dict(default=None, type=str),
     'timm name of the teacher model; knowledge distillation is on if set'),
    ('--kd-distill-type', dict(default='logit', type=str, choices=('logit', 'feature', 'token')),
     "distill the teacher's logits, pooled features or distillation token"),
    ('--kd-loss-type', dict(default='kl', type=str), 'loss between student and teacher outputs (default: kl)'),
    ('--distill-loss-weight', dict(default=None, type=float),
     'weight of the distillation loss (default: None => distillation type default)'),
    ('--task-loss-weight', dict(default=None, type=float),
     'weight of the task (label) loss (default: None => distillation type default)'),
    ('--kd-temperature', dict(default=4.0, type=float), 'softmax temperature of logit distillation (default: 4.0)'),
    ('--kd-student-feature-dim', dict(default=None, type=int),
     'student feature dim for feature distillation (default: None => model num_features)'),
    ('--kd-teacher-feature-dim', dict(default=None, type=int),
     'teacher feature dim for feature distillation (default: None => model num_features)'),
    ('--kd-token-distill-type', dict(default='soft', type=str, choices=('soft', 'hard')),
     'token distillation on soft (KL) or hard (argmax) teacher targets'),
)

# (title, description, rows) of timm's groups, in the order of its train.py.
_TIMM_ARG_GROUPS = (
    ('Dataset parameters', None, _DATASET_ARGS),
    ('Model parameters', None, _MODEL_ARGS),
    ('Device parameters', None, _DEVICE_ARGS),
    ('Optimizer parameters', None, _OPTIMIZER_ARGS),
    ('Learning rate schedule parameters', None, _SCHEDULER_ARGS),
    ('Augmentation and regularization parameters', None, _AUGMENTATION_ARGS),
    ('Batch norm parameters', 'Only some models support these overrides.', _BN_ARGS),
    ('Model exponential moving average parameters', None, _EMA_ARGS),
    ('Miscellaneous parameters', None, _MISC_ARGS),
    ('Variable image size / batch size training', None, _VARIABLE_SIZE_ARGS),
    ('NaFlex loader parameters (NaFlex vision transformers)', None, _NAFLEX_ARGS),
    ('Knowledge distillation parameters', None, _DISTILL_ARGS),
)


# The timm_stim groups, in the same form (see add_recipe_args, add_run_args, add_hub_args).
_RECIPE_ARGS = (
    ('--lighting-std', dict(type=float, default=0.0, metavar='STD'),
     'alphastd of AlexNet PCA lighting noise; 0 => off (official ImageNet recipe: 0.1)'),
    ('--lighting-mode', dict(type=str, default='tensor', choices=('tensor', 'pil-uint8')),
     "tensor: PCA noise on the [0, 1] image after ToTensor (fb.resnet.torch); pil-uint8: as the ST authors' code, on "
     'the uint8 image before ToTensor, truncated, which moves each channel by 0 or -1 level (default: tensor)'),
    ('--uniform-augment', dict(action='store_true', default=False),
     'apply UniformAugment to the training images (see --uniform-augment-variant)'),
    ('--uniform-augment-ops', dict(type=int, default=2, metavar='N'),
     'UniformAugment operations per image (default: 2)'),
    ('--uniform-augment-variant', dict(type=str, default='trivialaugment', choices=('trivialaugment', 'lim2020')),
     "trivialaugment: the TrivialAugment code's UniAugment (fixed_standard space, after color jitter), as the ST "
     "authors ran it; lim2020: Lim et al.'s op list (invert, translate up to 0.45), after crop and flip "
     '(default: trivialaugment)'),
)

_RUN_ARGS = (
    ('--seed-scheme', dict(type=str, default='per-sample', choices=SEED_SCHEMES),
     'per-sample: every augmentation and every step draws from generators seeded by (--seed, rank, epoch, position), '
     'so --resume repeats the uninterrupted run exactly, with any number of data-loader workers, also from a mid-epoch '
     "recovery checkpoint; timm: seed once as timm's train.py does (its runs repeat bit for bit, resume does not) "
     '(default: per-sample)'),
    ('--nonfinite', dict(type=str, default='stop', choices=('stop', 'skip')),
     'a step whose loss, KL term or gradient norm is NaN or infinite: stop the run there (naming the epoch, step, '
     'term, AMP dtype and LR, and the --resume of the last good checkpoint), or skip the step (counted in the log and '
     'summary.csv) (default: stop)'),
    ('--nonfinite-max', dict(type=int, default=10, metavar='N'),
     'with --nonfinite skip: stop after N non-finite steps in a row (default: 10)'),
)

_HUB_ARGS = (
    ('--push-to-hub', dict(type=str, default=None, metavar='USER/REPO'),
     'publish the trained model to this Hub repository at the end (default: off)'),
    ('--hub-private', dict(action='store_true', default=False), 'create the Hub repository as private'),
    ('--hub-revision', dict(type=str, default=None, metavar='BRANCH'), 'branch to push to (default: the main branch)'),
    ('--hub-which', dict(type=str, default='best', choices=('best', 'last', 'ema')),
     'which weights to publish: best (model_best.pth.tar), last (last.pth.tar) or ema (the EMA weights of '
     'last.pth.tar, needs --model-ema) (default: best)'),
    ('--hub-create-pr', dict(action='store_true', default=False),
     'open a pull request with the files instead of committing to the branch'),
    ('--hub-replace-card', dict(action='store_true', default=False),
     'replace the model card on the Hub even when it was edited there (default: keep an edited card; a card '
     'timm-stim wrote and nobody changed is updated)'),
)


def _add_rows(parser: argparse.ArgumentParser, container, rows: Sequence) -> None:
    """Add the options of ``rows`` to ``container`` (an argument group), in order."""
    for row in rows:
        if isinstance(row, _Exclusive):
            _add_rows(parser, container.add_mutually_exclusive_group(), row)
            continue
        flags, kwargs, help_ = row
        flags = flags.split()
        target = container if flags[0].startswith('-') else parser
        # A copy, so that each parser has its own list and dict defaults (--scale, --model-kwargs, ...).
        target.add_argument(*flags, help=help_, **copy.deepcopy(kwargs))


def _add_arg_group(parser: argparse.ArgumentParser, title: str, description: Optional[str], rows: Sequence) -> None:
    """Add a group of options to ``parser`` from a table of rows (see ``_DATASET_ARGS``)."""
    _add_rows(parser, parser.add_argument_group(title, description), rows)


def add_recipe_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the group of options for the train transforms of the paper's recipe that timm lacks; returns ``parser``."""
    _add_arg_group(parser, 'Extra train transforms (timm_stim)', None, _RECIPE_ARGS)
    return parser


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the group of options for how a run draws its random numbers (exact resume, or timm's own stream); returns ``parser``."""
    _add_arg_group(parser, 'Reproducible runs (timm_stim)', None, _RUN_ARGS)
    return parser


def add_hub_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the group of options for publishing the trained model to the Hugging Face Hub; returns ``parser``."""
    _add_arg_group(parser, 'Hugging Face Hub (timm_stim)', None, _HUB_ARGS)
    return parser


class RecordingParser(TokenMaskingParser):
    """An ``ArgumentParser`` that remembers every ``add_argument`` call: its action by dest and its
    arguments by option string.

    argparse keeps a parser's actions in private attributes only; recording the calls (public
    API) lets ``-c`` YAML values be checked by each option's own action, and another command add
    an option exactly as ``train_stim.py`` defines it (``timm_stim.tools.checkpoints``).
    """

    def __init__(self, *args, **kwargs):
        self.definitions: Dict[str, Tuple[Tuple[Any, ...], Dict[str, Any]]] = {}
        self.actions: Dict[str, argparse.Action] = {}  # by dest
        super().__init__(*args, **kwargs)  # adds -h/--help through add_argument

    def _recorded(self, action: argparse.Action, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> argparse.Action:
        for option in action.option_strings:
            self.definitions[option] = (args, kwargs)
        self.actions[action.dest] = action
        return action

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        return self._recorded(super().add_argument(*args, **kwargs), args, kwargs)

    def add_argument_group(self, *args, **kwargs):
        return self._recording(super().add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group(self, **kwargs):
        return self._recording(super().add_mutually_exclusive_group(**kwargs))

    def _recording(self, group):
        """``group`` with its ``add_argument`` (and its own groups') recorded too."""
        add, add_exclusive = group.add_argument, group.add_mutually_exclusive_group

        def add_argument(*a, **k) -> argparse.Action:
            return self._recorded(add(*a, **k), a, k)

        def add_mutually_exclusive_group(**k):
            return self._recording(add_exclusive(**k))
        group.add_argument = add_argument
        group.add_mutually_exclusive_group = add_mutually_exclusive_group
        return group


def create_train_parser(config_cls: Type[StimConfig] = StimConfig,
                        ) -> Tuple[argparse.ArgumentParser, 'RecordingParser']:
    """Build the parsers of ``train_stim.py``: timm's train.py parsers plus the timm_stim groups.

    As in timm, a first parser reads only ``-c/--config`` so that its YAML can set the defaults
    of the main parser before the rest of the command line is parsed.

    Args:
        config_cls: ``StimConfig`` or a subclass: the ``--stim-*`` options.

    Returns:
        (config_parser, parser): the ``-c/--config`` parser and the main parser.
    """
    config_parser = argparse.ArgumentParser(description='Training Config', add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                               help='YAML config file specifying default arguments')

    parser = RecordingParser(
        prog=command_prog('train'),
        description='Train timm image models, optionally with Stimulative Training (ST / ST++). '
                    'Accepts every option of timm\'s train.py.')
    # Every float option (timm's --lr, --momentum, ... and ours) refuses NaN and infinities.
    parser.register('type', float, finite_float)
    # Not in timm's main parser (config_parser consumes it first); listed so --help shows it.
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config file whose keys are option dests (e.g. batch_size); '
                             'sets defaults that the command line overrides')
    for title, description, rows in _TIMM_ARG_GROUPS:
        _add_arg_group(parser, title, description, rows)

    add_config_args(parser, config_cls)
    add_recipe_args(parser)
    add_run_args(parser)
    add_hub_args(parser)
    return config_parser, parser


def copy_train_options(parser: argparse.ArgumentParser, options: Sequence[str],
                       title: str) -> Dict[str, argparse.Action]:
    """Add ``train_stim.py``'s definitions of ``options`` (same names, defaults, help) to ``parser``.

    The options are defined by ``create_train_parser`` so that a command shares them with training
    exactly (``-b``, ``--workers``, ``--img-size``, ``--mean``, ``--stim-space``, ...).

    Args:
        parser: the command's parser.
        options: option strings as train_stim.py spells them (``'--crop-pct'``).
        title: title of the argument group they are shown under in ``--help``.

    Returns:
        The added actions, by the option strings of ``options``.
    """
    _, train_parser = create_train_parser()
    missing = [o for o in options if o not in train_parser.definitions]
    if missing:
        raise KeyError(f'train_stim.py defines no option {", ".join(missing)}')
    group = parser.add_argument_group(title)
    added: Dict[int, argparse.Action] = {}  # one action per definition ('-b' and '--batch-size' are one)
    actions: Dict[str, argparse.Action] = {}
    for option in options:
        args, kwargs = train_parser.definitions[option]
        key = id(kwargs)
        if key not in added:
            added[key] = group.add_argument(*args, **kwargs)
        actions[option] = added[key]
    return actions
