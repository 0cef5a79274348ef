"""train_stim.py's parser: every option of timm's train.py, the same way, plus the timm_stim groups.

``tests/data/timm-train-flags.tsv`` is timm 1.0.x train.py's option table; each row is checked
against ``create_train_parser`` (option strings, dest, type, default, nargs, action, choices).
"""
import argparse
import ast
import os
from typing import Dict, List

import pytest
import yaml

from timm_stim.config import add_config_args as add_stim_args
from timm_stim.training.args import (INFORMATIONAL_CONFIG_KEYS, add_hub_args, add_recipe_args, add_run_args,
                            create_train_parser, parse_args)

TABLE = os.path.join(os.path.dirname(__file__), 'data', 'timm-train-flags.tsv')

# A valid command-line value of each type, and what it parses to.
SAMPLE_VALUE = {'int': ('7', 7), 'float': ('0.25', 0.25), 'str': ('abc', 'abc'), '': ('abc', 'abc')}


def _read_table() -> List[Dict[str, str]]:
    with open(TABLE) as f:
        lines = [line.rstrip('\n') for line in f if line.strip() and not line.startswith('#')]
    header = lines[0].split('\t')
    rows = []
    for line in lines[1:]:
        cells = line.split('\t')
        cells += [''] * (len(header) - len(cells))  # trailing empty cells may be stripped
        rows.append(dict(zip(header, cells)))
    return rows


ROWS = _read_table()


@pytest.fixture(scope='module')
def parser() -> argparse.ArgumentParser:
    return create_train_parser()[1]


@pytest.fixture(scope='module')
def defaults(parser) -> Dict[str, object]:
    return vars(parser.parse_args([]))


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    found = [a for a in parser._actions if a.dest == dest]
    assert len(found) == 1, f'{len(found)} actions with dest {dest!r}'
    return found[0]


def _same(a, b) -> bool:
    # 0 == 0.0 == False in Python: compare types too, recursively for lists.
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_table_is_read():
    assert len(ROWS) > 150
    assert len({r['dest'] for r in ROWS}) == len(ROWS)


def test_no_extra_options_outside_timm_stim_groups(parser):
    """Every option that is not timm's is one of timm_stim's (nothing invented by mistake)."""
    extra = {a.dest for a in parser._actions} - {r['dest'] for r in ROWS}
    ours = set()
    for add in (add_stim_args, add_recipe_args, add_run_args, add_hub_args):
        ours |= {a.dest for a in add(argparse.ArgumentParser(add_help=False))._actions}
    assert extra - ours == {'help', 'config'}
    assert ours & {r['dest'] for r in ROWS} == set()  # no timm option is redefined by a timm_stim group


@pytest.mark.parametrize('row', ROWS, ids=[r['dest'] for r in ROWS])
def test_option_matches_timm(row, parser, defaults):
    action = _action(parser, row['dest'])
    options = row['options'].split(',')

    # option strings (a bare name is a positional)
    if options == [row['dest']] and not options[0].startswith('-'):
        assert action.option_strings == []
    else:
        assert action.option_strings == options

    # default, as a Python value
    expected_default = ast.literal_eval(row['default'])
    assert _same(defaults[row['dest']], expected_default), (defaults[row['dest']], expected_default)
    assert _same(action.default, expected_default)

    # action, nargs, type, choices
    if row['action'] == 'storetrue':
        assert isinstance(action, argparse._StoreTrueAction)
    elif row['action'] == 'parsekwargs':
        assert type(action).__name__ == 'ParseKwargs' and type(action).__module__.startswith('timm.')
    else:
        assert row['action'] == 'store' and isinstance(action, argparse._StoreAction)
    expected_nargs = None if row['nargs'] == '' else int(row['nargs']) if row['nargs'].isdigit() else row['nargs']
    assert action.nargs == expected_nargs
    if row['action'] != 'parsekwargs':
        assert (action.type.__name__ if action.type else '') == row['type']
    assert (tuple(action.choices) if action.choices else ()) == tuple(c for c in row['choices'].split(',') if c)


