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
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import wait_for
from test_multiuser import RUNUSER, USERS, as_user, pytestmark, shared, users  # noqa: F401

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


# ---- gsub's one file in tmp/ ---------------------------------------------------------
# In a shared spool gsub writes a job under `set -C` (O_EXCL) to tmp/ID.UUID, the UUID
# read from /proc/sys/kernel/random/uuid by the shell's `read`. `set -C` opens a fifo or
# device that is already there without O_EXCL, so the name must be one no one else can
# know: these tests make it known (a file bind-mounted over the kernel's, in a mount
# namespace of the gsub's own) and plant entries at it.

UUID = "01234567-89ab-cdef-0123-456789abcdef"
MKTEMP_NAME = r"[0-9]+\.[A-Za-z0-9]{8}"


def gsub_seen(base: Path, sp, who: str, uuid: str | None, *args: str):
    """gsub run by ``who`` (root or a user) with the kernel's uuid file showing
    ``uuid`` (None: the kernel's own); (the result, the tmp/ names its `mv` moved,
    read by an `mv` first on PATH)."""
    fake, seen = base / "fake-bin", base / "mv-seen"
    if not fake.exists():
        fake.mkdir(mode=0o755)
        (fake / "mv").write_text(f'#!/bin/sh\nprintf "%s\\n" "$4" >> {seen}\n'
                                 'exec /usr/bin/mv "$@"\n')
        (fake / "mv").chmod(0o755)
    seen.write_text("")
    seen.chmod(0o666)
    cmd = ["dash", str(base / "bin" / "gsub"), "--spool", str(sp.root), *args]
    if who != "root":
        cmd = [RUNUSER, "-u", who, "--", *cmd]
    if uuid is not None:
        shown = base / "uuid"
        shown.write_text(uuid)
        shown.chmod(0o644)
        cmd = ["unshare", "-m", "sh", "-c",
               'mount --bind "$0" /proc/sys/kernel/random/uuid && exec "$@"', str(shown), *cmd]
    p = subprocess.run(cmd, capture_output=True, cwd=base, timeout=30,
                       env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": "/", "USER": who})
    return p, [os.path.relpath(s, sp.root / "tmp") for s in seen.read_text().split()]


needs_unshare = pytest.mark.skipif(not shutil.which("unshare"), reason="no unshare")


@pytest.mark.parametrize("submitter", [ALICE, "root"])
def test_gsub_writes_its_job_under_a_random_name_from_the_kernel(
        shared, submitter):  # noqa: F811 - the fixture imported above
    sp, base, _ = shared
    names = []
    for _ in range(2):
        p, seen = gsub_seen(base, sp, submitter, None, "-n", "0", "true")
        assert p.returncode == 0, p.stderr
        [j] = [int(x) for x in p.stdout.split()]
        [name] = seen
        assert re.fullmatch(rf"{j}\.[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}", name)
        names.append(name.split(".")[1])
        assert sp.wait_state(j, "done")["argv"] == ["true"]
    assert names[0] != names[1]


@needs_unshare
@pytest.mark.parametrize("planted", ["fifo", "link to a fifo", "link to a root-only file",
                                     "folder"])
@pytest.mark.parametrize("submitter", [ALICE, "root"])
def test_entries_planted_at_gsubs_random_name_are_never_opened(
        shared, submitter, planted):  # noqa: F811 - the fixture imported above
    """The name known (UUID) and planted at by another user: gsub never opens
    what is there (a fifo would leave it blocked; a link to a file would be
    written through) and delivers the job through a file from mktemp."""
    sp, base, accounts = shared
    uid = 0 if submitter == "root" else accounts[submitter].pw_uid
    secret = base / "root-only"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    before = snapshot(secret)
    fifo = base / BOB / "fifo"
    as_user(BOB, "mkfifo", "-m", "666", str(fifo), cwd=base / BOB)
    tmp = sp.root / "tmp"
    with daemon_stopped(sp.root):
        hint = int((sp.root / "state" / "next-id").read_text())
        ats = [tmp / f"{i}.{UUID}" for i in range(hint, hint + 3)]
        for at in ats:
            if planted == "fifo":
                as_user(BOB, "mkfifo", "-m", "666", str(at))
            elif planted == "folder":
                as_user(BOB, "mkdir", "-m", "777", str(at))
            else:
                as_user(BOB, "ln", "-s", str(fifo if "fifo" in planted else secret), str(at))
        p, seen = gsub_seen(base, sp, submitter, UUID, "-n", "0", "true")
        assert (p.returncode, p.stderr) == (0, b"")
        [j] = [int(x) for x in p.stdout.split()]
        assert hint <= j < hint + 3
        [name] = seen
        assert re.fullmatch(MKTEMP_NAME, name) and name.startswith(f"{j}."), name
        st = os.lstat(sp.root / "pending" / f"0010-{j:08d}.yaml")
        assert stat.S_ISREG(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o600)
        assert sorted(os.listdir(tmp)) == sorted(a.name for a in ats)
        for at in ats:
            assert os.lstat(at).st_uid == accounts[BOB].pw_uid
            if planted == "folder":
                assert os.listdir(at) == []
    assert snapshot(secret) == before
    assert sp.wait_state(j, "done")["uid"] == uid


@needs_unshare
@pytest.mark.parametrize("odd", ["", "0123", UUID.upper(), UUID[:-1] + "g", UUID[:-1],
                                 UUID.replace("-", "/", 1), "../../../x-aaaa-bbbb-cccc-ddddddddd",
                                 UUID + "0"])
def test_a_random_name_that_is_not_a_uuid_is_never_used(shared, odd):  # noqa: F811
    sp, base, accounts = shared
    p, seen = gsub_seen(base, sp, ALICE, odd, "-n", "0", "true")
    assert (p.returncode, p.stderr) == (0, b"")
    [j] = [int(x) for x in p.stdout.split()]
    [name] = seen
    assert re.fullmatch(MKTEMP_NAME, name) and name.startswith(f"{j}."), name
    assert sp.wait_state(j, "done")["uid"] == accounts[ALICE].pw_uid
    assert os.listdir(sp.root / "tmp") == []


@needs_unshare
def test_the_uuid_test_hook_itself_is_seen(shared):  # noqa: F811
    """The known name is used when nothing is planted (else the tests above
    would pass for a gsub that never reads the kernel's name)."""
    sp, base, _ = shared
    p, seen = gsub_seen(base, sp, ALICE, UUID, "-n", "0", "true")
    assert p.returncode == 0, p.stderr
    assert seen == [f"{int(p.stdout)}.{UUID}"]
