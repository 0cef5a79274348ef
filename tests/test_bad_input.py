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


def _setup_truncated_resume(tmp_path):
    model = timm.create_model('resnet18', num_classes=10)
    torch.save({'state_dict': model.state_dict(), 'epoch': 0}, tmp_path / 'full.pth.tar')
    data = (tmp_path / 'full.pth.tar').read_bytes()
    (tmp_path / 'cut.pth.tar').write_bytes(data[:len(data) // 3])
    return ['--resume', str(tmp_path / 'cut.pth.tar')]


def _setup_other_model_resume(tmp_path):
    torch.save({'state_dict': timm.create_model('resnet34', num_classes=10).state_dict(), 'epoch': 0},
               tmp_path / 'r34.pth.tar')
    return ['--resume', str(tmp_path / 'r34.pth.tar')]


def _setup_malicious_resume(tmp_path):
    torch.save({'state_dict': {}, 'epoch': _RunsCode(tmp_path / 'PWNED')}, tmp_path / 'evil.pth.tar')
    return ['--resume', str(tmp_path / 'evil.pth.tar')]


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


def _setup_resume_into_another_run(tmp_path):
    # --resume A/last.pth.tar --experiment run, where out/run holds another run.
    _setup_output_in_use(tmp_path)
    folder = tmp_path / 'out' / 'a'
    folder.mkdir()
    torch.save({'state_dict': timm.create_model('resnet18', num_classes=10).state_dict(), 'epoch': 0, 'version': 2},
               folder / 'last.pth.tar')
    return ['--resume', str(folder / 'last.pth.tar')]


def _setup_summary_with_misaligned_rows(tmp_path):
    # The run's own folder, whose summary.csv has a row that does not fit its header (as an earlier
    # version wrote when a resume changed the columns): trimming it must not drop the row unseen.
    run = tmp_path / 'out' / 'run'
    run.mkdir(parents=True)
    (run / 'summary.csv').write_text('epoch,train_loss,train_stim_kl,lr\r\n0,2.3,0.1,0.05\r\n1,2.2,0.05\r\n')
    torch.save({'state_dict': timm.create_model('resnet18', num_classes=10).state_dict(), 'epoch': 0, 'version': 2},
               run / 'last.pth.tar')
    return ['--resume', str(run / 'last.pth.tar')]


def _setup_mid_epoch_of_other_world_size(tmp_path):
    # A recovery checkpoint taken inside epoch 0 by 2 processes, resumed by 1: each process
    # continues its own share of the epoch, which 1 process cannot.
    run = tmp_path / 'out' / 'run'
    run.mkdir(parents=True)
    progress = {'epoch': 0, 'batches_done': 1, 'updates_done': 1, 'meters': {'loss': [4.0, 2]}, 'world_size': 2,
                'rank_meters': [{'loss': [4.0, 2]}, {'loss': [3.0, 2]}]}
    torch.save({'state_dict': timm.create_model('resnet18', num_classes=10).state_dict(), 'epoch': 0, 'version': 2,
                'saver': {'timm_stim_progress': progress}}, run / 'recovery-0-0.pth.tar')
    return ['--resume', str(run / 'recovery-0-0.pth.tar'), '--epochs', '2', '--train-batches-per-epoch', '2']


def _setup_empty_image_folder(tmp_path):
    (tmp_path / 'images' / 'train').mkdir(parents=True)
    (tmp_path / 'images' / 'validation' / 'a').mkdir(parents=True)
    return ['--dataset', '', '--data-dir', str(tmp_path / 'images')]


CASES = {
    'output is a file': (_setup_output_is_file, [], "output folder {out}/run cannot be created: {out} is a file"),
    'output cannot be written': (None, ['--output', '/proc/timm-stim'], 'cannot be written'),
    'output holds another run': (_setup_output_in_use, [],
                                 'output folder {out}/run already holds another run (2 entries: last.pth.tar, '
                                 'summary.csv). A new run never writes into it: continue that run with --resume'),
    'resume missing': (None, ['--resume', '/nonexistent/last.pth.tar'], '--resume /nonexistent/last.pth.tar: no such file'),
    'resume truncated': (_setup_truncated_resume, [], 'could not be read as a checkpoint'),
    'resume other model': (_setup_other_model_resume, [], 'does not fit --model resnet18'),
    'resume runs code': (_setup_malicious_resume, [], 'holds objects that are not allowed in a checkpoint'),
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
}


def _run(tmp_path, case, caplog):
    from timm_stim.training.train import main
    setup, extra, message = CASES[case]
    out = tmp_path / 'out'
    extra = (setup(tmp_path) if setup else []) + extra
    before = _snapshot(out)
    with pytest.raises(SystemExit) as info:
        main(_base(out, *extra))
    return info.value.code, message.format(out=out), before, _snapshot(out)


@pytest.mark.parametrize('case', list(CASES), ids=list(CASES))
def test_bad_input_stops_before_any_work(tmp_path, env, monkeypatch, caplog, capsys, case):
    monkeypatch.setenv('TIMM_STIM_CACHE', env['TIMM_STIM_CACHE'])
    code, message, before, after = _run(tmp_path, case, caplog)
    assert code == 2
    text = caplog.text + capsys.readouterr().err  # argparse reports YAML values on stderr
    assert message in text, text[-3000:]
    assert 'Traceback' not in text
    assert after == before  # nothing created, nothing changed
    assert not (tmp_path / 'PWNED').exists()  # nothing in a file ran


@pytest.mark.parametrize('case', ['resume runs code', 'subnet inputs too small'])
def test_bad_input_from_the_command_line(tmp_path, env, case):
    # The same, as a user sees it: one message on stderr, no traceback.
    setup, extra, message = CASES[case]
    out = tmp_path / 'out'
    extra = (setup(tmp_path) if setup else []) + extra
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train_stim.py'), *_base(out), *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr and message.format(out=out) in proc.stderr
    assert not out.exists() and not (tmp_path / 'PWNED').exists()
