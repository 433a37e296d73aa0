import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specprune_ros.pruning import (
    TokenLayout,
    changed_patch_mask,
    detect_scene_cut,
    patch_cosine_similarity,
    select_static,
    topk_mask,
    union_topk_mask,
)

NEG = float("-inf")


def test_topk_ignores_tokens_without_a_score():
    scores = torch.tensor([[0.5, NEG, 0.9, NEG, 0.1]])
    assert topk_mask(scores, 4).tolist() == [[True, False, True, False, True]]
    assert topk_mask(scores, 0).sum() == 0


def test_union_over_global_layers_is_per_camera():
    # 2 layers x 2 cameras x 4 tokens
    s = torch.tensor([[[4., 3, 2, 1], [1, 2, 3, 4]],
                      [[1., 2, 3, 4], [4, 3, 2, 1]]])
    m = union_topk_mask(s, 1)
    assert m.tolist() == [[True, False, False, True], [True, False, False, True]]


def test_the_token_the_previous_step_ranked_first_is_kept():
    prior = torch.full((2, 1, 16), NEG)
    prior[0, 0, :8] = torch.rand(8)
    prior[0, 0, 6] = 10.0                       # ranked first by the previous step
    local = torch.rand(2, 1, 16)
    local[:, 0, 6] = -1.0                       # and the current shallow layers ignore it
    sel = select_static(prior, local, None, torch.tensor([0.99]), k_global=1, k_local=2, k_dynamic=0)
    assert sel.kept[0, 6]
    assert sel.global_mask[0].nonzero().flatten().tolist() == [6]


def square_frames(offset):
    """A 56x56 grey image (4x4 grid of 14 px patches) with a red 14 px square at `offset`."""
    img = torch.full((1, 3, 56, 56), 60, dtype=torch.uint8)
    y, x = offset
    img[0, :, y:y + 14, x:x + 14] = torch.tensor([250, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    return img


def test_a_moving_square_is_selected_as_dynamic():
    before, after = square_frames((0, 0)), square_frames((28, 28))
    sim = patch_cosine_similarity(after, before)
    dyn = changed_patch_mask(sim, torch.tensor([0.99]), k=4)
    grid = dyn.view(4, 4)
    # The square left patch (0, 0) and arrived in patch (2, 2); nothing else changed.
    assert grid[0, 0] and grid[2, 2]
    assert int(dyn.sum()) == 2


def test_dynamic_set_takes_the_k_least_similar_below_tau():
    sim = torch.tensor([[0.2, 0.995, 0.5, 0.991, 0.1, 0.999]])
    assert changed_patch_mask(sim, torch.tensor([0.99]), 2).tolist() == [[True, False, False, False, True, False]]
    # Only 3 patches are below tau: asking for more gives those 3.
    assert int(changed_patch_mask(sim, torch.tensor([0.99]), 10).sum()) == 3


def test_per_camera_thresholds():
    sim = torch.tensor([[0.991, 0.5], [0.991, 0.5]])
    m = changed_patch_mask(sim, torch.tensor([0.990, 0.992]), 2)
    assert m.tolist() == [[False, True], [True, True]]


def test_scene_cut_keeps_everything():
    prior = torch.rand(2, 2, 16)
    local = torch.rand(2, 2, 16)
    cut = detect_scene_cut(torch.full((1, 16), 0.3), 0.99, 0.6)
    sel = select_static(prior, local, None, torch.tensor([0.99, 0.99]), 1, 1, 0, cut)
    assert bool(sel.fallback) and bool(sel.kept.all())
    some_changed = torch.ones(1, 16)
    some_changed[0, :9] = 0.5            # 9/16 = 56 % changed: not above 60 %
    assert not bool(detect_scene_cut(some_changed, 0.99, 0.6))
    some_changed[0, 9] = 0.5             # 10/16 = 62.5 %
    assert bool(detect_scene_cut(some_changed, 0.99, 0.6))


def test_completely_new_image_is_a_scene_cut_but_a_moving_square_is_not():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (1, 3, 56, 56), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (1, 3, 56, 56), dtype=torch.uint8, generator=g)
    assert bool(detect_scene_cut(patch_cosine_similarity(a, b), 0.99, 0.6))
    moved = patch_cosine_similarity(square_frames((0, 0)), square_frames((0, 14)))
    assert not bool(detect_scene_cut(moved, 0.99, 0.6))


@settings(max_examples=60, deadline=None)
@given(cams=st.integers(1, 3), side=st.integers(2, 8), layers=st.integers(1, 3),
       kg=st.integers(0, 70), kl=st.integers(0, 70), kd=st.integers(0, 70),
       pruned_share=st.floats(0, 1), tau=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_selection_properties(cams, side, layers, kg, kl, kd, pruned_share, tau, seed):
    g = torch.Generator().manual_seed(seed)
    n = side * side
    prior = torch.rand(layers, cams, n, generator=g)
    prior[torch.rand(layers, cams, n, generator=g) < pruned_share] = NEG
    local = torch.rand(2, cams, n, generator=g)
    sim = torch.rand(cams, n, generator=g)
    thresholds = torch.full((cams,), tau)
    sel = select_static(prior, local, sim, thresholds, kg, kl, kd)

    # The union contains each set, and nothing else.
    assert torch.equal(sel.kept, sel.global_mask | sel.local_mask | sel.dynamic_mask)
    # Per camera budgets.
    assert torch.all(sel.global_mask.sum(-1) <= min(n, layers * kg))
    assert torch.all(sel.local_mask.sum(-1) <= min(n, 2 * kl))
    assert torch.all(sel.dynamic_mask.sum(-1) <= min(n, kd))
    # Unscored tokens are never global; changed patches are below tau.
    assert not torch.any(sel.global_mask & torch.isneginf(prior).all(0))
    assert torch.all(sim[sel.dynamic_mask] < tau)
    # Each layer's best local token is kept when K_L > 0.
    if kl:
        best = local.argmax(-1)
        assert torch.all(sel.kept.gather(1, best.T).T)

    layout = TokenLayout(seq_len=1 + cams * n + 9, vision_start=1, num_cameras=cams,
                         text_positions=(cams * n + 3,), grid=(side, side))
    pos = layout.kept_positions(sel.kept)
    assert torch.all(pos[1:] > pos[:-1])                       # sorted, unique
    assert pos.numel() == layout.seq_len - layout.num_vision + int(sel.kept.sum())
    for c in range(cams):
        start, stop = layout.camera_range(c)
        mine = pos[(pos >= start) & (pos < stop)] - start
        assert torch.equal(mine, sel.kept[c].nonzero().flatten())


def test_drop_static_keeps_every_patch_but_the_most_similar_static_ones():
    from specprune_ros.pruning.static import FrameRule
    similarity = torch.tensor([[0.999, 0.990, 0.995, 0.5, 0.999, 0.2]])
    prior = torch.full((1, 1, 6), NEG)
    local = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 9.0, 0.0]]])
    sel = select_static(prior, local, similarity, torch.tensor([0.986]), 0, 1, 0,
                        rule=FrameRule("drop_static", max_removed=2))
    # static: 0.999, 0.990, 0.995, 0.999; the two most similar (indices 0 and 4) go, but 4 is the local top-1
    assert sel.dynamic_mask.tolist() == [[False, True, True, True, False, True]]
    assert sel.kept.tolist() == [[False, True, True, True, True, True]]
    first = select_static(prior, local, None, torch.tensor([0.986]), 0, 1, 0, rule=FrameRule("drop_static"))
    assert bool(first.kept.all())                      # nothing to compare with: nothing is static


