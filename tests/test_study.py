"""benchmarks/study.py: the loafing / accuracy study, its tables and a tiny end-to-end run on the digits."""
import csv
import json
import os
import sys
from typing import List

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import study  # noqa: E402


def _run(top1, seconds=10.0, epochs=3):
    return {'final_top1': top1, 'train_time_s': seconds, 'epochs': epochs, 'stim_resolved': {}}


def test_accuracy_table_mean_std_and_whether_a_difference_beats_the_spread():
    runs = {('baseline', 0): _run(80.0), ('baseline', 1): _run(82.0),
            ('stpp', 0): _run(85.0, 30.0), ('stpp', 1): _run(85.5, 34.0),
            ('st', 0): _run(81.5), ('st', 1): _run(82.5)}
    table, lines = study.accuracy_table(runs, ['baseline', 'st', 'stpp'], [0, 1])
    base_std = 2 ** 0.5  # stdev of 80, 82
    assert table['baseline']['top1_mean'] == 81.0 and table['baseline']['top1_std'] == pytest.approx(base_std)
    assert table['stpp']['diff_vs_baseline'] == pytest.approx(4.25)
    assert table['stpp']['beyond_spread'] is True  # 4.25 > 1.414 + 0.354
    assert table['st']['diff_vs_baseline'] == pytest.approx(1.0) and table['st']['beyond_spread'] is False
    assert table['stpp']['train_time_s_mean'] == 32.0
    assert '| stpp | 3 | 85.25 ± 0.35 | 85.00, 85.50 | +4.25 | yes | 32 |' in lines


def _rows(label, full, drop1, sampled):
    rows = [{'label': label, 'kind': 'full', 'num_blocks': '8', 'top1': str(full)}]
    rows += [{'label': label, 'kind': 'drop1', 'num_blocks': '7', 'top1': str(t)} for t in drop1]
    rows += [{'label': label, 'kind': 'sampled', 'num_blocks': str(n), 'top1': str(t)} for n, t in sampled]
    return rows


def test_loafing_table_and_blocks_removed_curves():
    rows_by = {
        ('baseline', 'uniform', 'own'): _rows('baseline-seed0', 90, [60, 80], [(6, 40), (8, 90), (6, 50)])
        + _rows('baseline-seed1', 92, [70, 90], [(6, 60), (7, 70)]),
        ('baseline', 'stpp', 'own'): _rows('baseline-seed0', 90, [60, 80], [(7, 85)])
        + _rows('baseline-seed1', 92, [70, 90], [(7, 75)]),
    }
    table, lines = study.loafing_table(rows_by, ['baseline'], [0, 1])
    own = table['baseline']['own']
    assert own['full']['per_seed'] == [90.0, 92.0]
    assert own['drop1_mean']['per_seed'] == [70.0, 80.0] and own['drop1_min']['per_seed'] == [60.0, 70.0]
    assert own['uniform']['per_seed'] == [60.0, 65.0] and own['stpp']['per_seed'] == [85.0, 75.0]
    assert 'recal' not in table['baseline']
    assert lines[-1].startswith("| baseline | checkpoint's | 91.00 ± 1.41 | 75.00 ± 7.07 | 65.00 ± 7.07 |")
    curves = study.removed_curves(rows_by, ['baseline'], [0, 1], 'own')['baseline']
    # Seed 0: 0 removed -> mean(90, 90), 1 -> mean(60, 80), 2 -> mean(40, 50); seed 1: 0 -> 92, 1 -> (70, 90, 70), 2 -> 60.
    assert curves[0][:2] == (91.0, pytest.approx(2 ** 0.5))
    assert curves[1][0] == pytest.approx((70 + 230 / 3) / 2)
    assert curves[2][0] == pytest.approx((45 + 60) / 2) and curves[2][2] == 2


