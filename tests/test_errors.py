"""Bad input: clear errors naming the value and the expectation, and the model left untouched."""
import pytest
import timm
import torch

import timm_stim
from timm_stim import StimulativeTask, UnsupportedModelError


def _untouched(model):
    return timm_stim.get_stimulator(model) is None and not any('forward' in m.__dict__ for m in model.modules())


def test_unsupported_model_names_class_and_families():
    model = timm.create_model('mobilenetv3_small_050', num_classes=5)
    with pytest.raises(UnsupportedModelError) as info:
        timm_stim.attach(model)
    msg = str(info.value)
    assert 'MobileNetV3' in msg and 'resnet' in msg and 'resnetv2' in msg and 'register_adapter' in msg
    assert isinstance(info.value, ValueError)
    assert _untouched(model)
    with pytest.raises(UnsupportedModelError):
        timm_stim.create_model('mobilenetv3_small_050')


@pytest.mark.parametrize('space,match', [
    ('0,1,3', '3 per-stage drops but the model has 4 stages'),
    ('0,-1,3,0', 'negative'),
    ('0,1,6,0', 'at most 5 can be dropped'),
    ('three', "Unknown space 'three'"),
])
def test_bad_space_leaves_model_untouched(space, match):
    model = timm.create_model('resnet50', num_classes=5)
    with pytest.raises(ValueError, match=match):
        timm_stim.attach(model, space=space)
    assert _untouched(model)
    with pytest.raises(ValueError, match=match):
        StimulativeTask(model, num_subnets=1, space=space, verbose=False)
    assert _untouched(model)


@pytest.mark.parametrize('kwargs,match', [
    (dict(min_scale=0.0), r'min_scale=0.0: expected a number in \(0, 1\]'),
    (dict(min_scale=1.5, max_scale=1.5), r'min_scale=1.5: expected a number in \(0, 1\]'),
    (dict(max_scale=-0.2, min_scale=0.1), r'max_scale=-0.2: expected a number in \(0, 1\]'),
    (dict(min_scale=0.8, max_scale=0.5), 'min_scale=0.8 is above max_scale=0.5'),
    (dict(num_subnets=-1), r'num_subnets=-1: expected an int >= 0'),
    (dict(num_subnets=-1.5), r'num_subnets=-1.5: expected an int >= 0'),
    (dict(normalize='kl-'), "normalize='kl-': expected one of"),
    (dict(temperature=0), 'temperature=0: expected a number > 0'),
    (dict(mode='random'), "Invalid mode 'random'"),
    (dict(bn='sync'), "Invalid bn 'sync'"),
])
def test_bad_task_arguments_leave_model_untouched(kwargs, match):
    model = timm.create_model('resnet18', num_classes=5)
    kwargs.setdefault('num_subnets', 1)
    with pytest.raises(ValueError, match=match):
        StimulativeTask(model, verbose=False, **kwargs)
    assert _untouched(model)


def test_create_model_unknown_name_suggests():
    with pytest.raises(ValueError, match="model_name 'resnet5' is not a timm model.*resnet50"):
        timm_stim.create_model('resnet5')


def test_create_model_bad_mode_fails_before_building(monkeypatch):
    built = []
    monkeypatch.setattr(timm, 'create_model', lambda *a, **k: built.append(a))
    with pytest.raises(ValueError, match="Invalid stim_mode 'skip'"):
        timm_stim.create_model('resnet18', stim_mode='skip')
    assert not built


def test_attach_twice_is_refused():
    model = timm_stim.create_model('resnet18', num_classes=5)
    with pytest.raises(ValueError, match='already has a Stimulator'):
        timm_stim.attach(model, space='stpp')
    assert timm_stim.get_stimulator(model).space == 'uniform'


def test_detached_stimulator_cannot_activate():
    model = timm_stim.create_model('resnet18', num_classes=5)
    stim = timm_stim.get_stimulator(model)
    stim.detach()
    with pytest.raises(RuntimeError, match='detached'):
        with stim.activate(stim.full()):
            pass
    model.eval()(torch.randn(1, 3, 32, 32))
