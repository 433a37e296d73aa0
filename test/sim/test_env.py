"""The tabletop environment (real MuJoCo physics, EGL rendering) and the scripted expert."""
import json

import numpy as np
import pytest

pytest.importorskip("specprune_ros.sim.env", reason="mujoco and gymnasium are installed by make setup")

from specprune_ros.sim.collect import DemoError, collect, load_episode, read_index  # noqa: E402
from specprune_ros.sim.env import SEED_SPLITS, TabletopEnv, quat_to_axis_angle, seed_range  # noqa: E402
from specprune_ros.sim.expert import run_expert_episode  # noqa: E402
from specprune_ros.sim.scene import COLORS, FINGER_OPEN, OBJECTS  # noqa: E402


@pytest.fixture(scope="module")
def env():
    e = TabletopEnv()
    yield e
    e.close()


def test_gymnasium_api(env):
    from gymnasium.utils.env_checker import check_env

    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert obs["primary"].shape == obs["wrist"].shape == (224, 224, 3) and obs["primary"].dtype == np.uint8
    assert obs["primary"].std() > 10 and obs["wrist"].std() > 10          # rendered, not blank
    assert info["instruction"].startswith("put the ") and info["instruction"].split()[-1] in ("plate", "bowl")


def test_resets_are_seeded_and_deterministic(env):
    def rollout(e, seed):
        obs, info = e.reset(seed=seed)
        frames = [obs]
        for k in range(5):
            obs, *_ = e.step(np.array([0.01, -0.005, -0.01, 0, 0, 0.05, 1 if k > 2 else -1]))
            frames.append(obs)
        return info["instruction"], frames

    other = TabletopEnv()
    a_instruction, a = rollout(env, 123)
    b_instruction, b = rollout(other, 123)
    other.close()
    assert a_instruction == b_instruction
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["primary"], y["primary"])
        np.testing.assert_array_equal(x["wrist"], y["wrist"])
        np.testing.assert_array_equal(x["proprio"], y["proprio"])
    _, c = rollout(env, 124)
    assert not np.array_equal(a[0]["primary"], c[0]["primary"])


@pytest.mark.parametrize("layout", ["fixed-start", "fixed", "shuffled"])
def test_the_layout_is_libero_like_jittered_slots(layout):
    from specprune_ros.sim.env import OBJECT_JITTER, OBJECT_SLOTS, RECEPTACLE_JITTER, RECEPTACLE_SLOTS, sample_task
    rng = np.random.default_rng(0)
    tasks = [sample_task(rng, layout) for _ in range(200)]

    def nearest_slot(xy):
        return int(np.argmin([np.max(np.abs(np.subtract(xy, slot))) for slot in OBJECT_SLOTS]))

    for task in tasks:
        for name, slot in RECEPTACLE_SLOTS.items():
            assert np.all(np.abs(np.subtract(task.positions[name], slot)) <= RECEPTACLE_JITTER + 1e-12)
        slots = {shape: nearest_slot(task.positions[shape]) for shape in OBJECTS}
        assert sorted(slots.values()) == list(range(len(OBJECT_SLOTS)))       # one shape per slot
        for shape, slot in slots.items():
            assert np.all(np.abs(np.subtract(task.positions[shape], OBJECT_SLOTS[slot])) <= OBJECT_JITTER + 1e-12)
        assert sorted(task.colors.values()) == sorted(COLORS)
    cube_slots = [nearest_slot(t.positions["cube"]) for t in tasks]
    if layout != "shuffled":              # every shape at its own slot: the instruction says where
        assert set(cube_slots) == {0} and {nearest_slot(t.positions["box"]) for t in tasks} == {3}
    else:                                 # the target's slot varies: it must be found in the image
        target_slots = [nearest_slot(t.positions[t.target]) for t in tasks]
        assert np.bincount(target_slots, minlength=4).min() >= 30 and set(cube_slots) == {0, 1, 2, 3}
    offsets = np.array([np.subtract(t.positions["cube"], OBJECT_SLOTS[k]) for t, k in zip(tasks, cube_slots)])
    assert offsets.std(0).min() > 0.8 * OBJECT_JITTER / np.sqrt(3)          # uniform over the jitter square
    assert {t.target for t in tasks} == set(OBJECTS) and {t.receptacle for t in tasks} == {"plate", "bowl"}
    assert len({t.instruction for t in tasks}) >= 24                          # colours x shapes x receptacles
    with pytest.raises(ValueError, match="unknown layout 'random'"):
        sample_task(rng, "random")


