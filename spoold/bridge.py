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
- How a job ended never depends on SLURM still remembering it. Each handoff
  gets ``state/slurm/<id>``, created here (O_EXCL, no links) and owned by the
  job's user, to which the batch script appends its real start and its end
  and exit status (``slurm.read_status``). Sources, first that knows wins:
  that file (exit code), scontrol, sacct, jobcomp/filetxt; when all are
  silent the outcome is ``node_fail`` with a reason that says so, never a
  guessed failure. Times: SLURM's when it still has them, else the file's,
  clamped to [handoff, now] (the file is the user's word).
- The record keeps SLURM's view while the job is in running/: ``slurm_state``
  and ``slurm_reason`` (saved only when they change), ``slurm_queued_at``
  (the handoff), ``started_at`` (the real start, once it ran) and
  ``assigned_gpus`` (scontrol -d's IDX, else the script's CUDA_VISIBLE_DEVICES).
- A priority change after the handoff (gprio -> requests/prio-ID) renices a
  job SLURM still queues, and its record's ``priority`` follows.
- The elements of one array claimed in one pass go to SLURM as one SLURM
  array (``launch_group``, ``slurmarray``): ``slurm_id`` is
  ``<array job>_<array_index>``, and ``%N`` is SLURM's to apply (the gate
  and the claim let every startable element through). An element whose
  index SLURM cannot take (MaxArraySize) goes alone, as a plain job.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time

from . import runner, slurm, slurmarray
from .executor import Ended, LaunchError, launch_each, spawn_hook
from .records import finite, owner_of
from .scheduler import Decision, gate_only

log = logging.getLogger("spoold")


