"""Helpers for the attack tests of issue 11 (tests/test_attacks_daemon.py).

Owns: ``lab``, a shared spool like test_multiuser's ``shared`` but whose root
daemon takes extra options and is handed to the test (to restart it, or to
check it is alive); delivering files and requests as a throwaway user; and
read-only looks at the spool (who owns which job, the daemon's log, a
process's CPU time). Nothing here changes what the daemon does."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from conftest import HOST, Daemon, Spool, _kill_leftovers, fake_gpu_list, wait_for
from test_multiuser import USERS, as_user, shared_base, users  # noqa: F401 - users: a fixture

ALICE, BOB = USERS
FINAL = ("done", "failed", "cancelled")
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin:/bin"),
    reason="needs root (a root daemon, throwaway users, mounts)")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # records can be 1 MiB
WAIT_GO = "while [ ! -e {go} ]; do sleep 0.05; done"


class Lab(NamedTuple):
    sp: Spool
    base: Path  # beside the spool: bin/ (copied tools) and one home folder per user
    daemon: Daemon
    users: dict

    def uid(self, name: str) -> int:
        return self.users[name].pw_uid


@pytest.fixture
def lab(users):  # noqa: F811 - the fixture imported above
    """Factory: ``lab(*daemon_args, start=True)`` -> Lab with a root daemon."""
    made: list[Lab] = []

    def make(*args: str, start: bool = True) -> Lab:
        sp, base = shared_base("spoold-attack-")
        d = Daemon(sp, ["--poll", "0.2", "--kill-grace", "1", *args])
        d.logfile = base / "daemon.out"
        made.append(Lab(sp, base, d, users))
        if start:
            d.start()
        return made[-1]

    yield make
    for one in made:
        one.daemon.stop()
        _kill_leftovers(one.sp.root)
        shutil.rmtree(one.base, ignore_errors=True)


def tool_as(lab: Lab, name: str, tool: str, *args: str, check: bool = True):
    """Run a copied bin/ tool as user ``name`` on the lab's spool."""
    return as_user(name, "dash", str(lab.base / "bin" / tool), "--spool", str(lab.sp.root),
                   *args, cwd=lab.base / name, check=check)


def gsub_ids(lab: Lab, name: str, *args: str) -> list[int]:
    return [int(x) for x in tool_as(lab, name, "gsub", *args).stdout.split()]


def drop_as(lab: Lab, name: str, files: dict[str, str | bytes]) -> None:
    """Deliver ``files`` (pending name -> content) as user ``name``: written in
    the user's home folder (any size; argv could not carry 1 MiB), owned by
    the user, then moved into pending/ by the user with mv(1)."""
    stage = Path(tempfile.mkdtemp(prefix="drop-", dir=lab.base / name))
    for i, (dest, text) in enumerate(files.items()):
        f = stage / f"{i}.{dest}"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        os.chmod(f, 0o600)
        shutil.chown(f, name, name)
    shutil.chown(stage, name, name)
    script = 'for f in "$0"/*; do d=${f##*/}; mv "$f" "$1/${d#*.}" || exit 1; done'
    as_user(name, "sh", "-c", script, str(stage), str(lab.sp.root / "pending"))
    stage.rmdir()


def load(path: Path) -> dict | None:
    try:
        return yaml.load(path.read_bytes(), Loader=_LOADER)
    except (OSError, yaml.YAMLError):
        return None


def final(sp: Spool, job_id: int, timeout: float = 15.0) -> tuple[str, dict]:
    """Wait until ``job_id`` has a final record; (folder, record)."""
    state = wait_for(lambda: sp.where(job_id) in FINAL and sp.where(job_id), timeout,
                     f"job {job_id} to end (now {sp.where(job_id)})")
    return state, load(sp.root / state / f"{job_id}.yaml") or {}


def jobs_of(sp: Spool, uid: int) -> dict[int, str]:
    """id -> folder of every job of ``uid``: pending files it owns, records that say so."""
    from spoold.spool import parse_pending_name

    out = {}
    for p in (sp.root / "pending").iterdir():
        parsed = parse_pending_name(p.name)
        try:
            if parsed and parsed.has_id and os.lstat(p).st_uid == uid:
                out[parsed.job_id] = "pending"
        except FileNotFoundError:
            continue
    for d in ("running", *FINAL):
        for f in (sp.root / d).glob("*.yaml"):
            rec = load(f)
            if isinstance(rec, dict) and rec.get("uid") == uid:
                out[int(f.stem)] = d
    return out


def pending_ids(sp: Spool) -> list[int]:
    from spoold.spool import parse_pending_name

    return [p.job_id for p in map(parse_pending_name, os.listdir(sp.root / "pending"))
            if p and p.has_id]


def daemon_log(sp: Spool) -> list[str]:
    """state/spoold.log, split on newlines only (a forged line must show)."""
    p = sp.root / "state" / "spoold.log"
    return p.read_text(errors="replace").split("\n") if p.exists() else []


