#!/usr/bin/env python3
"""Drop-in replacement for timm's train.py, with Stimulative Training (ST / ST++).

Every option of timm's train.py works with the same meaning; `--stim-subnets K` (K > 0)
turns stimulative training on, and the other `--stim-*` options configure it:

    python train_stim.py -c hparams/quickstart.yaml
    python train_stim.py --data-dir /imagenet --model resnet50 --stim-subnets 6 --stim-space stpp \
        --stim-norm all --stim-min-scale 0.43

The program itself lives in `timm_stim.training.train` so it can be imported and tested;
`timm_stim.cli` plugs the tools into it (the Hub publisher of --push-to-hub).
"""
from timm_stim.cli import main

if __name__ == '__main__':
    main()
