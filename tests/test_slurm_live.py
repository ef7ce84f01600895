"""The SLURM bridge against a real SLURM (contrib/slurm/setup-single-node.sh:
one node with 4 fake GPUs); skipped, with the reason, without one."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_slurm_bridge import (
    DUMP,
    HOSTILE_ARGV,
    HOSTILE_ENV,
    FakeRun,
    decode,
    expected_env,
    make_job,
)

from spoold import runner, slurm

# ---- a real SLURM ---------------------------------------------------------------------
SETUP_HINT = "run `sh contrib/slurm/setup-single-node.sh` (as root) to get a one-node SLURM"


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("SLURM integration tests run as root (they submit as other users); "
                    + SETUP_HINT)
    if not slurm.available():
        pytest.skip("no SLURM controller answers (`scontrol ping`); " + SETUP_HINT)
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    if "gpu:4" not in gres:
        pytest.skip(f"the SLURM node has gres {gres.strip()!r}, not gpu:4; " + SETUP_HINT)
    return True


class Bridge:
    """Submits jobs through the bridge, waits on them, cancels leftovers at the end."""

    def __init__(self, root: Path):
        self.root, self.next_id, self.submitted = root, 100, []
        (root / "logs").mkdir(parents=True)

    def submit(self, data: dict, deps=(), creds=None) -> tuple[str, Path]:
        self.next_id += 1
        data = {"gpus": 0, "cwd": str(self.root), "env": {"PATH": "/usr/bin:/bin"}, **data}
        job = make_job(data, self.next_id)
        log = self.root / "logs" / f"{job.id}.log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if creds is not None:
            os.fchown(fd, creds.uid, creds.gid)
        os.close(fd)
        sid = slurm.submit(job, self.root, log, list(deps), creds=creds)
        self.submitted.append(sid)
        return sid, log

    def wait(self, sid: str, states, timeout: float = 20.0, reason: str | None = None):
        """Poll until the job is in one of ``states`` (and its reason mentions ``reason``)."""
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            got = slurm.query([sid])[sid]
            if got[0] in states and (reason is None or reason in (got[2] or "")):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"SLURM job {sid}: still {got} after {timeout}s, "
                                     f"want {states}")
            time.sleep(0.1)

    def wait_file(self, path: Path, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while not (path.exists() and path.read_text().endswith("\n")):
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} not written after {timeout}s")
            time.sleep(0.05)
        return path.read_text()


@pytest.fixture
def bridge(cluster):
    root = Path(tempfile.mkdtemp(prefix="spoold-slurm-", dir="/tmp"))
    root.chmod(0o755)  # jobs of other users (nobody) look in here too
    b = Bridge(root)
    yield b
    for sid in b.submitted:
        slurm.cancel(sid)
    shutil.rmtree(root, ignore_errors=True)


def last_json(log: Path) -> dict:
    lines = [ln for ln in log.read_bytes().splitlines() if ln.startswith(b"{")]
    assert lines, log.read_bytes()
    return json.loads(lines[-1])


def test_slurm_gpus_argv_env_cwd_roundtrip(bridge):
    cwd = bridge.root / "c w d\n#SBATCH --job-name=pwned\r\n'$x'"
    cwd.mkdir()
    env = {**HOSTILE_ENV, "SLURM_JOB_ID": "stale", "CUDA_VISIBLE_DEVICES": "7"}
    sid, log = bridge.submit({"argv": [sys.executable, "-c", DUMP, *HOSTILE_ARGV],
                              "gpus": 2, "cwd": str(cwd), "env": env, "name": "rt"})
    assert bridge.wait(sid, ("done", "failed")) == ("done", 0, None), log.read_text()
    dump = last_json(log)
    argv, got = decode(dump)
    assert argv == [os.fsencode(a) for a in [sys.executable, "-c", DUMP, *HOSTILE_ARGV]]
    assert dump["cwd"] == str(cwd)
    gpus = got[b"CUDA_VISIBLE_DEVICES"].split(b",")
    assert len(gpus) == 2 and len(set(gpus)) == 2 and all(g.isdigit() for g in gpus)
    assert got[b"SPOOLD_GPUS"] == got[b"CUDA_VISIBLE_DEVICES"]
    assert got[b"SLURM_JOB_ID"] == sid.encode()
    slurm_env = {os.fsdecode(k): os.fsdecode(v) for k, v in got.items()
                 if k.startswith((b"SLURM_", b"SLURMD_")) or os.fsdecode(k) in slurm._GPU_VARS}
    job = make_job({"argv": ["x"], "env": env})
    job.id = bridge.next_id
    assert got == expected_env(job, bridge.root, got[b"CUDA_VISIBLE_DEVICES"].decode(),
                               slurm_env)
    show = subprocess.run(["scontrol", "-o", "show", "job", sid], capture_output=True,
                          text=True).stdout
    assert " JobName=rt " in show and "pwned" not in show  # no #SBATCH line got through


def test_slurm_exit_codes(bridge):
    jobs = {want: bridge.submit({"argv": ["/bin/sh", "-c", cmd]})[0] for want, cmd in [
        (("done", 0, None), "exit 0"),
        (("failed", 3, "FAILED (NonZeroExitCode)"), "exit 3"),
        (("failed", 138), "kill -USR1 $$"),
    ]}
    for want, sid in jobs.items():
        got = bridge.wait(sid, ("done", "failed", "cancelled"))
        assert got[:len(want)] == want, got


def test_slurm_cancel_pending_and_running_and_failed_dependency(bridge):
    running, _ = bridge.submit({"argv": ["sleep", "60"]})
    bridge.wait(running, "running")
    held, _ = bridge.submit({"argv": ["true"]}, deps=[running])
    # right after sbatch the reason may still be None: the scheduler has not looked yet
    assert bridge.wait(held, "pending", reason="Dep") == ("pending", None, "PENDING (Dependency)")
    assert slurm.find(bridge.next_id, bridge.root, "root") == [held]
    slurm.cancel(held)
    assert bridge.wait(held, "cancelled")[:2] == ("cancelled", None)
    slurm.cancel(running)  # TERM: sleep dies of it
    assert bridge.wait(running, "cancelled")[:2] == ("cancelled", 143)
    slurm.cancel(running)  # again: nothing to do, no error

    failing, _ = bridge.submit({"argv": ["false"]})
    orphan, _ = bridge.submit({"argv": ["true"]}, deps=[failing])
    assert bridge.wait(failing, "failed")[:2] == ("failed", 1)
    state, code, reason = bridge.wait(orphan, ("cancelled", "done"))
    assert (state, code) == ("cancelled", None) and "Dependency" in reason


def test_slurm_signal_reaches_the_batch_step(bridge):
    ready = bridge.root / "ready"
    sid, log = bridge.submit({"argv": ["/bin/sh", "-c",
                                       f"trap 'echo got USR1; exit 5' USR1; echo > '{ready}';"
                                       " while :; do sleep 0.1; done"]})
    bridge.wait_file(ready)
    slurm.cancel(sid, "USR1")
    assert bridge.wait(sid, ("failed", "done", "cancelled"))[:2] == ("failed", 5)
    assert "got USR1" in log.read_text()


def test_slurm_dependency_afterok_and_allocated_gpus(bridge):
    go, mark = bridge.root / "go", bridge.root / "mark"
    first, _ = bridge.submit({"argv": ["/bin/sh", "-c", f"while [ ! -e '{go}' ]; do sleep 0.1;"
                                       f" done; echo first > '{mark}'"], "gpus": 3})
    then, log = bridge.submit({"argv": ["cat", str(mark)]}, deps=[first])
    bridge.wait(first, "running")
    gpus = slurm.allocated_gpus(first)
    assert gpus is not None and len(gpus) == 3 and set(gpus) <= {0, 1, 2, 3}
    assert bridge.wait(then, "pending", reason="Dep")[2] == "PENDING (Dependency)"
    go.touch()
    assert bridge.wait(then, ("done", "failed", "cancelled")) == ("done", 0, None)
    assert "first" in log.read_text()


def test_slurm_priority_and_renice(bridge):
    go, order = bridge.root / "go", bridge.root / "order"
    blocker, _ = bridge.submit({"argv": ["/bin/sh", "-c",
                                         f"while [ ! -e '{go}' ]; do sleep 0.1; done"],
                                "gpus": 4})
    bridge.wait(blocker, "running")
    ids = {}
    for name, prio in [("z", 30), ("y", 20), ("x", 50)]:  # submitted last, runs first
        ids[name], _ = bridge.submit({"argv": ["/bin/sh", "-c", f"echo {name} >> '{order}'"],
                                      "gpus": 4, "priority": prio})
    slurm.renice(ids["x"], 1)  # a renamed pending/ file: x goes first now
    for sid in ids.values():
        bridge.wait(sid, "pending")
    go.touch()
    for sid in ids.values():
        assert bridge.wait(sid, ("done", "failed"))[0] == "done"
    assert order.read_text().split() == ["x", "y", "z"]


def test_slurm_runs_as_the_owner(bridge):
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    creds = runner.creds_for(pw.pw_uid)
    sid, log = bridge.submit({"argv": ["/bin/sh", "-c", 'echo "$(id -u) $USER $HOME"']},
                             creds=creds)
    assert bridge.wait(sid, ("done", "failed")) == ("done", 0, None), log.read_text()
    assert log.read_text().split() == [str(pw.pw_uid), "nobody", pw.pw_dir]
    assert os.stat(log).st_uid == pw.pw_uid


def test_slurm_refusal_is_a_slurm_error(bridge):
    with pytest.raises(slurm.SlurmError, match="sbatch failed"):
        bridge.submit({"argv": ["true"], "gpus": 5})


def test_renice_argv():
    run = FakeRun({"scontrol": (0, "", "")})
    slurm.renice("12", 70, run=run)
    assert run.calls[0][0] == ["scontrol", "update", "JobId=12",
                               f"Nice={70 * slurm.NICE_PER_PRIORITY}"]
    with pytest.raises(slurm.SlurmError):
        slurm.renice("12 Nice=-1", 1, run=run)


def test_a_prio_request_for_a_job_the_local_executor_runs_is_ignored(spool, daemon, tmp_path):
    """requests/prio-ID is read (content capped) and removed; the local
    executor never has a job queued, so nothing changes and the log says so.
    A request that holds no priority is removed with a warning."""
    from conftest import wait_for

    go = tmp_path / "go"
    job = spool.gsub("-n", "0", "-p", "30", "-c", f"while [ ! -e {go} ]; do sleep 0.1; done")
    spool.wait_state(job, "running")
    assert spool.run("gprio", str(job), "70", check=False).returncode == 1
    req = spool.root / "requests" / f"prio-{job}"
    for text, said in (("70\n", "priority request ignored"), ("x" * 100, "not a priority"),
                       ("-1", "not a priority (0-9999): '-1'")):
        req.write_text(text)
        wait_for(lambda: not req.exists(), 20, "the request handled")
        wait_for(lambda s=said: s in daemon.output(), 20, said)
    assert spool.record(job)["priority"] == 30
    go.touch()
    assert spool.wait_state(job, "done")["priority"] == 30


@pytest.mark.parametrize("shared, sender, admin, asked, got", [
    (True, 1000, False, 5, 10), (True, 1000, False, 50, 50), (True, 1000, True, 5, 5),
    (True, 0, False, 0, 0), (False, 1000, False, 5, 5)])
def test_a_prio_request_follows_the_shared_spools_rule(tmp_path, shared, sender, admin, asked,
                                                        got):
    """In a shared spool only root and admins may go below the default (10),
    as for a pending file; the content is a number 0-9999 or nothing."""
    from types import SimpleNamespace

    from spoold.requests import Requests

    d = SimpleNamespace(shared=shared, shares=SimpleNamespace(is_admin=lambda uid: admin))
    r = Requests(d)
    req = tmp_path / "prio-7"
    req.write_text(f"{asked}\n")
    assert r.read_prio(req, sender) is True and r.prio == got
    for bad in ("", "10000", "1e3", "x", "9" * 40):
        req.write_text(bad)
        assert r.read_prio(req, sender) is True and r.prio is None


def test_details_knows_array_tasks_by_array_job_and_task_id():
    """``123_4`` is the record with ArrayJobId=123 ArrayTaskId=4, whatever its
    JobId; a name that tries to say otherwise comes after them and is ignored."""
    lines = {
        "123_4": "JobId=123 ArrayJobId=123 ArrayTaskId=4 JobName=x JobState=PENDING "
                 "Reason=JobArrayTaskLimit ExitCode=0:0\n",
        "123_1": "JobId=124 ArrayJobId=123 ArrayTaskId=1 JobName=x JobState=FAILED "
                 "Reason=NonZeroExitCode ExitCode=3:0\n",
        "123_2": "JobId=125 ArrayJobId=123 ArrayTaskId=9 JobName=ArrayTaskId=2 "
                 "JobState=COMPLETED Reason=None ExitCode=0:0\n",
        "124": "JobId=124 ArrayJobId=123 ArrayTaskId=1 JobName=x JobState=FAILED "
               "Reason=NonZeroExitCode ExitCode=3:0\n"}
    run = FakeRun({"scontrol": lambda argv: (0, lines[argv[-1]], ""),
                   "sacct": (1, "", "Slurm accounting storage is disabled\n")})
    got = slurm.details(list(lines), run=run)
    assert (got["123_4"].state, got["123_4"].reason) == ("pending",
                                                         "PENDING (JobArrayTaskLimit)")
    assert (got["123_1"].state, got["123_1"].code) == ("failed", 3)
    assert got["124"] == got["123_1"]
    assert got["123_2"].state == "unknown"
    for bad in ("123_", "_4", "123_4_5", "123-4"):
        with pytest.raises(slurm.SlurmError):
            slurm.cancel(bad, run=run)
