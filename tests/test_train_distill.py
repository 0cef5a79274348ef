"""train_stim.py with timm's knowledge distillation options (--kd-*), teacher from a local folder."""
import csv
import os

import pytest
import timm
import torch
from timm.task import FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask

from timm_stim import StimulativeMixin
from timm_stim.training.train import main
import timm_stim.training.train as train_mod


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    """A resnet18 teacher in timm's Hub format (config.json + model.safetensors), as a user would have."""
    folder = tmp_path_factory.mktemp('teacher')
    torch.manual_seed(123)
    teacher = timm.create_model('resnet18', num_classes=10)
    timm.models.save_for_hf(teacher, str(folder))
    return folder, {k: v.clone() for k, v in teacher.state_dict().items()}


def _run(tmp_path, monkeypatch, *extra, model='resnet18'):
    created = []
    original = train_mod.create_train_task

    def _record(*args, **kwargs):
        created.append(original(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(train_mod, 'create_train_task', _record)
    result = main(['--dataset', 'embedded/digits', '--model', model, '--num-classes', '10', '--device', 'cpu',
                   '--input-size', '3', '32', '32', '-b', '16', '--workers', '0', '--lr', '0.05',
                   '--warmup-epochs', '0', '--epochs', '1', '--train-batches-per-epoch', '2',
                   '--output', str(tmp_path), '--experiment', 'run', '--seed', '0', *extra])
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    assert len(rows) == 1 and float(rows[0]['train_loss']) > 0
    # timm's distillation tasks return their two terms: the task-agnostic loop logs them as columns
    distill_column = 'train_distill_loss' if '--kd-distill-type' in extra and 'token' in extra else 'train_kd_loss'
    assert float(rows[0]['train_task_loss']) > 0 and float(rows[0][distill_column]) >= 0
    assert len(created) == 1
    return created[0], result


def _assert_teacher_loaded(task, expected_state):
    teacher_state = task.teacher.model.state_dict()
    assert set(teacher_state) == set(expected_state)
    assert all(torch.equal(teacher_state[k], expected_state[k]) for k in expected_state)
    assert not task.teacher.model.training


@pytest.mark.slow
def test_logit_distillation_from_local_dir_teacher(tmp_path, monkeypatch, teacher_dir):
    folder, state = teacher_dir
    task, result = _run(tmp_path, monkeypatch, '--kd-model-name', f'local-dir:{folder}', '--kd-temperature', '2',
                        '--distill-loss-weight', '0.7', '--task-loss-weight', '0.3')
    assert type(task) is LogitDistillationTask
    assert task.temperature == 2 and task.distill_loss_weight == 0.7 and task.task_loss_weight == 0.3
    _assert_teacher_loaded(task, state)
    # The student checkpoint stays a plain timm checkpoint: no teacher weights in it.
    timm.create_model('resnet18', num_classes=10,
                      checkpoint_path=os.path.join(result['output_dir'], 'model_best.pth.tar'))


def test_feature_distillation(tmp_path, monkeypatch, teacher_dir):
    folder, state = teacher_dir
    task, _ = _run(tmp_path, monkeypatch, '--kd-model-name', f'local-dir:{folder}', '--kd-distill-type', 'feature',
                   model='resnet10t')
    assert type(task) is FeatureDistillationTask
    _assert_teacher_loaded(task, state)


def test_token_distillation_with_a_distilled_vit(tmp_path, monkeypatch, teacher_dir):
    folder, state = teacher_dir
    task, _ = _run(tmp_path, monkeypatch, '--kd-model-name', f'local-dir:{folder}', '--kd-distill-type', 'token',
                   '--kd-token-distill-type', 'hard', '--model-kwargs', 'img_size=32', 'patch_size=8',
                   'depth=2', model='deit_tiny_distilled_patch16_224')
    assert type(task) is TokenDistillationTask and task.distill_type == 'hard'
    _assert_teacher_loaded(task, state)


def test_teacher_that_cannot_be_loaded_stops_before_writing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
              '--kd-model-name', f'local-dir:{tmp_path / "missing"}', '--output', str(tmp_path / 'out')])
    assert e.value.code == 2
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
@pytest.mark.parametrize('distill_type', ['logit', 'feature'])
def test_distillation_with_stimulative_training(tmp_path, monkeypatch, teacher_dir, distill_type):
    # The full network learns from labels and the teacher (timm's task); subnetworks are
    # stimulated toward the full network. Each term gets its own summary column.
    folder, state = teacher_dir
    task, result = _run(tmp_path, monkeypatch, '--kd-model-name', f'local-dir:{folder}', '--kd-distill-type',
                        distill_type, '--stim-subnets', '2', '--stim-min-scale', '0.5')
    base = LogitDistillationTask if distill_type == 'logit' else FeatureDistillationTask
    assert isinstance(task, base) and isinstance(task, StimulativeMixin)
    _assert_teacher_loaded(task, state)
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    assert float(rows[0]['train_stim_kl']) > 0
    assert len(task.last_subnets) == 2


def test_token_distillation_with_stimulative_training_is_refused(tmp_path, caplog):
    with pytest.raises(SystemExit) as e:
        main(['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
              '--kd-model-name', 'resnet18', '--kd-distill-type', 'token', '--stim-subnets', '1',
              '--output', str(tmp_path / 'out')])
    assert e.value.code == 2 and '--kd-distill-type token with --stim-subnets > 0' in caplog.text
    assert not (tmp_path / 'out').exists()
