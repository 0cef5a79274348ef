"""Score a study run's final network on a whole split, and keep what re-scores it (``study.py --score-split``).

``score_run`` loads the run's ``last.pth.tar`` (the network after its last epoch), evaluates it
as training's validation does (eval mode, the run's data config, timm's loader with the
prefetcher) on every image of ``split`` in the dataset's order, and writes into ``raw_folder``
the run's small files (``summary.csv``, ``train_times.json``, ``args.yaml``, ``train.log``),
``meta.json`` (commit, versions, machine, date) and, last, ``logits_<split>.npz`` (``logits``,
float32, images x classes, and ``labels``), so a folder with that file is a complete record.

    python benchmarks/_score.py RUN_FOLDER RUN_LOG SPLIT RAW_FOLDER [--device cpu]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import ROOT, cpu_model

RUN_FILES = ('summary.csv', 'train_times.json', 'args.yaml')


def logits_file(raw_folder: str, split: str) -> str:
    """Where ``score_run`` writes a run's logits on ``split`` (its presence marks the run complete)."""
    return os.path.join(raw_folder, f'logits_{split}.npz')


def top1_of(path: str) -> float:
    """Top-1 (%) re-scored from a ``logits_<split>.npz``: largest logit (first on a tie) equals the label."""
    with np.load(path) as f:
        logits, labels = f['logits'], f['labels']
    return float(100.0 * np.mean(np.argmax(logits, axis=1) == labels))


def software_commit() -> Dict[str, object]:
    """The repository's commit and whether its tracked files differ from it (None outside a git checkout)."""
    def git(*argv: str) -> Optional[str]:
        try:
            return subprocess.run(['git', '-C', ROOT, *argv], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    status = git('status', '--porcelain', '--untracked-files=no')
    return {'commit': git('rev-parse', 'HEAD'), 'dirty': None if status is None else bool(status)}


def score_run(run_folder: str, run_log: str, split: str, raw_folder: str, device: str = 'cpu',
              batch_size: int = 500) -> float:
    """Evaluate a run's final network on every image of ``split``; write its raw record; return top-1 (%).

    Args:
        run_folder: the train_stim.py output folder (``last.pth.tar``, ``args.yaml``, ...).
        run_log: the run's console log (copied as ``train.log``; ``study.py`` reads FLOPs from it).
        split: the split to score (the run's dataset and data folder, from ``args.yaml``).
        raw_folder: where the record goes.
        device: where to evaluate.
        batch_size: images per forward pass (does not change the logits beyond float rounding).
    """
    import timm
    import torch
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm_stim.tools.checkpoints import load_model
    from timm_stim.training.data import resolve_dataset, with_image_mode
    loaded = load_model(os.path.join(run_folder, 'last.pth.tar'))
    train_args = loaded.train_args
    config = resolve_data_config(loaded.data_config, model=loaded.model)
    dataset_name, root = resolve_dataset(train_args.get('dataset') or '', train_args.get('data_dir'))
    img_mode = 'RGB' if config['input_size'][0] == 3 else 'L'
    dataset = create_dataset(dataset_name, root=root, split=split, is_training=False, batch_size=batch_size,
                             input_img_mode=img_mode)
    dataset = with_image_mode(dataset, dataset_name, img_mode)
    dev = torch.device(device)
    # As training's validation loader (timm_stim/training/train.py): the prefetcher normalizes.
    loader = create_loader(dataset, input_size=config['input_size'], batch_size=batch_size, is_training=False,
                           interpolation=config['interpolation'], crop_pct=config['crop_pct'], mean=config['mean'],
                           std=config['std'], num_workers=0, device=dev, use_prefetcher=True)
    model = loaded.model.to(dev).eval()
    logits: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    with torch.no_grad():
        for images, targets in loader:
            logits.append(model(images).float().cpu().numpy())
            labels.append(targets.cpu().numpy())
    os.makedirs(raw_folder, exist_ok=True)
    for name in RUN_FILES:
        shutil.copyfile(os.path.join(run_folder, name), os.path.join(raw_folder, name))
    shutil.copyfile(run_log, os.path.join(raw_folder, 'train.log'))
    meta = {**software_commit(), 'torch': torch.__version__, 'timm': timm.__version__, 'device': device,
            'machine': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else cpu_model(),
            'python': sys.version.split()[0], 'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
            'split': split, 'images': int(sum(len(x) for x in labels)), 'checkpoint': 'last.pth.tar'}
    with open(os.path.join(raw_folder, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    target = logits_file(raw_folder, split)
    partial = target[:-len('.npz')] + '.partial.npz'
    np.savez_compressed(partial, logits=np.concatenate(logits).astype(np.float32),
                        labels=np.concatenate(labels).astype(np.int64))
    os.replace(partial, target)  # written last and whole: its presence marks the record complete
    return top1_of(target)


def main(argv: Optional[List[str]] = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run_folder')
    parser.add_argument('run_log')
    parser.add_argument('split')
    parser.add_argument('raw_folder')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    top1 = score_run(args.run_folder, args.run_log, args.split, args.raw_folder, args.device)
    print(f'{args.run_folder}: top-1 {top1:.2f} % on {args.split!r}')
    return top1


if __name__ == '__main__':
    main()
