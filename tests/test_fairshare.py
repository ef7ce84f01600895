"""Fair share (issue 16): the pure rules with property tests, then the real
root daemon on a shared spool with two throwaway users."""

from __future__ import annotations

import math
import os
import random

import pytest
import yaml
from conftest import REPO, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from spoold.fairshare import (
    QUEUE_COST_S,
    Limit,
    QueueIndex,
    effective_priority,
    job_usage,
    over_limit,
    queue_keys,
)
from spoold.scheduler import Gpu, Request, Resources, Running, schedule

pytest_plugins = ("attack_helpers",)  # fixtures: lab, users
from attack_helpers import ALICE, BOB, ROOT_ONLY, WAIT_GO, gsub_ids, tool_as  # noqa: E402

A, B, C = 1001, 1002, 1003


def _res(n: int = 4, **kw) -> Resources:
    return Resources(gpus=tuple(Gpu(i) for i in range(n)), cpus=tuple(range(8)), mem=1 << 20,
                     limit=8, **kw)


def _group(r: Request) -> tuple:
    return r.shape if r.plain else ("other",)


def _ordered(reqs: list[Request], usage: dict) -> QueueIndex:
    """The daemon's queue of ``reqs`` (priority 10), fair share by ``usage``."""
    idx = QueueIndex({r.id: r for r in reqs}.__getitem__)
    idx.usage = usage
    for r in reqs:
        idx.add(_group(r), r.owner, QueueIndex.entry(10, r.id))
    return idx


# ---- the rules ----------------------------------------------------------------------
def test_a_user_with_no_usage_goes_first():
    reqs = [Request(i, owner=A) for i in range(1, 6)] + [Request(9, owner=B)]
    d = schedule(_ordered(reqs, {A: 50.0}), [], _res(1), 0.0)
    assert [s.id for s in d.start] == [9]


def test_two_users_with_equal_usage_alternate():
    reqs = [Request(i, owner=A) for i in range(1, 5)] + [Request(i, owner=B) for i in range(5, 9)]
    d = schedule(_ordered(reqs, {}), [], _res(4), 0.0)
    owners = {r.id: r.owner for r in reqs}
    assert [owners[s.id] for s in d.start] == [A, B, A, B]


def test_within_one_user_the_order_stays_priority_then_submission():
    keys = queue_keys([(5, A, 9), (10, A, 3), (10, B, 4), (10, A, 7)], {A: 0.0, B: 0.0})
    mine = sorted((k for j, k in keys.items() if j != 4))
    assert [k[2] for k in mine] == [9, 3, 7]
    assert keys[7][1] - keys[3][1] == QUEUE_COST_S


def test_usage_decays_with_the_half_life():
    week = 7 * 86400.0
    fresh = job_usage(1, 0.0, 3600.0, 3600.0, week)
    old = job_usage(1, 0.0, 3600.0, 3600.0 + week, week)
    assert 3590 < fresh < 3600 and abs(old - fresh / 2) < 1  # its first second decayed a bit
    assert job_usage(2, 0.0, 10.0, 10.0, 0) == 0.0  # half-life 0: fair share off


def test_only_root_admins_and_overrides_go_above_the_default():
    assert effective_priority(0, A, True, False, None, 10) == 10
    assert effective_priority(0, A, True, True, None, 10) == 0  # an admin's own file
    assert effective_priority(0, 0, True, False, None, 10) == 0  # root's file
    assert effective_priority(20, A, True, False, None, 10) == 20  # lowering is anyone's
    assert effective_priority(20, A, True, False, 1, 10) == 1  # root's override
    assert effective_priority(0, A, False, False, None, 10) == 0  # one's own spool


def test_a_capped_job_says_who_holds_what():
    why = over_limit(Limit("alice", gpus=2), 2, 0, 1, 0)
    assert why.startswith("alice holds 2 of 2 GPUs")
    assert over_limit(Limit("alice", gpus=2), 1, 0, 1, 0) is None
    assert over_limit(Limit("alice", cpus=4), 0, 3, 0, 2).startswith("alice holds 3 of 4 CPUs")


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**31), st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(0, 3)),
                                        min_size=1, max_size=25),
       st.integers(1, 4), st.integers(1, 4))
