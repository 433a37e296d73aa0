"""Closed-loop episodes of a model recorded as a rosbag2 on the node's topics (`specprune sim record`).

Per executed action period: both camera images (rgb8, 224 px), the proprio state as a
JointState (8 named positions: eef x y z, axis-angle, the two fingers; the node reads them in
message order), the executed command on ``/expert_action`` (env units), and the instruction
(latched) at each episode's start. Episodes follow each other with a 2 s gap. ``specprune replay``
runs on the result with meaningful actions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.bags import (
    TOPIC_EXPERT,
    TOPIC_INSTRUCTION,
    TOPIC_JOINTS,
    TOPIC_PRIMARY,
    TOPIC_WRIST,
    BagError,
    Recording,
    camera_message,
    command_message,
    joint_state_message,
    stamp_header,
    typestore,
    write_records,
)
from ..config import Config
from ..policy import make_policy
from .env import DEFAULT_LAYOUT, TabletopEnv, seed_range
from .rollout import run_policy_episode

PROPRIO_NAMES = ["eef_x", "eef_y", "eef_z", "eef_rx", "eef_ry", "eef_rz", "finger_left", "finger_right"]
START_NS = 1_700_000_000_000_000_000
GAP_NS = 2_000_000_000


def record(bag: str | Path, config: Config, episodes: int, split: str = "test",
           progress: Callable[[int, int], None] | None = None, layout: str = DEFAULT_LAYOUT) -> dict[str, Any]:
    bag = Path(bag)
    if bag.exists():
        raise BagError(f"{bag}: already exists (choose a new path)")
    policy = make_policy(config)
    store = typestore()
    T = store.types
    recording = Recording(topics=config.topics)
    records: list[tuple[str, int, Any]] = []
    clock = {"offset": START_NS}

    def on_step(stamp: float, obs: dict, action: np.ndarray, instruction: str) -> None:
        ns = clock["offset"] + int(round(stamp * 1e9))
        if stamp == 0.0:
            records.append((TOPIC_INSTRUCTION, ns, T["std_msgs/msg/String"](data=instruction)))
        for topic, image, frame in ((TOPIC_PRIMARY, obs["primary"], "camera_primary"),
                                    (TOPIC_WRIST, obs["wrist"], "camera_wrist")):
            records.append((topic, ns + 1_000_000, camera_message(T, recording, stamp_header(store, ns, frame), image)))
        records.append((TOPIC_JOINTS, ns, joint_state_message(T, stamp_header(store, ns, "base_link"), PROPRIO_NAMES,
                                                              obs["proprio"])))
        records.append((TOPIC_EXPERT, ns, command_message(T, action)))

    env = TabletopEnv(layout=layout)
    results = []
    try:
        for i, seed in enumerate(list(seed_range(split))[:episodes], start=1):
            result = run_policy_episode(env, policy, seed, on_step=on_step)
            results.append({"seed": seed, "success": result.success, "steps": result.steps,
                            "instruction": result.instruction})
            clock["offset"] += int(round(result.steps * 0.1e9)) + GAP_NS
            if progress:
                progress(i, episodes)
    finally:
        env.close()
    records.sort(key=lambda r: r[1])
    write_records(bag, recording, store, records)
    return {"bag": str(bag), "episodes": results, "successes": sum(r["success"] for r in results)}
