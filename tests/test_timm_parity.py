"""With --stim-subnets 0 and --seed-scheme timm, train_stim.py is timm's train.py.

tests/data/timm_parity/records.json holds what timm's own train.py printed and wrote for each
configuration (see record.py there; timm's pip package ships no train.py to run here). Each test
runs train_stim.py with the same options and compares: every summary.csv value, args.yaml, the
--result JSON and the format of every Train:/Test: log line. It fails when timm's behaviour or
formats move away from the record, or ours from timm's. Both run with record.PINNED_ENV (one
thread, AVX2 kernels): it removes the kernel and thread-count differences between x86-64
machines that made records made on one CI machine fail on the next.
"""
import json
import os
import re
import sys

import pytest
import timm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'data', 'timm_parity'))
import record  # noqa: E402

with open(os.path.join(HERE, 'data', 'timm_parity', 'records.json')) as f:
    RECORDS = json.load(f)

TRAIN_STIM = os.path.join(HERE, '..', 'train_stim.py')

# Equal bit for bit where recorded; the tolerance leaves room for the last bits of a libm or
# compiler difference, far below what a changed step, schedule or augmentation moves.
REL = 1e-4


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from timm_stim.datasets import materialize_embedded
    work = tmp_path_factory.mktemp('parity')
    return materialize_embedded('digits', str(work / 'cache')), record.make_teacher(str(work / 'teacher'))


def _numbers(values):
    return [float(v) for v in values]


# A log line with its numbers replaced by a placeholder: the format, not the values (timings vary,
# and so does the padding of right-aligned numbers).
def _shape(line):
    return re.sub(r' +', ' ', re.sub(r'-?\d+(\.\d+)?(e[-+]\d+)?', '#', line))


def test_record_is_for_the_installed_timm():
    assert RECORDS['timm_version'] == timm.__version__, (
        f'records.json was made with timm {RECORDS["timm_version"]}, timm {timm.__version__} is installed: '
        f'run tests/data/timm_parity/record.py with that version\'s train.py.')
    assert RECORDS['common'] == record.COMMON and set(RECORDS['configs']) == set(record.CONFIGS)
    assert RECORDS['env'] == record.PINNED_ENV


@pytest.mark.slow
@pytest.mark.parametrize('name', list(record.CONFIGS))
def test_train_stim_is_timm_train(tmp_path, setup, name):
    data, teacher = setup
    expected = RECORDS['configs'][name]
    out = str(tmp_path / 'out')
    printed = record.run_program(TRAIN_STIM, [*record.config_argv(name, data, out, teacher), '--seed-scheme', 'timm'])
    got = record.read_run(os.path.join(out, name), printed,
                          [(teacher, '{TEACHER}'), (data, '{DATA}'), (out, '{OUT}')])

    # summary.csv: timm's columns with timm's values. timm's distillation task also returns its
    # task and distillation terms, which our task-agnostic loop logs as train_* columns too.
    header, want_header = got['summary'][0], expected['summary'][0]
    extra = [c for c in header if c not in want_header]
    assert extra == (['train_task_loss', 'train_kd_loss'] if name == 'distill' else [])
    assert [c for c in header if c in want_header] == want_header
    assert len(got['summary']) == len(expected['summary'])
    for row, want in zip(got['summary'][1:], expected['summary'][1:]):
        row = dict(zip(header, row))
        assert _numbers(row[c] for c in want_header) == pytest.approx(_numbers(want), rel=REL)

    # args.yaml: timm's keys with timm's values; ours only add our own options
    timm_keys = set(expected['args_yaml'])
    assert timm_keys <= set(got['args_yaml'])
    for key in timm_keys:
        assert got['args_yaml'][key] == expected['args_yaml'][key], key
    from timm_stim.config import add_config_args as add_stim_args
    from timm_stim.training.args import add_hub_args, add_recipe_args, add_run_args
    import argparse
    ours = set()
    for add in (add_stim_args, add_recipe_args, add_run_args, add_hub_args):
        ours |= {a.dest for a in add(argparse.ArgumentParser(add_help=False))._actions}
    assert set(got['args_yaml']) - timm_keys <= ours

    # --result JSON: same structure and values
    assert len(got['result']) == len(expected['result'])
    for mine, theirs in zip(got['result'], expected['result']):
        assert mine['epoch'] == theirs['epoch']
        for part in ('train', 'validation'):
            terms = {'task_loss', 'kd_loss'} if name == 'distill' and part == 'train' else set()
            assert set(mine.get(part, {})) == set(theirs.get(part, {})) | terms
            for key, value in theirs.get(part, {}).items():
                assert mine[part][key] == pytest.approx(value, rel=REL), (part, key)

    # log lines: the same lines in the same formats (plus the distillation terms, as above)
    lines = [re.sub(r'(task_loss|kd_loss): \S+ \(\S+\) +', '', line) for line in got['log_lines']]
    assert [_shape(line) for line in lines] == [_shape(line) for line in expected['log_lines']]
