"""``spoold --executor slurm``: the daemon as a bridge from the spool to SLURM.

Owns: handing pending jobs to sbatch in queue order, following them with
``scontrol``/``sacct``, and turning requests into scancel. SLURM decides where
and when a job runs; the spool stays the interface (``gsub``, ``gkill``,
``ls spool/running``). In this mode running/ holds every job handed to SLURM,
whether SLURM runs it yet or not.

Invariants (see docs/spool-format.md for the local executor's):
- claim (rename into running/) -> sbatch -> ``slurm_id`` written into the
  record. A daemon killed between sbatch and the write finds the job again by
  its ``--comment`` (``slurm.find``) instead of submitting it twice; a record
  with no SLURM job at all goes back to pending/.
- The mapping spool id -> SLURM id lives only in the records.
- Dependencies on jobs not yet handed to SLURM wait; on jobs in done/ are
  dropped; on failed or cancelled jobs cancel the dependent, as locally.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter

from . import runner, slurm
from .records import owner_of

log = logging.getLogger("spoold")


class SlurmBridge:
    def __init__(self, daemon):
        self.d = daemon
        self.up = slurm.available()
        if not self.up:
            log.warning("SLURM does not answer (sbatch/scontrol ping): jobs wait in pending/")

    def pass_(self, queue, deps) -> None:
        """Hand every job that may go to SLURM now, in queue order."""
        d = self.d
        if not self.up or d.spool.paused_flag.exists():
            return
        arrays: Counter = Counter()  # (owner, array_id): an array is one user's
        for run in d.runs.values():
            b = run.booking()
            if b.array_id:
                arrays[b.owner, b.array_id] += 1
        for req in list(queue):
            if req.held or (req.pin_host and req.pin_host != d.o.host):
                continue
            if req.array_limit and arrays[req.owner, req.array_id] >= req.array_limit:
                continue
            if req.array_id:
                arrays[req.owner, req.array_id] += 1
            slurm_deps, ready = [], True
            for a in req.after:
                state = deps.get(a)
                if state is None or state in ("failed", "cancelled"):
                    end = "failed" if state is None else "cancelled"
                    why = f"dependency {a} {'does not exist' if state is None else state}"
                    d.guard(req.id, d.jobs.end_pending, req.id, end, why)
                    ready = False
                    break
                if state == "running":
                    sid = self._slurm_id(a)
                    if sid is None:
                        ready = False
                    else:
                        slurm_deps.append(sid)
                elif state != "done":
                    ready = False  # not handed to SLURM yet
            if ready:
                d.guard(req.id, self.submit, req.id, slurm_deps)

    def _slurm_id(self, job_id: int) -> str | None:
        run = self.d.runs.get(job_id)
        return run.record.get("slurm_id") if run is not None else None

    def submit(self, job_id: int, slurm_deps: list[str]) -> None:
        d = self.d
        claimed = d.jobs.claim(job_id, {"executor": "slurm"})
        if claimed is None:
            return
        path, job, rec, creds = claimed
        log_path = d.spool.log_path(job_id) if not job.get("log") else job.get("log")
        if not job.get("log"):
            os.close(runner.open_log(d.spool.log_path(job_id), creds))
        try:
            sid = slurm.submit(job, d.spool.root, log_path, slurm_deps, creds=creds)
        except slurm.SlurmError as e:
            d.jobs.finish_claimed(job_id, path, "failed", f"sbatch refused the job: {e}")
            return
        rec.update(slurm_id=sid, started_at=time.time())
        d.records.save(path, rec)
        d.runs[job_id] = d.Run(job_id, rec)
        log.info("job %d handed to SLURM as job %s", job_id, sid)

    def poll(self) -> None:
        d = self.d
        self.up = slurm.available()
        by_sid = {r.record["slurm_id"]: r for r in d.runs.values() if r.record.get("slurm_id")}
        if not self.up or not by_sid:
            return
        for sid, (state, code, why) in slurm.query(list(by_sid)).items():
            run = by_sid[sid]
            if state in ("done", "failed", "cancelled"):
                reason = None if state == "done" else f"SLURM: {why or state}"
                d.guard(run.id, d.jobs.finish, run, code, (state, reason))
            elif state == "unknown":
                d.guard(run.id, d.jobs.finish, run, None,
                        ("failed", "SLURM no longer knows the job (purged before spoold "
                                   "looked); exit code unknown"))
            elif state == "running" and not run.record.get("assigned_gpus") and run.record.get(
                    "gpus"):
                gpus = slurm.allocated_gpus(sid)
                if gpus is not None:
                    run.record["assigned_gpus"] = gpus
                    d.records.save(d.spool.record("running", run.id), run.record, sync=False)

    def kill(self, run, reason: str) -> None:
        if not run.record.get("kill_reason"):
            run.record["kill_reason"] = reason
            self.d.records.save(self.d.spool.record("running", run.id), run.record)
        if run.record.get("slurm_id"):
            slurm.cancel(run.record["slurm_id"])
            log.info("job %d: %s: scancel %s", run.id, reason, run.record["slurm_id"])

    def recover(self, job_id: int, path, rec: dict) -> None:
        d = self.d
        sid = rec.get("slurm_id")
        if sid is None and self.up:
            found = slurm.find(job_id, d.spool.root, runner.creds_for(
                owner_of(os.lstat(path).st_uid, rec)).name)  # never a name the user wrote
            if found:
                sid = rec["slurm_id"] = found[0]
                d.records.save(path, rec)
                log.info("job %d: found as SLURM job %s after a restart", job_id, sid)
        if sid is None:
            if not self.up:
                return  # cannot tell yet whether SLURM has it: decide when it answers
            d.jobs.requeue(job_id, rec, "claimed but never handed to SLURM")
            return
        d.runs[job_id] = d.Run(job_id, rec)
