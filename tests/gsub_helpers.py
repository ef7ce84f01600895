"""What the gsub tests share: spools made by hand, running bin/gsub under
dash or bash, reading what it queued, the hostile inputs (tests/test_gsub*.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from test_reliability import tiny_spool  # noqa: F401 - a fixture: a spool on a small tmpfs

from spoold import job as jobmod

ROOT = Path(__file__).resolve().parent.parent
GSUB = ROOT / "bin" / "gsub"
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]
FOLDERS = ["tmp", "pending", "running", "done", "failed", "cancelled", "requests", "logs", "state"]

pytestmark = pytest.mark.skipif("dash" not in SHELLS, reason="dash is not installed")

# no surrogates (not text), no NUL (can not be in argv or environ)
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
HYPO = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HOSTILE = [
    "",
    " ",
    "  lead and trail  ",
    '"',
    "'",
    "\\",
    '\\"',
    '"\\',
    "$HOME",
    "${HOME}",
    "$(id)",
    "`id`",
    "a;b|c&d>e<f",
    "*",
    "?[a-z]",
    "~",
    "#not a comment",
    "key: value",
    "- item",
    "[1, 2]",
    "{a: b}",
    "null",
    "true",
    "~",
    "0o17",
    "1e3",
    "line1\nline2",
    "\n",
    "\n\n",
    "trailing\n",
    "cr\r",
    "crlf\r\n",
    "tab\there",
    "\x01\x02\x1b[31mred\x1b[0m\x7f",
    "\x1f",
    "caf\u00e9 na\u00efve",
    "\u4e2d\u6587\u5b57\u7b26",
    "\U0001f680 rocket \U0001f4a5",
    "\u2028",
    "a\u2029b",
    "\u0080\u0085\u009f",
    "\u00a0nbsp",
    "\ufeffbom",
    "\ufffe\uffff",
    "\ufffd",
    "\U0010ffff",
    "\ud7ff\ue000",
    "-",
    "--",
    "-c",
    "-n",
    "--spool",
    "--help",
    "x" * 5000 + "\n" + "y",
    '"' * 300,
    "\u00e9" * 2000,
    "=" * 200 + "\n" + "=" * 200,
    "%s%d%%",
    "\\x41\\u2028\\n",
]


# ---------------------------------------------------------------- helpers
def make_spool(path: Path) -> Path:
    for name in FOLDERS:
        (path / name).mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return make_spool(tmp_path / "spool")


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOLD_")}
    env.update(extra)
    return env


def run(spool: Path | None, *args, shell: str = "dash", env=None, cwd=None, timeout=30,
        script: Path = GSUB, umask: int = 0o022) -> subprocess.CompletedProcess:
    argv: list = [shell, str(script)]
    if spool is not None:
        argv += ["--spool", str(spool)]
    argv += list(args)
    return subprocess.run(argv, capture_output=True, env=base_env() if env is None else env,
                          cwd=cwd, timeout=timeout, umask=umask)


def load_both(text: bytes) -> dict:
    a = yaml.load(text, Loader=yaml.CSafeLoader)
    b = yaml.load(text, Loader=yaml.SafeLoader)
    assert a == b
    return a


def pending_file(spool: Path, job_id: int, prio: int = 10) -> Path:
    return spool / "pending" / f"{prio:04d}-{job_id:08d}.yaml"


def submit(spool: Path, *args, shell: str = "dash", prio: int = 10, **kw) -> tuple[int, dict]:
    p = run(spool, *args, shell=shell, **kw)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = p.stdout.decode()
    assert re.fullmatch(r"[1-9][0-9]*\n", out), out
    job_id = int(out)
    f = pending_file(spool, job_id, prio)
    assert f.is_file(), sorted(os.listdir(spool / "pending"))
    job = load_both(f.read_bytes())
    assert job["id"] == job_id
    return job_id, job


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def summary_line(beat: dict, boot: str | None = None, age: float = 0.0, pending: int = 0,
                 max_pending: int = 10000) -> str:
    """The heartbeat's first line as spoold.hosts.Hosts.summary writes it:
    ``boot`` None is this machine's boot (then ``up`` is its uptime ``age``
    seconds ago); another boot id makes gsub judge the age by the clock."""
    gpus = beat.get("gpus") or []
    words = {"time": int(beat["time"]), "timeout": int(beat.get("host_timeout") or 0),
             "boot": boot_id() if boot is None else boot, "up": int(uptime() - age),
             "gpus": len(gpus), "limit": beat.get("limit") or 0, "cpus": beat.get("cpus") or 0,
             "mem": beat.get("mem") or 0,
             "gpumem": max((g.get("memory_total") or 0 for g in gpus), default=0),
             "slurm": int(str((beat.get("enforced") or {}).get("gpus", "")).startswith("SLURM")),
             "pending": pending, "max_pending": max_pending}
    return " ".join(f"{k}={v}" for k, v in words.items())


def live_host(spool: Path, host: str = "vm", gpus: int = 4, age: float = 0.0,
              boot: str | None = None, pending: int = 0, max_pending: int = 10000,
              **fields) -> Path:
    """A heartbeat as spoold.hosts writes it, ``age`` seconds old, its first
    line the summary gsub reads (``boot``, ``pending``, ``max_pending``: see
    summary_line): gsub takes the host for live while its age is within its
    host_timeout. ``time=None`` writes a summary without a time."""
    beat = {"host": host, "time": time.time() - age, "pid": 1,
            "gpus": [{"index": i, "uuid": f"GPU-{i}", "name": "Fake", "memory_total": 40960,
                      "memory_used": 0, "utilization": 0, "error": None, "busy": None}
                     for i in range(gpus)],
            "jobs": [{"id": 3, "uid": 0, "user": "root", "name": "x", "gpus": [0, 1],
                      "cpus": [0, 1, 2], "gpu_mem": 0, "mem": 0, "started_at": 1.0,
                      "time_limit": None}],
            "shares": [], "max_load": 0.1, "max_memory": 0.1, "cpus": 8, "mem": 16384,
            "limit": gpus, "host_timeout": 60.0, "draining": False,
            "enforced": {"gpus": "CUDA_VISIBLE_DEVICES", "cpus": "pinned (sched_setaffinity)",
                         "mem": "booked only (not enforced)",
                         "time_limit": "TERM, then KILL after the grace"}}
    beat.update(fields)
    summary = summary_line({**beat, "time": beat["time"] or 0}, boot, age, pending, max_pending)
    if beat["time"] is None:
        summary = summary.split(" ", 1)[1]
    (spool / "state" / "hosts").mkdir(exist_ok=True)
    path = spool / "state" / "hosts" / f"{host}.yaml"
    path.write_bytes(jobmod.dump({"summary": summary, **beat}))
    return path


def default_name(s: str, word: bool = False) -> str:
    if word:
        s = re.split(r"[ \t\n]", s.lstrip(" \t\n"), maxsplit=1)[0]
    while len(s) > 1 and s.endswith("/"):
        s = s[:-1]
    if s != "/":
        s = s.rsplit("/", 1)[-1]
    b = s.encode()
    if len(b) > 40:
        s = b[:40].decode("utf-8", "ignore")
    return s


def assert_nothing_written(spool: Path) -> None:
    assert os.listdir(spool / "pending") == []
    assert os.listdir(spool / "tmp") == []
    assert not (spool / "state" / "next-id").exists()


def wait_for(pred, timeout=10.0, step=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out waiting")


def fake_daemon(spool: Path, results: dict[int, str], stop: threading.Event) -> None:
    """Move each pending job whose id is in results to done/failed with that text."""
    while not stop.is_set():
        for name in os.listdir(spool / "pending"):
            if name.startswith("."):
                continue
            job_id = int(name.split("-")[1].split(".")[0])
            text = results.get(job_id)
            if text is None:
                continue
            folder = "done" if "exit_code: 0\n" in text else "failed"
            (spool / "tmp" / f"r{job_id}").write_text(f"id: {job_id}\n{text}")
            os.rename(spool / "tmp" / f"r{job_id}", spool / folder / f"{job_id}.yaml")
            os.unlink(spool / "pending" / name)
        time.sleep(0.01)


@pytest.fixture
def daemon(spool):
    stop = threading.Event()
    results: dict[int, str] = {}
    t = threading.Thread(target=fake_daemon, args=(spool, results, stop), daemon=True)
    t.start()
    yield results
    stop.set()
    t.join(5)


@pytest.fixture
def shared_spool(spool):
    """A spool as spoold lays it out for many users: pending/ and state/ids/
    are 1777 and the counter is only a hint that gsub reads."""
    (spool / "pending").chmod(0o1777)
    (spool / "state" / "ids").mkdir()
    (spool / "state" / "ids").chmod(0o1777)
    (spool / "state" / "next-id").write_text("5\n")
    return spool
