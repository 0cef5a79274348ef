"""Publishing to the Hugging Face Hub (timm_stim.tools.hub, hub_folder, push), end to end against a local Hub server.

The Hub is ``tests/hub_server.py`` (fixture ``hub_server`` in conftest.py). In this process,
``hub_env`` points huggingface_hub's constants at it (huggingface_hub reads HF_ENDPOINT when it is
imported) and returns the environment that subprocesses use instead. Nothing touches the real
Hub, the real token or the real cache.
"""
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from timm.models import save_for_hf

import timm_stim.tools.hub as hub
import timm_stim.tools.push as push
from timm_stim.errors import InputError
from timm_stim.tools.export import main as export_main
from timm_stim.tools.modelcard import base_model_of, is_unedited
from timm_stim.tools.summary import read_summary
from timm_stim.training.args import parse_args as train_parse_args
from timm_stim.cli import train as train_main

from hub_server import DROP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture
def hub_env(hub_server, tmp_path, monkeypatch):
    """Point huggingface_hub (in this process and in subprocesses) at the local server."""
    from huggingface_hub import constants
    home = tmp_path / 'hf_home'
    env = {
        'HF_ENDPOINT': hub_server.url, 'HF_TOKEN': hub_server.token, 'HF_HOME': str(home),
        'HF_HUB_CACHE': str(home / 'hub'), 'HF_HUB_DISABLE_TELEMETRY': '1', 'HF_HUB_DISABLE_PROGRESS_BARS': '1',
        hub.RETRY_DELAY_ENV: '0.01', 'TIMM_STIM_CACHE': str(tmp_path.parent / 'timm_stim_cache'),
        'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_TOKEN_PATH'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, 'ENDPOINT', hub_server.url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                        hub_server.url + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HOME', str(home))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(home / 'hub'))
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(home / 'token'))
    monkeypatch.setattr(constants, 'HF_STORED_TOKENS_PATH', str(home / 'stored_tokens'))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_TELEMETRY', True)
    return dict(os.environ)


def _train_argv(out, *extra):
    # tests/test_train.py's small fast settings.
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
            '--input-size', '3', '16', '16', '--mean', '0.5', '0.5', '0.5', '--std', '0.5', '0.5', '0.5',
            '-b', '32', '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--epochs', '1',
            '--train-batches-per-epoch', '3', '--output', str(out), '--experiment', 'run', '--log-interval', '1',
            '--seed', '3', *extra]


def _hash_tree(folder):
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _tree_contains(folder, needle: bytes):
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), 'rb') as f:
                if needle in f.read():
                    return os.path.join(root, name)
    return None


def _logits(model, seed=0, size=16):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def _retry_command(text):
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip() == 'Retry with:')
    return lines[i + 1].strip()


# ---------------------------------------------------------------------------------------------
# train_stim.py --push-to-hub
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_then_push_loads_back_with_timm(hub_env, hub_server, tmp_path, capfd):
    repo = 'tester/digits-stim'
    result = train_main(_train_argv(tmp_path / 'out', '--stim-subnets', '2', '--push-to-hub', repo))
    out = result['output_dir']
    assert result['hub_url'] == f'{hub_server.url}/{repo}'
    files = hub_server.files(repo)
    assert {'model.safetensors', 'config.json', 'README.md', 'training_curves.png', 'args.yaml',
            'summary.csv'} <= set(files)
    assert files['training_curves.png'].startswith(PNG_MAGIC)
    # The run's records beside the weights: summary.csv as written, args.yaml without local paths.
    assert files['summary.csv'] == (tmp_path / 'out' / 'run' / 'summary.csv').read_bytes()
    published_args = yaml.safe_load(files['args.yaml'])
    assert published_args['stim_subnets'] == 2 and published_args['output'] == 'out'
    assert str(tmp_path).encode() not in files['args.yaml']

    # Loads anywhere through timm's own hf-hub path, with the local best checkpoint's logits.
    published = timm.create_model(f'hf-hub:{repo}', pretrained=True)
    local = timm.create_model('resnet18', num_classes=10, checkpoint_path=os.path.join(out, 'model_best.pth.tar'))
    assert torch.equal(_logits(published), _logits(local))
    cfg = published.pretrained_cfg
    assert tuple(cfg['input_size']) == (3, 16, 16) and list(cfg['mean']) == [0.5] * 3 and list(cfg['std']) == [0.5] * 3
    assert cfg['crop_pct'] == 0.95 and cfg['interpolation'] == 'bicubic' and cfg['num_classes'] == 10
    assert cfg['label_names'] == [str(i) for i in range(10)]  # the digits' class folders
    assert 'tag' not in cfg and 'paper_ids' not in cfg  # resnet18's default weights are not these

    # The model card parses (huggingface_hub) and holds the stimulative configuration and results.
    card = ModelCard(files['README.md'].decode())
    assert card.data.library_name == 'timm' and card.data.license == 'apache-2.0'
    assert {'image-classification', 'stimulative-training', 'timm'} <= set(card.data.tags)
    summary = read_summary(os.path.join(out, 'summary.csv'))
    metrics = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert metrics['Top-1 accuracy (%)'] == pytest.approx(summary[0]['eval_top1'], abs=1e-3)
    assert metrics['Top-5 accuracy (%)'] == pytest.approx(summary[0]['eval_top5'], abs=1e-3)
    assert card.data.eval_results[0].dataset_split == 'validation'
    assert f'timm.create_model("hf-hub:{repo}", pretrained=True)' in card.text
    assert '| `--stim-subnets` | 2 |' in card.text and 'stim_resolved:' in card.text
    assert 'stage_depths: [2, 2, 2, 2]' in card.text and 'depth_choices:' in card.text
    assert '![Training curves](training_curves.png)' in card.text and 'train_stim_kl' in card.text
    assert 'batch_size: 32' in card.text and str(tmp_path) not in card.text  # no local paths
    assert card.data.base_model is None  # trained from scratch: no model tree parent
    assert is_unedited(files['README.md'].decode())  # stamped: the next push may update it

    # The token is nowhere: uploaded files, output dir, logs.
    token = hub_server.token.encode()
    assert not [name for name, content in files.items() if token in content]
    assert _tree_contains(out, token) is None
    captured = capfd.readouterr()
    assert hub_server.token not in captured.out + captured.err
    assert all(authorized for _, _, authorized in hub_server.requests)


