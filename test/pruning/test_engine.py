import numpy as np
import pytest
import torch

from specprune_ros.common.methods import paper_config
from specprune_ros.config import Config
from specprune_ros.pruning import SpecPruneEngine, TokenLayout

GRID = (4, 4)
N = 16


def layout(cams=2):
    return TokenLayout(seq_len=1 + cams * N + 10, vision_start=1, num_cameras=cams,
                       text_positions=(cams * N + 3, cams * N + 4), grid=GRID)


def frames(value=80, cams=2):
    img = torch.full((cams, 3, 56, 56), value, dtype=torch.uint8)
    img[:, 1] += 7
    return img


class Clocked(SpecPruneEngine):
    """The engine with its steps one action period (0.1 s) apart, as at a 10 Hz control rate."""

    now = 0.0

    def step(self, frames, motion):
        plan = self.begin_step(frames, motion, self.now)
        self.now += self.config.action_dt
        return plan


def engine(**knobs):
    """The paper's rule (these tests are about its mechanics), with ``knobs`` on top."""
    return Clocked(paper_config().replace(**knobs).pruning_settings(), layout(), frame_shape=(3, 56, 56))


def test_first_step_runs_unpruned_and_records_the_prior():
    eng = engine()
    plan = eng.step(frames(), None)
    assert not plan.prune and "first step" in plan.reason
    assert plan.history_frames == 0 and plan.similarity is None
    with pytest.raises(RuntimeError, match="unpruned step"):
        eng.select(plan, torch.rand(2, 2, N))
    recall = eng.end_step(plan, torch.rand(2, 2, N))
    assert torch.isnan(recall)
    assert eng.step(frames(), None).prune


def test_second_step_prunes_with_prior_local_and_dynamic():
    eng = engine(**{"pruning.k_global": 1, "pruning.k_local": 1, "pruning.k_dynamic": 1, "pruning.alpha": 1.0,
                    "controller.enabled": False})
    eng.end_step(eng.step(frames(), None), _prior_with_best(5))
    moved = frames()
    moved[0, :, 42:, 42:] = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)  # primary: a red object
    # enters the last patch (raw-pixel cosine similarity sees colour/texture, not brightness)
    plan = eng.step(moved, np.zeros(7))
    assert plan.prune and plan.history_frames == 11 and plan.history_age_s == pytest.approx(0.1)
    local = torch.zeros(2, 2, N)
    local[:, :, 9] = 1.0
    sel = eng.select(plan, local)
    assert sel.kept[0].nonzero().flatten().tolist() == [5, 9, 15]
    assert sel.kept[1].nonzero().flatten().tolist() == [5, 9]
    assert sel.counts().tolist() == [5, 2, 2, 1]
    assert not bool(sel.fallback)
    # This step's global top-1 is token 5 again on both cameras: full recall.
    assert eng.end_step(plan, _prior_with_best(5)).item() == 1.0
    plan = eng.step(moved, np.zeros(7))
    eng.select(plan, local)
    assert eng.end_step(plan, _prior_with_best(7)).item() == 0.0


def _prior_with_best(token):
    s = torch.rand(2, 2, N) * 0.1
    s[:, :, token] = 1.0
    return s


def test_scene_cut_falls_back_to_every_token():
    eng = engine()
    eng.end_step(eng.step(frames(), None), torch.rand(2, 2, N))
    g = torch.Generator().manual_seed(3)
    new_scene = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8, generator=g)
    plan = eng.step(new_scene, np.zeros(7))
    sel = eng.select(plan, torch.rand(2, 2, N))
    assert bool(sel.fallback) and bool(sel.kept.all())


def test_controller_mode_changes_k_and_history():
    eng = engine(**{"pruning.alpha": 0.3})
    eng.step(frames(), None)
    fast = eng.step(frames(), np.array([0.9, 0.0, 0.0, 0, 0, 0, 1]))
    slow = eng.step(frames(), np.array([0.05, 0.0, -0.05, 0, 0, 0, 1]))
    assert not fast.decision.fine and slow.decision.fine and slow.decision.entered_fine
    assert (fast.k.k_global, slow.k.k_global) == (9, 15)    # 0.3 * 30, then * 40/24
    # floor(7 - v) + 4 with v = speed per action x 8: 0.9 * 8 = 7.2 -> 3; |(0.05, 0, -0.05)| * 8 = 0.57 -> 10
    assert (fast.history_frames, slow.history_frames) == (3, 10)
    # Only 1 and 2 frames were stored: the closest to t - T * action_dt is the oldest one.
    assert (fast.history_age_s, slow.history_age_s) == pytest.approx((0.1, 0.2))


