"""benchmarks/study.py: the loafing / accuracy study, its tables and a tiny end-to-end run on the digits."""
import csv
import json
import math
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


def _readme() -> str:
    with open(os.path.join(ROOT, 'README.md')) as f:
        return f.read()


def _in_short() -> str:
    with open(os.path.join(ROOT, 'BENCHMARKS.md')) as f:
        return f.read().split('\n## In short')[1].split('\n## ')[0]


def _study_json(name: str):
    with open(os.path.join(ROOT, 'benchmarks', 'results', name, 'results.json')) as f:
        return json.load(f)


def test_benchmarks_section_10_quotes_the_committed_results():
    """BENCHMARKS.md section 10 (and the README sentence on it) quote results.md of the committed study."""
    accuracy, *_ = _quoted_tables(os.path.join(ROOT, 'benchmarks', 'results', 'study_converged', 'results.md'),
                                  _section(10))
    assert [r.split(' | ')[0] for r in accuracy] == ['| baseline', '| st', '| stpp', '| stpp_paper', '| baseline_2x']
    assert float(accuracy[-1].split(' | ')[4]) == pytest.approx(0.78)  # "gains +0.78" (In short)
    # "In short", from results.json: ST++ 0.45-0.50 above the baseline at equal epochs, and the baseline
    # trained twice as long (2.0x the FLOPs, ST++ 2.9x) above both ST++ variants (the README states the
    # pre-registered verdicts instead).
    result = _study_json('study_converged')
    mean = {v: a['top1_mean'] for v, a in result['accuracy'].items()}
    gains = sorted(mean[v] - mean['baseline'] for v in ('stpp', 'stpp_paper'))
    short = ' '.join(_in_short().split())
    assert (f"the library's ST++ +{mean['stpp'] - mean['baseline']:.2f} and the paper's step "
            f"+{mean['stpp_paper'] - mean['baseline']:.2f} points" in short)
    assert [f'{g:.2f}' for g in gains] == ['0.45', '0.50']
    assert mean['baseline_2x'] > max(mean['stpp'], mean['stpp_paper'])
    flops = {v: result['runs'][f'{v}-seed0']['flops']['train_flops'] for v in ('baseline', 'stpp', 'baseline_2x')}
    ratios = (flops['baseline_2x'] / flops['baseline'], flops['stpp'] / flops['baseline'])
    assert (round(ratios[0], 1), round(ratios[1], 1)) == (2.0, 2.9)
    assert 'beats both ST++ variants with fewer FLOPs (2.0x against 2.9x)' in short


def test_benchmarks_section_11_quotes_the_committed_plateau_study():
    """Section 11 quotes the flat-tail study's results.md; the baseline meets the plateau criterion there."""
    accuracy, _, plateau, _ = _quoted_tables(
        os.path.join(ROOT, 'benchmarks', 'results', 'study_plateau', 'results.md'), _section(11))
    assert [r.split(' | ')[0] for r in accuracy] == ['| baseline', '| st', '| stpp', '| stpp_paper', '| baseline_2x']
    baseline = next(r.split(' | ') for r in plateau if r.startswith('| baseline |'))
    assert baseline[-1] == 'yes |' and abs(float(baseline[4])) < float(baseline[5])  # trend < seed std
    gains = {r.split(' | ')[0][2:]: float(r.split(' | ')[4]) for r in accuracy[1:]}
    assert gains['stpp'] == gains['stpp_paper'] == pytest.approx(0.82)
    # The README, "In short" and section 11 quote the means of results.json, not differences of rounded
    # means (0.82 - 0.38 = 0.44): ST++ is 0.433 above the baseline trained twice as long.
    plateau, converged = _study_json('study_plateau'), _study_json('study_converged')
    mean = {v: a['top1_mean'] for v, a in plateau['accuracy'].items()}
    assert f"{mean['stpp'] - mean['baseline']:.2f}" == f"{mean['stpp_paper'] - mean['baseline']:.2f}" == '0.82'
    assert f"{mean['stpp'] - mean['baseline_2x']:.2f}" == f"{mean['stpp_paper'] - mean['baseline_2x']:.2f}" == '0.43'
    from scipy.stats import ttest_ind
    top1 = {v: a['top1'] for v, a in plateau['accuracy'].items()}
    assert [round(ttest_ind(top1[v], top1['baseline'], equal_var=False).pvalue, 2)
            for v in ('stpp', 'stpp_paper')] == [0.09, 0.10]
    # What the flat tail costs against cosine to zero: the baseline 0.40 points, each ST++ variant under 0.1.
    tail = {v: converged['accuracy'][v]['top1_mean'] - mean[v] for v in ('baseline', 'stpp', 'stpp_paper')}
    assert f"{tail['baseline']:.2f}" == '0.40' and 0 < tail['stpp'] < 0.1 and 0 < tail['stpp_paper'] < 0.1
    # The README's six-line paragraph states the cosine-to-zero comparison only; "In short" carries this one.
    readme = ' '.join(_readme().split())
    assert '0.82' not in readme and '0.44' not in readme
    short = ' '.join(_in_short().split())
    assert 'both ST++ variants end 0.82 points above it' in short and '0.43 above the baseline trained twice' in short
    assert 'the flat tail cost the baseline 0.40 points against section 10, ST++ under 0.1' in short


