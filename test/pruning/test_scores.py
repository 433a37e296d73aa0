import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specprune_ros.pruning import (
    layer_confidence,
    rotate_half_rope,
    score_layer,
    scores_from_hidden_states,
    text_to_vision_attention,
)


def full_attention(q, k):
    """Reference: the whole (H, n, n) map, as eager-mode implementations materialize it."""
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


def rope_tables(n, d, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    freqs = torch.outer(torch.arange(n).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def test_rows_equal_the_full_attention_map():
    heads, n, d = 4, 40, 16
    q, k = torch.randn(heads, n, d), torch.randn(heads, n, d)
    text = torch.tensor([30, 31, 33])
    vision = torch.arange(1, 21)
    attn = text_to_vision_attention(q[:, text], k, vision)
    ref = full_attention(q, k)[:, text][:, :, vision]
    torch.testing.assert_close(attn, ref)
    scores = score_layer(q[:, text], k, vision).scores
    torch.testing.assert_close(scores, ref.mean(dim=(0, 1)))


def test_grouped_query_keys_are_shared_across_heads():
    q, k = torch.randn(4, 2, 8), torch.randn(2, 10, 8)
    attn = text_to_vision_attention(q, k, torch.arange(10))
    ref = full_attention(q, k.repeat_interleave(2, dim=0))
    torch.testing.assert_close(attn, ref)
    with pytest.raises(ValueError, match="cannot share"):
        text_to_vision_attention(torch.randn(3, 2, 8), k, torch.arange(10))


def test_scores_from_hidden_states_match_a_manual_layer():
    n, dim, heads = 24, 32, 4
    d = dim // heads
    hidden = torch.randn(n, dim)
    wq, wk = torch.randn(dim, dim) * 0.2, torch.randn(dim, dim) * 0.2
    positions = torch.tensor([0, 1, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26])
    cos, sin = rope_tables(32, d)
    cos, sin = cos[positions], sin[positions]   # pruned sequence keeps original RoPE positions
    text, vision = torch.tensor([20, 21]), torch.arange(1, 17)
    got = scores_from_hidden_states(hidden, wq, wk, heads, heads, text, vision, cos, sin)

    q = (hidden @ wq.T).view(n, heads, d).transpose(0, 1)
    k = (hidden @ wk.T).view(n, heads, d).transpose(0, 1)
    q, k = rotate_half_rope(q, cos, sin), rotate_half_rope(k, cos, sin)
    ref = full_attention(q, k)[:, text][:, :, vision].mean(dim=(0, 1))
    torch.testing.assert_close(got.scores, ref)


def test_a_token_the_text_attends_to_gets_the_top_score():
    heads, d = 2, 8
    k = torch.zeros(heads, 12, d)
    k[:, 5, 0] = 5.0                      # key 5 aligns with the text queries
    q = torch.zeros(heads, 3, d)
    q[:, :, 0] = 2.0
    scores = score_layer(q, k, torch.arange(1, 11)).scores
    assert int(scores.argmax()) == 4      # vision index 4 is sequence position 5


def test_entropy_confidence_of_uniform_attention_is_one_over_log_n():
    attn = torch.full((2, 3, 50), 1.0 / 64)
    conf = layer_confidence(attn, attn.mean(dim=(0, 1)), "entropy")
    assert conf.item() == pytest.approx(1.0 / math.log(50), rel=1e-4)


def test_focused_attention_is_more_confident_than_diffuse():
    diffuse = torch.full((1, 1, 20), 0.05)
    focused = torch.full((1, 1, 20), 0.001)
    focused[..., 3] = 0.981
    for method in ("entropy",):
        assert layer_confidence(focused, focused[0, 0], method) > layer_confidence(diffuse, diffuse[0, 0], method)


def test_mean_std_confidence_is_mean_over_std():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    conf = layer_confidence(torch.ones(1, 1, 4), scores, "mean_std")
    assert conf.item() == pytest.approx(3.0 / scores.std(unbiased=False).item(), rel=1e-4)
    with pytest.raises(ValueError, match="unknown confidence"):
        layer_confidence(torch.ones(1, 1, 4), scores, "max")


@settings(max_examples=30, deadline=None)
@given(heads=st.integers(1, 4), m=st.integers(1, 6), n_vis=st.integers(1, 30), extra=st.integers(1, 10),
       d=st.sampled_from([4, 8]))
def test_scores_are_a_probability_share(heads, m, n_vis, extra, d):
    n = n_vis + extra
    q, k = torch.randn(heads, m, d), torch.randn(heads, n, d)
    vision = torch.arange(n_vis)
    s = score_layer(q, k, vision).scores
    assert s.shape == (n_vis,)
    assert torch.all(s >= 0)
    assert s.sum().item() <= 1.0 + 1e-5          # vision tokens share part of each softmax row


@settings(max_examples=30, deadline=None)
@given(layers=st.integers(1, 3), heads=st.integers(1, 4), m=st.integers(1, 5), n_vis=st.integers(2, 40),
       sharp=st.floats(0.1, 4.0), seed=st.integers(0, 999))
def test_log_space_entropy_equals_the_direct_computation(layers, heads, m, n_vis, sharp, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(layers, heads, m, 8, generator=g) * sharp
    k = torch.randn(layers, heads, n_vis + 7, 8, generator=g)
    fast = score_layer(q, k, slice(3, 3 + n_vis), "entropy")
    # Reference in float64 straight from the definition (no clamping, no log-space identity).
    attn = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8), dim=-1)[..., 3:3 + n_vis]
    p = attn / attn.sum(-1, keepdim=True)
    entropy = -(p * p.log()).nan_to_num().sum(-1).mean(dim=(-2, -1))
    torch.testing.assert_close(fast.scores.double(), attn.mean(dim=(-3, -2)), rtol=1e-4, atol=1e-7)
    # Compared as entropies: 1 / (entropy + eps) is ill-conditioned when one vision token holds all
    # the mass (entropy ~1e-5: float32's last bits move the reciprocal by percents).
    torch.testing.assert_close(1.0 / fast.confidence.double() - 1e-6, entropy, rtol=1e-3, atol=1e-5)
    # The simple reference implementation agrees wherever the vision tokens hold real mass.
    if attn.sum(-1).min() > 1e-4:
        direct = layer_confidence(attn.float(), attn.float().mean(dim=(-3, -2)), "entropy")
        torch.testing.assert_close(1.0 / fast.confidence, 1.0 / direct, rtol=1e-3, atol=1e-5)
