"""Attach/detach, real skipping of dropped blocks, exact outputs, BatchNorm handling."""
import copy

import pytest
import timm
import torch
import torch.nn as nn

import timm_stim
from timm_stim import Subnet
from helpers import assert_only_kept_blocks_ran, make_input

ATTACH_MODELS = ['resnet18', 'resnet50', 'resnext50_32x4d', 'seresnext26d_32x4d', 'resnet26d', 'resnetv2_50']

# One model per block type the ResNet / ResNetV2 adapters know.
BLOCK_TYPE_MODELS = ['resnet18', 'resnet26d', 'res2net50_26w_4s', 'resnest26d', 'skresnet18', 'skresnext50_32x4d',
                     'resnetv2_50', 'resnetv2_18', 'ecaresnet26t', 'resnetblur18']


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize('name', ATTACH_MODELS)
def test_attach_detach_is_invisible(name):
    model = timm.create_model(name, pretrained=False, num_classes=7).eval()
    x = make_input()
    with torch.no_grad():
        before = model(x)
    state = _state(model)
    n_params, n_buffers = len(list(model.parameters())), len(list(model.buffers()))

    stim = timm_stim.attach(model, space='uniform')
    assert timm_stim.get_stimulator(model) is stim
    assert len(list(model.parameters())) == n_params and len(list(model.buffers())) == n_buffers
    _assert_same_state(_state(model), state)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # attached but inactive: plain model
        with stim.activate(stim.sample(torch.Generator().manual_seed(1))):
            model(x)
    stim.detach()
    assert timm_stim.get_stimulator(model) is None
    _assert_same_state(_state(model), state)
    assert not any('forward' in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_create_model_returns_timm_model_with_same_keys():
    model = timm_stim.create_model('resnet18', stim_space='keep:1', num_classes=5)
    plain = timm.create_model('resnet18', num_classes=5)
    assert type(model) is type(plain)
    assert list(model.state_dict()) == list(plain.state_dict())
    stim = timm_stim.get_stimulator(model)
    assert stim.stage_depths == (2, 2, 2, 2)
    assert stim.depth_choices == ((1, 2),) * 4


def _count_calls(model):
    """Count forward calls of every block's first conv (the residual branch's entry)."""
    counts = {}
    stim = timm_stim.get_stimulator(model)
    for s, blocks in enumerate(stim._stages):
        for b, block in enumerate(blocks):
            first = next(m for m in block.modules() if isinstance(m, nn.Conv2d))
            counts[(s, b)] = 0

            def hook(*_, key=(s, b)):
                counts[key] += 1
            first.register_forward_hook(hook)
    return counts


@pytest.mark.parametrize('name', ['resnet50', 'resnetv2_50'])
def test_dropped_blocks_not_executed_and_get_no_gradient(name):
    model = timm_stim.create_model(name, num_classes=5).train()
    stim = timm_stim.get_stimulator(model)
    counts = _count_calls(model)
    subnet = Subnet(((0, 1), (0, 2), (0, 1, 2, 3), (0,)))
    with stim.activate(subnet):
        model(make_input()).sum().backward()
    assert_only_kept_blocks_ran(stim, subnet, counts)


@pytest.mark.parametrize('train', [False, True])
def test_full_subnet_reproduces_model(train):
    model = timm_stim.create_model('resnet26d', num_classes=5, stim_bn='update').train(train)
    stim = timm_stim.get_stimulator(model)
    x = make_input()
    ref = copy.deepcopy(model)
    timm_stim.get_stimulator(ref).detach()
    with stim.activate(stim.full()):
        out = model(x)
    assert torch.equal(out, ref(x))


@pytest.mark.parametrize('name', BLOCK_TYPE_MODELS)
def test_dropped_block_is_block_without_residual_branch(name):
    """A skipped block equals the real block whose residual branch outputs exactly zero."""
    model = timm_stim.create_model(name, num_classes=5).eval()
    stim = timm_stim.get_stimulator(model)
    stage = next(s for s, d in enumerate(stim.stage_depths) if d >= 2)
    block = stim._stages[stage][1]
    zeroed = copy.deepcopy(block)
    with torch.no_grad():
        for p in zeroed.parameters():
            p.zero_()
    # The block's input inside the network: run the model up to this block.
    feats = {}
    handle = block.register_forward_pre_hook(lambda m, args: feats.setdefault('x', args[0].clone()))
    with torch.no_grad():
        model(make_input())
    handle.remove()
    x = feats['x']
    kept = [tuple(range(d)) for d in stim.stage_depths]
    kept[stage] = tuple(b for b in range(stim.stage_depths[stage]) if b != 1)
    with torch.no_grad(), stim.activate(Subnet(tuple(kept))):
        skipped = block(x)
    with torch.no_grad():
        assert torch.equal(skipped, zeroed(x))


def test_skip_with_non_relu_activation_applies_it():
    model = timm_stim.create_model('resnet18', num_classes=5, act_layer=nn.SiLU).eval()
    stim = timm_stim.get_stimulator(model)
    block = stim._stages[0][1]
    x = torch.randn(2, 64, 8, 8)
    with stim.activate(Subnet(((0,), (0, 1), (0, 1), (0, 1)))):
        assert torch.equal(block(x), nn.functional.silu(x))


@pytest.mark.parametrize('bn,changes', [('freeze', False), ('update', True)])
def test_bn_running_stats(bn, changes):
    model = timm_stim.create_model('resnet18', num_classes=5, stim_bn=bn).train()
    stim = timm_stim.get_stimulator(model)
    before = _state(model)
    with stim.activate(Subnet(((0, 1), (0,), (0, 1), (0,)))):
        model(make_input(batch=4))
    after = _state(model)
    bn_keys = [k for k in before if 'running' in k or 'num_batches' in k]
    assert bn_keys
    assert any(not torch.equal(before[k], after[k]) for k in bn_keys) == changes
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # Outside the subnet pass, running statistics update as usual.
    model(make_input(batch=4))
    assert any(not torch.equal(after[k], model.state_dict()[k]) for k in bn_keys)


def test_freeze_normalizes_with_batch_statistics():
    model = timm_stim.create_model('resnet18', num_classes=5, stim_bn='freeze').train()
    ref = copy.deepcopy(model)
    timm_stim.get_stimulator(ref).detach()
    stim = timm_stim.get_stimulator(model)
    x = make_input(batch=4)
    with stim.activate(stim.full()):
        out = model(x)
    assert torch.equal(out, ref(x))  # same batch statistics, only the buffers are left alone


def test_activate_restores_on_error_and_refuses_nesting():
    model = timm_stim.create_model('resnet18', num_classes=5)
    stim = timm_stim.get_stimulator(model)
    sub = Subnet(((0,), (0,), (0,), (0,)))
    with pytest.raises(RuntimeError, match='boom'):
        with stim.activate(sub):
            raise RuntimeError('boom')
    assert stim.active is None
    assert not any('forward' in m.__dict__ for m in model.modules())
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with stim.activate(sub):
        with pytest.raises(RuntimeError, match='nested'):
            with stim.activate(sub):
                pass
        with pytest.raises(RuntimeError, match='active'):
            stim.detach()


def test_subnet_value():
    s = Subnet(((0, 1, 2), [0, 1]))
    assert s == Subnet(((0, 1, 2), (0, 1))) and hash(s) == hash(Subnet(((0, 1, 2), (0, 1))))
    assert s.depths == (3, 2)
    assert repr(s) == 'Subnet(blocks=((0, 1, 2), (0, 1)))'
    with pytest.raises(Exception):
        s.blocks = ()
    assert Subnet.from_depths((3, 1)) == Subnet(((0, 1, 2), (0,)))
    for bad in [((1, 2),), ((0, 2, 1),), ((),), ((0, 0),)]:
        with pytest.raises(ValueError, match='block 0'):
            Subnet(bad)


def test_subnet_must_fit_model():
    model = timm_stim.create_model('resnet18', num_classes=5)
    stim = timm_stim.get_stimulator(model)
    with pytest.raises(ValueError, match='stages'):
        with stim.activate(Subnet(((0,), (0,)))):
            pass
    with pytest.raises(ValueError, match='cannot keep block 2'):
        with stim.activate(Subnet(((0, 2), (0,), (0,), (0,)))):
            pass


def test_deepcopy_gets_own_stimulator():
    model = timm_stim.create_model('resnet18', num_classes=5)
    clone = copy.deepcopy(model)
    stim, stim_clone = timm_stim.get_stimulator(model), timm_stim.get_stimulator(clone)
    assert stim_clone is not stim and stim_clone.model is clone
    with stim_clone.activate(Subnet(((0,), (0,), (0,), (0,)))):
        assert 'forward' in clone.layer1[1].__dict__ and 'forward' not in model.layer1[1].__dict__


def test_channels_last_and_bf16_autocast():
    model = timm_stim.create_model('resnet18', num_classes=5).train().to(memory_format=torch.channels_last)
    stim = timm_stim.get_stimulator(model)
    x = make_input().to(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16), stim.activate(Subnet(((0,), (0, 1), (0,), (0, 1)))):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert model.layer1[1].conv1.weight.grad is None and model.layer2[1].conv1.weight.grad is not None


def _dispatched_ops(model, x):
    """Every aten op a training forward + backward dispatches, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record() as record:
        model(x).sum().backward()
    return record.ops


@pytest.mark.parametrize('name', ['resnet18', 'resnext26ts', 'convnext_atto'])
def test_attached_but_inactive_model_runs_exactly_the_plain_ops(name):
    # Nothing is paid while no subnetwork is active: not one extra op in forward or backward.
    model = timm.create_model(name, num_classes=5).train()
    plain = copy.deepcopy(model)
    timm_stim.attach(model, space='uniform')
    x = make_input(batch=2, size=32)
    ops = _dispatched_ops(model, x)
    assert len(ops) > 50 and ops == _dispatched_ops(plain, x)


@pytest.mark.parametrize('model', [None, 'resnet18', 3])
def test_attach_to_something_that_is_not_a_model_is_a_clear_error(model):
    import timm_stim
    with pytest.raises(TypeError, match=r'attach expects a timm model \(a torch.nn.Module'):
        timm_stim.attach(model)
