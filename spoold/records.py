"""Records: what the daemon writes about a job, and rules read off them.

Owns: writing records (root's, readable by the owner's group in a shared
spool), reading them back, who a job file's job runs as (``owner_of``), the
final folder, reason and outcome name of an ended job (``outcome_of``), the fields a run
adds (``RUN_FIELDS``) and pruning finished records (``--keep``, per user).

Invariants:
- A record is written whole in tmp/ and renamed into place; it is read back
  with ``MAX_RECORD_BYTES`` as cap and never through a link.
- No record is bigger than that cap: the big user fields are dropped first.
- Pruning removes a job's kept original and log before its record, so a
  crash never leaves an original without its record.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import NamedTuple

from . import job as jobmod
from . import runner
from . import spool as spoolmod
from .spool import BadFile

# What a record over the size cap keeps at least: the daemon's fields, the bookings.
KEPT = {*jobmod.DAEMON_FIELDS, "id", "name", "gpus", "gpu_mem", "cpus", "mem", "priority",
        "time_limit", "after", "array_id", "array_index", "array_limit", "requeue", "log",
        "on_finish", "pin_host", "submitted_at"}
# What a run adds to a record; a job put back in pending/ sheds them.
RUN_FIELDS = ("pid", "host", "claimed_at", "started_at", "ended_at", "exit_code", "kill_reason",
              "assigned_gpus", "assigned_cpus", "slurm_id", "hook_started_at", "energy_start_mj")


def read_record(path: Path) -> dict:
    """A record the daemon wrote (never through a link; a job file plus fields)."""
    return jobmod.load_record(spoolmod.read_untrusted(path, spoolmod.MAX_RECORD_BYTES))


def owner_of(st_uid: int, data) -> int:
    """Who a job file's job runs as: the file's owner (``st_uid``). A file owned
    by root (root's own, or one the daemon put back in pending/ after a claim)
    may name another user in ``uid:``; no one else's file can, since only root
    can write a root-owned file. ``data``: the parsed job or record."""
    uid = data.get("uid")
    if st_uid == 0 and isinstance(uid, int) and not isinstance(uid, bool) and 0 <= uid < 2**31:
        return uid
    return st_uid



class Outcome(NamedTuple):
    """How a job ended: its final folder, the reason in words (None for a
    success) and the outcome name, as SLURM distinguishes them (OUTCOMES)."""

    folder: str
    reason: str | None
    outcome: str


OUTCOMES = ("completed", "failed", "timeout", "out_of_memory", "cancelled", "node_fail",
            "rejected")
KILL_TIME = "time limit"
KILL_REQUEST = "killed on request"
KILL_GPU_MEM = "out of GPU memory"  # a kill reason starting with "out of" is out_of_memory
KILL_NODE_FAIL = "node failure"  # its GPU was lost under it


def outcome_of(rec: dict, code: int | None, known: tuple | None = None) -> Outcome:
    """How a job that ended with exit ``code`` (None: unknown) ended, given its
    record; ``known``: what an executor reported, (folder, reason[, outcome])."""
    kill_reason = rec.get("kill_reason")
    tail = f"; exit code {code}" if code is not None else ""
    if kill_reason == KILL_TIME:
        limit = rec.get("time_limit")
        limit = f" ({limit:g}s)" if finite(limit) else ""
        return Outcome("failed", f"time limit{limit} exceeded{tail}", "timeout")
    if isinstance(kill_reason, str) and kill_reason.startswith("out of"):
        return Outcome("failed", kill_reason + tail, "out_of_memory")
    if isinstance(kill_reason, str) and kill_reason.startswith(KILL_NODE_FAIL):
        return Outcome("failed", kill_reason + tail, "node_fail")
    if kill_reason:
        return Outcome("cancelled", kill_reason + tail, "cancelled")
    if known is not None:
        folder, reason = known[0], known[1]
        name = known[2] if len(known) > 2 else {"done": "completed"}.get(folder, folder)
        return Outcome(folder, reason, name)
    if code is None:
        return Outcome("failed", "job processes vanished while spoold was not watching them "
                                 "(reboot, OOM killer, or kill -9 of the whole tree)", "failed")
    if code == 0:
        return Outcome("done", None, "completed")
    # sh reports death by signal N as 128+N; signals stop at 64
    return Outcome("failed", f"killed by signal {code - 128}" if 128 < code <= 128 + 64
                   else f"exit code {code}", "failed")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Records:
    """Writes records and prunes the finished ones."""

    def __init__(self, spool, shared: bool, keep: int):
        self.spool = spool
        self.shared = shared
        self.keep = keep
        self.final_count = 0  # records in done/, failed/ and cancelled/
        self.next_prune = 0
        self.uids: dict[tuple, tuple] = {}  # (state, id) -> (inode, uid) of final records

    def save(self, path: Path, rec: dict, create: bool = False, sync: bool = True) -> None:
        """Write a record. Shared spool: root's, readable by the job's group only
        (with user private groups, that is its owner), never writable by users."""
        group, mode = None, 0o600
        if self.shared and isinstance(rec.get("uid"), int):
            group, mode = runner.creds_for(rec["uid"]).gid, 0o640
        write = self.spool.create_atomic if create else self.spool.replace_atomic
        data = jobmod.dump(rec)
        if len(data) > spoolmod.MAX_RECORD_BYTES:  # kept readable: the user's fields go
            note = {"x-spoold-note": "fields over the record size cap were dropped"}
            data = jobmod.dump({k: v for k, v in rec.items() if k not in ("env", "argv", "cmd")
                                and len(repr(v)) < 4096} | note)
            if len(data) > spoolmod.MAX_RECORD_BYTES:  # many small ones: keep only ours
                data = jobmod.dump({k: v for k, v in rec.items() if k in KEPT and
                                    len(repr(v)) < 4096} | note)
        write(path, data, mode=mode, sync=sync, group=group)

    def prune(self) -> None:
        """--keep, per user: drop each user's oldest finished records (by end
        time) beyond the limit, so no one's files push out another's. Over the
        limit, the folders are scanned again only after keep/20 more endings."""
        if self.final_count <= self.keep or self.final_count < self.next_prune:
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
            for _, job_id, d in entries[: max(0, len(entries) - self.keep)]:
                self.spool.delete_finished(d, job_id)  # (the record last)
                self.uids.pop((d, job_id), None)
                total -= 1
        self.final_count = total
        self.next_prune = total + max(1, self.keep // 20)

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
