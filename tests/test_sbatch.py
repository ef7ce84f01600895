"""SLURM batch scripts through gsub (bin/gsub-sbatch.sh): `gsub job.sh`, where
job.sh has #SBATCH or #GSUB lines before its first command, takes its options
from them (the command line wins), and the job runs the text job.sh had when
it was submitted, with the interpreter of its #! line.  The job file is the
one API: checked field by field, run locally by the real daemon, and handed to
the SLURM executor (spoold.slurm) unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, HOST
from test_slurm_executor import bridge  # noqa: F401 - a fixture: spoold --executor slurm

from spoold import job as jobmod
from spoold import slurm

SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]
FOLDERS = ["tmp", "pending", "running", "done", "failed", "cancelled", "requests", "logs",
           "state"]

pytestmark = pytest.mark.skipif("dash" not in SHELLS, reason="dash is not installed")

JOB_SH = """#!/bin/bash
# train the model
#SBATCH --job-name=x
#SBATCH --gres=gpu:2
#SBATCH --time=0:10:00

echo "ran the original text: $0 $* on [$CUDA_VISIBLE_DEVICES] as $SLURM_JOB_NAME"
"""


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A spool with no daemon (gsub then warns, and that is all)."""
    s = tmp_path / "spool"
    for name in FOLDERS:
        (s / name).mkdir(parents=True)
    return s


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOLD_", "SLURM_"))}
    e.update(extra)
    return e


def gsub(spool: Path, *args, cwd: Path, shell: str = "dash", environ=None):
    return subprocess.run([shell, str(BIN / "gsub"), "--spool", str(spool), *args],
                          capture_output=True, cwd=cwd, env=environ or env(), timeout=60)


def jobs(spool: Path) -> list[dict]:
    """The pending jobs, in id order, as the daemon parses them."""
    out = []
    for name in sorted(os.listdir(spool / "pending"), key=lambda n: n[5:]):
        job = jobmod.parse((spool / "pending" / name).read_bytes())
        out.append(job.data | {"id": int(name[5:13])})
    return out


def script(folder: Path, text: str, name: str = "job.sh") -> Path:
    path = folder / name
    path.write_text(text)
    return path


NO_DAEMON = "gsub: no spoold is running on {} (no fresh heartbeat): the job waits until one starts"


def warnings(p: subprocess.CompletedProcess, spool: Path) -> list[str]:
    return [w for w in p.stderr.decode().splitlines() if w != NO_DAEMON.format(spool)]


# ---------------------------------------------------------------- the job file
@pytest.mark.parametrize("shell", SHELLS)
def test_directives_make_the_job_and_the_text_is_saved(bare, tmp_path, shell):
    (tmp_path / "sub").mkdir()
    script(tmp_path, """#!/bin/bash
# comments and blank lines do not end the header

#SBATCH -J x
#SBATCH --gres=gpu:2 --time=0:10:00   # a comment
#SBATCH --cpus-per-task=3 --mem 4G
#SBATCH -H -D sub
#SBATCH --dependency=afterok:3:4,afterok:5
echo one
#SBATCH --job-name=after-the-first-command
""")
    p = gsub(bare, "job.sh", "a", "b c", cwd=tmp_path, shell=shell,
             environ=env(SLURM_JOB_ID="stale", SLURM_NTASKS="9", KEEP="kept"))
    assert (p.returncode, p.stdout, warnings(p, bare)) == (0, b"1\n", [])
    [job] = jobs(bare)
    text = (tmp_path / "job.sh").read_text()
    assert job["argv"] == ["/bin/bash", "-c", text, "job.sh", "a", "b c"]
    assert (job["name"], job["gpus"], job["time_limit"], job["cpus"], job["mem"]) == (
        "x", 2, 600, 3, 4096)
    assert (job["hold"], job["cwd"], job["after"]) == (True, str(tmp_path / "sub"), [3, 4, 5])
    slurm_env = {k: v for k, v in job["env"].items() if k.startswith("SLURM_")}
    assert slurm_env == {"SLURM_JOB_ID": "1", "SLURM_JOB_NAME": "x", "SLURM_CPUS_PER_TASK": "3",
                         "SLURM_SUBMIT_DIR": str(tmp_path)}
    assert job["env"]["KEEP"] == "kept"


