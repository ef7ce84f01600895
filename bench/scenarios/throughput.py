"""Throughput with one submit command per job, and what each job costs the daemon.

How: N trivial jobs (`true`), submitted one after the other, 4 at a time
running (spoold: 4 fake GPUs and `gsub -n 1`; tsp: `tsp -S 4`; nq has no
slots and runs one job at a time). Time from the first submit until every
job is recorded (spoold: done/ + failed/ + cancelled/ count; tsp: `tsp -w`
on the last job, then `tsp -l` until all are finished; nq: `nq -w`).

Also measured on that run: the daemon's CPU per job (utime+stime of all
threads from /proc, split into the main thread and the others, i.e.
watchdog's), and its peak RSS (VmHWM); the same for tsp's server.
"""

from __future__ import annotations

import time

from harness import Ctx, call, log, proc_cpu_s, proc_mem_mb, thread_cpu_s, wait_for
from instance import Spoold
from peers import Nq, Tsp
from report import below, dig, per_peer, ratio_at_least, row

NAME = "throughput"
SLOTS = 4


def timed_batch(n: int, submit_all, wait_all) -> dict:
    """Time submit_all() (which submits n jobs) and then wait_all() (until all ended)."""
    t0 = time.perf_counter()
    submit_all()
    t_sub = time.perf_counter() - t0
    wait_all()
    t_all = time.perf_counter() - t0
    return {"n": n, "submit_s": t_sub, "total_s": t_all, "jobs_per_s": n / t_all}


def spoold_batch(ctx: Ctx, tag: str, n: int, submit_all) -> dict:
    """A daemon with SLOTS GPUs: timed_batch of submit_all(sp) until all n jobs are
    recorded, with the daemon's CPU per job and its memory."""
    sp = Spoold(ctx, tag, SLOTS)
    sp.start()
    try:
        time.sleep(1.0)  # past start-up
        cpu0, th0 = proc_cpu_s(sp.pid), thread_cpu_s(sp.pid)
        out = timed_batch(n, lambda: submit_all(sp), lambda: wait_for(
            lambda: sp.check_alive() and sp.ended() >= n, 600, 0.01, f"{n} spoold jobs"))
        mem = proc_mem_mb(sp.pid)
        cpu, th = proc_cpu_s(sp.pid) - cpu0, thread_cpu_s(sp.pid)
        return out | {"failed": sp.count("failed", "cancelled"),
                      "daemon_hwm_mb": mem.get("VmHWM"), "daemon_rss_mb": mem.get("VmRSS"),
                      "daemon_cpu_s": cpu, "daemon_cpu_ms_per_job": cpu / n * 1000,
                      "main_thread_cpu_ms_per_job": (th[0] - th0[0]) / n * 1000,
                      "other_threads_cpu_ms_per_job": (th[1] - th0[1]) / n * 1000}
    finally:
        sp.stop()


def cpu_rows(r: dict | None, tsp_ms: float | None = None) -> list[dict]:
    """Daemon CPU per job, split by thread (shared with the array scenario)."""
    mt, ot = dig(r, "main_thread_cpu_ms_per_job"), dig(r, "other_threads_cpu_ms_per_job")
    return [row("  daemon CPU per job", "ms", dig(r, "daemon_cpu_ms_per_job"), tsp_ms,
                note="while submitting too; the target row is the cpu scenario's"),
            row("    main thread + other threads", "ms",
                f"{mt:.1f} + {ot:.1f}" if mt is not None and ot is not None else None,
                ratio=False, note="other threads: watchdog's")]


def run_tsp(ctx: Ctx, n: int, tag: str = "tput") -> dict:
    ts = Tsp(ctx.tools["tsp"], ctx.path(f"{tag}-tsp"), slots=SLOTS)
    ts.start()
    ids = []

    def submit_all():
        for _ in range(n):
            ids.append(call(ts.submit_cmd(["true"]), ts.env, ts.dir).stdout.decode().strip())

    def wait_all():
        ts.wait_id(ids[-1], timeout=600)  # blocks in tsp: no polling while jobs run
        wait_for(lambda: ts.finished() >= n, 600, 0.01, "tsp jobs")

    try:
        out = timed_batch(n, submit_all, wait_all)
        pid = ts.server_pid()
        mem = proc_mem_mb(pid) if pid else {}
        return out | {"server_hwm_mb": mem.get("VmHWM"), "server_rss_mb": mem.get("VmRSS"),
                      "server_cpu_s": proc_cpu_s(pid) if pid else None}
    finally:
        ts.stop()


def run_nq(ctx: Ctx, n: int) -> dict:
    nq = Nq(ctx.tools["nq"], ctx.path("tput-nq"))

    def submit_all():
        for _ in range(n):
            call(nq.submit_cmd(["true"]), nq.env, nq.dir)

    return timed_batch(n, submit_all, lambda: nq.wait_all(600)) | {
        "note": "nq runs one job at a time (strictly serial queue)"}


def run(ctx: Ctx) -> dict:
    n = ctx.cfg["tput_n"]
    log(f"throughput: {n} trivial jobs per tool, {SLOTS} slots, one submit command each")
    out = {}
    if ctx.tools["tsp"]:
        out["tsp"] = run_tsp(ctx, n)
    if ctx.tools["nq"]:
        out["nq"] = run_nq(ctx, n)

    def submit_all(sp: Spoold) -> None:
        for _ in range(n):
            sp.submit(["true"], gpus=1)

    out["spoold"] = spoold_batch(ctx, "tput", n, submit_all)
    return out


def rows(r: dict, ctx: Ctx) -> list[dict]:
    n = dig(r, "spoold", "n") or dig(r, "tsp", "n")
    tsp_cpu = dig(r, "tsp", "server_cpu_s")
    return [
        row(f"throughput, {n or 'N'} jobs, one gsub each, {SLOTS} slots", "jobs/s",
            **per_peer(r, "jobs_per_s"), target=">= 0.4x tsp", check=ratio_at_least(0.4),
            note="nq: 1 job at a time"),
        row("  of which submitting", "s", **per_peer(r, "submit_s")),
        *cpu_rows(r.get("spoold"), tsp_cpu * 1000 / n if n and tsp_cpu is not None else None),
        row("peak RSS of the daemon (throughput run)", "MB", dig(r, "spoold", "daemon_hwm_mb"),
            dig(r, "tsp", "server_hwm_mb"), target="< 40 MB", check=below(40),
            note="issue 13's RSS row"),
    ]
