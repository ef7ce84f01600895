"""gsub: ids, where a job lands, the queue limit, errors and live hosts (what it refuses)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
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
    assert len(set(ids)) == 20
    files = sorted(os.listdir(spool / "pending"))
    assert files == [f"0010-{i:08d}.yaml" for i in sorted(ids)]
    cmds = {load_both((spool / "pending" / f).read_bytes())["cmd"] for f in files}
    assert cmds == {f"job {i}" for i in range(20)}
    assert set(os.listdir(spool / "state" / "ids")) == {str(i) for i in ids}  # the markers
    # the hint is written back without a lock (a late writer may set it back):
    # the markers decide, and the next id is still a new one
    assert submit(spool, "true")[0] > max(ids)


def test_concurrent_arrays_and_singles(spool):
    procs = [subprocess.Popen(["dash", str(GSUB), "--spool", str(spool)]
                              + (["--array", "1-3"] if i % 2 else []) + ["true"],
                              stdout=subprocess.PIPE, env=base_env()) for i in range(10)]
    outs = [p.communicate(timeout=30)[0].split() for p in procs]
    ids = [int(x) for out in outs for x in out]
    assert len(ids) == len(set(ids)) == 20
    for out in outs:  # an array's ids are consecutive (a race may skip some before them)
        assert [int(x) for x in out] == list(range(int(out[0]), int(out[0]) + len(out)))
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


def planting_mv(tmp_path: Path, target: Path, kind: str) -> dict[str, str]:
    """An environment whose `mv` first plants ``kind`` at ``target``, as a
    racing writer could between gsub's check of the name and its move."""
    bindir = tmp_path / "racing-bin"
    bindir.mkdir()
    plant = f"mkdir -m 777 '{target}'" if kind == "folder" else \
        f"echo 'x-planted: true' > '{target}'"
    (bindir / "mv").write_text(f"#!/bin/sh\n{plant}\nexec {shutil.which('mv')} \"$@\"\n")
    (bindir / "mv").chmod(0o755)
    return base_env(PATH=f"{bindir}:{os.environ['PATH']}")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("kind", ["folder", "file"])
def test_entry_at_the_jobs_pending_name_is_never_entered_or_replaced(spool, tmp_path, shell,
                                                                    kind):
    """An id whose pending/ name is taken is passed over; an entry that
    appears there before the move (mv into pending/ would put the job inside
    a folder of that name, or replace a file) is never entered or replaced:
    gsub fails cleanly."""
    (spool / "state" / "next-id").write_text("1\n")  # the counter says 1 is free
    plant_at(pending_file(spool, 1), kind)
    assert submit(spool, "true", shell=shell)[0] == 2  # passed over
    taken = pending_file(spool, 3)
    p = run(spool, "-c", "echo hi", shell=shell, env=planting_mv(tmp_path, taken, kind))
    assert (p.returncode, p.stdout) == (1, b"")
    assert p.stderr == (f"gsub: job 3 not submitted: {taken} already exists; "
                        "nothing was written there\n").encode()
    for planted in (pending_file(spool, 1), taken):
        if kind == "folder":
            assert os.listdir(planted) == []
        else:
            assert planted.read_text() == "x-planted: true\n"
    assert sorted(os.listdir(spool / "pending")) == [
        pending_file(spool, i).name for i in (1, 2, 3)]
    assert os.listdir(spool / "tmp") == []
    assert submit(spool, "true", shell=shell)[0] == 4  # the next id is fine


