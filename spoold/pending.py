"""The daemon's view of pending/: which files are jobs, in queue order.

Owns: the mirror of pending/ (one small entry per file read, by name), the
queue index the scheduler reads (``fairshare.QueueIndex``, kept up to date
one name at a time), naming files dropped without an id (in batches), the id
rule and the pending caps.

Invariants:
- Everything here is a cache of the folder: dropping it loses nothing (the
  next full pass lists and reads pending/ again). Events only mark names as
  touched, and a pass looks at those names only: one event costs one name,
  not the queue. Since inotify can drop events, and no event tells that a
  name left by a rename (watch.py), each full pass lists pending/ (names that
  came or went unseen) and lstats a slice of the mirror (files changed in
  place unseen), so every entry is checked again within a few; and a new
  name whose id a vanished name held (gprio's rename) takes over at once.
- Reading is budgeted (READ_SLICE_S a pass, in queue order), and so is
  naming dropped files (``naming``: a batch a pass): a daemon
  started on 100,000 files, or 20,000 dropped ones, schedules at once.
- A name seen for the first time is admitted only if its id is the file's
  to use (``id_taken``: at most MAX_ID, in no other folder or pending name,
  and in a shared spool its ``state/ids`` marker is the file owner's);
  otherwise it is renamed to a fresh id, never run under the taken one.
- A batch of dropped files is renamed, then pending/ is fsynced once, and
  only then are the new names acted on; one log line names the batch.
- Who a job runs as is ``owner_of`` the file, decided by the kernel.
- Moves out of pending/ are the daemon's; this class only renames within
  pending/ (never over an existing name) and remembers what left (``gone``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from queue import Empty, SimpleQueue

from . import job as jobmod
from . import runner
from . import spool as spoolmod
from .fairshare import ID_BITS, QueueIndex, effective_priority
from .naming import USED_SNAPSHOT, Namer
from .policy import DIR_SETTLE_S
from .records import owner_of
from .scheduler import Request, request_of
from .spool import DEFAULT_PRIORITY, BadFile, PendingName, parse_pending_name

log = logging.getLogger("spoold")

PARSE_BUDGET = 2000  # pending files read per pass at most, and as many as take
READ_SLICE_S = 0.05  # about this long: the rest wait for the next pass
VERIFY_SHARE = 16  # each full pass lstats 1/16 of the mirror (PARSE_BUDGET names at least)
LIST_SKIPS = 5  # full passes in a row that may skip listing an unchanged pending/
SETTLE_S = 2.0  # an in-place write counts as finished after this long unchanged


class PendingQueue:
    def __init__(self, d):
        self.d = d  # the daemon: its runs (ids in flight), guard, shares and jobs
        self.spool = d.spool
        self.o = d.o
        self.shared = d.shared
        self.uid = d.uid
        self.pdir = str(self.spool.pending)
        self.cache: dict[str, Slim | Bad] = {}  # name -> what reading it gave
        self.ids: dict[int, str] = {}  # id -> the read name that has it (first seen wins)
        self.unread: list[str] = []  # listed names with an id not read yet, last first
        self.unread_ids: dict[int, str] = {}  # id -> the first unread name with it
        self.foreign: dict[str, None] = {}  # names without an id, to be named
        self.backlog: set[str] = set()  # touched names over this pass's budget
        self.waiting: set[str] = set()  # names still being written: look again soon
        self.rejects: set[str] = set()  # read names that are not valid jobs, until they leave
        self.dups: set[str] = set()  # names whose id a read name of another owner holds
        self.closed: set[str] = set()  # names closed after writing
        self.gone: set[str] = set()  # names we moved out of pending/ since the last full pass
        self.touched: set[str] = set()  # names events reported since the last pass
        # The watcher thread only puts (name, kind) here; the loop drains it,
        # so no event is lost between two threads sharing a set.
        self.events: SimpleQueue = SimpleQueue()
        self.index = QueueIndex(self._request)  # the queue the scheduler reads
        self.counts: Counter = Counter()  # jobs in the index per uid (--max-pending-per-user)
        self.specs: dict[Request, Request] = {}  # one shared Request (id 0) per kind of job
        self.overrides: dict[int, int] = {}  # root's priority overrides, as last read
        self.policy_gen = -1
        self.usage: dict[int, float] | None = None  # fair share: uid -> decayed GPU-seconds
        self.used: dict[int, str] | None = None  # id -> folder, listed once for a big pass
        self.verify: list[str] = []  # names the full passes still have to lstat
        self.listed = False
        self.dir_key: tuple | None = None  # pending/'s (inode, mtime) when last listed
        self.skips = 0
        self.reads = self.limit = 0  # files read so far; where this pass's budget ends
        self.until = 0.0  # ... or when (time.monotonic())
        self.top = self.hint = 0
        self.not_jobs: set[str] = set()  # names in pending/ that are never jobs, as last seen
        self.pending_ids = _PendingIds(self)
        self.namer = Namer(self)
        self.by_id = _Indexed(self)

    # ---- what the daemon reads -----------------------------------------------------
    @property
    def unsettled(self) -> bool:
        """A file is still being written: look again soon."""
        return bool(self.waiting)

    @property
    def unparsed(self) -> int:
        """Work left over the per-pass budgets: the next pass should come at once."""
        return len(self.unread) + len(self.foreign) + len(self.backlog)

    @property
    def names(self) -> range:
        """As many items as job files in pending/ (callers count it with len)."""
        return range(len(self.cache) + len(self.unread) + len(self.foreign))

    def owners(self) -> set[int]:
        """uids with a job in the queue."""
        return self.index.owners()

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
        """Bring the mirror and the index up to date; return [(PendingName,
        reason)] of files that are not valid jobs (the daemon rejects them)."""
        self.drain()
        touched = self.touched | self.backlog | self.waiting
        self.touched, self.backlog, self.waiting = set(), set(), set()
        if full or not self.listed:
            self.gone = set()  # bounded; an event still queued for one costs an lstat
            self.relist()
        if self.shared and (full or touched):
            self.reprioritize()
        self.limit, self.until = self.reads + PARSE_BUDGET, time.monotonic() + READ_SLICE_S
        for name in touched:
            self.look(name, now)
        self.read_unread(now)
        self.namer.name_dropped(now)  # after the reads: its own slice of the pass
        if full:
            self.verify_slice(now)
        if self.shared and self.o.fairshare_halflife > 0:
            self.usage = self.index.usage = self.d.shares.usage(now, full)
        if self.shared and self.top > self.hint:
            self.hint = self.top
            self.spool.raise_hint(self.hint)  # submitters start probing markers from here
        return [(parse_pending_name(n), self.cache[n].why) for n in self.rejects]

    # ---- keeping the mirror ----------------------------------------------------------
    def relist(self) -> None:
        """List pending/: names that came or went without an event. Skipped
        while the folder's mtime stays as it was at a listing when it was
        already DIR_SETTLE_S old (a name added or removed moves it), but not
        more than LIST_SKIPS full passes in a row (mtimes of network file
        systems come from another clock)."""
        st = os.stat(self.pdir)
        key = (st.st_ino, st.st_mtime_ns)
        if key == self.dir_key and self.skips < LIST_SKIPS:
            self.skips += 1
            return
        self.dir_key = key if time.time() - st.st_mtime > DIR_SETTLE_S else None
        self.skips = 0
        others, new, known = set(), [], 0
        cache = self.cache
        listing = os.listdir(self.pdir)
        for name in listing:
            if name in cache:
                known += 1
                continue
            p = parse_pending_name(name)
            if p is None:
                if not name.startswith("."):
                    others.add(name)
            elif p.has_id:
                new.append(p)
            else:
                self.foreign.setdefault(name)
        for name in others - self.not_jobs:
            self.not_a_job(name)
        self.not_jobs = others
        if known < len(cache):  # some left without an event
            listed = set(listing)
            for name in [n for n in cache if n not in listed]:
                self.forget(name)
        del listing
        new.sort()
        self.unread = [p.name for p in reversed(new)]
        self.unread_ids = {}
        for p in new:  # one name per id: the first in queue order
            self.unread_ids.setdefault(p.job_id, p.name)
            if self.top < p.job_id <= spoolmod.MAX_ID:
                self.top = p.job_id
        self.closed = {n for n in self.closed if os.path.lexists(self.path(n))}
        self.listed = True
        if len(self.specs) > 1024:  # kinds of jobs no longer pending: let them go
            self.specs = {s.req: s.req for s in cache.values() if isinstance(s, Slim)}

    def look(self, name: str, now: float) -> None:
        """Bring one name up to date: read it if new or changed, index it."""
        p = parse_pending_name(name)
        if p is None:
            if name not in self.not_jobs and not name.startswith(".") \
                    and os.path.lexists(self.path(name)):
                self.not_jobs.add(name)
                self.not_a_job(name)
            return
        if not p.has_id:
            if os.path.lexists(self.path(name)):
                self.foreign.setdefault(name)
            else:
                self.foreign.pop(name, None)
            return
        if name not in self.cache and self.spent():
            self.backlog.add(name)  # over this pass's budget
            return
        self.admit(p, self.load_pending(name, now))

    def spent(self) -> bool:
        """This pass has read its share: the rest waits for the next pass."""
        return self.reads >= self.limit or time.monotonic() > self.until

    @staticmethod
    def not_a_job(name: str) -> None:  # said once per name, not each pass
        log.warning("pending/%s: not a job file name (a job is NNNN-NAME.yaml or NAME.yaml; "
                    "dot files are skipped); ignored", name)

    def read_unread(self, now: float) -> None:
        """Read listed names not read yet, in queue order, within the budget."""
        if not self.unread or self.spent():
            return  # (the names touched in this pass took its share)
        if min(len(self.unread), self.limit - self.reads) > USED_SNAPSHOT:
            self.used = self.namer.used_ids()
            # Listing the final folders is this pass's overhead, not its reading
            # (with --keep's records, it alone could spend the slice, every pass).
            self.until = max(self.until, time.monotonic() + READ_SLICE_S)
        try:
            while self.unread and not self.spent():
                name = self.unread.pop()
                if name not in self.gone:
                    self.admit(parse_pending_name(name), self.load_pending(name, now))
        finally:
            self.used = None

    def verify_slice(self, now: float) -> None:
        """lstat the next slice of the mirror: changes whose events were lost."""
        if not self.verify:
            self.verify = list(self.cache)
        n = max(PARSE_BUDGET, len(self.cache) // VERIFY_SHARE)
        chunk = self.verify[-n:]
        del self.verify[-n:]
        for name in chunk:
            hit = self.cache.get(name)
            try:
                same = hit is not None and hit.key == self.stat_key(os.lstat(self.path(name)))
            except FileNotFoundError:
                same = False
            if hit is not None and not same:
                self.look(name, now)

    def admit(self, p: PendingName, job) -> None:
        """Act on what ``load_pending`` gave for pending/<p.name>."""
        name = p.name
        if job is None:
            if name not in self.waiting:
                self.forget(name)  # gone
        elif isinstance(job, Taken):
            self.d.guard(p.job_id, self.renumber, p, job.why)
        elif isinstance(job, str):
            self.rejects.add(name)
        elif not job.order:
            self.rejects.discard(name)  # rewritten as a valid job before it was refused
            holder = self.ids.setdefault(p.job_id, name)
            if holder != name and not os.path.lexists(self.path(holder)):
                # Renamed within pending/ (gprio): no event says the old name left.
                self.forget(holder)
                holder = self.ids.setdefault(p.job_id, name)
            if holder != name:
                self.dups.add(name)  # waits until the name holding the id leaves
                return
            if self.unread_ids.get(p.job_id) == name:
                del self.unread_ids[p.job_id]
            full_why = self.queue_full(job.uid)
            if full_why:
                self.cache[name] = Bad(job.key, full_why)
                self.rejects.add(name)
            else:
                self.index_add(p, job)

    def index_add(self, p: PendingName, slim: Slim) -> None:
        shares = self.d.shares
        prio = effective_priority(p.priority, slim.uid, self.shared,
                                  self.shared and shares.is_admin(slim.uid),
                                  self.overrides.get(p.job_id), DEFAULT_PRIORITY)
        slim.order = QueueIndex.entry(prio, p.job_id)
        self.index.add(_group(slim.req), slim.uid, slim.order)
        self.counts[slim.uid] += 1
        if self.top < p.job_id:
            self.top = p.job_id

    def index_remove(self, slim: Slim) -> None:
        self.index.remove(_group(slim.req), slim.uid, slim.order)
        self.counts[slim.uid] -= 1
        if not self.counts[slim.uid]:
            del self.counts[slim.uid]
        slim.order = 0

    def forget(self, name: str) -> None:
        """Drop pending/<name> from the mirror and the index."""
        hit = self.cache.pop(name, None)
        if isinstance(hit, Slim) and hit.order:
            self.index_remove(hit)
        for s in (self.rejects, self.closed, self.dups, self.waiting):
            s.discard(name)
        p = parse_pending_name(name)
        if p is None or not p.has_id:
            return
        if self.unread_ids.get(p.job_id) == name:
            del self.unread_ids[p.job_id]
        if self.ids.get(p.job_id) == name:
            del self.ids[p.job_id]
            for d in [d for d in self.dups if parse_pending_name(d).job_id == p.job_id]:
                self.dups.discard(d)  # its id is free now: a first sight again
                self.cache.pop(d, None)
                self.touched.add(d)

    def reprioritize(self) -> None:
        """Re-key the jobs whose effective priority changed: root's overrides
        in state/priority/, or who is an admin (the policy file)."""
        shares = self.d.shares
        new = shares.overrides()
        if shares.generation != self.policy_gen:
            self.policy_gen, changed = shares.generation, list(self.ids)
        else:
            changed = [i for i in new.keys() | self.overrides.keys()
                       if new.get(i) != self.overrides.get(i)]
        self.overrides = new
        for job_id in changed:
            name = self.ids.get(job_id)
            slim = self.cache.get(name) if name else None
            if isinstance(slim, Slim) and slim.order:
                self.index_remove(slim)
                self.index_add(parse_pending_name(name), slim)

    def path(self, name: str) -> str:
        return os.path.join(self.pdir, name)

    @staticmethod
    def stat_key(st: os.stat_result) -> int:
        """(inode, mtime, size, mode) in one int: what says a file is unchanged."""
        return (((st.st_ino << 64 | st.st_mtime_ns & _M64) << 64 | st.st_size) << 32) | st.st_mode

    def _request(self, job_id: int) -> Request:
        return dataclasses.replace(self.cache[self.ids[job_id]].req, id=job_id)

    # ---- reading one file ------------------------------------------------------------
    def load_pending(self, name: str, now: float, trust: bool = False):
        """What the queue needs of a pending file (``Slim``), a reason string if it
        is bad, ``Taken``, or None if it is gone or not complete yet (then it is
        in ``waiting``). ``trust``: skip even the lstat if it was read before."""
        hit = self.cache.get(name)
        if trust and hit is not None:
            return hit.value
        path = self.path(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        key = self.stat_key(st)
        if hit is not None and hit.key == key:
            return hit.value
        self.reads += 1
        p = parse_pending_name(name)
        if p is not None and p.has_id and (hit is None or hit.key >> _INO_SHIFT != st.st_ino):
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
                    self.waiting.add(name)
                    return None
                raw = spoolmod.read_untrusted(path)
            job = self._slim(jobmod.parse_head(raw), key, st)
            if not self.owner_ok(st.st_uid):
                job = f"file owned by uid {st.st_uid}; this spoold runs as uid {self.uid} " \
                      "and runs only its own user's files"
        except spoolmod.StillOpen:
            self.waiting.add(name)
            return None  # being written in place: its close wakes us
        except (BadFile, jobmod.JobError) as e:
            job = str(e)
        except FileNotFoundError:
            return None
        if isinstance(hit, Slim) and hit.order:  # changed under the index: out, then in again
            self.index_remove(hit)
            self.touched.add(name)
        self.cache[name] = job if isinstance(job, Slim) else Bad(key, job)
        return job

    def _slim(self, job, key: int, st: os.stat_result) -> Slim:
        uid = owner_of(st.st_uid, job)
        req = request_of(job, 0, self.o.default_time_limit, owner=uid)
        return Slim(key, self.specs.setdefault(req, req),
                    job.priority if "priority" in job.data else None)

    def owner_ok(self, uid: int) -> bool:
        return self.shared or uid == self.uid

    def queue_full(self, uid: int) -> str | None:
        """Why one more pending job of ``uid`` is refused (--max-pending is
        counted per user too, so that one user cannot fill everyone's queue)."""
        total = len(self.index)
        if total >= self.o.max_pending:
            return f"queue full: {total} jobs pending (spoold --max-pending {self.o.max_pending})"
        if self.shared and self.counts[uid] >= self.o.max_pending_per_user:
            return (f"queue full: {runner.creds_for(uid).name} has {self.counts[uid]} jobs "
                    f"pending (spoold --max-pending-per-user {self.o.max_pending_per_user})")
        return None

    # ---- the id rule and renames (naming.Namer) ---------------------------------------
    def id_taken(self, p, st: os.stat_result) -> str | None:
        return self.namer.id_taken(p, st)

    def rename_with_new_id(self, name: str, prio: int):
        return self.namer.rename_with_new_id(name, prio)

    def renumber(self, p, why: str) -> None:
        self.namer.renumber(p, why)

    # ---- moves out of pending/ ---------------------------------------------------------
    def leave(self, p) -> None:
        """Note that pending/<p.name> is being moved out by us. Its entry goes
        at once: a new file under the same name is a first sight."""
        self.gone.add(p.name)
        self.forget(p.name)

    def find_pending(self, job_id: int):
        """The pending name of ``job_id``: from the mirror if it is still there
        (a gkill costs no re-listing of a long queue), else listed afresh."""
        name = self.ids.get(job_id) or self.unread_ids.get(job_id)
        if name is not None and os.path.lexists(self.path(name)):
            return parse_pending_name(name)
        return next((q for q in self.spool.list_pending() if q.job_id == job_id), None)


class _PendingIds(Mapping):
    """id -> PendingName of the pending names known to have it (read or listed)."""

    def __init__(self, q: PendingQueue):
        self.q = q

    def __getitem__(self, job_id: int) -> PendingName:
        name = self.q.ids.get(job_id) or self.q.unread_ids.get(job_id)
        if name is None:
            raise KeyError(job_id)
        return parse_pending_name(name)

    def __contains__(self, job_id) -> bool:
        return job_id in self.q.ids or job_id in self.q.unread_ids

    def __iter__(self):
        return iter(self.q.ids.keys() | self.q.unread_ids.keys())

    def __len__(self) -> int:
        return len(self.q.ids.keys() | self.q.unread_ids.keys())


class _Indexed(Mapping):
    """id -> (PendingName, Slim, effective priority) of the jobs in the queue."""

    def __init__(self, q: PendingQueue):
        self.q = q

    def __getitem__(self, job_id: int) -> tuple:
        name = self.q.ids.get(job_id)
        slim = self.q.cache.get(name) if name is not None else None
        if not isinstance(slim, Slim) or not slim.order:
            raise KeyError(job_id)
        return parse_pending_name(name), slim, slim.order >> ID_BITS

    def __iter__(self):
        return (i for i in list(self.q.ids) if i in self)

    def __len__(self) -> int:
        return len(self.q.index)


@dataclass(frozen=True, slots=True)
class Taken:
    """A pending file whose name carries an id that is not its to use."""

    why: str


class Slim:
    """What the daemon keeps of a pending file between passes: some 60 bytes
    and a shared request, not the parsed job (whose environment alone can be
    kilobytes). ``req`` is shared by every job of the same kind, so its id is
    0 (the name carries the id); ``order`` is its index entry, 0 if none."""

    __slots__ = ("key", "req", "prio", "order")

    def __init__(self, key: int, req: Request, prio: int | None):
        self.key = key  # stat_key of the file as read
        self.req = req
        self.prio = prio  # the file's own `priority:` field, for files dropped without one
        self.order = 0

    @property
    def uid(self) -> int:
        """Who the job runs as (``owner_of``: the kernel's word, not a field)."""
        return self.req.owner

    @property
    def value(self) -> Slim:
        return self


class Bad:
    """A pending file that is not a valid job, and why."""

    __slots__ = ("key", "why")

    def __init__(self, key: int, why: str):
        self.key, self.why = key, why

    @property
    def value(self) -> str:
        return self.why


_M64 = (1 << 64) - 1
_INO_SHIFT = 160


def _group(req: Request) -> tuple:
    """The index group of a request: its shape if plain, else one by one."""
    return req.shape if req.plain else ("other",)
