"""Dataset resolution shared by training and the tools, and data that needs no download.

``resolve_dataset`` turns ``--dataset`` / ``--data-dir`` into what ``timm.data.create_dataset``
takes, for ``train_stim.py`` and ``timm-stim analyze`` alike; ``with_image_mode`` converts the
images of datasets that ignore ``input_img_mode``.

``embedded/digits`` is scikit-learn's digits (1,797 8x8 grey images, 10 classes, shipped with
scikit-learn), materialized once as a timm image folder with ``train/`` and ``validation/``
splits in a cache directory. ``python -m timm_stim.datasets fashion-mnist DIR`` lays out the
Debian package ``dataset-fashion-mnist`` so that ``--dataset torch/fashion_mnist --data-dir DIR``
works offline.
"""
import argparse
import gzip
import os
import shlex
import shutil
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

from .errors import InputError, command_prog, run_command

__all__ = ['EMBEDDED_DATASETS', 'is_embedded', 'cache_root', 'materialize_embedded', 'resolve_dataset',
           'layout_fashion_mnist', 'FASHION_MNIST_SOURCES', 'ImageModeDataset', 'with_image_mode']

EMBEDDED_DATASETS = ('digits',)
_PREFIX = 'embedded/'
_FORMAT = 'timm_stim digits image folder v1'
_MARKER = '.complete'
# Digits are 8x8; stored at 32x32 (nearest, so every stored pixel is an original value) so
# timm's crops and resizes have room to work, and small residual networks see >= 1 px maps.
DIGITS_SIZE = 32
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

FASHION_MNIST_SOURCES = ('/usr/share/datasets/fashion-mnist',)
_FASHION_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                  't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def is_embedded(name: str) -> bool:
    """Whether ``--dataset`` names an embedded dataset (``embedded/<name>``)."""
    return bool(name) and name.lower().startswith(_PREFIX)


