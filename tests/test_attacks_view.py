"""Issue 11, the viewing side: what gstat, ghist, glog and grequeue do when the
spool holds hostile text, hostile numbers or another user's jobs, and when a
root tool meets a path a user named. Each test is named after what it proves.

The multi-user tests need root and throwaway users (test_multiuser's fixtures)
and a Python those users can run; elsewhere they are skipped with the reason."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tool_env, wait_for
from test_multiuser import RUNUSER, USERS, as_user, gsub_as, shared, users  # noqa: F401

from spoold import ghist, gstat
from spoold.spool import Spool as RealSpool
from spoold.toolbase import esc

ALICE, BOB = USERS
MULTIUSER = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin:/bin"),
    reason="multi-user tests need root and useradd")
EVIL = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\u202e\\x1b\nnext"
NOW = 1_800_000_000.0


def controls(text: str) -> set[str]:
    """Characters a terminal would act on (newlines between lines aside)."""
    return {c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
            or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069}


def strict_json(text: bytes):
    def refuse(const):
        raise ValueError(f"not JSON: {const}")
    return json.loads(text, parse_constant=refuse)


# ---- F24: control characters -------------------------------------------------------------

def test_esc_makes_every_control_character_visible_and_keeps_text_unambiguous():
    assert esc("train-1 é ✓") == "train-1 é ✓"
    assert esc("\x1b]0;x\x07") == "\\x1b]0;x\\x07"
    assert esc("\x7f\x9b\u202e\ud800") == "\\x7f\\x9b\\u202e\\ud800"
    assert esc("\\x1b") == "\\\\x1b"  # a literal backslash never looks like an escape
    assert esc(None) == "" and esc(7) == "7"


def test_tables_escape_user_text_in_every_field():
    evil_snap = {
        "spool": "/s", "time": NOW, "host": EVIL, "daemon": {"running": True, "pid": 1},
        "paused": False, "enforced": {EVIL: EVIL},
        "hosts": [{"host": EVIL, "alive": True, "lost": False, "heartbeat_age": 1},
                  {"host": "b", "alive": False, "lost": True, "heartbeat_age": 99}],
        "gpus": [{"index": 0, "host": EVIL, "utilization": 1, "memory_used": 1,
                  "memory_total": 2, "busy": EVIL, "jobs": []}],
        "running": [{"id": 7, "name": EVIL, "user": EVIL, "assigned_gpus": [0],
                     "elapsed": 5, "time_limit": None, "command": EVIL, "killing": EVIL}],
        "pending": [{"id": 8, "priority": 10, "name": EVIL, "user": EVIL, "gpus": 1,
                     "wait": 1, "reason": EVIL}],
        "shares": [{"user": EVIL, "gpus": 1, "usage_gpu_h": 1.0, "rank": 1, "max_gpus": None,
                    "max_cpus": None, "admin": False}]}
    rows = [{"id": 5, "state": "failed", "outcome": EVIL, "exit_code": 1, "name": EVIL,
             "user": EVIL, "assigned_gpus": [0], "submitted_at": NOW - 90, "ended_at": NOW,
             "started_at": NOW - 60, "elapsed": 60, "reason": EVIL, "command": EVIL},
            {"id": 6, "state": "done", "exit_code": 0, "name": EVIL, "user": EVIL,
             "assigned_gpus": [0], "submitted_at": None, "ended_at": NOW,
             "started_at": NOW - 60, "elapsed": 60, "reason": None, "command": EVIL}]
    for text in (gstat.render_gstat(evil_snap, 10_000), ghist.render_ghist(rows, 10_000),
                 ghist.render_ghist(rows, 10_000, long=True),
                 ghist.render_users(ghist.users_summary(rows), NOW, 10_000),
                 ghist.render_timeline(rows, [0], NOW, 1, 200)):
        assert not controls(text), text
        assert "\\x1b]0;pwned\\x07" in text


def test_a_job_named_with_an_escape_sequence_never_reaches_the_terminal(spool, daemon):
    name = "\x1b]0;pwned\x07"
    done = spool.gsub("-n", "1", "-J", name, "-c", "exit 3")
    spool.wait_state(done, "failed")
    spool.drop("0010-evil.yaml", yaml.safe_dump(
        {"cmd": "echo \x1b[2J", "name": name, "gpus": 0, "pin_host": "\x1b[31mnowhere",
         "user": "\x1b[5mroot"}))
    wait_for(lambda: any(p["name"] == name for p in json.loads(
        spool.run("gstat", "--json").stdout)["pending"]), what="the pinned job, pending")
    for args in (["gstat"], ["ghist", "-f"], ["ghist", "--timeline", "1"]):
        out = spool.run(*args).stdout.decode()
        assert "\x1b" not in out and "\x07" not in out, (args, out)
        assert "\\x1b]0;pwned\\x07" in out, (args, out)
    assert "pinned to host \\x1b[31mnowhere" in spool.run("gstat").stdout.decode()
    bad = spool.gsub("-n", "0", "-o", "/nonexistent-spoold-dir/\x1b[2Jout", "--", "true")
    spool.wait_state(bad)
    p = spool.run("glog", str(bad), check=False)
    assert p.returncode == 1 and b"\x1b" not in p.stderr and b"\\x1b[2Jout" in p.stderr


# ---- F24: JSON ------------------------------------------------------------------------------

def test_json_is_strict_when_records_hold_nan_or_infinity(spool):
    root = spool.root
    (root / "pending" / "0010-00000001.yaml").write_text(
        "argv: [true]\nsubmitted_at: .nan\nhold: true\n")
    (root / "done" / "2.yaml").write_text(
        "id: 2\nargv: [true]\nuid: 0\nsubmitted_at: .nan\nstarted_at: -.inf\n"
        "ended_at: .inf\nassigned_gpus: [0]\nexit_code: 0\n")
    snap = strict_json(spool.run("gstat", "--json").stdout)
    assert snap["pending"][0]["id"] == 1 and snap["pending"][0]["wait"] is not None
    hist = strict_json(spool.run("ghist", "--json").stdout)
    assert hist[0]["id"] == 2 and hist[0]["submitted_at"] is None
    assert hist[0]["ended_at"] is None and hist[0]["started_at"] is None
    for args in (["gstat"], ["ghist"], ["ghist", "--timeline"]):
        assert spool.run(*args).returncode == 0


def test_hostile_shares_usage_and_outcomes_are_checked_and_json_stays_strict(spool):
    """A heartbeat's shares: and a record's usage:/outcome: are read as the
    untrusted text they are: wrong types are dropped, never shown as numbers,
    never make a user an admin, and never break strict JSON."""
    root = spool.root
    beat = {"host": "box", "time": time.time(), "pid": 1, "gpus": [],
            "jobs": [{"id": 1, "gpus": [], "gpu_mem_mib": float("inf")}],
            "shares": [{"uid": True, "user": "bool-uid"}, {"uid": -1, "user": "negative"},
                       {"uid": "7", "user": "text-uid"}, "not a mapping",
                       {"uid": 4_000_001, "user": EVIL, "gpus": -3, "usage_gpu_h": float("nan"),
                        "rank": True, "max_gpus": "2", "max_cpus": 1.5, "admin": "yes"}]}
    (root / "state" / "hosts" / "box.yaml").write_text(yaml.safe_dump(beat))
    (root / "running" / "1.yaml").write_text("id: 1\nargv: [true]\nstarted_at: 1.0\n")
    (root / "done" / "2.yaml").write_text(
        "id: 2\nargv: [true]\noutcome: [completed]\nassigned_gpus: [0, x, true]\n"
        "usage: {cpu_s: .inf, max_rss_mib: -5, gpu_mem_peak_mib: '9', gpu_util_mean: 50}\n")
    (root / "done" / "3.yaml").write_text("id: 3\nargv: [true]\nusage: [1, 2]\n")
    snap = strict_json(spool.run("gstat", "--json").stdout)
    assert snap["shares"] == [{"uid": 4_000_001, "user": EVIL, "gpus": 0, "usage_gpu_h": None,
                               "rank": None, "max_gpus": None, "max_cpus": None,
                               "admin": False}]
    assert snap["running"][0]["gpu_mem_used"] is None
    hist = {r["id"]: r for r in strict_json(spool.run("ghist", "--json").stdout)}
    assert hist[2]["outcome"] is None and hist[2]["usage"] == {"gpu_util_mean": 50}
    assert hist[2]["assigned_gpus"] == [0] and hist[3]["usage"] == {}
    for args in (["gstat"], ["ghist", "-l"], ["ghist", "--users"]):
        text = spool.run(*args).stdout.decode()
        assert not controls(text.replace("\n", "")), (args, text)


# ---- A6: names from uids ------------------------------------------------------------------

def test_user_names_come_from_the_uid_never_from_USER(spool, daemon):
    me = pwd.getpwuid(os.getuid()).pw_name
    env = {k: v for k, v in tool_env(spool.root).items() if k not in ("USER", "LOGNAME")}
    ids = []
    for extra in ({}, {"USER": "mallory"}):
        p = subprocess.run(["dash", str(REPO / "bin" / "gsub"), "-n", "0", "--hold", "true"],
                           env={**env, **extra}, capture_output=True, check=True)
        ids.append(int(p.stdout))
    pend = json.loads(spool.run("gstat", "--json").stdout)["pending"]
    assert {p["id"]: p["user"] for p in pend} == {ids[0]: me, ids[1]: me}
    mine = json.loads(spool.run("gstat", "--json", "-u", env={"USER": "mallory"}).stdout)
    assert sorted(p["id"] for p in mine["pending"]) == ids
    assert json.loads(spool.run("gstat", "--json", "-u", "mallory").stdout)["pending"] == []


# ---- F25: closed pipes and Ctrl-C -----------------------------------------------------------

def _tool(spool, name: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import sys; from spoold.tools import "
                             f"{name}_main as m; sys.exit(m())", *args],
                            env=tool_env(spool.root), **kw)


def test_tools_exit_quietly_when_the_reader_goes_away(spool, daemon, tmp_path):
    big = spool.gsub("-n", "0", "-c", "head -c 2000000 /dev/zero | tr '\\0' x")
    spool.wait_state(big, "done")
    for args in (["glog", str(big)], ["gstat", "--watch", "0.05"]):
        err = tmp_path / "stderr"
        with open(err, "wb") as e:
            proc = _tool(spool, *args, stdout=subprocess.PIPE, stderr=e)
            assert proc.stdout.read(10)
            proc.stdout.close()  # as `| head -c 10` does
            assert proc.wait(20) == 141, args
        assert err.read_bytes() == b"", args


def test_ctrl_c_exits_130_without_a_traceback(spool, daemon, tmp_path):
    go = tmp_path / "go"
    j = spool.gsub("-n", "0", "-c", f"echo first; while [ ! -e {go} ]; do sleep 0.05; done")
    spool.wait_state(j, "running")
    for args in (["glog", "-f", str(j)], ["gstat", "--watch", "0.05"]):
        proc = _tool(spool, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130 and b"Traceback" not in err, (args, err)
    go.touch()


# ---- as other users ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def user_py(users):  # noqa: F811 - the fixture imported above
    """A Python the throwaway users can run, with PyYAML; spoold from the checkout."""
    for py in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        p = as_user(ALICE, py, "-c", "import yaml, spoold.tools", cwd=REPO, check=False)
        if p.returncode == 0:
            return py
    pytest.skip(f"no Python with PyYAML that {ALICE} can run")


def tool_as(py: str, name: str, tool: str, *args: str) -> subprocess.CompletedProcess:
    return as_user(name, py, "-c", f"import sys; from spoold.tools import {tool}_main as m; "
                   "sys.exit(m())", *args, cwd=REPO, check=False)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture
def lab(shared):  # noqa: F811 - test_multiuser's fixture: a root daemon on a shared spool
    return shared


@pytest.fixture
def bare(users):  # noqa: F811
    """A shared-layout spool and no daemon: records and heartbeats written by hand."""
    base = Path(tempfile.mkdtemp(prefix="spoold-view-", dir="/tmp"))
    os.chmod(base, 0o755)
    RealSpool(base / "spool").create(shared=True)
    yield base / "spool", users
    shutil.rmtree(base, ignore_errors=True)


def _record(path: Path, data: dict, owner: pwd.struct_passwd, mode: int = 0o640) -> None:
    path.write_text(yaml.safe_dump(data))
    os.chown(path, 0, owner.pw_gid)
    os.chmod(path, mode)


def _heartbeat(root: Path, jobs: list | None) -> None:
    beat = {"host": "box", "time": time.time(), "pid": 1, "host_timeout": 60,
            "gpus": [{"index": i, "busy": None, "memory_total": 100, "memory_used": 0,
                      "utilization": 0} for i in range(3)]}
    if jobs is not None:
        beat["jobs"] = jobs
    (root / "state" / "hosts" / "box.yaml").write_text(yaml.safe_dump(beat))


@MULTIUSER
def test_private_rows_come_from_the_heartbeat_and_an_older_heartbeat_still_works(bare,
                                                                                  user_py):
    root, accounts = bare
    alice = accounts[ALICE]
    for i in (7, 8):
        _record(root / "running" / f"{i}.yaml",
                {"id": i, "uid": alice.pw_uid, "user": ALICE, "name": f"secret-name-{i}",
                 "cmd": "echo TOPSECRET", "assigned_gpus": [i - 6], "host": "box",
                 "started_at": time.time() - 60}, alice)
    _heartbeat(root, [{"id": 7, "uid": alice.pw_uid, "user": "liar", "name": "train",
                       "gpus": [1], "cpus": [], "started_at": time.time() - 60,
                       "time_limit": 3600.0}])
    p = tool_as(user_py, BOB, "gstat", "--spool", str(root), "--json")
    assert p.returncode == 0, p.stderr
    snap = strict_json(p.stdout)
    rows = {r["id"]: r for r in snap["running"]}
    assert rows[7]["private"] and rows[7]["user"] == ALICE and rows[7]["name"] == "train"
    assert rows[7]["assigned_gpus"] == [1] and rows[7]["command"] == ""
    assert rows[8]["private"] and rows[8]["assigned_gpus"] == []  # not in the heartbeat
    assert {g["index"]: g["jobs"] for g in snap["gpus"]} == {0: [], 1: [7], 2: []}
    assert b"TOPSECRET" not in p.stdout and b"secret-name" not in p.stdout
    table = tool_as(user_py, BOB, "gstat", "--spool", str(root)).stdout.decode()
    assert "(private)" in table and "job 7" in table
    own = strict_json(tool_as(user_py, ALICE, "gstat", "--spool", str(root), "--json").stdout)
    assert [r["command"] for r in own["running"]] == ["echo TOPSECRET"] * 2
    _heartbeat(root, None)  # a daemon that does not publish jobs:
    p = tool_as(user_py, BOB, "gstat", "--spool", str(root), "--json")
    assert p.returncode == 0 and sorted(r["id"] for r in strict_json(p.stdout)["running"]) \
        == [7, 8]


@MULTIUSER
def test_other_users_see_a_running_job_and_its_gpus_but_not_its_private_fields(lab, user_py):
    sp, base, _ = lab
    go = base / ALICE / "go"
    j = gsub_as(base, ALICE, "-n", "2", "-J", "train", "-c",
                f"echo TOPSECRET; while [ ! -e {go} ]; do sleep 0.05; done")
    sp.wait_state(j, "running")

    def bobs_view():
        p = tool_as(user_py, BOB, "gstat", "--spool", str(sp.root), "--json")
        assert p.returncode == 0, p.stderr
        snap = strict_json(p.stdout)
        rows = [r for r in snap["running"] if r["id"] == j and r["assigned_gpus"]]
        return rows and (rows[0], snap, p.stdout)

    row, snap, raw = wait_for(bobs_view, what="bob to see alice's job in the heartbeat")
    assert row["private"] and row["user"] == ALICE and row["name"] == "train"
    assert snap["daemon"]["running"]  # its lock is root's: the fresh heartbeat tells
    assert len(row["assigned_gpus"]) == 2 and b"TOPSECRET" not in raw
    held = sorted(g["index"] for g in snap["gpus"] if j in g["jobs"])
    assert held == sorted(row["assigned_gpus"])
    go.touch()
    sp.wait_state(j, "done")


@MULTIUSER
def test_another_users_view_shows_effective_priorities_and_shares(lab, user_py):
    """Issue 16 as bob sees it: alice's file renamed to 0000 shows at the default
    priority (from its owner and name alone: bob cannot read it), and the
    heartbeat's shares list both users."""
    sp, base, _ = lab
    a = gsub_as(base, ALICE, "-n", "1", "--hold", "--", "true")
    b = gsub_as(base, BOB, "-n", "1", "--hold", "--", "true")
    as_user(ALICE, "mv", f"{sp.root}/pending/0010-{a:08d}.yaml",
            f"{sp.root}/pending/0000-{a:08d}.yaml")

    def bobs_view():
        p = tool_as(user_py, BOB, "gstat", "--spool", str(sp.root), "--json")
        assert p.returncode == 0, p.stderr
        snap = strict_json(p.stdout)
        return {s["user"] for s in snap["shares"]} >= {ALICE, BOB} and snap

    snap = wait_for(bobs_view, what="the daemon to publish both users' shares")
    rows = {r["id"]: r for r in snap["pending"]}
    assert rows[a]["private"] and (rows[a]["priority"], rows[a]["effective_priority"]) == (0, 10)
    assert (rows[b]["priority"], rows[b]["effective_priority"]) == (10, 10)
    assert all(s["rank"] for s in snap["shares"])  # fair share is on by default
    text = tool_as(user_py, BOB, "gstat", "--spool", str(sp.root)).stdout.decode()
    assert re.search(rf"^{a}\s+10 \(0000 asked\)", text, re.M) and "# shares" in text, text
    sp.run("gcancel", str(a), str(b))


