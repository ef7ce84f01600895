"""Starting jobs under a shepherd, telling live jobs from dead ones, killing trees.

Owns: the shepherd (one line of ``sh``: a shell, not a Python interpreter),
the job's environment, and process-tree signalling.

Invariants:
- ``state/run/<host>/<id>.lock`` is created just before the shepherd starts. The
  shepherd gets it as stdin, opened read-write, holds an flock on it for its
  whole life, writes ``s`` into it before it runs the job and the job's exit
  status (``$?``: 128+N for signal N) as its last act.
  Lock held = running; lock free + status = finished; lock free + ``s`` only
  = vanished after starting; no file, or an empty one = never started (the
  daemon died before the shepherd ran), so the job may go back to pending/.
  No pid is ever trusted on its own.
- The job itself does not inherit that descriptor (its stdin is /dev/null), so
  a job's daemonised leftovers cannot keep the lock alive.
- A job's processes are found by ``SPOOLD_JOB_ID`` + ``SPOOLD_SPOOL`` in their
  environment, and by the shepherd's session: that catches children that
  called setsid() too. The shepherd is never signalled, so it can always
  record how the job ended.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SH = "/bin/sh"
# stdin is the locked run file; the exit status goes there when the job ends.
SHEPHERD = 'printf "s\\n" >&0; "$@" </dev/null; printf "%s\\n" $? >&0'
# With `gsub -o FILE`: the shepherd, already running as the job's user, opens
# FILE itself, so the daemon never opens a user-chosen path with its rights.
SHEPHERD_TO = 'L=$1; shift; printf "s\\n" >&0; "$@" </dev/null >>"$L" 2>&1; printf "%s\\n" $? >&0'
CRON_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Creds:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str


def creds_for(uid: int) -> Creds:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return Creds(uid, uid, (), str(uid), "/")
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return Creds(uid, pw.pw_gid, groups, pw.pw_name, pw.pw_dir)


def default_shell() -> str:
    return shutil.which("bash") or SH


def job_argv(job) -> list[bytes]:
    """The exact argv, bytes for bytes: argv as given, or cmd under a shell."""
    if job.argv is not None:
        return [os.fsencode(a) for a in job.argv]
    shell = job.get("shell") or default_shell()
    return [os.fsencode(shell), b"-c", os.fsencode(job.cmd)]


def job_env(job, spool_root: Path, gpus: tuple[int, ...], creds: Creds | None) -> dict:
    env = dict(job.env) if job.env is not None else _cron_env(creds)
    if creds is not None and os.geteuid() == 0:
        # As root the identity comes from the file's owner, never from the file.
        env.update(USER=creds.name, LOGNAME=creds.name, HOME=creds.home)
    visible = ",".join(map(str, gpus))
    env.update({
        "CUDA_VISIBLE_DEVICES": visible,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA's numbering = NVML's
        "SPOOLD_JOB_ID": str(job.id),
        "SPOOLD_GPUS": visible,
        "SPOOLD_SPOOL": str(spool_root),
        "PYTHONUNBUFFERED": "1",
    })
    if job.get("array_index") is not None:
        env["SPOOLD_ARRAY_INDEX"] = str(job.get("array_index"))
    return env


def _cron_env(creds: Creds | None) -> dict:
    """What cron gives a job: a file dropped without env: gets this much."""
    c = creds or creds_for(os.getuid())
    return {"PATH": CRON_PATH, "HOME": c.home, "USER": c.name, "LOGNAME": c.name,
            "SHELL": SH, "LANG": "C.UTF-8"}


def open_log(path: Path, creds: Creds | None) -> int:
    """The job's log in logs/ (a root folder in a shared spool): appended to,
    never through a link, owned by the job's user, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    if os.geteuid() == 0 and creds is not None:
        os.fchown(fd, creds.uid, creds.gid)
    return fd


