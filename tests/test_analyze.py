"""python -m timm_stim analyze: subnetworks of checkpoints on the embedded digits (CPU, random weights)."""
import argparse
import csv

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import save_for_hf

import timm_stim
from timm_stim.tools.analyze import (CSV_COLUMNS, analysis_subnets, checkpoint_labels, count_flops, evaluate_subnets,
                               main, preserved_bn_stats, recalibrate_bn)

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
DATA = ['--dataset', 'embedded/digits', '--input-size', '3', '16', '16', '--mean', '0.5', '0.5', '0.5',
        '--std', '0.5', '0.5', '0.5', '-b', '128', '--workers', '0', '--device', 'cpu']


def _model(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model('resnet18', num_classes=10)
    with torch.no_grad():  # BN statistics unlike the defaults, so using or restoring them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _read(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_analyze_checkpoints_of_every_kind(tmp_path, capsys):
    pth, st, hub_dir = tmp_path / 'a' / 'model.pth.tar', tmp_path / 'b.safetensors', tmp_path / 'c'
    pth.parent.mkdir()
    torch.save({'state_dict': _model(0).state_dict(), 'epoch': 3}, pth)
    save_file(_model(1).state_dict(), str(st))
    save_for_hf(_model(2), str(hub_dir), safe_serialization=True)
    out = tmp_path / 'out'
    # --num-classes is left out: it is read from the checkpoints' classifiers.
    rc = main([str(pth), str(st), f'local-dir:{hub_dir}', '--model', 'resnet18', '--subnets', '3',
               '--bn-recal', '64', '--out', str(out), *DATA])
    assert rc == 0
    rows = _read(out / 'analyze.csv')
    # 3 checkpoints x (full + 4 droppable blocks of resnet18's (2, 2, 2, 2) + 3 sampled)
    assert len(rows) == 3 * (1 + 4 + 3)
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [r['label'] for r in rows[::8]] == ['model.pth.tar', 'b.safetensors', 'local-dir:c']
    for label in {r['label'] for r in rows}:
        mine = [r for r in rows if r['label'] == label]
        assert [r['kind'] for r in mine] == ['full'] + ['drop1'] * 4 + ['sampled'] * 3
        full = mine[0]
        assert full['depths'] == '2,2,2,2' and full['bn_recal_images'] == '0'
        assert sorted(r['depths'] for r in mine[1:5]) == ['1,2,2,2', '2,1,2,2', '2,2,1,2', '2,2,2,1']
        assert all(int(r['bn_recal_images']) == 64 for r in mine[1:])
        assert all(int(full['flops']) > int(r['flops']) for r in mine[1:] if r['depths'] != '2,2,2,2')
        assert all(0 <= float(r['top1']) <= float(r['top5']) <= 100 for r in mine)
    with open(out / 'analyze.png', 'rb') as f:
        assert f.read(8) == PNG_MAGIC
    captured = capsys.readouterr()
    printed = captured.out
    assert '--subnets is deprecated; use --samples' in captured.err  # the former names still work
    assert '[24/24]' in printed and '| checkpoint | full top-1 |' in printed and 'b.safetensors' in printed


def test_subnet_evaluation_leaves_the_model_unchanged():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stim = timm_stim.attach(model, bn='update')
    g = torch.Generator().manual_seed(0)
    val = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    recal = [(torch.randn(8, 3, 16, 16, generator=g), torch.zeros(8, dtype=torch.long))]
    plan = analysis_subnets(stim, 2, seed=0)
    results = evaluate_subnets(model, val, plan, recal_batches=recal, input_size=(3, 16, 16))
    again = evaluate_subnets(model, val, plan, recal_batches=recal, input_size=(3, 16, 16))
    assert results == again  # deterministic: the same recal images for every subnetwork
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # A subnetwork's re-estimated statistics are not the checkpoint's.
    with preserved_bn_stats(model), stim.activate(plan[1][1]):
        assert recalibrate_bn(model, recal, 8, torch.device('cpu')) == 8
        assert not torch.equal(model.bn1.running_mean, before['bn1.running_mean'])
    assert torch.equal(model.bn1.running_mean, before['bn1.running_mean'])
    assert count_flops(model, (3, 16, 16)) == results[0].flops > results[1].flops


@pytest.mark.parametrize('space, mode', [('stpp', 'depth'), ('uniform', 'depth'), ('uniform', 'drop')])
def test_space_size_counts_every_subnetwork_sample_can_draw(space, mode):
    # resnet34's stages of 3, 4, 6, 3 blocks: stpp in depth mode is 1 * 2 * 4 * 1 networks,
    # uniform 3 * 4 * 6 * 3 (depth) or 4 * 8 * 32 * 4 (drop: any blocks other than block 0).
    model = timm.create_model('resnet34', num_classes=10, pretrained=False)
    stim = timm_stim.attach(model, space=space, mode=mode)
    expected = {('stpp', 'depth'): 8, ('uniform', 'depth'): 216, ('uniform', 'drop'): 4096}[(space, mode)]
    assert stim.space_size() == expected
    if expected <= 216:  # every network is drawn, and no other
        g = torch.Generator().manual_seed(0)
        assert len({stim.sample(g) for _ in range(40 * expected)}) == expected


def test_distinct_draws_are_different_subnetworks_and_never_the_full_one():
    model = timm.create_model('resnet34', num_classes=10, pretrained=False)
    stim = timm_stim.attach(model, space='stpp')
    plain = [s for kind, s in analysis_subnets(stim, 16, seed=42) if kind == 'sampled']
    assert len(plain) == 16 and len(set(plain)) < 16  # by default draws repeat, as in training
    sampled = [s for kind, s in analysis_subnets(stim, 16, seed=42, distinct=True) if kind == 'sampled']
    # The stpp space holds 8 networks: asked for 16, the 7 that are not the full network.
    assert len(sampled) == len(set(sampled)) == 7 and stim.full() not in sampled
    uniform = timm_stim.attach(timm.create_model('resnet34', num_classes=10), space='uniform')
    sampled = [s for kind, s in analysis_subnets(uniform, 16, seed=42, distinct=True) if kind == 'sampled']
    assert len(set(sampled)) == 16 and uniform.full() not in sampled
    # Deterministic: the same draws for every checkpoint of the architecture.
    assert sampled == [s for k, s in analysis_subnets(uniform, 16, seed=42, distinct=True) if k == 'sampled']


@pytest.mark.slow
def test_analyze_distinct_scores_each_subnetwork_of_a_small_space_once(tmp_path):
    ckpt = tmp_path / 'model.pth.tar'
    torch.save({'state_dict': _model(0).state_dict()}, ckpt)
    rc = main([str(ckpt), '--model', 'resnet18', '--stim-space', 'stpp', '--samples', '16', '--distinct',
               '--stim-bn-recal', '0', '--out', str(tmp_path / 'out'), *DATA])
    assert rc == 0
    sampled = [r['depths'] for r in _read(tmp_path / 'out' / 'analyze.csv') if r['kind'] == 'sampled']
    space = timm_stim.attach(_model(0), space='stpp')
    # Every network of the space but the full one, each once (resnet18's stpp space is small).
    assert len(sampled) == len(set(sampled)) == space.space_size() - 1 < 16 and '2,2,2,2' not in sampled


def test_labels_tell_checkpoints_apart():
    assert checkpoint_labels(['x/stpp/model_best.pth.tar', 'x/base/model_best.pth.tar']) == [
        'stpp/model_best.pth.tar', 'base/model_best.pth.tar']
    assert checkpoint_labels(['a.pth', 'hf-hub:u/r']) == ['a.pth', 'hf-hub:u/r']


@pytest.mark.parametrize('extra, message', [
    (['--samples', '-1'], '--samples -1: expected a number of sampled subnetworks >= 0'),
    (['--stim-bn-recal', '-5'], '--stim-bn-recal -5: expected a number of images >= 0'),
    (['--stim-space', 'bogus'], "Unknown space 'bogus'"),
    (['--stim-space', ' '], "--stim-space ' ': expected uniform, stpp, keep:K"),  # StimConfig's check, as training's
    # the former names, deprecated aliases: the same checks, reported with the new names
    (['--stim-subnets', '-1'], '--samples -1: expected a number of sampled subnetworks >= 0'),
    (['--subnets', '-1'], '--samples -1: expected a number of sampled subnetworks >= 0'),
    (['--bn-recal', '-5'], '--stim-bn-recal -5: expected a number of images >= 0'),
    (['--space', 'bogus'], "Unknown space 'bogus'"),
    (['--labels', 'a,b'], 'gives 2 names for 1 checkpoints'),
    (['--model', 'resnet1888'], "'resnet1888' is not a timm model"),
    (['--num-classes', '7'], 'does not fit --model resnet18 with 7 classes'),
    # issue 27: a stated bound, before any work; a token never echoed; an --out that cannot be written
    (['--samples', '1000000000000'], '--samples 1000000000000: expected a number of sampled subnetworks '
                                     '>= 0 and <= 1000'),
    (['--stim-subnets', '1000000000000'], '--samples 1000000000000: expected a number of sampled subnetworks '
                                          '>= 0 and <= 1000'),
    (['--out', '/proc/timm-stim-analysis'], "--out '/proc/timm-stim-analysis' cannot be written"),
])
def test_bad_arguments_are_refused_before_evaluation(tmp_path, caplog, extra, message):
    ckpt = tmp_path / 'm.pth.tar'
    torch.save(_model().state_dict(), ckpt)
    args = [str(ckpt), '--model', 'resnet18', *DATA, '--out', str(tmp_path / 'out'), *extra]
    _refused(args, message, caplog)
    assert not (tmp_path / 'out').exists()


def _refused(argv, message, caplog):
    caplog.clear()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in caplog.text, caplog.text


def test_missing_checkpoint_and_data_are_refused(tmp_path, caplog):
    _refused([str(tmp_path / 'none.pth.tar'), '--model', 'resnet18', *DATA, '--out', str(tmp_path / 'o')],
             f'{tmp_path / "none.pth.tar"}: no such file; expected a checkpoint', caplog)
    ckpt = tmp_path / 'm.pth.tar'
    torch.save(_model().state_dict(), ckpt)
    _refused([str(ckpt), '--model', 'resnet18', '--data-dir', str(tmp_path / 'nodata'), '--out', str(tmp_path / 'o')],
             'nodata', caplog)
    _refused([str(ckpt), *DATA, '--out', str(tmp_path / 'o')], '--model is required', caplog)  # nor args.yaml
    assert not (tmp_path / 'o').exists()


def test_amp_channels_last_and_val_num_samples_are_honoured(tmp_path):
    """--amp evaluates in bfloat16 on CPU, --channels-last feeds channels_last inputs, --val-num-samples counts."""
    ckpt = tmp_path / 'm.pth.tar'
    torch.save(_model().state_dict(), ckpt)
    seen = []  # (output dtype, batch, input channels_last) of every classifier / stem call

    def hook(module, inputs, output):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and inputs[0].shape[0] > 1:
            seen.append((type(module).__name__, output.dtype, inputs[0].shape[0],
                         inputs[0].dim() == 4 and inputs[0].is_contiguous(memory_format=torch.channels_last)))
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        assert main([str(ckpt), '--model', 'resnet18', '--samples', '0', '--stim-bn-recal', '0', '--amp',
                     '--channels-last', '--val-num-samples', '40', '--out', str(tmp_path / 'out'), *DATA]) == 0
    finally:
        handle.remove()
    heads = [s for s in seen if s[0] == 'Linear']
    assert {dtype for _, dtype, _, _ in heads} == {torch.bfloat16}
    assert sum(batch for _, _, batch, _ in heads) == 5 * 40  # full + 4 one-block-removed networks, 40 images each
    assert all(cl for name, _, _, cl in seen if name == 'Conv2d')
    assert len(_read(tmp_path / 'out' / 'analyze.csv')) == 5


def test_every_train_option_can_be_shared():
    """copy_train_options finds every option of train_stim.py (its parser records them with public calls)."""
    from timm_stim.timm_options import copy_train_options
    from timm_stim.training.args import create_train_parser
    options = [s for a in create_train_parser()[1]._actions for s in a.option_strings if s not in ('-h', '--help')]
    assert len(options) > 200
    parser = argparse.ArgumentParser()
    actions = copy_train_options(parser, options, 'all of them')
    assert set(actions) == set(options)
    args = parser.parse_args(['--torchscript', '-b', '7', '--stim-space', 'stpp'])  # one of an exclusive pair, ...
    assert (args.torchscript, args.batch_size, args.stim_space) == (True, 7, 'stpp')
    assert actions['-b'] is actions['--batch-size']


def test_amp_dtype_rule_shared_with_training(caplog):
    """One rule for --amp-dtype, in training and analyze: bfloat16 on CPU (float16 autocast is CUDA's)."""
    import logging
    from timm_stim.devices import resolve_amp_dtype
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert resolve_amp_dtype('bfloat16', cuda) == torch.bfloat16 and resolve_amp_dtype('float16', cuda) == torch.float16
    assert resolve_amp_dtype('bfloat16', cpu) == torch.bfloat16
    caplog.set_level(logging.INFO)
    assert resolve_amp_dtype('float16', cpu) == torch.bfloat16 and caplog.text == ''  # no logger: says nothing
    assert resolve_amp_dtype('float16', cpu, logging.getLogger('train_stim')) == torch.bfloat16
    assert 'AMP on CPU uses bfloat16' in caplog.text


def test_option_names_are_train_stims_and_former_names_are_deprecated_aliases(capsys):
    from timm_stim.tools.analyze import create_analyze_parser
    parser = create_analyze_parser()
    new = parser.parse_args(['x.pth', '--samples', '3', '--stim-bn-recal', '64', '--stim-space', 'stpp',
                             '--stim-mode', 'drop'])
    assert capsys.readouterr().err == ''  # the new names say nothing
    old = parser.parse_args(['x.pth', '--subnets', '3', '--bn-recal', '64', '--space', 'stpp', '--mode', 'drop'])
    assert vars(old) == vars(new)
    notes = capsys.readouterr().err.splitlines()
    per_step = 'subnetworks sampled per checkpoint; in train_stim.py --stim-subnets means subnetworks per step'
    assert notes == [f'python -m timm_stim analyze: --subnets is deprecated; use --samples ({per_step}).'] + [
        f'python -m timm_stim analyze: --{name} is deprecated; use --stim-{name} (same meaning, as in train_stim.py).'
        for name in ('bn-recal', 'space', 'mode')]
    # analyze's --stim-subnets was its sample count: it still is, with a note that names the new option.
    assert vars(parser.parse_args(['x.pth', '--stim-subnets', '3', '--stim-bn-recal', '64', '--stim-space', 'stpp',
                                   '--stim-mode', 'drop'])) == vars(new)
    assert capsys.readouterr().err.splitlines() == [
        f'python -m timm_stim analyze: --stim-subnets is deprecated; use --samples ({per_step}).']
    defaults = parser.parse_args(['x.pth'])
    assert (defaults.samples, defaults.stim_bn_recal, defaults.stim_space, defaults.stim_mode) == (
        64, 1000, 'uniform', 'depth')
    for argv in (['--mode', 'bogus'], ['--stim-mode', 'bogus']):  # the alias checks as the new option does
        with pytest.raises(SystemExit):
            parser.parse_args(['x.pth', *argv])
        assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert '--subnets' not in parser.format_usage() and '--stim-subnets' not in parser.format_usage()  # hidden
    assert 'formerly --stim-subnets and --subnets' in parser.format_help()  # the new option's help names them


def test_command_line_dispatch(tmp_path):
    from timm_stim.__main__ import main as dispatch
    with pytest.raises(SystemExit) as e:
        dispatch(['analyze', '--help'])
    assert e.value.code == 0


def test_options_shared_with_train_stim_have_its_names_and_defaults():
    from timm_stim.tools.analyze import create_analyze_parser
    from timm_stim.training.args import create_train_parser
    from timm_stim.tools.export import create_export_parser
    train = {a.dest: a for a in create_train_parser()[1]._actions}
    # --model and --device differ on purpose: no default architecture, and cpu where there is no GPU.
    # analyze's --stim-bn-recal counts images per subnetwork (training's: before each validation), so its default
    # differs; its name, type and check are training's (checked below).
    own = ('help', 'model', 'device', 'stim_bn_recal')
    for parser in (create_analyze_parser(), create_export_parser()):
        visible = [a for a in parser._actions if a.help != argparse.SUPPRESS]  # not the deprecated aliases
        shared = [a for a in visible if a.dest in train and a.dest not in own]
        assert len(shared) >= 5
        for action in shared:
            assert (action.option_strings, action.default, action.type, action.nargs, action.choices) == (
                train[action.dest].option_strings, train[action.dest].default, train[action.dest].type,
                train[action.dest].nargs, train[action.dest].choices), action.dest
        for action in visible:
            if action.dest in own[3:]:
                assert (action.option_strings, action.type, action.metavar) == (
                    train[action.dest].option_strings, train[action.dest].type, train[action.dest].metavar)
    analyze = {a.dest for a in create_analyze_parser()._actions if a.help != argparse.SUPPRESS}
    assert {'samples', 'stim_bn_recal', 'stim_space', 'stim_mode'} <= analyze
    # One name, one meaning: analyze's sample count is not training's --stim-subnets (subnetworks per step).
    assert 'stim_subnets' not in analyze


def test_a_token_given_to_analyze_is_never_echoed(tmp_path, capsys):
    secret = 'hf_' + 'Q7' * 17
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / 'm.pth.tar'), '--model', 'resnet18', '--token', secret])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'unrecognized arguments: --token ***' in err and secret not in err and secret[:10] not in err


@pytest.mark.parametrize('flags, which', [([], 'state_dict_ema'), (['--use-ema'], 'state_dict_ema'),
                                          (['--no-use-ema'], 'state_dict')])
def test_analyze_takes_the_weights_of_the_ema_choice(tmp_path, flags, which):
    """analyze follows timm's rule (the EMA weights when the checkpoint holds them) unless told otherwise."""
    from timm_stim.tools.analyze import create_analyze_parser
    from timm_stim.tools.checkpoints import load_model
    weights = {k: timm.create_model('test_resnet', num_classes=3).state_dict() for k in ('state_dict', 'state_dict_ema')}
    torch.save(weights, tmp_path / 'run.pth.tar')
    args = create_analyze_parser().parse_args([str(tmp_path / 'run.pth.tar'), '--model', 'test_resnet', *flags])
    loaded = load_model(args.checkpoints[0], args.model, use_ema=args.use_ema)
    assert loaded.use_ema == (which == 'state_dict_ema')
    assert all(torch.equal(v, weights[which][k]) for k, v in loaded.model.state_dict().items())
