"""spoold's one-shot commands: ``spoold --stop [SECONDS] [--drain]`` and
``spoold --completion bash|zsh``.

Owns: proving which process runs a host's daemon on a spool, signalling it
and waiting until it has exited; finding the shell completions shipped with
the package.

Invariants:
- The lock is the proof, the pid a claim: the pid written in
  ``state/hosts/<host>.lock`` is signalled only while that pid holds the
  file's flock (its /proc/PID/fdinfo shows an FLOCK on a descriptor open on
  that very file). Anything else is reported and nothing is signalled.
- The process is signalled through a pidfd opened before the proof, so a pid
  that is reused after the check is never hit.
- The lock is probed (LOCK_NB, released at once), never waited for: a daemon
  that holds it is never disturbed.
- Stopped means the lock is free, not only that the process is gone: until
  then no daemon could start on that host.
- The completions have one copy, contrib/completion/: pyproject installs it
  as the package folder ``spoold/completion/``; a checkout reads it in place.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import stat
import sys
import time
from pathlib import Path

from .spool import Spool
from .toolbase import read_record

STOP_WAIT_S = 30.0  # --stop without SECONDS: a daemon that stops takes a second or two
PID_WRITE_S = 2.0  # a daemon writes its pid just after taking the lock
POLL_S = 0.1
COMPLETIONS = {"bash": "spoold.bash", "zsh": "_spoold"}


# ---- --completion ----------------------------------------------------------------------

def completion_text(shell: str) -> str:
    """The completion script for ``shell``: the installed copy, else the checkout's."""
    here = Path(__file__).resolve().parent
    folders = (here / "completion", here.parent / "contrib" / "completion")
    for folder in folders:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            return (folder / COMPLETIONS[shell]).read_text()
    raise FileNotFoundError(f"no {shell} completion installed with spoold (looked in "
                            f"{', '.join(map(str, folders))})")


class CompletionAction(argparse.Action):
    """``--completion SHELL``: print the script and exit, as --help does."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            text = completion_text(values)
        except OSError as e:
            parser.exit(1, f"spoold: {e}\n")
        sys.stdout.write(text)
        parser.exit(0)


# ---- --stop ------------------------------------------------------------------------------

def stop(root: Path, host: str, drain: bool, timeout: float | None) -> int:
    """Signal the daemon that runs ``root`` for ``host`` (TERM, or USR1 to
    drain) and wait until its lock is free. 0: stopped; 1: none runs, not
    ours to stop, or still running after ``timeout`` seconds (None: no limit)."""
    sp = Spool(root)
    where = f"the spool {root} for host {host}"
    lock = sp.host_lock(host)
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return _say(f"no spoold runs {where}", 1)
    except PermissionError:
        return _say(f"cannot open {lock}: permission denied. A shared spool's daemon is "
                    "root's: run spoold --stop as root", 1)
    except OSError as e:
        return _say(f"cannot use {lock}: {e.strerror}", 1)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return _say(f"{lock} is not a regular file: not a daemon's lock", 1)
        found = _prove(fd)
        if isinstance(found, str):
            return _say(found.format(where=where, lock=lock), 1)
        pid, pidfd = found
        try:
            return _signal_and_wait(sp, host, fd, pid, pidfd, drain, timeout)
        finally:
            if pidfd is not None:
                os.close(pidfd)
    finally:
        os.close(fd)


def _prove(fd: int) -> tuple[int, int | None] | str:
    """(pid, pidfd or None) of the process that holds the lock open on ``fd``
    and wrote its pid in it, or why there is none (a message to format)."""
    deadline = time.monotonic() + PID_WRITE_S
    while True:
        pid = _claim(fd)
        proof = _proof(pid, fd) if pid is not None else None
        if proof is not None:
            return proof
        if not _held(fd):
            return "no spoold runs {where}"
        if time.monotonic() > deadline:
            return ("{lock} is locked, but not by the pid written in it "
                    f"({pid if pid is not None else 'none'}): not signalling anything (a "
                    "daemon in another PID namespace?)")
        time.sleep(POLL_S)


def _proof(pid: int, fd: int) -> tuple[int, int | None] | None:
    """(pid, pidfd or None) if process ``pid`` holds the lock, else None. The
    pidfd is opened first: the process it names is the one that was checked."""
    try:
        pidfd = _pidfd(pid)
    except ProcessLookupError:
        return None  # a claim left behind by a daemon that exited
    if _holds(pid, fd):
        return pid, pidfd
    if pidfd is not None:
        os.close(pidfd)
    return None


def _claim(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (None where the kernel has none); ProcessLookupError
    when no such process exists."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, NotImplementedError):
        return None
    except OSError as e:
        if isinstance(e, ProcessLookupError):
            raise
        return None  # ENOSYS: a kernel before 5.3


def _holds(pid: int, fd: int) -> bool:
    """Whether process ``pid`` holds an flock through a descriptor of the file
    open on ``fd`` (/proc/PID/fdinfo lists the locks each descriptor holds)."""
    want = os.fstat(fd)
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
            if (st.st_dev, st.st_ino) != (want.st_dev, want.st_ino):
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                if any(line.startswith("lock:") and " FLOCK " in line for line in f):
                    return True
        except OSError:
            continue
    return False


def _held(fd: int) -> bool:
    """Whether anyone holds the lock; when no one does, it is taken and
    released at once (a probe, never a wait)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _signal_and_wait(sp: Spool, host: str, fd: int, pid: int, pidfd: int | None,
                     drain: bool, timeout: float | None) -> int:
    sig = signal.SIGUSR1 if drain else signal.SIGTERM
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it exited on its own meanwhile: the wait below sees the lock free
    except PermissionError:
        return _say(f"not allowed to signal spoold (pid {pid}): run this as its owner or root",
                    1)
    if drain:
        _say(f"draining spoold (pid {pid}) on {sp.root} for host {host}: it starts no new job "
             "and exits once its running jobs have ended")
    else:
        _say(f"stopping spoold (pid {pid}) on {sp.root} for host {host}; running jobs keep "
             "running and the next spoold adopts them")
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = None
    try:
        while _held(fd):
            if drain:
                count = _running_jobs(sp.host_file(host))
                if count is not None and count != shown:
                    _say(f"{count} job(s) still running on host {host}")
                    shown = count
            if deadline is not None and time.monotonic() > deadline:
                what = "draining" if drain else "stopping"
                return _say(f"spoold (pid {pid}) has not exited after {timeout:g}s; it keeps "
                            f"{what} (its log: {sp.daemon_log})", 1)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        return _say(f"stopped waiting; spoold (pid {pid}) exits on its own", 130)
    _say(f"spoold (pid {pid}) has exited")
    return 0


def _running_jobs(heartbeat: Path) -> int | None:
    """How many jobs the host's heartbeat lists as running (None: unreadable)."""
    jobs = (read_record(heartbeat) or {}).get("jobs")
    return len(jobs) if isinstance(jobs, list) else None


def _say(message: str, code: int = 0) -> int:
    print(f"spoold: {message}", file=sys.stderr, flush=True)
    return code