def test_editing_the_script_after_submission_changes_nothing(bare, tmp_path):
    path = script(tmp_path, JOB_SH)
    assert gsub(bare, "job.sh", cwd=tmp_path).returncode == 0
    before = (bare / "pending" / os.listdir(bare / "pending")[0]).read_bytes()
    path.write_text(JOB_SH.replace("original", "edited").replace("gpu:2", "gpu:3"))
    [job] = jobs(bare)
    assert job["argv"][2] == JOB_SH and job["gpus"] == 2
    assert (bare / "pending" / os.listdir(bare / "pending")[0]).read_bytes() == before


HOSTILE_LINES = ["", " ", "\t", '"', "'", "\\", '\\"', "$HOME `id` $(id)", "a: b", "- x",
                 "#SBATCH -J not-a-directive-here", "mid\rcr", "\x01\x1b[31m\x7f", "caf\u00e9",
                 "\u4e2d\u6587", "\U0001f680", "\u2028\u2029", "\u0085\u00a0", "\ufeff\ufffe",
                 "x" * 3000, '"' * 300 + "\\" * 300]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("end", ["\n", "", "\n\n"], ids=["newline", "none", "blank line"])
def test_the_saved_text_is_the_file_byte_for_byte(bare, tmp_path, shell, end):
    text = "#!/bin/sh\n#SBATCH -J t\necho start\n" + "\n".join(HOSTILE_LINES) + end
    (tmp_path / "job.sh").write_bytes(text.encode())
    p = gsub(bare, "job.sh", cwd=tmp_path, shell=shell)
    assert p.returncode == 0, p.stderr
    assert jobs(bare)[0]["argv"][2] == text


@pytest.mark.parametrize("line, name", [
    ("#SBATCH -J plain", "plain"), ("#SBATCH -Jglued", "glued"), ("#SBATCH --job-name sep", "sep"),
    ('#SBATCH --job-name="two words"', "two words"), ("#SBATCH -J 'single q'", "single q"),
    ("#SBATCH -J back\\ slash", "back slash"), ("#SBATCH -J 'a#b' # comment", "a#b"),
    ("#SBATCH\t-J\ttab", "tab"), ("#SBATCH -J x#y", "x"),
    ("# SBATCH -J disabled", "job.sh"), ("#SBATCHx -J no", "job.sh"),
    ("#GSUB -J gsubs-own", "gsubs-own"), ("#GSUB --name=eq", "eq"),
])
@pytest.mark.parametrize("shell", SHELLS)
def test_directive_words_are_split_as_sbatch_splits_them(bare, tmp_path, line, name, shell):
    script(tmp_path, f"#!/bin/sh\n#SBATCH --time=5\n{line}\ntrue\n")
    p = gsub(bare, "job.sh", cwd=tmp_path, shell=shell)
    assert p.returncode == 0, p.stderr
    assert jobs(bare)[0]["name"] == name


