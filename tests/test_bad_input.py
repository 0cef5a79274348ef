"""Every bad input stops before any work: exit code 2, a message naming the value, no traceback,
and the output folder absent or byte-identical. Each case runs train_stim.py as a user would."""
import os
import subprocess
import sys

import pytest
import timm
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    return dict(os.environ, PYTHONUNBUFFERED='1', TIMM_STIM_CACHE=str(tmp_path_factory.getbasetemp() / 'cache'))


def _base(out, *extra):
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
            '--input-size', '3', '16', '16', '-b', '16', '--workers', '0', '--epochs', '1',
            '--train-batches-per-epoch', '1', '--output', str(out), '--experiment', 'run', *extra]


def _snapshot(folder):
    if not os.path.exists(folder):
        return None
    snap = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                snap[os.path.relpath(path, folder)] = f.read()
    return snap


class _RunsCode:
    """A pickled object whose loading would create a file (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def _write_yaml(tmp_path, text):
    path = tmp_path / 'config.yaml'
    path.write_text(text)
    return ['-c', str(path)]


def _setup_output_is_file(tmp_path):
    (tmp_path / 'out').write_text('not a folder')
    return []


def _setup_output_in_use(tmp_path):
    run = tmp_path / 'out' / 'run'
    run.mkdir(parents=True)
    (run / 'summary.csv').write_text('epoch,train_loss\n0,2.3\n')
    (run / 'last.pth.tar').write_bytes(b'old run')
    return []


def _setup_truncated(tmp_path, option):
    model = timm.create_model('resnet18', num_classes=10)
    torch.save({'state_dict': model.state_dict(), 'epoch': 0}, tmp_path / 'full.pth.tar')
    data = (tmp_path / 'full.pth.tar').read_bytes()
    (tmp_path / 'cut.pth.tar').write_bytes(data[:len(data) // 3])
    return [option, str(tmp_path / 'cut.pth.tar')]


def _setup_garbage(tmp_path, option):
    (tmp_path / 'garbage.pth.tar').write_bytes(bytes(range(256)) * 16)  # not a torch file at all
    return [option, str(tmp_path / 'garbage.pth.tar')]


def _setup_no_weights(tmp_path, option):
    torch.save([1, 2, 3], tmp_path / 'list.pth.tar')  # a valid, safe torch file without a state dict
    return [option, str(tmp_path / 'list.pth.tar')]


def _setup_other_model_resume(tmp_path):
    torch.save({'state_dict': timm.create_model('resnet34', num_classes=10).state_dict(), 'epoch': 0},
               tmp_path / 'r34.pth.tar')
    return ['--resume', str(tmp_path / 'r34.pth.tar')]


def _setup_malicious(tmp_path, option):
    torch.save({'state_dict': {}, 'epoch': _RunsCode(tmp_path / 'PWNED')}, tmp_path / 'evil.pth.tar')
    return [option, str(tmp_path / 'evil.pth.tar')]


# The one message of timm_stim.loading for a checkpoint that cannot be read, whichever option names it.
def _missing(option, path):
    return f'{option} {path}: no such file; expected a checkpoint'


def _truncated(option, name):
    return (f'{option} {{tmp}}/{name} could not be read as a checkpoint', 'It may be truncated or damaged')


def _runs_code(option):
    return (f'{option} {{tmp}}/evil.pth.tar holds Python objects that are not allowed in a checkpoint (posix.system)',
            'nothing of it was executed', 'If you trust this file (and only then), convert it once')


def _setup_timm_recovery_in_last_epoch(tmp_path):
    # What timm's train.py writes every --recovery-interval updates: its own CheckpointSaver's
    # save_recovery, with no record of how far into the epoch it was. Taken in epoch 0 of 1.
    import argparse
    from timm import utils
    from timm.optim import create_optimizer_v2
    model = timm.create_model('resnet18', num_classes=10)
    optimizer = create_optimizer_v2(model, opt='sgd', lr=0.1, weight_decay=2e-5, momentum=0.9)
    folder = tmp_path / 'out' / 'timm'
    folder.mkdir(parents=True)
    saver = utils.CheckpointSaver(model, optimizer, args=argparse.Namespace(model='resnet18'),
                                  checkpoint_dir=str(folder), recovery_dir=str(folder))
    saver.save_recovery(0, batch_idx=0)
    return ['--resume', str(folder / 'recovery-0-0.pth.tar')]


def _epoch_0_checkpoint(path, **extra) -> str:
    """A resnet18 checkpoint as train_stim.py writes it after epoch 0 (its folder created); its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': timm.create_model('resnet18', num_classes=10).state_dict(), 'epoch': 0, 'version': 2,
                **extra}, path)
    return str(path)


