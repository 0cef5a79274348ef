"""Non-finite steps: the task names the term, the guard stops or skips, weights are checked before saving."""
import logging
import os
import math

import pytest
import timm
import torch

from timm_stim import StimulativeTask
from timm_stim.errors import NonFiniteLossError
from timm_stim.guard import (NonFiniteGuard, describe_non_finite, find_non_finite, model_is_finite,
                             non_finite_tensors, state_dict_is_finite, total_grad_norm)
from helpers import make_input


def _task(**kw):
    model = timm.create_model('resnet18', num_classes=5, pretrained=False).train()
    return model, StimulativeTask(model, num_subnets=3, space='uniform', seed=0, verbose=False, **kw)


class _NaNAt:
    """A forward hook that makes the model's output NaN at its ``nth`` call (0 = the full network)."""

    def __init__(self, nth: int):
        self.nth, self.calls = nth, 0

    def __call__(self, module, args, output):
        self.calls += 1
        return output * float('nan') if self.calls - 1 == self.nth else output


@pytest.mark.parametrize('nth, term', [(2, 'stim_kl[1]'), (0, 'task_loss')])
def test_task_names_the_non_finite_term_before_the_optimizer_steps(nth, term):
    model, task = _task()
    model.register_forward_hook(_NaNAt(nth))  # call 0: full network, 1..3: the subnetworks
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = make_input(batch=4, size=32), torch.tensor([0, 1, 2, 3])
    with pytest.raises(NonFiniteLossError) as info:
        task(x, y)['loss'].backward()
        optimizer.step()  # never reached
    assert info.value.term == term and math.isnan(info.value.value)
    if term.startswith('stim_kl'):
        assert 'subnetwork 1 of 3' in str(info.value) and 'depths' in str(info.value)
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())  # the optimizer never stepped


def test_finite_step_raises_nothing():
    model, task = _task()
    x, y = make_input(batch=4, size=32), torch.tensor([0, 1, 2, 3])
    result = task(x, y)
    result['loss'].backward()
    assert find_non_finite(result) is None
    assert math.isfinite(float(result['stim_kl']))


def test_find_non_finite_names_the_first_term_then_the_gradient_norm():
    nan, inf = torch.tensor(float('nan')), torch.tensor(float('inf'))
    ok = torch.tensor(1.0)
    assert find_non_finite({'loss': ok, 'output': torch.full((2, 3), float('nan')), 'stim_kl': ok}) is None
    assert find_non_finite({'task_loss': nan, 'loss': inf}) == 'loss'
    assert find_non_finite({'loss': ok, 'stim_kl': inf}) == 'stim_kl'
    assert find_non_finite({'loss': ok}, grad_norm=nan) == 'grad_norm'
    assert find_non_finite({'loss': ok}, grad_norm=3.0) is None


def test_weights_checks_name_the_non_finite_tensors():
    model = timm.create_model('resnet18', num_classes=5, pretrained=False)
    assert model_is_finite(model)
    sd = model.state_dict()
    sd['fc.bias'] = sd['fc.bias'].clone()
    sd['fc.bias'][0] = float('inf')
    sd['conv1.weight'] = sd['conv1.weight'] * float('nan')
    assert non_finite_tensors(sd) == ['conv1.weight', 'fc.bias'] and not state_dict_is_finite(sd)
    assert describe_non_finite(non_finite_tensors(sd), len(sd), shown=1) == \
        f'2 of {len(sd)} tensors (conv1.weight and 1 more)'
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # c has no gradient
    assert float(total_grad_norm([a, b, c])) == 5.0


def _steps(guard, values, **kw):
    return [guard.check_step({'loss': torch.tensor(v)}, epoch=0, step=i, lr=1e-5, **kw) for i, v in enumerate(values)]


def test_guard_stops_by_default_naming_epoch_step_term_dtype_lr_and_resume():
    guard = NonFiniteGuard(amp_dtype=torch.bfloat16)
    with pytest.raises(NonFiniteLossError) as info:
        _steps(guard, [1.0, 2.0, 1.0, 0.5, float('nan')], resume_from='out/last.pth.tar')
    message = str(info.value)
    for part in ('epoch 0, step 4', 'loss = nan', 'AMP bfloat16', 'LR 1e-05', '--resume out/last.pth.tar',
                 '--nonfinite skip'):
        assert part in message, part
    assert info.value.exit_code != 0


def test_guard_skips_counted_and_stops_after_max_in_a_row(caplog):
    guard = NonFiniteGuard('skip', max_in_row=2)
    nan = float('nan')
    with caplog.at_level(logging.WARNING):
        assert _steps(guard, [1.0, nan, nan, 1.0, nan]) == ['ok', 'skip', 'skip', 'ok', 'skip']
    assert guard.skipped == 3 and guard.epoch_metrics() == {'nonfinite_skipped': 3}
    assert guard.epoch_metrics() == {'nonfinite_skipped': 0}  # counted per epoch
    assert sum('Non-finite step skipped' in r.message for r in caplog.records) == 3
    assert _steps(guard, [nan]) == ['skip']  # 2 in a row (with the last one above)
    with pytest.raises(NonFiniteLossError, match='3 non-finite steps in a row'):
        _steps(guard, [nan])


