"""One cgroup per job: the kernel's own answer to "which processes are this job".

Owns: finding a cgroup hierarchy the daemon may write, the per-job cgroups'
names, membership, signalling, killing and removal. Later: memory limits and
usage accounting hang off the same folders.

Layout: ``<the daemon's own cgroup>/spoold-<hash>/job-<id>``, where ``<hash>``
is a short sha256 of (spool root, host). So two daemons (two spools, or two
``--host`` names on one machine) never share a folder, and a restarted daemon,
which systemd puts back into the same unit cgroup, finds its jobs' cgroups
again. The ``spoold-<hash>`` folder is removed with its last job.

Hierarchies, first usable wins:
- cgroup v2 (a ``cgroup2`` mount, unified or hybrid): ended = ``populated 0``
  in ``cgroup.events`` (counts sub-cgroups too); kill = ``cgroup.kill``, which
  the kernel applies to every member at once, forks included (Linux >= 5.14),
  else SIGKILL to every member until none is left.
- cgroup v1 ``freezer`` (preferred: kill = freeze, SIGKILL every member, thaw,
  so nothing forks between the listing and the signal) or ``pids``.

Invariants:
- Only root uses cgroups (``detect`` answers None otherwise); the folders are
  root's, so a job cannot leave its cgroup or move a stranger into it.
- Membership is the kernel's: a process that called setsid(), cleared its
  environment and was re-parented to init is still listed.
- Nothing here raises for a job cgroup that does not exist (it reads as empty);
  ``create`` and ``remove`` are idempotent.
- A v2 cgroup with processes cannot enable controllers for its children (the
  "no internal processes" rule): memory limits will need the daemon itself to
  move into a leaf, and ``detect`` to take that leaf's parent as its own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import signal as signals
import time
from pathlib import Path

KILL_WAIT_S = 2.0  # how long kill() keeps signalling a tree that keeps forking
_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo escapes " " as \040


class Cgroups:
    """The job cgroups of one daemon (one spool root + host)."""

    why_not: str = ""  # why the last detect() answered None, for the daemon's log

    def __init__(self, base: Path, kind: str):
        self.base = base  # .../spoold-<hash>; created with the first job
        self.kind = kind  # "cgroup2", "freezer" or "pids"
        self.v2 = kind == "cgroup2"
        self.description = (f"cgroup v2 at {base}" if self.v2
                            else f"cgroup v1 ({kind}) at {base}")

    @classmethod
    def detect(cls, spool_root: Path, host: str) -> Cgroups | None:
        """The first hierarchy where this process can create and remove a job
        cgroup, or None (reason in ``Cgroups.why_not``)."""
        if os.geteuid() != 0:
            cls.why_not = "not running as root"
            return None
        key = f"{os.path.abspath(spool_root)}\0{host}".encode()
        name = "spoold-" + hashlib.sha256(key).hexdigest()[:12]
        try:
            hierarchies = _own_cgroups()
        except (OSError, ValueError) as e:  # no /proc, or a format we do not know
            cls.why_not = f"cannot read this process's cgroups: {e}"
            return None
        tried = []
        for kind, own in hierarchies:
            cg = cls(own / name, kind)
            try:
                cg._probe()
            except OSError as e:
                tried.append(f"{kind} at {own}: {e.strerror or e}")
                continue
            return cg
        cls.why_not = "; ".join(tried) or "no cgroup2, freezer or pids hierarchy is mounted"
        return None

    # ---- one job ---------------------------------------------------------------
    def path(self, job_id: int) -> Path:
        return self.base / f"job-{job_id}"

    def exists(self, job_id: int) -> bool:
        return self.path(job_id).is_dir()

    def create(self, job_id: int) -> None:
        self.base.mkdir(exist_ok=True)
        self.path(job_id).mkdir(exist_ok=True)
        if self.kind == "freezer":  # left frozen by a daemon killed mid-kill()
            self._write(self.path(job_id) / "freezer.state", "THAWED")

    def attach(self, job_id: int, pid: int) -> None:
        """Move ``pid`` (one process; its later children follow) into the job."""
        self._write(self.path(job_id) / "cgroup.procs", str(pid))

    def pids(self, job_id: int) -> set[int]:
        """Every process in the job's cgroup and in any cgroup below it."""
        found: set[int] = set()
        for d, _, _ in os.walk(self.path(job_id)):
            with contextlib.suppress(FileNotFoundError), open(
                    os.path.join(d, "cgroup.procs")) as f:
                found.update(int(w) for w in f.read().split())
        return found

    def populated(self, job_id: int) -> bool:
        if not self.v2:
            return bool(self.pids(job_id))
        try:
            with open(self.path(job_id) / "cgroup.events") as f:
                return "populated 1" in f.read().splitlines()
        except FileNotFoundError:
            return False

    def signal(self, job_id: int, sig: int) -> int:
        """Send ``sig`` to every member once; return how many got it."""
        return sum(send(pid, sig) for pid in self.pids(job_id))

    def kill(self, job_id: int) -> int:
        """SIGKILL everything in the job, forks racing with us included; return
        how many processes were signalled. Does not wait for them to be reaped."""
        path = self.path(job_id)
        if self.v2 and (path / "cgroup.kill").exists():
            n = len(self.pids(job_id))
            with contextlib.suppress(FileNotFoundError):
                self._write(path / "cgroup.kill", "1")
            return n
        killed: set[int] = set()
        deadline = time.monotonic() + KILL_WAIT_S
        freezer = self.kind == "freezer"
        while True:
            try:
                if freezer:  # best effort: a member stuck in the kernel never freezes
                    self._freeze(path, True)
                members = self.pids(job_id)
                for pid in members:
                    if send(pid, signals.SIGKILL):
                        killed.add(pid)
            finally:
                if freezer:  # v1 frozen tasks die only once thawed
                    self._freeze(path, False)
            if not members or time.monotonic() > deadline:
                return len(killed)
            time.sleep(0.01)

    def remove(self, job_id: int) -> None:
        """Remove the job's cgroup (and sub-cgroups) if no process is left in it,
        then the daemon's folder if that was its last job. Never raises for a
        missing or a still busy cgroup: it stays, and remove() may be called again."""
        path = self.path(job_id)
        for d, _, _ in sorted(os.walk(path), key=lambda t: -len(t[0])):  # deepest first
            with contextlib.suppress(OSError):  # EBUSY: a process is still in it
                os.rmdir(d)
        with contextlib.suppress(OSError):  # ENOTEMPTY/EBUSY: other jobs live there
            os.rmdir(self.base)

    def job_ids(self) -> set[int]:
        """The jobs that have a cgroup now (for recovery: leftovers of ended jobs)."""
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return set()
        return {int(n[4:]) for n in names if n.startswith("job-") and n[4:].isdigit()}

    # ---- helpers ---------------------------------------------------------------
    def _probe(self) -> None:
        """Raise OSError unless a job cgroup can be made and removed here."""
        self.base.mkdir(exist_ok=True)
        probe = self.base / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        if not os.access(probe / "cgroup.procs", os.W_OK):
            raise PermissionError(errno.EACCES, "cgroup.procs is not writable", str(probe))
        probe.rmdir()
        with contextlib.suppress(OSError):
            self.base.rmdir()

    @staticmethod
    def _write(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def _freeze(self, path: Path, on: bool) -> None:
        """v1 freezer: freeze (or thaw) the job and wait a moment for it to
        settle; a member stuck in the kernel may keep it FREEZING."""
        want = "FROZEN" if on else "THAWED"
        with contextlib.suppress(FileNotFoundError):
            self._write(path / "freezer.state", want)
            for _ in range(100):
                if (path / "freezer.state").read_text().strip() == want:
                    return
                time.sleep(0.005)


def send(pid: int, sig: int) -> bool:
    """kill(2) that answers whether ``pid`` got ``sig`` (False: it is gone)."""
    try:
        os.kill(pid, sig)
        return True
    except OSError as e:
        if e.errno not in (errno.ESRCH, errno.EPERM):
            raise
        return False


def _own_cgroups() -> list[tuple[str, Path]]:
    """(kind, folder of this process's own cgroup) per usable hierarchy, v2 first."""
    own: dict[str, str] = {}  # "" for v2, else each controller of the v1 line
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if hid != "0" else [""]:
                own[c] = path
    found = []
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for kind, key in (("cgroup2", ""), ("freezer", "freezer"), ("pids", "pids")):
        for m in mounts:
            sep = m.index("-")
            fstype, options = m[sep + 1], m[sep + 3].split(",")
            if key not in own or not (fstype == "cgroup2" if kind == "cgroup2"
                                      else fstype == "cgroup" and key in options):
                continue
            root, point = (_OCTAL.sub(lambda g: chr(int(g[1], 8)), s) for s in m[3:5])
            rel = os.path.relpath(own[key], root)
            if not rel.startswith(".."):  # our cgroup is visible under this mount
                found.append((kind, Path(os.path.normpath(os.path.join(point, rel)))))
                break
    return found
