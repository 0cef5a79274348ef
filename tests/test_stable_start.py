"""A stable start: the KL weight's warm-in (weight_warmup_epochs) and when it is on by default."""
import copy
import math

import pytest
import timm
import torch
import torch.nn as nn

from timm_stim import StimulativeTask
from timm_stim.training.args import parse_args
from timm_stim.resolve import default_warmin_epochs, describe, resolve_config, stable_start_epochs
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


def test_from_pretrained_weights_the_default_warm_in_is_at_most_a_fifth_of_the_run():
    # From scratch: the stable start, whatever the length of the run.
    assert default_warmin_epochs(5, False, epochs=10, pretrained=False) == (6.0, '')
    # A fine-tune: the shorter of the stable start and a fifth of the run, said in the log.
    warmup, note = default_warmin_epochs(5, False, epochs=10, pretrained=True)
    assert warmup == 2.0 and 'pretrained' in note and 'shortened from 6' in note
    assert default_warmin_epochs(1, False, epochs=30, pretrained=True) == (2.0, '')  # already short
    assert default_warmin_epochs(5, True, epochs=10, pretrained=True) == (0.0, '')   # LR per update: none


def _resolve(epochs, pretrained=False, **config):
    from timm_stim import StimConfig, attach
    stim = attach(timm.create_model('resnet18', num_classes=10), space='uniform')
    return resolve_config(StimConfig(num_subnets=2, **config), stim, [(3, 32, 32)], lr_warmup_epochs=5,
                          lr_per_update=False, epochs=epochs, pretrained=pretrained)


def test_a_warm_in_over_most_of_the_run_is_warned_about():
    long = _resolve(epochs=10)  # timm's default --warmup-epochs 5: 6 of 10 epochs
    assert long.config.weight_warmup_epochs == 6.0
    assert len(long.warnings) == 1 and 'covers 6 of the 10 epochs' in long.warnings[0]
    assert '--warmup-epochs 5 + 1' in long.warnings[0] and '--stim-weight-warmup' in long.warnings[0]
    given = _resolve(epochs=4, weight_warmup_epochs=3.0)
    assert 'covers 3 of the 4 epochs' in given.warnings[0] and '(--stim-weight-warmup)' in given.warnings[0]
    assert _resolve(epochs=100).warnings == []
    assert _resolve(epochs=None).warnings == []  # length unknown (library use): nothing to compare
    finetune = _resolve(epochs=10, pretrained=True)
    assert finetune.config.weight_warmup_epochs == 2.0 and finetune.warnings == []
    assert finetune.summary['kl_weight_warmup_epochs'] == 2.0
    assert any('over 2 epochs (shortened from 6' in line for line in describe(finetune))


def test_the_resolved_configuration_is_logged_one_option_a_line():
    lines = describe(_resolve(epochs=100))
    assert lines[0] == 'Stimulative training:'
    assert '  stage_depths: [2, 2, 2, 2]' in lines and '  subnets_per_step: 2' in lines
    assert '  kl_weight_warmup_epochs: 6.0' in lines
    assert all(line.count(':') == 1 or line.startswith('KL warm-in') for line in lines[1:])
