"""Shipped recipes: each paper recipe means its row's command of the authors, and every recipe runs."""
import contextlib
import glob
import io
import os
import shlex

import pytest
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, optimizer_kwargs

from timm_stim.training.args import parse_args
from timm_stim.training.recipes import get_recipe, list_recipes, main as recipes_main
from timm_stim.training.train import create_train_model, create_train_task, main as train_main
from timm_stim.training.stim import StimTraining, train_input_sizes
from helpers import save_tiny_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, 'hparams', '*.yaml')))
PAPER_RECIPES = [r.name for r in list_recipes() if r.command]

# The options of the authors' train.py that their README commands use, with the script's defaults.
AUTHORS_DEFAULTS = dict(
    exp='', epoch=200, kl_coef=1.0, multi_Snet=1, norm_kd=False, amplitude=1.0, Temp=1.0, Snet_Dtrans=False,
    Dtrans='Dtrans7', val_resize_size=256, val_crop_size=224, train_crop_size=224, mini_size=0.43,
    sample_space='default', train_trans='default', lr=0.2, weight_decay=1e-4, batch_size=512, jitter_coef=0.4,
    light_coef=0.1, no_rebn=False)
# Their sample() spaces for ResNet-50 as our largest drops per stage.
AUTHORS_SPACES = {'default': 'uniform', 'space3': '0,1,3,0'}




def _authors_args(command: str) -> dict:
    """The authors' argparse result for one README command (only the options above)."""
    tokens = shlex.split(command)
    assert tokens[:2] == ['python', 'train.py'], command
    args = dict(AUTHORS_DEFAULTS)
    i = 2
    while i < len(tokens):
        key, _, value = tokens[i][2:].partition('=')
        assert tokens[i].startswith('--') and key in args, f'unknown option {tokens[i]!r} in {command!r}'
        if isinstance(args[key], bool):
            value = True
        elif not value:
            i += 1
            value = tokens[i]
        args[key] = value if isinstance(args[key], bool) else type(args[key])(value)
        i += 1
    return args


def test_every_paper_row_has_a_recipe():
    assert PAPER_RECIPES == [
        'resnet50_imagenet_ct', 'resnet50_imagenet_st', 'resnet50_imagenet_st_norm',
        'resnet50_imagenet_st_norm_snet6', 'resnet50_imagenet_st_norm_snet6_dtrans7', 'resnet50_imagenet_stpp',
        'resnet50_imagenet_stpp_ua400']
    assert get_recipe('resnet50_imagenet_stpp').published.startswith('80.50 top-1')
    assert get_recipe('resnet50_imagenet_stpp_ua400').published.startswith('80.97 top-1')


