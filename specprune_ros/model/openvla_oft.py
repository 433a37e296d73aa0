"""OpenVLA-OFT: vision backbone + projector + Llama-2 (bidirectional) + proprio + L1 action head,
with the SpecPrune-VLA pruned forward.

Input sequence (batch size 1, as on a robot):
``[BOS] [cam 0 patches] .. [cam C-1 patches] [proprio] [prompt after BOS, ending "▁"]
[chunk*action_dim zeroed action slots] [</s>]``.
The action head reads the final-normed hidden states shifted one to the left: from the last
prompt token through the second-to-last action slot (``[-(A+2):-2]``).

Pruned forward: the step's ``StepPruner`` (pruning/strategy.py) is asked after every layer which
tokens to keep; kept tokens keep their original RoPE positions. Attention stays on SDPA; a
layer hands back its instruction queries and keys only when the pruner asks for scores.
"""
from __future__ import annotations

import torch
from torch import nn

from ..pruning.layout import TokenLayout
from ..pruning.strategy import StepPruner
from .config import ModelConfig
from .heads import FusedGeluProjector, L1RegressionActionHead, ProprioProjector
from .llama import LlamaBackbone
from .prompt import EncodedPrompt
from .vision import FusedVisionBackbone

STOP_TOKEN_ID = 2


class _LanguageModel(nn.Module):
    """Keeps HF's ``language_model.model.*`` parameter names."""

    def __init__(self, model: LlamaBackbone) -> None:
        super().__init__()
        self.model = model