def test_caps_are_never_exceeded_and_exclusivity_holds(seed, jobs, cap_a, n_running):
    rnd = random.Random(seed)
    running = [Running(100 + i, gpus=(i,), owner=rnd.choice([A, B])) for i in range(n_running)]
    reqs = [Request(i + 1, gpus=g, owner=o) for i, (o, g) in enumerate(jobs)]
    usage = {A: rnd.random() * 1e4, B: rnd.random() * 1e4}
    limits = {A: Limit("a", gpus=cap_a), B: Limit("b", gpus=2), C: None}
    d = schedule(_ordered(reqs, usage), running, _res(8, limits=limits), 0.0)
    held = {A: 0, B: 0, C: 0}
    for r in running:
        held[r.owner] += len(r.gpus)
    before = dict(held)
    taken = [i for r in running for i in r.gpus]
    owner = {r.id: r.owner for r in reqs}
    for s in d.start:
        held[owner[s.id]] += len(s.gpus)
        taken += list(s.gpus)
    assert len(taken) == len(set(taken))  # exclusivity
    for who, cap in ((A, cap_a), (B, 2)):
        assert held[who] <= max(cap, before[who])  # never pushed over its cap


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([A, B, C]), st.integers(1, 60),
                          st.integers(0, 2), st.booleans()), max_size=60),
       st.dictionaries(st.sampled_from([A, B, C]), st.floats(0, 2e4)), st.booleans())
def test_queue_index_kept_job_by_job_iterates_in_queue_keys_order(ops, usage, fair):
    """Jobs added and removed one at a time (an id seen again leaves): the
    index iterates exactly as sorting the whole queue by queue_keys does."""
    jobs: dict[int, tuple[int, Request]] = {}
    idx = QueueIndex(lambda i: jobs[i][1])
    idx.usage = usage if fair else None
    for prio, owner, job_id, gpus, held in ops:
        if job_id in jobs:
            p, r = jobs.pop(job_id)
            assert idx.remove(_group(r), r.owner, QueueIndex.entry(p, job_id))
        else:
            r = Request(job_id, gpus=gpus, held=held, owner=owner)
            jobs[job_id] = (prio, r)
            idx.add(_group(r), owner, QueueIndex.entry(prio, job_id))
    if fair:
        keys = queue_keys(sorted((p, r.owner, i) for i, (p, r) in jobs.items()), usage)
    else:
        keys = {i: (p, i) for i, (p, _) in jobs.items()}
    assert [r.id for r in idx] == sorted(jobs, key=keys.__getitem__)
    assert len(idx) == len(jobs) and idx.owners() == {r.owner for _, r in jobs.values()}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from([0, 1, 1, 2, 4]),
                          st.booleans()), min_size=1, max_size=30),
       st.sets(st.integers(0, 3)), st.integers(0, 2**31))
def test_the_queue_index_decides_like_a_plain_list(jobs, busy, seed):
    """Shapes skipped wholesale (skip_shape) change no decision (jobs skipped
    so get no wait reason)."""
    rnd = random.Random(seed)
    reqs = [Request(i + 1, gpus=g, held=h, owner=o) for i, (o, g, h) in enumerate(jobs)]
    usage = {u: rnd.random() * 1e4 for u in (A, B, C)}
    prio = {r.id: rnd.choice((5, 10)) for r in reqs}
    idx = QueueIndex({r.id: r for r in reqs}.__getitem__)
    idx.usage = usage
    for r in reqs:
        idx.add(_group(r), r.owner, QueueIndex.entry(prio[r.id], r.id))
    keys = queue_keys(sorted((prio[r.id], r.owner, r.id) for r in reqs), usage)
    plain = sorted(reqs, key=lambda r: keys[r.id])
    res = Resources(gpus=tuple(Gpu(i, "busy" if i in busy else None) for i in range(4)),
                    cpus=tuple(range(8)), mem=1 << 20, limit=8)
    running = [Running(99, gpus=(0,), ends_at=50.0)] if 0 in busy else []
    a, b = schedule(idx, running, res, 0.0), schedule(plain, running, res, 0.0)
    assert (a.start, a.reject, a.cancel, a.reservation) == (
        b.start, b.reject, b.cancel, b.reservation)