@pytest.mark.parametrize('row', ROWS, ids=[r['dest'] for r in ROWS])
def test_option_parses(row, parser):
    """Each option string is accepted and a value of its type lands on its dest."""
    action = _action(parser, row['dest'])
    dest = row['dest']
    for option in action.option_strings or [None]:
        prefix = [option] if option else []
        if row['action'] == 'storetrue':
            assert getattr(parser.parse_args(prefix), dest) is True
        elif row['action'] == 'parsekwargs':
            got = getattr(parser.parse_args(prefix + ['a=1', 'b=x', 'c=[1, 2]']), dest)
            assert got == {'a': 1, 'b': 'x', 'c': [1, 2]}
        else:
            text, value = SAMPLE_VALUE[row['type']]
            if row['choices']:
                text = value = row['choices'].split(',')[-1]
            count = action.nargs if isinstance(action.nargs, int) else 2 if action.nargs in ('+', '*') else 1
            got = getattr(parser.parse_args(prefix + [text] * count), dest)
            expected = value if action.nargs in (None, '?') else [value] * count
            assert _same(got, expected), (option, got, expected)

    # typed options reject what is not of their type, choices reject values outside them
    if row['action'] == 'store' and (row['type'] in ('int', 'float') or row['choices']) and action.option_strings:
        count = action.nargs if isinstance(action.nargs, int) else 1
        with pytest.raises(SystemExit) as info:
            parser.parse_args([action.option_strings[0]] + ['x'] * count)
        assert info.value.code == 2


def test_timm_consts(parser):
    assert parser.parse_args(['--torchcompile']).torchcompile == 'inductor'
    assert parser.parse_args(['--torchcompile', 'eager']).torchcompile == 'eager'
    assert parser.parse_args(['/data/imagenet']).data == '/data/imagenet'
    assert parser.parse_args(['--dr', '0.5']).decay_rate == 0.5
    assert parser.parse_args(['--train-steps-per-epoch', '3']).train_batches_per_epoch == 3


def test_torchscript_and_torchcompile_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(['--torchscript', '--torchcompile'])
    assert info.value.code == 2
    assert 'not allowed with argument --torchscript' in capsys.readouterr().err


def test_stim_defaults_are_plain_timm():
    args, _ = parse_args([])
    assert args.stim_subnets == 0  # off, whatever the other --stim-* say
    assert (args.stim_space, args.stim_mode, args.stim_norm, args.stim_weight_sched, args.stim_bn) == \
        ('uniform', 'depth', 'none', 'const', 'freeze')
    assert (args.stim_amplitude, args.stim_temperature, args.stim_weight) == (1.0, 1.0, 1.0)
    assert (args.stim_min_scale, args.stim_max_scale) == (1.0, 1.0)  # subnetworks see full-size inputs
    assert (args.stim_start_epoch, args.stim_bn_recal) == (0, 0)
    assert (args.lighting_std, args.uniform_augment, args.uniform_augment_ops) == (0.0, False, 2)
    assert (args.lighting_mode, args.uniform_augment_variant) == ('tensor', 'trivialaugment')
    assert (args.stim_resize, args.stim_antialias, args.stim_weight_sched_step) == ('independent', None, 'batch')
    assert (args.push_to_hub, args.hub_private, args.hub_revision, args.hub_which) == (None, False, None, 'best')


def test_stim_options_parse():
    args, _ = parse_args([
        '--stim-subnets', '6', '--stim-space', '0,1,3,0', '--stim-mode', 'drop', '--stim-norm', 'all',
        '--stim-amplitude', '2', '--stim-temperature', '0.5', '--stim-weight', '3', '--stim-weight-sched', 'cos-up',
        '--stim-min-scale', '0.43', '--stim-max-scale', '1', '--stim-start-epoch', '5', '--stim-bn', 'update',
        '--stim-bn-recal', '2000', '--lighting-std', '0.1', '--uniform-augment', '--uniform-augment-ops', '3',
        '--push-to-hub', 'me/repo', '--hub-private', '--hub-revision', 'dev', '--hub-which', 'ema'])
    assert args.stim_subnets == 6 and args.stim_space == '0,1,3,0' and args.stim_mode == 'drop'
    assert args.stim_norm == 'all' and args.stim_amplitude == 2.0 and args.stim_temperature == 0.5
    assert args.stim_weight == 3.0 and args.stim_weight_sched == 'cos-up'
    assert (args.stim_min_scale, args.stim_max_scale, args.stim_start_epoch) == (0.43, 1.0, 5)
    assert args.stim_bn == 'update' and args.stim_bn_recal == 2000
    assert args.lighting_std == 0.1 and args.uniform_augment and args.uniform_augment_ops == 3
    assert (args.push_to_hub, args.hub_private, args.hub_revision, args.hub_which) == ('me/repo', True, 'dev', 'ema')


def test_reproduction_options_parse():
    args, _ = parse_args(['--stim-resize', 'official', '--no-stim-antialias', '--stim-weight-sched-step', 'epoch',
                          '--lighting-mode', 'pil-uint8', '--uniform-augment-variant', 'lim2020'])
    assert (args.stim_resize, args.stim_antialias, args.stim_weight_sched_step) == ('official', False, 'epoch')
    assert (args.lighting_mode, args.uniform_augment_variant) == ('pil-uint8', 'lim2020')
    assert parse_args(['--stim-antialias'])[0].stim_antialias is True


