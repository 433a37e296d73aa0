"""The policy: OpenVLA-OFT + SpecPrune state across control steps.

    policy = make_policy(Config.from_yaml("config/rizon4.yaml"))
    policy.reset()                                  # episode start
    out = policy.step(Observation(images=[primary, wrist], proprio=q, instruction="..."))
    out.actions        # (chunk_size, action_dim) un-normalized, float32
    out.stats          # everything PruningStats carries

Configuration changes (``set_config``, e.g. from ``ros2 param set``) are queued and applied
at the start of the next step, never during one. The node, replay and bench all use this class.
"""
from __future__ import annotations

import dataclasses
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
from .pruning.strategy import AttentionRecorder, KeptSequence, PruningStrategy, StepPruner, check_layers, make_strategy

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
        """HxWx3 uint8: the cameras' model-resolution frames side by side (primary first), pruned
        patches washed out to pale grey and hatched - neither darkened (a dark scene would read as
        pruned) nor tinted (a red object would)."""
        frames = self.frames.cpu().numpy().transpose(0, 2, 3, 1).copy()
        cams, height, width = frames.shape[:3]
        if self.kept_mask is not None:
            grid = int(round(self.kept_mask.shape[1] ** 0.5))
            keep = self.kept_mask.reshape(cams, grid, grid).repeat(height // grid, 1).repeat(width // grid, 2)
            grey = frames[~keep].mean(axis=-1, keepdims=True)
            frames[~keep] = (0.3 * grey + 0.7 * 235).astype(np.uint8)
            rows, cols = np.indices((height, width))
            hatch = ~keep & ((rows + cols) % 6 == 0)[None]
            frames[hatch] = 110
        return np.concatenate(list(frames), axis=1)


def load_model(config: Config) -> LoadedPolicyModel:
    """The one place a checkpoint is loaded: ``model_path`` on ``device`` in ``dtype``, actions
    un-normalized with ``unnorm_key``. Callers that run several policies on one model (replay's
    pruned and unpruned, an evaluation worker's methods) load it once and share it."""
    node = config.node
    return load_checkpoint(node.model_path, node.device, node.dtype, node.unnorm_key)


def make_policy(config: Config, loaded: LoadedPolicyModel | None = None) -> "SpecPrunePolicy":
    """The policy for ``config``: its checkpoint (or ``loaded``, already loaded) with its knobs."""
    return SpecPrunePolicy(loaded if loaded is not None else load_model(config), config)


@dataclass(frozen=True)
class StepInputs:
    """One observation as the model takes it."""

    prompt: EncodedPrompt
    proprio: torch.Tensor | None
    frames: torch.Tensor                 # (cameras, 3, H, W) uint8 at model resolution
    pixels: torch.Tensor
    layout: TokenLayout
    gap: bool                            # the step follows an input gap: the episode started afresh


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

    # ---- configuration and episodes ---------------------------------------------------------------
    def check_config(self, config: Config) -> None:
        """Refuse what this running policy cannot take: a changed read-only knob, layer knobs
        beyond the model's depth (refused now, not at every step)."""
        old, new = self.config.flat(), config.flat()
        changed = sorted(n for n in READ_ONLY if old[n] != new[n])
        if changed:
            raise ConfigError(f"{', '.join(changed)} cannot change while running (read-only)")
        check_layers(config.pruning, self.model.config.llm.layers)

    def set_config(self, config: Config) -> None:
        """Queue a new configuration for the next step (thread-safe), once it passed ``check_config``."""
        self.check_config(config)
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
                    self._strategy.configure(pending.pruning_settings())
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
        """preprocess -> begin the pruning step -> predict -> the step's report (one host
        transfer) -> un-normalized actions."""
        start = time.perf_counter()
        self._apply_pending()
        inputs = self._preprocess(obs)
        watch = Stopwatch(self.device)
        pruner, stats = self._begin_pruning(obs, inputs, watch)
        actions, stats.tokens_per_layer = self.model.predict(inputs.pixels, inputs.proprio, inputs.prompt, pruner)
        normalized, kept_mask = self._report(actions, pruner, inputs, stats)
        stats.flops_ratio = flops_ratio(self.model.config.llm, stats.tokens_per_layer)
        self._previous_action, self._previous_stamp = normalized, obs.stamp
        self._step += 1
        stats.overhead_ms = watch.total_ms()
        stats.latency_ms = (time.perf_counter() - start) * 1e3
        actions_out = self.loaded.stats.unnormalize_actions(normalized).astype(np.float32)
        return PolicyOutput(actions_out, normalized, stats, inputs.frames, kept_mask)

    @torch.inference_mode()
    def attention(self, obs: Observation, layers: list[int]) -> np.ndarray:
        """(len(layers), cameras, tokens_per_camera) mean attention of the scoring queries
        (``pruning.score_queries``) on each vision token at each 1-based layer, in the unpruned
        forward: where the model looks at the layers a rule reads. No prior, history or step count
        changes (a new instruction or a stamp gap still starts the episode afresh, as in ``step``)."""
        bad = [n for n in layers if not 1 <= n <= self.model.config.llm.layers]
        if bad:
            raise ValueError(f"attention layers {bad}: the model has layers 1 .. {self.model.config.llm.layers}")
        inputs = self._preprocess(obs)
        layout = inputs.layout
        sequence = KeptSequence(layout, layout.query_index(self.config.pruning.score_queries, self.device),
                                self.device)
        recorder = AttentionRecorder(sequence, Stopwatch(self.device), layers)
        self.model.predict(inputs.pixels, inputs.proprio, inputs.prompt, recorder)
        maps = torch.stack([recorder.maps[n] for n in layers]).float().cpu().numpy()
        return maps.reshape(len(layers), layout.num_cameras, layout.tokens_per_camera)

    def _preprocess(self, obs: Observation) -> StepInputs:
        """Checks, prompt, proprio and images as the model takes them; an input gap (or a clock
        reset) starts the episode afresh, since a prior from before it is no prior."""
        cfg = self.config
        if len(obs.images) != cfg.node.num_images:
            raise ObservationError(f"got {len(obs.images)} images, num_images is {cfg.node.num_images}")
        prompt = self._encoded(obs.instruction or cfg.node.instruction)
        proprio = None
        if self.model.proprio_projector is not None:
            if obs.proprio is None:
                raise ObservationError("the model needs the proprio state and the observation has none")
            proprio = torch.as_tensor(self.loaded.stats.normalize_proprio(obs.proprio), dtype=torch.float32,
                                      device=self.device)
        frames = self.processor.frames(obs.images)
        gap = self._previous_stamp is not None and not 0 <= obs.stamp - self._previous_stamp <= cfg.node.episode_gap_s
        if gap:
            self.reset()
        return StepInputs(prompt, proprio, frames, self.processor.pixels(frames),
                          self.model.layout(prompt, len(obs.images)), gap)

    def _begin_pruning(self, obs: Observation, inputs: StepInputs,
                       watch: Stopwatch) -> tuple[StepPruner | None, StepStats]:
        """The configured rule's pruner for this step (None when pruning is off) and the step's stats."""
        cfg = self.config
        stats = StepStats(step=self._step, stamp=obs.stamp, pruning_enabled=cfg.pruning.enabled,
                          alpha=cfg.pruning.alpha, vision_tokens_total=inputs.layout.num_vision,
                          vision_tokens_kept=inputs.layout.num_vision)
        if not cfg.pruning.enabled:
            if self._strategy is not None:
                self._strategy.reset()     # re-enabling starts from a fresh prior
            return None, stats
        strategy = self._strategy_for(inputs.layout)
        self._observe_history(strategy, obs, watch)
        stats.method = strategy.method
        return strategy.begin_step(inputs.frames, self._executed_motion(obs), obs.stamp, inputs.layout, watch), stats

    def _report(self, actions: torch.Tensor, pruner: StepPruner | None, inputs: StepInputs,
                stats: StepStats) -> tuple[np.ndarray, np.ndarray | None]:
        """The step's one device-to-host transfer (the actions and the pruner's small tensors),
        unpacked into the normalized chunk, the stats and the kept-patch mask."""
        mcfg = self.model.config
        pieces = [actions.reshape(-1)] + (pruner.device_tensors() if pruner is not None else [])
        host = torch.cat([p.to(torch.float32) for p in pieces]).cpu().numpy()
        n_act = mcfg.chunk_size * mcfg.action_dim
        normalized = host[:n_act].reshape(mcfg.chunk_size, mcfg.action_dim)
        if not np.all(np.isfinite(normalized)):
            # Never act on it, and never feed it to the controller: the next step starts afresh.
            self.reset()
            raise ObservationError("the model produced non-finite actions; the episode state was reset")
        if pruner is None:
            return normalized, None
        report = pruner.report()
        for f in dataclasses.fields(report):
            setattr(stats, f.name, getattr(report, f.name))
        if inputs.gap and not pruner.fallback:
            stats.fallback_reason = "input gap"
        kept_mask, rest = None, host[n_act:]
        if pruner.selection is not None:
            kept, stats.global_selected, stats.local_selected, stats.dynamic_selected = (int(v) for v in rest[:4])
            stats.vision_tokens_kept = kept
            size = pruner.selection.kept.numel()
            kept_mask = rest[4:4 + size].reshape(pruner.selection.kept.shape) > 0.5
            rest = rest[4 + size:]
        if pruner.recall is not None:
            stats.global_recall = float(rest[0])
        return normalized, kept_mask

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
            self._strategy = make_strategy(self.config.pruning_settings(), layout, self.model.config.llm.layers,
                                           (3, size, size), self.device)
        return self._strategy


def _checked_motion(motion) -> np.ndarray:
    """Rows of >= 6 finite values (one per executed action period)."""
    m = np.atleast_2d(np.asarray(motion, dtype=np.float64))
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 6 or not np.all(np.isfinite(m[:, :6])):
        raise ObservationError(f"motion must hold rows of 6 finite values (dx dy dz droll dpitch dyaw), "
                               f"got shape {np.shape(motion)}")
    return m