def _setup_resume_into_another_run(tmp_path):
    # --resume A/last.pth.tar --experiment run, where out/run holds another run.
    _setup_output_in_use(tmp_path)
    return ['--resume', _epoch_0_checkpoint(tmp_path / 'out' / 'a' / 'last.pth.tar')]


def _setup_summary_with_misaligned_rows(tmp_path):
    # The run's own folder, whose summary.csv has a row that does not fit its header (as an earlier
    # version wrote when a resume changed the columns): trimming it must not drop the row unseen.
    checkpoint = _epoch_0_checkpoint(tmp_path / 'out' / 'run' / 'last.pth.tar')
    (tmp_path / 'out' / 'run' / 'summary.csv').write_text(
        'epoch,train_loss,train_stim_kl,lr\r\n0,2.3,0.1,0.05\r\n1,2.2,0.05\r\n')
    return ['--resume', checkpoint]


def _setup_mid_epoch_of_other_world_size(tmp_path):
    # A recovery checkpoint taken inside epoch 0 by 2 processes, resumed by 1: each process
    # continues its own share of the epoch, which 1 process cannot.
    progress = {'epoch': 0, 'batches_done': 1, 'updates_done': 1, 'meters': {'loss': [4.0, 2]}, 'world_size': 2,
                'rank_meters': [{'loss': [4.0, 2]}, {'loss': [3.0, 2]}]}
    checkpoint = _epoch_0_checkpoint(tmp_path / 'out' / 'run' / 'recovery-0-0.pth.tar',
                                     saver={'timm_stim_progress': progress})
    return ['--resume', checkpoint, '--epochs', '2', '--train-batches-per-epoch', '2']


def _setup_empty_image_folder(tmp_path):
    (tmp_path / 'images' / 'train').mkdir(parents=True)
    (tmp_path / 'images' / 'validation' / 'a').mkdir(parents=True)
    return ['--dataset', '', '--data-dir', str(tmp_path / 'images')]


def _setup_weights_only_resume(tmp_path, kind):
    # A finished run's folder (out/A); --resume names its weights-only file instead of last.pth.tar.
    from safetensors.torch import save_file
    state_dict = timm.create_model('resnet18', num_classes=10).state_dict()
    last = _epoch_0_checkpoint(tmp_path / 'out' / 'A' / 'last.pth.tar')
    if kind == 'safetensors':
        path = tmp_path / 'out' / 'A' / 'model_best.safetensors'
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        path = tmp_path / 'out' / 'A' / 'weights.pth'
        torch.save(state_dict, path)
    assert os.path.exists(last)
    return ['--resume', str(path), '--experiment', 'A']


def _setup_epoch(tmp_path, epoch):
    return ['--resume', _epoch_0_checkpoint(tmp_path / 'out' / 'run' / 'last.pth.tar', epoch=epoch)]


def _claim(folder, **record):
    import json
    folder.mkdir(parents=True, exist_ok=True)
    (folder / '.timm-stim-run').write_text(json.dumps(record))


def _setup_claimed_by_another_host(tmp_path):
    _claim(tmp_path / 'out' / 'run', pid=4242, host='node-7.cluster', started='2026-01-01T00:00:00')
    return []


def _setup_resume_while_another_process_writes(tmp_path):
    # A live process (this test's parent) on this host holds the run's folder.
    checkpoint = _epoch_0_checkpoint(tmp_path / 'out' / 'run' / 'last.pth.tar')
    import socket
    _claim(tmp_path / 'out' / 'run', pid=os.getppid(), host=socket.gethostname(), started='2026-01-01T00:00:00')
    return ['--resume', checkpoint]


