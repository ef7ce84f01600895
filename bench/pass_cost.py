#!/usr/bin/env python3
"""Cost of one scheduling pass of spoold, piece by piece, with N jobs pending.

    python3 bench/pass_cost.py [N]          (default 100000)
    python3 bench/pass_cost.py N --mem    where the memory of a read queue goes (slow)

Builds a spool with N pending one-GPU jobs and four busy fake GPUs (as the
scale test of bench/run.py does), then calls the daemon's own code in this
process, with no event loop and no watchdog threads: the first scheduling pass
(every file parsed), a warm pass (nothing changed), and the parts a warm pass
is made of.  It uses spoold's internal API (Daemon, schedule_pass, Spool), so
it may need a touch when those change; bench/run.py does not depend on it.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spoold import daemon as d  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def timeit(fn, repeat=3):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 100_000
    mem = "--mem" in sys.argv
    root = Path(tempfile.mkdtemp(prefix="spoold-passcost-"))
    try:
        gpus = root / "gpus.yaml"
        gpus.write_text("".join(
            f"- {{index: {i}, uuid: GPU-{i}, name: Fake, memory_total: 81559, "
            f"memory_used: 80000, utilization: 100}}\n" for i in range(4)))
        spool = root / "spool"
        opts = d.parse_args(["--spool", str(spool), "--fake-gpus", str(gpus), "--host", "bench",
                             "--max-pending", str(2 * n)])
        dm = d.Daemon(opts)
        dm.lock()
        dm.setup_resources()
        pend = spool / "pending"
        body = b'argv: ["true"]\ngpus: 1\n'
        for i in range(1, n + 1):
            fd = os.open(pend / f"0010-{i:08d}.yaml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, body)
            os.close(fd)
        (spool / "state" / "next-id").write_text(f"{n + 1}\n")
        import logging
        logging.getLogger("spoold").setLevel(logging.WARNING)
        print(f"{n} pending jobs, 4 busy GPUs; one pass of Daemon.schedule_pass, in-process")

        # schedule_pass(now) in older versions, schedule_pass(now, full) in newer ones
        has_full = "full" in inspect.signature(dm.schedule_pass).parameters

        def pass_(full):
            return dm.schedule_pass(time.time(), full) if has_full else \
                dm.schedule_pass(time.time())

        rss0 = rss_mib()
        if mem:
            tracemalloc.start(1)
        t = time.perf_counter()
        pass_(True)
        first = time.perf_counter() - t
        passes = 1
        while getattr(dm, "unparsed", 0):  # newer daemons read a long queue in slices
            pass_(False)
            passes += 1
        cold = time.perf_counter() - t
        grew = rss_mib() - rss0
        if mem:
            snap = tracemalloc.take_snapshot()
            tracemalloc.stop()
            print("  memory held after every file was read, by allocation site:")
            for st in snap.statistics("lineno")[:12]:
                fr = st.traceback[0]
                where = f"{Path(fr.filename).parent.name}/{Path(fr.filename).name}:{fr.lineno}"
                print(f"    {st.size / 2**20:7.1f} MiB {st.size / n:6.0f} B/job  {where}")
        print(f"  first pass:                              {first * 1000:9.1f} ms")
        print(f"  every file read and parsed:              {cold * 1000:9.1f} ms in {passes} "
              f"pass(es) ({cold / n * 1e6:.1f} us/job); RSS grew {grew:.0f} MiB "
              f"({grew * 2**20 / n:.0f} B/job)")
        warm = timeit(lambda: pass_(True))
        print(f"  warm pass, full re-check:                {warm * 1000:9.1f} ms "
              f"({warm / n * 1e6:.2f} us/job)")
        if has_full:
            warm = timeit(lambda: pass_(False))
            print(f"  warm pass, no event since the last one:  {warm * 1000:9.1f} ms "
                  f"({warm / n * 1e6:.2f} us/job)")
            if hasattr(dm, "touched"):
                last = dm.spool.list_pending()[-1].name

                def one_event():
                    dm.touched.add(last)  # what one inotify event in pending/ does
                    pass_(False)

                warm = timeit(one_event)
                print(f"  warm pass after one event in pending/:   {warm * 1000:9.1f} ms "
                      f"({warm / n * 1e6:.2f} us/job)")

        names = dm.spool.list_pending()
        def scan():
            with os.scandir(pend) as it:
                return [e.name for e in it]

        parts = {
            "Spool.list_pending (scandir, regex, sort)": lambda: dm.spool.list_pending(),
            "  of which os.scandir alone": scan,
            "  of which parse_pending_name": lambda: [d.spoolmod.parse_pending_name(p.name)
                                                     for p in names],
            "  of which sorting PendingName dataclasses": lambda: sorted(names),
            "os.lstat of every pending file": lambda: [os.lstat(pend / p.name) for p in names],
            "Daemon.load_pending, cache hits": lambda: [dm.load_pending(p.name, time.time())
                                                        for p in names],
        }

        for label, fn in parts.items():
            print(f"  {label:41s} {timeit(fn) * 1000:9.1f} ms")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
