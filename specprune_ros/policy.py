"""The policy: OpenVLA-OFT + SpecPrune state across control steps.

    policy = SpecPrunePolicy.from_config(Config.from_yaml("config/rizon4.yaml"))
    policy.reset()                                  # episode start
    out = policy.step(Observation(images=[primary, wrist], proprio=q, instruction="..."))
    out.actions        # (chunk_size, action_dim) un-normalized, float32
    out.stats          # everything PruningStats carries

Configuration changes (``set_config``, e.g. from ``ros2 param set``) are queued and applied
at the start of the next step, never during one. The node, replay and bench all use this class.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import Config, ConfigError, iter_specs
from .model.checkpoint import LoadedPolicyModel, load_checkpoint
from .model.config import dimension_names
from .model.flops import flops_ratio
from .model.processing import ImageProcessor
from .model.prompt import EncodedPrompt, encode_prompt
from .observation import Observation, ObservationError
from .pruning.frames import executed_actions
from .pruning.layout import TokenLayout
from .pruning.stopwatch import Stopwatch
from .pruning.strategy import PruningStrategy, check_layers, make_strategy

READ_ONLY = frozenset(name for name, spec in iter_specs() if spec.read_only)


@dataclass
class StepStats:
    """One step's pruning report; field names follow specprune_ros/PruningStats."""

    step: int = 0
    stamp: float = 0.0
    pruning_enabled: bool = False
    method: str = "none"                  # pruning.method of the step, "none" when disabled
    fine_mode: bool = False
    entered_fine: bool = False
    alpha: float = 0.0
    vision_tokens_total: int = 0
    vision_tokens_kept: int = 0
    global_selected: int = 0
    local_selected: int = 0
    dynamic_selected: int = 0
    tokens_per_layer: list[int] = field(default_factory=list)
    history_frames: int = 0
    history_age_s: float = 0.0
    translation_speed: float = 0.0
    rotation_speed: float = 0.0
    global_recall: float = math.nan
    flops_ratio: float = 1.0
    latency_ms: float = 0.0
    overhead_ms: float = 0.0
    fallback_reason: str = ""

    # The scalar fields of specprune_ros/PruningStats, in one place for the node and replay.
    MESSAGE_FIELDS = ("step", "pruning_enabled", "fine_mode", "alpha", "vision_tokens_total", "vision_tokens_kept",
                      "global_selected", "local_selected", "dynamic_selected", "history_frames", "history_age_s",
                      "translation_speed", "rotation_speed", "global_recall", "flops_ratio", "latency_ms",
                      "overhead_ms", "fallback_reason")

    def message_fields(self) -> dict[str, object]:
        """PruningStats' fields except the header and tokens_per_layer."""
        return {name: getattr(self, name) for name in self.MESSAGE_FIELDS}


