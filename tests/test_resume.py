"""Trustworthy runs: --resume repeats the uninterrupted run exactly, whatever stopped it and wherever.

Every comparison is bit for bit (CPU): final weights, EMA weights and every summary.csv row.
"""
import argparse
import csv
import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import timm_stim.training.runs as runs_mod
from timm_stim.training.train import main

# Reference runs, killed processes and resumes: the full suite and CI run them, the quick run leaves them out.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(out, workers, *extra):
    # ST++ with EMA, augmentations in the workers (random crop, flip, erasing on the prefetcher),
    # 2 epochs of 4 batches, a recovery checkpoint every 2 updates.
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
            '--input-size', '3', '16', '16', '--mean', '0.5', '0.5', '0.5', '--std', '0.5', '0.5', '0.5',
            '-b', '16', '--workers', str(workers), '--lr', '0.05', '--warmup-epochs', '0', '--epochs', '2',
            '--train-batches-per-epoch', '4', '--scale', '0.5', '1', '--reprob', '0.25', '--drop-path', '0.1',
            '--stim-subnets', '2', '--stim-space', 'stpp', '--stim-norm', 'all', '--stim-min-scale', '0.5',
            '--model-ema', '--model-ema-decay', '0.9', '--recovery-interval', '2', '--log-interval', '100',
            '--val-split', 'validation', '--output', str(out), '--experiment', 'run', '--seed', '5', *extra]


def _load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):  # timm checkpoints carry their args
        return torch.load(path, map_location='cpu', weights_only=True)


def _weights(run_dir):
    ckpt = _load(os.path.join(run_dir, 'last.pth.tar'))
    return {**{'m.' + k: v for k, v in ckpt['state_dict'].items()},
            **{'ema.' + k: v for k, v in ckpt['state_dict_ema'].items()}}


def _rows(run_dir):
    with open(os.path.join(run_dir, 'summary.csv'), newline='') as f:
        return list(csv.reader(f))


def _assert_same_run(run_dir, reference_dir):
    assert _rows(run_dir) == _rows(reference_dir)  # one header, one row per epoch, same values
    got, expected = _weights(run_dir), _weights(reference_dir)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert not glob.glob(os.path.join(run_dir, 'recovery-*.pth.tar'))  # superseded by the epoch checkpoints


@pytest.fixture(scope='module')
def references(tmp_path_factory):
    """Uninterrupted runs, per number of workers."""
    refs = {}
    for workers in (0, 2):
        out = tmp_path_factory.mktemp(f'reference{workers}')
        refs[workers] = main(_args(out, workers))['output_dir']
    return refs


def test_augmentations_do_not_depend_on_the_number_of_workers(references):
    assert _rows(references[0]) == _rows(references[2])
    _assert_same_run(references[2], references[0])


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_inside_an_epoch_repeats_the_uninterrupted_run(tmp_path, monkeypatch, references, workers):
    # Ctrl-C in epoch 1 after 3 batches: a recovery checkpoint at that step, exit code 130;
    # resuming from it finishes the epoch as if nothing had happened.
    calls = {'n': 0}

    def poll(self, distributed=False, device=None):
        calls['n'] += 1
        return calls['n'] == 4 + 3  # epoch 0 has 4 updates, then the 3rd update of epoch 1

    original = runs_mod.InterruptRequest.poll
    monkeypatch.setattr(runs_mod.InterruptRequest, 'poll', poll)
    with pytest.raises(SystemExit) as info:
        main(_args(tmp_path, workers))
    assert info.value.code == 130
    recovery = os.path.join(tmp_path, 'run', 'recovery-1-2.pth.tar')
    assert os.path.exists(recovery)
    monkeypatch.setattr(runs_mod.InterruptRequest, 'poll', original)
    result = main(_args(tmp_path, workers, '--resume', recovery))
    assert [e['epoch'] for e in result['epochs']] == [1]
    _assert_same_run(result['output_dir'], references[workers])


