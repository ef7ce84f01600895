"""One cgroup per job: the kernel's own answer to "which processes are this job",
what they used, and how much memory they may use.

Owns: finding the cgroup hierarchies the daemon may write, the per-job
cgroups' names, membership, signalling, killing and removal, the job's memory
limit, and its CPU time, peak memory and OOM kills as the kernel counted them.

Layout: ``<the daemon's own cgroup>/spoold-<hash>/job-<id>`` in each hierarchy
used, where ``<hash>`` is a short sha256 of (spool root, host). So two daemons
(two spools, or two ``--host`` names on one machine) never share a folder, and
a restarted daemon, which systemd puts back into the same unit cgroup, finds
its jobs' cgroups again. The ``spoold-<hash>`` folder stays while jobs come and
go (making it again for each burst cost a mkdir, a write and an rmdir in each
hierarchy) and is removed once the daemon has no job left (``remove_base``).

Membership (``kind``), first usable wins:
- cgroup v2 (a ``cgroup2`` mount, unified or hybrid): ended = ``populated 0``
  in ``cgroup.events`` (counts sub-cgroups too); kill = ``cgroup.kill``, which
  the kernel applies to every member at once, forks included (Linux >= 5.14),
  else SIGKILL to every member until none is left.
- cgroup v1 ``freezer`` (preferred: kill = freeze, SIGKILL every member, thaw,
  so nothing forks between the listing and the signal) or ``pids``.

Accounting and limits, found once by ``detect`` (``description`` says which):
- CPU time: v2 ``cpu.stat`` ``usage_usec`` (a core file of every v2 cgroup,
  no controller needed), else the v1 ``cpuacct`` hierarchy (``cpuacct.usage``).
- Memory: v2 files (``memory.max`` + ``memory.oom.group``, ``memory.peak``,
  ``memory.events``) where the daemon's own cgroup enables ``memory`` in its
  ``cgroup.subtree_control``; else the v1 ``memory`` hierarchy
  (``memory.limit_in_bytes`` + ``memory.memsw.limit_in_bytes``,
  ``memory.max_usage_in_bytes``, ``memory.oom_control``). The peak counts what
  the kernel charges the job: its RSS and its page cache.
- A v1 hierarchy used for accounting gets the same layout; the job joins it in
  ``attach`` together with the membership one, before its gate opens.

Invariants:
- Only root uses cgroups (``detect`` answers None otherwise); the folders are
  root's, so a job cannot leave its cgroup or move a stranger into it.
- Membership is the kernel's: a process that called setsid(), cleared its
  environment and was re-parented to init is still listed.
- Nothing here raises for a job cgroup that does not exist (it reads as empty,
  its usage as unknown); ``create`` and ``remove`` are idempotent, and
  ``remove`` never raises.
- Usage and OOM kills live in the job's folders: read them after the job has
  ended and before ``remove``.
- A v2 cgroup with processes cannot enable controllers for its children (the
  "no internal processes" rule), so the daemon's own cgroup enables
  ``memory`` for ``spoold-<hash>`` only where it is the root cgroup (exempt).
  Elsewhere the daemon would first have to move itself into a leaf, which
  ``detect`` does not do: it falls back to v1 ``memory``, or to no limit.
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
MEMBERSHIP = ("cgroup2", "freezer", "pids")  # first usable wins
# v1 accounting hierarchies, with the file a job cgroup in each must have.
V1_ACCOUNTING = (("memory", "memory.limit_in_bytes"), ("cpuacct", "cpuacct.usage"))
MIB = 1 << 20


class Cgroups:
    """The job cgroups of one daemon (one spool root + host)."""

    why_not: str = ""  # why the last detect() answered None, for the daemon's log

    def __init__(self, base: Path, kind: str, *, v2_acct: frozenset[str] = frozenset(),
                 v1_acct: dict[str, Path] | None = None):
        self.base = base  # .../spoold-<hash>; created with the first job
        self.kind = kind  # "cgroup2", "freezer" or "pids"
        self.v2 = kind == "cgroup2"
        self.v2_acct = v2_acct  # of "cpu", "memory": files in the job's membership cgroup
        self.v1_acct = dict(v1_acct or {})  # "memory"/"cpuacct" -> spoold-<hash> in that v1
        self._job_dirs: dict[int, tuple[Path, ...]] = {}
        # How a memory limit is enforced (None: it is not), for logs and gstat.
        self.memory_limits = ("cgroup v2 memory.max" if "memory" in v2_acct else
                              "cgroup v1 memory.limit_in_bytes" if "memory" in self.v1_acct
                              else None)
        where = f"cgroup v2 at {base}" if self.v2 else f"cgroup v1 ({kind}) at {base}"
        cpu = ("CPU time from cgroup v2 cpu.stat" if "cpu" in v2_acct else
               f"CPU time from cgroup v1 cpuacct at {self.v1_acct['cpuacct']}"
               if "cpuacct" in self.v1_acct else "CPU time not measured")
        mem = ("memory limit and peak from cgroup v2 memory" if "memory" in v2_acct else
               f"memory limit and peak from cgroup v1 memory at {self.v1_acct['memory']}"
               if "memory" in self.v1_acct else "no memory controller: no limit or peak")
        self.description = f"{where}; {cpu}; {mem}"

    @classmethod
    def detect(cls, spool_root: Path, host: str,
               kinds: tuple[str, ...] = MEMBERSHIP) -> Cgroups | None:
        """The first hierarchy of ``kinds`` where this process can create and
        remove a job cgroup, with the accounting this machine offers besides;
        or None (reason in ``Cgroups.why_not``)."""
        if os.geteuid() != 0:
            cls.why_not = "not running as root"
            return None
        key = f"{os.path.abspath(spool_root)}\0{host}".encode()
        name = "spoold-" + hashlib.sha256(key).hexdigest()[:12]
        try:
            own = dict(_own_cgroups(kinds + tuple(c for c, _ in V1_ACCOUNTING)))
        except (OSError, ValueError) as e:  # no /proc, or a format we do not know
            cls.why_not = f"cannot read this process's cgroups: {e}"
            return None
        tried = []
        for kind in kinds:
            if kind not in own:
                continue
            v2_parent_enables = kind == "cgroup2" and "memory" in _read(
                own[kind] / "cgroup.subtree_control").split()
            try:
                files = _probe(own[kind] / name, "+memory" if v2_parent_enables else "")
            except OSError as e:
                tried.append(f"{kind} at {own[kind]}: {e.strerror or e}")
                continue
            v2_acct = frozenset(c for c, f in (("cpu", "cpu.stat"), ("memory", "memory.max"))
                                if kind == "cgroup2" and f in files)
            return cls(own[kind] / name, kind, v2_acct=v2_acct,
                       v1_acct=_v1_accounting(own, name, v2_acct))
        cls.why_not = "; ".join(tried) or f"no {', '.join(kinds)} hierarchy is mounted"
        return None

    # ---- one job ---------------------------------------------------------------
    def path(self, job_id: int) -> Path:
        return self._dirs(job_id)[0]

    def exists(self, job_id: int) -> bool:
        return self.path(job_id).is_dir()

    def create(self, job_id: int) -> None:
        for base, d in zip(self._bases(), self._dirs(job_id), strict=True):
            try:  # the common case: one mkdir (the base is made again after an idle time)
                os.mkdir(d)
                continue
            except (FileNotFoundError, FileExistsError):
                pass
            base.mkdir(exist_ok=True)
            if base == self.base and "memory" in self.v2_acct:  # job-N's memory files
                self._write(self.base / "cgroup.subtree_control", "+memory")
            d.mkdir(exist_ok=True)
        if self.kind == "freezer":  # left frozen by a daemon killed mid-kill()
            self._write(self.path(job_id) / "freezer.state", "THAWED")

    def attach(self, job_id: int, pid: int) -> None:
        """Move ``pid`` (one process; its later children follow) into the job,
        in every hierarchy used."""
        for d in self._dirs(job_id):
            self._write(d / "cgroup.procs", str(pid))

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
        return "populated 1" in _read(f"{self.path(job_id)}/cgroup.events").splitlines()

    def signal(self, job_id: int, sig: int) -> int:
        """Send ``sig`` to every member once; return how many got it."""
        return sum(send(pid, sig) for pid in self.pids(job_id))

    def kill(self, job_id: int) -> int:
        """SIGKILL everything in the job, forks racing with us included; return
        how many processes were signalled. Does not wait for them to be reaped."""
        path = self.path(job_id)
        if self.v2 and not self.populated(job_id):
            return 0  # the common end: nothing left (and nothing can enter but by us)
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
        """Remove the job's cgroups (and sub-cgroups) if no process is left in
        them. Its usage goes with them. Never raises: a missing or still busy
        cgroup stays, and remove() may be called again."""
        for job in self._dirs(job_id):
            try:
                os.rmdir(job)  # the common case: no sub-cgroups, no process left
            except FileNotFoundError:
                continue
            except OSError:  # sub-cgroups first, deepest first; EBUSY: a process is in one
                for sub, _, _ in sorted(os.walk(job), key=lambda t: -len(t[0])):
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)

    def remove_base(self) -> None:
        """Remove the daemon's ``spoold-<hash>`` folders if no job cgroup is
        left in them (else they stay: ENOTEMPTY/EBUSY). Never raises."""
        for base in self._bases():
            with contextlib.suppress(OSError):
                os.rmdir(base)

    def job_ids(self) -> set[int]:
        """The jobs that have a cgroup now, in any hierarchy used (for recovery:
        leftovers of ended jobs)."""
        found: set[int] = set()
        for base in self._bases():
            with contextlib.suppress(FileNotFoundError):
                found.update(int(n[4:]) for n in os.listdir(base)
                             if n.startswith("job-") and n[4:].isdigit())
        return found

    # ---- memory limit and usage -----------------------------------------------------
    def set_memory_limit(self, job_id: int, mib: int) -> str | None:
        """Limit the job (created, not yet running) to ``mib`` MiB of memory,
        swap included; return how (``memory_limits``), or None where no memory
        controller is usable. Over the limit the kernel's OOM killer acts inside
        the job (v2: on the whole cgroup, ``memory.oom.group``). Raises OSError
        when the limit cannot be written: the job must not run unlimited."""
        d = self._memory_dir(job_id)
        if d is None:
            return None
        limit = str(int(mib) * MIB)
        if "memory" in self.v2_acct:
            self._write(d / "memory.max", limit)
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if (d / name).exists():  # older kernels lack them
                    self._write(d / name, value)
        else:  # memsw (memory + swap) must stay >= the plain limit: order matters
            names = [n for n in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
                     if (d / n).exists()]
            try:
                for n in names:  # lowering (or first time): the plain limit first
                    self._write(d / n, limit)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                for n in reversed(names):  # raising: memsw first
                    self._write(d / n, limit)
        return self.memory_limits

    def usage(self, job_id: int) -> dict:
        """What the kernel counted for the job's cgroup, its ended processes
        included: ``cpu_s`` (user + system seconds) and ``max_rss_mib`` (peak
        charged memory). A key is absent when it is not known."""
        found = {}
        if "cpu" in self.v2_acct:
            usec = _keyed(self.path(job_id) / "cpu.stat").get("usage_usec")
            if usec is not None:
                found["cpu_s"] = round(usec / 1e6, 2)
        elif "cpuacct" in self.v1_acct:
            ns = _read_int(self.v1_acct["cpuacct"] / f"job-{job_id}" / "cpuacct.usage")
            if ns is not None:
                found["cpu_s"] = round(ns / 1e9, 2)
        d = self._memory_dir(job_id)
        if d is not None:
            peak = _read_int(d / ("memory.peak" if "memory" in self.v2_acct
                                  else "memory.max_usage_in_bytes"))
            if peak is not None:
                found["max_rss_mib"] = round(peak / MIB, 1)
        return found

    def oom_killed(self, job_id: int) -> bool:
        """Whether the kernel's OOM killer killed a process of the job's memory
        cgroup (over its limit). False when that is not known (no memory
        controller, a v1 kernel older than 4.13 without ``oom_kill``)."""
        d = self._memory_dir(job_id)
        if d is None:
            return False
        events = "memory.events" if "memory" in self.v2_acct else "memory.oom_control"
        return _keyed(d / events).get("oom_kill", 0) > 0

    # ---- helpers ---------------------------------------------------------------
    def _bases(self) -> list[Path]:
        """spoold-<hash> in each hierarchy used: membership first."""
        return [self.base, *(b for b in self.v1_acct.values() if b != self.base)]

    def _dirs(self, job_id: int) -> tuple[Path, ...]:
        """The job's folder in each hierarchy used, in ``_bases`` order (kept:
        asked for ~10 times per job)."""
        dirs = self._job_dirs.get(job_id)
        if dirs is None:
            if len(self._job_dirs) >= 1024:
                self._job_dirs.clear()
            dirs = self._job_dirs[job_id] = tuple(b / f"job-{job_id}" for b in self._bases())
        return dirs

    def _memory_dir(self, job_id: int) -> Path | None:
        if "memory" in self.v2_acct:
            return self.path(job_id)
        base = self.v1_acct.get("memory")
        return base / f"job-{job_id}" if base is not None else None

    def _probe(self) -> None:
        """Raise OSError unless a job cgroup can be made and removed here."""
        _probe(self.base)

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


def _probe(base: Path, enable: str = "") -> set[str]:
    """Make a job cgroup under ``base`` (``enable``: controllers to try to
    enable in base's ``cgroup.subtree_control`` first) and remove it; return the
    names of the files it had. Raise OSError unless its cgroup.procs is writable.
    Leaves ``base`` as it found it, unless jobs live there."""
    made = not base.exists()
    base.mkdir(exist_ok=True)
    try:
        if enable:  # refused (EBUSY...): the probe lacks those files, and so will jobs
            with contextlib.suppress(OSError):
                Cgroups._write(base / "cgroup.subtree_control", enable)
        probe = base / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        try:
            if not os.access(probe / "cgroup.procs", os.W_OK):
                raise PermissionError(errno.EACCES, "cgroup.procs is not writable", str(probe))
            return set(os.listdir(probe))
        finally:
            probe.rmdir()
    finally:
        if made:
            with contextlib.suppress(OSError):
                base.rmdir()


def _v1_accounting(own: dict[str, Path], name: str, v2_acct: frozenset[str]) -> dict:
    """The v1 hierarchies (controller -> ``name`` under our own cgroup there)
    that give what v2 does not: ``memory``, and ``cpuacct`` for CPU time."""
    found = {}
    for controller, needed in V1_ACCOUNTING:
        if controller not in own or ("cpu" if controller == "cpuacct" else controller) in v2_acct:
            continue
        with contextlib.suppress(OSError):  # not writable: that figure stays unknown
            if needed in _probe(own[controller] / name):
                found[controller] = own[controller] / name
    return found


def _read(path: Path | str) -> str:
    """A cgroup file's text; "" when it (or its cgroup) does not exist. (Read
    with os.read: several per job, and open()'s buffered text layers cost
    more than the read.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _read_int(path: Path) -> int | None:
    text = _read(path).strip()
    return int(text) if text.isdigit() else None


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``cpu.stat``, ``memory.events``,
    ``memory.oom_control``): {key: value}."""
    found = {}
    for line in _read(path).splitlines():
        words = line.split()
        if len(words) == 2 and words[1].isdigit():
            found[words[0]] = int(words[1])
    return found


def send(pid: int, sig: int) -> bool:
    """kill(2) that answers whether ``pid`` got ``sig`` (False: it is gone)."""
    try:
        os.kill(pid, sig)
        return True
    except OSError as e:
        if e.errno not in (errno.ESRCH, errno.EPERM):
            raise
        return False


def _own_cgroups(kinds: tuple[str, ...] = MEMBERSHIP) -> list[tuple[str, Path]]:
    """(kind, folder of this process's own cgroup) for each of ``kinds``
    ("cgroup2" or a v1 controller's name) that is mounted, in that order."""
    own: dict[str, str] = {}  # "" for v2, else each controller of the v1 line
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if hid != "0" else [""]:
                own[c] = path
    found = []
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for kind in kinds:
        key = "" if kind == "cgroup2" else kind
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
