"""The spool on disk: the only module that knows folder and file names.

Owns: the layout (``tmp/ pending/ running/ done/ failed/ cancelled/ requests/
logs/ state/``), the name patterns, which spool to use without --spool
(``default_spool``), id allocation, which folder a job is in (``where``),
deleting a finished job (``delete_finished``), safe reads of untrusted files
and every rename that changes a job's state. The sh tools in ``bin/`` apply
the same rules (tests/test_conformance.py runs both on the same spools).

Invariants:
- A job's state is the folder its file is in; every state change is one
  rename(2) inside the spool (one filesystem, so rename is atomic).
- Files are written in ``tmp/`` (daemon files start with ``.spoold.``),
  fsynced, then renamed into place: readers never see half a record.
- Final moves never overwrite an existing record (``move_noreplace``).
- Untrusted files are opened with O_NOFOLLOW|O_NONBLOCK, checked to be regular
  files with fstat on the open descriptor, and read only up to ``MAX_JOB_BYTES``.
- An id is taken by creating ``state/ids/<id>`` with O_EXCL, in every spool,
  starting from ``state/next-id`` as a hint (the daemon writes the hint under
  flock on ``state/next-id.lock``; gsub, which takes no lock, writes it in a
  private spool only); the shell tools in ``bin/`` follow the same protocol
  (tests/test_conformance.py). In a shared spool (pending/ has the sticky bit)
  the folder is 1777, so no one can remove another's marker.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
from pathlib import Path
from typing import NamedTuple

from .fsops import (  # noqa: F401 - the spool's operations, used as spool.X
    MAX_JOB_BYTES,
    BadFile,
    LeaseUnsupported,
    StillOpen,
    _unlink_quiet,
    fsync_dir,
    fsync_file,
    move_noreplace,
    read_untrusted,
    remove_entry,
)
from .job import DEFAULT_PRIORITY, MAX_ID, MAX_PRIORITY  # noqa: F401 - used via spool. too
from .util import id_in_name, parse_counter

# A record is the job file plus what the daemon adds; it is read back with this
# cap, so a job file just under MAX_JOB_BYTES still has a readable record.
MAX_RECORD_BYTES = 4 * MAX_JOB_BYTES
# Ids are at most MAX_ID (8 digits, the width of pending names; defined with
# the other field ranges in job.py): a file naming a larger id gets a fresh one,
# so no one can push the counter out of range.

JOB_DIRS = ("pending", "running", "done", "failed", "cancelled")
FINAL_DIRS = ("done", "failed", "cancelled")
ALL_DIRS = ("tmp", *JOB_DIRS, "requests", "logs", "state", "state/run", "state/ids",
            "state/hosts")
SHARED_DIRS = ("tmp", "pending", "requests", "state/ids")

_PENDING_RE = re.compile(r"([0-9]{1,4})-0*([0-9]+)\.yaml")
_FOREIGN_PRIO_RE = re.compile(r"([0-9]{1,4})-.*\.yaml", re.DOTALL)
_RECORD_RE = re.compile(r"0*([0-9]+)\.yaml")
_REQUEST_RE = re.compile(r"([a-z]+)-0*([0-9]+)")
# (fullmatch and [0-9]: "$" takes a final newline, and \d other scripts' digits)
REQUEST_KINDS = ("kill", "cancel", "hold", "release", "prio")  # prio-ID holds PRIO
QUEUE_REQUESTS = ("pause", "resume")
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_host(name: str) -> str:
    """Host names become file names: letters, digits, '.', '_', '-' only."""
    if not _HOST_RE.fullmatch(name):
        raise ValueError(f"not a usable host name: {name!r} (letters, digits, . _ -)")
    return name


def default_spool() -> Path:
    """The spool without --spool, for every tool and the daemon, as in gsub and
    gkill: $SPOOLD_SPOOL if not empty, else $HOME/.local/share/spoold (from the
    current folder if relative); NotASpool if both are empty or unset."""
    env = os.environ.get("SPOOLD_SPOOL")
    if env:
        return Path(env).absolute()
    home = os.environ.get("HOME")
    if not home:
        raise NotASpool("no spool: HOME is not set (pass --spool DIR or set SPOOLD_SPOOL)")
    return (Path(home) / ".local" / "share" / "spoold").absolute()


def spool_path(text: str) -> Path:
    """A --spool argument (argparse type); '' is refused, as by gsub and gkill."""
    if not text:
        raise argparse.ArgumentTypeError("empty folder name")
    return Path(text).absolute()


def pending_name(priority: int, job_id: int) -> str:
    return f"{priority:04d}-{job_id:08d}.yaml"


def record_name(job_id: int) -> str:
    return f"{job_id}.yaml"


def parse_record_name(name: str) -> int | None:
    m = _RECORD_RE.fullmatch(name)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


class PendingName(NamedTuple):
    """A name in pending/; sorts in queue order (priority, then id), in C."""

    priority: int
    job_id: int  # 0 for a foreign file that has no id yet
    name: str

    @property
    def has_id(self) -> bool:
        return self.job_id > 0


def parse_pending_name(name: str) -> PendingName | None:
    """None for names that are never jobs (dot files, not *.yaml)."""
    if name.startswith(".") or not name.endswith(".yaml"):
        return None
    if (len(name) == 18 and name.isascii() and name[4] == "-" and name[:4].isdigit()
            and name[5:13].isdigit() and name[5:13] != "00000000"):
        return PendingName(int(name[:4]), int(name[5:13]), name)  # the usual case, no regex
    m = _PENDING_RE.fullmatch(name)
    if m and int(m.group(2)) > 0 and name == pending_name(int(m.group(1)), int(m.group(2))):
        return PendingName(int(m.group(1)), int(m.group(2)), name)
    m = _FOREIGN_PRIO_RE.fullmatch(name)
    prio = int(m.group(1)) if m else DEFAULT_PRIORITY
    return PendingName(prio, 0, name)


def printable_name(name: str) -> str:
    """A file name as text that any YAML or JSON writer takes: bytes that are
    not UTF-8 (surrogate escapes from os.listdir) become \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


