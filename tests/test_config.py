"""StimConfig is the one place an option is declared: everything else derives from its fields."""
import dataclasses
import os

import pytest
import timm
import yaml

from timm_stim import StimConfig, StimulativeTask
from timm_stim.config import ConfigError, at_least, options_table, stim_option
from timm_stim.inputs import cpu_bfloat16_conv_hazard, strided_convs_on_single_pixel_maps
from timm_stim.resolve import resolve_config
from timm_stim.stimulator import attach
from timm_stim.tools.modelcard import build_model_card
from timm_stim.training.args import create_train_parser, parse_args
from timm_stim.training.stim import StimTraining, train_input_sizes
from timm_stim.training.train import create_train_model, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base(out, *extra):
    return ['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
            '--input-size', '3', '16', '16', '-b', '16', '--workers', '0', '--epochs', '1',
            '--train-batches-per-epoch', '2', '--output', str(out), '--experiment', 'run', *extra]


@dataclasses.dataclass
class _WithProbe(StimConfig):
    """A config with one more option, declared as every option is: one field."""
    probe_weight: float = stim_option(0.5, 'an option added by a test', at_least(0), metavar='P', type=float)


def test_a_new_field_is_an_option_everywhere_with_no_other_edit(tmp_path, caplog):
    # --help
    assert '--stim-probe-weight P' in create_train_parser(_WithProbe)[1].format_help()
    # refused when bad in a -c YAML file, before anything is written
    bad = tmp_path / 'bad.yaml'
    bad.write_text('stim_subnets: 1\nstim_probe_weight: -1\n')
    with pytest.raises(SystemExit) as e:
        main(['-c', str(bad), *_base(tmp_path / 'bad')], config_cls=_WithProbe)
    assert e.value.code == 2 and '--stim-probe-weight -1.0: expected a number >= 0' in caplog.text
    assert not os.path.exists(tmp_path / 'bad')
    # in args.yaml (as given, and in the resolved config) and in the model card
    result = main(_base(tmp_path / 'good', '--stim-subnets', '1', '--stim-probe-weight', '0.25'), config_cls=_WithProbe)
    saved = yaml.safe_load(open(os.path.join(result['output_dir'], 'args.yaml')))
    assert saved['stim_probe_weight'] == 0.25 and saved['stim_resolved']['config']['probe_weight'] == 0.25
    card = build_model_card('user/repo', architecture='resnet18', num_classes=10,
                            pretrained_cfg={'input_size': [3, 16, 16]}, train_args=saved)
    assert '| `--stim-probe-weight` | 0.25 |' in str(card)


def test_options_table_in_the_docs_is_the_declared_one():
    text = open(os.path.join(ROOT, 'docs', 'training.md')).read()
    begin, end = '<!-- stim-options:begin -->\n', '<!-- stim-options:end -->'
    table = text[text.index(begin) + len(begin):text.index(end)]
    assert table == options_table(), 'docs/training.md: paste timm_stim.config.options_table() between the markers'


def test_every_field_is_a_flag_with_its_default():
    args, _ = parse_args([])
    for f in StimConfig.options():
        assert getattr(args, StimConfig.dest(f)) == f.default
    assert StimConfig.from_args(args) == StimConfig()


@pytest.mark.parametrize('field,value,message', [
    ('kl_weight', float('nan'), 'kl_weight=nan: expected a number >= 0'),
    ('kl_weight', float('inf'), 'kl_weight=inf: expected a number >= 0'),
    ('temperature', float('nan'), 'temperature=nan: expected a number > 0'),
    ('amplitude', float('inf'), 'amplitude=inf: expected a number > 0'),
    ('weight_warmup_epochs', float('inf'), 'weight_warmup_epochs=inf: expected a number of epochs >= 0'),
    ('num_subnets', None, 'num_subnets=None: expected an int >= 0'),
    ('min_scale', 0.0, 'min_scale=0.0: expected a number in (0, 1]'),
    ('normalize', 'kl-', "normalize='kl-': expected one of none, kl, all"),
])
def test_bad_values_are_refused_naming_the_option(field, value, message):
    with pytest.raises(ConfigError) as e:
        StimConfig(**{'num_subnets': 1, field: value}).check()
    assert str(e.value).startswith(message)
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
        StimulativeTask(timm.create_model('resnet18', num_classes=10), verbose=False,
                        config=dataclasses.replace(StimConfig(num_subnets=1), **{field: value}))


def test_task_takes_a_config_or_keywords_alike():
    a = StimulativeTask(timm.create_model('resnet18', num_classes=10), verbose=False,
                        config=StimConfig(num_subnets=2, kl_weight=0.5, normalize='kl'))
    b = StimulativeTask(timm.create_model('resnet18', num_classes=10), verbose=False, num_subnets=2, kl_weight=0.5,
                        normalize='kl')
    assert a.config == b.config and (a.num_subnets, a.base_kl_weight, a.normalize) == (2, 0.5, 'kl')


