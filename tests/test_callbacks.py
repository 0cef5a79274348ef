"""The training program's one seam (timm_stim.callbacks.TrainCallback) and its declared, read-only options."""
import csv
import os

import pytest
import torch

from timm_stim.callbacks import TrainCallback
from timm_stim.cli import train
from timm_stim.training.train import main as training_main


def _base(out, *extra):
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--model-kwargs', 'channels=(8,16,32,64)',
            'stem_width=8', '--num-classes', '10', '--device', 'cpu', '--input-size', '3', '16', '16', '-b', '16',
            '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--epochs', '1', '--train-batches-per-epoch',
            '2', '--output', str(out), '--experiment', 'run', '--seed', '0', *extra]


class Recorder(TrainCallback):
    """Records every event, and writes a metric of its own into summary.csv."""

    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith('on_') and callable(attr):
            object.__getattribute__(self, 'events').append(name)
        return attr

    def on_validation_end(self, state, train_metrics, eval_metrics):
        eval_metrics['epoch_plus_half'] = state.progress.epoch + 0.5


def test_a_user_callback_sees_timms_flow_and_adds_a_summary_column(tmp_path):
    recorder = Recorder()
    result = train(_base(tmp_path, '--epochs', '2', '--stim-subnets', '1'), callbacks=[recorder])
    epoch = ['on_epoch_start', 'on_step_start', 'on_step_start', 'on_before_validation', 'on_validation_end',
             'on_epoch_end']
    assert recorder.events == ['on_options_checked', 'on_model_created', 'on_task_created', 'on_train_start',
                               *epoch, *epoch, 'on_train_end']
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    assert [float(row['eval_epoch_plus_half']) for row in rows] == [0.5, 1.5]
    assert [e['validation']['epoch_plus_half'] for e in result['epochs']] == [0.5, 1.5]
    assert result['hub_url'] is None  # the entry point's publisher, not asked to push


def test_the_log_says_the_lr_is_stepped_per_epoch(tmp_path, caplog):
    caplog.set_level('INFO')
    training_main(_base(tmp_path / 'epoch', '--train-batches-per-epoch', '1'))
    training_main(_base(tmp_path / 'update', '--train-batches-per-epoch', '1', '--sched-on-updates'))
    assert [rec.getMessage() for rec in caplog.records if 'Scheduled epochs' in rec.getMessage()] == [
        'Scheduled epochs: 1. LR stepped per epoch.', 'Scheduled epochs: 1. LR stepped per update.']


def test_options_stay_as_resolved_and_checkpoints_save_timms_run_time_values(tmp_path):
    seen = {}

    class Snapshot(TrainCallback):
        def on_options_checked(self, state):
            seen['parsed'] = dict(vars(state.args))

        def on_model_created(self, state):
            seen['resolved'] = dict(vars(state.args))

        def on_train_end(self, state):
            seen['end'] = dict(vars(state.args))

    argv = [a for a in _base(tmp_path, '--lr-base', '0.1') if a not in ('--num-classes', '10')]
    argv.remove('--lr')
    argv.remove('0.05')
    result = training_main(argv, callbacks=[Snapshot()])
    assert seen['end'] == seen['resolved']  # nothing changes args after resolve_args
    assert seen['parsed']['lr'] is None and seen['end']['lr'] is None and seen['end']['num_classes'] is None
    assert seen['end']['prefetcher'] is True and 'prefetcher' not in seen['parsed']
    # As timm's train.py saves its args: lr from --lr-base (sgd: linear, 0.1 * 16 / 256), the model's classes.
    saved = torch.load(os.path.join(result['output_dir'], 'last.pth.tar'), map_location='cpu', weights_only=False)
    assert saved['args'].lr == pytest.approx(0.1 * 16 / 256) and saved['args'].lr_base_scale == 'linear'
    assert saved['args'].num_classes == 1000
    assert {k: v for k, v in vars(saved['args']).items() if k not in ('lr', 'num_classes')} == {
        k: v for k, v in seen['end'].items() if k not in ('lr', 'num_classes')}


def test_push_to_hub_needs_the_entry_point_that_plugs_in_the_publisher(tmp_path, caplog):
    with pytest.raises(SystemExit) as info:
        training_main(_base(tmp_path, '--push-to-hub', 'tester/repo'))
    assert info.value.code == 2
    assert '--push-to-hub is carried out by the Hub publisher, which this entry point does not plug in' in caplog.text
    assert not (tmp_path / 'run').exists()


def test_a_failure_reaches_the_callbacks_and_leaves_no_folder(tmp_path):
    failures = []

    class Refuse(TrainCallback):
        def on_task_created(self, state):  # the output folder is taken; no file is written yet
            from timm_stim.errors import InputError
            raise InputError('refused by a callback')

        def on_failure(self, state, error):
            failures.append(str(error))

    with pytest.raises(SystemExit) as info:
        training_main(_base(tmp_path), callbacks=[Refuse()])
    assert info.value.code == 2 and failures == ['refused by a callback']
    assert not (tmp_path / 'run').exists()
