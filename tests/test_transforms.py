"""PCA lighting noise, UniformAugment and their insertion into timm's train transforms / loaders."""
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import AugMixDataset, ImageDataset, create_loader, create_transform
from timm.data.transforms import MaybePILToTensor, MaybeToTensor, RandomResizedCropAndInterpolation
from torchvision import transforms

from timm_stim.transforms import (
    IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, UNIFORM_AUGMENT_OPS, Lighting, UniformAugment, add_stim_transforms,
    create_stim_transform, insert_stim_transforms)

SIZE = 16


def _pil(seed: int = 0, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8))


def _reference_offset(alpha):
    """fb.resnet.torch: rgb[i] = sum_j eigvec[i][j] * alpha[j] * eigval[j], written out in plain Python."""
    return [sum(IMAGENET_PCA_EIGVEC[i][j] * float(alpha[j]) * IMAGENET_PCA_EIGVAL[j] for j in range(3))
            for i in range(3)]


def _types(compose):
    return [type(t) for t in compose.transforms]


# ---------------------------------------------------------------------------------------- Lighting

def test_lighting_zero_std_is_identity():
    img = torch.rand(3, 5, 7)
    state = torch.get_rng_state()
    assert torch.equal(Lighting(0.)(img), img)
    assert torch.equal(Lighting(0.)(img.mul(255).to(torch.uint8)), img.mul(255).to(torch.uint8))
    assert torch.equal(torch.get_rng_state(), state)  # draws nothing


def test_lighting_offset_matches_reference_formula():
    img = torch.rand(3, 5, 7)
    torch.manual_seed(123)
    out = Lighting(0.1)(img)
    torch.manual_seed(123)
    alpha = torch.randn(3) * 0.1  # the same draw from torch's global RNG
    expected = torch.tensor(_reference_offset(alpha)).view(3, 1, 1).expand_as(img)
    diff = out - img
    assert torch.allclose(diff, expected, atol=1e-6)
    assert diff.abs().max() > 1e-4  # not trivially zero
    # Offsets are constant over pixels, per channel.
    assert torch.allclose(diff, diff[:, :1, :1].expand_as(diff), atol=1e-6)
    assert not torch.allclose(diff[0], diff[1])


def test_lighting_offsets_differ_per_image_and_have_expected_scale():
    lighting = Lighting(0.1)
    offsets = torch.stack([lighting.sample_offset() for _ in range(4000)])
    # Covariance of eigvec @ (alpha * eigval) is eigvec diag((0.1 * eigval)^2) eigvec^T.
    eigvec, eigval = torch.tensor(IMAGENET_PCA_EIGVEC), torch.tensor(IMAGENET_PCA_EIGVAL)
    cov = eigvec @ torch.diag((0.1 * eigval) ** 2) @ eigvec.T
    assert torch.allclose(offsets.T.cov(), cov, atol=5e-5)
    assert offsets.mean(0).abs().max() < 2e-3


def test_lighting_uint8_quantizes_and_clamps():
    img = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8)
    img[:, 0, 0] = 0
    img[:, 0, 1] = 255
    torch.manual_seed(7)
    out = Lighting(0.5)(img)
    torch.manual_seed(7)
    offset = torch.tensor(_reference_offset(torch.randn(3) * 0.5)).view(3, 1, 1)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    expected = (img.float() + torch.round(offset * 255)).clamp(0, 255)
    assert torch.equal(out.float(), expected)
    assert (out.float() - (img.float() + offset * 255).clamp(0, 255)).abs().max() <= 0.5 + 1e-4


def test_lighting_rejects_non_rgb():
    with pytest.raises(TypeError):
        Lighting(0.1)(torch.rand(1, 4, 4))
    with pytest.raises(ValueError):
        Lighting(-1.)


# ---------------------------------------------------------------------------------- UniformAugment

def test_uniform_augment_is_reproducible_and_keeps_size():
    ua = UniformAugment()
    img = _pil()
    outs = []
    for _ in range(2):
        random.seed(5)
        torch.manual_seed(5)
        outs.append([ua(img) for _ in range(10)])
    for a, b in zip(*outs):
        assert isinstance(a, Image.Image) and a.size == img.size and a.mode == img.mode
        assert a.tobytes() == b.tobytes()
    changed = sum(o.tobytes() != img.tobytes() for o in outs[0])
    # P(no op applied) = 0.25, so most of 10 draws must change the image.
    assert changed >= 5


