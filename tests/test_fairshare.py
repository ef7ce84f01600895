"""Fair share (issue 16): the pure rules with property tests, then the real
root daemon on a shared spool with two throwaway users."""

from __future__ import annotations

import os
import random

import yaml
from conftest import REPO, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from spoold.fairshare import (
    QUEUE_COST_S,
    Limit,
    effective_priority,
    job_usage,
    over_limit,
    queue_keys,
)
from spoold.scheduler import Gpu, Request, Resources, Running, ShapeQueue, schedule

pytest_plugins = ("attack_helpers",)  # fixtures: lab, users
from attack_helpers import ALICE, BOB, ROOT_ONLY, WAIT_GO, gsub_ids, tool_as  # noqa: E402

A, B, C = 1001, 1002, 1003


def _res(n: int = 4, **kw) -> Resources:
    return Resources(gpus=tuple(Gpu(i) for i in range(n)), cpus=tuple(range(8)), mem=1 << 20,
                     limit=8, **kw)


def _ordered(reqs: list[Request], usage: dict) -> ShapeQueue:
    keys = queue_keys([(10, r.owner, r.id) for r in reqs], usage)
    return ShapeQueue(sorted(((keys[r.id], r) for r in reqs), key=lambda kr: kr[0]))


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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from([1, 1, 2, 4])),
                min_size=1, max_size=30), st.integers(0, 2**31))
def test_fair_keys_decide_the_same_through_shape_queue_as_a_plain_list(jobs, seed):
    rnd = random.Random(seed)
    reqs = [Request(i + 1, gpus=g, owner=o) for i, (o, g) in enumerate(jobs)]
    usage = {u: rnd.random() * 1e4 for u in (A, B, C)}
    keys = queue_keys([(10, r.owner, r.id) for r in reqs], usage)
    plain = sorted(reqs, key=lambda r: keys[r.id])
    a, b = schedule(_ordered(reqs, usage), [], _res(4), 0.0), schedule(plain, [], _res(4), 0.0)
    assert (a.start, a.reject, a.cancel, a.reservation) == (
        b.start, b.reject, b.cancel, b.reservation)


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
    gstat = as_gstat(lb)
    assert "holds 2 of 2 GPUs" in gstat, gstat
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
