"""Layer-level dynamic pruning: an EMA of rank- and confidence-weighted importance over layers.

s_i = w_rank_i * w_conf,   w_rank_i = sigmoid(-k rank_i) / sum_j sigmoid(-k rank_j)   (Eq. 8)
S_i <- (1 - beta) S_i + beta s_i
At each designated layer the lowest-S fraction of the remaining vision tokens is dropped.
"""
from __future__ import annotations

import torch


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """rank = 0 for the highest score along the last dim, 1 for the next, ... (ties by position)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def rank_weights(scores: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Eq. 8 along the last dim (batched over leading dims)."""
    w = torch.sigmoid(-sharpness * ranks(scores).to(torch.float32))
    return w / w.sum(dim=-1, keepdim=True)


class LayerImportance:
    """EMA importance of the vision tokens still in the sequence, within one forward pass.

    Layers' scores are queued by ``update`` and folded into the EMA in one batched computation
    when it is read (at a dropping layer): S_L = (1-b)^L S_0 + sum_j b (1-b)^(L-1-j) s_j, which
    equals L sequential updates at a fraction of the kernel launches.
    """

    def __init__(self, num_tokens: int, beta: float, sharpness: float,
                 device: torch.device | str = "cpu") -> None:
        self.beta = beta
        self.sharpness = sharpness
        self._ema = torch.zeros(num_tokens, dtype=torch.float32, device=device)
        self._scores: list[torch.Tensor] = []
        self._confidence: list[torch.Tensor] = []

    def __len__(self) -> int:
        return self._ema.numel()

    def update(self, scores: torch.Tensor, confidence: torch.Tensor) -> None:
        """Queue the scores (over the remaining vision tokens) and confidence of one layer,
        or of several consecutive layers at once: scores (L, n), confidence (L,)."""
        if scores.shape[-1:] != self._ema.shape or scores.dim() > 2:
            raise ValueError(f"{scores.shape[-1]} scores for {self._ema.numel()} remaining vision tokens")
        self._scores.append(scores.reshape(-1, scores.shape[-1]))
        self._confidence.append(confidence.reshape(-1))

    @property
    def ema(self) -> torch.Tensor:
        if self._scores:
            scores = torch.cat(self._scores)
            layers = scores.shape[0]
            instant = rank_weights(scores, self.sharpness) * torch.cat(self._confidence)[:, None]
            decay = torch.tensor([self.beta * (1.0 - self.beta) ** (layers - 1 - j) for j in range(layers)],
                                 device=instant.device)
            self._ema = self._ema * (1.0 - self.beta) ** layers + (decay[:, None] * instant).sum(dim=0)
            self._scores, self._confidence = [], []
        return self._ema

    def drop(self, ratio: float, blocks: torch.Tensor | None = None, num_blocks: int = 0) -> torch.Tensor:
        """Drop floor(ratio * n) lowest-EMA tokens; return the kept ones' indices (sorted, local).

        ``blocks`` (n,) long, each in [0, ``num_blocks``): a coverage floor - each block's
        highest-EMA token is dropped only once every other token is gone. The counts are known on
        the host, so this needs no device->host sync either way.
        """
        ema = self.ema
        n = ema.numel()
        key = ema
        if blocks is not None:
            best = torch.full((num_blocks,), float("-inf"), device=ema.device)
            best = best.scatter_reduce(0, blocks, ema, reduce="amax")
            key = ema + (ema >= best.index_select(0, blocks)).float() * (ema.abs().max() * 2 + 1)
        keep_idx = key.topk(n - int(ratio * n)).indices.sort().values
        self._ema = ema.index_select(0, keep_idx)
        return keep_idx