CASES = {
    'output is a file': (_setup_output_is_file, [], "output folder {out}/run cannot be created: {out} is a file"),
    'output cannot be written': (None, ['--output', '/proc/timm-stim'], 'cannot be written'),
    'output holds another run': (_setup_output_in_use, [],
                                 'output folder {out}/run already holds another run (2 entries: last.pth.tar, '
                                 'summary.csv). A new run never writes into it: continue that run with --resume'),
    'resume missing': (None, ['--resume', '/nonexistent/last.pth.tar'],
                       _missing('--resume', '/nonexistent/last.pth.tar')),
    'resume truncated': (lambda p: _setup_truncated(p, '--resume'), [], _truncated('--resume', 'cut.pth.tar')),
    'resume other model': (_setup_other_model_resume, [], 'does not fit --model resnet18'),
    'resume runs code': (lambda p: _setup_malicious(p, '--resume'), [], _runs_code('--resume')),
    'initial checkpoint missing': (None, ['--initial-checkpoint', '/nonexistent/init.pth.tar'],
                                   _missing('--initial-checkpoint', '/nonexistent/init.pth.tar')),
    'initial checkpoint truncated': (lambda p: _setup_truncated(p, '--initial-checkpoint'), [],
                                     _truncated('--initial-checkpoint', 'cut.pth.tar')),
    'initial checkpoint garbage': (lambda p: _setup_garbage(p, '--initial-checkpoint'), [],
                                   _truncated('--initial-checkpoint', 'garbage.pth.tar')),
    'initial checkpoint runs code': (lambda p: _setup_malicious(p, '--initial-checkpoint'), [],
                                     _runs_code('--initial-checkpoint')),
    'initial checkpoint holds no weights': (lambda p: _setup_no_weights(p, '--initial-checkpoint'), [],
                                            '--initial-checkpoint {tmp}/list.pth.tar holds no model weights'),
    'pretrained path missing': (None, ['--pretrained', '--pretrained-path', '/nonexistent/weights.pth'],
                                _missing('--pretrained-path', '/nonexistent/weights.pth')),
    'pretrained path truncated': (lambda p: _setup_truncated(p, '--pretrained-path'), ['--pretrained'],
                                  _truncated('--pretrained-path', 'cut.pth.tar')),
    'pretrained path runs code': (lambda p: _setup_malicious(p, '--pretrained-path'), ['--pretrained'],
                                  _runs_code('--pretrained-path')),
    'yaml stim_norm': (lambda p: _write_yaml(p, 'stim_norm: bogus\n'), [],
                       "stim_norm: 'bogus' is not one of none, kl, all"),
    'yaml stim_subnets': (lambda p: _write_yaml(p, 'stim_subnets: 2.7\n'), [], 'stim_subnets: 2.7 is not a valid int'),
    'yaml stim_weight_sched': (lambda p: _write_yaml(p, 'stim_weight_sched: bogus\n'), [],
                               "stim_weight_sched: 'bogus' is not one of"),
    'yaml stim_mode': (lambda p: _write_yaml(p, 'stim_mode: bogus\n'), [], "stim_mode: 'bogus' is not one of depth, drop"),
    'yaml timm option': (lambda p: _write_yaml(p, 'smoothing: lots\n'), [], "smoothing: 'lots' is not a valid float"),
    'resume timm recovery in its last epoch': (
        _setup_timm_recovery_in_last_epoch, [],
        '--resume {out}/timm/recovery-0-0.pth.tar is a recovery checkpoint taken inside epoch 0 (after update 0) '
        'without a record of how far into the epoch it was'),
    'resume into another run': (
        _setup_resume_into_another_run, [],
        '--resume {out}/a/last.pth.tar continues the run in {out}/a, but the output folder {out}/run holds another '
        'run'),
    'resume summary with misaligned rows': (
        _setup_summary_with_misaligned_rows, [],
        '{out}/run/summary.csv: row 3 (epoch 1) has 3 values under 4 columns'),
    'resume mid-epoch with other world size': (
        _setup_mid_epoch_of_other_world_size, [],
        'was saved inside epoch 0 by 2 processes; this run has 1'),
    'empty train folder': (_setup_empty_image_folder, [], "the 'train' split of --dataset (image folder)"),
    'data-dir with embedded': (None, ['--data-dir', '/data'], '--data-dir /data with --dataset embedded/digits'),
    'space keeps every block': (None, ['--stim-subnets', '1', '--stim-space', 'keep:99'],
                                '--stim-space keep:99 keeps every block of resnet18'),
    'space drops nothing': (None, ['--stim-subnets', '1', '--stim-space', '0,0,0,0'], 'every subnetwork would be the '
                                                                                        'full network'),
    'subnet inputs too small': (None, ['--model', 'convnext_atto', '--input-size', '3', '32', '32', '--stim-subnets',
                                       '1', '--stim-min-scale', '0.5'],
                                '--stim-min-scale 0.5: subnetwork inputs go down to 16 px, but convnext_atto needs at '
                                'least 32 px'),
    # Non-finite and null values (every numeric option), and timm options that used to crash late.
    'stim weight nan': (None, ['--stim-subnets', '1', '--stim-weight', 'nan'], "argument --stim-weight: 'nan': expected a finite number"),
    'stim weight inf': (None, ['--stim-subnets', '1', '--stim-weight', 'inf'], "argument --stim-weight: 'inf': expected a finite number"),
    'stim temperature nan': (None, ['--stim-subnets', '1', '--stim-temperature', 'nan'], "--stim-temperature: 'nan': expected a finite"),
    'stim amplitude nan': (None, ['--stim-subnets', '1', '--stim-amplitude', 'nan'], "--stim-amplitude: 'nan': expected a finite"),
    'stim warm-in inf': (None, ['--stim-subnets', '1', '--stim-weight-warmup', 'inf'], "--stim-weight-warmup: 'inf': expected a finite"),
    'yaml stim weight .inf': (lambda p: _write_yaml(p, 'stim_subnets: 1\nstim_weight: .inf\n'), [],
                              "stim_weight: inf: 'inf': expected a finite number"),
    'yaml stim_subnets null': (lambda p: _write_yaml(p, 'stim_subnets: null\n'), [],
                               'stim_subnets: None is null; --stim-subnets needs a value (its default is 0)'),
    'yaml epochs null': (lambda p: _write_yaml(p, 'epochs: null\n'), [], 'epochs: None is null'),
    'lr nan': (None, ['--lr', 'nan'], "argument --lr: 'nan': expected a finite number"),
    'batch 0': (None, ['-b', '0'], '-b/--batch-size 0: expected an int >= 1'),
    'epochs 0': (None, ['--epochs', '0'], '--epochs 0: expected an int >= 1'),
    'epochs -1': (None, ['--epochs', '-1'], '--epochs -1: expected an int >= 1'),
    'batch above the training set': (None, ['-b', '5000'], '-b/--batch-size 5000 is larger than the training set'),
    'experiment leaves output': (None, ['--experiment', '../../x'], "--experiment '../../x': expected a folder name "
                                                                     "under --output"),
    'experiment is absolute': (None, ['--experiment', '/tmp/x'], "--experiment '/tmp/x': expected a folder name"),
    # Trust, third round (issue 27): a finished run is never wiped, a folder never shared, options timm
    # refuses late are refused before the folder is taken.
    'resume from model_best.safetensors': (
        lambda p: _setup_weights_only_resume(p, 'safetensors'), [],
        ('--resume {out}/A/model_best.safetensors holds model weights only', 'nothing was touched',
         'pass --resume {out}/A/last.pth.tar', '--initial-checkpoint {out}/A/model_best.safetensors',
         '--pretrained-path {out}/A/model_best.safetensors')),
    'resume from a plain state dict': (
        lambda p: _setup_weights_only_resume(p, 'pth'), [],
        ('--resume {out}/A/weights.pth holds model weights only', '--initial-checkpoint {out}/A/weights.pth')),
    'resume epoch is a string': (lambda p: _setup_epoch(p, 'three'), [],
                                 "records epoch 'three' (str); expected a whole number >= 0"),
    'resume epoch is negative': (lambda p: _setup_epoch(p, -4), [], 'records epoch -4 (int); expected a whole number'),
    'output claimed from another host': (
        _setup_claimed_by_another_host, [],
        ('output folder {out}/run already holds another run', 'in use by process 4242 on host node-7.cluster',
         'remove {out}/run/.timm-stim-run and run again')),
    'resume while another process writes the folder': (
        _setup_resume_while_another_process_writes, [],
        ('output folder {out}/run already holds another run', f'in use by process {os.getppid()} on host')),
    'checkpoint-hist 0': (None, ['--checkpoint-hist', '0'], '--checkpoint-hist 0: expected an int >= 1'),
    'aa bogus': (None, ['--aa', 'bogus'], "--aa 'bogus' is not an augmentation policy timm can parse"),
    'opt bogus': (None, ['--opt', 'bogus'], "--opt 'bogus' is not an optimizer of timm"),
    'smoothing 2': (None, ['--smoothing', '2'], '--smoothing 2.0: expected a label smoothing in [0, 1)'),
    'lr-base-size 0': (None, ['--lr-base-size', '0'], '--lr-base-size 0: expected an int >= 1'),
    'sched bogus': (None, ['--sched', 'bogus'], "--sched 'bogus' with these schedule options: timm refuses it"),
    'eval-metric bogus': (None, ['--eval-metric', 'bogus'], "--eval-metric 'bogus': expected one of top1, top5, loss"),
    'drop 2': (None, ['--drop', '2'], '--drop 2.0: expected a rate in [0, 1)'),
    'crop-pct -3': (None, ['--crop-pct', '-3'], '--crop-pct -3.0: expected a center-crop fraction > 0'),
    'std 0': (None, ['--std', '0', '0', '0'], '--std 0.0 0.0 0.0: expected values > 0'),
    'model-kwargs nan': (None, ['--model-kwargs', 'drop_rate=nan'], "--model-kwargs drop_rate='nan': expected finite"),
    'model-kwargs inf': (None, ['--model-kwargs', 'drop_rate=1e999'], '--model-kwargs drop_rate=inf: expected finite'),
    'stim-subnets beyond the bound': (None, ['--stim-subnets', '99999999999999999999'],
                                      '--stim-subnets 99999999999999999999: expected at most 1000 subnetworks per step'),
    'stim-budget beyond the bound': (None, ['--stim-budget', '1e15'],
                                     '--stim-budget 1000000000000000.0: expected at most 1000 full passes'),
    'train-batches-per-epoch -5': (None, ['--train-batches-per-epoch', '-5'],
                                   '--train-batches-per-epoch -5: expected an int >= 1'),
}


