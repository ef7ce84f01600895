"""Three daemons, one spool: several "hosts" on one machine, polling observer on."""

from __future__ import annotations

import json

import yaml
from conftest import Daemon, fake_gpu_list, wait_for


def start_host(spool, name: str, n_gpus: int, *extra: str) -> Daemon:
    gpu_file = spool.root.parent / f"gpus-{name}.yaml"
    gpu_file.write_text(yaml.safe_dump(fake_gpu_list(n_gpus)))
    d = Daemon(spool, ["--poll", "0.2", "--kill-grace", "1", "--host", name, "--polling",
                       "--host-timeout", "2", *extra])
    d.logfile = spool.root.parent / f"daemon-{name}.out"
    orig = d.spool.gpu_file
    d.spool.gpu_file = gpu_file  # Daemon.start passes spool.gpu_file as --fake-gpus
    try:
        d.start()
    finally:
        d.spool.gpu_file = orig
    return d


def test_three_hosts_run_every_job_once_on_a_host_that_fits(spool, tmp_path):
    hosts = {"a": start_host(spool, "a", 4), "b": start_host(spool, "b", 2),
             "c": start_host(spool, "c", 0)}
    try:
        ran = tmp_path / "ran"
        ran.mkdir()
        jobs = {}
        for i in range(30):
            n = [0, 1, 2, 4][i % 4]
            jobs[spool.gsub("-n", str(n), "-c",
                            f"set -C; : > {ran}/$SPOOLD_JOB_ID || : > {ran}/dup-$SPOOLD_JOB_ID;"
                            " sleep 0.05")] = n
        for j in jobs:
            spool.wait_state(j, "done", timeout=60)
        assert not list(ran.glob("dup-*"))
        assert sorted(int(p.name) for p in ran.iterdir()) == sorted(jobs)
        gpus_of = {"a": 4, "b": 2, "c": 0}
        used = set()
        for j, n in jobs.items():
            rec = spool.record(j, "done")
            assert gpus_of[rec["host"]] >= n and len(rec["assigned_gpus"]) == n
            used.add(rec["host"])
        assert "a" in used  # the only host for 4-GPU jobs
        pinned = spool.gsub("-n", "0", "--host", "c", "--", "true")
        assert spool.wait_state(pinned, "done")["host"] == "c"
        snap = json.loads(spool.run("gstat", "--json").stdout)
        assert sorted(h["host"] for h in snap["hosts"] if h["alive"]) == ["a", "b", "c"]
        assert len(snap["gpus"]) == 6
    finally:
        for d in hosts.values():
            d.stop()


def test_kill_reaches_the_right_host_and_lost_host_jobs_fail(spool, tmp_path):
    a = start_host(spool, "a", 2)
    b = start_host(spool, "b", 2)
    try:
        go = tmp_path / "go"
        wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
        jobs = [spool.gsub("-n", "2", "-c", wait) for _ in range(2)]
        recs = [wait_for(lambda j=j: spool.where(j) == "running"
                         and spool.record(j).get("pid") and spool.record(j)) for j in jobs]
        assert {r["host"] for r in recs} == {"a", "b"}
        on_a = next(r["id"] for r in recs if r["host"] == "a")
        on_b = next(r["id"] for r in recs if r["host"] == "b")
        spool.run("gkill", str(on_a))
        rec = spool.wait_state(on_a, "cancelled")
        assert rec["host"] == "a" and rec["exit_code"] == 143
        assert spool.where(on_b) == "running"

        requeue = spool.gsub("-n", "2", "--requeue", "-c", wait)  # runs on b, after on_b?
        b.kill9()  # host b is lost: its daemon stops sending heartbeats
        rec = spool.wait_state(on_b, "failed", timeout=30)
        assert rec["reason"].startswith("host lost: b")
        assert "host lost" in a.output() or "host lost" in (
            spool.root.parent / "daemon-a.out").read_text()
        go.touch()
        assert spool.wait_state(requeue, "done", timeout=30)["host"] == "a"
    finally:
        a.stop()
        b.stop()


def test_requeue_when_host_is_lost(spool, tmp_path):
    b = start_host(spool, "b", 1)
    go = tmp_path / "go"
    j = spool.gsub("-n", "1", "--requeue", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    wait_for(lambda: spool.where(j) == "running" and spool.record(j).get("pid"))
    b.kill9()
    a = start_host(spool, "a", 1)
    try:
        go.touch()  # the old run (still alive on "b") ends; the requeued run starts on a
        rec = spool.wait_state(j, "done", timeout=30)
        assert rec["host"] == "a"
        assert "requeued" in (spool.root.parent / "daemon-a.out").read_text()
    finally:
        a.stop()