def _record(folder, job_id: int, uid: int, gpus: int, start: float, end: float | None):
    rec = {"id": job_id, "uid": uid, "assigned_gpus": list(range(gpus)), "started_at": start}
    if end is not None:
        rec["ended_at"] = end
    (folder / f"{job_id}.yaml").write_text(yaml.safe_dump(rec))


def test_usage_is_kept_one_record_at_a_time(tmp_path):
    """Shares.usage adds a finished job once and drops a record that left;
    every call equals the sum over the records, recomputed from scratch."""
    from types import SimpleNamespace

    from spoold.policy import Shares
    from spoold.spool import Spool as RealSpool

    sp = RealSpool(tmp_path / "spool")
    sp.create()
    shares = Shares(sp, SimpleNamespace(policy=None, fairshare_halflife=3600.0), True)
    shares.relist_s = 0  # every call lists a folder whose mtime moved (see the next test)
    now = 10_000.0
    recs = {}

    def check(t: float) -> None:
        want = {}
        for uid, gpus, start, end in recs.values():
            want[uid] = want.get(uid, 0.0) + job_usage(gpus, start, t if end is None else end,
                                                       t, 3600.0)
        got = shares.usage(t)
        assert set(got) == set(want)
        assert all(abs(got[u] - want[u]) <= 1e-6 * max(1.0, want[u]) for u in want), (got, want)

    for job_id, (uid, gpus, start, end) in enumerate(
            [(A, 1, 100.0, 4000.0), (B, 2, 5000.0, 9000.0), (A, 4, 9000.0, 9500.0)], 1):
        _record(sp.done, job_id, uid, gpus, start, end)
        recs[job_id] = (uid, gpus, start, end)
        check(now + job_id)
    _record(sp.running, 7, C, 1, 9900.0, None)  # a running job counts up to now
    recs[7] = (C, 1, 9900.0, None)
    check(now + 100)
    _record(sp.failed, 8, B, 1, 9990.0, now + 500)  # ends "later" (another host's clock)
    recs[8] = (B, 1, 9990.0, now + 500)
    check(now + 200)
    check(now + 600)  # ... and is a finished job once that time has come
    (sp.done / "1.yaml").unlink()
    del recs[1]
    check(now + 700)
    (sp.running / "7.yaml").unlink()
    del recs[7]
    check(now + 800)
    assert shares.usage(now + 900, full=True) == pytest.approx(shares.usage(now + 900))


def test_usage_lists_a_changed_folder_at_most_every_relist_s(tmp_path):
    """Between full re-checks a folder whose mtime moved is listed again only
    RELIST_S after its last listing (listing done/ at each pass of a busy
    queue cost more than the pass); the daemon's own records count at once
    through note(), and a full re-check finds everything."""
    from types import SimpleNamespace

    from spoold.policy import Shares
    from spoold.spool import Spool as RealSpool

    sp = RealSpool(tmp_path / "spool")
    sp.create()
    shares = Shares(sp, SimpleNamespace(policy=None, fairshare_halflife=math.inf), True)
    shares.relist_s = 3600.0
    _record(sp.done, 1, A, 1, 100.0, 200.0)
    assert shares.usage(1000.0) == {A: pytest.approx(100.0)}  # the first listing
    _record(sp.done, 2, B, 2, 100.0, 200.0)  # another host's record
    assert shares.usage(1001.0) == {A: pytest.approx(100.0)}  # not listed again yet
    ours = {"id": 3, "uid": A, "assigned_gpus": [0], "started_at": 300.0, "ended_at": 400.0}
    (sp.done / "3.yaml").write_text(yaml.safe_dump(ours))
    shares.note("done", 3, sp.done / "3.yaml", ours, 1002.0)
    assert shares.usage(1002.0) == {A: pytest.approx(200.0)}  # counted as it was written
    assert shares.usage(1003.0, full=True) == {A: pytest.approx(200.0),
                                               B: pytest.approx(200.0)}


# ---- the real daemon on a shared spool -------------------------------------------------
def _started(lb, job_id: int) -> float:
    for d in ("running", "done", "failed", "cancelled"):
        p = lb.sp.root / d / f"{job_id}.yaml"
        if p.exists():
            return yaml.safe_load(p.read_text()).get("started_at") or 0.0
    return 0.0


