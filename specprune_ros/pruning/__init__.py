"""The SpecPrune-VLA pruning engine: pure torch + numpy, no ROS, no model code.

* scores      - text->image attention scores from m query rows (never full attention maps)
* static      - V_global | V_local | V_dynamic per camera, scene-cut fallback
* frames      - patch cosine similarity, velocity-adaptive history kept by time
* dynamic     - rank/confidence-weighted EMA and per-layer token dropping
* controller  - coarse/fine decision with hysteresis, K scaling
* engine      - SpecPrune's cross-step state (prior scores, frames, controller)
* strategy    - pruning rules (specprune, random, fastv) behind one per-step interface the model asks
"""
from .controller import ActionAwareController, Decision, KBudget, Motion, k_budget, scaled_k
from .dynamic import LayerImportance, rank_weights, ranks
from .engine import SpecPruneEngine, StepPlan
from .frames import (
                     FrameHistory,
                     executed_actions,
                     executed_translation,
                     history_periods,
                     patch_cosine_similarity,
                     patch_unit_vectors,
)
from .layout import TokenLayout
from .scores import (
                     LayerScores,
                     layer_confidence,
                     rotate_half_rope,
                     score_layer,
                     score_logits,
                     scores_from_hidden_states,
                     text_logits,
                     text_to_vision_attention,
)
from .static import StaticSelection, changed_patch_mask, detect_scene_cut, select_static, topk_mask, union_topk_mask
from .stopwatch import Stopwatch
from .strategy import PruningStrategy, StepPruner, check_layers, make_strategy

__all__ = [
    "ActionAwareController", "Decision", "KBudget", "Motion", "k_budget", "scaled_k",
    "LayerImportance", "rank_weights", "ranks", "SpecPruneEngine", "StepPlan",
    "FrameHistory", "executed_actions", "executed_translation", "history_periods", "patch_cosine_similarity",
    "patch_unit_vectors", "TokenLayout",
    "LayerScores", "layer_confidence", "rotate_half_rope", "score_layer", "score_logits", "text_logits",
    "scores_from_hidden_states",
    "text_to_vision_attention", "StaticSelection", "changed_patch_mask", "detect_scene_cut",
    "select_static", "topk_mask", "union_topk_mask", "Stopwatch", "PruningStrategy", "StepPruner", "check_layers",
    "make_strategy",
]
