"""What each job really uses (issue 14), end to end: the real daemon, real
processes, job cgroups where the daemon (root) can make them, fake GPUs that
list processes the way NVML does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from conftest import fake_gpu_list, wait_for

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="job cgroups need a root daemon")
ALLOC = ("import sys, time; n = int(sys.argv[1]) << 20; b = bytearray(n); "
         "b[::4096] = b'x' * len(range(0, n, 4096)); time.sleep(float(sys.argv[2]))")
BURN = ("import time; t = time.process_time(); "
        "all(time.process_time() - t < 1.0 for _ in iter(int, 1))")


def _py(code: str, *args: str) -> str:
    return " ".join([sys.executable, "-c", repr(code), *args])


@ROOT
def test_usage_is_recorded_from_the_jobs_cgroup_and_its_gpu_processes(spool, daemon, tmp_path):
    pid_file, go = tmp_path / "pid", tmp_path / "go"
    cmd = (f"echo $$ > {pid_file}; {_py(ALLOC, '300', '0.2')}; {_py(BURN)}; "
           f"while [ ! -e {go} ]; do sleep 0.05; done")
    j = spool.gsub("-n", "1", "-c", cmd)
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "pid"))
    gpu = yaml.safe_load(spool.record(j, "running")["assigned_gpus"].__repr__())[0]
    spool.set_gpus(fake_gpu_list(4, {gpu: {"processes": [{"pid": pid, "used_memory": 5000}],
                                           "memory_used": 5000, "utilization": 60}}))

    def seen():
        beat = yaml.safe_load(next((spool.root / "state" / "hosts").glob("*.yaml")).read_text())
        return any(e.get("gpu_mem_mib") == 5000 for e in beat.get("jobs") or [])
    wait_for(seen, 20, "the daemon to see the job's process on its GPU")
    go.touch()
    rec = spool.wait_state(j, "done", timeout=30)
    u = rec["usage"]
    assert rec["outcome"] == "completed"
    assert u["max_rss_mib"] >= 250 and u["cpu_s"] >= 0.8, u
    assert u["gpu_mem_peak_mib"] >= 5000 and u["gpu_util_mean"] > 0, u


def test_a_process_that_is_no_job_makes_its_gpu_busy_and_is_named(spool, daemon, tmp_path):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        spool.set_gpus(fake_gpu_list(4, {1: {"processes": [{"pid": stranger.pid,
                                                             "used_memory": 10}]}}))
        spool.gpus_seen({1})
        beat = yaml.safe_load(next((spool.root / "state" / "hosts").glob("*.yaml")).read_text())
        busy = {g["index"]: g["busy"] for g in beat["gpus"]}
        assert f"pid {stranger.pid}" in busy[1] and "not a spoold job" in busy[1]
        out = spool.run("gstat").stdout.decode()
        assert f"pid {stranger.pid}" in out
        j = spool.gsub("-n", "1", "-c", "echo $CUDA_VISIBLE_DEVICES")
        spool.wait_state(j, "done")
        assert spool.log(j).strip() == "0"
    finally:
        stranger.kill()
        stranger.wait()


def test_foreign_procs_ignore_leaves_the_gpu_free(spool, daemon_factory):
    daemon_factory("--foreign-procs", "ignore")
    spool.set_gpus(fake_gpu_list(4, {1: {"processes": [{"pid": os.getpid(),
                                                        "used_memory": 10}]}}))
    spool.gpus_seen(set())


@ROOT
@pytest.mark.parametrize(("mem", "alloc", "outcome"), [("100M", "400", "out_of_memory"),
                                                        ("600M", "100", "completed")])
def test_mem_is_a_limit(spool, daemon, mem, alloc, outcome):
    j = spool.gsub("-n", "0", "--mem", mem, "-c", _py(ALLOC, alloc, "0"))
    rec = spool.wait_state(j, timeout=30)
    assert rec["outcome"] == outcome, rec
    if outcome == "out_of_memory":
        assert "out of memory" in rec["reason"] and "--mem" in rec["reason"]


def test_a_gpu_slice_used_past_its_size_ends_as_out_of_memory(spool, daemon, tmp_path):
    pid_file = tmp_path / "pid"
    j = spool.gsub("--gpu-mem", "4G", "-c", f"echo $$ > {pid_file}; sleep 60")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "pid"))
    gpu = spool.record(j, "running")["assigned_gpus"][0]
    spool.set_gpus(fake_gpu_list(4, {gpu: {"processes": [{"pid": pid, "used_memory": 8000}],
                                           "memory_used": 8000}}))
    rec = spool.wait_state(j, timeout=30)
    assert rec["outcome"] == "out_of_memory" and "GPU" in rec["reason"], rec


def test_timeouts_kills_and_exits_carry_their_outcome(spool, daemon):
    t = spool.gsub("-n", "0", "-t", "1s", "--", "sleep", "30")
    k = spool.gsub("-n", "0", "--", "sleep", "30")
    f = spool.gsub("-n", "0", "-c", "exit 3")
    wait_for(lambda: spool.where(k) == "running", what="the job to kill")
    spool.run("gkill", str(k))
    assert spool.wait_state(t, timeout=30)["outcome"] == "timeout"
    assert spool.wait_state(k, timeout=30)["outcome"] == "cancelled"
    assert spool.wait_state(f)["outcome"] == "failed"


def test_the_metrics_file_parses_and_matches_the_spool(spool, daemon):
    from prometheus_client.parser import text_string_to_metric_families

    ok = spool.gsub("-n", "0", "--", "true")
    bad = spool.gsub("-n", "0", "-c", "exit 1")
    spool.wait_state(ok)
    spool.wait_state(bad)
    path = next((spool.root / "state" / "hosts").glob("*.prom"), None) or spool.root / "x"

    def families():
        if not path.exists():
            return None
        fams = {f.name: f for f in text_string_to_metric_families(path.read_text())}
        jobs = {s.labels["state"]: s.value for s in fams["spoold_jobs"].samples}
        return fams if jobs.get("done") == 1 and jobs.get("failed") == 1 else None
    fams = wait_for(families, 20, "metrics that count the finished jobs")
    done = {s.labels.get("outcome"): s.value for s in fams["spoold_jobs_finished"].samples
            if s.name.endswith("_total")}
    assert done.get("completed") == 1 and done.get("failed") == 1
    assert {s.labels["gpu"] for s in fams["spoold_gpu_busy"].samples} == {"0", "1", "2", "3"}
