"""Measured latency of a model's forward pass: warmed up, synchronised, the median of repeats."""
import statistics
import time
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

__all__ = ['measure_latency', 'check_device']


def check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that this machine has; ``ValueError`` naming it otherwise."""
    try:
        device = torch.device(device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f'device {str(device)!r} is not available on this machine ({first}); choose one it has, '
                         f'e.g. cpu{" or cuda" if torch.cuda.is_available() else ""}.') from None
    return device


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: Sequence[int], batch_size: int = 1, *, device: Any = 'cpu',
                    warmup: int = 5, repeats: int = 20, channels_last: bool = False,
                    amp_autocast: Callable = nullcontext) -> float:
    """Median wall time of one forward pass of a batch, in milliseconds.

    The model runs in eval mode without gradients on a random batch already on ``device``;
    ``warmup`` passes first (they include compilation of a ``torch.compile``'d model), then
    ``repeats`` timed ones, each ended by a device synchronisation.

    Args:
        model: the model, on ``device``.
        input_size: C, H, W of one image.
        batch_size: images per pass.
        device: where the model is.
        warmup: untimed passes first.
        repeats: timed passes (the median is returned).
        channels_last: pass the input in the channels_last memory layout.
        amp_autocast: context manager the passes run in (e.g. ``torch.autocast``).

    Returns:
        Median milliseconds per pass.
    """
    if repeats < 1:
        raise ValueError(f'repeats {repeats}: expected >= 1.')
    device = torch.device(device)
    x = torch.randn(batch_size, *input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    for _ in range(warmup):
        with amp_autocast():
            model(x)
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with amp_autocast():
            model(x)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0
