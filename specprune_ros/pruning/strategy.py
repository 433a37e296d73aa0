"""Pruning rules behind one small interface: the model asks one object per step which tokens to keep.

A ``PruningStrategy`` holds a rule's state across control steps (SpecPrune's prior, frame history
and controller; a random generator) and hands the model one ``StepPruner`` per step. The model's
forward knows nothing else (model/openvla_oft.py):

    for layer number n = 1 .. L:
        x, qk = layer(x, ..., pruner.scores_wanted(n))   # instruction queries/keys, only if asked
        keep = pruner.after_layer(n, qk, len(x))         # sequence indices to keep, or None
    pruner.finish()

Rules (``pruning.method``):

* ``specprune`` - SpecPrune-VLA: static pruning after the local layers (prior | local | changed
  patches), layer-level dropping at ``dynamic_layers``, the global layers' scores kept as the next
  step's prior. The step's one device->host sync is the kept index list of the static stage.
* ``random`` - a matched budget: SpecPrune decides how many tokens each camera keeps at the static
  stage and how many each dynamic layer drops, the tokens themselves are drawn at random (seeded at
  every episode start). It runs SpecPrune's scoring to know the budget.
* ``fastv`` - FastV (Chen et al. 2024): after layer ``fastv_layer`` keep the ``fastv_tokens`` vision
  tokens (over all cameras) with the highest text-to-image attention of that layer. No cross-step
  state, no host sync (the count is known).

``none`` is ``pruning.enabled: false``: no pruner at all, the plain forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import METHODS, PruningConfig, PruningSettings
from .dynamic import LayerImportance, ranks
from .engine import SpecPruneEngine, StepPlan
from .layout import TokenLayout
from .scores import score_layer
from .static import StaticSelection
from .stopwatch import Stopwatch

RANDOM_SEED = 0


def check_layers(pruning: PruningConfig, n_layers: int) -> None:
    """Layer-indexed knobs against this model (the configuration alone cannot know its depth).

    Checked only while pruning is on, and only the knobs the chosen method reads: the plain
    forward uses no layer knob, so a model with 16 or 24 layers runs unpruned with the default
    (32-layer) knobs, and enabling pruning is what is refused until the knobs fit.
    """
    if not pruning.enabled:
        return
    if pruning.method == "fastv":
        if pruning.fastv_layer >= n_layers:
            raise ValueError(f"pruning.fastv_layer = {pruning.fastv_layer}: the model has {n_layers} layers "
                             f"(range [1, {n_layers - 1}])")
        return
    for name, layers, top in (("pruning.global_layers", pruning.global_layers, n_layers),
                              ("pruning.dynamic_layers", pruning.dynamic_layers, n_layers - 1)):
        bad = [n for n in layers if n > top]
        if bad:
            raise ValueError(f"{name} = {list(layers)}: the model has {n_layers} layers "
                             f"(range [{pruning.local_layers + 1}, {top}]; pruning.enabled needs them to fit; "
                             f"a parameter file or -p set them for a deeper model: leave them unset and the "
                             f"model's own apply)")
    if pruning.local_layers >= n_layers:
        raise ValueError(f"pruning.local_layers = {pruning.local_layers}: the model has only {n_layers} layers "
                         f"(range [1, {n_layers - 1}])")


class KeptSequence:
    """Where the vision tokens and the instruction are in a sequence that pruning shrinks.

    Pruning removes only vision tokens and keeps their order, so the vision tokens stay one
    contiguous block at ``layout.vision_start`` and the instruction positions just shift left by
    the number removed. ``vision_ids`` names each remaining vision token by its original index
    (camera * tokens_per_camera + patch), for scores that outlive the step (the prior).
    """

    def __init__(self, layout: TokenLayout, text_index: torch.Tensor, device: torch.device) -> None:
        self.layout, self.device = layout, device
        self.start = layout.vision_start
        self.count = layout.num_vision
        self.vision_ids = torch.arange(self.count, device=device)
        self.text_index = text_index

    @property
    def vision(self) -> slice:
        return slice(self.start, self.start + self.count)

    def keep(self, kept_vision: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Sequence indices keeping every non-vision token and the given (sorted, block-local)
        vision tokens; the bookkeeping follows."""
        dropped = self.count - kept_vision.numel()
        index = torch.cat([torch.arange(self.start, device=self.device), self.start + kept_vision,
                           torch.arange(self.start + self.count, seq_len, device=self.device)])
        self.vision_ids = self.vision_ids.index_select(0, kept_vision)
        self.text_index = self.text_index - dropped
        self.count -= dropped
        return index

    def mask(self, kept_vision: torch.Tensor) -> torch.Tensor:
        """(cameras, tokens_per_camera) bool mask of the given block-local vision tokens."""
        full = torch.zeros(self.layout.num_vision, dtype=torch.bool, device=self.device)
        full[self.vision_ids.index_select(0, kept_vision)] = True
        return full.view(self.layout.num_cameras, -1)


