"""Train transforms of the Stimulative Training ImageNet recipe that timm lacks.

* ``Lighting``: AlexNet-style PCA lighting noise on the [0, 1] image (fb.resnet.torch).
* ``PilLighting``: the same noise as the Stimulative Training code applies it: to the uint8
  PIL image before ``ToTensor``, where truncation leaves each channel unchanged or one level
  lower (in effect almost no augmentation; the recipes use it to do what the official runs did).
* ``UniAugment``: UniformAugment as the Stimulative Training authors ran it: the TrivialAugment
  code base's ``UniAugment`` on its ``fixed_standard`` space, built from timm's auto-augment op
  functions.
* ``UniformAugmentLim``: the op list of Lim et al., "UniformAugment: A Search-free Probabilistic
  Data Augmentation Approach" (2020), also from timm's op functions.

They are spliced into the train transform timm builds, so everything else (crop, flip, AA/RA,
color jitter, random erasing, prefetcher, aug splits, worker seeding) stays timm's:

* ``create_stim_transform(lighting_std=0.1, uniform_augment=True, **create_transform_kwargs)``
  builds a transform from scratch, for datasets / loaders you assemble yourself.
* ``add_stim_transforms(loader, ...)`` patches the dataset transform(s) of a loader returned by
  ``timm.data.create_loader(..., is_training=True)`` in place, the way timm itself re-assigns
  ``dataset.transform`` for AugMix splits. This is what the training script uses::

      loader = timm.data.create_loader(dataset, input_size, batch_size, is_training=True,
                                       use_prefetcher=args.prefetcher, mean=mean, std=std, ...)
      add_stim_transforms(loader, lighting_std=0.1, lighting_mode='pil-uint8', uniform_augment=True)

Placement, per sample::

    RandomResizedCrop, Flip | [UniformAugmentLim], [AA/RA], [ColorJitter], [PilLighting], [UniAugment]
        | ToTensor, [Lighting], Normalize, [RE]

The official order is ``RandomResizedCrop, flip, ColorJitter, lighting, UniAugment, ToTensor,
Normalize``, which ``lighting_mode='pil-uint8'`` with the ``trivialaugment`` variant reproduces.
With ``use_prefetcher=True`` timm ends the per-sample transform with ``MaybePILToTensor`` (a uint8
CHW tensor), ``fast_collate`` copies the samples into a uint8 batch and ``PrefetchLoader``
normalizes on the device; ``Lighting`` then goes right after ``MaybePILToTensor`` and acts on the
uint8 image (see ``Lighting``).
"""
import random
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from timm.data import AugMixDataset
from timm.data.auto_augment import (
    _FILL, _RANDOM_INTERPOLATION, auto_contrast, brightness, color, contrast, equalize, invert,
    posterize, rotate, sharpness, shear_x, shear_y, solarize, translate_x_abs, translate_x_rel, translate_y_abs,
    translate_y_rel)
from timm.data.constants import IMAGENET_DEFAULT_MEAN
from timm.data.naflex_transforms import RandomResizedCropToSequence
from timm.data.scheduled_sampler import ScheduledTransformDataset
from timm.data.transforms import (
    CenterCropOrPad, MaybePILToTensor, MaybeToTensor, RandomCropOrPad, RandomResizedCropAndInterpolation,
    ResizeKeepRatio, ToTensor as TimmToTensor, str_to_pil_interp)
from timm.data.transforms_factory import create_transform
from torchvision import transforms

__all__ = [
    'Lighting', 'PilLighting', 'UniAugment', 'UniformAugmentLim', 'create_stim_transform', 'insert_stim_transforms',
    'add_stim_transforms', 'IMAGENET_PCA_EIGVAL', 'IMAGENET_PCA_EIGVEC', 'UNIAUGMENT_OPS', 'UNIFORM_AUGMENT_LIM_OPS',
    'LIGHTING_MODES', 'UNIFORM_AUGMENT_VARIANTS',
]

