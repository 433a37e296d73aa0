import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from specprune_ros.pruning import (
    FrameHistory,
    executed_actions,
    executed_translation,
    history_periods,
    patch_cosine_similarity,
    patch_unit_vectors,
)


def test_identical_frames_are_fully_similar_including_black_patches():
    img = torch.randint(0, 255, (2, 3, 28, 42), dtype=torch.uint8)
    img[0, :, :14, :14] = 0
    sim = patch_cosine_similarity(img, img.clone())
    assert sim.shape == (2, 6)
    torch.testing.assert_close(sim, torch.ones(2, 6))


def test_similarity_is_per_patch_in_row_major_order():
    a = torch.full((1, 3, 28, 28), 100.0)
    b = a.clone()
    b[0, 0, 0:14, 14:28] = 0.0        # top-right patch: red channel off
    sim = patch_cosine_similarity(a, b)[0]
    expected = (101 * 1 + 101 * 101 * 2) / (3 ** 0.5 * 101 * (1 + 2 * 101 ** 2) ** 0.5)  # pixels + 1
    assert sim[1].item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(sim[[0, 2, 3]], torch.ones(3))


def test_unit_patch_vectors_give_the_same_similarity():
    a = torch.randint(0, 255, (2, 3, 28, 28), dtype=torch.uint8)
    b = torch.randint(0, 255, (2, 3, 28, 28), dtype=torch.uint8)
    va, vb = patch_unit_vectors(a), patch_unit_vectors(b)
    torch.testing.assert_close(va.norm(dim=-1), torch.ones(2, 4))
    pa = a.float().view(2, 3, 2, 14, 2, 14).permute(0, 2, 4, 1, 3, 5).reshape(2, 4, -1)
    pb = b.float().view(2, 3, 2, 14, 2, 14).permute(0, 2, 4, 1, 3, 5).reshape(2, 4, -1)
    # Raw-pixel cosine similarity, pixels offset by one grey level (so black patches have a direction).
    expected = torch.nn.functional.cosine_similarity(pa + 1, pb + 1, dim=-1)
    torch.testing.assert_close((va * vb).sum(-1), expected)


def test_bad_frame_shapes_are_rejected():
    with pytest.raises(ValueError, match="multiple"):
        patch_cosine_similarity(torch.zeros(1, 3, 20, 28), torch.zeros(1, 3, 20, 28))
    with pytest.raises(ValueError, match="differ"):
        patch_cosine_similarity(torch.zeros(1, 3, 28, 28), torch.zeros(2, 3, 28, 28))


def test_history_rule_matches_the_paper():
    # T = floor(7 - v) + 4 action periods
    assert history_periods(0.0, 7, -1, 4) == 11
    assert history_periods(0.5, 7, -1, 4) == 10
    assert history_periods(2.2, 7, -1, 4) == 8
    assert history_periods(6.0, 7, -1, 4) == 5
    assert history_periods(50.0, 7, -1, 4) == 1        # never below one period
    assert history_periods(float("nan"), 7, -1, 4) == 11


@given(speed=st.floats(0, 100))
def test_faster_motion_never_looks_further_back(speed):
    t = history_periods(speed, 7, -1, 4)
    assert 1 <= t <= 11
    assert history_periods(speed + 1.0, 7, -1, 4) <= t


def test_v_is_a_speed_scaled_to_the_chunk_horizon():
    chunk = np.zeros((8, 7))
    chunk[:, 0], chunk[:, 2] = 0.6, -0.8              # |(0.6, 0, -0.8)| = 1 per action
    assert executed_translation(chunk) == pytest.approx(8.0)        # one executed chunk: its translation
    assert executed_translation(chunk[:1]) == pytest.approx(8.0)    # one action at 10 Hz re-planning: the same
    assert executed_translation(chunk[:3], horizon=4) == pytest.approx(4.0)
    back_and_forth = np.zeros((2, 7))
    back_and_forth[:, 0] = (1.0, -1.0)
    assert executed_translation(back_and_forth) == 0.0   # a net displacement per period, not a path length
    assert executed_translation(None) == 0.0


