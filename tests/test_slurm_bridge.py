"""The SLURM bridge (spoold/slurm.py).

Unit tests answer for SLURM with a fake ``run``; the batch script is really run
with /bin/sh (and bash in POSIX mode) in a simulated batch-step environment.
Integration tests use a real SLURM (contrib/slurm/setup-single-node.sh sets up
one node with 4 fake GPUs) and are skipped, with the reason, without one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from spoold import job as jobmod
from spoold import runner, slurm

# Prints what the process received, byte for byte (hex), as one JSON line.
DUMP = ("import json, os\n"
        "r = lambda n: open('/proc/self/' + n, 'rb').read().split(b'\\0')[:-1]\n"
        "print(json.dumps({'argv': [a.hex() for a in r('cmdline')],"
        " 'env': [e.hex() for e in r('environ')], 'cwd': os.getcwd()}),"
        " flush=True)\n")

HOSTILE_ARGV = ["", " ", "it's", "'", "''", 'say "hi"', "$HOME `id` $(id) ${x:-y}", "\\", "\\'",
                "new\nline", "\n#SBATCH --job-name=pwned", "cr\r\nlf\r", "tab\tx", "-", "--",
                "*", "~", "a=b", "ünï©ødé 日本語 🙂", "\udcff\udcfe not UTF-8", "!", "#", ";|&<>"]
HOSTILE_ENV = {"WEIRD": "a'b\nc$d `x`", "EMPTY": "", "UTF": "é日", "CRLF": "a\r\nb",
               "BASH_FUNC_f%%": "() {  echo hi\n}", "-dash": "x", "with space": "y",
               "PWD": "/recorded/pwd", "IFS": " \t\n", "PATH": "/usr/bin:/bin"}


def make_job(data: dict, job_id: int = 7) -> jobmod.Job:
    job = jobmod.validate(data)
    job.id = job_id
    return job


def decode(dump: dict) -> tuple[list[bytes], dict[bytes, bytes]]:
    argv = [bytes.fromhex(a) for a in dump["argv"]]
    env = dict(bytes.fromhex(e).split(b"=", 1) for e in dump["env"])
    return argv, env


def expected_env(job, spool, gpus: str, slurm_env: dict) -> dict[bytes, bytes]:
    want = {k: v for k, v in (job.env or {}).items()
            if not k.startswith(("SLURM_", "SLURMD_")) and k not in slurm._GPU_VARS}
    want.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", SPOOLD_JOB_ID=str(job.id),
                SPOOLD_SPOOL=str(spool), PYTHONUNBUFFERED="1",
                CUDA_VISIBLE_DEVICES=gpus, SPOOLD_GPUS=gpus)
    want.update({k: v for k, v in slurm_env.items()
                 if k.startswith(("SLURM_", "SLURMD_")) or k in slurm._GPU_VARS})
    return {os.fsencode(k): os.fsencode(v) for k, v in want.items()}


# ---- the batch script, run for real ------------------------------------------------
SHELLS = [["/bin/sh"]] + ([[shutil.which("bash"), "--posix"]] if shutil.which("bash") else [])


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_script_passes_argv_cwd_env_byte_exact(tmp_path, shell):
    cwd = tmp_path / "d i r'\n#SBATCH x\r\n$(id) é"
    cwd.mkdir()
    spool = tmp_path / "spool"
    job = make_job({"argv": [sys.executable, "-c", DUMP, *HOSTILE_ARGV], "cwd": str(cwd),
                    "env": {**HOSTILE_ENV, "SLURM_JOB_ID": "stale", "CUDA_VISIBLE_DEVICES": "9"},
                    "gpus": 2, "array_index": 4})
    script = tmp_path / "batch"
    script.write_bytes(slurm.batch_script(job, spool))
    assert b"\r\n" not in script.read_bytes()  # sbatch refuses those
    # What a batch step starts with: SLURM's variables plus some noise.
    slurm_env = {"SLURM_JOB_ID": "5", "SLURMD_NODENAME": "n1", "CUDA_VISIBLE_DEVICES": "1,3",
                 "GPU_DEVICE_ORDINAL": "1,3", "HOSTNAME": "n1", "PWD": "/", "TMPDIR": "/tmp",
                 "ENVIRONMENT": "BATCH", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    p = subprocess.run([*shell, str(script)], env=slurm_env, cwd="/", capture_output=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    dump = json.loads(p.stdout)
    argv, env = decode(dump)
    assert argv == runner.job_argv(job)
    assert dump["cwd"] == str(cwd)
    assert env == expected_env(job, spool, "1,3", slurm_env) | {b"SPOOLD_ARRAY_INDEX": b"4"}


def test_script_cmd_runs_under_its_shell_and_no_gpus_means_empty(tmp_path):
    job = make_job({"cmd": 'printf "%s|" "$0" "$CUDA_VISIBLE_DEVICES" "$SPOOLD_GPUS"; exit 3',
                    "shell": "/bin/sh", "cwd": str(tmp_path), "gpus": 0})
    script = tmp_path / "batch"
    script.write_bytes(slurm.batch_script(job, tmp_path))
    p = subprocess.run(["/bin/sh", str(script)], env={"SLURM_JOB_ID": "1"}, capture_output=True,
                       timeout=30)
    assert (p.returncode, p.stdout) == (3, b"/bin/sh|||")


def test_script_argv0_with_equals_sign(tmp_path):
    """env(1) would read 'py=thon' as a variable: the script hands it to sh to exec."""
    (tmp_path / "py=thon").symlink_to(sys.executable)
    job = make_job({"argv": ["py=thon", "-c", DUMP, "x=1"], "cwd": str(tmp_path),
                    "env": {"PATH": f"{tmp_path}:/usr/bin:/bin"}})
    script = tmp_path / "batch"
    script.write_bytes(slurm.batch_script(job, tmp_path))
    p = subprocess.run(["/bin/sh", str(script)], env={}, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    argv, _ = decode(json.loads(p.stdout))
    assert argv == [b"py=thon", b"-c", DUMP.encode(), b"x=1"]


def test_script_missing_cwd_fails_with_a_message(tmp_path):
    job = make_job({"argv": ["true"], "cwd": str(tmp_path / "gone")})
    script = tmp_path / "batch"
    script.write_bytes(slurm.batch_script(job, tmp_path))
    p = subprocess.run(["/bin/sh", str(script)], env={}, capture_output=True, timeout=30)
    assert p.returncode == 1 and b"gone" in p.stderr


def test_script_without_env_gets_cron_env(tmp_path):
    job = make_job({"argv": [sys.executable, "-c", DUMP], "cwd": str(tmp_path), "gpus": 0})
    script = tmp_path / "batch"
    script.write_bytes(slurm.batch_script(job, tmp_path))
    p = subprocess.run(["/bin/sh", str(script)], env={"HOSTNAME": "x"}, capture_output=True,
                       timeout=30)
    _, env = decode(json.loads(p.stdout))
    assert env[b"PATH"] == runner.CRON_PATH.encode() and b"HOSTNAME" not in env


# ---- sbatch's argv ------------------------------------------------------------------
def test_sbatch_argv_full():
    job = make_job({"argv": ["train.py"], "gpus": 2, "cpus": 4, "mem": 2048, "time_limit": 90,
                    "priority": 3, "cwd": "/home/u/run 1", "name": "my job\n=x"}, job_id=12)
    argv = slurm.sbatch_argv(job, "/sp", "/sp/logs/12%j.log", ["3", "41"])
    assert argv[0] == "sbatch" and "--parsable" in argv and "--export=ALL" in argv
    assert "--job-name=my_job__x" in argv
    assert "--comment=spoold:12:/sp" in argv
    assert "--output=/sp/logs/12%%j.log" in argv and "--open-mode=append" in argv
    assert "--chdir=/" in argv  # the cwd has a space: the script changes there
    assert {"--gres=gpu:2", "--cpus-per-task=4", "--mem=2048M", "--time=0-00:02:00",
            "--nice=300000", "--no-requeue", "--dependency=afterok:3:41",
            "--kill-on-invalid-dep=yes"} <= set(argv)
    assert not any(a.startswith("--error") for a in argv)  # stderr joins --output


def test_sbatch_argv_slurm_pass_through_options():
    job = make_job({"argv": ["x"], "slurm": {"partition": "gpu", "account": "proj_1",
                                             "qos": "high", "constraint": "a100&ib"}})
    argv = slurm.sbatch_argv(job, "/sp", "/sp/logs/7.log", [])
    assert {"--partition=gpu", "--account=proj_1", "--qos=high",
            "--constraint=a100&ib"} <= set(argv)


@pytest.mark.parametrize("slurm_opts", [{"partition": "-x"}, {"partition": "a b"},
                                        {"qos": "a=b"}, {"qos": 3}, {"nodes": "2"},
                                        {"account": "+1"}])
def test_job_refuses_bad_slurm_options(slurm_opts):
    with pytest.raises(jobmod.JobError, match="slurm"):
        make_job({"argv": ["x"], "slurm": slurm_opts})


def test_submit_runs_sbatch_in_the_jobs_cwd_as_the_user(tmp_path):
    """SLURM_SUBMIT_DIR is sbatch's cwd: a sh (already the user) changes there."""
    job = make_job({"argv": ["x"], "cwd": str(tmp_path / "d i r")})
    run = FakeRun({"sbatch": (0, "44\n", "")})
    slurm.submit(job, "/sp", "/l/7.log", [], run=run)
    (_, kw), = run.calls
    assert kw["workdir"] == str(tmp_path / "d i r") and kw["cwd"] == "/"
    (tmp_path / "d i r").mkdir()
    for where, want in ((tmp_path / "d i r", tmp_path / "d i r"), (tmp_path / "gone", "/")):
        p = subprocess.run([*slurm.IN_DIR, str(where), "pwd"], capture_output=True, text=True)
        assert p.stdout.strip() == str(want)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("cmd,code", [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137),
                                      ("kill -TERM $$", 143)])
