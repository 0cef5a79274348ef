"""Nothing is paid when stimulative training is off (BENCHMARKS.md, section 3).

Runs ``train_stim.py`` in-process on the embedded digits, alternating two configurations for
several rounds: ``--stim-subnets 0`` (plain timm training), and the same run with a
Stimulator attached to the model (``timm_stim.attach``) but never activated. Each round times
the training epoch (``train_one_epoch``); the figure is the ratio of median throughputs.

    python benchmarks/off_overhead.py [--rounds 5] [--batches 30]
"""
import argparse
import statistics
import tempfile
import time

import _common  # noqa: F401
import torch

from _common import describe, machine, write_json
import timm_stim.training.train as train_mod
from timm_stim import attach


def timed_run(attached: bool, args, out_dir: str) -> float:
    """Images per second of one training epoch."""
    timings = []
    original_epoch, original_model = train_mod.train_one_epoch, train_mod.create_train_model

    def create_model(run_args):
        model = original_model(run_args)
        if attached:
            attach(model, space='uniform')
        return model

    def epoch(epoch_idx, task, loader, optimizer, run_args, *a, **k):
        start = time.perf_counter()
        metrics = original_epoch(epoch_idx, task, loader, optimizer, run_args, *a, **k)
        # Images actually trained on: --train-batches-per-epoch caps the loader, never extends it.
        timings.append((train_mod.batches_per_epoch(loader, run_args) * run_args.batch_size,
                        time.perf_counter() - start))
        return metrics

    train_mod.train_one_epoch, train_mod.create_train_model = epoch, create_model
    try:
        train_mod.main([
            '--dataset', 'embedded/digits', '--model', args.model, '--num-classes', '10', '--device', args.device,
            '--input-size', '3', str(args.size), str(args.size), '-b', str(args.batch_size), '--workers', '0',
            '--epochs', '1', '--train-batches-per-epoch', str(args.batches), '--val-split', '',
            '--output', out_dir, '--experiment', 'attached' if attached else 'off', '--log-interval', '1000',
            '--stim-subnets', '0', '--checkpoint-hist', '1'])
    finally:
        train_mod.train_one_epoch, train_mod.create_train_model = original_epoch, original_model
    images, seconds = timings[0]
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='resnet18')
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    off, attached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        timed_run(False, args, tmp)  # warm-up: dataset materialization, allocator, caches
        for r in range(args.rounds):
            # Alternate the order each round so slow drifts of a noisy machine hit both alike.
            for kind in ((False, True) if r % 2 == 0 else (True, False)):
                (attached if kind else off).append(timed_run(kind, args, tmp))
            print(f'round {r}: off {off[-1]:.1f} img/s, attached {attached[-1]:.1f} img/s', flush=True)
    ratio = statistics.median(attached) / statistics.median(off)
    info = machine(torch.device(args.device))
    print(f'median: off {statistics.median(off):.1f} img/s, attached-but-inactive {statistics.median(attached):.1f} '
          f'img/s, ratio {ratio:.4f} on {describe(info)}')
    out = args.out or f'{_common.ROOT}/benchmarks/results/off_overhead_{args.device}.json'
    write_json(out, {'machine': info, 'args': vars(args), 'off_img_s': off, 'attached_img_s': attached,
                     'ratio_attached_over_off': ratio})


if __name__ == '__main__':
    main()