@dataclass
class PrunerReport:
    """What a step decided, on the host: the controller's mode, the motion it measured, the
    history rule's T, and why the step ran unpruned ("" when it was pruned)."""

    fine_mode: bool = False
    entered_fine: bool = False
    translation_speed: float = 0.0
    rotation_speed: float = 0.0
    history_frames: int = 0
    history_age_s: float = 0.0
    fallback_reason: str = ""


class StepPruner:
    """One step of a pruning rule, asked by the model layer by layer. This base keeps everything.

    After the forward: ``selection`` (the static stage's masks, device tensors), ``fallback`` (a
    scene cut kept every token), ``recall`` (() device tensor or None), ``plan`` (SpecPrune's
    controller / history decision, None for rules without one), ``reason`` (why the step ran
    unpruned, "" when it was pruned) and ``vision_kept`` (tokens after the static stage).
    """

    def __init__(self, sequence: KeptSequence, watch: Stopwatch) -> None:
        self.sequence, self.watch = sequence, watch
        self.selection: StaticSelection | None = None
        self.fallback = False
        self.recall: torch.Tensor | None = None
        self.plan: StepPlan | None = None
        self.reason = ""
        self.vision_kept: int | None = None

    def scores_wanted(self, number: int) -> torch.Tensor | None:
        """The instruction positions if layer ``number`` should hand back its queries and keys."""
        return self.sequence.text_index if self.wants_scores(number) else None

    def wants_scores(self, number: int) -> bool:
        return False

    def after_layer(self, number: int, qk: tuple[torch.Tensor, torch.Tensor] | None,
                    seq_len: int) -> torch.Tensor | None:
        return None

    def finish(self) -> None:
        pass

    def device_tensors(self) -> list[torch.Tensor]:
        """The step's small device results for the step's one host transfer, in this order: the
        static stage's four counts and kept mask (if it ran), the global recall (if measured)."""
        out = []
        if self.selection is not None:
            out += [self.selection.counts().float(), self.selection.kept.reshape(-1).float()]
        if self.recall is not None:
            out.append(self.recall.float().view(1))
        return out

    def report(self) -> PrunerReport:
        report = PrunerReport(fallback_reason="scene cut" if self.fallback else self.reason)
        if self.plan is not None:
            decision = self.plan.decision
            report.fine_mode, report.entered_fine = decision.fine, decision.entered_fine
            report.translation_speed = decision.motion.translation_speed
            report.rotation_speed = decision.motion.rotation_speed
            report.history_frames, report.history_age_s = self.plan.history_frames, self.plan.history_age_s
        return report


