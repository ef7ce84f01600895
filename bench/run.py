#!/usr/bin/env python3
"""Benchmark spoold against task-spooler (tsp) and nq on identical work.

    python3 bench/run.py            # full run, a few minutes
    python3 bench/run.py --quick    # under ~2 minutes
    python3 bench/run.py --profile cprofile   # every daemon under cProfile (timings inflated)
    python3 bench/run.py --profile py-spy     # every daemon sampled by py-spy, if installed
    python3 bench/run.py --what-if nodelay,noopen   # patched daemon: see WHAT_IF below

Every tool gets private state under one temp dir (TS_SOCKET/TMPDIR for tsp,
NQDIR for nq, a fresh spool for spoold with --fake-gpus and --poll 1).  Every
process started here carries an environment marker; at exit (normal, error,
Ctrl-C, SIGTERM) every process with that marker or the temp dir in its
environment is killed, so no daemon, tsp server or job is left behind.

Results: a table on stdout (ratios to task-spooler, PASS/MISS against the
targets in docs/performance.md) and bench/results/latest.json.
Stdlib + PyYAML only.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent  # the spoold tree under test (--repo)
RESULTS = Path(__file__).resolve().parent / "results"
MARK = f"SPOOLD_BENCH_MARK={uuid.uuid4().hex}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
YLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
POLL = 1.0  # --poll given to every spoold

QUICK = dict(submit_n=30, start_n=8, tput_n=100, idle_s=5.0, busy_s=3.0, scale_n=10_000,
             scale_idle_s=3.0, settle_max_s=30.0)
FULL = dict(submit_n=120, start_n=20, tput_n=500, idle_s=30.0, busy_s=10.0, scale_n=100_000,
            scale_idle_s=5.0, settle_max_s=120.0)

TMP: Path | None = None  # the temp root; its path also marks our processes
PROFILE: dict = {"mode": None, "dir": None}  # --profile
WHAT_IF: list[str] = []  # --what-if

# --what-if: run the daemon with a patch applied from outside (spoold's files untouched),
# to show what a proposed change would buy.  Timings of such runs are not spoold's.
WHAT_IF_PATCHES = {
    # watchdog holds every IN_MOVED_FROM whose IN_MOVED_TO it did not see for 0.5 s, and
    # every later event of that folder waits behind it (DelayedQueue is FIFO)
    "nodelay": "import watchdog.observers.inotify_move_event_grouper as g\n"
               "g.InotifyMoveEventGrouper.delay = 0.0\n",
    # do not wake on open/close-without-write: the daemon's own reads of pending/ and
    # state/run/ files would otherwise wake it again, for ever while a job runs
    "noopen": "import watchdog.observers.api as a, watchdog.events as e\n"
              "_s = a.BaseObserver.schedule\n"
              "def schedule(self, h, path, *, recursive=False, event_filter=None, **kw):\n"
              "    f = [e.FileCreatedEvent, e.DirCreatedEvent, e.FileModifiedEvent,\n"
              "         e.DirModifiedEvent, e.FileMovedEvent, e.DirMovedEvent,\n"
              "         e.FileDeletedEvent, e.DirDeletedEvent, e.FileClosedEvent]\n"
              "    return _s(self, h, path, recursive=recursive, event_filter=f, **kw)\n"
              "a.BaseObserver.schedule = schedule\n",
}
STARTED: list[subprocess.Popen] = []  # daemons we started (killed in cleanup)


# ---------------------------------------------------------------- small helpers
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
            "min_ms": min(ms) if ms else None, "max_ms": max(ms) if ms else None,
            "mean_ms": statistics.fmean(ms) if ms else None}


def base_env(**extra: str) -> dict:
    env = dict(os.environ)
    k, v = MARK.split("=", 1)
    env[k] = v
    env.update(extra)
    return env


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


def _failed(cmd, r) -> RuntimeError:
    return RuntimeError(f"{cmd[:4]} exited {r.returncode}: "
                        f"{r.stderr.decode(errors='replace')[-500:]}")


def run(cmd, env=None, timeout=60, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                       capture_output=True, cwd=kw.pop("cwd", TMP), **kw)
    if check and r.returncode != 0:
        raise _failed(cmd, r)
    return r


def timed(cmd, env, timeout=30) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one command, fork+exec included, as a user's shell would see it."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                       capture_output=True, cwd=TMP)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise _failed(cmd, r)
    return dt, r


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_s(pid: int) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds; threads that ended are not counted."""
    main = other = 0.0
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError), \
                    open(f"/proc/{pid}/task/{t}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
                v = (int(fields[11]) + int(fields[12])) / CLK_TCK
                if int(t) == pid:
                    main += v
                else:
                    other += v
    return main, other


def proc_mem_mb(pid: int) -> dict:
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


def write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(data)
    os.rename(tmp, path)


# ---------------------------------------------------------------- cleanup
def sweep() -> int:
    """SIGKILL every process (not us) whose environment has our marker or temp dir."""
    needles = [MARK.encode() + b"\0"]
    if TMP is not None:
        needles.append(os.fsencode(str(TMP)) + b"/")
    me, killed = os.getpid(), 0
    for _round in range(3):
        found = 0
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
                    found += 1
        killed += found
        if not found:
            break
        time.sleep(0.05)
    return killed


def stop_daemon(p: subprocess.Popen, timeout: float = 15.0) -> None:
    if p.poll() is None:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    if p in STARTED:
        STARTED.remove(p)


def cleanup() -> None:
    for p in list(STARTED):
        with contextlib.suppress(Exception):
            stop_daemon(p, 5)
    n = sweep()
    if n:
        log(f"cleanup: killed {n} leftover process(es)")


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------- the peers
def find_tsp() -> str | None:
    for name in ("tsp", "ts"):  # moreutils also ships a `ts`: check it is task-spooler
        path = shutil.which(name)
        if not path:
            continue
        with contextlib.suppress(Exception):
            r = subprocess.run([path, "-V"], capture_output=True, timeout=5,
                               env=base_env(TS_SOCKET="/nonexistent/none"))
            if b"Task Spooler" in r.stdout + r.stderr:
                return path
    return None


def install_peers(notes: list[str]) -> None:
    want = []
    if not find_tsp():
        want.append("task-spooler")
    if not (shutil.which("nq") and shutil.which("fq")):
        want.append("nq")
    if not want:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        notes.append(f"not installed (need root and apt-get): {', '.join(want)}; skipped")
        return
    log(f"installing {' '.join(want)} with apt-get")
    env = base_env(DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *want]
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        r = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    if r.returncode != 0:
        notes.append(f"apt-get install {' '.join(want)} failed; skipped: "
                     + r.stderr.decode(errors="replace")[-200:])


class Tsp:
    name = "tsp"

    def __init__(self, path: str, root: Path, slots: int = 4):
        self.path = path
        self.dir = root
        self.dir.mkdir(parents=True)
        self.env = base_env(TS_SOCKET=str(root / "socket"), TMPDIR=str(root),
                            TS_MAXFINISHED="100000")
        self.slots = slots

    def start(self) -> None:
        run([self.path, "-S", str(self.slots)], env=self.env)  # starts the server
        run([self.path, "-S"], env=self.env)

    def submit_cmd(self, argv: list[str]) -> list[str]:
        return [self.path, *argv]

    def wait_id(self, job_id: str, timeout: float = 60) -> None:
        run([self.path, "-w", job_id], env=self.env, timeout=timeout, check=False)

    def counts(self) -> dict:
        out = run([self.path, "-l"], env=self.env).stdout.decode()
        c: dict[str, int] = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) > 1:
                c[parts[1]] = c.get(parts[1], 0) + 1
        return c

    def server_pid(self) -> int | None:
        """The task-spooler server: the live tsp process with our socket in its env."""
        want = f"TS_SOCKET={self.env['TS_SOCKET']}\0".encode()
        best = None
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{name}/exe") != os.path.realpath(self.path):
                    continue
                with open(f"/proc/{name}/environ", "rb") as f:
                    if want not in f.read():
                        continue
            except OSError:
                continue
            if best is None or int(name) < best:
                best = int(name)
        return best

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            run([self.path, "-K"], env=self.env, check=False, timeout=10)


