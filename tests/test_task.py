"""StimulativeTask: gradients, sizes, RNG state, AMP, DDP."""
import copy
import dataclasses
import os

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.loss import SoftTargetCrossEntropy
from timm.task import TrainingTask

import timm_stim
from timm_stim import StimulativeTask, stim_kl
from timm_stim.losses import logit_norm
from timm_stim.inputs import resize_batch
from helpers import make_input


def _model(name='resnet18', **kw):
    return timm.create_model(name, num_classes=5, **kw).train()


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def _reference_grads(model, x, y, task, criterion):
    """Gradient of L_main + w * sum_k L_k for the subnets and sizes the task used."""
    stim = timm_stim.get_stimulator(model) or timm_stim.attach(model, bn=task.stimulator.bn)
    z = model(x)
    main_logits = logit_norm(z, task.amplitude) if task.normalize == 'all' else z
    total = criterion(main_logits, y)
    for subnet, size in task.last_subnets:
        with stim.activate(subnet):
            u = model(resize_batch(x, size))
        total = total + task.kl_weight * stim_kl(u, z.detach(), task.temperature, task.normalize != 'none',
                                                 task.amplitude)
    total.backward()
    return _grads(model)


@pytest.mark.parametrize('normalize', ['none', 'kl', 'all'])
def test_task_gradient_equals_summed_loss_gradient(normalize):
    model = _model()
    ref_model = copy.deepcopy(model)
    x, y = make_input(batch=4, size=32), torch.tensor([0, 1, 2, 3])
    task = StimulativeTask(model, num_subnets=3, space='uniform', min_scale=0.5, max_scale=1.0, kl_weight=0.7,
                           normalize=normalize, amplitude=1.5, temperature=2.0, seed=3, verbose=False)
    assert isinstance(task, TrainingTask)
    result = task(x, y)
    result['loss'].backward()
    assert len(task.last_subnets) == 3 and 'stim_kl' in result
    got = _grads(model)
    expected = _reference_grads(ref_model, x, y, task, task.criterion)
    for name in got:
        assert (got[name] is None) == (expected[name] is None), name
        if got[name] is not None:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)
    # The logged KL is the mean of the K unweighted terms, and the task loss is the main loss only.
    assert result['stim_kl'].item() > 0


def test_subnetwork_terms_follow_what_the_loop_does_to_the_loss():
    # A loop divides the loss for accumulation and multiplies it by a loss scale (timm's
    # NativeScaler): every term, subnetworks included, must receive the same factor.
    model = _model()
    ref_model = copy.deepcopy(model)
    x, y = make_input(batch=4, size=32), torch.tensor([0, 1, 2, 3])
    task = StimulativeTask(model, num_subnets=2, seed=1, verbose=False)
    result = task(x, y)
    (result['loss'] / 2 * 8.0).backward()
    expected = _reference_grads(ref_model, x, y, task, task.criterion)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, expected[name] * 4.0, rtol=1e-5, atol=1e-5, msg=name)


def test_task_loss_is_back_propagated_before_any_subnetwork_runs():
    # The official step order: when the first subnetwork starts, the gradients already hold
    # exactly the task loss's gradient (and the full network's graph is gone).
    model = _model()
    ref_model = copy.deepcopy(model)
    x, y = make_input(batch=4, size=32), torch.tensor([0, 1, 2, 3])
    task = StimulativeTask(model, num_subnets=2, seed=0, verbose=False)
    grads_at_first_subnet = []
    activate = task.stimulator.activate

    def recording_activate(subnet):
        if not grads_at_first_subnet:
            grads_at_first_subnet.append(_grads(model))
        return activate(subnet)

    task.stimulator.activate = recording_activate
    task(x, y)['loss'].backward()  # the loop's backward runs the task loss's, then the subnetworks'
    task.criterion(ref_model(x), y).backward()
    for name, expected in _grads(ref_model).items():
        torch.testing.assert_close(grads_at_first_subnet[0][name], expected, rtol=1e-5, atol=1e-6, msg=name)


