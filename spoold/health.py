"""GPU health: drained GPUs, the black-hole guard, energy per job.

Owns: which of this host's GPUs are drained and why (kept in
``state/drain/HOST/GPU.yaml``, so a drain survives a restart), draining a
GPU whose readings turn unhealthy (``gpus.health_problem``), ending the jobs
on a GPU that is lost, the black-hole guard, and the energy a job's GPUs
used (``usage.energy_j``).

Invariants:
- A drained GPU gets no new job; a job already on it runs on, unless the GPU
  is lost (then it ends as ``node_fail``). Only ``gdrain --undo`` (a request,
  root's in a shared spool) returns it; nothing returns it by itself.
- Drain files are the daemon's (root's in a shared spool); a file someone
  else owns is ignored.
- The black-hole guard drains a GPU only when ``--blackhole N`` jobs in a
  row failed on it within ``QUICK_S`` of their start *and* each of their
  commands succeeded on another GPU in the same period. A script that fails
  everywhere never succeeds elsewhere, so it never trips the guard, however
  many times it fails; a GPU that fails every job while others succeed does.
  Its evidence is kept in memory: after a restart the count starts over.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque

from . import job as jobmod
from . import spool as spoolmod
from .gpus import health_problem
from .records import KILL_NODE_FAIL

log = logging.getLogger("spoold")

QUICK_S = 60.0  # a failure this soon after its start counts for the guard


def signature(rec: dict) -> str:
    """What the guard compares across GPUs: the command, not the job."""
    what = repr(rec.get("argv") or rec.get("cmd"))
    return hashlib.sha1(what.encode(), usedforsecurity=False).hexdigest()


class Health:
    def __init__(self, d):
        self.d = d  # the daemon: spool, options, records, jobs
        self.spool, self.o = d.spool, d.o
        self.folder = self.spool.drain_dir(self.o.host)
        self.drained: dict[int, dict] = {}
        self.prev: dict = {}  # GPU index -> its last reading
        self.failures: dict[int, deque] = {}  # GPU -> recent quick failures (time, sig, id)
        self.successes: deque = deque()  # (time, GPU, sig) of recent successes

    def load(self) -> None:
        """Drains from the spool (at start): the state is the files."""
        self.drained = {}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for e in entries:
            stem = e.name[:-5] if e.name.endswith(".yaml") else ""
            if not stem.isdigit():
                continue
            try:
                if e.stat(follow_symlinks=False).st_uid != os.geteuid():
                    continue  # not ours: never a way to drain (or keep) a GPU
                rec = jobmod.load_record(spoolmod.read_untrusted(e.path, 65536))
            except (OSError, ValueError, jobmod.JobError, spoolmod.BadFile):
                continue
            self.drained[int(stem)] = rec

    def reason(self, index: int) -> str | None:
        rec = self.drained.get(index)
        if rec is None:
            return None
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.get("at") or 0))
        return f"drained since {when}: {rec.get('reason')} (gdrain --undo {index})"

    def drain(self, index: int, reason: str, by: str) -> None:
        rec = {"gpu": index, "reason": reason, "by": by, "at": time.time()}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spool.replace_atomic(self.folder / f"{index}.yaml", jobmod.dump(rec), mode=0o644)
        self.drained[index] = rec
        log.warning("GPU %d drained (%s): %s", index, by, reason)

    def undrain(self, index: int) -> None:
        spoolmod.remove_entry(self.folder / f"{index}.yaml")
        if self.drained.pop(index, None) is not None:
            log.info("GPU %d returned to service (gdrain --undo)", index)
        self.failures.pop(index, None)

    # ---- each poll -------------------------------------------------------------------
    def check(self, readings) -> None:
        """Drain GPUs whose readings turned unhealthy; end jobs on lost GPUs."""
        for r in readings:
            why = health_problem(self.prev.get(r.index), r)
            self.prev[r.index] = r
            if why is None:
                continue
            if r.index not in self.drained:
                self.drain(r.index, why, "health")
            if getattr(r, "lost", False):
                for run in list(self.d.runs.values()):
                    if r.index in (run.record.get("assigned_gpus") or ()) and \
                            not run.record.get("kill_reason"):
                        self.d.jobs.kill(run, f"{KILL_NODE_FAIL}: GPU {r.index} is lost ({why})")

    # ---- black-hole guard ---------------------------------------------------------------
    def job_ended(self, rec: dict, outcome: str) -> None:
        """Count a job that ended on whole GPUs for the black-hole guard."""
        n = self.o.blackhole
        gpus = rec.get("assigned_gpus") or []
        start, end = rec.get("started_at"), rec.get("ended_at") or time.time()
        if not n or not gpus or rec.get("gpu_mem") or not isinstance(start, (int, float)):
            return
        sig, now = signature(rec), time.time()
        while self.successes and now - self.successes[0][0] > QUICK_S * 10:
            self.successes.popleft()
        if outcome == "completed":
            self.successes.extend((now, g, sig) for g in gpus)
            for g in gpus:
                self.failures.pop(g, None)  # a success on it breaks its run
            return
        if outcome != "failed" or end - start > QUICK_S:
            return
        for g in gpus:
            row = self.failures.setdefault(g, deque(maxlen=n))
            row.append((now, sig, rec.get("id")))
            since = row[0][0]
            elsewhere = {s for t, gpu, s in self.successes if gpu != g and t >= since - QUICK_S}
            if len(row) == n and g not in self.drained and all(s in elsewhere for _, s, _ in row):
                ids = ", ".join(str(j) for _, _, j in row)
                self.drain(g, f"black hole: jobs {ids} failed on it within {QUICK_S:g}s of "
                              "their start, while the same commands succeeded on other GPUs "
                              f"(--blackhole {n})", "blackhole")

    # ---- energy -------------------------------------------------------------------------
    def energy_at_start(self, gpus) -> dict | None:
        """{GPU: mJ} of the job's whole GPUs now (recorded at its start)."""
        now = {r.index: r.energy_mj for r in self.d.readings}
        start = {str(g): now.get(g) for g in gpus}
        return start if start and all(v is not None for v in start.values()) else None

    def energy_j(self, rec: dict) -> float | None:
        """Joules the job's GPUs used: the counters' rise from its start to now."""
        start = rec.get("energy_start_mj")
        if not isinstance(start, dict) or not start:
            return None
        now = {str(r.index): r.energy_mj for r in self.d.readings}
        used = [now.get(g) - v for g, v in start.items()
                if isinstance(v, int) and isinstance(now.get(g), int) and now[g] >= v]
        return round(sum(used) / 1000.0, 1) if len(used) == len(start) else None
