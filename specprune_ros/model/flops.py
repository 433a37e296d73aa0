"""LLM FLOPs of a forward pass from the sequence length entering each layer.

Counts multiply-adds as 2 FLOPs: q/k/v/o and MLP projections (linear in n) and the two
attention matmuls (quadratic in n). Norms, RoPE and softmax are left out (<1 %), and so are
the pruning scores (m x n per scored layer, with m ~ 10).
"""
from __future__ import annotations

from typing import Sequence

from .config import LlamaConfig


def layer_flops(cfg: LlamaConfig, n: int) -> float:
    d, kv = cfg.hidden, cfg.kv_heads * cfg.head_dim
    projections = 2 * n * (2 * d * d + 2 * d * kv)          # q, o and k, v
    mlp = 2 * n * 3 * d * cfg.intermediate                   # gate, up, down
    attention = 2 * 2 * n * n * d                            # QK^T and AV over all heads
    return float(projections + mlp + attention)


def llm_flops(cfg: LlamaConfig, tokens_per_layer: Sequence[int]) -> float:
    return sum(layer_flops(cfg, n) for n in tokens_per_layer)


def flops_ratio(cfg: LlamaConfig, tokens_per_layer: Sequence[int]) -> float:
    """FLOPs of this schedule over the unpruned forward (every layer at the first layer's length)."""
    if not tokens_per_layer:
        raise ValueError("empty schedule")
    full = llm_flops(cfg, [tokens_per_layer[0]] * len(tokens_per_layer))
    return llm_flops(cfg, tokens_per_layer) / full
