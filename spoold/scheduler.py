"""Scheduling policy as one pure function: no I/O, no clock, no globals.

``schedule(queue, running, resources, now, deps)`` says which pending jobs
start now and on which GPUs and CPUs, which are refused or cancelled at once,
and why each other job waits. The daemon applies the decision; ``gstat`` calls
the same function to explain the queue, so both always agree.

Policy (docs/scheduling.md explains it with an example):
- Queue order is (priority, id). Held jobs, jobs whose dependencies have not
  succeeded, jobs pinned to another host and throttled array elements are
  skipped; they block no one.
- Exclusivity: a GPU held by one of our jobs is never offered again, whatever
  its reading says; readings can only add "busy".
- EASY backfill: the first job that does not fit gets a reservation: the
  earliest time ``T`` at which it fits if running jobs end at their time limits,
  and the GPUs ``R`` it will take then. A later job may start now only if it
  fits and either provably ends by ``T`` (its own time limit) or uses no GPU in
  ``R`` and only CPUs/memory left over at ``T``. Unknown end times make ``T``
  infinite, which allows only the second kind.
- Jobs of a shape that did not fit are skipped without another try, so a long
  queue of one shape cannot hide later jobs of other shapes (a queue with
  ``skip_shape``, the daemon's ``fairshare.QueueIndex``, drops them wholesale).
- GPU choice keeps aligned power-of-two blocks (NVLink pairs, quads on 8-GPU
  boards, by NVML index) whole: best-fit block first, then tightest GPU.
- ``gpu_mem`` jobs share one GPU by booked memory and never share with a
  whole-GPU job.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .fairshare import Limit, over_limit
from .job import DEFAULT_GPUS

INF = math.inf


@dataclass(frozen=True, slots=True)
class Request:
    """A pending job, as much of it as the policy needs."""

    id: int
    gpus: int = DEFAULT_GPUS
    gpu_mem: int = 0  # MiB; > 0 means a slice of one GPU
    cpus: int = 0
    mem: int = 0  # MiB
    time_limit: float | None = None
    after: tuple[int, ...] = ()
    held: bool = False
    array_id: int = 0
    array_limit: int = 0
    pin_host: str | None = None
    owner: int = 0  # uid of the file's owner: an array is one user's (owner, array_id)

    @property
    def shape(self) -> tuple:
        return (self.gpus, self.gpu_mem, self.cpus, self.mem, self.time_limit)

    @property
    def plain(self) -> bool:
        """Interchangeable with any other plain job of its shape."""
        return not (self.after or self.held or self.array_limit or self.pin_host)


@dataclass(frozen=True)
class Running:
    """A running job's bookings."""

    id: int
    gpus: tuple[int, ...] = ()
    gpu_mem: int = 0
    cpus: tuple[int, ...] = ()
    mem: int = 0
    ends_at: float | None = None  # started_at + time_limit; None = unknown
    array_id: int = 0
    owner: int = 0


def request_of(job, job_id: int, default_limit: float | None = None,
               owner: int = 0) -> Request:
    """The Request for a parsed job (anything with job.py's Job attributes);
    ``owner`` is the uid the kernel says owns the file, never a field."""
    return Request(id=job_id, gpus=job.gpus, gpu_mem=job.gpu_mem, cpus=job.cpus, mem=job.mem,
                   time_limit=job.time_limit or default_limit, after=tuple(job.after),
                   held=job.hold, array_id=job.get("array_id") or 0,
                   array_limit=job.get("array_limit") or 0, pin_host=job.get("pin_host"),
                   owner=owner)


def booking_key(rec: dict) -> tuple:
    """The fields of a record ``running_of`` reads: its booking changes only
    when these do (``lifecycle.Run.booking`` keeps it until then)."""
    return (rec.get("started_at"), rec.get("time_limit"), tuple(rec.get("assigned_gpus") or ()),
            tuple(rec.get("assigned_cpus") or ()), rec.get("gpu_mem"), rec.get("mem"),
            rec.get("array_id"), rec.get("uid"))


