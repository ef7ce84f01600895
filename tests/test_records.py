"""The pure rules of spoold/records.py: the folder and reason of an ended job
(``outcome_of``), who a job file's job runs as (``owner_of``), and the size
cap every record the daemon writes stays under (``Records.save``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoold import job as jobmod
from spoold import spool as spoolmod
from spoold.records import OUTCOMES, Records, outcome_of, owner_of, read_record

VANISHED = "job processes vanished while spoold was not watching them"
CAP = spoolmod.MAX_RECORD_BYTES


# ---- outcome_of --------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "want"), [
    (0, ("done", None)),
    (1, ("failed", "exit code 1")),
    (125, ("failed", "exit code 125")),  # the shepherd could not enter cwd
    (128, ("failed", "exit code 128")),
    (129, ("failed", "killed by signal 1")),
    (137, ("failed", "killed by signal 9")),
    (143, ("failed", "killed by signal 15")),
    (192, ("failed", "killed by signal 64")),  # the last signal
    (193, ("failed", "exit code 193")),
    (255, ("failed", "exit code 255")),  # ssh's failure, exit(-1): no signal 127
])
def test_the_exit_code_alone_decides_a_job_no_one_killed(code, want):
    assert outcome_of({"id": 7}, code)[:2] == want


def test_a_job_whose_exit_is_unknown_vanished():
    state, reason, _ = outcome_of({"id": 7}, None)
    assert state == "failed" and reason.startswith(VANISHED)


@pytest.mark.parametrize(("rec", "code", "want"), [
    ({"kill_reason": "time limit", "time_limit": 5}, 143,
     ("failed", "time limit (5s) exceeded; exit code 143")),
    ({"kill_reason": "time limit", "time_limit": 1.5}, None,
     ("failed", "time limit (1.5s) exceeded")),
    ({"kill_reason": "time limit", "time_limit": 60}, 0,
     ("failed", "time limit (60s) exceeded; exit code 0")),  # it caught TERM and exited 0
    ({"kill_reason": "killed on request"}, 143, ("cancelled", "killed on request; exit code 143")),
    ({"kill_reason": "killed on request"}, 0, ("cancelled", "killed on request; exit code 0")),
    ({"kill_reason": "killed on request"}, None, ("cancelled", "killed on request")),
])
def test_a_kill_reason_decides_whatever_the_exit_code(rec, code, want):
    assert outcome_of(rec, code)[:2] == want
    # ... and whatever an executor reported
    assert outcome_of(rec, code, ("done", None))[:2] == want


@pytest.mark.parametrize("code", [0, 1, 137, None])
def test_an_executors_outcome_wins_over_the_exit_code(code):
    for known in (("done", None), ("failed", "SLURM: TIMEOUT"), ("cancelled", "SLURM: CANCELLED")):
        assert outcome_of({"id": 7}, code, known)[:2] == known


@pytest.mark.parametrize(("rec", "code", "known", "name"), [
    ({}, 0, None, "completed"),
    ({}, 3, None, "failed"),
    ({}, None, None, "failed"),
    ({"kill_reason": "time limit", "time_limit": 5}, 143, None, "timeout"),
    ({"kill_reason": "killed on request"}, 143, None, "cancelled"),
    ({"kill_reason": "out of GPU memory: 9000 MiB over its 4096 MiB slice"}, 137, None,
     "out_of_memory"),
    ({}, 137, ("failed", "out of memory: over its 100 MiB (--mem)", "out_of_memory"),
     "out_of_memory"),
    ({}, None, ("failed", "host lost", "node_fail"), "node_fail"),
    ({}, 0, ("cancelled", "SLURM: CANCELLED"), "cancelled"),
])
def test_each_ending_has_its_outcome_name(rec, code, known, name):
    assert outcome_of(rec, code, known).outcome == name


KILLS = st.sampled_from([None, "", "time limit", "killed on request", "host lost"])


@given(code=st.one_of(st.none(), st.integers(0, 255)), kill=KILLS,
       limit=st.floats(0.5, 1e7, allow_nan=False),
       known=st.one_of(st.none(), st.sampled_from([("done", None), ("failed", "why")])))
def test_outcome_of_is_total_and_each_reason_says_why(code, kill, limit, known):
    rec = {"id": 7, "time_limit": limit, **({"kill_reason": kill} if kill is not None else {})}
    state, reason, name = outcome_of(rec, code, known)
    assert state in spoolmod.FINAL_DIRS and name in OUTCOMES
    assert (name == "completed") == (state == "done")
    assert (state == "done") == (reason is None)
    if kill:
        assert state == ("failed" if kill == "time limit" else "cancelled")
        assert reason.startswith("time limit (" if kill == "time limit" else kill)
        assert reason.endswith(f"; exit code {code}") == (code is not None)
    elif known:
        assert (state, reason) == known
    elif code is None:
        assert reason.startswith(VANISHED)
    elif code == 0:
        assert state == "done"
    else:
        signal = code - 128 if 1 <= code - 128 <= 64 else None
        assert reason == (f"killed by signal {signal}" if signal else f"exit code {code}")


# ---- owner_of ----------------------------------------------------------------------------

ANY_UID_FIELD = st.one_of(st.none(), st.integers(), st.booleans(), st.text(max_size=8),
                          st.floats(allow_nan=True), st.lists(st.integers(), max_size=2))


@given(st_uid=st.integers(1, 2**32 - 2), uid=ANY_UID_FIELD)
def test_a_users_file_runs_as_its_owner_whatever_it_says(st_uid, uid):
    assert owner_of(st_uid, {"uid": uid}) == st_uid
    assert owner_of(st_uid, {}) == st_uid


@pytest.mark.parametrize(("uid", "want"), [
    (1000, 1000), (0, 0), (2**31 - 1, 2**31 - 1),
    (None, 0), (True, 0), (False, 0), (-1, 0), (2**31, 0), (2**32 - 1, 0), (2**64, 0),
    ("1000", 0), (1000.0, 0), ([1000], 0),
])
def test_only_roots_file_may_name_the_uid_and_only_a_plain_one_in_range(uid, want):
    assert owner_of(0, {"uid": uid}) == want


@given(uid=ANY_UID_FIELD)
def test_roots_file_names_a_uid_in_range_or_stays_roots(uid):
    got = owner_of(0, {"uid": uid})
    assert got == 0 or got == uid
    assert isinstance(got, int) and not isinstance(got, bool) and 0 <= got < 2**31


# ---- Records.save: the size cap ----------------------------------------------------------

@pytest.fixture
def records(tmp_path):
    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create()
    return Records(sp, shared=False, keep=100)


def _save(records, rec: dict):
    path = records.spool.record("running", 7)
    records.save(path, rec, create=not path.exists())
    assert path.stat().st_size <= CAP, "a record over the cap is unreadable"
    return read_record(path)


def test_a_record_under_the_cap_is_written_whole(records):
    rec = {"id": 7, "argv": ["echo", "x" * (CAP // 2)], "uid": 1000, "exit_code": 0}
    assert _save(records, rec) == rec


@pytest.mark.parametrize("big", ["env", "argv", "cmd", "x-notes"])
def test_a_record_over_the_cap_drops_its_big_fields_and_stays_readable(records, big):
    huge = {"env": {"BIG": "x" * CAP}, "argv": ["echo", "x" * CAP], "cmd": "x" * CAP,
            "x-notes": ["x" * 1000] * (CAP // 1000)}[big]
    rec = {"id": 7, "argv": ["true"], "name": "big", "uid": 1000, "exit_code": 0,
           "reason": None, "x-small": [1, 2], big: huge}
    got = _save(records, rec)
    assert big not in got and "x-spoold-note" in got
    kept = {k: v for k, v in rec.items() if k not in (big, "env", "argv", "cmd")}
    assert {k: got[k] for k in kept} == kept  # the daemon's fields survive


def _wide_job_file() -> bytes:
    """A valid job file of a third of MAX_JOB_BYTES whose fields are each
    small but whose record grows past the cap: lists of over 64 items are
    dumped one item a line, indented once per level of nesting (about 13
    bytes written for each 2 read here)."""
    field = "[" * 16 + ",".join(["1"] * 1300) + "]" * 16
    lines = ['argv: ["true"]']
    while len("\n".join(lines)) + len(field) + 16 < spoolmod.MAX_JOB_BYTES // 3:
        lines.append(f"x-{len(lines)}: {field}")
    return ("\n".join(lines) + "\n").encode()


def test_the_record_of_any_accepted_job_file_stays_readable(records):
    raw = _wide_job_file()
    assert len(raw) <= spoolmod.MAX_JOB_BYTES
    job = jobmod.parse(raw)
    got = _save(records, {**job.data, "id": 7, "uid": 1000, "exit_code": 0})
    assert (got["id"], got["uid"], got["exit_code"]) == (7, 1000, 0)
