"""Load OpenVLA-OFT checkpoints in the released layout; write small random ones in that layout.

A checkpoint directory holds ``config.json``, ``model.safetensors.index.json`` + shards,
``dataset_statistics.json``, ``action_head--<step>_checkpoint.pt``,
``proprio_projector--<step>_checkpoint.pt`` (DDP state dicts, keys prefixed ``module.``) and the
tokenizer files. Nothing is ever downloaded. Every problem is reported as one CheckpointError
naming the file and what is wrong.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .config import ModelConfig, model_config_from_hf, preset
from .openvla_oft import OpenVLAOFT
from .processing import NormStats
from .prompt import build_tiny_tokenizer, load_tokenizer

TINY_RANDOM = "tiny-random"
# Models shipped in the repository, by name (model_path: sim-tabletop).
SHIPPED_MODELS = {"sim-tabletop": str(Path(__file__).resolve().parents[2] / "models" / "sim-tabletop")}
INDEX_FILE = "model.safetensors.index.json"
HEAD_PATTERN = re.compile(r"^(action_head|proprio_projector)--(\d+)_checkpoint\.pt$")
# Released keys this implementation does not build (unused at inference).
UNUSED_KEYS = re.compile(r"^(language_model\.lm_head\.|vision_backbone\.(featurizer|fused_featurizer)\."
                         r"(norm\.|attn_pool\.|head\.|fc_norm\.|mask_token))")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or does not match the model."""


