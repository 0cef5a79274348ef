"""Command-line options of ``train_stim.py``: every option of timm's ``train.py`` plus ``--stim-*``.

``create_train_parser`` rebuilds timm 1.0.x's train.py parsers with the same option strings,
dest, type, default, nargs, action, const and choices (``tests/data/timm-train-flags.tsv`` holds
timm's table and the tests compare against it), so any timm command line or YAML config works
unchanged. The options timm lacks live in their own groups, so ``--help`` shows them apart:

* ``add_stim_args``: the stimulative-training options (the only place they are defined); their
  defaults mean plain timm training.
* ``add_recipe_args``: train transforms of the paper's recipe (PCA lighting, UniformAugment).
* ``add_hub_args``: publishing the result to the Hugging Face Hub.

``parse_args`` reads ``-c/--config`` YAML first, as timm's ``_parse_args`` does, but refuses a
missing file and unknown keys instead of failing later or ignoring them.
"""
import argparse
import difflib
from typing import Any, Dict, Optional, Sequence, Tuple, Type

import yaml
from timm.utils import ParseKwargs

__all__ = [
    'create_train_parser', 'add_stim_args', 'add_recipe_args', 'add_run_args', 'add_hub_args', 'parse_args',
    'INFORMATIONAL_CONFIG_KEYS',
]

# Keys train_stim.py adds to the args.yaml it writes next to the checkpoints (resolved at run
# time, not options). They are accepted and dropped in -c files so that an output's args.yaml
# can be fed back as-is to reproduce the run.
INFORMATIONAL_CONFIG_KEYS = ('stim_resolved', 'prefetcher', 'distributed', 'world_size', 'rank', 'device_id',
                             'config')

