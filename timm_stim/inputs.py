"""Subnetwork inputs: the one rule for their sizes, drawing them, and making them.

A subnetwork input's shorter side ``s`` is drawn uniformly from ``[floor(S * min_scale),
floor(S * max_scale)]`` (``S`` the shorter side of the training input); the other side keeps
the aspect ratio; both are then rounded down to the adapter's size multiple (e.g. a ViT's
patch). ``short_side_range`` and ``size_for_short_side`` are that rule; ``sample_input_size``
(the task), ``input_size_choices`` (the compute budget), ``smallest_input_side`` (the check
before training) and the saved configuration all use them.
"""
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['short_side_range', 'size_for_short_side', 'sample_input_size', 'input_size_choices', 'round_to_multiple',
           'subnet_size_multiple', 'smallest_input_side', 'strided_convs_on_single_pixel_maps',
           'cpu_bfloat16_conv_hazard', 'resize_batch', 'renormalize_batch']


def short_side_range(short: int, min_scale: float, max_scale: float) -> Tuple[int, int]:
    """The smallest and largest shorter side of a subnetwork input, for a training shorter side ``short``."""
    low = max(1, math.floor(short * min_scale))
    return low, max(low, math.floor(short * max_scale))


def size_for_short_side(height: int, width: int, side: int, multiple: int = 1) -> Tuple[int, int]:
    """(height, width) with shorter side ``side`` and the aspect ratio of ``height x width``, rounded to ``multiple``."""
    if height == width:
        size = (side, side)
    else:
        ratio = side / min(height, width)
        size = (side, max(1, round(width * ratio))) if height <= width else (max(1, round(height * ratio)), side)
    return round_to_multiple(size, multiple)


def sample_input_size(
        height: int,
        width: int,
        min_scale: float,
        max_scale: float,
        generator: Optional[torch.Generator] = None,
        multiple: int = 1,
) -> Tuple[int, int]:
    """Draw a subnetwork input size (see the module's rule); full size when both scales are 1.

    Returns:
        (height, width).
    """
    if min_scale == 1.0 and max_scale == 1.0:
        return height, width
    low, high = short_side_range(min(height, width), min_scale, max_scale)
    side = int(torch.randint(low, high + 1, (1,), generator=generator).item())
    return size_for_short_side(height, width, side, multiple)


def input_size_choices(height: int, width: int, min_scale: float, max_scale: float,
                       multiple: int = 1) -> List[Tuple[int, int]]:
    """Every subnetwork input size ``sample_input_size`` can draw, each equally likely.

    Sizes may repeat after rounding (they stay, so each entry has the same probability).
    """
    if min_scale == 1.0 and max_scale == 1.0:
        return [(height, width)]
    low, high = short_side_range(min(height, width), min_scale, max_scale)
    return [size_for_short_side(height, width, side, multiple) for side in range(low, high + 1)]


def subnet_size_multiple(stimulator, grid: int = 1) -> int:
    """What subnetwork input sides are rounded down to: the model's own multiple (e.g. a ViT's patch)
    and the grid asked for (``StimConfig.size_multiple``), both at once (their least common multiple)."""
    return math.lcm(int(stimulator.adapter.input_size_multiple(stimulator.model)), int(grid))


def round_to_multiple(size: Sequence[int], multiple: int) -> Tuple[int, ...]:
    """Each side rounded down to a multiple of ``multiple``, at least ``multiple`` (e.g. one ViT patch)."""
    return tuple(max(multiple, s - s % multiple) for s in size)