@pytest.mark.slow
def test_tiny_study_times_runs_resolves_the_budget_and_sets_the_wall_clock_epochs(tmp_path):
    out = tmp_path / 'study'
    common = ['--data', 'digits', '--model', 'resnet18', '--model-kwargs', 'channels=[8,16,32,64]', 'stem_width=8',
              '--size', '16', '--epochs', '1', '--batches-per-epoch', '2', '--batch-size', '16', '--in-process',
              '--out', str(out)]
    result = study.main(common + ['--seeds', '0', '--no-analyze', '--variants', 'baseline', 'stpp', 'stpp_paper',
                                  'stpp_budget1', 'baseline_2x', 'baseline_wall'])
    runs = result['runs']
    ratio = runs[('stpp', 0)]['train_time_s'] / runs[('baseline', 0)]['train_time_s']
    assert result['wall_epochs'] == max(1, round(ratio)) == runs[('baseline_wall', 0)]['epochs']
    assert runs[('baseline_2x', 0)]['epochs'] == 2 and runs[('baseline', 0)]['epochs'] == 1
    saved = yaml.safe_load(open(out / 'runs' / 'stpp_budget1-seed0' / 'args.yaml'))
    assert saved['stim_budget'] == 1.0 and saved['stim_subnets'] == 0
    assert saved['stim_resolved']['subnets_per_step'] == pytest.approx(result['budget1_subnets'], abs=1e-4)
    assert result['budget1_subnets'] >= 1
    assert saved['stim_space'] == 'stpp' and saved['stim_min_scale'] == 0.43
    assert yaml.safe_load(open(out / 'runs' / 'stpp-seed0' / 'args.yaml'))['stim_subnets'] == 3
    # ST++ as the paper steps it: KL- on both terms, the official resize, BN updated and re-estimated.
    paper = yaml.safe_load(open(out / 'runs' / 'stpp_paper-seed0' / 'args.yaml'))
    assert (paper['stim_norm'], paper['stim_resize'], paper['stim_bn'], paper['stim_bn_recal'],
            paper['stim_subnets'], paper['stim_space']) == ('all', 'official', 'update', 2000, 3, 'stpp')
    # FLOPs per run: 1 epoch of 2 batches of 16, backward = 2 x forward, K x the expected subnetwork pass.
    import timm
    import timm_stim
    from timm_stim.budget import subnet_cost
    from timm_stim.flops import count_flops
    model = timm.create_model('resnet18', num_classes=10, channels=[8, 16, 32, 64], stem_width=8)
    full = count_flops(model, (3, 16, 16))
    cost, _ = subnet_cost(timm_stim.attach(model, space='stpp'), (3, 16, 16), 0.43)
    assert runs[('baseline', 0)]['flops']['train_flops'] == 3 * 32 * full
    assert runs[('stpp', 0)]['flops']['train_flops'] == pytest.approx(3 * 32 * full * (1 + 3 * cost))
    assert runs[('stpp', 0)]['flops']['bn_recal_flops'] == 0
    assert runs[('stpp_paper', 0)]['flops']['bn_recal_flops'] > 0  # re-estimated before validating
    written = json.load(open(out / 'results.json'))
    assert set(written['accuracy']) == {'baseline', 'stpp', 'stpp_paper', 'stpp_budget1', 'baseline_2x',
                                        'baseline_wall'}
    assert (out / 'accuracy_vs_time.png').stat().st_size > 0 and (out / 'curves.png').stat().st_size > 0
    assert '| stpp | 3 |' in (out / 'results.md').read_text()  # the cost table: K, time and FLOPs
    assert '| stpp_budget1 | 1 |' in (out / 'results.md').read_text()
    # Finished runs are kept: a second call trains nothing and gives the same table.
    again = study.main(common + ['--seeds', '0', '--no-analyze', '--variants', 'baseline', 'stpp'])
    assert again['runs'][('stpp', 0)] == runs[('stpp', 0)]