# Keys of args.yaml files written by older timm versions' train.py, whose options timm has since
# removed: key -> (value that means "off", what to do instead when it is on).
LEGACY_CONFIG_KEYS = {
    'native_amp': (False, 'native AMP is timm\'s only AMP now: use amp: true'),
    'apex_amp': (False, 'NVIDIA apex AMP was removed from timm: use amp: true (native torch AMP)'),
    'amp_impl': ('native', 'timm has only native torch AMP now: drop amp_impl'),
    'aot_autograd': (False, 'functorch AOT autograd was removed from timm: use torchcompile: inductor'),
}


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Dataset parameters')
    # Positional, so it is added to the parser itself (argument groups hold optionals in timm).
    parser.add_argument('data', nargs='?', metavar='DIR', const=None,
                        help='path to dataset (positional is *deprecated*, use --data-dir)')
    group.add_argument('--data-dir', metavar='DIR',
                       help='path to dataset (root dir)')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='dataset type + name "<type>/<name>", e.g. torch/cifar10, hfds/..., '
                            'embedded/digits (default: ImageFolder/ImageTar if empty)')
    group.add_argument('--train-split', metavar='NAME', default='train',
                       help='dataset train split (default: train)')
    group.add_argument('--val-split', metavar='NAME', default='validation',
                       help='dataset validation split (default: validation)')
    group.add_argument('--train-num-samples', default=None, type=int, metavar='N',
                       help='number of samples in the train split, for iterable datasets')
    group.add_argument('--val-num-samples', default=None, type=int, metavar='N',
                       help='number of samples in the validation split, for iterable datasets')
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='allow download of torch/ and tfds/ datasets that support it')
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME',
                       help='path to a class name -> index mapping file (default: "")')
    group.add_argument('--input-img-mode', default=None, type=str,
                       help='image mode the dataset converts inputs to (e.g. RGB, L)')
    group.add_argument('--input-key', default=None, type=str,
                       help='dataset field holding the input image')
    group.add_argument('--target-key', default=None, type=str,
                       help='dataset field holding the target label')
    group.add_argument('--dataset-trust-remote-code', action='store_true', default=False,
                       help='let Hugging Face datasets run code from the dataset repository')


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', default='resnet50', type=str, metavar='MODEL',
                       help='name of the timm model to train (default: "resnet50")')
    group.add_argument('--pretrained', action='store_true', default=False,
                       help='start from the pretrained weights of the model (if available)')
    group.add_argument('--pretrained-path', default=None, type=str,
                       help='load this file as the pretrained weights, adapting classifier and input '
                            'channels like a pretrained download (default: none)')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='load this checkpoint into the model after creation (default: none)')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help='resume model and optimizer state from this checkpoint (default: none)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='do not restore the optimizer state when resuming')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='number of label classes (model default if None)')
    group.add_argument('--gp', default=None, type=str, metavar='POOL',
                       help='global pool type: fast, avg, max, avgmax, avgmaxc (model default if None)')
    group.add_argument('--img-size', type=int, default=None, metavar='N',
                       help='square image size (default: None => model default)')
    group.add_argument('--in-chans', type=int, default=None, metavar='N',
                       help='number of input image channels (default: None => 3)')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N N N',
                       help='input dimensions C H W, e.g. --input-size 3 224 224 (model default if empty)')
    group.add_argument('--crop-pct', default=None, type=float, metavar='N',
                       help='center crop fraction of the validation images')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                       help='override the mean pixel value of the dataset')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD',
                       help='override the pixel std deviation of the dataset')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME',
                       help='image resize interpolation (overrides the model default)')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N',
                       help='training batch size per process (default: 128)')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='validation batch size (default: None => --batch-size)')
    group.add_argument('--channels-last', action='store_true', default=False,
                       help='use the channels_last memory layout')
    group.add_argument('--fuser', default='', type=str,
                       help="TorchScript fuser: '', 'te', 'old' or 'nvfuser'")
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                       help='number of batches to accumulate gradients over per optimizer step')
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='enable gradient checkpointing through model blocks/stages')
    group.add_argument('--fast-norm', action='store_true', default=False,
                       help='enable timm\'s experimental fast normalization layers')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='extra keyword arguments for create_model, as key=value')
    group.add_argument('--head-init-scale', default=None, type=float,
                       help='scale applied to the classifier head weights at init')
    group.add_argument('--head-init-bias', default=None, type=float,
                       help='value the classifier head bias is initialized to')
    group.add_argument('--torchcompile-mode', type=str, default=None,
                       help='torch.compile mode (default: None => torch default)')

    # Scripting and compiling the model are two alternative ways to optimize it: timm refuses both.
    scripting_group = group.add_mutually_exclusive_group()
    scripting_group.add_argument('--torchscript', dest='torchscript', action='store_true',
                                 help='torch.jit.script the full model')
    scripting_group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                                 help='torch.compile the model with this backend (default when given '
                                      'without a value: inductor)')


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Device parameters')
    group.add_argument('--device', default='cuda', type=str,
                       help='device (accelerator) to use, e.g. cuda, cpu, mps (default: cuda)')
    group.add_argument('--amp', action='store_true', default=False,
                       help='use mixed precision training (automatic mixed precision)')
    group.add_argument('--amp-dtype', default='float16', type=str,
                       help='lower precision AMP dtype: float16 or bfloat16 (default: float16)')
    group.add_argument('--model-dtype', default=None, type=str,
                       help='dtype of the model weights without AMP: float32, float16, bfloat16 '
                            '(default: None => float32)')
    group.add_argument('--no-ddp-bb', action='store_true', default=False,
                       help='turn off broadcast of buffers in native DistributedDataParallel')
    group.add_argument('--synchronize-step', action='store_true', default=False,
                       help='synchronize the device at the end of each step (for accurate timings)')
    group.add_argument('--local_rank', default=0, type=int,
                       help='local process rank (set by the distributed launcher)')
    group.add_argument('--device-modules', default=None, type=str, nargs='+',
                       help='Python modules to import that register a device backend')


def _add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER',
                       help='optimizer name, see timm.optim.list_optimizers() (default: "sgd")')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON',
                       help='optimizer epsilon (default: None => optimizer default)')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA',
                       help='optimizer betas (default: None => optimizer default)')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M',
                       help='optimizer momentum (default: 0.9)')
    group.add_argument('--weight-decay', type=float, default=2e-5,
                       help='weight decay (default: 2e-5)')
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM',
                       help='gradient clipping threshold (default: None => no clipping)')
    group.add_argument('--clip-mode', type=str, default='norm',
                       help='gradient clipping mode: norm, value or agc (default: norm)')
    group.add_argument('--layer-decay', type=float, default=None,
                       help='layer-wise learning rate decay factor (default: None => off)')
    group.add_argument('--layer-decay-min-scale', type=float, default=0,
                       help='lower bound of the layer-wise learning rate scale (default: 0)')
    group.add_argument('--layer-decay-no-opt-scale', type=float, default=None,
                       help='leave layers whose layer-decay scale is below this out of the optimizer')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='extra keyword arguments for the optimizer, as key=value')


