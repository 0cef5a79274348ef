"""train_stim.py end to end on the embedded digits (CPU, tiny runs)."""
import csv
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

import timm_stim.training.train as train_mod
from timm_stim.callbacks import TrainCallback
from timm_stim.training.train import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base(out, *extra):
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
            '--input-size', '3', '16', '16', '--mean', '0.5', '0.5', '0.5', '--std', '0.5', '0.5', '0.5',
            '-b', '32', '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--epochs', '1',
            '--train-batches-per-epoch', '3', '--output', str(out), '--experiment', 'run', '--log-interval', '1',
            '--seed', '3', *extra]


def test_stim_run_writes_plain_timm_checkpoints(tmp_path):
    result = main(_base(tmp_path, '--stim-subnets', '2', '--stim-space', 'uniform', '--stim-min-scale', '0.5',
                        '--epochs', '2'))
    out = result['output_dir']
    rows = list(csv.DictReader(open(os.path.join(out, 'summary.csv'))))
    assert len(rows) == 2 and 'train_stim_kl' in rows[0] and float(rows[0]['train_stim_kl']) > 0
    saved = yaml.safe_load(open(os.path.join(out, 'args.yaml')))
    assert saved['stim_subnets'] == 2
    assert saved['stim_resolved']['stage_depths'] == [2, 2, 2, 2]
    assert saved['stim_resolved']['depth_choices'] == [[1, 2]] * 4
    assert saved['stim_resolved']['subnet_input_short_side'] == [8, 16]
    # Plain timm: strict load through timm's own factory.
    model = timm.create_model('resnet18', num_classes=10, checkpoint_path=os.path.join(out, 'model_best.pth.tar'))
    ckpt = torch.load(os.path.join(out, 'model_best.pth.tar'), map_location='cpu', weights_only=False)
    assert 'stim_generator_state' in ckpt['task_state']
    tensors = load_file(os.path.join(out, 'model_best.safetensors'))
    state = model.state_dict()
    assert set(tensors) == set(state)
    assert all(torch.equal(tensors[k], state[k]) for k in state)


def test_stim_off_runs_nothing_of_timm_stim(tmp_path, monkeypatch):
    import timm_stim.task as task_mod
    monkeypatch.setattr(task_mod.StimulativeTask, 'forward', lambda *a, **k: pytest.fail('stim task used'))
    import timm_stim.training.stim as stim_mod
    monkeypatch.setattr(stim_mod, 'attach', lambda *a, **k: pytest.fail('attach called'))
    result = main(_base(tmp_path))
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    assert 'train_stim_kl' not in rows[0]


@pytest.mark.parametrize('extra,message', [
    (['--model', 'resnet5000'], "--model 'resnet5000' is not a timm model"),
    (['--model', 'mobilenetv3_small_050', '--stim-subnets', '1'], 'No timm_stim adapter for'),
    (['--stim-subnets', '1', '--stim-space', '0,1,2'], '3 per-stage drops but the model has 4 stages'),
    (['--stim-subnets', '1', '--stim-min-scale', '0'], '--stim-min-scale 0.0: expected a number in (0, 1]'),
    (['--stim-subnets', '1', '--stim-min-scale', '0.9', '--stim-max-scale', '0.5'], 'is above max_scale'),
    (['--dataset', '', '--data-dir', '/nonexistent/imagenet'], "'/nonexistent/imagenet' does not exist"),
    (['--dataset', 'embedded/cifar'], "Unknown embedded dataset 'embedded/cifar'"),
    (['--stim-subnets', '1', '--opt', 'adahessian'], '--opt adahessian is a second-order optimizer'),
    (['--stim-eval-subnets', '2', '--val-split', ''], '--stim-eval-subnets 2 scores subnetworks at each validation'),
    (['--stim-eval-subnets', '5000'], '--stim-eval-subnets 5000: expected at most 1000'),
])
def test_bad_input_stops_before_writing(tmp_path, caplog, extra, message):
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as info:
        main(_base(out, *extra))
    assert info.value.code == 2
    assert message in caplog.text
    assert not out.exists()


