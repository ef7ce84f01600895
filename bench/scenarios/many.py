"""The daemon's CPU per short job while many others run: the per-pass costs
that grow with the number of running jobs.

How: R CPU jobs (`sleep 600`, one `gsub -n 0 --array 1-R`) are started and
left running, 4 idle fake GPUs; then N trivial jobs (`true`, `-n 0`) are
submitted one gsub each, and the daemon's CPU (utime+stime of all its
threads, /proc/PID/stat) is read from the first submission until all N have
ended, T seconds later. The same daemon, the R jobs still running and
nothing submitted, is then read over another T seconds, and that is taken
off (its GPU polls, its once-a-second look at every run file). Per job =
(loaded - quiet) / N. Stopping the daemon kills the sleepers with the rest
of the spool's processes. No target: issue 13 has none for it.
"""

from __future__ import annotations

import time

from harness import Ctx, log, proc_cpu_s, wait_for
from instance import Spoold
from report import row

NAME = "many"
GPUS = 4


def run(ctx: Ctx) -> dict:
    running, n = ctx.cfg["many_running"], ctx.cfg["many_n"]
    log(f"many running: {n} short jobs, one gsub each, beside {running} running ones")
    sp = Spoold(ctx, "many", GPUS)
    try:
        sp.start()
        sp.submit(["sleep", "600"], 0, ("--array", f"1-{running}"))
        wait_for(lambda: sp.check_alive() and sp.count("running") >= running, 120, 0.05,
                 f"{running} running jobs")
        c0, t0 = proc_cpu_s(sp.pid), time.time()
        for _ in range(n):
            sp.submit(["true"], 0)
        wait_for(lambda: sp.check_alive() and sp.ended() >= n, 300, 0.01, f"{n} short jobs")
        loaded, wall = proc_cpu_s(sp.pid) - c0, time.time() - t0
        time.sleep(wall)  # the quiet stretch, as long: what the running jobs cost alone
        quiet = proc_cpu_s(sp.pid) - c0 - loaded
        sp.check_alive()
    finally:
        sp.stop()
    return {"running": running, "n": n, "wall_s": wall, "loaded_cpu_s": loaded,
            "quiet_cpu_s": quiet, "cpu_ms_per_job": (loaded - quiet) / n * 1000}


def rows(r: dict, ctx: Ctx) -> list[dict]:
    return [row(f"daemon CPU per short job, {r.get('running', 'R')} running, one gsub each",
                "ms", r.get("cpu_ms_per_job"), ratio=False,
                note="minus the same daemon's CPU over as long with nothing submitted"),
            row("  the running jobs alone over that time", "ms",
                1000 * r["quiet_cpu_s"] if "quiet_cpu_s" in r else None, ratio=False)]