@dataclass
class LoadedPolicyModel:
    model: OpenVLAOFT
    tokenizer: Any
    stats: NormStats
    source: str


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16/fp16 on CUDA as configured; the CPU always runs fp32."""
    if device.type != "cuda":
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


# ---- random models ------------------------------------------------------------------------------

def init_random_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic init (zero bias, unit norms), generated on the weights' device."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            gen = generators.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
            if name.endswith("scale_factor"):
                p.fill_(0.1)    # LayerScale's 1e-5 init would silence the random ViT blocks
            elif p.dim() == 1 and ("norm" in name or ".ffn.0." in name):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:   # variance-preserving (1/sqrt(fan_in)): attention stays content-dependent at any width
                std = p.shape[-1] ** -0.5 if p.dim() == 2 and "embed" not in name else 0.02
                p.copy_(torch.randn(p.shape, generator=gen, device=p.device) * std)
    return model


def random_model(cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> OpenVLAOFT:
    """Random weights, rounded to bf16 precision like released weights (so a written tiny
    checkpoint loads to exactly the same model), built directly on ``device``."""
    with torch.device(device):
        model = OpenVLAOFT(cfg)
    init_random_(model, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16))
    return model.to(dtype=dtype).eval()


def tiny_statistics(cfg: ModelConfig, key: str = "tiny_random") -> dict[str, Any]:
    """Plausible BOUNDS_Q99 statistics: +-1 translation/rotation deltas, gripper in [0, 1]."""
    a = cfg.action_dim
    q01 = [-1.0] * (a - 1) + [0.0]
    q99 = [1.0] * (a - 1) + [1.0]
    p = cfg.proprio_dim
    entry = {
        "action": {"mean": [0.0] * a, "std": [0.5] * a, "min": q01, "max": q99, "q01": q01, "q99": q99,
                   "mask": [True] * (a - 1) + [False]},
        "proprio": {"mean": [0.0] * p, "std": [1.0] * p, "min": [-2.0] * p, "max": [2.0] * p,
                    "q01": [-1.5] * p, "q99": [1.5] * p},
        "num_transitions": 1000, "num_trajectories": 10,
    }
    return {key: entry}


def tiny_config() -> ModelConfig:
    tokenizer = build_tiny_tokenizer()
    return replace(preset("tiny"), pad_token_id=tokenizer.pad_token_id, name=TINY_RANDOM)


def load_tiny_random(device: str = "auto", dtype: str = "float32", unnorm_key: str = "") -> LoadedPolicyModel:
    """The built-in small random model, built in memory (no files)."""
    dev = resolve_device(device)
    cfg = tiny_config()
    model = random_model(cfg, dev, resolve_dtype(dtype, dev))
    stats = NormStats.from_statistics(tiny_statistics(cfg), unnorm_key, TINY_RANDOM, cfg.action_dim,
                                      cfg.proprio_dim if cfg.use_proprio else None)
    return LoadedPolicyModel(model, build_tiny_tokenizer(), stats, TINY_RANDOM)


# ---- loading ----------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def _find_head(directory: Path, kind: str) -> Path:
    found = sorted(((int(m.group(2)), p) for p in directory.iterdir()
                    if (m := HEAD_PATTERN.match(p.name)) and m.group(1) == kind))
    if not found:
        raise CheckpointError(f"{directory}: no {kind}--<step>_checkpoint.pt file")
    return found[-1][1]   # the latest training step


def _load_head(path: Path, module: nn.Module) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"{path}: cannot read the state dict ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'corrupt file'})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    _assign(module, state, path)


def _assign(module: nn.Module, state: dict[str, torch.Tensor], source: Path,
            ignore: re.Pattern | None = None) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointError(f"{source}: missing {len(missing)} weights, e.g. {', '.join(missing[:3])}")
    unexpected = sorted(k for k in set(state) - set(own) if not (ignore and ignore.match(k)))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected weights (wrong model?), e.g. {', '.join(unexpected[:3])}")
    for key, target in own.items():
        value = state[key]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(target.shape)} (config.json sizes do not match the weights)")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def _is_unused_vit_block(key: str, cfg: ModelConfig) -> bool:
    m = re.match(r"^vision_backbone\.(featurizer|fused_featurizer)\.blocks\.(\d+)\.", key)
    if not m:
        return False
    vit = cfg.featurizer if m.group(1) == "featurizer" else cfg.fused_featurizer
    return int(m.group(2)) > vit.feature_layer


def _read_sharded_safetensors(directory: Path, cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], Path]:
    from safetensors import SafetensorError, safe_open

    index_path = directory / INDEX_FILE
    single = directory / "model.safetensors"
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no weight_map")
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            shards.setdefault(shard, []).append(key)
    elif single.is_file():
        index_path, shards = single, {single.name: None}
    else:
        raise CheckpointError(f"{directory}: neither {INDEX_FILE} nor model.safetensors")

    state: dict[str, torch.Tensor] = {}
    for shard, keys in shards.items():
        path = directory / shard
        if not path.is_file():
            raise CheckpointError(f"{path}: shard listed in {index_path.name} is missing")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                available = set(f.keys())
                wanted = available if keys is None else keys
                absent = [k for k in wanted if k not in available]
                if absent:
                    raise CheckpointError(f"{path}: {len(absent)} weights listed in {index_path.name} are not "
                                          f"in the shard, e.g. {absent[0]}")
                for key in wanted:
                    if UNUSED_KEYS.match(key) or _is_unused_vit_block(key, cfg):
                        continue
                    state[key] = f.get_tensor(key)
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc})") from None
    return state, index_path


def load_checkpoint(path: str | Path, device: str = "auto", dtype: str = "bfloat16",
                    unnorm_key: str = "") -> LoadedPolicyModel:
    """Load a checkpoint directory (or ``tiny-random``) onto the device."""
    if str(path) == TINY_RANDOM:
        return load_tiny_random(device, dtype, unnorm_key)
    directory = Path(SHIPPED_MODELS.get(str(path), path))
    if not directory.is_dir():
        if str(path) in SHIPPED_MODELS:
            raise CheckpointError(f"{path}: the shipped model is not in this checkout ({directory}); train one "
                                  f"with `specprune sim collect` + `specprune sim train` and pass its model/ directory")
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    hf_config = _read_json(directory / "config.json")
    try:
        cfg = model_config_from_hf(hf_config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: {exc}") from None

    stats_path = directory / "dataset_statistics.json"
    statistics = _read_json(stats_path) if stats_path.is_file() else hf_config.get("norm_stats")
    if statistics is None:
        raise CheckpointError(f"{stats_path}: file not found (and config.json has no norm_stats)")
    try:
        stats = NormStats.from_statistics(statistics, unnorm_key, str(stats_path), cfg.action_dim,
                                          cfg.proprio_dim if cfg.use_proprio else None)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None

    model = OpenVLAOFT(cfg)
    state, index_path = _read_sharded_safetensors(directory, cfg)
    backbone = {k: v for k, v in state.items() if not k.startswith(("action_head.", "proprio_projector."))}
    skeleton = nn.Module()
    for name in ("vision_backbone", "projector", "language_model"):
        skeleton.add_module(name, getattr(model, name))
    _assign(skeleton, backbone, index_path)
    _load_head(_find_head(directory, "action_head"), model.action_head)
    if model.proprio_projector is not None:
        _load_head(_find_head(directory, "proprio_projector"), model.proprio_projector)
    try:
        tokenizer = load_tokenizer(directory)
    except (FileNotFoundError, ValueError) as exc:
        raise CheckpointError(str(exc)) from None
    dev = resolve_device(device)
    model = model.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval()
    return LoadedPolicyModel(model, tokenizer, stats, str(directory))


# ---- writing (tiny checkpoints in the released layout) ----------------------------------------------

def _released_extras(cfg: ModelConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Weights the release carries but inference does not use (last ViT blocks, norms, MAP head, lm_head)."""
    out: dict[str, torch.Tensor] = {}
    for name, vit in (("featurizer", cfg.featurizer), ("fused_featurizer", cfg.fused_featurizer)):
        prefix = f"vision_backbone.{name}"
        block = {"norm1.weight": (vit.dim,), "norm1.bias": (vit.dim,), "attn.qkv.weight": (3 * vit.dim, vit.dim),
                 "attn.qkv.bias": (3 * vit.dim,), "attn.proj.weight": (vit.dim, vit.dim),
                 "attn.proj.bias": (vit.dim,), "norm2.weight": (vit.dim,), "norm2.bias": (vit.dim,),
                 "mlp.fc1.weight": (vit.mlp_dim, vit.dim), "mlp.fc1.bias": (vit.mlp_dim,),
                 "mlp.fc2.weight": (vit.dim, vit.mlp_dim), "mlp.fc2.bias": (vit.dim,)}
        if vit.layer_scale:
            block.update({"ls1.scale_factor": (vit.dim,), "ls2.scale_factor": (vit.dim,)})
        for i in range(vit.feature_layer + 1, vit.depth):
            out.update({f"{prefix}.blocks.{i}.{k}": torch.randn(s, generator=gen) * 0.02 for k, s in block.items()})
        out[f"{prefix}.norm.weight"] = torch.ones(vit.dim)
        out[f"{prefix}.norm.bias"] = torch.zeros(vit.dim)
        if not vit.num_prefix:   # SigLIP's attention-pool head
            out[f"{prefix}.attn_pool.latent"] = torch.randn(1, 1, vit.dim, generator=gen) * 0.02
            out[f"{prefix}.attn_pool.q.weight"] = torch.randn(vit.dim, vit.dim, generator=gen) * 0.02
            out[f"{prefix}.attn_pool.kv.weight"] = torch.randn(2 * vit.dim, vit.dim, generator=gen) * 0.02
    out["language_model.lm_head.weight"] = torch.randn(cfg.llm.vocab, cfg.llm.hidden, generator=gen) * 0.02
    return out


