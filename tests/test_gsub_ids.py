"""gsub: ids, where a job lands, the queue limit, errors and live hosts (what it refuses)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import fill
from gsub_helpers import *  # noqa: F403 - the shared helpers and fixtures (spool, daemon)
from test_reliability import tiny_spool  # noqa: F401 - a fixture: a spool on a small tmpfs

from spoold import job as jobmod


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