def test_script_records_start_end_and_code_in_the_status_file(tmp_path, shell, cmd, code):
    status = tmp_path / "status"
    status.touch()
    job = make_job({"cmd": cmd, "shell": "/bin/sh", "cwd": str(tmp_path), "gpus": 2})
    script = tmp_path / "batch"
    script.write_bytes(slurm.batch_script(job, tmp_path, status=status))
    t0 = time.time()
    p = subprocess.run([*shell, str(script)], env={"SLURM_JOB_ID": "77",
                                                  "CUDA_VISIBLE_DEVICES": "1,3"},
                       capture_output=True, timeout=30)
    st = slurm.read_status(status)
    assert (st.slurm_id, st.gpus, st.code) == ("77", [1, 3], code), status.read_text()
    assert t0 - 1 <= st.start <= st.end <= time.time() + 1
    # the script ends as the job did, so SLURM's state agrees (signal, not exit 128+N)
    assert p.returncode == (code if code < 128 else -(code - 128))


def test_script_with_status_keeps_argv_env_byte_exact(tmp_path):
    status = tmp_path / "status"
    status.touch()
    job = make_job({"argv": [sys.executable, "-c", DUMP, *HOSTILE_ARGV], "cwd": str(tmp_path),
                    "env": HOSTILE_ENV, "gpus": 1})
    (tmp_path / "batch").write_bytes(slurm.batch_script(job, tmp_path, status=status))
    slurm_env = {"SLURM_JOB_ID": "5", "CUDA_VISIBLE_DEVICES": "2", "PATH": "/usr/bin:/bin"}
    p = subprocess.run(["/bin/sh", str(tmp_path / "batch")], env=slurm_env,
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    argv, env = decode(json.loads(p.stdout))
    assert argv == runner.job_argv(job)
    assert env == expected_env(job, tmp_path, "2", slurm_env)  # no spoold_s, no spoold_c
    assert slurm.read_status(status).code == 0


def test_script_trap_does_not_reach_the_job(tmp_path):
    """The script survives a TERM sent to every process; the job still dies of it."""
    status = tmp_path / "status"
    status.touch()
    job = make_job({"cmd": "kill -TERM 0; sleep 5", "shell": "/bin/sh", "cwd": str(tmp_path)})
    (tmp_path / "batch").write_bytes(slurm.batch_script(job, tmp_path, status=status))
    p = subprocess.run(["/bin/sh", str(tmp_path / "batch")], env={}, capture_output=True,
                       timeout=30, start_new_session=True)
    assert slurm.read_status(status).code == 143 and p.returncode == -15


@pytest.mark.parametrize("text,want", [
    ("", slurm.Status()),
    ("start 100.5 9 -\n", slurm.Status(100.5, "9", None)),
    ("start 100.5 9 0,1\nend 101.25 3\n", slurm.Status(100.5, "9", [0, 1], 101.25, 3)),
    ("start 100.%N 9 -\nend 105 0\n", slurm.Status(100.0, "9", None, 105.0, 0)),
    # requeued by SLURM: the last start counts, and only an end after it
    ("start 1 9 -\nend 2 1\nstart 3 10 -\n", slurm.Status(3.0, "10", None)),
    ("end 2 0\n", slurm.Status()),  # no start: nothing
    ("start x 9 -\nstart 5 9 a,b\nend 6 999\njunk\n", slurm.Status()),
])
def test_read_status(tmp_path, text, want):
    (tmp_path / "s").write_text(text)
    assert slurm.read_status(tmp_path / "s") == want


def test_read_status_never_follows_a_link_nor_reads_a_fifo(tmp_path):
    (tmp_path / "real").write_text("start 1 2 -\nend 3 0\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "fifo")
    assert slurm.read_status(tmp_path / "link") == slurm.Status()
    assert slurm.read_status(tmp_path / "fifo") == slurm.Status()
    assert slurm.read_status(tmp_path / "missing") == slurm.Status()


def jobcomp_line(sid, uid, state="COMPLETED", code="0:0", name="x"):
    return (f"JobId={sid} UserId=u({uid}) GroupId=u({uid}) Name={name} JobState={state} "
            f"Partition=p TimeLimit=1 StartTime=2024-05-01T10:00:00 "
            f"EndTime=2024-05-01T10:00:10 NodeList=n NodeCnt=1 ProcCnt=1 WorkDir=/ "
            f"DerivedExitCode=0:0 ExitCode={code} \n")


def test_from_jobcomp_believes_one_line_of_the_jobs_own_user(tmp_path):
    log = tmp_path / "jobcomp.log"
    forged_name = "x\n" + jobcomp_line(12, 1000, "FAILED", "1:0").rstrip("\n")
    log.write_text(jobcomp_line(11, 1000) + jobcomp_line(12, 1000) + jobcomp_line(13, 1001)
                   + jobcomp_line(99, 1002, name=forged_name)
                   + jobcomp_line(14, 1000, "FAILED", "2:0"))
    got = slurm.from_jobcomp(log, {"11": 1000, "12": 1000, "13": 1000, "14": 1000, "15": 1000})
    assert set(got) == {"11", "14"}  # 12: two lines (one forged); 13: another user's
    assert got["11"][:3] == ("done", 0, None) and got["11"].source == "jobcomp"
    assert got["11"].end - got["11"].start == 10
    assert got["14"][:2] == ("failed", 2)
    assert slurm.from_jobcomp(tmp_path / "none", {"11": 1000}) == {}


def test_jobcomp_file_from_scontrol_show_config():
    conf = "JobCompLoc              = /var/log/slurm/jobcomp.log\nJobCompType = jobcomp/filetxt\n"
    assert slurm.jobcomp_file(FakeRun({"scontrol": (0, conf, "")})) == "/var/log/slurm/jobcomp.log"
    none = conf.replace("filetxt", "none")
    assert slurm.jobcomp_file(FakeRun({"scontrol": (0, none, "")})) is None


def test_sbatch_argv_minimal():
    job = make_job({"argv": ["x"], "gpus": 0, "cwd": "/tmp", "requeue": True})
    argv = slurm.sbatch_argv(job, "/sp", "/sp/logs/7.log", [])
    assert "--chdir=/tmp" in argv and "--requeue" in argv and "--nice=1000000" in argv
    assert not any(a.startswith(("--gres", "--mem", "--cpus", "--time", "--dependency"))
                   for a in argv)


@pytest.mark.parametrize("log", ["/sp/a\\b.log", "/sp/a\nb.log", "rel.log"])
def test_sbatch_argv_refuses_log_paths_slurm_cannot_express(log):
    with pytest.raises(slurm.SlurmError, match="log path"):
        slurm.sbatch_argv(make_job({"argv": ["x"]}), "/sp", log, [])


@pytest.mark.parametrize("dep", ["", "1;2", "--x", "1_2_3", "_2", "1_", 5])  # 1_2: a task
def test_sbatch_argv_refuses_bad_dependency_ids(dep):
    with pytest.raises(slurm.SlurmError, match="not a SLURM job id"):
        slurm.sbatch_argv(make_job({"argv": ["x"]}), "/sp", "/l", [dep])


@pytest.mark.parametrize("seconds,want", [
    (1, "0-00:01:00"), (60, "0-00:01:00"), (60.5, "0-00:02:00"), (90, "0-00:02:00"),
    (3600, "0-01:00:00"), (86399, "1-00:00:00"), (2 * 86400 + 3661, "2-01:02:00"),
    (1e300, "UNLIMITED")])
def test_slurm_time(seconds, want):
    assert slurm.slurm_time(seconds) == want


def test_comment_hashes_odd_spool_paths():
    assert slurm.comment(3, "/var/spool/x") == "spoold:3:/var/spool/x"
    c = slurm.comment(3, "/a b\n")
    assert c.startswith("spoold:3:sha256:") and " " not in c


# ---- talking to SLURM, with a fake run --------------------------------------------------
class FakeRun:
    """Answers SLURM commands from a table: {argv[0]: (rc, stdout, stderr)} or a callable."""

    def __init__(self, answers: dict):
        self.answers, self.calls = answers, []

    def __call__(self, argv, **kw):
        if argv[:3] == slurm.IN_DIR:  # run in a folder: note which, answer for the command
            argv, kw = argv[4:], {**kw, "workdir": argv[3]}
        self.calls.append((argv, kw))
        a = self.answers.get(argv[0], (127, "", f"{argv[0]}: not found"))
        rc, out, err = a(argv) if callable(a) else a
        return subprocess.CompletedProcess(argv, rc, out.encode(), err.encode())


def scontrol_line(job_id, state, exit_code="0:0", reason="None", name="x"):
    return (f"JobId={job_id} JobName={name} UserId=root(0) GroupId=root(0) MCS_label=N/A "
            f"Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState={state} "
            f"Reason={reason} Dependency=(null) Requeue=0 Restarts=0 BatchFlag=1 Reboot=0 "
            f"ExitCode={exit_code} RunTime=00:00:01 WorkDir=/tmp Comment=spoold:1:/sp\n")


def test_submit_runs_sbatch_with_script_on_stdin_and_a_clean_env(monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "elsewhere")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    run = FakeRun({"sbatch": (0, "42;cluster\n", "")})
    job = make_job({"argv": ["x"]})
    assert slurm.submit(job, "/sp", "/sp/logs/7.log", [], run=run) == "42"
    (argv, kw), = run.calls
    assert argv == slurm.sbatch_argv(job, "/sp", "/sp/logs/7.log", [])
    assert kw["input"] == slurm.batch_script(job, "/sp")
    assert set(kw["env"]) <= {"PATH", "SLURM_CONF"} and kw["cwd"] == "/"
    assert "user" not in kw


def test_submit_as_root_for_another_user_runs_sbatch_as_that_user(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    creds = runner.Creds(1234, 99, (99, 5), "alice", "/home/alice")
    run = FakeRun({"sbatch": (0, "43\n", "")})
    slurm.submit(make_job({"argv": ["x"]}), "/sp", "/l/7.log", [], run=run, creds=creds)
    (argv, kw), = run.calls
    assert (kw["user"], kw["group"], kw["extra_groups"]) == (1234, 99, [99, 5])
    assert "--chdir=/home/alice" in argv  # no cwd: the owner's home, as a local job
    assert kw["workdir"] == "/home/alice"  # SLURM_SUBMIT_DIR, changed to as alice
    assert b"'USER=alice'" in kw["input"] and b"'HOME=/home/alice'" in kw["input"]


@pytest.mark.parametrize("answer,match", [
    ((1, "", "sbatch: error: Batch job submission failed: Requested node configuration is "
             "not available\n"), "Requested node configuration"),
    ((0, "Submitted batch job 5\n", ""), "not a job id"),
])
def test_submit_errors(answer, match):
    with pytest.raises(slurm.SlurmError, match=match):
        slurm.submit(make_job({"argv": ["x"]}), "/sp", "/l", [], run=FakeRun({"sbatch": answer}))


def test_submit_when_sbatch_is_missing():
    def missing(argv, **kw):
        raise FileNotFoundError(2, "No such file or directory", "sbatch")
    with pytest.raises(slurm.SlurmError, match="sbatch"):
        slurm.submit(make_job({"argv": ["x"]}), "/sp", "/l", [], run=missing)


@pytest.mark.parametrize("state,code,reason,want", [
    ("PENDING", "0:0", "Dependency", ("pending", None, "PENDING (Dependency)")),
    ("PENDING", "0:0", "Resources", ("pending", None, "PENDING (Resources)")),
    ("RUNNING", "0:0", "None", ("running", None, None)),
    ("COMPLETING", "0:0", "None", ("running", None, None)),
    ("COMPLETED", "0:0", "None", ("done", 0, None)),
    ("FAILED", "3:0", "NonZeroExitCode", ("failed", 3, "FAILED (NonZeroExitCode)")),
    ("FAILED", "0:10", "RaisedSignal:10_User_defined_signal_1",
     ("failed", 138, "FAILED (RaisedSignal:10_User_defined_signal_1)")),
    ("TIMEOUT", "0:15", "TimeLimit", ("failed", 143, "TIMEOUT (TimeLimit)")),
    ("NODE_FAIL", "0:0", "None", ("failed", 0, "NODE_FAIL")),
    ("OUT_OF_MEMORY", "0:125", "OutOfMemory", ("failed", 253, "OUT_OF_MEMORY (OutOfMemory)")),
    ("CANCELLED", "0:15", "None", ("cancelled", 143, "CANCELLED")),
    ("CANCELLED", "0:0", "DependencyNeverSatisfied",
     ("cancelled", None, "CANCELLED (DependencyNeverSatisfied)")),
    ("WEIRD_NEW_STATE", "0:0", "None", ("unknown", None, "WEIRD_NEW_STATE")),
])
def test_query_maps_states_and_exit_codes(state, code, reason, want):
    run = FakeRun({"scontrol": (0, scontrol_line(9, state, code, reason), "")})
    assert slurm.query(["9"], run=run) == {"9": want}


def test_query_asks_one_id_at_a_time_and_falls_back_to_sacct():
    def scontrol(argv):
        if argv[-1] == "1":
            return 0, scontrol_line(1, "RUNNING"), ""
        return 1, "", "slurm_load_jobs error: Invalid job id specified\n"
    sacct = (0, "2|CANCELLED by 0|0:15|None|2024-05-01T10:00:00|2024-05-01T10:00:07\n", "")
    run = FakeRun({"scontrol": scontrol, "sacct": sacct})
    assert slurm.query(["1", "2", "3"], run=run) == {
        "1": ("running", None, None), "2": ("cancelled", 143, "CANCELLED"),
        "3": ("unknown", None, "not known to SLURM (any more)")}
    assert [c[0][-1] for c in run.calls if c[0][0] == "scontrol"] == ["1", "2", "3"]


def test_query_without_accounting():
    run = FakeRun({"scontrol": (1, "", "slurm_load_jobs error: Invalid job id specified"),
                   "sacct": (1, "", "Slurm accounting storage is disabled\n")})
    assert slurm.query(["5"], run=run)["5"][0] == "unknown"


def test_query_ignores_forged_fields_and_raises_when_slurm_is_down():
    # another job's record cannot answer for ours: only the record of the id asked counts
    forged = scontrol_line(6, "COMPLETED") + scontrol_line(5, "PENDING", reason="Priority")
    assert slurm.query(["5"], run=FakeRun({"scontrol": (0, forged, "")})) == {
        "5": ("unknown", None, "not known to SLURM (any more)")}
    down = FakeRun({"scontrol": (1, "", "slurm_load_jobs error: Unable to contact slurm "
                                        "controller (connect failure)")})
    with pytest.raises(slurm.SlurmError, match="Unable to contact"):
        slurm.query(["5"], run=down)


@pytest.mark.parametrize("text,want", [("0:0", 0), ("3:0", 3), ("0:9", 137), ("255:0", 255),
                                       ("1:15", 143), ("", None), ("x", None)])
def test_exit_code(text, want):
    assert slurm.exit_code(text) == want


def test_allocated_gpus_parses_idx():
    out = ("JobId=3 JobName=x ... Nodes=n1 CPU_IDs=0-1 Mem=100 GRES=gpu:2(IDX:0,2-3) "
           "MinCPUsNode=1\n")
    assert slurm.allocated_gpus("3", run=FakeRun({"scontrol": (0, out, "")})) == [0, 2, 3]
    none = FakeRun({"scontrol": (0, "JobId=3 JobName=x Nodes=n1 CPU_IDs=0 Mem=100 GRES=\n", "")})
    assert slurm.allocated_gpus("3", run=none) is None


def test_cancel_argv_and_idempotence():
    run = FakeRun({"scancel": (0, "", "")})
    slurm.cancel("12", run=run)
    slurm.cancel("12", "USR1", run=run)
    assert [c[0] for c in run.calls] == [["scancel", "12"],
                                         ["scancel", "--signal=USR1", "--full", "12"]]
    gone = FakeRun({"scancel": (1, "", "scancel: error: Kill job error on job id 12: Job/step "
                                       "already completing or completed\n")})
    slurm.cancel("12", "TERM", run=gone)
    with pytest.raises(slurm.SlurmError):
        slurm.cancel("12", "TERM; rm -rf /", run=run)
    with pytest.raises(slurm.SlurmError):
        slurm.cancel("-1", run=run)
    with pytest.raises(slurm.SlurmError, match="Access/permission denied"):
        slurm.cancel("12", run=FakeRun({"scancel": (1, "", "scancel: error: Kill job error "
                                                            "on job id 12: Access/permission "
                                                            "denied\n")}))


def test_find_matches_only_the_exact_comment():
    out = ("5 spoold:7:/sp\n6 spoold:7:/sp2\n7 spoold:70:/sp\n8 spoold:7:/sp\n"
           "x spoold:7:/sp\n")
    run = FakeRun({"squeue": (0, out, "")})
    assert slurm.find(7, "/sp", "alice", run=run) == ["5", "8"]
    assert "--user=alice" in run.calls[0][0]


def test_available_false_without_slurm(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert slurm.available() is False
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    assert slurm.available(run=FakeRun({"scontrol": (0, "Slurmctld(primary) at n1 is UP\n",
                                                     "")}))
    assert not slurm.available(run=FakeRun({"scontrol": (1, "Slurmctld(primary) at n1 is DOWN",
                                                         "")}))
