"""Tests of bin/gsub: the real script, run under dash (and bash for the key
cases), against real spool folders in tmp_path.  No daemon is needed: where a
test needs one (--wait) a thread plays its part."""

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
from conftest import fill
from hypothesis import HealthCheck, given, settings
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


def live_host(spool: Path, host: str = "vm", gpus: int = 4, age: float = 0.0,
              **fields) -> Path:
    """A heartbeat as spoold.hosts writes it, ``age`` seconds old: gsub takes
    the host for live while its time is within its host_timeout."""
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
    (spool / "state" / "hosts").mkdir(exist_ok=True)
    path = spool / "state" / "hosts" / f"{host}.yaml"
    path.write_bytes(jobmod.dump(beat))
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


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_argv_round_trip(spool, shell):
    for i in range(0, len(HOSTILE), 12):
        chunk = HOSTILE[i:i + 12]
        _, job = submit(spool, "--", *chunk, shell=shell)
        assert job["argv"] == chunk
        assert job["name"] == default_name(chunk[0])


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_cmd_round_trip(spool, shell):
    for s in HOSTILE:
        _, job = submit(spool, "-c", s, shell=shell)
        assert job["cmd"] == s
        assert "argv" not in job
        assert job["name"] == default_name(s, word=True)


@pytest.mark.parametrize("shell", SHELLS)
def test_escapes_in_file(spool, shell):
    """The characters YAML readers treat specially are escaped, in the file."""
    s = ("\u2028|\u2029|\u0085|\u0080|\u009f|\ufeff|\ufffe|\uffff|\x7f|\x01|\x1b|\t|\r|\n|"
         '"|\\|\u00e9')
    job_id, job = submit(spool, "--", s, shell=shell)
    raw = pending_file(spool, job_id).read_bytes()
    line = [ln for ln in raw.split(b"\n") if ln.startswith(b"argv:")][0]
    assert line == (b'argv: ["\\u2028|\\u2029|\\x85|\\x80|\\x9F|\\uFEFF|\\uFFFE|\\uFFFF|'
                    b'\\x7F|\\x01|\\x1B|\\t|\\r|\\n|\\"|\\\\|\xc3\xa9"]')
    assert job["argv"] == [s]


@settings(HYPO)
@given(argv=st.lists(TEXT, min_size=1, max_size=6))
def test_argv_round_trip_property(tmp_path_factory, argv):
    spool = make_spool(tmp_path_factory.mktemp("spool"))
    _, job = submit(spool, "--", *argv)
    assert job["argv"] == argv
    assert job["name"] == default_name(argv[0])


@settings(HYPO)
@given(cmd=TEXT)
def test_cmd_round_trip_property(tmp_path_factory, cmd):
    spool = make_spool(tmp_path_factory.mktemp("spool"))
    _, job = submit(spool, "-c", cmd)
    assert job["cmd"] == cmd
    assert job["name"] == default_name(cmd, word=True)


@settings(HYPO, max_examples=30)
@given(argv=st.lists(TEXT, min_size=1, max_size=4), value=TEXT)
def test_round_trip_property_bash(tmp_path_factory, argv, value):
    if "bash" not in SHELLS:
        pytest.skip("no bash")
    spool = make_spool(tmp_path_factory.mktemp("spool"))
    _, job = submit(spool, "--", *argv, shell="bash", env=base_env(HYPO_VALUE=value))
    assert job["argv"] == argv
    assert job["env"]["HYPO_VALUE"] == value


@settings(HYPO, max_examples=40)
@given(value=TEXT, other=TEXT)
def test_env_value_round_trip_property(tmp_path_factory, value, other):
    spool = make_spool(tmp_path_factory.mktemp("spool"))
    env = base_env(A_HYPO=value, Z_HYPO=other)
    _, job = submit(spool, "true", env=env)
    assert job["env"]["A_HYPO"] == value
    assert job["env"]["Z_HYPO"] == other


def test_leading_dashes_after_double_dash(spool):
    _, job = submit(spool, "-n", "0", "--", "-n", "3", "--", "-c", "x")
    assert job["argv"] == ["-n", "3", "--", "-c", "x"]
    assert job["gpus"] == 0
    assert job["name"] == "-n"


def test_first_word_ends_options(spool):
    _, job = submit(spool, "-n", "2", "python", "-n", "5", "--hold", "-c", "x")
    assert job["argv"] == ["python", "-n", "5", "--hold", "-c", "x"]
    assert job["gpus"] == 2
    assert "hold" not in job and "cmd" not in job


# ---------------------------------------------------------------- invalid UTF-8
BAD_UTF8 = [b"\xff", b"a\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe0\x80\x80",
            b"\xf5\x80\x80\x80", b"\xf4\x90\x80\x80", b"ok\x80", b"\xe2\x82"]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("bad", BAD_UTF8)
def test_invalid_utf8_argument_refused(spool, shell, bad):
    p = run(spool, "--", "prog", b"fine", bad, shell=shell)
    assert p.returncode == 2
    assert p.stderr.decode(errors="replace").strip() == "gsub: argument 3 is not valid UTF-8 text"
    assert_nothing_written(spool)
    p = run(spool, "-c", b"echo " + bad, shell=shell)
    assert p.returncode == 2
    assert b"not valid UTF-8" in p.stderr
    assert_nothing_written(spool)