def hf_config_json(cfg: ModelConfig, statistics: dict[str, Any]) -> dict[str, Any]:
    llm = cfg.llm

    def vit(v):
        return {"dim": v.dim, "depth": v.depth, "heads": v.heads, "mlp_dim": v.mlp_dim, "num_prefix": v.num_prefix,
                "layer_scale": v.layer_scale, "patch": v.patch}

    return {
        "model_type": "openvla",
        "architectures": ["OpenVLAForActionPrediction"],
        "use_fused_vision_backbone": True,
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "timm_override_act_layers": [None, None],
        "image_sizes": [cfg.image_size, cfg.image_size],
        "image_resize_strategy": "resize-naive",
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": llm.max_positions,
        "arch_specifier": "no-align+fused-gelu-mlp",
        "pad_token_id": cfg.pad_token_id,
        "pad_to_multiple_of": 64,
        "n_action_bins": 256,
        "norm_stats": statistics,
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "llama", "pad_token_id": cfg.pad_token_id, "torch_dtype": "bfloat16",
            "vocab_size": llm.vocab, "hidden_size": llm.hidden, "num_hidden_layers": llm.layers,
            "num_attention_heads": llm.heads, "num_key_value_heads": llm.kv_heads,
            "intermediate_size": llm.intermediate, "rms_norm_eps": llm.rms_eps, "rope_theta": llm.rope_theta,
            "max_position_embeddings": llm.max_positions,
        },
        # This project's explicit sizes (the release leaves them to the timm ids).
        "vision_config": {"featurizer": vit(cfg.featurizer), "fused_featurizer": vit(cfg.fused_featurizer)},
        "oft_config": {"chunk_size": cfg.chunk_size, "action_dim": cfg.action_dim, "proprio_dim": cfg.proprio_dim,
                       "action_head_blocks": cfg.action_head_blocks, "use_proprio": cfg.use_proprio,
                       "center_crop": cfg.center_crop,
                       **({"num_images": cfg.num_images} if cfg.num_images is not None else {})},
    }