@ROOT_ONLY
def test_a_second_user_is_not_stuck_behind_a_sweep(lab):
    """Done-when 1: alice queues 12 one-GPU jobs, then bob 2: both of bob's
    start before alice's 6th."""
    lb = lab()
    alice = gsub_ids(lb, ALICE, "--array", "1-12", "-n", "1", "-c", "sleep 1")
    wait_for(lambda: sum(_started(lb, j) > 0 for j in alice) == 4, what="alice's first four")
    bob = gsub_ids(lb, BOB, "--array", "1-2", "-n", "1", "-c", "sleep 1")
    wait_for(lambda: all(_started(lb, j) for j in bob), 30, "bob's jobs to start")
    sixth = wait_for(lambda: sorted(t for j in alice if (t := _started(lb, j)))[5:6], 30,
                     "alice's 6th job to start")[0]
    assert max(_started(lb, j) for j in bob) < sixth


@ROOT_ONLY
def test_max_gpus_per_user_caps_one_user_and_gstat_says_why(lab):
    """Done-when 2: with --max-gpus-per-user 2, alice never holds more than 2."""
    lb = lab("--max-gpus-per-user", "2")
    go = lb.base / ALICE / "go"
    ids = gsub_ids(lb, ALICE, "--array", "1-4", "-n", "1", "-c", WAIT_GO.format(go=go))
    wait_for(lambda: sum(_started(lb, j) > 0 for j in ids) == 2, what="two of alice's jobs")
    # (gstat reads the heartbeat: rewritten within a GPU poll of the starts)
    wait_for(lambda: "holds 2 of 2 GPUs" in as_gstat(lb), what="gstat to say why")
    assert sum(_started(lb, j) > 0 for j in ids) == 2
    go.touch()
    wait_for(lambda: all((lb.sp.root / "done" / f"{j}.yaml").exists() for j in ids), 30,
             "alice's jobs to finish")


def as_gstat(lb) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "import sys; from spoold.tools import gstat_main "
                           "as m; sys.exit(m())", "--spool", str(lb.sp.root)],
                          capture_output=True, text=True, cwd=REPO).stdout


def _one_gpu_race(lb) -> tuple[int, int, object]:
    """alice holds the only GPU; bob queues B (default priority), then alice
    queues A2: returns (B, A2, the file that releases alice's first job)."""
    go = lb.base / ALICE / "go"
    first = gsub_ids(lb, ALICE, "-n", "1", "-c", WAIT_GO.format(go=go))[0]
    wait_for(lambda: _started(lb, first), what="alice's first job")
    b = gsub_ids(lb, BOB, "-n", "1", "-c", "true")[0]
    a2 = gsub_ids(lb, ALICE, "-n", "1", "-c", "true")[0]
    return b, a2, go


@ROOT_ONLY
def test_renaming_to_priority_0000_does_not_jump_the_queue(lab):
    """Done-when 3: alice's rename to 0000 counts as the default priority."""
    lb = lab("--gpus", "0", "--fairshare-halflife", "0")
    b, a2, go = _one_gpu_race(lb)
    pending = lb.sp.root / "pending"
    src = f"{pending}/0010-{a2:08d}.yaml"
    os.system(f"runuser -u {ALICE} -- mv {src} {pending}/0000-{a2:08d}.yaml")
    assert (pending / f"0000-{a2:08d}.yaml").exists()
    go.touch()
    wait_for(lambda: _started(lb, b) and _started(lb, a2), 30, "both jobs to start")
    assert _started(lb, b) < _started(lb, a2)


@ROOT_ONLY
def test_root_can_raise_a_users_job(lab):
    """Done-when 4: root's gprio puts alice's job ahead of bob's."""
    lb = lab("--gpus", "0", "--fairshare-halflife", "0")
    b, a2, go = _one_gpu_race(lb)
    import subprocess

    subprocess.run(["dash", str(lb.base / "bin" / "gprio"), "--spool", str(lb.sp.root), str(a2),
                    "1"], check=True)
    assert (lb.sp.root / "state" / "priority" / str(a2)).read_text().strip() == "1"
    go.touch()
    wait_for(lambda: _started(lb, b) and _started(lb, a2), 30, "both jobs to start")
    assert _started(lb, a2) < _started(lb, b)
    p = tool_as(lb, BOB, "gprio", str(b), "0", check=False)  # a user may not raise
    assert p.returncode == 1
