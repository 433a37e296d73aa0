"""Text-to-image attention scores (Eq. 1) without materializing attention maps.

Only the m instruction-token queries are scored against all n keys: an (H, m, n) softmax
per layer, where full attention would be (H, n, n). With m ~ 10 and n ~ 600 that is ~1.7 %
of the full map's memory and FLOPs.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

EPS = 1e-6


class LayerScores(NamedTuple):
    scores: torch.Tensor              # (n_vision,) mean attention from instruction tokens, per vision token
    confidence: torch.Tensor | None   # () how focused this layer's text->image attention is


def rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama (HF) rotary embedding: x * cos + rotate_half(x) * sin, broadcast over heads."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


Vision = "torch.Tensor | slice"


def text_logits(q_text: torch.Tensor, keys: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention logits of the text queries against all keys: (..., H, m, n).

    ``q_text`` (..., H, m, d) are the instruction tokens' (RoPE-rotated) queries, ``keys``
    (..., H_kv, n, d) all keys of the layer (H % H_kv == 0 for grouped-query attention); a
    leading dim batches several layers of equal length.
    """
    if q_text.dim() < 3 or keys.dim() != q_text.dim():
        raise ValueError(f"expected q_text (..., H, m, d) and keys (..., H_kv, n, d), got {tuple(q_text.shape)} "
                         f"and {tuple(keys.shape)}")
    heads, kv_heads = q_text.shape[-3], keys.shape[-3]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key heads")
    if kv_heads != heads:
        keys = keys.repeat_interleave(heads // kv_heads, dim=-3)
    scale = 1.0 / math.sqrt(q_text.shape[-1]) if scale is None else scale
    return torch.matmul(q_text.float() * scale, keys.float().transpose(-1, -2))


def _columns(x: torch.Tensor, vision: Vision) -> torch.Tensor:
    """Vision columns: a slice when they are contiguous (a view), else an index tensor."""
    return x[..., vision] if isinstance(vision, slice) else x.index_select(-1, vision)


def text_to_vision_attention(q_text: torch.Tensor, keys: torch.Tensor, vision: Vision,
                             scale: float | None = None) -> torch.Tensor:
    """Attention probabilities from the text queries to the vision keys: (..., H, m, n_vision).

    The softmax runs over every key the query sees (OFT's attention is bidirectional), then
    the vision columns are kept.
    """
    return _columns(text_logits(q_text, keys, scale).softmax(dim=-1), vision)


def layer_confidence(attn: torch.Tensor, scores: torch.Tensor, method: str = "entropy") -> torch.Tensor:
    """w_conf of a layer: 1 / mean entropy of text->image attention (default), or mean/std.

    ``attn`` (..., H, m, n_vision): the entropy is that of each row renormalized over the
    vision tokens, averaged over heads and text tokens. ``scores`` (..., n_vision). One value
    per leading index.
    """
    if method == "entropy":
        p = attn / attn.sum(dim=-1, keepdim=True).clamp_min(EPS)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=-1)
        return 1.0 / (entropy.mean(dim=(-2, -1)) + EPS)
    if method == "mean_std":
        std = scores.std(dim=-1, unbiased=False) if scores.shape[-1] > 1 else torch.zeros_like(scores[..., 0])
        return scores.mean(dim=-1) / (std + EPS)
    raise ValueError(f"unknown confidence method {method!r} (entropy, mean_std)")


def score_layer(q_text: torch.Tensor, keys: torch.Tensor, vision: Vision,
                confidence: str | None = "entropy", scale: float | None = None) -> LayerScores:
    """Score_l(i) = 1/(H m) sum_h sum_j A_l^h(t_j -> v_i), plus the layer's confidence
    (skipped when ``confidence`` is None: only the dynamic-pruning EMA needs it)."""
    return score_logits(text_logits(q_text, keys, scale), vision, confidence)


def score_logits(logits: torch.Tensor, vision: Vision, confidence: str | None = "entropy") -> LayerScores:
    """Scores and confidence from text logits (..., H, m, n), e.g. several layers stacked.

    Works in log space: A = exp(logit - logsumexp(all logits)) on the vision columns only,
    and the entropy of A renormalized over them is lse + log S - sum(A * logit) / S with
    S = sum(A), which needs no log of the attention map (same value as layer_confidence).
    """
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    vision_logits = _columns(logits, vision)
    attn = torch.exp(vision_logits - lse)
    scores = attn.mean(dim=(-3, -2))
    if confidence == "entropy":
        mass = attn.sum(dim=-1).clamp_min(1e-30)
        entropy = lse.squeeze(-1) + mass.log() - (attn * vision_logits).sum(dim=-1) / mass
        return LayerScores(scores, 1.0 / (entropy.mean(dim=(-2, -1)) + EPS))
    return LayerScores(scores, None if confidence is None else layer_confidence(attn, scores, confidence))


def scores_from_hidden_states(hidden: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                              num_heads: int, num_kv_heads: int, text_index: torch.Tensor,
                              vision_index: torch.Tensor, cos: torch.Tensor | None = None,
                              sin: torch.Tensor | None = None, q_bias: torch.Tensor | None = None,
                              k_bias: torch.Tensor | None = None,
                              confidence: str | None = "entropy") -> LayerScores:
    """Scores of one layer from its (normed) input hidden states and its q/k projection weights.

    ``hidden`` is (n, D) or (1, n, D) after the layer's input norm; ``cos``/``sin`` (n, d) are
    the rotary tables at each token's original position (None: no RoPE). Queries are projected
    for the m text rows only.
    """
    if hidden.dim() == 3:
        if hidden.shape[0] != 1:
            raise ValueError("scores are computed per observation (batch size 1)")
        hidden = hidden[0]
    n = hidden.shape[0]
    head_dim = q_weight.shape[0] // num_heads
    q = torch.nn.functional.linear(hidden.index_select(0, text_index), q_weight, q_bias)
    k = torch.nn.functional.linear(hidden, k_weight, k_bias)
    q = q.view(-1, num_heads, head_dim).transpose(0, 1)       # (H, m, d)
    k = k.view(n, num_kv_heads, head_dim).transpose(0, 1)     # (H_kv, n, d)
    if cos is not None and sin is not None:
        q = rotate_half_rope(q, cos.index_select(0, text_index), sin.index_select(0, text_index))
        k = rotate_half_rope(k, cos, sin)
    return score_layer(q, k, vision_index, confidence)
