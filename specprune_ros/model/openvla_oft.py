"""OpenVLA-OFT: vision backbone + projector + Llama-2 (bidirectional) + proprio + L1 action head,
with the SpecPrune-VLA pruned forward.

Input sequence (batch size 1, as on a robot):
``[BOS] [cam 0 patches] .. [cam C-1 patches] [proprio] [prompt after BOS, ending "▁"]
[chunk*action_dim zeroed action slots] [</s>]``.
The action head reads the final-normed hidden states shifted one to the left: from the last
prompt token through the second-to-last action slot (``[-(A+2):-2]``).

Pruned forward: layers 1..local_layers on all tokens (scoring the local set), static pruning
before the next layer (kept tokens keep their original RoPE positions), dynamic pruning after
the configured layers, and the global layers' scores kept as the next step's prior. Attention
stays on SDPA; scores come from the instruction rows only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import PruningConfig
from ..pruning.dynamic import LayerImportance
from ..pruning.engine import SpecPruneEngine, StepPlan
from ..pruning.layout import TokenLayout
from ..pruning.scores import score_layer
from ..pruning.static import StaticSelection
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


class Stopwatch:
    """Sums the time of pruning work. On CUDA it records events, read after the step's one sync."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._cpu = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._start: float | torch.cuda.Event | None = None

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        else:
            self._cpu += time.perf_counter() - self._start

    def total_ms(self) -> float:
        """Call after the device is synchronized."""
        return self._cpu * 1e3 + sum(a.elapsed_time(b) for a, b in self._events)