def running_of(job_id: int, rec: dict) -> Running:
    """The bookings of a running job, from its record."""
    limit, started = rec.get("time_limit"), rec.get("started_at")
    return Running(id=job_id, gpus=tuple(rec.get("assigned_gpus") or ()),
                   gpu_mem=rec.get("gpu_mem") or 0, cpus=tuple(rec.get("assigned_cpus") or ()),
                   mem=rec.get("mem") or 0, ends_at=started + limit if limit and started else None,
                   array_id=rec.get("array_id") or 0, owner=rec.get("uid") or 0)


@dataclass(frozen=True)
class Gpu:
    index: int
    busy: str | None = None  # why the reading says busy; None if idle
    memory_total: int | None = None
    memory_used: int | None = None
    failed: bool = False  # reading failed / N/A: never used, not even for slices


@dataclass(frozen=True)
class Resources:
    gpus: tuple[Gpu, ...] = ()
    cpus: tuple[int, ...] = ()
    mem: int = 0
    limit: int = 8  # GPUs per job
    host: str | None = None
    paused: bool = False
    # Other live hosts on a shared spool: a job too big for this host but not
    # for one of them waits for them instead of being refused.
    peers: tuple[Resources, ...] = ()
    # Per-user caps (fairshare.Limit) by owner uid; an owner not in it has none.
    limits: Mapping[int, Limit] | None = None


@dataclass(frozen=True)
class Start:
    id: int
    gpus: tuple[int, ...]
    cpus: tuple[int, ...]


@dataclass
class Decision:
    start: list[Start] = field(default_factory=list)
    reject: dict[int, str] = field(default_factory=dict)  # -> failed/
    cancel: dict[int, str] = field(default_factory=dict)  # -> cancelled/ (dependency)
    wait: dict[int, str] = field(default_factory=dict)
    reservation: tuple[int, float, tuple[int, ...]] | None = None  # (job, T, R)


@dataclass(frozen=True)
class _Resv:
    job: int
    at: float
    gpus: frozenset[int]
    extra_cpus: int
    extra_mem: int


class _State:
    """Free resources during one pass; shrinks as jobs are started."""

    def __init__(self, res: Resources, running: list[Running]):
        self.res = res
        self.universe = max((g.index for g in res.gpus), default=-1) + 1
        self.gpu = {g.index: g for g in res.gpus}
        self.whole = {i for r in running if not r.gpu_mem for i in r.gpus}
        self.booked: Counter[int] = Counter()
        for r in running:
            if r.gpu_mem:
                for i in r.gpus:
                    self.booked[i] += r.gpu_mem
        used_cpus = {c for r in running for c in r.cpus}
        self.cpus = sorted(set(res.cpus) - used_cpus)
        self.mem = res.mem - sum(r.mem for r in running)
        self.arrays = Counter((r.owner, r.array_id) for r in running if r.array_id)
        self.held_gpus: Counter[int] = Counter()
        self.held_cpus: Counter[int] = Counter()
        for r in running:
            self.held_gpus[r.owner] += len(r.gpus)
            self.held_cpus[r.owner] += len(r.cpus)

    def idle_gpus(self) -> list[int]:
        """GPUs a whole-GPU job may take now."""
        return sorted(i for i, g in self.gpu.items()
                      if g.busy is None and i not in self.whole and not self.booked[i])

    def slice_free(self, i: int) -> int:
        g = self.gpu[i]
        if g.memory_total is None:
            return 0
        return g.memory_total - max(g.memory_used or 0, self.booked[i])

    def slice_gpus(self) -> list[int]:
        """GPUs a slice may go on: not held whole; idle, or already carrying slices."""
        return [i for i, g in self.gpu.items()
                if not g.failed and g.memory_total and i not in self.whole
                and (g.busy is None or self.booked[i])]

    def fit(self, req: Request, avoid: frozenset[int] = frozenset()):
        if req.cpus > len(self.cpus) or req.mem > self.mem:
            return None
        if req.gpu_mem:
            ok = [i for i in self.slice_gpus()
                  if i not in avoid and self.slice_free(i) >= req.gpu_mem]
            if not ok:
                return None
            # Best fit: fullest GPU that still fits; GPUs already shared first.
            gpus = (min(ok, key=lambda i: (not self.booked[i], self.slice_free(i), i)),)
        else:
            gpus = choose_gpus(req.gpus, [i for i in self.idle_gpus() if i not in avoid],
                               self.universe)
            if gpus is None:
                return None
        return gpus, tuple(self.cpus[:req.cpus])

    def take(self, req: Request, gpus: tuple[int, ...], cpus: tuple[int, ...]) -> None:
        if req.gpu_mem:
            for i in gpus:
                self.booked[i] += req.gpu_mem
        else:
            self.whole.update(gpus)
        self.cpus = [c for c in self.cpus if c not in cpus]
        self.mem -= req.mem
        if req.array_id:
            self.arrays[req.owner, req.array_id] += 1
        self.held_gpus[req.owner] += len(gpus)
        self.held_cpus[req.owner] += len(cpus)


