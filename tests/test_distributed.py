"""torchrun with 2 CPU processes (gloo) trains like one process on the concatenated batch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from timm_stim.training.train import main

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


def _torchrun(*args):
    return subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))


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
