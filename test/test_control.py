"""The control tick the node and replay share: assemble -> step -> after-step age rule -> drops."""
from types import SimpleNamespace

import numpy as np
import pytest

from specprune_ros.config import Config
from specprune_ros.control import ControlTick
from specprune_ros.model.checkpoint import load_tiny_random
from specprune_ros.policy import SpecPrunePolicy
from specprune_ros.sensing.assembly import ObservationAssembler
from specprune_ros.synthetic import INSTRUCTION, episode

STEP = episode(2)[1]


def ns(seconds):
    return int(round(seconds * 1e9))


def raw(img):
    h, w = img.shape[:2]
    return SimpleNamespace(height=h, width=w, encoding="rgb8", step=w * 3, data=img.tobytes(), is_bigendian=0)


@pytest.fixture(scope="module")
def policy():
    return SpecPrunePolicy(load_tiny_random("cpu"), Config())


def assembler_with_frame(t, primary=None):
    a = ObservationAssembler.for_node(Config.from_dict({"max_observation_age_s": 0.5, "instruction": INSTRUCTION}))
    a.add_image(0, ns(t), raw(STEP.primary if primary is None else primary))
    a.add_image(1, ns(t), raw(STEP.wrist))
    a.add_joint_state(ns(t), [], STEP.proprio)
    return a


def test_a_fresh_observation_gives_an_action(policy):
    a = assembler_with_frame(10.0)
    result = ControlTick(a, policy.step).run(ns(10.05), lambda out: ns(10.1))
    assert result.output is not None and result.output.actions.shape == (8, 7)
    assert result.age_s == pytest.approx(0.1) and not a.drops


def test_data_too_old_after_the_step_is_a_counted_stale_drop(policy):
    a = assembler_with_frame(10.0)
    result = ControlTick(a, policy.step).run(ns(10.4), lambda out: ns(10.6))   # fresh at the tick, old after
    assert result.output is None and result.dropped and result.reason.startswith("stale: the action would")
    assert a.drops["stale"] == 1


def test_a_malformed_observation_is_a_counted_drop(policy):
    a = assembler_with_frame(10.0)
    prepared = []

    def bad_motion(obs):
        prepared.append(obs.stamp_ns)
        obs.motion = np.full(6, np.nan)
    result = ControlTick(a, policy.step, bad_motion).run(ns(10.05), lambda out: ns(10.1))
    assert prepared == [ns(10.0)] and result.dropped and result.reason.startswith("malformed: motion")
    assert a.drops["malformed"] == 1


def test_nothing_new_is_not_a_drop(policy):
    a = assembler_with_frame(10.0)
    tick = ControlTick(a, policy.step)
    assert tick.run(ns(10.05), lambda out: ns(10.1)).output is not None
    again = tick.run(ns(10.15), lambda out: ns(10.2))
    assert again.output is None and not again.dropped and not a.drops