def _interrupt_after_epoch_0(out, workers: int) -> None:
    """Train with Ctrl-C arriving after epoch 0's checkpoint (exit 130), then let epochs run on again."""
    from timm_stim.callbacks import TrainCallback

    class Stop(TrainCallback):
        def on_epoch_end(self, state):
            if state.progress.epoch == 0:
                raise KeyboardInterrupt
    with pytest.raises(SystemExit) as info:
        main(_args(out, workers), callbacks=[Stop()])
    assert info.value.code == 130


def test_resume_at_an_epoch_boundary_with_other_workers(tmp_path, references):
    # Interrupted after epoch 0 with 2 workers, resumed with 1 (the quick start's value): the same run
    # as the uninterrupted one with 0 workers (with 0 and 2 workers the runs are equal, above).
    _interrupt_after_epoch_0(tmp_path, workers=2)
    main(_args(tmp_path, 1, '--resume', os.path.join(tmp_path, 'run', 'last.pth.tar')))
    _assert_same_run(os.path.join(tmp_path, 'run'), references[0])


def test_resume_from_an_old_format_checkpoint(tmp_path, references):
    # A valid checkpoint in torch's old (non-zip) format, e.g. re-saved by an older tool: it cannot be
    # memory-mapped, so it is read whole, and resuming from it repeats the uninterrupted run, checkpoint
    # history included.
    _interrupt_after_epoch_0(tmp_path, workers=0)
    last = os.path.join(tmp_path, 'run', 'last.pth.tar')
    torch.save(_load(last), last, _use_new_zipfile_serialization=False)
    with open(last, 'rb') as f:
        assert f.read(4) != b'PK\x03\x04'  # really the old format
    main(_args(tmp_path, 0, '--resume', last))
    _assert_same_run(os.path.join(tmp_path, 'run'), references[0])
    assert _load(last)['saver'] == _load(os.path.join(references[0], 'last.pth.tar'))['saver']


# ---------------------------------------------------------------------------------------------
# A real process, killed
# ---------------------------------------------------------------------------------------------

# Loaded into the training process (PYTHONPATH): SIGKILL in the middle of the N-th checkpoint
# write, after half of the file is on disk.
KILL_DURING_SAVE = '''
import os, signal, torch
_save, _count = torch.save, [0]
def _dying_save(obj, f, *args, **kwargs):
    _count[0] += 1
    if _count[0] == int(os.environ['KILL_AT_SAVE']):
        import io
        buffer = io.BytesIO()
        _save(obj, buffer, *args, **kwargs)
        with open(f, 'wb') as out:
            out.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)
torch.save = _dying_save
'''

_RECOVERY = re.compile(r'recovery-(\d+)-(\d+)\.pth\.tar$')


def _newest_checkpoint(run_dir):
    """What a user resumes from after a crash: the newest complete checkpoint of the folder."""
    candidates = []
    for path in glob.glob(os.path.join(run_dir, '*.pth.tar')):
        match = _RECOVERY.search(path)
        try:
            ckpt = _load(path)
        except Exception:
            continue  # cut short by the kill
        if match:
            candidates.append(((int(match.group(1)), int(match.group(2)) + 1), path))
        elif os.path.basename(path) == 'last.pth.tar':
            candidates.append(((ckpt['epoch'] + 1, 0), path))
    return max(candidates)[1] if candidates else None


def _run_and_kill(out, workers, env, kill_after_seconds=None):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train_stim.py'), *_args(out, workers)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after_seconds is None:
        _, err = proc.communicate(timeout=600)
        return proc.returncode, err
    last = os.path.join(out, 'run', 'last.pth.tar')
    deadline = time.time() + 300
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(kill_after_seconds)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize('workers,kill', [(0, 'save:3'), (2, 'save:5'), (2, 'time:0.5')],
                         ids=['w0-during-3rd-save', 'w2-during-5th-save', 'w2-0.5s-after-first-checkpoint'])
