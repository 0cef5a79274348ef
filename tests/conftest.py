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


@pytest.fixture
def hub_server():
    """A local Hugging Face Hub-compatible server on 127.0.0.1 (tests/hub_server.py), stopped after the test.

    Point huggingface_hub at it with the ``hub_env`` fixture of tests/test_hub.py.
    """
    from hub_server import HubServer
    with HubServer(token='hf_TEST_token_4f9c2e7b1d') as server:
        yield server