def _recording(ua: UniformAugment, calls: list) -> UniformAugment:
    """Replace each op function by one recording (name, magnitude) and returning the image as is."""
    def wrap(name):
        def fn(img, *args, **kwargs):
            calls.append((name, args[0] if args else None, kwargs))
            return img
        return fn
    ua.ops = [op._replace(fn=wrap(op.name)) for op in ua.ops]
    return ua


def test_uniform_augment_reaches_every_op_within_published_ranges():
    ranges = {
        'ShearX': (-0.3, 0.3), 'ShearY': (-0.3, 0.3), 'TranslateX': (-0.45, 0.45), 'TranslateY': (-0.45, 0.45),
        'Rotate': (-30, 30), 'AutoContrast': None, 'Invert': None, 'Equalize': None, 'Solarize': (0, 256),
        'Posterize': (4, 8), 'Contrast': (0.1, 1.9), 'Color': (0.1, 1.9), 'Brightness': (0.1, 1.9),
        'Sharpness': (0.1, 1.9),
    }
    assert set(UNIFORM_AUGMENT_OPS) == set(ranges) and len(UNIFORM_AUGMENT_OPS) == 14
    calls = []
    ua = _recording(UniformAugment(num_ops=2, prob=1.0, hparams={'img_mean': (1, 2, 3)}), calls)
    random.seed(0)
    img = _pil(size=4)
    for _ in range(1000):
        ua(img)
    assert len(calls) == 2000
    by_name = {}
    for name, magnitude, kwargs in calls:
        by_name.setdefault(name, []).append(magnitude)
        assert kwargs['fillcolor'] == (1, 2, 3)
    assert set(by_name) == set(ranges)
    for name, low_high in ranges.items():
        mags = by_name[name]
        if low_high is None:
            assert all(m is None for m in mags)
            continue
        low, high = low_high
        assert all(low <= m <= high for m in mags), name
        if name == 'Posterize':
            assert all(isinstance(m, int) for m in mags) and set(mags) == {4, 5, 6, 7}
        else:
            # Uniform over the whole range: both ends of it are reached, both signs for signed ranges.
            span = high - low
            assert min(mags) < low + 0.2 * span and max(mags) > high - 0.2 * span, name


def test_uniform_augment_applies_each_drawn_op_with_prob_half():
    calls = []
    ua = _recording(UniformAugment(num_ops=1), calls)
    random.seed(1)
    img = _pil(size=4)
    for _ in range(4000):
        ua(img)
    assert 0.46 < len(calls) / 4000 < 0.54


def test_uniform_augment_real_ops_run_on_pil():
    # Every real op runs on an RGB image and keeps its size (prob=1, many draws).
    ua = UniformAugment(num_ops=3, prob=1.0)
    random.seed(2)
    img = _pil(size=12)
    for _ in range(60):
        out = ua(img)
        assert out.size == img.size and out.mode == 'RGB'
    with pytest.raises(ValueError):
        UniformAugment(num_ops=0)


# --------------------------------------------------------------------------------------- Pipelines

def test_create_stim_transform_order_and_output():
    tf = create_stim_transform(
        input_size=(3, SIZE, SIZE), lighting_std=0.1, uniform_augment=True, interpolation='bicubic')
    assert _types(tf) == [
        RandomResizedCropAndInterpolation, transforms.RandomHorizontalFlip, UniformAugment, transforms.ColorJitter,
        MaybeToTensor, Lighting, transforms.Normalize]
    ua = tf.transforms[2]
    assert ua.kwargs['fillcolor'] == (124, 116, 104)  # ImageNet mean, as timm's auto-augment fill
    assert ua.kwargs['resample'] == Image.Resampling.BICUBIC
    random.seed(0)
    out = tf(_pil(size=40))
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
    assert out.min() < 0  # normalized, not in [0, 1]


def test_create_stim_transform_keeps_timm_options():
    tf = create_stim_transform(
        input_size=SIZE, lighting_std=0.1, uniform_augment=True, auto_augment='rand-m9-mstd0.5', re_prob=0.25)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'UniformAugment', 'RandAugment',
                     'MaybeToTensor', 'Lighting', 'Normalize', 'RandomErasing']


