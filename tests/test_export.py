"""python -m timm_stim export: a subnetwork as a plain timm model (random weights, CPU)."""
import json
import os

import pytest
import timm
import torch

import timm_stim
from timm_stim import Subnet
from timm_stim.errors import InputError
from timm_stim.tools.export import export_subnet, main, parse_blocks, parse_depths, save_exported

from helpers import make_input
from test_hub import hub_env  # noqa: F401  (fixture: huggingface_hub pointed at the local Hub server)


def _randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _subnet_logits(model, subnet, x):
    stim = timm_stim.attach(model)
    try:
        with torch.no_grad(), stim.activate(subnet):
            return model.eval()(x)
    finally:
        stim.detach()


@pytest.mark.parametrize('name, kwargs, subnet', [
    ('resnet18', {}, Subnet.from_depths((2, 1, 1, 2))),
    ('resnet26d', {'layers': [3, 2, 2, 1]}, Subnet(((0, 2), (0,), (0, 1), (0,)))),  # any kept blocks, deep stem
    ('seresnext26t_32x4d', {}, Subnet.from_depths((1, 2, 1, 1))),
    ('resnetv2_18', {}, Subnet.from_depths((1, 2, 2, 1))),                # pre-activation
])
def test_exported_logits_equal_the_subnetwork(tmp_path, name, kwargs, subnet):
    model = _randomize_bn(timm.create_model(name, num_classes=7, **kwargs))
    x = make_input(2, 64)
    exported = export_subnet(model, subnet)
    assert type(exported) is type(model)
    assert tuple(len(s) for s in timm_stim.get_adapter(exported).stages(exported)) == subnet.depths
    assert timm_stim.get_stimulator(model) is None  # the original model is left as it was
    expected = _subnet_logits(model, subnet, x)
    with torch.no_grad():
        assert torch.equal(exported(x), expected)
    out = tmp_path / 'export'
    save_exported(exported, str(out), data_config={'input_size': (3, 64, 64)})
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    config = json.loads((out / 'config.json').read_text())
    assert config['model_args']['layers'] == list(subnet.depths)
    assert config['architecture'] == name


def test_export_command_round_trip(tmp_path, capsys):
    model = _randomize_bn(timm.create_model('resnet18', num_classes=10))
    ckpt = tmp_path / 'model_best.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 1}, ckpt)
    out = tmp_path / 'small'
    assert main([str(ckpt), '--model', 'resnet18', '--depths', '2,1,2,1', '--out', str(out),
                 '--input-size', '3', '32', '32', '--mean', '0.5', '0.5', '0.5', '--std', '0.5', '0.5', '0.5']) == 0
    assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.export-')]
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.pretrained_cfg['input_size'] == (3, 32, 32)
    assert tuple(loaded.pretrained_cfg['mean']) == (0.5, 0.5, 0.5)
    x = make_input(2, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), _subnet_logits(model, Subnet.from_depths((2, 1, 2, 1)), x))
    assert 'logits checked equal' in capsys.readouterr().out
    # An exported model exports again (its config.json names the architecture and layers).
    again = tmp_path / 'smaller'
    assert main([f'local-dir:{out}', '--blocks', '0,1;0;0;0', '--out', str(again)]) == 0
    assert json.loads((again / 'config.json').read_text())['model_args']['layers'] == [2, 1, 1, 1]


@pytest.mark.parametrize('extra, message', [
    (['--depths', '2,2,2'], 'gives 3 stages; the model has 4'),
    (['--depths', '2,0,2,2'], 'stage 1 depth 0 is outside 1..2'),
    (['--depths', '2,3,2,2'], 'stage 1 depth 3 is outside 1..2'),
    (['--depths', '2,a,2,2'], 'expected comma-separated integers'),
    (['--blocks', '0,1;1;0;0'], 'stage 1 keeps blocks (1,)'),
    (['--blocks', '0,1;0,2;0;0'], 'stage 1 has blocks 0..1, cannot keep block 2'),
    (['--depths', '1,1,1,1', '--push-to-hub', 'not a repo'], 'is not a Hub repository id'),
    (['--depths', '1,1,1,1', '--num-classes', '3'], 'does not fit --model resnet18 with 3 classes'),
    (['--depths', '1,1,1,1', '--push-to-hub', 'u/r', '--hub-revision', 'dev', '--hub-create-pr'],
     'a pull request is opened against main'),
    (['--depths', '1,1,1,1', '--out', '/proc/timm-stim-export'], "--out '/proc/timm-stim-export' cannot be written"),
])
def test_bad_arguments_are_refused_before_writing(tmp_path, caplog, extra, message):
    ckpt = tmp_path / 'm.pth.tar'
    torch.save(timm.create_model('resnet18', num_classes=10).state_dict(), ckpt)
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as info:
        main([str(ckpt), '--model', 'resnet18', '--out', str(out), *extra])
    assert info.value.code == 2
    assert message in caplog.text and 'Nothing was written' in caplog.text, caplog.text
    assert sorted(os.listdir(tmp_path)) == ['m.pth.tar']


