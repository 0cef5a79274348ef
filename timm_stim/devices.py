"""Device rules shared by training and the tools."""
import logging
import time
from typing import Optional

import torch

__all__ = ['resolve_amp_dtype', 'synchronized_time']


def resolve_amp_dtype(amp_dtype: str, device: torch.device, logger: Optional[logging.Logger] = None) -> torch.dtype:
    """The autocast dtype of ``--amp-dtype`` on ``device``.

    ``bfloat16`` when asked for, and on the CPU always: float16 autocast is a CUDA feature, so
    ``--amp`` on the CPU (training, analyze) runs in bfloat16 instead of failing.

    Args:
        amp_dtype: ``--amp-dtype``, ``'float16'`` or ``'bfloat16'`` (checked by the caller).
        device: where the model runs.
        logger: where to say so when float16 is replaced by bfloat16 (None: say nothing).

    Returns:
        ``torch.float16`` or ``torch.bfloat16``.
    """
    dtype = torch.bfloat16 if amp_dtype == 'bfloat16' else torch.float16
    if device.type == 'cpu' and dtype == torch.float16:
        dtype = torch.bfloat16
        if logger is not None:
            logger.info('AMP on CPU uses bfloat16 (float16 autocast is a CUDA feature).')
    return dtype


def synchronized_time(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished (for timing passes)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type != 'cpu' and hasattr(torch, 'accelerator'):
        torch.accelerator.synchronize(device)
    return time.perf_counter()
