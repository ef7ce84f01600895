"""gstat with long queues (issue 13: 100,000 pending): the first PENDING_SHOWN
jobs are read and listed exactly as ``gstat --all`` lists them, the rest are
counted from their names; --json still lists every job. Shapes only: speed is
measured in bench/, never asserted here."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import tool_env
from test_multiuser import USERS, users  # noqa: F401 - users: a fixture
from test_tools import ROOT_USERS

from spoold import gqueue, gstat, tools
from spoold import job as jobmod
from spoold import spool as spoolmod
from spoold.toolbase import LONG_LIST, json_text

SHOWN = gqueue.PENDING_SHOWN
PLAIN = b'argv: ["true"]\ngpus: 1\n'  # bench/instance.py's write_pending


@pytest.fixture
def live_spool(tmp_path):
    """Make a spool whose host lock this process holds, as a live daemon does,
    with a fresh heartbeat of 4 busy GPUs (``extra`` added to it)."""
    fds = []

    def make(shared: bool = False, **extra) -> spoolmod.Spool:
        sp = spoolmod.Spool(tmp_path / "spool")
        sp.create(shared=shared)
        fd = os.open(sp.host_lock("box"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, str(os.getpid()).encode())
        fds.append(fd)
        sp.host_file("box").write_bytes(jobmod.dump(
            {"host": "box", "time": time.time(), "pid": os.getpid(), "host_timeout": 600,
             "cpus": 8, "mem": 64000, "limit": 4,
             "gpus": [{"index": i, "busy": "utilization 95% >= 10%", "memory_total": 16000,
                       "memory_used": 15000, "utilization": 95} for i in range(4)], **extra}))
        return sp

    yield make
    for fd in fds:
        os.close(fd)


def _write(sp, ids, prio: int = 10, body: bytes = PLAIN, owner=None) -> None:
    """Job files written straight into pending/, as bench's write_pending does."""
    for i in ids:
        path = sp.pending / spoolmod.pending_name(prio, i)
        path.write_bytes(body)
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)


def _gstat(sp, *args: str) -> str:
    p = subprocess.run([sys.executable, "-c", "import sys; from spoold.tools import gstat_main "
                        "as m; sys.exit(m())", "--spool", str(sp.root), *args],
                       capture_output=True, env=tool_env(), timeout=120, check=True)
    return p.stdout.decode()


def _job_ids(text: str) -> list[int]:
    """The ids of the pending table's rows, in order."""
    rows = text.split("# pending:")[1].splitlines()[2:]
    return [int(r.split()[0]) for r in rows if r.split() and r.split()[0].isdigit()]


def test_a_long_queue_lists_its_head_and_counts_the_rest(live_spool):
    """1,200 jobs: the table lists the first 500 in queue order (priority 5
    ahead of 10, then id) with the daemon's reasons, then one line counts the
    other 700; --all lists all 1,200; a broken file is read (and said to be
    broken) only where it is listed."""
    sp = live_spool()
    _write(sp, range(1, 1101))
    _write(sp, range(1101, 1201), prio=5)
    _write(sp, [3], body=b"argv: [")  # in the head: read, "bad file"
    _write(sp, [1000], body=b"argv: [")  # in the tail: never read
    order = [*range(1101, 1201), *range(1, 1101)]
    text = _gstat(sp)
    assert "# pending: 1200\n" in text
    assert _job_ids(text) == order[:SHOWN]
    assert f"\n... and {1200 - SHOWN:,} more pending: gstat --all lists them\n" in text
    head = dict(r.split(maxsplit=1) for r in text.split("# pending:")[1].splitlines()[2:]
                if r[:1].isdigit())
    assert "GPUs busy (0 of 1 free)" in head["1101"]
    assert "resources reserved for job 1101" in head["1102"]
    assert "bad file: invalid YAML" in head["3"]
    everything = _gstat(sp, "--all")
    assert _job_ids(everything) == order and "more pending" not in everything
    assert "bad file" in everything.split("\n1000 ")[1].splitlines()[0]
    # The listed rows are exactly --all's first rows, reasons included.
    now = time.time()
    head, full = tools.snapshot(sp, now=now), tools.snapshot(sp, now=now, shown=None)
    assert head["pending"][:SHOWN] == full["pending"][:SHOWN]
    assert {k: v for k, v in head.items() if k != "pending"} == {
        k: v for k, v in full.items() if k != "pending"}


def test_json_lists_every_pending_job_and_reads_only_the_head(live_spool):
    sp = live_spool()
    _write(sp, range(1, 1201))
    _write(sp, [1000], body=b"argv: [")
    snap = json.loads(_gstat(sp, "--json"))
    pend = snap["pending"]
    assert [p["id"] for p in pend] == list(range(1, 1201))
    assert all(set(p) == set(gqueue.PENDING_FIELDS) for p in pend)
    assert gqueue.read_rows(pend) == SHOWN
    assert all(isinstance(p["name"], str) and p["gpus"] == 1 for p in pend[:SHOWN])
    tail = pend[SHOWN:]
    assert all(p["name"] is None and p["gpus"] is None and p["command"] is None for p in tail)
    assert {(p["priority"], p["effective_priority"], p["reason"]) for p in tail} == {
        (10, 10, gqueue.UNREAD)}
    assert {p["user"] for p in tail} == {None}  # a private spool: owners not looked up
    full = json.loads(_gstat(sp, "--json", "--all"))["pending"]
    assert gqueue.read_rows(full) == 1200
    assert [{**p, "wait": 0} for p in full[:SHOWN]] == [{**p, "wait": 0} for p in pend[:SHOWN]]
    assert next(p for p in full if p["id"] == 1000)["reason"].startswith("bad file")


