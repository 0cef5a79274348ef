"""Loading never executes code from a file: analyze, export and push on malicious and damaged checkpoints.

A pickle whose object's ``__reduce__`` calls ``os.system`` would run its command under
``torch.load(weights_only=False)``. Every command must refuse such a file (exit code 2, a message
saying what is not allowed and how to convert a trusted file) without the command ever running,
and must refuse truncated files with a message instead of a traceback.
"""
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from timm_stim.tools.analyze import main as analyze_main
from timm_stim.tools.export import main as export_main
from timm_stim.tools.push import main as push_main

from test_hub import hub_env  # noqa: F401  (fixture: huggingface_hub pointed at the local Hub server)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Payload:
    """Unpickling this runs ``touch MARKER`` (through os.system) where pickle is trusted."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _commands(checkpoint, out):
    return {
        'analyze': lambda: analyze_main([checkpoint, '--model', 'test_resnet', '--dataset', 'embedded/digits',
                                         '--out', str(out / 'analysis'), '--device', 'cpu']),
        'export': lambda: export_main([checkpoint, '--model', 'test_resnet', '--depths', '1,1,1,1',
                                       '--out', str(out / 'exported')]),
        'push': lambda: push_main([checkpoint, 'tester/unsafe', '--model', 'test_resnet']),
    }


@pytest.fixture
def files(tmp_path):
    """A malicious checkpoint (with the marker its payload would create) and truncated ones."""
    state_dict = timm.create_model('test_resnet', num_classes=4).state_dict()
    marker = tmp_path / 'PAYLOAD_RAN'
    evil = tmp_path / 'evil.pth.tar'
    torch.save({'state_dict': state_dict, 'epoch': 1, 'payload': _Payload(marker)}, evil)
    good = tmp_path / 'good.pth.tar'
    torch.save({'state_dict': state_dict, 'epoch': 1}, good)
    weights = tmp_path / 'good.safetensors'
    save_file(state_dict, str(weights))
    cut_pth, cut_st = tmp_path / 'cut.pth.tar', tmp_path / 'cut.safetensors'
    cut_pth.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    cut_st.write_bytes(weights.read_bytes()[:weights.stat().st_size - 100])
    return {'evil': str(evil), 'marker': marker, 'cut.pth.tar': str(cut_pth), 'cut.safetensors': str(cut_st)}


@pytest.mark.parametrize('command', ['analyze', 'export', 'push'])
def test_malicious_checkpoint_never_runs_its_payload(hub_env, hub_server, files, tmp_path, caplog, command):
    with pytest.raises(SystemExit) as info:
        _commands(files['evil'], tmp_path)[command]()
    assert info.value.code == 2
    assert not files['marker'].exists()
    message = caplog.text
    assert 'holds Python objects that are not allowed in a checkpoint (posix.system' in message
    assert 'weights_only=False' in message and 'If you trust this file' in message  # how to convert it
    assert not (tmp_path / 'analysis').exists() and not (tmp_path / 'exported').exists()
    assert hub_server.requests == []


@pytest.mark.parametrize('name', ['cut.pth.tar', 'cut.safetensors'])
@pytest.mark.parametrize('command', ['analyze', 'export', 'push'])
def test_truncated_checkpoint_is_refused_with_a_message(hub_env, hub_server, files, tmp_path, caplog, command, name):
    with pytest.raises(SystemExit) as info:
        _commands(files[name], tmp_path)[command]()
    assert info.value.code == 2
    assert f'{files[name]} could not be read' in caplog.text and 'truncated or damaged' in caplog.text
    assert not (tmp_path / 'analysis').exists() and not (tmp_path / 'exported').exists()
    assert hub_server.requests == []


def test_command_line_reports_without_traceback(hub_env, files, tmp_path):
    """The console command: exit code 2, the message, no traceback, and the payload never ran."""
    proc = subprocess.run(
        [sys.executable, '-m', 'timm_stim', 'analyze', files['evil'], '--model', 'test_resnet',
         '--dataset', 'embedded/digits', '--out', str(tmp_path / 'analysis')],
        cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT, 'TIMM_STIM_CACHE': os.environ['TIMM_STIM_CACHE']},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'not allowed in a checkpoint' in proc.stderr and 'Traceback' not in proc.stderr
    assert not files['marker'].exists()