class _SavedTensorMeter:
    """Bytes of tensors autograd keeps for backward that are alive at once (peak over a step)."""

    class _Box:
        def __init__(self, tensor):
            self.tensor = tensor

    def __init__(self):
        self.live = self.peak = 0

    def _release(self, nbytes):
        self.live -= nbytes

    def pack(self, tensor):
        import weakref
        box = self._Box(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._release, nbytes)
        return box

    @staticmethod
    def unpack(box):
        return box.tensor


def _peak_saved_bytes(task, x, y):
    meter = _SavedTensorMeter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        task(x, y)['loss'].backward()
    return meter.peak


def test_only_one_graph_is_alive_at_a_time():
    # Peak memory of a step is set by the activations autograd saves. With the task loss
    # back-propagated first and each subnetwork's term right after its forward, a step with
    # K full-size subnetworks keeps no more saved tensors alive than a plain step.
    x, y = make_input(batch=4, size=32), torch.tensor([0, 1, 2, 3])
    plain = _peak_saved_bytes(StimulativeTask(_model(), num_subnets=0, verbose=False), x, y)
    stim = StimulativeTask(_model(), num_subnets=3, space='keep:2', seed=0, verbose=False)
    peak = _peak_saved_bytes(stim, x, y)
    assert len(stim.last_subnets) == 3
    assert plain > 0 and peak <= 1.02 * plain, (peak, plain)


def test_soft_targets_from_mixup():
    model = _model()
    task = StimulativeTask(model, SoftTargetCrossEntropy(), num_subnets=1, verbose=False)
    y = torch.softmax(torch.randn(4, 5), -1)
    result = task(make_input(batch=4, size=32), y)
    result['loss'].backward()
    assert torch.isfinite(result['loss'])


def test_sizes_in_range_and_aspect_ratio_kept():
    model = _model()
    task = StimulativeTask(model, num_subnets=6, min_scale=0.43, max_scale=1.0, seed=0, verbose=False)
    seen = set()
    x = torch.randn(2, 3, 40, 60)
    for _ in range(5):
        task(x, torch.tensor([0, 1]))['loss'].backward()
        for _, (h, w) in task.last_subnets:
            assert 17 <= h <= 40  # floor(40 * 0.43) = 17
            assert abs(w / h - 1.5) < 0.05
            seen.add(h)
    assert len(seen) > 5


def test_min_scale_one_keeps_input_untouched():
    model = _model()
    task = StimulativeTask(model, num_subnets=2, verbose=False)
    task(make_input(size=32), torch.tensor([0, 1]))
    assert all(size == (32, 32) for _, size in task.last_subnets)


def test_generator_state_restores_the_same_draws():
    model = _model()
    task = StimulativeTask(model, num_subnets=4, min_scale=0.5, seed=11, verbose=False)
    x, y = make_input(size=32), torch.tensor([0, 1])
    task(x, y)
    state = copy.deepcopy(task.get_task_state())
    task(x, y)
    first = list(task.last_subnets)
    task.load_task_state(state)
    task(x, y)
    assert task.last_subnets == first
    assert task.get_task_state(ema=True) == {}
    other = StimulativeTask(_model(), num_subnets=4, min_scale=0.5, seed=11, verbose=False)
    other(x, y)
    other(x, y)
    assert other.last_subnets == first  # same seed, same sequence


def test_start_epoch_and_eval_and_off():
    model = _model()
    task = StimulativeTask(model, num_subnets=2, start_epoch=2, verbose=False)
    x, y = make_input(size=32), torch.tensor([0, 1])
    task.set_epoch(1)
    assert 'stim_kl' not in task(x, y)
    task.set_epoch(2)
    assert 'stim_kl' in task(x, y)
    task.eval()
    assert 'stim_kl' not in task(x, y)
    task.train()
    with torch.no_grad():
        assert 'stim_kl' not in task(x, y)
    off = StimulativeTask(_model(), num_subnets=0, verbose=False)
    assert set(off(x, y)) == {'loss', 'output'}


