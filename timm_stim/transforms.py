"""Train transforms of the Stimulative Training ImageNet recipe that timm lacks.

* ``Lighting``: AlexNet-style PCA lighting noise (fb.resnet.torch, ``alphastd=0.1`` in the recipe).
* ``UniformAugment``: Lim et al., "UniformAugment: A Search-free Probabilistic Data Augmentation
  Approach" (2020), built from timm's auto-augment op functions.

Both are spliced into the train transform timm builds, so everything else (crop, flip, AA/RA,
color jitter, random erasing, prefetcher, aug splits, worker seeding) stays timm's:

* ``create_stim_transform(lighting_std=0.1, uniform_augment=True, **create_transform_kwargs)``
  builds a transform from scratch, for datasets / loaders you assemble yourself.
* ``add_stim_transforms(loader, ...)`` patches the dataset transform(s) of a loader returned by
  ``timm.data.create_loader(..., is_training=True)`` in place, the way timm itself re-assigns
  ``dataset.transform`` for AugMix splits. This is what the training script uses::

      loader = timm.data.create_loader(dataset, input_size, batch_size, is_training=True,
                                       use_prefetcher=args.prefetcher, mean=mean, std=std, ...)
      add_stim_transforms(loader, lighting_std=0.1, uniform_augment=True, mean=mean)

Placement, per sample, in both cases::

    RandomResizedCrop, Flip | UniformAugment, [AA/RA], [ColorJitter] | ToTensor, Lighting, Normalize, [RE]

With ``use_prefetcher=True`` timm ends the per-sample transform with ``MaybePILToTensor`` (a uint8
CHW tensor), ``fast_collate`` copies the samples into a uint8 batch and ``PrefetchLoader``
normalizes on the device. ``Lighting`` then goes right after ``MaybePILToTensor`` and acts on the
uint8 image (see ``Lighting`` for why, and what that costs).
"""
import random
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from timm.data import AugMixDataset
from timm.data.auto_augment import (
    _FILL, _RANDOM_INTERPOLATION, auto_contrast, brightness, color, contrast, equalize, invert,
    posterize, rotate, sharpness, shear_x, shear_y, solarize, translate_x_rel, translate_y_rel)
from timm.data.constants import IMAGENET_DEFAULT_MEAN
from timm.data.naflex_transforms import RandomResizedCropToSequence
from timm.data.scheduled_sampler import ScheduledTransformDataset
from timm.data.transforms import (
    CenterCropOrPad, MaybePILToTensor, MaybeToTensor, RandomCropOrPad, RandomResizedCropAndInterpolation,
    ResizeKeepRatio, ToTensor as TimmToTensor, str_to_pil_interp)
from timm.data.transforms_factory import create_transform
from torchvision import transforms

__all__ = [
    'Lighting', 'UniformAugment', 'create_stim_transform', 'insert_stim_transforms', 'add_stim_transforms',
    'IMAGENET_PCA_EIGVAL', 'IMAGENET_PCA_EIGVEC', 'UNIFORM_AUGMENT_OPS',
]

# PCA of ImageNet RGB pixels in [0, 1] (fb.resnet.torch, datasets/imagenet.lua); rows of
# IMAGENET_PCA_EIGVEC are R, G, B, columns the eigenvectors.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

TransformOrSplits = Union[transforms.Compose, Tuple[transforms.Compose, transforms.Compose, transforms.Compose]]