@pytest.mark.slow
def test_stpp_recipe_resolves_subnet_sizes_from_the_training_size():
    """The stpp recipe trains at 200 px (--train-img-sizes 200) and evaluates at 224: sizes come from 200."""
    args, _ = parse_args(['-c', 'resnet50_imagenet_stpp'])
    args.rank = 0  # as train_stim.py sets it (utils.init_distributed_device)
    model = create_train_model(args)
    from timm.data import resolve_data_config
    data_config = resolve_data_config(vars(args), model=model, verbose=False)
    assert data_config['input_size'] == (3, 224, 224)
    sizes = train_input_sizes(args, data_config['input_size'])
    assert sizes == [(3, 200, 200)]
    stim = StimTraining(args)
    stim.prepare_model(model, sizes)
    # official: randint(86, 200) for the 200 px crop
    assert stim.summary['subnet_input_short_side'] == [86, 200] and stim.summary['input_size'] == [3, 200, 200]
    # the compute budget counts the same sizes
    plan = resolve_config(dataclasses.replace(stim.config, num_subnets=0, budget=1.0), stim.stimulator, sizes).plan
    assert plan.describe().count('86-200 px of 200') == 1


def test_scheduled_sizes_all_count():
    model = timm.create_model('resnet18', num_classes=10)
    stim = attach(model, 'uniform')
    resolved = resolve_config(StimConfig(num_subnets=1, min_scale=0.5), stim, [(3, 64, 64), (3, 96, 96)])
    assert resolved.summary['subnet_input_short_side'] == [32, 96]
    assert resolved.summary['train_input_sizes'] == [[3, 64, 64], [3, 96, 96]]


def test_a_huge_budget_is_warned_about(caplog):
    args, _ = parse_args(['--model', 'resnet18', '--stim-budget', '1000', '--input-size', '3', '16', '16'])
    args.rank = 0
    stim = StimTraining(args)
    stim.prepare_model(timm.create_model('resnet18', num_classes=10), [(3, 16, 16)])
    assert stim.resolved.config.num_subnets > 1000
    assert 'subnetworks per step: each step costs about' in caplog.text


def test_bfloat16_on_the_cpu_warns_where_a_convolution_strides_across_a_one_pixel_map(caplog):
    # torch's CPU bfloat16 convolution sometimes returns NaN weight gradients when it strides across a map 1 px high
    # or wide (a 3x3 stride-2 convolution on a 1x1 map: 17 of 30 backward passes on this project's machine). A
    # ResNet-18's last stage meets one at inputs of 16 px or less; ST's subnetwork inputs reach there from 32 px.
    model = timm.create_model('resnet18', num_classes=10)
    assert strided_convs_on_single_pixel_maps(model, 3, 16, 16) == ['layer4.0.conv1']
    assert strided_convs_on_single_pixel_maps(model, 3, 17, 17) == []
    assert model.training  # the probe leaves the mode as it was
    assert cpu_bfloat16_conv_hazard(model, (3, 32, 32), 0.5) == {
        'side': 16, 'layers': ['layer4.0.conv1'], 'needed': 17, 'min_scale': 0.532}
    assert cpu_bfloat16_conv_hazard(model, (3, 16, 16), 0.5)['needed'] is None  # the full network meets one too
    assert cpu_bfloat16_conv_hazard(model, (3, 64, 64), 0.5) is None

    args, _ = parse_args(['--model', 'resnet18', '--stim-subnets', '2', '--stim-min-scale', '0.5', '--amp',
                          '--device', 'cpu', '--input-size', '3', '32', '32'])
    args.rank = 0
    StimTraining(args).prepare_model(model, [(3, 32, 32)], cpu_bfloat16=False)
    assert 'bfloat16' not in caplog.text
    StimTraining(args).prepare_model(timm.create_model('resnet18', num_classes=10), [(3, 32, 32)], cpu_bfloat16=True)
    assert ('subnetwork inputs down to 16 px make layer4.0.conv1 stride across a map 1 px high or wide' in caplog.text
            and 'Use --stim-min-scale 0.532 or more (inputs of at least 17 px)' in caplog.text)
    caplog.clear()
    StimTraining(args).prepare_model(timm.create_model('resnet18', num_classes=10), [(3, 64, 64)], cpu_bfloat16=True)
    assert 'bfloat16' not in caplog.text


def test_readme_library_example_runs():
    text = open(os.path.join(ROOT, 'README.md')).read()
    code = text.split('## Library\n', 1)[1].split('```python\n', 1)[1].split('```', 1)[0]
    namespace = {}
    exec(compile(code, 'README.md', 'exec'), namespace)
    assert namespace['result']['stim_kl'] > 0 and timm_stim_get(namespace) is None


def timm_stim_get(namespace):
    """The model after the example's ``stim.detach()``: no stimulator left."""
    from timm_stim import get_stimulator
    return get_stimulator(namespace['model'])
