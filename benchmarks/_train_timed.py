"""``train_stim.py`` that also records the cumulative training seconds at the end of each epoch.

Writes ``train_times.json`` (list of seconds, excluding validation and checkpointing) into the
run's output folder. Used by accuracy.py so that accuracy can be plotted against training time.
"""
import json
import os
import sys
import time

import _common  # noqa: F401
import timm_stim.train as train_mod


def main(argv):
    elapsed, output = [], {}
    original = train_mod.train_one_epoch

    def timed_epoch(*args, **kwargs):
        start = time.perf_counter()
        metrics = original(*args, **kwargs)
        elapsed.append((elapsed[-1] if elapsed else 0.0) + time.perf_counter() - start)
        if kwargs.get('output_dir'):
            output['dir'] = kwargs['output_dir']
            with open(os.path.join(kwargs['output_dir'], 'train_times.json'), 'w') as f:
                json.dump(elapsed, f)
        return metrics

    train_mod.train_one_epoch = timed_epoch
    train_mod.main(argv)


if __name__ == '__main__':
    main(sys.argv[1:])