@pytest.mark.slow
def test_resume_repeats_the_uninterrupted_run(tmp_path):
    args = ['--stim-subnets', '2', '--stim-min-scale', '0.5', '--epochs', '2', '--model-ema',
            '--model-ema-decay', '0.9']
    full = main(_base(tmp_path / 'full', *args))

    class KillAfterFirst(TrainCallback):
        def on_epoch_end(self, state):
            if state.progress.epoch == 0:
                raise KeyboardInterrupt
    with pytest.raises(SystemExit) as info:
        main(_base(tmp_path / 'killed', *args), callbacks=[KillAfterFirst()])
    assert info.value.code == 130
    last = tmp_path / 'killed' / 'run' / 'last.pth.tar'
    resumed = main(_base(tmp_path / 'killed', *args, '--resume', str(last)))
    assert [e['epoch'] for e in resumed['epochs']] == [1]
    for a, b in zip(full['epochs'][1:], resumed['epochs']):
        assert a['train'] == pytest.approx(b['train'], rel=1e-5)
        assert a['validation'] == pytest.approx(b['validation'], rel=1e-5)


@pytest.mark.slow
def test_command_line_entry_point(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train_stim.py'), *_base(tmp_path, '--stim-subnets', '1')],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Stimulative training:' in proc.stderr and 'stage_depths' in proc.stderr


@pytest.mark.slow
def test_torchcompile_trains_like_eager(tmp_path):
    """--torchcompile compiles each block once, for the full network and the subnetworks alike. Same training."""
    runs = {}
    for name, extra in (('eager', []), ('compiled', ['--torchcompile'])):
        main(_base(tmp_path / name, '--stim-subnets', '1', '--stim-min-scale', '0.5',
                   '--train-batches-per-epoch', '2', *extra))
        runs[name] = torch.load(tmp_path / name / 'run' / 'last.pth.tar', map_location='cpu',
                                weights_only=False)['state_dict']
    assert set(runs['eager']) == set(runs['compiled'])  # no _orig_mod. prefixes in checkpoints
    for key, value in runs['eager'].items():
        if value.is_floating_point():
            torch.testing.assert_close(runs['compiled'][key], value, rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize('extra', [
    # bfloat16 autocast on CPU, at 32 px: at 16 px the last stage's maps are 1x1 and, on a CPU with native bfloat16
    # kernels (avx512_bf16), timm's own plain step (--stim-subnets 0) already reaches gradients of 1e14 at step 1,
    # which the non-finite guard rightly stops once the subnetwork terms add to them.
    ['--amp', '--input-size', '3', '32', '32'],
    ['--channels-last'],
    ['--grad-accum-steps', '2'],
    ['--clip-grad', '0.5'],
    ['--mixup', '0.2', '--cutmix', '1.0'],
    ['--drop-path', '0.1'],
    ['--stim-weight-sched', 'cos-up', '--stim-norm', 'all', '--stim-mode', 'drop', '--stim-bn', 'update',
     '--stim-bn-recal', '64'],
], ids=lambda e: ' '.join(e))
@pytest.mark.slow
def test_stim_combines_with_timm_options(tmp_path, extra):
    result = main(_base(tmp_path, '--stim-subnets', '2', '--stim-min-scale', '0.5', '--train-batches-per-epoch', '2',
                        *extra))
    train = result['epochs'][0]['train']
    assert math.isfinite(train['loss']) and math.isfinite(train['stim_kl']) and train['stim_kl'] >= 0
    timm.create_model('resnet18', num_classes=10, checkpoint_path=os.path.join(result['output_dir'], 'last.pth.tar'))


@pytest.mark.slow
def test_loss_scaling_gives_the_unscaled_update(tmp_path, monkeypatch):
    # fp16 AMP on CUDA trains with timm's NativeScaler. Here, on CPU in float32, a scaler at
    # 2**16 must give the same weights as no scaler: the subnetwork KL backward passes are
    # scaled like the task loss (and per accumulation step) before the scaler unscales them.
    extra = ('--stim-subnets', '2', '--stim-min-scale', '0.5', '--grad-accum-steps', '2', '--clip-grad', '1')
    main(_base(tmp_path / 'plain', *extra))
    from timm.utils import NativeScaler
    calls = []

    class CountingScaler(NativeScaler):
        def __call__(self, *args, **kwargs):
            calls.append(self._scaler.get_scale())
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(train_mod, 'create_loss_scaler', lambda *a, **k: CountingScaler(device='cpu'))
    main(_base(tmp_path / 'scaled', *extra))
    assert calls and all(scale == 2.0 ** 16 for scale in calls)  # used, and no step skipped for overflow
    plain = torch.load(tmp_path / 'plain' / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    scaled = torch.load(tmp_path / 'scaled' / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    for key, value in plain['state_dict'].items():
        torch.testing.assert_close(scaled['state_dict'][key], value, rtol=1e-5, atol=1e-6, msg=key)


FAKE_WANDB = '''
import json, os
def _record(call, **kwargs):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
        f.write(json.dumps({"call": call, **kwargs}, default=str) + "\\n")
def init(**kwargs):
    _record("init", **kwargs)
def log(data, **kwargs):
    _record("log", data=data)
'''


@pytest.mark.slow
def test_log_wandb_gets_config_and_metrics(tmp_path):
    # A stand-in wandb package (no account, no network) that records what train_stim.py sends.
    (tmp_path / 'fake' / 'wandb').mkdir(parents=True)
    (tmp_path / 'fake' / 'wandb' / '__init__.py').write_text(FAKE_WANDB)
    log = tmp_path / 'wandb.jsonl'
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'fake'), FAKE_WANDB_LOG=str(log), OMP_NUM_THREADS='1',
               TIMM_STIM_CACHE=os.environ['TIMM_STIM_CACHE'])
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'train_stim.py'),
         *_base(tmp_path / 'out', '--stim-subnets', '2', '--epochs', '2', '--train-batches-per-epoch', '2',
                '--log-wandb', '--wandb-project', 'proj', '--wandb-tags', 'a', 'b')],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    inits = [c for c in calls if c['call'] == 'init']
    logs = [c['data'] for c in calls if c['call'] == 'log']
    assert len(inits) == 1
    assert inits[0]['project'] == 'proj' and inits[0]['name'] == 'run' and inits[0]['tags'] == ['a', 'b']
    assert inits[0]['config']['stim_subnets'] == 2
    assert inits[0]['config']['stim_resolved']['stage_depths'] == [2, 2, 2, 2]
    assert [row['epoch'] for row in logs] == [0, 1]
    assert all(row['train_stim_kl'] > 0 and 'eval_top1' in row for row in logs)


