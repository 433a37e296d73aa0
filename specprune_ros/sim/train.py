"""Training the project's own OpenVLA-OFT model on expert demonstrations (`specprune sim train`).

The OFT recipe at a small width: the released token geometry (2 cameras x 256 patches at 224 px,
a 32-layer LLM, chunk 8 x 7), bidirectional attention, L1 regression of the normalized action
chunk, BOUNDS_Q99 statistics of the demonstrations, and exactly the deployment preprocessing
(``ImageProcessor``; the sim renders 224 px frames, so no resize; no crop augmentation, hence no
center crop at deployment either). Seeded and resumable: the state is saved atomically every
``checkpoint_every`` steps and a second run continues from it. The result is written in the
released checkpoint layout, so ``load_checkpoint`` (node, replay, bench, eval) reads it like a
released model.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..config import MODEL_PARAMS_FILE
from ..model.checkpoint import random_model, write_checkpoint
from ..model.config import ModelConfig, preset
from ..model.processing import ImageProcessor, NormStats
from ..model.prompt import build_tiny_tokenizer, encode_prompt
from .collect import PRIVILEGED, DemoError, load_episode, read_index
from .env import PATCH_CLASSES, RECEPTACLES, Task, all_instructions
from .scene import OBJECTS

DATASET_KEY = "sim_tabletop"
STATE_FILE = "train_state.pt"
STATS_FILE = "dataset_statistics.json"   # the run's statistics, written when it starts
AUX_DIMS = 4                              # the named object's xy, the named receptacle's xy
AUX_CENTER, AUX_SCALE = np.array([0.46, 0.0]), 0.2   # metres: the workspace's middle and half-width
PARAMS_FILE = MODEL_PARAMS_FILE         # the node parameters this model needs, next to its weights
AUX_QUESTIONS = ("random", "own")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2400
    batch: int = 16                   # samples per optimizer step, one forward (see Trainer.batch)
    lr: float = 5e-4
    warmup: int = 150
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 100
    aux_weight: float = 1.0           # the privileged-state auxiliary loss (0: the plain OFT loss)
    grounding_weight: float = 0.0     # the per-patch grounding losses (0: none; see Trainer.grounding_loss)
    grounding_layer: int = 0          # the LLM layer whose output marks the named patches (0: the last)
    aux_questions: str = "random"     # "random": a second forward asks about random objects; "own": the
    #                                   demonstration's instruction, from the action forward (see aux_loss)
    keep_every: int = 0               # also write the model every this many steps, to choose one on
    #                                   validation seeds (checkpoints/step-N; 0: only the last)
    ema: float = 0.0                  # decay of an exponential moving average of the weights, which the
    #                                   exported model takes (0: none, the last step's weights)

    def __post_init__(self) -> None:
        if self.aux_questions not in AUX_QUESTIONS:
            raise ValueError(f"aux_questions = {self.aux_questions!r}: one of {', '.join(AUX_QUESTIONS)}")
        if not 0 <= self.grounding_layer <= SIM_LLM_LAYERS:
            raise ValueError(f"grounding_layer = {self.grounding_layer}: 0 (the last) or a layer 1 .. "
                             f"{SIM_LLM_LAYERS}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema = {self.ema}: a decay in [0, 1) (0: no average)")
        if self.keep_every < 0:
            raise ValueError(f"keep_every = {self.keep_every}: a step count, or 0 (only the last model)")


# The shipped model: the released token geometry (2 cameras x 256 patches of 14 px at 224 px,
# chunk 8 x 7) with small widths. Vision towers wider than the tiny preset's (64 x 4 blocks:
# the 32 x 3 towers of the first run could not locate the target); 16 LLM layers (half the
# release's depth, so the paper's layer knobs map to half their index: models/sim-tabletop/
# specprune.yaml) - measured on this 2-core CPU, fwd+bwd 135 ms per sample vs 245 ms at 32 layers.
SIM_VISION = dict(dim=64, depth=4, heads=4, mlp_dim=256)
SIM_LLM_LAYERS = 16


def sim_tokenizer():
    """The tiny tokenizer with the task's instructions in its corpus: every word of an instruction
    is one token and all 32 prompts have the same length, so a training batch mixes all tasks (a
    first model with the plain tiny tokenizer read "cylinder" from 3 pieces, had 8 prompt lengths
    and hence batches of only one or two target shapes, and learned an average approach)."""
    return build_tiny_tokenizer(extra_corpus=all_instructions())


def sim_model_config() -> ModelConfig:
    """The shipped sim model's geometry; no center crop (see above)."""
    tokenizer = sim_tokenizer()
    tiny = preset("tiny")
    return replace(tiny, featurizer=replace(tiny.featurizer, **SIM_VISION),
                   fused_featurizer=replace(tiny.fused_featurizer, **SIM_VISION),
                   llm=replace(tiny.llm, layers=SIM_LLM_LAYERS), pad_token_id=tokenizer.pad_token_id,
                   center_crop=False, name="sim-tabletop", num_images=2)