class Lighting:
    """AlexNet-style PCA lighting noise.

    Adds the per-channel offset ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, alphastd)`` drawn
    once per image from torch's global RNG (so timm's DataLoader worker seeding applies), to an
    RGB image before normalization, as fb.resnet.torch and the Stimulative Training code do.

    Float tensors are taken to be in [0, 1] (``ToTensor`` output) and are not clamped, like the
    reference. uint8 tensors (timm's prefetcher path, where ``fast_collate`` needs uint8 samples
    and normalization happens later on the device) get the offset in 0..255 levels, rounded to an
    integer and clamped to [0, 255]: a rounding error of at most half a level, symmetric in the
    sign of ``alpha`` so the noise stays zero-mean, plus saturation of pixels pushed out of range.

    Args:
        alphastd: Standard deviation of ``alpha``; 0 makes this the identity (0.1 in the recipe).
        eigval: PCA eigenvalues (3,), ImageNet's by default.
        eigvec: PCA eigenvectors as the columns of a (3, 3) matrix, ImageNet's by default.
    """

    def __init__(
            self,
            alphastd: float = 0.1,
            eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
            eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC,
    ):
        if alphastd < 0:
            raise ValueError(f'Lighting alphastd={alphastd}: expected >= 0.')
        self.alphastd = float(alphastd)
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)

    def sample_offset(self) -> torch.Tensor:
        """Draw ``alpha`` and return the (3,) RGB offset ``eigvec @ (alpha * eigval)`` on the [0, 1] scale."""
        alpha = torch.randn(3) * self.alphastd
        return self.eigvec @ (alpha * self.eigval)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Add lighting noise to a (3, H, W) float [0, 1] or uint8 [0, 255] tensor; returns a new tensor."""
        if self.alphastd == 0:
            return img
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise TypeError(f'Lighting expects an RGB (3, H, W) tensor, got {shape}.')
        offset = self.sample_offset().view(3, 1, 1)
        if img.dtype == torch.uint8:
            # Integer levels: int16 holds 0..255 plus the offset without wrapping around.
            levels = torch.round(offset * 255.).to(torch.int16)
            return (img.to(torch.int16) + levels).clamp_(0, 255).to(torch.uint8)
        if not img.is_floating_point():
            raise TypeError(f'Lighting expects a float or uint8 tensor, got {img.dtype}.')
        return img + offset.to(img.dtype)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(alphastd={self.alphastd})'


class _UniformOp(NamedTuple):
    """One UniformAugment operation: a timm op function and its magnitude range (None: no magnitude)."""
    name: str
    fn: Callable
    low: Optional[float] = None
    high: Optional[float] = None
    integer: bool = False  # magnitude truncated to int (Posterize's bit count, as in the reference)


# The 14 ops of UniformAugment and their published ranges (the reference implementation's
# augment_list, taken from Fast AutoAugment). Magnitudes are drawn uniformly from [low, high];
# signed ranges are sampled directly, so no separate random sign is needed.
_UNIFORM_OPS: Tuple[_UniformOp, ...] = (
    _UniformOp('ShearX', shear_x, -0.3, 0.3),  # shear factor
    _UniformOp('ShearY', shear_y, -0.3, 0.3),
    _UniformOp('TranslateX', translate_x_rel, -0.45, 0.45),  # fraction of the image width
    _UniformOp('TranslateY', translate_y_rel, -0.45, 0.45),  # fraction of the image height
    _UniformOp('Rotate', rotate, -30., 30.),  # degrees
    _UniformOp('AutoContrast', auto_contrast),
    _UniformOp('Invert', invert),
    _UniformOp('Equalize', equalize),
    _UniformOp('Solarize', solarize, 0., 256.),  # threshold
    _UniformOp('Posterize', posterize, 4., 8., integer=True),  # bits kept: int(U[4, 8]), so 4..7
    _UniformOp('Contrast', contrast, 0.1, 1.9),  # enhance factor, 1 = unchanged
    _UniformOp('Color', color, 0.1, 1.9),
    _UniformOp('Brightness', brightness, 0.1, 1.9),
    _UniformOp('Sharpness', sharpness, 0.1, 1.9),
)
UNIFORM_AUGMENT_OPS = tuple(op.name for op in _UNIFORM_OPS)


class UniformAugment:
    """UniformAugment (Lim et al., 2020) on PIL images.

    For each image, ``num_ops`` operations are drawn uniformly, with replacement, from the 14 below;
    each is applied with probability ``prob`` at a magnitude drawn uniformly from its range:

    =============================  =======================================
    ShearX, ShearY                 shear factor in [-0.3, 0.3]
    TranslateX, TranslateY         [-0.45, 0.45] of the image width/height
    Rotate                         [-30, 30] degrees
    AutoContrast, Invert, Equalize no magnitude
    Solarize                       threshold in [0, 256]
    Posterize                      int([4, 8]) bits kept
    Contrast, Color,               enhance factor in [0.1, 1.9]
    Brightness, Sharpness
    =============================  =======================================

    The reference draws an apply probability ``p ~ U(0, 1)`` per op and applies it when another
    ``U(0, 1)`` draw is below ``p``: overall probability 0.5, which ``prob=0.5`` reproduces.

    Geometric ops fill uncovered pixels with ``hparams['img_mean']`` (timm's ``_FILL`` gray by
    default; ``create_stim_transform`` passes the normalization mean, as timm does for its
    auto-augment) and resample with ``hparams['interpolation']`` (random bilinear / bicubic by
    default), via timm's op functions. The reference leaves PIL's defaults: black fill, nearest.
    Randomness comes from Python's ``random``, which timm's worker seeding covers.

    Args:
        num_ops: Operations drawn per image (2 in the paper).
        prob: Probability of applying each drawn operation.
        hparams: timm auto-augment hparams; ``img_mean`` and ``interpolation`` are used.
    """

    def __init__(self, num_ops: int = 2, prob: float = 0.5, hparams: Optional[dict] = None):
        if num_ops < 1:
            raise ValueError(f'UniformAugment num_ops={num_ops}: expected >= 1.')
        if not 0. <= prob <= 1.:
            raise ValueError(f'UniformAugment prob={prob}: expected in [0, 1].')
        hparams = hparams or {}
        self.num_ops = num_ops
        self.prob = prob
        self.ops: List[_UniformOp] = list(_UNIFORM_OPS)
        self.kwargs = dict(
            fillcolor=tuple(hparams.get('img_mean', _FILL)),
            resample=hparams.get('interpolation', _RANDOM_INTERPOLATION),
        )

    def _apply(self, op: _UniformOp, img: Image.Image) -> Image.Image:
        if op.low is None:
            return op.fn(img, **self.kwargs)
        magnitude = random.uniform(op.low, op.high)
        if op.integer:
            magnitude = int(magnitude)
        return op.fn(img, magnitude, **self.kwargs)

    def __call__(self, img: Image.Image) -> Image.Image:
        """Augment a PIL image; returns a PIL image of the same size and mode."""
        for op in random.choices(self.ops, k=self.num_ops):
            if random.random() < self.prob:
                img = self._apply(op, img)
        return img

    def __repr__(self) -> str:
        return f'{type(self).__name__}(num_ops={self.num_ops}, prob={self.prob})'


# Ops of the leading geometric stage (crop / resize / flip): UniformAugment goes right after them,
# where timm puts its auto-augment, so it acts on the training-size crop.
_GEOMETRIC = (
    RandomResizedCropAndInterpolation, RandomResizedCropToSequence, ResizeKeepRatio, CenterCropOrPad,
    RandomCropOrPad, transforms.RandomResizedCrop, transforms.Resize, transforms.CenterCrop,
    transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.RandomVerticalFlip,
)
# Conversions of a PIL image to a tensor: Lighting goes right after them, i.e. before Normalize.
_TO_TENSOR = (MaybeToTensor, MaybePILToTensor, TimmToTensor, transforms.ToTensor, transforms.PILToTensor)


def _check_compose(transform, what: str) -> List[Callable]:
    if not isinstance(transform, transforms.Compose):
        raise TypeError(f'Cannot add {what} to a {type(transform).__name__} transform; expected a torchvision '
                        f'Compose as built by timm.data.create_transform (tf_preprocessing is not supported).')
    if any(isinstance(t, (Lighting, UniformAugment)) for t in transform.transforms):
        raise ValueError('The transform already holds Lighting / UniformAugment; add them only once.')
    return list(transform.transforms)


def _insert_uniform_augment(ops: List[Callable], uniform_augment: UniformAugment, start: bool = False) -> None:
    index = 0
    if not start:
        while index < len(ops) and isinstance(ops[index], _GEOMETRIC):
            index += 1
    ops.insert(index, uniform_augment)


def _insert_lighting(ops: List[Callable], lighting: Lighting) -> None:
    index = next((i for i, t in enumerate(ops) if isinstance(t, _TO_TENSOR)), None)
    if index is None:
        raise ValueError('Cannot place Lighting: the transform has no ToTensor-like step.')
    ops.insert(index + 1, lighting)


def _uniform_augment_hparams(
        mean: Optional[Sequence[float]] = None,
        interpolation: Optional[str] = None,
) -> dict:
    """timm's auto-augment hparams for a normalization mean and interpolation name (as transforms_factory)."""
    mean = IMAGENET_DEFAULT_MEAN if mean is None else mean
    hparams = dict(img_mean=tuple(min(255, round(255 * x)) for x in mean))
    if interpolation and interpolation != 'random':
        hparams['interpolation'] = str_to_pil_interp(interpolation)
    return hparams