def test_the_start_pose_is_fixed_only_in_the_fixed_start_layout():
    """A seed gives the same scene in "fixed" and "fixed-start" (one draw order); "fixed" jitters
    the gripper's start around its home (+-3 cm), "fixed-start" starts it at home, as LIBERO's arm."""
    from specprune_ros.sim.env import DEFAULT_LAYOUT, HOME_JITTER
    from specprune_ros.sim.scene import GRIPPER_HOME

    starts = {}
    for layout in ("fixed-start", "fixed"):
        e = TabletopEnv(render=False, layout=layout)
        starts[layout] = []
        for seed in (0, 1, 2):
            _, info = e.reset(seed=seed)
            starts[layout].append((e.gripper_position().copy(), info["instruction"],
                                   {name: e.object_position(name)[:2].copy() for name in OBJECTS}))
        e.close()
    assert DEFAULT_LAYOUT == "fixed-start"
    for (home, instruction, objects), (jittered, other_instruction, other_objects) in zip(*starts.values()):
        np.testing.assert_allclose(home, GRIPPER_HOME, atol=2e-3)          # settled under its own weight
        assert np.abs(jittered - home).max() > 2e-3 and np.abs(jittered - home).max() < HOME_JITTER + 2e-3
        assert instruction == other_instruction
        for name in OBJECTS:
            np.testing.assert_allclose(objects[name], other_objects[name], atol=1e-6)


def test_the_cli_offers_the_environment_layouts():
    """The CLI offers the env's layouts (from the package, without importing MuJoCo)."""
    from specprune_ros.cli import build_parser
    from specprune_ros.sim.env import DEFAULT_LAYOUT, LAYOUTS

    parser = build_parser()
    for command in (["sim", "collect", "out"], ["sim", "eval", "--model", "m"], ["sim", "probe", "--model", "m"],
                    ["sim", "record", "bag", "--model", "m"]):
        assert parser.parse_args(command).layout == DEFAULT_LAYOUT
        for layout in LAYOUTS:
            assert parser.parse_args(command + ["--layout", layout]).layout == layout
        with pytest.raises(SystemExit):
            parser.parse_args(command + ["--layout", "random"])


def test_seed_splits_are_disjoint():
    ranges = [set(seed_range(split)) for split in SEED_SPLITS]
    assert all(not (a & b) for i, a in enumerate(ranges) for b in ranges[i + 1:])
    with pytest.raises(ValueError, match="unknown seed split 'dev'"):
        seed_range("dev")


def test_bad_actions_are_refused(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="7 finite values"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="7 finite values"):
        env.step(np.array([np.nan] * 7))


def test_proprio_follows_libero():
    env = TabletopEnv(render=False)
    obs, _ = env.reset(seed=5)
    np.testing.assert_allclose(obs["proprio"][:3], env.gripper_position())
    np.testing.assert_allclose(obs["proprio"][3:6], 0.0, atol=1e-3)      # pointing down, no rotation yet
    assert obs["proprio"][6:] == pytest.approx([FINGER_OPEN, FINGER_OPEN], abs=2e-3)   # fingers open
    quat = np.array([np.cos(0.4), 0, 0, np.sin(0.4)])                    # 0.8 rad about z
    np.testing.assert_allclose(quat_to_axis_angle(quat), [0, 0, 0.8], atol=1e-9)


@pytest.mark.parametrize("seed", list(seed_range("test"))[:4])
def test_the_expert_succeeds(seed):
    env = TabletopEnv(render=False)
    result = run_expert_episode(env, seed)
    assert result["success"], result
    assert 20 < result["steps"] < env.max_steps


@pytest.mark.parametrize("offset", [(0, 0.07, 0), (0.06, 0, 0)])
def test_a_missed_grasp_fails(offset):
    """An expert whose grasp lands 7 cm off along the fingers' axis (or 6 cm along their length)
    closes on nothing. (Closer misses are often forgiven: the closing fingers push the object to
    the centre, or a finger landing on it wedges it.)"""
    from specprune_ros.sim import expert as expert_module

    env = TabletopEnv(render=False)
    env.reset(seed=101_000)
    robot = expert_module.ScriptedExpert(env, seed=1, noise=0.0)
    target = env.task.target
    true_position = env.object_position
    env.object_position = lambda name: true_position(name) + (np.array(offset) if name == target else 0)
    start = true_position(target)
    for _ in range(60):
        env.step(robot.act())
    assert true_position(target)[2] < start[2] + 0.02 and not env.success()


