"""The daemon's CPU per job on its own: N jobs queued before it starts, until all ran.

How: N trivial one-GPU jobs (`true`) from one `gsub --array 1-N`, written
while no daemon runs (so the files are gsub's, environment included), 4 idle
fake GPUs. Then the daemon starts, and its CPU (utime+stime of all its
threads, /proc/PID/stat; the shepherds and the jobs are other processes and
not counted) is read from its start until every job is recorded (done/ +
failed/ + cancelled/), T seconds later. Its idle CPU is taken off: a second
daemon, started the same way on a spool with nothing queued, is read after
the same T. Per job = (loaded − idle) / N. Start-up (Python, imports, the
first poll) is in both and cancels out; no submission runs meanwhile, so
what is left is what the N jobs cost the daemon: reading, claiming,
starting, recording and the watcher's events.
"""

from __future__ import annotations

import time

from harness import Ctx, log, proc_cpu_s, proc_mem_mb, thread_cpu_s, wait_for
from instance import Spoold
from report import dig, row

NAME = "cpu"
GPUS = 4
TARGET_MS = 2.0  # issue 13: daemon CPU per job (all threads) <= 2 ms


def run(ctx: Ctx) -> dict:
    n = ctx.cfg["cpu_n"]
    log(f"daemon CPU per job: {n} jobs queued before it starts, {GPUS} fake GPUs")
    sp = Spoold(ctx, "cpu", GPUS)
    ids = sp.submit(["true"], 1, ("--array", f"1-{n}")).split()
    if len(ids) != n:
        raise RuntimeError(f"gsub --array 1-{n} printed {len(ids)} ids")
    try:
        t0 = sp.start(wait=False)
        wait_for(lambda: sp.check_alive() and sp.ended() >= n, 600, 0.005, f"{n} spoold jobs")
        wall = time.time() - t0
        loaded, th = proc_cpu_s(sp.pid), thread_cpu_s(sp.pid)
        out = {"n": n, "wall_s": wall, "loaded_cpu_s": loaded,
               "failed": sp.count("failed", "cancelled"),
               "daemon_hwm_mb": proc_mem_mb(sp.pid).get("VmHWM")}
    finally:
        sp.stop()
    idle = Spoold(ctx, "cpu-idle", GPUS)
    try:
        t1 = idle.start(wait=False)
        time.sleep(max(0.0, wall - (time.time() - t1)))
        idle.check_alive()
        out["idle_cpu_s"], th_idle = proc_cpu_s(idle.pid), thread_cpu_s(idle.pid)
    finally:
        idle.stop()
    out["cpu_ms_per_job"] = (loaded - out["idle_cpu_s"]) / n * 1000
    out["main_thread_ms_per_job"] = (th[0] - th_idle[0]) / n * 1000
    out["other_threads_ms_per_job"] = (th[1] - th_idle[1]) / n * 1000
    return out


def rows(r: dict, ctx: Ctx) -> list[dict]:
    n = r.get("n") or "N"
    mt, ot = r.get("main_thread_ms_per_job"), r.get("other_threads_ms_per_job")
    return [
        row(f"daemon CPU per job, {n} queued jobs (all threads)", "ms", r.get("cpu_ms_per_job"),
            ratio=False, target=f"<= {TARGET_MS:g} ms", check=lambda v, _q: v <= TARGET_MS,
            note="minus an idle daemon's CPU over the same time"),
        row("  main thread + other threads", "ms",
            f"{mt:.1f} + {ot:.1f}" if mt is not None and ot is not None else None, ratio=False),
        row(f"  start -> all {n} ended", "s", r.get("wall_s"), ratio=False,
            note=f"{GPUS} slots; idle daemon over it: {1000 * r.get('idle_cpu_s', 0):.0f} ms"),
        row("  peak RSS of the daemon (cpu run)", "MB", dig(r, "daemon_hwm_mb"), ratio=False),
    ]