@pytest.mark.parametrize("shell", SHELLS)
def test_a_job_mv_left_behind_is_moved_by_the_second_mv(spool, tmp_path, shell):
    """gsub's mv is a plain command, its message unread; where the file is
    still in tmp/ mv runs again to say why. If the entry in its way has gone
    by then, that second mv delivers the job: gsub prints its id."""
    (spool / "state" / "next-id").write_text("1\n")
    taken = pending_file(spool, 1)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mv").write_text(
        f"#!/bin/sh\nif [ -e '{tmp_path}/once' ]; then rm -f '{taken}'\n"
        f"else echo x > '{tmp_path}/once'; echo 'x-planted: true' > '{taken}'; fi\n"
        f"exec {shutil.which('mv')} \"$@\"\n")
    (bindir / "mv").chmod(0o755)
    env = base_env(PATH=f"{bindir}:{os.environ['PATH']}")
    p = run(spool, "-c", "echo hi", shell=shell, env=env)
    assert (p.returncode, p.stdout) == (0, b"1\n") and b"not submitted" not in p.stderr
    assert yaml.safe_load(taken.read_text())["cmd"] == "echo hi"
    assert os.listdir(spool / "tmp") == []


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_array_never_enters_or_replaces_an_entry_at_its_pending_names(spool, tmp_path, kind):
    (spool / "state" / "next-id").write_text("1\n")
    taken = pending_file(spool, 2)
    p = run(spool, "--array", "1-3", "true", env=planting_mv(tmp_path, taken, kind))
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
def test_only_the_heartbeats_summary_line_is_read(spool, slurm):
    """gsub decides from the first line alone: what follows it (here a long
    list of jobs, and an `enforced:` that says the opposite) changes nothing;
    the summary's slurm=1 takes any job."""
    beat = live_host(spool, gpus=2, **({"enforced": {"gpus": "SLURM (--gres)"}} if slurm else {}))
    first, rest = beat.read_bytes().split(b"\n", 1)
    data = yaml.safe_load(rest)
    data["jobs"] = data["jobs"] * 500
    data["enforced"]["gpus"] = "CUDA_VISIBLE_DEVICES" if slurm else "SLURM (--gres)"
    beat.write_bytes(first + b"\n" + jobmod.dump(data))
    p = run(spool, "-n", "3", "true")
    assert (p.returncode, p.stderr.decode()) == ((0, "") if slurm else (
        2, "gsub: no host can run this job: it asks for 3 GPUs, the largest host (vm) has 2\n"))


@pytest.mark.parametrize("shell", SHELLS)
def test_the_age_comes_from_uptime_on_this_boot_else_from_the_clock(spool, shell):
    """On this machine's boot the age is /proc/uptime less `up` (`time` is
    not looked at); a heartbeat of another boot (another host) is judged by
    the clock against `time`; one without a summary line is not live."""
    def live(summary: str) -> bool:
        beat = live_host(spool)
        beat.write_bytes(b"summary: " + summary.encode() + b"\n" + beat.read_bytes().split(
            b"\n", 1)[1])
        p = run(spool, "-n", "0", "true", shell=shell)
        assert p.returncode == 0, p.stderr
        return p.stderr == b""

    now, up, boot = int(time.time()), int(uptime()), boot_id()
    assert live(f"time={now - 9999} timeout=60 boot={boot} up={up - 3} gpus=1")
    assert not live(f"time={now} timeout=60 boot={boot} up={up - 90} gpus=1")
    assert not live(f"time={now} timeout=5 boot={boot} up={up - 10} gpus=1")
    other = "00000000-1111-2222-3333-444444444444"
    assert live(f"time={now - 3} timeout=60 boot={other} up={up - 9999} gpus=1")
    assert not live(f"time={now - 90} timeout=60 boot={other} up={up} gpus=1")
    assert live(f"time={now - 3} timeout=60 gpus=1")  # no boot: the clock
    assert not live(f"timeout=60 boot={boot} up={up} gpus=1")  # no time
    beat = live_host(spool)
    beat.write_bytes(beat.read_bytes().split(b"\n", 1)[1])  # no summary line
    assert run(spool, "-n", "0", "true", shell=shell).stderr == NO_DAEMON.format(spool).encode()