def test_the_command_line_wins_then_the_last_directive(bare, tmp_path):
    script(tmp_path, """#!/bin/sh
#SBATCH -J script --gres=gpu:2 -t 10 --mem=1G
#GSUB -p 5 --requeue
#GSUB -p 6 --host vm
#SBATCH -J script2
true
""")
    p = gsub(bare, "-n", "1", "-J", "cli", "-p", "3", "-t", "5m", "job.sh", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    [job] = jobs(bare)
    assert (job["name"], job["gpus"], job["priority"], job["time_limit"]) == ("cli", 1, 3, 300)
    assert (job["mem"], job["requeue"], job["pin_host"]) == (1024, True, "vm")
    assert job["env"]["SLURM_JOB_NAME"] == "cli"
    p = gsub(bare, "job.sh", cwd=tmp_path)
    assert (jobs(bare)[1]["name"], jobs(bare)[1]["priority"]) == ("script2", 6)


def test_other_options_are_ignored_with_a_warning_each(bare, tmp_path):
    script(tmp_path, """#!/bin/bash
#SBATCH --partition=gpu -p debug
#SBATCH -N 1 --exclusive
#SBATCH --gres=gpu:a100:2,nvme:1
#SBATCH --mem=0 --mail-type=END
true
""")
    p = gsub(bare, "job.sh", cwd=tmp_path)
    assert p.returncode == 0
    assert warnings(p, bare) == [
        "gsub: job.sh:2: #SBATCH --partition=gpu: not an option spoold takes; ignored",
        "gsub: job.sh:2: #SBATCH -p debug: not an option spoold takes; ignored",
        "gsub: job.sh:3: #SBATCH -N 1: not an option spoold takes; ignored",
        "gsub: job.sh:3: #SBATCH --exclusive: not an option spoold takes; ignored",
        "gsub: job.sh:4: #SBATCH: GPU type 'a100' ignored: spoold does not tell GPUs apart",
        "gsub: job.sh:4: #SBATCH --gres=nvme:1: spoold has only GPUs; ignored",
        "gsub: job.sh:5: #SBATCH --mem=0 (all of a node's memory): not a size spoold takes; "
        "ignored",
        "gsub: job.sh:5: #SBATCH --mail-type=END: not an option spoold takes; ignored"]
    [job] = jobs(bare)
    assert job["gpus"] == 2 and "mem" not in job


@pytest.mark.parametrize("text, message", [
    ("#SBATCH --dependency=afterany:3\n", "job.sh:2: --dependency: spoold has afterok:ID[:ID...] "
                                          "only: 'afterany:3'"),
    ("#SBATCH --time=2x\n", "job.sh:2: --time: not a duration: '2x' (use e.g. 90s, 10m, 2h, "
                            "1:30:00 or infinite)"),
    ("#SBATCH -c many\n", "job.sh:2: --cpus: not a whole number: 'many'"),
    ("#SBATCH --array=1,3,5\n", "--array: not a whole number: '1,3,5'"),
    ("#SBATCH --job-name\n", "job.sh:2: --job-name needs a value"),
    ("#GSUB -c 'echo hi'\n", "job.sh:2: -c: not in a script"),
    ("#GSUB --spool /elsewhere\n", "job.sh:2: --spool: not in a script"),
    ("#GSUB --bogus\n", "job.sh:2: unknown option: --bogus (see gsub --help)"),
    ("#GSUB -n 2 extra\n", "job.sh:2: #GSUB: not an option: 'extra'"),
    ("#SBATCH -J x\r\n", "job.sh: line 2 ends with a DOS line break (\\r\\n): convert the "
                         "script first (dos2unix), as sbatch asks"),
])
def test_a_bad_directive_is_refused_with_its_line(bare, tmp_path, text, message):
    (tmp_path / "job.sh").write_bytes(f"#!/bin/sh\n{text}true\n".encode())
    p = gsub(bare, "job.sh", cwd=tmp_path)
    assert (p.returncode, p.stdout, p.stderr.decode()) == (2, b"", f"gsub: {message}\n")
    assert os.listdir(bare / "pending") == os.listdir(bare / "tmp") == []


@pytest.mark.parametrize("text, error", [
    ("#!/usr/bin/Rscript\n#SBATCH -J r\ncat(1)\n", "job.sh: #! names 'Rscript': gsub runs the "
     "text of sh, bash, zsh, ksh and python scripts (run another with gsub Rscript job.sh)"),
    ("#!/bin/sh\n#SBATCH -J x\necho \xff\n", "job.sh: line 3 is not valid UTF-8 text"),
    ("#!/bin/sh\n#SBATCH -J \xff\n", "job.sh:2: --name: not valid UTF-8 text"),
    ("#!/bin/sh\n#SBATCH -J big\n" + "#" * 140000 + "\n", "job.sh: over 128 KiB: too long to "
     "save in a job"),
])
def test_what_can_not_be_saved_is_refused(bare, tmp_path, text, error):
    (tmp_path / "job.sh").write_bytes(text.encode("latin-1"))
    p = gsub(bare, "job.sh", cwd=tmp_path)
    assert (p.returncode, p.stderr.decode(errors="replace")) == (2, f"gsub: {error}\n")
    assert os.listdir(bare / "pending") == []


def test_an_array_gets_slurms_variables_and_file_names(bare, tmp_path):
    script(tmp_path, """#!/bin/sh
#SBATCH --array=4-6%2 -J sweep -o out/%x-%A_%a.log
#SBATCH --output=%x-%j-%u-%N-%%.txt
true
""", name="sweep.sh")
    # %u is the uid's name, never $USER (nor gsub's own variables)
    p = gsub(bare, "sweep.sh", cwd=tmp_path, environ=env(USER="evil", _guser="evil"))
    assert p.returncode == 0 and p.stdout == b"1\n2\n3\n"
    assert warnings(p, bare) == ["gsub: -o: only %j %x %A %a %u %% are filled in: "
                                 "'" + str(tmp_path) + "/%x-%j-%u-%N-%%.txt'"]
    got = jobs(bare)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert [j["log"] for j in got] == [f"{tmp_path}/sweep-{i}-{user}-%N-%.txt" for i in (1, 2, 3)]
    assert [(j["array_id"], j["array_index"], j["array_limit"]) for j in got] == [
        (1, 4, 2), (1, 5, 2), (1, 6, 2)]
    assert [{k: v for k, v in j["env"].items() if k.startswith("SLURM_ARRAY")} for j in got] == [
        {"SLURM_ARRAY_JOB_ID": "1", "SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_MIN": "4",
         "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_COUNT": "3"} for i in (4, 5, 6)]
    assert [j["env"]["SLURM_JOB_ID"] for j in got] == ["1", "2", "3"]
    p = gsub(bare, "-o", "cli-%j.log", "sweep.sh", cwd=tmp_path)  # gsub's -o: no patterns
    assert {j["log"] for j in jobs(bare)[3:]} == {f"{tmp_path}/cli-%j.log"}


def test_a_script_without_directives_runs_as_a_program(bare, tmp_path):
    """No #SBATCH/#GSUB line before the first command: argv as before, the
    file read when the job starts; nor is a binary read past its first byte."""
    script(tmp_path, "#!/bin/sh\n# nothing here\necho hi\n#SBATCH -J late\n", name="plain.sh")
    shutil.copy("/bin/true", tmp_path / "a.out")
    for args in (["./plain.sh", "x"], ["./a.out"], ["plain.sh"]):
        p = gsub(bare, *args, cwd=tmp_path)
        assert p.returncode == 0 and warnings(p, bare) == [], p.stderr
        assert jobs(bare)[-1]["argv"] == args
    assert "SLURM_JOB_ID" not in jobs(bare)[-1]["env"]


# ---------------------------------------------------------------- the saved argv runs the script
INTERPRETERS = [
    ("#!/bin/sh", ["/bin/sh"], True),
    ("#!/bin/bash -e", ["/bin/bash", "-e"], True),
    ("#! /usr/bin/env bash", ["/usr/bin/env", "bash"], True),
    ("#!/usr/bin/env -S bash -e", ["/usr/bin/env", "-S bash -e"], True),
    ("#!/usr/bin/env python3", ["/usr/bin/env", "python3"], False),
    (f"#!{sys.executable} -u", [sys.executable, "-u"], False),
    ("", ["/bin/sh"], True),
]
SH_BODY = 'printf "%s|" "$0" "$@"; read -r line; echo "stdin=$line"\n'
PY_BODY = "import sys\nprint('|'.join(sys.argv[1:]), 'stdin=' + sys.stdin.readline().strip())\n"


@pytest.mark.parametrize("shebang, interpreter, shell", INTERPRETERS,
                         ids=[i[0] or "none" for i in INTERPRETERS])
def test_the_saved_argv_runs_the_script_as_its_interpreter_would(bare, tmp_path, shebang,
                                                                 interpreter, shell):
    body = SH_BODY if shell else PY_BODY
    text = f"{shebang}\n#SBATCH -J t\n{body}" if shebang else f"#SBATCH -J t\n{body}"
    path = script(tmp_path, text)
    path.chmod(0o755)
    args = ["a b", "", "$HOME", "'q'"]
    assert gsub(bare, "job.sh", *args, cwd=tmp_path).returncode == 0
    argv = jobs(bare)[0]["argv"]
    assert argv == [*interpreter, "-c", text, *(["job.sh"] if shell else []), *args]
    saved = subprocess.run(argv, input=b"in\n", capture_output=True, cwd=tmp_path)
    direct = subprocess.run(["./job.sh" if shebang else "/bin/sh", *([] if shebang else
                             ["job.sh"]), *args], input=b"in\n", capture_output=True, cwd=tmp_path)
    expected = direct.stdout.replace(b"./job.sh|", b"job.sh|")
    assert (saved.returncode, saved.stdout) == (0, expected), saved.stderr


def test_the_slurm_executor_takes_the_job_as_it_is(bare, tmp_path):
    """spoold.slurm builds sbatch's options and the batch script from the job
    file gsub wrote: 2 GPUs, 10 minutes, name x; the script, run by sh as a
    batch step would run it (SLURM sets SLURM_*), runs the saved text."""
    script(tmp_path, JOB_SH)
    assert gsub(bare, "job.sh", "arg", cwd=tmp_path).returncode == 0
    name = os.listdir(bare / "pending")[0]
    job = jobmod.parse((bare / "pending" / name).read_bytes())
    job.id = 1
    argv = slurm.sbatch_argv(job, bare, bare / "logs" / "1.log", [])
    assert {"--gres=gpu:2", "--time=0-00:10:00", "--job-name=x"} <= set(argv), argv
    batch = slurm.batch_script(job, bare)
    assert b"\n#SBATCH" not in batch.split(b"exec /usr/bin/env")[0]  # nothing for sbatch to read
    (tmp_path / "job.sh").write_text("echo edited\n")
    p = subprocess.run(["/bin/sh", "-s"], input=batch, capture_output=True,
                       env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "77",
                            "SLURM_JOB_NAME": "x", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert p.stdout.decode() == "ran the original text: job.sh arg on [0,1] as x\n", p.stderr


# ---------------------------------------------------------------- with the real daemon
def test_done_when_an_edited_script_runs_its_original_text_on_two_gpus(spool, daemon_factory,
                                                                        tmp_path):
    """Issue 15's done-when: #SBATCH --job-name=x, --gres=gpu:2, --time=0:10:00;
    `gsub job.sh`; the file edited before the job runs; it runs the original
    text on 2 GPUs, with name x and a 600 s limit."""
    work = tmp_path / "work"
    work.mkdir()
    path = script(work, JOB_SH)
    p = spool.run("gsub", "job.sh", "first", cwd=work)
    job_id = int(p.stdout)
    path.write_text(JOB_SH.replace("original", "EDITED").replace("gpu:2", "gpu:1"))
    daemon_factory()
    rec = spool.wait_state(job_id, "done")
    assert (rec["name"], len(rec["assigned_gpus"]), rec["time_limit"]) == ("x", 2, 600)
    gpus = ",".join(map(str, rec["assigned_gpus"]))
    assert spool.log(job_id) == f"ran the original text: job.sh first on [{gpus}] as x\n"


@pytest.mark.skipif(not slurm.available(), reason="no SLURM controller answers")
def test_the_same_script_runs_under_the_slurm_executor(spool, bridge, tmp_path):  # noqa: F811
    """The job file a batch script makes goes to SLURM as it is: the saved
    text runs there, on 2 of SLURM's GPUs, with a 600 s limit."""
    script(tmp_path, JOB_SH)
    job_id = spool.gsub("job.sh", "there", cwd=tmp_path)
    (tmp_path / "job.sh").write_text("echo edited\n")
    rec = spool.wait_state(job_id, "done", timeout=90)
    assert (rec["executor"], rec["name"], rec["time_limit"]) == ("slurm", "x", 600)
    out = spool.log(job_id)
    assert out.startswith("ran the original text: job.sh there on [") and out.endswith(" as x\n")
    assert len(out.split("[")[1].split("]")[0].split(",")) == 2


def test_a_live_daemon_refuses_a_script_no_host_can_run(spool, daemon, tmp_path):
    """A live host's limits apply to what the script asks for."""
    script(tmp_path, JOB_SH.replace("gpu:2", "gpu:9"))
    p = spool.run("gsub", "job.sh", cwd=tmp_path, check=False)
    assert (p.returncode, p.stderr.decode()) == (
        2, f"gsub: no host can run this job: it asks for 9 GPUs, the largest host ({HOST}) "
           "has 4\n")
    assert os.listdir(spool.root / "pending") == []
