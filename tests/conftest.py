import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def make_input(batch=2, size=64, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def hub_server():
    """A local Hugging Face Hub-compatible server on 127.0.0.1 (tests/hub_server.py), stopped after the test.

    Point huggingface_hub at it with the ``hub_env`` fixture of tests/test_hub.py.
    """
    from hub_server import HubServer
    with HubServer(token='hf_TEST_token_4f9c2e7b1d') as server:
        yield server
