"""spoold, the daemon: the event loop that moves jobs through the spool.

Owns: the loop (watchdog events, signals and timers wake it), applying the
scheduler's decisions, recovery at start, requests, time limits and kills.

Invariants:
- Everything it knows is rebuilt from the spool at start; what it keeps in
  memory (parsed-job cache, kill deadlines, the GPU readings) is a cache.
- Events only wake the loop: each wake re-lists the folders that may have
  changed, and a timer re-lists everything, because inotify can drop events.
- Each state change is one rename; records are completed before the rename
  that makes them final (running -> done/failed/cancelled), or right after the
  rename for files that were never ours (pending -> failed/cancelled).
- Nothing a job file contains can stop the loop: every per-job step is fenced,
  and a failure ends that job with a reason.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import math
import os
import select
import signal
import socket
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import daemonlog, runner
from . import job as jobmod
from . import spool as spoolmod
from .gpus import GpuReading, busy_reason, open_source
from .scheduler import (
    Gpu,
    Request,
    Resources,
    Running,
    ShapeQueue,
    request_of,
    running_of,
    schedule,
)
from .spool import BadFile, Spool
from .util import parse_size_mib

log = logging.getLogger("spoold")

# What a booking means in practice (shown by gstat; docs/scheduling.md).
ENFORCED = {"gpus": "CUDA_VISIBLE_DEVICES", "cpus": "pinned (sched_setaffinity)",
            "mem": "booked only (not enforced)", "time_limit": "TERM, then KILL after the grace"}
PARSE_BUDGET = 2000  # pending files read per pass; the rest wait for the next pass
SETTLE_S = 2.0  # an in-place write counts as finished after this long unchanged
RESCAN_S = 5.0  # full re-list of the spool even if no event came
MAX_BACKOFF_S = 30.0  # longest wait between retries while the spool cannot be written
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMLINK)
CLAIM_GRACE_S = 10.0  # a claimed record without a host is another daemon's, still being written
# What a run adds to a record; a job put back in pending/ sheds them.
RUN_FIELDS = ("pid", "host", "claimed_at", "started_at", "ended_at", "exit_code", "kill_reason",
              "assigned_gpus", "assigned_cpus", "slurm_id", "hook_started_at")


@dataclass
class Options:
    spool: Path
    gpus: list[int] | None = None
    max_pending: int = 10000
    max_pending_per_user: int = 5000
    hook_limit: float = 60.0
    keep: int = 10000
    limit: int | None = None
    max_load: float = 0.1
    max_memory: float = 0.1
    poll: float = 1.0
    fake_gpus: Path | None = None
    cpus: int | None = None
    mem: int | None = None
    kill_grace: float = 10.0
    host: str = field(default_factory=socket.gethostname)
    default_time_limit: float | None = None
    drain: bool = False
    host_timeout: float = 60.0
    executor: str = "local"  # or "slurm": the daemon becomes a bridge to sbatch
    polling: bool | None = None  # None: decide from the filesystem type


@dataclass
class Run:
    """A running job of this host, as its record says."""

    id: int
    record: dict
    pid: int | None = None
    kill_at: float | None = None  # when to send KILL after TERM

    def booking(self) -> Running:
        return running_of(self.id, self.record)


class Waker:
    """A self-pipe: watchdog threads and signals make select() return."""

    def __init__(self):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.w, b"x")

    def wait(self, timeout: float) -> None:
        select.select([self.r], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self.r, 4096):
                pass


class Daemon:
    Run = Run  # for the executors

    def __init__(self, opts: Options):
        self.o = opts
        self.spool = Spool(opts.spool)
        self.waker = Waker()
        self.runs: dict[int, Run] = {}
        self.cache: dict[str, tuple[tuple, object]] = {}  # pending name -> (stat key, Slim|str)
        self.closed: set[str] = set()  # names closed after writing in pending/
        self.readings: list[GpuReading] = []
        self.next_poll = 0.0
        self.next_rescan = 0.0
        self.stop = False
        self.pending_ids: dict[int, spoolmod.PendingName] = {}
        self.draining = opts.drain
        self.names: list | None = None  # pending/ as last listed, in queue order
        self.gone: set[str] = set()  # names we moved out of pending/ since
        self.touched: set[str] = set()  # names events reported since the last pass
        self.index: ShapeQueue | None = None  # the queue, grouped by shape
        self.unparsed = 0  # pending files not read yet (over the per-pass budget)
        self.cursor = 0  # where in self.names the reading stopped
        self.uid = os.geteuid()
        self.shared = self.uid == 0  # root: one spool for every user
        self.source = None
        self.managed: list[int] = []
        self.cpu_ids: tuple[int, ...] = ()
        self.mem = 0
        self.final_count = 0
        self.hint = 0
        self.peers: tuple[Resources, ...] = ()
        self._last_beat: tuple[float, list] = (0.0, [])
        self.counts: Counter = Counter()  # pending jobs per uid (--max-pending-per-user)
        self.uids: dict[tuple, tuple] = {}  # (state, id) -> (inode, uid) of final records
        self.next_prune = 0
        self.write_failed = False
        self.backoff = 0.0
        self.blocked_until = 0.0

    # ---- start-up ------------------------------------------------------------
    def lock(self) -> None:
        self.spool.create(shared=self.shared)
        self.spool.run_dir(self.o.host).mkdir(mode=0o700, exist_ok=True)
        fd = self.open_host_lock(self.o.host)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            raise SystemExit(f"spoold: another spoold (pid {other}) already runs the spool "
                             f"{self.spool.root} for host {self.o.host}; stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd  # held for the daemon's life

    def open_host_lock(self, host: str) -> int:
        """A host's lock file, 0600: whoever can open a file can flock it, so no
        user may open it (they could hold a host's lock and stall its recovery)."""
        fd = os.open(self.spool.host_lock(host), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        return fd

    def setup_resources(self) -> None:
        if self.o.executor == "slurm":
            from .bridge import SlurmBridge

            self.bridge = SlurmBridge(self)
        self.source = open_source(self.o.fake_gpus)
        self.readings = self.source.read() if self.source else []
        found = [r.index for r in self.readings]
        if self.o.gpus is not None:
            missing = sorted(set(self.o.gpus) - set(found))
            if missing:
                log.warning("--gpus names GPU(s) %s that were not found; they count as busy",
                            missing)
            self.managed = list(self.o.gpus)
        else:
            self.managed = found
        if self.source:
            log.info("GPUs: %s; managing %s", self.source.description, self.managed or "none")
        avail = sorted(os.sched_getaffinity(0))
        self.cpu_ids = tuple(avail[: self.o.cpus] if self.o.cpus else avail)
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
        self.mem = self.o.mem if self.o.mem is not None else phys
        self.limit = self.o.limit if self.o.limit is not None else min(8, len(self.managed))
        with contextlib.suppress(OSError):  # gsub's hint only; a full disk must not stop us
            (self.spool.state / "max-pending").write_text(f"{self.o.max_pending}\n")

    def recover(self) -> None:
        """Rebuild everything from the spool after any kind of stop."""
        now = time.time()
        with os.scandir(self.spool.tmp) as it:
            for e in it:  # users create and remove files here as we look
                with contextlib.suppress(OSError):
                    age = now - e.stat(follow_symlinks=False).st_mtime
                    if age > 86400 or (e.name.startswith(".spoold.") and age > 60):
                        spoolmod.remove_entry(self.spool.tmp / e.name)
                        log.info("removed stale tmp/%s", e.name)
        for job_id in self.spool.list_ids("running"):
            self.guard(job_id, self.recover_one, job_id)
        for p in self.spool.run_dir(self.o.host).iterdir():
            stem = p.name.split(".")[0]
            if stem.isdigit() and int(stem) not in self.runs:
                if runner.status(p)[0] == "running":
                    # Another daemon declared this host lost and ended the job's
                    # record; the job itself survived: stop it, it runs on no record.
                    n = runner.signal_job(self.spool.root, int(stem), None, signal.SIGKILL)
                    log.warning("job %s: its record was ended while this host was lost; "
                                "killed %d leftover process(es)", stem, n)
                with contextlib.suppress(OSError):
                    p.unlink()
        for orig in self.spool.failed.glob("*.orig"):
            stem = orig.name[:-5]
            if stem.isdigit() and not self.spool.record("failed", int(stem)).exists():
                rec = {"id": int(stem), "ended_at": now, "reason": "rejected: the reason was "
                       "lost in a crash; the original is kept as " + orig.name}
                self.save(self.spool.record("failed", int(stem)), rec, create=True)
        self.final_count = sum(len(self.spool.list_ids(d)) for d in spoolmod.FINAL_DIRS)

    def recover_one(self, job_id: int) -> None:
        path = self.spool.record("running", job_id)
        try:
            rec = read_record(path)
        except (BadFile, jobmod.JobError, ValueError) as e:
            rec = {"id": job_id}
            log.error("running/%s is unreadable (%s)", path.name, e)
        if rec.get("host") not in (None, self.o.host):
            return  # another host's job (shared spool)
        if rec.get("host") is None and time.time() - os.lstat(path).st_mtime < CLAIM_GRACE_S:
            return  # just claimed by a daemon (maybe on another host) that is writing it
        if self.o.executor == "slurm":
            self.bridge.recover(job_id, path, rec)
            return
        state, code = runner.status(self.run_path(job_id))
        run = Run(job_id, rec, rec.get("pid"))
        if state == "running":
            log.info("job %d: adopted (its shepherd is alive)", job_id)
            self.runs[job_id] = run
            if rec.get("kill_reason"):
                self.kill(run, rec["kill_reason"])
        elif state == "exited":
            self.runs[job_id] = run
            self.finish(run, code)
        elif state == "vanished":
            self.runs[job_id] = run
            self.finish(run, None)
        else:  # claimed, never started: back in the queue, fields kept
            runner.clear(self.run_path(job_id))
            self.requeue(job_id, rec, "claimed but never started")

    def requeue(self, job_id: int, rec: dict, why: str) -> None:
        """running/<id>.yaml -> pending/ as a job that never ran: the one way a
        claimed job goes back. The record stays root's (its ``uid`` was set at
        the claim from the file's owner); if the pending name is taken, the
        job keeps its record in running/ and is tried again on the next pass."""
        path = self.spool.record("running", job_id)
        for k in RUN_FIELDS:
            rec.pop(k, None)
        prio = rec.get("priority")
        prio = prio if isinstance(prio, int) and 0 <= prio <= spoolmod.MAX_PRIORITY else \
            spoolmod.DEFAULT_PRIORITY
        self.save(path, rec)
        name = spoolmod.pending_name(prio, job_id)
        spoolmod.move_noreplace(path, self.spool.pending / name)
        spoolmod.fsync_dir(self.spool.pending)
        self.touched.add(name)
        log.warning("job %d: %s; requeued (back in pending/)", job_id, why)

    # ---- the loop ------------------------------------------------------------
    def run(self) -> None:
        self.lock()
        self.setup_logfile()
        self.setup_resources()
        self.guard(None, self.recover)
        observer = self.watch()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_drain)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.waker.w, warn_on_full_buffer=False)
        log.info("spoold %s on %s: host %s, %d GPU(s), %d CPU(s), %d MiB", _version(),
                 self.spool.root, self.o.host, len(self.managed), len(self.cpu_ids), self.mem)
        self.step()
        _sd_notify("READY=1")
        try:
            while not self.stop:
                self.waker.wait(self.timeout())
                if self.stop:
                    break
                self.step()
        finally:
            observer.stop()
            observer.join(2)
            log.info("spoold stopping; %d running job(s) keep running and will be adopted "
                     "by the next spoold", len(self.runs))

    def setup_logfile(self) -> None:
        """The daemon's own log, in the spool: the old tool's first TODO."""
        daemonlog.setup(log, self.spool.daemon_log)

    def _on_stop(self, signum, _frame) -> None:
        self.stop = True

    def _on_drain(self, signum, _frame) -> None:
        self.draining = True

    def supervise(self, now: float) -> None:
        """While the spool cannot be written: KILL after the grace still happens."""
        for run in list(self.runs.values()):
            if run.kill_at and now >= run.kill_at:
                self.guard(run.id, self.check_run, run, now)

    def timeout(self) -> float:
        now = time.time()
        if now < self.blocked_until:
            t = self.blocked_until
            for run in self.runs.values():
                if run.kill_at:
                    t = min(t, run.kill_at)
            return t - now
        t = min(self.next_poll, self.next_rescan)
        for run in self.runs.values():
            if run.kill_at:
                t = min(t, run.kill_at)
            b = run.booking()
            if b.ends_at and not run.record.get("kill_reason"):
                t = min(t, b.ends_at)
        if self.pending_unsettled:
            t = min(t, now + 0.5)
        if self.unparsed:
            t = now  # still reading a long queue: keep going
        return t - now

    pending_unsettled = False

    def watch(self):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        daemon = self
        # Only these folders hold news: events elsewhere (tmp/, records, logs)
        # are mostly our own writes, and waking on them made a write that kept
        # failing retry itself on its own events.
        news = {self.spool.pending, self.spool.requests, self.spool.run_dir(self.o.host)}

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                dest = getattr(event, "dest_path", "") or ""
                wake = False
                for path, kind in ((event.src_path, event.event_type), (dest, "moved_to")):
                    if not path:
                        continue
                    p = Path(os.fsdecode(path))
                    wake = wake or p.parent in news
                    if p.parent == daemon.spool.pending:
                        if kind in ("moved", "deleted") and p.name in daemon.gone:
                            continue  # our own move out of pending/: nothing new to read
                        daemon.touched.add(p.name)
                        if kind == "closed":
                            daemon.closed.add(p.name)
                        elif kind in ("modified", "created", "moved_to"):
                            daemon.closed.discard(p.name)
                if wake:
                    daemon.waker.wake()

        polling = self.o.polling
        if polling is None:
            fs = filesystem_type(self.spool.root)
            polling = fs in NETWORK_FS
            if polling:
                log.info("spool is on %s: watching by polling (other hosts' writes are "
                         "invisible to inotify)", fs)
        if polling:
            from watchdog.observers.polling import PollingObserver

            obs = PollingObserver(timeout=0.5)
        else:
            obs = Observer()
        handler = Handler()
        # One recursive watch on the whole spool, not one per folder: watchdog
        # holds a rename's "moved from" half for 0.5 s (and every event behind
        # it) until it finds the "moved to" half, which it only finds within
        # the same watch. Only these event kinds: no stream of log writes.
        from watchdog.events import (
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileMovedEvent,
        )

        kinds = [FileCreatedEvent, FileMovedEvent, FileClosedEvent, FileDeletedEvent]
        if polling:  # no move pairing delay there; poll only what we must see
            for d in (self.spool.pending, self.spool.requests, self.spool.run_dir(self.o.host)):
                obs.schedule(handler, str(d), recursive=False)
        else:
            try:
                obs.schedule(handler, str(self.spool.root), recursive=True, event_filter=kinds)
            except TypeError:  # watchdog < 4 has no event_filter
                obs.schedule(handler, str(self.spool.root), recursive=True)
        obs.daemon = True
        obs.start()
        return obs

    def run_path(self, job_id: int) -> Path:
        return self.spool.run_lock(job_id, self.o.host)

    def guard(self, job_id: int, fn, *args) -> None:
        """Run one job's step and return its result; a failure there never
        takes the daemon down (the result is then None)."""
        try:
            return fn(*args)
        except OSError as e:
            if e.errno in WRITE_ERRORS or (e.errno == errno.ENOENT and self.spool.missing()):
                self.write_failed = True  # a condition of the spool: back off, see step()
                log.error("job %s: cannot write the spool (%s%s): disk full, out of inodes, "
                          "read-only or a folder removed? Nothing was half-written; retrying "
                          "with backoff", job_id, e.strerror, f": {e.filename}" if e.filename
                          else "")
                return None
            log.exception("job %s: unexpected error (the daemon carries on)", job_id)
        except Exception:
            log.exception("job %s: unexpected error (the daemon carries on)", job_id)
        return None

    def step(self) -> None:
        """One pass of the loop. When the spool cannot be written (or a folder
        vanished), wait with exponential backoff instead of retrying on every
        event, above all the events our own failed writes cause."""
        self.write_failed = False
        self.guard(None, self.tick)
        if self.write_failed:
            self.backoff = min(MAX_BACKOFF_S, max(1.0, self.backoff * 2))
            self.blocked_until = time.time() + self.backoff
            self.guard(None, self.repair)
        elif time.time() >= self.blocked_until:
            self.backoff = 0.0

    def repair(self) -> None:
        """Recreate spool folders that were removed or moved away under us."""
        gone = self.spool.missing()
        if gone or not self.spool.run_dir(self.o.host).is_dir():
            log.warning("spool folder(s) missing: %s; recreating them",
                        ", ".join(gone) or f"state/run/{self.o.host}")
            self.spool.ensure(self.shared)
            self.spool.run_dir(self.o.host).mkdir(mode=0o700, exist_ok=True)

    def tick(self) -> None:
        now = time.time()
        runner.reap()
        if now < self.blocked_until:
            self.supervise(now)  # running jobs stay watched; nothing is written
            return
        if now >= self.next_poll:
            self.poll_gpus()
            self.check_hosts(now)
            self.next_poll = now + self.o.poll
        full = now >= self.next_rescan
        if full:
            self.repair()
        self.handle_requests()
        for run in list(self.runs.values()):
            self.guard(run.id, self.check_run, run, now)
        if full:
            # A record stranded by a failed write (disk full) is recovered like
            # one found at start.
            for job_id in self.spool.list_ids("running"):
                if job_id not in self.runs:
                    self.guard(job_id, self.recover_one, job_id)
        if self.draining:
            if not self.runs:
                log.info("drained: no job running; exiting")
                self.stop = True
            return
        self.schedule_pass(time.time(), full)
        if full:  # a long queue makes the full re-check costly: do it less often
            self.next_rescan = time.time() + max(RESCAN_S, 30 * (time.time() - now))

    # ---- GPUs ----------------------------------------------------------------
    def poll_gpus(self) -> None:
        if self.o.executor == "slurm":
            self.guard(None, self.bridge.poll)
        try:
            self.readings = self.source.read() if self.source else []
        except Exception as e:  # a broken driver must not stop the queue
            log.warning("GPU reading failed: %s", e)
            self.readings = [GpuReading(index=i, error=str(e)) for i in self.managed]
        self.heartbeat()

    def heartbeat(self) -> None:
        """state/hosts/<host>.yaml: proof of life for other hosts, readings for gstat."""
        snap = [r.as_dict() | {"busy": busy_reason(r, self.o.max_load, self.o.max_memory)}
                for r in self.gpu_views()]
        # Public (the heartbeat is world-readable, records are not): which job
        # holds what, so every user sees every running job; no command, no env.
        jobs = [{"id": r.id, "uid": r.record.get("uid"), "user": r.record.get("user"),
                 "name": r.record.get("name"), "gpus": r.record.get("assigned_gpus") or [],
                 "cpus": r.record.get("assigned_cpus") or [],
                 "started_at": r.record.get("started_at"),
                 "time_limit": r.record.get("time_limit")} for r in self.runs.values()]
        now = time.time()
        # Rewritten when something changed, else often enough to stay alive.
        if (snap, jobs) == self._last_beat[1] and now - self._last_beat[0] < min(
                5.0, self.o.host_timeout / 4):
            return
        self._last_beat = (now, (snap, jobs))
        data = jobmod.dump({"host": self.o.host, "time": now, "pid": os.getpid(),
                            "gpus": snap, "jobs": jobs, "max_load": self.o.max_load,
                            "max_memory": self.o.max_memory, "cpus": len(self.cpu_ids),
                            "mem": self.mem, "limit": self.limit,
                            "host_timeout": self.o.host_timeout, "draining": self.draining,
                            "enforced": ENFORCED})
        try:
            self.spool.replace_atomic(self.spool.host_file(self.o.host), data, sync=False)
        except OSError as e:
            log.error("cannot write the heartbeat %s: %s (disk full or read-only?); retrying",
                      self.spool.host_file(self.o.host), e)

    def check_hosts(self, now: float) -> None:
        """Fail (or requeue) the running jobs of hosts whose heartbeat went stale;
        note the capacity of the live ones (``peers``)."""
        peers = []
        for host in self.spool.hosts():
            if host == self.o.host:
                continue
            try:
                beat = jobmod.load_record(self.spool.host_file(host).read_bytes())
                age = now - float(beat.get("time") or 0)
            except (OSError, ValueError, jobmod.JobError):
                continue
            if age > self.o.host_timeout:
                self.guard(None, self.take_over, host, age)
                continue
            gpus = tuple(Gpu(g.get("index", i), None, g.get("memory_total"))
                         for i, g in enumerate(beat.get("gpus") or []))
            peers.append(Resources(gpus=gpus, cpus=tuple(range(int(beat.get("cpus") or 0))),
                                   mem=int(beat.get("mem") or 0),
                                   limit=int(beat.get("limit") or 0), host=host))
        self.peers = tuple(peers)

    def take_over(self, host: str, age: float) -> None:
        fd = self.open_host_lock(host)
        try:
            try:  # its daemon's own lock: free means no daemon of that host is alive
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            for job_id in self.spool.list_ids("running"):
                path = self.spool.record("running", job_id)
                try:
                    rec = read_record(path)
                except (OSError, BadFile, jobmod.JobError, ValueError):
                    continue
                if rec.get("host") != host:
                    continue
                reason = (f"host lost: {host} sent no heartbeat for {age:.0f}s "
                          f"(--host-timeout {self.o.host_timeout:g}s)")
                if rec.get("requeue"):
                    rec["reason"] = reason + "; requeued"
                    self.requeue(job_id, rec, reason)
                else:
                    rec.update(ended_at=time.time(), reason=reason)
                    self.save(path, rec)
                    spoolmod.move_noreplace(path, self.spool.record("failed", job_id))
                    self.final_count += 1
                    log.warning("job %d -> failed/: %s", job_id, reason)
        finally:
            os.close(fd)

    def gpu_views(self) -> list[GpuReading]:
        by_index = {r.index: r for r in self.readings}
        return [by_index.get(i, GpuReading(index=i, error="GPU not found"))
                for i in self.managed]

    def resources(self) -> Resources:
        gpus = []
        for r in self.gpu_views():
            why = busy_reason(r, self.o.max_load, self.o.max_memory)
            gpus.append(Gpu(r.index, why, r.memory_total, r.memory_used, failed=bool(r.error)
                            or r.memory_total is None))
        return Resources(gpus=tuple(gpus), cpus=self.cpu_ids, mem=self.mem, limit=self.limit,
                         host=self.o.host, paused=self.spool.paused_flag.exists(),
                         peers=self.peers)

    # ---- pending ---------------------------------------------------------------
    def load_pending(self, name: str, now: float, trust: bool = False):
        """What the queue needs of a pending file (``Slim``), a reason string if it
        is bad, or None if it is not complete yet. ``trust``: no event touched the
        name since it was cached, so skip even the lstat (a long queue costs one
        dict lookup per job); the periodic full pass re-checks everything."""
        hit = self.cache.get(name)
        if trust and hit is not None:
            return hit[1]
        path = self.spool.pending / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)
        if hit and hit[0] == key:
            return hit[1]
        try:
            if self.shared and st.st_nlink > 1 and not os.path.isdir(path):
                raise BadFile("hard link in a shared spool: refused unread (it could point "
                              "at a file its owner may not read)")
            try:
                raw = spoolmod.read_untrusted(path, check_closed=True)
            except spoolmod.LeaseUnsupported:
                # No way to see the writer: wait for its close event or 2 s of quiet.
                if name not in self.closed and now - st.st_mtime < SETTLE_S:
                    self.pending_unsettled = True
                    return None
                raw = spoolmod.read_untrusted(path)
            job = _slim(jobmod.parse_head(raw), spoolmod.parse_pending_name(name),
                        self.o.default_time_limit, st)
            if not self.owner_ok(st.st_uid):
                job = f"file owned by uid {st.st_uid}; this spoold runs as uid {self.uid} " \
                      "and runs only its own user's files"
        except spoolmod.StillOpen:
            self.pending_unsettled = True
            return None  # being written in place: its close wakes us
        except (BadFile, jobmod.JobError) as e:
            job = str(e)
        except FileNotFoundError:
            return None
        self.cache[name] = (key, job)
        return job

    def owner_ok(self, uid: int) -> bool:
        return self.shared or uid == self.uid

    def save(self, path: Path, rec: dict, create: bool = False, sync: bool = True) -> None:
        """Write a record. Shared spool: root's, readable by the job's group only
        (with user private groups, that is its owner), never writable by users."""
        group, mode = None, 0o600
        if self.shared and isinstance(rec.get("uid"), int):
            group, mode = runner.creds_for(rec["uid"]).gid, 0o640
        write = self.spool.create_atomic if create else self.spool.replace_atomic
        data = jobmod.dump(rec)
        if len(data) > spoolmod.MAX_RECORD_BYTES:  # kept readable: the big user fields go
            data = jobmod.dump({k: v for k, v in rec.items() if k not in ("env", "argv", "cmd")
                                and len(repr(v)) < 4096} | {"x-spoold-note": "fields over the "
                                                            "record size cap were dropped"})
        write(path, data, mode=mode, sync=sync, group=group)

    def build_index(self, now: float, full: bool, touched: set, resume: bool = False) -> list:
        """The queue as a ShapeQueue, from the listing and the cache. Files not yet
        read are read here, at most PARSE_BUDGET per pass; the next pass resumes
        where this one stopped, so a daemon started on 100,000 pending files is
        working at once and never redoes the part it has."""
        if not resume:
            self.by_id: dict[int, tuple] = {}
            self.index, self.cursor = ShapeQueue(()), 0
            self.counts = Counter(hit[1].uid for p in self.names
                                  if isinstance(hit := self.cache.get(p.name), tuple)
                                  and isinstance(hit[1], Slim))
        bad, budget, names, i = [], PARSE_BUDGET, self.names, self.cursor
        while i < len(names):
            p = names[i]
            if p.has_id and p.name not in self.gone:
                new = p.name not in self.cache
                if new:
                    if budget <= 0:
                        break
                    budget -= 1
                    taken = self.guard(p.job_id, self.id_taken, p)
                    if taken:
                        self.guard(p.job_id, self.renumber, p, taken)
                        i += 1
                        continue
                slim = self.load_pending(p.name, now, trust=not full and p.name not in touched)
                if new and isinstance(slim, Slim):
                    full_why = self.queue_full(slim.uid)
                    if full_why:
                        self.cache.pop(p.name, None)
                        slim = full_why
                    else:
                        self.counts[slim.uid] += 1
                if isinstance(slim, str):
                    bad.append((p, slim))
                elif slim is not None:
                    self.by_id[p.job_id] = (p, slim)
                    self.index.append((p.priority, p.job_id), slim.req)
            i += 1
        self.cursor, self.unparsed = i, len(names) - i
        return bad

    def queue_full(self, uid: int) -> str | None:
        """Why one more pending job of ``uid`` is refused (--max-pending is
        counted per user too, so that one user cannot fill everyone's queue)."""
        total = sum(self.counts.values())
        if total >= self.o.max_pending:
            return f"queue full: {total} jobs pending (spoold --max-pending {self.o.max_pending})"
        if self.shared and self.counts[uid] >= self.o.max_pending_per_user:
            return (f"queue full: {runner.creds_for(uid).name} has {self.counts[uid]} jobs "
                    f"pending (spoold --max-pending-per-user {self.o.max_pending_per_user})")
        return None

    def id_taken(self, p) -> str | None:
        """Why the id in pending/<p.name> may not be used (None: it may). The one
        id rule, applied to every name the daemon sees for the first time."""
        job_id = p.job_id
        if job_id > spoolmod.MAX_ID:
            return f"ids are at most {spoolmod.MAX_ID}"
        other = self.pending_ids.get(job_id)
        if other is not None and other.name != p.name:
            return f"pending/{other.name} has that id"
        where = "running" if job_id in self.runs else self.spool.where(job_id)
        if where:
            return f"job {job_id} is in {where}/"
        if not self.shared:
            return None
        st = os.lstat(self.spool.pending / p.name)
        if st.st_uid == 0:
            return None  # root's, or one we put back: root is trusted
        marker = self.spool.marker_owner(job_id)
        if marker is None and self.spool.claim_marker(job_id, st.st_uid):
            return None  # a hand-written id nobody had: now its owner's
        marker = self.spool.marker_owner(job_id)
        if marker not in (None, st.st_uid):
            return f"id {job_id} was taken by uid {marker}"
        return None

    def renumber(self, p, why: str) -> None:
        """Give pending/<p.name> a fresh id: its own is someone else's."""
        self.cache.pop(p.name, None)
        target = self.rename_with_new_id(p.name, min(p.priority, spoolmod.MAX_PRIORITY))
        if target is not None:
            log.warning("pending/%s: %s; now job %d (%s)", p.name, why, target.job_id,
                        target.name)

    def schedule_pass(self, now: float, full: bool) -> None:
        unsettled, self.pending_unsettled = self.pending_unsettled, False
        touched, self.touched = self.touched, set()
        if full or touched or self.names is None:
            # pending/ changed (or it is time to re-check): list it again, since
            # events are only a wake-up and inotify can drop them.
            names = self.spool.list_pending()
            self.name_foreign(names, now)
            if any(not p.has_id for p in names):
                names = self.spool.list_pending()
            live = {p.name for p in names}
            for k in [k for k in self.cache if k not in live]:
                del self.cache[k]
            self.closed &= live
            self.names, self.gone, self.index = names, set(), None
            # One name per id: the one seen before wins over a newcomer.
            ids = self.pending_ids = {p.job_id: p for p in names
                                      if p.has_id and p.name not in self.cache}
            ids.update((p.job_id, p) for p in names if p.has_id and p.name in self.cache)
        bad = []
        if self.index is None or touched or unsettled:
            bad = self.build_index(now, full, touched)
        elif self.unparsed:
            bad = self.build_index(now, full, touched, resume=True)
        top = max((i for i in self.pending_ids if i <= spoolmod.MAX_ID), default=0)
        if self.shared and top > self.hint:
            self.hint = top
            self.spool.raise_hint(self.hint)  # submitters start probing markers from here
        deps = _DepStates(self)
        if self.o.executor == "slurm":
            for p, reason in bad:
                self.guard(p.job_id, self.reject_file, p, reason)
            self.guard(None, self.bridge.pass_, self.index, deps)
            return
        decision = schedule(self.index, [r.booking() for r in self.runs.values()],
                            self.resources(), now, deps)
        for p, reason in bad:
            self.guard(p.job_id, self.reject_file, p, reason)
        for job_id, reason in decision.reject.items():
            self.guard(job_id, self.end_pending, job_id, "failed", reason)
        for job_id, reason in decision.cancel.items():
            self.guard(job_id, self.end_pending, job_id, "cancelled", reason)
        for s in decision.start:
            self.guard(s.id, self.start, s)

    def name_foreign(self, names: list, now: float) -> None:
        """Give files dropped without an id one, by renaming them (content kept)."""
        for p in names:
            if p.has_id:
                continue
            job = self.load_pending(p.name, now)
            if job is None:
                continue
            if isinstance(job, Slim) and job.prio is not None and not p.name[0].isdigit():
                prio = job.prio
            else:
                prio = p.priority if p.priority <= 9999 else 10
            target = self.rename_with_new_id(p.name, prio)
            if target is None:
                continue
            new_id = target.job_id
            log.info("pending/%s: dropped without an id; now job %d (%s)", p.name, new_id,
                     target.name)
            if isinstance(job, str):
                self.guard(new_id, self.reject_file, target, job, p.name)
            else:
                self.cache.pop(p.name, None)

    def rename_with_new_id(self, name: str, prio: int):
        """pending/<name> -> pending/<prio>-<fresh id>.yaml, never over another file."""
        while True:
            new_id = self.spool.allocate_ids(1)
            target = spoolmod.PendingName(prio, new_id, spoolmod.pending_name(prio, new_id))
            if self.shared:  # the id is the file owner's, as if its gsub had taken it
                with contextlib.suppress(FileNotFoundError):
                    owner = os.lstat(self.spool.pending / name).st_uid
                    os.chown(self.spool.state_ids / str(new_id), owner, -1,
                             follow_symlinks=False)
            try:
                spoolmod.move_noreplace(self.spool.pending / name, self.spool.pending / target.name)
                self.gone.add(name)
                self.touched.add(target.name)  # not in the listing yet: list again
                return target
            except FileExistsError:
                continue  # someone wrote that name by hand: take the next id
            except FileNotFoundError:
                return None

    def reject_file(self, p, reason: str, original: str | None = None) -> None:
        """A pending entry that is not a valid job: keep its bytes, record why."""
        src = self.spool.pending / p.name
        try:
            owner = os.lstat(src).st_uid
            # as it is (link, fifo, folder), never over anything
            spoolmod.move_noreplace(src, self.spool.rejected_copy(p.job_id))
        except FileNotFoundError:
            return
        finally:
            self.leave(p)
        rec = {"id": p.job_id, "uid": owner, "user": runner.creds_for(owner).name,
               "original_name": spoolmod.printable_name(original or p.name),
               "reason": f"rejected: {reason}", "ended_at": time.time()}
        self.save(self.spool.record("failed", p.job_id), rec, create=True)
        self.final_count += 1
        log.warning("job %d (pending/%s) rejected: %s; original kept as failed/%d.orig",
                    p.job_id, p.name, reason, p.job_id)

    def leave(self, p) -> None:
        """Note that pending/<p.name> is being moved out by us."""
        self.gone.add(p.name)
        if self.pending_ids.get(p.job_id) is p:
            del self.pending_ids[p.job_id]
        if self.index is not None:
            self.index.discard(p.job_id)

    def end_pending(self, job_id: int, state: str, reason: str, p=None) -> None:
        """pending -> failed/ or cancelled/, through running/ so that the final
        record appears complete in one rename. A crash in between puts the job
        back in pending/, where the same decision (or request) is made again."""
        p = p or self.pending_ids.get(job_id)
        if p is None:
            return
        path = self.spool.record("running", job_id)
        self.leave(p)
        try:
            spoolmod.move_noreplace(self.spool.pending / p.name, path)
        except FileNotFoundError:
            return
        self.finish_claimed(job_id, path, state, reason)
        self.prune()

    # ---- start -------------------------------------------------------------------
    def claim(self, job_id: int, extra: dict):
        """Take pending job ``job_id`` into running/ (one rename), read it again
        there and record who owns it. Returns (path, job, record, creds) or None
        when the job is gone, refused, or changed under us (then it is back)."""
        p, cached = self.by_id[job_id]
        if self.duplicate(job_id):
            target = self.rename_with_new_id(p.name, p.priority)
            if target:
                log.warning("job %d: id already used in the spool; renamed to job %d", job_id,
                            target.job_id)
            return None
        path = self.spool.record("running", job_id)
        self.leave(p)
        with self.array_gate(cached) as room:
            if not room:
                self.touched.add(p.name)  # another host runs its %N: decide again later
                return None
            try:
                spoolmod.move_noreplace(self.spool.pending / p.name, path)  # the claim
            except FileNotFoundError:
                return None  # cancelled or re-prioritised meanwhile
        spoolmod.fsync_dir(self.spool.running)
        try:
            fd_st = os.lstat(path)
            job = jobmod.parse(spoolmod.read_untrusted(path))
        except (BadFile, jobmod.JobError) as e:
            self.finish_claimed(job_id, path, "failed", f"rejected: {e}")
            return None
        req = cached.req
        if (job.gpus, job.gpu_mem, job.cpus, job.mem) != (req.gpus, req.gpu_mem,
                                                          req.cpus, req.mem):
            # changed under us: back (no one can have taken the name: the id is ours)
            spoolmod.move_noreplace(path, self.spool.pending / p.name)
            self.touched.add(p.name)
            return None
        uid = owner_of(fd_st, job)
        if not self.owner_ok(uid):
            self.finish_claimed(job_id, path, "failed", f"rejected: file owned by uid {uid}; "
                                f"this spoold (uid {self.uid}) runs only its own files")
            return None
        rec = dict(job.data)
        for k in (*RUN_FIELDS, "reason"):
            rec.pop(k, None)
        # Identity from the kernel: the uid we just checked, and its name.
        rec.update(id=job_id, uid=uid, user=runner.creds_for(uid).name, host=self.o.host,
                   claimed_at=time.time(), **extra)
        if not _finite(rec.get("submitted_at")):
            rec["submitted_at"] = fd_st.st_mtime
        rec.setdefault("name", job.name)
        if job.time_limit is None and self.o.default_time_limit:
            rec["time_limit"] = job.time_limit = self.o.default_time_limit
        self.save(path, rec)
        job.id, job.priority = job_id, p.priority
        return path, job, rec, runner.creds_for(uid) if self.uid == 0 else None

    def start(self, s) -> None:
        claimed = self.claim(s.id, {"assigned_gpus": list(s.gpus),
                                    "assigned_cpus": list(s.cpus)})
        if claimed is None:
            return
        path, job, rec, creds = claimed
        log_path = self.spool.log_path(s.id)  # -o FILE is opened by the shepherd
        started = time.time()
        try:
            pid = runner.launch(self.spool, self.run_path(s.id), job, s.gpus, s.cpus, creds,
                                log_path)
        except OSError as e:
            self.finish_claimed(s.id, path, "failed", f"could not start: {e}")
            return
        rec.update(pid=pid, started_at=started)
        self.save(path, rec, sync=False)
        self.runs[s.id] = Run(s.id, rec, pid)
        log.info("job %d started on GPU(s) %s (shepherd pid %d)", s.id, list(s.gpus) or "none",
                 pid)

    @contextlib.contextmanager
    def array_gate(self, slim: Slim):
        """For an element of a throttled array (``%N``): yields whether one more
        may start, counted over every host's running/ under one lock, so two
        hosts cannot both take the last slot. Arrays are keyed by owner: no one
        can fill another user's throttle with a file naming its array_id."""
        req = slim.req
        if not (req.array_id and req.array_limit):
            yield True
            return
        fd = os.open(self.spool.state / "arrays.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            n = 0
            for job_id in self.spool.list_ids("running"):
                path = self.spool.record("running", job_id)
                with contextlib.suppress(OSError, BadFile, jobmod.JobError, ValueError):
                    st = os.lstat(path)
                    rec = read_record(path)
                    n += (owner_of(st, rec), rec.get("array_id")) == (slim.uid, req.array_id)
            yield n < req.array_limit
        finally:
            os.close(fd)

    def duplicate(self, job_id: int) -> bool:
        return job_id in self.runs or any(
            self.spool.record(d, job_id).exists() for d in ("running", *spoolmod.FINAL_DIRS))

    def finish_claimed(self, job_id: int, path: Path, state: str, reason: str) -> None:
        st = os.lstat(path)
        try:
            data = read_record(path)
        except (BadFile, jobmod.JobError, ValueError, UnicodeDecodeError):
            spoolmod.move_noreplace(path, self.spool.rejected_copy(job_id))
            data = {"id": job_id}
        uid = owner_of(st, data)
        data.update(id=job_id, uid=uid, user=runner.creds_for(uid).name, ended_at=time.time(),
                    reason=reason)
        if path.exists():
            self.save(path, data)
            spoolmod.move_noreplace(path, self.spool.record(state, job_id))
        else:
            self.save(self.spool.record(state, job_id), data, create=True)
        self.final_count += 1
        (log.info if state == "cancelled" else log.warning)("job %d -> %s/: %s", job_id, state,
                                                             reason)

    # ---- running -------------------------------------------------------------------
    def check_run(self, run: Run, now: float) -> None:
        if self.o.executor == "slurm":
            return  # the bridge polls SLURM for all its jobs at once (poll_gpus)
        state, code = runner.status(self.run_path(run.id))
        if state == "exited":
            self.finish(run, code)
            return
        if state != "running":
            self.finish(run, None)
            return
        if run.kill_at and now >= run.kill_at:
            n = runner.signal_job(self.spool.root, run.id, run.pid, signal.SIGKILL)
            log.info("job %d: grace over, KILL sent to %d process(es)", run.id, n)
            run.kill_at = None
        b = run.booking()
        if b.ends_at and now >= b.ends_at and not run.record.get("kill_reason"):
            self.kill(run, "time limit")

    def kill(self, run: Run, reason: str) -> None:
        if self.o.executor == "slurm":
            self.bridge.kill(run, reason)
            return
        if not run.record.get("kill_reason"):
            run.record["kill_reason"] = reason
            self.save(self.spool.record("running", run.id), run.record)
        n = runner.signal_job(self.spool.root, run.id, run.pid, signal.SIGTERM)
        run.kill_at = time.time() + self.o.kill_grace
        log.info("job %d: %s: TERM sent to %d process(es), KILL in %gs", run.id, reason, n,
                 self.o.kill_grace)

    def finish(self, run: Run, code: int | None, outcome: tuple[str, str] | None = None) -> None:
        """Record how a job ended and move it to its final folder. ``outcome``
        (state, reason), when an executor knows better than the exit code."""
        rec = run.record
        kill_reason = rec.get("kill_reason")
        ended = time.time()
        if code is not None and self.o.executor == "local":  # status written as it ended
            with contextlib.suppress(FileNotFoundError):
                # mtime comes from the kernel's coarse clock: never before the start
                ended = max(self.run_path(run.id).stat().st_mtime,
                            rec.get("started_at") or 0)
        if code is None and outcome is None and not kill_reason:
            state = "failed"
            reason = ("job processes vanished while spoold was not watching them "
                      "(reboot, OOM killer, or kill -9 of the whole tree)")
        elif kill_reason == "time limit":
            state = "failed"
            reason = f"time limit ({rec.get('time_limit'):g}s) exceeded" + (
                f"; exit code {code}" if code is not None else "")
        elif kill_reason:
            state = "cancelled"
            reason = kill_reason + (f"; exit code {code}" if code is not None else "")
        elif code == 0:
            state, reason = "done", None
        elif code is not None:
            state = "failed"
            # sh reports death by signal N as 128+N; signals stop at 64
            reason = (f"killed by signal {code - 128}" if 128 < code <= 128 + 64
                      else f"exit code {code}")
        if outcome is not None and not kill_reason:
            state, reason = outcome
        rec.update(ended_at=ended)
        if code is not None:
            rec["exit_code"] = code
        if reason:
            rec["reason"] = reason
        path = self.spool.record("running", run.id)
        self.save(path, rec)
        try:
            spoolmod.move_noreplace(path, self.spool.record(state, run.id))
        except FileExistsError:
            log.error("job %d: %s/%d.yaml exists already; record left in running/", run.id,
                      state, run.id)
            return
        spoolmod.fsync_dir(self.spool.dir(state))
        if self.o.executor == "local":
            # Leftovers (daemonised children) would hold the GPUs the next job gets.
            runner.signal_job(self.spool.root, run.id, run.pid, signal.SIGKILL)
            runner.clear(self.run_path(run.id))
        self.runs.pop(run.id, None)
        self.final_count += 1
        if rec.get("on_finish"):
            self.guard(run.id, self.on_finish, rec, state)
        log.info("job %d -> %s/ (exit code %s)%s", run.id, state, code,
                 f": {reason}" if reason else "")
        self.prune()

    def on_finish(self, rec: dict, state: str) -> None:
        """--on-finish: fire and forget, as the job's user; output goes to its log."""
        job = jobmod.validate({k: v for k, v in rec.items() if k != "argv"}
                              | {"cmd": rec["on_finish"]})
        extra = {"SPOOLD_EXIT_CODE": str(rec.get("exit_code", "")), "SPOOLD_STATE": state,
                 "SPOOLD_REASON": rec.get("reason") or ""}
        creds = runner.creds_for(rec.get("uid", self.uid)) if self.uid == 0 else None
        log_path = self.spool.log_path(job.id)  # daemon-opened: never a user-chosen path
        runner.spawn_hook(job, tuple(rec.get("assigned_gpus") or ()), creds, log_path,
                          self.spool.root, extra)
        log.info("job %d: on-finish command started", job.id)

    def prune(self) -> None:
        """--keep, per user: drop each user's oldest finished records (by end
        time) beyond the limit, so no one's files push out another's. Over the
        limit, the folders are scanned again only after keep/20 more endings."""
        if self.final_count <= self.o.keep or self.final_count < self.next_prune:
            return
        by_uid: dict[int, list] = {}
        total = 0
        for d in spoolmod.FINAL_DIRS:
            with os.scandir(self.spool.dir(d)) as it:
                for e in it:
                    job_id = spoolmod.parse_record_name(e.name)
                    if job_id is None:
                        continue
                    with contextlib.suppress(OSError):
                        st = e.stat(follow_symlinks=False)
                        uid = self.record_uid(d, job_id, st)
                        by_uid.setdefault(uid, []).append((st.st_mtime, job_id, d))
                        total += 1
        for entries in by_uid.values():
            entries.sort()
            for _, job_id, d in entries[: max(0, len(entries) - self.o.keep)]:
                # the record last: a crash in between leaves a record, never a
                # kept original that recovery would turn back into one
                for p in (self.spool.rejected_copy(job_id), self.spool.log_path(job_id),
                          self.spool.record(d, job_id)):
                    spoolmod.remove_entry(p)
                self.uids.pop((d, job_id), None)
                total -= 1
        self.final_count = total
        self.next_prune = total + max(1, self.o.keep // 20)

    def record_uid(self, state: str, job_id: int, st: os.stat_result) -> int:
        """The owner of a finished record (parsed once, then remembered)."""
        key = (state, job_id)
        hit = self.uids.get(key)
        if hit is None or hit[0] != st.st_ino:
            try:
                uid = read_record(self.spool.record(state, job_id)).get("uid")
            except (OSError, BadFile, jobmod.JobError, ValueError):
                uid = None
            hit = self.uids[key] = (st.st_ino, uid if isinstance(uid, int) else -1)
        return hit[1]

    # ---- requests --------------------------------------------------------------------
    def handle_requests(self) -> None:
        for name in self.spool.list_requests():
            self.guard(None, self.handle_request, name)

    def handle_request(self, name: str) -> None:
        path = self.spool.requests / name
        parsed = spoolmod.parse_request_name(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            # A planted folder, link or fifo would block the owner's own request
            # (tools create requests with O_EXCL): never acted on, removed.
            log.warning("requests/%s: not a regular file (uid %d); removed", name, st.st_uid)
            spoolmod.remove_entry(path)
            return
        if self.shared and st.st_nlink > 1:
            log.warning("requests/%s: a hard link (uid %d); removed", name, st.st_uid)
        elif parsed is None:
            log.warning("requests/%s: not a request (kill-ID, cancel-ID, hold-ID, release-ID,"
                        " pause, resume); removed", name)
        elif not self.owner_ok(st.st_uid):
            log.warning("requests/%s: owned by uid %d, not ours; removed", name, st.st_uid)
        elif self.shared and st.st_uid != 0 and parsed[1] is None:
            log.warning("requests/%s: only root may pause or resume a shared queue; removed",
                        name)
        elif self.shared and st.st_uid != 0 and self.job_owner(parsed[1]) not in (
                None, st.st_uid):
            log.warning("requests/%s: uid %d does not own job %d; removed", name, st.st_uid,
                        parsed[1])
        else:
            kind, job_id = parsed
            if self.apply_request(kind, job_id) == "elsewhere":
                return  # for a job another host runs: that host's daemon consumes it
        spoolmod.remove_entry(path)

    def find_pending(self, job_id: int):
        """The pending name of ``job_id``: from the last listing if it is still
        there (a gkill costs no re-listing of a long queue), else listed afresh."""
        p = self.pending_ids.get(job_id)
        if p is not None and os.path.lexists(self.spool.pending / p.name):
            return p
        return next((q for q in self.spool.list_pending() if q.job_id == job_id), None)

    def job_owner(self, job_id: int) -> int | None:
        """uid that owns a running or pending job (None: no such job)."""
        run = self.runs.get(job_id)
        if run is not None:
            return run.record.get("uid")
        p = self.find_pending(job_id)
        if p is None:
            return None
        job = self.load_pending(p.name, time.time() + SETTLE_S)
        return job.uid if isinstance(job, Slim) else os.lstat(self.spool.pending / p.name).st_uid

    def apply_request(self, kind: str, job_id: int | None) -> str | None:
        if kind == "pause":
            self.spool.paused_flag.touch()
            log.info("queue paused; running jobs continue")
            return
        if kind == "resume":
            with contextlib.suppress(FileNotFoundError):
                self.spool.paused_flag.unlink()
            log.info("queue resumed")
            return
        run = self.runs.get(job_id)
        if run is not None:
            if kind == "kill":
                self.kill(run, "killed on request")
            else:
                log.info("job %d is running: %s request ignored (gkill kills it)", job_id, kind)
            return
        p = self.find_pending(job_id)
        if p is None:
            where = next((d for d in ("running", *spoolmod.FINAL_DIRS)
                          if self.spool.record(d, job_id).exists()), None)
            if where == "running":
                try:
                    host = read_record(self.spool.record("running", job_id)).get("host")
                except (OSError, BadFile, jobmod.JobError, ValueError):
                    host = None
                if host not in (None, self.o.host):
                    return "elsewhere"
            log.info("%s request for job %d ignored: %s", kind, job_id,
                     f"it is in {where}/" if where else "no such job")
            return
        if kind in ("kill", "cancel"):
            job = self.load_pending(p.name, time.time() + SETTLE_S)
            if isinstance(job, str):
                self.reject_file(p, job)
                return
            self.end_pending(job_id, "cancelled", f"{kind} requested before it started", p)
        else:
            self.set_hold(p, kind == "hold")

    def set_hold(self, p, hold: bool) -> None:
        """Rewrite the pending file with ``hold:`` changed. The new file keeps
        its owner (root hands it back), so who the job runs as cannot change."""
        path = self.spool.pending / p.name
        st = os.lstat(path)
        job = jobmod.parse(spoolmod.read_untrusted(path))
        data = dict(job.data)
        data["hold"] = hold
        owner = None
        if self.shared and st.st_uid != 0:
            data.pop("uid", None)
            owner = st.st_uid
        self.spool.replace_atomic(path, jobmod.dump(data), mode=0o600, owner=owner,
                                  group=st.st_gid if owner is not None else None)
        self.touched.add(p.name)
        log.info("job %d %s", p.job_id, "held" if hold else "released")


def read_record(path: Path) -> dict:
    """A record the daemon wrote (never through a link; a job file plus fields)."""
    return jobmod.load_record(spoolmod.read_untrusted(path, spoolmod.MAX_RECORD_BYTES))


def owner_of(st: os.stat_result, job) -> int:
    """Who a job file's job runs as: the file's owner. A file owned by root
    (root's own, or one the daemon put back in pending/ after a claim) may
    name another user in ``uid:``; no one else's file can, since only root
    can write a root-owned file."""
    uid = job.get("uid")
    if st.st_uid == 0 and isinstance(uid, int) and 0 <= uid < 2**31:
        return uid
    return st.st_uid


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True, slots=True)
class Slim:
    """What the daemon keeps of a pending file between passes: a few hundred
    bytes, not the parsed job (whose environment alone can be kilobytes)."""

    req: Request
    prio: int | None  # the file's own `priority:` field, for files dropped without one
    uid: int  # who the job runs as (``owner_of``: the kernel's word, not a field)


def _slim(job, p, default_limit: float | None, st: os.stat_result) -> Slim:
    uid = owner_of(st, job)
    req = request_of(job, p.job_id if p else 0, default_limit, owner=uid)
    return Slim(req, job.priority if "priority" in job.data else None, uid)


class _DepStates:
    """Mapping id -> state for --after, looked up only for ids a job names."""

    def __init__(self, d: Daemon):
        self.d = d

    def get(self, job_id: int, default=None):
        if job_id in self.d.runs:
            return "running"
        if job_id in self.d.pending_ids:
            return "pending"
        for state in (*spoolmod.FINAL_DIRS, "running"):
            if self.d.spool.record(state, job_id).exists():
                return state
        return default


NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "lustre", "gpfs", "ceph",
              "glusterfs", "fuse.glusterfs", "beegfs", "9p", "afs", "ocfs2"}


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest mount-point match)."""
    best, kind = "", ""
    target = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4].replace("\\040", " ")
            if (target == point or target.startswith(point.rstrip("/") + "/")) and \
                    len(point) >= len(best):
                best, kind = point, right.split()[0]
    return kind


def _sd_notify(msg: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(msg.encode())


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("spoold")
    except Exception:
        return "dev"


def parse_args(argv: list[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(
        prog="spoold", description="Run GPU jobs from a spool directory (foreground daemon).",
        epilog="Example: spoold --gpus 0 1 --max-load 0.2 &   then   gsub -n 1 python train.py")
    ap.add_argument("--spool", type=Path, default=None,
                    help="spool directory (default: $SPOOLD_SPOOL, else ~/.local/share/spoold)")
    ap.add_argument("--gpus", nargs="+", default=None,
                    help="GPU indices to manage, e.g. --gpus 0 1 or --gpus 0,1 (default: all)")
    ap.add_argument("--max-pending", type=int, default=10000, help="queue length cap (10000)")
    ap.add_argument("--max-pending-per-user", type=int, default=None, metavar="N",
                    help="pending jobs one user may have (half of --max-pending)")
    ap.add_argument("--hook-limit", type=float, default=60.0, metavar="SECONDS",
                    help="how long an --on-finish command may run; the job's GPUs stay booked "
                         "until it ends (60)")
    ap.add_argument("--keep", type=int, default=10000, help="finished records kept (10000)")
    ap.add_argument("--limit", type=int, default=None, help="GPUs per job (min(8, #gpus))")
    ap.add_argument("--max-load", type=float, default=0.1,
                    help="a GPU is busy at this utilisation fraction or more (0.1)")
    ap.add_argument("--max-memory", type=float, default=0.1,
                    help="a GPU is busy at this memory-used fraction or more (0.1)")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between GPU readings (1)")
    ap.add_argument("--fake-gpus", type=Path, default=None, metavar="FILE",
                    help="read GPUs from a YAML file instead of NVML (tests, demos)")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs to hand out (all online)")
    ap.add_argument("--mem", default=None, help="memory to hand out, e.g. 64G (physical)")
    ap.add_argument("--kill-grace", type=float, default=10.0,
                    help="seconds between TERM and KILL (10)")
    ap.add_argument("--host", default=socket.gethostname(), help="host name to record")
    ap.add_argument("--default-time-limit", default=None, metavar="DURATION",
                    help="time limit for jobs submitted without -t (none)")
    ap.add_argument("--host-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="shared spool: a host whose heartbeat is older than this is lost and "
                         "its running jobs fail (or requeue) (60)")
    ap.add_argument("--polling", action=argparse.BooleanOptionalAction, default=None,
                    help="watch the spool by polling, not inotify (default: on for network "
                         "filesystems such as NFS, whose other clients' writes inotify misses)")
    ap.add_argument("--executor", choices=("local", "slurm"), default="local",
                    help="local: run jobs here (default); slurm: hand every job to sbatch and "
                         "record what SLURM reports (docs/slurm.md)")
    ap.add_argument("--drain", action="store_true",
                    help="start no new job; exit once running jobs have ended (also SIGUSR1)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = ap.parse_args(argv)
    gpus = None
    if a.gpus is not None:
        try:
            gpus = sorted({int(x) for g in a.gpus for x in g.split(",") if x})
        except ValueError:
            ap.error(f"--gpus takes GPU indices, got {' '.join(a.gpus)!r}")
    from .util import parse_duration

    try:
        mem = parse_size_mib(a.mem) if a.mem else None
        dtl = parse_duration(a.default_time_limit) if a.default_time_limit else None
    except ValueError as e:
        ap.error(str(e))
    try:
        spoolmod.check_host(a.host)
    except ValueError as e:
        ap.error(f"--host: {e}")
    if a.max_pending_per_user is None:
        a.max_pending_per_user = max(1, a.max_pending // 2)
    for name in ("max_pending", "max_pending_per_user", "keep", "poll", "kill_grace",
                 "host_timeout", "hook_limit"):
        if getattr(a, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s spoold[%(process)d] %(levelname)s %(message)s")
    return Options(spool=(a.spool or spoolmod.default_spool()).absolute(), gpus=gpus,
                   max_pending=a.max_pending, max_pending_per_user=a.max_pending_per_user,
                   hook_limit=a.hook_limit, keep=a.keep, limit=a.limit, max_load=a.max_load,
                   max_memory=a.max_memory, poll=a.poll, fake_gpus=a.fake_gpus, cpus=a.cpus,
                   mem=mem, kill_grace=a.kill_grace, host=a.host, default_time_limit=dtl,
                   drain=a.drain, host_timeout=a.host_timeout, polling=a.polling,
                   executor=a.executor)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        Daemon(opts).run()
    except SystemExit:
        raise
    except spoolmod.NotASpool as e:
        print(f"spoold: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC):
            print(f"spoold: {e}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
