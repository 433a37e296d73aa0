"""`specprune node-soak`, a short run: the node under a synthetic robot over real DDS, three processes."""
import pytest

pytest.importorskip("rclpy")

from specprune_ros.tools.node_soak import soak  # noqa: E402


def test_a_short_soak_reports_rate_memory_drops_and_a_clean_exit(tmp_path):
    r = soak(minutes=0.25, camera_hz=15.0, size=(160, 120), encoding="bgr8", control_hz=5.0,
             plot=str(tmp_path / "soak.png"))
    assert r["chunks"] >= 30 and 3.0 <= r["chunks_per_s"] <= 5.5           # 5 Hz control on a 2-core CPU
    assert r["dropped_share"] <= 0.1, r["dropped"]
    assert r["rss_mb_first"] > 50 and r["rss_mb_last"] < 2 * r["rss_mb_first"]
    assert len(r["per_minute"]) == 1 and r["per_minute"][0]["chunk_age_ms_p50"] > 0
    assert r["exit"]["code"] == 0 and r["exit"]["seconds"] < 10 and r["exit"]["error_lines"] == []
    assert (tmp_path / "soak.png").stat().st_size > 1000