def schedule(queue: Iterable[Request], running: Iterable[Running], res: Resources,
             now: float, deps: Mapping[int, str] | None = None,
             max_scan: int = 100_000) -> Decision:
    """The decision for this instant. ``deps`` maps job ids to their state
    ('pending', 'running', 'done', 'failed', 'cancelled'); ids absent from it
    do not exist. ``queue`` must be in queue order and may be lazy."""
    deps = deps or {}
    skip_shape = getattr(queue, "skip_shape", None)
    running = list(running)
    st = _State(res, running)
    d = Decision()
    resv: _Resv | None = None
    failed_shapes: set[tuple] = set()
    n_gpus = len(res.gpus)
    def capacity(req: Request) -> tuple[str, str] | None:
        why = _refusal(req, res, n_gpus)
        if not why:
            return None
        fits = [p.host for p in res.peers if not _refusal(req, p, len(p.gpus))]
        if fits:
            return "wait", f"too big for {res.host}; left for {', '.join(fits)}"
        return "reject", why

    for n, req in enumerate(queue):
        if n >= max_scan:
            break
        verdict = gate(req, res.host, deps, res.paused, st.arrays, capacity)
        if verdict:
            _note(d, req.id, verdict)
            continue
        capped = res.limits and over_limit(res.limits.get(req.owner), st.held_gpus[req.owner],
                                           st.held_cpus[req.owner], req.gpus, req.cpus)
        if capped:
            d.wait[req.id] = capped  # waits for its owner's own jobs: blocks no one
            continue
        if req.shape in failed_shapes:
            d.wait[req.id] = _behind(resv)
            continue
        if resv is None:
            got = st.fit(req)
            if got:
                st.take(req, *got)
                d.start.append(Start(req.id, *got))
                continue
            resv = _reserve(req, st, running, now)
            d.reservation = (resv.job, resv.at, tuple(sorted(resv.gpus)))
            d.wait[req.id] = _short_of(req, st) + (
                f"; reserved from {_when(resv.at, now)}" if resv.at < INF else "")
            failed_shapes.add(req.shape)
            if skip_shape:
                skip_shape(req.shape)
            continue
        ends_in_time = req.time_limit is not None and now + req.time_limit <= resv.at
        got = st.fit(req, avoid=resv.gpus)
        harmless = got is not None and req.cpus <= resv.extra_cpus and req.mem <= resv.extra_mem
        if not harmless and ends_in_time:
            got = st.fit(req)
            harmless = got is not None
        if harmless:
            st.take(req, *got)
            d.start.append(Start(req.id, *got))
            if not ends_in_time:
                resv = _Resv(resv.job, resv.at, resv.gpus, resv.extra_cpus - req.cpus,
                             resv.extra_mem - req.mem)
            continue
        failed_shapes.add(req.shape)
        if skip_shape:
            skip_shape(req.shape)
        d.wait[req.id] = _behind(resv)
    return d


