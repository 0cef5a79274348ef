"""BatchNorm re-estimation of the full network (official: 2,000 images before each validation)."""
from contextlib import nullcontext

import torch
import torch.nn as nn

__all__ = ['recalibrate_bn']


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, num_images: int, device: torch.device, amp_autocast=nullcontext,
                   channels_last: bool = False) -> int:
    """Re-estimate every BatchNorm's running statistics of the full network on ``num_images``.

    Running statistics are reset and replaced by the exact average of the batch statistics
    (cumulative moving average, ``momentum=None``), as the official code does.

    Returns:
        Number of images used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or num_images <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        for input, _ in loader:
            input = input.to(device)
            if channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                model(input)
            seen += input.shape[0]
            if seen >= num_images:
                break
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return seen