def launch(spool, run_path: Path, job, gpus: tuple[int, ...], cpus: tuple[int, ...],
           creds: Creds | None, log_path: Path) -> int:
    """Start ``job`` under a shepherd; return the shepherd's pid.

    Raises OSError (cwd missing, log not writable, exec failed) with nothing
    started; the caller records the reason."""
    log_fd = open_log(log_path, creds)
    root = os.geteuid() == 0
    try:
        kw = {}
        if root and creds is not None and creds.uid != 0:
            kw = dict(user=creds.uid, group=creds.gid, extra_groups=list(creds.groups))
        cwd = job.get("cwd") or (creds.home if creds else os.path.expanduser("~"))
        if not os.path.isdir(cwd):
            raise FileNotFoundError(errno.ENOENT, "working directory does not exist", cwd)
        run_fd = os.open(run_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        old_mask = os.sched_getaffinity(0) if cpus else None
        try:
            fcntl.flock(run_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if cpus:  # the child inherits this thread's mask: no preexec_fn needed
                os.sched_setaffinity(0, cpus)
            out = job.get("log")
            script = [SHEPHERD_TO, "spoold-shepherd", os.fsencode(out)] if out else [
                SHEPHERD, "spoold-shepherd"]
            proc = subprocess.Popen(
                [SH, "-c", *script, *job_argv(job)],
                stdin=run_fd, stdout=log_fd, stderr=log_fd, cwd=cwd,
                env=job_env(job, spool.root, gpus, creds), start_new_session=True, **kw)
        except BaseException:
            # Nothing runs: remove the marker so the job counts as never started.
            with contextlib.suppress(OSError):
                os.unlink(run_path)
            raise
        finally:
            os.close(run_fd)  # the shepherd's copy now holds the lock alone
            if old_mask is not None:
                os.sched_setaffinity(0, old_mask)
        _children[proc.pid] = proc
        return proc.pid
    finally:
        os.close(log_fd)


def spawn_hook(job, gpus: tuple[int, ...], creds: Creds | None, log_path: Path,
               spool_root: Path, extra: dict) -> None:
    """Start a job's --on-finish command, detached; nothing waits for it."""
    log_fd = open_log(log_path, creds)
    try:
        kw = {}
        if os.geteuid() == 0 and creds is not None and creds.uid != 0:
            kw = dict(user=creds.uid, group=creds.gid, extra_groups=list(creds.groups))
        env = job_env(job, spool_root, gpus, creds)
        env.update(extra)
        env.pop("SPOOLD_SPOOL", None)  # not one of the job's processes: never killed with it
        env["SPOOLD_HOOK_SPOOL"] = str(spool_root)
        cwd = job.get("cwd") if os.path.isdir(job.get("cwd") or "") else "/"
        proc = subprocess.Popen([default_shell(), "-c", job.cmd], stdin=subprocess.DEVNULL,
                                stdout=log_fd, stderr=log_fd, cwd=cwd, env=env,
                                start_new_session=True, **kw)
        _children[proc.pid] = proc
    finally:
        os.close(log_fd)


# Shepherds started by this daemon, kept only so they are reaped (no zombies).
_children: dict[int, subprocess.Popen] = {}


def reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def status(run_path: Path) -> tuple[str, int | None]:
    """('running', None), ('exited', code), ('vanished', None) or ('unstarted', None)."""
    try:
        fd = os.open(run_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "unstarted", None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "running", None
        words = os.read(fd, 64).split()
    finally:
        os.close(fd)  # closing drops our probe lock at once
    if not words:
        return "unstarted", None
    if words[-1].isdigit():
        return "exited", int(words[-1])
    return "vanished", None


def clear(run_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(run_path)


def job_pids(spool_root: Path, job_id: int, shepherd: int | None) -> set[int]:
    """Every process of the job: by environment marker, and by session."""
    want_id = b"SPOOLD_JOB_ID=%d\0" % job_id
    want_spool = b"SPOOLD_SPOOL=" + os.fsencode(str(spool_root)) + b"\0"
    me = os.getpid()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in (me, shepherd):
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = b"\0" + f.read()
            if b"\0" + want_id in env and b"\0" + want_spool in env:
                found.add(pid)
                continue
            if shepherd:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[3]) == shepherd:  # session id
                    found.add(pid)
        except (OSError, IndexError, ValueError):
            continue
    return found


def signal_job(spool_root: Path, job_id: int, shepherd: int | None, sig: int) -> int:
    """Send ``sig`` to every process of the job; return how many got it."""
    n = 0
    for pid in job_pids(spool_root, job_id, shepherd):
        try:
            os.kill(pid, sig)
            n += 1
        except OSError as e:
            if e.errno not in (errno.ESRCH, errno.EPERM):
                raise
    return n


