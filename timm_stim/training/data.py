"""The training program's data: the datasets of ``timm_stim.datasets`` (their home, shared with the tools).

Kept so that ``from timm_stim.training.data import ...`` and ``python -m timm_stim.training.data`` keep working.
"""
import sys

from ..datasets import (EMBEDDED_DATASETS, FASHION_MNIST_SOURCES, ImageModeDataset, cache_root, is_embedded,
                        layout_fashion_mnist, main, materialize_embedded, resolve_dataset, with_image_mode)

__all__ = ['EMBEDDED_DATASETS', 'is_embedded', 'cache_root', 'materialize_embedded', 'resolve_dataset',
           'layout_fashion_mnist', 'FASHION_MNIST_SOURCES', 'ImageModeDataset', 'with_image_mode']

if __name__ == '__main__':
    sys.exit(main())
