"""One spoold under test: a fresh spool, a fake-GPU file, the real daemon as a subprocess.

Owns making the spool (with spoold's own ``Spool.create``), the fake GPUs
(``--fake-gpus``, rewritten atomically to change their load), starting the
daemon (``python -m spoold.daemon`` of the tree under test, ``--poll 1``,
``--host bench``; under cProfile or py-spy with --profile), asking the spool
about jobs, and stopping it all again: SIGTERM to the daemon, then SIGKILL to
the jobs it leaves running by design, then removal of the job cgroups a root
daemon made (as the tests' conftest does), so nothing outlives a scenario.

It only reads what the spool format documents (docs/spool-format.md); it never
imports or patches the daemon's code in the bench's own process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from harness import (
    POLL,
    Ctx,
    base_env,
    call,
    kill_by_environ,
    log,
    read_stamp,
    stop_process,
    wait_for,
)

YLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
HOST = "bench"

# Run with the tree's PYTHONPATH after the daemon stopped: kill and remove the job
# cgroups it made for this spool (a root daemon only; trees without cgroups: nothing).
_REMOVE_CGROUPS = """
import sys, time
try:
    from spoold.cgroup import Cgroups
except ImportError:
    sys.exit(0)
cg = Cgroups.detect(sys.argv[1], sys.argv[2])
for job in sorted(cg.job_ids()) if cg else ():
    cg.kill(job)
    deadline = time.monotonic() + 10
    while cg.populated(job) and time.monotonic() < deadline:
        time.sleep(0.01)
    cg.remove(job)
