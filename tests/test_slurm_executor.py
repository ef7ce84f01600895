"""`spoold --executor slurm` against a real one-node SLURM: the core scenarios of
the local executor, unchanged. Set up by contrib/slurm/setup-single-node.sh
(CI runs it as root); skipped, with the reason, where SLURM does not answer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, wait_for

from spoold import slurm

pytestmark = pytest.mark.skipif(not slurm.available(), reason=(
    "no SLURM controller answers (`scontrol ping`); run `sh contrib/slurm/"
    "setup-single-node.sh` as root for a one-node SLURM"))


@pytest.fixture
def bridge(daemon_factory, spool):
    yield daemon_factory("--executor", "slurm")
    # A failed test must not leave SLURM jobs holding the one node for the next.
    out = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True).stdout
    # (an array's waiting tasks are listed as 123_[2-3%1]: scancel takes 123)
    mine = [line.split()[0].split("_[")[0] for line in out.splitlines()
            if str(spool.root) in line]
    if mine:
        subprocess.run(["scancel", *mine], check=False)


def test_submit_gpus_exit_codes(spool, bridge, tmp_path):
    two = spool.gsub("-n", "2", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES id=$SPOOLD_JOB_ID")
    bad = spool.gsub("-n", "0", "-c", "exit 3")
    sig = spool.gsub("-n", "0", "-c", "kill -9 $$")
    rec = spool.wait_state(two, "done", timeout=60)
    assert rec["slurm_id"] and rec["executor"] == "slurm"
    gpus = spool.log(two).split()[0].split("=")[1].split(",")
    assert len(gpus) == 2 and len(set(gpus)) == 2
    assert f"id={two}" in spool.log(two)
    assert spool.wait_state(bad, "failed", timeout=60)["exit_code"] == 3
    assert spool.wait_state(sig, "failed", timeout=60)["exit_code"] == 137


def test_cancel_kill_and_dependencies(spool, bridge, tmp_path):
    go = tmp_path / "go"
    first = spool.gsub("-n", "0", "-c", f"while [ ! -e {go} ]; do sleep 0.1; done")
    after = spool.gsub("-n", "0", "--after", str(first), "-c", f"echo after > {tmp_path}/a")
    doomed = spool.gsub("-n", "0", "--after", str(after), "--", "true")
    wait_for(lambda: spool.where(doomed) == "running" and spool.record(doomed).get("slurm_id"),
             30, "all handed to SLURM")
    spool.run("gcancel", str(doomed), check=False)  # running/ = handed to SLURM: gkill it
    spool.run("gkill", str(doomed))
    # queued in SLURM behind its dependency: gcancel already cancels it
    assert spool.wait_state(doomed, "cancelled", timeout=60)["reason"].startswith(
        ("cancel requested before it started", "killed"))
    go.touch()
    spool.wait_state(first, "done", timeout=60)
    spool.wait_state(after, "done", timeout=60)
    assert (tmp_path / "a").read_text() == "after\n"
    failing = spool.gsub("-n", "0", "-c", "sleep 1; exit 1")
    dependent = spool.gsub("-n", "0", "--after", str(failing), "--", "true")
    spool.wait_state(failing, "failed", timeout=60)
    assert spool.wait_state(dependent, "cancelled", timeout=60)["reason"]
    marker = tmp_path / "started"
    runner_ = spool.gsub("-n", "0", "-c", f"touch {marker}; sleep 300")
    wait_for(marker.exists, 60, "the SLURM job to run")
    spool.run("gkill", str(runner_))
    rec = spool.wait_state(runner_, "cancelled", timeout=60)
    assert rec["exit_code"] in (143, 137) and rec["reason"].startswith("killed on request")


def test_priority_order(spool, daemon_factory, tmp_path):
    order = tmp_path / "order"
    # Submitted while no daemon runs; SLURM then sees them in the spool's order.
    ids = {name: spool.gsub("-n", "4", "-p", str(prio), "-c", f"echo {name} >> {order}")
           for name, prio in (("low", 50), ("high", 1), ("mid", 20))}
    daemon_factory("--executor", "slurm")
    for j in ids.values():
        spool.wait_state(j, "done", timeout=90)
    assert order.read_text().split() == ["high", "mid", "low"]
    hist = json.loads(spool.run("ghist", "--json").stdout)
    assert len(hist) == 3


# ---- issue 18: SLURM's truth in the spool ---------------------------------------------
SETUP = REPO / "contrib" / "slurm" / "setup-single-node.sh"


def min_job_age() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    m = re.search(r"^MinJobAge\s*=\s*(\d+)", out, re.M)
    return int(m[1]) if m else 300


def set_min_job_age(seconds: int) -> None:
    p = subprocess.run(["sh", str(SETUP)], env={**os.environ, "SPOOLD_SLURM_NO_INSTALL": "1",
                                                 "SPOOLD_SLURM_MIN_JOB_AGE": str(seconds)},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


@pytest.fixture
def short_min_job_age():
    """SLURM forgets ended jobs after 2 s (slurmctld purges once a minute or so),
    set back afterwards. Needs root and a slurm.conf the setup script wrote."""
    if os.geteuid() != 0 or "Written by spoold" not in Path("/etc/slurm/slurm.conf").read_text():
        pytest.skip("needs root and the cluster of contrib/slurm/setup-single-node.sh")
    before = min_job_age()
    set_min_job_age(2)
    yield
    set_min_job_age(before)


def slurm_knows(sid: str) -> bool:
    p = subprocess.run(["scontrol", "show", "job", sid], capture_output=True, text=True)
    return p.returncode == 0 and f"JobId={sid} " in p.stdout


def test_success_while_the_bridge_is_down_and_slurm_forgot(spool, daemon_factory, tmp_path,
                                                           short_min_job_age):
    """Done when (issue 18): done/ with exit 0, its real start and end, dependents run."""
    go, ran = tmp_path / "go", tmp_path / "ran"
    first = spool.gsub("-n", "0", "-c", f"touch {ran}; while [ ! -e {go} ]; do sleep 0.1; done;"
                                        " echo ok")
    after = spool.gsub("-n", "0", "--after", str(first), "-c", f"echo after > {tmp_path}/a")
    bridge = daemon_factory("--executor", "slurm")
    wait_for(lambda: spool.where(after) == "running" and spool.record(after).get("slurm_id"),
             60, "both handed to SLURM")
    wait_for(ran.exists, 60, "the first job to run")
    sid = spool.record(first)["slurm_id"]
    bridge.stop()
    t_go = time.time()
    go.touch()
    wait_for(lambda: not slurm_knows(sid), 150, "SLURM to purge the job", interval=1)
    t_purged = time.time()
    assert spool.where(first) == "running"  # no one has looked yet
    daemon_factory("--executor", "slurm")
    rec = spool.wait_state(first, "done", timeout=60)
    assert rec["exit_code"] == 0 and rec["outcome"] == "completed"
    assert rec["slurm_queued_at"] - 1 <= rec["started_at"] <= t_go  # ran before go, not at sbatch
    assert t_go - 1 <= rec["ended_at"] <= t_purged  # when it ended, not when the bridge looked
    assert spool.wait_state(after, "done", timeout=60)["exit_code"] == 0
    assert (tmp_path / "a").read_text() == "after\n"
    assert spool.log(first).strip() == "ok"


def _queued_behind_a_hog(spool, tmp_path):
    """A job holding all 4 GPUs until ``go`` exists, and a 1-GPU job behind it
    that would touch ``marker`` if it ever ran: (go, marker, hog, queued)."""
    go, hog_ran, marker = tmp_path / "go", tmp_path / "hog", tmp_path / "ran"
    hog = spool.gsub("-n", "4", "-c", f"touch {hog_ran}; while [ ! -e {go} ]; do sleep 0.1; done")
    wait_for(hog_ran.exists, 60, "the job holding all GPUs to run")
    return go, marker, hog, spool.gsub("-n", "1", "-c", f"touch {marker}")


def test_queued_job_is_not_running_and_gkill_cancels_it_before_it_runs(spool, bridge, tmp_path):
    go, marker, hog, queued = _queued_behind_a_hog(spool, tmp_path)
    wait_for(lambda: spool.where(queued) == "running"
             and spool.record(queued).get("slurm_reason"), 60, "SLURM's pending reason")
    rec = spool.record(queued)
    assert rec["slurm_id"] and rec["slurm_state"] == "PENDING"
    assert "Resources" in rec["slurm_reason"] or "Priority" in rec["slurm_reason"]
    assert not rec.get("assigned_gpus")
    run = spool.record(hog)
    assert run["slurm_state"] == "RUNNING" and len(run["assigned_gpus"]) == 4
    spool.run("gkill", str(queued))
    rec = spool.wait_state(queued, "cancelled", timeout=60)
    go.touch()
    spool.wait_state(hog, "done", timeout=60)
    assert not marker.exists() and rec["outcome"] == "cancelled"


def test_gcancel_of_a_job_slurm_has_not_started(spool, bridge, tmp_path):
    go, marker, hog, queued = _queued_behind_a_hog(spool, tmp_path)
    wait_for(lambda: spool.where(queued) == "running"
             and spool.record(queued).get("slurm_state") == "PENDING", 60, "handed to SLURM")
    spool.run("gcancel", str(queued), check=False)
    try:
        rec = spool.wait_state(queued, "cancelled", timeout=15)
    finally:
        go.touch()
    spool.wait_state(hog, "done", timeout=60)
    assert not marker.exists() and rec["outcome"] == "cancelled"


def test_submit_dir_time_rounding_and_gpus_of_a_short_job(spool, bridge, tmp_path):
    cwd = tmp_path / "work dir"
    cwd.mkdir()
    j = spool.gsub("-n", "2", "-t", "30s", "-c",
                   'echo "dir=$SLURM_SUBMIT_DIR|gpus=$CUDA_VISIBLE_DEVICES"', cwd=cwd)
    rec = spool.wait_state(j, "done", timeout=60)
    line = spool.log(j).strip()
    assert line.startswith(f"dir={cwd}|gpus=")
    gpus = [int(g) for g in line.split("gpus=")[1].split(",")]
    assert rec["assigned_gpus"] == gpus  # even though no poll saw it running
    assert rec["time_limit"] == 60  # what SLURM enforces, as SLURM rounds it
    assert rec["started_at"] <= rec["ended_at"] < rec["started_at"] + 30
    assert not (spool.root / "state" / "slurm" / str(j)).exists()  # released


def test_slurm_options_from_gsub_reach_sbatch(spool, bridge):
    """gsub --partition/--qos ... reach sbatch: a job for the real partition
    runs there; one for a partition SLURM does not have fails with sbatch's
    message and never runs."""
    ok = spool.gsub("-n", "0", "--partition", "spoold", "-c", "echo p=$SLURM_JOB_PARTITION")
    bad = spool.gsub("-n", "0", "--partition", "nosuchpart", "--", "true")
    rec = spool.wait_state(ok, "done", timeout=60)
    assert rec["slurm"] == {"partition": "spoold"} and "p=spoold" in spool.log(ok)
    rec = spool.wait_state(bad, "failed", timeout=60)
    assert "sbatch refused" in rec["reason"] and "partition" in rec["reason"].lower()
    assert "slurm_id" not in rec


def test_the_local_executor_refuses_slurm_options(spool, daemon):
    """Without --executor slurm a job with slurm: options fails at launch,
    with the reason, and never runs."""
    job = spool.gsub("-n", "0", "--account", "proj", "-c", "echo ran")
    rec = spool.wait_state(job, "failed", timeout=30)
    assert "need spoold --executor slurm" in rec["reason"] and "ran" not in spool.log(job)


def squeue_nice(sid: str) -> int:
    return int(subprocess.run(["squeue", "-h", "-j", sid, "-o", "%y"], capture_output=True,
                              text=True, check=True).stdout.strip())


def test_gprio_renices_a_job_slurm_still_queues(spool, bridge, tmp_path):
    """A job handed to SLURM but queued behind busy GPUs: gprio writes
    requests/prio-ID, the bridge renices it in SLURM (squeue's nice) and its
    record says the new priority. Once a job runs, gprio refuses it."""
    go = tmp_path / "go"
    busy = spool.gsub("-n", "4", "-c", f"while [ ! -e {go} ]; do sleep 0.1; done")
    queued = spool.gsub("-n", "4", "-p", "30", "--", "true")
    rec = wait_for(lambda: spool.where(queued) == "running" and spool.record(queued).get(
        "slurm_state") == "PENDING" and spool.record(queued), 30, "the job queued in SLURM")
    assert squeue_nice(rec["slurm_id"]) == 30 * slurm.NICE_PER_PRIORITY
    spool.run("gprio", str(queued), "70")
    wait_for(lambda: squeue_nice(rec["slurm_id"]) == 70 * slurm.NICE_PER_PRIORITY, 20,
             "SLURM's nice to follow gprio")
    wait_for(lambda: spool.record(queued).get("priority") == 70, 20, "the record to follow")
    assert not (spool.root / "requests" / f"prio-{queued}").exists()
    wait_for(lambda: spool.record(busy).get("slurm_state") == "RUNNING", 30, "the first to run")
    p = spool.run("gprio", str(busy), "5", check=False)
    assert (p.returncode, p.stderr.decode()) == (
        1, f"gprio: job {busy} is running: only pending jobs can be re-prioritised\n")
    go.touch()
    assert spool.wait_state(queued, "done", timeout=60)["priority"] == 70


def test_details_cancel_and_renice_of_real_array_tasks(spool, bridge):
    """The ids SLURM arrays will need (docs/slurm.md, Open): 123_4 is known
    to scontrol while it runs and while it still waits inside the array, can
    be reniced and cancelled on its own."""
    p = subprocess.run(["sbatch", "--parsable", "--array=1-3%1", "--output=/dev/null",
                        f"--comment={slurm.comment(1, spool.root)}", "--nodes=1", "--ntasks=1"],
                       input=b"#!/bin/sh\nsleep 30\n", capture_output=True, check=True)
    aid = p.stdout.decode().strip().split(";")[0]
    ids = [f"{aid}_{t}" for t in (1, 2, 3)]
    got = wait_for(lambda: (d := slurm.details(ids))[ids[0]].state == "running" and d, 30,
                   "the first task to run")
    assert [got[i].state for i in ids[1:]] == ["pending", "pending"]
    slurm.renice(ids[2], 7)
    assert "Nice=700000" in subprocess.run(["scontrol", "--oneliner", "show", "job", ids[2]],
                                           capture_output=True, text=True).stdout
    slurm.cancel(ids[1])
    wait_for(lambda: slurm.details([ids[1]])[ids[1]].state == "cancelled", 30,
             "task 2 cancelled on its own")
    assert slurm.details([ids[2]])[ids[2]].state == "pending"
    slurm.cancel(aid)