_GPU_REQUEST_RE = re.compile(r"(drain|undrain)-g([0-9]{1,4})\.([A-Za-z0-9][A-Za-z0-9._-]{0,62})")


def gpu_request_name(kind: str, gpu: int, host: str) -> str:
    """requests/drain-g2.HOST: drain (or undrain) GPU 2 of HOST (gdrain)."""
    return f"{kind}-g{gpu}.{check_host(host)}"


def parse_gpu_request(name: str) -> tuple[str, int, str] | None:
    """('drain', 2, 'vm') for drain-g2.vm; None for any other name."""
    m = _GPU_REQUEST_RE.fullmatch(name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def parse_request_name(name: str) -> tuple[str, int | None] | None:
    """('kill', 7) for kill-7; ('pause', None) for queue-wide requests; None if malformed."""
    if name in QUEUE_REQUESTS:
        return name, None
    m = _REQUEST_RE.fullmatch(name)
    if not m or m.group(1) not in REQUEST_KINDS or int(m.group(2)) == 0:
        return None
    return m.group(1), int(m.group(2))


class NotASpool(ValueError):
    """No spool named, or the named folder is something else; nothing is changed."""


PATHS_KEPT = 4096  # Path objects cost ~2 us to build; a few thousand jobs' are kept


class Spool:
    """Paths and the few primitive operations on a spool root."""

    def __init__(self, root: Path | str):
        self.root = Path(root).absolute()
        for d in ALL_DIRS:
            setattr(self, d.replace("/", "_"), self.root / d)
        self._paths: dict[tuple, Path] = {}  # a job's paths, asked for ~20 times per job

    def _memo(self, key: tuple, make) -> Path:
        p = self._paths.get(key)
        if p is None:
            if len(self._paths) >= PATHS_KEPT:
                self._paths.clear()
            p = self._paths[key] = make()
        return p

    tmp: Path
    pending: Path
    running: Path
    done: Path
    failed: Path
    cancelled: Path
    requests: Path
    logs: Path
    state: Path
    state_run: Path
    state_ids: Path

    def exists(self) -> bool:
        return self.pending.is_dir()

    def create(self, shared: bool = False) -> None:
        """Create the folders, or fix their modes. Private: 0700 throughout.
        Shared (daemon as root): anyone may drop files into tmp/, pending/ and
        requests/ (1777, like /tmp: no one can touch another's files); the
        rest is root's and read-only to others; state/run is root's alone.
        A folder that exists, is not empty and is not a spool is refused
        untouched (``SPOOLD_SPOOL=/tmp`` must not chmod /tmp)."""
        try:
            st = os.lstat(self.root)
        except FileNotFoundError:
            self.root.mkdir(parents=True, mode=0o755 if shared else 0o700)
            st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotASpool(f"{self.root} is not a folder")
        if not os.path.isdir(self.pending) and any(os.scandir(self.root)):
            raise NotASpool(f"{self.root} exists, is not empty and is not a spool (it has no "
                            "pending/ folder); spoold changes nothing there: name a new or "
                            "empty folder")
        os.chmod(self.root, 0o755 if shared else 0o700)
        self.ensure(shared)
        if not (self.state / "next-id").exists():
            self.allocate_ids(0)

    def missing(self) -> list[str]:
        """Spool folders that are not there (removed or moved away under us)."""
        return [d for d in ALL_DIRS if not os.path.isdir(self.root / d)]

    def ensure(self, shared: bool) -> None:
        """Make every folder exist with its mode (cheap enough for each rescan)."""
        for d in ALL_DIRS:
            mode = 0o700
            if shared:
                mode = 0o1777 if d in SHARED_DIRS else 0o700 if d == "state/run" else 0o755
            path = self.root / d
            path.mkdir(exist_ok=True)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "spool folder is not a folder", str(path))
            if shared and st.st_uid != 0:
                os.chown(path, 0, 0, follow_symlinks=False)
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)

    # ---- names -----------------------------------------------------------
    def dir(self, state: str) -> Path:
        return self.root / state

    def record(self, state: str, job_id: int) -> Path:
        return self._memo(("record", state, job_id),
                          lambda: self.root / state / record_name(job_id))

    def log_path(self, job_id: int) -> Path:
        return self._memo(("logs", job_id), lambda: self.logs / f"{job_id}.log")

    def run_dir(self, host: str) -> Path:
        """Run files of the jobs one host runs (each host sees only its own)."""
        return self.state_run / host

    def run_lock(self, job_id: int, host: str) -> Path:
        return self._memo(("run", host, job_id), lambda: self.state_run / host / f"{job_id}.lock")

    def host_file(self, host: str) -> Path:
        """The host's heartbeat: time, pid, GPU readings, limits."""
        return self.state / "hosts" / f"{host}.yaml"

    def drain_dir(self, host: str) -> Path:
        """Drained GPUs of a host: ``GPU.yaml`` each, written by its daemon."""
        return self.state / "drain" / host

    def host_lock(self, host: str) -> Path:
        """flock held by the host's daemon: one daemon per host and spool."""
        return self.state / "hosts" / f"{host}.lock"

    def hosts(self) -> list[str]:
        with os.scandir(self.state / "hosts") as it:
            return sorted(e.name[:-5] for e in it if e.name.endswith(".yaml")
                          and not e.name.startswith("."))

    def rejected_copy(self, job_id: int) -> Path:
        """Original bytes of a refused file, kept beside its record."""
        return self.failed / f"{job_id}.orig"

    @property
    def paused_flag(self) -> Path:
        return self.state / "paused"

    @property
    def daemon_log(self) -> Path:
        return self.state / "spoold.log"

    # ---- listings --------------------------------------------------------
    def _scan(self, folder: Path, parse) -> list:
        """``parse`` applied to every name in ``folder``, Nones dropped, sorted."""
        with os.scandir(folder) as it:
            return sorted(x for x in map(parse, (e.name for e in it)) if x is not None)

    def list_pending(self, others: set | None = None) -> list[PendingName]:
        """pending/ in queue order; names that are never jobs (dot files, not
        ``*.yaml``) are added to ``others`` when it is given."""
        if others is None:
            return self._scan(self.pending, parse_pending_name)
        found = []
        with os.scandir(self.pending) as it:
            for e in it:
                p = parse_pending_name(e.name)
                if p is not None:
                    found.append(p)
                elif not e.name.startswith("."):
                    others.add(e.name)
        found.sort()
        return found

    def list_ids(self, state: str) -> list[int]:
        return self._scan(self.root / state, parse_record_name)

    def list_requests(self) -> list[str]:
        with os.scandir(self.requests) as it:
            return sorted(e.name for e in it if not e.name.startswith("."))

    # ---- writing ---------------------------------------------------------
    def tmp_path(self, hint: str) -> Path:
        return self.tmp / f".spoold.{hint}.{secrets.token_hex(4)}"

    def write_tmp(self, data: bytes, hint: str, mode: int = 0o644, sync: bool = True,
                  group: int | None = None, owner: int | None = None) -> Path:
        """Write ``data`` to a fresh file in tmp/ and return its path; ``owner``
        and ``group`` (root only) are set on the open descriptor."""
        path = self.tmp_path(hint)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        try:
            os.fchmod(fd, mode)  # not narrowed by the umask: readers depend on it
            if group is not None or owner is not None:
                os.fchown(fd, -1 if owner is None else owner, -1 if group is None else group)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except BaseException:
            _unlink_quiet(path)  # a full disk leaves nothing behind in tmp/
            raise
        finally:
            os.close(fd)
        return path

    def replace_atomic(self, dest: Path, data: bytes, mode: int = 0o644, sync: bool = True,
                       group: int | None = None, owner: int | None = None) -> None:
        """Replace ``dest`` (a file the daemon owns) with ``data`` in one rename."""
        tmp = self.write_tmp(data, dest.name, mode, sync, group, owner)
        try:
            os.rename(tmp, dest)
        except BaseException:
            _unlink_quiet(tmp)
            raise

    def create_atomic(self, dest: Path, data: bytes, mode: int = 0o644, sync: bool = True,
                      group: int | None = None) -> None:
        """Place a new file at ``dest``; FileExistsError if something is there."""
        tmp = self.write_tmp(data, dest.name, mode, sync, group)
        try:
            move_noreplace(tmp, dest)
        except BaseException:
            _unlink_quiet(tmp)
            raise

    # ---- ids ---------------------------------------------------------------
    def shared(self) -> bool:
        return bool(os.stat(self.pending).st_mode & stat.S_ISVTX)

    def read_counter(self) -> int | None:
        """``state/next-id`` if it holds 1..MAX_ID+1, else None (missing, not a
        regular file, garbage from a crash mid-write). As gsub's _ghint reads
        it: [ -f ] (a link is followed), the first line, blanks around it
        dropped, ASCII digits only."""
        try:  # (O_NONBLOCK: a fifo is seen, not waited on)
            fd = os.open(self.state / "next-id", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
                return parse_counter(f.readline()) if regular else None
        except OSError:
            return None

    @contextlib.contextmanager
    def _counter(self):
        """The id counter under its flock: yields (current value or None, setter)."""
        counter = self.state / "next-id"
        fd = os.open(self.state / "next-id.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND
                     | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.read_counter(), lambda n: counter.write_text(f"{n}\n")
        finally:
            os.close(fd)

    def allocate_ids(self, count: int = 1) -> int:
        """Reserve ``count`` consecutive ids; return the first (same protocol as gsub).
        An id is taken by creating its marker ``state/ids/ID`` (``_take_markers``),
        from the counter as a hint, in every spool: gsub takes markers without
        the counter's lock, so only the marker says an id is free. The daemon
        (and root) move the counter under its flock; a user in a shared spool,
        who cannot open that lock, reads it as a hint only. A hint that does not
        parse is read once more (a gsub may be rewriting it) before it is rebuilt."""
        if count and os.geteuid() != 0 and self.shared():
            hint = self.read_counter() or self.read_counter()
            return self._take_markers(hint or self.max_id_seen() + 1, count)
        with self._counter() as (first, store):
            first = first or self.read_counter()
            if first is None:  # missing, or garbage from a crash mid-write: recover
                first = self.max_id_seen() + 1
            if count:
                first = self._take_markers(first, count)
            store(first + count)
            return first

    def _take_markers(self, start: int, count: int) -> int:
        """First id of ``count`` consecutive ids whose markers we could create
        (O_EXCL: an entry of any kind there means the id is taken). A private
        spool without ``state/ids`` (made before every spool took markers) gets
        the folder, as gsub makes it."""
        ids = self.root / "state" / "ids"
        while True:
            _check_ids_left(start, count, ids)
            made = 0
            for i in range(start, start + count):
                try:
                    os.close(os.open(ids / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
                except FileExistsError:
                    break
                except FileNotFoundError:
                    if made or self.shared() or os.path.lexists(ids):
                        raise
                    ids.mkdir(mode=0o700, exist_ok=True)
                    made = -1  # the same id again, now that there is a folder
                    break
                made += 1
            if made == count:
                return start
            start += made + 1  # past the taken id; the markers made stay used: never reused

    def raise_hint(self, seen: int) -> None:
        """Move the shared counter past ``seen`` so submitters probe few markers."""
        with self._counter() as (value, store):
            if value is None or value <= seen:
                store(seen + 1)

    def max_id_seen(self) -> int:
        """The largest id (``id_in_name``) in a name in pending/, running/, the
        final folders, tmp/, logs/, state/ids/ and folders of tmp/ (gsub's
        staged arrays; links not entered), as gsub's _grecover finds it."""
        best = 0
        for d in (*JOB_DIRS, "tmp", "logs", "state/ids"):
            for e in _entries(self.root / d):
                best = max(best, id_in_name(e.name) or 0)
                if d == "tmp" and e.is_dir(follow_symlinks=False):
                    best = max([best, *(id_in_name(f.name) or 0 for f in _entries(e.path))])
        return best

    # ---- where a job is ------------------------------------------------------
    def find(self, job_id: int) -> tuple[str, Path | None] | None:
        """(folder, record) of job ``job_id`` outside pending/: any entry named
        ``ID.yaml`` or ``IIIIIIII.yaml`` in running/ or a final folder, else
        ("failed", None) for the kept original of a refused file. The one answer
        to "where is job N" and "is this id used" (gsub --wait asks the same)."""
        root = os.fspath(self.root)  # (strings: this runs at every claim)
        names = dict.fromkeys((record_name(job_id), f"{job_id:08d}.yaml"))
        for d in ("running", *FINAL_DIRS):
            for name in names:
                if os.path.lexists(path := f"{root}/{d}/{name}"):
                    return d, Path(path)
        return ("failed", None) if os.path.lexists(self.rejected_copy(job_id)) else None

    def where(self, job_id: int) -> str | None:
        """The folder ``find`` names, else None."""
        return (self.find(job_id) or (None,))[0]

    def delete_finished(self, state: str, job_id: int) -> None:
        """Remove a finished job (--keep, ghist --clean): kept original and log
        first, the record last (a crash in between never leaves an original
        that recovery would make a record of again); links are not followed."""
        if state not in FINAL_DIRS:
            raise ValueError(f"job {job_id} is in {state}/, not finished")
        for p in (self.rejected_copy(job_id), self.log_path(job_id),
                  self.root / state / f"{job_id:08d}.yaml", self.record(state, job_id)):
            remove_entry(p)

    def marker_owner(self, job_id: int) -> int | None:
        """uid that created ``state/ids/<id>`` (shared spools), None if there is none."""
        try:
            return os.lstat(self.state_ids / str(job_id)).st_uid
        except FileNotFoundError:
            return None

    def claim_marker(self, job_id: int, uid: int) -> bool:
        """Create ``state/ids/<id>`` for ``uid`` (root only); False if it exists."""
        try:
            fd = os.open(self.state_ids / str(job_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.fchown(fd, uid, -1)
        finally:
            os.close(fd)
        return True


def _check_ids_left(first: int, count: int, where: Path) -> None:
    """ENOSPC, nothing written, when ids first.. first+count-1 pass MAX_ID."""
    if first + count - 1 > MAX_ID:
        raise OSError(errno.ENOSPC, f"no job id left: ids are at most {MAX_ID}; the next free "
                      f"one is {first}", str(where))


def _entries(folder: Path | str) -> list[os.DirEntry]:
    """The entries of ``folder`` but dot names; none if it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError:
        return []