"""


def fake_gpus_yaml(busy: list[bool]) -> str:
    """A --fake-gpus file: one 80 GB GPU per entry, fully loaded where busy."""
    gpus = [{"index": i, "uuid": f"GPU-bench-{i:04d}", "name": "Fake GPU",
             "memory_total": 81559, "memory_used": 80000 if b else 0,
             "utilization": 100 if b else 0} for i, b in enumerate(busy)]
    return yaml.safe_dump(gpus, sort_keys=False)


def write_pending(spool: Path, n: int, special: dict[int, bytes] | None = None) -> None:
    """n one-GPU jobs written straight into pending/ (as a program may), ids 1..n, and
    state/next-id after them. Each runs `true`, or its body in `special` (id -> YAML)."""
    special = special or {}
    plain = b'argv: ["true"]\ngpus: 1\n'
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for i in range(1, n + 1):
        fd = os.open(spool / "pending" / f"0010-{i:08d}.yaml", flags, 0o644)
        try:
            os.write(fd, special.get(i, plain))
        finally:
            os.close(fd)
    (spool / "state" / "next-id").write_text(f"{n + 1}\n")


def write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(data)
    os.rename(tmp, path)


class Spoold:
    def __init__(self, ctx: Ctx, tag: str, n_gpus: int, busy: bool = False):
        self.ctx = ctx
        self.tag = tag
        self.root = ctx.path(f"{tag}-spoold")
        self.spool = self.root / "spool"
        self.gpus_file = self.root / "fake-gpus.yaml"
        self.n_gpus = n_gpus
        self.gsub = [ctx.gsub_sh, str(ctx.repo / "bin" / "gsub"), "--spool", str(self.spool)]
        self.env = base_env(PYTHONPATH=os.pathsep.join(
            p for p in (str(ctx.repo), os.environ.get("PYTHONPATH")) if p))
        self.env.pop("SPOOLD_SPOOL", None)
        self.proc: subprocess.Popen | None = None
        self.spy: subprocess.Popen | None = None
        self.log_path = self.root / "daemon.out"
        self.root.mkdir(parents=True)
        self.set_gpus([busy] * n_gpus)
        code = "import sys; from spoold.spool import Spool; Spool(sys.argv[1]).create()"
        self.python(code, str(self.spool))

    def python(self, code: str, *args: str, check: bool = True):
        """Run `code` with the tree under test importable (never in our process)."""
        return call([sys.executable, "-c", code, *args], self.env, self.root, check=check)

    def set_gpus(self, busy: list[bool]) -> None:
        write_atomic(self.gpus_file, fake_gpus_yaml(busy))

    def submit_cmd(self, argv: list[str], gpus: int = 1, opts: tuple = ()) -> list[str]:
        return [*self.gsub, "-n", str(gpus), *opts, "--", *argv]

    def submit(self, argv: list[str], gpus: int = 1, opts: tuple = ()) -> str:
        """Submit with gsub; return what it printed (the id, or one id a line)."""
        r = call(self.submit_cmd(argv, gpus, opts), self.env, self.root)
        return r.stdout.decode().strip()

    # ---- the daemon --------------------------------------------------------------
    def start(self, extra: list[str] = (), wait: bool = True, timeout: float = 60) -> float:
        """Start the daemon; return time.time() just before. wait: until its first
        GPU snapshot is written."""
        args = ["--spool", str(self.spool), "--fake-gpus", str(self.gpus_file),
                "--poll", f"{POLL:g}", "--host", HOST, *extra]
        cmd = [sys.executable]
        if self.ctx.profile == "cprofile":
            cmd += ["-m", "cProfile", "-o", str(self.ctx.profile_dir / f"{self.tag}.prof")]
        cmd += ["-m", "spoold.daemon", *args]
        with open(self.log_path, "ab") as out:
            t0 = time.time()
            self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                         start_new_session=True)
        self.ctx.started.append(self.proc)
        if self.ctx.profile == "py-spy":
            self.spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(self.proc.pid), "--rate", "250",
                 "--nonblocking", "--format", "raw", "-o",
                 str(self.ctx.profile_dir / f"{self.tag}.pyspy.txt")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=base_env())
            self.ctx.started.append(self.spy)
        if wait:
            wait_for(lambda: self.check_alive() and self.snapshot(), timeout,
                     what="spoold to write its GPU snapshot")
        return t0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @contextlib.contextmanager
    def frozen(self):
        """The daemon stopped (SIGSTOP) meanwhile, its heartbeat left as it was: gsub
        still sees a live host (start it with a long --host-timeout), and the daemon's
        reaction to what is submitted takes no CPU from what is being timed."""
        self.check_alive()
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def check_alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = self.proc.returncode if self.proc else None
            raise RuntimeError(f"spoold exited ({code}); log tail:\n{self.log_tail()}")
        return True

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def stop(self) -> None:
        if self.spy is not None:  # py-spy writes its file on SIGINT
            with contextlib.suppress(OSError):
                self.spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.spy.wait(20)
            stop_process(self.ctx, self.spy, 1)
            self.spy = None
        if self.proc is not None:
            stop_process(self.ctx, self.proc)
        # SIGTERM leaves jobs running by design: kill them, then their cgroups.
        kill_by_environ([b"SPOOLD_SPOOL=" + os.fsencode(str(self.spool)) + b"\0"])
        if os.geteuid() == 0:
            r = self.python(_REMOVE_CGROUPS, str(self.spool), HOST, check=False)
            if r.returncode:
                log(f"could not remove the job cgroups of {self.spool}: "
                    f"{r.stderr.decode(errors='replace')[-300:]}")

    # ---- the spool, as documented ------------------------------------------------
    def snapshot(self) -> Path | None:
        """The GPU readings the daemon writes at every poll: state/hosts/HOST.yaml in
        newer spools, state/gpus.yaml in older ones (for --repo)."""
        for p in (self.spool / "state" / "hosts" / f"{HOST}.yaml",
                  self.spool / "state" / "gpus.yaml"):
            if p.exists():
                return p
        return None

    def read_yaml(self, path: Path):
        try:
            return yaml.load(path.read_bytes(), Loader=YLoader)
        except (OSError, yaml.YAMLError):
            return None

    def started(self, job_id: str) -> bool:
        """running/ID.yaml records started_at (written once the shepherd runs)."""
        data = self.read_yaml(self.spool / "running" / f"{job_id}.yaml")
        return isinstance(data, dict) and bool(data.get("started_at"))

    def is_running(self, job_id: int | str) -> bool:
        return (self.spool / "running" / f"{job_id}.yaml").exists()

    def log_lines(self) -> int:
        """Lines in the daemon's log, state/spoold.log and its rotations (.1 to .3)."""
        n = 0
        for p in self.spool.glob("state/spoold.log*"):
            with contextlib.suppress(OSError), open(p, "rb") as f:
                n += sum(chunk.count(b"\n") for chunk in iter(lambda f=f: f.read(1 << 20), b""))
        return n

    def count(self, *dirs: str) -> int:
        n = 0
        for d in dirs:
            with os.scandir(self.spool / d) as it:
                n += sum(1 for e in it if e.name.endswith(".yaml"))
        return n

    def ended(self) -> int:
        return self.count("done", "failed", "cancelled")

    def finished(self, job_id: str) -> str | None:
        for d in ("done", "failed", "cancelled"):
            if (self.spool / d / f"{job_id}.yaml").exists():
                return d
        return None

    def where(self, job_id: int | str) -> str | None:
        """The folder the job is in (pending/ names carry the priority too)."""
        if any(self.spool.glob(f"pending/*-{int(job_id):08d}.yaml")):
            return "pending"
        return "running" if self.is_running(job_id) else self.finished(str(job_id))

    def describe(self, job_id: int | str) -> str:
        """Where a job is, why it ended, and the daemon's last words: for errors."""
        state = self.where(job_id)
        rec = self.read_yaml(self.spool / str(state) / f"{job_id}.yaml") if state else None
        reason = rec.get("reason") if isinstance(rec, dict) else None
        return (f"job {job_id} is in {state or 'no folder'}/"
                + (f" ({reason})" if reason else "")
                + f"; daemon log tail:\n{self.log_tail(1500)}")

    def wait_stamp(self, job_id: str, mark: Path, timeout: float = 30) -> float:
        """Wait for the stamp a job writes when it starts (harness.stamp_job); fail
        at once, with the reason, if the daemon dies or the job ends without it."""
        def stamp():
            self.check_alive()
            t = read_stamp(mark)
            if t is None and self.finished(job_id) and read_stamp(mark) is None:
                raise RuntimeError(f"ended without starting: {self.describe(job_id)}")
            return t

        try:
            return wait_for(stamp, timeout, what=f"spoold job {job_id} to start")[0]
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {self.describe(job_id)}") from None