@pytest.mark.parametrize('name', PAPER_RECIPES)
def test_recipe_means_the_authors_command(name):
    theirs = _authors_args(get_recipe(name).command)
    ours, _ = parse_args(['-c', name])
    # Sizes: crop and validation resize / crop.
    train_size = ours.train_img_sizes[0] if ours.train_img_sizes else ours.input_size[-1]
    assert train_size == theirs['train_crop_size']
    assert ours.input_size == [3, theirs['val_crop_size'], theirs['val_crop_size']]
    assert ours.crop_pct == pytest.approx(theirs['val_crop_size'] / theirs['val_resize_size'], abs=1e-9)
    assert int(theirs['val_crop_size'] / ours.crop_pct) == theirs['val_resize_size']  # timm's floor(224 / crop_pct)
    # Optimization: 2 processes x batch_size, SGD Nesterov, decay on every parameter, cosine per update.
    assert 2 * ours.batch_size == theirs['batch_size']
    assert (ours.epochs, ours.lr, ours.weight_decay) == (theirs['epoch'], theirs['lr'], theirs['weight_decay'])
    assert ours.opt in ('sgd', 'nesterov') and ours.momentum == 0.9 and ours.opt_kwargs == {'filter_bias_and_bn': False}
    assert (ours.sched, ours.sched_on_updates, ours.warmup_epochs, ours.min_lr, ours.cooldown_epochs) == \
        ('cosine', True, 0, 0.0, 0)
    assert ours.model == 'resnet50' and ours.model_kwargs == {'zero_init_last': False}
    assert not ours.amp and ours.smoothing == 0 and ours.mixup == 0 and ours.cutmix == 0 and ours.reprob == 0
    assert not ours.model_ema and ours.aa is None and ours.drop_path is None and ours.clip_grad is None
    # Data: their train transform and ImageNet normalization.
    assert (ours.scale, ours.hflip, ours.color_jitter) == ([0.08, 1.0], 0.5, theirs['jitter_coef'])
    assert ours.ratio == pytest.approx([3 / 4, 4 / 3])
    assert (ours.interpolation, ours.train_interpolation) == ('bilinear', 'bilinear')
    assert (ours.mean, ours.std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert (ours.lighting_std, ours.lighting_mode) == (theirs['light_coef'], 'pil-uint8')
    assert ours.uniform_augment == (theirs['train_trans'] == 'with_UA')
    if ours.uniform_augment:
        assert (ours.uniform_augment_variant, ours.uniform_augment_ops) == ('trivialaugment', 2)
    # BN re-estimation before every validation (their default), CT included.
    assert ours.stim_bn_recal == (0 if theirs['no_rebn'] else 2000)
    # Stimulative training.
    if theirs['kl_coef'] == 0:
        assert ours.stim_subnets == 0  # a zero-weight subnetwork pass changes no weight
        return
    assert ours.stim_subnets == theirs['multi_Snet'] and ours.stim_weight == theirs['kl_coef']
    assert ours.stim_norm == ('all' if theirs['norm_kd'] else 'none')
    assert (ours.stim_amplitude, ours.stim_temperature) == (theirs['amplitude'], theirs['Temp'])
    assert ours.stim_space == AUTHORS_SPACES[theirs['sample_space']] and ours.stim_mode == 'depth'
    assert ours.stim_bn == 'update' and ours.stim_weight_sched == 'const' and ours.stim_start_epoch == 0
    if theirs['Snet_Dtrans']:
        assert theirs['Dtrans'] == 'Dtrans7'
        assert (ours.stim_min_scale, ours.stim_max_scale, ours.stim_resize) == (theirs['mini_size'], 1.0, 'official')
        assert ours.stim_antialias in (None, False)
    else:
        assert (ours.stim_min_scale, ours.stim_max_scale) == (1.0, 1.0)


def test_paper_recipe_init_and_weight_decay_are_the_authors():
    args, _ = parse_args(['-c', 'resnet50_imagenet_stpp'])
    torch.manual_seed(0)
    model = create_train_model(args)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)  # no zero-init of last BNs
    for m in model.modules():
        if isinstance(m, nn.Conv2d):  # N(0, sqrt(2 / (k * k * out_channels)))
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            assert m.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.01) and torch.all(model.fc.bias == 0)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert len(group['params']) == len(list(model.parameters()))
    assert (group['weight_decay'], group['momentum'], group['nesterov'], group['lr']) == (1e-4, 0.9, True, 0.2)


def _create_task(args):
    from timm.data import resolve_data_config
    model = create_train_model(args)
    data_config = resolve_data_config(vars(args), model=model, verbose=False)
    stim = StimTraining(args)
    stim.prepare_model(model, train_input_sizes(args, data_config['input_size']))
    return create_train_task(args, model, nn.CrossEntropyLoss(), torch.device('cpu'), data_config, stim)