def test_killed_process_resumes_to_the_uninterrupted_run(tmp_path, references, workers, kill):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=str(torch.get_num_threads()))
    kill_after = None
    if kill.startswith('save:'):
        (tmp_path / 'hook').mkdir()
        (tmp_path / 'hook' / 'sitecustomize.py').write_text(KILL_DURING_SAVE)
        env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / 'hook'), ROOT]), KILL_AT_SAVE=kill.split(':')[1])
    else:
        kill_after = float(kill.split(':')[1])
    code, err = _run_and_kill(tmp_path, workers, env, kill_after)
    assert code == -signal.SIGKILL, err[-2000:]
    resume_from = _newest_checkpoint(os.path.join(tmp_path, 'run'))
    assert resume_from is not None
    main(_args(tmp_path, workers, '--resume', resume_from))
    _assert_same_run(os.path.join(tmp_path, 'run'), references[workers])


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_exits_130(tmp_path, references):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train_stim.py'), *_args(tmp_path, 2)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = os.path.join(tmp_path, 'run', 'last.pth.tar')
    deadline = time.time() + 300
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert 'Traceback' not in err
    resume_line = [line for line in err.splitlines() if 'Training was interrupted' in line]
    assert len(resume_line) == 1
    resume_from = resume_line[0].split('--resume ')[1].strip()
    assert os.path.exists(resume_from)
    main(_args(tmp_path, 2, '--resume', resume_from))
    _assert_same_run(os.path.join(tmp_path, 'run'), references[2])


# ---------------------------------------------------------------------------------------------
# Resumes that change the run, or cannot continue it exactly: each works, or says why not
# ---------------------------------------------------------------------------------------------

def _stop_in_epoch_1(monkeypatch):
    """Stop (as Ctrl-C would) after the 3rd update of epoch 1; returns the original ``poll``."""
    calls = {'n': 0}

    def poll(self, distributed=False, device=None):
        calls['n'] += 1
        return calls['n'] == 4 + 3
    original = runs_mod.InterruptRequest.poll
    monkeypatch.setattr(runs_mod.InterruptRequest, 'poll', poll)
    return original


def _summary_dicts(run_dir):
    rows = _rows(run_dir)
    assert all(len(row) == len(rows[0]) for row in rows), rows  # every row under the header's columns
    return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]


def _case_stim_from_a_plain_checkpoint(tmp_path, monkeypatch, caplog, references):
    # A baseline run's checkpoint (--stim-subnets 0: no subnetwork sampler state, as timm's own
    # train.py writes) resumed with stimulative training, in the same folder: subnetworks are
    # drawn from a fresh generator seeded as a fresh run's, said in one line.
    main(_args(tmp_path, 0, '--stim-subnets', '0', '--epochs', '1'))
    last = os.path.join(tmp_path, 'run', 'last.pth.tar')
    assert 'task_state' not in _load(last)
    caplog.set_level('INFO')
    result = main(_args(tmp_path, 0, '--resume', last))
    assert [e['epoch'] for e in result['epochs']] == [1]
    lines = [r.getMessage() for r in caplog.records if 'no stimulative training state' in r.getMessage()]
    assert lines == [f'--resume {last} has no stimulative training state (a run without it: --stim-subnets 0 or '
                     f'timm\'s train.py): subnetworks are drawn from a fresh generator seeded with --seed 5, as in a '
                     f'fresh run.']
    assert 'stim_generator_state' in _load(last)['task_state']
    header, rows = _summary_dicts(os.path.join(tmp_path, 'run'))
    assert header[-1] == 'train_stim_kl'  # the new column after the existing ones; epoch 0 has no value
    assert [r['epoch'] for r in rows] == ['0', '1'] and rows[0]['train_stim_kl'] == ''
    assert float(rows[1]['train_stim_kl']) > 0