def test_claim3_results_reproduce_from_the_raw_files_and_the_docs_state_the_verdicts(tmp_path):
    """Every planned run is in; results.md / results.json re-score from the committed raw files with the committed
    script, the tests recompute, and the README, "In short" and section 11 state the pre-registered verdicts."""
    import claim3
    committed = os.path.join(ROOT, 'benchmarks', 'results', 'claim3')
    os.symlink(os.path.join(committed, 'raw'), tmp_path / 'raw')
    if os.path.exists(os.path.join(committed, 'events.log')):
        os.symlink(os.path.join(committed, 'events.log'), tmp_path / 'events.log')
    result = claim3.report(str(tmp_path), claim3.MAIN_SEEDS, claim3.OTHER_SEEDS, claim3.SCORE_SPLIT)
    assert result['complete'] and result['recorded'] == result['planned'] == 32 and not result['deviations']
    for name in ('results.md', 'results.json'):
        assert open(tmp_path / name).read() == open(os.path.join(committed, name)).read()
    assert all(run['images'] == 10000 for run in result['runs'].values())
    assert set(result['tests']) == {'H1', 'H2', 'H3'}
    for name, arm, other in claim3.COMPARISONS:
        t = result['tests'][name]
        assert t == {**claim3.welch(result['arms'][arm]['top1'], result['arms'][other]['top1']), 'arm': arm,
                     'against': other, **claim3.holm({k: v['p'] for k, v in result['tests'].items()})[name],
                     'verdict': t['verdict']}
        assert t['verdict'] == ('supported' if t['rejected'] else 'not shown')
    said = claim3_verdict_sentence(result)
    for text in (_readme(), _in_short(), _section(11)):
        assert said in ' '.join(text.split())


def claim3_verdict_sentence(result) -> str:
    """What the README, "In short" and section 11 say of the pre-registered study, from its results.json."""
    t = result['tests']

    def part(name):
        return f"{t[name]['diff']:+.2f} (Holm p = {t[name]['p_holm']:.3f}: {t[name]['verdict']})"
    return (f"against the baseline at equal epochs, the paper's ST++ {part('H1')}, the library's {part('H2')}; "
            f"against the baseline given ST++'s FLOPs (232 epochs), the paper's ST++ {part('H3')}.")


def test_section_9_says_its_gpu_gain_rests_on_two_seeds():
    """gpu_h200's "beyond the spread: yes" for ST++ is two seeds a side; section 9 gives Welch's p."""
    from scipy.stats import ttest_ind
    with open(os.path.join(ROOT, 'benchmarks', 'results', 'gpu_h200', 'summary.md')) as f:
        rows = {line.split(' | ')[0][2:]: line.split(' | ') for line in f if line.startswith('| baseline | 10 |')
                or line.startswith('| stpp | 10 |')}
    per_seed = {v: [float(x) for x in row[3].split(', ')] for v, row in rows.items()}
    assert len(per_seed['stpp']) == len(per_seed['baseline']) == 2 and rows['stpp'][5] == 'yes'
    p = ttest_ind(per_seed['stpp'], per_seed['baseline'], equal_var=False).pvalue
    assert f'{p:.2f}' == '0.19'
    section = ' '.join(_section(9).split())
    assert "it rests on two seeds a side: Welch's p = 0.19 (two-sided; 0.09 one-sided)" in section


# ---------------------------------------------------------------------------------------------
# Claim 3, pre-registered (benchmarks/claim3.py, benchmarks/preregistration/claim3.md)
# ---------------------------------------------------------------------------------------------

