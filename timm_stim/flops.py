"""Counting floating-point operations of a model and of its residual blocks.

``model_stats`` gives the statistics timm's model cards list (params, GMACs, activations). The
FLOP helpers count what ``torch.utils.flop_counter.FlopCounterMode`` counts (matrix
multiplications and convolutions, 2 per multiply-add) for one image, in eval mode without
gradients, and leave the model's mode as it was. ``count_flops`` is what ``analyze`` reports
per subnetwork; ``block_flops`` splits one forward pass into each given block's share, which
is what the expected cost of a sampled subnetwork needs (``timm_stim.budget``).
"""
import copy
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['count_flops', 'block_flops', 'shape_only_copy', 'model_stats']


def count_flops(model: nn.Module, input_size: Sequence[int], device: Any = 'cpu') -> int:
    """FLOPs of one forward pass of one image (``torch.utils.flop_counter.FlopCounterMode``).

    Counts what torch's counter counts (matrix multiplications and convolutions, 2 per
    multiply-add); runs in eval mode without gradients and leaves the model's mode as it was.
    Inside ``stim.activate(subnet)`` it counts the subnetwork.

    Args:
        model: the model (or a subnetwork of it, inside ``activate``).
        input_size: C, H, W of one image.
        device: where the model is.

    Returns:
        The number of floating-point operations.
    """
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_stats(model: nn.Module, input_size: Sequence[int], device: Any = 'cpu') -> Dict[str, Any]:
    """The model statistics timm's model cards list, for one image of ``input_size``.

    Params (M); GMACs (multiply-adds: ``count_flops``' FLOPs / 2); Activations (M), counted as
    timm's cards count them (fvcore's activation count: the output elements of every convolution
    and linear layer); the image size. For timm's resnet50 at 224 px: 25.6, 4.1, 11.1, as its card.

    Returns:
        ``{'params_m', 'gmacs', 'activations_m', 'image_size'}`` (image_size: (H, W)).
    """
    activations = [0]

    def count(module, args, output):
        activations[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        flops = count_flops(model, input_size, device)
    finally:
        for hook in hooks:
            hook.remove()
    return {'params_m': sum(p.numel() for p in model.parameters()) / 1e6,
            'gmacs': flops / 2e9, 'activations_m': activations[0] / 1e6,
            'image_size': (int(input_size[-2]), int(input_size[-1]))}


def block_flops(model: nn.Module, blocks: Sequence[nn.Module], input_size: Sequence[int],
                device: Any = 'cpu') -> Tuple[int, List[int]]:
    """FLOPs of one forward pass of one image, in total and inside each of ``blocks``.

    A block's share is what the counter adds between the block's forward pre-hook and its
    forward hook, so it is exactly the work skipped when the block is dropped (a dropped
    block's shortcut is not a counted operation). Blocks must not be nested in each other.

    Args:
        model: the full model.
        blocks: modules of ``model`` (e.g. every residual block of every stage).
        input_size: C, H, W of one image.
        device: where the model is (``'meta'`` counts from shapes alone, see ``shape_only_copy``).

    Returns:
        (total FLOPs, FLOPs of each block in the order given).
    """
    from torch.utils.flop_counter import FlopCounterMode
    entered = [0] * len(blocks)
    spent = [0] * len(blocks)
    handles = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            for i, block in enumerate(blocks):
                def pre_hook(module, args, i=i):
                    entered[i] = counter.get_total_flops()

                def post_hook(module, args, output, i=i):
                    spent[i] += counter.get_total_flops() - entered[i]

                handles.append(block.register_forward_pre_hook(pre_hook))
                handles.append(block.register_forward_hook(post_hook))
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(counter.get_total_flops()), [int(s) for s in spent]


def shape_only_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the ``meta`` device: same shapes, no storage, nothing computed.

    FLOP counts depend on shapes only, so counting on this copy gives the same numbers as
    on the model without running any arithmetic (useful for many input sizes of a large model).
    """
    return copy.deepcopy(model).to(device='meta')