def test_validate_weights_metrics_by_samples():
    # Batches of 4, 4 and 2: metrics must be those of the 10 samples, not a mean of batch means.
    import argparse
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7))
    x, y = torch.randn(10, 3, 2, 2), torch.randint(0, 7, (10,))
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    args = argparse.Namespace(prefetcher=False, channels_last=False, tta=0, distributed=False, log_interval=1,
                              rank=0)
    metrics = train_mod.validate(model, batches, torch.nn.CrossEntropyLoss(), args, torch.device('cpu'))
    with torch.no_grad():
        logits = model(x)
    top5 = logits.topk(5, dim=1).indices
    assert metrics['top1'] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    assert metrics['top5'] == pytest.approx(100 * (top5 == y[:, None]).any(1).float().mean().item())
    assert metrics['loss'] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


def test_val_interval_skips_validation_and_checkpoints_between(tmp_path):
    result = main(_base(tmp_path, '--stim-subnets', '1', '--epochs', '3', '--train-batches-per-epoch', '1',
                        '--val-interval', '2'))
    assert ['validation' in e for e in result['epochs']] == [False, True, True]  # the last epoch validates
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    assert [int(r['epoch']) for r in rows] == [1, 2] and all(r['eval_top1'] for r in rows)
    assert not os.path.exists(os.path.join(result['output_dir'], 'checkpoint-0.pth.tar'))


