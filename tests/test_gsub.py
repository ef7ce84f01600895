"""Tests of bin/gsub: the real script, run under dash (and bash for the key
cases), against real spool folders in tmp_path.  No daemon is needed: where a
test needs one (--wait) a thread plays its part."""

from __future__ import annotations

import os
import subprocess

import pytest
from gsub_helpers import *  # noqa: F403 - the shared helpers and fixtures (spool, daemon)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reliability import tiny_spool  # noqa: F401 - a fixture: a spool on a small tmpfs

from spoold import job as jobmod


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
def test_a_skipped_variable_whose_value_spans_lines_hides_nothing(spool, shell, tmp_path):
    """`_` is never recorded; when its value holds a quote and a newline, the
    line export -p prints for it can look complete: the next line, part of its
    value, was then read as a variable of its own (a second HOME here)."""
    env = {"PATH": os.environ["PATH"], "HOME": "/home/someone",
           "_": "a'\nexport HOME='x"}
    _, job = submit(spool, "true", shell=shell, env=env, cwd=tmp_path)
    assert job["env"]["HOME"] == "/home/someone" and "_" not in job["env"]
    text = next((spool / "pending").iterdir()).read_text()
    assert text.count('"HOME"') == 1


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
