"""Spool arrays as SLURM arrays (spoold/slurmarray.py, bridge.launch_group).

Unit tests answer for SLURM with a fake ``run`` and run the array's batch
script for real under sh; the live tests drive ``spoold --executor slurm``
against the one-node SLURM of contrib/slurm/setup-single-node.sh and are
skipped, with the reason, without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from test_slurm_bridge import DUMP, HOSTILE_ENV, SHELLS, FakeRun, decode, expected_env, make_job

from spoold import slurm, slurmarray
from spoold.scheduler import Request, Running, gate_only


def element(job_id: int, index: int, tmp_path, limit: int | None = 2, **data):
    job = make_job({"argv": ["true"], "cwd": str(tmp_path), "array_id": 7, "array_index": index,
                    **({"array_limit": limit} if limit else {}), **data}, job_id)
    return slurmarray.Element(job, str(tmp_path / f"{job_id} 'log'"), [],
                              tmp_path / f"status-{job_id}")


# ---- sbatch's argv -----------------------------------------------------------------------
def test_array_argv_is_the_single_jobs_with_the_array_its_comment_and_no_log(tmp_path):
    elems = [element(7 + i, i, tmp_path, gpus=1, time_limit=90) for i in (1, 2, 3, 5)]
    argv = slurmarray.sbatch_argv(elems, "/sp")
    single = slurm.sbatch_argv(elems[0].job, "/sp", "/dev/null", [])
    assert argv[:2] == ["sbatch", "--parsable"] and argv[2] == "--array=1-3,5%2"
    assert "--comment=spoold:array7:/sp" in argv and "--output=/dev/null" in argv
    assert [w for w in argv if not w.startswith(("--array=", "--comment="))] == \
        [w for w in single if not w.startswith("--comment=")]
    assert "--gres=gpu:1" in argv and "--time=0-00:02:00" in argv
    no_limit = [element(8, 0, tmp_path, limit=None)]
    assert "--array=0" in slurmarray.sbatch_argv(no_limit, "/sp")


def test_dependencies_and_options_of_an_array_go_to_sbatch_once(tmp_path):
    e = element(8, 1, tmp_path, slurm={"partition": "gpu"})
    e = e._replace(deps=["41", "40_3"])
    argv = slurmarray.sbatch_argv([e], "/sp")
    assert "--dependency=afterok:41:40_3" in argv and "--partition=gpu" in argv


def test_split_keeps_what_sbatch_shares_equal_and_never_repeats_an_index(tmp_path):
    a, b = element(8, 1, tmp_path), element(9, 2, tmp_path)
    bigger = element(10, 3, tmp_path, gpus=2)  # the user edited this element's file
    again = element(11, 2, tmp_path)  # an index twice (hand-written files)
    other_cwd = element(12, 4, tmp_path, cwd="/")
    c = element(13, 5, tmp_path)
    groups = slurmarray.split([a, b, bigger, again, other_cwd, c], "/sp")
    assert [[e.job.id for e in g] for g in groups] == [[8, 9, 13], [10], [11], [12]]


@pytest.mark.parametrize("indexes,want", [([1], "1"), ([1, 2, 3], "1-3"), ([0, 2, 3, 7], "0,2-3,7"),
                                          ([4, 5, 9, 10, 11], "4-5,9-11")])
def test_ranges(indexes, want):
    assert slurmarray.ranges(indexes) == want


def test_submit_runs_sbatch_once_with_the_script_on_stdin(tmp_path):
    run = FakeRun({"sbatch": (0, "500\n", "")})
    elems = [element(8, 1, tmp_path), element(9, 2, tmp_path)]
    assert slurmarray.submit(elems, "/sp", run=run) == "500"
    (argv, kw), = run.calls
    assert argv == slurmarray.sbatch_argv(elems, "/sp") and kw["workdir"] == str(tmp_path)
    assert kw["input"] == slurmarray.batch_script(elems, "/sp")


def test_find_maps_each_task_to_its_element_by_comment_and_index():
    out = ("500_1 spoold:array7:/sp\n500_2 spoold:array7:/sp\n501_2 spoold:array8:/sp\n"
           "502_2 spoold:array7:/elsewhere\n503_12 spoold:array7:/sp\n")
    run = FakeRun({"squeue": (0, out, "")})
    assert slurmarray.find(7, 2, "/sp", "alice", run=run) == ["500_2"]
    assert slurmarray.find(7, 1, "/sp", "alice", run=run) == ["500_1"]
    assert slurmarray.find(7, 3, "/sp", "alice", run=run) == []
    argv, _ = run.calls[0]
    assert "--user=alice" in argv and "--array" in argv  # one line per task, this user's


def test_max_array_size_from_the_config():
    run = FakeRun({"scontrol": (0, "MaxArraySize            = 40\nMaxJobCount = 9\n", "")})
    assert slurmarray.max_array_size(run) == 40
    assert slurmarray.max_array_size(FakeRun({})) == 1001


def test_the_gate_leaves_percent_n_to_slurm():
    """gate_only without throttle_arrays lets every startable element of a
    %1 array through at once (SLURM applies %1 to them); with it, one. An
    element that comes later, while others of its array are still handed to
    SLURM, waits for them (SLURM throttles each SLURM array apart); one of
    another user's array or of an array without %N does not."""
    queue = [Request(id=i, array_id=7, array_limit=1, owner=5) for i in (8, 9, 10)]
    d = gate_only(queue, [], "h", {}, False, throttle_arrays=False)
    assert [s.id for s in d.start] == [8, 9, 10]
    assert [s.id for s in gate_only(queue, [], "h", {}, False).start] == [8]
    running = [Running(id=7, array_id=7, owner=5)]
    later = [*queue, Request(id=11, array_id=7, owner=6, array_limit=1),
             Request(id=12, array_id=12, owner=5)]
    d = gate_only(later, running, "h", {}, False, throttle_arrays=False)
    assert [s.id for s in d.start] == [11, 12]
    assert "%1 holds per SLURM array" in d.wait[8] and set(d.wait) == {8, 9, 10}