def _case_stim_run_resumed_without_stim(tmp_path, monkeypatch, caplog, references):
    # An ST run (its summary.csv has train_stim_kl) resumed with --stim-subnets 0, then resumed
    # once more: every row stays under its column, and the trim of the second resume keeps them all.
    main(_args(tmp_path, 0, '--epochs', '1'))
    last = os.path.join(tmp_path, 'run', 'last.pth.tar')
    main(_args(tmp_path, 0, '--stim-subnets', '0', '--epochs', '2', '--resume', last))
    main(_args(tmp_path, 0, '--stim-subnets', '0', '--epochs', '3', '--resume', last))
    header, rows = _summary_dicts(os.path.join(tmp_path, 'run'))
    assert header == ['epoch', 'train_loss', 'train_stim_kl', 'eval_loss', 'eval_top1', 'eval_top5', 'lr']
    assert [r['epoch'] for r in rows] == ['0', '1', '2']
    assert float(rows[0]['train_stim_kl']) > 0 and rows[1]['train_stim_kl'] == rows[2]['train_stim_kl'] == ''
    for row in rows:
        assert 0 <= float(row['eval_top1']) <= 100 and 0 < float(row['lr']) <= 0.05


def _case_timm_seeding_resumed_inside_an_epoch(tmp_path, monkeypatch, caplog, references):
    # --seed-scheme timm cannot repeat the rest of an epoch (documented); the resume says so.
    original = _stop_in_epoch_1(monkeypatch)
    with pytest.raises(SystemExit) as info:
        main(_args(tmp_path, 0, '--seed-scheme', 'timm'))
    assert info.value.code == 130
    monkeypatch.setattr(runs_mod.InterruptRequest, 'poll', original)
    recovery = os.path.join(tmp_path, 'run', 'recovery-1-2.pth.tar')
    main(_args(tmp_path, 0, '--seed-scheme', 'timm', '--resume', recovery))
    lines = [r for r in caplog.records if '--seed-scheme timm' in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == 'WARNING', [r.getMessage() for r in lines]
    assert 'not exactly' in lines[0].getMessage() and '--seed-scheme per-sample' in lines[0].getMessage()


def _disk_full_at_save(monkeypatch, n, error):
    """The ``n``-th torch.save writes half of the file, then fails as on a full disk."""
    import io
    save, count = torch.save, {'n': 0}

    def failing_save(obj, f, *args, **kwargs):
        count['n'] += 1
        if count['n'] != n:
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        with open(f, 'wb') as out:
            out.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        raise error
    monkeypatch.setattr(torch, 'save', failing_save)
    return save


def _check_disk_full(tmp_path, monkeypatch, caplog, references, error, free_bytes=None):
    # The 3rd save (the epoch 0 checkpoint, after two recovery checkpoints) runs out of space:
    # the message says so, keeps the last complete checkpoint, removes the partial file and
    # says what to pass; resuming with it once space is free repeats the uninterrupted run.
    import shutil
    save = _disk_full_at_save(monkeypatch, 3, error)
    if free_bytes is not None:
        usage = shutil.disk_usage
        monkeypatch.setattr(shutil, 'disk_usage', lambda p: usage(p)._replace(free=free_bytes))
    with pytest.raises(SystemExit) as info:
        main(_args(tmp_path, 0))
    assert info.value.code == 1
    run_dir = os.path.join(tmp_path, 'run')
    kept = os.path.join(run_dir, 'recovery-0-3.pth.tar')
    text = caplog.text
    assert 'Traceback' not in text
    partial = os.path.join(run_dir, 'tmp.pth.tar')
    assert f'No space left on device (ENOSPC) while writing {partial}' in text, text[-3000:]
    assert f'Once space is freed, resume with the same options plus --resume {kept}' in text, text[-3000:]
    assert not [name for name in os.listdir(run_dir) if 'tmp' in name]  # the partial file is gone
    assert not os.path.exists(os.path.join(run_dir, 'last.pth.tar')) and _load(kept)['epoch'] == 0
    monkeypatch.setattr(torch, 'save', save)
    if free_bytes is not None:
        monkeypatch.setattr(shutil, 'disk_usage', usage)
    main(_args(tmp_path, 0, '--resume', kept))
    _assert_same_run(run_dir, references[0])


def _case_disk_full_oserror(tmp_path, monkeypatch, caplog, references):
    import errno
    _check_disk_full(tmp_path, monkeypatch, caplog, references, OSError(errno.ENOSPC, 'No space left on device'))


def _case_disk_full_torch_error(tmp_path, monkeypatch, caplog, references):
    # torch.save's own writer reports a full disk without errno ("unexpected pos ..."): the free space tells.
    _check_disk_full(tmp_path, monkeypatch, caplog, references,
                     RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598'),
                     free_bytes=0)


RESUME_CASES = {
    'stim from a plain checkpoint': _case_stim_from_a_plain_checkpoint,
    'stim run resumed without stim': _case_stim_run_resumed_without_stim,
    'timm seeding resumed inside an epoch': _case_timm_seeding_resumed_inside_an_epoch,
    'disk full (OSError ENOSPC)': _case_disk_full_oserror,
    'disk full (torch error, no free space)': _case_disk_full_torch_error,
}


@pytest.mark.parametrize('case', list(RESUME_CASES), ids=list(RESUME_CASES))
def test_resume_case(tmp_path, monkeypatch, caplog, references, case):
    RESUME_CASES[case](tmp_path, monkeypatch, caplog, references)


# ---------------------------------------------------------------------------------------------
# One folder, one process (issue 27): every run that writes into a folder claims it for its whole life
# ---------------------------------------------------------------------------------------------

def _tiny(out, *extra):
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--model-kwargs', 'channels=(8,16,32,64)',
            'stem_width=8', '--num-classes', '10', '--device', 'cpu', '--input-size', '3', '16', '16', '-b', '32',
            '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--seed', '3', '--epochs', '1',
            '--train-batches-per-epoch', '2', '--output', str(out), '--experiment', 'A', *extra]


