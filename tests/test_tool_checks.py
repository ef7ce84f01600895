"""Issue 15, the Python tools' side: gstat without a daemon, ghist's argument
checks, and ghist --timeline drawing jobs shorter than one cell."""

from __future__ import annotations

import json

from spoold import ghist

NOW = 1_800_000_000.0
MIN = 60


def pending_reasons(spool) -> dict[int, str]:
    snap = json.loads(spool.run("gstat", "--json").stdout)
    return {p["id"]: p["reason"] for p in snap["pending"]}


def test_gstat_says_no_daemon_when_none_runs(spool, daemon_factory):
    fits = spool.gsub("-n", "1", "--", "true")
    assert pending_reasons(spool) == {fits: "no daemon"}  # no daemon ever ran here
    assert "no daemon" in spool.run("gstat").stdout.decode()
    spool.run("gpause")
    d = daemon_factory()  # a live daemon gives its own reason
    assert pending_reasons(spool)[fits].startswith("queue paused")
    d.stop()  # its heartbeat stays behind, its lock is free
    held = spool.gsub("--hold", "-n", "1", "--", "true")
    assert pending_reasons(spool) == {fits: "no daemon", held: "no daemon"}


def test_ghist_refuses_a_negative_count(spool):
    p = spool.run("ghist", "-n", "-3", check=False)
    assert p.returncode == 2 and b"-n takes a count of jobs, 0 or more" in p.stderr
    assert spool.run("ghist", "-n", "0").returncode == 0


def test_ghist_older_than_only_goes_with_clean(spool):
    p = spool.run("ghist", "--older-than", "7d", check=False)
    assert p.returncode == 2 and b"--older-than applies only to --clean" in p.stderr
    assert spool.run("ghist", "--clean", "--older-than", "7d").returncode == 0


def _job(job_id, name, gpus, start, end, state="done"):
    return {"id": job_id, "name": name, "state": state, "assigned_gpus": gpus,
            "started_at": NOW + start, "ended_at": None if end is None else NOW + end}


def test_timeline_draws_every_job_or_counts_those_it_cannot():
    rows = [_job(1, "long", [0], -60 * MIN, -30 * MIN),
            _job(2, "slice", [0], -59 * MIN, -59 * MIN + 30),  # under job 1, on its GPU
            _job(3, "q1", [1], -10 * MIN, -10 * MIN + 20),  # 3 and 4 share one 3 min cell
            _job(4, "q2", [1], -9.5 * MIN, -9.5 * MIN + 20, "failed"),
            _job(5, "q3", [1], -5 * MIN, -5 * MIN + 10),  # alone in its cell
            _job(6, "new", [0], 0, None, "running")]  # started this instant
    text = ghist.render_timeline(rows, [0, 1], NOW, 2, width=48)
    # 40 cells of 3 minutes: the 30 s job 2 keeps its cell inside job 1's span,
    # 5 and 6 get one cell each, and the cell 3 and 4 share says + and who.
    assert text == (
        "      |-2h                                  now|\n"
        "GPU0  |....................baaaaaaaaa.........d|\n"
        "GPU1  |....................................+.c.|\n"
        "jobs:  a=1 long (done)  b=2 slice (done)\n"
        "       c=5 q3 (done)  d=6 new (running)\n"
        "       + = 2 job(s) not drawn, shorter than a\n"
        "       cell (3m00s) and sharing it: 3, 4; a\n"
        "       shorter --timeline draws them\n")
    assert all(len(line) <= 48 for line in text.splitlines())


def test_timeline_at_6h_keeps_a_burst_of_short_jobs_visible_or_counted():
    """The issue's case: many jobs under a minute at the default 6 h scale."""
    rows = [_job(i, f"j{i}", [0], -3600 + i * 40, -3600 + i * 40 + 30) for i in range(1, 31)]
    text = ghist.render_timeline(rows, [0], NOW, 6, width=100)
    grid = text.splitlines()[1]
    drawn = sum(c not in ".|+" for c in grid[6:])
    hidden = int(text.split("+ = ")[1].split()[0]) if "+ = " in text else 0
    assert drawn + hidden == 30 and drawn == len(set(grid[7:-1]) - {".", "+"})
    assert drawn == text.count("(done)")
