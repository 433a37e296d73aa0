"""Llama-2 decoder layers with OpenVLA-OFT's bidirectional attention.

Parameter names follow HF's LlamaModel (``layers.N.self_attn.q_proj`` ...), so released
weights load by name. Attention runs on torch's fused SDPA (flash / memory-efficient kernels on
CUDA) with no mask: OFT attends bidirectionally over the whole sequence.
A layer can hand back its instruction queries and keys, so SpecPrune's scores cost only the
m x n softmax (openvla_oft.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..pruning.scores import rotate_half_rope
from .config import LlamaConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryTable(nn.Module):
    """cos/sin of every position up to max_positions, indexed by the tokens' original positions."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for positions 0..length-1 (pruning later indexes them by original position)."""
        if length > self.cos.shape[0]:
            raise ValueError(f"a sequence of {length} tokens exceeds max_position_embeddings {self.cos.shape[0]}")
        return self.cos[:length].to(dtype), self.sin[:length].to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                text_index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Attention output, plus (instruction queries (H, m, d), keys (H_kv, n, d)) after RoPE
        when ``text_index`` is given: the scoring inputs, at no extra projection cost."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate_half_rope(q, cos, sin), rotate_half_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False,
                                             enable_gqa=self.kv_heads != self.heads)
        qk = None if text_index is None else (q[0].index_select(1, text_index), k[0])
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1)), qk


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                text_index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        attn, qk = self.self_attn(self.input_layernorm(x), cos, sin, text_index)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), qk


class LlamaBackbone(nn.Module):
    """``language_model.model``: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.rotary = RotaryTable(cfg.head_dim, cfg.max_positions, cfg.rope_theta)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """The plain bidirectional forward: (1, n, D) embeddings -> final-normed hidden states."""
        x = inputs_embeds
        cos, sin = self.rotary(x.shape[1], x.dtype)
        for layer in self.layers:
            x, _ = layer(x, cos, sin)
        return self.norm(x)