# PCA of ImageNet RGB pixels in [0, 1] (fb.resnet.torch, datasets/imagenet.lua); rows of
# IMAGENET_PCA_EIGVEC are R, G, B, columns the eigenvectors.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
LIGHTING_MODES = ('tensor', 'pil-uint8')
UNIFORM_AUGMENT_VARIANTS = ('trivialaugment', 'lim2020')

TransformOrSplits = Union[transforms.Compose, Tuple[transforms.Compose, transforms.Compose, transforms.Compose]]


def _check_alphastd(alphastd: float) -> float:
    if not alphastd >= 0:
        raise ValueError(f'Lighting alphastd={alphastd}: expected >= 0.')
    return float(alphastd)


class _PcaLighting:
    """What both lighting transforms hold: ``alphastd`` and the PCA basis, as ``_array`` stores it."""

    def __init__(
            self,
            alphastd: float = 0.1,
            eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
            eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC,
    ):
        self.alphastd = _check_alphastd(alphastd)
        self.eigval, self.eigvec = self._array(eigval), self._array(eigvec)

    @staticmethod
    def _array(values):
        raise NotImplementedError


class Lighting(_PcaLighting):
    """AlexNet-style PCA lighting noise on an RGB tensor.

    Adds the per-channel offset ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, alphastd)`` drawn
    once per image from torch's global RNG (so timm's DataLoader worker seeding applies), to a
    float image in [0, 1] before normalization, as fb.resnet.torch does: with ``alphastd=0.1``
    the offset has a standard deviation of about 0.013 (3 levels of 255) on each channel.

    The Stimulative Training code adds this [0, 1]-scale offset to the uint8 PIL image instead,
    which after truncation changes almost nothing; ``PilLighting`` reproduces that.

    Float tensors are taken to be in [0, 1] (``ToTensor`` output) and are not clamped, like
    fb.resnet.torch. uint8 tensors (timm's prefetcher path, where ``fast_collate`` needs uint8
    samples and normalization happens later on the device) get the offset in 0..255 levels,
    rounded to an integer and clamped to [0, 255]: a rounding error of at most half a level,
    symmetric in the sign of ``alpha`` so the noise stays zero-mean, plus saturation of pixels
    pushed out of range.

    Args:
        alphastd: Standard deviation of ``alpha``; 0 makes this the identity (0.1 in the recipe).
        eigval: PCA eigenvalues (3,), ImageNet's by default.
        eigvec: PCA eigenvectors as the columns of a (3, 3) matrix, ImageNet's by default.
    """

    @staticmethod
    def _array(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32)

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


class PilLighting(_PcaLighting):
    """PCA lighting as the Stimulative Training code applies it: to the uint8 PIL image.

    The authors' ``Lighting`` (their ``utils/mytransforms.py``) runs after ``ColorJitter`` and
    before ``ToTensor``: it adds the offset ``eigvec @ (alpha * eigval)`` computed with the
    [0, 1]-scale eigenvalues to the 0..255 pixel levels, clips to [0, 255] and converts back to
    uint8, which truncates. The offset is below one level unless ``|alpha|`` exceeds about 8
    (80 standard deviations at ``alphastd=0.1``), so each channel of an image is either
    unchanged (offset >= 0) or one level lower (offset < 0; pixels at 0 stay 0): a shift of 0
    or -1/255 per channel, where ``Lighting`` on the [0, 1] image moves it by about 3 levels.
    The recipes that reproduce the paper use this, so they do what the official runs did.

    The arithmetic is the authors' (``alpha`` rounded to float32, the offset in float64, the
    sum truncated); ``alpha`` comes from torch's global RNG, which timm's worker seeding covers,
    instead of NumPy's.

    Args:
        alphastd: Standard deviation of ``alpha``; 0 makes this the identity (0.1 in the recipe).
        eigval: PCA eigenvalues (3,) on the [0, 1] scale, ImageNet's by default.
        eigvec: PCA eigenvectors as the columns of a (3, 3) matrix, ImageNet's by default.
    """

    @staticmethod
    def _array(values) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def sample_offset(self) -> np.ndarray:
        """Draw ``alpha`` and return the (3,) float64 RGB offset in pixel levels, as the authors compute it."""
        alpha = (torch.randn(3, dtype=torch.float64) * self.alphastd).to(torch.float32).numpy()
        return self.eigvec @ (alpha * self.eigval)

    @staticmethod
    def apply_offset(img: Image.Image, offset: np.ndarray) -> Image.Image:
        """Add ``offset`` (3,) to every pixel's levels, clip to [0, 255] and truncate to uint8."""
        if not isinstance(img, Image.Image) or img.mode != 'RGB':
            what = f'a {img.mode} PIL image' if isinstance(img, Image.Image) else type(img).__name__
            raise TypeError(f'PilLighting expects an RGB PIL image (it runs before ToTensor), got {what}.')
        shifted = np.clip(np.asarray(img) + offset, 0, 255)
        return Image.fromarray(shifted.astype(np.uint8))

    def __call__(self, img: Image.Image) -> Image.Image:
        """Apply lighting to an RGB PIL image; returns a new image."""
        if self.alphastd == 0:
            return img
        return self.apply_offset(img, self.sample_offset())

    def __repr__(self) -> str:
        return f'{type(self).__name__}(alphastd={self.alphastd})'