FINAL = ("done", "failed", "cancelled")
CANCELS = ("CANCELLED", "REVOKED", "PREEMPTED")
# How long a job whose batch script wrote its end may wait for SLURM's final
# state (a scancel'd job is COMPLETING first, then CANCELLED) before the
# status file's exit code alone is recorded.
FINAL_WORD_S = 30.0


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

    throttles_arrays = True  # sbatch --array=...%N

    def __init__(self, lc):
        self.lc = lc  # the lifecycle: spool, options, records, runs
        self.up = slurm.available()
        self.next_query = 0.0
        self.description = "slurm (sbatch, scontrol, scancel)"
        self.ends: dict[int, float] = {}  # job id -> when it ended, by the best source
        self.jobcomp: str | None = None  # jobcomp/filetxt's file ("" none), asked once
        self.started: set[int] = set()  # jobs whose real start is in their record
        self.max_array: int | None = None  # SLURM's MaxArraySize, asked once
        if not self.up:
            log.warning("SLURM does not answer (sbatch/scontrol ping): jobs wait in pending/")

    def decide(self, queue, running, res, now: float, deps) -> Decision:
        if not self.up:
            return Decision()  # everything waits until SLURM answers
        return gate_only(queue, running, res.host, _SlurmDeps(deps, self.lc.runs),
                         res.paused, throttle_arrays=False)

    def claim_fields(self, start) -> dict:
        return {"executor": "slurm"}

    def launch(self, run_id: int, job, rec: dict, creds, start) -> dict:
        e = self.prepare(run_id, job, creds)
        try:
            sid = slurm.submit(job, self.lc.spool.root, e.log_path, e.deps, creds=creds,
                               status=e.status)
        except slurm.SlurmError as err:
            raise LaunchError(f"sbatch refused the job: {err}") from None
        log.info("job %d handed to SLURM as job %s", run_id, sid)
        return self.handed(job, sid)

    def launch_group(self, items: list[tuple]) -> list[dict | LaunchError]:
        """The elements of one array claimed in one pass: one sbatch --array
        per group that SLURM can take as one (``slurmarray.split``)."""
        out: dict[int, dict | LaunchError] = {}
        alone, elements = [], []
        for item in items:
            run_id, job, _, creds, _ = item
            index = job.get("array_index")
            if not isinstance(index, int) or not 0 <= index < self.array_size():
                alone.append(item)  # no index, or past MaxArraySize: a job of its own
                continue
            try:
                elements.append(self.prepare(run_id, job, creds))
            except LaunchError as err:
                out[run_id] = err
        out.update(zip((i[0] for i in alone), launch_each(self, alone), strict=True))
        creds, root = items[0][3], self.lc.spool.root
        for group in slurmarray.split(elements, root, creds=creds):
            try:
                aid = slurmarray.submit(group, root, creds=creds)
            except slurm.SlurmError as err:
                out.update((e.job.id, LaunchError(f"sbatch refused the array: {err}"))
                           for e in group)
                continue
            log.info("jobs %s handed to SLURM as array job %s (tasks %s)",
                     ", ".join(str(e.job.id) for e in group), aid,
                     slurmarray.ranges(sorted(e.index for e in group)))
            out.update((e.job.id, self.handed(e.job, f"{aid}_{e.index}")) for e in group)
        return [out[i[0]] for i in items]

    def array_size(self) -> int:
        if self.max_array is None:
            self.max_array = slurmarray.max_array_size()
        return self.max_array

    def prepare(self, run_id: int, job, creds) -> slurmarray.Element:
        """The job's log (unless it names its own), the SLURM ids of its
        dependencies and a fresh status file."""
        sp = self.lc.spool
        log_path = job.get("log") or sp.log_path(run_id)
        if not job.get("log"):
            os.close(runner.open_log(sp.log_path(run_id), creds))
        runs = self.lc.runs
        deps = [runs[a].record["slurm_id"] for a in job.after
                if a in runs and runs[a].record.get("slurm_id")]
        try:
            return slurmarray.Element(job, os.fsdecode(log_path), deps,
                                      self.make_status(run_id, creds))
        except OSError as e:
            raise LaunchError(f"could not create its status file: {e}") from None

    def handed(self, job, sid: str) -> dict:
        """The record's fields for a job SLURM took as ``sid``."""
        fields = {"slurm_id": sid, "slurm_state": "PENDING", "slurm_queued_at": time.time()}
        if job.time_limit is not None:  # SLURM keeps whole minutes: say what it enforces
            fields["time_limit"] = math.ceil(job.time_limit / 60) * 60.0
        return fields

    # ---- the batch script's status file ---------------------------------------------
    def status_path(self, job_id: int):
        return self.lc.spool.state / "slurm" / str(job_id)

    def make_status(self, job_id: int, creds):
        """A fresh, empty ``state/slurm/<id>`` the job's user may append to.
        The folder is the daemon's (no one else can add, replace or link a
        name there); the file is the user's alone (0600), so only the job's
        own user can speak for the job, as its exit code already does."""
        folder = self.status_path(job_id).parent
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o755 if self.lc.uid == 0 else 0o700)
        path = self.status_path(job_id)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # an earlier handoff's
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            if creds is not None and os.geteuid() == 0:
                os.fchown(fd, creds.uid, creds.gid)
        finally:
            os.close(fd)
        return path

    def poll(self, runs: dict, now: float) -> list[Ended]:
        if now < self.next_query:
            return []
        self.next_query = now + self.lc.o.poll
        self.up = slurm.available()
        by_sid = {r.record["slurm_id"]: r for r in runs.values() if r.record.get("slurm_id")}
        if not by_sid:
            return []
        infos = slurm.details(list(by_sid)) if self.up else {}
        ended = []
        for sid, run in by_sid.items():
            info = infos.get(sid)
            status = slurm.read_status(self.status_path(run.id))  # after SLURM: no race
            if status.end is not None and info is not None and info.state == "running" \
                    and now - status.end < FINAL_WORD_S:
                self.follow(run, status, info)  # COMPLETING: SLURM's word (CANCELLED...) next
            elif status.end is not None or info is not None and info.state in FINAL:
                ended.append(self.ended(run, status, info, now))
            elif info is not None and info.state == "unknown":
                ended.append(self.ended(run, status, self.forgotten(sid, run), now))
            else:
                self.follow(run, status, info)
        return ended

    def forgotten(self, sid: str, run) -> slurm.Info:
        """scontrol and sacct no longer know the job: jobcomp/filetxt, if any."""
        if self.jobcomp is None:
            self.jobcomp = slurm.jobcomp_file() or ""
        uid = run.record.get("uid", self.lc.uid)
        found = slurm.from_jobcomp(self.jobcomp, {sid: uid}).get(sid) if self.jobcomp else None
        return found or slurm.Info("unknown", None, None, source="")

    def follow(self, run, status: slurm.Status, info: slurm.Info | None) -> None:
        """A job SLURM has not ended: keep its state, reason, real start and
        GPUs in the record (saved only when one changed)."""
        rec = run.record
        new = {}
        if info is not None:
            word = info.word or info.state.upper()
            reason = None if info.reason in (None, word) else info.reason
            new = {"slurm_state": word, "slurm_reason": reason}
        self.add_start_and_gpus(run, status, info, new)
        changed = {k: v for k, v in new.items() if rec.get(k) != v}
        if changed:
            rec.update(changed)
            if rec.get("slurm_reason") is None:
                rec.pop("slurm_reason", None)
            self.lc.records.save(self.lc.spool.record("running", run.id), rec, sync=False)

    def add_start_and_gpus(self, run, status: slurm.Status, info, new: dict) -> None:
        rec = run.record
        ran = status.start is not None or info is not None and info.start is not None
        if not ran:
            return
        start = info.start if info is not None and info.start is not None else \
            self.clamp(rec, status.start)
        if start is not None and run.id not in self.started:
            new["started_at"] = start
            self.started.add(run.id)
        if rec.get("gpus") and not rec.get("assigned_gpus"):
            gpus = None
            if info is not None and info.state == "running":
                with contextlib.suppress(slurm.SlurmError):
                    gpus = slurm.allocated_gpus(rec["slurm_id"])
            if gpus is None and status.gpus is not None and len(status.gpus) == rec["gpus"]:
                gpus = status.gpus  # the script's CUDA_VISIBLE_DEVICES (the user's word)
            if gpus is not None:
                new["assigned_gpus"] = gpus

    def ended(self, run, status: slurm.Status, info: slurm.Info | None, now: float) -> Ended:
        """How the job ended, from the sources in the module docstring's order."""
        rec = run.record
        new: dict = {}
        self.add_start_and_gpus(run, status, info, new)
        rec.update(new)
        self.started.discard(run.id)
        word = info.word if info is not None else ""
        slurm_end = info.end if info is not None and info.state in FINAL else None
        self.ends[run.id] = slurm_end or self.clamp(rec, status.end) or now
        rec["slurm_state"] = word or rec.get("slurm_state")
        if status.end is not None:
            code = status.code
            if word in slurm.OUTCOME and word not in ("COMPLETED", "FAILED"):
                return Ended(run, code, ("cancelled" if word in CANCELS else "failed",
                                         f"SLURM: {info.reason or word}", slurm.OUTCOME[word]))
            return Ended(run, code)
        if info is not None and info.state in FINAL:
            folder = info.state
            name = slurm.OUTCOME.get(word, "completed" if folder == "done" else folder)
            why = None if folder == "done" else f"SLURM: {info.reason or word}"
            if info.source == "jobcomp":
                why = why and f"{why} (from SLURM's job completion log)"
            return Ended(run, info.code, (folder, why, name))
        if status.start is None and (rec.get("kill_reason") or "_" in rec["slurm_id"]):
            # SLURM drops an array task cancelled while it waits in its array
            # at once, without a trace; a job we cancelled may be purged since
            why = rec.get("kill_reason") or "cancelled in SLURM"
            return Ended(run, None, ("cancelled", f"{why} (SLURM dropped it before it ran)",
                                     "cancelled"))
        return Ended(run, None, ("failed", "SLURM no longer knows the job and no source "
                                 "recorded how it ended (its status file "
                                 + ("says it started but not that it ended" if status.start
                                    else "is empty") + "; no sacct, no jobcomp entry): "
                                 "the node or the batch script was lost", "node_fail"))

    def clamp(self, rec: dict, t: float | None) -> float | None:
        """A time from the status file, kept between the handoff and now."""
        if t is None:
            return None
        lo = rec.get("slurm_queued_at") or rec.get("started_at")
        return min(max(t, lo) if finite(lo) else t, time.time())

    def queued(self, run) -> bool:
        """Handed to SLURM but not started: gcancel may still cancel it."""
        return run.record.get("slurm_state") == "PENDING"

    def renice(self, run, prio: int) -> None:
        """gprio of a job SLURM still queues (a prio-ID request): its nice in
        SLURM, then its record, so that the spool says what SLURM does."""
        sid, rec = run.record.get("slurm_id"), run.record
        try:
            slurm.renice(sid, prio)
        except slurm.SlurmError as e:  # it just started, or SLURM is down: nothing changes
            log.warning("job %d: SLURM job %s not reniced: %s", run.id, sid, e)
            return
        log.info("job %d: priority %s -> %d (SLURM job %s reniced)", run.id,
                 rec.get("priority"), prio, sid)
        rec["priority"] = prio
        self.lc.records.save(self.lc.spool.record("running", run.id), rec, sync=False)

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
            user = runner.creds_for(owner_of(os.lstat(path).st_uid, rec)).name  # the kernel's
            found = slurm.find(job_id, sp.root, user)
            if not found and rec.get("array_id") and isinstance(rec.get("array_index"), int):
                found = slurmarray.find(rec["array_id"], rec["array_index"], sp.root, user)
            if found:
                sid = rec["slurm_id"] = found[0]
                self.lc.records.save(path, rec)
                log.info("job %d: found as SLURM job %s after a restart", job_id, sid)
        if sid is None:
            # cannot tell yet whether SLURM has it: decide when it answers
            return ("requeue", "claimed but never handed to SLURM") if self.up else ("later",)
        return ("adopt",)

    def launched_here(self, job_id: int) -> bool:
        return False  # a SLURM job is known by the slurm_id its record holds

    def recover_strays(self, known: set[int]) -> None:
        pass  # SLURM owns the processes

    def hook_running(self, run, code: int | None) -> bool:
        if run.record.get("on_finish"):  # fire and forget, here, as the job's user
            self.lc.guard(run.id, spawn_hook, self.lc, run, code, None)
        return False

    def end_time(self, run, code: int | None) -> float | None:
        return self.ends.pop(run.id, None)

    def usage(self, run) -> dict:
        return run.gpu_usage()

    def enforced(self) -> dict:
        return {"gpus": "SLURM (--gres, CUDA_VISIBLE_DEVICES)", "cpus": "SLURM",
                "mem": "SLURM (--mem)", "time_limit": "SLURM (--time)"}

    def job_of(self, pid: int) -> int | None:
        return None  # SLURM's jobs run elsewhere

    def release(self, run) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.status_path(run.id).unlink()
