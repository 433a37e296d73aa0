"""Model geometry: the sizes of every part, read from a checkpoint's config.json or a preset.

Sizes not given in config.json default to the released OpenVLA-OFT architecture (DINOv2 ViT-L/14
with registers + SigLIP SO400M/14, Llama-2-7B, LIBERO heads). Camera count, chunk size, action
and proprio dims are deployment facts that come from here, never from the command line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class ViTConfig:
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    num_prefix: int            # CLS + registers (DINOv2: 1 + 4; SigLIP: 0)
    layer_scale: bool          # DINOv2's LayerScale
    patch: int = 14
    image_size: int = 224
    norm_eps: float = 1e-6
    gelu_tanh: bool = False    # both released ViTs use exact GELU (OpenVLA overrides no act_layer)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def feature_layer(self) -> int:
        """0-based block whose output OpenVLA uses: the second-to-last."""
        return self.depth - 2


# timm vit_large_patch14_reg4_dinov2 (no_embed_class: pos_embed covers the 256 patches only)
DINOV2_L = ViTConfig(dim=1024, depth=24, heads=16, mlp_dim=4096, num_prefix=5, layer_scale=True)
# timm vit_so400m_patch14_siglip_224 (no class token; its MAP head is unused)
SIGLIP_SO400M = ViTConfig(dim=1152, depth=27, heads=16, mlp_dim=4304, num_prefix=0, layer_scale=False)


@dataclass(frozen=True)
class LlamaConfig:
    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    kv_heads: int = 32
    intermediate: int = 11008
    vocab: int = 32064
    rms_eps: float = 1e-6          # UNVERIFIED for the release (HF default); read from config.json
    rope_theta: float = 10000.0
    max_positions: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class ModelConfig:
    featurizer: ViTConfig = DINOV2_L
    fused_featurizer: ViTConfig = SIGLIP_SO400M
    llm: LlamaConfig = field(default_factory=LlamaConfig)
    chunk_size: int = 8
    action_dim: int = 7
    proprio_dim: int = 8
    action_head_blocks: int = 2
    use_proprio: bool = True
    pad_token_id: int = 32000
    image_size: int = 224
    center_crop: bool = True        # models trained with image augmentation: 90 % area crop
    name: str = "openvla-7b"
    # Cameras the model was trained with. Released config.json files do not say (a deployment
    # setting there, None = unknown); checkpoints written by this project do (oft_config).
    num_images: int | None = None

    @property
    def vision_dim(self) -> int:
        return self.featurizer.dim + self.fused_featurizer.dim

    @property
    def num_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def patches_per_image(self) -> int:
        return self.featurizer.grid ** 2

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LIBERO_DIMENSIONS = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


def dimension_names(action_dim: int) -> tuple[str, ...]:
    """Names of the action dimensions: LIBERO's end-effector deltas + gripper for 7, else a0.."""
    return LIBERO_DIMENSIONS if action_dim == 7 else tuple(f"a{i}" for i in range(action_dim))


def _vit(base: ViTConfig, values: Mapping[str, Any] | None) -> ViTConfig:
    return dataclasses.replace(base, **dict(values)) if values else base


def model_config_from_hf(cfg: Mapping[str, Any]) -> ModelConfig:
    """Geometry from an OpenVLA(-OFT) config.json; unknown sizes keep the released defaults.

    ``text_config`` carries the usual HF Llama fields; this project's tiny checkpoints add
    ``vision_config: {featurizer: {...}, fused_featurizer: {...}}`` and ``oft_config`` (chunk
    size, action / proprio dims) with explicit sizes.
    """
    text = dict(cfg.get("text_config") or {})
    llm = LlamaConfig(
        hidden=int(text.get("hidden_size", 4096)),
        layers=int(text.get("num_hidden_layers", 32)),
        heads=int(text.get("num_attention_heads", 32)),
        kv_heads=int(text.get("num_key_value_heads", text.get("num_attention_heads", 32))),
        intermediate=int(text.get("intermediate_size", 11008)),
        vocab=int(text.get("vocab_size", 32064)),
        rms_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=float((text.get("rope_parameters") or {}).get("rope_theta", text.get("rope_theta", 10000.0))),
        max_positions=int(text.get("max_position_embeddings", 2048)),
    )
    vision = cfg.get("vision_config") or {}
    oft = cfg.get("oft_config") or {}
    image_sizes = cfg.get("image_sizes") or [224, 224]
    if not cfg.get("use_fused_vision_backbone", True):
        raise ValueError("only fused DINOv2 + SigLIP vision backbones are supported "
                         "(config.json: use_fused_vision_backbone is false)")
    return ModelConfig(
        featurizer=_vit(dataclasses.replace(DINOV2_L, image_size=int(image_sizes[0])), vision.get("featurizer")),
        fused_featurizer=_vit(dataclasses.replace(SIGLIP_SO400M, image_size=int(image_sizes[-1])),
                              vision.get("fused_featurizer")),
        llm=llm,
        chunk_size=int(oft.get("chunk_size", 8)),
        action_dim=int(oft.get("action_dim", 7)),
        proprio_dim=int(oft.get("proprio_dim", 8)),
        action_head_blocks=int(oft.get("action_head_blocks", 2)),
        use_proprio=bool(oft.get("use_proprio", True)),
        pad_token_id=int(cfg.get("pad_token_id", 32000)),
        image_size=int(image_sizes[0]),
        center_crop=bool(oft.get("center_crop", True)),
        num_images=int(oft["num_images"]) if oft.get("num_images") is not None else None,
        name=str(cfg.get("name_or_path", cfg.get("_name_or_path", "checkpoint"))) or "checkpoint",
    )


def _small_vit(base: ViTConfig, dim: int, depth: int, heads: int) -> ViTConfig:
    return dataclasses.replace(base, dim=dim, depth=depth, heads=heads, mlp_dim=dim * 4)


# Presets keep the real token geometry (224 px, 14 px patches: 256 tokens per camera, 32 LLM
# layers so the paper's layer indices apply) and shrink widths.
PRESETS: dict[str, ModelConfig] = {
    "openvla-7b": ModelConfig(),
    "scaled": ModelConfig(
        featurizer=_small_vit(DINOV2_L, 128, 4, 4),
        fused_featurizer=_small_vit(SIGLIP_SO400M, 128, 4, 4),
        llm=LlamaConfig(hidden=512, layers=32, heads=8, kv_heads=8, intermediate=1376, vocab=32064),
        name="scaled",
    ),
    "tiny": ModelConfig(
        featurizer=_small_vit(DINOV2_L, 32, 3, 2),
        fused_featurizer=_small_vit(SIGLIP_SO400M, 32, 3, 2),
        llm=LlamaConfig(hidden=64, layers=32, heads=4, kv_heads=4, intermediate=128, vocab=1024),
        pad_token_id=1000,
        name="tiny",
    ),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r} (one of {', '.join(PRESETS)})") from None
