"""Tools for trained checkpoints: ``analyze``, ``export`` and ``push`` (Hugging Face Hub).

Imports the library core (``timm_stim``); the core never imports this package.
"""
