"""Train transforms of the paper's recipe that timm lacks: PCA lighting noise and UniformAugment.

Both are added to the transform of a loader built by ``timm.data.create_loader`` with
``add_stim_transforms(loader, ...)``, the way timm itself swaps dataset transforms.
"""
import random
from typing import Optional, Sequence

import torch
from timm.data.auto_augment import AugmentOp
from torchvision import transforms as T

__all__ = ['Lighting', 'UniformAugment', 'add_stim_transforms', 'IMAGENET_PCA_EIGVAL', 'IMAGENET_PCA_EIGVEC',
           'UNIFORM_AUGMENT_OPS']

IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))

# UniformAugment's 14 operations, mapped to timm's ops. With magnitude 10 and an infinite
# magnitude std, timm draws the level uniformly in [0, 10], which its level functions map to
# the published ranges: shear [-0.3, 0.3], translate [-0.45, 0.45] of the size, rotate
# [-30, 30] degrees, solarize threshold [0, 256], posterize [4, 8] bits, contrast / color /
# brightness / sharpness [0.1, 1.9] (signs drawn at random).
UNIFORM_AUGMENT_OPS = ('ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel', 'Rotate', 'AutoContrast', 'Invert',
                       'Equalize', 'Solarize', 'PosterizeOriginal', 'Contrast', 'Color', 'Brightness', 'Sharpness')


class Lighting:
    """AlexNet-style PCA lighting noise (fb.resnet.torch; the ST official recipe uses alphastd 0.1).

    Adds ``eigvec @ (alpha * eigval)`` per channel, ``alpha ~ N(0, alphastd)`` per image, to an
    RGB image in [0, 1] (float tensor), before normalization. For uint8 tensors (timm's
    prefetcher path, which normalizes later) the offset is scaled by 255, rounded and clamped.

    Args:
        alphastd: standard deviation of alpha; 0 is the identity.
    """

    def __init__(self, alphastd: float, eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC):
        self.alphastd = alphastd
        self.eigval = torch.tensor(eigval)
        self.eigvec = torch.tensor(eigvec)

    def offset(self, alpha: torch.Tensor) -> torch.Tensor:
        """Per-channel offset for the given alpha (3,)."""
        return self.eigvec @ (alpha * self.eigval)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return img
        rgb = self.offset(torch.randn(3) * self.alphastd).view(3, 1, 1)
        if img.dtype == torch.uint8:
            return (img.float() + rgb * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        return img + rgb.to(img.dtype)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(alphastd={self.alphastd})'


class UniformAugment:
    """UniformAugment (Lim et al., 2020): ``num_ops`` ops drawn uniformly, each applied with p=0.5
    at a magnitude drawn uniformly from its range. Operates on PIL images."""

    def __init__(self, num_ops: int = 2, fill_mean: Optional[Sequence[float]] = None):
        if num_ops < 1:
            raise ValueError(f'UniformAugment num_ops={num_ops}: expected >= 1.')
        hparams = {'magnitude_std': float('inf')}
        if fill_mean is not None:
            hparams['img_mean'] = tuple(round(255 * m) for m in fill_mean)
        self.num_ops = num_ops
        self.ops = [AugmentOp(name, prob=0.5, magnitude=10, hparams=hparams) for name in UNIFORM_AUGMENT_OPS]

    def __call__(self, img):
        for op in random.choices(self.ops, k=self.num_ops):
            img = op(img)
        return img

    def __repr__(self) -> str:
        return f'{type(self).__name__}(num_ops={self.num_ops}, ops={UNIFORM_AUGMENT_OPS})'


def _insert_transforms(compose: T.Compose, lighting: Optional[Lighting], uniform: Optional[UniformAugment]) -> T.Compose:
    ops = list(compose.transforms)
    if uniform is not None:
        # After the geometric crop/flip, where timm places auto-augment.
        names = [type(t).__name__ for t in ops]
        pos = max([i + 1 for i, n in enumerate(names) if 'Crop' in n or 'Flip' in n] or [0])
        ops.insert(pos, uniform)
    if lighting is not None:
        norm = [i for i, t in enumerate(ops) if isinstance(t, T.Normalize)]
        # Before Normalize when the transform normalizes; else (prefetcher) at the end, on uint8.
        ops.insert(norm[0] if norm else len(ops), lighting)
    return T.Compose(ops)


def add_stim_transforms(loader, lighting_std: float = 0.0, uniform_augment: bool = False,
                        uniform_augment_ops: int = 2, mean: Optional[Sequence[float]] = None, std=None) -> None:
    """Add PCA lighting and/or UniformAugment to a timm train loader's dataset transform.

    Args:
        loader: returned by ``timm.data.create_loader(..., is_training=True)``.
        lighting_std: ``Lighting`` alphastd (0 = off).
        uniform_augment: add ``UniformAugment``.
        uniform_augment_ops: its number of ops per image.
        mean: dataset mean, used as the fill colour of geometric ops.
    """
    dataset = loader.dataset
    transform = getattr(dataset, 'transform', None)
    if not isinstance(transform, T.Compose):
        raise ValueError(f'Cannot add lighting / UniformAugment to a {type(transform).__name__} transform '
                         f'(augmentation splits?); expected a torchvision Compose.')
    lighting = Lighting(lighting_std) if lighting_std else None
    uniform = UniformAugment(uniform_augment_ops, fill_mean=mean) if uniform_augment else None
    dataset.transform = _insert_transforms(transform, lighting, uniform)
