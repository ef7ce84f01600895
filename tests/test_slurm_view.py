"""gstat and ghist show SLURM's view (issue 18), from records and heartbeats
written by hand as ``spoold --executor slurm`` writes them (no SLURM needed).

In SLURM mode running/ holds every job handed to SLURM, started or not; the
bridge keeps ``slurm_id``, ``slurm_state``, ``slurm_reason`` and
``slurm_queued_at`` in the record and the heartbeat's ``jobs:`` entry, and
``started_at`` is SLURM's real start once the job runs (docs/slurm.md)."""

from __future__ import annotations

import fcntl
import json
import os
import time

import pytest
from test_tools import JSON_SCHEMA_KEYS, _columns, _finished, _ghist

from spoold import gstat as gstat_mod
from spoold import job as jobmod
from spoold import spool as spoolmod

NOW = time.time()  # when this module was imported: compare with a snapshot's own "time"


def _spool(tmp_path, running: dict, jobs: list | None = None):
    """A spool with ``running`` records {id: fields} and a heartbeat of 2 GPUs."""
    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create()
    for job_id, fields in running.items():
        sp.record("running", job_id).write_bytes(jobmod.dump(
            {"id": job_id, "cmd": "train", "host": "box", "executor": "slurm", **fields}))
    beat = {"host": "box", "time": NOW, "pid": 1, "host_timeout": 60, "cpus": 8, "mem": 64000,
            "limit": 2, "gpus": [{"index": i, "busy": None, "memory_total": 16000,
                                  "memory_used": 0} for i in range(2)]}
    if jobs is not None:
        beat["jobs"] = jobs
    sp.host_file("box").write_bytes(jobmod.dump(beat))
    return sp


# What the bridge writes: a job SLURM runs, and one it holds (the claim time in
# started_at, no GPUs yet).
RUNS = {"gpus": 1, "assigned_gpus": [0], "slurm_id": "101", "slurm_state": "RUNNING",
        "slurm_queued_at": NOW - 100, "started_at": NOW - 30, "time_limit": 600.0}
QUEUED = {"gpus": 1, "assigned_gpus": [], "slurm_id": "102", "slurm_state": "PENDING",
          "slurm_reason": "PENDING (Resources)", "slurm_queued_at": NOW - 50,
          "started_at": NOW - 50, "time_limit": 600.0}


def _gstat(sp, capsys, *args: str) -> str:
    assert gstat_mod.main(["--spool", str(sp.root), *args]) == 0
    return capsys.readouterr().out


def test_gstat_lists_a_job_slurm_has_queued_apart_from_the_running_ones(tmp_path, capsys):
    """A PENDING job is not running: no GPUs, no start, no elapsed time, its own
    section with SLURM's id and reason and how long SLURM has held it; a
    RUNNING one counts from SLURM's real start and shows its SLURM id."""
    sp = _spool(tmp_path, {1: RUNS, 2: QUEUED})
    snap = json.loads(_gstat(sp, capsys, "--json"))
    rows = {r["id"]: r for r in snap["running"]}
    assert all(set(r) == JSON_SCHEMA_KEYS["running"] for r in rows.values())
    assert (rows[2]["slurm_id"], rows[2]["slurm_state"], rows[2]["slurm_reason"]) == (
        "102", "PENDING", "PENDING (Resources)")
    assert rows[2]["slurm_queued_at"] == QUEUED["slurm_queued_at"]
    assert (rows[2]["assigned_gpus"], rows[2]["started_at"], rows[2]["elapsed"]) == ([], None,
                                                                                     None)
    assert (rows[1]["slurm_id"], rows[1]["slurm_state"]) == ("101", "RUNNING")
    assert rows[1]["started_at"] == RUNS["started_at"]  # SLURM's start, not the handoff
    assert rows[1]["elapsed"] == pytest.approx(snap["time"] - RUNS["started_at"])
    assert {g["index"]: g["jobs"] for g in snap["gpus"]} == {0: [1], 1: []}

    text = _gstat(sp, capsys)
    running, queued = text.split("# running: 1\n")[1].split("# queued in SLURM: 1\n")
    queued = queued.split("# pending")[0]
    run = _columns(running)
    assert set(run) == {"1"} and run["1"]["SLURMID"] == "101" and run["1"]["GPUS"] == "0"
    q = _columns(queued)
    assert set(q) == {"2"} and (q["2"]["SLURMID"], q["2"]["REASON"]) == ("102", "Resources")
    assert q["2"]["WAIT"].endswith("s") and "ELAPSED" not in q["2"]
    assert [line for line in text.splitlines() if line.split()[:1] == ["2"]] == [
        next(line for line in queued.splitlines() if line.startswith("2 "))]  # awk '$1==2'