def test_existing_out_dir_and_unsupported_models_are_refused(tmp_path, caplog):
    ckpt = tmp_path / 'm.pth.tar'
    torch.save(timm.create_model('resnet18', num_classes=10).state_dict(), ckpt)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    with pytest.raises(SystemExit) as info:
        main([str(ckpt), '--model', 'resnet18', '--depths', '1,1,1,1', '--out', str(out)])
    assert info.value.code == 2 and 'already exists' in caplog.text
    assert os.listdir(out) == ['keep.txt']
    with pytest.raises(InputError, match='Export supports'):
        export_subnet(timm.create_model('resnetv2_50x1_bit', num_classes=3), (3, 4, 6, 2))
    with pytest.raises(InputError, match='supported families'):
        export_subnet(timm.create_model('mobilenetv3_small_050', num_classes=3), (1,))
    # Families timm_stim trains but cannot (yet) build smaller plain timm models of.
    with pytest.raises(InputError, match='cannot export a vit model'):
        export_subnet(timm.create_model('vit_tiny_patch16_224', num_classes=3), (6,))
    # A dropped SiLU block computes silu(x), not x: a model without the block would differ.
    with pytest.raises(InputError, match='block 1 of stage 2 ends in an activation'):
        export_subnet(timm.create_model('resnet18', act_layer='silu'), (2, 2, 1, 2))


def test_parsers_name_the_model_depths():
    assert parse_depths('3,1,2', (3, 4, 6)) == Subnet.from_depths((3, 1, 2))
    assert parse_blocks('0,2;0', (3, 2)) == Subnet(((0, 2), (0,)))
    with pytest.raises(InputError, match='depths 3,4,6'):
        parse_depths('3,4', (3, 4, 6))


@pytest.mark.slow
def test_export_publishes_to_the_hub_and_analyze_reads_it(hub_env, hub_server, tmp_path, capsys):
    from huggingface_hub import ModelCard
    from timm_stim.tools.analyze import main as analyze_main
    model = _randomize_bn(timm.create_model('resnet18', num_classes=10))
    ckpt = tmp_path / 'm.pth.tar'
    torch.save(model.state_dict(), ckpt)
    repo = 'tester/resnet18-subnet'
    assert main([str(ckpt), '--model', 'resnet18', '--depths', '1,2,1,1', '--out', str(tmp_path / 'small'),
                 '--push-to-hub', repo, '--input-size', '3', '16', '16']) == 0
    assert f'Published to {hub_server.url}/{repo}' in capsys.readouterr().out
    card = ModelCard(hub_server.files(repo)['README.md'].decode())
    # The template's named section, in its place: after the model details, before the citation.
    assert card.data.library_name == 'timm'
    assert card.text.index('## Model details') < card.text.index('## Exported subnetwork') < card.text.index(
        '## Citation')
    assert 'keeps blocks `0;0,1;0;0`' in card.text
    published = timm.create_model(f'hf-hub:{repo}', pretrained=True).eval()
    x = make_input(2, 16)
    with torch.no_grad():
        assert torch.equal(published(x), _subnet_logits(model, Subnet.from_depths((1, 2, 1, 1)), x))
    # analyze takes hf-hub: models: full + 1 droppable block (stage 1) + 2 sampled.
    out = tmp_path / 'analysis'
    assert analyze_main([f'hf-hub:{repo}', '--dataset', 'embedded/digits', '--samples', '2', '--stim-bn-recal', '32',
                         '-b', '128', '--workers', '0', '--device', 'cpu', '--out', str(out)]) == 0
    assert len((out / 'analyze.csv').read_text().strip().splitlines()) == 1 + 1 + 1 + 2
