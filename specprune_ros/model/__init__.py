"""OpenVLA-OFT in plain PyTorch: released-checkpoint loading and the SpecPrune-VLA pruned forward.

* config      - model geometry (released defaults, presets: tiny, scaled, openvla-7b)
* vision      - fused DINOv2 + SigLIP backbone (timm parameter names)
* llama       - Llama-2 layers with bidirectional SDPA attention (HF parameter names)
* heads       - projector, proprio projector, L1 action head (released names)
* openvla_oft - sequence assembly, the pruned forward, the shifted action-head slice
* processing  - image preprocessing, proprio / action normalization
* prompt      - prompt building, instruction token positions, the tiny local tokenizer
* checkpoint  - loading the released layout, writing tiny checkpoints
* flops       - LLM FLOPs of a token schedule
"""
from .checkpoint import (
    TINY_RANDOM,
    CheckpointError,
    LoadedPolicyModel,
    load_checkpoint,
    random_model,
    write_tiny_checkpoint,
)
from .config import PRESETS, ModelConfig, preset
from .openvla_oft import OpenVLAOFT

__all__ = ["TINY_RANDOM", "CheckpointError", "LoadedPolicyModel", "load_checkpoint", "random_model",
           "write_tiny_checkpoint", "PRESETS", "ModelConfig", "preset", "OpenVLAOFT"]
