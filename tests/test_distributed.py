"""torchrun with 2 CPU processes (gloo) trains like one process on the concatenated batch."""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from timm_stim.training.train import main

# Two-process runs under torchrun: the full suite and CI run them, the quick run leaves them out.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image_folder(root, per_class=4):
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for label in range(2):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f'{i}.png')


def _args(data, out, batch_size):
    # 8 training images: one step per epoch covers all of them, whether as one batch of 8 or
    # as two ranks' batches of 4. GroupNorm keeps the per-sample losses independent of the
    # batch split; --no-aug makes the inputs deterministic.
    return ['--data-dir', str(data), '--model', 'resnet18', '--model-kwargs', 'norm_layer=groupnorm',
            '--num-classes', '2', '--device', 'cpu', '--input-size', '3', '16', '16', '--no-aug',
            '--mean', '0.5', '0.5', '0.5', '--std', '0.5', '0.5', '0.5', '-b', str(batch_size), '--workers', '0',
            '--lr', '0.05', '--weight-decay', '0', '--smoothing', '0', '--warmup-epochs', '0', '--epochs', '3',
            '--stim-subnets', '2', '--stim-min-scale', '0.5', '--dist-bn', '', '--seed', '1',
            '--output', str(out), '--experiment', 'run', '--checkpoint-hist', '1']


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture(scope='module')
def single_run(tmp_path_factory):
    """Data, and the single-process run on batches of 8 that the distributed runs must equal."""
    root = tmp_path_factory.mktemp('dist')
    _image_folder(root / 'data')
    main(_args(root / 'data', root / 'single', 8))
    return root, torch.load(root / 'single' / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)


def _torchrun(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(env or os.environ, OMP_NUM_THREADS='1'),
                            **kwargs)


