"""Fashion-MNIST as a timm image folder: a class-balanced training subset and the test set.

The study (``study.py``) trains on a seeded, class-balanced subset of the 60,000 training
images and validates on the 10,000 test images; ``analyze`` evaluates subnetworks on a
class-balanced 2,000-image part of the test set (``test2k``) to keep the loafing analysis
affordable on a CPU. The images come from the Debian package ``dataset-fashion-mnist``
(``timm_stim.datasets.layout_fashion_mnist``), nothing is downloaded. The folder is written in a
temporary sibling and renamed into place, so an interrupted layout leaves nothing half-written.
"""
import gzip
import os
import shutil
import tempfile
from typing import Optional, Tuple

import numpy as np

_MARKER = '.complete'


def read_idx(path: str) -> np.ndarray:
    """An idx file (``train-images-idx3-ubyte``, ...), gzipped or not, as a uint8 array."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(raw_dir: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from a folder of idx files."""
    def find(base: str) -> str:
        for name in (base, base + '.gz'):
            if os.path.isfile(os.path.join(raw_dir, name)):
                return os.path.join(raw_dir, name)
        raise FileNotFoundError(f'{base}[.gz] not found in {raw_dir}')
    return (read_idx(find('train-images-idx3-ubyte')), read_idx(find('train-labels-idx1-ubyte')),
            read_idx(find('t10k-images-idx3-ubyte')), read_idx(find('t10k-labels-idx1-ubyte')))


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` seeded random images of every class, sorted."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def layout_subset(out_dir: str, train_images: int, seed: int = 0, source_dir: Optional[str] = None,
                  analyze_images: int = 2000) -> str:
    """Write ``train/`` (a balanced subset), ``test/`` (all test images) and ``test2k/`` as class folders of PNGs.

    Args:
        out_dir: the folder to create (kept as is when complete).
        train_images: training images, a multiple of 10 (the classes).
        seed: seed of the subset.
        source_dir: folder with the idx files; default: the Debian package's.
        analyze_images: images of the ``test2k`` split (balanced, seed 0).

    Returns:
        ``out_dir``.
    """
    from PIL import Image
    from timm_stim.datasets import FASHION_MNIST_SOURCES
    if os.path.exists(os.path.join(out_dir, _MARKER)):
        return out_dir
    raw = None
    for src in ([source_dir] if source_dir else list(FASHION_MNIST_SOURCES)):
        if src and os.path.isdir(src):
            raw = src
            break
    if raw is None:
        raise FileNotFoundError(f'Fashion-MNIST idx files not found in {source_dir or FASHION_MNIST_SOURCES}: '
                                f'apt-get install dataset-fashion-mnist, or pass the folder holding them.')
    x_train, y_train, x_test, y_test = load_fashion_mnist(raw)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.fmnist-', dir=parent)
    try:
        splits = {
            'train': balanced_subset(y_train, train_images // 10, seed),
            'test': np.arange(len(y_test)),
            'test2k': balanced_subset(y_test, analyze_images // 10, 0),
        }
        for split, idx in splits.items():
            images, labels = (x_train, y_train) if split == 'train' else (x_test, y_test)
            for i in idx:
                folder = os.path.join(tmp, split, str(int(labels[i])))
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(images[i], mode='L').save(os.path.join(folder, f'{i:05d}.png'))
        with open(os.path.join(tmp, _MARKER), 'w') as f:
            f.write(f'fashion-mnist train={train_images} seed={seed} test2k={analyze_images}\n')
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