def test_pending_is_counted_only_near_the_cap(spool):
    """With a live heartbeat gsub takes the queue's length from its summary
    and counts pending/ only when that plus its jobs plus a margin of
    max(1000, max_pending/10) passes max_pending; the count then decides."""
    for i in range(1002):
        (spool / "pending" / f"dropped-{i}.yaml").write_text("")
    live_host(spool, pending=0, max_pending=1002)  # 0 + 1 + 1000 <= 1002: not counted
    assert run(spool, "-n", "0", "true").returncode == 0
    live_host(spool, pending=2, max_pending=1002)  # 2 + 1 + 1000 > 1002: counted
    p = run(spool, "-n", "0", "true")
    assert (p.returncode, p.stderr) == (1, b"gsub: queue full: 1003 jobs pending "
                                           b"(spoold --max-pending)\n")
    live_host(spool, pending=0, max_pending=20000)  # margin 2000: not counted
    assert run(spool, "-n", "0", "--array", "1-3", "true").returncode == 0
    live_host(spool, pending=10, max_pending=1012)  # near: counted (1006), there is room
    p = run(spool, "-n", "0", "--array", "1-5", "true")
    assert p.returncode == 0, p.stderr
    p = run(spool, "-n", "0", "--array", "1-5", "true")
    assert (p.returncode, p.stderr) == (1, b"gsub: queue full: 1011 jobs pending, 5 more would "
                                           b"pass the limit of 1012 (spoold --max-pending)\n")
    (spool / "state" / "max-pending").write_text("5000\n")
    live_host(spool, pending=0, max_pending=1012, age=1000)  # no live host: state/max-pending
    assert run(spool, "-n", "0", "--array", "1-5", "true").returncode == 0


def test_a_job_the_daemon_takes_before_the_sync_is_still_synced(spool, tmp_path):
    """spoold may claim the job between gsub's mv and its sync: the id is
    printed all the same, once the job is synced where it is now."""
    bindir = tmp_path / "claiming-bin"
    bindir.mkdir()
    (bindir / "mv").write_text(f"#!/bin/sh\n{shutil.which('mv')} \"$@\" || exit\n"
                               f"exec {shutil.which('mv')} \"$5\" '{spool}/running/1.yaml'\n")
    (bindir / "mv").chmod(0o755)
    p = run(spool, "-c", "echo hi", env=base_env(PATH=f"{bindir}:{os.environ['PATH']}"))
    assert (p.returncode, p.stdout) == (0, b"1\n"), p.stderr
    assert os.listdir(spool / "pending") == [] and os.listdir(spool / "tmp") == []
    assert load_both((spool / "running" / "1.yaml").read_bytes())["cmd"] == "echo hi"


@pytest.mark.parametrize("before, job, after", [
    ("7\n", 7, "8\n"), ("9\n", 9, "10\n"), ("0042\n", 42, "43\n"), (" 7 \n", 7, "8\n"),
    ("40\n41\n", 40, "41\n"), ("50", 50, "51\n"), ("99\n\n", 99, "100\n")])
def test_the_hint_is_written_back_whole(spool, before, job, after):
    """In place when the new line covers the one line that was there (no
    truncation: cheap), else truncated: the file is always exactly one line."""
    (spool / "state" / "next-id").write_text(before)
    assert submit(spool, "true")[0] == job
    assert (spool / "state" / "next-id").read_text() == after


def test_a_private_spool_takes_markers_and_writes_the_hint(spool):
    assert not (spool / "state" / "ids").exists()  # made by gsub when missing
    assert submit(spool, "true")[0] == 1
    assert os.listdir(spool / "state" / "ids") == ["1"]
    assert (spool / "state" / "next-id").read_text() == "2\n"
    (spool / "state" / "ids" / "2").write_text("")  # taken by another allocator
    assert submit(spool, "true")[0] == 3
    (spool / "state" / "next-id").write_text("")  # being rewritten: read again, then rebuilt
    assert submit(spool, "true")[0] == 4


def test_gsub_takes_no_lock(spool):
    """Ids come from markers (builtins), not from the counter's flock: a lock
    file that can not be opened changes nothing."""
    (spool / "state" / "next-id.lock").mkdir()  # can not be opened, even by root
    assert submit(spool, "true")[0] == 1
    assert os.listdir(spool / "state" / "next-id.lock") == []


def test_unwritable_counter_is_an_error(spool):
    (spool / "state" / "next-id").mkdir()
    p = run(spool, "true")
    assert p.returncode == 1 and b"gsub: " in p.stderr
    assert os.listdir(spool / "pending") == [] and os.listdir(spool / "tmp") == []