def _wait(proc):
    out, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _assert_same_training(single, path):
    ddp = torch.load(path, map_location='cpu', weights_only=False)
    assert single['epoch'] == ddp['epoch'] == 2
    for key, value in single['state_dict'].items():
        torch.testing.assert_close(ddp['state_dict'][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_two_process_run_equals_single_process_on_concatenated_batch(single_run):
    root, single = single_run
    code, err = _wait(_torchrun('--standalone', '--nproc_per_node', '2', os.path.join(ROOT, 'train_stim.py'),
                                *_args(root / 'data', root / 'ddp', 4)))
    assert code == 0, err[-3000:]
    assert 'distributed mode with multiple processes, 1 device per process.Process 0, total 2' in err
    _assert_same_training(single, root / 'ddp' / 'run' / 'last.pth.tar')
    # And training moved the weights: the comparison is not between two untouched models.
    import timm
    from timm import utils
    utils.random_seed(1, 0)
    fresh = timm.create_model('resnet18', num_classes=2, norm_layer='groupnorm').state_dict()
    assert not torch.allclose(fresh['fc.weight'], single['state_dict']['fc.weight'])
    assert not torch.allclose(fresh['layer1.1.conv1.weight'], single['state_dict']['layer1.1.conv1.weight'])


def test_two_process_run_with_compiled_blocks_equals_single_process(single_run):
    # --torchcompile under DDP: DDP wraps the network whose blocks are compiled (dynamo's eager
    # backend: the same regions and guards as inductor, without codegen).
    root, single = single_run
    code, err = _wait(_torchrun('--standalone', '--nproc_per_node', '2', os.path.join(ROOT, 'train_stim.py'),
                                *_args(root / 'data', root / 'ddp_compiled', 4), '--torchcompile', 'eager'))
    assert code == 0, err[-3000:]
    assert 'compiling 8 resnet blocks one by one' in err
    _assert_same_training(single, root / 'ddp_compiled' / 'run' / 'last.pth.tar')


def test_two_node_torchrun_equals_single_process(single_run):
    # Multi-node torchrun: two "nodes" (separate torchrun agents) of one process each, meeting
    # at a rendezvous on 127.0.0.1, as two machines would at their master address.
    root, single = single_run
    port = str(_free_port())
    procs = [_torchrun('--nnodes', '2', '--nproc_per_node', '1', '--node_rank', str(node), '--master_addr',
                       '127.0.0.1', '--master_port', port, os.path.join(ROOT, 'train_stim.py'),
                       *_args(root / 'data', root / f'node{node}', 4))
             for node in (0, 1)]
    results = [_wait(p) for p in procs]
    for code, err in results:
        assert code == 0, err[-3000:]
    assert 'Process 0, total 2' in results[0][1]
    assert 'Process 1, total 2' in results[1][1]
    _assert_same_training(single, root / 'node0' / 'run' / 'last.pth.tar')
    assert not (root / 'node1').exists()  # only the primary process writes


def test_sync_bn_on_cpu_is_refused_before_writing(single_run):
    root, _ = single_run
    code, err = _wait(_torchrun('--standalone', '--nproc_per_node', '2', os.path.join(ROOT, 'train_stim.py'),
                                *_args(root / 'data', root / 'syncbn', 4), '--sync-bn'))
    assert code != 0 and '--sync-bn' in err and 'CPU' in err
    assert not (root / 'syncbn').exists()


# ---------------------------------------------------------------------------------------------
# Interrupted and resumed under torchrun
# ---------------------------------------------------------------------------------------------

# Loaded into each training process (PYTHONPATH): rank STOP_RANK asks to stop at its STOP_AT_POLL-th
# step boundary, as a Ctrl-C reaching only that process would; the other rank learns it from the poll.
STOP_ON_ONE_RANK = '''
import os
if os.environ.get('RANK') == os.environ.get('STOP_RANK'):
    import timm_stim.training.runs as runs
    _poll, _count = runs.InterruptRequest.poll, [0]
    def _stopping_poll(self, distributed=False, device=None):
        _count[0] += 1
        if _count[0] == int(os.environ['STOP_AT_POLL']):
            self.requested = True
        return _poll(self, distributed, device)
    runs.InterruptRequest.poll = _stopping_poll
'''


def _mid_epoch_args(data, out):
    # 16 training images: two steps per epoch of two ranks' batches of 4, a recovery checkpoint
    # after each; the ranks see different images, so their running averages differ.
    return [*_args(data, out, 4), '--epochs', '2', '--recovery-interval', '1']


@pytest.fixture(scope='module')
def ddp_reference(tmp_path_factory):
    """Data of 16 training images, and the uninterrupted 2-process run on it."""
    root = tmp_path_factory.mktemp('dist_resume')
    _image_folder(root / 'data', per_class=8)
    code, err = _wait(_torchrun('--standalone', '--nproc_per_node', '2', os.path.join(ROOT, 'train_stim.py'),
                                *_mid_epoch_args(root / 'data', root / 'reference')))
    assert code == 0, err[-3000:]
    return root, root / 'reference' / 'run'


def _summary(run_dir):
    with open(run_dir / 'summary.csv') as f:
        return f.read()


def test_mid_epoch_resume_under_torchrun_repeats_the_uninterrupted_run(ddp_reference, tmp_path):
    # Rank 1 is asked to stop after the first step of epoch 1 (its 3rd step): both ranks stop
    # there, one recovery checkpoint records every rank's running averages, and the resumed run's
    # summary.csv and weights are those of the uninterrupted run.
    root, reference = ddp_reference
    (tmp_path / 'hook').mkdir()
    (tmp_path / 'hook' / 'sitecustomize.py').write_text(STOP_ON_ONE_RANK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / 'hook'), ROOT]), STOP_RANK='1',
               STOP_AT_POLL='3')
    script = os.path.join(ROOT, 'train_stim.py')
    code, err = _wait(_torchrun('--standalone', '--nproc_per_node', '2', script,
                                *_mid_epoch_args(root / 'data', tmp_path), env=env))
    assert code != 0, err[-3000:]
    run_dir = tmp_path / 'run'
    assert sorted(os.path.basename(p) for p in glob.glob(str(run_dir / 'recovery-*.pth.tar'))) == \
        ['recovery-1-0.pth.tar'], err[-3000:]
    assert err.count('Training was interrupted. Resume with the same options plus --resume') == 1, err[-3000:]
    assert 'No checkpoint was written yet' not in err
    code, err = _wait(_torchrun('--standalone', '--nproc_per_node', '2', script,
                                *_mid_epoch_args(root / 'data', tmp_path), '--resume',
                                str(run_dir / 'recovery-1-0.pth.tar')))
    assert code == 0, err[-3000:]
    assert _summary(run_dir) == _summary(reference)
    got = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    expected = torch.load(reference / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# Run by torchrun in place of train_stim.py: runs it, and writes to EXIT_DIR/exit-RANK the process's
# exit code, how many step boundaries it polled for a stop request and what the last poll said
# (torchrun itself only reports how its own agent ended).
RECORD_EXIT = '''
import os, runpy, sys
import timm_stim.training.runs as runs
_poll, polls = runs.InterruptRequest.poll, []
def _recording_poll(self, distributed=False, device=None):
    polls.append(_poll(self, distributed, device))
    return polls[-1]
runs.InterruptRequest.poll = _recording_poll
sys.argv = sys.argv[1:]
code = 'exception'
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
    code = 0
except SystemExit as e:
    code = e.code
    raise
finally:
    with open(os.path.join(os.environ['EXIT_DIR'], 'exit-' + os.environ['RANK']), 'w') as f:
        f.write(f'{code} {len(polls)} {polls[-1] if polls else None}')
'''


def test_ctrl_c_under_torchrun_stops_every_rank_at_the_same_step(ddp_reference, tmp_path):
    # A Ctrl-C in a terminal reaches torchrun (its training processes run in their own sessions),
    # which sends each process SIGINT. Every rank stops at the same step boundary and exits 130,
    # with one recovery checkpoint and one line saying how to resume. torchrun itself ends with
    # exit code 1 and a traceback of the signal it got: that is torchrun's own handling.
    root, _ = ddp_reference
    (tmp_path / 'record_exit.py').write_text(RECORD_EXIT)
    env = dict(os.environ, EXIT_DIR=str(tmp_path), PYTHONPATH=ROOT)
    proc = _torchrun('--standalone', '--nproc_per_node', '2', str(tmp_path / 'record_exit.py'),
                     os.path.join(ROOT, 'train_stim.py'), *_mid_epoch_args(root / 'data', tmp_path), '--epochs', '50',
                     env=env, start_new_session=True)
    last = tmp_path / 'run' / 'last.pth.tar'
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    exits = [(tmp_path / f'exit-{rank}').read_text().split() for rank in (0, 1)]
    assert exits[0] == exits[1] and exits[0][0] == '130' and exits[0][2] == 'True', (exits, err[-4000:])
    recovery = glob.glob(str(tmp_path / 'run' / 'recovery-*.pth.tar'))
    assert len(recovery) == 1, err[-4000:]
    lines = [line for line in err.splitlines() if 'Training was interrupted' in line]
    assert len(lines) == 1 and lines[0].endswith(
        f'Training was interrupted. Resume with the same options plus --resume {recovery[0]}'), err[-4000:]
    assert 'No checkpoint was written yet' not in err