@dataclass
class ForwardInfo:
    tokens_per_layer: list[int] = field(default_factory=list)
    selection: StaticSelection | None = None
    fallback: bool = False                      # scene cut: this step kept every token
    recall: torch.Tensor | None = None          # () global recall, NaN when not pruned
    vision_kept: int | None = None              # vision tokens after static pruning


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
        return TokenLayout(seq_len=seq_len, vision_start=1, num_cameras=num_cameras, text_positions=text,
                           grid=(grid, grid))

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
        if len({len(p.ids) for p in prompts}) != 1:
            raise ValueError("a batch needs prompts of one token length")
        ids = torch.stack([self.prompt_ids(p, pixels.device) for p in prompts])       # (B, prompt + </s>)
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

    def text_index(self, layout: TokenLayout, device: torch.device) -> torch.Tensor:
        return self._cached(("text", layout, device), lambda: layout.text_index(device))

    def action_head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shifted slice: last prompt token .. second-to-last action slot (before </s>)."""
        a = self.config.num_action_tokens
        return hidden[:, -(a + 2):-2]

    # ---- the forward -----------------------------------------------------------------------------------
    def forward_llm(self, x: torch.Tensor, layout: TokenLayout, pruning: PruningConfig | None = None,
                    engine: SpecPruneEngine | None = None, plan: StepPlan | None = None,
                    watch: Stopwatch | None = None) -> tuple[torch.Tensor, ForwardInfo]:
        """Final-normed hidden states and what pruning did.

        ``pruning`` None: the plain OFT forward. With ``plan.prune`` False (first step), the
        forward is unpruned but still records the global-layer scores.
        """
        llm, info = self.llm, ForwardInfo()
        n_layers = len(llm.layers)
        cos, sin = llm.rotary(x.shape[1], x.dtype)
        run = None
        if pruning is not None and engine is not None and plan is not None:
            check_layers(pruning, n_layers)
            run = _PrunedRun(pruning, engine, plan, layout, watch or Stopwatch(x.device), info,
                             self.text_index(layout, x.device))

        for number, layer in enumerate(llm.layers, start=1):
            if run is not None and run.pruned and number == pruning.local_layers + 1:
                keep = run.static_prune(x.shape[1])
                x, cos, sin = x[:, keep], cos[keep], sin[keep]
            info.tokens_per_layer.append(x.shape[1])
            wants = run is not None and run.wants_scores(number)
            x, qk = layer(x, cos, sin, run.text_index if wants else None)
            if wants:
                run.add_scores(number, *qk)
            if (run is not None and number in pruning.dynamic_layers and number < n_layers
                    and run.importance is not None):
                keep = run.dynamic_prune(x.shape[1])
                x, cos, sin = x[:, keep], cos[keep], sin[keep]
        if run is not None:
            run.finish()
        return llm.norm(x), info

    def predict(self, pixels: torch.Tensor, proprio: torch.Tensor | None, prompt: EncodedPrompt,
                pruning: PruningConfig | None = None, engine: SpecPruneEngine | None = None,
                plan: StepPlan | None = None, watch: Stopwatch | None = None) -> tuple[torch.Tensor, ForwardInfo]:
        """Normalized action chunk (chunk_size, action_dim) in float32, on the device."""
        layout = self.layout(prompt, pixels.shape[0])
        x = self.embed(pixels, proprio, prompt)
        hidden, info = self.forward_llm(x, layout, pruning, engine, plan, watch)
        return self.actions(hidden)[0], info

    def predict_batch(self, pixels: torch.Tensor, proprio: torch.Tensor | None,
                      prompts: list[EncodedPrompt]) -> torch.Tensor:
        """Unpruned chunks (B, chunk_size, action_dim) of a batch (training; see ``embed``)."""
        hidden, _ = self.forward_llm(self.embed(pixels, proprio, prompts), self.layout(prompts[0], pixels.shape[1]))
        return self.actions(hidden)

    def actions(self, hidden: torch.Tensor) -> torch.Tensor:
        """The action head on the final-normed hidden states: (B, chunk_size, action_dim) float32."""
        return self.action_head(self.action_head_input(hidden).to(self._head_dtype())).float()

    def _head_dtype(self) -> torch.dtype:
        return self.action_head.model.fc1.weight.dtype


def check_layers(pruning: PruningConfig, n_layers: int) -> None:
    """Layer-indexed knobs against this model (the configuration alone cannot know its depth).

    Checked only while pruning is on: the plain forward uses no layer knob, so a model with 16
    or 24 layers runs unpruned with the default (32-layer) knobs, and enabling pruning is what
    is refused until the knobs fit.
    """
    if not pruning.enabled:
        return
    for name, layers, top in (("pruning.global_layers", pruning.global_layers, n_layers),
                              ("pruning.dynamic_layers", pruning.dynamic_layers, n_layers - 1)):
        bad = [n for n in layers if n > top]
        if bad:
            raise ValueError(f"{name} = {list(layers)}: the model has {n_layers} layers "
                             f"(range [{pruning.local_layers + 1}, {top}]; pruning.enabled needs them to fit)")
    if pruning.local_layers >= n_layers:
        raise ValueError(f"pruning.local_layers = {pruning.local_layers}: the model has only {n_layers} layers "
                         f"(range [1, {n_layers - 1}])")


class _PrunedRun:
    """Bookkeeping of one pruned forward: where the vision and text tokens are, queued scores.

    Vision tokens stay one contiguous block starting at ``vision_start`` (pruning removes only
    vision tokens and keeps the order), so text positions just shift by the number removed.
    Each scored layer contributes its instruction queries and keys; logits, softmax, scores
    and entropy are computed in one batched call per segment of equal sequence length (before
    static pruning, at each dropping layer, at the end): a handful of kernels instead of one
    set per layer.
    """

    def __init__(self, pruning: PruningConfig, engine: SpecPruneEngine, plan: StepPlan, layout: TokenLayout,
                 watch: Stopwatch, info: ForwardInfo, text_index: torch.Tensor) -> None:
        self.cfg, self.engine, self.plan, self.layout = pruning, engine, plan, layout
        self.watch, self.info = watch, info
        device = engine.device
        self.device = device
        self.pruned = plan.prune
        self.text_index = text_index
        self.vs, self.n_vis = layout.vision_start, layout.num_vision
        self.vision_ids = torch.arange(self.n_vis, device=device)   # camera * N + patch of each vision token

        self.last_dynamic = max(pruning.dynamic_layers, default=0)
        self.importance: LayerImportance | None = None
        self.local: list[torch.Tensor] = []
        self.global_scores: dict[int, torch.Tensor] = {}
        self._queue: list[tuple[int, torch.Tensor, torch.Tensor]] = []   # (layer, q_text, keys)

    def in_ema(self, number: int) -> bool:
        return self.importance is not None and number <= self.last_dynamic

    def wants_scores(self, number: int) -> bool:
        return ((self.pruned and number <= self.cfg.local_layers) or number in self.cfg.global_layers
                or self.in_ema(number))

    def add_scores(self, number: int, q_text: torch.Tensor, keys: torch.Tensor) -> None:
        self._queue.append((number, q_text, keys))
        if not self.in_ema(number) and number > self.cfg.local_layers:
            self.flush()     # a lone global layer outside the EMA range: nothing to batch it with

    def flush(self) -> None:
        if not self._queue:
            return
        with self.watch:
            numbers = [n for n, _, _ in self._queue]
            q = torch.stack([q for _, q, _ in self._queue])
            k = torch.stack([k for _, _, k in self._queue])
            self._queue = []
            ema = self.in_ema(numbers[-1])
            scores = score_layer(q, k, slice(self.vs, self.vs + self.n_vis), self.cfg.confidence if ema else None)
            if ema:
                self.importance.update(scores.scores, scores.confidence)
            for i, number in enumerate(numbers):
                if number <= self.cfg.local_layers and self.pruned:
                    self.local.append(scores.scores[i])
                if number in self.cfg.global_layers:
                    full = torch.full((self.layout.num_vision,), float("-inf"), device=self.device)
                    self.global_scores[number] = full.index_copy_(0, self.vision_ids, scores.scores[i])

    def _shrink(self, kept_vision: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Sequence indices keeping all non-vision tokens and the given (sorted, local) vision ones."""
        dropped = self.n_vis - kept_vision.numel()
        keep = torch.cat([torch.arange(self.vs, device=self.device), self.vs + kept_vision,
                          torch.arange(self.vs + self.n_vis, seq_len, device=self.device)])
        self.vision_ids = self.vision_ids.index_select(0, kept_vision)
        self.text_index = self.text_index - dropped
        self.n_vis -= dropped
        return keep

    def static_prune(self, seq_len: int) -> torch.Tensor:
        self.flush()
        with self.watch:
            layout = self.layout
            selection = self.engine.select(self.plan, torch.stack(self.local).view(len(self.local),
                                                                                     layout.num_cameras, -1))
            # The step's one sync: the kept indices, with the scene-cut flag as one extra entry.
            flagged = torch.cat([selection.kept.reshape(-1), selection.fallback.view(1)]).nonzero().squeeze(1)
            fallback = bool(flagged.numel()) and int(flagged[-1]) == self.layout.num_vision
            kept_vision = flagged[:-1] if fallback else flagged
            self.info.selection, self.info.fallback = selection, fallback
            keep = self._shrink(kept_vision, seq_len)
            self.info.vision_kept = self.n_vis
            if self.info.fallback:
                self.pruned = False        # scene cut: the rest of this step runs unpruned
            elif self.cfg.dynamic_layers:
                self.importance = LayerImportance(self.n_vis, self.cfg.ema_beta, self.cfg.rank_sharpness, self.device)
        return keep

    def dynamic_prune(self, seq_len: int) -> torch.Tensor:
        self.flush()
        with self.watch:
            return self._shrink(self.importance.drop(self.cfg.dynamic_drop_ratio), seq_len)

    def finish(self) -> None:
        self.flush()
        with self.watch:
            g = self.global_scores
            stacked = torch.stack([g[n] for n in sorted(g)]).view(len(g), self.layout.num_cameras, -1)
            self.info.recall = self.engine.end_step(self.plan, stacked)