def _add_scheduler_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER',
                       help='LR scheduler (default: "cosine")')
    group.add_argument('--sched-on-updates', action='store_true', default=False,
                       help='step the LR scheduler on every optimizer update instead of every epoch')
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='learning rate; when None it is computed from --lr-base and the global batch size')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                       help='base learning rate: lr = lr_base * global_batch_size / lr_base_size')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV',
                       help='batch size divisor of the base learning rate (default: 256)')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help='how lr scales with batch size: "linear" or "sqrt" (empty => by optimizer)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct',
                       help='epoch fractions where learning rate noise turns on/off')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT',
                       help='learning rate noise limit percent (default: 0.67)')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV',
                       help='learning rate noise std-dev (default: 1.0)')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT',
                       help='multiplier of the learning rate cycle length (default: 1.0)')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT',
                       help='decay of the peak learning rate at each new cycle (default: 0.5)')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N',
                       help='number of learning rate cycles; cycles are on if > 1')
    group.add_argument('--lr-k-decay', type=float, default=1.0,
                       help='k-decay for cosine/poly schedules (default: 1.0)')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR',
                       help='learning rate at the start of warmup (default: 1e-5)')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR',
                       help='lowest learning rate of schedules that decay to 0 (default: 0)')
    group.add_argument('--epochs', type=int, default=300, metavar='N',
                       help='number of epochs to train (default: 300)')
    group.add_argument('--epoch-repeats', type=float, default=0., metavar='N',
                       help='number of passes over the dataset per training epoch (0 => 1)')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N',
                       help='epoch number to start from (useful on restarts)')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help='increasing epochs at which the multistep schedule decays the learning rate')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N',
                       help='epoch interval between learning rate decays (step schedule)')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N',
                       help='epochs of learning rate warmup, if the scheduler supports it')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='keep the warmup epochs out of the decay schedule')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N',
                       help='epochs at min_lr after a cyclic schedule ends')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N',
                       help='patience epochs of the plateau scheduler (default: 10)')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE',
                       help='learning rate decay factor (default: 0.1)')


def _add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='disable all training augmentation, overriding the other augmentation options')
    group.add_argument('--train-crop-mode', type=str, default=None,
                       help='training random crop mode (default: None => random resized crop)')
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                       help='random resized crop area range (default: 0.08 1.0)')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='random resized crop aspect ratio range (default: 0.75 1.33)')
    group.add_argument('--hflip', type=float, default=0.5,
                       help='horizontal flip probability')
    group.add_argument('--vflip', type=float, default=0.,
                       help='vertical flip probability')
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT',
                       help='color jitter strength (default: 0.4)')
    group.add_argument('--color-jitter-prob', type=float, default=None, metavar='PCT',
                       help='probability of applying color jitter (default: None => always)')
    group.add_argument('--grayscale-prob', type=float, default=None, metavar='PCT',
                       help='probability of converting to grayscale (default: None => never)')
    group.add_argument('--gaussian-blur-prob', type=float, default=None, metavar='PCT',
                       help='probability of a Gaussian blur (default: None => never)')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='auto-augment policy, e.g. "v0", "original" or "rand-m9-mstd0.5" (default: None)')
    group.add_argument('--aug-repeats', type=float, default=0,
                       help='number of repeated augmentations per sample (distributed only, default: 0)')
    group.add_argument('--aug-splits', type=int, default=0,
                       help='number of augmentation splits (default: 0, valid: 0 or >= 2)')
    group.add_argument('--jsd-loss', action='store_true', default=False,
                       help='Jensen-Shannon divergence + cross-entropy loss; use with --aug-splits')
    group.add_argument('--bce-loss', action='store_true', default=False,
                       help='binary cross-entropy loss (works with mixup/cutmix)')
    group.add_argument('--bce-sum', action='store_true', default=False,
                       help='sum the BCE loss over classes instead of averaging')
    group.add_argument('--bce-target-thresh', type=float, default=None,
                       help='threshold binarizing soft BCE targets (default: None => off)')
    group.add_argument('--bce-pos-weight', type=float, default=None,
                       help='weight of positive targets in the BCE loss')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT',
                       help='random erasing probability (default: 0.)')
    group.add_argument('--remode', type=str, default='pixel',
                       help='random erasing fill mode (default: "pixel")')
    group.add_argument('--recount', type=int, default=1,
                       help='random erasing count (default: 1)')
    group.add_argument('--resplit', action='store_true', default=False,
                       help='do not random-erase the first (clean) augmentation split')
    group.add_argument('--mixup', type=float, default=0.0,
                       help='mixup alpha; mixup is on if > 0 (default: 0.)')
    group.add_argument('--cutmix', type=float, default=0.0,
                       help='cutmix alpha; cutmix is on if > 0 (default: 0.)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None,
                       help='cutmix min/max box ratio; overrides alpha and turns cutmix on if set')
    group.add_argument('--mixup-prob', type=float, default=1.0,
                       help='probability of applying mixup or cutmix when either is on')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5,
                       help='probability of cutmix instead of mixup when both are on')
    group.add_argument('--mixup-mode', type=str, default='batch',
                       help='how mixup/cutmix parameters are drawn: per "batch", "pair" or "elem"')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N',
                       help='turn mixup off from this epoch on; 0 keeps it (default: 0)')
    group.add_argument('--smoothing', type=float, default=0.1,
                       help='label smoothing (default: 0.1)')
    group.add_argument('--train-interpolation', type=str, default='random',
                       help='training resize interpolation: random, bilinear, bicubic (default: "random")')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT',
                       help='dropout rate (default: 0.)')
    group.add_argument('--drop-connect', type=float, default=None, metavar='PCT',
                       help='drop connect rate, DEPRECATED: use --drop-path (default: None)')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT',
                       help='drop path (stochastic depth) rate (default: None)')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT',
                       help='drop block rate (default: None)')