def test_guard_decides_on_the_error_the_task_raised():
    model, task = _task()
    model.register_forward_hook(_NaNAt(1))
    x, y = make_input(batch=4, size=32), torch.tensor([0, 1, 2, 3])
    try:
        task(x, y)['loss'].backward()
    except NonFiniteLossError as error:
        assert NonFiniteGuard('skip').on_error(error, epoch=1, step=7, lr=0.1) == 'skip'
        with pytest.raises(NonFiniteLossError, match=r'epoch 1, step 7: stim_kl\[0\] = nan'):
            NonFiniteGuard().on_error(error, epoch=1, step=7, lr=0.1)
    else:
        pytest.fail('no NonFiniteLossError')


def test_guard_refuses_bad_settings():
    with pytest.raises(ValueError, match='expected one of stop, skip'):
        NonFiniteGuard('ignore')
    with pytest.raises(ValueError, match='>= 1'):
        NonFiniteGuard('skip', max_in_row=0)


def test_saver_never_writes_non_finite_weights_as_last_or_best(tmp_path):
    from timm_stim.errors import NonFiniteModelError
    from timm_stim.training.runs import ProgressCheckpointSaver
    model = timm.create_model('resnet18', num_classes=5, pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = ProgressCheckpointSaver(model=model, optimizer=optimizer, checkpoint_dir=str(tmp_path),
                                    recovery_dir=str(tmp_path), max_history=2)
    saver.save_checkpoint(0, metric=1.0)
    written = sorted(os.listdir(tmp_path))
    assert 'last.pth.tar' in written and 'model_best.pth.tar' in written
    last = (tmp_path / 'last.pth.tar').read_bytes()
    with torch.no_grad():
        model.fc.weight[0, 0] = float('nan')
    with pytest.raises(NonFiniteModelError) as info:
        saver.save_checkpoint(1, metric=2.0)
    assert info.value.tensors == ['fc.weight'] and '1 of' in str(info.value)
    assert f'--resume {tmp_path / "last.pth.tar"}' in str(info.value)
    assert sorted(os.listdir(tmp_path)) == written and (tmp_path / 'last.pth.tar').read_bytes() == last
    with pytest.raises(NonFiniteModelError):
        saver.save_recovery(1, batch_idx=3)
    assert sorted(os.listdir(tmp_path)) == written


# ---------------------------------------------------------------------------------------------
# In training: a NaN injected at a chosen step of train_stim.py
# ---------------------------------------------------------------------------------------------

def _train_argv(out, *extra):
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--model-kwargs', 'channels=(8,16,32,64)',
            'stem_width=8', '--num-classes', '10', '--device', 'cpu', '--input-size', '3', '16', '16', '-b', '32',
            '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--epochs', '2', '--train-batches-per-epoch',
            '3', '--output', str(out), '--experiment', 'run', '--seed', '3', '--stim-subnets', '1', *extra]


def _nan_loss_at(epoch: int, step: int):
    """A callback making the task loss NaN at one step (as bfloat16 AMP can at a high learning rate)."""
    from timm_stim.callbacks import TrainCallback

    class NaNLossAt(TrainCallback):
        now = False

        def on_task_created(self, state):
            state.model.task.criterion.register_forward_hook(
                lambda module, args, loss: loss * float('nan') if self.now else loss)

        def on_step_start(self, state, batch_idx):
            self.now = (state.progress.epoch, batch_idx) == (epoch, step)
    return NaNLossAt()


def test_training_stops_at_a_nan_step_naming_it_and_the_checkpoint_to_resume(tmp_path, caplog):
    from timm_stim.training.train import main
    with pytest.raises(SystemExit) as info:
        main(_train_argv(tmp_path), callbacks=[_nan_loss_at(1, 1)])
    assert info.value.code == 1
    message = caplog.text
    assert 'Training stopped at a non-finite step (--nonfinite skip skips such steps instead): epoch 1, step 1: ' \
           'loss = nan (AMP off (float32), LR 0.025)' in message
    last = os.path.join(tmp_path, 'run', 'last.pth.tar')
    assert f'Resume from the last good checkpoint with --resume {last}' in message
    saved = torch.load(last, map_location='cpu', weights_only=False)
    assert saved['epoch'] == 0 and state_dict_is_finite(saved['state_dict'])  # epoch 1 saved nothing
    assert not os.path.exists(os.path.join(tmp_path, 'run', 'checkpoint-1.pth.tar'))


def test_training_skips_nan_steps_counted_in_summary_csv(tmp_path):
    import csv
    from timm_stim.training.train import main
    result = main(_train_argv(tmp_path, '--nonfinite', 'skip'), callbacks=[_nan_loss_at(0, 1)])
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    assert [float(r['train_nonfinite_skipped']) for r in rows] == [1.0, 0.0]
    assert all(math.isfinite(float(r['train_loss'])) for r in rows)  # the skipped step is in no average
    saved = torch.load(os.path.join(result['output_dir'], 'last.pth.tar'), map_location='cpu', weights_only=False)
    assert saved['epoch'] == 1 and state_dict_is_finite(saved['state_dict'])
