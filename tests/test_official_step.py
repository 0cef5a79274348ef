"""The library's step with ``resize='official'`` and ``bn='update'`` equals the authors' training step.

``_authors_step`` restates one iteration of ``train()`` in the authors' ``train.py``
(Sunshine-Ye/NIPS22-ST), in their order: full forward; with ``--norm_kd`` the logits are
layer-normed (eps 1e-7) times the amplitude and the cross-entropy is taken on them; that loss is
back-propagated; then per subnetwork: the depths are set, with ``--Snet_Dtrans`` (``Dtrans7``)
the CURRENT input is resized with torchvision's ``Resize((s, s))`` (tensors, no antialias, as
torchvision did before 0.17) and normalized again with the dataset mean / std, so sizes compound
from one subnetwork to the next; the subnetwork runs in train mode (BatchNorm running statistics
update); ``KLDivLoss(batchmean)(log_softmax(u * 1 / T), softmax(t * 1 / T)) * T * T`` times
``kl_coef`` is back-propagated. Their model runs the first ``depth_i`` blocks of each stage; the
reference does the same on the timm model's modules, without timm_stim.

The random draws differ by design: the authors draw depths from NumPy and sizes from Python's
``random``; the library draws both from the task's own ``torch.Generator``. So the reference
consumes the library's draws (``task.last_subnets``) and everything else must then be equal.

Tolerance: none. Subnetwork inputs, every loss, every gradient and every BatchNorm buffer are
compared with ``torch.equal`` (bit for bit), over two optimizer steps.
"""
import copy
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

import timm_stim.task as task_module
from timm_stim.inputs import renormalize_batch, resize_batch, sample_input_size
from timm_stim.task import StimulativeTask, kl_weight_at

SIZE = 64




def _tiny_resnet50() -> nn.Module:
    # ResNet-50's stage depths (3, 4, 6, 3), so the official sampling spaces apply, at 1/8 of its
    # widths; every BN weight 1 as the authors' init (zero_init_last=False).
    torch.manual_seed(0)
    return timm.create_model('resnet50', num_classes=10, channels=(8, 16, 32, 64), stem_width=8,
                             zero_init_last=False)


def _subnet_forward(model: nn.Module, x: torch.Tensor, depths) -> torch.Tensor:
    """The authors' Model.forward: the stem, the first depths[i] blocks of stage i, pooling, fc."""
    x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
    for stage, depth in zip((model.layer1, model.layer2, model.layer3, model.layer4), depths):
        x = stage[:depth](x)
    return model.forward_head(x)


def _authors_step(model, input, target, draws, *, norm_kd, amplitude, temp, kl_coef, snet_dtrans):
    """One iteration of the authors' train() up to (not including) optimizer.step().

    Args:
        draws: per subnetwork, (depths, aux_size) as their sample() and random.randint drew them.

    Returns:
        (main loss, [KL per subnetwork], [input per subnetwork]).
    """
    normalize = transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    num_classes = model.num_classes
    max_output = model(input)
    if norm_kd:
        max_output = F.layer_norm(max_output, torch.Size((num_classes,)), None, None, 1e-7) * amplitude
    loss = torch.mean(nn.CrossEntropyLoss()(max_output, target))
    max_output_detach = max_output.detach()
    loss.backward()
    kls, inputs = [], []
    for depths, aux_size in draws:
        if snet_dtrans:
            snet_dtrans_tf = transforms.Compose([
                transforms.Resize((aux_size, aux_size), antialias=False),
                normalize,
            ])
            input = snet_dtrans_tf(input)
        inputs.append(input)
        output = _subnet_forward(model, input, depths)
        if norm_kd:
            output = F.layer_norm(output, torch.Size((num_classes,)), None, None, 1e-7) * amplitude
        kl_loss = nn.KLDivLoss(reduction='batchmean')(
            F.log_softmax(output * 1 / temp, dim=1), F.softmax(max_output_detach * 1 / temp, dim=1)) * temp * temp
        (kl_coef * kl_loss).backward()
        kls.append(kl_loss.detach())
    return loss.detach(), kls, inputs


# The README rows whose step differs: plain ST, and ST++ (KL-, 6 subnetworks, Dtrans7, space3).
ROWS = {
    'st': dict(task=dict(num_subnets=1, space='uniform', normalize='none'),
               authors=dict(norm_kd=False, snet_dtrans=False)),
    'stpp': dict(task=dict(num_subnets=6, space='0,1,3,0', normalize='all', min_scale=0.43, max_scale=1.0),
                 authors=dict(norm_kd=True, snet_dtrans=True)),
}


