"""benchmarks/gpu.py, the one-shot GPU run, exercised on the CPU in its tiny configuration."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'gpu.py')


def _env(tmp_path):
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', TIMM_STIM_CACHE=str(tmp_path / 'cache'))


@pytest.mark.slow
def test_gpu_script_writes_every_section_to_one_folder(tmp_path):
    out = tmp_path / 'gpu'
    proc = subprocess.run([sys.executable, SCRIPT, '--device', 'cpu', '--tiny', '--out', str(out)],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(out / 'summary.json'))
    assert [(s['name'], s['status']) for s in summary['sections']] == [
        (name, 'ok') for name in ('cuda_tests', 'step_cost', 'memory', 'budget_cost', 'step_cost_compile',
                                  'budget_time', 'study')]
    # The CUDA tests are selected by their marker (on a CPU only collected, not run).
    assert '3 tests collected' in (out / 'cuda_tests.log').read_text()
    ET.parse(out / 'cuda_tests.xml')
    cost = json.load(open(out / 'step_cost.json'))
    r = cost['results'][0]
    assert (r['model'], r['input_size'], r['batch_size']) == ('resnet18', 32, 4)
    assert r['stpp']['ideal_s'] > r['plain']['median_s'] and len(r['stpp']['subnets']) == 6
    compiled = json.load(open(out / 'step_cost_compile.json'))
    assert compiled['torchcompile'] == 'eager' and compiled['results'][0]['plain']['compile_s'] > 0
    row = compiled['results'][0]
    assert row['plain_blockwise']['compile_s'] > 0 and compiled['size_multiple'] == 8
    assert row['stpp']['eager']['median_s'] > 0 and all(s['input'][0] % 8 == 0 for s in row['stpp']['subnets'])
    budget_time = json.load(open(out / 'budget_time.json'))
    assert [r['requested'] for r in budget_time['results']] == [1.0, 2.0] and sorted(budget_time['order']) == [1.0, 2.0]
    assert all(r['realized'] == pytest.approx(r['realized_over_requested'] * r['requested'])
               for r in budget_time['results'])
    memory = json.load(open(out / 'memory.json'))
    assert set(memory['results']) == {'plain', 'stpp', 'stpp_joint'} and memory['ratios']['stpp']['peak'] > 0
    budget = json.load(open(out / 'budget_cost.json'))['results'][0]
    assert budget['budget'] == 1.0 and budget['num_subnets'] >= 1 and budget['realized_cost'] > 0
    study = json.load(open(out / 'study' / 'results.json'))
    assert set(study['accuracy']) == {'baseline', 'stpp'} and not study['unfinished']
    text = (out / 'summary.md').read_text()
    for title in ('## Step cost', '## Step cost, --torchcompile', '## Compiled against eager', '## Budget in time', '## Peak memory', '## Budget', '## Accuracy study'):
        assert title in text
    assert json.load(open(out / 'environment.json'))['device'] == 'cpu'


@pytest.mark.slow
def test_gpu_script_refuses_cuda_without_a_gpu(tmp_path):
    env = dict(_env(tmp_path), CUDA_VISIBLE_DEVICES='')  # no GPU visible, also on a GPU machine
    proc = subprocess.run([sys.executable, SCRIPT, '--out', str(tmp_path / 'gpu')], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and 'torch sees no CUDA device' in proc.stderr
    assert not (tmp_path / 'gpu' / 'summary.json').exists()


@pytest.mark.slow
def test_gpu_budget_section_asks_only_for_affordable_budgets(tmp_path):
    # The first H200 run stopped at --stim-budget 0.5: one stpp subnetwork of ResNet-50 at 224 px
    # costs 0.518 of a full pass. Every budget the GPU configuration asks for must afford one.
    import argparse
    import timm
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import budget_cost
    import gpu
    from timm_stim import attach
    from timm_stim.budget import resolve_budget, subnet_cost
    args = argparse.Namespace(out=str(tmp_path), device='cuda', tiny=False, fmnist_source=None, study_epochs=10,
                              scratch=str(tmp_path / 'scratch'), time_limit=470, skip=[])
    cmd = next(s for s in gpu.sections(args) if s['name'] == 'budget_cost')['cmd']
    model, size = cmd[cmd.index('--model') + 1], int(cmd[cmd.index('--size') + 1])
    rest = cmd[cmd.index('--budgets') + 1:]
    budgets = [float(b) for b in rest[:next(i for i, b in enumerate(rest) if b.startswith('--'))]]
    stim = attach(timm.create_model(model), space='stpp')
    cost, _ = subnet_cost(stim, (3, size, size), budget_cost.MIN_SCALE, 1.0)
    assert (model, size) == ('resnet50', 224) and cost == pytest.approx(0.518, abs=1e-3)
    assert budgets
    for budget in budgets:  # budget_cost.py's own check: InputError below the cost of one subnetwork
        resolve_budget(stim, (3, size, size), budget_cost.MIN_SCALE, 1.0, budget=budget, cost=cost)
