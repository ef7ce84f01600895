"""The pure policy, tested exhaustively and with hypothesis."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from spoold.scheduler import INF, Gpu, Request, Resources, Running, choose_gpus, schedule


def res(n=4, busy=(), cpus=8, mem=64000, limit=8, **kw) -> Resources:
    gpus = tuple(Gpu(i, "busy" if i in busy else None, 40960, 0) for i in range(n))
    return Resources(gpus=gpus, cpus=tuple(range(cpus)), mem=mem, limit=limit, **kw)


def started(d) -> dict[int, tuple]:
    return {s.id: s.gpus for s in d.start}


def test_priority_order_is_queue_order():
    q = [Request(1, gpus=2), Request(2, gpus=2), Request(3, gpus=2)]
    assert started(schedule(q, [], res(4), 0)) == {1: (0, 1), 2: (2, 3)}


def test_our_bookings_beat_idle_readings():
    # GPU 0 reads idle (the job has not allocated yet) but job 9 holds it.
    d = schedule([Request(1, gpus=1)], [Running(9, gpus=(0,))], res(2), 0)
    assert started(d) == {1: (1,)}
    d = schedule([Request(1, gpus=1)], [Running(9, gpus=(0,)), Running(8, gpus=(1,))],
                 res(2), 0)
    assert d.start == [] and "GPUs busy" in d.wait[1]


def test_externally_loaded_and_failed_gpus_are_skipped_not_stalling():
    r = Resources(gpus=(Gpu(0, "utilization 90%"), Gpu(1, "reading failed", failed=True),
                        Gpu(2, None, 100, 0), Gpu(3, None, 100, 0)), cpus=(0,), mem=10)
    assert started(schedule([Request(1, gpus=2)], [], r, 0)) == {1: (2, 3)}


def test_limits_refuse_at_once_and_do_not_block():
    q = [Request(1, gpus=5), Request(2, gpus=9), Request(3, cpus=99), Request(4, gpus=1)]
    d = schedule(q, [], res(8, limit=4), 0)
    assert set(d.reject) == {1, 2, 3} and "limit of 4" in d.reject[1]
    assert started(d) == {4: (0,)}
    d = schedule([Request(1, gpus=1)], [], Resources(gpus=(), cpus=(0,), mem=1), 0)
    assert "manages none" in d.reject[1]


def test_dependencies():
    q = [Request(1, after=(10,)), Request(2, after=(11,)), Request(3, after=(12,)),
         Request(4, after=(13,)), Request(5, after=(99,))]
    deps = {10: "done", 11: "running", 12: "failed", 13: "cancelled"}
    d = schedule(q, [], res(4), 0, deps)
    assert 1 in started(d) and "waiting for job 11" in d.wait[2]
    assert "12 failed" in d.cancel[3] and "13 cancelled" in d.cancel[4]
    assert "does not exist" in d.reject[5]


def test_held_paused_pinned():
    d = schedule([Request(1, held=True), Request(2, pin_host="b"), Request(3)], [],
                 res(4, host="a"), 0)
    assert started(d) == {3: (0,)} and "held" in d.wait[1] and "pinned" in d.wait[2]
    d = schedule([Request(1)], [], res(4, paused=True), 0)
    assert d.start == [] and "paused" in d.wait[1]


def test_head_job_reservation_blocks_unbounded_backfill():
    # 4 GPUs, 3 held by jobs without a limit; the head needs 2: the free GPU is
    # reserved, so a 1-GPU job without a limit must not take it.
    running = [Running(9, gpus=(1,)), Running(8, gpus=(2,)), Running(7, gpus=(3,))]
    d = schedule([Request(1, gpus=2), Request(2, gpus=1)], running, res(4), 0)
    assert d.start == [] and d.reservation[1] == INF and "reserved for job 1" in d.wait[2]


def test_backfill_when_it_provably_ends_before_the_reservation():
    running = [Running(9, gpus=(1,), ends_at=100), Running(8, gpus=(2,), ends_at=500),
               Running(7, gpus=(3,), ends_at=900)]
    q = [Request(1, gpus=2), Request(2, gpus=1, time_limit=200), Request(3, gpus=1,
                                                                          time_limit=50)]
    d = schedule(q, running, res(4), 0)
    assert d.reservation[:2] == (1, 100)
    assert started(d) == {3: (0,)} and "reserved for job 1" in d.wait[2]


def test_backfill_on_gpus_the_reservation_does_not_need():
    # Head needs 4 of 8; GPUs 0-3 free soonest; 4-7 partly free: those may be used.
    running = [Running(9, gpus=(0, 1, 2), ends_at=100), Running(8, gpus=(4, 5))]
    q = [Request(1, gpus=4), Request(2, gpus=1)]
    d = schedule(q, running, res(8), 0)
    assert d.reservation[:2] == (1, 100) and set(d.reservation[2]) == {0, 1, 2, 3}
    assert started(d)[2][0] in (6, 7)


def test_cpus_and_memory_are_booked():
    r = res(4, cpus=4, mem=1000)
    d = schedule([Request(1, gpus=0, cpus=3), Request(2, gpus=0, cpus=2)], [], r, 0)
    assert [s.id for s in d.start] == [1] and "CPUs busy" in d.wait[2]
    assert d.start[0].cpus == (0, 1, 2)
    d = schedule([Request(1, gpus=0, mem=600), Request(2, gpus=0, mem=600)], [], r, 0)
    assert [s.id for s in d.start] == [1]


def test_gpu_mem_slices_pack_and_never_share_with_whole_jobs():
    r = res(2)
    q = [Request(1, gpu_mem=10000), Request(2, gpu_mem=10000), Request(3, gpus=1),
         Request(4, gpus=1)]
    d = schedule(q, [], r, 0)
    s = started(d)
    assert s[1] == s[2]  # packed on one GPU
    assert s[3] != s[1] and 4 not in s


def test_shape_skip_reaches_other_shapes_in_a_long_queue():
    q = [Request(i, gpus=4) for i in range(1, 50001)] + [Request(60000, gpus=0)]
    d = schedule(q, [Running(9, gpus=(0,))], res(4), 0)
    assert started(d) == {60000: ()}


# ---- GPU choice -----------------------------------------------------------------------

def test_choose_keeps_pairs_whole():
    assert choose_gpus(1, [0, 2, 3], 4) == (0,)  # 1's buddy is busy: use 0, keep 2-3
    assert choose_gpus(2, [0, 2, 3], 4) == (2, 3)
    assert choose_gpus(2, [0, 1, 2, 3, 4, 6], 8) in ((0, 1), (2, 3))
    assert choose_gpus(4, [0, 1, 3, 4, 5, 6, 7], 8) == (4, 5, 6, 7)
    assert choose_gpus(3, [0, 2, 5], 8) == (0, 2, 5)
    assert choose_gpus(3, [0, 2], 8) is None


@given(st.integers(1, 8), st.sets(st.integers(0, 7)))
def test_choose_is_valid(n, free):
    got = choose_gpus(n, sorted(free), 8)
    if len(free) < n:
        assert got is None
    else:
        assert len(got) == n and set(got) <= free and len(set(got)) == n


# ---- properties -------------------------------------------------------------------------

requests = st.builds(Request, id=st.integers(1, 10**6), gpus=st.integers(0, 5),
                     cpus=st.integers(0, 4), mem=st.integers(0, 3000),
                     time_limit=st.one_of(st.none(), st.floats(1, 1000)))


@settings(max_examples=300, deadline=None)
@given(st.lists(requests, max_size=12, unique_by=lambda r: r.id),
       st.lists(st.tuples(st.sets(st.integers(0, 7), max_size=3),
                          st.one_of(st.none(), st.floats(0, 1000))), max_size=4),
       st.sets(st.integers(0, 7)))
def test_exclusivity_and_capacity(queue, running_spec, busy):
    """No GPU is given twice, no busy or held GPU is given, CPUs/mem never oversold,
    and backfilled jobs never delay the head's reservation."""
    used, running = set(), []
    for n, (gpus, end) in enumerate(running_spec):
        gpus = gpus - used
        used |= gpus
        running.append(Running(1000 + n, gpus=tuple(sorted(gpus)), ends_at=end, cpus=(n,),
                               mem=100))
    r = res(8, busy=busy, cpus=8, mem=4000)
    d = schedule(queue, running, r, 0.0)
    given_gpus = [g for s in d.start for g in s.gpus]
    assert len(given_gpus) == len(set(given_gpus))
    assert not set(given_gpus) & (used | busy)
    given_cpus = [c for s in d.start for c in s.cpus]
    assert len(given_cpus) == len(set(given_cpus))
    assert not set(given_cpus) & set(range(len(running)))
    by_id = {q.id: q for q in queue}
    assert sum(by_id[s.id].mem for s in d.start) + 100 * len(running) <= 4000
    for s in d.start:
        assert len(s.gpus) == by_id[s.id].gpus and len(s.cpus) == by_id[s.id].cpus
    if d.reservation:
        head, at, reserved = d.reservation
        for s in d.start:
            q = by_id[s.id]
            ends_in_time = q.time_limit is not None and q.time_limit <= at
            assert ends_in_time or not set(s.gpus) & set(reserved)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([None, 30.0]))
