"""One prepared GPU run (``bench/gpu/run.sh``): the 7B step, its host syncs, what scoring costs,
and the levers toward the hardware's limit, each measured on and off in the same process.

    bench/gpu/run.sh                       # on an H100 / H200: openvla-7b geometry, random bf16 weights
    bench/gpu/run.sh --dry-run             # the same sections on the CPU at the tiny geometry (CI)

Sections, in order, each within what is left of ``--budget-s`` (a section that does not fit is
recorded as skipped, one that fails as its error - the JSON is written either way):

* ``step``        pruned and unpruned policy steps (alternating, warm-up excluded): median / p95,
                  the vision towers and the unpruned LLM forward timed alone, LLM FLOPs ratio;
* ``syncs``       host syncs per step with CUDA's sync debug mode (each synchronizing call is
                  reported with its source line) and device-to-host copies in the profiler;
* ``scoring``     the m x n text-to-image scoring against the authors' way (full n x n attention
                  maps of the same layers, then the text rows), on the step's sequence;
* ``sdpa``        the unpruned LLM forward under each SDPA backend;
* ``compile``     ``torch.compile`` of the unpruned LLM forward (inductor on CUDA; the eager
                  backend on the CPU, so the dry run exercises the same code);
* ``cuda_graphs`` the unpruned LLM forward captured once and replayed (CUDA only).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..common.device import cpu_name
from ..common.jsonout import finite
from ..config import Config
from ..model.prompt import encode_prompt
from ..policy import SpecPrunePolicy
from ..pruning.layout import TokenLayout
from ..pruning.scores import score_layer
from .bench import compare_policies, observations, random_policy_model, summarize

SECTIONS = ("step", "syncs", "scoring", "sdpa", "compile", "cuda_graphs")
# Rough wall-clock cost of each section at the 7B geometry on an H100 (s): a section starts only
# if this much of the budget is left.
COST_S = {"step": 60, "syncs": 20, "scoring": 15, "sdpa": 30, "compile": 150, "cuda_graphs": 30}


WARMUP = {"dry": 1, "gpu": 3}


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int | None = None) -> dict[str, float]:
    """Median / p95 / mean milliseconds of ``fn`` (device-synchronized around each call)."""
    for _ in range(WARMUP["gpu" if device.type == "cuda" else "dry"] if warmup is None else warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Check:
    """The loaded random-weight model, its policies and one embedded observation, shared by the sections."""

    def __init__(self, model_config: str, device: str, steps: int) -> None:
        self.loaded = random_policy_model(model_config, device, "bfloat16")
        self.model = self.loaded.model
        self.device = next(self.model.parameters()).device
        self.config = Config().replace(device=device)
        self.pruned = SpecPrunePolicy(self.loaded, self.config.replace(**{"pruning.enabled": True}))
        self.unpruned = SpecPrunePolicy(self.loaded, self.config.replace(**{"pruning.enabled": False}))
        self.steps = steps
        self.warmup = 4 if self.device.type == "cuda" else 1
        self.obs = observations(steps + self.warmup, self.config.node.num_images)
        first = self.obs[0]
        prompt = encode_prompt(self.loaded.tokenizer, first.instruction)
        frames = self.unpruned.processor.frames(first.images)
        self.pixels = self.unpruned.processor.pixels(frames)
        self.proprio = torch.as_tensor(self.loaded.stats.normalize_proprio(first.proprio), dtype=torch.float32,
                                       device=self.device)
        self.prompt = prompt
        self.layout: TokenLayout = self.model.layout(prompt, len(first.images))
        with torch.inference_mode():
            self.embedded = self.model.embed(self.pixels, self.proprio, prompt)

    # ---- sections ---------------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        bench = compare_policies(self.loaded, self.config, self.steps, self.warmup)
        with torch.inference_mode():
            dtype = self.model.llm.embed_tokens.weight.dtype
            flat = self.pixels.reshape(-1, *self.pixels.shape[-3:]).to(dtype)
            towers = timed(lambda: self.model.projector(self.model.vision_backbone(flat)), self.device, self.steps)
            llm = timed(lambda: self.model.forward_llm(self.embedded), self.device, self.steps)
        return {"pruned_ms": bench["latency_ms"]["pruned"], "unpruned_ms": bench["latency_ms"]["unpruned"],
                "speedup": bench["speedup"], "overhead_ms": bench["overhead_ms"],
                "overhead_fraction": bench["overhead_fraction"], "vision_towers_ms": towers,
                "llm_unpruned_ms": llm, "llm_flops_ratio": bench["flops_ratio"],
                "vision_tokens": bench["vision_tokens"], "sequence_length": self.layout.seq_len}

    def syncs(self) -> dict[str, Any]:
        """Synchronizing calls per step (CUDA's sync debug mode names each one's source line) and
        device-to-host copies per step in the profiler; on the CPU there is nothing to count."""
        if self.device.type != "cuda":
            return {"skipped": "no CUDA device: host syncs exist only on a GPU"}
        out: dict[str, Any] = {}
        for name, policy in (("pruned", self.pruned), ("unpruned", self.unpruned)):
            for obs in self.obs[:3]:
                policy.step(obs)                            # warm: prompt caches, buffers
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for obs in self.obs[3:3 + self.steps]:
                        policy.step(obs)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            sites = sorted({f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)})
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                for obs in self.obs[3:3 + self.steps]:
                    policy.step(obs)
            copies = sum(e.count for e in prof.key_averages() if "DtoH" in e.key or "Memcpy DtoH" in e.key)
            out[name] = {"synchronizing_calls_per_step": sum("synchroniz" in str(w.message) for w in caught)
                         / self.steps, "sites": sites, "device_to_host_copies_per_step": copies / self.steps}
        return out

    def scoring(self) -> dict[str, Any]:
        """One scored layer's cost: the m instruction queries against the n keys (an m x n softmax
        per head) against the n x n attention map a full-attention implementation materializes."""
        llm = self.model.config.llm
        heads, kv_heads, dim = llm.heads, llm.kv_heads, llm.hidden // llm.heads
        n, m = self.layout.seq_len, len(self.layout.text_positions)
        dtype = self.model.llm.embed_tokens.weight.dtype
        gen = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(heads, n, dim, generator=gen).to(self.device, dtype)
        k = torch.randn(kv_heads, n, dim, generator=gen).to(self.device, dtype)
        text = torch.as_tensor(self.layout.text_positions, device=self.device)
        vision = slice(self.layout.vision_start, self.layout.vision_start + self.layout.num_vision)

        def ours():
            return score_layer(q.index_select(1, text), k, vision)

        def full_map():
            keys = k.repeat_interleave(heads // kv_heads, dim=0)
            attention = torch.softmax((q @ keys.transpose(-1, -2)).float() / math.sqrt(dim), dim=-1)   # (H, n, n)
            return attention.index_select(1, text)[..., vision].mean(dim=(0, 1))

        with torch.inference_mode():
            a, b = ours().scores.float(), full_map().float()
            agree = float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
            return {"queries_m": m, "keys_n": n, "heads": heads, "ours_ms": timed(ours, self.device, 20),
                    "full_attention_map_ms": timed(full_map, self.device, 20), "score_correlation": agree}

    def sdpa(self) -> dict[str, Any]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        out = {}
        for backend in ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION"):
            kind = getattr(SDPBackend, backend, None)
            if kind is None:
                out[backend.lower()] = {"skipped": "not in this torch"}
                continue
            try:
                with sdpa_kernel(kind), torch.inference_mode():
                    out[backend.lower()] = timed(lambda: self.model.forward_llm(self.embedded), self.device,
                                                 self.steps)
            except RuntimeError as exc:          # the backend cannot run these shapes / this device
                out[backend.lower()] = {"skipped": str(exc).splitlines()[0][:200]}
        return out

    def compile(self) -> dict[str, Any]:
        backend = "inductor" if self.device.type == "cuda" else "eager"
        compiled = torch.compile(self.model.forward_llm, backend=backend, dynamic=False)
        with torch.inference_mode():
            start = time.perf_counter()
            compiled(self.embedded)
            _sync(self.device)
            first = (time.perf_counter() - start) * 1e3
            eager = timed(lambda: self.model.forward_llm(self.embedded), self.device, self.steps)
            steady = timed(lambda: compiled(self.embedded), self.device, self.steps)
        return {"backend": backend, "first_call_ms": first, "compiled_ms": steady, "eager_ms": eager,
                "gain": eager["median"] / steady["median"]}

    def cuda_graphs(self) -> dict[str, Any]:
        if self.device.type != "cuda":
            return {"skipped": "no CUDA device"}
        static = self.embedded.clone()
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.model.forward_llm(static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured, _ = self.model.forward_llm(static)
            eager = timed(lambda: self.model.forward_llm(self.embedded), self.device, self.steps)
            replay = timed(graph.replay, self.device, self.steps)
            reference, _ = self.model.forward_llm(static)
            error = float((captured.float() - reference.float()).abs().max())
        return {"eager_ms": eager, "graph_replay_ms": replay, "gain": eager["median"] / replay["median"],
                "max_abs_difference": error, "pruned": "not captured: kept-token counts vary per step "
                                                       "(bucketed capture is future work)"}


def run(model_config: str, device: str, steps: int, budget_s: float, sections: tuple[str, ...]) -> dict[str, Any]:
    started = time.monotonic()
    check = Check(model_config, device, steps)
    dev = check.device
    result: dict[str, Any] = {
        "device": dev.type, "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "model_config": model_config, "dtype": str(next(check.model.parameters()).dtype).removeprefix("torch."),
        "steps": steps, "budget_s": budget_s, "setup_s": time.monotonic() - started, "sections": {}}
    scale = 1.0 if model_config == "openvla-7b" else 0.05
    for name in sections:
        left = budget_s - (time.monotonic() - started)
        if left < COST_S[name] * scale:
            result["sections"][name] = {"skipped": f"{left:.0f} s of the budget left, ~{COST_S[name] * scale:.0f} "
                                                   f"s needed"}
            continue
        t0 = time.monotonic()
        try:
            section = getattr(check, name)()
        except Exception as exc:        # one lever failing must not lose the others' figures
            section = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        section["wall_s"] = time.monotonic() - t0
        result["sections"][name] = section
        print(f"{name}: {section['wall_s']:.1f} s", file=sys.stderr, flush=True)
    result["wall_s"] = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu/run.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the tiny geometry on the CPU (under a minute)")
    parser.add_argument("--steps", type=int, help="measured repeats per timing (default 20; dry run 2)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of all sections")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--out", help="JSON path (default bench/results/gpu_check_<device>.json)")
    args = parser.parse_args(argv)
    sections = tuple(s for s in args.sections.split(",") if s)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown} (of {', '.join(SECTIONS)})")
    if args.dry_run:
        result = run("tiny", "cpu", args.steps or 2, args.budget_s, sections)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device here: use --dry-run")
        result = run("openvla-7b", "cuda", args.steps or 20, args.budget_s, sections)
    name = "".join(c if c.isalnum() else "_" for c in result["device_name"].lower()).strip("_")
    out = Path(args.out or f"bench/results/gpu_check_{'dry_run_' if args.dry_run else ''}{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(finite(result), indent=2, allow_nan=False, default=str))
    print(f"wrote {out} ({result['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
