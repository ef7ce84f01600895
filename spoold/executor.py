"""Executors: where and how a claimed job runs. One protocol, two plug-ins.

Owns: the protocol (``Executor``) and the local executor, which runs jobs on
this machine under a shepherd (``runner``) in a job cgroup where the daemon
can make one (``cgroup``). ``bridge.SlurmExecutor`` is the other plug-in.

The protocol, as ``lifecycle`` uses it (it moves the files; executors never do):
- ``decide(queue, running, resources, now, deps)``: the scheduling decision
  (the local executor places jobs on GPUs; SLURM only gates them);
- ``claim_fields(start)``: what the claim records about the placement;
- ``launch(run_id, job, record, creds, start)``: start it; the fields to
  record (pid, SLURM id), or ``LaunchError`` with the reason;
- ``launch_group(items)``: the elements of one array claimed in one pass,
  each item ``(run_id, job, record, creds, start)``, launched together (SLURM:
  one ``sbatch --array``); for each item, in order, its fields or its
  ``LaunchError`` (``launch_each`` launches them one by one);
- ``throttles_arrays``: True when the executor applies an array's ``%N``
  itself (SLURM's ``--array=...%N``): the claim then does not count running/
  against it (``lifecycle.array_gate``);
- ``poll(runs, now)``: the runs that have ended, as ``Ended`` events;
- ``kill(run)``: ask it to stop (the kill reason is already recorded);
- ``recover(job_id, record)``: after a restart, ``("adopt",)``,
  ``("ended", code)``, ``("requeue", why)`` or ``("later",)``; ``launched_here(
  job_id)``: whether this host left traces of starting it (a claim whose
  record was not written yet is then ours, not another host's in progress);
- ``hook_running(run, code)``: run the on-finish command the executor's way;
  True while it still holds the job (and its GPUs);
- ``end_time(run, code)`` and ``release(run)``: when it ended, and what to
  clean up once its record is final.

Invariants of the local executor:
- Which processes are a job is its cgroup's membership where there is one;
  otherwise the shepherd's session (only while the shepherd provably holds
  the run file) and the job's markers in processes of its own uid.
- A job's on-finish hook runs in its cgroup with its GPUs still booked, and
  is killed after ``--hook-limit``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import NamedTuple, Protocol

from . import job as jobmod
from . import runner
from .cgroup import Cgroups
from .records import KILL_TIME, outcome_of
from .scheduler import Decision, schedule

log = logging.getLogger("spoold")

HOOK_FIELDS = ("cwd", "env", "umask", "shell", "name", "array_index")  # what a hook keeps
SWEEP_S = 1.0  # every running job's run file is probed at least this often (poll)


# What a booking means in practice (gstat shows it from the heartbeat).
ENFORCED = {"gpus": "CUDA_VISIBLE_DEVICES", "cpus": "pinned (sched_setaffinity)",
            "time_limit": "TERM, then KILL after the grace",
            "gpu_mem": "ended when its processes use more than the slice (+5%) two polls running"}


class LaunchError(Exception):
    """The executor could not start the job; str(e) is the reason recorded."""


class Ended(NamedTuple):
    run: object  # lifecycle.Run
    code: int | None  # exit code, None when unknown
    outcome: tuple[str, str | None] | None = None  # (folder, reason) when the executor knows


class Executor(Protocol):
    description: str
    throttles_arrays: bool

    def decide(self, queue, running, res, now: float, deps) -> Decision: ...
    def claim_fields(self, start) -> dict: ...
    def queued(self, run) -> bool: ...
    def renice(self, run, prio: int) -> None: ...
    def launch(self, run_id: int, job, rec: dict, creds, start) -> dict: ...
    def launch_group(self, items: list[tuple]) -> list[dict | LaunchError]: ...
    def poll(self, runs: dict, now: float) -> list[Ended]: ...
    def kill(self, run) -> None: ...
    def recover(self, job_id: int, rec: dict) -> tuple: ...
    def launched_here(self, job_id: int) -> bool: ...
    def recover_strays(self, known: set[int]) -> None: ...
    def hook_running(self, run, code: int | None) -> bool: ...
    def end_time(self, run, code: int | None) -> float | None: ...
    def usage(self, run) -> dict: ...
    def enforced(self) -> dict: ...
    def job_of(self, pid: int) -> int | None: ...
    def release(self, run) -> None: ...
    def wake_at(self, runs: dict, now: float) -> float: ...


def spawn_hook(lc, run, code: int | None, cgroups: Cgroups | None) -> int:
    """Start ``--on-finish`` as the job's user, with its GPUs and environment;
    output goes to the job's log (opened by the daemon, never a user's path)."""
    rec = run.record
    state, reason, _ = outcome_of(rec, code)
    job = jobmod.validate({k: rec[k] for k in HOOK_FIELDS if k in rec}
                          | {"cmd": rec["on_finish"], "id": run.id})
    extra = {"SPOOLD_EXIT_CODE": "" if code is None else str(code), "SPOOLD_STATE": state,
             "SPOOLD_REASON": reason or ""}
    creds = runner.creds_for(rec.get("uid", lc.uid)) if lc.uid == 0 else None
    pid = runner.spawn_hook(job, tuple(rec.get("assigned_gpus") or ()), creds,
                            lc.spool.log_path(run.id), lc.spool.root, extra, cgroups=cgroups)
    log.info("job %d: on-finish command started", run.id)
    return pid


def launch_each(executor, items: list[tuple]) -> list[dict | LaunchError]:
    """``launch_group`` as separate launches, in order."""
    out: list[dict | LaunchError] = []
    for item in items:
        try:
            out.append(executor.launch(*item))
        except LaunchError as e:
            out.append(e)
    return out


class LocalExecutor:
    """Jobs run here, under a shepherd, in a cgroup where one can be made."""

    throttles_arrays = False  # %N is counted at the claim (lifecycle.array_gate)

    def __init__(self, lc):
        self.lc = lc  # the lifecycle: spool, options, records, kill
        self.spool, self.o = lc.spool, lc.o
        self.cgroups = Cgroups.detect(self.spool.root, self.o.host)
        self.tidy: set[int] = set()  # job cgroups to remove once their last process is gone
        # A job cgroup may exist since spoold-<hash> was last removed (at start:
        # a previous daemon's jobs, adopted or not).
        self.base_made = self.cgroups is not None
        self.sweep_at = 0.0  # when every run file is probed again (poll)
        if self.cgroups is not None:
            self.description = f"local; jobs run in cgroups ({self.cgroups.description})"
        else:
            self.description = (f"local; no job cgroups ({Cgroups.why_not}): a job's processes "
                                "are found by its session and markers (docs/security.md)")

    def run_path(self, job_id: int):
        return self.spool.run_lock(job_id, self.o.host)

    def cgroup_of(self, job_id: int) -> Cgroups | None:
        cg = self.cgroups
        return cg if cg is not None and cg.exists(job_id) else None

    # ---- starting ----------------------------------------------------------------
    def decide(self, queue, running, res, now: float, deps) -> Decision:
        return schedule(queue, running, res, now, deps)

    def claim_fields(self, start) -> dict:
        return {"assigned_gpus": list(start.gpus), "assigned_cpus": list(start.cpus)}

    def queued(self, run) -> bool:
        return False  # a local job runs as soon as it is started

    def launch(self, run_id: int, job, rec: dict, creds, start) -> dict:
        if job.get("slurm"):
            raise LaunchError("slurm: options (partition, account, qos, constraint) need "
                              "spoold --executor slurm")
        try:
            self.base_made = self.cgroups is not None
            pid = runner.launch(self.spool, self.run_path(run_id), job, start.gpus, start.cpus,
                                creds, self.spool.log_path(run_id), cgroups=self.cgroups,
                                mem_mib=job.mem or None)
        except OSError as e:
            raise LaunchError(f"could not start: {e}") from None
        return {"pid": pid}

    def launch_group(self, items: list[tuple]) -> list[dict | LaunchError]:
        return launch_each(self, items)  # an array's elements are separate jobs here

    # ---- watching ----------------------------------------------------------------
    def poll(self, runs: dict, now: float) -> list[Ended]:
        """The runs that ended. A run file is probed when there is news of its
        job (its shepherd was reaped, or its run file closed: a shepherd's
        exit), while its on-finish command runs, and every run's at least every
        SWEEP_S (a job adopted after a restart is no child of ours, and inotify
        can drop events); the others run on as they did."""
        ended = []
        reaped = runner.take_reaped()
        news = self.lc.d.run_news
        closed = set()
        while not news.empty():
            closed.add(news.get())
        if now >= self.sweep_at:
            self.sweep_at, reaped = now + SWEEP_S, None
        for run in list(runs.values()):
            if reaped is None or run.pid in reaped or f"{run.id}.lock" in closed \
                    or run.hook_until is not None:
                state, code = runner.status(self.run_path(run.id), cgroups=self.cgroups,
                                            job_id=run.id)
            else:
                state, code = "running", None  # no news of it
            if state in ("unstarted", "vanished") and not os.path.lexists(self.run_path(run.id)):
                # Its run file was removed under us (it had started: it is in runs).
                if run.pid is not None and runner.running_child(run.pid):
                    continue  # the shepherd is our child and alive: the job runs on
                ended.append(Ended(run, None, (
                    "failed", f"exit code unknown: its run file state/run/{self.o.host}/"
                              f"{run.id}.lock was removed while it ran")))
            elif state != "running":
                cg = self.cgroup_of(run.id)
                if run.used is None:  # now: its hook will run in the same cgroup
                    run.used = self.measure(run)
                if cg is not None and cg.oom_killed(run.id):
                    mem = run.record.get("mem")
                    ended.append(Ended(run, code, (
                        "failed", f"out of memory: the kernel killed it over its {mem} MiB "
                                  "(--mem)", "out_of_memory")))
                else:
                    ended.append(Ended(run, code))
            elif run.kill_at and now >= run.kill_at:
                n = self.signal(run, signal.SIGKILL)
                log.info("job %d: grace over, KILL sent to %d process(es)", run.id, n)
                run.kill_at = None
            elif (b := run.booking()).ends_at and now >= b.ends_at and \
                    not run.record.get("kill_reason"):
                self.lc.kill(run, KILL_TIME)
        if self.tidy:
            self.clean_cgroups(runs)
        elif not runs and self.base_made:  # idle: the daemon's cgroup folders go too
            self.cgroups.remove_base()
            self.base_made = False
        return ended

    def wake_at(self, runs: dict, now: float) -> float:
        """When to look again without an event (kills, limits, hooks)."""
        t = float("inf")
        for run in runs.values():
            if run.kill_at:
                t = min(t, run.kill_at)
            if run.hook_until is not None:  # no event says when a hook ends: look often
                t = min(t, now + 0.25, run.hook_until + self.o.hook_limit)
            b = run.booking()
            if b.ends_at and not run.record.get("kill_reason"):
                t = min(t, b.ends_at)
        return t

    def signal(self, run, sig: int) -> int:
        return runner.signal_job(self.spool.root, run.id, run.pid, sig, cgroups=self.cgroups,
                                 uid=run.record.get("uid"))

    def kill(self, run) -> None:
        if run.hook_until is not None:  # the job has ended; its hook is what runs
            self.stop_leftovers(run)
            log.info("job %d: its on-finish command was killed", run.id)
            return
        n = self.signal(run, signal.SIGTERM)
        run.kill_at = time.time() + self.o.kill_grace
        log.info("job %d: %s: TERM sent to %d process(es), KILL in %gs", run.id,
                 run.record.get("kill_reason"), n, self.o.kill_grace)

    def recover(self, job_id: int, rec: dict) -> tuple:
        state, code = runner.status(self.run_path(job_id), cgroups=self.cgroups, job_id=job_id)
        if state == "running":
            return ("adopt",)
        if state in ("exited", "vanished"):
            return ("ended", code)
        if self.cgroups is not None:
            self.cgroups.remove(job_id)  # first: a crash after it still reads "unstarted"
        runner.clear(self.run_path(job_id))
        return ("requeue", "claimed but never started")

    def launched_here(self, job_id: int) -> bool:
        return os.path.lexists(self.run_path(job_id)) or (
            self.cgroups is not None and self.cgroups.exists(job_id))

    def recover_strays(self, known: set[int]) -> None:
        """At start: processes of jobs whose records have ended (another host
        took this one over while it was lost, or a hook outlived a restart)."""
        cg = self.cgroups
        for p in self.spool.run_dir(self.o.host).iterdir():
            stem = p.name.split(".")[0]
            if stem.isdigit() and int(stem) not in known:
                if runner.status(p, cgroups=cg, job_id=int(stem))[0] == "running":
                    n = runner.signal_job(self.spool.root, int(stem), None, signal.SIGKILL,
                                          cgroups=cg)
                    log.warning("job %s: its record was ended while this host was lost; "
                                "killed %d leftover process(es)", stem, n)
                runner.clear(p)
        for job_id in (cg.job_ids() - known) if cg is not None else ():
            cg.kill(job_id)
            self.tidy.add(job_id)

    # ---- ending ------------------------------------------------------------------
    def hook_running(self, run, code: int | None) -> bool:
        rec = run.record
        if not rec.get("on_finish"):
            return False
        if run.hook_until is None:
            self.stop_leftovers(run)  # the job's own leftovers do not outlive it
            rec["hook_started_at"] = time.time()  # before the spawn: never started twice
            self.lc.records.save(self.spool.record("running", run.id), rec, sync=False)
            run.hook_pid = self.lc.guard(run.id, spawn_hook, self.lc, run, code, self.cgroups)
            return True
        if time.time() >= run.hook_until + self.o.hook_limit:
            log.warning("job %d: on-finish command still running after %gs (--hook-limit); "
                        "killed", run.id, self.o.hook_limit)
            return False
        cg = self.cgroup_of(run.id)
        if cg is not None:
            return cg.populated(run.id)
        return run.hook_pid is not None and runner.running_child(run.hook_pid)

    def end_time(self, run, code: int | None) -> float | None:
        if code is None:
            return None
        try:  # the status was written as it ended; the kernel's coarse clock
            return max(self.run_path(run.id).stat().st_mtime, run.record.get("started_at") or 0)
        except FileNotFoundError:
            return None

    def measure(self, run) -> dict:
        """CPU and peak memory from the job's cgroup, or the shepherd's rusage."""
        cg = self.cgroup_of(run.id)
        if cg is not None:
            return cg.usage(run.id)
        return runner.child_usage(run.pid) if run.pid else {}

    def usage(self, run) -> dict:
        """What the job used: as measured when it ended, and its GPU samples."""
        used = run.used if run.used is not None else self.measure(run)
        return {**used, **run.gpu_usage()}

    def enforced(self) -> dict:
        mem = None
        if self.cgroups is not None:
            mem = self.cgroups.memory_limits
        return {"gpus": ENFORCED["gpus"], "cpus": ENFORCED["cpus"],
                "mem": f"limit ({mem})" if mem else "booked only (not enforced)",
                "time_limit": ENFORCED["time_limit"], "gpu_mem": ENFORCED["gpu_mem"]}

    def job_of(self, pid: int) -> int | None:
        """The job a process belongs to: its job cgroup (the kernel's word) where
        there are cgroups; else its markers, counted only in a process of the
        job's own uid. None for anything else."""
        if self.cgroups is not None:
            tail = f"/{self.cgroups.base.name}/job-"
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    for line in f:
                        path = line.rstrip("\n").split(":", 2)[-1]  # id:controllers:path
                        i = path.find(tail)
                        if i >= 0:
                            return int(path[i + len(tail):].split("/")[0])
            except (OSError, ValueError):
                return None
            return None
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            job_id = int(env.get(b"SPOOLD_JOB_ID", b"x"))
            if env.get(b"SPOOLD_SPOOL") != os.fsencode(str(self.spool.root)):
                return None
            run = self.lc.runs.get(job_id)
            if run is None or os.stat(f"/proc/{pid}").st_uid != run.record.get("uid"):
                return None
            return job_id
        except (OSError, ValueError):
            return None

    def release(self, run) -> None:
        # Leftovers (daemonised children, a hook) would hold the GPUs the next job gets.
        self.stop_leftovers(run, last=True)
        runner.clear(self.run_path(run.id))

    def stop_leftovers(self, run, last: bool = False) -> None:
        """Kill what is left of the job; ``last``: its cgroup is not needed
        again (no on-finish command will run in it)."""
        cg = self.cgroup_of(run.id)
        if cg is not None:
            if cg.kill(run.id) == 0 and last:  # the common end: nothing left, so it goes now
                cg.remove(run.id)
            if cg.exists(run.id):  # else once its last process is gone
                self.tidy.add(run.id)
        else:
            self.signal(run, signal.SIGKILL)

    def clean_cgroups(self, runs: dict) -> None:
        """Remove emptied job cgroups (a kill does not wait for its processes)."""
        for job_id in list(self.tidy):
            if job_id in runs:
                continue
            if not self.cgroups.populated(job_id):
                self.cgroups.remove(job_id)
                if not self.cgroups.exists(job_id):
                    self.tidy.discard(job_id)