@pytest.mark.slow
def test_refused_push_keeps_outputs_and_prints_retry_command(hub_env, hub_server, tmp_path, capfd, monkeypatch):
    before = {}
    real_push = push.push_training_output

    def hash_then_push(output_dir, *args, **kwargs):
        before.update(_hash_tree(output_dir))
        # The run holds its folder while it publishes (issue 27); the claim goes when the command ends.
        assert before.pop('.timm-stim-run', None) is not None
        return real_push(output_dir, *args, **kwargs)
    monkeypatch.setattr(push, 'push_training_output', hash_then_push)
    scratch = tmp_path / 'tmp'
    scratch.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(scratch))  # the upload folder must be a temporary one
    hub_server.refuse_all = True
    repo = 'tester/refused'

    with pytest.raises(SystemExit) as info:
        train_main(_train_argv(tmp_path / 'out', '--stim-subnets', '1', '--push-to-hub', repo))
    assert info.value.code == 1
    out = tmp_path / 'out' / 'run'
    assert 'model_best.pth.tar' in before and 'summary.csv' in before and 'args.yaml' in before
    assert _hash_tree(out) == before  # byte-identical: nothing written, moved or removed
    assert os.listdir(scratch) == []  # and the temporary upload folder is gone
    assert hub_server.requests  # the push was attempted (and refused)
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert '401 Unauthorized' in text and f'saved, unchanged, in {out}' in text
    assert hub_server.token not in text
    command = _retry_command(text)
    # The interpreter that runs (the one with timm_stim), not a bare `python` (issue 27).
    assert command.startswith(f'{shlex.quote(sys.executable)} -m timm_stim push {out / "model_best.pth.tar"} {repo} '
                              f'--model resnet18')

    # The printed command publishes the same weights once the Hub accepts the token.
    hub_server.refuse_all = False
    argv = shlex.split(command)
    assert argv[:4] == [sys.executable, '-m', 'timm_stim', 'push']
    assert push.main(argv[4:]) == 0
    published = load_file_from_bytes(hub_server.files(repo)['model.safetensors'], tmp_path)
    best = load_file(str(out / 'model_best.safetensors'))
    assert published.keys() == best.keys() and all(torch.equal(published[k], best[k]) for k in best)
    assert _hash_tree(out) == before


def load_file_from_bytes(content, tmp_path):
    path = tmp_path / 'downloaded.safetensors'
    path.write_bytes(content)
    return load_file(str(path))


@pytest.mark.parametrize('extra,message', [
    (['--push-to-hub', 'not-a-repo-id'], "--push-to-hub: 'not-a-repo-id' is not a Hub repository id"),
    (['--push-to-hub', 'tester/bad--name'], "is not a valid Hub repository id: Cannot have -- or .."),
    (['--push-to-hub', 'tester/ok', '--hub-which', 'ema'], '--hub-which ema publishes the EMA weights, but '
                                                             '--model-ema is off'),
])
def test_train_refuses_bad_hub_options_before_writing(hub_env, hub_server, tmp_path, caplog, extra, message):
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as info:
        train_main(_train_argv(out, *extra))
    assert info.value.code == 2
    assert message in caplog.text
    assert not out.exists() and hub_server.requests == []