def _snapshot(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), 'rb') as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def _dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_a_claim_holds_the_folder_until_released_and_a_dead_one_is_taken_over(tmp_path, caplog):
    import json
    import socket
    from timm_stim.errors import InputError
    from timm_stim.training.runs import CLAIM_FILE, claim_output_dir, read_claim, release_output_dir
    folder = tmp_path / 'run'
    claimed = claim_output_dir(str(folder), resuming=True)
    record = read_claim(str(folder))
    assert (record['pid'], record['host']) == (os.getpid(), socket.gethostname()) and record['started']
    with pytest.raises(InputError, match=rf'in use by process {os.getpid()} on host .*this process'):
        claim_output_dir(str(folder), resuming=True)  # a second run (here: this process again) is refused
    release_output_dir(claimed)
    assert not (folder / CLAIM_FILE).exists()
    claim_output_dir(str(folder), resuming=True)  # released: free again

    # Left by a process that died without releasing it (kill -9): taken over, said in the log.
    dead = _dead_pid()
    (folder / CLAIM_FILE).write_text(json.dumps({'pid': dead, 'host': socket.gethostname(), 'started': 'then'}))
    caplog.set_level('WARNING')
    claim_output_dir(str(folder), resuming=True)
    assert read_claim(str(folder))['pid'] == os.getpid()
    assert f'taking over the claim of process {dead} on this host' in caplog.text

    # From another host (a shared file system): never taken as stale; the message says how to clear it.
    (folder / CLAIM_FILE).write_text(json.dumps({'pid': dead, 'host': 'elsewhere', 'started': 'then'}))
    with pytest.raises(InputError) as info:
        claim_output_dir(str(folder), resuming=True)
    assert f'in use by process {dead} on host elsewhere' in str(info.value)
    assert f'remove {folder / CLAIM_FILE} and run again' in str(info.value)