@torch.no_grad()
def strided_convs_on_single_pixel_maps(model: nn.Module, in_chans: int, height: int, width: int) -> List[str]:
    """Names of the convolutions that stride, with a kernel over 1, across a map 1 px high or wide at this input.

    One forward of the model (eval mode, batch 1, on its device) records each ``nn.Conv2d``'s input.

    Args:
        model: the network (restored to its train / eval mode afterwards).
        in_chans, height, width: the input.

    Returns:
        Module names, in the order the forward reaches them.
    """
    found: List[str] = []

    def check(name):
        def hook(module, inputs):
            size = inputs[0].shape[-2:]
            if any(size[d] == 1 and module.stride[d] > 1 and module.kernel_size[d] > 1 for d in (0, 1)):
                found.append(name)
        return hook

    handles = [m.register_forward_pre_hook(check(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device('cpu'))
        model(torch.zeros(1, in_chans, height, width, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(found))


def cpu_bfloat16_conv_hazard(model: nn.Module, input_size: Sequence[int], min_scale: float,
                             multiple: int = 1) -> Optional[Dict[str, Any]]:
    """Whether bfloat16 training on the CPU reaches convolutions whose weight gradient torch may get wrong.

    On the CPU (torch 2.14, oneDNN, seen on a CPU with native bfloat16), the bfloat16 weight
    gradient of a convolution that strides across a map 1 px high or wide (e.g. a ResNet's last
    stage at inputs of 16 px or less) is sometimes NaN: in a test of a 3x3 stride-2 convolution
    on a 1x1 map, 17 of 30 backward passes. float32 is exact. A training step then stops (or is
    skipped) as non-finite, so this is checked once before training, at the smallest input the
    sampler draws.

    Returns:
        None when the smallest input reaches no such convolution, else ``{'side', 'layers',
        'needed', 'min_scale'}``: the smallest drawn side, the convolutions it reaches, the
        smallest side that reaches none (binary search up to the training side) and the
        ``--stim-min-scale`` that keeps inputs there (None when the training side itself does).
    """
    _, height, width = input_size
    short, side = _smallest_drawn_side(input_size, min_scale, multiple)

    def layers_at(s: int) -> List[str]:
        return strided_convs_on_single_pixel_maps(model, input_size[0], *size_for_short_side(height, width, s))

    layers = layers_at(side)
    if not layers:
        return None
    if layers_at(short):
        return {'side': side, 'layers': layers, 'needed': None, 'min_scale': None}
    needed = _smallest_side_that_passes(lambda s: not layers_at(s), side, short, multiple)
    return {'side': side, 'layers': layers, 'needed': needed, 'min_scale': math.ceil(needed / short * 1000) / 1000}


def _smallest_drawn_side(input_size: Sequence[int], min_scale: float, multiple: int) -> Tuple[int, int]:
    """The training input's shorter side and the smallest shorter side the sampler draws from it."""
    short = min(input_size[-2:])
    return short, round_to_multiple([short_side_range(short, min_scale, 1.0)[0]], multiple)[0]


def _smallest_side_that_passes(passes: Callable[[int], bool], low: int, high: int, multiple: int) -> int:
    """Binary search on the grid of ``multiple``: the smallest side in (low, high] that passes (low fails, high passes)."""
    while high - low > multiple:
        mid = round_to_multiple([(low + high) // 2], multiple)[0]
        if mid <= low:
            break
        if passes(mid):
            high = mid
        else:
            low = mid
    return high


def resize_batch(x: torch.Tensor, size: Tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of an already normalized batch (no second normalization).

    Args:
        x: (B, C, H, W) batch.
        size: (height, width) to resize to; ``x`` itself is returned when it already has it.
        antialias: low-pass filter when shrinking (torch's ``antialias=True``). Without it a
            bilinear shrink below half size samples only some input pixels (aliasing); the
            official runs had none (torchvision < 0.17 resized tensors without antialias).

    Returns:
        The resized batch, in ``x``'s memory format.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=antialias)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def renormalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel: the official small-input branch's second normalization.

    The official code applies torchvision's ``Normalize`` (built for [0, 1] images) to the
    already normalized, resized batch, in the same arithmetic as here (subtract, then divide).

    Args:
        x: (B, C, H, W) batch.
        mean, std: one value per channel (the dataset's normalization).

    Returns:
        A new tensor.
    """
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub(mean_t).div(std_t)




def _runs_at(model: nn.Module, in_chans: int, height: int, width: int) -> Optional[str]:
    """None when the model runs on a (1, C, height, width) input, else the error it raises."""
    try:
        model(torch.zeros(1, in_chans, height, width))
    except (RuntimeError, ValueError, AssertionError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


@torch.no_grad()
def smallest_input_side(model: nn.Module, input_size: Sequence[int], min_scale: float,
                        multiple: int = 1) -> Optional[Dict[str, Any]]:
    """Check that the model runs on the smallest subnetwork input; find the smallest side it takes if not.

    Subnetworks keep the first block of every stage, so they downsample as the full network
    does: one forward of the full network (eval mode, batch 1, CPU) at the smallest side the
    sampler can draw tells whether training will fail later.

    Returns:
        None when the smallest input works, else ``{'side', 'needed', 'min_scale', 'error'}``:
        the smallest drawn side, the smallest side that works and the smallest ``min_scale``
        that reaches it.
    """
    _, height, width = input_size
    short, side = _smallest_drawn_side(input_size, min_scale, multiple)
    if side >= short:
        return None

    def dims(s: int):
        return size_for_short_side(height, width, s)

    was_training = model.training
    model.eval()
    try:
        error = _runs_at(model, input_size[0], *dims(side))
        if error is None:
            return None
        # fails at side; assume the training size works
        needed = _smallest_side_that_passes(lambda s: _runs_at(model, input_size[0], *dims(s)) is None, side, short,
                                            multiple)
    finally:
        model.train(was_training)
    return {'side': side, 'needed': needed, 'min_scale': math.ceil(needed / short * 1000) / 1000, 'error': error}
