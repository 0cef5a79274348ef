"""PCA lighting noise, UniformAugment and their insertion into timm's train transforms / loaders."""
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from timm.data import AugMixDataset, ImageDataset, create_loader, create_transform
from timm.data.transforms import MaybePILToTensor, MaybeToTensor, RandomResizedCropAndInterpolation
from torchvision import transforms

from timm_stim.training.transforms import (
    IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, UNIAUGMENT_OPS, UNIFORM_AUGMENT_LIM_OPS, Lighting, PilLighting,
    UniAugment, UniformAugmentLim, add_stim_transforms, create_stim_transform, insert_stim_transforms)

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


# ------------------------------------------------------------------------------------ PilLighting

def _authors_lighting(img: Image.Image, inc: np.ndarray) -> Image.Image:
    """The ST authors' Lighting.__call__ after the draw, restated: uint8 levels + offset, clip, truncate."""
    summed = np.add(img, inc)  # the PIL image is read as a uint8 array; float64 sum
    return Image.fromarray(np.clip(summed, 0, 255).astype(np.uint8))


def test_pil_lighting_equals_the_authors_arithmetic():
    img = _pil(size=16)
    lighting = PilLighting(0.1)
    for seed in range(20):
        torch.manual_seed(seed)
        out = lighting(img)
        torch.manual_seed(seed)
        alpha = (torch.randn(3, dtype=torch.float64) * 0.1).to(torch.float32).numpy()  # theirs: randn * std, float32
        inc = np.dot(np.asarray(IMAGENET_PCA_EIGVEC), (alpha * np.asarray(IMAGENET_PCA_EIGVAL)).reshape(3, 1))
        assert out.tobytes() == _authors_lighting(img, inc.reshape(3)).tobytes()
    # Large offsets (alphastd 50) are clipped and truncated the same way.
    inc = np.array([-3.7, 0.4, 260.2])
    assert PilLighting.apply_offset(img, inc).tobytes() == _authors_lighting(img, inc).tobytes()


def test_pil_lighting_moves_each_channel_by_zero_or_minus_one_level():
    """What the official recipe's lighting does: channel c drops one level iff its offset is negative."""
    img = _pil(size=16)
    src = np.asarray(img).astype(int)
    lighting = PilLighting(0.1)
    lowered = np.zeros(3)
    for seed in range(200):
        torch.manual_seed(seed)
        inc = lighting.sample_offset()
        torch.manual_seed(seed)
        diff = np.asarray(lighting(img)).astype(int) - src
        for c in range(3):
            expected = -1 if inc[c] < 0 else 0
            assert (diff[..., c][src[..., c] > 0] == expected).all()
            assert (diff[..., c][src[..., c] == 0] == 0).all()
            lowered[c] += inc[c] < 0
    assert (lowered > 50).all() and (lowered < 150).all()  # each sign about half the time


def test_pil_lighting_zero_std_and_bad_input():
    img = _pil()
    state = torch.get_rng_state()
    assert PilLighting(0.)(img) is img
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(TypeError):
        PilLighting(0.1)(img.convert('L'))
    with pytest.raises(TypeError):
        PilLighting(0.1)(torch.rand(3, 4, 4))
    with pytest.raises(ValueError):
        PilLighting(-0.1)


# ------------------------------------------------------------------------------------- UniAugment

_TA_NAMES = ('identity', 'auto_contrast', 'equalize', 'rotate', 'solarize', 'color', 'posterize', 'contrast',
             'brightness', 'sharpness', 'shear_x', 'shear_y', 'translate_x', 'translate_y')
_ENHANCERS = {'color': ImageEnhance.Color, 'contrast': ImageEnhance.Contrast,
              'brightness': ImageEnhance.Brightness, 'sharpness': ImageEnhance.Sharpness}


