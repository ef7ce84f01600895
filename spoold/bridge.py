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

from . import runner, slurm
from .executor import Ended, LaunchError, spawn_hook
from .records import owner_of
from .scheduler import Decision, gate_only

log = logging.getLogger("spoold")


class _SlurmDeps:
    """The states the gate sees: a dependency SLURM already has counts as met
    (sbatch gets ``afterok`` on it); one not handed to SLURM yet waits."""

    def __init__(self, deps, runs: dict):
        self.deps, self.runs = deps, runs

    def get(self, job_id: int, default=None):
        state = self.deps.get(job_id, default)
        if state == "running":
            run = self.runs.get(job_id)
            return "done" if run is not None and run.record.get("slurm_id") else "pending"
        return state


class SlurmExecutor:
    """Every job goes to sbatch; SLURM places it. See the module docstring."""

    def __init__(self, lc):
        self.lc = lc  # the lifecycle: spool, options, records, runs
        self.up = slurm.available()
        self.next_query = 0.0
        self.description = "slurm (sbatch, scontrol, scancel)"
        if not self.up:
            log.warning("SLURM does not answer (sbatch/scontrol ping): jobs wait in pending/")

    def decide(self, queue, running, res, now: float, deps) -> Decision:
        if not self.up:
            return Decision()  # everything waits until SLURM answers
        return gate_only(queue, running, res.host, _SlurmDeps(deps, self.lc.runs),
                         res.paused)

    def claim_fields(self, start) -> dict:
        return {"executor": "slurm"}

    def launch(self, run_id: int, job, rec: dict, creds, start) -> dict:
        sp = self.lc.spool
        log_path = job.get("log") or sp.log_path(run_id)
        if not job.get("log"):
            os.close(runner.open_log(sp.log_path(run_id), creds))
        runs = self.lc.runs
        deps = [runs[a].record["slurm_id"] for a in job.after
                if a in runs and runs[a].record.get("slurm_id")]
        try:
            sid = slurm.submit(job, sp.root, log_path, deps, creds=creds)
        except slurm.SlurmError as e:
            raise LaunchError(f"sbatch refused the job: {e}") from None
        log.info("job %d handed to SLURM as job %s", run_id, sid)
        return {"slurm_id": sid}

    def poll(self, runs: dict, now: float) -> list[Ended]:
        if now < self.next_query:
            return []
        self.next_query = now + self.lc.o.poll
        self.up = slurm.available()
        by_sid = {r.record["slurm_id"]: r for r in runs.values() if r.record.get("slurm_id")}
        if not self.up or not by_sid:
            return []
        ended = []
        for sid, (state, code, why) in slurm.query(list(by_sid)).items():
            run = by_sid[sid]
            if state in ("done", "failed", "cancelled"):
                ended.append(Ended(run, code, (state, None if state == "done"
                                                else f"SLURM: {why or state}")))
            elif state == "unknown":
                ended.append(Ended(run, None, ("failed", "SLURM no longer knows the job (purged "
                                                         "before spoold looked); exit code "
                                                         "unknown")))
            elif state == "running" and not run.record.get("assigned_gpus") and \
                    run.record.get("gpus"):
                gpus = slurm.allocated_gpus(sid)
                if gpus is not None:
                    run.record["assigned_gpus"] = gpus
                    self.lc.records.save(self.lc.spool.record("running", run.id), run.record,
                                         sync=False)
        return ended

    def wake_at(self, runs: dict, now: float) -> float:
        return self.next_query if runs else float("inf")

    def kill(self, run) -> None:
        if run.record.get("slurm_id"):
            slurm.cancel(run.record["slurm_id"])
            log.info("job %d: %s: scancel %s", run.id, run.record.get("kill_reason"),
                     run.record["slurm_id"])

    def recover(self, job_id: int, rec: dict) -> tuple:
        sp = self.lc.spool
        path = sp.record("running", job_id)
        sid = rec.get("slurm_id")
        if sid is None and self.up:
            found = slurm.find(job_id, sp.root, runner.creds_for(
                owner_of(os.lstat(path).st_uid, rec)).name)  # never a name the user wrote
            if found:
                sid = rec["slurm_id"] = found[0]
                self.lc.records.save(path, rec)
                log.info("job %d: found as SLURM job %s after a restart", job_id, sid)
        if sid is None:
            # cannot tell yet whether SLURM has it: decide when it answers
            return ("requeue", "claimed but never handed to SLURM") if self.up else ("later",)
        return ("adopt",)

    def recover_strays(self, known: set[int]) -> None:
        pass  # SLURM owns the processes

    def hook_running(self, run, code: int | None) -> bool:
        if run.record.get("on_finish"):  # fire and forget, here, as the job's user
            self.lc.guard(run.id, spawn_hook, self.lc, run, code, None)
        return False

    def end_time(self, run, code: int | None) -> float | None:
        return None

    def usage(self, run) -> dict:
        return run.gpu_usage()

    def enforced(self) -> dict:
        return {"gpus": "SLURM (--gres, CUDA_VISIBLE_DEVICES)", "cpus": "SLURM",
                "mem": "SLURM (--mem)", "time_limit": "SLURM (--time)"}

    def job_of(self, pid: int) -> int | None:
        return None  # SLURM's jobs run elsewhere

    def release(self, run) -> None:
        pass