def start_fresh(d: Daemon, timeout: float = 15.0) -> None:
    """Start ``d`` and wait for a heartbeat written by this very process (an
    old heartbeat file proves nothing); recovery runs before the first one."""
    host = d.args[d.args.index("--host") + 1] if "--host" in d.args else HOST
    beat = d.spool.root / "state" / "hosts" / f"{host}.yaml"
    d.start(wait=False)
    wait_for(lambda: d.proc.poll() is not None or (load(beat) or {}).get("pid") == d.proc.pid,
             timeout, "the daemon's first heartbeat")
    assert d.alive(), d.output()[-3000:]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: ``tmpfs("size=8m,nr_inodes=64")`` -> a fresh small mount point."""
    mounted = []

    def make(opts: str) -> Path:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)],
                           capture_output=True)
        if p.returncode:
            pytest.skip(f"cannot mount a tmpfs: {p.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def small_spool(mnt: Path, tmp_path: Path, *args: str) -> tuple[Spool, Daemon]:
    """A spool (root daemon, not started) on ``mnt``; its output stays off ``mnt``."""
    from spoold.spool import Spool as RealSpool

    sp = Spool(mnt / "spool", tmp_path / "gpus-small.yaml")
    sp.set_gpus(fake_gpu_list(1))
    RealSpool(sp.root).create()
    d = Daemon(sp, ["--poll", "0.2", "--kill-grace", "1", *args])
    d.logfile = tmp_path / "daemon-small.out"
    return sp, d


def wait_pid_file(path: Path, timeout: float = 10.0) -> int:
    text = wait_for(lambda: path.exists() and path.read_text().strip(), timeout,
                    f"a pid in {path}")
    return int(text)


def stays_alive(pid: int, seconds: float) -> bool:
    """Watch ``pid`` for ``seconds``: False as soon as it ends."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not alive(pid):
            return False
        time.sleep(0.05)
    return True


def long_job(lab: Lab, name: str, go: Path) -> int:
    """A job of ``name`` that runs until ``go`` exists; waits until it runs."""
    j = gsub_ids(lab, name, "-n", "0", "-c", WAIT_GO.format(go=go))[0]
    wait_for(lambda: lab.sp.where(j) == "running" and (load(
        lab.sp.root / "running" / f"{j}.yaml") or {}).get("pid"), what=f"job {j} to run")
    return j


def bobs_copy(lab: Lab, taken: int, states: tuple[str, ...]) -> tuple[int, str]:
    """Wait until bob's file pending/0010-<taken> has been handled (renamed or
    moved on) and bob's only job is in one of ``states``; its (id, folder)."""
    name = lab.sp.root / "pending" / f"0010-{taken:08d}.yaml"

    def handled():
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(name).st_uid == lab.uid(BOB):
                return None
        mine = list(jobs_of(lab.sp, lab.uid(BOB)).items())
        return len(mine) == 1 and mine[0][1] in states and mine[0]
    return wait_for(handled, 10, f"bob's file to be handled (his jobs: {states})")


def check_bobs_job(lb: Lab, m: int, state: str, content: str) -> None:
    """Bob's file, now job ``m``, is handled as his: junk refused, a valid job
    waiting or ended for its missing dependency."""
    rec = (load(lb.sp.root / state / f"{m}.yaml") or {}) if state != "pending" else {}
    if content == "junk":
        assert state == "failed" and rec.get("reason", "").startswith("rejected")
        assert rec.get("uid") == lb.uid(BOB)
    else:
        assert state == "pending" or (state in ("failed", "cancelled")
                                      and "dependency" in rec.get("reason", "")), (state, rec)


def log_says_renamed(lab: Lab, old: int, new: int) -> bool:
    """Some line of the daemon's log names both the old id and ``job <new>``."""
    return any(re.search(rf"\bjob {new}\b", line) and (
        f"{old:08d}" in line or re.search(rf"\b{old}\b", line)) for line in daemon_log(lab.sp))


def replace_record(path: Path, rec: dict) -> None:
    """Rewrite a record as the daemon would (same owner and mode, one rename)."""
    st = os.stat(path)
    tmp = path.parent.parent / "tmp" / "test-record"
    tmp.write_text(yaml.safe_dump(rec))
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o777)
    os.rename(tmp, path)


# Run as a user: take a write lease on SRC, move it into pending/ as DEST (a
# lease survives the rename), then say so in READY (with our pid) and hold on.
LEASE_HOLDER = """
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease-break notice
src, dest, ready = sys.argv[1:]
fd = os.open(src, os.O_RDONLY)
fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE
os.rename(src, dest)
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
time.sleep(60)
"""

# Files created and deleted in a folder as fast as possible, ~500 alive at once.
CHURN = """
import os, sys
d, i = sys.argv[1], 0
while True:
    open(f"{d}/churn-{i}", "w").close()
    if i >= 500:
        os.unlink(f"{d}/churn-{i - 500}")
    i += 1
"""