def gate(req: Request, host: str | None, deps: Mapping[int, str], paused: bool,
         arrays: Mapping[tuple[int, int], int], capacity=None) -> tuple[str, str] | None:
    """Whether ``req`` may be placed at all now: None (ready), or (what, why)
    with what in 'wait', 'reject' (to failed/) or 'cancel' (to cancelled/).
    Everything but resources: the host it is pinned to, ``capacity`` (the
    caller's "could it ever fit here"), holds, dependencies, a paused queue
    and array throttles (``arrays``: running elements per (owner, array_id)).
    The SLURM bridge uses only this; ``schedule`` adds placement."""
    if req.pin_host and host and req.pin_host != host:
        return "wait", f"pinned to host {req.pin_host}"
    verdict = capacity(req) if capacity else None
    if verdict:
        return verdict
    if req.held:
        return "wait", "held (grelease to let it run)"
    dep_wait, dep_end = _dependencies(req, deps)
    if dep_end:
        return dep_end
    if dep_wait:
        return "wait", dep_wait
    if paused:
        return "wait", "queue paused (gresume to continue)"
    if req.array_id and req.array_limit and arrays.get((req.owner, req.array_id),
                                                       0) >= req.array_limit:
        return "wait", f"array {req.array_id}: {req.array_limit} already running"
    return None


def _note(d: Decision, job_id: int, verdict: tuple[str, str]) -> None:
    what, why = verdict
    {"wait": d.wait, "reject": d.reject, "cancel": d.cancel}[what][job_id] = why


def gate_only(queue: Iterable[Request], running: Iterable[Running], host: str | None,
              deps: Mapping[int, str], paused: bool, throttle_arrays: bool = True) -> Decision:
    """The decision where someone else places jobs (SLURM): every job the gate
    lets through starts, with no GPUs or CPUs chosen here. Without
    ``throttle_arrays`` an array's ``%N`` is the placer's (SLURM's
    ``--array=...%N``): its startable elements all start at once, but only
    while none started earlier still runs, as SLURM throttles each of its
    arrays apart."""
    arrays = Counter((r.owner, r.array_id) for r in running if r.array_id)
    d = Decision()
    for req in queue:
        verdict = gate(req, host, deps, paused, arrays if throttle_arrays else {})
        if not (verdict or throttle_arrays) and req.array_limit and \
                arrays[req.owner, req.array_id]:
            verdict = "wait", (f"array {req.array_id}: %{req.array_limit} holds per SLURM "
                               "array; waits for the one with its other elements to end")
        if verdict:
            _note(d, req.id, verdict)
            continue
        d.start.append(Start(req.id, (), ()))
        if req.array_id and throttle_arrays:
            arrays[req.owner, req.array_id] += 1
    return d


def _refusal(req: Request, res: Resources, n_gpus: int) -> str | None:
    if req.gpus > 0 and n_gpus == 0:
        return (f"asks for {req.gpus} GPU(s) but spoold manages none "
                "(no GPU found on this machine, or --gpus excluded all)")
    if req.gpus > n_gpus:
        return f"asks for {req.gpus} GPUs but spoold manages only {n_gpus}"
    if req.gpus > res.limit:
        return f"asks for {req.gpus} GPUs, over the limit of {res.limit} per job (spoold --limit)"
    if req.cpus > len(res.cpus):
        return f"asks for {req.cpus} CPUs but spoold hands out only {len(res.cpus)} (--cpus)"
    if req.mem > res.mem:
        return f"asks for {req.mem} MiB of memory but spoold hands out only {res.mem} (--mem)"
    if req.gpu_mem:
        biggest = max((g.memory_total or 0 for g in res.gpus), default=0)
        if biggest and req.gpu_mem > biggest:
            return f"asks for {req.gpu_mem} MiB of one GPU; the largest GPU has {biggest} MiB"
    return None


def _dependencies(req: Request, deps: Mapping[int, str]):
    """(wait reason or None, (kind, reason) to end the job or None)."""
    waiting = []
    for a in req.after:
        s = deps.get(a)
        if s is None:
            return None, ("reject", f"dependency {a} does not exist")
        if s in ("failed", "cancelled"):
            return None, ("cancel", f"dependency {a} {s}")
        if s != "done":
            waiting.append(a)
    if waiting:
        return "waiting for job " + ", ".join(map(str, waiting)), None
    return None, None