def test_welch_one_sided_against_a_hand_computed_example():
    import claim3
    # a = 2, 4 and b = 0, 2: means 3 and 1, variances 2 and 2, se^2 = 2/2 + 2/2 = 2, t = 2 / sqrt(2),
    # df = 2^2 / (1^2 / 1 + 1^2 / 1) = 2. For 2 degrees of freedom P(T >= t) = 1/2 - t / (2 sqrt(t^2 + 2)).
    result = claim3.welch([2.0, 4.0], [0.0, 2.0])
    t = 2 / 2 ** 0.5
    assert result['diff'] == 2.0 and result['t'] == pytest.approx(t) and result['df'] == pytest.approx(2.0)
    assert result['p'] == pytest.approx(0.5 - t / (2 * (t * t + 2) ** 0.5))  # 0.2113
    # The 95 % interval: t(0.975, 2) = 4.302653 (tables) times se = sqrt(2).
    assert result['ci_high'] - result['diff'] == pytest.approx(4.302653 * 2 ** 0.5, rel=1e-6)
    # Unequal sizes and spreads: 1, 2, 3, 4 against 0, 0, 1, 1: se^2 = (5/3)/4 + (1/3)/4 = 0.5,
    # t = 2 / sqrt(0.5), df = 0.25 / (((5/12)^2 + (1/12)^2) / 3) = 54/13; scipy's Welch test agrees.
    result = claim3.welch([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0])
    assert result['t'] == pytest.approx(2 / 0.5 ** 0.5) and result['df'] == pytest.approx(54 / 13)
    from scipy.stats import ttest_ind
    reference = ttest_ind([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0], equal_var=False, alternative='greater')
    assert result['p'] == pytest.approx(reference.pvalue) and result['p'] < 0.05
    assert math.isnan(claim3.welch([3.0, 3.0], [2.0, 2.0])['p'])  # no spread: no test


def test_holm_steps_down_over_the_three_comparisons():
    import claim3
    # Sorted: H1 0.01 < 0.05/3 rejected; H3 0.03 >= 0.05/2 not, and so neither is H2 (0.04 < 0.05).
    out = claim3.holm({'H1': 0.01, 'H2': 0.04, 'H3': 0.03})
    assert [out[k]['rejected'] for k in ('H1', 'H2', 'H3')] == [True, False, False]
    assert [out[k]['p_holm'] for k in ('H1', 'H3', 'H2')] == pytest.approx([0.03, 0.06, 0.06])
    out = claim3.holm({'H1': 0.001, 'H2': 0.02, 'H3': 0.049})
    assert all(v['rejected'] for v in out.values()) and out['H3']['p_holm'] == pytest.approx(0.049)
    assert claim3.holm({'H1': 0.5, 'H2': 0.9, 'H3': 0.6})['H2']['p_holm'] == 1.0  # capped


def test_the_plan_names_the_drivers_command_and_the_flops_matched_epochs():
    """The pre-registered command is the one claim3.py runs; 232 epochs is what study.py counts."""
    import claim3
    with open(os.path.join(ROOT, claim3.PLAN)) as f:
        plan = f.read()
    block = plan.split('which runs\n\n```bash\n')[1].split('```')[0]
    assert block.replace('\\\n', ' ').split() == ['python', 'benchmarks/study.py',
                                                  *claim3.study_argv('benchmarks/results/claim3')]
    assert 'python benchmarks/claim3.py --out benchmarks/results/claim3\n' in plan
    assert claim3.MAIN_SEEDS == list(range(100, 111)) and claim3.OTHER_SEEDS == list(range(100, 105))
    assert not {0, 1, 2} & set(claim3.MAIN_SEEDS + claim3.OTHER_SEEDS)  # seeds 0-2 are exploratory
    assert '| H1 | `stpp_paper` (11) | `baseline` (11) |' in plan
    assert '| H3 | `stpp_paper` (11) | `baseline_flops` (5) |' in plan
    args = study.create_parser().parse_args(claim3.study_argv('/unused'))
    assert study.flops_epochs(args) == 232 and '**232 epochs**' in plan
    # From section 10's committed FLOPs: 80 x stpp_paper / baseline, rounded.
    with open(os.path.join(ROOT, 'benchmarks', 'results', 'study_converged', 'results.json')) as f:
        runs = json.load(f)['runs']
    ratio = runs['stpp_paper-seed0']['flops']['train_flops'] / runs['baseline-seed0']['flops']['train_flops']
    assert round(80 * ratio) == 232 and f'{ratio:.6f}' in plan