@pytest.mark.parametrize('argv', [['--stim-mode', 'blocks'], ['--stim-norm', 'yes'], ['--stim-subnets', '1.5'],
                                  ['--hub-which', 'first'], ['--stim-weight-sched', 'cos'],
                                  ['--stim-resize', 'compound'], ['--stim-weight-sched-step', 'update'],
                                  ['--lighting-mode', 'official'], ['--uniform-augment-variant', 'ta']])
def test_stim_bad_values_refused(argv):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2


def test_help_shows_timm_stim_groups_apart(parser):
    titles = [g.title for g in parser._action_groups]
    for title in ('Dataset parameters', 'Model parameters', 'Optimizer parameters',
                  'Learning rate schedule parameters', 'Augmentation and regularization parameters',
                  'Batch norm parameters', 'Model exponential moving average parameters',
                  'Miscellaneous parameters', 'Stimulative training'):
        assert title in titles
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    assert {d for d in groups['Stimulative training']} == {
        a.dest for a in parser._actions if a.dest.startswith('stim_')}
    assert not any(d.startswith(('stim_', 'hub_', 'lighting', 'uniform')) for d in groups['Model parameters'])
    # every option has a help string
    assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]


def test_yaml_config_sets_defaults_and_command_line_wins(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('batch_size: 32\nstim_subnets: 6\nstim_space: stpp\nlr: 0.2\nmean: [0.5, 0.5, 0.5]\n')
    args, text = parse_args(['-c', str(cfg), '--lr', '0.5', '--stim-space', 'uniform'])
    assert args.batch_size == 32 and args.stim_subnets == 6 and args.mean == [0.5, 0.5, 0.5]
    assert args.lr == 0.5 and args.stim_space == 'uniform'  # command line beats the file
    assert args.config == str(cfg)
    dumped = yaml.safe_load(text)
    assert dumped['batch_size'] == 32 and dumped['lr'] == 0.5
    assert dumped == {k: v for k, v in vars(args).items() if k != 'config'}  # as timm: the -c file is no option


def test_empty_config_changes_nothing(tmp_path):
    cfg = tmp_path / 'empty.yaml'
    cfg.write_text('# nothing\n')
    args, _ = parse_args(['-c', str(cfg)])
    assert args.batch_size == 128 and args.stim_subnets == 0


def test_args_yaml_round_trip(tmp_path):
    """An output's args.yaml (with train_stim's informational keys) reproduces the run via -c."""
    args, text = parse_args(['--stim-subnets', '2', '--model', 'resnet18', '--model-kwargs', 'a=1'])
    extra = {k: 1 for k in INFORMATIONAL_CONFIG_KEYS}
    extra['stim_resolved'] = {'enabled': True}
    cfg = tmp_path / 'args.yaml'
    cfg.write_text(text + yaml.safe_dump(extra))
    again, _ = parse_args(['-c', str(cfg)])
    assert again.stim_subnets == 2 and again.model == 'resnet18' and again.model_kwargs == {'a': 1}
    assert not hasattr(again, 'stim_resolved')
    assert {k: v for k, v in vars(again).items() if k != 'config'} == \
        {k: v for k, v in vars(args).items() if k != 'config'}


def test_unknown_yaml_key_refused(tmp_path, capsys):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text('batch_sise: 32\nstim-subnets: 2\nlr: 0.1\n')
    with pytest.raises(SystemExit) as info:
        parse_args(['-c', str(cfg)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and 'Traceback' not in err
    assert "'batch_sise' (did you mean 'batch_size'?)" in err
    assert "'stim-subnets' (did you mean 'stim_subnets'?)" in err
    assert "'lr'" not in err


def test_missing_config_refused(tmp_path, capsys):
    path = tmp_path / 'nope.yaml'
    with pytest.raises(SystemExit) as info:
        parse_args(['-c', str(path), '--epochs', '1'])
    assert info.value.code == 2
    assert str(path) in capsys.readouterr().err


def test_config_not_a_mapping_refused(tmp_path, capsys):
    cfg = tmp_path / 'list.yaml'
    cfg.write_text('- batch_size\n')
    with pytest.raises(SystemExit) as info:
        parse_args(['--config', str(cfg)])
    assert info.value.code == 2 and 'mapping' in capsys.readouterr().err


def test_unknown_command_line_option_refused(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(['--stim-subnet-count', '2'])
    assert info.value.code == 2 and '--stim-subnet-count' in capsys.readouterr().err
