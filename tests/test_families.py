"""Every supported family: attach, subnetwork forward/backward, real skipping, exact skip functions, exact detach.

The fast sweep runs one small model per family; the ``slow`` sweep runs every timm model of
these families up to ``PARAM_CAP`` parameters. Larger ones (e.g. ``vit_base*``/``vit_large*``,
``convnext_base`` and up, ``tresnet_l``/``tresnet_xl``, ``resnet50x16_clip``, ``nf_resnet101``)
are the same classes and block types as smaller ones already run; they are built on the meta
device and checked structurally: attach, every stage and skip function resolved, exactly the
dropped blocks replaced while a subnet is active, everything restored.
"""
import copy
import csv
import os

import pytest
import timm
import torch
import yaml

import timm_stim
from timm_stim import StimulativeTask, Subnet, UnsupportedModelError
from timm_stim.inputs import sample_input_size
from timm_stim.training.train import main
from helpers import assert_only_kept_blocks_ran, make_input

# family -> (timm modules building it, model name patterns): the slow sweep's selection.
FAMILIES = {
    'resnet': (['resnet'], ['*resnet*', '*resnext*']),
    'resnetv2': (['resnetv2'], ['*resnet*', '*resnext*']),
    'byobnet': (['byobnet', 'byoanet'], ['*resnet*', '*resnext*']),
    'nfnet': (['nfnet'], ['nf_resnet*', 'nf_ecaresnet*', 'nf_seresnet*', 'nf_regnet*', 'nfnet*', 'dm_nfnet*']),
    'legacy_senet': (['senet'], ['legacy_seresnet*', 'legacy_seresnext*']),
    'tresnet': (['tresnet'], ['tresnet*']),
    'cspnet': (['cspnet'], ['cspresnet*', 'cspresnext*', 'cspdarknet*', 'darknet*', 'cs3*']),
    'convnext': (['convnext'], ['convnext*']),
    'vit': (['vision_transformer', 'vision_transformer_hybrid', 'deit', 'eva', 'vision_transformer_relpos'],
            ['vit_*', 'deit*', 'eva*']),
}

# One small model per family (and per block type worth its own check), with creation kwargs.
FAST_MODELS = [
    ('byobnet', 'resnext26ts', {}),
    ('byobnet', 'resnet32ts', {}),  # SiLU: a dropped block applies silu(x)
    ('byobnet', 'lambda_resnet26t', {}),  # byoanet SelfAttnBlock
    ('nfnet', 'nf_resnet26', {}),
    ('legacy_senet', 'legacy_seresnet18', {}),
    ('tresnet', 'tresnet_m', {}),
    ('cspnet', 'cspresnet50', {}),  # BottleneckBlock, LeakyReLU after the sum
    ('cspnet', 'cspdarknet53', {}),  # DarkBlock, nothing after the sum
    ('convnext', 'convnext_atto', {}),
    ('vit', 'vit_tiny_patch16_224', {'img_size': 32}),
    ('vit', 'deit_tiny_distilled_patch16_224', {'img_size': 32}),
    ('vit', 'eva02_tiny_patch14_224', {'img_size': 28}),  # Eva: EvaBlock with rotary embedding
    ('vit', 'eva02_tiny_patch14_224', {'img_size': 28, 'use_post_norm': True}),  # EvaBlockPostNorm
    ('vit', 'vit_relpos_small_patch16_rpn_224', {'img_size': 32}),  # ResPostRelPosBlock
]
FAST_IDS = [name + ('-post_norm' if kw.get('use_post_norm') else '') for _, name, kw in FAST_MODELS]

# Models that need more than the sweep's 64 px even as plain timm models.
MIN_INPUT_SIZE = {'bat_resnext26ts': 256}  # BAT attention fails below 256 px (its feature maps vs block size)

# Parameters (1000 classes) above which the slow sweep checks a model on the meta device only
# (attach, stages, skip functions, activate/restore) instead of running it.
PARAM_CAP = 32_000_000


def _slow_names():
    names = []
    for family, (modules, patterns) in FAMILIES.items():
        names += [(family, n) for n in timm.list_models(patterns, module=modules)]
    return names