class OpenVLAOFT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision_backbone = FusedVisionBackbone(cfg.featurizer, cfg.fused_featurizer)
        self.projector = FusedGeluProjector(cfg.vision_dim, cfg.llm.hidden)
        self.language_model = _LanguageModel(LlamaBackbone(cfg.llm))
        self.proprio_projector = ProprioProjector(cfg.proprio_dim, cfg.llm.hidden) if cfg.use_proprio else None
        self.action_head = L1RegressionActionHead(cfg.llm.hidden, cfg.chunk_size, cfg.action_dim,
                                                  cfg.action_head_blocks)
        self._device_cache: dict[tuple, torch.Tensor] = {}

    @property
    def llm(self) -> LlamaBackbone:
        return self.language_model.model

    # ---- sequence ----------------------------------------------------------------------------------
    def layout(self, prompt: EncodedPrompt, num_cameras: int) -> TokenLayout:
        n_vis = num_cameras * self.config.patches_per_image
        proprio = 1 if self.proprio_projector is not None else 0
        # prompt.ids[0] is BOS; ids[1:] follow the patches and the proprio token.
        text = tuple(p + n_vis + proprio for p in prompt.instruction_positions)
        seq_len = len(prompt.ids) + n_vis + proprio + self.config.num_action_tokens + 1
        grid = self.config.featurizer.grid
        a = self.config.num_action_tokens
        head = tuple(range(seq_len - (a + 2), seq_len - 2))      # what action_head_input reads
        return TokenLayout(seq_len=seq_len, vision_start=1, num_cameras=num_cameras, text_positions=text,
                           grid=(grid, grid), action_positions=head)

    def embed(self, pixels: torch.Tensor, proprio: torch.Tensor | None,
              prompt: EncodedPrompt | list[EncodedPrompt]) -> torch.Tensor:
        """(B, seq_len, D) input embeddings.

        One sample (the robot): ``pixels`` (cameras, 6, H, W), ``proprio`` (P,), one prompt.
        A batch (training): ``pixels`` (B, cameras, 6, H, W), ``proprio`` (B, P) and B prompts of
        one token length (their layouts are then identical).
        """
        llm = self.llm
        dtype = llm.embed_tokens.weight.dtype
        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        batch = len(prompts)
        if batch > 1 and len({len(p.ids) for p in prompts}) != 1:
            raise ValueError("a batch needs prompts of one token length")
        if batch == 1:                      # the robot's step: the cached ids, no per-step copy
            ids = self.prompt_ids(prompts[0], pixels.device).unsqueeze(0)
        else:
            ids = torch.stack([self.prompt_ids(p, pixels.device) for p in prompts])   # (B, prompt + </s>)
        patches = self.projector(self.vision_backbone(pixels.reshape(-1, *pixels.shape[-3:]).to(dtype)))
        patches = patches.reshape(batch, -1, patches.shape[-1])                    # (B, C*P, D)
        text = llm.embed_tokens(ids)
        parts = [text[:, :1], patches]
        if self.proprio_projector is not None:
            if proprio is None:
                raise ValueError("this model needs the proprio state")
            parts.append(self.proprio_projector(proprio.to(dtype).reshape(batch, 1, -1)))
        slots = torch.zeros(batch, self.config.num_action_tokens, text.shape[-1], device=text.device, dtype=dtype)
        return torch.cat(parts + [text[:, 1:-1], slots, text[:, -1:]], dim=1)

    def _cached(self, key: tuple, make) -> torch.Tensor:
        """Small device tensors made once per prompt / layout: a host-to-device copy queued
        behind GPU work would wait for it, a hidden sync in every step."""
        if key not in self._device_cache:
            if len(self._device_cache) > 16:
                self._device_cache.clear()
            with torch.inference_mode(False):   # usable both in and outside inference mode
                self._device_cache[key] = make()
        return self._device_cache[key]

    def prompt_ids(self, prompt: EncodedPrompt, device: torch.device) -> torch.Tensor:
        """The prompt's ids followed by the </s> id, on the device."""
        return self._cached(("ids", prompt, device),
                            lambda: torch.tensor([*prompt.ids, STOP_TOKEN_ID], device=device))

    def action_head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shifted slice: last prompt token .. second-to-last action slot (before </s>)."""
        a = self.config.num_action_tokens
        return hidden[:, -(a + 2):-2]

    # ---- the forward -----------------------------------------------------------------------------------
    def forward_llm(self, x: torch.Tensor, pruner: StepPruner | None = None) -> tuple[torch.Tensor, list[int]]:
        """Final-normed hidden states and the sequence length entering each layer.

        ``pruner`` None: the plain OFT forward. Otherwise the step's pruner is asked, layer by
        layer, whether it wants the instruction queries / keys and which tokens to keep.
        """
        llm = self.llm
        cos, sin = llm.rotary(x.shape[1], x.dtype)
        tokens_per_layer = []
        for number, layer in enumerate(llm.layers, start=1):
            tokens_per_layer.append(x.shape[1])
            x, qk = layer(x, cos, sin, pruner.scores_wanted(number) if pruner is not None else None)
            keep = pruner.after_layer(number, qk, x.shape[1]) if pruner is not None else None
            if keep is not None:
                x, cos, sin = x[:, keep], cos[keep], sin[keep]
        if pruner is not None:
            pruner.finish()
        return llm.norm(x), tokens_per_layer

    def predict(self, pixels: torch.Tensor, proprio: torch.Tensor | None, prompt: EncodedPrompt,
                pruner: StepPruner | None = None) -> tuple[torch.Tensor, list[int]]:
        """Normalized action chunk (chunk_size, action_dim) in float32 on the device, and the
        sequence length entering each LLM layer."""
        hidden, tokens_per_layer = self.forward_llm(self.embed(pixels, proprio, prompt), pruner)
        return self.actions(hidden)[0], tokens_per_layer

    def predict_batch(self, pixels: torch.Tensor, proprio: torch.Tensor | None,
                      prompts: list[EncodedPrompt]) -> torch.Tensor:
        """Unpruned chunks (B, chunk_size, action_dim) of a batch (training; see ``embed``)."""
        hidden, _ = self.forward_llm(self.embed(pixels, proprio, prompts))
        return self.actions(hidden)

    def actions(self, hidden: torch.Tensor) -> torch.Tensor:
        """The action head on the final-normed hidden states: (B, chunk_size, action_dim) float32."""
        return self.action_head(self.action_head_input(hidden).to(self._head_dtype())).float()

    def _head_dtype(self) -> torch.dtype:
        return self.action_head.model.fc1.weight.dtype