@pytest.mark.slow
def test_flat_tail_schedule_holds_the_floor_lr_and_twice_the_epochs_doubles_both_parts(tmp_path):
    out = tmp_path / 'study'
    result = study.main(['--data', 'digits', '--model', 'resnet18', '--model-kwargs', 'channels=[8,16,32,64]',
                         'stem_width=8', '--size', '16', '--epochs', '2', '--cooldown-epochs', '1', '--min-lr', '0.001',
                         '--batches-per-epoch', '2', '--batch-size', '16', '--val-interval', '1', '--in-process',
                         '--out', str(out), '--seeds', '0', '--no-analyze', '--variants', 'baseline', 'baseline_2x'])
    runs = result['runs']
    # timm adds the cooldown epochs to --epochs: 2 + 1, and twice that for baseline_2x (4 + 2).
    assert runs[('baseline', 0)]['epochs'] == 3 and runs[('baseline_2x', 0)]['epochs'] == 6
    for variant, flat in (('baseline', 1), ('baseline_2x', 2)):
        with open(out / 'runs' / f'{variant}-seed0' / 'summary.csv') as f:
            lrs = [float(row['lr']) for row in csv.DictReader(f)]
        assert lrs[-flat:] == [pytest.approx(0.001)] * flat and lrs[0] > 0.01  # the tail sits at the floor
    assert '2 epochs + 1 at the floor (lr 0.1, cosine to 0.001' in (out / 'results.md').read_text()
    # The wall-clock control has no rule for splitting its time between cosine and tail: refused up front.
    with pytest.raises(SystemExit, match='baseline_wall does not take --cooldown-epochs'):
        study.main(['--data', 'digits', '--epochs', '2', '--cooldown-epochs', '1', '--wall-epochs', '3',
                    '--out', str(tmp_path / 'wall'), '--variants', 'baseline_wall'])
    assert not (tmp_path / 'wall').exists()
    for bad in (['--cooldown-epochs', '-1'], ['--min-lr', '0.5']):  # a floor above the peak lr (0.1)
        with pytest.raises(SystemExit, match='expected epochs >= 0 and a floor 0 <= min-lr < --lr'):
            study.main(['--data', 'digits', '--out', str(tmp_path / 'bad'), *bad])
    assert not (tmp_path / 'bad').exists()


@pytest.mark.slow
def test_tiny_study_analyzes_every_seed_with_and_without_bn_reestimation(tmp_path):
    out = tmp_path / 'study'
    result = study.main(['--data', 'digits', '--model', 'resnet18', '--model-kwargs', 'channels=[8,16,32,64]',
                         'stem_width=8', '--size', '16', '--epochs', '1', '--batches-per-epoch', '2',
                         '--batch-size', '16', '--in-process', '--out', str(out), '--seeds', '0', '1',
                         '--variants', 'baseline', 'stpp_budget1', '--control-seeds', '1', '--analyze-variants',
                         'baseline', '--analyze-subnets', '3', '2', '--bn-recal', '32', '--analyze-distinct'])
    # The budget control ran for its own seeds only, and analyze evaluated the variants asked for.
    assert sorted(result['runs']) == [('baseline', 0), ('baseline', 1), ('stpp_budget1', 1)]
    assert result['accuracy']['stpp_budget1']['top1'] == [result['runs'][('stpp_budget1', 1)]['final_top1']]
    assert set(result['loafing']) == {'baseline'} and not (out / 'analyze' / 'stpp_budget1-uniform-own').exists()
    for space, sampled in (('uniform', 3), ('stpp', 2)):
        for recal, images in (('own', '0'), ('recal', '32')):
            rows = study.read_analyze(str(out / 'analyze' / f'baseline-{space}-{recal}' / 'analyze.csv'))
            for seed in (0, 1):
                mine = [r for r in rows if r['label'] == f'baseline-seed{seed}']
                # resnet18: 4 blocks can be removed one at a time.
                assert [r['kind'] for r in mine] == ['full'] + ['drop1'] * 4 + ['sampled'] * sampled
                drawn = [r['depths'] for r in mine if r['kind'] == 'sampled']  # --analyze-distinct
                assert len(set(drawn)) == sampled and '2,2,2,2' not in drawn
                assert {r['bn_recal_images'] for r in mine if r['kind'] != 'full'} == {images}
    loafing = result['loafing']['baseline']
    assert set(loafing) == {'own', 'recal'} and len(loafing['recal']['drop1_min']['per_seed']) == 2
    assert (out / 'loafing.png').stat().st_size > 0
    curves = json.load(open(out / 'results.json'))['blocks_removed']
    assert set(curves) == {'own', 'recal'} and '0' in curves['own']['baseline']