# ---------------------------------------------------------------------------------------------
# UniformAugment as the Stimulative Training authors ran it (TrivialAugment's UniAugment)
# ---------------------------------------------------------------------------------------------

_TA_MAX_LEVEL = 30  # fixed_standard space with 31 strengths: integer levels 0..30
# The geometric ops of TrivialAugment's code leave PIL's defaults: nearest resampling, black fill.
_TA_GEOMETRY = dict(resample=Image.NEAREST, fillcolor=None)


def _ta_int(level: int, maxval: float) -> int:
    # The TrivialAugment code's int_parameter, same arithmetic (so the same values).
    return int(level * maxval / _TA_MAX_LEVEL)


def _ta_float(level: int, maxval: float) -> float:
    # The TrivialAugment code's float_parameter.
    return float(level) * maxval / _TA_MAX_LEVEL


def _ta_enhance(level: int) -> float:
    # Enhancer factor in [0.1, 1.9]; 1.9 - 0.1 is computed as in the original, in floating point.
    return _ta_float(level, 1.9 - 0.1) + 0.1


def _ta_degrees(level: int) -> int:
    return _ta_int(level, 30)


def _ta_solarize_threshold(level: int) -> int:
    return 256 - _ta_int(level, 256)


def _ta_posterize_bits(level: int) -> int:
    return 8 - _ta_int(level, 8 - 4)


def _ta_shear(level: int) -> float:
    return _ta_float(level, 0.3)


def _ta_translate_pixels(level: int) -> int:
    return _ta_int(level, 10)


class _TAOp(NamedTuple):
    """One op of the fixed_standard space: a timm op function and its level -> argument rule."""
    name: str
    fn: Callable
    arg: Optional[Callable[[int], float]] = None  # None: the op takes no magnitude
    signed: bool = False  # a coin flip negates the argument (rotate, shear, translate)
    geometric: bool = False  # takes resample / fillcolor


def _identity(img: Image.Image, **_) -> Image.Image:
    return img