def _reference_uniaugment(img: Image.Image, applied: list) -> Image.Image:
    """TrivialAugment's UniAugment on its fixed_standard space (31 levels), restated with PIL directly.

    Same draws from Python's random in the same order: two op choices with replacement, then per
    op its level in 0..30, its apply coin (p 0.5) and, for rotate / shear / translate, a sign coin.
    PIL's defaults for geometry: nearest resampling, black fill.
    """
    for name in random.choices(_TA_NAMES, k=2):
        level = random.randint(0, 30)
        if not random.random() < 0.5:
            continue
        applied.append(name)
        if name == 'auto_contrast':
            img = ImageOps.autocontrast(img)
        elif name == 'equalize':
            img = ImageOps.equalize(img)
        elif name == 'rotate':
            degrees = int(level * 30 / 30)
            img = img.rotate(-degrees if random.random() > 0.5 else degrees)
        elif name == 'solarize':
            img = ImageOps.solarize(img, 256 - int(level * 256 / 30))
        elif name == 'posterize':
            img = ImageOps.posterize(img, 8 - int(level * (8 - 4) / 30))
        elif name in _ENHANCERS:
            img = _ENHANCERS[name](img).enhance(float(level) * (1.9 - 0.1) / 30 + 0.1)
        elif name.startswith('shear'):
            v = float(level) * 0.3 / 30
            v = -v if random.random() > 0.5 else v
            data = (1, v, 0, 0, 1, 0) if name == 'shear_x' else (1, 0, 0, v, 1, 0)
            img = img.transform(img.size, Image.AFFINE, data)
        elif name.startswith('translate'):
            v = int(level * 10 / 30)
            v = -v if random.random() > 0.5 else v
            data = (1, 0, v, 0, 1, 0) if name == 'translate_x' else (1, 0, 0, 0, 1, v)
            img = img.transform(img.size, Image.AFFINE, data)
    return img


def test_uniaugment_equals_trivialaugment_uniaugment_for_the_same_draws():
    ua = UniAugment()
    assert len(UNIAUGMENT_OPS) == 14 and 'Invert' not in UNIAUGMENT_OPS
    applied = []
    for i in range(400):
        img = _pil(seed=i % 7, size=20)
        random.seed(i)
        ours = ua(img)
        random.seed(i)
        reference = _reference_uniaugment(img, applied)
        assert ours.tobytes() == reference.tobytes(), i
    assert set(applied) == set(_TA_NAMES)  # every op ran, identity included
    # Both consume exactly the same number of draws: the streams stay aligned afterwards.
    random.seed(99)
    ua(_pil(size=20))
    after_ours = random.random()
    random.seed(99)
    _reference_uniaugment(_pil(size=20), [])
    assert random.random() == after_ours


def test_uniaugment_argument_ranges():
    """The fixed_standard ranges: rotate 0..30 degrees, translate at most 10 px, posterize 8..4 bits, ..."""
    calls = []
    ua = _recording(UniAugment(num_ops=2, prob=1.0), calls)
    random.seed(0)
    for _ in range(3000):
        ua(_pil(size=4))
    args = {}
    for name, value, kwargs in calls:
        args.setdefault(name, set()).add(value)
        if name in ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY'):
            assert kwargs == {'resample': Image.NEAREST, 'fillcolor': None}  # PIL defaults: nearest, black
    assert set(args) == set(UNIAUGMENT_OPS)
    assert args['Rotate'] == set(range(-30, 31))
    assert args['TranslateX'] == args['TranslateY'] == set(range(-10, 11))
    assert args['Posterize'] == {4, 5, 6, 7, 8}
    assert min(args['Solarize']) == 0 and max(args['Solarize']) == 256
    assert max(abs(v) for v in args['ShearX']) == pytest.approx(0.3)
    assert min(args['Color']) == pytest.approx(0.1) and max(args['Color']) == pytest.approx(1.9)


# ------------------------------------------------------------------------------ UniformAugmentLim

def test_uniform_augment_lim_is_reproducible_and_keeps_size():
    ua = UniformAugmentLim()
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


def _recording(ua, calls: list):
    """Replace each op function by one recording (name, magnitude) and returning the image as is."""
    def wrap(name):
        def fn(img, *args, **kwargs):
            calls.append((name, args[0] if args else None, kwargs))
            return img
        return fn
    ua.ops = [op._replace(fn=wrap(op.name)) for op in ua.ops]
    return ua


def test_uniform_augment_lim_reaches_every_op_within_published_ranges():
    ranges = {
        'ShearX': (-0.3, 0.3), 'ShearY': (-0.3, 0.3), 'TranslateX': (-0.45, 0.45), 'TranslateY': (-0.45, 0.45),
        'Rotate': (-30, 30), 'AutoContrast': None, 'Invert': None, 'Equalize': None, 'Solarize': (0, 256),
        'Posterize': (4, 8), 'Contrast': (0.1, 1.9), 'Color': (0.1, 1.9), 'Brightness': (0.1, 1.9),
        'Sharpness': (0.1, 1.9),
    }
    assert set(UNIFORM_AUGMENT_LIM_OPS) == set(ranges) and len(UNIFORM_AUGMENT_LIM_OPS) == 14
    calls = []
    ua = _recording(UniformAugmentLim(num_ops=2, prob=1.0, hparams={'img_mean': (1, 2, 3)}), calls)
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


