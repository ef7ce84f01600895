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

import contextlib
import errno
import fcntl
import logging
import os
import queue
import select
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Mapping

from . import daemonlog, metrics, runner
from . import spool as spoolmod
from . import watch as watching
from .bridge import SlurmExecutor
from .executor import LocalExecutor
from .gpus import GpuReading, busy_reason, open_source
from .health import Health
from .hosts import Hosts
from .lifecycle import Lifecycle, Run
from .metrics import Metrics
from .options import Options, _version, parse_args
from .pending import PendingQueue
from .policy import Shares
from .records import Records
from .requests import Requests
from .scheduler import (
    Gpu,
    Resources,
)
from .spool import Spool

log = logging.getLogger("spoold")

RESCAN_S = 5.0  # full re-list of the spool even if no event came
BEAT_AFTER_START_S = 0.25  # a start rewrites the heartbeat if it is at least this old
LARGE_FOLDER, LARGE_RECOUNT_S = 10000, 10.0  # --metrics: how often a big folder is counted
MAX_BACKOFF_S = 30.0  # longest wait between retries while the spool cannot be written
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMLINK)


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


EXECUTORS = {"local": LocalExecutor, "slurm": SlurmExecutor}


class Daemon:

    def __init__(self, opts: Options):
        self.o = opts
        self.spool = Spool(opts.spool)
        self.waker = Waker()
        self.uid = os.geteuid()
        self.shared = self.uid == 0  # root: one spool for every user
        self.runs: dict[int, Run] = {}
        self.shares = Shares(self.spool, opts, self.shared)
        self.queue = PendingQueue(self)
        self.records = Records(self.spool, self.shared, opts.keep)
        self.requests = Requests(self)
        self.hosts = Hosts(self)
        self.jobs = Lifecycle(self)
        self.health = Health(self)
        self.executor = None  # set in setup_resources: the plug-in --executor names
        self.readings: list[GpuReading] = []
        self.next_poll = 0.0
        self.next_rescan = 0.0
        self.stop = False
        self.watcher = None  # watch.start's, once the loop runs
        self.run_news: queue.SimpleQueue = queue.SimpleQueue()  # run files closed (watcher)
        self.beat_owed = False  # a start not in the heartbeat yet (it was just written)
        self.draining = opts.drain
        self.source = None
        self.managed: list[int] = []
        self.cpu_ids: tuple[int, ...] = ()
        self.mem = 0
        self.peers: tuple[Resources, ...] = ()
        self.foreign: dict[int, list] = {}  # GPU -> processes on it that are no job's
        self.metrics = Metrics()
        self.counts: dict[str, tuple] = {}  # folder -> (mtime_ns, jobs, when counted)
        self.write_failed = False
        self.backoff = 0.0
        self.blocked_until = 0.0

    # ---- start-up ------------------------------------------------------------
    def lock(self) -> None:
        self.spool.create(shared=self.shared)
        self.spool.run_dir(self.o.host).mkdir(mode=0o700, exist_ok=True)
        fd = self.hosts.open_lock(self.o.host)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            raise SystemExit(f"spoold: another spoold (pid {other}) already runs the spool "
                             f"{self.spool.root} for host {self.o.host}; stop it first") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            os.close(fd)  # a full disk: set_up tries again, with a fresh lock
            raise
        self._lock_fd = fd  # held for the daemon's life


    def set_up(self) -> None:
        """Create the spool and take its lock; while the disk is full or out of
        inodes, wait for room (backing off) instead of exiting: a user filling
        tmp/ must not keep the daemon down."""
        delay = 1.0
        while True:
            try:
                self.lock()
                return
            except OSError as e:
                if e.errno not in WRITE_ERRORS or e.errno in (errno.EACCES, errno.EROFS):
                    raise
                log.error("cannot set up the spool %s (%s: %s); waiting for room, retrying "
                          "in %gs", self.spool.root, e.strerror, e.filename, delay)
            time.sleep(delay)
            delay = min(MAX_BACKOFF_S, delay * 2)

    def setup_resources(self) -> None:
        self.source = open_source(self.o.fake_gpus, "running CPU-only: jobs asking for GPUs "
                                  "will fail" if self.o.executor == "local" else
                                  "SLURM places the jobs (GPUs are read only where it runs)")
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
        self.executor = self.jobs.executor = EXECUTORS[self.o.executor](self.jobs)
        log.info("executor: %s", self.executor.description)
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
            self.guard(job_id, self.jobs.recover_one, job_id)
        self.executor.recover_strays(set(self.runs))
        for orig in self.spool.failed.glob("*.orig"):
            stem = orig.name[:-5]
            if stem.isdigit() and not self.spool.record("failed", int(stem)).exists():
                rec = {"id": int(stem), "ended_at": now, "reason": "rejected: the reason was "
                       "lost in a crash; the original is kept as " + orig.name}
                self.records.save(self.spool.record("failed", int(stem)), rec, create=True)
        self.records.final_count = sum(len(self.spool.list_ids(d)) for d in spoolmod.FINAL_DIRS)


    # ---- the loop ------------------------------------------------------------
    def run(self) -> None:
        self.set_up()
        self.guard(None, self.health.load)
        self.setup_logfile()
        self.setup_resources()
        self.guard(None, self.recover)
        observer = self.watcher = watching.start(self)
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
        if any(run.kill_at and now >= run.kill_at for run in self.runs.values()):
            self.guard(None, self.jobs.poll, now)

    def timeout(self) -> float:
        now = time.time()
        if now < self.blocked_until:
            t = self.blocked_until
            for run in self.runs.values():
                if run.kill_at:
                    t = min(t, run.kill_at)
            return t - now
        t = min(self.next_poll, self.next_rescan, self.executor.wake_at(self.runs, now))
        if self.beat_owed:
            t = min(t, self.hosts.beat_time + BEAT_AFTER_START_S)
        if self.queue.unsettled:
            t = min(t, now + 0.5)
        if self.queue.unparsed:
            t = now  # still reading a long queue: keep going
        return t - now

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
        """Recreate spool folders that were removed or moved away under us, and
        watch again those whose watch went with them."""
        gone = self.spool.missing()
        if gone or not self.spool.run_dir(self.o.host).is_dir():
            log.warning("spool folder(s) missing: %s; recreating them",
                        ", ".join(gone) or f"state/run/{self.o.host}")
            self.spool.ensure(self.shared)
            self.spool.run_dir(self.o.host).mkdir(mode=0o700, exist_ok=True)
        watching.again(self.watcher)

    def tick(self) -> None:
        now = time.time()
        runner.reap()
        if now < self.blocked_until:
            self.supervise(now)  # running jobs stay watched; nothing is written
            return
        if now >= self.next_poll:
            self.poll_gpus()
            self.hosts.check(now)
            self.next_poll = now + self.o.poll
        full = now >= self.next_rescan
        if full:
            self.repair()
            self.shares.reload()
        self.requests.handle_all()
        self.guard(None, self.jobs.poll, now)
        if full:
            # A record stranded by a failed write (disk full) is recovered like
            # one found at start.
            for job_id in self.spool.list_ids("running"):
                if job_id not in self.runs:
                    self.guard(job_id, self.jobs.recover_one, job_id)
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
        try:
            self.readings = self.source.read() if self.source else []
        except Exception as e:  # a broken driver must not stop the queue
            log.warning("GPU reading failed: %s", e)
            self.readings = [GpuReading(index=i, error=str(e)) for i in self.managed]
        self.guard(None, self.health.check, self.gpu_views())
        self.foreign = self.guard(None, self.jobs.sample_gpus, self.gpu_views()) or {}
        if self.o.foreign_procs != "busy":
            self.foreign = {}
        if self.hosts.heartbeat():  # something changed, or 5 s passed: so do the metrics
            self.guard(None, self.write_metrics)

    def busy(self, r: GpuReading) -> str | None:
        """Why GPU ``r`` is busy for reasons other than our own jobs (None: free)."""
        return self.health.reason(r.index) or busy_reason(
            r, self.o.max_load, self.o.max_memory, foreign=self.foreign.get(r.index, ()))

    def write_metrics(self) -> None:
        """--metrics: the Prometheus text file, rewritten when something changed."""
        if self.o.metrics is None:
            return
        folders = {d: self.count(d) for d in ("running", *spoolmod.FINAL_DIRS)}
        folders["pending"] = len(self.queue.names or ())
        held = {i for run in self.runs.values() for i in run.record.get("assigned_gpus") or ()}
        gpus = [r.as_dict() | {"busy": self.busy(r), "assigned": r.index in held}
                for r in self.gpu_views()]
        metrics.write(self.o.metrics, self.metrics.render(folders, gpus, self.hosts.beat_time))


    def count(self, folder: str) -> int:
        """Jobs in ``folder``, listed again only when its mtime moved, and a
        large folder (100,000 records) at most every LARGE_RECOUNT_S."""
        st = os.stat(self.spool.dir(folder))
        now = time.monotonic()
        mtime, n, at = self.counts.get(folder, (None, 0, 0.0))
        if st.st_mtime_ns != mtime and (n < LARGE_FOLDER or now - at >= LARGE_RECOUNT_S):
            mtime, n, at = st.st_mtime_ns, len(self.spool.list_ids(folder)), now
            self.counts[folder] = (mtime, n, at)
        return n

    def gpu_views(self) -> list[GpuReading]:
        by_index = {r.index: r for r in self.readings}
        return [by_index.get(i, GpuReading(index=i, error="GPU not found"))
                for i in self.managed]

    def resources(self) -> Resources:
        gpus = []
        for r in self.gpu_views():
            why = self.busy(r)
            gpus.append(Gpu(r.index, why, r.memory_total, r.memory_used, failed=bool(r.error)
                            or r.memory_total is None))
        return Resources(gpus=tuple(gpus), cpus=self.cpu_ids, mem=self.mem, limit=self.limit,
                         host=self.o.host, paused=self.spool.paused_flag.exists(),
                         peers=self.peers, limits=_Limits(self.shares))

    def share_table(self) -> list[dict]:
        """Each user's share, for gstat (the heartbeat is public): decayed
        GPU-hours, GPUs held, the rank fair share gives them (1 = next in
        line), their caps and whether they are an admin. Shared spools only."""
        if not self.shared:
            return []
        usage = getattr(self.queue, "usage", None) or {}
        held = Counter()
        for run in self.runs.values():
            held[run.record.get("uid")] += len(run.record.get("assigned_gpus") or ())
        waiting = self.queue.owners()  # not a walk over the queue: it can be 100,000 long
        users = sorted({u for u in (*usage, *held, *waiting) if isinstance(u, int)},
                       key=lambda u: (usage.get(u, 0.0), u))
        table = []
        for rank, u in enumerate(users, 1):
            cap = self.shares.limit_for(u)
            table.append({"uid": u, "user": runner.creds_for(u).name, "gpus": held[u],
                          "usage_gpu_h": round(usage.get(u, 0.0) / 3600, 3),
                          "rank": rank if self.o.fairshare_halflife > 0 else None,
                          "max_gpus": cap.gpus if cap else None,
                          "max_cpus": cap.cpus if cap else None,
                          "admin": self.shares.is_admin(u)})
        return table


    def schedule_pass(self, now: float, full: bool) -> None:
        bad = self.queue.refresh(now, full)
        decision = self.executor.decide(self.queue.index, [r.booking() for r in
                                                           self.runs.values()],
                                        self.resources(), now, _DepStates(self))
        for p, reason in bad:
            self.guard(p.job_id, self.jobs.reject_file, p, reason)
        for job_id, reason in decision.reject.items():
            self.guard(job_id, self.jobs.end_pending, job_id, "failed", reason, None,
                       "rejected")
        for job_id, reason in decision.cancel.items():
            self.guard(job_id, self.jobs.end_pending, job_id, "cancelled", reason)
        self.jobs.start_all(decision.start)
        # gstat reads the jobs and shares from the heartbeat: now, unless it was
        # written a moment ago (a busy queue); then BEAT_AFTER_START_S after it.
        self.beat_owed = self.beat_owed or bool(decision.start)
        if self.beat_owed and time.time() - self.hosts.beat_time >= BEAT_AFTER_START_S:
            self.beat_owed = False
            self.hosts.heartbeat()


class _Limits(Mapping):
    """Per-user caps, looked up only for the owners the scheduler asks about."""

    def __init__(self, shares: Shares):
        self.shares, self.cache = shares, {}

    def __getitem__(self, uid: int):
        if uid not in self.cache:
            self.cache[uid] = self.shares.limit_for(uid)
        return self.cache[uid]

    def get(self, uid, default=None):
        return self[uid]

    def __iter__(self):
        return iter(self.cache)

    def __len__(self) -> int:
        return 1  # truthy: the scheduler checks caps


class _DepStates:
    """Mapping id -> state for --after, looked up only for ids a job names."""

    def __init__(self, d: Daemon):
        self.d = d

    def get(self, job_id: int, default=None):
        if job_id in self.d.runs:
            return "running"
        if job_id in self.d.queue.pending_ids:
            return "pending"
        for state in (*spoolmod.FINAL_DIRS, "running"):
            if self.d.spool.record(state, job_id).exists():
                return state
        return default


def _sd_notify(msg: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(msg.encode())


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.stop:  # spoold --stop: signal the running daemon instead of being one
        from .control import stop

        return stop(opts.spool, opts.host, opts.drain, opts.stop_timeout)
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