def test_another_users_queued_job_from_the_heartbeat(tmp_path, capsys):
    """A record the caller cannot read: SLURM's view comes from the heartbeat's
    public ``jobs:`` entry, and a PENDING job is queued there too."""
    entry = {k: QUEUED[k] for k in ("slurm_id", "slurm_state", "slurm_reason",
                                    "slurm_queued_at", "started_at", "time_limit")}
    sp = _spool(tmp_path, {}, jobs=[{"id": 3, "uid": 0, "gpus": [], "cpus": [], **entry}])
    sp.record("running", 3).write_bytes(b"{not: [a record")  # unreadable, as to another user
    (row,) = json.loads(_gstat(sp, capsys, "--json"))["running"]
    assert row["private"] and (row["slurm_id"], row["slurm_state"]) == ("102", "PENDING")
    assert row["elapsed"] is None and row["started_at"] is None
    text = _gstat(sp, capsys)
    assert "# running: 0" in text and "# queued in SLURM: 1" in text
    assert _columns(text.split("# queued in SLURM: 1\n")[1].split("# pending")[0])["3"][
        "REASON"] == "Resources"


def test_local_jobs_show_no_slurm_columns(tmp_path, capsys):
    sp = _spool(tmp_path, {1: {"assigned_gpus": [0], "started_at": NOW - 5}})
    text = _gstat(sp, capsys)
    assert "SLURMID" not in text and "queued in SLURM" not in text
    (row,) = json.loads(_gstat(sp, capsys, "--json"))["running"]
    assert row["slurm_id"] is row["slurm_state"] is row["slurm_reason"] is None


def test_ghist_shows_the_slurm_id_and_the_wait_in_slurms_queue(tmp_path, capsys):
    """WAIT is started_at - slurm_queued_at for a job handed to SLURM (the
    time in SLURM's queue), else started_at - submitted_at; the SLURMID and
    WAIT columns appear only when a row was handed to SLURM."""
    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create()
    t = NOW - 3600
    _finished(sp, "done", 1, submitted_at=t - 200, slurm_queued_at=t - 90, started_at=t,
              ended_at=t + 10, slurm_id="101", outcome="completed")
    _finished(sp, "done", 2, submitted_at=t - 60, started_at=t, ended_at=t + 20)
    rows = {r["id"]: r for r in json.loads(_ghist(sp, capsys, "--json"))}
    assert all(set(r) == JSON_SCHEMA_KEYS["ghist"] for r in rows.values())
    assert (rows[1]["slurm_id"], rows[1]["wait"], rows[1]["elapsed"]) == ("101", 90, 10)
    assert (rows[2]["slurm_id"], rows[2]["wait"]) == (None, 60)
    table = _columns(_ghist(sp, capsys))
    assert (table["1"]["SLURMID"], table["1"]["WAIT"], table["1"]["ELAPSED"]) == (
        "101", "1m30s", "10s")
    assert (table["2"]["SLURMID"], table["2"]["WAIT"]) == ("-", "1m00s")
    sp.record("done", 1).unlink()
    assert "SLURMID" not in _ghist(sp, capsys) and "WAIT" not in _ghist(sp, capsys)


def test_pending_jobs_of_a_slurm_host_are_explained_in_slurms_terms(tmp_path, capsys):
    """A bridge host has no GPUs of its own: gstat judges its queue as the
    bridge does (gate only; SLURM places), never 'spoold manages none'; an
    element of a %N array whose SLURM array still runs waits for it."""
    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create()
    beat = {"host": "box", "time": NOW, "pid": 1, "host_timeout": 60, "cpus": 8, "mem": 64000,
            "limit": 0, "gpus": [], "enforced": {"gpus": "SLURM (--gres=gpu:N)"},
            "jobs": [{"id": 1, "uid": None, "gpus": [], "array_id": 5}]}
    sp.host_file("box").write_bytes(jobmod.dump(beat))
    sp.record("running", 1).write_bytes(jobmod.dump(
        {"id": 1, "cmd": "x", "host": "box", "gpus": 2, "array_id": 5, "array_index": 1,
         "array_limit": 1, "slurm_id": "7_1", "slurm_state": "RUNNING", "started_at": NOW}))
    (sp.pending / "0010-00000002.yaml").write_text("cmd: train\ngpus: 2\n")
    (sp.pending / "0010-00000003.yaml").write_text(
        "cmd: x\ngpus: 2\narray_id: 5\narray_index: 2\narray_limit: 1\n")
    fd = os.open(sp.host_lock("box"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # its daemon is alive
    try:
        rows = {r["id"]: r for r in json.loads(_gstat(sp, capsys, "--json"))["pending"]}
    finally:
        os.close(fd)
    assert rows[2]["reason"] == "starting"
    assert "per SLURM array" in rows[3]["reason"]
    assert not any("manages none" in (r["reason"] or "") for r in rows.values())
