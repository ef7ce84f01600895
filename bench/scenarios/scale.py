"""A long queue: spoold with N jobs pending (100k; 10k in quick mode), issue 13's scale rows.

How: N one-GPU jobs are written straight into pending/ and state/next-id set,
with all 4 fake GPUs at 100 % utilisation, so nothing can start. Measured:
- start-up: until the first GPU snapshot is written, and until the daemon
  answers a request. A malformed request file is removed at the start of a
  tick; the second of two such probes (dropped one after the other) goes only
  once a whole tick, first scheduling pass included, has ended;
- memory after start, time until quiet (< 20 % of a core for 1 s, since a
  daemon may read a long queue in slices), CPU while nothing changes, and the
  peak RSS (VmHWM) at the end of the scenario;
- gsub with the queue against gsub on an empty queue, in the same run and the
  same way: a second daemon on an empty spool runs alongside, both started
  with a long --host-timeout and both frozen (SIGSTOP) while GSUB_N gsubs go
  to each spool in turn, so that gsub sees a live host and no daemon takes
  CPU from it;
- one event handled: a cancel request for a pending job (requests/cancel-ID,
  as gcancel writes it) until the job is in cancelled/, and one job file
  dropped without an id (written in tmp/, renamed into pending/) until it is
  named; each then followed by two probe ticks, until the daemon answers
  again (a long pass after the event keeps it deaf meanwhile). Each SAMPLES
  times, medians, each after the daemon answered two probes in a row;
- gstat: wall time of the whole command (table output), median of GSTAT_N
  (fewer once they took GSTAT_BUDGET_S);
- "GPU freed by others": a fake GPU reads idle again (the file rewritten), so
  job k+1 takes it: wall time, and time from the poll that saw it (the `time`
  of the first snapshot showing the GPU idle) until the claim;
- "our job ends": jobs 1-6 record their start and wait on a fifo; closing one
  ends the job, and the next job in the queue takes its GPU;
- how long one start keeps the daemon deaf: two probe ticks, asked 0.6 s
  after the last claim.
Each claim sample is taken 3 times (medians shown), each after the daemon
answered two probes in a row, so that it meets a daemon that is not mid-pass.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time

from harness import (
    POLL,
    CpuMeter,
    Ctx,
    log,
    median_of,
    proc_cpu_s,
    proc_mem_mb,
    summary_ms,
    timed,
    wait_for,
)
from instance import Spoold, write_pending
from report import below, dig, row

NAME = "scale"
N_SPECIAL = 6  # jobs 1..6 record their start and wait on a fifo
SAMPLES = 3
FULL_N = 100_000
GSUB_N = 10  # gsubs per spool, in blocks of GSUB_BLOCK, the spools in turn
GSUB_BLOCK = 5
GSTAT_N = 3
GSTAT_BUDGET_S = 10.0
EVENT_MS = 20  # issue 13: one scheduling pass after one event < 20 ms
RSS_MB = 100  # issue 13: peak RSS with 100k pending < 100 MB
GSTAT_S = 1  # issue 13: gstat < 1 s
GSUB_RATIO = 2  # issue 13: gsub with 100k pending <= 2x gsub on an empty queue
DAEMON_OPTS = ["--host-timeout", "3600"]  # heartbeats stay live while frozen


def wait_quiet(pid: int, limit: float, level: float = 0.2, span: int = 4) -> float | None:
    """Wait until the process used under `level` of a core in each of `span` windows of
    0.25 s in a row; return how long that took (None: not within `limit` seconds)."""
    t0 = time.perf_counter()
    win, c_prev, w_prev = [], proc_cpu_s(pid), t0
    while time.perf_counter() - t0 < limit:
        time.sleep(0.25)
        c, w = proc_cpu_s(pid), time.perf_counter()
        win.append((c - c_prev) / (w - w_prev))
        c_prev, w_prev = c, w
        if len(win) >= span and max(win[-span:]) < level:
            return max(0.0, w - t0 - 0.25 * span)
    return None


class Probe:
    """Malformed request files: the daemon removes one at the start of each tick."""

    def __init__(self, sp: Spoold):
        self.sp = sp
        self.n = 0

    def ticks(self, limit: float = 60.0, n: int = 2) -> list[float]:
        """Drop n probes, each once the previous is gone; return the seconds until each
        went. The last goes only after a whole tick (and any long pass in it) ended."""
        t0 = time.perf_counter()
        out = []
        for _ in range(n):
            self.n += 1
            probe = self.sp.spool / "requests" / f"bench-probe-{self.n}"
            probe.write_text("")
            wait_for(lambda p=probe: self.sp.check_alive() and not p.exists(),
                     max(0.0, limit - (time.perf_counter() - t0)), 0.001, "a daemon tick")
            out.append(time.perf_counter() - t0)
        return out


def close_fifo(fifo, timeout: float = 5.0) -> None:
    """Open a fifo for writing and close it at once: its reader sees EOF."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError as e:  # ENXIO: the reader has not opened it yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reader on {fifo}: {e}") from None
            time.sleep(0.001)