def test_executed_actions_follow_the_elapsed_time():
    chunk = np.arange(8 * 7, dtype=float).reshape(8, 7)
    assert len(executed_actions(chunk, 0.1, 0.1)) == 1      # queried every action period
    assert len(executed_actions(chunk, 0.34, 0.1)) == 3
    assert len(executed_actions(chunk, 0.8, 0.1)) == 8      # once per chunk, as OFT on LIBERO
    assert len(executed_actions(chunk, 5.0, 0.1)) == 8      # never more than the chunk
    assert len(executed_actions(chunk, 0.0, 0.1)) == 1      # never fewer than one
    np.testing.assert_array_equal(executed_actions(chunk, 0.2, 0.1), chunk[:2])


def test_history_keeps_the_first_frame_of_each_period_and_forgets_the_oldest():
    hist = FrameHistory(capacity=3, item_shape=(2,))
    kept = [hist.add(t, torch.full((2,), t), action_dt=0.1) for t in (0.0, 0.05, 0.1, 0.19, 0.31, 0.42)]
    assert kept == [True, False, True, False, True, True]
    assert hist.stamps == pytest.approx([0.1, 0.31, 0.42]) and len(hist) == 3
    item, stamp = hist.closest(0.3, before=1.0)
    assert stamp == pytest.approx(0.31) and float(item[0]) == pytest.approx(0.31)
    assert hist.closest(-5.0, before=1.0)[1] == pytest.approx(0.1)      # clamped to the oldest held
    assert hist.closest(0.5, before=0.42)[1] == pytest.approx(0.31)     # only frames older than `before`
    assert hist.closest(0.5, before=0.1) is None
    with pytest.raises(ValueError, match="item has shape"):
        hist.add(1.0, torch.zeros(3), action_dt=0.1)
    hist.reset()
    assert len(hist) == 0 and hist.closest(0.0, before=1.0) is None


def test_history_capacity_covers_the_longest_look_back():
    from specprune_ros.config import Config
    p = Config().pruning
    assert p.history_capacity() == history_periods(0.0, p.history_base, p.history_slope, p.history_offset) + 1 == 12


def test_history_items_made_on_demand_only_when_compared():
    made = []

    def maker(value):
        def make():
            made.append(value)
            return torch.full((2,), value)
        return make

    def broken():
        raise ValueError("cannot prepare this frame")

    hist = FrameHistory(capacity=4, item_shape=(2,))
    for k, t in enumerate((0.0, 0.1, 0.2)):
        hist.add(t, maker(float(k)), action_dt=0.1)
    item, stamp = hist.closest(0.1, before=1.0)
    assert made == [1.0] and float(item[0]) == 1.0                     # only the frame compared
    assert float(hist.closest(0.1, before=1.0)[0][0]) == 1.0 and made == [1.0]   # made once
    hist.add(0.3, broken, action_dt=0.1)
    item, stamp = hist.closest(0.3, before=1.0)                         # the broken one is forgotten
    assert stamp == pytest.approx(0.2) and 0.3 not in hist.stamps


def test_a_forgotten_frame_frees_its_slot_without_overwriting_others():
    def broken():
        raise ValueError("cannot prepare this frame")

    hist = FrameHistory(capacity=4, item_shape=(1,))
    hist.add(0.0, torch.tensor([0.0]), action_dt=0.1)
    hist.add(0.1, broken, action_dt=0.1)
    hist.add(0.2, torch.tensor([2.0]), action_dt=0.1)
    assert hist.closest(0.1, before=1.0)[1] == pytest.approx(0.0)        # 0.1 forgotten (0.0 and 0.2 tie)
    hist.add(0.3, torch.tensor([3.0]), action_dt=0.1)                     # takes the freed slot
    assert [float(hist.closest(t, before=1.0)[0][0]) for t in (0.0, 0.2, 0.3)] == [0.0, 2.0, 3.0]
