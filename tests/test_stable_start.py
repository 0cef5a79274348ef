"""A stable start: the KL weight's warm-in (weight_warmup_epochs) and when it is on by default."""
import copy
import math

import pytest
import timm
import torch
import torch.nn as nn

from timm_stim import StimulativeTask
from timm_stim.training.args import parse_args
from timm_stim.resolve import stable_start_epochs
from timm_stim.task import kl_weight_at


def test_kl_weight_warm_in_multiplies_the_schedule():
    assert kl_weight_at(2.0, 'const', 0.1, warmup=0.25) == pytest.approx(0.8)
    assert kl_weight_at(2.0, 'const', 0.25, warmup=0.25) == 2.0
    assert kl_weight_at(2.0, 'const', 0.9, warmup=0.25) == 2.0
    assert kl_weight_at(2.0, 'const', 0.0, warmup=0.25) == 0.0
    cos_up = 0.5 * (1 - math.cos(math.pi * 0.2))
    assert kl_weight_at(1.0, 'cos-up', 0.2, warmup=0.4) == pytest.approx(0.5 * cos_up)
    assert kl_weight_at(1.0, 'cos-down', 0.2, warmup=0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


def test_default_warm_in_covers_a_per_epoch_learning_rate_warm_up_only():
    assert stable_start_epochs(1, lr_per_update=False) == 2.0  # the quick start's old schedule
    assert stable_start_epochs(5, lr_per_update=False) == 6.0  # timm's default --warmup-epochs
    assert stable_start_epochs(1, lr_per_update=True) == 0.0   # LR warms up per update: not needed
    assert stable_start_epochs(0, lr_per_update=False) == 0.0  # the paper's recipes: as the official code


def _task(model, **kwargs):
    return StimulativeTask(model, nn.CrossEntropyLoss(), num_subnets=2, space='uniform', min_scale=0.5,
                           normalize='kl', seed=0, verbose=False, **kwargs)


def test_task_ramps_the_kl_weight_batch_by_batch():
    task = _task(timm.create_model('resnet18', num_classes=10), weight_warmup_epochs=2)
    assert task.kl_weight == 0.0
    task.configure_training(epochs=4, batches_per_epoch=10)
    expected = {(0, 0): 0.0, (0, 5): 0.25, (1, 0): 0.5, (1, 5): 0.75, (2, 0): 1.0, (3, 9): 1.0}
    for (epoch, batch), weight in expected.items():
        task.set_progress(epoch, batch)
        assert task.kl_weight == pytest.approx(weight), (epoch, batch)


def test_warming_in_trains_as_the_reduced_kl_weight_does():
    # Halfway through a 2-epoch warm-in the step's gradients are those of kl_weight 0.5, exactly.
    torch.manual_seed(0)
    base = timm.create_model('resnet18', num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    grads = []
    for kwargs in ({'weight_warmup_epochs': 2}, {'kl_weight': 0.5}, {}):
        model = copy.deepcopy(base)
        task = _task(model, **kwargs)
        task.configure_training(epochs=4, batches_per_epoch=10)
        task.set_progress(1, 0)
        task(x, y)['loss'].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(grads[0], grads[1])
    assert not torch.allclose(grads[0], grads[2])  # the full weight trains differently


@pytest.mark.parametrize('value', [-1.0, float('inf'), float('nan'), '2', True])
def test_bad_warm_in_is_refused(value):
    with pytest.raises(ValueError, match=r'weight_warmup_epochs=.*: expected a number of epochs >= 0'):
        _task(timm.create_model('resnet18', num_classes=10), weight_warmup_epochs=value)


def test_stim_weight_warmup_option():
    assert parse_args(['--stim-weight-warmup', '2'])[0].stim_weight_warmup == 2.0
    assert parse_args([])[0].stim_weight_warmup is None