def _shards(items: Iterable[tuple[str, torch.Tensor]], count: int) -> list[dict[str, torch.Tensor]]:
    items = list(items)
    per = -(-len(items) // count)
    return [dict(items[i:i + per]) for i in range(0, len(items), per)]


def write_tiny_checkpoint(directory: str | Path, seed: int = 0, step: int = 1000, num_shards: int = 2,
                          unnorm_key: str = "tiny_random", llm_layers: int | None = None,
                          use_proprio: bool = True) -> Path:
    """A small random model in exactly the released file layout (bf16 weights, ``module.`` heads).

    ``llm_layers`` makes a shallower (or deeper) LLM than the released 32 layers.
    """
    cfg = tiny_config()
    if llm_layers is not None:
        cfg = replace(cfg, llm=replace(cfg.llm, layers=llm_layers))
    cfg = replace(cfg, use_proprio=use_proprio)
    return write_checkpoint(random_model(cfg, seed=seed), tiny_statistics(cfg, unnorm_key), build_tiny_tokenizer(),
                            directory, step=step, num_shards=num_shards, seed=seed)


def write_checkpoint(model: OpenVLAOFT, statistics: dict[str, Any], tokenizer, directory: str | Path,
                     step: int = 1000, num_shards: int = 2, seed: int = 0) -> Path:
    """``model`` in exactly the released file layout: sharded bf16 safetensors + index,
    ``config.json`` with explicit sizes, ``dataset_statistics.json``, ``module.``-prefixed heads
    saved as plain state dicts, the tokenizer files; plus the released weights OFT never uses
    (SigLIP's attention pool, the LM head), random, so every loading path sees a full release."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    gen = torch.Generator().manual_seed(seed + 1)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("action_head.", "proprio_projector."))}
    state.update(_released_extras(cfg, gen))
    state = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in sorted(state.items())}
    shards = _shards(state.items(), num_shards)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                   indent=2))

    for kind, module in (("action_head", model.action_head), ("proprio_projector", model.proprio_projector)):
        if module is None:
            continue
        heads = {f"module.{k}": v.detach().to("cpu", torch.bfloat16) for k, v in module.state_dict().items()}
        torch.save(heads, directory / f"{kind}--{step}_checkpoint.pt")

    (directory / "config.json").write_text(json.dumps(hf_config_json(cfg, statistics), indent=2))
    (directory / "dataset_statistics.json").write_text(json.dumps(statistics, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "pad_token_id": cfg.pad_token_id, "bos_token_id": 1, "eos_token_id": 2},
        indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "PrismaticImageProcessor", "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, cfg.image_size, cfg.image_size]] * 2, "interpolations": ["bicubic", "bicubic"],
        "means": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]], "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "size": [224, 224]}] * 2,
        "use_fused_vision_backbone": True}, indent=2))
    tokenizer.save_pretrained(str(directory))
    (directory / "added_tokens.json").write_text(json.dumps({"<PAD>": tokenizer.pad_token_id}))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<PAD>"}, indent=2))
    return directory
