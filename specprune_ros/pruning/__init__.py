"""The SpecPrune-VLA pruning engine: pure torch + numpy, no ROS, no model code.

* config      - its own knobs (PruningConfig, ControllerConfig) and PruningSettings
* scores      - text->image attention scores from m query rows (never full attention maps)
* static      - V_global | V_local | V_dynamic per camera, scene-cut fallback
* frames      - patch cosine similarity, velocity-adaptive history kept by time
* dynamic     - rank/confidence-weighted EMA and per-layer token dropping
* controller  - coarse/fine decision with hysteresis, K scaling
* engine      - SpecPrune's cross-step state (prior scores, frames, controller)
* strategy    - pruning rules (specprune, random, fastv) behind one per-step interface the model asks

Names are imported from their submodule on first use, so ``pruning.config`` (read by the light
application configuration) does not pull torch in.
"""
from importlib import import_module

_EXPORTS = {
    "config": ("ControllerConfig", "PruningConfig", "PruningSettings", "METHODS"),
    "controller": ("ActionAwareController", "Decision", "KBudget", "Motion", "k_budget", "scaled_k"),
    "dynamic": ("LayerImportance", "rank_weights", "ranks"),
    "engine": ("SpecPruneEngine", "StepPlan"),
    "frames": ("FrameHistory", "executed_actions", "executed_translation", "history_periods",
               "patch_cosine_similarity", "patch_unit_vectors"),
    "layout": ("TokenLayout",),
    "scores": ("LayerScores", "layer_confidence", "rotate_half_rope", "score_layer", "score_logits",
               "scores_from_hidden_states", "text_logits", "text_to_vision_attention"),
    "static": ("StaticSelection", "changed_patch_mask", "detect_scene_cut", "select_static", "topk_mask",
               "union_topk_mask"),
    "stopwatch": ("Stopwatch",),
    "strategy": ("PruningStrategy", "StepPruner", "check_layers", "make_strategy"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