# ---- the script, run for real --------------------------------------------------------------
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_array_script_runs_each_task_as_its_own_element(tmp_path, shell):
    """Task I runs element I only: its argv, env, cwd, log and status file;
    a task with no element fails."""
    elems = []
    for job_id, index in ((20, 3), (21, 4)):
        cwd = tmp_path / f"cwd {index} '$x'\n"
        cwd.mkdir()
        job = make_job({"argv": [sys.executable, "-c", DUMP, str(index)], "cwd": str(cwd),
                        "env": {**HOSTILE_ENV, "N": str(index)}, "array_id": 20,
                        "array_index": index}, job_id)
        log = tmp_path / f"log {index} \"'\n"
        log.touch()
        (tmp_path / f"status{index}").touch()
        elems.append(slurmarray.Element(job, str(log), [], tmp_path / f"status{index}"))
    script = tmp_path / "batch"
    script.write_bytes(slurmarray.batch_script(elems, tmp_path))
    assert b"\r\n" not in script.read_bytes()
    for e in elems:
        slurm_env = {"SLURM_JOB_ID": "60", "SLURM_ARRAY_JOB_ID": "59",
                     "SLURM_ARRAY_TASK_ID": str(e.index), "PATH": "/usr/bin:/bin"}
        p = subprocess.run([*shell, str(script)], env=slurm_env, cwd="/", capture_output=True,
                           timeout=30)
        assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")  # all in its own log
        dump = json.loads(Path(e.log_path).read_bytes())
        argv, env = decode(dump)
        assert argv[-1] == str(e.index).encode() and dump["cwd"] == e.job.get("cwd")
        assert env == expected_env(e.job, tmp_path, "", slurm_env) | {
            b"SPOOLD_ARRAY_INDEX": str(e.index).encode()}
        assert slurm.read_status(e.status).code == 0
    assert Path(elems[0].log_path).read_bytes().count(b"\n") == 1  # ran once, by task 3
    p = subprocess.run([*shell, str(script)], env={"SLURM_ARRAY_TASK_ID": "5"},
                       capture_output=True, timeout=30)
    assert p.returncode == 1 and b"no job for array task 5" in p.stderr


# ---- against a real SLURM, through the daemon ------------------------------------------------
live = pytest.mark.skipif(not slurm.available(), reason=(
    "no SLURM controller answers (`scontrol ping`); run `sh contrib/slurm/"
    "setup-single-node.sh` as root for a one-node SLURM"))


