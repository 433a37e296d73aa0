"""make-bag -> replay round trips on both storages, summary vs steps.csv, and every bad input."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from specprune_ros.cli import main
from specprune_ros.common.bags import BagError, BagReader, write_synthetic_bag
from specprune_ros.config import Config
from specprune_ros.evaluation.replay import replay, run_replay

STEPS = 12


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def bag(request, tmp_path_factory):
    return write_synthetic_bag(tmp_path_factory.mktemp(request.param) / "episode", STEPS, request.param)


@pytest.fixture(scope="module")
def replayed(bag, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    summary = replay(bag, out / "report", Config(), compare=True, output_bag=str(out / "predicted"),
                     motion="recorded")
    return summary, out / "report", out / "predicted"


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_round_trip_writes_every_output(replayed):
    summary, out, _ = replayed
    for name in ("summary.json", "steps.csv", "report.html", "latency.png", "kept_tokens.png",
                 "action_deviation.png", "overlays.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("steps", "speedup_p50", "flops_ratio_mean", "fine_mode_fraction"):
        assert key in on_disk
    assert on_disk["latency_ms"]["pruned"]["p50"] > 0 and on_disk["latency_ms"]["unpruned"]["p95"] > 0
    assert on_disk["vision_tokens"]["total"] == 512 and "mean" in on_disk["action_l1_vs_unpruned"]
    html = (out / "report.html").read_text()
    assert all(f'src="{p}"' in html for p in summary["plots"])


def test_summary_agrees_with_steps_csv(replayed):
    summary, out, _ = replayed
    rows = read_rows(out / "steps.csv")
    assert summary["steps"] == len(rows) == STEPS        # one observation per camera frame at 10 Hz
    kept = [float(r["vision_tokens_kept"]) for r in rows]
    assert summary["vision_tokens"]["kept_mean"] == pytest.approx(sum(kept) / len(kept))
    assert summary["flops_ratio_mean"] == pytest.approx(sum(float(r["flops_ratio"]) for r in rows) / len(rows))
    assert summary["fine_mode_fraction"] == pytest.approx(sum(int(r["fine_mode"]) for r in rows) / len(rows))
    l1 = [float(r["action_l1_vs_unpruned"]) for r in rows]
    assert summary["action_l1_vs_unpruned"]["mean"] == pytest.approx(sum(l1) / len(l1))
    assert [int(r["step"]) for r in rows] == list(range(STEPS))
    assert rows[0]["fallback"].startswith("no prior") and all(r["fallback"] == "" for r in rows[1:])
    assert math.isnan(float(rows[0]["global_recall"])) and 0 <= float(rows[1]["global_recall"]) <= 1
    assert summary["action_l1_vs_recorded"]["steps"] == STEPS


def test_output_bag_holds_the_predictions(replayed):
    summary, out, predicted = replayed
    with BagReader(predicted) as reader:
        assert reader.topics == {"/action_chunk": "specprune_ros/msg/ActionChunk",
                                 "/pruning_stats": "specprune_ros/msg/PruningStats"}
        messages = list(reader.messages(["/action_chunk", "/pruning_stats"]))
    chunks = [m.msg for m in messages if m.topic == "/action_chunk"]
    stats = [m.msg for m in messages if m.topic == "/pruning_stats"]
    assert len(chunks) == len(stats) == STEPS
    assert chunks[3].chunk_size == 8 and chunks[3].action_dim == 7 and len(chunks[3].actions) == 56
    rows = read_rows(out / "steps.csv")
    assert [int(s.vision_tokens_kept) for s in stats] == [int(r["vision_tokens_kept"]) for r in rows]
    assert chunks[3].header.stamp == stats[3].header.stamp


def test_no_compare_leaves_out_the_unpruned_fields(bag, tmp_path):
    summary = replay(bag, tmp_path / "out", Config(), compare=False)
    assert "action_l1_vs_unpruned" not in summary and "unpruned" not in summary["latency_ms"]
    assert "speedup_p50" not in summary


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "specprune_ros", *args], capture_output=True, text=True)


def assert_one_line_error(result, message, out_dir=None):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    if out_dir is not None:
        assert not (out_dir / "summary.json").exists()


def test_missing_bag(tmp_path):
    assert_one_line_error(run_cli("replay", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "no such bag",
                          tmp_path / "o")


def test_not_a_bag(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metadata.yaml").write_text("not: a bag\n")
    assert_one_line_error(run_cli("replay", str(tmp_path / "junk"), "--out", str(tmp_path / "o")),
                          "cannot open the bag", tmp_path / "o")


def test_truncated_bag(tmp_path):
    bag = write_synthetic_bag(tmp_path / "b", 4, "mcap")
    data = next(bag.glob("*.mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    result = run_cli("replay", str(bag), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, str(bag), tmp_path / "o")


def test_unknown_storage(tmp_path):
    result = run_cli("make-bag", str(tmp_path / "b"), "--storage", "rosbag1")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    with pytest.raises(BagError, match="storage 'rosbag1' is not one of mcap, sqlite3"):
        write_synthetic_bag(tmp_path / "c", 4, "rosbag1")


def test_missing_topics(tmp_path):
    bag = write_synthetic_bag(tmp_path / "b", 4, "mcap")
    params = tmp_path / "p.yaml"
    params.write_text("action_node:\n  ros__parameters:\n    num_images: 3\n")
    result = run_cli("replay", str(bag), "--out", str(tmp_path / "o"), "--params", str(params))
    assert_one_line_error(result, "the node's image_extra input maps to /image_extra, which is not in the bag; "
                                  "its sensor_msgs/msg/Image / sensor_msgs/msg/CompressedImage topics: "
                                  "/image_primary, /image_wrist. Map it with --remap image_extra:=", tmp_path / "o")


def test_wrong_encoding_means_no_complete_observation(tmp_path):
    from rosbags.rosbag2 import Reader, Writer

    from specprune_ros.common.bags import typestore

    src = write_synthetic_bag(tmp_path / "src", 4, "mcap")
    store = typestore()
    dst = tmp_path / "yuv"
    with Reader(src) as reader, Writer(dst, version=9) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store) for c in reader.connections}
        for conn, t, raw in reader.messages():
            if conn.topic == "/image_primary":
                msg = store.deserialize_cdr(raw, conn.msgtype)
                msg.encoding = "yuv422"
                raw = store.serialize_cdr(msg, conn.msgtype)
            writer.write(conns[conn.id], t, raw)
    result = run_cli("replay", str(dst), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "no observation produced an action (dropped: malformed 4; last: malformed: "
                                  "unsupported image encoding 'yuv422'", tmp_path / "o")


def test_empty_bag(tmp_path):
    from rosbags.rosbag2 import Writer

    from specprune_ros.common.bags import typestore
    with Writer(tmp_path / "empty", version=9) as writer:
        writer.add_connection("/image_primary", "sensor_msgs/msg/Image", typestore=typestore())
    assert_one_line_error(run_cli("replay", str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
                          "holds no messages", tmp_path / "o")


def test_storage_file_path_and_existing_output(tmp_path, capsys):
    bag = write_synthetic_bag(tmp_path / "b", 4, "sqlite3")
    # A generous age limit: a step slowed by a loaded machine must not drop an observation here
    # (the after-step age rule has its own test).
    assert main(["replay", str(next(bag.glob("*.db3"))), "--out", str(tmp_path / "o"), "--no-compare",
                 "-p", "max_observation_age_s:=5.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4
    with pytest.raises(BagError, match="already exists"):
        write_synthetic_bag(bag, 4)


def test_make_bag_is_deterministic(tmp_path):
    a = write_synthetic_bag(tmp_path / "a", 5, "sqlite3", seed=3)
    b = write_synthetic_bag(tmp_path / "b", 5, "sqlite3", seed=3)
    with BagReader(a) as ra, BagReader(b) as rb:
        ma = [(m.topic, m.timestamp, bytes(getattr(m.msg, "data", b"") if m.topic.startswith("/image") else b""))
              for m in ra.messages(list(ra.topics))]
        mb = [(m.topic, m.timestamp, bytes(getattr(m.msg, "data", b"") if m.topic.startswith("/image") else b""))
              for m in rb.messages(list(rb.topics))]
    assert ma == mb and len(ma) == 1 + 5 * (2 + 5 + 1)


@pytest.mark.parametrize("control_hz", [1.25, 10.0])
def test_history_adapts_to_the_executed_motion_at_any_control_rate(tmp_path, control_hz):
    """OFT executes a whole chunk per query (1.25 Hz: 8 actions of 0.1 s), a node re-plans every
    action period (10 Hz): either way the frames in between reach the history, v is the arm's
    speed over a chunk horizon, and T moves with the motion: fast transport compares a recent
    frame, a slow grasp or release an older one."""
    from specprune_ros.common.bags import STEP_NS
    from specprune_ros.synthetic import episode

    steps, start_ns = 160, 1_700_000_000_000_000_000
    bag = write_synthetic_bag(tmp_path / "episode", steps, "mcap", start_ns=start_ns)
    run = run_replay(bag, Config.from_dict({"control_rate_hz": control_hz}), compare=False, motion="recorded")
    phases = episode(steps)
    by_phase: dict[str, list[float]] = {}
    periods = set()
    for s in run.steps:
        stats = s.pruned.stats
        held = round((s.stamp_ns - start_ns) / STEP_NS) - 1       # frames before this step (10 Hz camera)
        assert stats.history_age_s == pytest.approx(0.1 * min(stats.history_frames, held), abs=1e-6)
        periods.add(stats.history_frames)
        phase = phases[round((s.stamp_ns - start_ns) / STEP_NS) - 1].phase
        by_phase.setdefault(phase, []).append(stats.history_age_s)
    assert len(run.steps) >= steps / 10 * control_hz        # every control tick of the 16 s episode
    assert len(periods - {0}) >= 4, periods                   # 0: the first step has no history
    slow = by_phase["grasp"] + by_phase["release"]
    assert sum(by_phase["transport"]) / len(by_phase["transport"]) < sum(slow) / len(slow)


ROOT = Path(__file__).resolve().parents[2]
RIZON4 = ROOT / "config" / "rizon4.yaml"


@pytest.fixture(scope="module")
def rizon4_bag(tmp_path_factory):
    """Recorded as on the Rizon4 setup: its camera topics, headers on a device clock near 101 s."""
    topics = Config.from_yaml(RIZON4).topics
    return write_synthetic_bag(tmp_path_factory.mktemp("rizon4") / "episode", 8, "mcap", topics=topics,
                               header_clock_s=101.0)


def test_a_rizon4_recording_needs_the_topic_mapping_and_says_how(rizon4_bag, tmp_path):
    result = run_cli("replay", str(rizon4_bag), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "the node's image_primary input maps to /image_primary, which is not in the bag; "
                                  "its sensor_msgs/msg/Image / sensor_msgs/msg/CompressedImage topics: "
                                  "/camera/third_person/color/image_raw, /camera/wrist/color/image_raw. Map it with "
                                  "--remap image_primary:=/camera/third_person/color/image_raw", tmp_path / "o")


@pytest.mark.parametrize("mapping", ["params", "remap"])
def test_a_rizon4_recording_replays_on_its_header_clock(rizon4_bag, tmp_path, mapping):
    if mapping == "params":
        how = ["--params", str(RIZON4)]
    else:
        how = ["--remap", "image_primary:=/camera/third_person/color/image_raw",
               "--remap", "image_wrist:=/camera/wrist/color/image_raw", "-p", "topics.instruction:=/task/instruction"]
    result = run_cli("replay", str(rizon4_bag), "--out", str(tmp_path / "o"), "--no-compare", "--json",
                     "-p", "device:=cpu", "-p", "max_observation_age_s:=5.0", *how)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 8 and summary["time_base"] == "header"
    rows = read_rows(tmp_path / "o" / "steps.csv")
    assert 101.0 <= float(rows[0]["stamp_s"]) < 102.0          # the device clock, not the recording's


def test_zero_header_stamps_fall_back_to_the_recording_time(tmp_path):

    bag = write_synthetic_bag(tmp_path / "zero", 5, "mcap", zero_stamps=True)
    run = run_replay(bag, Config.from_dict({"max_observation_age_s": 5.0}), compare=False)
    assert run.time_base.startswith("recording") and len(run.steps) == 5


def test_start_duration_and_max_steps_choose_a_window(tmp_path):

    bag = write_synthetic_bag(tmp_path / "long", 12, "mcap")
    config = Config.from_dict({"max_observation_age_s": 5.0})
    window = run_replay(bag, config, compare=False, start_s=0.3, duration_s=0.25)
    first = 1_700_000_000_100_000_000                     # the first frame's stamp
    assert [s.stamp_ns - first for s in window.steps] == [300_000_000, 400_000_000, 500_000_000]
    assert len(run_replay(bag, config, compare=False, max_steps=2).steps) == 2


def test_the_node_s_after_step_age_rule_applies_in_replay(tmp_path):
    bag = write_synthetic_bag(tmp_path / "b", 4, "mcap")
    result = run_cli("replay", str(bag), "--out", str(tmp_path / "o"), "--no-compare",
                     "-p", "max_observation_age_s:=0.5", "--step-latency-ms", "600")   # fresh at the tick only
    assert_one_line_error(result, "no observation produced an action (dropped: stale 4; last: stale: the action "
                                  "would be based on data 0.600 s old (step 600 ms)", tmp_path / "o")
    assert_one_line_error(run_cli("replay", str(bag), "--out", str(tmp_path / "o"), "--step-latency-ms", "-1"),
                          "--step-latency-ms: must be 0 or more, got -1", tmp_path / "o")


def test_replay_steps_do_not_depend_on_the_host_s_speed(tmp_path, monkeypatch):
    """A host so busy that every step takes 10 s replays the same steps as an idle one: the age
    rule reads the recorded timeline and the declared step latency, never the measured one."""
    from specprune_ros.policy import SpecPrunePolicy

    bag = write_synthetic_bag(tmp_path / "b", 6, "mcap")
    fast = run_replay(bag, Config(), compare=False)
    step = SpecPrunePolicy.step

    def slow_step(self, obs):
        out = step(self, obs)
        out.stats.latency_ms = 10_000.0
        return out

    monkeypatch.setattr(SpecPrunePolicy, "step", slow_step)
    slow = run_replay(bag, Config(), compare=False)
    assert len(fast.steps) == len(slow.steps) == 6 and not slow.drops.get("stale")
    assert [s.stamp_ns for s in slow.steps] == [s.stamp_ns for s in fast.steps]
    declared = run_replay(bag, Config.from_dict({"max_observation_age_s": 0.5}), compare=False, step_latency_ms=450)
    assert len(declared.steps) == 6        # each tick's frame is fresh: 450 ms later it is still within 0.5 s


def test_bad_overrides_are_one_clear_error(tmp_path):
    bag = write_synthetic_bag(tmp_path / "b", 2, "mcap")
    assert_one_line_error(run_cli("replay", str(bag), "--out", str(tmp_path / "o"), "-p", "pruning.alpha:=9"),
                          "pruning.alpha = 9.0 is out of range [0.05, 4]", tmp_path / "o")
    assert_one_line_error(run_cli("replay", str(bag), "--out", str(tmp_path / "o"), "--remap", "image_primary"),
                          "--remap 'image_primary': expected NODE_TOPIC:=BAG_TOPIC", tmp_path / "o")
    assert_one_line_error(run_cli("replay", str(bag), "--out", str(tmp_path / "o"), "--remap", "camera:=/x"),
                          "unknown parameter 'topics.camera'", tmp_path / "o")


REAL_BAGS = ROOT.parent / "shared" / "real-bags"


def _expectations(directory):
    values = {}
    for line in (directory / "expect.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.mark.skipif(not REAL_BAGS.is_dir(), reason="../shared/real-bags is not beside this checkout")
@pytest.mark.parametrize("directory", sorted(p for p in REAL_BAGS.glob("*") if (p / "expect.conf").is_file())
                         if REAL_BAGS.is_dir() else [], ids=lambda p: p.name)
def test_real_recordings_written_by_ros_tools(directory, tmp_path):
    """Recordings made by real ROS 2 tools (metadata 4-9, sqlite3 / MCAP, zstd, split): each does
    what its expect.conf says; those without cameras are refused in one line naming the cause."""
    expect = _expectations(directory)
    args = ["replay", str(directory), "--out", str(tmp_path / "o"), "--no-compare"]
    if expect.get("params"):
        args += ["--params", str(directory / expect["params"])]
    args += expect.get("args", "").split()
    result = run_cli(*args)
    if expect["expect"] == "error":
        assert_one_line_error(result, "image_primary input maps to /image_primary", tmp_path / "o")
        assert "cannot be replayed" in result.stderr and "cannot open" not in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "o" / "summary.json").is_file()


@pytest.mark.parametrize("recording", [
    {"compression": "file"}, {"compression": "message", "storage": "sqlite3"}, {"split": 3},
    {"image_format": "jpeg"}, {"encoding": "mono8"}, {"encoding": "bgr8"}, {"header_clock_s": 618.0},
], ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()))
def test_what_real_recorders_write_replays(tmp_path, recording):
    """zstd (file and message mode), split files, JPEG, mono and bgr8 cameras, a device clock."""
    from specprune_ros.common.bags import Recording

    bag = write_synthetic_bag(tmp_path / "bag", 6, recording=Recording(**recording))
    if recording.get("split"):
        assert len(list(bag.glob("bag_*.mcap"))) == 3
    run = run_replay(bag, Config.from_dict({"max_observation_age_s": 5.0}), compare=False)
    assert len(run.steps) == 6 and not run.drops and run.time_base == "header"
    frames = run.steps[-1].pruned.frames
    if recording.get("encoding") == "mono8":
        assert bool((frames[:, 0] == frames[:, 1]).all())          # grey in, grey RGB out


def test_make_bag_cli_writes_a_rizon4_style_recording(tmp_path):
    result = run_cli("make-bag", str(tmp_path / "r"), "--steps", "3", "--params", str(RIZON4), "--compression",
                     "file", "--split", "2", "--image-format", "jpeg", "--header-clock", "618", "--json")
    assert result.returncode == 0, result.stderr
    with BagReader(tmp_path / "r") as reader:
        assert reader.topics["/camera/third_person/color/image_raw"] == "sensor_msgs/msg/CompressedImage"
    assert sorted(p.name for p in (tmp_path / "r").glob("*.zstd")) == ["r_0.mcap.zstd", "r_1.mcap.zstd"]


def test_a_model_without_proprio_needs_no_joint_states(tmp_path):
    from rosbags.rosbag2 import Reader, Writer

    from specprune_ros.common.bags import typestore
    from specprune_ros.model.checkpoint import write_tiny_checkpoint

    src = write_synthetic_bag(tmp_path / "src", 4, "mcap")
    cameras_only = tmp_path / "cameras_only"                         # the same recording, no /joint_states
    with Reader(src) as reader, Writer(cameras_only, version=9) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=typestore())
                 for c in reader.connections if c.topic != "/joint_states"}
        for conn, timestamp, raw in reader.messages():
            if conn.id in conns:
                writer.write(conns[conn.id], timestamp, raw)
    no_proprio = write_tiny_checkpoint(tmp_path / "ckpt", use_proprio=False)
    config = Config.from_dict({"max_observation_age_s": 5.0, "model_path": str(no_proprio), "device": "cpu"})
    run = run_replay(cameras_only, config, compare=False)
    assert len(run.steps) == 4 and not run.drops
    with pytest.raises(BagError, match=r"joint_states input maps to /joint_states, which is not in the bag.*"
                                       r"\(the model uses proprio\)"):
        run_replay(cameras_only, config.replace(model_path="tiny-random"), compare=False)


def test_the_table_and_the_report_say_what_a_reader_must_know_first(replayed):
    from specprune_ros.evaluation.report import replay_warnings

    summary, report, _ = replayed
    assert summary["age_rule"] == {"timeline": "recorded", "step_latency_ms": 0.0, "max_observation_age_s": 0.5}
    assert set(summary["host"]) == {"cpus", "load_avg_1m", "loaded"}
    assert "model tiny-random: random weights" in (report / "report.html").read_text()
    busy = {**summary, "model": "models/x", "dropped_observations": {"stale": 3, "incomplete": 0},
            "host": {"cpus": 2, "load_avg_1m": 5.1, "loaded": True}}
    assert replay_warnings(busy) == [
        "dropped observations: stale 3 (no step for them)",
        "busy host (load 5.1 on 2 CPUs): latencies and the speed-up are not comparable with an idle host's"]
    assert replay_warnings({**busy, "dropped_observations": {}, "host": {**busy["host"], "loaded": False}}) == []