def start_up(ctx: Ctx, sp: Spoold, probe: Probe, n: int, out: dict) -> None:
    ready_max = 60.0 if ctx.quick else 300.0
    t0 = sp.start(["--max-pending", str(2 * n + 100), *DAEMON_OPTS], wait=False)
    _, t_snap = wait_for(lambda: sp.check_alive() and sp.snapshot(), ready_max, 0.002,
                         "the first GPU snapshot")
    ticks = probe.ticks(ready_max)
    out["snapshot_file"] = str(sp.snapshot().relative_to(sp.spool))
    out["start_gpus_yaml_s"] = t_snap - t0
    out["start_probe1_s"] = t_snap - t0 + ticks[0]
    out["start_responsive_s"] = t_snap - t0 + ticks[-1]
    time.sleep(0.5)
    out["after_start_mem_mb"] = proc_mem_mb(sp.pid)
    settle_max = ctx.cfg["settle_max_s"]
    q = wait_quiet(sp.pid, max(1.0, settle_max - (time.time() - t0)))
    out["settled_s"] = time.time() - 1.0 - t0 if q is not None else None
    out["settle_max_s"] = settle_max
    out["settled_mem_mb"] = proc_mem_mb(sp.pid)
    meter = CpuMeter(sp.pid)  # with the queue full and every GPU busy
    time.sleep(ctx.cfg["scale_idle_s"])
    idle = meter.read()
    out["idle_cpu_pct"], out["idle_wakeups_per_s"] = idle["cpu_pct"], idle["wakeups_per_s"]


def first_idle_poll(sp: Spoold, gpu: int, seen: dict) -> None:
    """Note in seen["poll"] the `time` of the first snapshot that shows `gpu` idle
    (the snapshot is rewritten by rename at every poll: a new inode is a new one)."""
    if seen.get("poll") is not None:
        return
    snap = sp.snapshot()
    with contextlib.suppress(OSError, TypeError, KeyError, StopIteration, ValueError):
        ino = snap.stat().st_ino
        if ino != seen.get("ino"):
            seen["ino"] = ino
            data = sp.read_yaml(snap)
            if next(g for g in data["gpus"] if g["index"] == gpu).get("busy") is None:
                seen["poll"] = float(data["time"])


def claim_sample(sp: Spoold, probe: Probe, rnd, job: int, mark, release, gpu=None) -> dict:
    """Let any pass end, call release() at a random moment, time until `job` is claimed
    (in running/) and until it runs; with `gpu`, also from the poll that saw it idle."""
    time.sleep(0.6)
    quiet = probe.ticks()[-1]
    time.sleep(rnd.uniform(0.1, 1.0))  # any phase of the poll timer
    seen = {"ino": sp.snapshot().stat().st_ino}
    t = time.time()
    release()

    def claimed():
        sp.check_alive()
        if gpu is not None:
            first_idle_poll(sp, gpu, seen)
        return sp.is_running(job)

    try:
        _, t_claim = wait_for(claimed, 60, 0.0005, f"job {job} in running/")
    except TimeoutError as e:
        raise TimeoutError(f"{e}: {sp.describe(job)}") from None
    stamp = sp.wait_stamp(str(job), mark)
    s = {"quiet_wait_ms": quiet * 1000, "claim_ms": (t_claim - t) * 1000,
         "job_start_ms": (stamp - t) * 1000, "t_claim": t_claim}
    if gpu is not None and seen.get("poll"):
        s["wait_for_poll_ms"] = (seen["poll"] - t) * 1000
        s["poll_to_claim_ms"] = (t_claim - seen["poll"]) * 1000
    return s


