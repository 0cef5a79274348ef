"""--torchcompile with stimulative training: blocks compiled once, shared by the full network and every subnetwork."""
import copy
import itertools
import logging
import os

import pytest
import timm
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from timm_stim import StimulativeTask
from timm_stim.subnet import Subnet

pytestmark = pytest.mark.slow  # inductor compiles each distinct block at each size (tens of seconds on a CPU)


def _tiny_resnet():
    torch.manual_seed(0)
    return timm.create_model('resnet18', channels=(8, 16, 32, 64), stem_width=8, num_classes=10)


def _pass(model, stim, subnet, x):
    """Logits and the gradient of every parameter (None where none) of one subnetwork pass."""
    model.zero_grad(set_to_none=True)
    with stim.activate(subnet):
        logits = model(x)
        logits.square().mean().backward()
    return logits.detach(), [p.grad for p in model.parameters()]


def test_compiled_subnetworks_equal_eager_skip_dropped_blocks_and_never_recompile_after_warmup():
    # dynamo's code cache and limits are global to a process: an earlier test that compiled other
    # ResNet blocks (e.g. a timm-stim family latency run) would fill them. A fresh interpreter
    # measures what a training process does.
    import subprocess
    import sys
    code = ('import sys; sys.path.insert(0, sys.argv[1]); import test_compile; '
            'test_compile._compiled_subnetworks_equal_eager_and_never_recompile()')
    tests = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run([sys.executable, '-c', code, tests], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _compiled_subnetworks_equal_eager_and_never_recompile():
    """Run in a fresh interpreter by the test above."""
    torch._dynamo.reset()
    model = _tiny_resnet()
    eager = copy.deepcopy(model)
    # A grid of 8 px: subnetwork inputs of a 16 px batch are 8 or 16 px.
    task = StimulativeTask(model, num_subnets=2, min_scale=0.5, size_multiple=8, seed=0)
    eager_task = StimulativeTask(eager, num_subnets=2, min_scale=0.5, size_multiple=8, seed=0)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger('timm_stim.task').addHandler(handler)
    logging.getLogger('timm_stim.task').setLevel(logging.INFO)
    task.compile(backend='inductor')
    assert any('compiling 8 resnet blocks one by one' in r.getMessage() for r in records)
    assert task.trainable_module is model and task.get_eval_model() is model  # not a whole-network graph
    stim, eager_stim = task.stimulator, eager_task.stimulator
    x = torch.randn(4, 3, 16, 16)

    # Warm-up: the full network at each size the grid draws compiles every distinct block there. The
    # task first makes room in dynamo's cache for the graphs of these sizes, as before a training step
    # (dynamo's limits are global: an earlier test in this process may have used them).
    task._compiled_step(x)
    for side in (16, 8):
        _pass(model, stim, stim.full(), x[..., :side, :side])
    # ... and two training steps: subnetwork passes run inside the loss's backward, a context of their own.
    torch.manual_seed(0)
    for _ in range(2):
        task.forward(x, torch.randint(0, 10, (4,)))['loss'].backward()
    graphs = counters['stats']['unique_graphs']

    subnets = [Subnet.from_depths(d) for d in itertools.product(*stim.depth_choices)]
    assert len(subnets) == 16
    with torch._dynamo.config.patch(error_on_recompile=True):
        for subnet, side in itertools.product(subnets, (8, 16)):
            inputs = torch.nn.functional.interpolate(x, size=(side, side), mode='bilinear', antialias=True)
            logits, grads = _pass(model, stim, subnet, inputs)
            eager_logits, eager_grads = _pass(eager, eager_stim, subnet, inputs)
            torch.testing.assert_close(logits, eager_logits, rtol=1e-4, atol=1e-5)
            for (name, _), g, e in zip(model.named_parameters(), grads, eager_grads):
                assert (g is None) == (e is None), name  # dropped blocks compute nothing, get no gradient
                if g is not None:
                    torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-5, msg=name)
        # Training steps of the task draw subnetworks and sizes: still no compile.
        for _ in range(3):
            task.forward(x, torch.randint(0, 10, (4,)))['loss'].backward()
            assert {size for _, size in task.last_subnets} <= {(8, 8), (16, 16)}
    assert counters['stats']['unique_graphs'] == graphs


def test_a_family_whose_blocks_cannot_compile_alone_says_so_and_compiles_the_full_network(caplog, monkeypatch):
    model = _tiny_resnet()
    task = StimulativeTask(model, num_subnets=1)
    monkeypatch.setattr(type(task.stimulator.adapter), 'blockwise_compile', False)
    with caplog.at_level(logging.INFO, logger='timm_stim.task'):
        compiled = task.compile(backend='eager')
    assert 'resnet blocks cannot be compiled one by one; the full network runs compiled, subnetworks run eager' \
        in caplog.text
    assert compiled is task.trainable_module and compiled._orig_mod is model and not task.stimulator.compiled


@pytest.mark.parametrize('distill_type', ['logit', 'feature'])
def test_train_stim_torchcompile_compiles_blocks_with_amp_channels_last_ema_and_distillation(tmp_path, monkeypatch,
                                                                                            distill_type):
    # dynamo's eager backend: the same block-wise regions and guards as inductor, without codegen.
    import timm_stim.training.train as train_mod
    from timm_stim.training.train import main
    teacher = timm.create_model('resnet18', num_classes=10)
    timm.models.save_for_hf(teacher, str(tmp_path / 'teacher'))
    created = []
    original = train_mod.create_train_task
    monkeypatch.setattr(train_mod, 'create_train_task', lambda *a, **k: created.append(original(*a, **k)) or created[-1])
    result = main(['--dataset', 'embedded/digits', '--model', 'resnet18', '--num-classes', '10', '--device', 'cpu',
                   '--input-size', '3', '16', '16', '-b', '8', '--workers', '0', '--epochs', '1',
                   '--train-batches-per-epoch', '2', '--output', str(tmp_path), '--experiment', 'run',
                   '--torchcompile', 'eager', '--amp', '--channels-last', '--model-ema',
                   '--kd-model-name', f'local-dir:{tmp_path / "teacher"}', '--kd-distill-type', distill_type,
                   '--stim-subnets', '2', '--stim-min-scale', '0.5', '--stim-size-multiple', '8'])
    task = created[0]
    assert task.stimulator.compiled and task.stimulator.model is timm_stim_model(task)
    assert not isinstance(task.trainable_module, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(task.eval_model_ema, torch._dynamo.eval_frame.OptimizedModule)  # EMA: whole, no subnetworks
    assert len(task.last_subnets) == 2 and all(size in ((8, 8), (16, 16)) for _, size in task.last_subnets)
    assert result['epochs'][0]['train']['stim_kl'] > 0


def timm_stim_model(task):
    from timm.utils import unwrap_model
    module = unwrap_model(task.trainable_module)
    return getattr(module, 'student', module)