def test_collect_writes_resumable_checked_demonstrations(tmp_path):
    index = collect(tmp_path / "demos", 2, "validation")
    assert len(index["episodes"]) == 2 and index["format"] == read_index(tmp_path / "demos")["format"]
    entry = index["episodes"][0]
    episode = load_episode(tmp_path / "demos", entry)
    steps = entry["steps"]
    assert episode["primary"].shape == (steps, 224, 224, 3) and episode["actions"].shape == (steps, 7)
    assert episode["instruction"] == entry["instruction"]
    assert set(np.unique(episode["actions"][:, 6])) <= {-1.0, 1.0}
    # The privileged state (training targets, never inputs): every object's and receptacle's xy
    # per step, as the environment had them, and the objects' colours.
    env = TabletopEnv()
    env.reset(seed=entry["seed"])
    assert episode["colors"] == [env.task.colors[name] for name in OBJECTS]
    np.testing.assert_allclose(episode["privileged"][0].reshape(-1, 2)[:len(OBJECTS)],
                               [env.object_position(name)[:2] for name in OBJECTS])
    np.testing.assert_allclose(episode["privileged"][0][-4:],
                               [*env.task.positions["plate"], *env.task.positions["bowl"]])
    target = list(OBJECTS).index(env.task.target)
    lifted = episode["privileged"][-1].reshape(-1, 2)[target]        # the target moved with the gripper
    assert np.linalg.norm(lifted - env.task.positions[env.task.receptacle]) < 0.05
    env.close()
    again = collect(tmp_path / "demos", 3, "validation")                 # resumes: one more episode
    assert [e["seed"] for e in again["episodes"][:2]] == [e["seed"] for e in index["episodes"]]
    assert len(again["episodes"]) == 3

    (tmp_path / "demos" / entry["file"]).write_bytes(b"not a zip")
    with pytest.raises(DemoError, match=f"{entry['file']}: corrupt demonstration"):
        load_episode(tmp_path / "demos", entry)
    with pytest.raises(DemoError, match="listed in index.json but missing"):
        load_episode(tmp_path / "demos", {"file": "episode_999.npz"})
    with pytest.raises(DemoError, match="holds validation episodes, asked for train"):
        collect(tmp_path / "demos", 4, "train")
    with pytest.raises(DemoError, match="holds episodes of the fixed-start layout, asked for shuffled"):
        collect(tmp_path / "demos", 4, "validation", layout="shuffled")
    (tmp_path / "demos" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DemoError, match="not a specprune-sim-demos/1 index"):
        read_index(tmp_path / "demos")
    with pytest.raises(DemoError, match="not found"):
        read_index(tmp_path / "nothing")


def test_the_scattered_layout_puts_objects_anywhere_apart_and_clear_of_the_receptacles():
    from specprune_ros.sim.env import (
        BOWL_RADIUS,
        PLATE_RADIUS,
        SCATTER_AREA_HIGH,
        SCATTER_AREA_LOW,
        SCATTER_MIN_GAP,
        SCATTER_RECEPTACLE_CLEARANCE,
        layout_mean_positions,
        sample_task,
    )
    rng = np.random.default_rng(0)
    tasks = [sample_task(rng, "scattered") for _ in range(200)]
    for task in tasks:
        xy = np.array([task.positions[name] for name in OBJECTS])
        assert np.all(xy >= SCATTER_AREA_LOW) and np.all(xy <= SCATTER_AREA_HIGH)
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1)[np.triu_indices(len(OBJECTS), 1)]
        assert gaps.min() >= SCATTER_MIN_GAP
        for name in ("plate", "bowl"):
            rim = np.linalg.norm(xy - np.array(task.positions[name]), axis=-1)
            assert rim.min() >= max(PLATE_RADIUS, BOWL_RADIUS) + SCATTER_RECEPTACLE_CLEARANCE
    cube = np.array([t.positions["cube"] for t in tasks])
    assert np.ptp(cube, axis=0).min() > 0.8 * (SCATTER_AREA_HIGH - SCATTER_AREA_LOW).min()   # not a slot
    assert layout_mean_positions("scattered")["cube"] == pytest.approx((SCATTER_AREA_LOW + SCATTER_AREA_HIGH) / 2)
    assert layout_mean_positions("fixed-start")["cube"] == pytest.approx((0.40, -0.05))


def test_patch_labels_say_what_lies_under_each_patch_and_follow_a_moved_object():
    from specprune_ros.sim.env import PATCH_CLASSES
    env = TabletopEnv(layout="scattered")
    try:
        env.reset(seed=101000)
        labels = env.patch_labels()
        assert labels.shape == (2, 256) and labels.dtype == np.uint8
        assert set(range(1, 1 + len(OBJECTS))) <= set(labels[0].tolist())        # every object in the scene view
        assert PATCH_CLASSES.index("gripper") in labels[1]                       # the fingers in the wrist view
        target = PATCH_CLASSES.index(env.task.target)
        before = np.flatnonzero(labels[0] == target)
        env.move_object(env.task.target, (0.0, 0.06))                            # 6 cm sideways: ~2 patches
        after = np.flatnonzero(env.patch_labels()[0] == target)
        assert len(after) and not np.array_equal(before % 16, after % 16)
    finally:
        env.close()


def test_an_expert_blind_to_the_scattered_target_fails_where_the_real_one_succeeds():
    from specprune_ros.sim.expert import run_expert_episode
    env = TabletopEnv(layout="scattered", render=False)
    try:
        seeds = range(101000, 101004)
        assert all(run_expert_episode(env, s)["success"] for s in seeds)
        assert sum(run_expert_episode(env, s, aim="layout-mean")["success"] for s in seeds) <= 1
        with pytest.raises(ValueError, match="unknown aim 'middle'"):
            run_expert_episode(env, 101000, aim="middle")
    finally:
        env.close()
