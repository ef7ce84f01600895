"""A failing GPU is drained, not fed (issue 17): gdrain, drains that survive a
restart, the black-hole guard, health readings, lost GPUs, energy per job."""

from __future__ import annotations

import yaml
from conftest import fake_gpu_list, wait_for


def _running_on(spool, j: int) -> int:
    """The GPU job ``j`` runs on, once its record says it started."""
    def started():
        rec = spool.where(j) == "running" and spool.record(j, "running")
        return rec and rec.get("started_at") and rec["assigned_gpus"]
    return wait_for(started, what=f"job {j} to start")[0]


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
    wait_for(lambda: "black hole" in (_busy(spool).get(2) or ""), 5, "GPU 2 drained")
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


def test_an_ecc_error_drains_its_gpu_within_two_polls_and_jobs_avoid_it(spool, daemon):
    spool.gpus_seen(set())
    spool.set_gpus(fake_gpu_list(4, {1: {"ecc_uncorrected": 2}}))
    wait_for(lambda: "ECC" in (_busy(spool).get(1) or ""), 5, "GPU 1 drained for ECC errors")
    jobs = [spool.gsub("-n", "1", "-c", "echo $CUDA_VISIBLE_DEVICES") for _ in range(5)]
    assert all(spool.log(j).strip() != "1" for j in jobs if spool.wait_state(j, "done"))


def test_a_lost_gpu_ends_its_job_as_node_fail(spool, daemon, tmp_path):
    j = spool.gsub("-n", "1", "--", "sleep", "60")
    gpu = _running_on(spool, j)
    spool.set_gpus(fake_gpu_list(4, {gpu: {"lost": True}}))
    rec = spool.wait_state(j, timeout=30)
    assert rec["outcome"] == "node_fail" and "lost" in rec["reason"], rec


def test_energy_per_job_is_the_rise_of_its_gpus_counters(spool, daemon, tmp_path):
    go = tmp_path / "go"
    spool.set_gpus(fake_gpu_list(4, {i: {"energy_mj": 1_000_000} for i in range(4)}))
    wait_for(lambda: all(g.get("energy_mj") for g in yaml.safe_load(next(
        (spool.root / "state" / "hosts").glob("*.yaml")).read_text())["gpus"]),
        what="energy readings")
    j = spool.gsub("-n", "1", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    gpu = _running_on(spool, j)
    assert spool.record(j, "running")["energy_start_mj"] == {str(gpu): 1_000_000}
    spool.set_gpus(fake_gpu_list(4, {i: {"energy_mj": 1_000_000 + (5_000_000 if i == gpu
                                                                    else 9)} for i in range(4)}))
    wait_for(lambda: any(g.get("energy_mj") == 6_000_000 for g in yaml.safe_load(next(
        (spool.root / "state" / "hosts").glob("*.yaml")).read_text())["gpus"]),
        what="the new energy reading")
    go.touch()
    rec = spool.wait_state(j, "done")
    assert abs(rec["usage"]["energy_j"] - 5000) <= 50, rec["usage"]
