"""Issue 11 E, the daemon under a hostile or broken system: leases, churn in
tmp/, no inodes, a full disk, folders removed under it. Each attack as
written, against the real daemon; each docstring names its case."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import HOST, fill, wait_for
from test_multiuser import RUNUSER

pytest.register_assert_rewrite("attack_helpers")
from attack_helpers import (  # noqa: E402 - after the line above
    ALICE,
    CHURN,
    LEASE_HOLDER,
    ROOT_ONLY,
    WAIT_GO,
    cpu_seconds,
    final,
    gsub_ids,
    load,
    small_spool,
    start_fresh,
    stays_alive,
    wait_pid_file,
)

pytest_plugins = ("attack_helpers",)  # fixtures: lab, tmpfs, users
pytestmark = ROOT_ONLY


# ---- E: the daemon under a hostile or broken system ---------------------------------
def test_write_lease_on_a_pending_file_does_not_stop_the_daemon(lab):
    """issue 11 E19: alice holds a write lease on her own pending file (the
    daemon's open fails with EWOULDBLOCK); the daemon keeps serving."""
    lb = lab()
    src, ready = lb.base / ALICE / "lease.yaml", lb.base / ALICE / "leased"
    src.write_text("cmd: 'true'\ngpus: 0\n")
    shutil.chown(src, ALICE, ALICE)
    holder = subprocess.Popen([RUNUSER, "-u", ALICE, "--", "/usr/bin/python3", "-c",
                               LEASE_HOLDER, str(src), str(lb.sp.root / "pending" / "0010-l.yaml"),
                               str(ready)], stderr=subprocess.PIPE, cwd="/")
    try:
        wait_for(lambda: ready.exists() or holder.poll() is not None, 10, "the lease")
        if not ready.exists():
            pytest.skip(f"no write lease here: {holder.stderr.read().decode()[-200:]}")
        for _ in range(2):  # each submission makes the daemon list pending/ again
            j = gsub_ids(lb, ALICE, "-n", "0", "--", "true")[0]
            assert final(lb.sp, j, 10)[0] == "done"
            assert lb.daemon.proc.poll() is None, lb.daemon.output()[-2000:]
    finally:
        if ready.exists():
            os.kill(int(ready.read_text()), signal.SIGKILL)
        holder.wait(10)


def test_daemon_starts_while_files_come_and_go_in_tmp(spool, daemon_factory):
    """issue 11 E20: files created and deleted in tmp/ as fast as possible while
    the daemon starts: it comes up, five times out of five."""
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(spool.root / "tmp")])
    try:
        d = daemon_factory(start=False)
        for _ in range(5):
            start_fresh(d)
            d.stop()
    finally:
        churn.kill()
        churn.wait()


def test_daemon_survives_starting_with_no_inode_left(tmpfs, tmp_path):
    """issue 11 E21: every inode of the spool's filesystem used up in tmp/ when
    the daemon starts on a freshly created layout: it stays alive and, once
    they are freed, runs a job."""
    sp, d = small_spool(tmpfs("size=8m,nr_inodes=64"), tmp_path)
    fillers = fill(sp.root / "tmp", one_file=False)
    d.start(wait=False)
    try:
        wait_for(lambda: not d.alive() or f" on {sp.root}: host " in d.output()
                 or "No space left" in d.output(), 15, "the daemon to start or give up")
        assert d.alive(), d.output()[-2000:]
        for f in fillers:
            f.unlink()
        assert final(sp, sp.gsub("-n", "0", "--", "true"), 20)[0] == "done"
        assert d.alive()
    finally:
        d.stop()


def test_disk_full_retries_are_cheap_quiet_and_leave_no_temp_files(tmpfs, tmp_path):
    """issue 11 E22: a job ends while the disk is full: over 5 s the daemon uses
    under 1 s of CPU, logs fewer than 30 lines, leaves at most one .spoold.*
    file in tmp/; once space is back the record reaches done/."""
    mnt = tmpfs("size=8m")
    sp, d = small_spool(mnt, tmp_path)
    start_fresh(d)
    try:
        go = tmp_path / "go"
        j = sp.gsub("-n", "0", "-c", WAIT_GO.format(go=go))
        wait_for(lambda: (load(sp.root / "running" / f"{j}.yaml") or {}).get("pid"))
        big = fill(mnt, one_file=True)
        go.touch()
        run_file = sp.root / "state" / "run" / HOST / f"{j}.lock"
        wait_for(lambda: run_file.read_text().split()[-1:] != ["s"], 10, "the job to end")
        wait_for(lambda: "No space left" in d.output(), 10, "the daemon to hit the full disk")
        cpu, lines = cpu_seconds(d.proc.pid), d.output().count("\n")
        time.sleep(5)  # the measurement window itself
        cpu, lines = cpu_seconds(d.proc.pid) - cpu, d.output().count("\n") - lines
        temps = [p.name for p in (sp.root / "tmp").iterdir() if p.name.startswith(".spoold.")]
        assert (cpu < 1.0, lines < 30, len(temps) <= 1) == (True, True, True), \
            f"{cpu:.2f} s CPU, {lines} log lines, {len(temps)} temp files in 5 s"
        for f in big:
            f.unlink()
        assert final(sp, j, 20)[0] == "done"
    finally:
        d.stop()


def test_daemon_recreates_a_moved_running_folder_and_keeps_serving(spool, daemon, tmp_path):
    """issue 11 E23: `mv running running.x` while a job runs: the daemon keeps
    serving (a new job runs) and running/ exists again."""
    go = tmp_path / "go"
    j = spool.gsub("-n", "0", "-c", WAIT_GO.format(go=go))
    wait_for(lambda: (load(spool.root / "running" / f"{j}.yaml") or {}).get("pid"))
    os.rename(spool.root / "running", spool.root / "running.x")
    try:
        k = spool.gsub("-n", "0", "--", "true")
        assert final(spool, k, 15)[0] == "done"
        assert (spool.root / "running").is_dir() and daemon.alive()
    finally:
        go.touch()


def test_removing_the_run_folder_does_not_kill_a_running_job(spool, daemon, tmp_path):
    """issue 11 E23: `rm -rf state/run/<host>` while a job runs: the job lives
    on and ends in done/ (or failed with 'exit code unknown'), never killed."""
    go, pidf = tmp_path / "go", tmp_path / "pid"
    j = spool.gsub("-n", "0", "-c", f"echo $$ > {pidf}; {WAIT_GO.format(go=go)}")
    pid = wait_pid_file(pidf)
    shutil.rmtree(spool.root / "state" / "run" / HOST)
    assert stays_alive(pid, 2.0), "the job was killed"
    go.touch()
    state, rec = final(spool, j)
    assert state == "done" or "exit code unknown" in rec.get("reason", ""), (state, rec)


def test_daemon_recreates_removed_done_and_tmp_folders(spool, daemon, tmp_path):
    """issue 11 E23: done/ and tmp/ removed while a job runs: they come back and
    jobs finish."""
    go = tmp_path / "go"
    j = spool.gsub("-n", "0", "-c", WAIT_GO.format(go=go))
    wait_for(lambda: (load(spool.root / "running" / f"{j}.yaml") or {}).get("pid"))
    shutil.rmtree(spool.root / "done")
    shutil.rmtree(spool.root / "tmp")
    go.touch()
    assert final(spool, j, 15)[0] == "done"
    wait_for((spool.root / "tmp").is_dir, 10, "tmp/ to come back")
    assert final(spool, spool.gsub("-n", "0", "--", "true"))[0] == "done"