class SpecPrunePruner(StepPruner):
    """One SpecPrune step: queued scoring, static and dynamic pruning, the prior for the next step.

    Each scored layer contributes its instruction queries and keys; logits, softmax, scores and
    entropy are computed in one batched call per segment of equal sequence length (before static
    pruning, at each dropping layer, at the end): a handful of kernels instead of one set per layer.
    """

    def __init__(self, pruning: PruningConfig, n_layers: int, engine: SpecPruneEngine, plan: StepPlan,
                 sequence: KeptSequence, watch: Stopwatch) -> None:
        super().__init__(sequence, watch)
        self.cfg, self.n_layers, self.engine, self.plan = pruning, n_layers, engine, plan
        self.reason = plan.reason
        self.pruned = plan.prune
        self.last_dynamic = max(pruning.dynamic_layers, default=0)
        self.importance: LayerImportance | None = None
        self.local: list[torch.Tensor] = []
        self.global_scores: dict[int, torch.Tensor] = {}
        self._queue: list[tuple[int, torch.Tensor, torch.Tensor]] = []   # (layer, q_text, keys)

    # ---- what the model asks ------------------------------------------------------------------------
    def in_ema(self, number: int) -> bool:
        return self.importance is not None and number <= self.last_dynamic

    def wants_scores(self, number: int) -> bool:
        return ((self.pruned and number <= self.cfg.local_layers) or number in self.cfg.global_layers
                or self.in_ema(number))

    def after_layer(self, number: int, qk: tuple[torch.Tensor, torch.Tensor] | None,
                    seq_len: int) -> torch.Tensor | None:
        if qk is not None:
            self._queue.append((number, *qk))
            if not self.in_ema(number) and number > self.cfg.local_layers:
                self._flush()     # a lone global layer outside the EMA range: nothing to batch it with
        if self.pruned and number == self.cfg.local_layers:
            return self._static_prune(seq_len)
        if number in self.cfg.dynamic_layers and number < self.n_layers and self.importance is not None:
            self._flush()
            with self.watch:
                return self.sequence.keep(self._dynamic_keep(), seq_len)
        return None

    def finish(self) -> None:
        self._flush()
        with self.watch:
            g, layout = self.global_scores, self.sequence.layout
            stacked = torch.stack([g[n] for n in sorted(g)]).view(len(g), layout.num_cameras, -1)
            self.recall = self.engine.end_step(self.plan, stacked)

    # ---- the rule's choices (the random baseline overrides them) --------------------------------------
    def _static_choice(self, selection: StaticSelection) -> StaticSelection:
        return selection

    def _dynamic_keep(self) -> torch.Tensor:
        blocks = None
        if self.cfg.coverage_grid and self.cfg.coverage_dynamic:
            # block of every remaining vision token, numbered across cameras
            ids = self.engine.frame_rule().coverage_ids
            per_camera = self.sequence.layout.tokens_per_camera
            camera, patch = self.sequence.vision_ids // per_camera, self.sequence.vision_ids % per_camera
            blocks = camera * self.cfg.coverage_grid ** 2 + ids.index_select(0, patch)
            count = self.sequence.layout.num_cameras * self.cfg.coverage_grid ** 2
            return self.importance.drop(self.cfg.dynamic_drop_ratio, blocks, count)
        return self.importance.drop(self.cfg.dynamic_drop_ratio)

    # ---- internals -------------------------------------------------------------------------------------
    def _flush(self) -> None:
        if not self._queue:
            return
        with self.watch:
            numbers = [n for n, _, _ in self._queue]
            q = torch.stack([q for _, q, _ in self._queue])
            k = torch.stack([k for _, _, k in self._queue])
            self._queue = []
            ema = self.in_ema(numbers[-1])
            scores = score_layer(q, k, self.sequence.vision, self.cfg.confidence if ema else None)
            if ema:
                self.importance.update(scores.scores, scores.confidence)
            for i, number in enumerate(numbers):
                if number <= self.cfg.local_layers and self.pruned:
                    self.local.append(scores.scores[i])
                if number in self.cfg.global_layers:
                    full = torch.full((self.sequence.layout.num_vision,), float("-inf"), device=q.device)
                    self.global_scores[number] = full.index_copy_(0, self.sequence.vision_ids, scores.scores[i])

    def _static_prune(self, seq_len: int) -> torch.Tensor:
        self._flush()
        with self.watch:
            layout = self.sequence.layout
            selection = self.engine.select(self.plan, torch.stack(self.local).view(len(self.local),
                                                                                     layout.num_cameras, -1))
            selection = self._static_choice(selection)
            # The step's one sync: the kept indices, with the scene-cut flag as one extra entry.
            flagged = torch.cat([selection.kept.reshape(-1), selection.fallback.view(1)]).nonzero().squeeze(1)
            fallback = bool(flagged.numel()) and int(flagged[-1]) == layout.num_vision
            kept_vision = flagged[:-1] if fallback else flagged
            self.selection, self.fallback = selection, fallback
            keep = self.sequence.keep(kept_vision, seq_len)
            self.vision_kept = self.sequence.count
            if fallback:
                self.pruned = False        # scene cut: the rest of this step runs unpruned
            elif self.cfg.dynamic_layers:
                self.importance = LayerImportance(self.sequence.count, self.cfg.ema_beta, self.cfg.rank_sharpness,
                                                  self.sequence.device)
        return keep


