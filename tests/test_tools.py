"""The everyday tools against the real daemon: dependencies, arrays, hold, pause,
requeue, hooks, output files, history cleaning and the gstat/ghist views."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import fake_gpu_list, wait_for
from test_multiuser import USERS, users  # noqa: F401 - users: a fixture

from spoold import ghist as ghist_mod
from spoold import gqueue, tools
from spoold import job as jobmod
from spoold import spool as spoolmod
from spoold.hosts import resources_of
from spoold.records import Records
from spoold.scheduler import Resources


def test_after_runs_only_after_success_and_failed_dependency_cancels(spool, daemon, tmp_path):
    go = tmp_path / "go"
    first = spool.gsub("-n", "0", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    then = spool.gsub("-n", "0", "--after", str(first), "--", "true")
    bad = spool.gsub("-n", "0", "-c", "exit 1")
    never = spool.gsub("-n", "0", "--after", f"{bad},{first}", "--", "true")
    rec = spool.wait_state(never, "cancelled")
    assert rec["reason"] == f"dependency {bad} failed" and "exit_code" not in rec
    assert spool.where(then) == "pending"
    pend = {p["id"]: p for p in json.loads(spool.run("gstat", "--json").stdout)["pending"]}
    assert pend[then]["reason"] == f"waiting for job {first}"
    go.touch()
    assert spool.wait_state(then, "done")["started_at"] >= spool.record(first)["ended_at"]
    ghost = spool.gsub("-n", "0", "--after", "9999", "--", "true")
    assert "does not exist" in spool.wait_state(ghost, "failed")["reason"]


def test_wait_exits_with_the_jobs_code(spool, daemon):
    p = spool.run("gsub", "-n", "0", "--wait", "-c", "exit 7", check=False)
    assert p.returncode == 7 and p.stdout.decode().strip().isdigit()
    assert spool.run("gsub", "-n", "0", "--wait", "--", "true").returncode == 0


def test_array_throttle_and_index(spool, daemon, tmp_path):
    live, seen = tmp_path / "live", tmp_path / "seen"
    live.mkdir()
    seen.mkdir()
    # Each element marks itself live, records how many are live, and leaves.
    body = (f": > {live}/$SPOOLD_ARRAY_INDEX; ls {live} | wc -l > {seen}/$SPOOLD_ARRAY_INDEX;"
            f" sleep 0.4; rm {live}/$SPOOLD_ARRAY_INDEX")
    ids = [int(x) for x in spool.run("gsub", "-n", "0", "--array", "3-8%2", "-c", body)
           .stdout.split()]
    assert len(ids) == 6 and ids == list(range(ids[0], ids[0] + 6))
    for j in ids:
        spool.wait_state(j, "done")
    assert sorted(int(p.name) for p in seen.iterdir()) == list(range(3, 9))
    assert max(int(p.read_text()) for p in seen.iterdir()) <= 2
    assert spool.record(ids[2])["array_index"] == 5


def test_hold_release_and_pause_resume(spool, daemon):
    held = spool.gsub("-n", "0", "--hold", "--", "true")
    other = spool.gsub("-n", "0", "--", "true")
    spool.wait_state(other, "done")
    assert spool.where(held) == "pending"
    assert "held" in _reason(spool, held)
    spool.run("grelease", str(held))
    spool.wait_state(held, "done")

    spool.run("gpause")
    wait_for(lambda: (spool.root / "state" / "paused").exists(), what="paused")
    j = spool.gsub("-n", "0", "--", "true")
    wait_for(lambda: "paused" in _reason(spool, j), what="reason: paused")
    assert "queue paused" in spool.run("gstat").stdout.decode()
    spool.run("ghold", str(j))
    wait_for(lambda: "held" in _reason(spool, j), what="hold while paused")
    spool.run("gresume")
    spool.run("grelease", str(j))
    spool.wait_state(j, "done")


def _reason(spool, job_id) -> str:
    for p in json.loads(spool.run("gstat", "--json").stdout)["pending"]:
        if p["id"] == job_id:
            return p["reason"]
    return ""


def test_grequeue_same_command_env_cwd_new_id(spool, daemon, tmp_path):
    j = spool.gsub("-n", "1", "-J", "again", "-c", "echo $MARK $PWD; exit 3", cwd=tmp_path,
                   env={"MARK": "m1"})
    spool.wait_state(j, "failed")
    new = int(spool.run("grequeue", str(j)).stdout)
    rec = spool.wait_state(new, "failed")
    assert new != j and rec["requeued_from"] == j and rec["name"] == "again"
    assert spool.log(new).strip() == f"m1 {tmp_path}"
    p = spool.run("grequeue", "99", check=False)
    assert p.returncode == 1 and b"not in the spool" in p.stderr


def test_grequeue_keeps_an_argument_with_a_comma_whole(spool, daemon):
    """The record of `gsub -- printf %s lr=0.1,0.2` once said argv [printf, %s,
    lr=0.1,0.2] (a plain scalar ends at a comma in [...]): grequeue ran it
    with the argument cut in two."""
    j = spool.gsub("-n", "0", "--", "printf", "%s|", "lr=0.1,0.2")
    spool.wait_state(j, "done")
    new = int(spool.run("grequeue", str(j)).stdout)
    spool.wait_state(new, "done")
    assert spool.log(j) == spool.log(new) == "lr=0.1,0.2|"


def test_on_finish_runs_with_id_and_code_and_output_file(spool, daemon, tmp_path):
    hook_out, out = tmp_path / "hook", tmp_path / "sub dir" / "out.log"
    out.parent.mkdir()
    j = spool.gsub("-n", "0", "-o", str(out), "--on-finish",
                   f"echo $SPOOLD_JOB_ID $SPOOLD_EXIT_CODE $SPOOLD_STATE > {hook_out}",
                   "-c", "echo to-file; exit 2")
    spool.wait_state(j, "failed")
    wait_for(hook_out.exists, what="on-finish hook")
    assert hook_out.read_text().split() == [str(j), "2", "failed"]
    assert out.read_text() == "to-file\n"
    assert spool.run("glog", str(j)).stdout == b"to-file\n"
    broken = spool.gsub("-n", "0", "--on-finish", "exit 9; no-such-cmd", "--", "true")
    spool.wait_state(broken, "done")


def test_keep_prunes_oldest_and_ghist_clean(spool, daemon_factory):
    daemon_factory("--keep", "3")
    ids = []
    for _ in range(5):
        ids.append(spool.gsub("-n", "0", "--", "true"))
        spool.wait_state(ids[-1], "done")
    wait_for(lambda: sorted(int(p.stem) for p in (spool.root / "done").glob("*.yaml"))
             == ids[2:], what="pruning to the newest 3")
    assert not (spool.root / "logs" / f"{ids[0]}.log").exists()
    spool.run("ghist", "--clean", "--older-than", "1h")
    assert len(list((spool.root / "done").glob("*.yaml"))) == 3
    spool.run("ghist", "--clean")
    assert not list((spool.root / "done").glob("*.yaml"))


def _finished_job_with_links(sp, job_id: int, outside: Path) -> list[Path]:
    """A finished job whose log is a link to ``outside`` and whose kept original
    is a folder: what pruning and ghist --clean must remove without following."""
    now = time.time() - 7200
    sp.record("done", job_id).write_bytes(jobmod.dump(
        {"id": job_id, "argv": ["true"], "started_at": now, "ended_at": now, "exit_code": 0}))
    os.utime(sp.record("done", job_id), (now, now))
    sp.log_path(job_id).symlink_to(outside)
    sp.rejected_copy(job_id).mkdir()
    (sp.rejected_copy(job_id) / "inner").symlink_to(outside)
    return [sp.record("done", job_id), sp.log_path(job_id), sp.rejected_copy(job_id)]


def test_delete_finished_is_the_one_way_finished_jobs_go(tmp_path, monkeypatch):
    """Spool.delete_finished removes the kept original and the log before the
    record and never follows a link; --keep pruning (Records.prune) and ghist
    --clean both go through it."""
    outside = tmp_path / "precious"
    outside.write_text("keep me")
    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create()
    removed = []
    real = spoolmod.remove_entry
    monkeypatch.setattr(spoolmod, "remove_entry", lambda p: (removed.append(p), real(p)))
    paths = _finished_job_with_links(sp, 5, outside)
    sp.delete_finished("done", 5)
    assert removed[0] == sp.rejected_copy(5) and removed[1] == sp.log_path(5)
    assert removed[-1] == sp.record("done", 5)
    assert not any(os.path.lexists(p) for p in paths)

    removed.clear()
    for j in (6, 7, 8):
        _finished_job_with_links(sp, j, outside)
    records = Records(sp, shared=False, keep=1)
    records.final_count = 3
    records.prune()
    assert sp.list_ids("done") == [8] and {6, 7} <= {int(p.name.split(".")[0]) for p in removed}
    p = subprocess.run([sys.executable, "-c", "import sys; from spoold.tools import ghist_main;"
                        " sys.exit(ghist_main())", "--spool", str(sp.root), "--clean"],
                       capture_output=True)
    assert p.returncode == 0 and b"removed 1 finished record(s)" in p.stderr
    assert os.listdir(sp.done) == [] and os.listdir(sp.logs) == []
    assert os.listdir(sp.failed) == [] and outside.read_text() == "keep me"
    with pytest.raises(ValueError):
        sp.delete_finished("running", 8)


def test_resources_of_reads_the_daemons_own_heartbeat(spool, daemon):
    """hosts.resources_of, which the daemon uses for other hosts and gstat for
    every host, reads what the daemon published: its GPUs with their busy
    reasons, its CPUs, memory and per-job limit; garbage offers nothing."""
    spool.set_gpus(fake_gpu_list(4, {1: {"utilization": 90}, 2: {"memory_total": None}}))
    spool.gpus_seen({1, 2})
    beat = yaml.safe_load(next((spool.root / "state" / "hosts").glob("*.yaml")).read_text())
    res = resources_of(beat, beat["host"], paused=True)
    assert [g.index for g in res.gpus] == [0, 1, 2, 3]
    assert [bool(g.busy) for g in res.gpus] == [False, True, True, False]
    assert [g.failed for g in res.gpus] == [False, False, True, False]
    assert (len(res.cpus), res.mem, res.limit, res.host, res.paused) == (
        beat["cpus"], beat["mem"], beat["limit"], beat["host"], True)
    junk = resources_of({"gpus": [{"index": True}, {"index": "0"}, "x", {"index": 2,
                                                                         "memory_total": -5}],
                         "cpus": "many", "mem": 1.5, "limit": None})
    assert (len(junk.gpus), junk.gpus[0].failed, junk.cpus, junk.mem, junk.limit) == (
        1, True, (), 0, 1)
    assert resources_of({"gpus": "none"}) == Resources(limit=0)


def test_ghist_filters(spool, daemon):
    a = spool.gsub("-n", "0", "--", "true")
    b = spool.gsub("-n", "0", "-c", "exit 1")
    c = spool.gsub("-n", "0", "--", "true")
    for j in (a, b, c):
        spool.wait_state(j)
    ids = lambda *args: [r["id"] for r in json.loads(spool.run("ghist", "--json", *args).stdout)]  # noqa: E731
    assert sorted(ids()) == [a, c] and sorted(ids("-f")) == [a, b, c]
    assert len(ids("-f", "-n", "2")) == 2
    assert ids("-u", "nobody-here") == [] and sorted(ids("--since", "1h")) == [a, c]
    table = spool.run("ghist", "-f").stdout.decode().splitlines()
    assert [line.split()[0] for line in table[1:]] == [str(i) for i in ids("-f")]


# ---- rendering at fixed widths ---------------------------------------------------------

NOW = 1_800_000_000.0


def _snap():
    return {"spool": "/s", "time": NOW, "host": "box", "daemon": {"running": True, "pid": 1},
            "paused": False,
            "gpus": [{"index": 0, "utilization": 50, "memory_used": 8192, "memory_total": 16384,
                      "busy": "utilization 50% >= 10%", "jobs": [7], "error": None},
                     {"index": 1, "utilization": None, "memory_used": None,
                      "memory_total": None, "busy": "reading failed: N/A", "jobs": [],
                      "error": "N/A"}],
            "running": [{"id": 7, "name": "train", "user": "alice", "assigned_gpus": [0],
                         "elapsed": 3725, "time_limit": 7200, "command": "python train.py",
                         "killing": None, "gpu_mem": 4096, "gpu_mem_used": 3174}],
            "pending": [{"id": 8, "priority": 0, "effective_priority": 10, "name": "eval",
                         "user": "bob", "gpus": 2, "wait": 61,
                         "reason": "GPUs busy (0 of 2 free)"}],
            "shares": [{"user": "bob", "gpus": 0, "usage_gpu_h": 0.25, "rank": 1,
                        "max_gpus": 2, "max_cpus": 8, "admin": False},
                       {"user": "alice", "gpus": 1, "usage_gpu_h": 12.345, "rank": 2,
                        "max_gpus": None, "max_cpus": None, "admin": True}]}


def test_gstat_renders_at_fixed_width():
    text = tools.render_gstat(_snap(), width=80)
    assert text == (
        "GPU0  [#####.....]  50% [#####.....]   8.0/16.0G  job 7\n"
        "GPU1  [??????????]   ?% [??????????]        ?/?G  reading failed: N/A\n"
        "\n"
        "# running: 1\n"
        "ID  NAME   USER   GPUS  GPUMEM    ELAPSED  LIMIT  COMMAND\n"
        "7   train  alice  0     3.1/4.0G  1h02m    2h00m  python train.py\n"
        "# pending: 1\n"
        "ID  PRIO             NAME  USER  GPUS  WAIT   REASON\n"
        "8   10 (0000 asked)  eval  bob   2     1m01s  GPUs busy (0 of 2 free)\n"
        "# shares (USAGE: GPU-hours, decayed; RANK 1 goes next within a priority)\n"
        "USER   GPUS  USAGE  RANK  CAP\n"
        "bob    0     0.2    1     2 GPUs, 8 CPUs\n"
        "alice  1     12.3   2     none; admin\n")
    assert all(len(line) <= 40 for line in tools.render_gstat(_snap(), width=40).splitlines())


def test_timeline_renders_at_fixed_width():
    rows = [{"id": 5, "name": "a", "state": "done", "assigned_gpus": [0, 1],
             "started_at": NOW - 3600, "ended_at": NOW - 1800},
            {"id": 6, "name": "b", "state": "running", "assigned_gpus": [1],
             "started_at": NOW - 900, "ended_at": None}]
    text = tools.render_timeline(rows, [0, 1], NOW, 2, width=48)
    # 40 columns of 3 minutes: job 5 held both GPUs from -60 to -30 min,
    # job 6 holds GPU 1 since -15 min.
    assert text == (
        "      |-2h                                  now|\n"
        "GPU0  |....................aaaaaaaaaa..........|\n"
        "GPU1  |....................aaaaaaaaaa.....bbbbb|\n"
        "jobs:  a=5 a (done)  b=6 b (running)\n")


JSON_SCHEMA_KEYS = {
    "top": {"spool", "time", "host", "daemon", "hosts", "paused", "gpus", "running", "pending",
            "shares", "limits", "enforced"},
    "host": {"host", "alive", "pid", "heartbeat_age", "lost", "draining"},
    "gpu": {"index", "uuid", "name", "memory_total", "memory_used", "utilization", "error",
            "busy", "jobs", "host", "processes"},
    "running": {"id", "name", "user", "gpus", "assigned_gpus", "gpu_mem", "cpus",
                "assigned_cpus", "mem", "priority", "host", "pid", "started_at", "elapsed",
                "time_limit", "command", "killing", "private", "gpu_mem_used", "slurm_id",
                "slurm_state", "slurm_reason", "slurm_queued_at"},
    "pending": {"id", "name", "user", "gpus", "gpu_mem", "cpus", "mem", "priority",
                "effective_priority", "submitted_at", "wait", "time_limit", "after", "held",
                "command", "reason", "private"},
    "share": {"uid", "user", "gpus", "usage_gpu_h", "rank", "max_gpus", "max_cpus", "admin"},
    "ghist": {"id", "state", "outcome", "exit_code", "name", "user", "gpus", "assigned_gpus",
              "mem", "gpu_mem", "usage", "host", "submitted_at", "started_at", "ended_at",
              "elapsed", "reason", "command", "slurm_id", "slurm_queued_at", "wait"},
    "usage": set(ghist_mod.USAGE_KEYS),
    "users": {"user", "jobs", "gpu_hours", "energy_j", "failed", "cancelled", "mean_wait"},
}


def test_json_matches_documented_schema(spool, daemon, tmp_path):
    go = tmp_path / "go"
    r = spool.gsub("-n", "1", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    spool.gsub("-n", "4", "--", "true")
    wait_for(lambda: spool.where(r) == "running" and spool.record(r).get("pid"))
    snap = json.loads(spool.run("gstat", "--json").stdout)
    assert set(snap) == JSON_SCHEMA_KEYS["top"]
    assert snap["enforced"]["mem"]  # how --mem is enforced here (it depends on the machine)
    assert all(set(g) == JSON_SCHEMA_KEYS["gpu"] for g in snap["gpus"])
    assert all(set(h) == JSON_SCHEMA_KEYS["host"] for h in snap["hosts"])
    assert set(snap["running"][0]) == JSON_SCHEMA_KEYS["running"]
    assert set(snap["pending"][0]) == JSON_SCHEMA_KEYS["pending"]
    go.touch()
    spool.wait_state(r, "done")
    hist = json.loads(spool.run("ghist", "--json").stdout)
    assert set(hist[0]) == JSON_SCHEMA_KEYS["ghist"]
    assert set(hist[0]["usage"]) <= JSON_SCHEMA_KEYS["usage"]
    summary = json.loads(spool.run("ghist", "--users", "--json").stdout)
    assert set(summary[0]) == JSON_SCHEMA_KEYS["users"] and summary[0]["jobs"] >= 1


def test_json_doc_names_every_field():
    doc = (Path(__file__).parent.parent / "docs" / "json.md").read_text()
    for keys in JSON_SCHEMA_KEYS.values():
        for k in keys:
            assert f"`{k}`" in doc, f"docs/json.md does not document {k}"


def test_tools_refuse_bad_arguments(spool):
    for args in (["glog", "x"], ["glog"], ["gstat", "--bogus"], ["ghist", "-n", "many"],
                 ["grequeue", "0"], ["gkill"], ["gkill", "7x"], ["gsub"], ["gsub", "-n", "x",
                                                                          "true"]):
        p = spool.run(*args, check=False)
        assert p.returncode == 2 and p.stderr, args
    p = spool.run("gstat", check=False, env={"SPOOLD_SPOOL": "/nonexistent/spool"})
    assert p.returncode == 1 and b"no spool at /nonexistent/spool" in p.stderr


def test_every_tool_has_help():
    import subprocess
    import sys

    from conftest import BIN, tool_env

    for name in ("gsub", "gkill", "gcancel", "ghold", "grelease", "gpause", "gresume"):
        p = subprocess.run(["dash", str(BIN / name), "--help"], capture_output=True)
        assert p.returncode == 0 and b"example" in p.stdout.lower(), name
    for name in ("gstat", "ghist", "glog", "grequeue"):
        p = subprocess.run([sys.executable, "-c", f"from spoold.tools import {name}_main as m;"
                            " m()", "--help"], capture_output=True, env=tool_env())
        assert p.returncode == 0 and b"Example" in p.stdout, name
    p = subprocess.run([sys.executable, "-m", "spoold.daemon", "--help"], capture_output=True)
    assert p.returncode == 0 and b"Example" in p.stdout


@pytest.mark.parametrize("width", [60, 120])
def test_gstat_width_is_respected_with_real_data(spool, daemon, width):
    held = spool.gsub("-n", "0", "--hold", "-c", "echo " + "x" * 300)
    after = spool.gsub("-n", "4", "--after", str(held), "--", "true")
    wait_for(lambda: _reason(spool, after) == f"waiting for job {held}",
             what=f"job {after} to wait for job {held}")
    text = tools.render_gstat(tools.snapshot(tools.Spool(spool.root)), width=width)
    assert all(len(line) <= width for line in text.splitlines())
    assert "held (grelease" in text


ALICE, BOB = USERS


# ---- fair share in gstat (issue 16), from a heartbeat written by hand ----------------------

ROOT_USERS = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin:/bin"),
    reason="needs root (files owned by throwaway users)")


def _shared_spool(tmp_path: Path, accounts: dict, running: dict, beat: dict):
    """A shared spool with no daemon, but its host lock held (by this process,
    until it exits) as a live daemon holds it: root's running records ``{id:
    (owner, gpus)}``, and a fresh heartbeat of 4 GPUs of host box plus ``beat``."""
    import fcntl

    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create(shared=True)
    fd = os.open(sp.host_lock("box"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"1")
    for job_id, (who, gpus) in running.items():
        sp.record("running", job_id).write_bytes(jobmod.dump(
            {"id": job_id, "uid": accounts[who].pw_uid, "cmd": "train", "assigned_gpus": gpus,
             "host": "box", "started_at": NOW - 60}))
    sp.host_file("box").write_bytes(jobmod.dump(
        {"host": "box", "time": time.time(), "pid": 1, "host_timeout": 60, "cpus": 8,
         "mem": 64000, "limit": 4, "gpus": [{"index": i, "busy": None, "memory_total": 16000,
                                             "memory_used": 0} for i in range(4)], **beat}))
    return sp


def _pending(sp, owner, name: str, **fields) -> None:
    path = sp.pending / name
    path.write_bytes(jobmod.dump({"cmd": "true", "gpus": 1, **fields}))
    os.chown(path, owner.pw_uid, owner.pw_gid)


def _share(accounts, who: str, gpus: int, usage: float, rank: int | None, **kw) -> dict:
    return {"uid": accounts[who].pw_uid, "user": who, "gpus": gpus, "usage_gpu_h": usage,
            "rank": rank, "max_gpus": 2, "max_cpus": None, "admin": False, **kw}


@ROOT_USERS
def test_gstat_waits_orders_and_prioritises_as_the_daemon_does(tmp_path, users):  # noqa: F811
    """From the heartbeat's shares: alice's capped jobs say why; fair share puts
    bob (less usage) ahead of alice within a priority; alice's rename to 0000
    counts as the default; root's override in state/priority/ raises bob's job
    (alice's own file there counts for nothing);
    the shares table and its JSON; a running job's GPU memory from jobs:."""
    alice, bob = (users[n] for n in USERS)
    sp = _shared_spool(tmp_path, users, {1: (ALICE, [0]), 2: (ALICE, [1])}, {
        "jobs": [{"id": 1, "uid": alice.pw_uid, "gpus": [0], "gpu_mem_mib": 5120},
                 {"id": 2, "uid": alice.pw_uid, "gpus": [1]}],
        "shares": [_share(users, BOB, 0, 0.5, 1), _share(users, ALICE, 2, 5.0, 2)]})
    _pending(sp, alice, "0000-00000003.yaml")
    _pending(sp, alice, "0010-00000004.yaml")
    _pending(sp, bob, "0010-00000005.yaml")
    _pending(sp, bob, "0010-00000006.yaml")
    (sp.state / "priority").mkdir(exist_ok=True)
    (sp.state / "priority" / "6").write_text("1\n")
    (sp.state / "priority" / "4").write_text("0\n")  # not root's: ignored, as the daemon does
    os.chown(sp.state / "priority" / "4", alice.pw_uid, alice.pw_gid)
    snap = tools.snapshot(sp, now=NOW)
    pend = {p["id"]: p for p in snap["pending"]}
    assert [p["id"] for p in snap["pending"]] == [6, 5, 3, 4]
    assert [(pend[j]["priority"], pend[j]["effective_priority"]) for j in (6, 5, 3, 4)] == [
        (10, 1), (10, 10), (0, 10), (10, 10)]
    assert pend[6]["reason"] == pend[5]["reason"] == "starting"
    for j in (3, 4):
        assert pend[j]["reason"].startswith(f"{ALICE} holds 2 of 2 GPUs allowed per user")
    assert [(s["user"], s["gpus"], s["usage_gpu_h"], s["rank"], s["max_gpus"])
            for s in snap["shares"]] == [(BOB, 0, 0.5, 1, 2), (ALICE, 2, 5.0, 2, 2)]
    assert all(set(s) == JSON_SCHEMA_KEYS["share"] for s in snap["shares"])
    assert {r["id"]: r["gpu_mem_used"] for r in snap["running"]} == {1: 5120, 2: None}
    text = tools.render_gstat(snap, 10_000)
    assert "10 (0000 asked)" in text and "1 (0010 asked)" in text
    assert "# shares" in text and f"{ALICE}  2     5.0    2     2 GPUs" in text, text
    assert "5.0G" in text.split("# pending")[0]
    # Fair share off (ranks None): the file order within a priority, caps still hold.
    beat = yaml.safe_load(sp.host_file("box").read_text())
    beat["shares"] = [dict(s, rank=None) for s in beat["shares"]]
    sp.host_file("box").write_bytes(jobmod.dump(beat))
    snap = tools.snapshot(sp, now=NOW)
    assert [p["id"] for p in snap["pending"]] == [6, 3, 4, 5]
    assert "RANK" in tools.render_gstat(snap) and snap["shares"][0]["rank"] is None


def test_shares_of_several_hosts_add_up_and_rank_by_usage():
    def host(*shares):
        return {"beat": {"shares": [{"uid": u, "user": n, "gpus": g, "usage_gpu_h": h,
                                     "rank": 1} for u, n, g, h in shares]}}
    rows = gqueue.merged_shares([host((4_000_005, "a", 2, 3.0), (4_000_006, "b", 0, 1.0)),
                                    host((4_000_005, "a", 1, 3.0), (4_000_007, "c", 1, 0.0))])
    assert [(r["user"], r["gpus"], r["rank"]) for r in rows] == [
        ("c", 1, 1), ("b", 0, 2), ("a", 3, 3)]
    assert gqueue.limits_of(rows) == {}


# ---- ghist: outcome, usage (issue 14) and the per-user summary (issue 16) -------------------

def _finished(sp, state: str, job_id: int, **fields) -> None:
    sp.record(state, job_id).write_bytes(jobmod.dump({"id": job_id, "cmd": "true", **fields}))


def _ghist(sp, capsys, *args: str) -> str:
    from spoold import ghist

    assert ghist.main(["--spool", str(sp.root), *args]) == 0
    return capsys.readouterr().out


def _columns(text: str) -> dict[str, dict[str, str]]:
    """A table by row id and column name, cut where each header word starts
    (cells may hold spaces: a date, an empty name)."""
    head, *lines = text.splitlines()
    starts = [i for i, c in enumerate(head) if c != " " and (i == 0 or head[i - 1] == " ")]
    ends = [*starts[1:], None]

    def cut(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]
    return {cut(line)[0]: dict(zip(head.split(), cut(line), strict=True)) for line in lines}


def _ran(start: float, hours: float, gpus: list[int], waited: float = 0.0) -> dict:
    return {"submitted_at": start - waited, "started_at": start,
            "ended_at": start + hours * 3600, "assigned_gpus": gpus}


def test_ghist_shows_outcome_and_usage_and_absent_figures_stay_absent(tmp_path, capsys):
    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create()
    t = time.time() - 7200
    _finished(sp, "done", 1, outcome="completed", mem=600, **_ran(t, 0.1, [0]),
              usage={"cpu_s": 1.25, "max_rss_mib": 312.4, "gpu_mem_peak_mib": 5000,
                     "gpu_util_mean": 41.6})
    _finished(sp, "failed", 2, outcome="out_of_memory", gpu_mem=4096, exit_code=137,
              reason="out of GPU memory", usage={"cpu_s": 90, "gpu_mem_peak_mib": 8000,
                                                 "max_rss_mib": float("nan"), "bogus": 1},
              **_ran(t, 0.2, [1]))
    _finished(sp, "failed", 3, outcome="timeout", exit_code=143, reason="time limit",
              **_ran(t, 0.3, [2]))
    _finished(sp, "done", 4, **_ran(t, 0.4, [3]))  # an older daemon: no outcome, no usage
    rows = {r["id"]: r for r in json.loads(_ghist(sp, capsys, "-f", "--json"))}
    assert rows[1]["outcome"] == "completed" and rows[1]["usage"] == {
        "cpu_s": 1.25, "max_rss_mib": 312.4, "gpu_mem_peak_mib": 5000, "gpu_util_mean": 41.6}
    assert rows[2]["usage"] == {"cpu_s": 90, "gpu_mem_peak_mib": 8000}  # NaN, unknown: absent
    assert rows[4]["outcome"] is None and rows[4]["usage"] == {}
    table = _columns(_ghist(sp, capsys, "-f"))
    assert [table[str(j)]["STATE"] for j in (1, 2, 3, 4)] == [
        "COMPLETED", "OUT_OF_MEMORY", "TIMEOUT", "done"]
    assert "CPU" not in table["1"]
    cells = {j: _columns(_ghist(sp, capsys, "-f", "-l"))[str(j)] for j in (1, 2, 4)}
    assert [cells[1][c] for c in ("CPU", "MAXRSS", "GPUMEM", "GPUUTIL")] == [
        "1.2s", "312M/600M", "4.9G", "42%"]
    assert [cells[2][c] for c in ("CPU", "MAXRSS", "GPUMEM", "GPUUTIL")] == [
        "1m30s", "-", "7.8G/4.0G", "-"]
    assert [cells[4][c] for c in ("CPU", "MAXRSS", "GPUMEM", "GPUUTIL")] == ["-"] * 4


def test_ghist_users_sums_a_period_per_user(tmp_path, capsys):
    """GPU-hours are elapsed x GPUs held; FAILED counts failed/ (every outcome
    but completed and cancelled), CANCELLED apart; the mean wait is over the
    jobs that started; --since keeps the jobs that ended since."""
    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create()
    now = time.time()
    me = pwd.getpwuid(os.getuid()).pw_name
    _finished(sp, "done", 1, **_ran(now - 3 * 3600, 1.0, [0, 1], waited=60))   # 2 GPU-h
    _finished(sp, "failed", 2, outcome="timeout", **_ran(now - 3600, 0.5, [2], waited=180))
    _finished(sp, "cancelled", 3, submitted_at=now - 600, ended_at=now - 300)  # never ran
    _finished(sp, "done", 4, **_ran(now - 30 * 86400, 10.0, [0]))  # a month ago
    (u,) = json.loads(_ghist(sp, capsys, "--users", "--since", "1d", "--json"))
    assert u == {"user": me, "jobs": 3, "gpu_hours": pytest.approx(2.5), "energy_j": 0.0,
                 "failed": 1,
                 "cancelled": 1, "mean_wait": pytest.approx(120)}
    (u,) = json.loads(_ghist(sp, capsys, "--users", "--json"))
    assert (u["jobs"], u["gpu_hours"]) == (4, pytest.approx(12.5))
    assert set(u) == JSON_SCHEMA_KEYS["users"]
    text = _ghist(sp, capsys, "--users", "--since", "1d").splitlines()
    assert text[0].split() == ["USER", "JOBS", "GPU-HOURS", "ENERGY", "FAILED", "CANCELLED",
                               "MEAN-WAIT"]
    assert text[1].split() == [me, "3", "2.50", "-", "1", "1", "2m00s"]
    assert text[2].startswith("# 1 user(s), 3 job(s), 2.50 GPU-hours, ended since ")
    assert json.loads(_ghist(sp, capsys, "--users", "-u", "nobody-here", "--json")) == []


def test_gstat_and_ghist_show_what_a_real_job_uses(spool, daemon, tmp_path):
    """End to end (issue 14): the job's pid on its fake GPU at 5,000 MiB shows in
    gstat while it runs (the heartbeat's gpu_mem_mib), and in ghist afterwards
    as its peak; the outcome fills the STATE column (COMPLETED, FAILED)."""
    go, pid = tmp_path / "go", tmp_path / "pid"
    j = spool.gsub("-n", "1", "-c", f"echo $$ > {pid}; while [ ! -e {go} ]; do sleep 0.05; "
                                    "done")
    wait_for(lambda: pid.exists() and pid.read_text().strip(), what="the job's pid")
    gpu = wait_for(lambda: spool.where(j) == "running" and spool.record(j)["assigned_gpus"])[0]
    spool.set_gpus(fake_gpu_list(4, {gpu: {"memory_used": 5000, "processes": [
        {"pid": int(pid.read_text()), "used_memory": 5000}]}}))

    def row():
        snap = json.loads(spool.run("gstat", "--json").stdout)
        return next((r for r in snap["running"] if r["id"] == j and r["gpu_mem_used"]), None)
    assert wait_for(row, what="gstat to show the job's GPU memory")["gpu_mem_used"] == 5000
    assert "4.9G" in spool.run("gstat").stdout.decode()
    go.touch()
    spool.wait_state(j, "done")
    bad = spool.gsub("-n", "0", "-c", "exit 3")
    spool.wait_state(bad, "failed")
    rows = {r["id"]: r for r in json.loads(spool.run("ghist", "-f", "--json").stdout)}
    assert (rows[j]["outcome"], rows[bad]["outcome"]) == ("completed", "failed")
    assert rows[j]["usage"]["gpu_mem_peak_mib"] >= 5000
    table = _columns(spool.run("ghist", "-f", "-l").stdout.decode())
    assert (table[str(j)]["STATE"], table[str(bad)]["STATE"]) == ("COMPLETED", "FAILED")
    assert table[str(j)]["GPUMEM"] == "4.9G"
