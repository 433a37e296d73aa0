import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from specprune_ros.pruning import FrameRingBuffer, history_steps, patch_cosine_similarity, patch_unit_vectors


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
    # T = floor(7 - v) + 4
    assert history_steps(0.0, 7, -1, 4, 20) == 11
    assert history_steps(0.5, 7, -1, 4, 20) == 10
    assert history_steps(2.2, 7, -1, 4, 20) == 8
    assert history_steps(0.0, 7, -1, 4, 3) == 3        # clamp to what is stored
    assert history_steps(50.0, 7, -1, 4, 20) == 1      # never below one step
    assert history_steps(0.0, 7, -1, 4, 0) == 0        # nothing stored: no dynamic set


@given(speed=st.floats(0, 100), available=st.integers(1, 30))
def test_faster_motion_never_looks_further_back(speed, available):
    t = history_steps(speed, 7, -1, 4, available)
    assert 1 <= t <= available
    assert history_steps(speed + 1.0, 7, -1, 4, available) <= t


def test_ring_buffer_looks_back_by_steps_and_wraps():
    buf = FrameRingBuffer(capacity=4, item_shape=(2, 3, 14, 14), dtype=torch.uint8)
    assert buf.available_history == 0
    for i in range(6):
        buf.push(torch.full((2, 3, 14, 14), i, dtype=torch.uint8))
    assert len(buf) == 4 and buf.available_history == 3
    assert int(buf.latest()[0, 0, 0, 0]) == 5
    assert [int(buf.lookback(t)[1, 0, 0, 0]) for t in range(4)] == [5, 4, 3, 2]
    with pytest.raises(IndexError, match="4 steps back"):
        buf.lookback(4)
    with pytest.raises(ValueError, match="item has shape"):
        buf.push(torch.zeros(1, 3, 14, 14, dtype=torch.uint8))
    buf.reset()
    assert len(buf) == 0 and buf.available_history == 0


def test_buffer_size_covers_the_longest_history_window():
    from specprune_ros.config import Config
    p = Config().pruning
    cap = p.history_capacity()
    longest = history_steps(0.0, p.history_base, p.history_slope, p.history_offset, available=10**6)
    assert cap == longest + 1 == 12
