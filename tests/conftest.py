"""Fixtures that drive the real thing: a spool under tmp_path, the daemon as a
subprocess, the bin/ scripts and the installed console scripts. Only the GPUs
are fake (``--fake-gpus``)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "bin"
SCRIPTS = Path(sys.executable).parent  # where pip put the console scripts
HOST = socket.gethostname()


def tool_env(spool: Path | None = None, **extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{SCRIPTS}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SPOOLD_SPOOL", None)
    if spool is not None:
        env["SPOOLD_SPOOL"] = str(spool)
    env.update(extra)
    return env


def wait_for(cond, timeout: float = 15.0, what: str = "condition", interval: float = 0.02):
    """Poll ``cond`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def lock_free(path: Path) -> bool:
    """Whether no process holds an flock on ``path`` (probed without blocking)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def fill(folder: Path, one_file: bool) -> list[Path]:
    """Fill the filesystem of ``folder``: one big file (space), or empty files
    until no inode is left. Returns what to remove to free it again."""
    made = []
    try:
        if one_file:
            made.append(folder / "big")
            with open(made[0], "wb") as f:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
        while True:
            made.append(folder / f"fill-{len(made)}")
            made[-1].touch()
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        if not one_file:
            made.pop()
    return made


def fake_gpu_list(n: int, over: dict[int, dict] | None = None) -> list[dict]:
    """``n`` idle fake GPUs; ``over`` changes some: {1: {"utilization": 90}}."""
    over = over or {}
    return [{"index": i, "uuid": f"GPU-fake-{i}", "name": "Fake A100",
             "memory_total": 40960, "memory_used": 0, "utilization": 0, **over.get(i, {})}
            for i in range(n)]


class Spool:
    """A spool folder plus helpers to submit and to look at records."""

    def __init__(self, root: Path, gpu_file: Path):
        self.root = root
        self.gpu_file = gpu_file

    def set_gpus(self, gpus: list[dict]) -> None:
        tmp = self.gpu_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(gpus))
        os.replace(tmp, self.gpu_file)

    def gpus_seen(self, busy: set[int], timeout: float = 10.0) -> None:
        """Wait until the daemon's snapshot shows exactly ``busy`` as busy."""
        def seen():
            try:
                beat = next((self.root / "state" / "hosts").glob("*.yaml"))
                snap = yaml.safe_load(beat.read_text())
            except (OSError, yaml.YAMLError, StopIteration):
                return False
            return {g["index"] for g in snap["gpus"] if g["busy"]} == busy
        wait_for(seen, timeout, f"daemon to see GPUs {busy} busy")

    def run(self, *args: str, check: bool = True, shell: str = "dash",
            **kw) -> subprocess.CompletedProcess:
        """Run a tool (bin/ sh script under ``shell``, or a console script)."""
        name = args[0]
        cmd = [shell, str(BIN / name), *args[1:]] if (BIN / name).exists() else list(args)
        if not (BIN / name).exists() and not shutil.which(name, path=tool_env()["PATH"]):
            cmd = [sys.executable, "-c",
                   f"import sys; from spoold.tools import {name}_main as m; sys.exit(m())",
                   *args[1:]]
        p = subprocess.run(cmd, capture_output=True, env=tool_env(self.root, **kw.pop("env", {})),
                           timeout=60, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}: "
                                 f"{p.stderr.decode(errors='replace')}")
        return p

    def gsub(self, *args: str, **kw) -> int:
        return int(self.run("gsub", *args, **kw).stdout.decode().strip())

    def where(self, job_id: int) -> str | None:
        for d in ("running", "done", "failed", "cancelled"):
            if (self.root / d / f"{job_id}.yaml").exists():
                return d
        if any(p.name.endswith(f"-{job_id:08d}.yaml") for p in (self.root / "pending").iterdir()):
            return "pending"
        return None

    def record(self, job_id: int, state: str | None = None) -> dict:
        state = state or self.where(job_id)
        return yaml.safe_load((self.root / state / f"{job_id}.yaml").read_text())

    def wait_state(self, job_id: int, *states: str, timeout: float = 20.0) -> dict:
        states = states or ("done", "failed", "cancelled")
        st = wait_for(lambda: self.where(job_id) in states and self.where(job_id),
                      timeout, f"job {job_id} in {states} (now {self.where(job_id)})")
        return self.record(job_id, st)

    def log(self, job_id: int) -> str:
        p = self.root / "logs" / f"{job_id}.log"
        return p.read_text() if p.exists() else ""

    def drop(self, name: str, text: str | bytes) -> Path:
        """Deliver a file as another program would: write in tmp/, rename in."""
        tmp = self.root / "tmp" / ("x-" + name)
        tmp.write_bytes(text if isinstance(text, bytes) else text.encode())
        dest = self.root / "pending" / name
        os.rename(tmp, dest)
        return dest


class Daemon:
    def __init__(self, spool: Spool, args: list[str]):
        self.spool = spool
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.logfile = spool.root.parent / "daemon.out"

    def start(self, *extra: str, wait: bool = True) -> Daemon:
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spoold.daemon", "--spool", str(self.spool.root),
                 "--fake-gpus", str(self.spool.gpu_file), *self.args, *extra],
                stdout=out, stderr=subprocess.STDOUT, env=tool_env(), cwd=REPO)
        if wait:
            host = self.args[self.args.index("--host") + 1] if "--host" in self.args else None
            beat = self.spool.root / "state" / "hosts" / f"{host or HOST}.yaml"
            wait_for(lambda: beat.exists() or self.proc.poll() is not None, 20, "daemon start")
            assert self.proc.poll() is None, self.output()
        return self

    def output(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    root = tmp_path / "spool"
    gpu_file = tmp_path / "gpus.yaml"
    sp = Spool(root, gpu_file)
    sp.set_gpus(fake_gpu_list(4))
    sys.path.insert(0, str(REPO))
    from spoold.spool import Spool as RealSpool

    RealSpool(root).create()
    return sp


@pytest.fixture
def daemon_factory(spool: Spool):
    started: list[Daemon] = []

    def make(*args: str, start: bool = True) -> Daemon:
        d = Daemon(spool, ["--poll", "0.2", "--kill-grace", "2", *args])
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.stop()
    _kill_leftovers(spool.root)


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    return daemon_factory()


def _kill_leftovers(root: Path) -> None:
    """Jobs outlive daemons by design; tests must not leave them behind."""
    marker = b"SPOOLD_SPOOL=" + os.fsencode(str(root)) + b"\0"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if marker in f.read():
                    os.kill(int(name), signal.SIGKILL)
        except OSError:
            continue
    _remove_job_cgroups(root)


def _remove_job_cgroups(root: Path) -> None:
    """Kill and remove the job cgroups a root daemon made for this spool (one
    folder per host that has a heartbeat, plus this machine's name)."""
    if os.geteuid() != 0:
        return
    from spoold.cgroup import Cgroups

    hosts = {HOST} | {p.stem for p in (root / "state" / "hosts").glob("*.yaml")}
    for host in hosts:
        cg = Cgroups.detect(root, host)
        for job_id in cg.job_ids() if cg is not None else ():
            cg.kill(job_id)
            wait_for(lambda c=cg, j=job_id: not c.populated(j), 10, f"job {job_id}'s cgroup")
            cg.remove(job_id)
        if cg is not None:
            cg.remove_base()
