"""Exceptions raised by timm_stim."""

__all__ = ['UnsupportedModelError']


class UnsupportedModelError(ValueError):
    """The model has no adapter, or its structure is not what its family's adapter expects.

    A ``ValueError`` so that callers validating user input can catch both alike.
    """
