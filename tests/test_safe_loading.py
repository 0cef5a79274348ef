"""Loading never runs code from a file: analyze, export, push and train_stim.py on malicious and damaged checkpoints.

A pickle whose object's ``__reduce__`` calls ``os.system`` would run its command under
``torch.load(weights_only=False)``. Every command must refuse such a file (exit code 2, a message
saying what is not allowed and how to convert a trusted file) without the command ever running,
and must refuse truncated files with a message instead of a traceback. Every reader goes through
``timm_stim.loading``, so they all say the same about the same file.
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


@pytest.mark.slow
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


def _error(caplog):
    """The text of the last bad-input error a command logged (run_command marks it timm_stim_error='input')."""
    errors = [r.getMessage() for r in caplog.records if getattr(r, 'timm_stim_error', None) == 'input']
    assert errors, caplog.text[-2000:]
    return errors[-1]


@pytest.mark.parametrize('kind', ['missing', 'cut.pth.tar', 'evil'])
def test_one_message_whichever_command_reads_the_file(files, tmp_path, caplog, monkeypatch, kind):
    """analyze, export, train_stim.py --resume and --initial-checkpoint say the same about the same file."""
    from timm_stim.training.train import main as train_main
    monkeypatch.setenv('TIMM_STIM_CACHE', str(tmp_path / 'cache'))
    path = str(tmp_path / 'nothing.pth.tar') if kind == 'missing' else files[kind]
    train = ['--dataset', 'embedded/digits', '--model', 'test_resnet', '--num-classes', '4', '--device', 'cpu',
             '--input-size', '3', '16', '16', '--epochs', '1', '--output', str(tmp_path / 'train'),
             '--experiment', 'run']
    readers = {
        'analyze': (lambda: analyze_main([path, '--model', 'test_resnet', '--dataset', 'embedded/digits',
                                          '--out', str(tmp_path / 'analysis'), '--device', 'cpu']), ''),
        'export': (lambda: export_main([path, '--model', 'test_resnet', '--depths', '1,1,1,1',
                                        '--out', str(tmp_path / 'exported')]), ''),
        'resume': (lambda: train_main([*train, '--resume', path]), '--resume '),
        'initial': (lambda: train_main([*train, '--initial-checkpoint', path]), '--initial-checkpoint '),
    }
    bodies = {}
    for name, (command, option) in readers.items():
        caplog.clear()
        with pytest.raises(SystemExit) as info:
            command()
        assert info.value.code == 2, name
        message = _error(caplog)
        assert message.startswith(option + path), (name, message)
        bodies[name] = message[len(option + path):].replace('\nNothing was written.', '')
    assert len(set(bodies.values())) == 1, bodies
    assert not files['marker'].exists()
    assert not any(os.path.exists(tmp_path / d) for d in ('analysis', 'exported', 'train'))


def test_zip_checkpoints_are_memory_mapped_and_old_format_ones_read_whole(tmp_path, monkeypatch):
    """torch can memory-map only its zip format; an old-format (non-zip) checkpoint is read whole, and loads."""
    from timm_stim.loading import load_checkpoint
    state_dict = timm.create_model('test_resnet', num_classes=4).state_dict()
    new, old = tmp_path / 'new.pth.tar', tmp_path / 'old.pth.tar'
    torch.save({'state_dict': state_dict, 'epoch': 2}, new)
    torch.save({'state_dict': state_dict, 'epoch': 2}, old, _use_new_zipfile_serialization=False)
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append((kwargs.get('mmap'), kwargs.get('weights_only')))
        return original(*args, **kwargs)
    monkeypatch.setattr(torch, 'load', spy)
    for path in (new, old):
        checkpoint = load_checkpoint(str(path))
        assert checkpoint['epoch'] == 2
        assert all(torch.equal(checkpoint['state_dict'][k], v) for k, v in state_dict.items())
    assert calls == [(True, True), (False, True)]


@pytest.mark.parametrize('option', ['--initial-checkpoint', '--pretrained-path'])
@pytest.mark.parametrize('old_format', [False, True], ids=['zip', 'old-format'])
def test_valid_weights_pass_the_check_and_load(tmp_path, monkeypatch, option, old_format):
    """A good file passes the up-front check and its weights are the model's, in either torch format."""
    from timm_stim.training.args import parse_args
    from timm_stim.training.train import create_train_model
    from timm_stim.training.args import check_args
    monkeypatch.setenv('TIMM_STIM_CACHE', str(tmp_path / 'cache'))
    state_dict = timm.create_model('test_resnet', num_classes=4).state_dict()
    path = tmp_path / 'weights.pth.tar'
    torch.save({'state_dict': state_dict, 'epoch': 1}, path, _use_new_zipfile_serialization=not old_format)
    args, _ = parse_args(['--dataset', 'embedded/digits', '--model', 'test_resnet', '--num-classes', '4', option,
                          str(path), *(['--pretrained'] if option == '--pretrained-path' else [])])
    check_args(args)
    torch.manual_seed(1)  # other random weights than the file's
    model = create_train_model(args)
    # --pretrained-path loads like a pretrained download: timm re-initializes the classifier (num_classes=-1).
    head = model.pretrained_cfg['classifier'] + '.' if option == '--pretrained-path' else None
    kept = {k: v for k, v in state_dict.items() if head is None or not k.startswith(head)}
    assert len(kept) > len(state_dict) - 3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())


def test_the_conversion_hint_is_safe_to_paste_and_converts_the_file(tmp_path):
    """The hint's ``python -c "..."`` quotes the path for the shell: /x/$(cmd)/ck.pth.tar never runs cmd (issue 27)."""
    import datetime
    import shlex
    from timm_stim.loading import load_checkpoint
    from timm_stim.errors import InputError
    folder = tmp_path / '$(touch PWNED)' / "it's `here`"
    folder.mkdir(parents=True)
    state_dict = timm.create_model('test_resnet', num_classes=4).state_dict()
    path = folder / 'ck.pth.tar'
    torch.save({'state_dict': state_dict, 'saved_on': datetime.date(2026, 1, 1)}, path)  # trusted, not allowed
    with pytest.raises(InputError) as info:
        load_checkpoint(str(path), '--resume')
    hint = str(info.value).splitlines()[-1].strip()
    assert hint.startswith(shlex.quote(sys.executable) + ' -c ')
    subprocess.run(['bash', '-c', hint], cwd=tmp_path, check=True, timeout=120)
    assert not (tmp_path / 'PWNED').exists()  # nothing in the path ran
    converted = load_checkpoint(str(folder / 'ck_weights.pth'))  # and the file was converted
    assert converted.keys() == state_dict.keys()