def _add_bn_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Batch norm parameters', 'Only some models support these overrides.')
    group.add_argument('--bn-momentum', type=float, default=None,
                       help='BatchNorm momentum override (if not None)')
    group.add_argument('--bn-eps', type=float, default=None,
                       help='BatchNorm epsilon override (if not None)')
    group.add_argument('--sync-bn', action='store_true', default=False,
                       help='synchronize BatchNorm statistics across processes')
    group.add_argument('--dist-bn', type=str, default='reduce',
                       help='after each epoch, "broadcast" or "reduce" BatchNorm statistics across '
                            'processes, or "" to leave them (default: "reduce")')
    group.add_argument('--split-bn', action='store_true', default=False,
                       help='separate BatchNorm layers for each augmentation split')


def _add_ema_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action='store_true', default=False,
                       help='track an exponential moving average (EMA) of the model weights')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='keep the EMA on the CPU and validate it there')
    group.add_argument('--model-ema-decay', type=float, default=0.9998,
                       help='EMA decay factor (default: 0.9998)')
    group.add_argument('--model-ema-warmup', action='store_true', default=False,
                       help='warm the EMA decay up from a lower value at the start of training')


def _add_misc_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--seed', type=int, default=42, metavar='S',
                       help='random seed (default: 42)')
    group.add_argument('--worker-seeding', type=str, default='all',
                       help='data loader worker seeding mode (default: all)')
    group.add_argument('--log-interval', type=int, default=50, metavar='N',
                       help='batches between training status logs')
    group.add_argument('--val-interval', type=int, default=1, metavar='N',
                       help='epochs between validations')
    group.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                       help='batches between recovery checkpoints (0 => off)')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N',
                       help='number of checkpoints to keep (default: 10)')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N',
                       help='data loading worker processes (default: 4)')
    group.add_argument('--save-images', action='store_true', default=False,
                       help='save input batch images at each log interval, for debugging')
    group.add_argument('--pin-mem', action='store_true', default=False,
                       help='pin CPU memory in the data loader for faster transfer to the GPU')
    group.add_argument('--no-prefetcher', action='store_true', default=False,
                       help='disable the fast prefetcher')
    group.add_argument('--output', default='', type=str, metavar='PATH',
                       help='output folder (default: ./output/train)')
    group.add_argument('--experiment', default='', type=str, metavar='NAME',
                       help='name of the experiment, the sub-folder of the output')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC',
                       help='validation metric that picks the best checkpoint (default: "top1")')
    group.add_argument('--tta', type=int, default=0, metavar='N',
                       help='test-time augmentation factor (default: 0 => off)')
    group.add_argument('--use-multi-epochs-loader', action='store_true', default=False,
                       help='reuse data loader workers across epochs')
    group.add_argument('--log-wandb', action='store_true', default=False,
                       help='log training and validation metrics to wandb')
    group.add_argument('--wandb-project', default=None, type=str,
                       help='wandb project name')
    group.add_argument('--wandb-tags', default=[], type=str, nargs='+',
                       help='wandb tags')
    group.add_argument('--wandb-resume-id', default='', type=str,
                       help='wandb run id to resume logging to')


def _add_variable_size_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Variable image size / batch size training')
    group.add_argument('--train-img-sizes', type=int, nargs='+', default=None, metavar='SIZE',
                       help='training image sizes to sample from (default: None => fixed size)')
    group.add_argument('--train-batch-sizes', type=int, nargs='+', default=None, metavar='N',
                       help='batch size for each of --train-img-sizes (default: scaled from --batch-size)')
    group.add_argument('--train-size-probs', type=float, nargs='+', default=None, metavar='P',
                       help='sampling probability of each training size (default: uniform)')
    group.add_argument('--train-size-schedule', type=str, default='constant', choices=('constant', 'progressive'),
                       help='size sampling over training: constant, or progressive from small to large')
    group.add_argument('--train-size-schedule-spread', type=float, default=0.65,
                       help='width of the size distribution of the progressive schedule')
    group.add_argument('--train-size-random-mix', type=float, default=0.1,
                       help='fraction of uniformly random sizes mixed into the progressive schedule')
    group.add_argument('--train-batches-per-epoch', '--train-steps-per-epoch', type=int, default=None,
                       dest='train_batches_per_epoch', metavar='N',
                       help='number of batches per training epoch (default: None => from the dataset)')
    group.add_argument('--variable-batch-loss-scale', type=str, default='none', choices=('none', 'sqrt', 'linear'),
                       help='scale the loss by the batch size relative to --batch-size: none, sqrt or linear')