# ---------------------------------------------------------------------------------------------
# python -m timm_stim push
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_push_command_publishes_a_plain_timm_checkpoint(hub_env, hub_server, tmp_path):
    model = timm.create_model('test_resnet', num_classes=5)
    checkpoint = tmp_path / 'plain.pth'
    torch.save(model.state_dict(), checkpoint)
    repo = 'tester/plain-test-resnet'
    proc = subprocess.run(
        [sys.executable, '-m', 'timm_stim', 'push', str(checkpoint), repo, '--model', 'test_resnet',
         '--num-classes', '5', '--input-size', '3', '32', '32', '--label-names', 'ant,bee,cat,dog,eel'],
        env=hub_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'Published to {hub_server.url}/{repo}' in proc.stdout
    assert hub_server.token not in proc.stdout + proc.stderr

    published = timm.create_model(f'hf-hub:{repo}', pretrained=True)
    assert torch.equal(_logits(published, size=32), _logits(model, size=32))
    assert published.pretrained_cfg['label_names'] == ['ant', 'bee', 'cat', 'dog', 'eel']
    assert tuple(published.pretrained_cfg['input_size']) == (3, 32, 32)
    files = hub_server.files(repo)
    card = ModelCard(files['README.md'].decode())
    assert card.data.library_name == 'timm' and 'image-classification' in card.data.tags
    assert 'stimulative-training' not in card.data.tags and not card.data.eval_results  # no ST, no metrics known
    assert 'training_curves.png' not in files
    assert not [name for name, content in files.items() if hub_server.token.encode() in content]


def test_push_command_takes_ema_weights_and_hub_format_folders(hub_env, hub_server, tmp_path, capsys):
    model = timm.create_model('test_resnet', num_classes=3)
    ema = timm.create_model('test_resnet', num_classes=3)
    checkpoint = tmp_path / 'timm.pth.tar'
    torch.save({'epoch': 4, 'state_dict': model.state_dict(), 'state_dict_ema': ema.state_dict()}, checkpoint)
    assert push.main([str(checkpoint), 'tester/ema', '--model', 'test_resnet', '--num-classes', '3', '--use-ema']) == 0
    published = timm.create_model('hf-hub:tester/ema', pretrained=True)
    assert torch.equal(_logits(published), _logits(ema))
    assert 'EMA weights of `timm.pth.tar` (epoch 4)' in hub_server.files('tester/ema')['README.md'].decode()

    # A folder in timm's Hub format (what `python -m timm_stim export` writes): --model is optional.
    folder = tmp_path / 'exported'
    save_for_hf(model, str(folder), model_config={'label_names': ['x', 'y', 'z']}, safe_serialization=True)
    before = _hash_tree(folder)
    assert push.main([str(folder), 'tester/exported']) == 0
    assert _hash_tree(folder) == before
    published = timm.create_model('hf-hub:tester/exported', pretrained=True)
    assert torch.equal(_logits(published), _logits(model))
    assert published.pretrained_cfg['label_names'] == ['x', 'y', 'z']
    assert ModelCard(hub_server.files('tester/exported')['README.md'].decode()).data.library_name == 'timm'
    assert capsys.readouterr().out.count('Published to') == 2


@pytest.mark.parametrize('case,message', [
    ('missing', 'does not exist'),
    ('bad_repo', "'tester' is not a Hub repository id"),
    ('bad_repo_chars', "'tester/a b' is not a valid Hub repository id: Repo id must use alphanumeric chars"),
    ('unknown_model', "--model 'resnet5000' is not a timm model. Did you mean"),
    ('no_model', '--model is required'),
    ('wrong_classes', 'does not fit --model test_resnet with 10 classes'),
    ('no_ema', 'holds no EMA weights'),
    ('not_hub_folder', 'a folder without config.json'),
    # issue 27: preprocessing every user of the model would apply is checked before any work
    ('mean_nan', '--mean nan 0.0 0.0: expected finite numbers'),
    ('crop_pct', '--crop-pct -3.0: expected a finite center-crop fraction > 0'),
    ('std_zero', '--std 0.0 1.0 1.0: expected finite numbers > 0'),
])
def test_push_command_refuses_bad_input_before_any_network_call(hub_env, hub_server, tmp_path, caplog, case,
                                                                message):
    checkpoint = tmp_path / 'plain.pth'
    torch.save(timm.create_model('test_resnet', num_classes=4).state_dict(), checkpoint)
    argv = {
        'missing': [str(tmp_path / 'nope.pth.tar'), 'tester/x', '--model', 'test_resnet'],
        'bad_repo': [str(checkpoint), 'tester', '--model', 'test_resnet'],
        'bad_repo_chars': [str(checkpoint), 'tester/a b', '--model', 'test_resnet'],
        'unknown_model': [str(checkpoint), 'tester/x', '--model', 'resnet5000'],
        'no_model': [str(checkpoint), 'tester/x'],
        'wrong_classes': [str(checkpoint), 'tester/x', '--model', 'test_resnet', '--num-classes', '10'],
        'no_ema': [str(checkpoint), 'tester/x', '--model', 'test_resnet', '--num-classes', '4', '--use-ema'],
        'not_hub_folder': [str(tmp_path), 'tester/x'],
        'mean_nan': [str(checkpoint), 'tester/x', '--model', 'test_resnet', '--mean', 'nan', '0', '0'],
        'crop_pct': [str(checkpoint), 'tester/x', '--model', 'test_resnet', '--crop-pct', '-3'],
        'std_zero': [str(checkpoint), 'tester/x', '--model', 'test_resnet', '--std', '0', '1', '1'],
    }[case]
    with pytest.raises(SystemExit) as info:
        push.main(argv)
    assert info.value.code == 2
    assert message in caplog.text and 'Nothing was sent to the Hub' in caplog.text
    assert hub_server.requests == []


# ---------------------------------------------------------------------------------------------
# push_folder: retries, failures, branches
# ---------------------------------------------------------------------------------------------

def _small_folder(tmp_path):
    folder = tmp_path / 'upload'
    folder.mkdir()
    (folder / 'config.json').write_text('{"architecture": "resnet18"}')
    (folder / 'README.md').write_text('---\nlibrary_name: timm\n---\n# hi\n')
    return folder


def test_creation_is_retried_by_us_and_uploads_by_huggingface_hub(hub_env, hub_server, tmp_path, caplog):
    folder = _small_folder(tmp_path)
    hub_server.fail_next('/api/repos/create', 500)  # not retried by huggingface_hub: retried by timm_stim.tools.hub
    # Retried by huggingface_hub's own http_backoff (1 s wait each); the commit too, with hf_xet's pipeline.
    hub_server.fail_next('/preupload/main', 503)
    hub_server.fail_next('/commit/main', 503)
    url = hub.push_folder(str(folder), 'tester/flaky')
    assert url == f'{hub_server.url}/tester/flaky'
    paths = [p for _, p, _ in hub_server.requests]
    assert paths.count('/api/repos/create') == 2 and paths.count('/api/models/tester/flaky/preupload/main') == 2
    assert paths.count('/api/models/tester/flaky/commit/main') == 2
    assert set(hub_server.files('tester/flaky')) >= {'config.json', 'README.md'}
    ours = [r.getMessage() for r in caplog.records if r.name == 'timm_stim.tools.hub' and 'Retrying' in r.getMessage()]
    assert len(ours) == 1 and ours[0].startswith('creating tester/flaky: the Hub answered 500')


@pytest.mark.parametrize('path,status,pushed', [
    ('/api/repos/create', 500, False), ('/api/repos/create', DROP, False),  # not retried by huggingface_hub
    ('/api/models/tester/layer-off', 503, False),                           # reading the card: not retried either
    ('/preupload/main', 503, True), ('/commit/main', 502, True), ('/commit/main', DROP, True),  # retried by it
])
def test_what_huggingface_hub_retries_without_our_retries(hub_env, hub_server, tmp_path, monkeypatch, path, status,
                                                          pushed):
    # The measurement behind _with_retries (docs/hub.md): one transient failure, our retries off.
    monkeypatch.setattr(hub, 'RETRY_ATTEMPTS', 1)
    hub_server.fail_next(path, status)
    folder = str(_small_folder(tmp_path))
    if pushed:
        assert hub.push_folder(folder, 'tester/layer-off') == f'{hub_server.url}/tester/layer-off'
        assert set(hub_server.files('tester/layer-off')) >= {'config.json', 'README.md'}
    else:
        with pytest.raises(hub.HubPushError) as info:
            hub.push_folder(folder, 'tester/layer-off')
        assert info.value.transient and 'Gave up after 1 attempts' in str(info.value)
        monkeypatch.setattr(hub, 'RETRY_ATTEMPTS', 4)  # with them: published
        hub_server.fail_next(path, status)
        assert hub.push_folder(folder, 'tester/layer-off') == f'{hub_server.url}/tester/layer-off'


def test_push_folder_failures_are_clear_and_token_free(hub_env, hub_server, tmp_path, monkeypatch):
    folder = _small_folder(tmp_path)
    hub_server.fail_next('/api/repos/create', 503, times=hub.RETRY_ATTEMPTS)
    with pytest.raises(hub.HubPushError) as info:
        hub.push_folder(str(folder), 'tester/down')
    assert info.value.transient and info.value.status_code == 503
    assert f'Gave up after {hub.RETRY_ATTEMPTS} attempts' in str(info.value)
    assert [p for _, p, _ in hub_server.requests].count('/api/repos/create') == hub.RETRY_ATTEMPTS

    hub_server.reset()
    hub_server.refuse_all = True
    with pytest.raises(hub.HubPushError) as info:
        hub.push_folder(str(folder), 'tester/refused')
    assert info.value.status_code == 401 and '401 Unauthorized' in str(info.value)
    assert not info.value.transient and hub_server.token not in str(info.value)

    hub_server.reset()
    monkeypatch.delenv('HF_TOKEN')
    with pytest.raises(hub.HubPushError, match='no Hugging Face token found'):
        hub.push_folder(str(folder), 'tester/x')
    assert hub_server.requests == []

    from huggingface_hub import constants
    monkeypatch.setenv('HF_TOKEN', hub_server.token)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens there
    with pytest.raises(hub.HubPushError, match='could not reach the Hub at http://127.0.0.1:9') as info:
        hub.push_folder(str(folder), 'tester/x')
    assert info.value.transient and hub_server.token not in str(info.value)


@pytest.mark.parametrize('token', ['hf_x', 'k3y9'])  # real tokens are long; a test or a local Hub's need not be
@pytest.mark.parametrize('where', ['server message', 'retried server message', 'exception'])
def test_a_short_token_is_masked_wherever_a_failure_shows_it(hub_env, hub_server, tmp_path, monkeypatch, caplog,
                                                            where, token):
    from huggingface_hub import HfApi
    hub_server.token = token
    monkeypatch.setenv('HF_TOKEN', token)
    if where == 'server message':
        hub_server.fail_next('/api/repos/create', 403, message=f'the token {token} may not write to tester')
    elif where == 'retried server message':  # logged at each retry, then raised
        hub_server.fail_next('/api/repos/create', 503, times=hub.RETRY_ATTEMPTS, message=f'busy, token={token}')
    else:
        def echoing_bug(*args, **kwargs):
            raise RuntimeError(f'client bug: Authorization: Bearer {token}')
        monkeypatch.setattr(HfApi, 'create_repo', echoing_bug)
    with pytest.raises(hub.HubPushError) as info:
        hub.push_folder(str(_small_folder(tmp_path)), 'tester/echo')
    shown = info.value.report() + caplog.text
    assert token not in shown
    assert '***' in str(info.value)  # the message is kept, the token masked


@pytest.mark.parametrize('command', ['push', 'export'])
@pytest.mark.parametrize('extra,secret', [
    (['--token', 'hf_x'], 'hf_x'),                            # no command has --token: argparse would echo the value
    (['--token=hf_SECRETvalue'], 'hf_SECRETvalue'),
    (['--hf-token', 'plainsecret'], 'plainsecret'),           # any option named like a token, whatever its value
    (['--auth', 'hf_abc123'], 'hf_abc123'),                   # any unknown option followed by a token-like value
])
def test_commands_never_echo_a_token_given_as_an_unknown_option(hub_env, hub_server, tmp_path, capsys, command,
                                                                extra, secret):
    out = tmp_path / 'exported'
    with pytest.raises(SystemExit) as info:
        if command == 'push':
            push.main([str(tmp_path / 'model.pth'), 'tester/x', *extra])
        else:
            export_main([str(tmp_path / 'model.pth'), '--depths', '1,1,1,1', '--out', str(out), '--push-to-hub',
                         'tester/x', *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'unrecognized arguments' in err and '***' in err
    assert secret not in err
    assert hub_server.requests == [] and not out.exists()


def test_push_folder_private_repo_on_a_branch(hub_env, hub_server, tmp_path):
    folder = _small_folder(tmp_path)
    url = hub.push_folder(str(folder), 'tester/branched', private=True, revision='v1', commit_message='first')
    assert url == f'{hub_server.url}/tester/branched/tree/v1'
    repo = hub_server.repos['tester/branched']
    assert repo.private
    assert 'config.json' in repo.files('v1') and 'config.json' not in repo.files('main')
    assert repo.messages[repo.branches['v1']] == 'first'


# ---------------------------------------------------------------------------------------------
# What Hub users expect: base_model, a card edited on the Hub survives, pull requests
# ---------------------------------------------------------------------------------------------

def _fake_run(folder, top1s, **train_args):
    """A train_stim.py-like output folder: last.pth.tar, args.yaml and summary.csv with one row per top-1."""
    folder.mkdir(exist_ok=True)
    model = timm.create_model('test_resnet', num_classes=3)
    torch.save({'epoch': len(top1s) - 1, 'state_dict': model.state_dict()}, folder / 'last.pth.tar')
    args = {'model': 'test_resnet', 'num_classes': 3, 'input_size': [3, 32, 32], 'output': str(folder.parent),
            'stim_subnets': 1, **train_args}
    (folder / 'args.yaml').write_text(yaml.safe_dump(args))
    lines = ['epoch,train_loss,eval_loss,eval_top1,eval_top5,lr']
    lines += [f'{e},1.5,1.4,{top1},{top1 + 20},0.1' for e, top1 in enumerate(top1s)]
    (folder / 'summary.csv').write_text('\n'.join(lines) + '\n')
    return model


def _card(hub_server, repo, revision='main'):
    return ModelCard(hub_server.files(repo, revision)['README.md'].decode())


def _top1(card):
    return {r.metric_name: r.metric_value for r in card.data.eval_results}['Top-1 accuracy (%)']


def test_push_keeps_a_card_edited_on_the_hub_unless_asked(hub_env, hub_server, tmp_path, caplog):
    repo, run = 'tester/kept-card', tmp_path / 'run'
    _fake_run(run, [30.0], pretrained=True)
    assert push.main([str(run / 'last.pth.tar'), repo]) == 0
    files = hub_server.files(repo)
    assert {'args.yaml', 'summary.csv', 'training_curves.png', 'model.safetensors', 'config.json'} <= set(files)
    card = _card(hub_server, repo)
    # Trained from timm's pretrained test_resnet: the Hub's model tree shows the parent.
    assert card.data.base_model == 'timm/test_resnet.r160_in1k' == base_model_of({'model': 'test_resnet',
                                                                                  'pretrained': True})
    assert _top1(card) == 30.0

    # A card timm-stim wrote and nobody edited follows the new weights.
    _fake_run(run, [30.0, 40.0], pretrained=True)
    assert push.main([str(run / 'last.pth.tar'), repo]) == 0
    assert _top1(_card(hub_server, repo)) == 40.0

    # Edited on the Hub: kept, said so; the other files are still updated.
    edited = hub_server.files(repo)['README.md'].replace(b'# Model card for kept-card', b'# My own words')
    hub_server.edit(repo, 'README.md', edited)
    _fake_run(run, [30.0, 40.0, 50.0], pretrained=True)
    caplog.clear()
    assert push.main([str(run / 'last.pth.tar'), repo]) == 0
    assert hub_server.files(repo)['README.md'] == edited
    assert hub_server.files(repo)['summary.csv'] == (run / 'summary.csv').read_bytes()
    assert 'Keeping the model card of tester/kept-card' in caplog.text and '--replace-card' in caplog.text

    # Asked to replace it: replaced.
    assert push.main([str(run / 'last.pth.tar'), repo, '--replace-card']) == 0
    assert _top1(_card(hub_server, repo)) == 50.0 and b'My own words' not in hub_server.files(repo)['README.md']


def test_a_card_edited_on_the_hub_while_pushing_is_kept(hub_env, hub_server, tmp_path, monkeypatch, caplog):
    repo, run = 'tester/race', tmp_path / 'run'
    _fake_run(run, [30.0])
    assert push.main([str(run / 'last.pth.tar'), repo]) == 0  # timm-stim's card: the next push may update it
    original = hub_server.files(repo)['README.md']
    edited = original.replace(b'# Model card for race', b'# Edited on the Hub while a push ran')
    assert edited != original
    read_card = hub._card_on_hub

    def read_then_edit(*args):  # someone saves an edit on the Hub just after the push read the card
        head_and_card = read_card(*args)
        if hub_server.files(repo)['README.md'] == original:
            hub_server.edit(repo, 'README.md', edited)
        return head_and_card
    monkeypatch.setattr(hub, '_card_on_hub', read_then_edit)
    _fake_run(run, [30.0, 40.0])
    hub_server.reset()
    assert push.main([str(run / 'last.pth.tar'), repo]) == 0
    assert hub_server.files(repo)['README.md'] == edited  # not overwritten by the card read before the edit
    assert hub_server.files(repo)['summary.csv'] == (run / 'summary.csv').read_bytes()  # the rest is published
    commits = [p for _, p, _ in hub_server.requests if p == f'/api/models/{repo}/commit/main']
    assert len(commits) == 2  # refused (the head moved since the card was read), then made on the new head
    assert 'changed on the Hub while publishing (412)' in caplog.text and 'Keeping the model card' in caplog.text


def test_push_opens_a_pull_request(hub_env, hub_server, tmp_path, capsys):
    repo, run = 'tester/with-pr', tmp_path / 'run'
    _fake_run(run, [30.0])
    assert push.main([str(run / 'last.pth.tar'), repo, '--create-pr']) == 0
    assert f'Published to {hub_server.url}/{repo}/discussions/1' in capsys.readouterr().out
    assert 'model.safetensors' not in hub_server.files(repo)  # main is untouched
    assert {'model.safetensors', 'README.md', 'args.yaml'} <= set(hub_server.files(repo, 'refs/pr/1'))
    assert _card(hub_server, repo, 'refs/pr/1').data.base_model is None  # not --pretrained


def test_training_push_takes_create_pr_and_replace_card_as_objects(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(push, 'push', lambda request: seen.append(request) or 'url')
    args = train_parse_args(['--model', 'resnet18', '--num-classes', '10', '--push-to-hub', 'tester/x',
                             '--hub-create-pr', '--hub-replace-card', '--hub-private'])[0]
    assert push.push_after_training(args, str(tmp_path), None) == 'url'
    request, = seen
    assert (request.checkpoint, request.repo_id) == (str(tmp_path / 'model_best.pth.tar'), 'tester/x')
    assert (request.create_pr, request.replace_card, request.private, request.model) == (True, True, True, 'resnet18')
    assert push.retry_command(request).endswith(
        '--model resnet18 --num-classes 10 --private --create-pr --replace-card')
    with pytest.raises(InputError, match='a pull request is opened against main'):
        hub.check_push_options('tester/x', 'dev', create_pr=True)


# ---------------------------------------------------------------------------------------------
# Trust, third round (issue 27): nothing local or secret is published, every printed command is safe
# ---------------------------------------------------------------------------------------------

def test_local_dir_models_publish_no_local_path(hub_env, hub_server, tmp_path):
    """--model local-dir:/abs/... (and --kd-model-name local-dir:...) are published by architecture, never by path."""
    secret = tmp_path / 'secret'
    model = timm.create_model('test_resnet', num_classes=3)
    save_for_hf(model, str(secret / 'teacher'), safe_serialization=True)
    run = tmp_path / 'run'
    _fake_run(run, [50.0, 60.0], model=f'local-dir:{secret / "teacher"}', pretrained=True,
              kd_model_name=f'local-dir:{secret / "kd"}')
    torch.save({'epoch': 1, 'state_dict': model.state_dict()}, run / 'last.pth.tar')
    assert push.main([str(run / 'last.pth.tar'), 'tester/local']) == 0
    files = hub_server.files('tester/local')
    leaked = [name for name, content in files.items() if str(secret).encode() in content]
    assert not leaked
    card = ModelCard(files['README.md'].decode())
    assert 'test_resnet' in card.data.tags and not [t for t in card.data.tags if 'local-dir' in t]
    assert '`test_resnet` (timm)' in card.text  # the architecture line
    published_args = yaml.safe_load(files['args.yaml'])
    assert published_args['model'] == 'test_resnet' and published_args['kd_model_name'] == 'local-dir:kd'


def test_a_token_or_part_of_it_is_never_shown(hub_env, hub_server, tmp_path, monkeypatch, caplog, capsys):
    from timm_stim.tokens import mask_tokens
    token = 'hf_' + 'aB3dE6gH9j' * 3 + 'kLmN'
    monkeypatch.setenv('HF_TOKEN', token)
    # A server that echoes a truncated token, or its end.
    assert mask_tokens(f'bad token {token[:12]}..., ends in {token[-9:]}') == 'bad token ***..., ends in ***'
    # train_stim.py has no --hub-token: argparse would echo it.
    with pytest.raises(SystemExit) as info:
        train_main(_train_argv(tmp_path / 'out', f'--hub-token={token}'))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'unrecognized arguments: --hub-token=***' in err and token[:10] not in err
    assert not (tmp_path / 'out').exists()


def test_retry_and_conversion_commands_are_quoted_for_the_shell(tmp_path):
    """A path like /x/$(cmd)/ck.pth.tar in a printed command never runs cmd when pasted."""
    folder = tmp_path / '$(touch PWNED)' / "it's here"
    request = push.PushRequest(str(folder / 'ck.pth.tar'), 'tester/x', model='resnet18')
    command = push.retry_command(request)
    echoed = subprocess.run(['bash', '-c', 'printf "%s\\n" ' + command], cwd=tmp_path, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert echoed == [sys.executable, '-m', 'timm_stim', 'push', str(folder / 'ck.pth.tar'), 'tester/x', '--model',
                      'resnet18']
    assert not (tmp_path / 'PWNED').exists()


def test_ctrl_c_during_a_push_exits_130_and_prints_the_retry_command(hub_env, hub_server, tmp_path, monkeypatch,
                                                                   caplog):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(push, 'push_folder', interrupted)
    with pytest.raises(SystemExit) as info:
        train_main(_train_argv(tmp_path / 'out', '--push-to-hub', 'tester/stopped'))
    assert info.value.code == 130
    expected = push.retry_command(push.PushRequest(str(tmp_path / 'out' / 'run' / 'model_best.pth.tar'),
                                                   'tester/stopped', model='resnet18', num_classes=10))
    assert f'Publishing to tester/stopped was interrupted; no local file was changed. To publish:\n  {expected}' \
        in caplog.text
    assert os.path.exists(tmp_path / 'out' / 'run' / 'model_best.pth.tar')  # what the command publishes


def test_ctrl_c_at_the_last_step_publishes_nothing_and_exits_130(hub_env, hub_server, tmp_path, caplog):
    # Ctrl-C during the last step of the last epoch: the epoch's validation and checkpoint are kept (a resume from
    # last.pth.tar is an epoch-boundary one), nothing reaches the Hub, exit 130 with the --resume to pass.
    from timm_stim.callbacks import TrainCallback

    class CtrlCAtTheLastStep(TrainCallback):
        def on_step_start(self, state, batch_idx):
            if batch_idx == 2:  # --train-batches-per-epoch 3, --epochs 1
                os.kill(os.getpid(), signal.SIGINT)
    out = tmp_path / 'out'
    argv = _train_argv(out, '--push-to-hub', 'tester/stopped')
    with pytest.raises(SystemExit) as info:
        train_main(argv, callbacks=[CtrlCAtTheLastStep()])
    assert info.value.code == 130
    assert hub_server.requests == [] and hub_server.files('tester/stopped') == {}
    last = out / 'run' / 'last.pth.tar'
    assert f'Training was interrupted. Resume with the same options plus --resume {last}' in caplog.text
    assert 'Training was interrupted: nothing is published to tester/stopped' in caplog.text
    rows = read_summary(str(out / 'run' / 'summary.csv'))
    assert [row['epoch'] for row in rows] == [0]
    # The resume the hint gives trains nothing more and publishes the run as the uninterrupted command would.
    result = train_main(argv + ['--resume', str(last)])
    assert result['epochs'] == [] and result['hub_url'] == f'{hub_server.url}/tester/stopped'
    assert read_summary(str(out / 'run' / 'summary.csv')) == rows
    assert 'model.safetensors' in hub_server.files('tester/stopped')


def test_a_push_killed_mid_way_leaves_no_copy_after_the_next_push(hub_env, hub_server, tmp_path, monkeypatch):
    scratch = tmp_path / 'tmp'
    scratch.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(scratch))
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    killed = scratch / f'{push.PUSH_FOLDER_PREFIX}{dead.pid}_x1y2'  # what a kill -9 mid-push leaves
    killed.mkdir()
    (killed / 'model.safetensors').write_bytes(b'weights')
    live = scratch / f'{push.PUSH_FOLDER_PREFIX}{os.getppid()}_a3b4'  # a push running now, in another process
    live.mkdir()
    model = timm.create_model('test_resnet', num_classes=4)
    torch.save(model.state_dict(), tmp_path / 'plain.pth')
    assert push.main([str(tmp_path / 'plain.pth'), 'tester/next', '--model', 'test_resnet']) == 0
    assert sorted(os.listdir(scratch)) == [live.name]


def test_ema_run_push_push_to_hub_export_and_best_safetensors_carry_the_same_weights(hub_env, hub_server, tmp_path,
                                                                                      capsys):
    """One rule (timm's): the EMA weights when the checkpoint holds them; --no-use-ema the trained ones."""
    import safetensors.torch
    from timm.models import load_checkpoint
    result = train_main(_train_argv(tmp_path / 'out', '--model-ema', '--epochs', '2', '--push-to-hub',
                                    'tester/at-end'))
    best = os.path.join(result['output_dir'], 'model_best.pth.tar')
    saved = torch.load(best, map_location='cpu', weights_only=False)
    ema, trained = saved['state_dict_ema'], saved['state_dict']
    assert any(not torch.equal(ema[k], trained[k]) for k in ema)  # the two choices are other weights

    assert push.main([best, 'tester/default']) == 0
    assert push.main([best, 'tester/no-ema', '--no-use-ema']) == 0
    assert push.main([best, 'tester/ema', '--use-ema']) == 0
    for flags, out in (([], 'export-default'), (['--no-use-ema'], 'export-no-ema')):
        export_main([best, '--depths', '2,2,2,2', '--out', str(tmp_path / out), *flags])

    def hub_weights(repo):
        return safetensors.torch.load(hub_server.files(repo)['model.safetensors'])

    timm_default = timm.create_model('resnet18', num_classes=10)
    load_checkpoint(timm_default, best)  # timm's own default: use_ema=True
    got = {'--push-to-hub': hub_weights('tester/at-end'), 'push': hub_weights('tester/default'),
           'push --use-ema': hub_weights('tester/ema'),
           'export': load_file(str(tmp_path / 'export-default' / 'model.safetensors')),
           'model_best.safetensors': load_file(os.path.join(result['output_dir'], 'model_best.safetensors')),
           'timm load_checkpoint': timm_default.state_dict()}
    for name, weights in got.items():
        assert weights.keys() == ema.keys(), name
        assert all(torch.equal(weights[k], ema[k]) for k in ema), name
    for weights in (hub_weights('tester/no-ema'), load_file(str(tmp_path / 'export-no-ema' / 'model.safetensors'))):
        assert all(torch.equal(weights[k], trained[k]) for k in trained)

    # push carries what --push-to-hub carries: the dataset's label names and the model-index (EMA was validated).
    for repo in ('tester/at-end', 'tester/default'):
        files = hub_server.files(repo)
        assert yaml.safe_load(files['config.json'])['label_names'] == [str(i) for i in range(10)], repo
        assert ModelCard(files['README.md'].decode()).data.eval_results, repo
    # The non-EMA weights were not what validation measured: no model-index for them.
    assert not ModelCard(hub_server.files('tester/no-ema')['README.md'].decode()).data.eval_results
    assert '--no-use-ema' in push.retry_command(push.PushRequest(best, 'tester/no-ema', use_ema=False))


def test_push_refuses_non_finite_weights_naming_them(hub_env, hub_server, tmp_path, caplog):
    model = timm.create_model('test_resnet', num_classes=3)
    state_dict = model.state_dict()
    state_dict['fc.bias'] = torch.tensor([0.0, float('nan'), 1.0])
    checkpoint = tmp_path / 'nan.pth.tar'
    torch.save({'state_dict': state_dict}, checkpoint)
    with pytest.raises(SystemExit) as info:
        push.main([str(checkpoint), 'tester/nan', '--model', 'test_resnet', '--num-classes', '3'])
    assert info.value.code == 2
    assert 'not publishing NaN or infinite weights' in caplog.text and '(fc.bias)' in caplog.text
    assert 'Nothing was sent to the Hub' in caplog.text and hub_server.requests == []


def test_finetune_recipe_from_hub_weights_names_its_base_model(hub_env, hub_server, tmp_path):
    """The fine-tuning recipe end to end at tiny size, its pretrained weights served by the local Hub."""
    from helpers import save_tiny_pretrained
    folder = save_tiny_pretrained(tmp_path / 'pretrained', num_classes=5)
    hub.push_folder(folder, 'tester/tiny-pretrained')
    pretrained = load_file(os.path.join(folder, 'model.safetensors'))
    result = train_main(['-c', 'finetune_resnet50_stpp', '--model', 'hf-hub:tester/tiny-pretrained',
                         '--num-classes', '10', '--dataset', 'embedded/digits', '--input-size', '3', '16', '16',
                         '-b', '16', '--epochs', '2', '--train-batches-per-epoch', '2', '--workers', '0',
                         '--device', 'cpu', '--no-prefetcher', '--lr', '1e-9', '--warmup-lr', '1e-9',
                         '--output', str(tmp_path / 'out'), '--experiment', 'ft', '--push-to-hub', 'tester/ft'])
    assert 'stim_kl' in result['epochs'][0]['train']
    best = load_file(os.path.join(result['output_dir'], 'model_best.safetensors'))
    # Started from the Hub's weights (the body; the 5-class head was replaced by a 10-class one).
    assert best['fc.weight'].shape == (10, 64) and pretrained['fc.weight'].shape == (5, 64)
    for key in ('conv1.weight', 'layer1.0.conv1.weight', 'layer4.1.conv2.weight'):
        assert torch.allclose(best[key], pretrained[key], atol=1e-6), key
    card = ModelCard(hub_server.files('tester/ft')['README.md'].decode())
    assert card.data.base_model == 'tester/tiny-pretrained'
    assert '[tester/tiny-pretrained](https://huggingface.co/tester/tiny-pretrained)' in card.text