@pytest.mark.parametrize('row', sorted(ROWS))
def test_step_equals_the_authors_step(row, monkeypatch):
    settings = ROWS[row]
    ours_model = _tiny_resnet50()
    ref_model = copy.deepcopy(ours_model)
    task = StimulativeTask(ours_model, nn.CrossEntropyLoss(), mode='depth', bn='update', resize='official',
                           input_mean=IMAGENET_DEFAULT_MEAN, input_std=IMAGENET_DEFAULT_STD, amplitude=1.0,
                           temperature=1.0, kl_weight=1.0, seed=5, verbose=False, **settings['task'])
    ours_model.train()
    ref_model.train()
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=1e-4)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=1e-4)

    # What the library feeds the model, and each KL term it computes.
    seen_inputs, kls = [], []
    ours_model.register_forward_pre_hook(lambda module, args: seen_inputs.append(args[0]))
    stim_kl = task_module.stim_kl
    monkeypatch.setattr(task_module, 'stim_kl', lambda *a, **k: _record(stim_kl, kls, *a, **k))

    generator = torch.Generator().manual_seed(1)
    for step in range(2):
        x = torch.randn(4, 3, SIZE, SIZE, generator=generator)
        y = torch.randint(0, 10, (4,), generator=generator)
        seen_inputs.clear()
        kls.clear()
        ours_opt.zero_grad()
        result = task(x, y)
        result['loss'].backward()  # adds nothing: every term is already back-propagated
        draws = [(subnet.depths, size[0]) for subnet, size in task.last_subnets]
        assert all(size[0] == size[1] for _, size in task.last_subnets)

        ref_opt.zero_grad()
        ref_loss, ref_kls, ref_inputs = _authors_step(
            ref_model, x, y, draws, amplitude=1.0, temp=1.0, kl_coef=1.0, **settings['authors'])

        assert torch.equal(seen_inputs[0], x)
        assert len(seen_inputs) == 1 + len(ref_inputs) == 1 + settings['task']['num_subnets']
        for ours_input, ref_input in zip(seen_inputs[1:], ref_inputs):
            assert torch.equal(ours_input, ref_input)
        assert torch.equal(result['loss'].detach(), ref_loss)
        assert len(kls) == len(ref_kls) and all(torch.equal(a, b) for a, b in zip(kls, ref_kls))
        assert torch.equal(result['stim_kl'], sum(ref_kls, torch.zeros(())) / len(ref_kls))  # logged mean
        for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            assert p.grad is None or torch.equal(p.grad, q.grad), name
        for (name, a), b in zip(ours_model.named_buffers(), ref_model.buffers()):
            assert torch.equal(a, b), name
        ours_opt.step()
        ref_opt.step()

    if row == 'stpp':
        sizes = [size[0] for _, size in task.last_subnets]
        assert len(set(sizes)) > 1 and min(sizes) >= math.floor(SIZE * 0.43)
        # Compounding: the last subnetwork's input is not the original batch resized once.
        last_size = task.last_subnets[-1][1]
        once = renormalize_batch(resize_batch(x, last_size, antialias=False), IMAGENET_DEFAULT_MEAN,
                                 IMAGENET_DEFAULT_STD)
        assert not torch.allclose(seen_inputs[-1], once)
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


def _record(fn, store, *args, **kwargs):
    value = fn(*args, **kwargs)
    store.append(value.detach())
    return value


@pytest.mark.parametrize('crop', [200, 224, SIZE])
def test_sizes_are_drawn_like_randint_of_the_authors(crop):
    """Theirs: random.randint(int(S * 0.43), S), both ends included; ours the same set, uniformly."""
    generator = torch.Generator().manual_seed(0)
    counts = {}
    draws = 60 * (crop - int(crop * 0.43) + 1)
    for _ in range(draws):
        side, other = sample_input_size(crop, crop, 0.43, 1.0, generator)
        assert side == other
        counts[side] = counts.get(side, 0) + 1
    assert set(counts) == set(range(int(crop * 0.43), crop + 1))
    assert max(counts.values()) < 2.5 * min(counts.values())


def test_antialias_defaults_and_overrides():
    def task(**kwargs):
        return StimulativeTask(_tiny_resnet50(), min_scale=0.5, verbose=False, **kwargs)
    assert task().antialias is True and task(resize='official').antialias is False
    assert task(antialias=False).antialias is False and task(resize='official', antialias=True).antialias is True
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(resize_batch(x, (13, 13)), resize_batch(x, (13, 13), antialias=False))


def test_official_input_keeps_channels_last():
    x = torch.randn(2, 3, 32, 32)
    out = renormalize_batch(resize_batch(x.contiguous(memory_format=torch.channels_last), (20, 20), False),
                            IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, renormalize_batch(resize_batch(x, (20, 20), False), IMAGENET_DEFAULT_MEAN,
                                              IMAGENET_DEFAULT_STD))


@pytest.mark.parametrize('kwargs,message', [
    (dict(resize='compound'), 'resize'),
    (dict(antialias='yes'), 'antialias'),
    (dict(input_std=(0.2, 0.0, 0.2)), 'input_std'),
    (dict(input_mean=(0.5, 0.5)), 'input_mean'),
    (dict(weight_sched_step='update'), 'weight_sched_step'),
])
def test_bad_resize_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StimulativeTask(_tiny_resnet50(), verbose=False, **kwargs)


@pytest.mark.parametrize('schedule,authors', [
    ('cos-up', lambda epoch, epochs: 1.0 * 0.5 * (1 - math.cos(math.pi * epoch / epochs))),  # kl_cos
    ('cos-down', lambda epoch, epochs: 1.0 - 1.0 * 0.5 * (1 - math.cos(math.pi * epoch / epochs))),  # kl_rcos
])
def test_weight_schedule_stepping_per_epoch_is_the_authors(schedule, authors):
    epochs, batches = 5, 4
    per_epoch = StimulativeTask(_tiny_resnet50(), weight_sched=schedule, weight_sched_step='epoch', verbose=False)
    per_epoch.configure_training(epochs=epochs, batches_per_epoch=batches)
    per_batch = StimulativeTask(_tiny_resnet50(), weight_sched=schedule, verbose=False)
    per_batch.configure_training(epochs=epochs, batches_per_epoch=batches)
    for epoch in range(epochs):
        for batch in range(batches):
            per_epoch.set_progress(epoch, batch)
            per_batch.set_progress(epoch, batch)
            assert per_epoch.kl_weight == pytest.approx(authors(epoch, epochs), abs=1e-12)
            assert per_batch.kl_weight == pytest.approx(
                kl_weight_at(1.0, schedule, (epoch + batch / batches) / epochs), abs=1e-12)
    assert per_batch.kl_weight != per_epoch.kl_weight