_HOLDER = '''
import sys, time
from timm_stim.training.runs import claim_output_dir
claim_output_dir(sys.argv[1], resuming=True)
print('claimed', flush=True)
time.sleep(600)
'''


def test_resume_while_another_process_holds_the_folder(tmp_path, caplog):
    # A run is trained; another process claims its folder (as a running resume does); a second resume
    # of it is refused with exit 2 and nothing in the folder changes. Once that process is killed (-9),
    # its claim is stale: the resume takes the folder over and continues the run.
    main(_tiny(tmp_path))
    run_dir = tmp_path / 'A'
    assert not (run_dir / '.timm-stim-run').exists()  # released when the run ended
    holder = subprocess.Popen([sys.executable, '-c', _HOLDER, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == 'claimed'
        before = _snapshot(run_dir)
        with pytest.raises(SystemExit) as info:
            main(_tiny(tmp_path, '--epochs', '2', '--resume', str(run_dir / 'last.pth.tar')))
        assert info.value.code == 2
        assert f'in use by process {holder.pid}' in caplog.text
        assert _snapshot(run_dir) == before  # nothing written, nothing removed
    finally:
        holder.kill()
        holder.wait()
    caplog.clear()
    result = main(_tiny(tmp_path, '--epochs', '2', '--resume', str(run_dir / 'last.pth.tar')))
    assert [e['epoch'] for e in result['epochs']] == [1]
    assert f'taking over the claim of process {holder.pid}' in caplog.text
    assert not (run_dir / '.timm-stim-run').exists()
    assert [row[0] for row in _rows(run_dir)] == ['epoch', '0', '1']


@pytest.mark.parametrize('failure', ['crash after args.yaml', 'ctrl-c while the data loads'])
def test_a_run_that_stops_before_its_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch, failure):
    # Any failure between taking the folder and the first checkpoint used to leave args.yaml or the claim
    # behind, and the same command was then refused. Now the folder goes; the command runs again.
    import timm_stim.training.train as train_mod
    if failure == 'crash after args.yaml':
        def broken(*args, **kwargs):
            assert os.path.exists(tmp_path / 'A' / 'args.yaml')  # the folder was taken and written
            raise RuntimeError('a bug after the folder was written')
        monkeypatch.setattr(train_mod, 'create_scheduler_v2', broken)
        with pytest.raises(RuntimeError):
            main(_tiny(tmp_path))
    else:
        def interrupted(*args, **kwargs):
            assert os.path.exists(tmp_path / 'A' / '.timm-stim-run')  # the folder was taken
            raise KeyboardInterrupt
        monkeypatch.setattr(train_mod, '_create_dataset', interrupted)
        with pytest.raises(SystemExit) as info:
            main(_tiny(tmp_path))
        assert info.value.code == 130
    assert not (tmp_path / 'A').exists()
    monkeypatch.undo()
    assert main(_tiny(tmp_path))['epochs']  # the same command runs


def test_resume_of_a_summary_saved_by_a_spreadsheet(tmp_path):
    # Excel writes a UTF-8 byte-order mark before the header: the resume still reads the 'epoch' column.
    main(_tiny(tmp_path))
    summary = tmp_path / 'A' / 'summary.csv'
    summary.write_bytes(b'\xef\xbb\xbf' + summary.read_bytes())
    main(_tiny(tmp_path, '--epochs', '2', '--resume', str(tmp_path / 'A' / 'last.pth.tar')))
    rows = _rows(tmp_path / 'A')
    assert rows[0][0] == 'epoch' and rows[0].count('epoch') == 1 and not rows[0][0].startswith('\ufeff')
    assert [row[0] for row in rows[1:]] == ['0', '1'] and all(len(row) == len(rows[0]) for row in rows)