def _messages(case, out, tmp_path):
    """The texts the error of ``case`` must contain ({out}, {tmp}: the output and the test's folder)."""
    messages = CASES[case][2]
    return [m.format(out=out, tmp=tmp_path) for m in ((messages,) if isinstance(messages, str) else messages)]


def _run(tmp_path, case, caplog):
    from timm_stim.training.train import main
    setup, extra, _ = CASES[case]
    out = tmp_path / 'out'
    extra = (setup(tmp_path) if setup else []) + extra
    before = _snapshot(out)
    with pytest.raises(SystemExit) as info:
        main(_base(out, *extra))
    return info.value.code, _messages(case, out, tmp_path), before, _snapshot(out)


@pytest.mark.parametrize('case', list(CASES), ids=list(CASES))
def test_bad_input_stops_before_any_work(tmp_path, env, monkeypatch, caplog, capsys, case):
    monkeypatch.setenv('TIMM_STIM_CACHE', env['TIMM_STIM_CACHE'])
    code, messages, before, after = _run(tmp_path, case, caplog)
    assert code == 2
    text = caplog.text + capsys.readouterr().err  # argparse reports YAML values on stderr
    for message in messages:
        assert message in text, text[-3000:]
    assert 'Traceback' not in text
    assert after == before  # nothing created, nothing changed
    assert not (tmp_path / 'PWNED').exists()  # nothing in a file ran