def _branch_modules(block):
    """The leaf modules with parameters of the residual branch: some of them run iff the block does.

    Not every one need run (Eva's attention applies ``qkv.weight`` with its own bias through
    ``F.linear``, bypassing the ``qkv`` module), so a block counts as run as often as the most
    called of them.
    """
    return [m for m in block.modules()
            if m is not block and not list(m.children()) and list(m.parameters(recurse=False))]


def _dropping_subnet(stim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        subnet = stim.sample(gen)
        if subnet != stim.full():
            return subnet


def _input_size(model):
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    if cfg.get('fixed_input_size'):
        return cfg['input_size'][-1]
    return 64


def check_family_model(model, family, size, seed=0):
    """Attach, run a sampled smaller subnet forward+backward, check skipping, skip functions and detach."""
    model.eval()
    x = make_input(size=size)
    with torch.no_grad():
        before = model(x)
    stim = timm_stim.attach(model, space='uniform')
    assert stim.adapter.family == family
    if all(d == 1 for d in stim.stage_depths):  # e.g. resnet10t: attaches, nothing to sample
        assert stim.sample() == stim.full()
        stim.detach()
        return

    # A dropped block is the block with its residual branch(es) outputting exactly zero.
    inputs = {}
    handles = [block.register_forward_pre_hook(lambda m, args, key=(s, b): inputs.setdefault(key, args[0].clone()))
               for s, blocks in enumerate(stim._stages) for b, block in enumerate(blocks) if b > 0]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for (s, b), block_input in inputs.items():
        block = stim._stages[s][b]
        zeroed = copy.deepcopy(block)
        with torch.no_grad():
            for p in zeroed.parameters():
                p.zero_()
            kept = [tuple(range(d)) for d in stim.stage_depths]
            kept[s] = tuple(i for i in kept[s] if i != b)
            with stim.activate(Subnet(tuple(kept))):
                skipped = block(block_input.clone())
            assert torch.equal(skipped, zeroed(block_input.clone())), (s, b, type(block).__name__)

    # Forward + backward of a smaller subnet: dropped blocks never run and get no gradient.
    subnet = _dropping_subnet(stim, seed)
    module_calls = {}
    handles = []
    for s, blocks in enumerate(stim._stages):
        for b, block in enumerate(blocks):
            for i, module in enumerate(_branch_modules(block)):
                module_calls[(s, b, i)] = 0

                def hook(*_, key=(s, b, i)):
                    module_calls[key] += 1
                handles.append(module.register_forward_hook(hook))
    model.train()
    model.zero_grad(set_to_none=True)
    with stim.activate(subnet):
        out = model(x)
        out.float().pow(2).mean().backward()
    for h in handles:
        h.remove()
    assert out.shape == before.shape and torch.isfinite(out).all()
    assert any(subnet.dropped(stim.stage_depths))
    calls = {}
    for (s, b, _), n in module_calls.items():
        calls[(s, b)] = max(calls.get((s, b), 0), n)
    assert_only_kept_blocks_ran(stim, subnet, calls)

    # Detach: exactly the plain model again.
    stim.detach()
    model.eval()
    assert not any('forward' in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), before)


def check_family_structure(model, family, seed=0):
    """Attach and activate a sampled smaller subnet without computing (works on the meta device).

    Checks that the adapter resolves every stage and skip function of the model, that exactly
    the dropped blocks are replaced while the subnet is active, and that nothing is left behind.
    """
    stim = timm_stim.attach(model, space='uniform')
    assert stim.adapter.family == family
    stages = stim.adapter.stages(model)
    assert tuple(len(s) for s in stages) == stim.stage_depths and all(d >= 1 for d in stim.stage_depths)
    if all(d == 1 for d in stim.stage_depths):
        assert stim.sample() == stim.full()
    else:
        subnet = _dropping_subnet(stim, seed)
        with stim.activate(subnet):
            for s, blocks in enumerate(stages):
                for b, block in enumerate(blocks):
                    assert ('forward' in block.__dict__) == (b not in subnet.blocks[s]), (s, b)
    assert not any('forward' in m.__dict__ for m in model.modules())
    stim.detach()
    assert timm_stim.get_stimulator(model) is None


@pytest.mark.parametrize('family,name,kwargs', FAST_MODELS, ids=FAST_IDS)
def test_family(family, name, kwargs):
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    check_family_model(model, family, kwargs.get('img_size', 64))


