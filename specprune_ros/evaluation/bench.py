"""`specprune bench` and `specprune flops`: speed and FLOPs of pruned vs unpruned.

bench: one run, the same synthetic observations for both, alternating pruned and unpruned
steps (so drift hits both), warm-up excluded, median and p95. Random weights are fine for
latency. flops: the token schedule the pruned policy produces on the synthetic episode (run
with a small model of the same token geometry: 2 x 256 image tokens, the real prompt, 32
layers), costed at the chosen model geometry.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..common.device import cpu_name, host_load
from ..config import Config
from ..model.checkpoint import (
    LoadedPolicyModel,
    random_model,
    resolve_device,
    resolve_dtype,
    tiny_config,
    tiny_statistics,
)
from ..model.config import preset
from ..model.flops import llm_flops
from ..model.processing import ImageProcessor, NormStats
from ..model.prompt import build_tiny_tokenizer
from ..policy import Observation, SpecPrunePolicy, StepStats, load_model
from ..synthetic import INSTRUCTION, episode
from .threads import fit_torch_threads


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": percentile(values, 50), "p95": percentile(values, 95),
            "mean": float(np.mean(values)) if values else float("nan")}


def random_policy_model(model_config: str, device: str, dtype: str) -> LoadedPolicyModel:
    """A random-weight model of a preset geometry with the local tokenizer and plain statistics."""
    dev = resolve_device(device)
    cfg = tiny_config() if model_config == "tiny" else replace(preset(model_config),
                                                              pad_token_id=build_tiny_tokenizer().pad_token_id)
    with torch.device(dev):
        model = random_model(cfg, dev, resolve_dtype(dtype, dev))
    stats = NormStats.from_statistics(tiny_statistics(cfg), "", model_config, cfg.action_dim, cfg.proprio_dim)
    return LoadedPolicyModel(model, build_tiny_tokenizer(), stats, f"random:{model_config}")


def observations(steps: int, num_images: int, seed: int = 0) -> list[Observation]:
    obs = []
    for i, s in enumerate(episode(steps, seed)):
        images = [s.primary, s.wrist][:num_images]
        obs.append(Observation(images, s.proprio, INSTRUCTION, stamp=i * 0.1, motion=s.action[:6]))
    return obs


def preprocess_timing(processor: ImageProcessor, repeats: int = 50, warmup: int = 5) -> dict[str, Any]:
    """Host preprocessing of two 480x640 camera frames (the synthetic scene, upscaled) to model input."""
    import cv2

    step = episode(2)[1]
    images = [cv2.resize(img, (640, 480), interpolation=cv2.INTER_LINEAR) for img in (step.primary, step.wrist)]
    times = []
    for i in range(repeats + warmup):
        start = time.perf_counter()
        processor.frames(images)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return {"frames": "2 x 480x640 rgb8", "resize": processor.resize.__name__,
            "center_crop": processor.center_crop, **summarize(times)}


def run_bench(config: Config, model_config: str | None, model_path: str | None, device: str, steps: int,
              warmup: int) -> dict[str, Any]:
    dtype = config.node.dtype
    fit_torch_threads()
    if model_path:
        loaded = load_model(config.replace(model_path=model_path, device=device))
        label = model_path
    else:
        loaded = random_policy_model(model_config or "scaled", device, dtype)
        label = model_config or "scaled"
    return {**compare_policies(loaded, config, steps, warmup), "model_config": label,
            "preprocess_ms": preprocess_timing(SpecPrunePolicy(loaded, config).processor)}


def compare_policies(loaded: LoadedPolicyModel, config: Config, steps: int, warmup: int) -> dict[str, Any]:
    """Pruned and unpruned policies on one model, alternating on the same synthetic observations
    (so drift hits both), warm-up excluded: latency, speed-up, overhead, tokens, FLOPs."""
    pruned = SpecPrunePolicy(loaded, config.replace(**{"pruning.enabled": True}))
    unpruned = SpecPrunePolicy(loaded, config.replace(**{"pruning.enabled": False}))
    obs = observations(steps + warmup, config.node.num_images)
    results: dict[str, list[StepStats]] = {"pruned": [], "unpruned": []}
    for i, o in enumerate(obs):
        for name, policy in (("unpruned", unpruned), ("pruned", pruned)) if i % 2 else (("pruned", pruned),
                                                                                       ("unpruned", unpruned)):
            stats = policy.step(o).stats
            if i >= warmup:
                results[name].append(stats)
    dev = next(loaded.model.parameters()).device
    p, u = results["pruned"], results["unpruned"]
    lat_p, lat_u = [s.latency_ms for s in p], [s.latency_ms for s in u]
    over = [s.overhead_ms for s in p]
    return {
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "host": host_load(),
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "steps": len(p),
        "warmup": warmup,
        "latency_ms": {"pruned": summarize(lat_p), "unpruned": summarize(lat_u)},
        "speedup": percentile(lat_u, 50) / percentile(lat_p, 50),
        "flops_ratio": float(np.mean([s.flops_ratio for s in p])),
        "overhead_ms": summarize(over),
        "overhead_fraction": percentile(over, 50) / percentile(lat_p, 50),
        "vision_tokens": {"total": p[0].vision_tokens_total if p else 0,
                          "kept_mean": float(np.mean([s.vision_tokens_kept for s in p]))},
        "fine_mode_fraction": float(np.mean([s.fine_mode for s in p])),
        "tokens_per_layer_mean": [float(v) for v in np.mean([s.tokens_per_layer for s in p], axis=0)],
    }


def run_flops(config: Config, model_config: str, steps: int) -> dict[str, Any]:
    """FLOPs of the schedule produced on the synthetic episode, at ``model_config``'s geometry."""
    geometry = preset(model_config)
    loaded = random_policy_model("tiny", "cpu", "float32")
    policy = SpecPrunePolicy(loaded, config.replace(**{"pruning.enabled": True}))
    stats = [policy.step(o).stats for o in observations(steps, config.node.num_images)]
    tiny_layers = loaded.model.config.llm.layers
    if tiny_layers != geometry.llm.layers:
        raise ValueError(f"schedule model has {tiny_layers} layers, {model_config} has {geometry.llm.layers}")
    full = llm_flops(geometry.llm, [stats[0].tokens_per_layer[0]] * tiny_layers)
    pruned = [llm_flops(geometry.llm, s.tokens_per_layer) for s in stats]
    ratios = [f / full for f in pruned]
    return {
        "model_config": model_config,
        "schedule_model": "tiny-random (same token geometry: %d image tokens, %d layers)"
                          % (stats[0].vision_tokens_total, tiny_layers),
        "steps": len(stats),
        "sequence_length": stats[0].tokens_per_layer[0],
        "flops_ratio": float(np.mean(ratios)),
        "flops_ratio_median": percentile(ratios, 50),
        "flops_ratio_pruned_steps": float(np.mean([r for r, s in zip(ratios, stats) if not s.fallback_reason]
                                                  or [float("nan")])),
        "tflops_unpruned": full / 1e12,
        "tflops_pruned_mean": float(np.mean(pruned)) / 1e12,
        "vision_tokens": {"total": stats[0].vision_tokens_total,
                          "kept_mean": float(np.mean([s.vision_tokens_kept for s in stats]))},
        "fine_mode_fraction": float(np.mean([s.fine_mode for s in stats])),
        "unpruned_steps": sum(1 for s in stats if s.fallback_reason),
    }