class RandomPruner(SpecPrunePruner):
    """SpecPrune's budget, random tokens: per camera as many as SpecPrune kept, at each dynamic
    layer as many dropped; its EMA is not computed (nothing reads it). Recall is not defined."""

    def __init__(self, *args, generator: torch.Generator) -> None:
        super().__init__(*args)
        self.generator = generator

    def in_ema(self, number: int) -> bool:
        return False

    def _static_choice(self, selection: StaticSelection) -> StaticSelection:
        counts = selection.kept.sum(dim=-1, keepdim=True)              # (C, 1), on the device
        keys = torch.rand(selection.kept.shape, generator=self.generator, device=selection.kept.device)
        kept = (ranks(keys) < counts) | selection.fallback
        return StaticSelection(kept, selection.global_mask, selection.local_mask, selection.dynamic_mask,
                               selection.fallback)

    def _dynamic_keep(self) -> torch.Tensor:
        n = self.sequence.count
        order = torch.randperm(n, generator=self.generator, device=self.sequence.device)
        return order[:n - int(self.cfg.dynamic_drop_ratio * n)].sort().values

    def finish(self) -> None:
        super().finish()
        self.recall = None


class AttentionRecorder(StepPruner):
    """Keeps every token and records, at ``layers``, each vision token's mean attention from the
    scoring queries (Eq. 1's score, the quantity every rule here ranks by): where an unpruned
    model looks, layer by layer. ``maps`` (layer -> (n_vision,) device tensor) after the forward."""

    def __init__(self, sequence: KeptSequence, watch: Stopwatch, layers: list[int]) -> None:
        super().__init__(sequence, watch)
        self.layers, self.maps = set(layers), {}

    def wants_scores(self, number: int) -> bool:
        return number in self.layers

    def after_layer(self, number: int, qk: tuple[torch.Tensor, torch.Tensor] | None,
                    seq_len: int) -> torch.Tensor | None:
        if qk is not None:
            self.maps[number] = score_layer(qk[0].unsqueeze(0), qk[1].unsqueeze(0), self.sequence.vision,
                                            None).scores[0]
        return None


class FastVPruner(StepPruner):
    """FastV: after layer K, the top-R vision tokens by that layer's text-to-image attention."""

    def __init__(self, pruning: PruningConfig, sequence: KeptSequence, watch: Stopwatch) -> None:
        super().__init__(sequence, watch)
        self.layer, self.tokens = pruning.fastv_layer, pruning.fastv_tokens

    def wants_scores(self, number: int) -> bool:
        return number == self.layer

    def after_layer(self, number: int, qk: tuple[torch.Tensor, torch.Tensor] | None,
                    seq_len: int) -> torch.Tensor | None:
        if number != self.layer or qk is None:
            return None
        with self.watch:
            scores = score_layer(qk[0].unsqueeze(0), qk[1].unsqueeze(0), self.sequence.vision, None).scores[0]
            kept_vision = scores.topk(min(self.tokens, scores.numel())).indices.sort().values
            kept = self.sequence.mask(kept_vision)
            none = torch.zeros_like(kept)
            self.selection = StaticSelection(kept, none, none, none, torch.zeros((), dtype=torch.bool,
                                                                                 device=kept.device))
            keep = self.sequence.keep(kept_vision, seq_len)
            self.vision_kept = self.sequence.count
        return keep