# ---- A5: glog and -o ------------------------------------------------------------------------

@MULTIUSER
def test_root_glog_never_opens_a_users_output_path_as_root(lab):
    sp, base, _ = lab
    secret = base / "root-secret"
    secret.write_text("TOPSECRET\n")
    os.chmod(secret, 0o600)
    out = base / ALICE / "out"
    j = gsub_as(base, ALICE, "-n", "0", "-o", str(out), "--", "echo", "hello")
    sp.wait_state(j, "done")
    assert sp.run("glog", str(j)).stdout == b"hello\n"  # root reads it as alice could
    as_user(ALICE, "ln", "-sf", str(secret), str(out))  # now a link to root's file
    for args in ([str(j)], ["-f", str(j)]):
        p = sp.run("glog", *args, check=False)
        assert b"TOPSECRET" not in p.stdout
        assert "Permission denied" in one_line_error(p)


@MULTIUSER
def test_glog_of_another_users_job_is_one_line_not_a_traceback(lab, user_py):
    sp, base, _ = lab
    j = gsub_as(base, ALICE, "-n", "0", "--", "echo", "hers")
    sp.wait_state(j, "done")
    assert tool_as(user_py, ALICE, "glog", "--spool", str(sp.root), str(j)).stdout == b"hers\n"
    p = tool_as(user_py, BOB, "glog", "--spool", str(sp.root), str(j))
    assert b"hers" not in p.stdout and "Permission denied" in one_line_error(p)


