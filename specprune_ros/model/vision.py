"""The fused DINOv2 + SigLIP vision backbone, in timm's parameter names.

Each ViT runs up to its second-to-last block (the features OpenVLA uses: no final norm, no
attention pool), prefix tokens (CLS, registers) are dropped, and the two patch sequences are
concatenated per patch along features, DINOv2 first. Blocks after the feature layer, the final
norms and SigLIP's ``attn_pool`` exist in the checkpoint but are not built here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class ViTAttention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ViTMlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.approximate = "tanh" if cfg.gelu_tanh else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class ViTBlock(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = ViTAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = ViTMlp(cfg)
        self.ls1 = LayerScale(cfg.dim) if cfg.layer_scale else nn.Identity()
        self.ls2 = LayerScale(cfg.dim) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTFeaturizer(nn.Module):
    """A timm-layout ViT that returns the patch tokens after block ``depth - 2``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        num_patches = cfg.grid ** 2
        if cfg.num_prefix:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
            if cfg.num_prefix > 1:
                self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_prefix - 1, cfg.dim))
        # timm's no_embed_class layout: positions for the patches only, prefix tokens get none.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, cfg.dim))
        # Only the blocks up to the feature layer are needed at inference.
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.feature_layer + 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        b = x.shape[0]
        cfg = self.config
        if cfg.num_prefix:                # [CLS, registers, patches]
            prefix = [self.cls_token.expand(b, -1, -1)]
            if cfg.num_prefix > 1:
                prefix.append(self.reg_token.expand(b, -1, -1))
            x = torch.cat([*prefix, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return x[:, cfg.num_prefix:]


class FusedVisionBackbone(nn.Module):
    """``vision_backbone``: featurizer (DINOv2) + fused_featurizer (SigLIP) on 6-channel pixels."""

    def __init__(self, featurizer: ViTConfig, fused: ViTConfig) -> None:
        super().__init__()
        self.featurizer = ViTFeaturizer(featurizer)
        self.fused_featurizer = ViTFeaturizer(fused)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 6, H, W) -> (B, patches, dino_dim + siglip_dim)."""
        dino, siglip = pixels[:, :3], pixels[:, 3:6]
        return torch.cat([self.featurizer(dino), self.fused_featurizer(siglip)], dim=-1)