# The fixed_standard space, in the order of the original list (the random op choice indexes it).
# Arguments at level L in 0..30: rotate int(L) degrees; solarize threshold 256 - int(L*256/30)
# (level 30 inverts every pixel); enhance factor 0.1 + 1.8*L/30; posterize keeps 8 - int(L*4/30)
# bits (8..4); shear L*0.3/30; translate int(L*10/30) pixels (0..10).
_UNIAUGMENT_OPS: Tuple[_TAOp, ...] = (
    _TAOp('Identity', _identity),
    _TAOp('AutoContrast', auto_contrast),
    _TAOp('Equalize', equalize),
    _TAOp('Rotate', rotate, _ta_degrees, signed=True, geometric=True),
    _TAOp('Solarize', solarize, _ta_solarize_threshold),
    _TAOp('Color', color, _ta_enhance),
    _TAOp('Posterize', posterize, _ta_posterize_bits),
    _TAOp('Contrast', contrast, _ta_enhance),
    _TAOp('Brightness', brightness, _ta_enhance),
    _TAOp('Sharpness', sharpness, _ta_enhance),
    _TAOp('ShearX', shear_x, _ta_shear, signed=True, geometric=True),
    _TAOp('ShearY', shear_y, _ta_shear, signed=True, geometric=True),
    _TAOp('TranslateX', translate_x_abs, _ta_translate_pixels, signed=True, geometric=True),
    _TAOp('TranslateY', translate_y_abs, _ta_translate_pixels, signed=True, geometric=True),
)
UNIAUGMENT_OPS = tuple(op.name for op in _UNIAUGMENT_OPS)


class UniAugment:
    """UniformAugment as the Stimulative Training authors ran it (their 400-epoch, 80.97 % row).

    Their ``--train_trans with_UA`` calls ``UniAugment`` of the TrivialAugment code base they
    vendor (``aug_lib.py``), on its default ``fixed_standard`` space: per image, ``num_ops``
    operations are drawn uniformly, with replacement, from the 14 below; each is applied with
    probability ``prob`` at an integer level drawn uniformly from 0..30:

    ======================================  ==============================================
    Identity, AutoContrast, Equalize        no magnitude
    Rotate                                  0..30 degrees, random sign
    Solarize                                threshold 256 - int(L * 256 / 30)
    Posterize                               8 - int(L * 4 / 30) bits kept (8..4)
    Color, Contrast, Brightness, Sharpness  enhance factor 0.1 + 1.8 * L / 30
    ShearX, ShearY                          L * 0.3 / 30, random sign
    TranslateX, TranslateY                  int(L * 10 / 30) pixels (at most 10), random sign
    ======================================  ==============================================

    Geometric ops resample with NEAREST and fill with black (PIL's defaults, as the original).
    There is no Invert and translation is in pixels, unlike Lim et al.'s op list
    (``UniformAugmentLim``). The ops are timm's auto-augment functions; the random draws are
    made from Python's ``random`` in the original's order (op choices, then per op: level,
    apply coin, sign coin), so with the same seed the output equals the original's, and timm's
    worker seeding covers them.

    Args:
        num_ops: Operations drawn per image (2 in the original).
        prob: Probability of applying each drawn operation (0.5 in the original).
    """

    def __init__(self, num_ops: int = 2, prob: float = 0.5):
        if num_ops < 1:
            raise ValueError(f'UniAugment num_ops={num_ops}: expected >= 1.')
        if not 0. <= prob <= 1.:
            raise ValueError(f'UniAugment prob={prob}: expected in [0, 1].')
        self.num_ops = num_ops
        self.prob = prob
        self.ops: List[_TAOp] = list(_UNIAUGMENT_OPS)

    @staticmethod
    def apply(op: _TAOp, img: Image.Image, level: int) -> Image.Image:
        """Apply one op at ``level`` (0..30), drawing its sign coin when it has one."""
        kwargs = dict(_TA_GEOMETRY) if op.geometric else {}
        if op.arg is None:
            return op.fn(img, **kwargs)
        value = op.arg(level)
        if op.signed and random.random() > 0.5:
            value = -value
        return op.fn(img, value, **kwargs)

    def __call__(self, img: Image.Image) -> Image.Image:
        """Augment a PIL image; returns a PIL image of the same size and mode."""
        for op in random.choices(self.ops, k=self.num_ops):
            level = random.randint(0, _TA_MAX_LEVEL)
            if random.random() < self.prob:
                img = self.apply(op, img, level)
        return img

    def __repr__(self) -> str:
        return f'{type(self).__name__}(num_ops={self.num_ops}, prob={self.prob}, space=fixed_standard)'


