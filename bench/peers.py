"""The peers spoold is compared with: task-spooler (`tsp`) and `nq`.

Owns finding them, installing them (as root with apt-get, unless --no-install),
and driving each with private state under the run's temp root: ``TS_SOCKET``
and ``TMPDIR`` for tsp (its server is started per scenario and killed with
``tsp -K``), ``NQDIR`` for nq. A peer that is missing is None in ``Ctx.tools``:
scenarios then measure spoold alone and the report says which peer is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from harness import base_env, call, log


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


def find_nq() -> str | None:
    return shutil.which("nq")


def install(notes: list[str]) -> None:
    """apt-get install the missing peers (root only); say in `notes` what failed."""
    want = [pkg for pkg, found in (("task-spooler", find_tsp()), ("nq", find_nq())) if not found]
    if not want:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        notes.append(f"not installed (need root and apt-get): {', '.join(want)}; skipped")
        return
    log(f"installing {' '.join(want)} with apt-get")
    env = base_env(DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *want]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        if r.returncode != 0:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True,
                           timeout=300)
            r = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        err = r.stderr.decode(errors="replace")[-200:] if r.returncode else None
    except subprocess.TimeoutExpired:
        err = "timed out"
    if err:
        notes.append(f"apt-get install {' '.join(want)} failed; skipped: {err}")


def find(notes: list[str]) -> dict:
    tools = {"tsp": find_tsp(), "nq": find_nq()}
    if not tools["tsp"]:
        notes.append("task-spooler (tsp) not installed: its column and the ratios are empty")
    if not tools["nq"]:
        notes.append("nq not installed: its column is empty")
    return tools


class Tsp:
    def __init__(self, path: str, root: Path, slots: int = 4):
        self.path = path
        self.dir = root
        root.mkdir(parents=True)
        self.env = base_env(TS_SOCKET=str(root / "socket"), TMPDIR=str(root),
                            TS_MAXFINISHED="100000")
        self.slots = slots

    def cmd(self, args: list[str], **kw):
        return call([self.path, *args], self.env, self.dir, **kw)

    def start(self) -> None:
        self.cmd(["-S", str(self.slots)])  # the first call starts the server
        self.cmd(["-S"])

    def submit_cmd(self, argv: list[str]) -> list[str]:
        return [self.path, *argv]

    def wait_id(self, job_id: str, timeout: float = 60) -> None:
        self.cmd(["-w", job_id], timeout=timeout, check=False)

    def finished(self) -> int:
        out = self.cmd(["-l"]).stdout.decode()
        return sum(1 for line in out.splitlines()[1:] if line.split()[1:2] == ["finished"])

    def server_pid(self) -> int | None:
        """The task-spooler server: the oldest live tsp process with our socket in its env."""
        want = f"TS_SOCKET={self.env['TS_SOCKET']}\0".encode()
        exe = os.path.realpath(self.path)
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/exe") == exe:
                    with open(f"/proc/{name}/environ", "rb") as f:
                        if want in f.read():
                            pids.append(int(name))
        return min(pids, default=None)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cmd(["-K"], check=False, timeout=10)


class Nq:
    def __init__(self, path: str, root: Path):
        self.path = path
        self.dir = root
        root.mkdir(parents=True)
        self.env = base_env(NQDIR=str(root))

    def submit_cmd(self, argv: list[str]) -> list[str]:
        return [self.path, *argv]

    def wait_all(self, timeout: float = 600) -> None:
        call([self.path, "-w"], self.env, self.dir, timeout=timeout, check=False)
