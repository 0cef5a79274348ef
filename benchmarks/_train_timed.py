"""``train_stim.py`` that also records the cumulative training seconds at the end of each epoch.

Writes ``train_times.json`` (list of seconds, excluding validation and checkpointing) into the
run's output folder. Used by accuracy.py and study.py so that accuracy can be plotted against
training time. ``run(argv)`` does the same in the calling process.
"""
import json
import os
import sys
import time
from typing import Any, Dict, List

import _common  # noqa: F401
import timm_stim.training.train as train_mod


def run(argv: List[str]) -> Dict[str, Any]:
    """``timm_stim.training.train.main(argv)`` with ``train_times.json`` written after every epoch; its result."""
    elapsed: List[float] = []
    original = train_mod.train_one_epoch

    def timed_epoch(*args, **kwargs):
        start = time.perf_counter()
        metrics = original(*args, **kwargs)
        elapsed.append((elapsed[-1] if elapsed else 0.0) + time.perf_counter() - start)
        if kwargs.get('output_dir'):
            with open(os.path.join(kwargs['output_dir'], 'train_times.json'), 'w') as f:
                json.dump(elapsed, f)
        return metrics

    train_mod.train_one_epoch = timed_epoch
    try:
        return train_mod.main(argv)
    finally:
        train_mod.train_one_epoch = original


if __name__ == '__main__':
    run(sys.argv[1:])