class Nq:
    name = "nq"

    def __init__(self, root: Path):
        self.dir = root
        self.dir.mkdir(parents=True)
        self.env = base_env(NQDIR=str(root))

    def submit_cmd(self, argv: list[str]) -> list[str]:
        return ["nq", *argv]

    def wait_all(self, timeout: float = 600) -> None:
        run(["nq", "-w"], env=self.env, timeout=timeout, check=False)


class Spoold:
    name = "spoold"

    def __init__(self, root: Path, n_gpus: int, gsub_sh: str, busy: bool = False):
        self.root = root
        self.spool = root / "spool"
        self.gpus_file = root / "fake-gpus.yaml"
        self.n_gpus = n_gpus
        self.gsub = [gsub_sh, str(REPO / "bin" / "gsub"), "--spool", str(self.spool)]
        self.env = base_env(PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.env.pop("SPOOLD_SPOOL", None)
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "daemon.out"
        root.mkdir(parents=True)
        self.set_gpus(busy=[busy] * n_gpus)
        self.create_spool()

    def create_spool(self) -> None:
        # The layout exactly as the daemon creates it (spoold.spool.Spool.create).
        code = "import sys; from spoold.spool import Spool; Spool(sys.argv[1]).create()"
        run([sys.executable, "-c", code, str(self.spool)], env=self.env)

    def set_gpus(self, busy: list[bool]) -> None:
        gpus = [{"index": i, "uuid": f"GPU-bench-{i:04d}", "name": "Fake GPU",
                 "memory_total": 81559, "memory_used": 80000 if b else 0,
                 "utilization": 100 if b else 0} for i, b in enumerate(busy)]
        write_atomic(self.gpus_file, yaml.safe_dump(gpus, sort_keys=False))

    def submit_cmd(self, argv: list[str], gpus: int = 1) -> list[str]:
        return [*self.gsub, "-n", str(gpus), "--", *argv]

    def start(self, tag: str, extra: list[str] = (), wait: bool = True,
              timeout: float = 60) -> float:
        args = ["--spool", str(self.spool), "--fake-gpus", str(self.gpus_file), "--poll",
                f"{POLL:g}", "--host", "bench", *extra]
        cmd = [sys.executable]
        if PROFILE["mode"] == "cprofile":
            cmd += ["-m", "cProfile", "-o", str(PROFILE["dir"] / f"{tag}.prof")]
        if WHAT_IF:
            code = "".join(WHAT_IF_PATCHES[w] for w in WHAT_IF) + (
                "import runpy, sys\nsys.argv = ['spoold', *sys.argv[1:]]\n"
                "runpy.run_module('spoold.daemon', run_name='__main__', alter_sys=True)\n")
            launcher = self.root / "whatif_launch.py"
            launcher.write_text(code)
            cmd += [str(launcher), *args]
        else:
            cmd += ["-m", "spoold.daemon", *args]
        self.tag = tag
        out = open(self.log_path, "ab")  # noqa: SIM115 - closed with the daemon
        t0 = time.time()
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=self.root,
                                     start_new_session=True)
        out.close()
        STARTED.append(self.proc)
        self.spy = None
        if PROFILE["mode"] == "py-spy":
            self.spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(self.proc.pid), "--rate", "250",
                 "--nonblocking", "--format", "raw", "-o",
                 str(PROFILE["dir"] / f"{tag}.pyspy.txt")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=base_env())
            STARTED.append(self.spy)
        if wait:
            self.wait_ready(timeout)
        return t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"spoold exited ({self.proc.returncode}); log tail:\n"
                               + self.log_tail())
        return True

    def snapshot(self) -> Path | None:
        """The GPU readings the daemon writes at every poll: state/hosts/HOST.yaml in
        newer spools, state/gpus.yaml in older ones."""
        for p in (self.spool / "state" / "hosts" / "bench.yaml",
                  self.spool / "state" / "gpus.yaml"):
            if p.exists():
                return p
        return None

    def wait_ready(self, timeout: float) -> float:
        _, t = wait_for(lambda: self.check_alive() and self.snapshot(), timeout,
                        what="spoold to write its GPU snapshot (state/hosts/bench.yaml or "
                             "state/gpus.yaml)")
        return t

    def started(self, job_id: str) -> bool:
        """running/ID.yaml records started_at (written once the shepherd runs)."""
        try:
            data = yaml.load((self.spool / "running" / f"{job_id}.yaml").read_bytes(),
                             Loader=YLoader)
        except (OSError, yaml.YAMLError):
            return False
        return isinstance(data, dict) and bool(data.get("started_at"))

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def count(self, *dirs: str) -> int:
        n = 0
        for d in dirs:
            with os.scandir(self.spool / d) as it:
                n += sum(1 for e in it if e.name.endswith(".yaml"))
        return n

    def finished(self, job_id: str) -> str | None:
        for d in ("done", "failed", "cancelled"):
            if (self.spool / d / f"{job_id}.yaml").exists():
                return d
        return None

    def stop(self) -> None:
        if getattr(self, "spy", None) is not None:  # py-spy writes its file on SIGINT
            with contextlib.suppress(OSError):
                self.spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.spy.wait(20)
            stop_daemon(self.spy, 1)
            self.spy = None
        if self.proc is not None:
            stop_daemon(self.proc)
        sweep_spool(self.spool)