def test_bf16_autocast_and_channels_last():
    model = _model().to(memory_format=torch.channels_last)
    task = StimulativeTask(model, num_subnets=2, min_scale=0.5, normalize='all', verbose=False)
    x = make_input(batch=4, size=32).to(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        result = task(x, torch.tensor([0, 1, 2, 3]))
    result['loss'].backward()
    assert torch.isfinite(result['loss']) and torch.isfinite(result['stim_kl'])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_uses_attached_stimulator():
    model = timm_stim.create_model('resnet18', num_classes=5, stim_space='stpp')
    task = StimulativeTask(model, num_subnets=1, verbose=False)
    assert task.stimulator is timm_stim.get_stimulator(model) and task.stimulator.space == 'stpp'
    with pytest.raises(ValueError, match='not both'):
        StimulativeTask(model, num_subnets=1, space='uniform', verbose=False)


def test_the_task_reads_its_options_from_its_config():
    task = StimulativeTask(_model(), num_subnets=2, min_scale=0.5, resize='official', verbose=False)
    # what it trains with: the antialias default of the resize mode, no KL warm-in unless resolved
    assert (task.config.num_subnets, task.config.antialias, task.config.weight_warmup_epochs) == (2, False, 0.0)
    assert (task.num_subnets, task.min_scale, task.resize, task.antialias) == (2, 0.5, 'official', False)
    with pytest.raises(AttributeError, match='dataclasses.replace'):
        task.num_subnets = 3  # would change nothing the task reads
    task.config = dataclasses.replace(task.config, num_subnets=3)
    task(make_input(size=32), torch.tensor([0, 1]))
    assert len(task.last_subnets) == 3


def test_a_stimulative_distillation_task_keeps_the_teachers_temperature():
    from timm.task import LogitDistillationTask
    cls = timm_stim.stimulative_task_class(LogitDistillationTask)
    student = _model()
    task = cls(student, _model().eval(), temperature=4.0, stim={'num_subnets': 1, 'temperature': 2.0}, verbose=False)
    # The distillation loss divides by task.temperature; the subnetwork KL by the config's.
    assert task.temperature == 4.0 and task.config.temperature == 2.0
    x, y = make_input(size=32), torch.tensor([0, 1])
    reference = LogitDistillationTask(student, task.teacher, temperature=4.0, verbose=False)
    assert torch.allclose(task(x, y)['kd_loss'], reference(x, y)['kd_loss'])


def _ddp_worker(rank, world_size, init_file, out_dir, x, y):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = _model()
    task = StimulativeTask(model, num_subnets=3, min_scale=0.5, seed=5, verbose=False)
    task.prepare_distributed()
    half = x.shape[0] // world_size
    xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
    result = task(xs, ys)
    result['loss'].backward()
    torch.save({'grads': _grads(model), 'subnets': task.last_subnets}, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_are_the_average_of_per_rank_gradients(tmp_path):
    x, y = make_input(batch=8, size=32), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'init'), str(tmp_path), x, y), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(2)]
    assert ranks[0]['subnets'] == ranks[1]['subnets']  # every rank runs the same subnets and sizes
    # Single-process reference: the same task on each half, gradients averaged (DDP's mean).
    expected = {}
    for r in range(2):
        torch.manual_seed(0)
        model = _model()
        task = StimulativeTask(model, num_subnets=3, min_scale=0.5, seed=5, verbose=False)
        task(x[r * 4:(r + 1) * 4], y[r * 4:(r + 1) * 4])['loss'].backward()
        for n, g in _grads(model).items():
            expected[n] = expected.get(n, 0) + g / 2
    for rank in ranks:
        for n, g in rank['grads'].items():
            torch.testing.assert_close(g, expected[n], rtol=1e-4, atol=1e-5, msg=n)