# ---- A2: grequeue --------------------------------------------------------------------------

@MULTIUSER
def test_root_grequeue_gives_the_new_job_to_its_owner(lab):
    sp, base, accounts = lab
    who = base / ALICE / "who"
    j = gsub_as(base, ALICE, "-n", "0", "-c", f"id -u >> {who}")
    sp.wait_state(j, "done")
    sp.run("gpause")
    wait_for((sp.root / "state" / "paused").exists, what="queue paused")
    new = int(sp.run("grequeue", str(j)).stdout)
    path = sp.root / "pending" / f"0010-{new:08d}.yaml"
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (accounts[ALICE].pw_uid,
                                                          accounts[ALICE].pw_gid, 0o600)
    data = yaml.safe_load(path.read_text())
    assert not {"uid", "user", "pid", "host", "assigned_gpus", "started_at", "exit_code",
                "ended_at", "reason"} & set(data)
    assert data["requeued_from"] == j and data["id"] == new
    sp.run("gresume")
    assert sp.wait_state(new, "done")["uid"] == accounts[ALICE].pw_uid
    assert who.read_text().split() == [str(accounts[ALICE].pw_uid)] * 2


def _alices_done_job(root: Path, accounts: dict) -> None:
    """done/5.yaml: alice's job (by uid; its ``user:`` says bob), readable by all."""
    _record(root / "done" / "5.yaml", {"id": 5, "uid": accounts[ALICE].pw_uid, "user": BOB,
                                       "argv": ["true"], "gpus": 0}, accounts[ALICE], 0o644)


