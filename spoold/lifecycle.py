"""A job's life once the scheduler picks it: claim, start, watch, kill, end.

Owns: the moves of one job between pending/, running/ and the final folders,
its processes (through ``runner`` and, where the daemon can make them, job
cgroups), time limits and kills, the on-finish hook, and putting a claimed
job back (``requeue``).

Invariants:
- Every move is one rename that never replaces anything (RENAME_NOREPLACE);
  a final record is complete before the rename that makes it final.
- Who a job runs as is decided at the claim from the file's owner
  (``records.owner_of``) and written into the root-owned record; nothing
  the job file says changes it.
- Which processes are the job is its cgroup's membership where there is
  one; otherwise the shepherd's session (only while the shepherd provably
  holds the run file) and the job's markers in processes of its own uid.
  No pid is trusted after downtime.
- A job's GPUs stay booked until its on-finish hook has ended, or been
  killed after ``--hook-limit``; the hook runs in the job's cgroup.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import job as jobmod
from . import runner
from . import spool as spoolmod
from .queue import Slim
from .records import RUN_FIELDS, finite, outcome_of, owner_of, read_record
from .scheduler import Running, running_of
from .spool import BadFile

log = logging.getLogger("spoold")

CLAIM_GRACE_S = 10.0  # a claimed record without a host is another daemon's, still being written
HOOK_FIELDS = ("cwd", "env", "umask", "shell", "name", "array_index")  # what a hook keeps


@dataclass
class Run:
    """A running job of this host, as its record says."""

    id: int
    record: dict
    pid: int | None = None
    kill_at: float | None = None  # when to send KILL after TERM
    hook_pid: int | None = None  # the on-finish hook we started (this daemon's child)

    def booking(self) -> Running:
        return running_of(self.id, self.record)

    @property
    def hook_until(self) -> float | None:
        return self.record.get("hook_started_at")


class Lifecycle:
    def __init__(self, d):
        self.d = d  # the daemon: runs, guard, bridge
        self.spool = d.spool
        self.o = d.o
        self.records = d.records
        self.queue = d.queue
        self.cgroups = None  # runner.Cgroups, set by the daemon when it can make them
        self.tidy: set[int] = set()  # job cgroups to remove once their last process is gone

    def run_path(self, job_id: int) -> Path:
        return self.spool.run_lock(job_id, self.o.host)

    def cgroup_of(self, job_id: int):
        cg = self.cgroups
        return cg if cg is not None and cg.exists(job_id) else None

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
               "reason": f"rejected: {reason}", "ended_at": time.time()}
        self.records.save(self.spool.record("failed", p.job_id), rec, create=True)
        self.records.final_count += 1
        log.warning("job %d (pending/%s) rejected: %s; original kept as failed/%d.orig",
                    p.job_id, p.name, reason, p.job_id)

    def end_pending(self, job_id: int, state: str, reason: str, p=None) -> None:
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
        self.finish_claimed(job_id, path, state, reason)
        self.records.prune()

    def finish_claimed(self, job_id: int, path: Path, state: str, reason: str) -> None:
        st = os.lstat(path)
        try:
            data = read_record(path)
        except (BadFile, jobmod.JobError, ValueError, UnicodeDecodeError):
            spoolmod.move_noreplace(path, self.spool.rejected_copy(job_id))
            data = {"id": job_id}
        uid = owner_of(st.st_uid, data)
        data.update(id=job_id, uid=uid, user=runner.creds_for(uid).name, ended_at=time.time(),
                    reason=reason)
        if path.exists():
            self.records.save(path, data)
            spoolmod.move_noreplace(path, self.spool.record(state, job_id))
        else:
            self.records.save(self.spool.record(state, job_id), data, create=True)
        self.records.final_count += 1
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
        there and record who owns it. Returns (path, job, record, creds) or None
        when the job is gone, refused, or changed under us (then it is back)."""
        p, cached = self.queue.by_id[job_id]
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
        spoolmod.fsync_dir(self.spool.running)
        try:
            fd_st = os.lstat(path)
            job = jobmod.parse(spoolmod.read_untrusted(path))
        except (BadFile, jobmod.JobError) as e:
            self.finish_claimed(job_id, path, "failed", f"rejected: {e}")
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
                                f"this spoold (uid {self.d.uid}) runs only its own files")
            return None
        rec = dict(job.data)
        for k in (*RUN_FIELDS, "reason"):
            rec.pop(k, None)
        # Identity from the kernel: the uid we just checked, and its name.
        rec.update(id=job_id, uid=uid, user=runner.creds_for(uid).name, host=self.o.host,
                   claimed_at=time.time(), **extra)
        if not finite(rec.get("submitted_at")):
            rec["submitted_at"] = fd_st.st_mtime
        rec.setdefault("name", job.name)
        if job.time_limit is None and self.o.default_time_limit:
            rec["time_limit"] = job.time_limit = self.o.default_time_limit
        self.records.save(path, rec)
        job.id, job.priority = job_id, p.priority
        return path, job, rec, runner.creds_for(uid) if self.d.uid == 0 else None

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
                                log_path, cgroups=self.cgroups)
        except OSError as e:
            self.finish_claimed(s.id, path, "failed", f"could not start: {e}")
            return
        rec.update(pid=pid, started_at=started)
        self.records.save(path, rec, sync=False)
        self.d.runs[s.id] = Run(s.id, rec, pid)
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
                    n += (owner_of(st.st_uid, rec), rec.get("array_id")) == (slim.uid,
                                                                            req.array_id)
            yield n < req.array_limit
        finally:
            os.close(fd)

    def duplicate(self, job_id: int) -> bool:
        return job_id in self.d.runs or self.spool.where(job_id) is not None

    # ---- running ---------------------------------------------------------------------
    def recover_one(self, job_id: int) -> None:
        """Adopt, end or requeue the job of running/<id>.yaml after a restart."""
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
            self.d.bridge.recover(job_id, path, rec)
            return
        state, code = runner.status(self.run_path(job_id), cgroups=self.cgroups,
                                    job_id=job_id)
        run = Run(job_id, rec, rec.get("pid"))
        if state == "running":
            log.info("job %d: adopted (it is still running)", job_id)
            self.d.runs[job_id] = run
            if rec.get("kill_reason"):
                self.kill(run, rec["kill_reason"])
        elif state in ("exited", "vanished"):
            self.d.runs[job_id] = run
            self.settle(run, code)
        else:  # claimed, never started: back in the queue, fields kept
            if self.cgroups is not None:
                self.cgroups.remove(job_id)  # first: a crash after it still reads "unstarted"
            runner.clear(self.run_path(job_id))
            self.requeue(job_id, rec, "claimed but never started")

    def check_run(self, run: Run, now: float) -> None:
        if self.o.executor == "slurm":
            return  # the bridge polls SLURM for all its jobs at once (poll_gpus)
        state, code = runner.status(self.run_path(run.id), cgroups=self.cgroups, job_id=run.id)
        if state in ("unstarted", "vanished") and not os.path.lexists(self.run_path(run.id)):
            # Its run file was removed under us (the job had started: it is in runs).
            if run.pid is not None and runner.running_child(run.pid):
                return  # the shepherd is our child and alive: the job runs on
            self.finish(run, None, ("failed", "exit code unknown: its run file "
                                              f"state/run/{self.o.host}/{run.id}.lock was "
                                              "removed while it ran"))
            return
        if state != "running":
            self.settle(run, code)
            return
        if run.kill_at and now >= run.kill_at:
            n = self.signal(run, signal.SIGKILL)
            log.info("job %d: grace over, KILL sent to %d process(es)", run.id, n)
            run.kill_at = None
        b = run.booking()
        if b.ends_at and now >= b.ends_at and not run.record.get("kill_reason"):
            self.kill(run, "time limit")

    def signal(self, run: Run, sig: int) -> int:
        return runner.signal_job(self.spool.root, run.id, run.pid, sig, cgroups=self.cgroups,
                                 uid=run.record.get("uid"))

    def kill(self, run: Run, reason: str) -> None:
        if self.o.executor == "slurm":
            self.d.bridge.kill(run, reason)
            return
        if run.hook_until is not None:  # the job has ended; its hook is what runs
            self.stop_leftovers(run)
            log.info("job %d: %s: its on-finish command was killed", run.id, reason)
            return
        if not run.record.get("kill_reason"):
            run.record["kill_reason"] = reason
            self.records.save(self.spool.record("running", run.id), run.record)
        n = self.signal(run, signal.SIGTERM)
        run.kill_at = time.time() + self.o.kill_grace
        log.info("job %d: %s: TERM sent to %d process(es), KILL in %gs", run.id, reason, n,
                 self.o.kill_grace)

    def stop_leftovers(self, run: Run) -> None:
        """KILL whatever of the job is left (daemonised children, a hook)."""
        cg = self.cgroup_of(run.id)
        if cg is not None:
            cg.kill(run.id)
            self.tidy.add(run.id)
        else:
            self.signal(run, signal.SIGKILL)

    # ---- ending ------------------------------------------------------------------------
    def settle(self, run: Run, code: int | None) -> None:
        """The job's processes have ended (exit ``code``, None: unknown): run its
        on-finish hook first, with its GPUs still booked, then record it."""
        if not self.hook_running(run, code):
            self.finish(run, code)

    def hook_running(self, run: Run, code: int | None) -> bool:
        rec = run.record
        if not rec.get("on_finish") or self.o.executor != "local":
            return False
        if run.hook_until is None:
            self.stop_leftovers(run)  # the job's own leftovers do not outlive it
            rec["hook_started_at"] = time.time()  # before the spawn: never started twice
            self.records.save(self.spool.record("running", run.id), rec, sync=False)
            self.d.guard(run.id, self.start_hook, run, code)
            return True
        if time.time() >= run.hook_until + self.o.hook_limit:
            log.warning("job %d: on-finish command still running after %gs (--hook-limit); "
                        "killed", run.id, self.o.hook_limit)
            return False
        cg = self.cgroup_of(run.id)
        if cg is not None:
            return cg.populated(run.id)
        return run.hook_pid is not None and runner.running_child(run.hook_pid)

    def start_hook(self, run: Run, code: int | None, cgroups="job") -> None:
        """--on-finish, as the job's user, with its GPUs; output goes to its log."""
        rec = run.record
        state, reason = outcome_of(rec, code)
        job = jobmod.validate({k: rec[k] for k in HOOK_FIELDS if k in rec}
                              | {"cmd": rec["on_finish"], "id": run.id})
        extra = {"SPOOLD_EXIT_CODE": "" if code is None else str(code), "SPOOLD_STATE": state,
                 "SPOOLD_REASON": reason or ""}
        uid = rec.get("uid", self.d.uid)
        creds = runner.creds_for(uid) if self.d.uid == 0 else None
        log_path = self.spool.log_path(run.id)  # daemon-opened: never a user-chosen path
        run.hook_pid = runner.spawn_hook(job, tuple(rec.get("assigned_gpus") or ()), creds,
                                         log_path, self.spool.root, extra,
                                         cgroups=self.cgroups if cgroups == "job" else None)
        log.info("job %d: on-finish command started", run.id)

    def finish(self, run: Run, code: int | None, outcome: tuple[str, str] | None = None) -> None:
        """Record how a job ended and move it to its final folder. ``outcome``
        (state, reason), when an executor knows better than the exit code."""
        rec = run.record
        ended = time.time()
        if code is not None and self.o.executor == "local":  # status written as it ended
            with contextlib.suppress(FileNotFoundError):
                # mtime comes from the kernel's coarse clock: never before the start
                ended = max(self.run_path(run.id).stat().st_mtime,
                            rec.get("started_at") or 0)
        state, reason = outcome_of(rec, code, outcome)
        rec.update(ended_at=ended)
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
        spoolmod.fsync_dir(self.spool.dir(state))
        if self.o.executor == "local":
            # Leftovers (daemonised children) would hold the GPUs the next job gets.
            self.stop_leftovers(run)
            runner.clear(self.run_path(run.id))
        elif rec.get("on_finish"):  # SLURM: fire and forget, here, as the job's user
            self.d.guard(run.id, self.start_hook, run, code, None)
        self.d.runs.pop(run.id, None)
        self.records.final_count += 1
        log.info("job %d -> %s/ (exit code %s)%s", run.id, state, code,
                 f": {reason}" if reason else "")
        self.records.prune()

    def clean_cgroups(self) -> None:
        """Remove emptied job cgroups (a kill does not wait for its processes)."""
        cg = self.cgroups
        for job_id in list(self.tidy):
            if job_id in self.d.runs:
                continue
            if not cg.exists(job_id):
                self.tidy.discard(job_id)
            elif not cg.populated(job_id):
                cg.remove(job_id)