@pytest.mark.parametrize('cls', [UniAugment, UniformAugmentLim])
def test_uniform_augment_applies_each_drawn_op_with_prob_half(cls):
    calls = []
    ua = _recording(cls(num_ops=1), calls)
    random.seed(1)
    img = _pil(size=4)
    for _ in range(4000):
        ua(img)
    assert 0.46 < len(calls) / 4000 < 0.54


@pytest.mark.parametrize('cls', [UniAugment, UniformAugmentLim])
def test_uniform_augment_real_ops_run_on_pil(cls):
    # Every real op runs on an RGB image and keeps its size (prob=1, many draws).
    ua = cls(num_ops=3, prob=1.0)
    random.seed(2)
    img = _pil(size=12)
    for _ in range(60):
        out = ua(img)
        assert out.size == img.size and out.mode == 'RGB'
    with pytest.raises(ValueError):
        cls(num_ops=0)
    with pytest.raises(ValueError):
        cls(prob=1.5)


# --------------------------------------------------------------------------------------- Pipelines

def test_official_order_lighting_then_uniaugment_after_color_jitter():
    """RandomResizedCrop, flip, ColorJitter, lighting, UniAugment, ToTensor, Normalize: the authors' order."""
    tf = create_stim_transform(input_size=(3, SIZE, SIZE), lighting_std=0.1, lighting_mode='pil-uint8',
                               uniform_augment=True)
    assert _types(tf) == [
        RandomResizedCropAndInterpolation, transforms.RandomHorizontalFlip, transforms.ColorJitter, PilLighting,
        UniAugment, MaybeToTensor, transforms.Normalize]
    random.seed(0)
    out = tf(_pil(size=40))
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32 and out.min() < 0
    prefetch = create_stim_transform(input_size=SIZE, lighting_std=0.1, lighting_mode='pil-uint8',
                                     uniform_augment=True, use_prefetcher=True)
    assert _types(prefetch)[-4:] == [transforms.ColorJitter, PilLighting, UniAugment, MaybePILToTensor]
    assert prefetch(_pil(size=40)).dtype == torch.uint8


def test_lim_variant_and_tensor_lighting_order_and_output():
    tf = create_stim_transform(
        input_size=(3, SIZE, SIZE), lighting_std=0.1, uniform_augment=True, uniform_augment_variant='lim2020',
        interpolation='bicubic')
    assert _types(tf) == [
        RandomResizedCropAndInterpolation, transforms.RandomHorizontalFlip, UniformAugmentLim,
        transforms.ColorJitter, MaybeToTensor, Lighting, transforms.Normalize]
    ua = tf.transforms[2]
    assert ua.kwargs['fillcolor'] == (124, 116, 104)  # ImageNet mean, as timm's auto-augment fill
    assert ua.kwargs['resample'] == Image.Resampling.BICUBIC
    random.seed(0)
    out = tf(_pil(size=40))
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
    assert out.min() < 0  # normalized, not in [0, 1]


def test_create_stim_transform_keeps_timm_options():
    tf = create_stim_transform(
        input_size=SIZE, lighting_std=0.1, uniform_augment=True, uniform_augment_variant='lim2020',
        auto_augment='rand-m9-mstd0.5', re_prob=0.25)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'UniformAugmentLim', 'RandAugment',
                     'MaybeToTensor', 'Lighting', 'Normalize', 'RandomErasing']
    tf = create_stim_transform(input_size=SIZE, uniform_augment=True, auto_augment='rand-m9-mstd0.5', re_prob=0.25)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'RandAugment', 'UniAugment',
                     'MaybeToTensor', 'Normalize', 'RandomErasing']


def test_create_stim_transform_off_is_timm_and_bad_choices_refused():
    ours = create_stim_transform(input_size=SIZE)
    timm_tf = create_transform(input_size=SIZE, is_training=True)
    assert _types(ours) == _types(timm_tf)
    with pytest.raises(ValueError):
        create_stim_transform(input_size=SIZE, is_training=False)
    with pytest.raises(ValueError, match='lighting_mode'):
        create_stim_transform(input_size=SIZE, lighting_std=0.1, lighting_mode='numpy')
    with pytest.raises(ValueError, match='uniform_augment_variant'):
        create_stim_transform(input_size=SIZE, uniform_augment=True, uniform_augment_variant='lim')