def test_variant_seeds_and_baseline_flops_refuse_bad_input_before_any_work(tmp_path):
    for bad, match in ((['--variant-seeds', 'stpp=1,x'], "--variant-seeds 'stpp=1,x': expected VARIANT=SEED"),
                       (['--variant-seeds', 'st=1'], "the variant one of --variants \\(baseline, stpp\\)"),
                       (['--variant-seeds', 'stpp=1', 'stpp=2'], "--variant-seeds 'stpp=2'"),
                       (['--variants', 'baseline_flops', '--cooldown-epochs', '5', '--min-lr', '0.001'],
                        'baseline_flops does not take --cooldown-epochs')):
        argv = ['--data', 'digits', '--out', str(tmp_path / 'bad'), '--variants', 'baseline', 'stpp', *bad]
        with pytest.raises(SystemExit, match=match):
            study.main(argv)
        assert not (tmp_path / 'bad').exists()
    assert study.parse_variant_seeds(['stpp=4,5'], ['stpp']) == {'stpp': [4, 5]}


def test_claim3_driver_runs_scores_resumes_and_reports_from_raw_files(tmp_path):
    """Tiny end to end: every arm's final network scored and kept, tests as planned, resumable across sessions."""
    import shutil
    import claim3
    import _score
    out = tmp_path / 'claim3'
    tiny = ['--out', str(out), '--main-seeds', '0', '1', '--other-seeds', '0', '1', '--score-split', 'validation',
            '--data', 'digits', '--model', 'resnet18', '--model-kwargs', 'channels=[8,16,32,64]', 'stem_width=8',
            '--size', '16', '--epochs', '1', '--batches-per-epoch', '3', '--batch-size', '32', '--val-interval', '1',
            '--val-split', 'validation', '--in-process']
    result = claim3.main(tiny)
    assert result['complete'] and result['recorded'] == 8 and set(result['tests']) == {'H1', 'H2', 'H3'}
    # baseline_flops: the epochs study.py counted (1 x the tiny model's FLOPs ratio, rounded).
    flops_epochs = json.load(open(out / 'study.json'))['flops_epochs']
    assert result['arms']['baseline_flops']['epochs'] == [flops_epochs] and flops_epochs == 3
    assert result['arms']['stpp_paper']['epochs'] == [1] and result['arms']['stpp']['seeds'] == [0, 1]
    for name, run in result['runs'].items():
        raw = out / 'raw' / name
        # The final network, re-scored from its logits, is the one training validated last (same split).
        assert run['top1'] == _score.top1_of(str(raw / 'logits_validation.npz')) == pytest.approx(
            run['last_val_top1'], abs=1e-9)
        assert run['images'] == 360 and yaml.safe_load(open(raw / 'args.yaml'))['seed'] == int(name[-1])
        assert json.load(open(raw / 'meta.json'))['commit'] is not None
    for name, arm, other in claim3.COMPARISONS:
        expected = claim3.welch(result['arms'][arm]['top1'], result['arms'][other]['top1'])
        got = result['tests'][name]
        assert (got['arm'], got['against']) == (arm, other)
        assert got['diff'] == pytest.approx(expected['diff']) and got['verdict'] in ('supported', 'not shown')
    deviations = 'Deviations from the plan: study.py options beyond the plan: --data digits'
    assert deviations in (out / 'results.md').read_text()
    first = (out / 'raw' / 'stpp_paper-seed1' / 'logits_validation.npz').read_bytes()

    # A later session: checkpoints gone, one run's record missing, that run found cut part-way.
    shutil.rmtree(out / 'runs')
    shutil.rmtree(out / 'raw' / 'stpp_paper-seed1')
    partial = claim3.main(tiny + ['--report-only'])
    assert not partial['complete'] and partial['tests'] == {}
    assert 'Incomplete: no test is computed' in (out / 'results.md').read_text()
    (out / 'runs' / 'stpp_paper-seed1').mkdir(parents=True)
    again = claim3.main(tiny)
    assert sorted(os.listdir(out / 'runs')) == ['stpp_paper-seed1', 'stpp_paper-seed1.log']  # only it retrained
    import io
    import numpy as np
    before, after = np.load(io.BytesIO(first)), np.load(out / 'raw' / 'stpp_paper-seed1' / 'logits_validation.npz')
    assert np.array_equal(before['logits'], after['logits'])  # same seed, same run
    assert again['tests'] == result['tests']
    assert {a: x['top1'] for a, x in again['arms'].items()} == {a: x['top1'] for a, x in result['arms'].items()}
    assert again['events'][0].endswith('stpp_paper-seed1: found unfinished, restarted from scratch with the same seed')
    # results.md reproduces from the raw files alone.
    written = (out / 'results.md').read_text()
    shutil.rmtree(out / 'runs')
    claim3.main(tiny + ['--report-only'])
    assert (out / 'results.md').read_text() == written