def test_the_coverage_floor_keeps_each_blocks_best_patch():
    from specprune_ros.pruning.static import FrameRule, block_ids
    ids = block_ids((4, 4), 2)
    assert ids.view(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    local = torch.zeros(1, 1, 16)
    local[0, 0, [0, 1]] = torch.tensor([5.0, 6.0])     # all of the top-2 in the first block
    local[0, 0, [3, 9, 15]] = torch.tensor([1.0, 2.0, 3.0])
    prior = torch.full((1, 1, 16), NEG)
    plain = select_static(prior, local, None, torch.tensor([0.99]), 0, 2, 0)
    assert plain.kept.nonzero()[:, 1].tolist() == [0, 1]
    covered = select_static(prior, local, None, torch.tensor([0.99]), 0, 2, 0,
                            rule=FrameRule(coverage_blocks=2, coverage_ids=ids))
    assert covered.kept.nonzero()[:, 1].tolist() == [0, 1, 3, 9, 15]


def test_the_coverage_floor_can_pick_by_other_scores():
    from specprune_ros.pruning.static import FrameRule, block_ids
    rule = FrameRule(coverage_blocks=2, coverage_ids=block_ids((4, 4), 2))
    local = torch.zeros(1, 1, 16)
    picks = torch.zeros(1, 16)
    picks[0, [5, 6, 8, 15]] = 1.0                            # one per block, not where the local scores are
    sel = select_static(torch.full((1, 1, 16), NEG), local, None, torch.tensor([0.99]), 0, 0, 0, rule=rule,
                        coverage_scores=picks)
    assert sel.kept.nonzero()[:, 1].tolist() == [5, 6, 8, 15]