def cache_root(cache_dir: Optional[str] = None) -> str:
    """Folder holding materialized datasets: ``$TIMM_STIM_CACHE/datasets`` or ``~/.cache/timm_stim/datasets``."""
    if cache_dir:
        return cache_dir
    base = os.environ.get('TIMM_STIM_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'timm_stim')
    return os.path.join(base, 'datasets')


def _write_digits(folder: str) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().clip(0, 255).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(idx, test_size=DIGITS_VAL_FRACTION, random_state=DIGITS_SPLIT_SEED,
                                          stratify=digits.target)
    for split, split_idx in (('train', train_idx), ('validation', val_idx)):
        for i in sorted(split_idx):
            class_dir = os.path.join(folder, split, str(digits.target[i]))
            os.makedirs(class_dir, exist_ok=True)
            img = Image.fromarray(images[i], mode='L').resize((DIGITS_SIZE, DIGITS_SIZE), Image.NEAREST)
            img.save(os.path.join(class_dir, f'{i:04d}.png'))
    with open(os.path.join(folder, _MARKER), 'w') as f:
        f.write(_FORMAT + '\n')


def _is_complete(folder: str) -> bool:
    try:
        with open(os.path.join(folder, _MARKER)) as f:
            return f.read().strip() == _FORMAT
    except OSError:
        return False


def materialize_embedded(name: str, cache_dir: Optional[str] = None) -> str:
    """Write the embedded dataset as an image folder once and return its root.

    The folder is built in a temporary sibling and renamed into place, so concurrent callers
    (e.g. distributed ranks) never see a half-written dataset.

    Args:
        name: ``digits`` or ``embedded/digits``.
        cache_dir: where datasets are kept (default: ``cache_root()``).

    Returns:
        The folder holding ``train/`` and ``validation/`` class folders.
    """
    short = name[len(_PREFIX):] if is_embedded(name) else name
    if short not in EMBEDDED_DATASETS:
        raise ValueError(f'Unknown embedded dataset {name!r}: expected one of '
                         f'{", ".join(_PREFIX + n for n in EMBEDDED_DATASETS)}.')
    root = cache_root(cache_dir)
    folder = os.path.join(root, short)
    if _is_complete(folder):
        return folder
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{short}-', dir=root)
    try:
        _write_digits(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _is_complete(folder):  # a stale, incomplete folder: replace it
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_dataset(dataset: str, data_dir: Optional[str]) -> Tuple[str, Optional[str]]:
    """Map ``--dataset`` / ``--data-dir`` to ``timm.data.create_dataset(name, root=...)`` arguments.

    ``embedded/<name>`` is materialized and read as a timm image folder; other datasets pass
    through unchanged after checking that what they need exists.

    Returns:
        (dataset name for timm, root folder).

    Raises:
        ValueError / FileNotFoundError: naming the value and the fix.
    """
    dataset = dataset or ''
    if is_embedded(dataset):
        return '', materialize_embedded(dataset)
    prefix = dataset.partition('/')[0].lower() if '/' in dataset else ''
    if not dataset and not data_dir:
        raise ValueError('No data: pass --data-dir DIR (an image folder with train/ and validation/), '
                         'or --dataset embedded/digits for the built-in quick-start data.')
    if data_dir and not os.path.isdir(data_dir):
        hint = ''
        if dataset.lower() == 'torch/fashion_mnist':
            hint = ' Create it with: ' + shlex.join([sys.executable, '-m', 'timm_stim.datasets', 'fashion-mnist', data_dir])
        raise FileNotFoundError(f'--data-dir {data_dir!r} does not exist.{hint}')
    if prefix == 'torch' and not data_dir:
        raise ValueError(f'--dataset {dataset} needs --data-dir DIR (torchvision datasets are read from a root folder).')
    return dataset, data_dir


class ImageModeDataset:
    """A torchvision dataset whose PIL images are converted to ``mode`` before the transform.

    timm converts images to ``--input-img-mode`` (RGB for 3-channel models) in its own readers
    (folders, TFDS, WDS, HF) but hands ``torch/`` datasets' images to the transform as they
    are, so Fashion-MNIST's grey images reach a 3-channel model's normalization as 1 channel.
    This wrapper applies the same conversion: ``timm.data.create_loader`` sets ``transform``
    on it as on any dataset, and every other attribute is the wrapped dataset's.

    Args:
        dataset: a dataset that applies its ``transform`` attribute to a PIL image.
        mode: PIL mode, e.g. ``'RGB'`` (grey replicated to 3 channels) or ``'L'``.
    """

    def __init__(self, dataset, mode: str):
        self.dataset = dataset
        self.mode = mode
        self.transform = getattr(dataset, 'transform', None)
        dataset.transform = self._convert_then_transform

    def _convert_then_transform(self, img):
        if getattr(img, 'mode', self.mode) != self.mode:
            img = img.convert(self.mode)
        return self.transform(img) if self.transform is not None else img

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def __getattr__(self, name):
        if name == 'dataset':  # not set yet (e.g. during unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.dataset, name)


def with_image_mode(dataset, dataset_name: str, mode: Optional[str]):
    """``dataset`` wrapped in ``ImageModeDataset`` where timm leaves image modes alone (``torch/`` datasets)."""
    if mode and dataset is not None and dataset_name.lower().startswith('torch/'):
        return ImageModeDataset(dataset, mode)
    return dataset


def _find_fashion_source(source_dirs: Sequence[str]) -> Tuple[str, List[str]]:
    for src in source_dirs:
        found = []
        for base in _FASHION_FILES:
            for candidate in (base, base + '.gz'):
                if os.path.isfile(os.path.join(src, candidate)):
                    found.append(os.path.join(src, candidate))
                    break
        if len(found) == len(_FASHION_FILES):
            return src, found
    raise FileNotFoundError(
        f'Fashion-MNIST files not found in {", ".join(source_dirs)}. Install them with '
        f'`apt-get install dataset-fashion-mnist` (Debian package) or pass --source DIR holding '
        f'{", ".join(f + "[.gz]" for f in _FASHION_FILES)}.')


def layout_fashion_mnist(out_dir: str, source_dir: Optional[str] = None) -> str:
    """Place the Fashion-MNIST idx files where ``torchvision.datasets.FashionMNIST(root=out_dir)`` reads them.

    Args:
        out_dir: the folder to pass as ``--data-dir`` with ``--dataset torch/fashion_mnist``.
        source_dir: folder with the idx files (gzipped or not); default: the Debian package's.

    Returns:
        ``out_dir``.
    """
    _, files = _find_fashion_source([source_dir] if source_dir else FASHION_MNIST_SOURCES)
    raw = os.path.join(out_dir, 'FashionMNIST', 'raw')
    os.makedirs(raw, exist_ok=True)
    for path in files:
        name = os.path.basename(path)
        target = os.path.join(raw, name[:-3] if name.endswith('.gz') else name)
        if os.path.exists(target):
            continue
        tmp = target + '.tmp'
        opener = gzip.open if name.endswith('.gz') else open
        with opener(path, 'rb') as src, open(tmp, 'wb') as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    return out_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``timm-stim data``: 0 done, 2 bad input (a missing source, a folder that cannot be written)."""
    parser = argparse.ArgumentParser(prog=command_prog('data'), description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    fm = sub.add_parser('fashion-mnist', help='lay out Fashion-MNIST for --dataset torch/fashion_mnist')
    fm.add_argument('dir', help='output folder, then pass it as --data-dir')
    fm.add_argument('--source', default=None, help='folder with the idx files (default: the Debian package)')
    dg = sub.add_parser('digits', help='materialize the embedded digits image folder and print it')
    dg.add_argument('dir', nargs='?', default=None, help='cache folder (default: $TIMM_STIM_CACHE or ~/.cache)')
    args = parser.parse_args(argv)

    def run() -> int:
        try:
            if args.command == 'fashion-mnist':
                out = layout_fashion_mnist(args.dir, args.source)
                print(f'Fashion-MNIST ready: --dataset torch/fashion_mnist --data-dir {out}')
            else:
                print(materialize_embedded('digits', args.dir))
        except (OSError, ValueError) as e:  # a missing source, an unwritable folder: the user's to fix
            raise InputError(str(e)) from None
        return 0
    return run_command(run)


if __name__ == '__main__':
    sys.exit(main())