def test_create_stim_transform_prefetcher_outputs_uint8():
    tf = create_stim_transform(input_size=SIZE, lighting_std=0.1, uniform_augment=True, use_prefetcher=True)
    assert _types(tf)[-2:] == [MaybePILToTensor, Lighting]
    out = tf(_pil(size=40))
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.uint8


@pytest.mark.parametrize('lighting_mode,variant', [('tensor', 'lim2020'), ('pil-uint8', 'trivialaugment')])
def test_create_stim_transform_separate_splits(lighting_mode, variant):
    primary, secondary, final = create_stim_transform(
        input_size=SIZE, lighting_std=0.1, uniform_augment=True, separate=True, lighting_mode=lighting_mode,
        uniform_augment_variant=variant)
    if variant == 'lim2020':
        assert type(secondary.transforms[0]) is UniformAugmentLim
        assert _types(final) == [MaybeToTensor, Lighting, transforms.Normalize]
    else:
        assert _types(secondary)[-2:] == [transforms.ColorJitter, UniAugment]
        assert _types(final) == [PilLighting, MaybeToTensor, transforms.Normalize]
    assert not any(isinstance(t, (Lighting, PilLighting, UniAugment, UniformAugmentLim)) for t in primary.transforms)


def test_insert_twice_is_refused():
    tf = create_stim_transform(input_size=SIZE, lighting_std=0.1)
    with pytest.raises(ValueError):
        insert_stim_transforms(tf, lighting_std=0.1)
    tf = create_stim_transform(input_size=SIZE, lighting_std=0.1, lighting_mode='pil-uint8')
    with pytest.raises(ValueError):
        insert_stim_transforms(tf, uniform_augment=True)
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
    add_stim_transforms(loader, lighting_std=0.1, uniform_augment=True, uniform_augment_variant='lim2020',
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    tf = loader.dataset.transform
    names = [type(t).__name__ for t in tf.transforms]
    assert names.index('UniformAugmentLim') == 2 and names.index('Lighting') == names.index(
        'MaybePILToTensor' if use_prefetcher else 'MaybeToTensor') + 1
    assert tf.transforms[2].kwargs['fillcolor'] == (128, 128, 128)
    random.seed(0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.shape == (4,)
    assert x.min() < 0  # normalized by the transform or by the prefetcher
    assert torch.isfinite(x).all()


@pytest.mark.parametrize('use_prefetcher', [False, True])
def test_add_official_transforms_through_create_loader(image_folder, use_prefetcher):
    loader = _loader(image_folder, use_prefetcher, color_jitter=0.4)
    add_stim_transforms(loader, lighting_std=0.1, lighting_mode='pil-uint8', uniform_augment=True)
    names = [type(t).__name__ for t in loader.dataset.transform.transforms]
    assert names[2:5] == ['ColorJitter', 'PilLighting', 'UniAugment']
    random.seed(0)
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, SIZE, SIZE) and torch.isfinite(x).all()


def test_add_stim_transforms_noop_and_errors(image_folder):
    loader = _loader(image_folder, False)
    before = loader.dataset.transform
    add_stim_transforms(loader)
    assert loader.dataset.transform is before
    add_stim_transforms(loader, lighting_std=0.1)
    with pytest.raises(ValueError):
        add_stim_transforms(loader, lighting_std=0.1)
    with pytest.raises(ValueError, match='lighting_mode'):
        add_stim_transforms(loader, lighting_std=0.1, lighting_mode='float')


def test_add_stim_transforms_aug_splits(image_folder):
    dataset = AugMixDataset(ImageDataset(image_folder), num_splits=2)
    loader = create_loader(
        dataset, input_size=(3, SIZE, SIZE), batch_size=4, is_training=True, num_aug_splits=2,
        use_prefetcher=True, device=torch.device('cpu'), num_workers=0)
    add_stim_transforms(loader, lighting_std=0.1, uniform_augment=True)
    assert type(dataset.augmentation.transforms[-1]) is UniAugment
    assert _types(dataset.normalize) == [MaybePILToTensor, Lighting]
    x, y = next(iter(loader))
    assert x.shape == (8, 3, SIZE, SIZE) and y.shape == (8,)


def test_add_stim_transforms_scheduled_sizes(image_folder):
    loader = _loader(image_folder, False, input_size_choices=[SIZE, SIZE + 8], num_batches=2)
    add_stim_transforms(loader, lighting_std=0.1, lighting_mode='pil-uint8', uniform_augment=True)
    for tf in loader.dataset.transforms:
        assert {UniAugment, PilLighting} <= set(_types(tf))
    for x, _ in loader:
        assert x.shape[-1] in (SIZE, SIZE + 8)
