"""torchrun with 2 CPU processes (gloo) trains like one process on the concatenated batch."""
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from timm_stim.train import main

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


def test_two_process_run_equals_single_process_on_concatenated_batch(tmp_path):
    data = tmp_path / 'data'
    _image_folder(data)
    main(_args(data, tmp_path / 'single', 8))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         os.path.join(ROOT, 'train_stim.py'), *_args(data, tmp_path / 'ddp', 4)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'distributed mode with 2 processes' in proc.stderr
    single = torch.load(tmp_path / 'single' / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    ddp = torch.load(tmp_path / 'ddp' / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert single['epoch'] == ddp['epoch'] == 2
    for key, value in single['state_dict'].items():
        torch.testing.assert_close(ddp['state_dict'][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # And training moved the weights: the comparison is not between two untouched models.
    import timm
    from timm import utils
    utils.random_seed(1, 0)
    fresh = timm.create_model('resnet18', num_classes=2, norm_layer='groupnorm').state_dict()
    assert not torch.allclose(fresh['fc.weight'], single['state_dict']['fc.weight'])
    assert not torch.allclose(fresh['layer1.1.conv1.weight'], single['state_dict']['layer1.1.conv1.weight'])
