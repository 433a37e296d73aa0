"""The offline proxy: how far each pruning rule moves the action chunks from the unpruned ones.

Closed-loop success is what matters, and it takes minutes per rule and budget. The proxy takes
seconds: on recorded observation sequences (closed-loop sim episodes of the unpruned policy, or
a rosbag of the node's topics), every rule runs over each episode in order, with its state
across steps (prior, frame history, controller) as on the robot, and its chunk is compared with
the unpruned chunk for the same observation. The unpruned chunks are computed once.

    episodes = observations_from_bag(bag, config, uses_proprio)      # or sim.rollout.recorded_observations
    points = action_gap(loaded, config, episodes, parse_methods("specprune,random", [0.8, 2]))

Per rule: ``l1`` (mean absolute difference of the normalized chunks, all actions and dims),
``l1_first`` (the first action only: what a 10 Hz node executes), LLM FLOPs ratio, kept tokens,
where they are (``kept_pattern``) and, given the occlusion oracle, how much of what the action
depends on they cover (``oracle_ratio``). ``rank_agreement`` says how well the proxy orders
rules the way closed-loop success does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.methods import Method
from ..config import Config, ConfigError
from ..model.checkpoint import LoadedPolicyModel
from ..observation import Observation
from ..policy import SpecPrunePolicy

Episode = list[Observation]


def observations_from_bag(bag: str | Path, config: Config, uses_proprio: bool) -> list[Episode]:
    """The observations the node would have assembled at its control ticks over a bag (one
    episode: the recording); one clear error for a bag without the node's cameras."""
    from ..sensing.assembly import ObservationAssembler
    from .replay import RecordedCommands, TimeBase, bag_ticks, open_episode

    reader, topics = open_episode(Path(bag), config)
    observations: Episode = []
    with reader:
        assembler = ObservationAssembler.for_node(config, uses_proprio and topics.joints is not None)
        recorded = RecordedCommands(int(round(1e9 / config.node.control_rate_hz)))
        for now in bag_ticks(reader, topics, config, assembler, TimeBase(), recorded=recorded):
            obs = assembler.assemble(now).observation
            if obs is not None:
                obs.history = [type(h)(h.stamp, list(h.load())) for h in obs.history]   # decoded once, reused
                observations.append(obs)
    if not observations:
        from ..common.bags import BagError
        raise BagError(f"{bag}: no complete observation at the node's control ticks (cameras and joint states "
                       f"within match_tolerance_s of each other?)")
    return [observations]


def _run(policy: SpecPrunePolicy, episodes: list[Episode]) -> list[list[Any]]:
    outputs = []
    for episode in episodes:
        policy.reset()
        outputs.append([policy.step(obs) for obs in episode])
    return outputs


def unpruned_chunks(loaded: LoadedPolicyModel, config: Config, episodes: list[Episode]) -> list[list[np.ndarray]]:
    """The reference: the unpruned policy's normalized chunk for every observation."""
    policy = SpecPrunePolicy(loaded, config.replace(**{"pruning.enabled": False}))
    return [[out.actions_normalized for out in run] for run in _run(policy, episodes)]