def test_a_short_queue_is_listed_whole(live_spool):
    """At or under PENDING_SHOWN nothing changes: every job read and listed."""
    sp = live_spool()
    _write(sp, range(1, SHOWN + 1))
    now = time.time()
    snap = tools.snapshot(sp, now=now)
    assert gqueue.read_rows(snap["pending"]) == len(snap["pending"]) == SHOWN
    text = tools.render_gstat(snap, 10_000)
    assert f"# pending: {SHOWN}\n" in text and "more pending" not in text
    assert _job_ids(text) == list(range(1, SHOWN + 1))
    table = gstat.snapshot(sp, now=now, unread_rows=False)
    assert table["unread"] == {None: 0} and tools.render_gstat(table, 10_000) == text


@ROOT_USERS
def test_a_shared_spool_orders_by_fair_share_and_counts_each_owner(live_spool, users):  # noqa: F811
    """A shared spool: the owners' usage orders the queue (bob's jobs, with
    less usage, ahead of alice's older ones), root-owned files are read for the
    user they were queued for, the summary counts each owner, and -u shows a
    user's jobs deep in the queue with how many are ahead of them."""
    alice, bob = (users[n] for n in USERS)
    sp = live_spool(shared=True, shares=[
        {"uid": bob.pw_uid, "user": USERS[1], "gpus": 0, "usage_gpu_h": 0.0, "rank": 1},
        {"uid": alice.pw_uid, "user": USERS[0], "gpus": 0, "usage_gpu_h": 9000.0, "rank": 2}])
    _write(sp, range(1, 701), owner=alice)
    _write(sp, range(701, 1101), owner=bob)
    requeued = jobmod.dump({"argv": ["true"], "gpus": 1, "uid": bob.pw_uid})
    _write(sp, [1101], body=requeued)  # root's file: the daemon put bob's job back
    now = time.time()
    table = gstat.snapshot(sp, now=now, unread_rows=False)
    full = gstat.snapshot(sp, now=now, shown=None)
    bobs = [p["id"] for p in full["pending"] if p["user"] == USERS[1]]
    assert bobs == [*range(701, 1102)]  # bob's jobs (the requeued one too) come first
    assert [p["id"] for p in full["pending"]][:len(bobs)] == bobs
    assert table["pending"] == full["pending"][:SHOWN]
    assert table["unread"] == {USERS[0]: 1101 - SHOWN}
    text = tools.render_gstat(table, 10_000)
    assert f"\n... and {1101 - SHOWN} more pending ({USERS[0]} {1101 - SHOWN}): " in text
    # alice's jobs: her first 500 read; those within the first 500 of the queue
    # explained, the later ones say how many jobs are ahead.
    mine = gstat.snapshot(sp, USERS[0], now=now)["pending"]
    assert [p["id"] for p in mine] == list(range(1, 701))
    assert gqueue.read_rows(mine) == SHOWN
    explained = SHOWN - len(bobs)
    assert [p["reason"] for p in mine[:explained]] == [
        p["reason"] for p in full["pending"][len(bobs):SHOWN]]
    assert mine[0]["reason"] == "resources reserved for job 701"
    assert mine[explained]["reason"] == f"{SHOWN} jobs ahead; gstat --all says why each job waits"
    assert {(p["user"], p["reason"]) for p in mine[SHOWN:]} == {(USERS[0], gqueue.UNREAD)}


def test_names_with_an_id_are_read_as_the_spool_reads_them(tmp_path):
    """gqueue lists pending/ with one match a name; it must agree with
    ``spool.parse_pending_name`` on which names have an id, and on the id."""
    names = ["0010-00000007.yaml", "0000-00000001.yaml", "9999-99999999.yaml",
             "0010-00000000.yaml", "10-7.yaml", "0010-7.yaml", "00010-00000007.yaml",
             "0010-000000007.yaml", "0010-0000000a.yaml", "0010-00000007.yml",
             ".0010-00000007.yaml", "0010-00000007.yaml~", "x.yaml", "0010_00000007.yaml",
             "0010-00000007.YAML",
             "\uff10010-00000007.yaml", "0010-0000000\u0667.yaml", "0010-00000007.yaml\n"]
    sp = spoolmod.Spool(tmp_path / "spool")
    sp.create()
    for n in names:
        (sp.pending / n).write_bytes(PLAIN)
    listed = gqueue._listed(sp)
    expected = {p.job_id: p for p in map(spoolmod.parse_pending_name, sorted(names))
                if p is not None and p.has_id}
    assert listed == expected and list(listed) == [1, 7, 99999999]


def test_json_text_writes_long_lists_one_item_a_line():
    rows = [{"id": i, "x": float("nan") if i == 5 else i / 2} for i in range(LONG_LIST + 1)]
    data = {"a": 1, "pending": rows, "short": [1, 2], "b": {"c": float("inf")}}
    text = json_text(data)
    assert json.loads(text) == {**data, "pending": [{**r, "x": None} if r["id"] == 5 else r
                                                    for r in rows], "b": {"c": None}}
    lines = text.splitlines()
    assert '{"id": 5, "x": null},' in lines and len(lines) > LONG_LIST
    assert json_text(rows[:3]) == json.dumps(rows[:3], indent=1) + "\n"  # short: as before
    assert json.loads(json_text(rows)) == json.loads(text)["pending"]
    assert json_text({}) == "{}\n" and json_text({"p": rows})[:7] == '{\n "p":'


def test_ghist_timeline_reads_no_pending_file(live_spool, monkeypatch):
    sp = live_spool()
    _write(sp, range(1, 50))
    monkeypatch.setattr(gqueue.Waiting, "read", lambda *a: pytest.fail("a pending file read"))
    rows, gpus = tools.timeline_rows(sp, time.time())
    assert rows == [] and gpus == [0, 1, 2, 3]
