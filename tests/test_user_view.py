"""What a timm user sees: --version, one error prefix, usage lines, file modes, recipe titles, card, analyze's plot."""
import contextlib
import io
import logging
import os
import sys

import pytest
import timm
import torch

from timm_stim.__main__ import main as cli_main
from timm_stim.errors import InputError, run_command
from timm_stim.version import __version__


def test_version():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(['--version']) == 0
    assert out.getvalue().strip() == f'timm-stim {__version__} (timm {timm.__version__}, torch {torch.__version__})'


def test_errors_carry_one_prefix_under_timms_log_format():
    from timm.utils.log import FormatterNoInfo
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(FormatterNoInfo())  # what train_stim.py and every command log with
    logger = logging.getLogger('timm_stim')
    logger.addHandler(handler)
    try:
        with pytest.raises(SystemExit) as info:
            run_command(lambda: (_ for _ in ()).throw(InputError('--epochs 0: expected an int >= 1.')))
    finally:
        logger.removeHandler(handler)
    assert info.value.code == 2
    assert stream.getvalue() == 'ERROR: --epochs 0: expected an int >= 1.\n'


@pytest.mark.parametrize('argv0, shown', [('/usr/local/bin/timm-stim', 'timm-stim {}'),
                                          ('/src/timm_stim/__main__.py', 'python -m timm_stim {}')])
def test_usage_lines_name_the_command_as_it_was_started(monkeypatch, argv0, shown):
    from timm_stim.tools.analyze import create_analyze_parser
    from timm_stim.tools.export import create_export_parser
    from timm_stim.tools.push import create_push_parser
    from timm_stim.training.args import create_train_parser
    monkeypatch.setattr(sys, 'argv', [argv0, 'x'])
    assert create_analyze_parser().prog == shown.format('analyze')
    assert create_export_parser().prog == shown.format('export')
    assert create_push_parser().prog == shown.format('push')
    assert create_train_parser()[1].prog == shown.format('train')
    assert create_analyze_parser().format_usage().startswith(f'usage: {shown.format("analyze")} ')
    monkeypatch.setattr(sys, 'argv', ['/src/train_stim.py'])
    assert create_train_parser()[1].prog == 'train_stim.py'


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_safetensors_files_follow_the_umask(tmp_path, umask):
    from timm_stim.tools.hub_folder import save_timm_hf_folder
    from timm_stim.training.runs import save_best_safetensors
    model = timm.create_model('test_resnet', num_classes=3)
    previous = os.umask(umask)
    try:
        torch.save({'state_dict': model.state_dict()}, tmp_path / 'model_best.pth.tar')
        save_best_safetensors(str(tmp_path))
        save_timm_hf_folder(model, str(tmp_path / 'hf'))
        (tmp_path / 'other.txt').write_text('x')
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert os.stat(tmp_path / 'other.txt').st_mode & 0o777 == expected
    assert os.stat(tmp_path / 'model_best.safetensors').st_mode & 0o777 == expected
    assert os.stat(tmp_path / 'hf' / 'model.safetensors').st_mode & 0o777 == expected


def test_every_recipe_has_a_title():
    from timm_stim.training.recipes import list_recipes, main as recipes_main
    assert all(r.title for r in list_recipes())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        recipes_main([])
    assert '(no title)' not in out.getvalue() and 'quickstart: Quick start: ST++' in out.getvalue()


def test_card_shows_what_ran_and_timms_model_statistics():
    from timm_stim.flops import model_stats
    from timm_stim.tools.modelcard import build_model_card
    # timm's own card of resnet50.a1_in1k: Params (M) 25.6, GMACs 4.1, Activations (M) 11.1, Image size 224 x 224.
    stats = model_stats(timm.create_model('resnet50'), (3, 224, 224))
    assert (round(stats['params_m'], 1), round(stats['gmacs'], 1), round(stats['activations_m'], 1),
            stats['image_size']) == (25.6, 4.1, 11.1, (224, 224))
    resolved = {'enabled': True, 'budget': 2.0, 'subnets_per_step': 1.7321, 'kl_weight_warmup_epochs': 2.0}
    card = str(build_model_card(
        'me/budget', architecture='resnet50', num_classes=1000, pretrained_cfg={'input_size': (3, 224, 224)},
        train_args={'model': 'resnet50', 'stim_subnets': 0, 'stim_budget': 2.0, 'stim_weight_warmup': None,
                    'stim_resolved': resolved}, model_stats=stats))
    assert '| `--stim-subnets` | 1.7321 per step (from --stim-budget 2) |' in card
    assert '| `--stim-subnets` | 0 |' not in card
    assert '| `--stim-weight-warmup` | 2 (the default) |' in card
    for line in ('- Params (M): 25.6', '- GMACs: 4.1', '- Activations (M): 11.1', '- Image size: 224 x 224'):
        assert line in card, line


def _rows():
    rows = [dict(label='good', kind='full', flops=2e6, num_blocks=8, top1=97.2)]
    rows += [dict(label='good', kind='sampled', flops=1.5e6, num_blocks=6, top1=96.0 + 0.3 * (i % 3)) for i in range(9)]
    rows += [dict(label='loafing', kind='full', flops=2e6, num_blocks=8, top1=95.0)]
    rows += [dict(label='loafing', kind='drop1', flops=1.8e6, num_blocks=7, top1=10.0 + 20 * i) for i in range(3)]
    return rows


def test_analyze_plot_counts_identical_points_scales_each_checkpoint_and_keeps_the_legend_off_points(tmp_path):
    from timm_stim.tools.analyze import build_plot, plot_points, plot_results
    rows = _rows()
    assert sorted(plot_points(rows, 'good', 'sampled', scale=1e6)) == [(1.5, 96.0, 3), (1.5, 96.3, 3), (1.5, 96.6, 3)]
    fig = build_plot(rows)
    axes = {ax.get_title(loc='left'): ax for ax in fig.axes}
    assert set(axes) == {'good', 'loafing'}
    low, high = axes['good'].get_ylim()
    assert 94 < low < 96.0 and 97.2 < high < 99  # its own spread, not the other model's 10-95
    assert axes['loafing'].get_ylim()[0] < 10.0
    counts = [t.get_text() for t in axes['good'].texts]
    assert counts == ['x3', 'x3', 'x3']
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in fig.axes)
    assert plot_results(rows, str(tmp_path / 'a.png')) and (tmp_path / 'a.png').read_bytes()[:4] == b'\x89PNG'
