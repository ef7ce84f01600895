"""What every benchmark scenario shares: the run's context, commands, timing and clean-up.

Owns:
- ``Ctx``: one run's settings (quick or full sizes, the tree under test, the temp
  root, the peers found, the shell gsub runs under, the profiler), and the
  results of the scenarios already run (the array scenario reuses tsp's
  throughput on the same jobs).
- Running and timing commands (``run``, ``timed``), polling (``wait_for``) and
  the statistics the report prints (``pctl``, ``summary_ms``).
- Reading a process's CPU, memory and wake-ups from /proc.
- Clean-up. Every process started here carries ``MARK`` in its environment (or
  the temp root in a path); ``cleanup`` kills every such process, so no daemon,
  tsp server or job is left behind, whatever way the run ends.

Stdlib only; scenarios add PyYAML where they read the spool.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

MARK = f"SPOOLD_BENCH_MARK={uuid.uuid4().hex}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL = 1.0  # --poll given to every spoold

# Sizes of each scenario; a scenario reads only its own keys. The full sizes are
# issue 13's (500 jobs, 20,000 dropped files, 100,000 pending); quick mode keeps
# every scenario and shrinks them so that CI's `--quick` stays near a minute.
QUICK = dict(submit_n=30, start_n=8, tput_n=100, cpu_n=100, many_running=50, many_n=50,
             idle_s=5.0, busy_s=3.0,
             dropped_n=5_000, scale_n=10_000, scale_idle_s=3.0, settle_max_s=30.0)
FULL = dict(submit_n=120, start_n=20, tput_n=500, cpu_n=500, many_running=200, many_n=300,
            idle_s=30.0, busy_s=10.0,
            dropped_n=20_000, scale_n=100_000, scale_idle_s=5.0, settle_max_s=120.0)


@dataclass
class Ctx:
    """One run: what every scenario gets."""

    repo: Path  # the spoold tree under test: its spoold/ and bin/gsub
    tmp: Path  # private state of every tool lives below this
    cfg: dict  # QUICK or FULL, with --scale-n applied
    quick: bool
    tools: dict  # "tsp"/"nq" -> path, or None when not installed
    gsub_sh: str  # the shell gsub runs under (dash where there is one)
    profile: str | None = None  # "cprofile", "py-spy" or None
    profile_dir: Path | None = None
    started: list = field(default_factory=list)  # Popen objects, stopped by cleanup()
    results: dict = field(default_factory=dict)  # NAME -> run()'s result, as each ends

    def path(self, name: str) -> Path:
        return self.tmp / name


# ---------------------------------------------------------------- commands
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_env(**extra: str) -> dict:
    """The caller's environment plus our marker (for the clean-up sweep)."""
    env = dict(os.environ)
    k, v = MARK.split("=", 1)
    env[k] = v
    env.update(extra)
    return env


def _failed(cmd, r) -> RuntimeError:
    return RuntimeError(f"{cmd[:4]} exited {r.returncode}: "
                        f"{r.stderr.decode(errors='replace')[-500:]}")


def call(cmd, env, cwd: Path, timeout: float = 60, check: bool = True):
    r = subprocess.run(cmd, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                       capture_output=True, cwd=cwd)
    if check and r.returncode != 0:
        raise _failed(cmd, r)
    return r


def timed(cmd, env, cwd: Path, timeout: float = 30) -> float:
    """Wall time of one command, fork+exec included, as a user's shell would see it."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                       capture_output=True, cwd=cwd)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise _failed(cmd, r)
    return dt


def wait_for(pred, timeout: float, interval: float = 0.001, what: str = "condition"):
    """Poll pred() until truthy; return (value, time.time() when seen). Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v, time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def read_stamp(path: Path) -> float | None:
    """A `date +%s.%N` a job wrote, or None while it is not there (yet)."""
    try:
        return float(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def stamp_job(mark: Path) -> list[str]:
    """A job that records when it started (written whole, by rename)."""
    return ["sh", "-c", f"date +%s.%N > {mark}.tmp && mv {mark}.tmp {mark}"]


# ---------------------------------------------------------------- statistics
def pctl(values: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (q in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "median_ms": pctl(ms, 50), "p90_ms": pctl(ms, 90),
            "min_ms": min(ms, default=None), "max_ms": max(ms, default=None),
            "mean_ms": statistics.fmean(ms) if ms else None}


def median_of(rows: list[dict], key: str) -> float | None:
    return pctl([r[key] for r in rows if r.get(key) is not None], 50)


# ---------------------------------------------------------------- /proc
def _stat_cpu(path: str) -> float:
    with open(path, "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds."""
    return _stat_cpu(f"/proc/{pid}/stat")


def thread_cpu_s(pid: int) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds; threads that ended are not counted."""
    main = other = 0.0
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                v = _stat_cpu(f"/proc/{pid}/task/{t}/stat")
                if int(t) == pid:
                    main += v
                else:
                    other += v
    return main, other


def proc_mem_mb(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak) in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024.0
    return out


def proc_ctxsw(pid: int) -> int:
    """Voluntary context switches over all threads: roughly, wake-ups."""
    n = 0
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        n += int(line.split()[1])
    return n


class CpuMeter:
    """CPU use and wake-ups of one process over a window: (re)start(), then read()."""

    def __init__(self, pid: int):
        self.pid = pid
        self.start()

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.c0 = proc_cpu_s(self.pid)
        self.w0 = proc_ctxsw(self.pid)

    def read(self) -> dict:
        dt = time.perf_counter() - self.t0
        cpu = proc_cpu_s(self.pid) - self.c0
        return {"seconds": dt, "cpu_s": cpu, "cpu_pct": 100 * cpu / dt,
                "wakeups_per_s": (proc_ctxsw(self.pid) - self.w0) / dt}


# ---------------------------------------------------------------- clean-up
def kill_by_environ(needles: list[bytes]) -> int:
    """SIGKILL every process (not us) whose environment contains one of `needles`."""
    me, killed = os.getpid(), 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if any(n in env for n in needles):
            with contextlib.suppress(OSError):
                os.kill(int(name), signal.SIGKILL)
                killed += 1
    return killed


def stop_process(ctx: Ctx, p: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; forget it."""
    if p.poll() is None:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGTERM)
            p.send_signal(signal.SIGCONT)  # one a scenario froze (SIGSTOP) must see it
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    if p in ctx.started:
        ctx.started.remove(p)


def cleanup(ctx: Ctx) -> None:
    """Stop what we started, then kill anything still carrying our marker or temp root."""
    for p in list(ctx.started):
        with contextlib.suppress(Exception):
            stop_process(ctx, p, 5)
    needles = [MARK.encode() + b"\0", os.fsencode(str(ctx.tmp)) + b"/"]
    killed = 0
    for _round in range(3):  # a dying shell may have forked once more
        found = kill_by_environ(needles)
        killed += found
        if not found:
            break
        time.sleep(0.05)
    if killed:
        log(f"cleanup: killed {killed} leftover process(es)")


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def trap_signals() -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C: through the clean-up."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
