import pytest
import torch

from specprune_ros.pruning import TokenLayout


def make_layout(cams=2, grid=(4, 4)):
    n = cams * grid[0] * grid[1]
    return TokenLayout(seq_len=1 + n + 12, vision_start=1, num_cameras=cams, text_positions=(n + 4, n + 5),
                       grid=grid)


def test_camera_ranges_are_contiguous_blocks():
    layout = make_layout()
    assert layout.camera_range(0) == (1, 17)
    assert layout.camera_range(1) == (17, 33)
    assert layout.vision_positions().tolist()[1][:3] == [17, 18, 19]


def test_non_vision_tokens_are_never_pruned():
    layout = make_layout()
    kept = torch.zeros(2, 16, dtype=torch.bool)
    kept[1, 3] = True
    pos = layout.kept_positions(kept).tolist()
    vision = set(range(1, 33))
    assert [p for p in range(layout.seq_len) if p not in vision] == [p for p in pos if p not in vision]
    assert [p for p in pos if p in vision] == [17 + 3]


def test_bad_layouts_are_rejected():
    with pytest.raises(ValueError, match="do not fit"):
        TokenLayout(seq_len=10, vision_start=1, num_cameras=1, text_positions=(0,), grid=(4, 4))
    with pytest.raises(ValueError, match="inside the vision block"):
        TokenLayout(seq_len=40, vision_start=1, num_cameras=1, text_positions=(3,), grid=(4, 4))
    with pytest.raises(ValueError, match="at least one instruction token"):
        TokenLayout(seq_len=40, vision_start=1, num_cameras=1, text_positions=(), grid=(4, 4))
    with pytest.raises(ValueError, match="expected"):
        make_layout().kept_positions(torch.ones(3, 16, dtype=torch.bool))


def test_scoring_queries_are_the_instruction_the_action_positions_or_both():
    n = 2 * 16
    layout = TokenLayout(seq_len=1 + n + 12, vision_start=1, num_cameras=2, text_positions=(n + 4, n + 5),
                         grid=(4, 4), action_positions=(n + 5, n + 6, n + 7))
    assert layout.query_index("instruction").tolist() == [n + 4, n + 5]
    assert layout.query_index("action").tolist() == [n + 5, n + 6, n + 7]
    assert layout.query_index("both").tolist() == [n + 4, n + 5, n + 6, n + 7]
    with pytest.raises(ValueError, match="no action positions"):
        make_layout().query_index("action")
    with pytest.raises(ValueError, match="action positions"):
        TokenLayout(seq_len=40, vision_start=1, num_cameras=1, text_positions=(30,), grid=(4, 4),
                    action_positions=(3,))