def test_plateau_is_a_last_quarter_trend_smaller_than_the_seed_spread():
    def run(curve):  # validated after epochs 2, 4, ..., 16
        return {'validated_epochs': [e - 1 for e in range(2, 17, 2)], 'top1': curve, 'final_top1': curve[-1]}
    runs = {('baseline', 0): run([50, 70, 80, 85, 88, 89.0, 89.2, 89.1]),
            ('baseline', 1): run([52, 71, 81, 86, 88, 88.0, 88.2, 88.1]),
            ('st', 0): run([50, 70, 80, 85, 86, 87.0, 88.0, 89.0]),
            ('st', 1): run([50, 70, 80, 85, 86, 87.0, 88.0, 89.2])}
    long = [40, 50, 60, 70, 80, 85, 86, 87, 88, 88.5, 88.6, 88.5, 88.6, 88.7, 88.6, 88.6]
    for seed in (0, 1):  # twice the epochs: its own last quarter is 24-32, not 12-16
        runs[('baseline_2x', seed)] = {'epochs': 32, 'validated_epochs': [e - 1 for e in range(2, 33, 2)],
                                       'top1': [x + seed for x in long], 'final_top1': long[-1] + seed}
    # Flat but noisy: it zigzags by 1.0 (more than its seed spread, 0.71) around a level line.
    zigzag = [40, 50, 60, 70, 80, 85, 86, 87, 88, 89, 88, 89, 88, 89, 88, 88.5]
    for seed in (0, 1):
        runs[('drop_path', seed)] = {'epochs': 32, 'validated_epochs': [e - 1 for e in range(2, 33, 2)],
                                     'top1': [x + seed for x in zigzag], 'final_top1': zigzag[-1] + seed}
    table, lines = study.plateau_table(runs, ['baseline', 'st', 'baseline_2x', 'drop_path'], [0, 1], epochs=16)
    base = table['baseline']
    # Last quarter of 16 epochs: epochs 12, 14, 16; mean curve 88.5, 88.7, 88.6.
    assert base['epochs'] == [12, 14, 16] and base['curve'] == pytest.approx([88.5, 88.7, 88.6])
    assert base['range'] == pytest.approx(0.2) and base['change'] == pytest.approx(0.1)
    # Least-squares slope (-2 * 88.5 + 2 * 88.6) / 8 = 0.025 per epoch, over the 4 epochs from 12 to 16.
    assert base['trend'] == pytest.approx(0.1)
    assert base['final_std'] == pytest.approx(2 ** 0.5 / 2) and base['plateau'] is True
    st = table['st']  # still rising: 87.0 -> 89.1, far more than its seed spread (0.14)
    assert st['trend'] == pytest.approx(2.1) and st['plateau'] is False
    assert lines[2] == '| baseline | 12-16 (3) | 0.20 | +0.10 | +0.10 | 0.71 | yes |' and lines[3].endswith('| no |')
    assert table['baseline_2x']['epochs'] == [24, 26, 28, 30, 32]
    assert table['baseline_2x']['curve'] == pytest.approx([89.0, 89.1, 89.2, 89.1, 89.1])
    noisy = table['drop_path']  # 89.5, 88.5, 89.5, 88.5, 89.0: the range exceeds the spread, the trend does not
    assert noisy['range'] == pytest.approx(1.0) and noisy['final_std'] == pytest.approx(2 ** 0.5 / 2)
    # Slope (-4 * 0.5 - 2 * -0.5 + 2 * -0.5) / 40 = -0.05 per epoch, over the 8 epochs from 24 to 32.
    assert noisy['trend'] == pytest.approx(-0.4) and noisy['plateau'] is True


def _write_idx(path, array):
    import gzip
    import numpy as np
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.tobytes())


