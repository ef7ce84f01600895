"""glog: print a job's output; -f follows it until the job ends.

Owns: finding a job's output and opening it with the right rights.

Invariants:
- A path a user named (``gsub -o FILE``, the record's ``log:``) is opened by
  root only after dropping to that job's owner (uid, gid, groups) in a forked
  child, which hands the open descriptor back: a symlink to a file the owner
  may not read is refused exactly as it would be for the owner. Other callers
  open it with their own rights. Only regular files are read.
- The spool's own ``logs/ID.log`` is opened with O_NOFOLLOW.
- The output itself is the job owner's own bytes and is copied raw; every
  message glog prints itself is escaped. Errors are one line and exit 1.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import stat
import sys
import time

from . import spool as spoolmod
from .runner import creds_for
from .toolbase import esc, fail, find_job, open_spool, read_owned, spool_arg, user_name


class Unreadable(Exception):
    """The output exists but cannot be shown; str(e) is the (escaped) reason."""


def open_as(uid: int, path: str) -> int:
    """``path`` opened read-only by a child running as ``uid`` (with its gid
    and groups); the descriptor comes back over a socket. OSError as the
    owner would have got it."""
    creds = creds_for(uid)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            ours.close()
            os.setgroups(list(creds.groups))
            os.setgid(creds.gid)
            os.setuid(creds.uid)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
                socket.send_fds(theirs, [b"ok"], [fd])
            except OSError as e:
                theirs.sendall(str(e.errno or errno.EACCES).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    try:
        msg, fds, _, _ = socket.recv_fds(ours, 32, 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    if fds:
        return fds[0]
    err = int(msg) if msg.isdigit() else errno.EPERM  # the child could not even drop
    raise OSError(err, os.strerror(err), path)


class Output:
    """A job's output file, opened once (when it exists) and read onwards."""

    def __init__(self, path: str, named: bool, owner: int | None):
        self.path, self.named, self.owner = path, named, owner
        self.fd: int | None = None

    def _open(self) -> int:
        if not self.named:  # logs/ID.log: the daemon's file in the daemon's folder
            return os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                           | os.O_CLOEXEC)
        if os.geteuid() == 0 and self.owner != 0:
            if self.owner is None:
                raise Unreadable(f"{esc(self.path)}: cannot tell whose job this is, so it "
                                 "is not opened as root")
            return open_as(self.owner, self.path)
        return os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)

    def ready(self) -> bool:
        """True once open; False while the file does not exist (yet)."""
        if self.fd is not None:
            return True
        try:
            fd = self._open()
        except FileNotFoundError:
            return False
        except OSError as e:
            who = f" (opened as {esc(user_name(self.owner))})" if self.owner else ""
            raise Unreadable(f"{esc(self.path)}: {e.strerror}{who}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Unreadable(f"{esc(self.path)} is not a regular file: nothing to show")
        self.fd = fd
        return True

    def copy_to(self, out) -> None:
        """Everything written since the last call."""
        if not self.ready():
            return
        while chunk := os.read(self.fd, 65536):
            out.write(chunk)
        out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="glog", description="Print a job's output; -f follows it until the job ends "
        "and exits with the job's exit code.",
        epilog="Examples: glog 12 | glog -f 12 | glog -f $(gsub python train.py)")
    spool_arg(ap)
    ap.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    ap.add_argument("id", help="job id")
    a = ap.parse_args(argv)
    if not a.id.isdigit() or int(a.id) == 0:
        ap.error(f"not a job id: {a.id!r}")
    job_id = int(a.id)
    sp = open_spool(a.spool, "glog")
    found = find_job(sp, job_id)
    if found is None:
        return fail("glog", f"no job {job_id} in {esc(sp.root)}")
    rec, owner = read_owned(found[1])
    output = output_of(sp, job_id, rec or {}, owner)
    try:
        return follow(sp, job_id, found[0], output, a.follow)
    except Unreadable as e:
        return fail("glog", f"cannot show job {job_id}'s output {e}")


def output_of(sp, job_id: int, rec: dict, owner: int | None) -> Output:
    named = rec.get("log")
    if not isinstance(named, str) or not named:
        return Output(str(sp.log_path(job_id)), False, owner)
    if not named.startswith("/"):  # as the shepherd opened it: from the job's directory
        cwd = rec.get("cwd") if isinstance(rec.get("cwd"), str) else None
        named = os.path.join(cwd or (creds_for(owner).home if owner is not None else "/"),
                             named)
    return Output(named, True, owner)


def follow(sp, job_id: int, first_state: str, output: Output, forever: bool) -> int:
    out = sys.stdout.buffer
    while True:
        output.copy_to(out)
        state = find_job(sp, job_id)
        final = state is not None and state[0] in spoolmod.FINAL_DIRS
        if forever and not final and state is not None:
            time.sleep(0.1)
            continue
        output.copy_to(out)  # what was written after our last read
        if not output.ready():
            if first_state == "pending" and not final:
                print(f"glog: job {job_id} has not started yet", file=sys.stderr)
                return 0
            raise Unreadable(f"{esc(output.path)}: no such file (nothing was written)")
        if forever and final:
            code = (read_owned(state[1])[0] or {}).get("exit_code")
            return code if isinstance(code, int) else 1
        return 0

