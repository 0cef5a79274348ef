"""Helpers shared by test modules: ``from helpers import make_input`` (tests/ is on the path, as for conftest).

Fixtures live in conftest.py; plain functions a test calls live here, so no test imports conftest.
"""
import torch


def make_input(batch=2, size=64, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_only_kept_blocks_ran(stim, subnet, calls):
    """Dropped blocks never ran and got no gradient; every kept block ran once and got gradients.

    Args:
        stim: the model's Stimulator.
        subnet: the Subnet that was active for one forward + backward.
        calls: (stage, block) -> how many times the block's residual branch ran.
    """
    dropped = subnet.dropped(stim.stage_depths)
    for s, blocks in enumerate(stim.adapter.stages(stim.model)):
        for b, block in enumerate(blocks):
            grads = [p.grad for p in block.parameters() if p.requires_grad]
            if b in dropped[s]:
                assert calls[(s, b)] == 0, (s, b)
                assert all(g is None for g in grads), (s, b)
            else:
                assert calls[(s, b)] == 1, (s, b)
                assert all(g is not None for g in grads), (s, b)


def save_tiny_pretrained(folder, num_classes=5, seed=1):
    """A tiny ResNet-18 (widths 8..64) saved in timm's Hub format in ``folder`` (config.json + model.safetensors).

    Stands in for pretrained Hub weights (``--model local-dir:FOLDER --pretrained``) in offline tests.

    Returns:
        The folder, as a str.
    """
    import timm
    from timm.models import save_for_hf
    torch.manual_seed(seed)
    kwargs = dict(channels=(8, 16, 32, 64), stem_width=8)
    model = timm.create_model('resnet18', num_classes=num_classes, **kwargs)
    save_for_hf(model, str(folder), model_args=kwargs, safe_serialization=True)
    return str(folder)
