"""Spaces and the subnetwork sampler."""
from collections import Counter

import pytest
import torch

import timm_stim
from timm_stim import resolve_space

R50 = (3, 4, 6, 3)


def _stim(space='uniform', mode='depth', name='resnet50'):
    return timm_stim.get_stimulator(timm_stim.create_model(name, num_classes=5, stim_space=space, stim_mode=mode))


@pytest.mark.parametrize('space,depths', [
    ('uniform', ((1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6), (1, 2, 3))),
    ('keep:2', ((2, 3), (2, 3, 4), (2, 3, 4, 5, 6), (2, 3))),
    ('stpp', ((3,), (3, 4), (3, 4, 5, 6), (3,))),  # the official space3
    ('0,1,3,0', ((3,), (3, 4), (3, 4, 5, 6), (3,))),
    ('0,0,2,0', ((3,), (4,), (4, 5, 6), (3,))),  # official space5
    ([1, 2, 4, 1], ((2, 3), (2, 3, 4), (2, 3, 4, 5, 6), (2, 3))),  # official space1
])
def test_resnet50_depth_choices(space, depths):
    assert _stim(space).depth_choices == depths


def test_stpp_rule_on_other_depths():
    # ResNet-101 / -152 middle stages; d=2 stages keep min(3, 1) = 1; first/last fixed.
    assert resolve_space('stpp', (3, 4, 23, 3)) == (0, 1, 20, 0)
    assert resolve_space('stpp', (3, 8, 36, 3)) == (0, 5, 33, 0)
    assert resolve_space('stpp', (2, 2, 2, 2)) == (0, 1, 1, 0)
    assert resolve_space('stpp', (1, 1, 1, 1)) == (0, 0, 0, 0)


@pytest.mark.parametrize('space', ['uniform', 'stpp', 'keep:2'])
@pytest.mark.parametrize('mode', ['depth', 'drop'])
def test_depth_frequencies_match_space(space, mode):
    stim = _stim(space, mode)
    g = torch.Generator().manual_seed(0)
    n = 3000
    samples = [stim.sample(g) for _ in range(n)]
    for stage, choices in enumerate(stim.depth_choices):
        counts = Counter(s.depths[stage] for s in samples)
        assert set(counts) == set(choices)
        expected = n / len(choices)
        for depth in choices:
            # Binomial standard deviation is below sqrt(n/4) ~ 27; allow ~4 sigma.
            assert abs(counts[depth] - expected) < 110, (stage, depth, counts)


def test_depth_mode_keeps_prefix():
    stim = _stim('uniform', 'depth')
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        s = stim.sample(g)
        assert all(kept == tuple(range(len(kept))) for kept in s.blocks)


def test_drop_mode_never_drops_block_zero_and_drops_any_other():
    stim = _stim('uniform', 'drop')
    g = torch.Generator().manual_seed(0)
    dropped_seen = Counter()
    for _ in range(2000):
        s = stim.sample(g)
        for stage, kept in enumerate(s.blocks):
            assert kept[0] == 0
            for b in range(stim.stage_depths[stage]):
                if b not in kept:
                    dropped_seen[(stage, b)] += 1
    expected = {(s, b) for s, d in enumerate(R50) for b in range(1, d)}
    assert set(dropped_seen) == expected


def test_same_seed_same_sequence():
    stim = _stim('stpp')
    a = [stim.sample(torch.Generator().manual_seed(7)) for _ in range(1)]
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    seq1 = [stim.sample(g1) for _ in range(50)]
    seq2 = [stim.sample(g2) for _ in range(50)]
    assert seq1 == seq2 and seq1[0] == a[0]
    g3 = torch.Generator().manual_seed(8)
    assert [stim.sample(g3) for _ in range(50)] != seq1


@pytest.mark.parametrize('space,match', [
    ('0,1,3', 'gives 3 per-stage drops but the model has 4 stages'),
    ([0, 1, 3, 0, 0], 'gives 5 per-stage drops but the model has 4 stages'),
    ('0,-1,3,0', 'stage 1 drop -1 is negative'),
    ('0,1,6,0', 'stage 2 has 6 blocks, so at most 5 can be dropped'),
    ('4,0,0,0', 'stage 0 has 3 blocks, so at most 2 can be dropped'),
    ('banana', "Unknown space 'banana'"),
    ('keep:0', "'keep:K' needs an integer K >= 1"),
    ('keep:x', "'keep:K' needs an integer K >= 1"),
    ([0, 1.5, 0, 0], 'per-stage drops must be ints'),
    (3, 'Invalid space 3'),
])
def test_bad_spaces_are_refused(space, match):
    with pytest.raises(ValueError, match=match) as info:
        resolve_space(space, R50)
    assert '(3, 4, 6, 3)' in str(info.value) or 'keep' in str(info.value)