def sweep_spool(spool: Path) -> None:
    """Kill jobs the daemon left running (SIGTERM leaves them running by design)."""
    needle = b"SPOOLD_SPOOL=" + os.fsencode(str(spool)) + b"\0"
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{name}/environ", "rb") as f:
            if needle in f.read():
                os.kill(int(name), signal.SIGKILL)


# ---------------------------------------------------------------- measurements
def bench_submit(cfg, tools, gsub_sh, res) -> None:
    """Wall time of one submit command; spoold's daemon is not running (pure submit cost)."""
    n = cfg["submit_n"]
    log(f"submit latency: {n} submissions per tool, 2 rounds")
    runners = []  # (name, env, argv-maker)
    sp = Spoold(TMP / "submit-spoold", 1, gsub_sh)
    runners.append(("spoold", sp.env, lambda: sp.submit_cmd(["true"], gpus=0)))
    if tools.get("tsp"):
        ts = Tsp(tools["tsp"], TMP / "submit-tsp")
        ts.start()
        runners.append(("tsp", ts.env, lambda: ts.submit_cmd(["true"])))
    if tools.get("nq"):
        nq = Nq(TMP / "submit-nq")
        runners.append(("nq", nq.env, lambda: nq.submit_cmd(["true"])))
    floor_env = base_env()
    runners.append(("floor", floor_env, lambda: ["/bin/true"]))
    sh = [gsub_sh, "-c", ":"]
    runners.append(("sh_floor", floor_env, lambda: sh))
    samples: dict[str, list[float]] = {name: [] for name, _, _ in runners}
    try:
        for _round in range(2):  # two rounds in alternating order: drift hits all alike
            order = runners if _round == 0 else list(reversed(runners))
            for name, env, mk in order:
                for _ in range(3):  # warm-up (page cache, tsp connection, nq dir)
                    timed(mk(), env)
                for _ in range((n + 1) // 2):
                    dt, _r = timed(mk(), env)
                    samples[name].append(dt)
                time.sleep(0.3)  # let background jobs of tsp/nq finish
    finally:
        if tools.get("tsp"):
            ts.stop()
        if tools.get("nq"):
            with contextlib.suppress(Exception):
                nq.wait_all(60)
    for name, s in samples.items():
        res.setdefault("submit", {})[name] = summary_ms(s)
    res["submit"]["spoold"]["pending_after"] = sp.count("pending")


def bench_gsub_breakdown(gsub_sh, res) -> None:
    """What gsub's time is made of: the programs it runs, each timed alone."""
    d = TMP / "breakdown"
    d.mkdir()
    f = d / "f"
    f.write_text("x")
    lock = d / "lock"
    env = base_env(LC_ALL="C")
    parts = {
        "dash -c : (shell start)": [gsub_sh, "-c", ":"],
        "dash -c 'x=$(:)' (one fork)": [gsub_sh, "-c", "x=$(:)"],
        "flock (program)": [gsub_sh, "-c", f"exec 9>>{lock}; flock 9"],
        "mv (program)": [gsub_sh, "-c", f"mv {f} {f}2 && mv {f}2 {f}"],
        "sync FILE DIR FILE (program)": [gsub_sh, "-c", f"sync -- {f} {d} {lock}"],
        "gsub --help (reading the script)": [gsub_sh, str(REPO / "bin" / "gsub"), "--help"],
    }
    shell = parts.pop("dash -c : (shell start)")
    for _ in range(3):
        for cmd in (shell, *parts.values()):
            timed(cmd, env)
    # Each part's net cost is paired with a shell start timed right before it, so that
    # background load drifting between samples cancels out; median over 40 pairs.
    base: list[float] = []
    diffs: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(40):
        for name, cmd in parts.items():
            sh = timed(shell, env)[0]
            base.append(sh)
            diffs[name].append(timed(cmd, env)[0] - sh)
    out = {"fork+exec of a dash running nothing": summary_ms(base)["median_ms"]}
    for name, v in diffs.items():
        # mv runs twice in its line
        out[name.replace(" (program)", "")] = (summary_ms(v)["median_ms"]
                                               / (2 if name.startswith("mv") else 1))
    res["gsub_breakdown_ms"] = out


def _ts_file(path: Path) -> float | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def bench_start(cfg, tools, gsub_sh, res) -> None:
    """Submit -> the job's own first instruction (`date` writes a timestamp)."""
    n = cfg["start_n"]
    log(f"submit->start latency: {n} jobs per tool, one at a time")
    rnd = random.Random(7)
    out = {}

    def job(mark: Path) -> list[str]:
        return ["sh", "-c", f"date +%s.%N > {mark}.tmp && mv {mark}.tmp {mark}"]

    def measure(name, env, submit, after):
        lat = []
        for i in range(n + 1):  # the first is warm-up
            mark = TMP / f"start-{name}-{i}"
            t0 = time.time()
            r = subprocess.run(submit(job(mark)), env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=30, cwd=TMP)
            if r.returncode != 0:
                raise RuntimeError(f"{name} submit failed: {r.stderr.decode()[-300:]}")
            ts, _ = wait_for(lambda m=mark: _ts_file(m), 30, what=f"{name} job start")
            after(r.stdout.decode().strip())
            if i:
                lat.append(ts - t0)
            time.sleep(rnd.uniform(0.05, 0.75))  # gaps of all sizes, no phase lock with timers
        return summary_ms(lat)

    sp = Spoold(TMP / "start-spoold", 4, gsub_sh)
    sp.start("start")
    try:
        out["spoold"] = measure(
            "spoold", sp.env, lambda a: sp.submit_cmd(a, gpus=1),
            lambda jid: wait_for(lambda: sp.finished(jid), 30, 0.002, "spoold job end"))
    finally:
        sp.stop()
    if tools.get("tsp"):
        ts = Tsp(tools["tsp"], TMP / "start-tsp")
        ts.start()
        try:
            out["tsp"] = measure("tsp", ts.env, ts.submit_cmd, lambda jid: ts.wait_id(jid))
        finally:
            ts.stop()
    if tools.get("nq"):
        nq = Nq(TMP / "start-nq")
        out["nq"] = measure("nq", nq.env, nq.submit_cmd, lambda jid: nq.wait_all(30))
    res["start"] = out


def bench_throughput(cfg, tools, gsub_sh, res) -> None:
    n = cfg["tput_n"]
    log(f"throughput: {n} trivial jobs per tool, 4 slots")
    out = {}
    if tools.get("tsp"):
        ts = Tsp(tools["tsp"], TMP / "tput-tsp", slots=4)
        ts.start()
        try:
            t0 = time.perf_counter()
            last = None
            for _ in range(n):
                last = run(ts.submit_cmd(["true"]), env=ts.env).stdout.decode().strip()
            t_sub = time.perf_counter() - t0
            ts.wait_id(last, timeout=600)
            wait_for(lambda: ts.counts().get("finished", 0) >= n, 600, 0.01, "tsp jobs")
            t_all = time.perf_counter() - t0
            pid = ts.server_pid()
            mem = proc_mem_mb(pid) if pid else {}
            out["tsp"] = {"n": n, "submit_s": t_sub, "total_s": t_all, "jobs_per_s": n / t_all,
                          "server_hwm_mb": mem.get("VmHWM"), "server_rss_mb": mem.get("VmRSS"),
                          "server_cpu_s": proc_cpu_s(pid) if pid else None}
        finally:
            ts.stop()
    if tools.get("nq"):
        nq = Nq(TMP / "tput-nq")
        t0 = time.perf_counter()
        for _ in range(n):
            run(nq.submit_cmd(["true"]), env=nq.env)
        t_sub = time.perf_counter() - t0
        nq.wait_all(600)
        t_all = time.perf_counter() - t0
        out["nq"] = {"n": n, "submit_s": t_sub, "total_s": t_all, "jobs_per_s": n / t_all,
                     "note": "nq runs one job at a time (strictly serial queue)"}
    sp = Spoold(TMP / "tput-spoold", 4, gsub_sh)
    sp.start("throughput")
    try:
        time.sleep(1.0)
        cpu0 = proc_cpu_s(sp.proc.pid)
        th0 = thread_cpu_s(sp.proc.pid)
        t0 = time.perf_counter()
        for _ in range(n):
            run(sp.submit_cmd(["true"], gpus=1), env=sp.env)
        t_sub = time.perf_counter() - t0
        wait_for(lambda: sp.check_alive() and sp.count("done", "failed", "cancelled") >= n,
                 600, 0.01, "spoold jobs")
        t_all = time.perf_counter() - t0
        mem = proc_mem_mb(sp.proc.pid)
        cpu = proc_cpu_s(sp.proc.pid) - cpu0
        th = thread_cpu_s(sp.proc.pid)
        out["spoold"] = {"n": n, "submit_s": t_sub, "total_s": t_all, "jobs_per_s": n / t_all,
                         "failed": sp.count("failed", "cancelled"),
                         "daemon_hwm_mb": mem.get("VmHWM"), "daemon_rss_mb": mem.get("VmRSS"),
                         "daemon_cpu_s": cpu, "daemon_cpu_ms_per_job": cpu / n * 1000,
                         "main_thread_cpu_ms_per_job": (th[0] - th0[0]) / n * 1000,
                         "other_threads_cpu_ms_per_job": (th[1] - th0[1]) / n * 1000}
    finally:
        sp.stop()
    res["throughput"] = out


def bench_idle(cfg, tools, gsub_sh, res) -> None:
    secs = cfg["idle_s"]
    log(f"idle CPU: {secs:g}s, 8 fake GPUs, --poll {POLL:g}")
    sp = Spoold(TMP / "idle-spoold", 8, gsub_sh)
    sp.start("idle")
    ts = None
    try:
        tsp_pid = None
        if tools.get("tsp"):
            ts = Tsp(tools["tsp"], TMP / "idle-tsp")
            ts.start()
            tsp_pid = ts.server_pid()
        time.sleep(2.0)  # past start-up
        pid = sp.proc.pid
        c0, w0, t0 = proc_cpu_s(pid), proc_ctxsw(pid), time.perf_counter()
        tc0 = proc_cpu_s(tsp_pid) if tsp_pid else None
        time.sleep(secs)
        sp.check_alive()
        dt = time.perf_counter() - t0
        cpu = proc_cpu_s(pid) - c0
        mem = proc_mem_mb(pid)
        out = {"spoold": {"seconds": dt, "cpu_s": cpu, "cpu_pct": 100 * cpu / dt,
                          "wakeups_per_s": (proc_ctxsw(pid) - w0) / dt,
                          "rss_mb": mem.get("VmRSS"), "hwm_mb": mem.get("VmHWM")}}
        if tsp_pid:
            tcpu = proc_cpu_s(tsp_pid) - tc0
            tm = proc_mem_mb(tsp_pid)
            out["tsp"] = {"seconds": dt, "cpu_s": tcpu, "cpu_pct": 100 * tcpu / dt,
                          "rss_mb": tm.get("VmRSS"), "hwm_mb": tm.get("VmHWM")}
        res["idle"] = out
        # The usual state of a GPU box: one long job running, nothing else happening.
        log(f"CPU with one long job running: {cfg['busy_s']:g}s")
        jid = run(sp.submit_cmd(["sleep", "3600"], gpus=1), env=sp.env).stdout.decode().strip()
        wait_for(lambda: sp.check_alive() and sp.started(jid), 30, 0.01, "sleep job")
        if tsp_pid:
            run(ts.submit_cmd(["sleep", "3600"]), env=ts.env)
        time.sleep(1.0)
        c0, w0, t0 = proc_cpu_s(pid), proc_ctxsw(pid), time.perf_counter()
        tc0 = proc_cpu_s(tsp_pid) if tsp_pid else None
        time.sleep(cfg["busy_s"])
        sp.check_alive()
        dt = time.perf_counter() - t0
        cpu = proc_cpu_s(pid) - c0
        out["spoold"]["one_job_cpu_pct"] = 100 * cpu / dt
        out["spoold"]["one_job_wakeups_per_s"] = (proc_ctxsw(pid) - w0) / dt
        if tsp_pid:
            out["tsp"]["one_job_cpu_pct"] = 100 * (proc_cpu_s(tsp_pid) - tc0) / dt
    finally:
        sp.stop()
        if ts:
            ts.stop()


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


_probe_n = [0]


def wait_ticks(sp: Spoold, limit: float = 60.0, n: int = 2) -> float | None:
    """Drop n malformed requests one after the other, each once the previous is gone: the
    daemon removes one at the start of a tick, so the last goes only after a whole tick
    (and any long pass in it) ended.  Returns the seconds that took (None: over limit)."""
    t0 = time.perf_counter()
    for _ in range(n):
        _probe_n[0] += 1
        probe = sp.spool / "requests" / f"bench-probe-t{_probe_n[0]}"
        probe.write_text("")
        try:
            wait_for(lambda p=probe: sp.check_alive() and not p.exists(),
                     max(0.0, limit - (time.perf_counter() - t0)), 0.001, "a daemon tick")
        except TimeoutError:
            return None
    return time.perf_counter() - t0


def open_writer(fifo: Path, timeout: float = 5.0) -> None:
    """Open a fifo for writing and close it at once; its reader then sees EOF."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError as e:  # ENXIO: the reader has not opened it yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reader on {fifo}: {e}") from None
            time.sleep(0.001)


N_SPECIAL = 6  # jobs 1..6 of the scale test record their start and wait on a fifo


def gen_pending(sp: Spoold, n: int, fifos: list[Path], marks: list[Path]) -> None:
    """n pending jobs written straight into pending/ (as a program would), ids 1..n.
    Jobs 1..len(fifos) record their start time, then wait on their fifo; the rest run
    `true`."""
    pend = sp.spool / "pending"
    special = {i + 1: (f'argv: ["sh", "-c", "date +%s.%N > {m}; exec cat {f}"]\ngpus: 1\n'
                       ).encode() for i, (f, m) in enumerate(zip(fifos, marks, strict=True))}
    plain = b'argv: ["true"]\ngpus: 1\n'
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for i in range(1, n + 1):
        fd = os.open(pend / f"0010-{i:08d}.yaml", flags, 0o644)
        try:
            os.write(fd, special.get(i, plain))
        finally:
            os.close(fd)
    (sp.spool / "state" / "next-id").write_text(f"{n + 1}\n")


def bench_scale(cfg, tools, gsub_sh, res) -> None:
    n = cfg["scale_n"]
    log(f"scale: {n} pending jobs, all 4 fake GPUs busy")
    sp = Spoold(TMP / "scale-spoold", 4, gsub_sh, busy=True)
    fifos = [TMP / f"scale-fifo{i}" for i in range(1, N_SPECIAL + 1)]
    marks = [TMP / f"scale-t{i}" for i in range(1, N_SPECIAL + 1)]
    for f in fifos:
        os.mkfifo(f)
    out: dict = {"n": n}
    res["scale"] = out
    g0 = time.perf_counter()
    gen_pending(sp, n, fifos, marks)
    out["generate_s"] = time.perf_counter() - g0
    # gsub with a long queue (it counts pending/ for --max-pending): -n 1, same shape
    (sp.spool / "state" / "max-pending").write_text(f"{2 * n + 100}\n")
    s = [timed(sp.submit_cmd(["true"], gpus=1), sp.env)[0] for _ in range(5)]
    out["gsub_with_queue"] = summary_ms(s)
    rnd = random.Random(11)
    try:
        log("scale: starting spoold")
        t0 = sp.start("scale", extra=["--max-pending", str(2 * n + 100)], wait=False)
        logline = None
        snap = None
        # Readiness: a malformed request is removed at the start of the next tick.  Probe 1
        # goes in when the snapshot appears (it may be taken by the very first tick, before
        # its scheduling pass); probe 2 goes in once probe 1 is gone, so it is taken only by
        # a tick that began after a whole tick, first scheduling pass included, had ended.
        probe = sp.spool / "requests" / "bench-probe-1"
        probe2 = sp.spool / "requests" / "bench-probe-2"
        deadline = time.monotonic() + 300
        t_snap = t_log = t_probe = t_probe1 = None
        while time.monotonic() < deadline:
            sp.check_alive()
            now = time.time()
            if t_log is None:
                for line in sp.log_tail(100000).splitlines():
                    if " on " in line and "spoold " in line and "INFO spoold" in line:
                        t_log, logline = now, line
                        break
            if t_snap is None and sp.snapshot():
                snap = sp.snapshot()
                t_snap = now
                probe.write_text("")  # malformed request: removed on the next tick
            if t_probe1 is None and t_snap is not None and not probe.exists():
                t_probe1 = now
                probe2.write_text("")
            if t_probe is None and t_probe1 is not None and not probe2.exists():
                t_probe = now
            if t_snap and t_log and t_probe:
                break
            time.sleep(0.002)
        out["start_log_s"] = (t_log - t0) if t_log else None
        out["start_gpus_yaml_s"] = (t_snap - t0) if t_snap else None
        out["snapshot_file"] = str(snap.relative_to(sp.spool)) if snap else None
        out["start_probe1_s"] = (t_probe1 - t0) if t_probe1 else None
        out["start_responsive_s"] = (t_probe - t0) if t_probe else None
        out["log_line"] = logline
        if t_probe is None:
            out["error"] = "daemon did not answer a request within 300 s"
            return
        pid = sp.proc.pid
        time.sleep(0.5)
        out["after_start_mem_mb"] = proc_mem_mb(pid)
        # A daemon may answer at once and read the rest of a long queue in the background:
        # wait until it is quiet (under 20 % of a core for 1 s) before measuring the steady
        # state, and report how long that took.
        settle_max = cfg.get("settle_max_s", 120.0)
        q = wait_quiet(pid, max(1.0, settle_max - (time.time() - t0)))
        t_set = time.time() - 1.0 if q is not None else None
        out["settled_s"] = (t_set - t0) if t_set else None
        out["settle_max_s"] = settle_max
        out["settled_mem_mb"] = proc_mem_mb(pid)
        # idle, with the queue full and every GPU busy
        c0, w0, tt = proc_cpu_s(pid), proc_ctxsw(pid), time.perf_counter()
        time.sleep(cfg["scale_idle_s"])
        dt = time.perf_counter() - tt
        out["idle_cpu_pct"] = 100 * (proc_cpu_s(pid) - c0) / dt
        out["idle_wakeups_per_s"] = (proc_ctxsw(pid) - w0) / dt

        def claimed(job: int, gpu: int | None, seen: dict):
            """job in running/; on the way, note the first snapshot showing `gpu` idle."""
            sp.check_alive()
            if gpu is not None and seen.get("poll") is None:
                with contextlib.suppress(OSError, yaml.YAMLError, TypeError, KeyError,
                                         StopIteration, ValueError):
                    st = snap.stat()
                    if st.st_ino != seen.get("ino"):
                        seen["ino"] = st.st_ino
                        data = yaml.load(snap.read_bytes(), Loader=YLoader)
                        g = next(g for g in data["gpus"] if g["index"] == gpu)
                        if g.get("busy") is None:
                            seen["poll"] = float(data["time"])
            return (sp.spool / "running" / f"{job}.yaml").exists()

        # 1) another user's load goes away: GPU k reads idle at the next poll; job k+1
        # takes it.  The poll that saw it is the first GPU snapshot (rewritten by rename
        # at every poll) showing GPU k idle; its `time` is when the daemon read the GPUs.
        # Before each sample: let any pass that the previous start caused end (0.6 s, then
        # two ticks), so that every sample meets a daemon that is not mid-pass.  (CPU cannot
        # tell: a daemon may spin while jobs run.)
        ext = []
        busy = [True] * sp.n_gpus
        for k in range(3):
            time.sleep(0.6)
            qw = wait_ticks(sp)
            time.sleep(rnd.uniform(0.1, 1.0))  # any phase of the poll timer
            seen = {"ino": snap.stat().st_ino}
            busy[k] = False
            tw = time.time()
            sp.set_gpus(busy)
            _, t_claim = wait_for(lambda j=k + 1, g=k, s=seen: claimed(j, g, s), 60, 0.0005,
                                  f"job {k + 1} in running/")
            ts, _ = wait_for(lambda m=marks[k]: _ts_file(m), 30, 0.001, f"job {k + 1} start")
            t_poll = seen.get("poll")
            ext.append({"quiet_wait_ms": qw * 1000 if qw is not None else None,
                        "claim_ms": (t_claim - tw) * 1000, "job_start_ms": (ts - tw) * 1000,
                        "wait_for_poll_ms": (t_poll - tw) * 1000 if t_poll else None,
                        "poll_to_claim_ms": (t_claim - t_poll) * 1000 if t_poll else None})
        out["freed_external_samples"] = ext

        def med(key, rows):
            v = [r[key] for r in rows if r.get(key) is not None]
            return pctl(v, 50) if v else None

        out["freed_external"] = {k: med(k, ext) for k in ext[0]}
        out["freed_external"]["note"] = ("median of 3; poll = the `time` of the first GPU "
                                         "snapshot that shows the GPU idle")
        # 2) our own job ends: the GPU it held goes to the next job in the queue
        own = []
        for k in range(3):
            time.sleep(0.6)
            qw = wait_ticks(sp)
            time.sleep(rnd.uniform(0.1, 0.5))
            nxt = k + 4
            te = time.time()
            open_writer(fifos[k])  # and close it: EOF, job k+1 exits 0
            _, t_claim = wait_for(lambda j=nxt: claimed(j, None, {}), 60, 0.0005,
                                  f"job {nxt} in running/")
            ts, _ = wait_for(lambda m=marks[nxt - 1]: _ts_file(m), 30, 0.001, f"job {nxt} start")
            own.append({"quiet_wait_ms": qw * 1000 if qw is not None else None,
                        "claim_ms": (t_claim - te) * 1000, "job_start_ms": (ts - te) * 1000,
                        "ended_state": wait_for(lambda j=k + 1: sp.finished(str(j)), 30, 0.001,
                                                f"job {k + 1} recorded")[0]})
        out["own_job_end_samples"] = own
        out["own_job_end"] = {"claim_ms": med("claim_ms", own),
                              "job_start_ms": med("job_start_ms", own), "note": "median of 3"}
        # How long one start keeps the daemon deaf: two ticks, asked for 0.6 s after the
        # last claim (the 0.6 s let inotify events of the claim arrive).
        time.sleep(max(0.0, t_claim + 0.6 - time.time()))
        qw = wait_ticks(sp)
        out["busy_after_start_s"] = qw
        out["end_mem_mb"] = proc_mem_mb(pid)
    finally:
        for f in fifos:
            with contextlib.suppress(OSError, TimeoutError):
                open_writer(f, 0.05)
        sp.stop()


# ---------------------------------------------------------------- report
def versions(tools, gsub_sh) -> dict:
    def cmd_out(cmd, env=None):
        with contextlib.suppress(Exception):
            r = subprocess.run(cmd, capture_output=True, timeout=10, env=env)
            return (r.stdout + r.stderr).decode(errors="replace").strip()
        return None

    def dpkg(pkg):
        return cmd_out(["dpkg-query", "-W", "-f=${Version}", pkg])

    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    env = base_env(PYTHONPATH=str(REPO))
    spoold_v = cmd_out([sys.executable, "-c", "from spoold.daemon import _version; "
                        "print(_version())"], env)
    git = cmd_out(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    tsp_v = None
    if tools.get("tsp"):
        tsp_v = (cmd_out([tools["tsp"], "-V"], base_env(TS_SOCKET="/nonexistent/x")) or "")
        tsp_v = tsp_v.splitlines()[0] if tsp_v else None
        tsp_v = f"{tsp_v} (deb {dpkg('task-spooler')})"
    # Other work on the machine skews everything; the load average says how much there was.
    mem_total = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1]) // 1024
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "spoold": f"{spoold_v} (git {git}, {REPO})",
        "tsp": tsp_v,
        "nq": f"nq {dpkg('nq')}" if tools.get("nq") else None,
        "python": platform.python_version(),
        "pyyaml": f"{yaml.__version__} (libyaml: {getattr(yaml, '__with_libyaml__', False)})",
        "shell_for_gsub": f"{gsub_sh} ({dpkg('dash') or '?'})",
        "kernel": platform.release(),
        "os": cmd_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_mib": mem_total,
        "filesystem_tmp": cmd_out(["findmnt", "-no", "FSTYPE,OPTIONS", "-T", str(TMP)]),
    }


def fmt(v, nd=1) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{nd}f}"


def table(res: dict) -> tuple[list[dict], str]:
    rows: list[dict] = []

    def get(*path):
        d = res
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return None
            d = d[p]
        return d

    def row(metric, unit, sp, tsp=None, nq=None, target=None, check=None, ratio=True,
            note=""):
        r = sp / tsp if (ratio and sp is not None and tsp) else None
        verdict = ""
        if check is not None and sp is not None:
            verdict = "PASS" if check(sp, r) else "MISS"
        elif check is not None:
            verdict = "n/a"
        rows.append({"metric": metric, "unit": unit, "spoold": sp, "tsp": tsp, "nq": nq,
                     "ratio": r, "target": target or "", "result": verdict, "note": note})

    s = get("submit") or {}
    row("submit latency, median", "ms", get("submit", "spoold", "median_ms"),
        get("submit", "tsp", "median_ms"), get("submit", "nq", "median_ms"),
        "<= 1.3x tsp", (lambda v, r: r is not None and r <= 1.3))
    row("submit latency, p90", "ms", get("submit", "spoold", "p90_ms"),
        get("submit", "tsp", "p90_ms"), get("submit", "nq", "p90_ms"))
    if s:
        fl = get("submit", "floor", "median_ms")
        row("floor: fork+exec /bin/true", "ms", fl, fl, fl, ratio=False,
            note="same for every tool")
        shf = get("submit", "sh_floor", "median_ms")
        row("floor: dash -c : (a shell starts)", "ms", shf, None, None, ratio=False,
            note="gsub is a sh script")
    row("submit->start, median", "ms", get("start", "spoold", "median_ms"),
        get("start", "tsp", "median_ms"), get("start", "nq", "median_ms"),
        "<= 1.5x tsp", (lambda v, r: r is not None and r <= 1.5))
    row("submit->start, p90", "ms", get("start", "spoold", "p90_ms"),
        get("start", "tsp", "p90_ms"), get("start", "nq", "p90_ms"))
    n = get("throughput", "spoold", "n") or get("throughput", "tsp", "n")
    row(f"throughput, {n or 'N'} jobs, 4 slots", "jobs/s",
        get("throughput", "spoold", "jobs_per_s"),
        get("throughput", "tsp", "jobs_per_s"), get("throughput", "nq", "jobs_per_s"),
        ">= 0.8x tsp", (lambda v, r: r is not None and r >= 0.8),
        note="nq: 1 job at a time")
    row("  of which submitting", "s", get("throughput", "spoold", "submit_s"),
        get("throughput", "tsp", "submit_s"), get("throughput", "nq", "submit_s"))
    row("  daemon CPU per job", "ms", get("throughput", "spoold", "daemon_cpu_ms_per_job"),
        (get("throughput", "tsp", "server_cpu_s") or 0) * 1000 / n if n and
        get("throughput", "tsp", "server_cpu_s") is not None else None)
    mt = get("throughput", "spoold", "main_thread_cpu_ms_per_job")
    ot = get("throughput", "spoold", "other_threads_cpu_ms_per_job")
    row("    main thread + other threads", "ms",
        f"{mt:.1f} + {ot:.1f}" if mt is not None and ot is not None else None, ratio=False,
        note="other threads: watchdog's")
    row("peak RSS of the daemon (throughput run)", "MB",
        get("throughput", "spoold", "daemon_hwm_mb"), get("throughput", "tsp", "server_hwm_mb"),
        None, "< 40 MB", (lambda v, r: v < 40))
    row("idle CPU, 8 GPUs polled at 1 s", "%", get("idle", "spoold", "cpu_pct"),
        get("idle", "tsp", "cpu_pct"), None, "< 0.5 %", (lambda v, r: v < 0.5), ratio=False)
    row("  idle wake-ups", "/s", get("idle", "spoold", "wakeups_per_s"), None, None,
        ratio=False)
    row("CPU while one long job runs (extra)", "%", get("idle", "spoold", "one_job_cpu_pct"),
        get("idle", "tsp", "one_job_cpu_pct"), None, "< 0.5 %", (lambda v, r: v < 0.5),
        ratio=False, note="not in the brief's list; same bar as idle")
    row("  wake-ups while one job runs", "/s", get("idle", "spoold", "one_job_wakeups_per_s"),
        None, None, ratio=False)
    sn = get("scale", "n")
    if sn:
        k = f"{sn // 1000}k" if sn >= 1000 else str(sn)
        row(f"{k} pending: start until GPU snapshot written", "s",
            get("scale", "start_gpus_yaml_s"),
            target="< 2 s", check=(lambda v, r: v < 2), ratio=False)
        row(f"{k} pending: start until it answers a request", "s",
            get("scale", "start_responsive_s"), target="< 2 s", check=(lambda v, r: v < 2),
            ratio=False, note="first scheduling pass done")
        row(f"{k} pending: RSS after start", "MB", get("scale", "after_start_mem_mb", "VmRSS"),
            target="< 150 MB", check=(lambda v, r: v < 150), ratio=False)
        settled = get("scale", "settled_s")
        row(f"{k} pending: start until quiet (< 20 % CPU)", "s",
            settled if settled is not None else f"> {get('scale', 'settle_max_s'):g}",
            ratio=False, note="rows below are measured from here on")
        row(f"{k} pending: peak RSS", "MB", get("scale", "end_mem_mb", "VmHWM"),
            target="< 150 MB", check=(lambda v, r: v < 150), ratio=False)
        row(f"{k} pending: CPU while nothing changes", "%", get("scale", "idle_cpu_pct"),
            ratio=False)
        row(f"{k} pending: GPU freed by others -> claimed (wall)", "ms",
            get("scale", "freed_external", "claim_ms"), ratio=False,
            note=f"includes waiting for the next poll (<= {POLL:g} s)")
        row(f"{k} pending:   ... from the poll that saw it", "ms",
            get("scale", "freed_external", "poll_to_claim_ms"), target="< 50 ms",
            check=(lambda v, r: v < 50), ratio=False)
        row(f"{k} pending: own job ends -> next claimed", "ms",
            get("scale", "own_job_end", "claim_ms"), target="< 50 ms",
            check=(lambda v, r: v < 50), ratio=False, note="event-driven, no poll involved")
        row(f"{k} pending: own job ends -> next job runs", "ms",
            get("scale", "own_job_end", "job_start_ms"), ratio=False)
        row(f"{k} pending: 2 ticks, asked 0.6 s after a start", "s",
            get("scale", "busy_after_start_s"), ratio=False,
            note="how long a start keeps it deaf")
        row(f"gsub with {k} pending", "ms", get("scale", "gsub_with_queue", "median_ms"),
            ratio=False, note="gsub counts pending/ for --max-pending")

    head = ["metric", "unit", "spoold", "tsp", "nq", "spoold/tsp", "target", "result"]
    body = [[r["metric"], r["unit"], fmt(r["spoold"]), fmt(r["tsp"]), fmt(r["nq"]),
             (f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""), r["target"],
             r["result"]] for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(b) for b in body]
    return rows, "\n".join(lines)


# ---------------------------------------------------------------- main
SECTIONS = ("submit", "start", "throughput", "idle", "scale")


def main() -> int:
    global TMP, REPO
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, 10k pending (< 2 min)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections ({','.join(SECTIONS)})")
    ap.add_argument("--scale-n", type=int, default=None, help="pending jobs for the scale test")
    ap.add_argument("--profile", choices=("cprofile", "py-spy"), default=None,
                    help="profile every spoold; files go to bench/results/profiles/")
    ap.add_argument("--what-if", default="",
                    help=f"patch the daemon from outside: {','.join(WHAT_IF_PATCHES)}")
    ap.add_argument("--no-install", action="store_true", help="never apt-get the peers")
    ap.add_argument("--repo", type=Path, default=None,
                    help="the spoold tree to measure (default: this checkout), e.g. a clean "
                         "`git clone` of one commit; its spoold/ and bin/gsub are used")
    ap.add_argument("--tmpdir", type=Path, default=None,
                    help="where the private state of every tool goes (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (debugging)")
    ap.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="JSON output")
    a = ap.parse_args()
    if a.repo:
        REPO = a.repo.resolve()
        if not (REPO / "spoold" / "daemon.py").exists() or not (REPO / "bin" / "gsub").exists():
            ap.error(f"--repo {a.repo}: no spoold/daemon.py and bin/gsub there")
    cfg = dict(QUICK if a.quick else FULL)
    if a.scale_n:
        cfg["scale_n"] = a.scale_n
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = set(only) - set(SECTIONS)
    if bad:
        ap.error(f"unknown section(s): {', '.join(sorted(bad))}")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(cleanup)
    notes: list[str] = []
    if not a.no_install:
        install_peers(notes)
    tools = {"tsp": find_tsp(), "nq": shutil.which("nq")}
    if not tools["tsp"]:
        notes.append("task-spooler not available: ratios cannot be computed")
    if not tools["nq"]:
        notes.append("nq not available: its column is empty")
    gsub_sh = shutil.which("dash") or "/bin/sh"
    pre = subprocess.run([sys.executable, "-c", "import spoold.daemon"], capture_output=True,
                         env=base_env(PYTHONPATH=str(REPO)), timeout=60)
    if pre.returncode != 0:
        print("bench: cannot import spoold.daemon (pip install -e . first?):\n"
              + pre.stderr.decode(errors="replace")[-800:], file=sys.stderr)
        return 2
    TMP = Path(tempfile.mkdtemp(prefix="spoold-bench-", dir=a.tmpdir))
    if a.profile:
        if a.profile == "py-spy" and not shutil.which("py-spy"):
            ap.error("--profile py-spy: py-spy is not installed (pip install py-spy)")
        PROFILE.update(mode=a.profile, dir=RESULTS / "profiles")
        PROFILE["dir"].mkdir(parents=True, exist_ok=True)
        notes.append(f"profiled run ({a.profile}): timings are inflated; profiles in "
                     f"{PROFILE['dir']}")
    WHAT_IF[:] = [w.strip() for w in a.what_if.split(",") if w.strip()]
    if set(WHAT_IF) - set(WHAT_IF_PATCHES):
        ap.error(f"--what-if takes {', '.join(WHAT_IF_PATCHES)}")
    if WHAT_IF:
        notes.append(f"WHAT-IF run: the daemon ran patched ({', '.join(WHAT_IF)}); these are "
                     "not spoold's numbers")
    res: dict = {}
    t_begin = time.perf_counter()
    try:
        meta = versions(tools, gsub_sh)
        meta["mode"] = ("quick" if a.quick else "full") + (
            f", what-if {'+'.join(WHAT_IF)}" if WHAT_IF else "") + (
            f", profiled ({a.profile})" if a.profile else "")
        meta["config"] = cfg
        meta["loadavg_before"] = os.getloadavg()
        log(f"temp dir {TMP}; mode {meta['mode']}")
        for sec in SECTIONS:
            if sec not in only:
                continue
            t = time.perf_counter()
            try:
                if sec == "submit":
                    bench_submit(cfg, tools, gsub_sh, res)
                    bench_gsub_breakdown(gsub_sh, res)
                elif sec == "start":
                    bench_start(cfg, tools, gsub_sh, res)
                elif sec == "throughput":
                    bench_throughput(cfg, tools, gsub_sh, res)
                elif sec == "idle":
                    bench_idle(cfg, tools, gsub_sh, res)
                elif sec == "scale":
                    bench_scale(cfg, tools, gsub_sh, res)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one broken section must not hide the others
                log(f"section {sec} failed: {type(e).__name__}: {e}")
                res.setdefault("errors", {})[sec] = f"{type(e).__name__}: {e}"
            finally:
                cleanup()
            log(f"section {sec}: {time.perf_counter() - t:.1f}s")
    finally:
        cleanup()
        if TMP and not a.keep_tmp:
            shutil.rmtree(TMP, ignore_errors=True)
    meta["elapsed_s"] = time.perf_counter() - t_begin
    meta["loadavg_after"] = os.getloadavg()
    rows, text = table(res)
    print()
    for k in ("date", "spoold", "tsp", "nq", "python", "pyyaml", "shell_for_gsub", "kernel",
              "os", "nproc", "cpu", "mem_mib", "filesystem_tmp", "mode", "loadavg_before",
              "loadavg_after"):
        print(f"{k:>15}: {meta.get(k)}")
    print()
    print(text)
    gb = res.get("gsub_breakdown_ms")
    if gb:
        print("\ngsub's parts, each timed alone (median ms): "
              + "; ".join(f"{k} {v:.2f}" for k, v in gb.items()))
    for sec, err in (res.get("errors") or {}).items():
        print(f"ERROR in {sec}: {err}")
    if (res.get("scale") or {}).get("error"):
        print(f"ERROR in scale: {res['scale']['error']}")
    for n in notes:
        print(f"note: {n}")
    print(f"\n(took {meta['elapsed_s']:.0f}s)")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"meta": meta, "notes": notes, "results": res, "table": rows},
                                 indent=2, default=str) + "\n")
    print(f"JSON: {a.json}")
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"\nbench: interrupted ({sys.exc_info()[1] or 'Ctrl-C'}); every process it "
              "started was killed", file=sys.stderr)
        sys.exit(130)
