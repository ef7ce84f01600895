"""Safe file operations on what users can touch: no names, no layout.

Owns: reading a file a user may have planted (``read_untrusted``: never a
link, never blocking on a fifo or a lease, capped), renaming without ever
replacing or entering a folder (``move_noreplace``), fsyncing a folder, and
removing whatever is at a path without following links (``remove_entry``).
``spool`` (which knows the names) builds on these.

Invariants:
- Untrusted files are opened with O_NOFOLLOW|O_NONBLOCK, checked to be regular
  files with fstat on the open descriptor, and read only up to a cap.
- ``move_noreplace`` is renameat2(RENAME_NOREPLACE), or link+unlink where the
  filesystem lacks it: it fails rather than replace anything.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import stat
from pathlib import Path

MAX_JOB_BYTES = 1 << 20


class BadFile(Exception):
    """An entry that cannot be read as a job; the message is the user's reason."""


class StillOpen(Exception):
    """Someone still has the file open for writing: not complete yet."""


class LeaseUnsupported(Exception):
    """This filesystem (NFS) cannot tell whether a writer has the file open."""


_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)


def _open_for_writing(fd: int) -> bool | None:
    """True if any process has the file open for writing, None if we cannot tell.

    A read lease is refused exactly while a writer holds the file open, which
    is the close-after-write test docs/spool-format.md describes, without
    relying on events."""
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return True if e.errno == errno.EAGAIN else None
    fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
    return False


def read_untrusted(path: Path, cap: int = MAX_JOB_BYTES, check_closed: bool = False) -> bytes:
    """Read a regular file without following links or blocking on fifos.

    With ``check_closed``: StillOpen if a writer has it open, LeaseUnsupported
    if that cannot be known here (the caller falls back to a settle time)."""
    st = os.lstat(path)
    kind = _kind(st.st_mode)
    if kind != "regular file":
        raise BadFile(f"{kind} in the spool: not a job file (never opened or followed)")
    if st.st_size > cap:
        raise BadFile(f"file is {st.st_size} bytes, over the {cap}-byte cap: refused unread")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadFile("symbolic link in the spool: never followed") from None
        if e.errno == errno.EWOULDBLOCK:
            # Its owner holds a write lease on it: as good as still being written.
            raise StillOpen(str(path)) from None
        raise
    try:
        st = os.fstat(fd)  # the file we opened, not the name we looked at
        if not stat.S_ISREG(st.st_mode):
            raise BadFile(f"{_kind(st.st_mode)} in the spool: not a job file")
        if check_closed:
            writing = _open_for_writing(fd)
            if writing:
                raise StillOpen(str(path))
            if writing is None:
                raise LeaseUnsupported(str(path))
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > cap:
                raise BadFile(f"file grew over the {cap}-byte cap while being read: refused")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_KINDS = {stat.S_IFREG: "regular file", stat.S_IFLNK: "symbolic link", stat.S_IFDIR: "directory",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "device or special file")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a regular file's content durable (never through a link, never
    blocking on a fifo); nothing if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_NOREPLACE = 1
_libc = None


def move_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``dst``."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018 - probe: glibc >= 2.28
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        at_fdcwd = -100
        rc = _libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst),
                             _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    # Filesystems without RENAME_NOREPLACE (NFS): link(2) fails atomically on EEXIST.
    os.link(src, dst, follow_symlinks=False)
    os.unlink(src)


def remove_entry(path: Path) -> None:
    """Remove whatever is at ``path`` (file, link, fifo or a planted folder with
    its contents) without following any link; gone already is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)  # fd-based: never follows a link inside
    else:
        _unlink_quiet(path)


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
