"""Hosts: one daemon per host on a spool, proof of life, and taking over lost hosts.

Owns: ``state/hosts/<host>.yaml`` (the heartbeat: GPU readings, limits and
the running jobs, public to every user) and ``<host>.lock`` (flock held by
the host's daemon), what a heartbeat offers (``resources_of``, read the same
way by the daemon and by gstat), and what happens to a lost host's running jobs.

Invariants:
- A host is lost only when its heartbeat is stale *and* its lock is free.
- Lock files are 0600: whoever can open a file can flock it, and a user
  holding a host's lock would stall its recovery and its restart.
- The heartbeat shows who holds which GPUs (id, user, name, GPUs, times),
  never a command, environment or folder: those stay in the private records.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time

from . import job as jobmod
from . import spool as spoolmod
from .records import read_record
from .scheduler import Gpu, Resources
from .spool import BadFile
from .util import natural

log = logging.getLogger("spoold")

def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or "-"
    except OSError:
        return "-"


def _uptime() -> float:
    """Seconds since boot as /proc/uptime counts them (suspend included)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return 0.0


BOOT_ID = _boot_id()  # this boot of this machine: other hosts' differ
SLURM_KEYS = ("slurm_id", "slurm_state", "slurm_reason", "slurm_queued_at")  # SLURM's view



def resources_of(beat: dict, host: str | None = None, paused: bool = False) -> Resources:
    """What a host offers, as its heartbeat says: the one reading of a
    heartbeat, for the daemon (other hosts' capacity) and for gstat (why a job
    waits). Pure. GPUs keep the busy reason the daemon published; a GPU whose
    reading failed or has no memory total is failed, as the daemon treats it.
    A field that is missing or not a whole number offers nothing; an unset
    GPU limit is the daemon's default, min(8, GPUs)."""
    listed = beat.get("gpus")
    gpus = tuple(
        Gpu(g["index"], str(g["busy"]) if g.get("busy") else None, natural(g.get("memory_total")),
            natural(g.get("memory_used")),
            failed=bool(g.get("error")) or natural(g.get("memory_total")) is None)
        for g in (listed if isinstance(listed, list) else [])
        if isinstance(g, dict) and natural(g.get("index")) is not None)
    return Resources(gpus=gpus, cpus=tuple(range(natural(beat.get("cpus")) or 0)),
                     mem=natural(beat.get("mem")) or 0,
                     limit=natural(beat.get("limit")) or min(8, len(gpus)), host=host,
                     paused=paused)


def places_by_slurm(enforced) -> bool:
    """Whether a heartbeat's ``enforced:`` says SLURM places its jobs (gsub's
    rule too: its ``slurm=`` summary word)."""
    return isinstance(enforced, dict) and str(enforced.get("gpus", "")).startswith("SLURM")