@pytest.fixture
def bridge_after(daemon_factory, spool):
    """Starts the bridge when called (jobs submitted before it are seen in
    one pass: one SLURM array); scancels what a failed test left behind."""
    yield lambda: daemon_factory("--executor", "slurm")
    out = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True).stdout
    mine = [line.split()[0].split("_")[0] for line in out.splitlines()
            if str(spool.root) in line]
    if mine:
        subprocess.run(["scancel", *mine], check=False)


def gsub_array(spool, *args: str) -> list[int]:
    return [int(i) for i in spool.run("gsub", *args).stdout.split()]


def handed(spool, ids: list[int]) -> dict[int, dict]:
    """Their records once all were handed to SLURM (running/, or already ended)."""
    return wait_for(lambda: all(spool.where(i) not in (None, "pending") and
                                spool.record(i).get("slurm_id") for i in ids)
                    and {i: spool.record(i) for i in ids}, 30, f"jobs {ids} handed to SLURM")


@live
def test_array_elements_see_their_task_ids_in_one_slurm_array(spool, bridge_after):
    """--array 1-3: one SLURM array; element I sees SLURM_ARRAY_TASK_ID I
    and SPOOLD_ARRAY_INDEX I, the same SLURM_ARRAY_JOB_ID, its own spool id
    and log, and records its own result."""
    ids = gsub_array(spool, "--array", "1-3", "-n", "0", "-c",
                     'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SPOOLD_ARRAY_INDEX '
                     '$SPOOLD_JOB_ID"; exit $((SPOOLD_ARRAY_INDEX - 1))')
    bridge_after()
    recs = {i: spool.wait_state(i, timeout=60) for i in ids}
    lines = {i: spool.log(i).split() for i in ids}
    array_job = lines[ids[0]][0]
    for n, i in enumerate(ids, 1):
        assert lines[i] == [array_job, str(n), str(n), str(i)], spool.log(i)
        assert recs[i]["slurm_id"] == f"{array_job}_{n}"
        assert recs[i].get("exit_code") == n - 1
    assert [spool.where(i) for i in ids] == ["done", "failed", "failed"]
    assert not any((spool.root / "state" / "slurm" / str(i)).exists() for i in ids)


@live
def test_percent_n_is_applied_by_slurm(spool, bridge_after):
    """--array 1-4%1: all four are handed to SLURM at once (no local throttle:
    the waiting ones show SLURM's JobArrayTaskLimit), and SLURM runs them one
    at a time: their own start and end times never overlap."""
    ids = gsub_array(spool, "--array", "1-4%1", "-n", "0", "-c",
                     "date +%s.%N; sleep 1; date +%s.%N")
    bridge_after()
    recs = handed(spool, ids)
    assert len({r["slurm_id"].split("_")[0] for r in recs.values()}) == 1
    wait_for(lambda: "JobArrayTaskLimit" in str(spool.record(ids[-1]).get("slurm_reason")),
             30, "SLURM to hold the last element for %1")
    for i in ids:
        spool.wait_state(i, "done", timeout=60)
    spans = sorted(tuple(float(t) for t in spool.log(i).split()) for i in ids)
    assert len(spans) == 4 and all(len(s) == 2 for s in spans)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, spans  # never two at once


@live
def test_one_scancel_of_the_array_job_ends_every_element_cancelled(spool, bridge_after,
                                                                    tmp_path):
    """scancel ARRAYJOB (SLURM's way to stop a whole array) ends all of its
    elements in cancelled/: the running one killed, the waiting ones never run."""
    ids = gsub_array(spool, "--array", "1-3%1", "-n", "0", "-c",
                     f"touch {tmp_path}/ran-$SPOOLD_ARRAY_INDEX; sleep 300")
    bridge_after()
    recs = handed(spool, ids)
    wait_for(lambda: (tmp_path / "ran-1").exists(), 30, "the first element to run")
    subprocess.run(["scancel", recs[ids[0]]["slurm_id"].split("_")[0]], check=True)
    ended = {i: spool.wait_state(i, timeout=60) for i in ids}
    assert [spool.where(i) for i in ids] == ["cancelled"] * 3, ended
    assert ended[ids[0]]["exit_code"] in (143, 137) and "CANCELLED" in ended[ids[0]]["reason"]
    assert not (tmp_path / "ran-2").exists() and not (tmp_path / "ran-3").exists()