def occlusion_importance(loaded: LoadedPolicyModel, config: Config, episodes: list[Episode], blocks: int = 4,
                         progress: Callable[[int, int], None] | None = None) -> list[list[np.ndarray]]:
    """The oracle: how much the unpruned chunk moves when one image region is blanked.

    Each camera's image is split into ``blocks`` x ``blocks`` regions; each region in turn is
    filled with the image's mean colour and the unpruned chunk's mean absolute change is that
    region's importance. Per observation a (cameras, blocks * blocks) array; 1 + cameras *
    blocks^2 forwards per observation (seconds to minutes: run it on a few episodes). Regions are
    cut from the camera image as given; for a model that center-crops, they match its patch
    blocks only roughly.
    """
    grid = loaded.model.config.featurizer.grid
    if blocks < 1 or grid % blocks:
        raise ConfigError(f"--oracle-blocks {blocks}: must divide the model's {grid} x {grid} patch grid "
                          f"(e.g. {', '.join(str(b) for b in range(2, grid + 1) if grid % b == 0)})")
    policy = SpecPrunePolicy(loaded, config.replace(**{"pruning.enabled": False}))
    total, done, out = sum(len(e) for e in episodes), 0, []
    for episode in episodes:
        maps = []
        for obs in episode:
            policy.reset()
            reference = policy.step(obs).actions_normalized
            importance = np.zeros((len(obs.images), blocks * blocks))
            for camera, image in enumerate(obs.images):
                rows = np.linspace(0, image.shape[0], blocks + 1).astype(int)
                cols = np.linspace(0, image.shape[1], blocks + 1).astype(int)
                fill = image.reshape(-1, image.shape[-1]).mean(axis=0).astype(image.dtype)
                for b in range(blocks * blocks):
                    r, c = divmod(b, blocks)
                    blanked = image.copy()
                    blanked[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = fill
                    images = [blanked if i == camera else im for i, im in enumerate(obs.images)]
                    policy.reset()
                    moved = policy.step(type(obs)(images, obs.proprio, obs.instruction, obs.stamp)).actions_normalized
                    importance[camera, b] = np.abs(moved - reference).mean()
            maps.append(importance)
            done += 1
            if progress:
                progress(done, total)
        out.append(maps)
    return out


def oracle_ratio(masks: list[list[np.ndarray | None]], oracle: list[list[np.ndarray]]) -> float:
    """How much more of the oracle's importance a rule's kept tokens cover than their density
    alone would: sum_b importance_b * kept share_b / (sum_b importance_b * mean kept share),
    over the pruned steps (1: no better than random, >1: it keeps what the action depends on)."""
    covered = expected = 0.0
    for run, maps in zip(masks, oracle):
        for mask, importance in zip(run, maps):
            if mask is None:
                continue
            cams, patches = mask.shape
            grid, blocks = int(round(patches ** 0.5)), int(round(importance.shape[1] ** 0.5))
            share = mask.reshape(cams, blocks, grid // blocks, blocks, grid // blocks).mean(axis=(2, 4))
            covered += float((importance * share.reshape(cams, -1)).sum())
            expected += float(importance.sum() * mask.mean())
    return covered / expected if expected > 0 else float("nan")


def action_gap(loaded: LoadedPolicyModel, config: Config, episodes: list[Episode], methods: list[Method],
               progress: Callable[[int, int], None] | None = None,
               reference: list[list[np.ndarray]] | None = None,
               oracle: list[list[np.ndarray]] | None = None) -> dict[str, dict[str, Any]]:
    """Every method over every episode against the unpruned chunks (``reference``, computed
    here if not given); ``fastv@A`` keeps as many tokens as ``specprune@A`` kept here (list
    order: parse_methods puts it after)."""
    steps = sum(len(e) for e in episodes)
    if reference is None:
        reference = unpruned_chunks(loaded, config, episodes)
    points: dict[str, dict[str, Any]] = {}
    for i, method in enumerate(methods):
        fastv_tokens = None
        if method.matched_to:
            fastv_tokens = max(1, round(points[method.matched_to]["kept_tokens_mean"]))
        runs = _run(SpecPrunePolicy(loaded, method.config(config, fastv_tokens)), episodes)
        gaps = np.array([np.abs(out.actions_normalized - ref).mean()
                         for run, refs in zip(runs, reference) for out, ref in zip(run, refs)])
        first = np.array([np.abs(out.actions_normalized[0] - ref[0]).mean()
                          for run, refs in zip(runs, reference) for out, ref in zip(run, refs)])
        stats = [out.stats for run in runs for out in run]
        points[method.label] = {
            "method": method.name, "alpha": method.alpha, "knobs": method.overrides, "fastv_tokens": fastv_tokens,
            "steps": steps, "l1": float(gaps.mean()), "l1_first": float(first.mean()),
            "flops_ratio_mean": float(np.mean([s.flops_ratio for s in stats])),
            "kept_tokens_mean": float(np.mean([s.vision_tokens_kept for s in stats])),
            "kept_pattern": kept_pattern([[out.kept_mask for out in run] for run in runs]),
        }
        if oracle is not None:
            points[method.label]["oracle_ratio"] = oracle_ratio([[o.kept_mask for o in run] for run in runs], oracle)
        if progress:
            progress(i + 1, len(methods))
    return points


def kept_pattern(masks: list[list[np.ndarray | None]]) -> dict[str, Any]:
    """Where a rule's kept tokens are (static stage; unpruned steps left out, scene-cut steps
    counted with every token kept), for the diagnosis:

    * ``camera_share``: share of the kept tokens in each camera;
    * ``row_share``: kept share of each patch row (row-major grid, cameras pooled): position bias;
    * ``run_ratio``: how much likelier a kept token's right neighbour is kept than the density
      says (1: no horizontal runs; 2: twice as likely);
    * ``turnover``: 1 - Jaccard of the kept sets of consecutive pruned steps (0: a frozen set).
    """
    pruned = [m for run in masks for m in run if m is not None]
    if not pruned:
        return {}
    stack = np.stack(pruned)                                   # (steps, cameras, patches)
    steps, cams, patches = stack.shape
    grid = int(round(patches ** 0.5))
    kept = stack.sum()
    rows = stack.reshape(steps, cams, grid, grid)
    density = stack.mean()
    pairs = rows[..., :-1] & rows[..., 1:]
    run_ratio = pairs.sum() / max(rows[..., :-1].sum(), 1) / max(density, 1e-9)
    turnover = []
    for run in masks:
        previous = None
        for m in run:
            if m is not None and previous is not None:
                turnover.append(1.0 - (m & previous).sum() / max((m | previous).sum(), 1))
            previous = m
    return {"camera_share": [float(c) for c in stack.sum(axis=(0, 2)) / max(kept, 1)],
            "row_share": [float(r) for r in rows.mean(axis=(0, 1, 3))],
            "run_ratio": float(run_ratio), "turnover": float(np.mean(turnover)) if turnover else float("nan")}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than 3 pairs."""
    if len(x) < 3:
        return float("nan")

    def ranks(values: list[float]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        order = v.argsort(kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):                  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_agreement(points: dict[str, dict[str, Any]], closed_loop: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How well ``-l1`` ranks the rules and budgets measured in closed loop (``sim eval``'s
    ``methods``): Spearman's rho over the labels both have (``none`` left out)."""
    labels = [label for label in points if label in closed_loop and label != "none"]
    success = [closed_loop[label]["success_rate"] for label in labels]
    return {"labels": labels,
            "rho_l1": spearman([-points[label]["l1"] for label in labels], success),
            "rho_l1_first": spearman([-points[label]["l1_first"] for label in labels], success),
            "rho_flops": spearman([points[label]["flops_ratio_mean"] for label in labels], success)}