def write_params(directory: Path, layers: int) -> Path:
    """``specprune.yaml``: a ROS parameter file with the layer knobs of this depth (``--params`` of
    the tools, ``--params-file`` of the node); checked by loading it back."""
    from ..config import Config, layer_knobs

    knobs = layer_knobs(layers)
    lines = [f"# The layer knobs of this {layers}-layer model (the paper's 32-layer choices mapped in proportion).",
             "# Applied wherever the model is loaded from this directory (the node, sim eval, replay), under",
             "# the user's parameter files and -p overrides.",
             "/**:", "  ros__parameters:"]
    lines += [f"    {name}: {json.dumps(value)}" for name, value in knobs.items()]
    path = directory / PARAMS_FILE
    path.write_text("\n".join(lines) + "\n")
    Config.from_yaml(path)
    return path


def statistics(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """dataset_statistics.json for the demonstrations (the released schema; gripper not normalized)."""
    actions = np.concatenate([e["actions"] for e in episodes])
    proprio = np.concatenate([e["proprio"] for e in episodes])

    def describe(x: np.ndarray) -> dict[str, list[float]]:
        return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
                "max": x.max(0).tolist(), "q01": np.quantile(x, 0.01, axis=0).tolist(),
                "q99": np.quantile(x, 0.99, axis=0).tolist()}

    action = describe(actions)
    action["mask"] = [True] * 6 + [False]
    return {DATASET_KEY: {"action": action, "proprio": describe(proprio), "num_transitions": int(len(actions)),
                          "num_trajectories": len(episodes)}}


def normalize_actions(actions: np.ndarray, stats: NormStats, unused: np.ndarray | None = None) -> np.ndarray:
    """BOUNDS_Q99: the inverse of ``NormStats.unnormalize_actions`` where the mask is set, clipped;
    ``unused`` dims (the statistics' min == max) are 0, as the reference's data pipeline maps them
    (without it they would be -1, and a model trained on -1 there reads it as motion)."""
    a = np.asarray(actions, dtype=np.float64)
    scaled = np.clip(2 * (a - stats.action_low) / (stats.action_high - stats.action_low + 1e-8) - 1, -1, 1)
    normalized = np.where(stats.action_mask, scaled, a)
    return normalized if unused is None else np.where(unused, 0.0, normalized)


def action_chunks(actions: np.ndarray, size: int) -> np.ndarray:
    """(T, size, dims): row t holds actions t .. t+size-1, the last one repeated past the end of
    the episode (the training target of step t)."""
    index = np.minimum(np.arange(len(actions))[:, None] + np.arange(size), len(actions) - 1)
    return actions[index]


