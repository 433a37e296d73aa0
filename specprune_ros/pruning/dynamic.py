"""Layer-level dynamic pruning: an EMA of rank- and confidence-weighted importance over layers.

s_i = w_rank_i * w_conf,   w_rank_i = sigmoid(-k rank_i) / sum_j sigmoid(-k rank_j)   (Eq. 8)
S_i <- (1 - beta) S_i + beta s_i
At each designated layer the lowest-S fraction of the remaining vision tokens is dropped.
"""
from __future__ import annotations

import torch


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """rank_i = 0 for the highest score, 1 for the next, ... (ties broken by position)."""
    order = scores.argsort(descending=True, stable=True)
    out = torch.empty_like(order)
    out.scatter_(0, order, torch.arange(scores.numel(), device=scores.device))
    return out


def rank_weights(scores: torch.Tensor, sharpness: float) -> torch.Tensor:
    w = torch.sigmoid(-sharpness * ranks(scores).to(torch.float32))
    return w / w.sum()


class LayerImportance:
    """EMA importance of the vision tokens still in the sequence, within one forward pass."""

    def __init__(self, num_tokens: int, beta: float, sharpness: float,
                 device: torch.device | str = "cpu") -> None:
        self.beta = beta
        self.sharpness = sharpness
        self.ema = torch.zeros(num_tokens, dtype=torch.float32, device=device)

    def __len__(self) -> int:
        return self.ema.numel()

    def update(self, scores: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """Fold one layer's scores (over the remaining vision tokens) into the EMA."""
        if scores.shape != self.ema.shape:
            raise ValueError(f"{scores.numel()} scores for {self.ema.numel()} remaining vision tokens")
        instant = rank_weights(scores, self.sharpness) * confidence
        self.ema.mul_(1.0 - self.beta).add_(instant, alpha=self.beta)
        return self.ema

    def drop(self, ratio: float) -> torch.Tensor:
        """Drop floor(ratio * n) lowest-EMA tokens; return the kept ones' indices (sorted, local).

        The count is known on the host, so this needs no device->host sync.
        """
        n = self.ema.numel()
        keep = n - int(ratio * n)
        keep_idx = self.ema.topk(keep).indices.sort().values
        self.ema = self.ema.index_select(0, keep_idx)
        return keep_idx
