"""gstat's pending side: pending/ in the daemon's order, why each job waits,
and fair share as the heartbeats publish it (read-only).

Owns: ``Waiting`` (pending/ as gstat reads it), ``pending_view`` (the JSON's
``pending`` list), ``explain`` (each row's reason), ``Queue`` (the order) and
the shares rows.

Invariants:
- Every pending job is listed, in the daemon's queue order, however long the
  queue: its id and priority come from its name (``PPPP-IIIIIIII.yaml``), so a
  queue of 100,000 costs one directory listing, not 100,000 file reads.
- Files are read for the first ``shown`` jobs of the list only
  (``PENDING_SHOWN``; every one with ``gstat --all``). Those rows carry every
  field. The others are *unread*: ``name`` is null (a read row's is a
  string), and so is every field but ``id``, ``priority``,
  ``effective_priority``, ``user`` (null where the owner was not looked up)
  and ``reason`` (``UNREAD``). Read rows come first.
- A file's owner (one lstat) is looked up only where the order needs it (a
  shared spool, where the effective priority and fair share depend on who owns
  each job) or ``-u`` filters by it. A root-owned file is read for its
  ``uid:`` (``records.owner_of``: a job the daemon put back in the queue
  names its user there), but only the first ``shown`` such files in name
  order: past them (root queued more than that) a root-owned file counts as
  root's unless it is read for its row, so a job put back after a crash deep
  in root's long queue may be placed as root's in gstat's list.
- Reasons are the daemon's: ``schedule`` on the queue as each live host orders
  it. ``schedule`` decides in queue order, each verdict depending only on what
  runs and on the jobs ahead, so scheduling the first N jobs gives those N the
  verdicts of the whole queue. At most ``shown`` jobs are scheduled per host;
  a read row beyond them (``-u`` with a long queue ahead) says how many jobs
  are ahead instead.
- User names come from uids (``owner_of`` the file), never from ``user:``
  alone; private rows (another user's unreadable file) show id and owner only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections import Counter

from . import job as jobmod
from . import spool as spoolmod
from .fairshare import Limit, effective_priority, queue_keys
from .hosts import places_by_slurm, resources_of
from .options import Options
from .policy import Shares
from .records import owner_of
from .scheduler import Request, gate_only, request_of, schedule
from .spool import DEFAULT_PRIORITY, BadFile, Spool
from .toolbase import command_text, num, user_name
from .util import natural, positive

PRIVATE_PENDING = "another user's job (details private)"
NO_DAEMON = "no daemon"  # the reason of every pending job while no host's daemon is alive
PENDING_SHOWN = 500  # pending files read (and rows listed) by default; the rest are counted
PENDING_FIELDS = ("id", "name", "user", "gpus", "gpu_mem", "cpus", "mem", "priority",
                  "submitted_at", "wait", "time_limit", "after", "held", "command", "reason",
                  "private", "effective_priority")
_BLANK = dict.fromkeys(PENDING_FIELDS)


def read_rows(pending: list[dict]) -> int:
    """How many rows at the start of ``pending_view``'s list were read from
    their files (the rest are unread: only their names were seen)."""
    return next((n for n, row in enumerate(pending) if row["name"] is None), len(pending))


def ahead_text(n: int) -> str:
    """The reason of a read row beyond the jobs gstat scheduled."""
    return f"{n:,} jobs ahead; gstat --all says why each job waits"


UNREAD = "not read; gstat --all reads every job"  # the reason of an unread row


class Waiting:
    """pending/ as gstat reads it: every job's name, owners only where asked,
    files only on demand, each at most once (see the module's invariants).
    ``owners``: look up every file's owner even in a private spool (``-u``)."""

    def __init__(self, sp: Spool, queue: Queue, now: float, shown: int | None,
                 owners: bool = False):
        self.sp, self.queue, self.now = sp, queue, now
        self.names = _listed(sp)
        self.read_cache: dict[int, tuple[dict, Request | None, int] | None] = {}
        self.owners = self._owners(shown) if owners or queue.shared else {}
        self.prio = {i: p.priority for i, p in self.names.items()}
        if queue.shared:  # only a priority below the default, or root's override, can change
            for i in [i for i, p in self.prio.items() if p < DEFAULT_PRIORITY or i in
                      queue.overrides]:
                self.prio[i] = queue.priority(self.prio[i], self.owners[i], i)
        self.plain = [i for _, i in sorted((p, i) for i, p in self.prio.items())] if any(
            self.prio[i] != p.priority for i, p in self.names.items()) else list(self.names)
        self._orders: dict[tuple | None, list[int]] = {}
        self.merged = self.order()  # the order gstat lists (every live host's shares)

    def _owners(self, most: int | None) -> dict[int, int]:
        """Each file's owner: one lstat, and the file of the first ``most``
        (None: all) root-owned ones."""
        fd = os.open(self.sp.pending, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:  # one sweep (a third faster than a loop); a file gone meanwhile: one by one
                uids = {i: os.lstat(p.name, dir_fd=fd).st_uid for i, p in self.names.items()}
            except FileNotFoundError:
                uids = {i: _owner(p.name, fd) for i, p in self.names.items()}
        finally:
            os.close(fd)
        roots = [i for i, uid in uids.items() if uid == 0]
        for i in roots if most is None else roots[:most]:
            got = self.read(i)
            uids[i] = got[2] if got else None
        for i in [i for i, uid in uids.items() if uid is None]:  # started or cancelled meanwhile
            del self.names[i], uids[i]
        return uids

    def read(self, job_id: int) -> tuple[dict, Request | None, int] | None:
        """(row, Request or None if unreadable, owner) of a job's file; None if
        it has left pending/. Read once."""
        if job_id not in self.read_cache:
            self.read_cache[job_id] = self._read(self.names[job_id])
        return self.read_cache[job_id]

    def _read(self, p: spoolmod.PendingName) -> tuple[dict, Request | None, int] | None:
        path = self.sp.pending / p.name
        try:
            st = os.lstat(path)
            # The fields before env:, as the daemon's queue reads them (job.parse_head).
            job = jobmod.parse_head(spoolmod.read_untrusted(path))
        except FileNotFoundError:
            return None  # started or cancelled meanwhile
        except PermissionError:  # another user's job in a shared spool: id and owner only
            return self._unreadable(p, PRIVATE_PENDING)
        except (OSError, BadFile, jobmod.JobError) as e:
            return self._unreadable(p, f"bad file: {e}")
        uid = owner_of(st.st_uid, job.data)
        submitted = num(job.get("submitted_at")) or st.st_mtime
        row = {
            "id": p.job_id, "name": job.name, "user": user_name(uid, job.get("user")),
            "gpus": job.gpus, "gpu_mem": job.gpu_mem or None, "cpus": job.cpus, "mem": job.mem,
            "priority": p.priority, "submitted_at": submitted, "wait": self.now - submitted,
            "time_limit": job.time_limit, "after": job.after, "held": job.hold,
            "command": command_text(job.data), "reason": None, "private": False,
            "effective_priority": self.queue.priority(p.priority, uid, p.job_id),
        }
        return row, request_of(job, p.job_id, owner=uid), uid

    def _unreadable(self, p, reason: str) -> tuple[dict, None, int]:
        """The row of a job file that cannot be read, and its owner (-1: gone)."""
        try:
            st = os.lstat(self.sp.pending / p.name)
            uid, mtime = st.st_uid, st.st_mtime
        except OSError:
            uid, mtime = -1, self.now
        return {"id": p.job_id, "name": "", "user": user_name(uid) if uid >= 0 else "",
                "gpus": None, "gpu_mem": None, "cpus": None, "mem": None,
                "priority": p.priority, "submitted_at": mtime, "wait": self.now - mtime,
                "time_limit": None, "after": [], "held": False, "command": "",
                "reason": reason, "private": reason == PRIVATE_PENDING,
                "effective_priority": self.queue.priority(p.priority, uid, p.job_id)}, None, uid

    def user(self, job_id: int) -> str | None:
        """The owner's name, None where the owner was not looked up."""
        uid = self.owners.get(job_id)
        return None if uid is None else user_name(uid)

    def order(self, shares: list[dict] | None = None) -> list[int]:
        """Every job's id in a host's queue order (``shares``: that host's;
        default: every live host's): (effective priority, id), or fair
        share's keys. Hosts that publish the same usage share one sort."""
        usage = self.queue.usage(shares)
        memo = None if usage is None else tuple(sorted(usage.items()))
        if memo not in self._orders:
            if usage is None:
                self._orders[memo] = self.plain
            else:
                keys = queue_keys(((self.prio[i], self.owners[i], i) for i in self.plain), usage)
                self._orders[memo] = [k[2] for k in sorted(keys.values())]
        return self._orders[memo]

    @functools.cached_property
    def position(self) -> dict[int, int]:
        """How many jobs are ahead of each in the listed order."""
        return {job_id: n for n, job_id in enumerate(self.merged)}

    def unread_row(self, job_id: int) -> dict:
        return {**_BLANK, "id": job_id, "priority": self.names[job_id].priority,
                "effective_priority": self.prio[job_id], "user": self.user(job_id),
                "reason": UNREAD}


# A pending name with an id (``spool.pending_name``; ``spool.parse_pending_name``
# gives it an id exactly when it has this form: tests/test_tools_scale.py checks
# that they agree). One compiled match a name: 100,000 names in a few ms.
_WITH_ID = re.compile(r"([0-9]{4})-(?!00000000)([0-9]{8})\.yaml")


def _owner(name: str, dir_fd: int) -> int | None:
    try:
        return os.lstat(name, dir_fd=dir_fd).st_uid
    except FileNotFoundError:
        return None


def _listed(sp: Spool) -> dict[int, spoolmod.PendingName]:
    """The jobs of pending/ by id, in name order, which is queue order: a
    name with an id has one width, so sorting names sorts by (priority, id)."""
    match = _WITH_ID.fullmatch
    found = (m for m in map(match, sorted(os.listdir(sp.pending))) if m)
    return {int(m[2]): spoolmod.PendingName(int(m[1]), int(m[2]), m[0]) for m in found}


def pending_view(w: Waiting, user: str | None, shown: int | None,
                 unread_rows: bool = True) -> tuple[list[dict], Counter]:
    """The rows of pending/ in the daemon's queue order (``user``: only that
    user's): the first ``shown`` (None: all) read from their files, then the
    unread ones (``unread_rows``; else only counted); and the unread jobs
    counted by owner (None: not looked up). Reasons are left to ``explain``."""
    order = w.merged
    if user:
        order = [i for i in order if w.user(i) == user]
    head = order if shown is None else order[:shown]
    rows = [got[0] for i in head if (got := w.read(i)) is not None]
    rest = order[len(head):]
    if unread_rows:
        rows += [w.unread_row(i) for i in rest]
    return rows, Counter(map(w.user, rest)) if w.owners else Counter({None: len(rest)})


def explain(w: Waiting, live: list[dict], pending: list[dict], running: list, bookings: list,
            shown: int | None) -> None:
    """Fill in each pending row's reason: the queue as each live host's daemon
    sees it, in its order and with its per-user caps (a job starts if any host
    would start it; otherwise the first host's reason is shown). Only the
    first ``shown`` jobs of each host's order are scheduled."""
    read = pending[:read_rows(pending)]
    if not any(h["alive"] for h in live):  # nothing starts: what a dead host said is moot
        for p in read:
            p["reason"] = p["reason"] or NO_DAEMON
        return
    running_ids = {r["id"] for r in running}

    class Deps:
        def get(self, job_id, default=None):
            if job_id in running_ids:
                return "running"
            return "pending" if job_id in w.names else w.sp.where(job_id) or default

    wanted = {p["id"] for p in read if p["reason"] is None}
    reasons: dict[int, str] = {}
    explained: set[int] = set()
    paused = w.sp.paused_flag.exists()
    for h in live:
        shares = published_shares(h["beat"])
        order = w.order(shares)
        ahead = _head_until(order, wanted, shown)
        explained.update(ahead)
        requests = [got[1] for i in ahead if (got := w.read(i)) and got[1] is not None]
        res = dataclasses.replace(resources_of(h["beat"], h["host"], paused),
                                  limits=limits_of(shares))
        mine = [b for host, b in bookings if host == h["host"]]
        if places_by_slurm(h["beat"].get("enforced")):  # the bridge only gates; SLURM places
            d = gate_only(requests, mine, h["host"], Deps(), paused, throttle_arrays=False)
        else:
            d = schedule(requests, mine, res, w.now, Deps())
        prefix = f"{h['host']}: " if len(live) > 1 else ""
        for s_ in d.start:
            reasons[s_.id] = "starting"
        for i, why in {**d.wait, **d.reject, **d.cancel}.items():
            if reasons.get(i) != "starting":
                reasons.setdefault(i, prefix + why)
    for p in read:
        if p["reason"] is None:
            p["reason"] = reasons.get(p["id"], "starting") if p["id"] in explained else (
                ahead_text(w.position.get(p["id"], 0)))


def _head_until(order: list[int], wanted: set[int], most: int | None) -> list[int]:
    """The start of ``order`` up to the last id in ``wanted``, at most ``most`` ids."""
    last = -1
    for n, job_id in enumerate(order if most is None else order[:most]):
        if job_id in wanted:
            last = n
    return order[:last + 1]


# ---- fair share: the daemon's order and caps, from its heartbeat ---------------------------

def published_shares(beat: dict) -> list[dict]:
    """The heartbeat's ``shares:`` entries, each field checked ([] if none:
    not a shared spool, or an older daemon)."""
    shares = beat.get("shares")
    out = []
    for e in shares if isinstance(shares, list) else []:
        uid = natural(e.get("uid")) if isinstance(e, dict) else None
        if uid is None:
            continue
        usage, rank = num(e.get("usage_gpu_h")), e.get("rank")
        out.append({"uid": uid, "user": user_name(uid, e.get("user")),
                    "gpus": natural(e.get("gpus")) or 0,
                    "usage_gpu_h": usage if usage is not None and usage >= 0 else None,
                    "rank": rank if positive(rank) else None,
                    "max_gpus": natural(e.get("max_gpus")),
                    "max_cpus": natural(e.get("max_cpus")), "admin": e.get("admin") is True})
    return out


def merged_shares(live: list[dict]) -> list[dict]:
    """One row per user over the live hosts, next in line first: GPUs held
    summed; usage, caps and admin from the first host that lists the user
    (every host computes them from the same records and policy); ranks
    follow usage, as each daemon ranks (None when fair share is off)."""
    merged: dict[int, dict] = {}
    for h in live:
        for e in published_shares(h["beat"]):
            if e["uid"] in merged:
                merged[e["uid"]]["gpus"] += e["gpus"]
            else:
                merged[e["uid"]] = e
    rows = sorted(merged.values(), key=lambda e: (
        e["usage_gpu_h"] or 0.0, e["rank"] or math.inf, e["uid"]))
    ranked = any(e["rank"] is not None for e in rows)
    for n, e in enumerate(rows, 1):
        e["rank"] = n if ranked else None
    return rows


def limits_of(shares: list[dict]) -> dict[int, Limit]:
    """The scheduler's per-user caps (``Resources.limits``) from published shares."""
    return {e["uid"]: Limit(e["user"], e["max_gpus"], e["max_cpus"]) for e in shares
            if e["max_gpus"] is not None or e["max_cpus"] is not None}


class Queue:
    """The daemon's queue order as a reader can know it: effective priorities
    (``fairshare.effective_priority``, in a shared spool) and, when its
    heartbeat ranks users, fair-share keys (``fairshare.queue_keys``) from the
    published usage, exactly as ``pending.PendingQueue.fair_order`` keys them."""

    def __init__(self, sp: Spool, shares: list[dict]):
        try:
            self.shared = sp.shared()
        except OSError:
            self.shared = False
        self.shares = shares
        self.admins = {e["uid"] for e in shares if e["admin"]}
        self.overrides: dict[int, int] = {}
        if self.shared:
            try:  # root's overrides, read by the daemon's own reader
                self.overrides = Shares(sp, Options(spool=sp.root), True).overrides()
            except OSError:  # state/priority/ not readable by this user
                pass

    def priority(self, asked: int, owner: int, job_id: int) -> int:
        return effective_priority(asked, owner, self.shared,
                                  self.shared and owner in self.admins,
                                  self.overrides.get(job_id), jobmod.DEFAULT_PRIORITY)

    def usage(self, shares: list[dict] | None = None) -> dict[int, float] | None:
        """Fair share's usage in seconds per uid (``fairshare.queue_keys``),
        from one host's ``shares`` (default: every live host's); None when
        fair share does not order the queue (a private spool, no ranks)."""
        shares = self.shares if shares is None else shares
        if not (self.shared and any(e["rank"] is not None for e in shares)):
            return None
        return {e["uid"]: (e["usage_gpu_h"] or 0.0) * 3600 for e in shares}
