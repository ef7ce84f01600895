"""Attacks on the shell tools in a shared spool (issue 11, the tools' side).

requests/, pending/ and tmp/ of a shared spool are 1777 and ids are
predictable, so another user can plant a link, a fifo or a folder at any name
root's or a user's tool is about to create. These tests plant them as a
throwaway user (``spoold-bob``) against a root daemon (``shared`` from
test_multiuser), with the daemon stopped (SIGSTOP) while the tool runs, so
that what the tool itself does is what is tested; then the daemon goes on
and the tests check it cleans up and the job or request goes through.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import wait_for
from test_multiuser import USERS, as_user, pytestmark, shared, users  # noqa: F401

# (pytestmark: skipped unless root with useradd; shared, users: fixtures)

ALICE, BOB = USERS


def daemon_pid(root: Path) -> int:
    """The pid of the daemon running the spool ``root`` (from /proc)."""
    want = os.fsencode(str(root))
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"spoold.daemon" in argv and want in argv:
            return int(name)
    raise AssertionError(f"no daemon runs {root}")


@contextlib.contextmanager
def daemon_stopped(root: Path):
    """The daemon frozen, so a planted entry stays put while a tool meets it."""
    pid = daemon_pid(root)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def as_root(base: Path, sp, tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dash", str(base / "bin" / tool), "--spool", str(sp.root), *args],
                          capture_output=True, cwd=base, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/root", "USER": "root"})


def submit(base: Path, sp, who: str, *args: str) -> list[int]:
    if who == "root":
        p = as_root(base, sp, "gsub", *args)
        assert p.returncode == 0, p.stderr
        return [int(x) for x in p.stdout.split()]
    p = as_user(who, "dash", str(base / "bin" / "gsub"), "--spool", str(sp.root), *args,
                cwd=base / who)
    return [int(x) for x in p.stdout.split()]


def snapshot(path: Path) -> tuple:
    st = os.stat(path)
    return path.read_bytes(), st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_uid


@pytest.mark.parametrize("planted", ["link to a root-only file", "folder"])
@pytest.mark.parametrize("tool", ["gkill", "gpause"])
def test_planted_request_entry_fails_roots_request_untouched_and_a_retry_works(
        shared, tool, planted):  # noqa: F811 - the fixture imported above
    sp, base, _ = shared
    secret = base / "root-only"
    secret.write_text("root's secret\n")
    os.chmod(secret, 0o600)
    os.utime(secret, (1_000_000_000, 1_000_000_000))
    before = snapshot(secret)
    if tool == "gkill":
        go = base / "go"
        [j] = submit(base, sp, "root", "-n", "0", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
        sp.wait_state(j, "running")
        name, args = f"kill-{j}", [str(j)]
    else:
        name, args = "pause", []
    req = sp.root / "requests" / name
    with daemon_stopped(sp.root):
        if planted == "folder":
            as_user(BOB, "mkdir", "-m", "777", str(req))
        else:
            as_user(BOB, "ln", "-s", str(secret), str(req))
        p = as_root(base, sp, tool, *args)
        assert p.returncode == 1
        assert p.stderr.decode() == (
            f"{tool}: requests/{name} exists and is not your request (a folder, a link, a "
            "fifo or another user's file); spoold removes such entries within a few seconds: "
            "try again\n")
        assert snapshot(secret) == before
        if planted == "folder":
            assert os.listdir(req) == []
        else:
            assert os.readlink(req) == str(secret)
    # spoold removes what was planted (never following it); the retry goes through
    wait_for(lambda: not os.path.lexists(req), what=f"spoold to remove the planted {planted}")
    assert snapshot(secret) == before
    p = as_root(base, sp, tool, *args)
    assert (p.returncode, p.stderr) == (0, b"")
    if tool == "gkill":
        assert sp.wait_state(j, "cancelled")["uid"] == 0
    else:
        wait_for((sp.root / "state" / "paused").exists, what="the queue paused")
        assert as_root(base, sp, "gresume").returncode == 0
        wait_for(lambda: not (sp.root / "state" / "paused").exists(), what="resumed")


@pytest.mark.parametrize("submitter", [ALICE, "root"])
def test_planted_folders_at_the_predicted_pending_names_are_never_entered(
        shared, submitter):  # noqa: F811 - the fixture imported above
    sp, base, accounts = shared
    uid = 0 if submitter == "root" else accounts[submitter].pw_uid
    pending = sp.root / "pending"
    with daemon_stopped(sp.root):
        hint = int((sp.root / "state" / "next-id").read_text())
        planted = [pending / f"0010-{i:08d}.yaml" for i in range(hint, hint + 8)]
        for path in planted:
            as_user(BOB, "mkdir", "-m", "777", str(path))
        ids = submit(base, sp, submitter, "-n", "0", "--", "true")
        ids += submit(base, sp, submitter, "-n", "0", "--array", "1-3", "true")
        assert len(ids) == 4 and not set(ids) & set(range(hint, hint + 8)), (hint, ids)
        for j in ids:
            st = os.lstat(pending / f"0010-{j:08d}.yaml")
            assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o600)
        for path in planted:
            assert os.listdir(path) == [], path
        assert os.listdir(sp.root / "tmp") == []
    for j in ids:
        assert sp.wait_state(j, "done")["uid"] == uid