def _add_naflex_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('NaFlex loader parameters (NaFlex vision transformers)')
    group.add_argument('--naflex-loader', action='store_true', default=False,
                       help='use the NaFlex loader (variable resolution and aspect ratio patches)')
    group.add_argument('--naflex-train-seq-lens', type=int, nargs='+', default=[128, 256, 576, 784, 1024],
                       help='training patch sequence lengths to sample from')
    group.add_argument('--naflex-max-seq-len', type=int, default=576,
                       help='patch sequence length used for validation (default: 576)')
    group.add_argument('--naflex-patch-sizes', type=int, nargs='+', default=None,
                       help='patch sizes to sample from during training (default: None => model patch size)')
    group.add_argument('--naflex-patch-size-probs', type=float, nargs='+', default=None,
                       help='sampling probability of each of --naflex-patch-sizes (default: uniform)')
    group.add_argument('--naflex-loss-scale', type=str, default='linear', choices=('none', 'sqrt', 'linear'),
                       help='scale the loss by the batch size of each sequence length: none, sqrt or linear')
    group.add_argument('--naflex-patchify-channels-first', action='store_true', default=False,
                       help='patchify with channels first instead of channels last')


def _add_distill_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Knowledge distillation parameters')
    group.add_argument('--kd-model-name', default=None, type=str,
                       help='timm name of the teacher model; knowledge distillation is on if set')
    group.add_argument('--kd-distill-type', default='logit', type=str, choices=('logit', 'feature', 'token'),
                       help='distill the teacher\'s logits, pooled features or distillation token')
    group.add_argument('--kd-loss-type', default='kl', type=str,
                       help='loss between student and teacher outputs (default: kl)')
    group.add_argument('--distill-loss-weight', default=None, type=float,
                       help='weight of the distillation loss (default: None => distillation type default)')
    group.add_argument('--task-loss-weight', default=None, type=float,
                       help='weight of the task (label) loss (default: None => distillation type default)')
    group.add_argument('--kd-temperature', default=4.0, type=float,
                       help='softmax temperature of logit distillation (default: 4.0)')
    group.add_argument('--kd-student-feature-dim', default=None, type=int,
                       help='student feature dim for feature distillation (default: None => model num_features)')
    group.add_argument('--kd-teacher-feature-dim', default=None, type=int,
                       help='teacher feature dim for feature distillation (default: None => model num_features)')
    group.add_argument('--kd-token-distill-type', default='soft', type=str, choices=('soft', 'hard'),
                       help='token distillation on soft (KL) or hard (argmax) teacher targets')


