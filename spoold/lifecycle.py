"""A job's life once the scheduler picks it: claim, start, watch, kill, end.

Owns: the moves of one job between pending/, running/ and the final folders
(claim, reject, cancel, requeue, finish), kill reasons and outcomes. Where
and how a job runs is its executor's (``executor.Executor``: this machine,
or SLURM); this module is the only code that moves job files.

Invariants:
- Every move is one rename that never replaces anything (RENAME_NOREPLACE);
  a final record is complete before the rename that makes it final.
- Who a job runs as is decided at the claim from the file's owner
  (``records.owner_of``) and written into the root-owned record; nothing
  the job file says changes it.
- A job put back in pending/ sheds what its run added (``RUN_FIELDS``) and
  keeps its id; no other code puts a job back.
- An ended job is recorded only once its executor says its on-finish hook
  no longer holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import job as jobmod
from . import runner
from . import spool as spoolmod
from .executor import LaunchError
from .gpus import foreign as foreign_procs
from .pending import Slim
from .records import KILL_GPU_MEM, RUN_FIELDS, finite, outcome_of, owner_of, read_record
from .scheduler import Running, booking_key, running_of
from .spool import BadFile

log = logging.getLogger("spoold")

CLAIM_GRACE_S = 10.0  # a claimed record without a host is another daemon's, still being written


@dataclass
class Run:
    """A running job of this host, as its record says."""

    id: int
    record: dict
    pid: int | None = None
    kill_at: float | None = None  # when to send KILL after TERM
    hook_pid: int | None = None  # the on-finish hook we started (this daemon's child)
    gpu_mem_now: int | None = None  # MiB its processes use on GPUs, at the last poll
    gpu_mem_peak: int | None = None
    gpu_mem_over: int = 0  # polls in a row over its --gpu-mem slice
    util_sum: float = 0.0  # utilization % of its GPUs, summed over polls
    util_n: int = 0
    used: dict | None = None  # CPU and memory, read as it ended (before any hook ran)
    _booked: tuple | None = field(default=None, repr=False, compare=False)  # (its key, booking)

    def gpu_usage(self) -> dict:
        out = {}
        if self.gpu_mem_peak is not None:
            out["gpu_mem_peak_mib"] = self.gpu_mem_peak
        if self.util_n:
            out["gpu_util_mean"] = round(self.util_sum / self.util_n, 1)
        return out

    def booking(self) -> Running:
        """What the job books (``scheduler.running_of``), made again only when
        a field it is made of changed: it is asked for each running job at
        every pass, and with hundreds running that was a third of a pass."""
        key = booking_key(self.record)
        if self._booked is None or self._booked[0] != key:
            self._booked = (key, running_of(self.id, self.record))
        return self._booked[1]

    @property
    def hook_until(self) -> float | None:
        return self.record.get("hook_started_at")


def identified(rec: dict, job_id: int, uid: int) -> dict:
    """A job file's fields as the start of its record: what it says about a
    run (``RUN_FIELDS``, ``reason``) is its owner's words and goes; identity
    comes from the kernel (``uid``, the file's owner) and its name."""
    for k in (*RUN_FIELDS, "reason"):
        rec.pop(k, None)
    rec.update(id=job_id, uid=uid, user=runner.creds_for(uid).name)
    return rec


class Lifecycle:
    def __init__(self, d):
        self.d = d  # the daemon, for its metrics
        self.runs: dict[int, Run] = d.runs  # this host's running jobs (the daemon's dict)
        self.guard = d.guard  # fences one job's step: a failure never stops the loop
        self.uid = d.uid  # the daemon's own uid (0: a shared spool)
        self.spool = d.spool
        self.o = d.o
        self.records = d.records
        self.queue = d.queue
        self.executor = None  # executor.Executor: set by the daemon before the first pass
        self.ending: list | None = None  # jobs ended in this batch, not yet released

    # ---- pending -> final ---------------------------------------------------------
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
            self.queue.leave(p)
        rec = {"id": p.job_id, "uid": owner, "user": runner.creds_for(owner).name,
               "original_name": spoolmod.printable_name(original or p.name),
               "reason": f"rejected: {reason}", "outcome": "rejected", "ended_at": time.time()}
        self.records.save(self.spool.record("failed", p.job_id), rec, create=True)
        self.records.final_count += 1
        self.d.metrics.observe_finish("rejected")
        log.warning("job %d (pending/%s) rejected: %s; original kept as failed/%d.orig",
                    p.job_id, p.name, reason, p.job_id)

    def end_pending(self, job_id: int, state: str, reason: str, p=None,
                    outcome: str | None = None) -> None:
        """pending -> failed/ or cancelled/, through running/ so that the final
        record appears complete in one rename. A crash in between puts the job
        back in pending/, where the same decision (or request) is made again."""
        p = p or self.queue.pending_ids.get(job_id)
        if p is None:
            return
        path = self.spool.record("running", job_id)
        self.queue.leave(p)
        try:
            spoolmod.move_noreplace(self.spool.pending / p.name, path)
        except FileNotFoundError:
            return
        self.finish_claimed(job_id, path, state, reason, outcome)
        self.records.prune()

    def finish_claimed(self, job_id: int, path: Path, state: str, reason: str,
                       outcome: str | None = None) -> None:
        """End a claimed job that never ran (refused, cancelled, could not start)."""
        st = os.lstat(path)
        try:
            data = read_record(path)
        except (BadFile, jobmod.JobError, ValueError, UnicodeDecodeError):
            spoolmod.move_noreplace(path, self.spool.rejected_copy(job_id))
            data = {"id": job_id}
        uid = owner_of(st.st_uid, data)
        data.update(id=job_id, uid=uid, user=runner.creds_for(uid).name, ended_at=time.time(),
                    reason=reason, outcome=outcome or outcome_of({}, None, (state, reason)).outcome)
        if path.exists():
            self.records.save(path, data)
            spoolmod.move_noreplace(path, self.spool.record(state, job_id))
        else:
            self.records.save(self.spool.record(state, job_id), data, create=True)
        self.records.final_count += 1
        self.d.metrics.observe_finish(data["outcome"])
        (log.info if state == "cancelled" else log.warning)("job %d -> %s/: %s", job_id, state,
                                                             reason)

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
        self.records.save(path, rec)
        name = spoolmod.pending_name(prio, job_id)
        spoolmod.move_noreplace(path, self.spool.pending / name)
        spoolmod.fsync_dir(self.spool.pending)
        self.queue.touched.add(name)
        log.warning("job %d: %s; requeued (back in pending/)", job_id, why)

    # ---- start ---------------------------------------------------------------------
    def claim(self, job_id: int, extra: dict):
        """Take pending job ``job_id`` into running/ (one rename), read it again
        there and note who owns it. Returns (path, job, record, creds) or None
        when the job is gone, refused, or changed under us (then it is back).
        The rename is made durable by ``start_all`` (one fsync for a pass's
        claims); the record is written once, after the launch."""
        p, cached, _ = self.queue.by_id[job_id]
        if self.duplicate(job_id):
            target = self.queue.rename_with_new_id(p.name, p.priority)
            if target:
                log.warning("job %d: id already used in the spool; renamed to job %d", job_id,
                            target.job_id)
            return None
        path = self.spool.record("running", job_id)
        self.queue.leave(p)
        with self.array_gate(cached) as room:
            if not room:
                self.queue.touched.add(p.name)  # another host runs its %N: decide again later
                return None
            try:
                spoolmod.move_noreplace(self.spool.pending / p.name, path)  # the claim
            except FileNotFoundError:
                return None  # cancelled or re-prioritised meanwhile
        try:
            fd_st = os.lstat(path)
            job = jobmod.parse(spoolmod.read_untrusted(path))
        except (BadFile, jobmod.JobError) as e:
            self.finish_claimed(job_id, path, "failed", f"rejected: {e}", "rejected")
            return None
        except spoolmod.StillOpen:
            job = None  # its owner holds a lease on it: not ours to read yet
        req = cached.req
        if job is None or (job.gpus, job.gpu_mem, job.cpus, job.mem) != (
                req.gpus, req.gpu_mem, req.cpus, req.mem):
            # changed under us: back (no one can have taken the name: the id is ours)
            spoolmod.move_noreplace(path, self.spool.pending / p.name)
            self.queue.touched.add(p.name)
            return None
        uid = owner_of(fd_st.st_uid, job)
        if not self.queue.owner_ok(uid):
            self.finish_claimed(job_id, path, "failed", f"rejected: file owned by uid {uid}; "
                                f"this spoold (uid {self.uid}) runs only its own files",
                                "rejected")
            return None
        rec = identified(dict(job.data), job_id, uid)
        rec.update(host=self.o.host, claimed_at=time.time(), **extra)
        if not finite(rec.get("submitted_at")):
            rec["submitted_at"] = fd_st.st_mtime
        rec.setdefault("name", job.name)
        if job.time_limit is None and self.o.default_time_limit:
            rec["time_limit"] = job.time_limit = self.o.default_time_limit
        job.id, job.priority = job_id, p.priority
        return path, job, rec, runner.creds_for(uid) if self.uid == 0 else None


    @contextlib.contextmanager
    def array_gate(self, slim: Slim):
        """For an element of a throttled array (``%N``): yields whether one more
        may start, counted over every host's running/ under one lock, so two
        hosts cannot both take the last slot. Arrays are keyed by owner: no one
        can fill another user's throttle with a file naming its array_id."""
        req = slim.req
        if not (req.array_id and req.array_limit) or self.executor.throttles_arrays:
            yield True  # (SLURM applies %N: every element goes to it)
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
                    n += (owner_of(st.st_uid, rec), rec.get("array_id")) == (slim.uid,
                                                                            req.array_id)
            yield n < req.array_limit
        finally:
            os.close(fd)

    def duplicate(self, job_id: int) -> bool:
        return job_id in self.runs or self.spool.where(job_id) is not None

    def start_all(self, starts) -> None:
        """Claim every job the scheduler picked, make the claims durable (each
        claimed file's content, then one fsync of running/: a group commit; a
        crash never runs a job whose claim could be undone or whose file could
        come back cut short), then launch each and write its record once.
        A record lost in a crash is rebuilt at recovery from the file the
        claim moved (``recover_one``) and the run file. The elements of one
        array claimed in this pass go to ``executor.launch_group`` together
        (SLURM: one SLURM array), at the place of the first in queue order."""
        claimed = []
        for s in starts:
            c = self.guard(s.id, self.claim, s.id, self.executor.claim_fields(s))
            if c is not None:
                claimed.append((s, c))
        for _, c in claimed:  # gsub syncs after its mv: this claim may be first
            spoolmod.fsync_file(c[0])
        if claimed:
            spoolmod.fsync_dir(self.spool.running)
        groups: dict = {}  # (owner, array_id) or the job id -> [(start, claimed)]
        for s, c in claimed:
            rec = c[2]
            groups.setdefault((rec["uid"], rec["array_id"]) if rec.get("array_id") else s.id,
                              []).append((s, c))
        for key, group in groups.items():
            if not isinstance(key, tuple):
                self.guard(key, self.start, *group[0])
                continue
            started = time.time()
            items = [(s.id, c[1], c[2], c[3], s) for s, c in group]
            # (None after an unexpected error: the claims are recovered like a crash's)
            launched = self.guard(group[0][0].id, self.executor.launch_group, items) or ()
            for (s, c), fields in zip(group, launched, strict=False):
                self.guard(s.id, self.start, s, c, fields, started)

    def start(self, s, claimed, launched=None, started: float | None = None) -> None:
        """Launch one claimed job (or take ``launched``: its fields, or its
        LaunchError, from ``launch_group``) and write its record."""
        path, job, rec, creds = claimed
        started = started or time.time()
        try:
            fields = launched if launched is not None else \
                self.executor.launch(s.id, job, rec, creds, s)
            if isinstance(fields, LaunchError):
                raise fields
        except LaunchError as e:
            self.finish_claimed(s.id, path, "failed", str(e))
            return
        rec.update(fields, started_at=started)
        if s.gpus and not job.gpu_mem:  # energy counters count whole GPUs only
            energy = self.d.health.energy_at_start(s.gpus)
            if energy:
                rec["energy_start_mj"] = energy
        self.records.save(path, rec, sync=False)
        self.d.shares.note("running", s.id, path, rec, started)
        if finite(rec.get("submitted_at")):
            self.d.metrics.observe_start(max(0.0, started - rec["submitted_at"]))
        self.runs[s.id] = Run(s.id, rec, fields.get("pid"))
        log.info("job %d started on GPU(s) %s (%s)", s.id, list(s.gpus) or "none",
                 ", ".join(f"{k} {v}" for k, v in fields.items()))

    # ---- running ---------------------------------------------------------------------
    def recover_one(self, job_id: int) -> None:
        """Adopt, end or requeue the job of running/<id>.yaml after a restart."""
        path = self.spool.record("running", job_id)
        try:
            rec = read_record(path)
        except (BadFile, jobmod.JobError, ValueError) as e:
            rec = {"id": job_id}
            log.error("running/%s is unreadable (%s)", path.name, e)
        st = os.lstat(path)
        if st.st_uid != self.uid:  # the claimed file itself, its record never written
            rec = identified(rec, job_id, owner_of(st.st_uid, rec))
        if rec.get("host") not in (None, self.o.host):
            return  # another host's job (shared spool)
        # (a rename keeps the mtime the submitter gave the file; it sets the ctime)
        if rec.get("host") is None and time.time() - max(st.st_mtime, st.st_ctime) < \
                CLAIM_GRACE_S and not self.executor.launched_here(job_id):
            return  # just claimed by a daemon (maybe on another host) that is writing it
        verdict = self.executor.recover(job_id, rec)
        if verdict[0] == "requeue":
            self.requeue(job_id, rec, verdict[1])
            return
        if verdict[0] == "later":
            return  # the executor cannot tell yet (SLURM does not answer)
        if rec.get("host") is None:  # launched, its record not written: write it now
            rec["host"] = self.o.host
            self.records.save(path, rec, sync=False)
        run = self.runs[job_id] = Run(job_id, rec, rec.get("pid"))
        if verdict[0] == "ended":
            self.settle(run, verdict[1])
        else:
            log.info("job %d: adopted (it is still running)", job_id)
            if rec.get("kill_reason"):
                self.kill(run, rec["kill_reason"])

    def sample_gpus(self, readings) -> dict[int, list]:
        """At each GPU poll: each job's GPU memory (now and peak) and its GPUs'
        utilization, from the processes NVML lists on each GPU; a job over its
        --gpu-mem slice (+5%) two polls running is ended as out of memory.
        Returns the processes that belong to no job, by GPU (``gpus.foreign``)."""
        mine: dict[int, int] = {}
        by_index = {r.index: r for r in readings}
        foreign = {}
        jobs = {p.pid: self.executor.job_of(p.pid) for r in readings for p in r.processes}
        for r in readings:
            procs = foreign_procs(r, lambda pid: jobs.get(pid) in self.runs)
            if procs:
                foreign[r.index] = procs
            for proc in r.processes:
                if jobs[proc.pid] in self.runs and proc.used_mib is not None:
                    mine[jobs[proc.pid]] = mine.get(jobs[proc.pid], 0) + proc.used_mib
        for run in list(self.runs.values()):
            utils = [by_index[i].utilization for i in run.record.get("assigned_gpus") or ()
                     if i in by_index and by_index[i].utilization is not None]
            if utils:
                run.util_sum += sum(utils) / len(utils)
                run.util_n += 1
            now = mine.get(run.id)
            run.gpu_mem_now = now
            if now is None:
                continue
            run.gpu_mem_peak = max(run.gpu_mem_peak or 0, now)
            slice_ = run.record.get("gpu_mem")
            over = bool(slice_) and now > slice_ * 1.05
            run.gpu_mem_over = run.gpu_mem_over + 1 if over else 0
            if run.gpu_mem_over >= 2 and not run.record.get("kill_reason"):
                self.kill(run, f"{KILL_GPU_MEM}: {now} MiB on its GPU, over its {slice_} MiB "
                               "slice (--gpu-mem, +5%)")
        return foreign

    def poll(self, now: float) -> None:
        """Record the runs the executor says have ended."""
        with self.batch():
            for ev in self.executor.poll(self.runs, now):
                self.guard(ev.run.id, self.settle, ev.run, ev.code, ev.outcome)

    def kill(self, run: Run, reason: str) -> None:
        if run.hook_until is None and not run.record.get("kill_reason"):
            run.record["kill_reason"] = reason
            self.records.save(self.spool.record("running", run.id), run.record)
        self.executor.kill(run)

    # ---- ending ------------------------------------------------------------------------
    def settle(self, run: Run, code: int | None, outcome=None) -> None:
        """The job's processes have ended (exit ``code``, None: unknown): its
        on-finish hook runs first, the executor's way, then it is recorded."""
        if not self.executor.hook_running(run, code):
            self.finish(run, code, outcome)

    def finish(self, run: Run, code: int | None, outcome: tuple[str, str] | None = None) -> None:
        """Record how a job ended and move it to its final folder. ``outcome``
        (state, reason), when an executor knows better than the exit code."""
        rec = run.record
        state, reason, rec["outcome"] = outcome_of(rec, code, outcome)
        rec.update(ended_at=self.executor.end_time(run, code) or time.time())
        usage = self.executor.usage(run)
        energy = self.d.health.energy_j(rec)
        if energy is not None:
            usage["energy_j"] = energy
        if usage:
            rec["usage"] = usage
        if code is not None:
            rec["exit_code"] = code
        if reason:
            rec["reason"] = reason
        path = self.spool.record("running", run.id)
        self.records.save(path, rec)
        try:
            spoolmod.move_noreplace(path, self.spool.record(state, run.id))
        except FileExistsError:
            log.error("job %d: %s/%d.yaml exists already; record left in running/", run.id,
                      state, run.id)
            return
        self.d.shares.note(state, run.id, self.spool.record(state, run.id), rec, time.time())
        ended = (run, state, code, reason)
        if self.ending is not None:
            self.ending.append(ended)
        else:
            self.settled([ended])

    @contextlib.contextmanager
    def batch(self):
        """Group commit for the jobs that end in one poll: their final folders
        are fsynced once each, after every rename, and only then are the runs
        released (run file, cgroup, GPUs): a crash never finds a job released
        whose move to its final folder could be undone."""
        self.ending = []
        try:
            yield
        finally:
            ended, self.ending = self.ending, None
            if ended:
                self.settled(ended)

    def settled(self, ended: list) -> None:
        for state in {state for _, state, _, _ in ended}:
            # A failed fsync is logged (and backed off) but the runs are still
            # released: their records are in their final folders already, and a
            # run kept would be ended again into a second record.
            self.guard(None, spoolmod.fsync_dir, self.spool.dir(state))
        for run, state, code, reason in ended:
            self.guard(run.id, self.release, run, state, code, reason)
        self.records.prune()

    def release(self, run: Run, state: str, code: int | None, reason: str | None) -> None:
        self.runs.pop(run.id, None)
        self.executor.release(run)
        rec = run.record
        self.d.health.job_ended(rec, rec["outcome"])
        self.records.final_count += 1
        self.d.metrics.observe_finish(rec["outcome"])
        log.info("job %d -> %s/ (exit code %s)%s", run.id, state, code,
                 f": {reason}" if reason else "")