def insert_stim_transforms(
        transform: TransformOrSplits,
        lighting_std: float = 0.0,
        uniform_augment: bool = False,
        uniform_augment_ops: int = 2,
        hparams: Optional[dict] = None,
) -> TransformOrSplits:
    """Return a copy of a timm train transform with ``UniformAugment`` and/or ``Lighting`` added.

    Args:
        transform: A ``Compose`` from ``timm.data.create_transform(is_training=True)``, or its
            ``separate=True`` (primary, secondary, final) tuple of them (aug splits), in which case
            UniformAugment opens the secondary stage (timm's auto-augment slot, only augmented
            splits get it) and Lighting goes into the final stage (all splits).
        lighting_std: ``Lighting`` alphastd; 0 adds no Lighting.
        uniform_augment: Add ``UniformAugment``.
        uniform_augment_ops: Its ``num_ops``.
        hparams: Its timm auto-augment hparams (fill colour, interpolation).

    Returns:
        A new transform of the same kind; ``transform`` itself is left unchanged.
    """
    lighting = Lighting(lighting_std) if lighting_std else None
    augment = UniformAugment(uniform_augment_ops, hparams=hparams) if uniform_augment else None
    if isinstance(transform, (tuple, list)):
        if len(transform) != 3:
            raise TypeError(f'Expected a (primary, secondary, final) transform tuple, got {len(transform)} items.')
        primary, secondary, final = transform
        secondary_ops = _check_compose(secondary, 'UniformAugment')
        final_ops = _check_compose(final, 'Lighting')
        if augment is not None:
            _insert_uniform_augment(secondary_ops, augment, start=True)
        if lighting is not None:
            _insert_lighting(final_ops, lighting)
        return primary, transforms.Compose(secondary_ops), transforms.Compose(final_ops)

    ops = _check_compose(transform, 'Lighting / UniformAugment')
    if augment is not None:
        _insert_uniform_augment(ops, augment)
    if lighting is not None:
        _insert_lighting(ops, lighting)
    return transforms.Compose(ops)


