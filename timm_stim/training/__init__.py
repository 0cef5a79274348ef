"""The training program: timm's ``train.py`` flow with stimulative training (``train_stim.py``).

Imports the library core (``timm_stim``); the core never imports this package.
"""