def test_training_script_passes_the_reproduction_options_to_the_task():
    args, _ = parse_args(['-c', 'resnet50_imagenet_stpp', '--mean', '0.5', '0.4', '0.3', '--std', '0.2', '0.25', '0.3',
                          '--stim-weight-sched', 'cos-up', '--stim-weight-sched-step', 'epoch'])
    args.model_kwargs = dict(args.model_kwargs, channels=(8, 16, 32, 64), stem_width=8)
    args.rank = 0  # set by timm's init_distributed_device in a run
    task = _create_task(args)
    assert (task.resize, task.antialias, task.min_scale, task.num_subnets) == ('official', False, 0.43, 6)
    assert (task.input_mean, task.input_std) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))  # --mean / --std
    assert (task.weight_sched, task.weight_sched_step) == ('cos-up', 'epoch')
    args, _ = parse_args(['-c', 'resnet50_imagenet_st_norm_snet6_dtrans7', '--stim-resize', 'independent'])
    args.model_kwargs = dict(args.model_kwargs, channels=(8, 16, 32, 64), stem_width=8)
    args.rank = 0
    task = _create_task(args)
    assert (task.resize, task.antialias) == ('independent', True)  # antialiased unless --no-stim-antialias


def test_recipes_command_lists_published_numbers_and_commands():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert recipes_main([]) == 0
    text = out.getvalue()
    for recipe in list_recipes():
        assert f'{recipe.name}: ' in text
    assert '80.50 top-1' in text and '80.97 top-1' in text
    assert text.count("authors' command: python train.py") == len(PAPER_RECIPES)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert recipes_main(['resnet50_imagenet_stpp']) == 0
    with open(get_recipe('resnet50_imagenet_stpp').path) as f:
        assert out.getvalue() == f.read()
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()):
        recipes_main(['resnet50_imagenet_nope'])
    assert info.value.code == 2


def test_recipe_by_name_equals_recipe_by_path():
    by_name, _ = parse_args(['-c', 'resnet50_imagenet_stpp_ua400'])
    by_path, _ = parse_args(['-c', os.path.join(ROOT, 'hparams', 'resnet50_imagenet_stpp_ua400.yaml')])
    assert {k: v for k, v in vars(by_name).items() if k != 'config'} == \
        {k: v for k, v in vars(by_path).items() if k != 'config'}


@pytest.mark.slow
@pytest.mark.parametrize('recipe', RECIPES, ids=[os.path.basename(r) for r in RECIPES])
def test_every_recipe_runs(tmp_path, recipe):
    # The recipe's own settings, with data, size, length and hardware overridden. ResNets run at
    # 1/8 of their widths (the recipe's model_kwargs kept): full-width ResNet-50 steps take
    # seconds each on a CPU; its init is checked above.
    recipe_args, _ = parse_args(['-c', recipe])
    model_kwargs = [f'{k}={v!r}' for k, v in recipe_args.model_kwargs.items()]
    if recipe_args.model.startswith('resnet'):
        model_kwargs += ['channels=(8, 16, 32, 64)', 'stem_width=8']
    model = []
    if recipe_args.pretrained:  # a fine-tuning recipe: its pretrained weights from a local folder, as small
        model, model_kwargs = ['--model', f'local-dir:{save_tiny_pretrained(tmp_path / "pretrained")}'], []
    overrides = ['-c', recipe, '--dataset', 'embedded/digits', '--data-dir', '', '--num-classes', '10',
                 '--input-size', '3', '16', '16', '--train-img-sizes', '16', '-b', '8', '--epochs', '1',
                 '--train-batches-per-epoch', '2', '--workers', '0', '--device', 'cpu', '--no-prefetcher',
                 '--output', str(tmp_path), '--experiment', 'r', '--stim-bn-recal', '16', *model,
                 *(['--model-kwargs', *model_kwargs] if model_kwargs else [])]
    result = train_main(overrides)
    assert os.path.exists(os.path.join(result['output_dir'], 'model_best.pth.tar'))
    assert result['epochs'][0]['validation'] is not None
    if recipe_args.stim_subnets > 0:
        assert 'stim_kl' in result['epochs'][0]['train']