def test_fashion_mnist_subset_is_balanced_and_seeded(tmp_path):
    import numpy as np
    from _fmnist import balanced_subset, layout_subset, read_idx
    source = tmp_path / 'idx'
    source.mkdir()
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(10), 5)  # 50 training images, 5 per class
    test_labels = np.repeat(np.arange(10), 3)
    _write_idx(source / 'train-images-idx3-ubyte.gz', rng.integers(0, 255, (50, 28, 28)))
    _write_idx(source / 'train-labels-idx1-ubyte.gz', train_labels)
    _write_idx(source / 't10k-images-idx3-ubyte.gz', rng.integers(0, 255, (30, 28, 28)))
    _write_idx(source / 't10k-labels-idx1-ubyte.gz', test_labels)
    assert read_idx(str(source / 'train-labels-idx1-ubyte.gz')).tolist() == train_labels.tolist()
    out = layout_subset(str(tmp_path / 'fm'), 20, seed=3, source_dir=str(source), analyze_images=10)
    for split, per_class in (('train', 2), ('test', 3), ('test2k', 1)):
        counts = [len(os.listdir(os.path.join(out, split, str(c)))) for c in range(10)]
        assert counts == [per_class] * 10, split
    picked = sorted(int(f[:-4]) for c in range(10) for f in os.listdir(os.path.join(out, 'train', str(c))))
    assert picked == balanced_subset(train_labels, 2, 3).tolist()
    assert balanced_subset(train_labels, 2, 3).tolist() != balanced_subset(train_labels, 2, 4).tolist()
    from PIL import Image
    first = picked[0]
    image = np.asarray(Image.open(os.path.join(out, 'train', str(train_labels[first]), f'{first:05d}.png')))
    assert image.tolist() == read_idx(str(source / 'train-images-idx3-ubyte.gz'))[first].tolist()


def _quoted_tables(results_md: str, section: str) -> List[List[str]]:
    """Check that a BENCHMARKS.md section quotes a study's results.md; returns its four tables' rows.

    The accuracy table by mean ± std, per seed and difference (the section names the variants in
    its own words), the cost table by K, time and FLOPs (the section adds the whole run's time),
    the plateau and subnetwork tables verbatim.
    """
    with open(results_md) as f:
        blocks = f.read().split('\n\n')
    tables = [[line for line in block.splitlines() if line.startswith('| ') and not line.startswith('| run')]
              for block in blocks if block.startswith('| run')]
    accuracy, cost, plateau, loafing = tables
    for row in accuracy:
        assert ' | '.join(row.split(' | ')[2:6]) in section, row
    for row in cost:
        cells = row.split(' | ')
        mine = [line.split(' | ') for line in section.splitlines() if line.startswith(cells[0] + ' | ')]
        assert any(m[1:4] == cells[1:4] and m[5:7] == cells[4:6] for m in mine), row
    for row in plateau + loafing:
        assert row in section, row
    return tables


def _section(number: int) -> str:
    with open(os.path.join(ROOT, 'BENCHMARKS.md')) as f:
        return f.read().split(f'\n## {number}.')[1].split('\n## ')[0]


def test_benchmarks_section_10_quotes_the_committed_results():
    """BENCHMARKS.md section 10 (and the README sentence on it) quote results.md of the committed study."""
    accuracy, *_ = _quoted_tables(os.path.join(ROOT, 'benchmarks', 'results', 'study_converged', 'results.md'),
                                  _section(10))
    assert [r.split(' | ')[0] for r in accuracy] == ['| baseline', '| st', '| stpp', '| stpp_paper', '| baseline_2x']
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read()
    assert 'gains 0.8 points' in readme and float(accuracy[-1].split(' | ')[4]) == pytest.approx(0.78)


def test_benchmarks_section_11_quotes_the_committed_plateau_study():
    """Section 11 quotes the flat-tail study's results.md; the baseline meets the plateau criterion there."""
    accuracy, _, plateau, _ = _quoted_tables(
        os.path.join(ROOT, 'benchmarks', 'results', 'study_plateau', 'results.md'), _section(11))
    assert [r.split(' | ')[0] for r in accuracy] == ['| baseline', '| st', '| stpp', '| stpp_paper', '| baseline_2x']
    baseline = next(r.split(' | ') for r in plateau if r.startswith('| baseline |'))
    assert baseline[-1] == 'yes |' and abs(float(baseline[4])) < float(baseline[5])  # trend < seed std
    gains = {r.split(' | ')[0][2:]: float(r.split(' | ')[4]) for r in accuracy[1:]}
    assert gains['stpp'] == gains['stpp_paper'] == pytest.approx(0.82)
    assert gains['stpp'] - gains['baseline_2x'] == pytest.approx(0.44)
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = ' '.join(f.read().split())
    assert 'both ST++ variants end 0.82 points above the baseline and 0.44 above the baseline trained twice' in readme