def create_stim_transform(
        lighting_std: float = 0.0,
        uniform_augment: bool = False,
        uniform_augment_ops: int = 2,
        **timm_kwargs,
) -> TransformOrSplits:
    """timm's train transform plus the recipe's PCA lighting noise and UniformAugment.

    Args:
        lighting_std: ``Lighting`` alphastd (0.1 in the ImageNet recipe); 0 disables it.
        uniform_augment: Add ``UniformAugment`` after the crop and flips.
        uniform_augment_ops: Operations per image for ``UniformAugment``.
        **timm_kwargs: Passed to ``timm.data.create_transform`` (``input_size``, ``mean``, ``std``,
            ``interpolation``, ``auto_augment``, ``use_prefetcher``, ``separate``, ...), which is
            called with ``is_training=True``. ``mean`` and ``interpolation`` also set
            UniformAugment's fill colour and resampling, as timm does for its auto-augment.

    Returns:
        A ``transforms.Compose``, or a 3-tuple of them with ``separate=True``.
    """
    if not timm_kwargs.pop('is_training', True):
        raise ValueError('create_stim_transform builds train transforms; use timm.data.create_transform for eval.')
    transform = create_transform(is_training=True, **timm_kwargs)
    hparams = _uniform_augment_hparams(timm_kwargs.get('mean'), timm_kwargs.get('interpolation', 'bilinear'))
    return insert_stim_transforms(
        transform, lighting_std=lighting_std, uniform_augment=uniform_augment,
        uniform_augment_ops=uniform_augment_ops, hparams=hparams)


def add_stim_transforms(
        loader,
        lighting_std: float = 0.0,
        uniform_augment: bool = False,
        uniform_augment_ops: int = 2,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        interpolation: Optional[str] = None,
) -> None:
    """Add PCA lighting and/or UniformAugment to a timm train loader's dataset transform, in place.

    Call it right after ``timm.data.create_loader(..., is_training=True)`` and before iterating
    (worker processes copy the dataset when they start). Handles plain datasets, ``AugMixDataset``
    (aug splits) and ``ScheduledTransformDataset`` (scheduled input sizes), with or without the
    prefetcher (a ``PrefetchLoader`` forwards ``.dataset``).

    Args:
        loader: The train loader returned by ``timm.data.create_loader``.
        lighting_std: ``Lighting`` alphastd; 0 adds no Lighting.
        uniform_augment: Add ``UniformAugment``.
        uniform_augment_ops: Its ``num_ops``.
        mean: Normalization mean given to ``create_loader``; UniformAugment fills with it.
        std: Unused (normalization is left to timm); accepted so a data config's mean and std can be passed together.
        interpolation: Train interpolation given to ``create_loader``; UniformAugment resamples with it.
    """
    del std
    if not lighting_std and not uniform_augment:
        return
    kwargs = dict(
        lighting_std=lighting_std, uniform_augment=uniform_augment, uniform_augment_ops=uniform_augment_ops,
        hparams=_uniform_augment_hparams(mean, interpolation))
    dataset = loader.dataset
    if isinstance(dataset, AugMixDataset):
        # Its transform setter takes the (primary, secondary, final) tuple; the getter returns only primary.
        splits = (dataset.dataset.transform, dataset.augmentation, dataset.normalize)
        dataset.transform = insert_stim_transforms(splits, **kwargs)
    elif isinstance(dataset, ScheduledTransformDataset):
        dataset.transforms = tuple(insert_stim_transforms(t, **kwargs) for t in dataset.transforms)
    elif getattr(dataset, 'transform', None) is not None:
        dataset.transform = insert_stim_transforms(dataset.transform, **kwargs)
    else:
        raise TypeError(f'Cannot find a train transform on {type(dataset).__name__}; build the loader with '
                        f'timm.data.create_loader(..., is_training=True) or use create_stim_transform.')
