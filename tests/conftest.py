import os

import pytest
import torch

# One intra-op thread in the test process and in the programs it starts: the tests run tiny
# models, for which a second thread mostly waits, and data-loader workers need the other core.
os.environ['OMP_NUM_THREADS'] = '1'
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # Data that timm-stim materializes (the embedded digits as an image folder) goes into the
    # session's temporary folder, shared by its tests, never into the user's cache.
    monkeypatch.setenv('TIMM_STIM_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def make_input(batch=2, size=64, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


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


@pytest.fixture
def hub_server():
    """A local Hugging Face Hub-compatible server on 127.0.0.1 (tests/hub_server.py), stopped after the test.

    Point huggingface_hub at it with the ``hub_env`` fixture of tests/test_hub.py.
    """
    from hub_server import HubServer
    with HubServer(token='hf_TEST_token_4f9c2e7b1d') as server:
        yield server


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
