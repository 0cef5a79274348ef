"""Randomness of a training run as a pure function of (seed, rank, epoch, position), for exact resume.

timm seeds once per process and lets data-loader workers carry their random state from epoch
to epoch (persistent workers). A run resumed from a checkpoint starts fresh workers, so its
augmentations differ from those of the uninterrupted run. The ``per-sample`` scheme here
makes every random draw depend only on where it happens:

* each training sample's augmentation is drawn right after the Python, NumPy and torch
  generators are seeded from (seed, rank, epoch, position of the sample in the epoch's order),
  whatever worker loads it and however many workers there are; a batch's collate (e.g. timm's
  ``FastCollateMixup``) then draws from a state that is a function of its last sample;
* the epoch's order comes from a generator seeded from (seed, epoch), never from the global one;
* the training loop reseeds the main process before each batch (mixup, drop-path, dropout) and
  the prefetcher's random erasing is seeded per batch;
* a resumed epoch can skip its first batches without loading them.

The ``timm`` scheme leaves all of this off, so a run draws exactly what timm's train.py draws.
"""
import hashlib
import logging
import random
from typing import Any, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, IterableDataset, RandomSampler

from ..timm_options import SEED_SCHEMES  # the choices of --seed-scheme

__all__ = [
    'SEED_SCHEMES', 'derive_seed', 'seed_all', 'SampleKey', 'PerSampleSeededDataset', 'EpochOrderSampler',
    'PerBatchSeeded', 'install_per_sample_seeding', 'per_sample_seeding_unsupported',
]

_logger = logging.getLogger(__name__)



def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (ints and strings), stable across processes and runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') >> 1


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (timm's augmentations draw from all three).

    Not ``timm.utils.random_seed``: the derived seeds are 64-bit, which NumPy's ``seed`` refuses;
    torch and Python keep every bit, NumPy takes the low 32.
    """
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


class SampleKey(NamedTuple):
    """The index a ``EpochOrderSampler`` yields: the dataset index and where it falls in the epoch."""
    epoch: int
    position: int
    index: int


class PerSampleSeededDataset(Dataset):
    """Wraps a map-style dataset: a ``SampleKey`` seeds the generators, then loads its sample.

    Plain integer indices load without seeding (e.g. analysis code reading the dataset). Every
    other attribute (``transform`` set by timm's ``create_loader``, ``reader``, ...) is the
    wrapped dataset's.
    """

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0):
        self.__dict__['dataset'] = dataset
        self.__dict__['seed'] = int(seed)
        self.__dict__['rank'] = int(rank)

    def __getitem__(self, key):
        if isinstance(key, SampleKey):
            seed_all(derive_seed('sample', self.seed, self.rank, key.epoch, key.position))
            key = key.index
        return self.dataset[key]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.__dict__['dataset'], name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self.dataset, name, value)

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state)


class EpochOrderSampler(torch.utils.data.Sampler):
    """Wraps a training sampler: yields ``SampleKey`` for each index, the order seeded per epoch.

    A ``RandomSampler`` draws its permutation from a generator seeded from (seed, epoch) instead
    of the global one; samplers with ``set_epoch`` (distributed, repeated augmentation) get the
    epoch. ``skip_next(n)`` drops the first ``n`` samples of the next epoch without loading
    them (a resumed epoch continuing after its last saved batch). Positions count on across
    repeated iterations within one epoch (timm's scheduled sampler cycles its sampler).
    """

    def __init__(self, sampler, seed: int, epoch: int = 0):
        self.sampler = sampler
        self.seed = int(seed)
        self.epoch = int(epoch)
        self._position = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._position = 0
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def skip_next(self, num_samples: int) -> None:
        self._skip = int(num_samples)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[SampleKey]:
        if isinstance(self.sampler, RandomSampler):
            self.sampler.generator = torch.Generator().manual_seed(derive_seed('order', self.seed, self.epoch))
        skip, self._skip = self._skip, 0
        for index in self.sampler:
            position = self._position
            self._position += 1
            if position < skip:
                continue
            yield SampleKey(self.epoch, position, int(index))


class PerBatchSeeded:
    """Calls ``fn`` (e.g. the prefetcher's random erasing) with the generators seeded per batch."""

    def __init__(self, fn, seed: int, rank: int = 0, tag: str = 'batch'):
        self.fn = fn
        self.seed = int(seed)
        self.rank = int(rank)
        self.tag = tag
        self.epoch = 0
        self.batch = 0

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = int(epoch), int(batch)

    def __call__(self, *args, **kwargs):
        seed_all(derive_seed(self.tag, self.seed, self.rank, self.epoch, self.batch))
        self.batch += 1
        return self.fn(*args, **kwargs)


def _torch_loader(loader):
    # timm's PrefetchLoader wraps the torch DataLoader in ``.loader``.
    return getattr(loader, 'loader', loader)


def per_sample_seeding_unsupported(loader) -> Optional[str]:
    """Why the per-sample scheme cannot be installed on this training loader (None when it can)."""
    inner = _torch_loader(loader)
    if isinstance(inner.dataset, IterableDataset):
        return 'the dataset is iterable (its samples have no index to seed from)'
    batch_sampler = getattr(inner, 'batch_sampler', None)
    if batch_sampler is None or not hasattr(batch_sampler, 'sampler'):
        return f'its batch sampler ({type(batch_sampler).__name__}) has no sampler to wrap'
    if not isinstance(batch_sampler, BatchSampler) and type(batch_sampler).__name__ != 'ScheduledBatchSampler':
        return f'its batch sampler is a {type(batch_sampler).__name__} (e.g. --use-multi-epochs-loader)'
    if not isinstance(inner.dataset, PerSampleSeededDataset) and not isinstance(
            getattr(inner.dataset, 'dataset', None), PerSampleSeededDataset):
        return 'the dataset was not wrapped in PerSampleSeededDataset before the loader was created'
    return None


def install_per_sample_seeding(loader, seed: int, rank: int = 0) -> EpochOrderSampler:
    """Wrap a timm training loader's sampler (and prefetcher random erasing) for per-sample seeding.

    The loader's dataset must be a ``PerSampleSeededDataset`` (wrap it before ``create_loader``;
    timm's scheduled-size dataset may wrap it in turn). Call ``per_sample_seeding_unsupported``
    first.

    Returns:
        The ``EpochOrderSampler``: call its ``set_epoch`` before each epoch (``skip_next`` to
        resume inside one).
    """
    reason = per_sample_seeding_unsupported(loader)
    if reason is not None:
        raise ValueError(f'per-sample seeding cannot be installed: {reason}.')
    batch_sampler = _torch_loader(loader).batch_sampler
    sampler = EpochOrderSampler(batch_sampler.sampler, seed)
    batch_sampler.sampler = sampler  # a plain attribute of torch's BatchSampler and timm's ScheduledBatchSampler
    if getattr(loader, 'random_erasing', None) is not None:
        loader.random_erasing = PerBatchSeeded(loader.random_erasing, seed, rank, tag='erase')
    return sampler
