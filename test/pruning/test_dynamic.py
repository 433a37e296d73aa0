import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specprune_ros.pruning import LayerImportance, rank_weights, ranks


def test_ranks_put_the_highest_score_first():
    assert ranks(torch.tensor([0.1, 0.7, 0.3])).tolist() == [2, 0, 1]


def test_rank_weights_match_eq8():
    k = 0.5
    w = rank_weights(torch.tensor([0.1, 0.7, 0.3]), k)
    sig = [1 / (1 + math.exp(k * r)) for r in (2, 0, 1)]
    expected = [s / sum(sig) for s in sig]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_ema_matches_a_hand_computation():
    beta, k = 0.2, 1.0
    imp = LayerImportance(3, beta=beta, sharpness=k)
    sig = lambda r: 1 / (1 + math.exp(k * r))  # noqa: E731
    norm = sig(0) + sig(1) + sig(2)

    imp.update(torch.tensor([0.9, 0.5, 0.1]), torch.tensor(2.0))      # ranks 0 1 2
    layer1 = [beta * 2.0 * sig(r) / norm for r in (0, 1, 2)]
    assert imp.ema.tolist() == pytest.approx(layer1, rel=1e-6)

    imp.update(torch.tensor([0.1, 0.5, 0.9]), torch.tensor(0.5))      # ranks 2 1 0
    layer2 = [(1 - beta) * e + beta * 0.5 * sig(r) / norm for e, r in zip(layer1, (2, 1, 0))]
    assert imp.ema.tolist() == pytest.approx(layer2, rel=1e-6)


def test_a_confident_layer_outweighs_a_diffuse_one():
    imp = LayerImportance(2, beta=0.5, sharpness=1.0)
    imp.update(torch.tensor([1.0, 0.0]), torch.tensor(10.0))   # confident: token 0
    imp.update(torch.tensor([0.0, 1.0]), torch.tensor(0.1))    # diffuse: token 1
    assert imp.ema[0] > imp.ema[1]


def test_drop_removes_the_lowest_share_and_reindexes():
    imp = LayerImportance(10, beta=1.0, sharpness=1.0)
    scores = torch.tensor([0.0, 9, 1, 8, 2, 7, 3, 6, 4, 5])
    imp.update(scores, torch.tensor(1.0))
    kept = imp.drop(0.2)
    assert kept.tolist() == [1, 3, 4, 5, 6, 7, 8, 9]   # floor(0.2 * 10) = 2 lowest (0, 2) dropped
    assert len(imp) == 8


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), ratio=st.floats(0, 0.9), layers=st.integers(1, 4), seed=st.integers(0, 999))
def test_drop_properties(n, ratio, layers, seed):
    g = torch.Generator().manual_seed(seed)
    imp = LayerImportance(n, beta=0.2, sharpness=0.05)
    for _ in range(layers):
        imp.update(torch.rand(n, generator=g), torch.rand((), generator=g) + 0.1)
    before = imp.ema.clone()
    kept = imp.drop(ratio)
    assert kept.numel() == n - int(ratio * n) >= 1
    assert torch.all(kept[1:] > kept[:-1])
    assert torch.equal(imp.ema, before[kept])
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[kept] = False
    if dropped.any():
        assert before[dropped].max() <= before[kept].min()


def test_the_coverage_floor_drops_each_blocks_best_token_last():
    from specprune_ros.pruning.dynamic import LayerImportance
    importance = LayerImportance(6, 1.0, 0.05)
    importance._ema = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.05, 0.01])
    blocks = torch.tensor([0, 0, 0, 1, 1, 2])
    # plain: the three highest (0, 1, 3); with the floor each block keeps its best (0, 3, 5)
    assert LayerImportance.drop(importance, 0.5, blocks, 3).tolist() == [0, 3, 5]
    plain = LayerImportance(6, 1.0, 0.05)
    plain._ema = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.05, 0.01])
    assert plain.drop(0.5).tolist() == [0, 1, 3]