@MULTIUSER
def test_users_may_not_requeue_another_users_job(bare, user_py):
    root, accounts = bare
    _alices_done_job(root, accounts)
    p = tool_as(user_py, BOB, "grequeue", "--spool", str(root), "5")
    assert f"belongs to {ALICE}" in one_line_error(p)
    assert not list((root / "pending").iterdir())


@MULTIUSER
def test_users_may_requeue_their_own_jobs_in_a_shared_spool(bare, user_py):
    root, accounts = bare
    _alices_done_job(root, accounts)
    p = tool_as(user_py, ALICE, "grequeue", "--spool", str(root), "5")
    assert p.returncode == 0, p.stderr
    mine = list((root / "pending").iterdir())
    assert len(mine) == 1 and os.lstat(mine[0]).st_uid == accounts[ALICE].pw_uid


# ---- A6 and F25 as other users ------------------------------------------------------------

@MULTIUSER
def test_gstat_u_root_shows_roots_jobs_not_a_users_claim_to_be_root(lab):
    sp, base, _ = lab
    gsub = str(base / "bin" / "gsub")
    p = subprocess.run([RUNUSER, "-u", ALICE, "--", "env", "USER=root", "LOGNAME=root", "dash",
                        gsub, "--spool", str(sp.root), "-n", "0", "--hold", "true"],
                       capture_output=True, cwd=base / ALICE, check=True)
    liar = int(p.stdout)
    mine = sp.gsub("-n", "0", "--hold", "true")
    ids = lambda *a: sorted(r["id"] for r in json.loads(  # noqa: E731
        sp.run("gstat", "--json", *a).stdout)["pending"])
    assert ids("-u", "root") == [mine] and ids("-u") == [mine]  # (the tests run as root)
    assert ids("-u", ALICE) == [liar]


@MULTIUSER
def test_ghist_clean_without_permission_is_one_line_not_a_traceback(lab, user_py):
    sp, base, _ = lab
    j = gsub_as(base, ALICE, "-n", "0", "--", "true")
    sp.wait_state(j, "done")
    p = tool_as(user_py, ALICE, "ghist", "--spool", str(sp.root), "--clean")
    assert "permission denied" in one_line_error(p)
    assert sp.where(j) == "done"