def test_logging_is_set_up_once_per_process():
    # Runs started in-process one after another must not print every log line again per run.
    import logging
    from timm.utils.log import FormatterNoInfo
    from timm_stim.training.train import setup_logging

    def timm_handlers():
        return [h for h in logging.root.handlers if isinstance(h.formatter, FormatterNoInfo)]

    before = list(logging.root.handlers)
    try:
        setup_logging()
        setup_logging()
        assert len(timm_handlers()) == 1 and logging.root.level == logging.INFO
        # A console replaced after the first run (pytest capture, notebooks) gets the next run's lines.
        import io
        import sys
        real_stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            setup_logging()
            logging.getLogger('train_stim').info('second run')
            assert 'second run' in sys.stderr.getvalue()
        finally:
            sys.stderr = real_stderr
    finally:
        logging.root.handlers[:] = before


def test_eval_subnets_score_fixed_subnetworks_and_leave_training_unchanged(tmp_path):
    # --stim-eval-subnets 2: two subnetworks drawn once, scored at each validation; their mean and min top-1 are
    # summary.csv columns, recomputed here from the checkpoint, and every other column equals the run without it.
    from timm_stim import Subnet, attach
    from timm_stim.tools.analyze import evaluate
    kept = {}

    class Keep(TrainCallback):
        def on_train_end(self, state):
            kept.update(loader=state.data.loader_eval, subnets=list(state.stim.eval_subnets))
    tiny = ['--model-kwargs', 'channels=(8,16,32,64)', 'stem_width=8', '--opt', 'adamw', '--lr', '0.01',
            '--stim-subnets', '1', '--train-batches-per-epoch', '6', '--epochs', '2']
    scored = main(_base(tmp_path / 'a', *tiny, '--stim-eval-subnets', '2'), callbacks=[Keep()])
    plain = main(_base(tmp_path / 'b', *tiny))
    rows = list(csv.DictReader(open(os.path.join(scored['output_dir'], 'summary.csv'))))
    plain_rows = list(csv.DictReader(open(os.path.join(plain['output_dir'], 'summary.csv'))))
    assert [{k: row[k] for k in plain_rows[0]} for row in rows] == plain_rows
    assert list(rows[0]) == [*list(plain_rows[0])[:-1], 'eval_subnet_top1_mean', 'eval_subnet_top1_min', 'lr']

    full = Subnet.from_depths([2, 2, 2, 2])
    assert len(kept['subnets']) == 2 and full not in kept['subnets']
    model = timm.create_model('resnet18', num_classes=10, channels=(8, 16, 32, 64), stem_width=8,
                              checkpoint_path=os.path.join(scored['output_dir'], 'last.pth.tar'))
    stim = attach(model)
    top1 = []
    for subnet in kept['subnets']:
        with stim.activate(subnet):
            top1.append(evaluate(model, kept['loader'])[0])
    assert len(set(top1)) == 2  # the two subnetworks score differently: each value is its own subnetwork's
    assert float(rows[-1]['eval_subnet_top1_mean']) == pytest.approx(sum(top1) / 2, abs=1e-9)
    assert float(rows[-1]['eval_subnet_top1_min']) == pytest.approx(min(top1), abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize('precision', [[], ['--amp']], ids=['float32', 'bfloat16-amp'])
def test_the_same_command_twice_gives_the_same_summary(tmp_path, caplog, precision):
    # The configuration of a report where one of three runs went NaN (issue 28): AMP, mixup, EMA, ST++'s KL-. On one
    # machine with the same number of CPU threads, two runs give the same summary.csv byte for byte (the log says
    # so and what would change it).
    argv = ['--model-kwargs', 'channels=(8,16,32,64)', 'stem_width=8', '--input-size', '3', '32', '32', '--epochs', '2',
            '--train-batches-per-epoch', '4', '--mixup', '0.2', '--model-ema', '--stim-subnets', '3',
            '--stim-norm', 'kl', *precision]
    runs = [main(_base(tmp_path / name, *argv))['output_dir'] for name in ('first', 'second')]
    first, second = (open(os.path.join(run, 'summary.csv'), 'rb').read() for run in runs)
    assert first == second and first.count(b'\n') == 3
    assert f'Repeatable on this machine with {torch.get_num_threads()} CPU thread' in caplog.text
