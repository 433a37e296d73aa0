import numpy as np
import pytest

from specprune_ros.config import Config, ControllerConfig
from specprune_ros.pruning import ActionAwareController, Motion, k_budget, scaled_k


def action(dx=0.0, dy=0.0, dz=0.0, rx=0.0, ry=0.0, rz=0.0, grip=1.0):
    return np.array([dx, dy, dz, rx, ry, rz, grip])


def test_speeds_from_the_previous_action():
    m = Motion.from_action(action(dx=0.3, dy=0.4, dz=-0.1, rx=0.2))
    assert m.translation_speed == pytest.approx(np.sqrt(0.26))
    assert m.rotation_speed == pytest.approx(0.2)
    assert m.dz == pytest.approx(-0.1)
    chunk = np.stack([action(dx=1.0), action(dx=0.0)])
    assert Motion.from_action(chunk).translation_speed == pytest.approx(0.5)
    with pytest.raises(ValueError, match=">= 6 dims"):
        Motion.from_action(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        Motion.from_action(action(dx=np.nan))


def test_fine_mode_needs_slow_and_descending():
    c = ActionAwareController()
    assert not c.update(Motion.from_action(action(dx=0.6))).fine            # fast
    assert not c.update(Motion.from_action(action(dx=0.1, rx=0.25))).fine   # rotating
    assert not c.update(Motion.from_action(action(dx=0.1, dz=0.05))).fine   # rising
    d = c.update(Motion.from_action(action(dx=0.1, dz=-0.05)))             # slow descent
    assert d.fine and d.entered_fine


def test_hysteresis_keeps_fine_until_dz_or_rotation_rise():
    c = ActionAwareController()
    c.update(Motion.from_action(action(dz=-0.1)))
    # Still fine although no longer strictly descending or slow: inside the hysteresis band.
    d = c.update(Motion.from_action(action(dx=0.5, dz=0.15, rx=0.25)))
    assert d.fine and not d.entered_fine
    assert not c.update(Motion.from_action(action(dz=0.25))).fine          # dz > 0.2 leaves
    c.update(Motion.from_action(action(dz=-0.1)))
    assert not c.update(Motion.from_action(action(rz=0.35))).fine          # v_r > 0.3 leaves
    c.update(Motion.from_action(action(dz=-0.1)))
    assert not c.update(Motion.from_action(action(dx=0.7))).fine           # v_t > 0.6 leaves


def test_no_previous_action_keeps_the_mode():
    c = ActionAwareController()
    d = c.update(None)
    assert not d.fine and d.motion == Motion(0.0, 0.0, 0.0)
    c.update(Motion.from_action(action(dz=-0.1)))
    assert c.update(None).fine


def test_disabled_controller_is_always_coarse():
    c = ActionAwareController(ControllerConfig(enabled=False))
    assert not c.update(Motion.from_action(action(dz=-0.1))).fine
    c.update(Motion(0, 0, 0))
    c.reset()
    assert not c.fine


def test_k_scales_with_alpha_and_mode():
    assert scaled_k(24, 1.0, False, 40 / 24, 256) == 24
    assert scaled_k(24, 1.0, True, 40 / 24, 256) == 40       # paper: alpha*24 -> alpha*40
    assert scaled_k(24, 0.8, False, 40 / 24, 256) == 19      # 19.2
    assert scaled_k(24, 0.8, True, 40 / 24, 256) == 32
    assert scaled_k(30, 4.0, True, 40 / 24, 256) == 200
    assert scaled_k(300, 4.0, True, 40 / 24, 256) == 256     # never more than the camera has
    cfg = Config.from_dict({"pruning": {"alpha": 0.5}})
    coarse = k_budget(cfg.pruning, cfg.controller, False, 256)
    fine = k_budget(cfg.pruning, cfg.controller, True, 256)
    assert (coarse.k_global, coarse.k_local, coarse.k_dynamic) == (15, 12, 10)
    assert (fine.k_global, fine.k_local, fine.k_dynamic) == (25, 20, 17)