@pytest.mark.parametrize("shell", SHELLS)
def test_invalid_utf8_env_value_skipped_with_warning(spool, shell):
    env = {k.encode(): v.encode() for k, v in base_env().items()}
    env[b"BAD_VALUE"] = b"x\xffy"
    env[b"GOOD_VALUE"] = "caf\u00e9".encode()
    live_host(spool)  # (no warning that no spoold runs)
    p = subprocess.run([shell, str(GSUB), "--spool", str(spool), "true"], capture_output=True,
                       env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count(b"\n") == 1
    assert b"BAD_VALUE" in p.stderr and b"warning" in p.stderr
    job = load_both(pending_file(spool, int(p.stdout)).read_bytes())
    assert "BAD_VALUE" not in job["env"]
    assert job["env"]["GOOD_VALUE"] == "caf\u00e9"


# ---------------------------------------------------------------- environment
@pytest.mark.parametrize("shell", SHELLS)
def test_env_captured_exactly(spool, shell, tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "HOME": "/home/someone",
        "MULTI": "first line\nexport FAKE='not a var'\nlast \"quoted\" 'single'",
        "BLANKS": "a\n\n\nb\n",
        "QUOTES": "it's \"x\" \\ $y `z`",
        "EMPTY": "",
        "UNICODE": "\u00e9\u2028\U0001f680",
        "LC_ALL": "fr_FR.UTF-8",
        "CONDA_PREFIX": "/opt/conda/envs/x",
        "_gt": "mine\nexport EVIL='1'",
        "_gx": "internal name",
        "_other": "kept",
    }
    job_id, job = submit(spool, "true", shell=shell, env=env, cwd=tmp_path)
    got = dict(job["env"])
    # what the shell itself adds
    assert got.pop("PWD") == str(tmp_path)
    got.pop("SHLVL", None)
    got.pop("OLDPWD", None)
    expected = {k: v for k, v in env.items() if not k.startswith("_g")}
    assert got == expected
    assert "FAKE" not in got and "EVIL" not in got


@pytest.mark.parametrize("shell", SHELLS)
def test_env_no_internal_variables(spool, shell):
    _, job = submit(spool, "-c", "x\ty\u00e9", shell=shell)
    assert not [k for k in job["env"] if k.startswith("_g")]
    assert "LC_ALL" not in job["env"] or "LC_ALL" in os.environ
    assert "_" not in job["env"]


def test_env_without_lc_all(spool):
    env = base_env()
    env.pop("LC_ALL", None)
    _, job = submit(spool, "true", env=env)
    assert "LC_ALL" not in job["env"]


@pytest.mark.parametrize("shell", SHELLS)
def test_env_many_variables_in_both_shells(spool, shell):
    env = base_env(**{f"V{i:03d}": f"value {i}\n" * (i % 3) for i in range(150)})
    _, job = submit(spool, "true", shell=shell, env=env)
    for i in range(150):
        assert job["env"][f"V{i:03d}"] == f"value {i}\n" * (i % 3)


# ---------------------------------------------------------------- fields
def test_defaults_and_layout(spool, tmp_path):
    env = base_env(USER="alice")
    job_id, job = submit(spool, "python", "dir/train.py", env=env, cwd=tmp_path)
    assert job_id == 1
    assert list(job) == ["id", "argv", "name", "gpus", "priority", "cwd", "umask", "env"]
    assert job["name"] == "python"
    assert job["gpus"] == 1 and job["priority"] == 10
    assert job["cwd"] == str(tmp_path)
    assert job["umask"] == "0022"
    assert (spool / "state" / "next-id").read_text() == "2\n"
    assert os.listdir(spool / "tmp") == []
    assert os.listdir(spool / "pending") == ["0010-00000001.yaml"]
    assert (spool / "pending" / "0010-00000001.yaml").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("shell", SHELLS)
def test_user_is_never_taken_from_the_environment(spool, shell):
    """Who submitted is the file's owner (the kernel's word); $USER and $LOGNAME
    are anyone's to set, so gsub writes no `user:` field from them."""
    no_user = base_env(LOGNAME="bob")
    no_user.pop("USER", None)
    for env in (base_env(USER="root", LOGNAME="root"), no_user):
        job = submit(spool, "true", env=env, shell=shell)[1]
        assert "user" not in job
        assert job["env"]["LOGNAME"] == env["LOGNAME"]  # still recorded for the job


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("mask, text", [(0o027, "0027"), (0o002, "0002"), (0o077, "0077"),
                                        (0o000, "0000")])
def test_umask_recorded_as_submitted_and_the_file_stays_private(spool, shell, mask, text,
                                                                 tmp_path):
    job_id, job = submit(spool, "-c", "true", shell=shell, umask=mask)
    assert job["umask"] == text and isinstance(job["umask"], str)
    f = pending_file(spool, job_id)
    assert jobmod.parse(f.read_bytes()).umask == mask
    assert f.stat().st_mode & 0o777 == 0o600
    jobs = tmp_path / "jobs"
    jobs.write_text("a\nb\n")
    for args in (["--array", "1-2", "true"], ["--file", str(jobs)]):
        p = run(spool, *args, shell=shell, umask=mask)
        assert p.returncode == 0, p.stderr
        for i in p.stdout.split():
            f = pending_file(spool, int(i))
            assert load_both(f.read_bytes())["umask"] == text
            assert f.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("shell", SHELLS)
def test_every_flag(spool, shell, tmp_path):
    env = base_env(USER="alice")
    p = run(spool, "-n", "0", "-p", "7", "-J", "my job \u00e9", "-t", "1:30:00", "--cpus", "4",
            "--mem", "30G", "--after", "3,004", "--after=5", "--hold", "-o", "out/x.log",
            "--on-finish", "notify.sh \"done\"", "--host", "node2", "--requeue", "-c",
            "echo $HOME && ls", shell=shell, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    job_id = int(p.stdout)
    job = load_both(pending_file(spool, job_id, 7).read_bytes())
    env_ = job.pop("env")
    assert env_["USER"] == "alice"
    assert list(job.items()) == [
        ("id", job_id), ("cmd", "echo $HOME && ls"), ("name", "my job \u00e9"), ("gpus", 0),
        ("priority", 7), ("cwd", str(tmp_path)), ("time_limit", 5400),
        ("cpus", 4), ("mem", 30720), ("after", [3, 4, 5]), ("hold", True),
        ("log", str(tmp_path / "out/x.log")), ("on_finish", 'notify.sh "done"'),
        ("pin_host", "node2"), ("requeue", True), ("umask", "0022"),
    ]


def test_long_option_forms(spool):
    _, job = submit(spool, "--gpus=2", "--priority=3", "--name=n", "--time=10m", "--cpus=2",
                    "--mem=1G", "--output=/abs.log", "--on-finish=x", "--host=h", "-n3",
                    "--job-name", "nn", "--", "a", prio=3)
    assert job["gpus"] == 3 and job["priority"] == 3 and job["name"] == "nn"
    assert job["time_limit"] == 600 and job["cpus"] == 2 and job["mem"] == 1024
    assert job["log"] == "/abs.log" and job["on_finish"] == "x" and job["pin_host"] == "h"


@pytest.mark.parametrize("prio", [0, 1, 10, 99, 9999])
def test_priority_in_file_name(spool, prio):
    job_id, job = submit(spool, "-p", str(prio), "true", prio=prio)
    assert job["priority"] == prio
    assert os.listdir(spool / "pending") == [f"{prio:04d}-{job_id:08d}.yaml"]


def test_priority_leading_zeros(spool):
    _, job = submit(spool, "-p", "0008", "true", prio=8)
    assert job["priority"] == 8


@pytest.mark.parametrize("argv0, name", [
    ("python", "python"), ("/usr/bin/python3", "python3"), ("./run.sh", "run.sh"),
    ("dir/", "dir"), ("/", "/"), ("", ""), ("a" * 100, "a" * 40), ("/0", "0"), ("//", "/"),
    ("a//b//", "b"), ("/z/x" + "y" * 50000, "x" + "y" * 39),
    ("\u00e9" * 30, "\u00e9" * 20), ("x" + "\u00e9" * 30, "x" + "\u00e9" * 19),
    ("with space", "with space"),
], ids=lambda v: repr(v)[:20])
def test_default_name_from_argv(spool, argv0, name):
    assert submit(spool, "--", argv0, "arg")[1]["name"] == name


@pytest.mark.parametrize("cmd, name", [
    ("echo hi", "echo"), ("  \t\n python x.py", "python"), ("./a/b.sh --x", "b.sh"),
    ("VAR=1 prog", "VAR=1"), ("", ""), ("one\ttwo", "one"), ("z" * 50 + " y", "z" * 40),
])
def test_default_name_from_cmd(spool, cmd, name):
    assert submit(spool, "-c", cmd)[1]["name"] == name


def test_gpu_mem(spool):
    _, job = submit(spool, "--gpu-mem", "8G", "true")
    assert job["gpus"] == 1 and job["gpu_mem"] == 8192
    _, job = submit(spool, "-n", "1", "--gpu-mem", "512", "true")
    assert job["gpus"] == 1 and job["gpu_mem"] == 512
    for n in ("2", "0"):
        p = run(spool, "-n", n, "--gpu-mem", "8G", "true")
        assert p.returncode == 2 and p.stderr.startswith(b"gsub: ")


@pytest.mark.parametrize("value, seconds", [
    ("90s", 90), ("90S", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1:30:00", 5400),
    ("0:0:1", 1), ("5:30", 330), ("45", 2700), ("1", 60), ("007", 420), ("1-2", 93600),
    ("1-2:30", 95400), ("1-0:0:10", 86410), ("0-1", 3600), ("100:00:00", 360000),
])
def test_time_limit(spool, value, seconds):
    assert submit(spool, "-t", value, "true")[1]["time_limit"] == seconds


def test_time_limit_infinite(spool):
    assert "time_limit" not in submit(spool, "-t", "infinite", "true")[1]


@pytest.mark.parametrize("size, mib", [
    ("512M", 512), ("512", 512), ("30G", 30720), ("1T", 1048576), ("4096K", 4), ("1K", 1),
    ("1025K", 2), ("2GiB", 2048), ("3gb", 3072), ("7MiB", 7), ("0010G", 10240),
])
def test_mem_sizes(spool, size, mib):
    _, job = submit(spool, "--mem", size, "--gpu-mem", size, "true")
    assert job["mem"] == mib and job["gpu_mem"] == mib


def test_log_absolute(spool, tmp_path):
    assert submit(spool, "-o", "/var/x.log", "true")[1]["log"] == "/var/x.log"
    assert submit(spool, "-o", "y.log", "true", cwd=tmp_path)[1]["log"] == str(tmp_path / "y.log")


def test_cwd_is_physical_directory(spool, tmp_path):
    d = tmp_path / "work dir \u00e9"
    d.mkdir()
    env = base_env()
    env.pop("PWD", None)
    assert submit(spool, "true", cwd=d, env=env)[1]["cwd"] == str(d)


def test_spool_from_env_and_home(tmp_path):
    s1 = make_spool(tmp_path / "s1")
    p = run(None, "true", env=base_env(SPOOLD_SPOOL=str(s1)))
    assert p.returncode == 0 and pending_file(s1, int(p.stdout)).exists()
    home = tmp_path / "home"
    s2 = make_spool(home / ".local/share/spoold")
    p = run(None, "true", env=base_env(HOME=str(home)))
    assert p.returncode == 0 and pending_file(s2, int(p.stdout)).exists()
    # --spool wins over the variable, and a relative one is taken from cwd
    p = run(None, "--spool", "s1", "true", env=base_env(SPOOLD_SPOOL=str(s2)), cwd=tmp_path)
    assert p.returncode == 0 and pending_file(s1, int(p.stdout)).exists()


def test_no_spool(tmp_path):
    p = run(tmp_path / "nope", "true")
    assert p.returncode == 1
    assert p.stderr.decode() == (f"gsub: no spool at {tmp_path / 'nope'} (start spoold once, "
                                 "or pass --spool / set SPOOLD_SPOOL)\n")


def test_help():
    for flag in ("-h", "--help"):
        p = run(None, flag)
        assert p.returncode == 0
        assert b"usage: gsub" in p.stdout and p.stdout.count(b"\n  gsub ") >= 3
        assert p.stderr == b""


# ---------------------------------------------------------------- arrays, --file
@pytest.mark.parametrize("shell", SHELLS)
def test_array(spool, shell):
    submit(spool, "true", shell=shell)
    p = run(spool, "--array", "2-5%2", "-p", "3", "-c", "echo $SPOOLD_ARRAY_INDEX", shell=shell)
    assert p.returncode == 0, p.stderr
    ids = [int(x) for x in p.stdout.split()]
    assert ids == [2, 3, 4, 5]
    for i, job_id in enumerate(ids):
        job = load_both(pending_file(spool, job_id, 3).read_bytes())
        assert job["id"] == job_id and job["cmd"] == "echo $SPOOLD_ARRAY_INDEX"
        assert job["array_id"] == 2 and job["array_index"] == 2 + i and job["array_limit"] == 2
        assert list(job)[-4:] == ["array_id", "array_index", "array_limit", "env"]
    assert (spool / "state" / "next-id").read_text() == "6\n"
    assert os.listdir(spool / "tmp") == []


def test_array_without_limit_and_single(spool):
    p = run(spool, "--array", "0-1", "true")
    ids = [int(x) for x in p.stdout.split()]
    jobs = [load_both(pending_file(spool, i).read_bytes()) for i in ids]
    assert [j["array_index"] for j in jobs] == [0, 1]
    assert all("array_limit" not in j and j["argv"] == ["true"] for j in jobs)
    p = run(spool, "--array=7", "true")
    assert p.stdout == b"3\n"
    assert load_both(pending_file(spool, 3).read_bytes())["array_index"] == 7


@pytest.mark.parametrize("shell", SHELLS)
def test_file(spool, shell, tmp_path):
    f = tmp_path / "jobs.txt"
    f.write_bytes(b"# a comment\n\necho one\r\n   \n  python \"x y\".py --a=$B\n"
                  b"  # indented comment\n\tlast line no newline \xc3\xa9")
    p = run(spool, "--file", str(f), "-n", "0", shell=shell)
    assert p.returncode == 0, p.stderr
    ids = [int(x) for x in p.stdout.split()]
    assert ids == [1, 2, 3]
    jobs = [load_both(pending_file(spool, i).read_bytes()) for i in ids]
    assert [j["cmd"] for j in jobs] == ["echo one", '  python "x y".py --a=$B',
                                       "\tlast line no newline \u00e9"]
    assert [j["name"] for j in jobs] == ["echo", "python", "last"]
    assert all(j["gpus"] == 0 and "array_id" not in j for j in jobs)


def test_file_from_stdin_and_name(spool):
    p = subprocess.run(["dash", str(GSUB), "--spool", str(spool), "-J", "sweep", "--file", "-"],
                       input=b"a 1\nb 2\n", capture_output=True, env=base_env())
    assert p.returncode == 0, p.stderr
    jobs = [load_both(pending_file(spool, int(i)).read_bytes()) for i in p.stdout.split()]
    assert [(j["cmd"], j["name"]) for j in jobs] == [("a 1", "sweep"), ("b 2", "sweep")]


def test_file_errors(spool, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    bad = tmp_path / "bad"
    bad.write_bytes(b"ok\nnot \xff ok\n")
    for args in (["--file", str(empty)], ["--file", str(tmp_path / "missing")],
                 ["--file", str(bad)], ["--file", str(empty), "--array", "1-2"],
                 ["--file", str(empty), "true"], ["--file", str(empty), "-c", "x"]):
        p = run(spool, *args)
        assert p.returncode == 2, args
        assert p.stderr.startswith(b"gsub: ")
        assert_nothing_written(spool)


# ---------------------------------------------------------------- ids
def test_concurrent_submissions_get_distinct_ids(spool):
    procs = [subprocess.Popen(["dash", str(GSUB), "--spool", str(spool), "-c", f"job {i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=base_env())
             for i in range(20)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        ids.append(int(out))
    assert sorted(ids) == list(range(1, 21))
    files = sorted(os.listdir(spool / "pending"))
    assert files == [f"0010-{i:08d}.yaml" for i in range(1, 21)]
    cmds = {load_both((spool / "pending" / f).read_bytes())["cmd"] for f in files}
    assert cmds == {f"job {i}" for i in range(20)}
    assert (spool / "state" / "next-id").read_text() == "21\n"


def test_concurrent_arrays_and_singles(spool):
    procs = [subprocess.Popen(["dash", str(GSUB), "--spool", str(spool)]
                              + (["--array", "1-3"] if i % 2 else []) + ["true"],
                              stdout=subprocess.PIPE, env=base_env()) for i in range(10)]
    ids = [int(x) for p in procs for x in p.communicate(timeout=30)[0].split()]
    assert sorted(ids) == list(range(1, 21))
    assert len(os.listdir(spool / "pending")) == 20


@pytest.mark.parametrize("content", ["", "garbage\n", "12abc\n", "\n", "-5\n", "0\n"])
def test_counter_recovery(spool, content):
    (spool / "state" / "next-id").write_text(content)
    (spool / "done" / "5.yaml").write_text("id: 5\n")
    (spool / "failed" / "00000011.yaml").write_text("id: 11\n")
    (spool / "pending" / "0003-00000009.yaml").write_text("id: 9\n")
    (spool / "tmp" / "13.yaml").write_text("id: 13\n")
    (spool / "running" / "7.yaml").write_text("id: 7\n")
    job_id, _ = submit(spool, "true")
    assert job_id == 14
    assert (spool / "state" / "next-id").read_text() == "15\n"


def test_counter_missing_on_fresh_spool_and_leading_zeros(spool):
    assert submit(spool, "true")[0] == 1
    (spool / "state" / "next-id").write_text("0042\n")
    assert submit(spool, "true")[0] == 42
    (spool / "state" / "next-id").write_text("50")
    assert submit(spool, "true")[0] == 50


@pytest.mark.parametrize("shell", SHELLS)
def test_ids_stop_at_max_id(spool, shell):
    """Ids have 8 digits, the width of pending names: the last one is handed
    out, then gsub refuses, clearly, and writes nothing."""
    (spool / "state" / "next-id").write_text("99999999\n")
    assert submit(spool, "true", shell=shell)[0] == 99_999_999
    assert os.listdir(spool / "pending") == ["0010-99999999.yaml"]
    for args in (["true"], ["--array", "1-2", "true"]):
        p = run(spool, *args, shell=shell)
        assert p.returncode == 1 and p.stdout == b""
        assert p.stderr.startswith(b"gsub: no job id left: ids are at most 99999999"), p.stderr
        assert os.listdir(spool / "pending") == ["0010-99999999.yaml"]
        assert os.listdir(spool / "tmp") == []
    (spool / "state" / "next-id").write_text("99999999\n")
    p = run(spool, "--array", "1-2", "true", shell=shell)  # would end past the last id
    assert p.returncode == 1 and b"no job id left" in p.stderr
    assert len(os.listdir(spool / "pending")) == 1


def test_ids_wider_than_eight_digits_do_not_steer_the_counter(spool):
    (spool / "state" / "next-id").write_text("garbage\n")
    (spool / "done" / "7.yaml").write_text("id: 7\n")
    (spool / "done" / "123456789.yaml").write_text("")
    (spool / "pending" / "0010-999999999999.yaml").write_text("")
    assert submit(spool, "true")[0] == 8
    (spool / "state" / "next-id").write_text("100000001\n")  # out of range: rebuilt
    assert submit(spool, "true")[0] == 9


def test_shared_spool_ids_stop_at_max_id(shared_spool):
    (shared_spool / "state" / "next-id").write_text("99999999\n")
    (shared_spool / "state" / "ids" / "99999999").write_text("")
    p = run(shared_spool, "true")
    assert p.returncode == 1 and b"no job id left" in p.stderr
    assert os.listdir(shared_spool / "pending") == []
    assert os.listdir(shared_spool / "state" / "ids") == ["99999999"]


# ---------------------------------------------------------------- where the job lands
def plant_at(path: Path, kind: str) -> None:
    if kind == "folder":
        path.mkdir(mode=0o777)
    else:
        path.write_text("x-planted: true\n")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("kind", ["folder", "file"])
def test_entry_at_the_jobs_pending_name_is_never_entered_or_replaced(spool, shell, kind):
    """mv into pending/ would put the job inside a folder of that name, or
    replace a file: gsub places it only where nothing is, else fails cleanly."""
    (spool / "state" / "next-id").write_text("1\n")  # the counter says 1 is free
    taken = pending_file(spool, 1)
    plant_at(taken, kind)
    p = run(spool, "-c", "echo hi", shell=shell)
    assert (p.returncode, p.stdout) == (1, b"")
    assert p.stderr == (f"gsub: job 1 not submitted: {taken} already exists; "
                        "nothing was written there\n").encode()
    if kind == "folder":
        assert os.listdir(taken) == []
    else:
        assert taken.read_text() == "x-planted: true\n"
    assert os.listdir(spool / "pending") == [taken.name]
    assert os.listdir(spool / "tmp") == []
    assert submit(spool, "true", shell=shell)[0] == 2  # the next id is fine


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_array_never_enters_or_replaces_an_entry_at_its_pending_names(spool, kind):
    (spool / "state" / "next-id").write_text("1\n")
    taken = pending_file(spool, 2)
    plant_at(taken, kind)
    p = run(spool, "--array", "1-3", "true")
    assert p.returncode == 1
    assert p.stdout == b"1\n3\n"  # the ids that did get in
    assert f"pending/{taken.name} already exists".encode() in p.stderr
    if kind == "folder":
        assert os.listdir(taken) == []
    else:
        assert taken.read_text() == "x-planted: true\n"
    assert sorted(os.listdir(spool / "pending")) == [pending_file(spool, i).name
                                                     for i in (1, 2, 3)]
    assert os.listdir(spool / "tmp") == []


@pytest.mark.parametrize("shell", SHELLS)
def test_shared_spool_skips_ids_whose_pending_name_is_taken(shared_spool, shell):
    """Ids are predictable: another user can plant folders at the next pending
    names. gsub takes the next id whose name and marker are both free."""
    for i in (5, 6, 9):
        plant_at(pending_file(shared_spool, i), "folder")
    job_id, _ = submit(shared_spool, "true", shell=shell)
    assert job_id == 7
    p = run(shared_spool, "--array", "1-2", "true", shell=shell)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"10\n11\n"  # 8 alone is not enough for two
    for i in (5, 6, 9):
        assert os.listdir(pending_file(shared_spool, i)) == []
    assert os.listdir(shared_spool / "tmp") == []


def test_planted_entries_in_tmp_do_not_stop_a_submission(spool):
    """gsub's files in tmp/ get fresh random names (mktemp, O_EXCL): a fifo or
    folder planted at a predictable name is never opened and blocks nothing."""
    (spool / "state" / "next-id").write_text("1\n")
    os.mkfifo(spool / "tmp" / "1.yaml")
    (spool / "tmp" / "2-3.d").mkdir()
    assert submit(spool, "true")[0] == 1
    p = run(spool, "--array", "1-2", "true")
    assert (p.returncode, p.stdout) == (0, b"2\n3\n")
    assert sorted(os.listdir(spool / "tmp")) == ["1.yaml", "2-3.d"]


@pytest.mark.parametrize("shell", SHELLS)
def test_disk_full_leaves_nothing_behind_and_says_so(tiny_spool, shell):  # noqa: F811
    spool = make_spool(tiny_spool / "spool")
    assert submit(spool, "true", shell=shell)[0] == 1  # the counter exists
    filler = fill(tiny_spool, one_file=True)[0]
    for args in (["-c", "echo " + "x" * 3000], ["--array", "1-3", "true"]):
        p = run(spool, *args, shell=shell)
        assert os.listdir(spool / "tmp") == []
        assert p.returncode == 1 and p.stdout == b"", (args, p.stderr)
        assert p.stderr.startswith(b"gsub: ") and b"disk full?" in p.stderr, p.stderr
        assert p.stderr.count(b"\n") == 1, p.stderr
        assert os.listdir(spool / "pending") == [pending_file(spool, 1).name]
    filler.unlink()
    job_id, job = submit(spool, "true", shell=shell)
    assert job_id > 1 and job["argv"] == ["true"]


# ---------------------------------------------------------------- queue limit
def test_queue_full(spool):
    (spool / "state" / "max-pending").write_text("3\n")
    for _ in range(3):
        submit(spool, "true")
    (spool / "pending" / ".hidden.yaml").write_text("")
    (spool / "pending" / "notes.txt").write_text("")
    before = (spool / "state" / "next-id").read_text()
    p = run(spool, "true")
    assert p.returncode == 1
    assert p.stderr == b"gsub: queue full: 3 jobs pending (spoold --max-pending)\n"
    assert p.stdout == b""
    assert (spool / "state" / "next-id").read_text() == before
    assert len(os.listdir(spool / "pending")) == 5
    (spool / "state" / "max-pending").write_text("5\n")
    p = run(spool, "--array", "1-3", "true")
    assert p.returncode == 1 and b"queue full" in p.stderr
    p = run(spool, "--array", "1-2", "true")
    assert p.returncode == 0 and p.stdout == b"4\n5\n"


# ---------------------------------------------------------------- errors
ERRORS = [
    [], ["--"], ["-n", "2"], ["-n"], ["-n", "x", "true"], ["-n", "-1", "true"],
    ["-n", "1.5", "true"],
    ["-p", "10000", "true"], ["-p", "-1", "true"], ["-p", "", "true"], ["-J"],
    ["--bogus", "true"], ["-x", "true"], ["--hold=1", "true"], ["-c", "x", "extra"],
    ["-c", "x", "--", "y"], ["-t", "0", "true"], ["-t", "abc", "true"], ["-t", "1.5h", "true"],
    ["-t", ":30", "true"], ["-t", "1::2", "true"], ["-t", "", "true"], ["--cpus", "0", "true"],
    ["--mem", "0", "true"], ["--mem", "12Q", "true"], ["--mem", "G", "true"],
    ["--mem", "1.5G", "true"], ["--gpu-mem", "x", "true"], ["--after", "0", "true"],
    ["--after", "a", "true"], ["--after", "3,,4", "true"], ["--after", "", "true"],
    ["--after", "3,", "true"], ["--array", "5-2", "true"], ["--array", "a-b", "true"],
    ["--array", "1-2%0", "true"], ["--array", "", "true"], ["--array", "0-20000", "true"],
    ["-o", "", "true"], ["-n", "99999999999999", "true"], ["--spool"], ["--file"],
    ["-J", b"\xff", "true"], ["--host", b"\xc3", "true"], ["--on-finish", b"\xfe", "true"],
    ["-o", b"x\xff", "true"], ["--after", "100000000", "true"], ["--after", "3,999999999", "true"],
    ["--array", "100000000", "true"], ["--array", "99999999-100000000", "true"],
    ["--array", "1-2%100000000", "true"],
]


@pytest.mark.parametrize("args", ERRORS, ids=[repr(a) for a in ERRORS])
def test_errors(spool, args):
    p = run(spool, *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr.decode(errors="replace")
    assert err.startswith("gsub: ") and err.endswith("\n") and err.count("\n") == 1
    assert p.stdout == b""
    assert_nothing_written(spool)


@pytest.mark.parametrize("shell", SHELLS)
def test_errors_bash(spool, shell):
    for args in (["-n", "x", "true"], ["--bogus"], [], ["-c", "a", "b"]):
        p = run(spool, *args, shell=shell)
        assert p.returncode == 2 and p.stderr.startswith(b"gsub: ")
    assert_nothing_written(spool)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("value, option", [("2x", "-t"), ("1.5h", "--time"), ("90 s", "-t"),
                                           ("1:2x", "-t"), ("1-x", "--time")])
def test_a_bad_duration_says_what_a_duration_is(spool, shell, value, option):
    args = [f"{option}={value}"] if option.startswith("--") else [option, value]
    p = run(spool, *args, "true", shell=shell)
    assert (p.returncode, p.stderr.decode()) == (2, (
        f"gsub: {option}: not a duration: '{value}' (use e.g. 90s, 10m, 2h, 1:30:00 or "
        "infinite)\n"))
    assert_nothing_written(spool)


# ---------------------------------------------------------------- live hosts
NO_DAEMON = ("gsub: no spoold is running on {} (no fresh heartbeat): the job waits until one "
             "starts\n")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("beat", ["none", "no hosts folder", "stale", "stale by its own timeout",
                                  "no time", "live"])
def test_no_live_spoold_queues_the_job_with_a_warning(spool, shell, beat):
    """The job is queued either way (the spool is the API); only without a
    fresh heartbeat does gsub say that no spoold will run it yet."""
    (spool / "state" / "hosts").mkdir()
    if beat == "no hosts folder":
        (spool / "state" / "hosts").rmdir()
    elif beat == "stale":
        live_host(spool, age=90)
    elif beat == "stale by its own timeout":
        live_host(spool, age=10, host_timeout=5.0)
    elif beat == "no time":
        live_host(spool, time=None)
    elif beat == "live":
        live_host(spool, age=3, host_timeout=5.0)
        live_host(spool, host="old", age=1000)
    p = run(spool, "-n", "0", "true", shell=shell)
    assert (p.returncode, p.stdout) == (0, b"1\n")
    assert p.stderr.decode() == ("" if beat == "live" else NO_DAEMON.format(spool))
    assert pending_file(spool, 1).exists()


def test_wait_without_a_daemon_warns_once_and_waits(spool, daemon):
    daemon[1] = "exit_code: 4\n"
    p = run(spool, "--wait", "-n", "0", "true")
    assert (p.returncode, p.stdout, p.stderr.decode()) == (4, b"1\n", NO_DAEMON.format(spool))


# (gsub's options, the heartbeat's fields, what it says after "no host can run this job: ")
NEVER = [
    (["-n", "9"], {}, "it asks for 9 GPUs, the largest host (vm) has 4"),
    (["-n", "3"], {"limit": 2}, "it asks for 3 GPUs, the largest host (vm) takes 2 per job "
                                "(spoold --limit)"),
    (["-n", "1"], {"gpus": 0}, "it asks for 1 GPU, the largest host (vm) has 0"),
    (["-n", "0", "--cpus", "9"], {}, "it asks for 9 CPUs, the largest host (vm) has 8"),
    (["-n", "0", "--mem", "17G"], {}, "it asks for 17408 MiB of memory, the largest host (vm) "
                                      "has 16384 MiB"),
    (["--gpu-mem", "41G"], {}, "it asks for 41984 MiB of one GPU, the largest host (vm) has "
                               "GPUs of 40960 MiB"),
    (["--host", "nope", "-n", "0"], {}, "it is pinned to host nope (--host), which runs no "
                                        "spoold now (live: vm)"),
    (["--host", "vm", "-n", "5"], {}, "it asks for 5 GPUs, host vm (--host) has 4"),
    (["--array", "1-3", "-n", "9"], {}, "it asks for 9 GPUs, the largest host (vm) has 4"),
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("args, fields, why", NEVER, ids=[" ".join(n[0]) for n in NEVER])
def test_a_job_no_live_host_can_run_is_refused(spool, shell, args, fields, why):
    """Exit 2, nothing queued, a reason like sbatch's; the same job is queued
    when the host is not live (the daemon's check is then what refuses it)."""
    beat = live_host(spool, **fields)
    p = run(spool, *args, "true", shell=shell)
    assert (p.returncode, p.stdout, p.stderr.decode()) == (
        2, b"", f"gsub: no host can run this job: {why}\n")
    assert_nothing_written(spool)
    beat.unlink()
    live_host(spool, age=100, **fields)
    assert run(spool, *args, "true", shell=shell).returncode == 0


def test_a_job_is_refused_only_when_no_live_host_fits_it(spool, tmp_path):
    """Any live host that fits will do; stale hosts do not count, and a host
    whose jobs go to SLURM takes any job."""
    live_host(spool, host="a", gpus=2, cpus=64)
    live_host(spool, host="b", gpus=8, cpus=2, limit=8)
    live_host(spool, host="big", gpus=16, cpus=128, limit=16, age=3600)
    assert run(spool, "-n", "8", "--cpus", "2", "true").returncode == 0
    assert run(spool, "-n", "2", "--cpus", "64", "true").returncode == 0
    p = run(spool, "-n", "8", "--cpus", "4", "true")
    assert (p.returncode, p.stderr.decode()) == (2, (
        "gsub: no host can run this job: a: it asks for 8 GPUs, a has 2; b: it asks for 4 "
        "CPUs, b has 2\n"))
    p = run(spool, "-n", "9", "true")
    assert p.stderr.decode() == ("gsub: no host can run this job: it asks for 9 GPUs, the "
                                 "largest host (b) has 8\n")
    live_host(spool, host="cluster", gpus=0, enforced={"gpus": "SLURM (--gres)"})
    assert run(spool, "-n", "64", "--cpus", "999", "true").returncode == 0


@pytest.mark.parametrize("slurm", [False, True], ids=["local", "slurm"])
def test_a_heartbeat_is_read_whatever_the_order_of_its_keys(spool, slurm):
    """With the running jobs and shares last, gsub stops reading there; what
    it decides is the same."""
    beat = live_host(spool, gpus=2)
    data = yaml.safe_load(beat.read_text())
    if slurm:
        data["enforced"]["gpus"] = "SLURM (--gres, CUDA_VISIBLE_DEVICES)"
    data["jobs"] = data["jobs"] * 500
    data = {k: v for k, v in data.items() if k not in ("jobs", "shares")} | {
        "jobs": data["jobs"], "shares": []}
    beat.write_bytes(jobmod.dump(data))
    p = run(spool, "-n", "3", "true")
    assert (p.returncode, p.stderr.decode()) == ((0, "") if slurm else (
        2, "gsub: no host can run this job: it asks for 3 GPUs, the largest host (vm) has 2\n"))


def test_lock_that_can_not_be_opened_is_an_error(spool):
    (spool / "state" / "next-id.lock").mkdir()  # can not be opened, even by root
    p = run(spool, "true")
    assert p.returncode == 1 and b"gsub: can not open" in p.stderr
    assert p.stdout == b""
    assert os.listdir(spool / "pending") == []


def test_unwritable_counter_is_an_error(spool):
    (spool / "state" / "next-id").mkdir()
    p = run(spool, "true")
    assert p.returncode == 1 and b"gsub: " in p.stderr
    assert os.listdir(spool / "pending") == [] and os.listdir(spool / "tmp") == []


# ---------------------------------------------------------------- --wait
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


@pytest.mark.parametrize("shell", SHELLS)
def test_wait_exit_code(spool, daemon, shell):
    daemon[1] = "name: x\nexit_code: 3\nreason: exited with 3\n"
    p = run(spool, "--wait", "false", shell=shell)
    assert p.returncode == 3
    assert p.stdout == b"1\n"
    assert (spool / "failed" / "1.yaml").exists()


def test_wait_success_and_padded_record(spool):
    def later():
        f = wait_for(lambda: [n for n in os.listdir(spool / "pending") if n.endswith(".yaml")])
        (spool / "done" / "00000001.yaml").write_text("id: 1\nexit_code: 0\n")
        os.unlink(spool / "pending" / f[0])

    t = threading.Thread(target=later)
    t.start()
    p = run(spool, "--wait", "true")
    t.join()
    assert p.returncode == 0 and p.stdout == b"1\n"


def test_wait_no_exit_code(spool, daemon):
    daemon[1] = "reason: the dependency 7 failed\n"
    p = run(spool, "--wait", "true")
    assert p.returncode == 1
    assert b"reason: the dependency 7 failed" in p.stderr


def test_wait_array_first_nonzero(spool, daemon):
    daemon.update({1: "exit_code: 0\n", 2: "exit_code: 5\n", 3: "exit_code: 2\n"})
    p = run(spool, "--wait", "--array", "1-3", "true")
    assert p.returncode == 5
    assert p.stdout == b"1\n2\n3\n"


def test_wait_all_zero(spool, daemon, tmp_path):
    daemon.update({1: "exit_code: 0\n", 2: "exit_code: 0\n"})
    f = tmp_path / "jobs"
    f.write_text("a\nb\n")
    p = run(spool, "--wait", "--file", str(f))
    assert p.returncode == 0 and p.stdout == b"1\n2\n"


# ---------------------------------------------------------------- quoting, exhaustively
def quoting_harness(tmp_path: Path) -> Path:
    """gsub's quoting functions alone, run over their arguments: one line out
    per argument, the YAML scalar or INVALID."""
    src = GSUB.read_text()
    head = src[:src.index("_gusage() {")]
    funcs = src[src.index("# ------------------------------------------------------"
                          "---------- quoting"):
                src.index("# ------------------------------------------------------"
                          "---------- environment")]
    h = tmp_path / "quote.sh"
    shutil.copy(GSUB.parent / "gspool.sh", tmp_path)  # sourced by the head
    h.write_text(head + funcs + 'for _ga; do if _gq "$_ga"; then printf "%s\\n" "$_gr"; '
                 "else echo INVALID; fi; done\n")
    return h


def check_quoting(shell: str, harness: Path, inputs: list[bytes]) -> None:
    for i in range(0, len(inputs), 5000):
        chunk = inputs[i:i + 5000]
        out = subprocess.run([shell, str(harness), *chunk], capture_output=True,
                             check=True).stdout.split(b"\n")
        assert len(out) == len(chunk) + 1
        expected, doc = [], []
        for raw, line in zip(chunk, out[:-1], strict=True):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                assert line == b"INVALID", raw
                continue
            assert line != b"INVALID", raw
            expected.append(text)
            doc.append(b"- " + line)
        assert (load_both(b"\n".join(doc)) or []) == expected


BOUNDARY = [0x01, 0x09, 0x0A, 0x0D, 0x1F, 0x22, 0x41, 0x5C, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0,
            0xA8, 0xA9, 0xBB, 0xBE, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE2, 0xED, 0xEF, 0xF0,
            0xF4, 0xF5, 0xFF]


@pytest.mark.parametrize("shell", SHELLS)
def test_quoting_every_two_byte_string(tmp_path, shell):
    """Validation and escapes agree with Python for every 1- and 2-byte string
    and for 3- and 4-byte strings of the bytes where UTF-8's rules change."""
    h = quoting_harness(tmp_path)
    inputs = [bytes([a]) for a in range(1, 256)]
    inputs += [bytes([a, b]) for a in range(1, 256) for b in range(1, 256)
               if a >= 0x80 or b >= 0x80 or a < 0x20 or b < 0x20 or (a + b) % 7 == 0]
    inputs += [bytes([a, b, c]) for a in BOUNDARY[8:] for b in BOUNDARY for c in BOUNDARY[6:]]
    inputs += [b"x" + bytes([a, b, c, d]) for a in BOUNDARY[18:] for b in BOUNDARY[8:19]
               for c in BOUNDARY[7:20] for d in (0x41, 0x80, 0xBF, 0xC2)]
    if shell != "dash":  # slower; dash is /bin/sh on Debian and Ubuntu
        inputs = inputs[::4]
    check_quoting(shell, h, inputs)


@pytest.mark.parametrize("shell", SHELLS)
def test_every_code_point_round_trips(spool, shell):
    """Every Unicode scalar value of the BMP (and a sample beyond) through argv."""
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF
           and (c < 0x10000 or c % 251 == 0)]
    chunks = ["".join(map(chr, cps[i:i + 4000])) for i in range(0, len(cps), 4000)]
    for i in range(0, len(chunks), 6):
        argv = chunks[i:i + 6]
        assert submit(spool, "--", *argv, shell=shell)[1]["argv"] == argv


@pytest.mark.parametrize("shell", SHELLS)
def test_long_strings(spool, shell):
    """Long arguments of every kind: right, and not walked one byte at a time."""
    cases = ["a" * 100000 + "\n" + "b", "\u00e9" * 20000, "\u4e2d" * 10000 + "\x01",
             "\u2019" * 10000, ("x" * 79 + "\n") * 300, '{"k": "v"}, ' * 300,
             "\u2028" * 200 + "z" * 5000]
    start = time.monotonic()
    _, job = submit(spool, "--", *cases, shell=shell)
    assert job["argv"] == cases
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------- shared spool
@pytest.fixture
def shared_spool(spool):
    """A spool as spoold lays it out for many users: pending/ and state/ids/
    are 1777 and the counter is only a hint that gsub reads."""
    (spool / "pending").chmod(0o1777)
    (spool / "state" / "ids").mkdir()
    (spool / "state" / "ids").chmod(0o1777)
    (spool / "state" / "next-id").write_text("5\n")
    return spool


@pytest.mark.parametrize("shell", SHELLS)
def test_shared_spool_takes_id_markers(shared_spool, shell):
    ids = shared_spool / "state" / "ids"
    (ids / "5").write_text("")
    os.mkfifo(ids / "6")  # never opened (it would block)
    (ids / "7").symlink_to("/dev/null")
    job_id, job = submit(shared_spool, "true", shell=shell)
    assert job_id == 8
    assert (ids / "8").is_file()
    assert (shared_spool / "state" / "next-id").read_text() == "5\n"  # not ours to write
    assert not (shared_spool / "state" / "next-id.lock").exists()


def test_shared_spool_array_takes_consecutive_ids(shared_spool):
    ids = shared_spool / "state" / "ids"
    (ids / "7").write_text("")
    p = run(shared_spool, "--array", "1-3", "true")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [b"8", b"9", b"10"]
    assert sorted(int(n) for n in os.listdir(ids)) == [5, 6, 7, 8, 9, 10]  # 5, 6: burnt
    assert len(os.listdir(shared_spool / "pending")) == 3


def test_shared_spool_concurrent(shared_spool):
    procs = [subprocess.Popen(["dash", str(GSUB), "--spool", str(shared_spool), "true"],
                              stdout=subprocess.PIPE, env=base_env()) for _ in range(20)]
    got = sorted(int(p.communicate(timeout=30)[0]) for p in procs)
    assert len(set(got)) == 20 and got[0] >= 5
    assert len(os.listdir(shared_spool / "pending")) == 20


def test_shared_spool_garbage_hint(shared_spool):
    (shared_spool / "state" / "next-id").write_text("junk")
    (shared_spool / "done" / "30.yaml").write_text("id: 30\n")
    assert submit(shared_spool, "true")[0] == 31


def test_shared_spool_without_ids_folder(spool):
    (spool / "pending").chmod(0o1777)
    p = run(spool, "true")
    assert p.returncode == 1 and b"gsub: " in p.stderr
    assert os.listdir(spool / "pending") == []


def test_bash_exported_functions_and_options_do_not_interfere(spool):
    if "bash" not in SHELLS:
        pytest.skip("no bash")
    env = base_env(SHELLOPTS="errexit:nounset:braceexpand:hashall:interactive-comments")
    env["BASH_FUNC_mv%%"] = "() { echo hijacked; return 0; }"
    env["BASH_FUNC_printf%%"] = "() { echo hijacked; }"
    env["BASH_FUNC_mktemp%%"] = "() { echo /nonexistent/hijacked; }"
    env["BASH_FUNC_umask%%"] = "() { echo 0777; }"
    job_id, job = submit(spool, "-c", "a\tb", shell="bash", env=env)
    assert job["cmd"] == "a\tb" and job_id == 1
    assert job["umask"] == "0022"
    assert pending_file(spool, job_id).stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- SLURM options
SLURM_VALUES = ["gpu", "123", "null", "true", "1.5", ".x", "_x", "a|b&c", "x(y)[1]*2!z",
                "a,b:c+d-e", "x" * 200, "x" * 201, "", "-x", "+x", "*x", "(x)", "a b", "a'b",
                'a"b', "a=b", "a\nb", "a\tb", "caf\u00e9", "a/b", "a\\b", "a;b", "$x", "a%b"]


@pytest.mark.parametrize("shell", SHELLS)
def test_slurm_options_written_as_a_mapping(spool, shell):
    """--partition/--account/--qos/--constraint become `slurm:`; on the
    command line the last one wins; job.py takes the file as it is."""
    _, job = submit(spool, "-n", "0", "--partition", "p1", "--partition=spoold",
                    "--account=123", "--qos", "null", "--constraint", "a|b&(c*2)", "true",
                    shell=shell)
    assert job["slurm"] == {"partition": "spoold", "account": "123", "qos": "null",
                            "constraint": "a|b&(c*2)"}
    jobmod.parse(yaml.safe_dump(job).encode())
    _, job = submit(spool, "-n", "0", "--qos", "q", "true", shell=shell)
    assert job["slurm"] == {"qos": "q"}
    assert "slurm" not in submit(spool, "-n", "0", "true", shell=shell)[1]


@pytest.mark.parametrize("shell", SHELLS)
def test_slurm_options_refused_as_job_py_refuses_them(spool, shell):
    """gsub refuses exactly the values job.py's _SLURM_VALUE refuses (exit 2,
    nothing queued, the option named) and queues the others."""
    for value in SLURM_VALUES:
        ok = bool(jobmod._SLURM_VALUE.fullmatch(value))
        for opt in ("--partition", "--constraint"):
            p = run(spool, "-n", "0", opt, value, "true", shell=shell)
            if ok:
                assert p.returncode == 0, (value, p.stderr)
                job = load_both(pending_file(spool, int(p.stdout)).read_bytes())
                assert job["slurm"] == {opt[2:]: value}
            else:
                assert p.returncode == 2 and p.stderr.startswith(
                    f"gsub: {opt}: ".encode()), (value, p.stderr)
    assert sorted(os.listdir(spool / "pending")) and all(
        jobmod.parse((spool / "pending" / f).read_bytes()).data.get("slurm")
        for f in os.listdir(spool / "pending"))


def test_slurm_options_from_gsub_lines(spool, tmp_path):
    """#GSUB lines take them too; the command line wins."""
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#GSUB --partition=a\n#GSUB --qos q\necho hi\n")
    _, job = submit(spool, "-n", "0", "--partition", "b", str(script))
    assert job["slurm"] == {"partition": "b", "qos": "q"}
