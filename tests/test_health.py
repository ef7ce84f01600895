"""A failing GPU is drained, not fed (issue 17): gdrain, drains that survive a
restart, the black-hole guard, health readings, lost GPUs, energy per job."""

from __future__ import annotations

import yaml
from conftest import fake_gpu_list, wait_for


def _busy(spool) -> dict:
    beat = next((spool.root / "state" / "hosts").glob("*.yaml"))
    return {g["index"]: g["busy"] for g in yaml.safe_load(beat.read_text())["gpus"]}


def test_gdrain_keeps_jobs_off_a_gpu_across_a_restart_until_undone(spool, daemon_factory):
    d = daemon_factory()
    spool.run("gdrain", "1", "--reason", "fan noise")
    wait_for(lambda: "fan noise" in (_busy(spool).get(1) or ""), what="GPU 1 drained")
    assert "drained since" in _busy(spool)[1] and "gdrain --undo 1" in _busy(spool)[1]
    assert "fan noise" in spool.run("gstat").stdout.decode()
    jobs = [spool.gsub("-n", "1", "-c", "echo $CUDA_VISIBLE_DEVICES") for _ in range(6)]
    for j in jobs:
        spool.wait_state(j, "done")
    assert {spool.log(j).strip() for j in jobs} <= {"0", "2", "3"}
    d.stop()
    daemon_factory()
    spool.gpus_seen({1})  # still drained after the restart
    wide = spool.gsub("-n", "4", "--", "true")
    assert "GPUs busy" in spool.run("gstat").stdout.decode() or spool.where(wide) == "pending"
    spool.run("gdrain", "--undo", "1")
    spool.wait_state(wide, "done")
    spool.gpus_seen(set())


def test_a_black_hole_gpu_is_drained_after_three_quick_failures(spool, daemon):
    fails_on_2 = 'sleep 0.3; [ "$CUDA_VISIBLE_DEVICES" != 2 ] || exit 1'
    jobs = [spool.gsub("-n", "1", "-c", fails_on_2) for _ in range(16)]
    states = [spool.wait_state(j, timeout=60) for j in jobs]
    on_2 = [r for r in states if r.get("assigned_gpus") == [2]]
    assert sum(r["outcome"] == "failed" for r in on_2) <= 3
    assert "black hole" in (_busy(spool).get(2) or "")
    # the rest of the queue ran on the other GPUs
    assert sum(r["outcome"] == "completed" for r in states) >= 13


def test_a_script_that_fails_everywhere_never_drains_a_gpu(spool, daemon):
    jobs = [spool.gsub("-n", "1", "-c", "exit 1") for _ in range(10)]
    for j in jobs:
        spool.wait_state(j, timeout=60)
    assert not any(_busy(spool).values())


def test_only_root_drains_a_gpu_in_a_shared_spool_and_requests_name_their_host(spool, daemon):
    # another host's request is left for that host's daemon
    (spool.root / "requests" / "drain-g0.otherhost").write_text("not ours\n")
    spool.run("gdrain", "3")
    wait_for(lambda: _busy(spool).get(3), what="GPU 3 drained")
    assert (spool.root / "requests" / "drain-g0.otherhost").exists()
    assert _busy(spool).get(0) is None
    spool.set_gpus(fake_gpu_list(4))
