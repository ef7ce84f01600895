"""``spoold --stop [SECONDS] [--drain]`` against the real daemon, and
``spoold --completion``: the lock is the proof of which process to signal,
stopped means the lock is free, and the exit code says what happened."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HOST, REPO, lock_free, tool_env, wait_for
from test_multiuser import RUNUSER, alice_daemon, shared, users  # noqa: F401 (fixtures)

from spoold import control
from spoold.spool import Spool as RealSpool


def spoold(root: Path, *args: str, user: str | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    """``spoold ARGS --spool ROOT`` as a command, as root or as ``user``."""
    cmd = [sys.executable, "-m", "spoold.daemon", "--spool", str(root), *args]
    if user:
        cmd = [RUNUSER, "-u", user, "--", *cmd]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": "/tmp"} if user else \
        tool_env()
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env)


def lock_is_free(root: Path, host: str = HOST) -> bool:
    return lock_free(RealSpool(root).host_lock(host))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_signals_the_daemon_and_returns_once_it_has_exited(spool, daemon, tmp_path):
    go = tmp_path / "go"
    job = spool.gsub("-n", "0", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    pid = wait_for(lambda: spool.where(job) == "running" and spool.record(job).get("pid"))
    p = spoold(spool.root, "--stop")
    assert p.returncode == 0, p.stderr
    assert f"stopping spoold (pid {daemon.proc.pid})" in p.stderr and "has exited" in p.stderr
    # Returned only once the daemon had exited and its lock was free; its job runs on.
    assert daemon.proc.poll() == 0 and lock_is_free(spool.root)
    assert alive(pid) and spool.where(job) == "running"
    p = spoold(spool.root, "--stop")
    assert p.returncode == 1 and "no spoold runs the spool" in p.stderr
    daemon.start()  # the next daemon adopts the job
    go.touch()
    assert spool.wait_state(job)["exit_code"] == 0


def test_stop_is_for_this_spool_and_host_only(spool, daemon, tmp_path):
    p = spoold(spool.root, "--stop", "--host", "elsewhere")
    assert p.returncode == 1 and "no spoold runs" in p.stderr and "host elsewhere" in p.stderr
    other = tmp_path / "other"
    RealSpool(other).create()
    assert spoold(other, "--stop").returncode == 1
    assert spoold(tmp_path / "none", "--stop").returncode == 1
    assert daemon.alive()


def test_stop_drain_waits_for_the_running_jobs(spool, daemon, tmp_path):
    go = tmp_path / "go"
    job = spool.gsub("-n", "0", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    wait_for(lambda: spool.where(job) == "running" and spool.record(job).get("pid"))
    stopper = subprocess.Popen([sys.executable, "-m", "spoold.daemon", "--spool",
                                str(spool.root), "--stop", "--drain"], cwd=REPO,
                               env=tool_env(), stderr=subprocess.PIPE, text=True)
    try:
        beat = spool.root / "state" / "hosts" / f"{HOST}.yaml"
        wait_for(lambda: "draining: true" in beat.read_text(), what="the daemon draining")
        later = spool.gsub("-n", "0", "--", "true")
        time.sleep(0.5)  # the daemon would have started it by now if it still started jobs
        assert stopper.poll() is None and daemon.alive() and spool.where(later) == "pending"
        go.touch()
        assert stopper.wait(20) == 0
    finally:
        stopper.kill()
        err = stopper.stderr.read()
    assert "draining spoold" in err and "1 job(s) still running" in err, err
    assert daemon.proc.poll() == 0 and spool.where(job) == "done"


def test_stop_gives_up_after_its_timeout_and_says_so(spool, daemon, tmp_path):
    job = spool.gsub("-n", "0", "-c", f"while [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done")
    wait_for(lambda: spool.where(job) == "running" and spool.record(job).get("pid"))
    t0 = time.monotonic()
    p = spoold(spool.root, "--stop", "1", "--drain")
    assert p.returncode == 1 and time.monotonic() - t0 < 10
    assert "has not exited after 1s; it keeps draining" in p.stderr, p.stderr
    assert daemon.alive()
    assert spoold(spool.root, "--stop", "0").returncode == 2  # a limit must be positive


def test_stop_signals_only_the_process_that_holds_the_lock(spool, tmp_path):
    """A pid written in the lock file is a claim: an innocent process named
    there is never signalled, whether the lock is free or someone else holds it."""
    innocent = subprocess.Popen(["sleep", "60"])
    try:
        lock = RealSpool(spool.root).host_lock(HOST)
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(f"{innocent.pid}\n")
        p = spoold(spool.root, "--stop")
        assert p.returncode == 1 and "no spoold runs" in p.stderr
        fd = os.open(lock, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held, but by this process, not by the innocent one
        try:
            t0 = time.monotonic()
            p = spoold(spool.root, "--stop")
        finally:
            os.close(fd)
        assert p.returncode == 1 and "not by the pid written in it" in p.stderr, p.stderr
        assert time.monotonic() - t0 < 10 and innocent.poll() is None
    finally:
        innocent.kill()
        innocent.wait()


multiuser = pytest.mark.skipif(os.geteuid() != 0, reason="multi-user tests need root")


@multiuser
def test_stop_in_a_shared_spool_needs_root(shared):  # noqa: F811
    sp, _, _ = shared
    p = spoold(sp.root, "--stop", user="spoold-alice")
    assert p.returncode == 1 and "run spoold --stop as root" in p.stderr, p.stderr
    assert not lock_is_free(sp.root)


@multiuser
def test_a_user_stops_her_own_daemon(users):  # noqa: F811
    with alice_daemon() as (root, _):
        p = spoold(root, "--stop", user="spoold-alice")
        assert p.returncode == 0, p.stderr
        assert lock_is_free(root)


@pytest.mark.parametrize("shell, name", [("bash", "spoold.bash"), ("zsh", "_spoold")])
def test_completion_prints_the_shipped_file(shell, name, tmp_path):
    p = subprocess.run([sys.executable, "-m", "spoold.daemon", "--completion", shell],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == (REPO / "contrib" / "completion" / name).read_text()
    assert "--stop" in p.stdout and "--completion" in p.stdout


def test_completion_of_an_unknown_shell_is_a_usage_error():
    p = subprocess.run([sys.executable, "-m", "spoold.daemon", "--completion", "fish"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_every_spoold_option_completes():
    """The completions name every option spoold --help lists."""
    import re

    out = subprocess.run([sys.executable, "-m", "spoold.daemon", "--help"], capture_output=True,
                         text=True, check=True).stdout
    options = set(re.findall(r"(--[a-z][a-z-]+)", out)) - {"--help"}
    for shell in ("bash", "zsh"):
        text = control.completion_text(shell)
        assert not sorted(o for o in options if o not in text), shell


def test_cpus_above_what_the_machine_has_warns_at_start(daemon_factory):
    online = len(os.sched_getaffinity(0))
    d = daemon_factory("--cpus", str(online + 62))
    assert f"--cpus {online + 62}: only {online} CPU(s) are available" in d.output()
    p = subprocess.run([sys.executable, "-m", "spoold.daemon", "--cpus", "0", "--spool", "/x"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--cpus must be positive" in p.stderr