def add_stim_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the stimulative-training options (the one place they are defined).

    Every default means plain timm training: ``--stim-subnets 0`` turns ST off whatever the
    other ``--stim-*`` values are.

    Args:
        parser: parser to add the "Stimulative training" group to.

    Returns:
        The same parser, for chaining.
    """
    group = parser.add_argument_group(
        'Stimulative training',
        'Stimulative Training (ST) and ST++ of residual networks: each step also trains K sampled '
        'subnetworks towards the full network (KL). Off unless --stim-subnets > 0.')
    group.add_argument('--stim-subnets', type=int, default=0, metavar='K',
                       help='subnetworks per step; 0 turns stimulative training off unless --stim-budget is '
                            'given (ST: 1, ST++: 6)')
    group.add_argument('--stim-budget', type=float, default=None, metavar='B',
                       help='instead of K: the expected extra cost per step, in full forward+backward passes, '
                            'estimated from FLOPs of the space and the input sizes; K is the most subnetworks '
                            'within it (printed and saved in args.yaml). 1: a step costs about two plain steps '
                            '(default: None => --stim-subnets)')
    group.add_argument('--stim-space', type=str, default='uniform', metavar='S',
                       help='sampling space: uniform, stpp, keep:K, or the largest number of blocks each '
                            'stage may drop, e.g. "0,1,3,0" (default: uniform)')
    group.add_argument('--stim-mode', type=str, default='depth', choices=('depth', 'drop'),
                       help='depth: keep the first blocks of each stage (official); '
                            'drop: drop randomly chosen blocks (default: depth)')
    group.add_argument('--stim-norm', type=str, default='none', choices=('none', 'kl', 'all'),
                       help='logit normalization: none; kl: KL- on both logits; all: the task loss also '
                            'sees normalized logits, as the official ST++ code (default: none)')
    group.add_argument('--stim-amplitude', type=float, default=1.0, metavar='A',
                       help='amplitude of the normalized logits of KL- (default: 1.0)')
    group.add_argument('--stim-temperature', type=float, default=1.0, metavar='T',
                       help='softmax temperature of the subnetwork KL (default: 1.0)')
    group.add_argument('--stim-weight', type=float, default=1.0, metavar='W',
                       help="weight of each subnetwork's KL term (default: 1.0)")
    group.add_argument('--stim-weight-sched', type=str, default='const', choices=('const', 'cos-up', 'cos-down'),
                       help='KL weight over training: constant, cosine up from 0 or cosine down to 0 '
                            '(official kl_cos / kl_rcos) (default: const)')
    group.add_argument('--stim-weight-sched-step', type=str, default='batch', choices=('batch', 'epoch'),
                       help='move the KL weight schedule every batch, or once per epoch as the official code '
                            '(default: batch)')
    group.add_argument('--stim-weight-warmup', type=float, default=None, metavar='E',
                       help='a stable start: the KL weight rises linearly from 0 over the first E epochs; 0 => off '
                            '(default: --warmup-epochs + 1 when the learning rate warms up per epoch, 0 when it '
                            'warms up per update (--sched-on-updates) or not at all)')
    # Scales < 1 feed subnetworks random smaller inputs (ST++); both 1.0 keeps the full size.
    group.add_argument('--stim-min-scale', type=float, default=1.0, metavar='F',
                       help='smallest subnetwork input side as a fraction of the training size (ST++: 0.43)')
    group.add_argument('--stim-max-scale', type=float, default=1.0, metavar='F',
                       help='largest subnetwork input side as a fraction of the training size (ST++: 1)')
    group.add_argument('--stim-resize', type=str, default='independent', choices=('independent', 'official'),
                       help='how smaller subnetwork inputs are made: independent (each subnetwork resizes the '
                            'original batch) or official (each resizes the previous subnetwork\'s input and '
                            'normalizes it again with --mean/--std, as the authors\' code) (default: independent)')
    group.add_argument('--stim-antialias', action=argparse.BooleanOptionalAction, default=None,
                       help='antialiased resizing of smaller subnetwork inputs (default: on for --stim-resize '
                            'independent, off for official, as the official runs)')
    group.add_argument('--stim-start-epoch', type=int, default=0, metavar='E',
                       help='first epoch that trains subnetworks (default: 0)')
    group.add_argument('--stim-bn', type=str, default='freeze', choices=('freeze', 'update'),
                       help='BatchNorm running statistics during subnetwork passes: freeze, or update '
                            '(official) (default: freeze)')
    group.add_argument('--stim-bn-recal', type=int, default=0, metavar='N',
                       help='re-estimate the full network\'s BatchNorm statistics on N training images '
                            'before each validation; 0 => off (official: 2000)')
    return parser


def add_recipe_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the train transforms of the paper's recipe that timm lacks.

    Args:
        parser: parser to add the group to.

    Returns:
        The same parser, for chaining.
    """
    group = parser.add_argument_group('Extra train transforms (timm_stim)')
    group.add_argument('--lighting-std', type=float, default=0.0, metavar='STD',
                       help='alphastd of AlexNet PCA lighting noise; 0 => off (official ImageNet recipe: 0.1)')
    group.add_argument('--lighting-mode', type=str, default='tensor', choices=('tensor', 'pil-uint8'),
                       help='tensor: PCA noise on the [0, 1] image after ToTensor (fb.resnet.torch); pil-uint8: as '
                            'the ST authors\' code, on the uint8 image before ToTensor, truncated, which moves '
                            'each channel by 0 or -1 level (default: tensor)')
    group.add_argument('--uniform-augment', action='store_true', default=False,
                       help='apply UniformAugment to the training images (see --uniform-augment-variant)')
    group.add_argument('--uniform-augment-ops', type=int, default=2, metavar='N',
                       help='UniformAugment operations per image (default: 2)')
    group.add_argument('--uniform-augment-variant', type=str, default='trivialaugment',
                       choices=('trivialaugment', 'lim2020'),
                       help='trivialaugment: the TrivialAugment code\'s UniAugment (fixed_standard space, after '
                            'color jitter), as the ST authors ran it; lim2020: Lim et al.\'s op list (invert, '
                            'translate up to 0.45), after crop and flip (default: trivialaugment)')
    return parser


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of how a run draws its random numbers (exact resume, or timm's own stream).

    Args:
        parser: parser to add the group to.

    Returns:
        The same parser, for chaining.
    """
    from .seeding import SEED_SCHEMES
    group = parser.add_argument_group('Reproducible runs (timm_stim)')
    group.add_argument('--seed-scheme', type=str, default='per-sample', choices=SEED_SCHEMES,
                       help='per-sample: every augmentation and every step draws from generators seeded by '
                            '(--seed, rank, epoch, position), so --resume repeats the uninterrupted run exactly, '
                            'with any number of data-loader workers, also from a mid-epoch recovery checkpoint; '
                            'timm: seed once as timm\'s train.py does (its runs repeat bit for bit, resume does '
                            'not) (default: per-sample)')
    return parser


def add_hub_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options that publish the trained model to the Hugging Face Hub.

    Args:
        parser: parser to add the group to.

    Returns:
        The same parser, for chaining.
    """
    group = parser.add_argument_group('Hugging Face Hub (timm_stim)')
    group.add_argument('--push-to-hub', type=str, default=None, metavar='USER/REPO',
                       help='publish the trained model to this Hub repository at the end (default: off)')
    group.add_argument('--hub-private', action='store_true', default=False,
                       help='create the Hub repository as private')
    group.add_argument('--hub-revision', type=str, default=None, metavar='BRANCH',
                       help='branch to push to (default: the main branch)')
    group.add_argument('--hub-which', type=str, default='best', choices=('best', 'last', 'ema'),
                       help='which weights to publish: best (model_best.pth.tar), last (last.pth.tar) or ema '
                            '(the EMA weights of last.pth.tar, needs --model-ema) (default: best)')
    group.add_argument('--hub-create-pr', action='store_true', default=False,
                       help='open a pull request with the files instead of committing to the branch')
    group.add_argument('--hub-replace-card', action='store_true', default=False,
                       help='replace the model card on the Hub even when it was edited there (default: keep an '
                            'edited card; a card timm-stim wrote and nobody changed is updated)')
    return parser


def create_train_parser(parser_class: Type[argparse.ArgumentParser] = argparse.ArgumentParser,
                        ) -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Build the parsers of ``train_stim.py``: timm's train.py parsers plus the timm_stim groups.

    As in timm, a first parser reads only ``-c/--config`` so that its YAML can set the defaults
    of the main parser before the rest of the command line is parsed.

    Args:
        parser_class: class of the main parser (the tools pass one that records the definitions,
            to share options with training).

    Returns:
        (config_parser, parser): the ``-c/--config`` parser and the main parser.
    """
    config_parser = argparse.ArgumentParser(description='Training Config', add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                               help='YAML config file specifying default arguments')

    parser = parser_class(
        description='Train timm image models, optionally with Stimulative Training (ST / ST++). '
                    'Accepts every option of timm\'s train.py.')
    # Not in timm's main parser (config_parser consumes it first); listed so --help shows it.
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config file whose keys are option dests (e.g. batch_size); '
                             'sets defaults that the command line overrides')
    _add_dataset_args(parser)
    _add_model_args(parser)
    _add_device_args(parser)
    _add_optimizer_args(parser)
    _add_scheduler_args(parser)
    _add_augmentation_args(parser)
    _add_bn_args(parser)
    _add_ema_args(parser)
    _add_misc_args(parser)
    _add_variable_size_args(parser)
    _add_naflex_args(parser)
    _add_distill_args(parser)

    add_stim_args(parser)
    add_recipe_args(parser)
    add_run_args(parser)
    add_hub_args(parser)
    return config_parser, parser


def _load_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read a ``-c`` YAML file and check its keys against the parser's dests.

    timm's ``_parse_args`` passes the file straight to ``set_defaults``, so a misspelt key is
    silently ignored and the run trains with the wrong settings; here it stops before any work.

    Args:
        path: YAML file path, or the name of a shipped recipe (``timm_stim.training.recipes``).
        parser: the main parser (its dests are the valid keys).

    Returns:
        The defaults to set, with the informational keys of an output's args.yaml dropped.
    """
    from .recipes import list_recipes, resolve_config_path
    resolved = resolve_config_path(path)
    if resolved is None:
        parser.error(f'config file {path!r} (-c/--config) does not exist and is not the name of a shipped recipe '
                     f'({", ".join(r.name for r in list_recipes())}).')
    path = resolved
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        parser.error(f'config file {path!r} (-c/--config) could not be read as YAML: {e}')
    if cfg is None:  # an empty (or all-comments) file sets nothing, as in timm
        return {}
    if not isinstance(cfg, dict):
        parser.error(f'config file {path!r} (-c/--config) must be a mapping of option dests to values, '
                     f'got a {type(cfg).__name__}.')

    cfg = _translate_legacy_keys(cfg, path, parser)
    dests = sorted({a.dest for a in parser._actions if a.dest not in ('help', argparse.SUPPRESS)})
    unknown = [k for k in cfg if k not in dests and k not in INFORMATIONAL_CONFIG_KEYS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key).replace('-', '_'), dests, n=1)
            hints.append(repr(key) + (f' (did you mean {close[0]!r}?)' if close else ''))
        parser.error(f'config file {path!r} has unknown option(s): {", ".join(hints)}. '
                     f'Keys are option dests, e.g. batch_size for --batch-size.')
    cfg = {k: v for k, v in cfg.items() if k not in INFORMATIONAL_CONFIG_KEYS}
    actions = {a.dest: a for a in parser._actions}
    return {key: _config_value(actions[key], value, path, parser) for key, value in cfg.items()}


