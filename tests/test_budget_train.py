"""train_stim.py --stim-budget and --stim-weight-warmup end to end (resolved K, saved configuration, refusals)."""
import os

import pytest
import yaml

from timm_stim.training.train import main
import timm_stim.training.train as train_mod


def _base(out, *extra):
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
            '--input-size', '3', '16', '16', '-b', '16', '--workers', '0', '--epochs', '1',
            '--train-batches-per-epoch', '2', '--output', str(out), '--experiment', 'run', '--log-interval', '1',
            '--stim-space', 'stpp', '--stim-min-scale', '0.5', *extra]


@pytest.mark.slow
def test_budget_resolves_k_and_saves_the_plan(tmp_path, monkeypatch):
    tasks = []
    original = train_mod.create_train_task
    monkeypatch.setattr(train_mod, 'create_train_task', lambda *a, **k: tasks.append(original(*a, **k)) or tasks[-1])
    result = main(_base(tmp_path, '--stim-budget', '2', '--warmup-epochs', '1'))
    saved = yaml.safe_load(open(os.path.join(result['output_dir'], 'args.yaml')))
    resolved = saved['stim_resolved']
    assert saved['stim_budget'] == 2.0 and saved['stim_subnets'] == 0  # the options as given
    assert resolved['budget'] == 2.0 and resolved['expected_cost'] == pytest.approx(2.0, abs=1e-3)
    assert resolved['subnets_per_step'] == pytest.approx(2.0 / resolved['subnet_cost'], abs=1e-3)
    assert tasks[0].num_subnets == pytest.approx(resolved['subnets_per_step'], abs=1e-4)  # the mean reaches the task
    assert resolved['kl_weight_warmup_epochs'] == 2.0  # 1 warm-up epoch stepped per epoch: + 1
    # The saved args.yaml trains again as is.
    again = main(['-c', os.path.join(result['output_dir'], 'args.yaml'), '--output', str(tmp_path / 'again')])
    assert yaml.safe_load(open(os.path.join(again['output_dir'], 'args.yaml')))['stim_resolved'] == resolved


@pytest.mark.parametrize('extra,message', [
    (['--stim-budget', '0.05'], '--stim-budget 0.05 is below the cost of one subnetwork'),
    (['--stim-budget', '2', '--stim-subnets', '9'], '--stim-subnets 9 and --stim-budget 2: give one of them'),
    (['--stim-budget', '0'], '--stim-budget 0.0: expected a number > 0'),
    (['--stim-weight-warmup', '-1'], '--stim-weight-warmup -1.0: expected a number of epochs >= 0'),
])
def test_impossible_budgets_are_refused_before_anything_is_written(tmp_path, caplog, extra, message):
    with pytest.raises(SystemExit) as e:
        main(_base(tmp_path, *extra))
    assert e.value.code == 2 and message in caplog.text
    assert not os.path.exists(tmp_path / 'run')


@pytest.mark.slow
def test_weight_warmup_reaches_the_task(tmp_path, monkeypatch):
    seen = []
    original = train_mod.create_train_task

    def spy(*args, **kwargs):
        task = original(*args, **kwargs)
        seen.append(task.weight_warmup_epochs)
        return task

    monkeypatch.setattr(train_mod, 'create_train_task', spy)
    main(_base(tmp_path / 'a', '--stim-subnets', '1', '--stim-weight-warmup', '3'))
    main(_base(tmp_path / 'b', '--stim-subnets', '1', '--sched-on-updates', '--warmup-epochs', '1'))
    main(_base(tmp_path / 'c', '--stim-subnets', '1', '--warmup-epochs', '2'))
    assert seen == [3.0, 0.0, 3.0]  # given; per-update warm-up: none; 2 epochs per epoch: 2 + 1


def test_budget_in_time_is_steered_by_the_task_and_its_cost_is_in_summary_csv(tmp_path, monkeypatch):
    import csv
    tasks = []
    original = train_mod.create_train_task
    monkeypatch.setattr(train_mod, 'create_train_task', lambda *a, **k: tasks.append(original(*a, **k)) or tasks[-1])
    result = main(_base(tmp_path, '--stim-budget', '1', '--stim-budget-unit', 'time', '--stim-size-multiple', '4'))
    resolved = yaml.safe_load(open(os.path.join(result['output_dir'], 'args.yaml')))['stim_resolved']
    assert resolved['budget_unit'] == 'time' and resolved['config']['budget'] == 1.0
    assert resolved['config']['size_multiple'] == 4
    # The task starts from the FLOPs estimate of K and times both steps.
    assert tasks[0].time_budget.start == pytest.approx(resolved['subnets_per_step'], abs=1e-4)
    assert tasks[0].time_budget.steps == 2
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    cost = [key for key in rows[0] if 'stim_cost' in key]
    assert cost and float(rows[0][cost[0]]) > 0