@live
def test_gkill_and_gcancel_of_one_element_stop_that_element_only(spool, bridge_after, tmp_path):
    """Cancels stay per element (scancel ARRAYJOB_TASK): gcancel of an element
    SLURM still queues cancels it before it runs, gkill of the running one
    kills it; the element between them runs on and succeeds."""
    go = tmp_path / "go"
    ids = gsub_array(spool, "--array", "1-3%1", "-n", "0", "-c",
                     f"touch {tmp_path}/ran-$SPOOLD_ARRAY_INDEX; "
                     f"while [ ! -e {go} ]; do sleep 0.1; done")
    bridge_after()
    handed(spool, ids)
    wait_for(lambda: (tmp_path / "ran-1").exists(), 30, "the first element to run")
    spool.run("gcancel", str(ids[2]))
    assert spool.wait_state(ids[2], "cancelled", timeout=30)["reason"].startswith(
        "cancel requested before it started")
    spool.run("gkill", str(ids[0]))
    assert spool.wait_state(ids[0], "cancelled", timeout=30)["reason"].startswith(
        "killed on request")
    wait_for(lambda: (tmp_path / "ran-2").exists(), 30, "the second element to run")
    go.touch()
    assert spool.wait_state(ids[1], "done", timeout=60)["exit_code"] == 0
    assert not (tmp_path / "ran-3").exists()  # cancelled in SLURM: it can no longer run


def test_details_takes_an_array_task_slurm_dropped_for_one_it_no_longer_knows():
    """scontrol answers "Job 123_3 not found" for a task cancelled while it
    waited in its array (22.05: no record is kept): unknown, not an error
    that would stop the poll of every other job."""
    run = FakeRun({"scontrol": (1, "", "Job 123_3 not found\n"),
                   "sacct": (1, "", "Slurm accounting storage is disabled\n")})
    assert slurm.details(["123_3"], run=run)["123_3"].state == "unknown"


@live
def test_elements_handed_to_slurm_before_a_crash_are_adopted_not_resubmitted(
        spool, bridge_after, tmp_path):
    """The daemon died after sbatch, before the records said so: at restart
    each element finds its own task (the array's --comment, its index)."""
    go = tmp_path / "go"
    ids = gsub_array(spool, "--array", "1-2", "-n", "0", "-c",
                     f"while [ ! -e {go} ]; do sleep 0.1; done")
    d = bridge_after()
    recs = handed(spool, ids)
    d.stop()
    for i in ids:  # as if the daemon had died between sbatch and the record
        rec = spool.record(i)
        for k in ("slurm_id", "slurm_state", "slurm_reason", "slurm_queued_at"):
            rec.pop(k, None)
        (spool.root / "running" / f"{i}.yaml").write_text(json.dumps(rec))
    bridge_after()
    got = wait_for(lambda: all(spool.record(i).get("slurm_id") for i in ids) and
                   {i: spool.record(i)["slurm_id"] for i in ids}, 30, "the elements adopted")
    assert got == {i: recs[i]["slurm_id"] for i in ids}
    go.touch()
    assert [spool.wait_state(i, timeout=60)["exit_code"] for i in ids] == [0, 0]
    out = subprocess.run(["squeue", "-h", "-o", "%k"], capture_output=True, text=True).stdout
    assert str(spool.root) not in out  # nothing submitted twice


@live
def test_an_element_released_later_waits_for_its_array_in_slurm(spool, bridge_after):
    """%N holds per SLURM array, so an element that becomes startable after
    the others went to SLURM waits in pending/ for them, then goes as an
    array of its own: never two of a %1 array at once."""
    ids = gsub_array(spool, "--array", "1-3%1", "--hold", "-n", "0", "-c",
                     "date +%s.%N; sleep 1; date +%s.%N")
    bridge_after()
    spool.run("grelease", str(ids[0]), str(ids[1]))
    first = handed(spool, ids[:2])
    spool.run("grelease", str(ids[2]))
    last = spool.wait_state(ids[2], "done", timeout=60)
    assert last["slurm_id"].split("_")[0] != first[ids[0]]["slurm_id"].split("_")[0]
    spans = sorted(tuple(float(t) for t in spool.log(i).split()) for i in ids)
    assert len(spans) == 3 and all(len(s) == 2 for s in spans)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, spans  # never two at once
