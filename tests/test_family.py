"""timm-stim family: enumerating a space, Pareto fronts, selecting, exporting and publishing members (CPU, tiny)."""
import csv
import json
import os
import subprocess
import sys

import pytest
import timm
import torch

import timm_stim
from timm_stim import Subnet
from timm_stim.bn import recalibrate_bn
from timm_stim.select import family_subnets, grid_depths, pareto_front, select_row, select_subnet
from timm_stim.tools.analyze import analysis_data_config, analysis_loaders, preserved_bn_stats
from timm_stim.tools.checkpoints import load_model
from timm_stim.tools.family import create_family_parser, main, member_name, parse_select

from helpers import make_input
from test_hub import hub_env  # noqa: F401  (fixture: huggingface_hub pointed at the local Hub server)

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TINY = {'channels': [8, 16, 32, 64], 'stem_width': 8}
DATA = ['--dataset', 'embedded/digits', '-b', '128', '-j', '0', '--device', 'cpu', '--val-num-samples', '120',
        '--stim-bn-recal', '64', '--latency-repeats', '1', '--latency-warmup', '0', '--latency-batch-size', '4']


def _checkpoint(folder, seed=0, name='resnet18', **kwargs):
    """A trained-looking checkpoint (random weights, BN statistics unlike the defaults) with its args.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_kwargs = {**TINY, **kwargs} if name == 'resnet18' else kwargs
    model = timm.create_model(name, num_classes=10, **model_kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({'state_dict': model.state_dict(), 'epoch': 1}, folder / 'model.pth.tar')
    lines = [f'model: {name}', 'input_size: [3, 16, 16]', 'mean: [0.5, 0.5, 0.5]', 'std: [0.5, 0.5, 0.5]',
             'model_kwargs:'] + [f'  {k}: {v}' for k, v in model_kwargs.items()]
    (folder / 'args.yaml').write_text('\n'.join(lines if model_kwargs else lines[:-1]) + '\n')
    return str(folder / 'model.pth.tar')


def _read(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_every_member_of_a_small_space_and_a_grid_of_a_large_one():
    model = timm.create_model('resnet50')
    stim = timm_stim.attach(model, space='stpp')
    members, how = family_subnets(stim)
    # The 8 of stpp on ResNet-50: stages 1 and 4 fixed, stage 2 keeps 3-4 blocks, stage 3 keeps 3-6.
    assert how == 'all'
    assert [m.depths for m in members] == [(3, b, c, 3) for b in (4, 3) for c in (6, 5, 4, 3)]
    assert members[0] == stim.full()
    stim.detach()
    stim = timm_stim.attach(model, space='uniform')  # 3 * 4 * 6 * 3 = 216 members
    members, how = family_subnets(stim, 64)  # 3 depths per stage would be 81 > 64: 2 (smallest and largest)
    assert how == 'grid' and len(members) == 16
    assert {m.depths for m in members} == {(a, b, c, d) for a in (3, 1) for b in (4, 1) for c in (6, 1) for d in (3, 1)}
    members, how = family_subnets(stim, 100)  # 3 per stage: 81; 4 per stage: 3 * 4 * 4 * 3 = 144 > 100
    assert how == 'grid' and len(members) == 81
    assert {m.depths[2] for m in members} == {1, 4, 6} and {m.depths[1] for m in members} == {1, 3, 4}
    assert grid_depths((1, 2, 3, 4, 5, 6), 3) == (1, 4, 6) and grid_depths((3, 4), 5) == (3, 4)
    with pytest.raises(ValueError, match='allow at least 16 members'):
        family_subnets(stim, 15)
    stim.detach()
    stim = timm_stim.attach(model, space='0,0,0,0')
    with pytest.raises(ValueError, match='holds only the full network'):
        family_subnets(stim)


def test_pareto_front_against_a_hand_computed_one():
    #            A    B    C    D    E    F    G
    costs = [10, 20, 20, 30, 40, 15, 20]
    scores = [50, 60, 55, 60, 70, 50, 60]
    # A: cheapest, on. F: costs more than A, scores the same: off. B and G: identical, neither beats the
    # other: both on. C: beaten by B. D: costs more than B for the same score: off. E: most accurate: on.
    assert pareto_front(costs, scores) == [True, True, False, False, True, False, True]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto_front([1], [1, 2])


TABLE = [
    {'depths': '2,2,2,2', 'flops': '100', 'latency_ms': '9.0', 'top1': '80.0', 'bn_recal_images': '0'},
    {'depths': '2,1,2,2', 'flops': '80', 'latency_ms': '7.0', 'top1': '79.0', 'bn_recal_images': '64'},
    {'depths': '2,2,1,2', 'flops': '70', 'latency_ms': '8.0', 'top1': '79.0', 'bn_recal_images': '64'},
    {'depths': '1,1,1,1', 'flops': '40', 'latency_ms': '3.0', 'top1': '60.0', 'bn_recal_images': '64'},
]


def test_select_picks_the_most_accurate_member_within_the_limits():
    assert select_row(TABLE, max_flops=100)['depths'] == '2,2,2,2'
    assert select_row(TABLE, max_flops=99)['depths'] == '2,2,1,2'  # a top-1 tie goes to fewer FLOPs
    assert select_row(TABLE, max_latency_ms=7.5)['depths'] == '2,1,2,2'
    assert select_row(TABLE, max_flops=75, max_latency_ms=7.5)['depths'] == '1,1,1,1'
    with pytest.raises(ValueError, match='the cheapest, depths 1,1,1,1, needs 40 FLOPs'):
        select_row(TABLE, max_flops=39)
    with pytest.raises(ValueError, match='give max_flops'):
        select_row(TABLE)
    with pytest.raises(ValueError, match='2 checkpoints'):
        select_row([dict(TABLE[0], checkpoint='a'), dict(TABLE[1], checkpoint='b')], max_flops=100)
    assert parse_select('max-flops=2e9,max-latency-ms=5') == {'max_flops': 2e9, 'max_latency_ms': 5.0}


def test_select_subnet_returns_the_plain_member_with_its_statistics():
    model = timm.create_model('resnet18', num_classes=10, **TINY).eval()
    g = torch.Generator().manual_seed(0)
    recal = [(torch.randn(16, 3, 16, 16, generator=g), torch.zeros(16, dtype=torch.long))]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    member = select_subnet(model, TABLE, max_latency_ms=7.5, recal_batches=recal)
    assert member.pretrained_cfg['architecture'] == 'resnet18' and [len(s) for s in (
        member.layer1, member.layer2, member.layer3, member.layer4)] == [2, 1, 2, 2]
    stim = timm_stim.attach(model, bn='update')
    x = make_input(2, 16)
    with torch.no_grad(), preserved_bn_stats(model), stim.activate(Subnet.from_depths((2, 1, 2, 2))):
        recalibrate_bn(model, recal, 16, torch.device('cpu'))
        expected = model.eval()(x)
        assert torch.equal(member(x), expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is unchanged


@pytest.fixture(scope='module')
def family_run(tmp_path_factory):
    """One family run on a tiny resnet18 (stpp: stage 2 and 3 keep 1-2 blocks, 4 members)."""
    tmp = tmp_path_factory.mktemp('family')
    ckpt = _checkpoint(tmp / 'run')
    out = tmp / 'out'
    argv = [ckpt, '--stim-space', 'stpp', *DATA, '--out', str(out), '--select', 'max-flops=1.79e6']
    assert main(argv) == 0
    return argv, ckpt, out


def _expected_logits(argv, ckpt, row, x):
    """The subnetwork of the checkpoint run through activate, BN re-estimated on the images family used."""
    args = create_family_parser().parse_args(argv)
    item = load_model(ckpt)
    _, recal = analysis_loaders(args, analysis_data_config(args, item), torch.device('cpu'))
    model = item.model
    stim = timm_stim.attach(model, bn='update')
    with torch.no_grad(), stim.activate(Subnet.from_depths(map(int, row['depths'].split(',')))):
        if int(row['bn_recal_images']):
            assert int(row['bn_recal_images']) == sum(int(b.shape[0]) for b, _ in recal) == 64
            recalibrate_bn(model, recal, 64, torch.device('cpu'))
        return model.eval()(x)


def test_family_scores_marks_and_exports_the_front(family_run, capsys):
    argv, ckpt, out = family_run
    rows = _read(out / 'family.csv')
    assert [r['depths'] for r in rows] == ['2,2,2,2', '2,2,1,2', '2,1,2,2', '2,1,1,2']
    assert [r['full'] for r in rows] == ['True', 'False', 'False', 'False']
    assert [r['bn_recal_images'] for r in rows] == ['0', '64', '64', '64']  # the full network keeps its statistics
    flops = [int(r['flops']) for r in rows]
    assert flops[0] > flops[1] > flops[3] and flops[0] > flops[2] > flops[3]
    assert all(0 <= float(r['top1']) <= float(r['top5']) <= 100 and float(r['latency_ms']) > 0 for r in rows)
    top1 = [float(r['top1']) for r in rows]
    for key, cost in (('front_flops', 'flops'), ('front_latency', 'latency_ms')):
        assert [r[key] == 'True' for r in rows] == pareto_front([float(r[cost]) for r in rows], top1)
    chosen = select_row(rows, max_flops=1.79e6)
    assert [r['selected'] == 'True' for r in rows] == [r is chosen for r in rows]
    exported = [r for r in rows if 'True' in (r['front_flops'], r['front_latency'], r['selected'])]
    assert all(r['folder'] for r in exported) and not any(r['folder'] for r in rows if r not in exported)
    assert sorted(os.listdir(out / 'members' / 'model.pth.tar')) == sorted(
        member_name(r['depths'].split(',')) for r in exported)
    document = json.loads((out / 'family.json').read_text())
    assert document['space'] == 'stpp' and document['latency']['batch_sizes'] == [1, 4]
    assert document['checkpoints'][0]['stage_depths'] == [2, 2, 2, 2]
    assert [m['depths'] for m in document['checkpoints'][0]['members']] == [r['depths'] for r in rows]
    with open(out / 'family.png', 'rb') as f:
        assert f.read(8) == PNG_MAGIC
    # Every exported member: plain timm loads it, logits equal the subnetwork's bit for bit, its card has the figures.
    x = make_input(3, 16)
    for r in exported:
        loaded = timm.create_model(f'local-dir:{r["folder"]}', pretrained=True).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), _expected_logits(argv, ckpt, r, x))
        card = open(os.path.join(r['folder'], 'README.md')).read()
        assert f'| `resnet18` (model.pth.tar) | {r["depths"]} |' in card
        assert f'{int(r["flops"]) / 1e6:.1f} M | {float(r["top1"]):.2f} % |' in card
        assert f'{float(r["latency_ms"]):.3f} ms' in card


def test_exported_members_load_without_timm_stim(family_run):
    _, _, out = family_run
    folders = [r['folder'] for r in _read(out / 'family.csv') if r['folder']]
    code = ('import sys; sys.modules["timm_stim"] = None; import timm, torch\n'
            'for f in sys.argv[1:]:\n'
            '    m = timm.create_model("local-dir:" + f, pretrained=True).eval()\n'
            '    print(len(m.layer2), len(m.layer3), m(torch.zeros(1, 3, 16, 16)).shape[1])\n')
    result = subprocess.run([sys.executable, '-c', code, *folders], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH='', OMP_NUM_THREADS='1'), cwd='/')
    assert result.returncode == 0, result.stderr
    depths = [f.rsplit('depths-', 1)[1].split('-') for f in folders]
    assert result.stdout.split('\n')[:-1] == [f'{d[1]} {d[2]} 10' for d in depths]


def test_family_is_published_one_branch_per_member(hub_env, hub_server, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / 'run')
    repo = 'tester/resnet18-family'
    assert main([ckpt, '--stim-space', '1,0,0,0', *DATA, '--out', str(tmp_path / 'out'), '--push-to-hub', repo]) == 0
    rows = _read(tmp_path / 'out' / 'family.csv')
    exported = [r for r in rows if r['folder']]
    x = make_input(2, 16)
    for r in exported:
        assert r['hub'] == f'hf-hub:{repo}@{member_name(r["depths"].split(","))}'
        local = timm.create_model(f'local-dir:{r["folder"]}', pretrained=True).eval()
        published = timm.create_model(r['hub'], pretrained=True).eval()
        with torch.no_grad():
            assert torch.equal(published(x), local(x))
    best = max(exported, key=lambda r: (float(r['top1']), -int(r['flops'])))
    on_main = timm.create_model(f'hf-hub:{repo}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(on_main(x), timm.create_model(f'local-dir:{best["folder"]}', pretrained=True).eval()(x))
    card = hub_server.files(repo)['README.md'].decode()
    assert f'`main` holds the most accurate member, depths {best["depths"]}' in card
    for r in exported:
        assert f'| {r["depths"]} |' in card and f'[`{r["hub"]}`]' in card


def _device_absent():
    return 'cuda' if not torch.cuda.is_available() else f'cuda:{torch.cuda.device_count()}'


@pytest.mark.parametrize('case', ['unsupported family', 'empty space', 'absent device', 'bad select', 'small grid',
                                  'two checkpoints to one repo', 'no ema'])
def test_bad_input_exits_2_before_any_work(tmp_path, caplog, monkeypatch, case):
    import timm_stim.tools.family as family
    ckpt = _checkpoint(tmp_path / 'run')
    out = tmp_path / 'out'
    argv, message = {
        'unsupported family': ([_checkpoint(tmp_path / 'cnx', name='convnext_atto')],
                               'is a convnext model (convnext_atto); its members cannot be plain timm models'),
        'empty space': ([ckpt, '--stim-space', '0,0,0,0'], 'holds only the full network'),
        'absent device': ([ckpt, '--device', _device_absent()],
                          f"--device: device '{_device_absent()}' is not available on this machine"),
        'bad select': ([ckpt, '--select', 'max-ms=5'], "--select 'max-ms=5': expected LIMIT=VALUE"),
        'small grid': ([ckpt, '--stim-space', 'uniform', '--max-members', '8'], 'allow at least 16 members'),
        'two checkpoints to one repo': ([ckpt, ckpt, '--labels', 'a,b', '--push-to-hub', 'u/f'],
                                        'publishes the family of one checkpoint; 2 were given'),
        'no ema': ([ckpt, '--use-ema'], 'holds no EMA weights'),
    }[case]

    def no_work(*args, **kwargs):
        raise AssertionError('scoring started')
    monkeypatch.setattr(family, 'analysis_loaders', no_work)
    monkeypatch.setattr(family, '_score_member', no_work)
    caplog.clear()
    with pytest.raises(SystemExit) as info:
        main([*DATA, '--out', str(out), *argv])  # options given last win (--device)
    assert info.value.code == 2
    assert message in caplog.text, caplog.text
    assert not out.exists()


def test_ema_weights_are_scored_when_the_checkpoint_holds_them(tmp_path):
    from safetensors.torch import load_file
    ckpt = _checkpoint(tmp_path / 'run')
    state = torch.load(ckpt, weights_only=True)
    ema = {k: v + 1 if v.is_floating_point() and k.endswith('weight') else v for k, v in state['state_dict'].items()}
    torch.save({**state, 'state_dict_ema': ema}, ckpt)
    base = ['--stim-space', '0,1,0,0', *DATA]
    assert main([ckpt, *base, '--out', str(tmp_path / 'ema')]) == 0  # default: the EMA weights
    assert main([ckpt, *base, '--out', str(tmp_path / 'plain'), '--no-use-ema', '--no-export']) == 0
    ema_json = json.loads((tmp_path / 'ema' / 'family.json').read_text())['checkpoints'][0]
    plain_json = json.loads((tmp_path / 'plain' / 'family.json').read_text())['checkpoints'][0]
    assert ema_json['use_ema'] is True and plain_json['use_ema'] is False
    folder = next(m['folder'] for m in ema_json['members'] if m['folder'])
    assert torch.equal(load_file(os.path.join(folder, 'model.safetensors'))['fc.weight'], ema['fc.weight'])
    assert not (tmp_path / 'plain' / 'members').exists()  # --no-export


def test_latency_honours_channels_last_amp_and_torchcompile(tmp_path, monkeypatch):
    import timm_stim.tools.family as family
    ckpt = _checkpoint(tmp_path / 'run')
    calls, compiled = [], []

    def fake_compile(model, backend=None, mode=None):
        compiled.append((backend, mode))
        return ('compiled', model)

    def record(model, input_size, batch_size, **kwargs):
        assert model[0] == 'compiled'
        with kwargs['amp_autocast']():
            dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else None
        calls.append((batch_size, kwargs['channels_last'], dtype, kwargs['repeats'], kwargs['warmup']))
        return 1.0 + batch_size
    monkeypatch.setattr(torch, 'compile', fake_compile)
    monkeypatch.setattr(family, 'measure_latency', record)
    assert main([ckpt, '--stim-space', '0,1,0,0', *DATA, '--out', str(tmp_path / 'out'), '--no-export',
                 '--channels-last', '--amp', '--torchcompile', '--torchcompile-mode', 'max-autotune',
                 '--latency-repeats', '3', '--latency-warmup', '2']) == 0
    assert compiled == [('inductor', 'max-autotune')] * 2  # each of the 2 members, compiled for timing
    assert calls == [(1, True, torch.bfloat16, 3, 2), (4, True, torch.bfloat16, 3, 2)] * 2
    rows = _read(tmp_path / 'out' / 'family.csv')
    figures = [(r['latency_ms'], r['latency_batch_ms'], r['latency_batch_size']) for r in rows]
    assert figures == [('2.0', '5.0', '4')] * 2
    latency = json.loads((tmp_path / 'out' / 'family.json').read_text())['latency']
    assert (latency['amp'], latency['channels_last'], latency['torchcompile']) == ('bfloat16', True, 'inductor')


def test_measure_latency_warms_up_then_times_the_repeats():
    from timm_stim.latency import measure_latency
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last), self.training))
            return x
    assert measure_latency(Probe().train(), (3, 8, 8), 5, warmup=2, repeats=3, channels_last=True) > 0
    assert seen == [((5, 3, 8, 8), True, False)] * 5  # 2 warm-up + 3 timed passes, in eval mode


@pytest.mark.parametrize('extra, message', [
    (['--max-members', '1'], '--max-members 1: expected a number >= 2'),
    (['--latency-repeats', '0'], '--latency-repeats 0: expected a number >= 1'),
    (['--stim-bn-recal', '-1'], '--stim-bn-recal -1: expected a number of images >= 0'),
    (['--labels', 'a,b'], 'gives 2 names for 1 checkpoints'),
])
def test_bad_options_exit_2_before_any_work(tmp_path, caplog, extra, message):
    ckpt = _checkpoint(tmp_path / 'run')
    caplog.clear()
    with pytest.raises(SystemExit) as info:
        main([ckpt, *DATA, '--out', str(tmp_path / 'out'), *extra])
    assert info.value.code == 2 and message in caplog.text, caplog.text
    assert not (tmp_path / 'out').exists()


def test_benchmarks_section_12_quotes_the_committed_family_study():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, 'BENCHMARKS.md')).read()
    section = text[text.index('## 12. Train once, deploy a family'):]
    results = open(os.path.join(root, 'benchmarks', 'results', 'family_cpu', 'results.md')).read()
    rows = [line for line in results.splitlines() if line.startswith('| ') and line[2].isdigit() or
            line.startswith(('| baseline', '| st', '| full'))]
    assert len(rows) == 3 + 3
    for row in rows:  # every figure, after the row's name (the section names the variants in its own words)
        cells = row.strip('| ').split(' | ')
        assert ' | '.join(cells[-3:]) in section, row
    results_dir = os.path.join(root, 'benchmarks', 'results', 'family_cpu')
    document = json.loads(open(os.path.join(results_dir, 'family', 'family.json')).read())
    for checkpoint in document['checkpoints']:
        members = checkpoint['members']
        front = [m['depths'] for m in members if m['front_flops']]
        assert front == [m['depths'] for m, on in zip(members, pareto_front(
            [m['flops'] for m in members], [m['top1'] for m in members])) if on]