def demo_entries(data: str | Path | Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(directory, index entry) of every episode of one or more demonstration directories (expert
    demonstrations and DAgger rounds train together); a directory without episodes is an error."""
    directories = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    entries = []
    for directory in directories:
        episodes = read_index(directory)["episodes"]
        if not episodes:
            raise DemoError(f"{directory}: no demonstrations")
        entries += [(directory, entry) for entry in episodes]
    return entries


class Trainer:
    def __init__(self, data: str | Path | Sequence[str | Path], out: str | Path, config: TrainConfig = TrainConfig(),
                 progress: Callable[[int, int, float], None] | None = None, init: str | Path | None = None,
                 device: str | torch.device = "cpu") -> None:
        """``data``: one or more demonstration directories. ``init``: another run's
        ``train_state.pt`` whose model (its moving average, if it kept one) starts this run (a
        warm start: optimizer, step and schedule start fresh); ignored when this run resumes.
        ``device``: where the model trains and the whole dataset lives (its frames as uint8,
        ~0.3 MB per sample), so a batch is one gather on the device, not a host loop (a GPU step
        is then ~ the model's own time)."""
        self.out, self.config, self.progress = Path(out), config, progress
        self.init = Path(init) if init is not None else None
        self.device = torch.device(device)
        self.cfg = sim_model_config()
        self.processor = ImageProcessor(self.cfg.image_size, self.cfg.center_crop, device=self.device)
        frames, self.episodes = _load_demonstrations(demo_entries(data), self.processor)
        self.frames = torch.from_numpy(frames).to(self.device)        # (N, cameras, H, W, 3) uint8
        self.stats_json = statistics(self.episodes)
        self.stats = NormStats.from_statistics(self.stats_json, DATASET_KEY, "demonstrations", self.cfg.action_dim,
                                               self.cfg.proprio_dim)
        action = self.stats_json[DATASET_KEY]["action"]
        self.unused_actions = np.asarray(action["min"]) == np.asarray(action["max"])
        self.tokenizer = sim_tokenizer()
        self.prompts = {e["instruction"]: encode_prompt(self.tokenizer, e["instruction"]) for e in self.episodes}
        # Every sample's inputs and target, normalized once: sample i is step t of episode e.
        self.sample_episode = np.concatenate([np.full(len(e["actions"]), k) for k, e in enumerate(self.episodes)])
        self.proprio = torch.as_tensor(np.concatenate(
            [[self.stats.normalize_proprio(p) for p in e["proprio"]] for e in self.episodes]),
            dtype=torch.float32, device=self.device)
        self.targets = torch.as_tensor(np.concatenate(
            [normalize_actions(action_chunks(e["actions"], self.cfg.chunk_size), self.stats, self.unused_actions)
             for e in self.episodes]), dtype=torch.float32, device=self.device)
        # Samples grouped by prompt length: a batch is drawn from one group, so it runs as one
        # forward without padding (OFT attends bidirectionally; pads would be attended).
        lengths = np.array([len(self.prompts[e["instruction"]].ids) for e in self.episodes])[self.sample_episode]
        self.groups = [np.flatnonzero(lengths == length) for length in np.unique(lengths)]
        self.aux_places = self._aux_places() if config.aux_weight > 0 else None
        self.patch_labels, self.named_classes = (self._grounding_targets() if config.grounding_weight > 0
                                                 else (None, None))
        if self.named_classes is None and self.aux_places is not None:
            self.named_classes = self._named_classes()
        self.aux_prompts = {text: encode_prompt(self.tokenizer, text) for text in all_instructions()}
        self.samples = len(self.sample_episode)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / STATS_FILE).write_text(json.dumps(self.stats_json, indent=2))   # export needs no data
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(config.seed)
        self.model = random_model(self.cfg, seed=config.seed).to(self.device).train()
        # Training only, never exported: where the named object and receptacle are, read from the
        # action tokens' final states (see aux_loss).
        self.aux_head = torch.nn.Linear(self.cfg.llm.hidden, AUX_DIMS).to(self.device)
        # Training only, never exported: what lies under each patch (read from the projector's
        # output), and whether it is the named object / the named receptacle (from the LLM's).
        self.patch_class_head = torch.nn.Linear(self.cfg.llm.hidden, len(PATCH_CLASSES)).to(self.device)
        self.named_head = torch.nn.Linear(self.cfg.llm.hidden, 2).to(self.device)
        parameters = [*self.model.parameters(), *(self.aux_head.parameters() if self.aux_places is not None else ()),
                      *(p for head in (self.patch_class_head, self.named_head) for p in head.parameters()
                        if self.patch_labels is not None)]
        self.optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
        # The moving average of the weights (torch's AveragedModel; buffers too, so the exported
        # copy is whole). Its first update copies the weights - a warm start's, loaded later, included -
        # and each later one moves it 1 - ema of the way to them.
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
                    if config.ema > 0 else None)
        self.step = 0
        self.losses: list[float] = []          # the action L1 (comparable across runs with and without aux)
        self.aux_losses: list[float] = []
        self.grounding_losses: list[float] = []
        self.seconds = 0.0

    def _aux_places(self) -> torch.Tensor:
        """(N, objects + receptacles, 2): every sample's privileged xy, scaled to about -1..1."""
        missing = [e["file"] for e in self.episodes if e["privileged"] is None]
        if missing:
            raise DemoError(f"{missing[0]} (and {len(missing) - 1} more): no privileged state (an older "
                            f"demonstration format); train with --aux-weight 0 or collect them again")
        xy = np.concatenate([e["privileged"] for e in self.episodes]).reshape(len(self.sample_episode), -1, 2)
        return torch.as_tensor((xy - AUX_CENTER) / AUX_SCALE, dtype=torch.float32, device=self.device)

    def _grounding_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample's patch labels (N, cameras * patches) uint8 and, per sample, the patch
        classes of the object and the receptacle its instruction names (N, 2)."""
        missing = [e["file"] for e in self.episodes if e["patch_labels"] is None]
        if missing:
            raise DemoError(f"{missing[0]} (and {len(missing) - 1} more): no patch labels (an older demonstration "
                            f"format); train with --grounding-weight 0 or collect them again")
        labels = np.concatenate([e["patch_labels"].reshape(len(e["actions"]), -1) for e in self.episodes])
        return torch.as_tensor(labels, device=self.device), self._named_classes()

    def _named_classes(self) -> torch.Tensor:
        """(N, 2) uint8: per sample, the patch classes of the object and the receptacle its
        instruction names."""
        named = []
        for e in self.episodes:
            words = e["instruction"].split()            # put the <colour> <shape> on|in the <receptacle>
            named.append((PATCH_CLASSES.index(words[3]), PATCH_CLASSES.index(words[-1])))
        return torch.as_tensor(np.asarray(named)[self.sample_episode], dtype=torch.uint8, device=self.device)

    def grounding_loss(self, index: torch.Tensor, embedded: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Dense per-patch targets the simulator gives for free, as a pretrained vision-language
        backbone brings them to the released model: (1) what lies under each patch (table, which
        object, plate, bowl, gripper), read from the projector's output - patch tokens with local
        semantics; (2) whether a patch holds the object and the receptacle the instruction names,
        read from the LLM's final states at the patch positions - only reading the words against
        the image tells. The action tokens then have marked tokens to attend to. Training only."""
        n_vis = self.cfg.num_images * self.cfg.patches_per_image
        labels = self.patch_labels[index].long()                                  # (B, n_vis)
        patches = embedded[:, 1:1 + n_vis].float()
        semantic = torch.nn.functional.cross_entropy(self.patch_class_head(patches).flatten(0, 1), labels.flatten())
        named = self.named_classes[index].long()                                  # (B, 2)
        wanted = (labels[:, :, None] == named[:, None, :]).float()                # (B, n_vis, 2)
        logits = self.named_head(hidden[:, 1:1 + n_vis].float())
        # the named object covers ~1-3 % of the patches: weighted so missing it costs as much as the rest
        positive = wanted.mean((0, 1)).clamp_min(1e-3)
        weight = torch.where(wanted > 0, 0.5 / positive, 0.5 / (1 - positive))
        grounded = torch.nn.functional.binary_cross_entropy_with_logits(logits, wanted, weight=weight)
        return semantic + grounded

    def aux_queries(self, step: int, samples: np.ndarray, index: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Step ``step``'s questions (seeded by the step: the same after a resume): per sample an
        instruction naming a random object of its scene and a random receptacle, and the answer,
        (B, 4) = their scaled xy."""
        rng = np.random.default_rng([self.config.seed, step, 1])
        shape = rng.integers(len(OBJECTS), size=len(samples))
        place = rng.integers(len(RECEPTACLES), size=len(samples))
        names = list(OBJECTS)
        texts = [Task(names[k], self.episodes[e]["colors"][k], RECEPTACLES[r], {}, {}, {}).instruction
                 for e, k, r in zip(self.sample_episode[samples], shape, place)]
        rows = torch.arange(len(samples), device=self.device)
        places = self.aux_places[index]
        wanted = torch.cat([places[rows, torch.as_tensor(shape, device=self.device)],
                            places[rows, len(OBJECTS) + torch.as_tensor(place, device=self.device)]], dim=1)
        return texts, wanted

    def own_aux_loss(self, index: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``aux_loss`` asking each sample about its own instruction's object and receptacle, read
        from the action forward (no second forward: the grounding loss already makes the words
        matter, and this asks the action tokens to carry where the marked patches are)."""
        located = self.aux_head(self.model.action_head_input(hidden).mean(1).float())
        return torch.nn.functional.l1_loss(located, self.own_aux_targets(index))

    def own_aux_targets(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 4): the scaled xy of the object and of the receptacle each sample's instruction names."""
        places = self.aux_places[index]
        rows = torch.arange(len(index), device=self.device)
        named = self.named_classes[index].long()
        shape = named[:, 0] - PATCH_CLASSES.index(next(iter(OBJECTS)))          # OBJECTS order
        place = named[:, 1] - PATCH_CLASSES.index(RECEPTACLES[0])
        return torch.cat([places[rows, shape], places[rows, len(OBJECTS) + place]], dim=1)

    def aux_loss(self, step: int, samples: np.ndarray, index: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Where is the object an instruction names? Why: a model trained from scratch on the action
        loss alone (shuffled layout) went where the instruction's words pointed on average, the
        same chunk whatever layout its images showed; with this loss on the demonstrations' own
        instructions it learned to place the receptacle to the millimetre but not the named object
        (the loss had easier parts: the receptacle, the held object under the gripper). The
        released model's pretrained backbone brings that grounding; this small one is taught it
        here: each sample is asked again, in a second forward, with an instruction naming a random
        object of its scene and a random receptacle, and regresses their simulator xy from the
        action tokens' final states - the same image with different words wants different answers,
        so only reading the words against the image lowers it. Training only: the head is not
        exported and deployment is unchanged."""
        texts, wanted = self.aux_queries(step, samples, index)
        prompts = [self.aux_prompts[text] for text in texts]
        hidden, _ = self.model.forward_llm(self.model.embed(pixels, self.proprio[index], prompts))
        located = self.aux_head(self.model.action_head_input(hidden).mean(1).float())
        return torch.nn.functional.l1_loss(located, wanted)

    # ---- state (resumable) ----------------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue this run from its saved state; else, with ``init``, start from that run's weights."""
        path = self.out / STATE_FILE
        if not path.exists():
            if self.init is not None:
                self.model.load_state_dict(_exported_weights(_load_state(self.init, "start from")))
            return False
        state = _load_state(path, "resume from")
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None and "exported" in state:
                self.ema.module.load_state_dict(state["exported"])
                self.ema.n_averaged.copy_(state["ema_updates"])
            for name in ("aux_head", "patch_class_head", "named_head"):
                if name in state:
                    getattr(self, name).load_state_dict(state[name])
            self.optimizer.load_state_dict(state["optimizer"])
        except Exception as exc:   # torch raises many types for broken files
            raise DemoError(f"{path}: cannot resume from this training state ({type(exc).__name__}: {exc}); "
                            f"move it away to start over") from None
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]
        self.aux_losses = [float(v) for v in state.get("aux_losses", [])]
        self.grounding_losses = [float(v) for v in state.get("grounding_losses", [])]
        self.seconds = float(state["seconds"])
        return True

    def exported_model(self) -> torch.nn.Module:
        """What the checkpoint holds: the moving average when the run keeps one, else the weights."""
        return self.model if self.ema is None else self.ema.module

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                    "losses": torch.tensor(self.losses, dtype=torch.float64), "seconds": self.seconds,
                    "aux_head": self.aux_head.state_dict(), "patch_class_head": self.patch_class_head.state_dict(),
                    "named_head": self.named_head.state_dict(),
                    "aux_losses": torch.tensor(self.aux_losses, dtype=torch.float64),
                    "grounding_losses": torch.tensor(self.grounding_losses, dtype=torch.float64),
                    **({} if self.ema is None else {"exported": self.ema.module.state_dict(),
                                                    "ema_updates": self.ema.n_averaged})}, tmp)
        tmp.replace(self.out / STATE_FILE)               # atomic: an interrupt never leaves half a file

    # ---- training -------------------------------------------------------------------------------------
    def batch(self, step: int) -> np.ndarray:
        """The sample indices of optimizer step ``step``: the same after a resume (seeded by the
        step). A prompt-length group is drawn in proportion to its size, then samples within it."""
        c = self.config
        rng = np.random.default_rng(c.seed * 1_000_003 + step)
        sizes = np.array([len(g) for g in self.groups], dtype=np.float64)
        group = self.groups[int(rng.choice(len(self.groups), p=sizes / sizes.sum()))]
        return group[rng.choice(len(group), size=c.batch, replace=len(group) < c.batch)]

    def batch_loss(self, samples: np.ndarray, step: int = 0) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                       torch.Tensor | None]:
        """The action L1 of the samples, the auxiliary L1 and the grounding loss (None without them)."""
        index = torch.as_tensor(samples, device=self.device)
        frames = self.frames[index]                                   # (B, cameras, H, W, 3) uint8
        pixels = self.processor.pixels(frames.flatten(0, 1).permute(0, 3, 1, 2)).unflatten(0, frames.shape[:2])
        prompts = [self.prompts[self.episodes[e]["instruction"]] for e in self.sample_episode[samples]]
        embedded = self.model.embed(pixels, self.proprio[index], prompts)
        hidden, marking = self.forward_llm(embedded)
        loss = torch.nn.functional.l1_loss(self.model.actions(hidden), self.targets[index])
        aux = None
        if self.aux_places is not None:
            aux = (self.own_aux_loss(index, hidden) if self.config.aux_questions == "own"
                   else self.aux_loss(step, samples, index, pixels))
        grounding = None if self.patch_labels is None else self.grounding_loss(index, embedded, marking)
        return loss, aux, grounding

    def forward_llm(self, embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's final-normed hidden states and the states the named-patch head reads: the
        same, or layer ``grounding_layer``'s output - marks made there leave the layers above it to
        carry them into the action tokens (marks made only at the top reach the head too late)."""
        layer = self.config.grounding_layer
        if not layer or self.patch_labels is None:
            hidden, _ = self.model.forward_llm(embedded)
            return hidden, hidden
        llm, x = self.model.llm, embedded
        cos, sin = llm.rotary(x.shape[1], x.dtype)
        middle = x
        for number, block in enumerate(llm.layers, start=1):
            x, _ = block(x, cos, sin, None)
            if number == layer:
                middle = x
        return llm.norm(x), middle

    def learning_rate(self, step: int) -> float:
        c = self.config
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        progress = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def train(self, until: int | None = None) -> dict[str, Any]:
        """Train to ``config.steps`` (or stop at step ``until``, as an interrupted run would)."""
        c = self.config
        while self.step < min(c.steps, until or c.steps):
            start = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss, aux, grounding = self.batch_loss(self.batch(self.step), self.step)
            objective = loss
            if aux is not None:
                objective = objective + c.aux_weight * aux
                self.aux_losses.append(float(aux.detach()))
            if grounding is not None:
                objective = objective + c.grounding_weight * grounding
                self.grounding_losses.append(float(grounding.detach()))
            objective.backward()
            total = float(loss.detach())
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            self.losses.append(total)
            self.seconds += time.perf_counter() - start
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self.save()
            if c.keep_every and self.step % c.keep_every == 0 and self.step < c.steps:
                self.write_model(self.out / "checkpoints" / f"step-{self.step}")
            if self.progress:
                self.progress(self.step, c.steps, total)
        return self.finish() if self.step >= c.steps else {"steps": self.step, "interrupted": True}

    def write_model(self, directory: str | Path) -> Path:
        """The model as it is now, in the released checkpoint layout (e.g. from a resumed state)."""
        model = copy.deepcopy(self.exported_model()).cpu().eval()
        return _write_model(model, self.stats_json, self.tokenizer, directory, self.step, self.config.seed)

    def finish(self) -> dict[str, Any]:
        """The released checkpoint layout, the loss curve and a summary."""
        model_dir = self.write_model(self.out / "model")
        summary = {"steps": self.step, "batch": self.config.batch, "episodes": len(self.episodes),
                   "init": str(self.init) if self.init is not None else None,
                   "samples": self.samples, "seconds": self.seconds, "device": _device_name(self.device),
                   "loss_first": float(np.mean(self.losses[:20])) if self.losses else None,
                   "loss_last": float(np.mean(self.losses[-20:])) if self.losses else None,
                   "aux_weight": self.config.aux_weight,
                   "aux_loss_last": float(np.mean(self.aux_losses[-20:])) if self.aux_losses else None,
                   "grounding_weight": self.config.grounding_weight,
                   "grounding_loss_first": _mean_or_none(self.grounding_losses[:20]),
                   "grounding_loss_last": _mean_or_none(self.grounding_losses[-20:]),
                   "ema": self.config.ema,
                   "model": str(model_dir)}
        (self.out / "train.json").write_text(json.dumps(summary, indent=2))
        _loss_plot(self.losses, self.out / "loss.png")
        return summary


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _load_state(path: Path, purpose: str) -> dict[str, Any]:
    """A ``train_state.pt`` (tensors only: ``weights_only=True``), or one clear error."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DemoError(f"{path}: no training state to {purpose}") from None
    except Exception as exc:   # torch raises many types for broken files
        raise DemoError(f"{path}: cannot {purpose} this training state ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DemoError(f"{path}: cannot {purpose} this training state (it holds no model weights)")
    return state


def _exported_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a run's model is made of: its moving average when it kept one (``--ema``), else
    the last step's - what ``export`` writes and what a warm start from the run begins with."""
    return state.get("exported", state["model"])


def _write_model(model, stats_json: dict[str, Any], tokenizer, directory: str | Path, step: int, seed: int) -> Path:
    path = write_checkpoint(model, stats_json, tokenizer, directory, step=step, seed=seed)
    write_params(path, model.config.llm.layers)
    return path


def export(run: str | Path, directory: str | Path, data: str | Path | Sequence[str | Path] | None = None) -> Path:
    """The model of a (possibly still running) training run as a checkpoint. Its statistics are
    the run's own ``dataset_statistics.json``; ``data`` recomputes them from the demonstrations'
    actions and proprio states instead (runs made before the run kept them)."""
    state = _load_state(Path(run) / STATE_FILE, "export")
    if data is None:
        path = Path(run) / STATS_FILE
        try:
            stats_json = json.loads(path.read_text())
        except FileNotFoundError:
            raise DemoError(f"{path}: missing - name the run's demonstrations (--data)") from None
        except ValueError as exc:
            raise DemoError(f"{path}: corrupt statistics ({exc})") from None
    else:
        episodes = []
        for data_dir, entry in demo_entries(data):
            with np.load(data_dir / entry["file"], allow_pickle=False) as arrays:
                episodes.append({"actions": arrays["actions"], "proprio": arrays["proprio"]})
        stats_json = statistics(episodes)
    model = random_model(sim_model_config())
    model.load_state_dict(_exported_weights(state))
    return _write_model(model.eval(), stats_json, sim_tokenizer(), directory, int(state["step"]), 0)


def _load_demonstrations(entries: list[tuple[Path, dict[str, Any]]], processor: ImageProcessor,
                         threads: int = 8) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """All frames as one (N, cameras, H, W, 3) uint8 array, as the model sees them at deployment
    (``ImageProcessor.frame``), and per episode its actions, proprio states and instruction.
    Episodes are decompressed in threads (zlib releases the GIL) straight into the array."""
    from concurrent.futures import ThreadPoolExecutor

    steps = [int(entry["steps"]) for _, entry in entries]
    offsets = np.concatenate([[0], np.cumsum(steps)])
    size = processor.size
    frames = np.empty((int(offsets[-1]), 2, size, size, 3), np.uint8)

    def load(k: int) -> dict[str, Any]:
        directory, entry = entries[k]
        episode = load_episode(directory, entry)
        if len(episode["actions"]) != steps[k]:
            raise DemoError(f"{Path(directory) / entry['file']}: {len(episode['actions'])} steps, index.json "
                            f"says {steps[k]}")
        for camera, key in enumerate(("primary", "wrist")):
            for t, image in enumerate(episode[key]):
                frames[offsets[k] + t, camera] = processor.frame(image, camera)
        return {"file": str(Path(directory) / entry["file"]),
                **{key: episode[key] for key in ("actions", "proprio", "instruction", *PRIVILEGED)}}

    with ThreadPoolExecutor(max_workers=threads) as pool:
        episodes = list(pool.map(load, range(len(entries))))
    return frames, episodes


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _loss_plot(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.6, alpha=0.5, label="batch")
    if len(losses) >= 20:
        smooth = np.convolve(losses, np.ones(20) / 20, mode="valid")
        ax.plot(np.arange(20, len(losses) + 1), smooth, lw=1.5, label="mean of 20")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("L1 loss (normalized actions)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