class PruningStrategy:
    """A pruning rule's state across steps; hands out one ``StepPruner`` per step."""

    method = "none"

    def __init__(self, config: PruningSettings, layout: TokenLayout, n_layers: int, frame_shape: tuple[int, int, int],
                 device: torch.device | str) -> None:
        """``layout``: the camera and patch geometry the cross-step state is sized for (a step's
        own layout, which also depends on its prompt, comes with ``begin_step``)."""
        self.config, self.layout, self.n_layers = config, layout, n_layers
        self.frame_shape, self.device = frame_shape, torch.device(device)
        self._text_index: tuple[tuple[TokenLayout, str], torch.Tensor] | None = None

    def configure(self, config: PruningSettings) -> None:
        """New knobs, read from the next step (ToMe-style plain state)."""
        self.config = config

    def reset(self) -> None:
        """Episode start."""

    def observe(self, stamp: float, frames: torch.Tensor | Callable[[], torch.Tensor]) -> None:
        """A frame seen between steps (only rules with a frame history keep it)."""

    def begin_step(self, frames: torch.Tensor, motion: np.ndarray | None, stamp: float, layout: TokenLayout,
                   watch: Stopwatch) -> StepPruner:
        raise NotImplementedError

    def sequence(self, layout: TokenLayout) -> KeptSequence:
        """The step's sequence bookkeeping. The scoring positions (``pruning.score_queries``) go to
        the device once per prompt: a host-to-device copy queued behind GPU work would be a hidden
        sync every step."""
        queries = self.config.pruning.score_queries
        if self._text_index is None or self._text_index[0] != (layout, queries):
            self._text_index = ((layout, queries), layout.query_index(queries, self.device))
        return KeptSequence(layout, self._text_index[1], self.device)


class SpecPruneStrategy(PruningStrategy):
    method = "specprune"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine = SpecPruneEngine(self.config, self.layout, self.frame_shape, self.device)

    def configure(self, config: PruningSettings) -> None:
        super().configure(config)
        self.engine.configure(config)

    def reset(self) -> None:
        self.engine.reset()

    def observe(self, stamp: float, frames: torch.Tensor | Callable[[], torch.Tensor]) -> None:
        self.engine.observe(stamp, frames)

    def begin_step(self, frames: torch.Tensor, motion: np.ndarray | None, stamp: float, layout: TokenLayout,
                   watch: Stopwatch) -> StepPruner:
        with watch:
            plan = self.engine.begin_step(frames, motion, stamp)
        return SpecPrunePruner(self.config.pruning, self.n_layers, self.engine, plan, self.sequence(layout), watch)


class RandomStrategy(SpecPruneStrategy):
    method = "random"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(RANDOM_SEED)

    def reset(self) -> None:
        super().reset()
        self.generator.manual_seed(RANDOM_SEED)       # every episode draws the same sequence

    def begin_step(self, frames: torch.Tensor, motion: np.ndarray | None, stamp: float, layout: TokenLayout,
                   watch: Stopwatch) -> StepPruner:
        with watch:
            plan = self.engine.begin_step(frames, motion, stamp)
        return RandomPruner(self.config.pruning, self.n_layers, self.engine, plan, self.sequence(layout), watch,
                            generator=self.generator)


class FastVStrategy(PruningStrategy):
    method = "fastv"

    def begin_step(self, frames: torch.Tensor, motion: np.ndarray | None, stamp: float, layout: TokenLayout,
                   watch: Stopwatch) -> StepPruner:
        return FastVPruner(self.config.pruning, self.sequence(layout), watch)


STRATEGIES: dict[str, type[PruningStrategy]] = {s.method: s for s in (SpecPruneStrategy, RandomStrategy,
                                                                       FastVStrategy)}
if tuple(STRATEGIES) != METHODS:     # pruning.method's choices are the rules implemented here
    raise ImportError(f"pruning.config.METHODS {METHODS} and the strategies {tuple(STRATEGIES)} differ")


def make_strategy(config: PruningSettings, layout: TokenLayout, n_layers: int, frame_shape: tuple[int, int, int],
                  device: torch.device | str) -> PruningStrategy:
    """The strategy ``config.pruning.method`` names."""
    return STRATEGIES[config.pruning.method](config, layout, n_layers, frame_shape, device)
