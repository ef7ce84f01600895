"""Fair share between users: decayed GPU usage, queue keys, limits, priority rights.

Owns: the rules that make one lab box fair. The functions are pure (records
and the clock in, numbers out), so the scheduler's property tests cover them;
``policy.Shares`` is the thin shell that reads the records they need.
``QueueIndex`` is ``queue_keys`` kept up to date one job at a time: the
daemon's queue, never re-keyed as a whole when one job comes or goes.

Rules (docs/scheduling.md has a worked example):
- A user's usage is GPU-seconds, each second weighted 2^(-age/half-life):
  finished jobs from their records, running jobs up to now. A half-life of 0
  turns fair share off.
- Between pending jobs of the same priority, the queue goes by each user's
  usage plus one GPU-hour (``QUEUE_COST_S``) for each of that user's pending
  jobs ahead of this one: a user with no usage goes first, two users with the
  same usage alternate, and within one user the order stays priority, then
  submission.
- In a shared spool an ordinary user may only lower a job's priority below
  the default (a larger number, as with nice); root, admins named in the
  policy and root's overrides in ``state/priority/`` may raise it.
- Per-user caps on GPUs and CPUs held at once: ``--max-gpus-per-user`` /
  ``--max-cpus-per-user``, overridden per user or group by the policy file.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

QUEUE_COST_S = 3600.0  # what each pending job ahead counts, in GPU-seconds
DEFAULT_HALFLIFE_S = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Limit:
    """Caps for one user (None: no cap); ``name`` is used in wait reasons."""

    name: str
    gpus: int | None = None
    cpus: int | None = None


def weight_integral(start: float, end: float, base: float, halflife: float) -> float:
    """∫ 2^((t - base)/halflife) dt over [start, end], in units of halflife/ln 2.
    Usage at time ``now`` is this times 2^(-(now - base)/halflife) · halflife/ln 2:
    the sum over jobs can be kept once and scaled, never recomputed."""
    if end <= start:
        return 0.0
    return 2.0 ** ((end - base) / halflife) - 2.0 ** ((start - base) / halflife)


def decayed(total: float, now: float, base: float, halflife: float) -> float:
    """GPU-seconds (decayed to ``now``) from a sum of ``gpus * weight_integral``."""
    return total * 2.0 ** (-(now - base) / halflife) * halflife / math.log(2)


def job_usage(gpus: float, start: float | None, end: float, now: float,
              halflife: float) -> float:
    """Decayed GPU-seconds of one job that held ``gpus`` from ``start`` to ``end``."""
    if not gpus or start is None or halflife <= 0:
        return 0.0
    if math.isinf(halflife):  # "infinite": plain GPU-seconds, never decayed
        return gpus * max(0.0, min(end, now) - start)
    return decayed(gpus * weight_integral(start, min(end, now), now, halflife), now, now,
                   halflife)


def queue_keys(jobs: Iterable[tuple[int, int, int]], usage: Mapping[int, float]) -> dict:
    """Fair-share sort keys for pending jobs given in queue order as
    (priority, owner, id): {id: (priority, share, id)}, where share is the
    owner's usage plus QUEUE_COST_S for each of their jobs ahead."""
    ahead: dict[int, int] = {}
    keys = {}
    for prio, owner, job_id in jobs:
        n = ahead.get(owner, 0)
        ahead[owner] = n + 1
        keys[job_id] = share_key(prio, usage.get(owner, 0.0), n, job_id)
    return keys


def share_key(prio: int, owner_usage: float, ahead: int, job_id: int) -> tuple:
    """A pending job's place: its priority, then its owner's usage plus
    QUEUE_COST_S for each of the owner's jobs ahead of it, then its id (the
    one formula of ``queue_keys``, which gstat uses, and ``QueueIndex``)."""
    return (prio, owner_usage + ahead * QUEUE_COST_S, job_id)


def effective_priority(prio: int, owner: int, shared: bool, admin: bool,
                       override: int | None, default: int) -> int:
    """The priority a job is scheduled at. Only root's override, an admin's
    own file, or any file of a private spool may go below (ahead of) the default."""
    if override is not None:
        return override
    if not shared or owner == 0 or admin or prio >= default:
        return prio
    return default