class Hosts:
    def __init__(self, d):
        self.d = d  # the daemon: its options, spool, runs and readings
        self._last_beat: tuple[float, object] = (0.0, None)

    @property
    def beat_time(self) -> float:
        """When the heartbeat was last written (its ``time:``)."""
        return self._last_beat[0]

    def open_lock(self, host: str) -> int:
        """A host's lock file, 0600: whoever can open a file can flock it, so no
        user may open it (they could hold a host's lock and stall its recovery)."""
        fd = os.open(self.d.spool.host_lock(host), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        return fd

    def heartbeat(self) -> bool:
        """state/hosts/<host>.yaml: proof of life for other hosts, readings for gstat."""
        snap = [r.as_dict() | {"busy": self.d.busy(r)}
                for r in self.d.gpu_views()]
        # Public (the heartbeat is world-readable, records are not): which job
        # holds what, so every user sees every running job; no command, no env.
        jobs = [{"id": r.id, "uid": r.record.get("uid"), "user": r.record.get("user"),
                 "name": r.record.get("name"), "gpus": r.record.get("assigned_gpus") or [],
                 "cpus": r.record.get("assigned_cpus") or [],
                 "gpu_mem": r.record.get("gpu_mem") or 0, "mem": r.record.get("mem") or 0,
                 "gpu_mem_mib": r.gpu_mem_now,
                 "started_at": r.record.get("started_at"),
                 "time_limit": r.record.get("time_limit"),
                 **{k: r.record[k] for k in SLURM_KEYS if k in r.record}}
                for r in self.d.runs.values()]
        now = time.time()
        # Rewritten when something changed, else often enough to stay alive.
        shares = self.d.share_table()
        # Energy counters move at every poll: they alone do not make a rewrite.
        same = [{k: v for k, v in g.items() if k != "energy_mj"} for g in snap]
        if (same, jobs, shares) == self._last_beat[1] and now - self._last_beat[0] < min(
                5.0, self.d.o.host_timeout / 4):
            return False
        self._last_beat = (now, (same, jobs, shares))
        data = jobmod.dump({"summary": self.summary(now, snap),
                            "host": self.d.o.host, "time": now, "pid": os.getpid(),
                            "gpus": snap, "max_load": self.d.o.max_load,
                            "max_memory": self.d.o.max_memory, "cpus": len(self.d.cpu_ids),
                            "mem": self.d.mem, "limit": self.d.limit,
                            "host_timeout": self.d.o.host_timeout, "draining": self.d.draining,
                            "enforced": self.d.executor.enforced(),
                            # last: gsub reads a heartbeat with sh builtins and stops here
                            "jobs": jobs, "shares": shares})
        try:
            self.d.spool.replace_atomic(self.d.spool.host_file(self.d.o.host), data, sync=False)
        except OSError as e:
            log.error("cannot write the heartbeat %s: %s (disk full or read-only?); retrying",
                      self.d.spool.host_file(self.d.o.host), e)
        return True

    def summary(self, now: float, snap: list[dict]) -> str:
        """The heartbeat's first line, for gsub: what it needs to judge the host
        (alive? could it ever run this job? how long is the queue?) as
        ``key=value`` words that sh builtins read without parsing the YAML below
        (reading a file costs dash one syscall per byte). ``boot``/``up`` let a
        gsub on this host tell the age from /proc/uptime, with no clock program;
        ``pending`` is as of this write (gsub counts pending/ itself near the
        cap). The keys are listed in docs/spool-format.md."""
        gpumem = max((g.get("memory_total") or 0 for g in snap), default=0)
        slurm = places_by_slurm(self.d.executor.enforced())
        words = {"time": int(now), "timeout": int(self.d.o.host_timeout),
                 "boot": BOOT_ID, "up": int(_uptime()), "gpus": len(snap),
                 "limit": self.d.limit, "cpus": len(self.d.cpu_ids), "mem": self.d.mem,
                 "gpumem": int(gpumem), "slurm": int(slurm),
                 "pending": len(self.d.queue.names or ()),
                 "max_pending": self.d.o.max_pending}
        return " ".join(f"{k}={v}" for k, v in words.items())

    def check(self, now: float) -> None:
        """Fail (or requeue) the running jobs of hosts whose heartbeat went stale;
        note the capacity of the live ones (``peers``)."""
        peers = []
        for host in self.d.spool.hosts():
            if host == self.d.o.host:
                continue
            try:
                beat = jobmod.load_record(self.d.spool.host_file(host).read_bytes())
                age = now - float(beat.get("time") or 0)
            except (OSError, ValueError, jobmod.JobError):
                continue
            if age > self.d.o.host_timeout:
                self.d.guard(None, self.take_over, host, age)
                continue
            peers.append(resources_of(beat, host))
        self.d.peers = tuple(peers)

    def take_over(self, host: str, age: float) -> None:
        fd = self.open_lock(host)
        try:
            try:  # its daemon's own lock: free means no daemon of that host is alive
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            for job_id in self.d.spool.list_ids("running"):
                path = self.d.spool.record("running", job_id)
                try:
                    rec = read_record(path)
                except (OSError, BadFile, jobmod.JobError, ValueError):
                    continue
                if rec.get("host") != host:
                    continue
                reason = (f"host lost: {host} sent no heartbeat for {age:.0f}s "
                          f"(--host-timeout {self.d.o.host_timeout:g}s)")
                if rec.get("requeue"):
                    rec["reason"] = reason + "; requeued"
                    self.d.jobs.requeue(job_id, rec, reason)
                else:
                    rec.update(ended_at=time.time(), reason=reason, outcome="node_fail")
                    self.d.records.save(path, rec)
                    spoolmod.move_noreplace(path, self.d.spool.record("failed", job_id))
                    self.d.records.final_count += 1
                    log.warning("job %d -> failed/: %s", job_id, reason)
        finally:
            os.close(fd)