def test_no_starvation_under_a_stream_of_small_jobs(seed, small_limit):
    """Simulate: a 4-GPU job waits while 1-GPU jobs keep arriving. It must start
    within a bounded time, whether the small jobs have time limits or not."""
    import random

    rnd = random.Random(seed)
    now, running, ids = 0.0, [], itertools.count(2)
    ends: dict[int, float] = {}
    queue = [Request(1, gpus=4, time_limit=100)]
    for _ in range(400):
        queue += [Request(next(ids), gpus=1, time_limit=small_limit)
                  for _ in range(rnd.randint(0, 3))]
        d = schedule(sorted(queue, key=lambda q: q.id), running, res(4), now)
        for s in d.start:
            if s.id == 1:
                return
            dur = rnd.uniform(1, 30)
            ends[s.id] = now + dur
            running.append(Running(s.id, gpus=s.gpus, ends_at=(
                now + small_limit) if small_limit else None))
        started_ids = {s.id for s in d.start}
        queue = [q for q in queue if q.id not in started_ids]
        now += 1.0
        running = [r for r in running if ends[r.id] > now]
    raise AssertionError("the 4-GPU job starved")


def test_job_too_big_here_waits_for_a_peer_that_fits():
    big = res(8, host="a")
    d = schedule([Request(1, gpus=4), Request(2, gpus=16)], [], res(2, host="b", peers=(big,)),
                 0)
    assert "left for a" in d.wait[1] and "manages only 2" in d.reject[2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(Request, id=st.integers(1, 10**6), gpus=st.integers(0, 3),
                          cpus=st.integers(0, 2), held=st.booleans(),
                          after=st.sampled_from([(), (5,)]),
                          time_limit=st.sampled_from([None, 10.0])),
                max_size=30, unique_by=lambda r: r.id),
       st.sets(st.integers(0, 3)), st.integers(0, 9))
def test_queue_index_decides_like_a_plain_list(reqs, busy, prio_seed):
    """The daemon's queue (fairshare.QueueIndex) skips shapes wholesale;
    decisions must not change."""
    from spoold.fairshare import QueueIndex

    prio = {r.id: (r.id * 7 + prio_seed) % 10 for r in reqs}
    order = sorted(reqs, key=lambda r: (prio[r.id], r.id))
    idx = QueueIndex({r.id: r for r in reqs}.__getitem__)
    for r in reqs:
        idx.add(r.shape if r.plain else ("other",), r.owner, QueueIndex.entry(prio[r.id], r.id))
    running = [Running(99, gpus=(0,), ends_at=50.0)]
    a = schedule(order, running, res(4, busy=busy, cpus=3), 0.0, {5: "running"})
    b = schedule(idx, running,
                 res(4, busy=busy, cpus=3), 0.0, {5: "running"})
    assert a.start == b.start and a.reject == b.reject and a.cancel == b.cancel
    assert a.reservation == b.reservation