def _short_of(req: Request, st: _State) -> str:
    if req.cpus > len(st.cpus):
        return f"CPUs busy ({len(st.cpus)} of {req.cpus} free)"
    if req.mem > st.mem:
        return f"memory busy ({max(st.mem, 0)} of {req.mem} MiB free)"
    if req.gpu_mem:
        return f"no GPU has {req.gpu_mem} MiB free"
    return f"GPUs busy ({len(st.idle_gpus())} of {req.gpus} free)"


def _behind(resv: _Resv | None) -> str:
    return f"resources reserved for job {resv.job}" if resv else "resources busy"


def _when(t: float, now: float) -> str:
    return f"in {int(t - now)}s" if t > now else "now"


def _reserve(req: Request, st: _State, running: list[Running], now: float) -> _Resv:
    """Earliest time ``req`` fits if running jobs end at their limits, and what
    it takes then. Unknown ends sort last and make the time infinite."""
    # GPUs busy by someone else's load are assumed to stay busy; ours free up.
    external = {i for i, g in st.gpu.items()
                if g.failed or (g.busy is not None and i not in st.whole and not st.booked[i])}
    whole, booked = set(st.whole), Counter(st.booked)
    cpus, mem, at = len(st.cpus), st.mem, now

    def fits() -> frozenset[int] | None:
        if cpus < req.cpus or mem < req.mem:
            return None
        if req.gpu_mem:
            ok = [i for i, g in sorted(st.gpu.items()) if i not in external and i not in whole
                  and (g.memory_total or 0) - booked[i] >= req.gpu_mem]
            return frozenset(ok[:1]) if ok else None
        idle = [i for i in sorted(st.gpu) if i not in external and i not in whole
                and not booked[i]]
        pick = choose_gpus(req.gpus, idle, st.universe)
        return frozenset(pick) if pick is not None else None

    got = fits()
    for r in sorted(running, key=lambda r: (INF if r.ends_at is None else r.ends_at, r.id)):
        if got is not None:
            break
        at = INF if r.ends_at is None else max(r.ends_at, now)
        cpus, mem = cpus + len(r.cpus), mem + r.mem
        for i in r.gpus:
            if r.gpu_mem:
                booked[i] -= r.gpu_mem
            else:
                whole.discard(i)
        got = fits()
    if got is None:  # never fits by our projection (someone else's load)
        at, got = INF, frozenset()
    return _Resv(req.id, at, got, max(0, cpus - req.cpus), max(0, mem - req.mem))


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def choose_gpus(n: int, candidates: list[int], universe: int) -> tuple[int, ...] | None:
    """Pick ``n`` of ``candidates`` (sorted GPU indices) keeping aligned blocks whole.

    First the aligned block of the smallest power-of-two size holding ``n`` free
    GPUs whose enclosing blocks are most used (best fit), then within it the
    GPUs whose buddies are busy. None if fewer than ``n`` candidates."""
    if n == 0:
        return ()
    if len(candidates) < n:
        return None
    free = set(candidates)
    top = _next_pow2(max(universe, max(candidates) + 1))

    def count(lo: int, size: int) -> int:
        return sum(1 for i in range(lo, lo + size) if i in free)

    def tightness(i: int, size: int) -> tuple:
        key, s = [], size
        while s <= top:
            key.append(count(i // s * s, s))
            s *= 2
        return (*key, i)

    size = _next_pow2(n)
    while size < top and not any(count(lo, size) >= n for lo in range(0, top, size)):
        size *= 2
    lo = min((b for b in range(0, top, size) if count(b, size) >= n),
             key=lambda b: tightness(b, size))
    picked: list[int] = []
    inside = [i for i in candidates if lo <= i < lo + size]
    for _ in range(n):
        best = min(inside, key=lambda i: tightness(i, 1))
        picked.append(best)
        inside.remove(best)
        free.discard(best)
    return tuple(sorted(picked))