def test_fast_sweep_covers_every_family():
    registered = {family for family, _, _ in timm_stim.list_adapters()}
    assert set(FAMILIES) == registered
    assert {f for f, _, _ in FAST_MODELS} | {'resnet', 'resnetv2'} == registered  # those two: test_stimulator.py


@pytest.mark.slow
@pytest.mark.parametrize('family,name', _slow_names(), ids=[n for _, n in _slow_names()])
def test_every_model_of_every_family(family, name):
    with torch.device('meta'):
        meta = timm.create_model(name, pretrained=False)
    n_params = sum(p.numel() for p in meta.parameters())
    if n_params > PARAM_CAP:
        # Too large to run within the suite's budget: checked structurally on the meta device.
        check_family_structure(meta, family)
        return
    kwargs = {}
    if family == 'vit':  # 2x2 patches (untrained weights: any img_size is valid)
        kwargs = {'img_size': 2 * meta.patch_embed.feat_ratio()}
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    size = kwargs.get('img_size') or MIN_INPUT_SIZE.get(name) or _input_size(model)
    check_family_model(model, family, size)


# --- non-residual models ---------------------------------------------------------------------

@pytest.mark.parametrize('name', ['mobilenetv3_small_050', 'vgg11', 'efficientnet_b0'])
def test_non_residual_models_are_refused_with_the_family_list(name):
    with torch.device('meta'):
        model = timm.create_model(name, pretrained=False)
    with pytest.raises(UnsupportedModelError) as info:
        timm_stim.attach(model)
    msg = str(info.value)
    for family in FAMILIES:
        assert f'  - {family} (' in msg, family
    assert timm_stim.get_stimulator(model) is None


# --- ViT inputs ------------------------------------------------------------------------------

def test_sample_input_size_rounds_down_to_a_multiple():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        h, w = sample_input_size(224, 224, 0.1, 1.0, gen, multiple=16)
        assert h == w and h % 16 == 0 and 16 <= h <= 224
        h, w = sample_input_size(64, 96, 0.4, 1.0, gen, multiple=16)
        assert h % 16 == 0 and w % 16 == 0 and 16 <= h <= 64 and w <= 96
    assert sample_input_size(32, 32, 0.1, 0.2, gen, multiple=16) == (16, 16)  # at least one patch


def test_fixed_size_vit_refuses_smaller_inputs_up_front():
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, img_size=32)
    with pytest.raises(ValueError, match='dynamic_img_size=True'):
        StimulativeTask(model, num_subnets=1, min_scale=0.5, verbose=False)
    assert timm_stim.get_stimulator(model) is None
    StimulativeTask(model, num_subnets=1, verbose=False)  # scale 1 is fine


def test_dynamic_vit_subnets_get_patch_multiple_inputs():
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, img_size=64,
                              dynamic_img_size=True)
    task = StimulativeTask(model, num_subnets=3, min_scale=0.3, verbose=False)
    assert task.input_multiple == 16
    task.train()
    result = task(make_input(size=64), torch.tensor([0, 1]))
    result['loss'].backward()
    sizes = [size for _, size in task.last_subnets]
    assert len(sizes) == 3 and all(h % 16 == 0 and w % 16 == 0 and h >= 16 for h, w in sizes)


def test_eva_subnets_get_patch_multiple_inputs_with_rotary_embedding():
    model = timm.create_model('eva02_tiny_patch14_224', pretrained=False, num_classes=5, img_size=56,
                              dynamic_img_size=True)
    task = StimulativeTask(model, num_subnets=3, min_scale=0.3, seed=1, verbose=False)
    assert task.input_multiple == 14
    task.train()
    task(make_input(size=56), torch.tensor([0, 1]))['loss'].backward()
    sizes = [size for _, size in task.last_subnets]
    assert len(sizes) == 3 and all(h % 14 == 0 and w % 14 == 0 and h >= 14 for h, w in sizes)
    assert any(h < 56 for h, _ in sizes)


def test_relpos_vit_refuses_smaller_inputs_up_front():
    model = timm.create_model('vit_relpos_small_patch16_224', pretrained=False, num_classes=5, img_size=32)
    with pytest.raises(ValueError, match='min_scale=0.5.*relative-position tables.*--stim-min-scale 1'):
        StimulativeTask(model, num_subnets=1, min_scale=0.5, verbose=False)
    assert timm_stim.get_stimulator(model) is None


