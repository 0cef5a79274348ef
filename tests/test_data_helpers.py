"""Embedded digits and the Fashion-MNIST layout, read back through timm's own dataset factory."""
import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from timm.data import create_dataset

from timm_stim.datasets import layout_fashion_mnist, materialize_embedded, resolve_dataset


def test_digits_materialized_once_with_stratified_splits(tmp_path, monkeypatch):
    monkeypatch.setenv('TIMM_STIM_CACHE', str(tmp_path))
    name, root = resolve_dataset('embedded/digits', None)
    assert name == '' and root.startswith(str(tmp_path))
    train = create_dataset('', root=root, split='train')
    val = create_dataset('', root=root, split='validation')
    assert (len(train), len(val)) == (1437, 360)
    assert sorted(os.listdir(os.path.join(root, 'train'))) == [str(i) for i in range(10)]
    img, label = train[0]
    assert img.size == (32, 32) and 0 <= label < 10
    marker = os.path.join(root, '.complete')
    mtime = os.path.getmtime(marker)
    assert materialize_embedded('digits') == root and os.path.getmtime(marker) == mtime


@pytest.mark.parametrize('dataset,data_dir,match', [
    ('embedded/mnist', None, "Unknown embedded dataset 'embedded/mnist'"),
    ('', None, 'No data: pass --data-dir'),
    ('', '/no/such/dir', "'/no/such/dir' does not exist"),
    ('torch/fashion_mnist', '/no/such/fm', 'python -m timm_stim.datasets fashion-mnist /no/such/fm'),
    ('torch/cifar10', None, 'needs --data-dir'),
])
def test_resolve_dataset_errors(dataset, data_dir, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        resolve_dataset(dataset, data_dir)


def _idx_images(n):
    data = (np.arange(n * 28 * 28) % 251).astype(np.uint8).tobytes()
    return struct.pack('>IIII', 2051, n, 28, 28) + data


def _idx_labels(labels):
    return struct.pack('>II', 2049, len(labels)) + bytes(labels)


def _fake_fashion_source(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    for prefix, labels in (('train', [3, 1, 4, 1, 5]), ('t10k', [9, 2])):
        with gzip.open(src / f'{prefix}-images-idx3-ubyte.gz', 'wb') as f:
            f.write(_idx_images(len(labels)))
        (src / f'{prefix}-labels-idx1-ubyte').write_bytes(_idx_labels(labels))  # one uncompressed
    return src


def test_fashion_mnist_layout_reads_through_timm(tmp_path):
    out = layout_fashion_mnist(str(tmp_path / 'fm'), str(_fake_fashion_source(tmp_path)))
    train = create_dataset('torch/fashion_mnist', root=out, split='train')
    val = create_dataset('torch/fashion_mnist', root=out, split='validation')
    assert (len(train), len(val)) == (5, 2)
    assert train[2][1] == 4 and val[0][1] == 9


@pytest.mark.slow
def test_fashion_mnist_missing_package_message(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'timm_stim.datasets', 'fashion-mnist', str(tmp_path / 'out'),
                           '--source', str(tmp_path / 'empty')], capture_output=True, text=True)
    assert proc.returncode == 2
    assert 'apt-get install dataset-fashion-mnist' in proc.stderr and 'Traceback' not in proc.stderr


def test_grey_torch_dataset_reaches_a_3_channel_model_as_replicated_rgb(tmp_path):
    # timm converts --input-img-mode only in its own readers; train_stim.py wraps torch/ datasets.
    import torch
    from timm.data import create_loader
    from timm_stim.datasets import with_image_mode
    out = layout_fashion_mnist(str(tmp_path / 'fm'), str(_fake_fashion_source(tmp_path)))
    dataset = with_image_mode(create_dataset('torch/fashion_mnist', root=out, split='train'),
                              'torch/fashion_mnist', 'RGB')
    loader = create_loader(dataset, input_size=(3, 28, 28), batch_size=5, is_training=False, use_prefetcher=False,
                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, num_workers=0)
    images, labels = next(iter(loader))
    assert images.shape == (5, 3, 28, 28) and labels.tolist() == [3, 1, 4, 1, 5]
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    raw = np.frombuffer(_idx_images(5)[16:], dtype=np.uint8).reshape(5, 28, 28)
    torch.testing.assert_close(images[:, 0], (torch.from_numpy(raw.copy()).float() / 255 - 0.5) / 0.5)
    # Image folders and other datasets are left to timm.
    assert with_image_mode(dataset, 'imagefolder', 'RGB') is dataset
