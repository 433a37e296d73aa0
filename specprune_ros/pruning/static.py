"""Action-level static pruning: V_retain = V_global | V_local | V_dynamic, per camera.

All masks are (cameras, tokens_per_camera) bool tensors on the model's device; every camera
gets its own top-K. Scores of tokens that have none (pruned in the previous step) are -inf
and are never selected.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k highest finite scores along the last dim (fewer if fewer are finite)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    k = min(int(k), scores.shape[-1])
    if k <= 0:
        return mask
    values, index = scores.topk(k, dim=-1)
    return mask.scatter_(-1, index, torch.isfinite(values))


def union_topk_mask(layer_scores: torch.Tensor, k: int) -> torch.Tensor:
    """Union over layers of per-camera top-k: (layers, cameras, N) -> (cameras, N)."""
    return topk_mask(layer_scores, k).any(dim=0)


def changed_patch_mask(similarity: torch.Tensor, thresholds: torch.Tensor, k: int) -> torch.Tensor:
    """The k least similar patches per camera among those below the camera's threshold tau."""
    candidate = similarity < thresholds.view(-1, 1)
    # Most changed first: negate similarity, and never pick a patch above the threshold.
    key = torch.where(candidate, -similarity, torch.full_like(similarity, float("-inf")))
    return topk_mask(key, k)


def detect_scene_cut(similarity_to_previous: torch.Tensor, tau: float, max_changed_fraction: float) -> torch.Tensor:
    """() bool tensor: more than ``max_changed_fraction`` of the patches changed in one step.

    Fed with the primary (third-person) camera: it is static, so a mostly-changed frame there
    means a real scene change (camera bumped, occlusion, new scene), whereas the wrist camera
    legitimately changes a lot while the arm moves.
    """
    changed = (similarity_to_previous < tau).float().mean()
    return changed > max_changed_fraction


@dataclass
class StaticSelection:
    """One step's static selection; every field stays on the device until stats are read."""

    kept: torch.Tensor            # (C, N) bool: tokens that enter layer local_layers + 1
    global_mask: torch.Tensor     # (C, N) bool
    local_mask: torch.Tensor      # (C, N) bool
    dynamic_mask: torch.Tensor    # (C, N) bool
    fallback: torch.Tensor        # () bool: scene cut, everything kept

    def counts(self) -> torch.Tensor:
        """[kept, global, local, dynamic] totals over cameras, one small device tensor."""
        return torch.stack([m.sum() for m in (self.kept, self.global_mask, self.local_mask, self.dynamic_mask)])


def not_static_mask(similarity: torch.Tensor, thresholds: torch.Tensor, max_removed: int) -> torch.Tensor:
    """The authors' released rule, inverted to a keep mask: every patch except the (at most
    ``max_removed`` per camera) most similar ones at or above the camera's threshold."""
    static = similarity >= thresholds.view(-1, 1)
    key = torch.where(static, similarity, torch.full_like(similarity, float("-inf")))
    return ~topk_mask(key, max_removed)


def block_ids(grid: tuple[int, int], blocks: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(grid_h * grid_w,) block number of each row-major patch for a ``blocks`` x ``blocks`` split."""
    gh, gw = grid
    rows = torch.arange(gh, device=device).repeat_interleave(gw) * blocks // gh
    cols = torch.arange(gw, device=device).repeat(gh) * blocks // gw
    return rows * blocks + cols


def coverage_mask(scores: torch.Tensor, ids: torch.Tensor, blocks: int) -> torch.Tensor:
    """Every block's best-scoring patch, per camera: ``scores`` (C, N), ``ids`` from block_ids."""
    finite = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -1e30))
    best = torch.full((scores.shape[0], blocks * blocks), -1e30, dtype=scores.dtype, device=scores.device)
    best = best.scatter_reduce(1, ids.expand_as(finite), finite, reduce="amax")
    # Ties keep every patch at the block's maximum (rare with attention scores; never none).
    return finite >= best.gather(1, ids.expand_as(finite))


@dataclass(frozen=True)
class FrameRule:
    """How frame differencing enters the static stage (``pruning.frame_rule``)."""

    name: str = "changed"             # changed: add the k most changed patches | drop_static
    max_removed: int = 200            # drop_static: most static patches removed per camera
    coverage_blocks: int = 0          # 0 = no coverage floor
    coverage_ids: torch.Tensor | None = None


def select_static(prior_scores: torch.Tensor, local_scores: torch.Tensor, similarity: torch.Tensor | None,
                  thresholds: torch.Tensor, k_global: int, k_local: int, k_dynamic: int,
                  scene_cut: torch.Tensor | None = None, rule: FrameRule | None = None,
                  coverage_scores: torch.Tensor | None = None) -> StaticSelection:
    """Fuse the three sets.

    ``prior_scores`` (G, C, N): previous step's scores at the G global layers (-inf = no score).
    ``local_scores`` (L, C, N): this step's scores at the local layers.
    ``similarity`` (C, N): patch similarity to the frame T steps back, or None (no history).
    ``scene_cut``: () bool; when true every token is kept for this step.
    ``rule``: the frame rule and coverage floor (default: the paper's changed-patch set, no floor).
    ``coverage_scores`` (C, N): what picks each block's patch (default: this step's local scores).
    ``dynamic_mask`` reports what frame differencing contributed: the changed patches, or under
    drop_static the patches it did not remove (every patch without a compared frame).
    """
    rule = rule or FrameRule()
    global_mask = union_topk_mask(prior_scores, k_global)
    local_mask = union_topk_mask(local_scores, k_local)
    if rule.name == "drop_static":
        dynamic_mask = (torch.ones_like(global_mask) if similarity is None
                        else not_static_mask(similarity, thresholds, rule.max_removed))
    elif similarity is None:
        dynamic_mask = torch.zeros_like(global_mask)
    else:
        dynamic_mask = changed_patch_mask(similarity, thresholds, k_dynamic)
    kept = global_mask | local_mask | dynamic_mask
    if rule.coverage_blocks:
        picks = local_scores.max(dim=0).values if coverage_scores is None else coverage_scores
        kept = kept | coverage_mask(picks, rule.coverage_ids, rule.coverage_blocks)
    if scene_cut is None:
        scene_cut = torch.zeros((), dtype=torch.bool, device=kept.device)
    kept = kept | scene_cut
    return StaticSelection(kept, global_mask, local_mask, dynamic_mask, scene_cut)