def test_vit_blocks_in_configurable_groups():
    from timm.models.vision_transformer import VisionTransformer
    from timm_stim.adapters import VisionTransformerAdapter
    from timm_stim.adapters._registry import _adapters

    class GroupedViT(VisionTransformerAdapter):
        groups = 4

    default = _adapters[VisionTransformer]
    timm_stim.register_adapter(VisionTransformer)(GroupedViT)
    try:
        model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, img_size=32)
        assert timm_stim.attach(model, space='stpp').stage_depths == (3, 3, 3, 3)
        assert timm_stim.get_stimulator(model).max_drops == (0, 1, 1, 0)
        timm_stim.get_stimulator(model).detach()
        check_family_model(model, 'vit', 32)
    finally:
        _adapters[VisionTransformer] = default
    assert timm_stim.attach(model).stage_depths == (12,)


# --- train_stim.py on the embedded digits, one model per family --------------------------------

TRAIN_MODELS = [
    ('resnext26ts', []),
    ('lambda_resnet26t', ['--stim-min-scale', '0.6']),  # its lambda layers need >= 17 px: 0.5 is refused
    ('nf_resnet26', []),
    ('legacy_seresnet18', []),
    ('tresnet_m', ['--input-size', '3', '64', '64']),  # 16 px subnet inputs are below its smallest input (20)
    ('cspresnet50', []),
    ('convnext_atto', ['--input-size', '3', '64', '64']),  # and below ConvNeXt's (32)
    ('vit_tiny_patch16_224', ['--model-kwargs', 'img_size=32', 'dynamic_img_size=True']),
    ('eva02_tiny_patch14_224', ['--input-size', '3', '28', '28', '--model-kwargs', 'img_size=28',
                                'dynamic_img_size=True']),
]


def _train_args(out, name, *extra):
    return ['--dataset', 'embedded/digits', '--model', name, '--num-classes', '10', '--device', 'cpu',
            '--input-size', '3', '32', '32', '--mean', '0.5', '0.5', '0.5', '--std', '0.5', '0.5', '0.5',
            '-b', '8', '--workers', '0', '--lr', '0.01', '--warmup-epochs', '0', '--epochs', '1',
            '--train-batches-per-epoch', '2', '--output', str(out), '--experiment', 'run', '--seed', '3',
            '--validation-batch-size', '128', '--stim-subnets', '2', '--stim-min-scale', '0.5', *extra]


@pytest.mark.slow
@pytest.mark.parametrize('name,extra', TRAIN_MODELS, ids=[n for n, _ in TRAIN_MODELS])
def test_train_stim_runs_each_family(tmp_path, name, extra):
    result = main(_train_args(tmp_path, name, *extra))
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    assert len(rows) == 1 and float(rows[0]['train_stim_kl']) > 0
    resolved = yaml.safe_load(open(os.path.join(result['output_dir'], 'args.yaml')))['stim_resolved']
    short = resolved['input_size'][-1]
    multiple = {'tresnet_m': 4, 'vit_tiny_patch16_224': 16, 'eva02_tiny_patch14_224': 14}.get(name, 1)
    min_scale = float(extra[extra.index('--stim-min-scale') + 1]) if '--stim-min-scale' in extra else 0.5
    low = int(short * min_scale)
    assert resolved['subnet_input_short_side'] == [low - low % multiple, short]


def test_tresnet_subnet_inputs_fit_its_space_to_depth_stem():
    model = timm.create_model('tresnet_m', pretrained=False, num_classes=5)
    task = StimulativeTask(model, num_subnets=4, min_scale=0.5, verbose=False)
    assert task.input_multiple == 4
    task.train()
    task(make_input(size=44), torch.tensor([0, 1]))['loss'].backward()
    assert all(h % 4 == 0 and w % 4 == 0 for _, (h, w) in task.last_subnets)


def test_train_stim_fixed_size_vit_with_small_inputs_stops_before_writing(tmp_path, caplog):
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as info:
        main(_train_args(out, 'vit_tiny_patch16_224', '--model-kwargs', 'img_size=32'))
    assert info.value.code == 2
    assert '--model-kwargs dynamic_img_size=True' in caplog.text
    assert not out.exists()
