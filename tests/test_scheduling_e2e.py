"""Scheduling through the real daemon: limits, CPUs, slices, backfill."""

from __future__ import annotations

import json
import os

import pytest
from conftest import fake_gpu_list, wait_for


def test_time_limit_kills_and_records_reason(spool, daemon, tmp_path):
    j = spool.gsub("-n", "1", "-t", "1s", "-c", "trap '' TERM; sleep 60")
    rec = spool.wait_state(j, "failed", timeout=30)
    assert rec["reason"].startswith("time limit (1s) exceeded")
    assert rec["exit_code"] == 137  # ignored TERM: KILL after the 2 s grace
    assert rec["time_limit"] == 1
    assert rec["ended_at"] - rec["started_at"] < 20


def test_jobs_whose_cpus_exceed_the_total_never_overlap(spool, daemon_factory, tmp_path):
    daemon_factory("--cpus", "2")
    log = tmp_path / "spans"
    body = (f"echo start $SPOOLD_JOB_ID $(date +%s.%N) >> {log}; sleep 0.5; "
            f"echo end $SPOOLD_JOB_ID $(date +%s.%N) >> {log}")
    a = spool.gsub("-n", "0", "--cpus", "2", "-c", body)
    b = spool.gsub("-n", "0", "--cpus", "1", "-c", body)
    ra, rb = spool.wait_state(a, "done"), spool.wait_state(b, "done")
    assert ra["assigned_cpus"] == [0, 1] and len(rb["assigned_cpus"]) == 1
    spans = {}
    for line in log.read_text().split("\n"):
        if line:
            kind, job, t = line.split()
            spans.setdefault(int(job), {})[kind] = float(t)
    first, second = sorted(spans.values(), key=lambda s: s["start"])
    assert first["end"] <= second["start"]


def test_job_is_pinned_to_its_cpus(spool, daemon_factory, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to tell pinned from unpinned")
    daemon_factory()
    out = tmp_path / "mask"
    j = spool.gsub("-n", "0", "--cpus", "1", "-c",
                   f"grep Cpus_allowed_list /proc/self/status > {out}")
    rec = spool.wait_state(j, "done")
    assert out.read_text().split()[-1] == str(rec["assigned_cpus"][0])


def test_gpu_mem_slices_are_packed_and_kept_off_whole_gpu_jobs(spool, daemon, tmp_path):
    go = tmp_path / "go"
    wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
    s1 = spool.gsub("--gpu-mem", "10G", "-c", wait)
    s2 = spool.gsub("--gpu-mem", "10G", "-c", wait)
    whole = spool.gsub("-n", "3", "-c", wait)
    blocked = spool.gsub("-n", "1", "-c", wait)
    recs = [wait_for(lambda j=j: spool.where(j) == "running" and spool.record(j).get("pid")
                     and spool.record(j)) for j in (s1, s2, whole)]
    assert recs[0]["assigned_gpus"] == recs[1]["assigned_gpus"]  # packed on one GPU
    assert not set(recs[0]["assigned_gpus"]) & set(recs[2]["assigned_gpus"])
    assert spool.where(blocked) == "pending"
    go.touch()
    for j in (s1, s2, whole, blocked):
        spool.wait_state(j, "done")


def test_externally_loaded_gpu_is_skipped_job_gets_others(spool, daemon):
    spool.set_gpus(fake_gpu_list(4, {1: {"utilization": 95}, 2: {"error": "Unknown Error"}}))
    spool.gpus_seen({1, 2})
    j = spool.gsub("-n", "2", "--", "true")
    assert spool.wait_state(j, "done")["assigned_gpus"] == [0, 3]
    snap = spool.run("gstat").stdout.decode()
    assert "Unknown Error" in snap and "utilization 95%" in snap


def test_small_jobs_do_not_starve_a_wide_one(spool, daemon, tmp_path):
    """Three GPUs busy; a 4-GPU job waits; later 1-GPU jobs without a time limit
    must not take the free GPU it has reserved."""
    go = tmp_path / "go"
    wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
    holders = [spool.gsub("-n", "1", "-c", wait) for _ in range(3)]
    for j in holders:
        spool.wait_state(j, "running")
    wide = spool.gsub("-n", "4", "--", "true")
    small = spool.gsub("-n", "1", "--", "true")
    pending = {p["id"]: p for p in json.loads(spool.run("gstat", "--json").stdout)["pending"]}
    assert pending[small]["reason"] == f"resources reserved for job {wide}"
    assert spool.where(small) == "pending"
    # A job that provably ends in time may backfill: nothing here has a limit,
    # so the reservation's start is unknown and nothing may use its GPU.
    go.touch()
    w = spool.wait_state(wide, "done")
    s = spool.wait_state(small, "done")
    assert w["started_at"] <= s["started_at"]
