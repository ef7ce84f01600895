"""Scale (issue 13), with the real daemon: files dropped without ids are named
in batches between scheduling passes, and a long queue's index follows one
event at a time. Every wait polls with a deadline; nothing here times the
daemon (bench/ measures speed)."""

from __future__ import annotations

import os
import re

from conftest import fake_gpu_list, wait_for

BUSY = {i: {"utilization": 100} for i in range(4)}  # GPU jobs wait; CPU jobs run
DROPPED = re.compile(r"010-anything-(\d+)\.yaml")
NAMED = re.compile(r"\d{4}-\d{8}\.yaml")
BATCH_LINE = re.compile(r"named (\d+) dropped file\(s\): ")
ONE = re.compile(r"pending/(\S+): dropped without an id; now job (\d+) \((\S+)\)")
BURST = 10  # spoold.daemonlog: lines of one kind kept per minute


def _drop_many(spool, n: int) -> None:
    """n one-GPU job files written straight into pending/ without ids, as a
    sweep generator or cron job writes them."""
    for k in range(n):
        (spool.root / "pending" / f"010-anything-{k}.yaml").write_text(
            f'argv: ["true", "{k}"]\ngpus: 1\n')


def _unnamed(spool) -> int:
    return sum(1 for n in os.listdir(spool.root / "pending") if DROPPED.fullmatch(n))


def _log(spool) -> str:
    return (spool.root / "state" / "spoold.log").read_text()


def test_dropped_files_are_named_in_batches_one_log_line_each(spool, daemon_factory):
    spool.set_gpus(fake_gpu_list(4, BUSY))
    _drop_many(spool, 2000)
    daemon_factory()
    wait_for(lambda: _unnamed(spool) == 0, 60, "every dropped file named")
    names = os.listdir(spool.root / "pending")
    assert len(names) == 2000 and all(NAMED.fullmatch(n) for n in names)
    assert len({int(n[5:13]) for n in names}) == 2000  # one fresh id each

    def logged():  # a batch's line follows its renames (and their fsync)
        lines = [ln for ln in _log(spool).splitlines() if "dropped without an id" in ln]
        sizes = [int(m.group(1)) for ln in lines if (m := BATCH_LINE.search(ln))]
        # The log's rate limit keeps BURST lines of one kind a minute: below
        # that, every file is counted.
        return (lines, sizes) if len(lines) >= BURST or sum(sizes) >= 2000 else None

    lines, sizes = wait_for(logged, 30, "the batches' log lines")
    assert len(sizes) == len(lines), lines[:3]  # every line is a batch's line
    assert max(sizes) > 1 and len(lines) < 2000 / 20
    assert len(lines) >= BURST or sum(sizes) == 2000
    for line in lines:  # the files a line names in full are the ones renamed
        for old, job, new in ONE.findall(line):
            k = DROPPED.fullmatch(old).group(1)
            assert int(new[5:13]) == int(job)
            assert f'"{k}"' in (spool.root / "pending" / new).read_text()


def test_a_cpu_job_is_not_stuck_behind_the_naming(spool, daemon_factory):
    """A CPU job submitted while 2,000 dropped files wait runs before they are
    all named: the job itself counts the files still without an id."""
    spool.set_gpus(fake_gpu_list(4, BUSY))
    _drop_many(spool, 2000)
    daemon_factory(start=False).start(wait=False)
    job = spool.gsub("-n", "0", "--", "sh", "-c", 'ls "$0" | grep -c "^010-anything-" || true',
                     str(spool.root / "pending"))
    spool.wait_state(job, "done", timeout=60)
    assert int(spool.log(job).strip()) > 0
    wait_for(lambda: _unnamed(spool) == 0, 60, "every dropped file named")


def test_one_event_on_a_long_queue_keeps_the_queue_order(spool, daemon_factory):
    """After 3,000 pending jobs are read, single events (a new job ahead of
    all, a deep job moved to the front, the head removed) each update the
    queue: freed GPUs go to the jobs in the new order."""
    n = 3000
    spool.set_gpus(fake_gpu_list(4, BUSY))
    pending = spool.root / "pending"
    for i in range(1, n):
        (pending / f"0010-{i:08d}.yaml").write_text('argv: ["sleep", "60"]\ngpus: 1\n')
    (pending / f"0010-{n:08d}.yaml").write_text('argv: ["true"]\ngpus: 0\n')
    (spool.root / "state" / "next-id").write_text(f"{n + 2}\n")  # n + 1: dropped below
    daemon_factory("--max-pending", "10000")
    spool.wait_state(n, "done", timeout=60)  # the last in queue order: every file was read
    spool.drop(f"0005-{n + 1:08d}.yaml", 'argv: ["sleep", "60"]\ngpus: 1\n')
    os.rename(pending / "0010-00002500.yaml", pending / "0001-00002500.yaml")
    os.unlink(pending / "0010-00000001.yaml")
    # Events come in order: once a CPU job submitted after them has run, the
    # daemon has taken them in.
    spool.wait_state(spool.gsub("-n", "0", "--", "true"), "done")
    for gpu, expected in enumerate((2500, n + 1, 2)):
        spool.set_gpus(fake_gpu_list(4, {i: BUSY[i] for i in range(gpu + 1, 4)}))
        spool.wait_state(expected, "running")
        running = sorted(int(p.stem) for p in (spool.root / "running").glob("*.yaml"))
        assert running == sorted((2500, n + 1, 2)[:gpu + 1]), running


def test_listing_the_final_folders_never_takes_a_pass_s_whole_reading_slice(spool):
    """Reading a long unread queue starts with one listing of running/ and the
    final folders (which ids are used). With --keep's records that listing
    alone took the pass's 50 ms slice, every pass: the queue was never read.
    The slice now starts after the listing."""
    import time as clock

    from spoold import daemon as d
    from spoold import pending as pendingmod

    spool.run("gsub", "--array", "1-100", "-n", "1", "--", "true")
    dm = d.Daemon(d.parse_args(["--spool", str(spool.root), "--fake-gpus",
                                str(spool.gpu_file), "--host", "inproc"]))
    dm.lock()
    dm.setup_resources()
    listing = dm.queue.namer.used_ids

    def slow_listing():  # as long as a listing of ~100,000 records
        clock.sleep(2 * pendingmod.READ_SLICE_S)
        return listing()

    dm.queue.namer.used_ids = slow_listing
    dm.queue.refresh(clock.time(), True)
    assert len(dm.queue.cache) > 0, "the listing took the whole slice: nothing was read"