@dataclass
class PolicyOutput:
    actions: np.ndarray                   # (chunk_size, action_dim) un-normalized
    actions_normalized: np.ndarray        # what the model predicted, in [-1, 1] units
    stats: StepStats
    frames: torch.Tensor | None = None    # (cameras, 3, 224, 224) uint8 model-resolution frames
    kept_mask: np.ndarray | None = None   # (cameras, patches) bool after static pruning, if pruned

    def chunk_fields(self, action_dt: float) -> dict[str, object]:
        """specprune_ros/ActionChunk's fields except the header (node and output bags alike)."""
        chunk_size, action_dim = self.actions.shape
        return {"step": self.stats.step, "chunk_size": chunk_size, "action_dim": action_dim, "dt": action_dt,
                "dimension_names": list(dimension_names(action_dim)),
                "actions": self.actions.astype(np.float32).ravel()}

    def stats_fields(self) -> dict[str, object]:
        """specprune_ros/PruningStats' fields except the header."""
        return {**self.stats.message_fields(),
                "tokens_per_layer": np.asarray(self.stats.tokens_per_layer, dtype=np.uint32)}

    def overlay(self) -> np.ndarray:
        """HxWx3 uint8: the cameras' model-resolution frames side by side, pruned patches darkened."""
        frames = self.frames.cpu().numpy().transpose(0, 2, 3, 1).copy()
        cams, height = frames.shape[:2]
        if self.kept_mask is not None:
            grid = int(round(self.kept_mask.shape[1] ** 0.5))
            keep = self.kept_mask.reshape(cams, grid, grid).repeat(height // grid, 1).repeat(height // grid, 2)
            frames[~keep] //= 4
        return np.concatenate(list(frames), axis=1)


class SpecPrunePolicy:
    def __init__(self, loaded: LoadedPolicyModel, config: Config) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = config
        self.device = next(self.model.parameters()).device
        mcfg = self.model.config
        if mcfg.num_images is not None and mcfg.num_images != config.node.num_images:
            raise ConfigError(f"num_images = {config.node.num_images}: the model {loaded.source} was trained with "
                              f"{mcfg.num_images} camera(s) (config.json oft_config.num_images); set num_images: "
                              f"{mcfg.num_images} and give it that many image topics")
        check_layers(config.pruning, mcfg.llm.layers)
        rotations = (config.node.rotation_primary, config.node.rotation_wrist)
        self.processor = ImageProcessor(mcfg.image_size, mcfg.center_crop, rotations, self.device,
                                        dtype=self.model.llm.embed_tokens.weight.dtype,
                                        resize=config.node.image_resize)
        self._pending: Config | None = None
        self._lock = threading.Lock()
        self._strategy: PruningStrategy | None = None
        self._prompt: tuple[str, EncodedPrompt] | None = None
        self._previous_action: np.ndarray | None = None
        self._previous_stamp: float | None = None
        self._step = 0

    @classmethod
    def from_config(cls, config: Config) -> "SpecPrunePolicy":
        node = config.node
        loaded = load_checkpoint(node.model_path, node.device, node.dtype, node.unnorm_key)
        return cls(loaded, config)

    # ---- configuration and episodes ---------------------------------------------------------------
    def set_config(self, config: Config) -> None:
        """Queue a new configuration for the next step (thread-safe). Read-only knobs must not change."""
        old, new = self.config.flat(), config.flat()
        changed = sorted(n for n in READ_ONLY if old[n] != new[n])
        if changed:
            raise ConfigError(f"{', '.join(changed)} cannot change while running (read-only)")
        check_layers(config.pruning, self.model.config.llm.layers)   # reject now, not at every step
        with self._lock:
            self._pending = config

    def reset(self) -> None:
        """Episode start: no prior attention, no frame history, coarse mode, step counter 0."""
        if self._strategy is not None:
            self._strategy.reset()
        self._previous_action = None
        self._previous_stamp = None
        self._step = 0

    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            if self._strategy is not None:
                if pending.pruning.method != self._strategy.method:
                    self._strategy = None          # another rule: built at the next pruned step, fresh
                else:
                    self._strategy.configure(pending)
            self.config = pending

    def _encoded(self, instruction: str) -> EncodedPrompt:
        if self._prompt is None or self._prompt[0] != instruction:
            try:
                encoded = encode_prompt(self.loaded.tokenizer, instruction)
            except ValueError as exc:      # empty or untokenizable: this observation cannot act
                raise ObservationError(str(exc)) from None
            if self._prompt is not None:
                self.reset()           # a new task: prior, history, controller and step count restart
            self._prompt = (instruction, encoded)
        return self._prompt[1]

    # ---- the step ------------------------------------------------------------------------------------
    def predict_action_chunk(self, obs: Observation) -> np.ndarray:
        return self.step(obs).actions

    @torch.inference_mode()
    def step(self, obs: Observation) -> PolicyOutput:
        start = time.perf_counter()
        self._apply_pending()
        cfg = self.config
        mcfg = self.model.config
        if len(obs.images) != cfg.node.num_images:
            raise ObservationError(f"got {len(obs.images)} images, num_images is {cfg.node.num_images}")
        instruction = obs.instruction or cfg.node.instruction
        prompt = self._encoded(instruction)
        proprio = None
        if self.model.proprio_projector is not None:
            if obs.proprio is None:
                raise ObservationError("the model needs the proprio state and the observation has none")
            proprio = torch.as_tensor(self.loaded.stats.normalize_proprio(obs.proprio), dtype=torch.float32,
                                      device=self.device)
        frames = self.processor.frames(obs.images)
        pixels = self.processor.pixels(frames)
        layout = self.model.layout(prompt, len(obs.images))

        gap = self._previous_stamp is not None and not 0 <= obs.stamp - self._previous_stamp <= cfg.node.episode_gap_s
        if gap:                    # a prior from before the gap (or a clock reset) is no prior: start afresh
            self.reset()
        watch = Stopwatch(self.device)
        stats = StepStats(step=self._step, stamp=obs.stamp, pruning_enabled=cfg.pruning.enabled,
                          alpha=cfg.pruning.alpha, vision_tokens_total=layout.num_vision)
        pruner = None
        if cfg.pruning.enabled:
            strategy = self._strategy_for(layout)
            self._observe_history(strategy, obs, watch)
            pruner = strategy.begin_step(frames, self._executed_motion(obs), obs.stamp, layout, watch)
            stats.method = strategy.method
        elif self._strategy is not None:
            self._strategy.reset()     # re-enabling starts from a fresh prior
        actions, tokens_per_layer = self.model.predict(pixels, proprio, prompt, pruner)
        selection = recall = None
        if pruner is not None:
            selection, recall = pruner.selection, pruner.recall
            plan = pruner.plan
            if plan is not None:
                stats.fine_mode, stats.entered_fine = plan.decision.fine, plan.decision.entered_fine
                stats.translation_speed = plan.decision.motion.translation_speed
                stats.rotation_speed = plan.decision.motion.rotation_speed
                stats.history_frames, stats.history_age_s = plan.history_frames, plan.history_age_s
            stats.fallback_reason = "input gap" if gap else pruner.reason
            if pruner.fallback:
                stats.fallback_reason = "scene cut"

        # One transfer at the end of the step: actions and the small stats tensors.
        extras = [actions.reshape(-1)]
        if selection is not None:
            extras += [selection.counts().float(), selection.kept.reshape(-1).float()]
        if recall is not None:
            extras.append(recall.float().view(1))
        host = torch.cat([e.to(torch.float32) for e in extras]).cpu().numpy()
        n_act = mcfg.chunk_size * mcfg.action_dim
        normalized = host[:n_act].reshape(mcfg.chunk_size, mcfg.action_dim)
        if not np.all(np.isfinite(normalized)):
            # Never act on it, and never feed it to the controller: the next step starts afresh.
            self.reset()
            raise ObservationError("the model produced non-finite actions; the episode state was reset")
        offset = n_act
        kept_mask = None
        if selection is not None:
            kept, g, loc, dyn = (int(v) for v in host[offset:offset + 4])
            offset += 4
            stats.vision_tokens_kept, stats.global_selected = kept, g
            stats.local_selected, stats.dynamic_selected = loc, dyn
            kept_mask = host[offset:offset + selection.kept.numel()].reshape(selection.kept.shape) > 0.5
            offset += selection.kept.numel()
        else:
            stats.vision_tokens_kept = layout.num_vision
        if recall is not None:
            stats.global_recall = float(host[offset])
        stats.tokens_per_layer = tokens_per_layer
        stats.flops_ratio = flops_ratio(self.model.config.llm, tokens_per_layer)
        actions_out = self.loaded.stats.unnormalize_actions(normalized).astype(np.float32)

        self._previous_action = normalized
        self._previous_stamp = obs.stamp
        self._step += 1
        stats.overhead_ms = watch.total_ms()
        stats.latency_ms = (time.perf_counter() - start) * 1e3
        return PolicyOutput(actions_out, normalized, stats, frames, kept_mask)

    def _observe_history(self, strategy: PruningStrategy, obs: Observation, watch: Stopwatch) -> None:
        """Frames that arrived since the previous step join the history (never acted on).

        Each is decoded and preprocessed only if it becomes the frame compared (one per step at
        most); one that cannot be, then, is forgotten and the next closest is compared.
        """
        for past in obs.history:
            if past.stamp < obs.stamp:
                with watch:
                    strategy.observe(past.stamp, lambda past=past: self.processor.frames(past.load()))

    def _executed_motion(self, obs: Observation) -> np.ndarray | None:
        """The actions executed since the previous step: measured ones if the observation has
        them, else the part of the previous predicted chunk that had time to run; in the units the
        controller measures (``NormStats.motion_units``)."""
        if obs.motion is not None:
            motion = _checked_motion(obs.motion)
        elif self._previous_action is None or self._previous_stamp is None:
            return None
        else:
            motion = executed_actions(self._previous_action, obs.stamp - self._previous_stamp,
                                      self.config.node.action_dt)
        return self.loaded.stats.motion_units(motion)

    def _strategy_for(self, layout: TokenLayout) -> PruningStrategy:
        """The configured rule's state, made at its first pruned step (or for another camera count)."""
        if self._strategy is None or self._strategy.layout.num_cameras != layout.num_cameras:
            size = self.model.config.image_size
            self._strategy = make_strategy(self.config, layout, self.model.config.llm.layers, (3, size, size),
                                           self.device)
        return self._strategy


def _checked_motion(motion) -> np.ndarray:
    """Rows of >= 6 finite values (one per executed action period)."""
    m = np.atleast_2d(np.asarray(motion, dtype=np.float64))
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 6 or not np.all(np.isfinite(m[:, :6])):
        raise ObservationError(f"motion must hold rows of 6 finite values (dx dy dz droll dpitch dyaw), "
                               f"got shape {np.shape(motion)}")
    return m