def _translate_legacy_keys(cfg: Dict[str, Any], path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Accept the keys of older timm args.yaml files: dropped when off, refused with the replacement when on."""
    out = {}
    for key, value in cfg.items():
        if key not in LEGACY_CONFIG_KEYS:
            out[key] = value
            continue
        off, instead = LEGACY_CONFIG_KEYS[key]
        if key == 'native_amp' and value is True:
            out.setdefault('amp', True)  # what --native-amp meant
        elif value not in (off, None):
            parser.error(f'config file {path!r}: {key}: {value!r} is an option of an older timm that no longer '
                         f'exists; {instead}.')
    return out


def _config_value(action: argparse.Action, value: Any, path: str, parser: argparse.ArgumentParser) -> Any:
    """A YAML value checked and converted exactly as argparse checks the same value on the command line.

    YAML gives typed values that ``set_defaults`` would take as they are, bypassing the option's
    ``type``, ``choices`` and ``nargs`` (``stim_subnets: 2.7`` would train with 2.7 subnetworks).
    Each value is passed through the option's ``type`` as its command-line text would be.
    """
    where = f'config file {path!r}: {action.dest}: {value!r}'
    if value is None:
        return None  # "no value", as the defaults of many options
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            parser.error(f'{where} is not true or false (the option {_flag(action)} is a switch).')
        return value
    many = action.nargs in ('*', '+') or isinstance(action.nargs, int)
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            parser.error(f'{where} must be a mapping of keyword arguments, e.g. {{key: value}}.')
        return value
    if many:
        if not isinstance(value, (list, tuple)):
            if action.nargs in ('*', '+'):
                value = [value]  # argparse accepts one value for a list option too
            else:
                parser.error(f'{where} must be a list of {action.nargs} values.')
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            parser.error(f'{where} must be a list of {action.nargs} values, got {len(value)}.')
        return [_convert(action, item, where, parser) for item in value]
    if isinstance(value, (list, tuple, dict)):
        parser.error(f'{where} must be a single value.')
    return _convert(action, value, where, parser)


def _flag(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def _convert(action: argparse.Action, value: Any, where: str, parser: argparse.ArgumentParser) -> Any:
    if action.type is not None:
        if isinstance(value, bool):
            parser.error(f'{where} is a boolean; expected a value of type {getattr(action.type, "__name__", action.type)}.')
        try:
            value = action.type(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            parser.error(f'{where} is not a valid {getattr(action.type, "__name__", "value")} '
                         f'(as {_flag(action)} on the command line).')
    if action.choices is not None and value not in action.choices:
        parser.error(f'{where} is not one of {", ".join(map(str, action.choices))} '
                     f'(the choices of {_flag(action)}).')
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Parse the command line like timm's train.py ``_parse_args``, checking the config file.

    ``-c/--config`` is parsed first; its YAML (keys are option dests) becomes the defaults of the
    main parser, which then parses the rest, so the command line overrides the file. Problems
    (missing file, unknown keys, bad values) exit through ``parser.error``: exit code 2 and a
    message, no traceback.

    Args:
        argv: the arguments; ``sys.argv[1:]`` when None.

    Returns:
        (args, args_text): the parsed options and their YAML dump (written as args.yaml).
    """
    config_parser, parser = create_train_parser()
    args_config, remaining = config_parser.parse_known_args(argv)
    if args_config.config:
        parser.set_defaults(**_load_config(args_config.config, parser))

    # The main parser must refuse what it does not know: the leftovers from config_parser.
    args = parser.parse_args(remaining)
    args.config = args_config.config
    # As timm writes args.yaml: the parsed options, before the run changes any (its -c file is not one).
    args_text = yaml.safe_dump({k: v for k, v in args.__dict__.items() if k != 'config'}, default_flow_style=False)
    return args, args_text