def test_history_compares_the_frame_closest_to_t_minus_T_action_periods():
    """Frames arrive every period (observe); steps come once per 8-action chunk."""
    eng = engine()
    dt = eng.config.action_dt
    eng.begin_step(frames(0), None, 0.0)
    for i in range(1, 16):
        eng.observe(i * dt, frames(10 * i))
    chunk = np.zeros((8, 7))
    chunk[:, 0] = 0.5                                # 8 x 0.5 = 4.0 translation executed
    plan = eng.begin_step(frames(200), chunk, 1.6)
    assert plan.history_frames == 7 and plan.history_age_s == pytest.approx(0.7)   # floor(7 - 4) + 4
    eng.observe(1.7, frames(210))
    standing = eng.begin_step(frames(220), np.zeros((8, 7)), 1.8)
    assert standing.history_frames == 11
    assert standing.history_age_s == pytest.approx(1.1)          # twelve periods are held: 0.7 .. 1.7
    far = eng.begin_step(frames(230), np.zeros((8, 7)), 5.0)
    assert far.history_frames == 11 and far.history_age_s == pytest.approx(3.2)   # clamped: newest is 1.8


def test_history_keeps_one_frame_per_action_period():
    eng = engine()
    for stamp in (0.0, 0.03, 0.06, 0.09, 0.12, 0.15, 0.21):      # a 33 Hz camera, 0.1 s periods
        eng.observe(stamp, frames())
    assert eng.frames.stamps == [0.0, 0.12, 0.21]


def test_disabled_pruning_never_prunes_and_reset_forgets_the_prior():
    eng = engine(**{"pruning.enabled": False})
    eng.end_step(eng.step(frames(), None), torch.rand(2, 2, N))
    assert eng.step(frames(), None).reason == "disabled"
    eng.configure(paper_config().pruning_settings())
    assert eng.step(frames(), None).prune
    eng.reset()
    plan = eng.step(frames(), None)
    assert not plan.prune and plan.history_frames == 0 and plan.history_age_s == 0.0


def test_configure_resizes_the_history_for_a_longer_window():
    eng = engine()
    assert eng.frames.capacity == 12
    eng.configure(Config.from_dict({"pruning.history_base": 20.0}).pruning_settings())
    assert eng.frames.capacity == 25


def test_a_refresh_step_runs_unpruned_after_refresh_period_pruned_steps():
    eng = engine(**{"pruning.refresh_period": 2})
    reasons = []
    for _ in range(7):
        plan = eng.step(frames(), None)
        reasons.append(plan.reason)
        eng.end_step(plan, torch.rand(2, 2, N))
    assert reasons == ["no prior (first step)", "", "", "prior refresh", "", "", "prior refresh"]
    eng.reset()
    assert eng.step(frames(), None).reason == "no prior (first step)"


def test_random_coverage_picks_redraw_every_step_and_repeat_every_episode():
    def kept_over_steps(eng):
        masks = []
        plan = eng.step(frames(), None)
        eng.end_step(plan, torch.rand(2, 2, N))
        for _ in range(3):
            plan = eng.step(frames(), None)
            masks.append(eng.select(plan, torch.zeros(2, 2, N)).kept.clone())
            eng.end_step(plan, torch.rand(2, 2, N))
        return masks
    eng = engine(**{"pruning.coverage_grid": 2, "pruning.coverage_pick": "random", "pruning.k_global": 0,
                    "pruning.k_local": 0, "pruning.k_dynamic": 0})
    first = kept_over_steps(eng)
    assert all(int(m.sum()) == 2 * 4 for m in first)                # one patch per block, per camera
    assert not all(torch.equal(first[0], m) for m in first[1:])     # re-drawn
    eng.reset()
    assert all(torch.equal(a, b) for a, b in zip(first, kept_over_steps(eng)))   # seeded per episode
