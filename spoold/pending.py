"""The daemon's view of pending/: which files are jobs, in queue order.

Owns: the mirror of pending/ (a parsed-and-slimmed entry per file, cached by
stat key), naming files dropped without an id, the id rule and the pending
caps, and the ShapeQueue the scheduler reads.

Invariants:
- Everything here is a cache of the folder: dropping it loses nothing (the
  next full pass lists and reads pending/ again); events only mark names as
  touched, the listing decides.
- A name seen for the first time is admitted only if its id is the file's
  to use (``id_taken``: at most MAX_ID, in no other folder or pending name,
  and in a shared spool its ``state/ids`` marker is the file owner's);
  otherwise it is renamed to a fresh id, never run under the taken one.
- Who a job runs as is ``owner_of`` the file, decided by the kernel.
- Moves out of pending/ are the daemon's; this class only renames within
  pending/ (never over an existing name) and remembers what left (``gone``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from dataclasses import dataclass
from queue import Empty, SimpleQueue

from . import job as jobmod
from . import runner
from . import spool as spoolmod
from .fairshare import effective_priority, queue_keys
from .records import owner_of
from .scheduler import Request, ShapeQueue, request_of
from .spool import DEFAULT_PRIORITY, MAX_PRIORITY, BadFile

log = logging.getLogger("spoold")

PARSE_BUDGET = 2000  # pending files read per pass; the rest wait for the next pass
SETTLE_S = 2.0  # an in-place write counts as finished after this long unchanged


class PendingQueue:
    def __init__(self, d):
        self.d = d  # the daemon: its runs (ids in flight), guard and reject_file
        self.spool = d.spool
        self.o = d.o
        self.shared = d.shared
        self.uid = d.uid
        self.cache: dict[str, tuple[tuple, object]] = {}  # name -> (stat key, Slim|str)
        self.closed: set[str] = set()  # names closed after writing
        self.names: list | None = None  # pending/ as last listed, in queue order
        self.gone: set[str] = set()  # names we moved out of pending/ since
        self.touched: set[str] = set()  # names events reported since the last pass
        # The watcher thread only puts (name, kind) here; the loop drains it,
        # so no event is lost between two threads sharing a set.
        self.events: SimpleQueue = SimpleQueue()
        self.index: ShapeQueue | None = None  # the queue, grouped by shape
        self.by_id: dict[int, tuple] = {}  # id -> (PendingName, Slim) of the index
        self.pending_ids: dict[int, spoolmod.PendingName] = {}
        self.counts: Counter = Counter()  # pending jobs per uid (--max-pending-per-user)
        self.unparsed = 0  # pending files not read yet (over the per-pass budget)
        self.cursor = 0  # where in self.names the reading stopped
        self.unsettled = False  # a file is still being written: look again soon
        self.hint = 0
        self.not_jobs: set[str] = set()  # names in pending/ that are never jobs, as last seen

    def drain(self) -> None:
        """Take in what the watcher saw in pending/ (loop thread only)."""
        while True:
            try:
                name, kind = self.events.get_nowait()
            except Empty:
                return
            if kind in ("moved", "deleted") and name in self.gone:
                continue  # our own move out of pending/: nothing new to read
            self.touched.add(name)
            if kind == "closed":
                self.closed.add(name)
            elif kind in ("modified", "created", "moved_to"):
                self.closed.discard(name)

    def refresh(self, now: float, full: bool) -> list:
        """Bring the mirror up to date; return [(PendingName, reason)] of files
        that are not valid jobs (the daemon rejects them)."""
        self.drain()
        unsettled, self.unsettled = self.unsettled, False
        touched, self.touched = self.touched, set()
        if full or touched or self.names is None:
            # pending/ changed (or it is time to re-check): list it again, since
            # events are only a wake-up and inotify can drop them.
            others: set[str] = set()
            names = self.spool.list_pending(others)
            for name in others - self.not_jobs:  # said once per name, not each pass
                log.warning("pending/%s: not a job file name (a job is NNNN-NAME.yaml or "
                            "NAME.yaml; dot files are skipped); ignored", name)
            self.not_jobs = others
            self.name_foreign(names, now)
            if any(not p.has_id for p in names):
                names = self.spool.list_pending()
            live = {p.name for p in names}
            for k in [k for k in self.cache if k not in live]:
                del self.cache[k]
            self.closed &= live
            self.names, self.gone, self.index = names, set(), None
            # One name per id: the one seen before wins over a newcomer.
            ids = self.pending_ids = {}
            for p in names:
                if p.has_id and p.name not in self.cache:
                    ids.setdefault(p.job_id, p)  # first in queue order
            ids.update((p.job_id, p) for p in names if p.has_id and p.name in self.cache)
        bad = []
        if self.index is None or touched or unsettled:
            bad = self.build_index(now, full, touched)
        elif self.unparsed:
            bad = self.build_index(now, full, touched, resume=True)
        top = max((i for i in self.pending_ids if i <= spoolmod.MAX_ID), default=0)
        if self.shared and top > self.hint:
            self.hint = top
            self.spool.raise_hint(self.hint)  # submitters start probing markers from here
        return bad

    def load_pending(self, name: str, now: float, trust: bool = False):
        """What the queue needs of a pending file (``Slim``), a reason string if it
        is bad, or None if it is not complete yet. ``trust``: no event touched the
        name since it was cached, so skip even the lstat (a long queue costs one
        dict lookup per job); the periodic full pass re-checks everything."""
        hit = self.cache.get(name)
        if trust and hit is not None:
            return hit[1]
        path = self.spool.pending / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)
        if hit and hit[0] == key:
            return hit[1]
        p = spoolmod.parse_pending_name(name)
        if p is not None and p.has_id and (hit is None or hit[0][0] != st.st_ino):
            why = self.id_taken(p, st)  # a file we see for the first time
            if why:
                return Taken(why)
        try:
            if self.shared and st.st_nlink > 1 and not os.path.isdir(path):
                raise BadFile("hard link in a shared spool: refused unread (it could point "
                              "at a file its owner may not read)")
            try:
                raw = spoolmod.read_untrusted(path, check_closed=True)
            except spoolmod.LeaseUnsupported:
                # No way to see the writer: wait for its close event or 2 s of quiet.
                if name not in self.closed and now - st.st_mtime < SETTLE_S:
                    self.unsettled = True
                    return None
                raw = spoolmod.read_untrusted(path)
            job = _slim(jobmod.parse_head(raw), spoolmod.parse_pending_name(name),
                        self.o.default_time_limit, st)
            if not self.owner_ok(st.st_uid):
                job = f"file owned by uid {st.st_uid}; this spoold runs as uid {self.uid} " \
                      "and runs only its own user's files"
        except spoolmod.StillOpen:
            self.unsettled = True
            return None  # being written in place: its close wakes us
        except (BadFile, jobmod.JobError) as e:
            job = str(e)
        except FileNotFoundError:
            return None
        self.cache[name] = (key, job)
        return job

    def owner_ok(self, uid: int) -> bool:
        return self.shared or uid == self.uid

    def build_index(self, now: float, full: bool, touched: set, resume: bool = False) -> list:
        """The queue as a ShapeQueue, from the listing and the cache. Files not yet
        read are read here, at most PARSE_BUDGET per pass; the next pass resumes
        where this one stopped, so a daemon started on 100,000 pending files is
        working at once and never redoes the part it has."""
        shares = self.d.shares
        if not resume:
            self.by_id: dict[int, tuple] = {}
            self.index, self.cursor = ShapeQueue(()), 0
            self.overrides = shares.overrides() if self.shared else {}
            self.counts = Counter(hit[1].uid for p in self.names
                                  if isinstance(hit := self.cache.get(p.name), tuple)
                                  and isinstance(hit[1], Slim))
        bad, budget, names, i = [], PARSE_BUDGET, self.names, self.cursor
        while i < len(names):
            p = names[i]
            if p.has_id and p.name not in self.gone:
                new = p.name not in self.cache
                if new:
                    if budget <= 0:
                        break
                    budget -= 1
                slim = self.load_pending(p.name, now, trust=not full and p.name not in touched)
                if isinstance(slim, Taken):
                    self.d.guard(p.job_id, self.renumber, p, slim.why)
                    i += 1
                    continue
                if new and isinstance(slim, Slim):
                    full_why = self.queue_full(slim.uid)
                    if full_why:
                        self.cache.pop(p.name, None)
                        slim = full_why
                    else:
                        self.counts[slim.uid] += 1
                if isinstance(slim, str):
                    bad.append((p, slim))
                elif slim is not None:
                    prio = effective_priority(p.priority, slim.uid, self.shared,
                                              self.shared and shares.is_admin(slim.uid),
                                              self.overrides.get(p.job_id), DEFAULT_PRIORITY)
                    self.by_id[p.job_id] = (p, slim, prio)
                    self.index.append((prio, p.job_id), slim.req)
            i += 1
        self.cursor, self.unparsed = i, len(names) - i
        if self.shared and self.o.fairshare_halflife > 0 and self.by_id:
            self.fair_order(now)
        return bad

    def fair_order(self, now: float) -> None:
        """Re-key the queue for fair share: within a priority, least usage first."""
        usage = self.usage = self.d.shares.usage(now)
        order = sorted((prio, slim.uid, job_id) for job_id, (_, slim, prio) in self.by_id.items())
        keys = queue_keys(order, usage)
        self.index = ShapeQueue(sorted(((keys[job_id], self.by_id[job_id][1].req)
                                        for _, _, job_id in order), key=lambda kr: kr[0]))

    def queue_full(self, uid: int) -> str | None:
        """Why one more pending job of ``uid`` is refused (--max-pending is
        counted per user too, so that one user cannot fill everyone's queue)."""
        total = sum(self.counts.values())
        if total >= self.o.max_pending:
            return f"queue full: {total} jobs pending (spoold --max-pending {self.o.max_pending})"
        if self.shared and self.counts[uid] >= self.o.max_pending_per_user:
            return (f"queue full: {runner.creds_for(uid).name} has {self.counts[uid]} jobs "
                    f"pending (spoold --max-pending-per-user {self.o.max_pending_per_user})")
        return None

    def id_taken(self, p, st: os.stat_result) -> str | None:
        """Why the id in pending/<p.name> may not be used (None: it may). The one
        id rule, applied to every (name, inode) the daemon sees the first time:
        at most MAX_ID; in no other folder and not running; in a shared spool,
        its ``state/ids`` marker is the file owner's (made for it if missing);
        and no other pending name of the same owner has it (first seen wins).
        Another user's file under the same id never costs the owner the id."""
        job_id = p.job_id
        if job_id > spoolmod.MAX_ID:
            return f"ids are at most {spoolmod.MAX_ID}"
        where = "running" if job_id in self.d.runs else self.spool.where(job_id)
        if where:
            return f"job {job_id} is in {where}/"
        if self.shared and st.st_uid != 0:  # root's files (ours too) need no marker
            marker = self.spool.marker_owner(job_id)
            if marker is None and not self.spool.claim_marker(job_id, st.st_uid):
                marker = self.spool.marker_owner(job_id)  # someone was quicker
            if marker not in (None, st.st_uid):
                return f"id {job_id} was taken by uid {marker}"
        other = self.pending_ids.get(job_id)
        if other is not None and other.name != p.name and self._owner(other) == st.st_uid:
            return f"pending/{other.name} has that id"
        return None

    def _owner(self, p) -> int | None:
        try:
            return os.lstat(self.spool.pending / p.name).st_uid
        except FileNotFoundError:
            return None

    def renumber(self, p, why: str) -> None:
        """Give pending/<p.name> a fresh id: its own is someone else's."""
        self.cache.pop(p.name, None)
        target = self.rename_with_new_id(p.name, min(p.priority, spoolmod.MAX_PRIORITY))
        if target is not None:
            log.warning("pending/%s: %s; now job %d (%s)", p.name, why, target.job_id,
                        target.name)

    def name_foreign(self, names: list, now: float) -> None:
        """Give files dropped without an id one, by renaming them (content kept)."""
        for p in names:
            if p.has_id:
                continue
            job = self.load_pending(p.name, now)
            if job is None:
                continue
            if isinstance(job, Slim) and job.prio is not None and not p.name[0].isdigit():
                prio = job.prio
            else:
                prio = p.priority if p.priority <= MAX_PRIORITY else DEFAULT_PRIORITY
            target = self.rename_with_new_id(p.name, prio)
            if target is None:
                continue
            new_id = target.job_id
            log.info("pending/%s: dropped without an id; now job %d (%s)", p.name, new_id,
                     target.name)
            if isinstance(job, str):
                self.d.guard(new_id, self.d.jobs.reject_file, target, job, p.name)
            else:
                self.cache.pop(p.name, None)

    def rename_with_new_id(self, name: str, prio: int):
        """pending/<name> -> pending/<prio>-<fresh id>.yaml, never over another file."""
        while True:
            new_id = self.spool.allocate_ids(1)
            target = spoolmod.PendingName(prio, new_id, spoolmod.pending_name(prio, new_id))
            if self.shared:  # the id is the file owner's, as if its gsub had taken it
                with contextlib.suppress(FileNotFoundError):
                    owner = os.lstat(self.spool.pending / name).st_uid
                    os.chown(self.spool.state_ids / str(new_id), owner, -1,
                             follow_symlinks=False)
            try:
                spoolmod.move_noreplace(self.spool.pending / name, self.spool.pending / target.name)
                self.gone.add(name)
                self.touched.add(target.name)  # not in the listing yet: list again
                return target
            except FileExistsError:
                continue  # someone wrote that name by hand: take the next id
            except FileNotFoundError:
                return None

    def leave(self, p) -> None:
        """Note that pending/<p.name> is being moved out by us. Its cache entry
        goes at once: a new file under the same name is a first sight."""
        self.gone.add(p.name)
        self.cache.pop(p.name, None)
        if self.pending_ids.get(p.job_id) is p:
            del self.pending_ids[p.job_id]
        if self.index is not None:
            self.index.discard(p.job_id)

    def find_pending(self, job_id: int):
        """The pending name of ``job_id``: from the last listing if it is still
        there (a gkill costs no re-listing of a long queue), else listed afresh."""
        p = self.pending_ids.get(job_id)
        if p is not None and os.path.lexists(self.spool.pending / p.name):
            return p
        return next((q for q in self.spool.list_pending() if q.job_id == job_id), None)


@dataclass(frozen=True, slots=True)
class Taken:
    """A pending file whose name carries an id that is not its to use."""

    why: str


@dataclass(frozen=True, slots=True)
class Slim:
    """What the daemon keeps of a pending file between passes: a few hundred
    bytes, not the parsed job (whose environment alone can be kilobytes)."""

    req: Request
    prio: int | None  # the file's own `priority:` field, for files dropped without one
    uid: int  # who the job runs as (``owner_of``: the kernel's word, not a field)

def _slim(job, p, default_limit: float | None, st: os.stat_result) -> Slim:
    uid = owner_of(st.st_uid, job)
    req = request_of(job, p.job_id if p else 0, default_limit, owner=uid)
    return Slim(req, job.priority if "priority" in job.data else None, uid)
