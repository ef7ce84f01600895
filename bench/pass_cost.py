#!/usr/bin/env python3
"""Cost of one scheduling pass of spoold, piece by piece, with N jobs pending.

    python3 bench/pass_cost.py [N]          (default 100000)
    python3 bench/pass_cost.py N --mem    where the memory of a read queue goes (slow)

Builds a spool with N pending one-GPU jobs and four busy fake GPUs (as the
scale scenario does), then calls the daemon's own code in this process, with
no event loop and no watcher threads: the first scheduling pass (every file
read), a warm pass (nothing changed), a pass after one event in pending/ (the
name marked touched, as the watcher's event does), and the parts a pass is
made of. Nothing is patched; but it calls spoold's internal API (Daemon,
schedule_pass, the pending mirror ``Daemon.queue``), so it may need a touch
when those change. bench/run.py does not depend on it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from instance import fake_gpus_yaml, write_pending

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from spoold import daemon as d  # noqa: E402
from spoold import spool as spoolmod  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def show(label: str, seconds: float, n: int) -> None:
    print(f"  {label:41s} {seconds * 1000:9.1f} ms ({seconds / n * 1e6:.2f} us/job)")


def top_allocations(snap, n: int) -> None:
    print("  memory held after every file was read, by allocation site:")
    for st in snap.statistics("lineno")[:12]:
        fr = st.traceback[0]
        where = f"{Path(fr.filename).parent.name}/{Path(fr.filename).name}:{fr.lineno}"
        print(f"    {st.size / 2**20:7.1f} MiB {st.size / n:6.0f} B/job  {where}")


def measure(root: Path, n: int, mem: bool) -> None:
    gpus = root / "gpus.yaml"
    gpus.write_text(fake_gpus_yaml([True] * 4))
    spool = root / "spool"
    dm = d.Daemon(d.parse_args(["--spool", str(spool), "--fake-gpus", str(gpus), "--host",
                                "bench", "--max-pending", str(2 * n)]))
    dm.lock()
    dm.setup_resources()
    write_pending(spool, n)
    logging.getLogger("spoold").setLevel(logging.WARNING)
    print(f"{n} pending jobs, 4 busy GPUs; one pass of Daemon.schedule_pass, in-process")
    q = dm.queue

    def pass_(full: bool) -> None:
        dm.schedule_pass(time.time(), full)

    rss0 = rss_mib()
    if mem:
        tracemalloc.start(1)
    t = time.perf_counter()
    pass_(True)
    first, passes = time.perf_counter() - t, 1
    while q.unparsed:  # a long queue is read in slices, one per pass
        pass_(False)
        passes += 1
    cold = time.perf_counter() - t
    grew = rss_mib() - rss0
    if mem:
        top_allocations(tracemalloc.take_snapshot(), n)
        tracemalloc.stop()
    show("first pass:", first, n)
    show(f"every file read ({passes} passes):", cold, n)
    print(f"  RSS grew {grew:.0f} MiB ({grew * 2**20 / n:.0f} B/job)")
    show("warm pass, full re-check:", best_of(lambda: pass_(True)), n)
    show("warm pass, no event since the last one:", best_of(lambda: pass_(False)), n)
    last = dm.spool.list_pending()[-1].name

    def one_event() -> None:
        q.touched.add(last)  # what one watcher event about that name amounts to
        pass_(False)

    show("warm pass after one event in pending/:", best_of(one_event), n)

    names = dm.spool.list_pending()
    pend = spool / "pending"

    def scan():
        with os.scandir(pend) as it:
            return [e.name for e in it]

    parts = {
        "Spool.list_pending (scandir, regex, sort)": dm.spool.list_pending,
        "  of which os.scandir alone": scan,
        "  of which parse_pending_name": lambda: [spoolmod.parse_pending_name(p.name)
                                                 for p in names],
        "  of which sorting the PendingNames": lambda: sorted(names),
        "os.lstat of every pending file": lambda: [os.lstat(pend / p.name) for p in names],
        "load_pending, every name a cache hit": lambda: [q.load_pending(p.name, time.time())
                                                         for p in names],
    }
    for label, fn in parts.items():
        show(label, best_of(fn), n)


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = Path(tempfile.mkdtemp(prefix="spoold-passcost-"))
    try:
        measure(root, int(args[0]) if args else 100_000, "--mem" in sys.argv)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