@pytest.mark.slow
@pytest.mark.parametrize('case', ['resume runs code', 'initial checkpoint runs code', 'subnet inputs too small'])
def test_bad_input_from_the_command_line(tmp_path, env, case):
    # The same, as a user sees it: one message on stderr, no traceback.
    setup, extra, _ = CASES[case]
    out = tmp_path / 'out'
    extra = (setup(tmp_path) if setup else []) + extra
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train_stim.py'), *_base(out), *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    for message in _messages(case, out, tmp_path):
        assert message in proc.stderr, proc.stderr[-3000:]
    assert not out.exists() and not (tmp_path / 'PWNED').exists()


def test_two_runs_cannot_take_one_folder(tmp_path):
    """Both runs see a free folder; only the first to take it gets it (issue: two epoch-0 rows in one summary)."""
    from timm_stim.errors import InputError
    from timm_stim.training.runs import check_output_dir, claim_output_dir
    folder = str(tmp_path / 'out' / 'run')
    check_output_dir(folder, resuming=False)
    check_output_dir(folder, resuming=False)  # the second run checks before the first wrote anything
    claim_output_dir(folder)
    with pytest.raises(InputError, match='already holds another run'):
        claim_output_dir(folder)
    empty = tmp_path / 'empty'
    empty.mkdir()
    claim_output_dir(str(empty))  # an existing empty folder is taken with a marker file
    with pytest.raises(InputError, match='already holds another run'):
        claim_output_dir(str(empty))


@pytest.mark.slow
def test_two_runs_started_at_once_with_one_experiment(tmp_path, env):
    out = tmp_path / 'out'
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'train_stim.py'), *_base(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], [err[-2000:] for _, err in results]
    assert 'already holds another run' in [err for code, err in results if code == 2][0]
    rows = (out / 'run' / 'summary.csv').read_text().splitlines()
    assert len(rows) == 2  # the header and one epoch: one run wrote here