def test_create_stim_transform_off_is_timm():
    ours = create_stim_transform(input_size=SIZE)
    timm_tf = create_transform(input_size=SIZE, is_training=True)
    assert _types(ours) == _types(timm_tf)
    with pytest.raises(ValueError):
        create_stim_transform(input_size=SIZE, is_training=False)


def test_create_stim_transform_prefetcher_outputs_uint8():
    tf = create_stim_transform(input_size=SIZE, lighting_std=0.1, uniform_augment=True, use_prefetcher=True)
    assert _types(tf)[-2:] == [MaybePILToTensor, Lighting]
    out = tf(_pil(size=40))
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.uint8


def test_create_stim_transform_separate_splits():
    primary, secondary, final = create_stim_transform(
        input_size=SIZE, lighting_std=0.1, uniform_augment=True, separate=True)
    assert type(secondary.transforms[0]) is UniformAugment
    assert _types(final) == [MaybeToTensor, Lighting, transforms.Normalize]
    assert not any(isinstance(t, (Lighting, UniformAugment)) for t in primary.transforms)


def test_insert_twice_is_refused():
    tf = create_stim_transform(input_size=SIZE, lighting_std=0.1)
    with pytest.raises(ValueError):
        insert_stim_transforms(tf, lighting_std=0.1)
    with pytest.raises(TypeError):
        insert_stim_transforms(lambda x: x, lighting_std=0.1)


# -------------------------------------------------------------------------------- timm's loaders

@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('images')
    for c, cls in enumerate(('cat', 'dog')):
        (root / cls).mkdir()
        for i in range(4):
            _pil(seed=10 * c + i, size=20 + 4 * i).save(root / cls / f'{i}.png')
    return str(root)


def _loader(root, use_prefetcher, **kwargs):
    return create_loader(
        ImageDataset(root), input_size=(3, SIZE, SIZE), batch_size=4, is_training=True,
        use_prefetcher=use_prefetcher, device=torch.device('cpu'), num_workers=0, **kwargs)


@pytest.mark.parametrize('use_prefetcher', [False, True])
def test_add_stim_transforms_through_create_loader(image_folder, use_prefetcher):
    loader = _loader(image_folder, use_prefetcher)
    add_stim_transforms(loader, lighting_std=0.1, uniform_augment=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    tf = loader.dataset.transform
    names = [type(t).__name__ for t in tf.transforms]
    assert names.index('UniformAugment') == 2 and names.index('Lighting') == names.index(
        'MaybePILToTensor' if use_prefetcher else 'MaybeToTensor') + 1
    assert tf.transforms[2].kwargs['fillcolor'] == (128, 128, 128)
    random.seed(0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.shape == (4,)
    assert x.min() < 0  # normalized by the transform or by the prefetcher
    assert torch.isfinite(x).all()


def test_add_stim_transforms_noop_and_errors(image_folder):
    loader = _loader(image_folder, False)
    before = loader.dataset.transform
    add_stim_transforms(loader)
    assert loader.dataset.transform is before
    add_stim_transforms(loader, lighting_std=0.1)
    with pytest.raises(ValueError):
        add_stim_transforms(loader, lighting_std=0.1)


def test_add_stim_transforms_aug_splits(image_folder):
    dataset = AugMixDataset(ImageDataset(image_folder), num_splits=2)
    loader = create_loader(
        dataset, input_size=(3, SIZE, SIZE), batch_size=4, is_training=True, num_aug_splits=2,
        use_prefetcher=True, device=torch.device('cpu'), num_workers=0)
    add_stim_transforms(loader, lighting_std=0.1, uniform_augment=True)
    assert type(dataset.augmentation.transforms[0]) is UniformAugment
    assert _types(dataset.normalize) == [MaybePILToTensor, Lighting]
    x, y = next(iter(loader))
    assert x.shape == (8, 3, SIZE, SIZE) and y.shape == (8,)


def test_add_stim_transforms_scheduled_sizes(image_folder):
    loader = _loader(image_folder, False, input_size_choices=[SIZE, SIZE + 8], num_batches=2)
    add_stim_transforms(loader, lighting_std=0.1, uniform_augment=True)
    for tf in loader.dataset.transforms:
        assert {UniformAugment, Lighting} <= set(_types(tf))
    for x, _ in loader:
        assert x.shape[-1] in (SIZE, SIZE + 8)
