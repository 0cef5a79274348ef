"""train_stim.py as a drop-in for timm's train.py: options timm has and we honour, args.yaml as timm
writes it, older timm configs, and the commands a plain `pip install` gives."""
import csv
import glob
import os
import shutil
import subprocess
import sys
import venv

import pytest
import torch
import yaml

import timm_stim.training.train as train_mod
from timm_stim.training.args import parse_args
from timm_stim.training.train import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base(out, *extra):
    return ['--dataset', 'embedded/digits', '--num-classes', '10', '--device', 'cpu', '--input-size', '3', '16', '16',
            '-b', '16', '--workers', '0', '--warmup-epochs', '0', '--epochs', '1', '--train-batches-per-epoch', '2',
            '--output', str(out), '--experiment', 'run', '--log-interval', '1', '--seed', '1', *extra]


def _last_weights(run_dir):
    import argparse
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(os.path.join(run_dir, 'last.pth.tar'), map_location='cpu', weights_only=True)['state_dict']


@pytest.mark.slow
def test_naflex_loader_trains_a_naflex_vit(tmp_path, monkeypatch):
    import timm.data
    calls = []
    original = timm.data.create_naflex_loader

    def recording(*args, **kwargs):
        calls.append(kwargs.get('train_seq_lens') or kwargs.get('max_seq_len'))
        return original(*args, **kwargs)
    monkeypatch.setattr(timm.data, 'create_naflex_loader', recording)
    result = main(_base(tmp_path, '--model', 'naflexvit_base_patch16_gap', '--model-kwargs', 'embed_dim=32', 'depth=1',
                        'num_heads=2', '--input-size', '3', '32', '32', '--naflex-loader',
                        '--naflex-train-seq-lens', '4', '--naflex-max-seq-len', '4', '--lr', '0.01'))
    assert calls == [[4], 4]  # the train and validation loaders are timm's NaFlex loaders
    rows = list(csv.DictReader(open(os.path.join(result['output_dir'], 'summary.csv'))))
    assert len(rows) == 1 and float(rows[0]['train_loss']) > 0


def test_save_images_writes_the_logged_batches(tmp_path):
    result = main(_base(tmp_path, '--model', 'resnet18', '--save-images'))
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(result['output_dir'], '*.jpg'))) == [
        'train-batch-0.jpg', 'train-batch-1.jpg']


@pytest.mark.slow
def test_variable_batch_loss_scale_scales_the_loss(tmp_path, monkeypatch):
    # Scheduled sizes with different batch sizes: 'linear' multiplies each batch's loss by its size
    # over the average batch size, as timm does; the same batches then give other weights.
    seen = []
    original = train_mod.train_one_epoch

    def spy(*args, **kwargs):
        seen.append(kwargs['scheduled_batch_mode'])
        return original(*args, **kwargs)
    monkeypatch.setattr(train_mod, 'train_one_epoch', spy)
    weights = {}
    for scale in ('none', 'linear'):
        main(_base(tmp_path / scale, '--model', 'resnet18', '--train-img-sizes', '16', '24', '--train-batch-sizes',
                   '24', '8', '--variable-batch-loss-scale', scale, '--lr', '0.05', '--stim-subnets', '1'))
        weights[scale] = _last_weights(tmp_path / scale / 'run')
    assert seen == [True, True]
    assert any(not torch.equal(weights['none'][k], weights['linear'][k]) for k in weights['none'])


def test_args_yaml_holds_the_parsed_options_as_timm_writes_them(tmp_path):
    # The learning rate is computed from --lr-base at run time; args.yaml keeps lr empty so that
    # `-c args.yaml` on another number of GPUs computes it again, as with timm.
    result = main(_base(tmp_path, '--model', 'resnet18', '--lr-base', '0.1'))
    saved = yaml.safe_load(open(os.path.join(result['output_dir'], 'args.yaml')))
    assert saved['lr'] is None and saved['lr_base'] == 0.1
    assert not {'prefetcher', 'rank', 'world_size', 'distributed', 'config'} & set(saved)
    again, _ = parse_args(['-c', os.path.join(result['output_dir'], 'args.yaml')])
    assert again.lr is None and again.model == 'resnet18' and again.seed == 1


def test_args_yaml_of_older_timm_versions(tmp_path, capsys):
    old = tmp_path / 'old.yaml'
    old.write_text('model: resnet18\nnative_amp: true\napex_amp: false\namp_impl: native\naot_autograd: false\n')
    args, _ = parse_args(['-c', str(old)])
    assert args.amp is True and args.model == 'resnet18'  # --native-amp meant --amp
    old.write_text('apex_amp: true\n')
    with pytest.raises(SystemExit) as info:
        parse_args(['-c', str(old)])
    assert info.value.code == 2
    assert 'apex_amp: True is an option of an older timm that no longer exists' in capsys.readouterr().err


@pytest.mark.slow
def test_module_and_console_entry_points(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    # (`timm-stim train ...` dispatches to the same main: the fresh-install test below runs it.)
    proc = subprocess.run([sys.executable, '-m', 'timm_stim.training.train', '--help'], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and '--stim-subnets' in proc.stdout and '--model-ema' in proc.stdout
    proc = subprocess.run([sys.executable, '-m', 'timm_stim', '--help'], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0
    assert all(f'  {c} ' in proc.stdout for c in ('train', 'recipes', 'push', 'analyze', 'export', 'data'))


def _site_packages_of_this_interpreter():
    """The site-packages folders this interpreter imports from (a virtual environment's and its base's)."""
    return [p for p in sys.path if os.path.basename(p) in ('site-packages', 'dist-packages') and os.path.isdir(p)]


@pytest.mark.slow
def test_pip_install_gives_the_timm_stim_command_and_the_recipes(tmp_path):
    # A regular, non-editable install of this checkout into a fresh virtual environment: the
    # console script and the packaged recipes work from any folder. Everything comes from the
    # running environment, whether it is the base interpreter or a virtual environment made as the
    # README says: the wheel is built by its setuptools (the test extra requires one that builds
    # wheels), and the new environment imports its torch and timm through a .pth file.
    source = tmp_path / 'source'  # a copy: the build writes no build/ or egg-info into the checkout
    shutil.copytree(os.path.join(ROOT, 'timm_stim'), source / 'timm_stim',
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    for name in ('setup.py', 'setup.cfg', 'README.md'):
        shutil.copy(os.path.join(ROOT, name), source / name)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH',)}
    build = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index',
                            '-q', '-w', str(tmp_path / 'dist'), str(source)],
                           capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = glob.glob(str(tmp_path / 'dist' / 'timm_stim-*.whl'))
    env_dir = tmp_path / 'venv'
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = str(env_dir / 'bin' / 'python')
    install = subprocess.run([sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps', '--no-index',
                              '-q', wheel], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, env=env, timeout=120).stdout.strip()
    with open(os.path.join(site, 'running_environment.pth'), 'w') as f:  # read after the venv's own packages
        f.write('\n'.join(_site_packages_of_this_interpreter()) + '\n')
    command = str(env_dir / 'bin' / 'timm-stim')
    listing = subprocess.run([command, 'recipes'], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert listing.returncode == 0 and 'quickstart' in listing.stdout and 'resnet50_imagenet_stpp' in listing.stdout
    where = subprocess.run([python, '-c', 'import timm_stim.training.recipes as r; print(r.get_recipe("quickstart").path)'],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert str(env_dir) in where.stdout  # installed as package data, not read from this checkout
    usage = subprocess.run([command, 'train', '-c', 'quickstart', '--help'], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
    assert usage.returncode == 0 and '--stim-subnets' in usage.stdout
