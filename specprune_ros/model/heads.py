"""OpenVLA's vision projector and OFT's proprio projector and L1-regression action head.

Module and parameter names match the released checkpoints (``projector.fc1``; the action
head's ``model.layer_norm1``, ``model.mlp_resnet_blocks.N.ffn.{0,1}``; ``fc1``/``fc2`` of the
proprio projector) so state dicts load by name.
"""
from __future__ import annotations

import torch
from torch import nn


class FusedGeluProjector(nn.Module):
    """"no-align+fused-gelu-mlp": Linear(V->4V), GELU, Linear(4V->D), GELU, Linear(D->D)."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class ProprioProjector(nn.Module):
    """Linear(proprio->D), GELU, Linear(D->D): one LLM token from the normalized proprio state."""

    def __init__(self, proprio_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(x)))


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """(B, chunk*action_dim, D) action-slot states -> (B, chunk, action_dim) normalized actions."""

    def __init__(self, llm_dim: int, chunk_size: int, action_dim: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.chunk_size, self.action_dim = chunk_size, action_dim
        self.model = MLPResNet(num_blocks, llm_dim * action_dim, llm_dim, action_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        b = hidden.shape[0]
        return self.model(hidden.reshape(b, self.chunk_size, -1))