def gsub_both(ctx: Ctx, empty: Spoold, sp: Spoold) -> tuple[dict, dict]:
    """gsub's wall time on the empty spool and on the long queue, both daemons frozen,
    the spools in turn (blocks of GSUB_BLOCK)."""
    times: dict[str, list[float]] = {"empty": [], "queue": []}
    with empty.frozen(), sp.frozen():
        for _ in range(GSUB_N // GSUB_BLOCK):
            for name, d in (("empty", empty), ("queue", sp)):
                times[name] += [timed(d.submit_cmd(["true"], gpus=1), d.env, d.root)
                                for _ in range(GSUB_BLOCK)]
    return summary_ms(times["empty"]), summary_ms(times["queue"])


def event_sample(sp: Spoold, probe: Probe, act, effect, what: str) -> dict:
    """Once the daemon is between passes: act(), then time until effect() holds, and
    until it answered two probes dropped after that (a pass after the event is over)."""
    time.sleep(0.3)
    probe.ticks()
    t = time.perf_counter()
    act()
    try:
        wait_for(lambda: sp.check_alive() and effect(), 60, 0.0005, what)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; daemon log tail:\n{sp.log_tail(1500)}") from None
    seen = time.perf_counter() - t
    probe.ticks()
    return {"effect_ms": seen * 1000, "answers_ms": (time.perf_counter() - t) * 1000}


def events(sp: Spoold, probe: Probe, n: int) -> dict:
    """One event, then its effect: a cancel request for a pending job (from the end of the
    queue), and one job file dropped without an id (named by the daemon)."""
    cancel, drop = [], []
    for k in range(SAMPLES):
        job = n - k
        req = sp.spool / "requests" / f"cancel-{job}"
        cancel.append(event_sample(
            sp, probe, lambda r=req: os.close(os.open(r, os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
            lambda j=job: (sp.spool / "cancelled" / f"{j}.yaml").exists(),
            f"job {job} in cancelled/"))
        name = f"0010-bench-event-{k}.yaml"
        staged = sp.spool / "tmp" / name
        staged.write_text('argv: ["true"]\ngpus: 1\n')
        drop.append(event_sample(
            sp, probe, lambda s=staged, d=sp.spool / "pending" / name: os.rename(s, d),
            lambda d=sp.spool / "pending" / name: not d.exists(), f"pending/{name} named"))
    return {"cancel": {k: median_of(cancel, k) for k in ("effect_ms", "answers_ms")},
            "drop": {k: median_of(drop, k) for k in ("effect_ms", "answers_ms")},
            "cancel_samples": cancel, "drop_samples": drop}


def gstat_times(sp: Spoold) -> dict:
    """gstat as a user runs it (the console script's entry point), the table to a pipe;
    GSTAT_N times, or fewer once they took GSTAT_BUDGET_S (a slow gstat is slow once)."""
    cmd = [sys.executable, "-c", "import sys; from spoold.tools import gstat_main; "
           "sys.argv[0] = 'gstat'; sys.exit(gstat_main())", "--spool", str(sp.spool)]
    times: list[float] = []
    while len(times) < GSTAT_N and sum(times) < GSTAT_BUDGET_S:
        times.append(timed(cmd, sp.env, sp.root, timeout=300))
    return summary_ms(times)


def run(ctx: Ctx) -> dict:
    n = ctx.cfg["scale_n"]
    log(f"scale: {n} pending jobs, all 4 fake GPUs busy")
    sp = Spoold(ctx, "scale", 4, busy=True)
    empty = Spoold(ctx, "scale-empty", 4, busy=True)
    fifos = [ctx.path(f"scale-fifo{i}") for i in range(1, N_SPECIAL + 1)]
    marks = [ctx.path(f"scale-t{i}") for i in range(1, N_SPECIAL + 1)]
    for f in fifos:
        os.mkfifo(f)
    out: dict = {"n": n}
    g0 = time.perf_counter()
    write_pending(sp.spool, n, {
        i: f'argv: ["sh", "-c", "date +%s.%N > {m}; exec cat {f}"]\ngpus: 1\n'.encode()
        for i, (f, m) in enumerate(zip(fifos, marks, strict=True), 1)})
    out["generate_s"] = time.perf_counter() - g0
    cap = str(2 * n + 100)
    for d in (sp, empty):
        (d.spool / "state" / "max-pending").write_text(f"{cap}\n")
    rnd = random.Random(11)
    probe = Probe(sp)
    try:
        empty.start(["--max-pending", cap, *DAEMON_OPTS])
        log("scale: starting spoold")
        start_up(ctx, sp, probe, n, out)
        out["gsub_empty"], out["gsub_with_queue"] = gsub_both(ctx, empty, sp)
        empty.stop()
        out["events"] = events(sp, probe, n)
        out["gstat"] = gstat_times(sp)
        busy = [True] * sp.n_gpus

        def free(k):
            busy[k] = False
            sp.set_gpus(busy)

        # 1) another user's load goes away: GPU k reads idle at the next poll; job k+1
        # takes it. 2) our own job k+1 ends (EOF on its fifo): job k+4 takes its GPU.
        ext = [claim_sample(sp, probe, rnd, k + 1, marks[k], lambda k=k: free(k), gpu=k)
               for k in range(SAMPLES)]
        own = [claim_sample(sp, probe, rnd, k + 4, marks[k + 3],
                            lambda k=k: close_fifo(fifos[k])) for k in range(SAMPLES)]
        for k in range(SAMPLES):
            own[k]["ended_state"] = wait_for(lambda j=k + 1: sp.finished(str(j)), 30, 0.001,
                                             f"job {k + 1} recorded")[0]
        out["freed_external_samples"], out["own_job_end_samples"] = ext, own
        out["freed_external"] = {k: median_of(ext, k) for k in (
            "quiet_wait_ms", "claim_ms", "job_start_ms", "wait_for_poll_ms", "poll_to_claim_ms")}
        out["own_job_end"] = {k: median_of(own, k) for k in ("claim_ms", "job_start_ms")}
        # How long one start keeps the daemon deaf: two ticks, asked 0.6 s after the
        # last claim (the 0.6 s let inotify events of the claim arrive).
        time.sleep(max(0.0, own[-1]["t_claim"] + 0.6 - time.time()))
        out["busy_after_start_s"] = probe.ticks()[-1]
        out["end_mem_mb"] = proc_mem_mb(sp.pid)
    finally:
        for f in fifos:
            with contextlib.suppress(OSError, TimeoutError):
                close_fifo(f, 0.05)
        sp.stop()
        empty.stop()
    return out


def rows(r: dict, ctx: Ctx) -> list[dict]:
    n = r.get("n")
    if not n:
        return []
    k = f"{n // 1000}k" if n >= 1000 else str(n)
    full = n >= FULL_N  # the targets are for 100k: a smaller queue gets no verdict
    scope = "" if full else f" ({FULL_N // 1000}k)"

    def verdict(check):
        return check if full else (lambda _v, _q: None)

    def line(metric, unit, v, limit=None, note=""):
        """A row of this scenario; `limit`: the target is v < limit."""
        if limit is None:
            return row(f"{k} pending: {metric}", unit, v, ratio=False, note=note)
        return row(f"{k} pending: {metric}", unit, v, ratio=False, note=note,
                   target=f"< {limit} {unit}{scope}", check=verdict(below(limit)))

    settled = r.get("settled_s")
    g_empty, g_queue = dig(r, "gsub_empty", "median_ms"), dig(r, "gsub_with_queue", "median_ms")
    return [
        line("start until GPU snapshot written", "s", r.get("start_gpus_yaml_s")),
        line("start until it answers a request", "s", r.get("start_responsive_s"),
             note="first scheduling pass done"),
        line("RSS after start", "MB", dig(r, "after_start_mem_mb", "VmRSS")),
        line("start until quiet (< 20 % CPU)", "s",
             settled if settled is not None else f"> {r.get('settle_max_s'):g}",
             note="rows below are measured from here on"),
        line("CPU while nothing changes", "%", r.get("idle_cpu_pct")),
        line("one event handled: cancel request -> in cancelled/", "ms",
             dig(r, "events", "cancel", "effect_ms"), EVENT_MS),
        line("  ... then answering again (2 probe ticks)", "ms",
             dig(r, "events", "cancel", "answers_ms"), EVENT_MS, "the pass after it is over"),
        line("one event handled: job file dropped -> named", "ms",
             dig(r, "events", "drop", "effect_ms"), EVENT_MS),
        line("  ... then answering again (2 probe ticks)", "ms",
             dig(r, "events", "drop", "answers_ms"), EVENT_MS, "the pass after it is over"),
        line("gstat wall time", "s", None if dig(r, "gstat", "median_ms") is None
             else r["gstat"]["median_ms"] / 1000, GSTAT_S,
             f"the whole table; median of {dig(r, 'gstat', 'n')}"),
        row(f"gsub with {k} pending", "ms", g_queue, ratio=False,
            note="live heartbeat, daemon frozen"),
        row("gsub on an empty queue (same run, same way)", "ms", g_empty, ratio=False),
        row(f"gsub with {k} pending / on an empty queue", "x",
            g_queue / g_empty if g_queue and g_empty else None, ratio=False,
            target=f"<= {GSUB_RATIO}x{scope}", check=verdict(lambda v, _q: v <= GSUB_RATIO)),
        line("GPU freed by others -> claimed (wall)", "ms",
             dig(r, "freed_external", "claim_ms"),
             note=f"includes waiting for the next poll (<= {POLL:g} s)"),
        line("  ... from the poll that saw it", "ms",
             dig(r, "freed_external", "poll_to_claim_ms")),
        line("own job ends -> next claimed", "ms", dig(r, "own_job_end", "claim_ms"),
             note="event-driven, no poll involved"),
        line("own job ends -> next job runs", "ms", dig(r, "own_job_end", "job_start_ms")),
        line("2 ticks, asked 0.6 s after a start", "ms",
             None if r.get("busy_after_start_s") is None else r["busy_after_start_s"] * 1000,
             note="how long a start keeps it deaf"),
        line("peak RSS", "MB", dig(r, "end_mem_mb", "VmHWM"), RSS_MB,
             note="at the end of the scenario"),
    ]