def over_limit(limit: Limit | None, held_gpus: int, held_cpus: int, gpus: int,
               cpus: int) -> str | None:
    """Why a job of ``gpus``/``cpus`` must wait for its owner's caps, or None."""
    if limit is None:
        return None
    if limit.gpus is not None and gpus and held_gpus + gpus > limit.gpus:
        return (f"{limit.name} holds {held_gpus} of {limit.gpus} GPUs allowed per user "
                "(--max-gpus-per-user, or the policy file)")
    if limit.cpus is not None and cpus and held_cpus + cpus > limit.cpus:
        return (f"{limit.name} holds {held_cpus} of {limit.cpus} CPUs allowed per user "
                "(--max-cpus-per-user, or the policy file)")
    return None


ID_BITS = 32  # an index entry is ``priority << ID_BITS | id`` (ids are at most MAX_ID < 2**32)


class QueueIndex:
    """The pending queue in ``queue_keys`` order, kept up to date one job at a time.

    Jobs are held in groups, one per (shape, owner), each a sorted list of
    entries ``priority << ID_BITS | id`` (one int per job: no per-job tuple or
    request is kept). Iterating merges the groups by queue key, computed only
    for the group heads it looks at: (priority, id) without fair share; with
    ``usage`` set (uid -> decayed GPU-seconds), ``queue_keys``'s key, whose
    count of the owner's jobs ahead is a bisect in each of the owner's groups.
    ``lookup(id)`` gives what is yielded (the scheduler's Request).
    ``skip_shape`` drops every group of that shape for the rest of one
    iteration: the scheduler found that it does not fit, so a queue of 100,000
    jobs of a few shapes costs a few steps. Jobs that are not interchangeable
    with others of their shape are given the shape ``("other",)`` by the
    caller and are yielded one by one. Not to be changed while iterated."""

    def __init__(self, lookup: Callable[[int], object]):
        self.lookup = lookup
        self.usage: Mapping[int, float] | None = None  # None: fair share off
        self._groups: dict[tuple, list[int]] = {}  # (shape, owner) -> sorted entries
        self._of_owner: dict[int, list[tuple]] = {}  # owner -> keys of its groups
        self._skipped: set = set()
        self._n = 0

    @staticmethod
    def entry(prio: int, job_id: int) -> int:
        return prio << ID_BITS | job_id

    def add(self, shape: tuple, owner: int, entry: int) -> None:
        gk = (shape, owner)
        g = self._groups.get(gk)
        if g is None:
            g = self._groups[gk] = []
            self._of_owner.setdefault(owner, []).append(gk)
        if not g or entry > g[-1]:
            g.append(entry)  # the common case: jobs come in queue order
        else:
            bisect.insort(g, entry)
        self._n += 1

    def remove(self, shape: tuple, owner: int, entry: int) -> bool:
        gk = (shape, owner)
        g = self._groups.get(gk)
        i = bisect.bisect_left(g, entry) if g else 0
        if not g or i == len(g) or g[i] != entry:
            return False
        del g[i]
        self._n -= 1
        if not g:
            del self._groups[gk]
            mine = self._of_owner[owner]
            mine.remove(gk)
            if not mine:
                del self._of_owner[owner]
        return True

    def __len__(self) -> int:
        return self._n

    def owners(self) -> set[int]:
        return set(self._of_owner)

    def skip_shape(self, shape: tuple) -> None:
        self._skipped.add(shape)

    def key(self, owner: int, entry: int):
        """The entry's queue key (``queue_keys``'s, with fair share)."""
        if self.usage is None:
            return entry  # sorts as (priority, id)
        ahead = sum(bisect.bisect_left(self._groups[gk], entry) for gk in self._of_owner[owner])
        return share_key(entry >> ID_BITS, self.usage.get(owner, 0.0), ahead, entry & _ID_MASK)

    def __iter__(self):
        self._skipped = set()
        groups = list(self._groups.items())
        heap = [(self.key(gk[1], g[0]), n, 0) for n, (gk, g) in enumerate(groups)]
        heapq.heapify(heap)
        while heap:
            _, n, i = heapq.heappop(heap)
            (shape, owner), g = groups[n]
            if shape in self._skipped:
                continue  # this shape did not fit: none of its plain jobs will
            yield self.lookup(g[i] & _ID_MASK)
            if i + 1 < len(g):
                heapq.heappush(heap, (self.key(owner, g[i + 1]), n, i + 1))


_ID_MASK = (1 << ID_BITS) - 1
