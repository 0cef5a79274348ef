"""``python -m timm_stim.training ...``: the same program as ``train_stim.py``."""
from .train import main

if __name__ == '__main__':
    main()
