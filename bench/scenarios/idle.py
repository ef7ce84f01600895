"""Idle cost: the daemon's CPU, wake-ups and memory when nothing happens.

How: spoold with 4 fake GPUs (issue 13's setting) polled every second (`--poll 1`) and an empty
queue; after 2 s of start-up, CPU (utime+stime of all threads) and voluntary
context switches (wake-ups) from /proc over a window, and VmRSS/VmHWM. Then
the usual state of a GPU box, one long job (`sleep 3600`) running and nothing
else, over a second window. tsp's server, with and without a running job, is
measured over the same windows.
"""

from __future__ import annotations

import time

from harness import POLL, CpuMeter, Ctx, call, log, proc_mem_mb, wait_for
from instance import Spoold
from peers import Tsp
from report import below, dig, row

NAME = "idle"
GPUS = 4


def run(ctx: Ctx) -> dict:
    log(f"idle CPU: {ctx.cfg['idle_s']:g}s, {GPUS} fake GPUs, --poll {POLL:g}")
    sp = Spoold(ctx, "idle", GPUS)
    sp.start()
    ts = None
    try:
        if ctx.tools["tsp"]:
            ts = Tsp(ctx.tools["tsp"], ctx.path("idle-tsp"))
            ts.start()
        pids = {"spoold": sp.pid, "tsp": ts.server_pid() if ts else None}
        pids = {name: pid for name, pid in pids.items() if pid}
        time.sleep(2.0)  # past start-up
        meters = {name: CpuMeter(pid) for name, pid in pids.items()}
        time.sleep(ctx.cfg["idle_s"])
        sp.check_alive()
        out = {name: m.read() for name, m in meters.items()}
        for name, pid in pids.items():
            mem = proc_mem_mb(pid)
            out[name].update(rss_mb=mem.get("VmRSS"), hwm_mb=mem.get("VmHWM"))

        log(f"CPU with one long job running: {ctx.cfg['busy_s']:g}s")
        jid = sp.submit(["sleep", "3600"], gpus=1)
        wait_for(lambda: sp.check_alive() and sp.started(jid), 30, 0.01, "the sleep job")
        if ts:
            call(ts.submit_cmd(["sleep", "3600"]), ts.env, ts.dir)
        time.sleep(1.0)
        for m in meters.values():
            m.start()
        time.sleep(ctx.cfg["busy_s"])
        sp.check_alive()
        for name, m in meters.items():
            busy = m.read()
            out[name].update(one_job_cpu_pct=busy["cpu_pct"],
                             one_job_wakeups_per_s=busy["wakeups_per_s"])
        return out
    finally:
        sp.stop()
        if ts:
            ts.stop()


def rows(r: dict, ctx: Ctx) -> list[dict]:
    return [
        row(f"idle CPU, {GPUS} GPUs polled every {POLL:g} s", "%", dig(r, "spoold", "cpu_pct"),
            dig(r, "tsp", "cpu_pct"), target="< 0.5 %", check=below(0.5), ratio=False),
        row("  idle wake-ups", "/s", dig(r, "spoold", "wakeups_per_s"), ratio=False),
        row("  idle RSS", "MB", dig(r, "spoold", "rss_mb"), dig(r, "tsp", "rss_mb"),
            ratio=False),
        row("CPU while one long job runs", "%", dig(r, "spoold", "one_job_cpu_pct"),
            dig(r, "tsp", "one_job_cpu_pct"), ratio=False,
            note="not in issue 13; the usual state of a GPU box"),
        row("  wake-ups while one job runs", "/s", dig(r, "spoold", "one_job_wakeups_per_s"),
            ratio=False),
    ]