# ---------------------------------------------------------------------------------------------
# Lim et al.'s UniformAugment
# ---------------------------------------------------------------------------------------------

class _UniformOp(NamedTuple):
    """One UniformAugmentLim operation: a timm op function and its magnitude range (None: no magnitude)."""
    name: str
    fn: Callable
    low: Optional[float] = None
    high: Optional[float] = None
    integer: bool = False  # magnitude truncated to int (Posterize's bit count, as in the reference)


# The 14 ops of Lim et al.'s UniformAugment and their published ranges (the reference
# implementation's augment_list, taken from Fast AutoAugment). Magnitudes are drawn uniformly
# from [low, high]; signed ranges are sampled directly, so no separate random sign is needed.
_UNIFORM_LIM_OPS: Tuple[_UniformOp, ...] = (
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
UNIFORM_AUGMENT_LIM_OPS = tuple(op.name for op in _UNIFORM_LIM_OPS)


class UniformAugmentLim:
    """UniformAugment with Lim et al.'s (2020) op list, on PIL images. Not what the ST authors ran.

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
    It is placed after crop and flip (timm's auto-augment slot, before color jitter).
    Randomness comes from Python's ``random``, which timm's worker seeding covers.

    Args:
        num_ops: Operations drawn per image (2 in the paper).
        prob: Probability of applying each drawn operation.
        hparams: timm auto-augment hparams; ``img_mean`` and ``interpolation`` are used.
    """

    def __init__(self, num_ops: int = 2, prob: float = 0.5, hparams: Optional[dict] = None):
        if num_ops < 1:
            raise ValueError(f'UniformAugmentLim num_ops={num_ops}: expected >= 1.')
        if not 0. <= prob <= 1.:
            raise ValueError(f'UniformAugmentLim prob={prob}: expected in [0, 1].')
        hparams = hparams or {}
        self.num_ops = num_ops
        self.prob = prob
        self.ops: List[_UniformOp] = list(_UNIFORM_LIM_OPS)
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


# ---------------------------------------------------------------------------------------------
# Splicing into timm's train transforms
# ---------------------------------------------------------------------------------------------

# Ops of the leading geometric stage (crop / resize / flip): UniformAugmentLim goes right after
# them, where timm puts its auto-augment, so it acts on the training-size crop.
_GEOMETRIC = (
    RandomResizedCropAndInterpolation, RandomResizedCropToSequence, ResizeKeepRatio, CenterCropOrPad,
    RandomCropOrPad, transforms.RandomResizedCrop, transforms.Resize, transforms.CenterCrop,
    transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.RandomVerticalFlip,
)
# Conversions of a PIL image to a tensor: Lighting goes right after them, i.e. before Normalize;
# PilLighting and UniAugment right before them, i.e. after color jitter.
_TO_TENSOR = (MaybeToTensor, MaybePILToTensor, TimmToTensor, transforms.ToTensor, transforms.PILToTensor)
_OURS = (Lighting, PilLighting, UniAugment, UniformAugmentLim)


def _check_compose(transform, what: str) -> List[Callable]:
    if not isinstance(transform, transforms.Compose):
        raise TypeError(f'Cannot add {what} to a {type(transform).__name__} transform; expected a torchvision '
                        f'Compose as built by timm.data.create_transform (tf_preprocessing is not supported).')
    if any(isinstance(t, _OURS) for t in transform.transforms):
        raise ValueError('The transform already holds lighting / UniformAugment; add them only once.')
    return list(transform.transforms)


def _after_geometric(ops: List[Callable]) -> int:
    index = 0
    while index < len(ops) and isinstance(ops[index], _GEOMETRIC):
        index += 1
    return index


def _to_tensor_index(ops: List[Callable], what: str) -> int:
    index = next((i for i, t in enumerate(ops) if isinstance(t, _TO_TENSOR)), None)
    if index is None:
        raise ValueError(f'Cannot place {what}: the transform has no ToTensor-like step.')
    return index


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


def _check_choices(lighting_mode: str, uniform_augment_variant: str) -> None:
    if lighting_mode not in LIGHTING_MODES:
        raise ValueError(f'lighting_mode={lighting_mode!r}: expected one of {LIGHTING_MODES}.')
    if uniform_augment_variant not in UNIFORM_AUGMENT_VARIANTS:
        raise ValueError(f'uniform_augment_variant={uniform_augment_variant!r}: expected one of '
                         f'{UNIFORM_AUGMENT_VARIANTS}.')


def insert_stim_transforms(
        transform: TransformOrSplits,
        lighting_std: float = 0.0,
        uniform_augment: bool = False,
        uniform_augment_ops: int = 2,
        hparams: Optional[dict] = None,
        lighting_mode: str = 'tensor',
        uniform_augment_variant: str = 'trivialaugment',
) -> TransformOrSplits:
    """Return a copy of a timm train transform with UniformAugment and/or PCA lighting added.

    Args:
        transform: A ``Compose`` from ``timm.data.create_transform(is_training=True)``, or its
            ``separate=True`` (primary, secondary, final) tuple of them (aug splits). With splits,
            UniformAugment goes into the secondary stage (only augmented splits get it: Lim's
            variant first, timm's auto-augment slot; ``trivialaugment`` last, after color jitter)
            and lighting into the final stage (all splits; ``pil-uint8`` before ``ToTensor``, so
            after UniformAugment there).
        lighting_std: lighting alphastd; 0 adds no lighting.
        uniform_augment: Add UniformAugment.
        uniform_augment_ops: Its ``num_ops``.
        hparams: timm auto-augment hparams (fill colour, interpolation) for ``lim2020``.
        lighting_mode: ``tensor`` (``Lighting`` after ToTensor) or ``pil-uint8`` (``PilLighting``
            before ToTensor, after color jitter, as the official code).
        uniform_augment_variant: ``trivialaugment`` (``UniAugment``, after color jitter and
            lighting, as the official code) or ``lim2020`` (``UniformAugmentLim``, after crop and flip).

    Returns:
        A new transform of the same kind; ``transform`` itself is left unchanged.
    """
    _check_choices(lighting_mode, uniform_augment_variant)
    lighting = None
    if lighting_std:
        lighting = PilLighting(lighting_std) if lighting_mode == 'pil-uint8' else Lighting(lighting_std)
    augment = None
    if uniform_augment:
        augment = (UniAugment(uniform_augment_ops) if uniform_augment_variant == 'trivialaugment'
                   else UniformAugmentLim(uniform_augment_ops, hparams=hparams))

    if isinstance(transform, (tuple, list)):
        if len(transform) != 3:
            raise TypeError(f'Expected a (primary, secondary, final) transform tuple, got {len(transform)} items.')
        primary, secondary, final = transform
        secondary_ops = _check_compose(secondary, 'UniformAugment')
        final_ops = _check_compose(final, 'lighting')
        if isinstance(augment, UniformAugmentLim):
            secondary_ops.insert(0, augment)
        elif augment is not None:
            secondary_ops.append(augment)
        if isinstance(lighting, PilLighting):
            final_ops.insert(_to_tensor_index(final_ops, 'PilLighting'), lighting)
        elif lighting is not None:
            final_ops.insert(_to_tensor_index(final_ops, 'Lighting') + 1, lighting)
        return primary, transforms.Compose(secondary_ops), transforms.Compose(final_ops)

    ops = _check_compose(transform, 'lighting / UniformAugment')
    if isinstance(augment, UniformAugmentLim):
        ops.insert(_after_geometric(ops), augment)
    if isinstance(lighting, PilLighting):
        ops.insert(_to_tensor_index(ops, 'PilLighting'), lighting)
    if isinstance(augment, UniAugment):
        ops.insert(_to_tensor_index(ops, 'UniAugment'), augment)
    if isinstance(lighting, Lighting):
        ops.insert(_to_tensor_index(ops, 'Lighting') + 1, lighting)
    return transforms.Compose(ops)


def create_stim_transform(
        lighting_std: float = 0.0,
        uniform_augment: bool = False,
        uniform_augment_ops: int = 2,
        lighting_mode: str = 'tensor',
        uniform_augment_variant: str = 'trivialaugment',
        **timm_kwargs,
) -> TransformOrSplits:
    """timm's train transform plus the recipe's PCA lighting and UniformAugment.

    Args:
        lighting_std: lighting alphastd (0.1 in the ImageNet recipe); 0 disables it.
        uniform_augment: Add UniformAugment.
        uniform_augment_ops: Operations per image for UniformAugment.
        lighting_mode: ``tensor`` or ``pil-uint8`` (see ``insert_stim_transforms``).
        uniform_augment_variant: ``trivialaugment`` or ``lim2020`` (see ``insert_stim_transforms``).
        **timm_kwargs: Passed to ``timm.data.create_transform`` (``input_size``, ``mean``, ``std``,
            ``interpolation``, ``auto_augment``, ``use_prefetcher``, ``separate``, ...), which is
            called with ``is_training=True``. ``mean`` and ``interpolation`` also set
            ``UniformAugmentLim``'s fill colour and resampling, as timm does for its auto-augment.

    Returns:
        A ``transforms.Compose``, or a 3-tuple of them with ``separate=True``.
    """
    if not timm_kwargs.pop('is_training', True):
        raise ValueError('create_stim_transform builds train transforms; use timm.data.create_transform for eval.')
    _check_choices(lighting_mode, uniform_augment_variant)
    transform = create_transform(is_training=True, **timm_kwargs)
    hparams = _uniform_augment_hparams(timm_kwargs.get('mean'), timm_kwargs.get('interpolation', 'bilinear'))
    return insert_stim_transforms(
        transform, lighting_std=lighting_std, uniform_augment=uniform_augment,
        uniform_augment_ops=uniform_augment_ops, hparams=hparams, lighting_mode=lighting_mode,
        uniform_augment_variant=uniform_augment_variant)


def add_stim_transforms(
        loader,
        lighting_std: float = 0.0,
        uniform_augment: bool = False,
        uniform_augment_ops: int = 2,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        interpolation: Optional[str] = None,
        lighting_mode: str = 'tensor',
        uniform_augment_variant: str = 'trivialaugment',
) -> None:
    """Add PCA lighting and/or UniformAugment to a timm train loader's dataset transform, in place.

    Call it right after ``timm.data.create_loader(..., is_training=True)`` and before iterating
    (worker processes copy the dataset when they start). Handles plain datasets, ``AugMixDataset``
    (aug splits) and ``ScheduledTransformDataset`` (scheduled input sizes), with or without the
    prefetcher (a ``PrefetchLoader`` forwards ``.dataset``).

    Args:
        loader: The train loader returned by ``timm.data.create_loader``.
        lighting_std: lighting alphastd; 0 adds no lighting.
        uniform_augment: Add UniformAugment.
        uniform_augment_ops: Its ``num_ops``.
        mean: Normalization mean given to ``create_loader``; ``UniformAugmentLim`` fills with it.
        std: Unused (normalization is left to timm); accepted so a data config's mean and std can be passed together.
        interpolation: Train interpolation given to ``create_loader``; ``UniformAugmentLim`` resamples with it.
        lighting_mode: ``tensor`` or ``pil-uint8`` (see ``insert_stim_transforms``).
        uniform_augment_variant: ``trivialaugment`` or ``lim2020`` (see ``insert_stim_transforms``).
    """
    del std
    _check_choices(lighting_mode, uniform_augment_variant)
    if not lighting_std and not uniform_augment:
        return
    kwargs = dict(
        lighting_std=lighting_std, uniform_augment=uniform_augment, uniform_augment_ops=uniform_augment_ops,
        hparams=_uniform_augment_hparams(mean, interpolation), lighting_mode=lighting_mode,
        uniform_augment_variant=uniform_augment_variant)
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
