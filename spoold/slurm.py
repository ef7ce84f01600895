"""The SLURM bridge: run a spoold job as a SLURM batch job, ask how it is, cancel it.

Owns: the sbatch command line, the batch script, and the reading of SLURM's
answers (``scontrol show job``, then ``sacct`` where accounting is set up).
Knows nothing about spool folders; the daemon calls it and records the results.
Every SLURM command goes through ``run`` (``subprocess.run``'s signature), so
tests can answer for SLURM. See docs/slurm.md.

Invariants:
- The job's argv (or ``cmd`` under its shell), cwd and recorded environment
  travel byte-exact inside the batch script, quoted for sh: nothing of the job
  is in sbatch's argv or environment, so nothing is parsed by sbatch or sh.
  sbatch runs with a minimal environment (no SBATCH_* or user variables, never
  the job's) and reads the script on stdin: no script file to own or clean up.
- Inside the job the environment is the recorded one plus spoold's variables
  (as ``runner.job_env`` builds them for a local job) plus only what SLURM sets
  about the allocation (``SLURM_*``, ``SLURMD_*``, the GPU variables);
  ``CUDA_VISIBLE_DEVICES`` and ``SPOOLD_GPUS`` are SLURM's GPU choice ("" for
  none). Recorded ``SLURM_*`` variables (from a submitter inside another
  allocation) are dropped.
- What SLURM shows back to us one line per job (name, work dir, output path)
  never holds a newline or a space, so one job's fields cannot forge another's.
- Exit codes are spoold's: 0-255, 128+N for signal N (SLURM's ExitCode=a:b is
  exit a, signal b). A job is never requeued by SLURM unless it asked (requeue:).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from . import job as jobmod
from . import runner

# spoold priority p (0-9999, smaller first) -> sbatch --nice=p*NICE_PER_PRIORITY.
# With priority/basic every submission is 1 below the previous one, so this
# keeps "priority, then submission order" for up to 100,000 queued jobs.
NICE_PER_PRIORITY = 100_000
TIMEOUT = 60  # seconds for any one SLURM command (slurmctld retries for ~20 s)
# Set by slurmd about the allocation; kept from the batch step's environment,
# never taken from the recorded one.
_SLURM_VARS = ("SLURM_", "SLURMD_")
_GPU_VARS = ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES",
             "ZE_AFFINITY_MASK")
# SLURM JobState -> spoold state. COMPLETING: the job ended, SLURM is cleaning
# up; its final state (and the resources) come a moment later.
_STATES = {
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "RESV_DEL_HOLD": "pending", "SPECIAL_EXIT": "pending",
    "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running",
    "SUSPENDED": "running", "STOPPED": "running", "SIGNALING": "running",
    "STAGE_OUT": "running", "RESIZING": "running",
    "COMPLETED": "done",
    "FAILED": "failed", "TIMEOUT": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "failed", "PREEMPTED": "failed",
    "CANCELLED": "cancelled", "REVOKED": "cancelled",
}
_ID = re.compile(r"[0-9]+(?:_[0-9]+)?")  # a job, or an array task: 123_4
# SLURM's final JobState -> the records' outcome name (records.OUTCOMES)
OUTCOME = {"COMPLETED": "completed", "FAILED": "failed", "TIMEOUT": "timeout",
           "DEADLINE": "timeout", "OUT_OF_MEMORY": "out_of_memory", "NODE_FAIL": "node_fail",
           "BOOT_FAIL": "node_fail", "CANCELLED": "cancelled", "REVOKED": "cancelled",
           "PREEMPTED": "cancelled"}
_TRAPPED = b"HUP INT QUIT TERM USR1 USR2"  # what scancel --signal and SLURM's limits send
_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: safe in one-line output


class SlurmError(Exception):
    """A SLURM command failed; str(e) says which and what it printed."""


# ---- submitting ------------------------------------------------------------------
def sbatch_argv(job, spool_root, log_path, dep_slurm_ids: list[str], *,
                creds: runner.Creds | None = None) -> list[str]:
    """argv for sbatch; the batch script (``batch_script``) goes on its stdin.
    ``job.priority`` must be the effective priority (the pending/ file name's).

    Raises SlurmError for what SLURM cannot express: a log path with a
    backslash or a newline (SLURM's file name patterns), a bad dependency id."""
    log = os.fsdecode(log_path)
    if "\\" in log or "\n" in log or not log.startswith("/"):
        raise SlurmError(f"log path {log!r}: SLURM needs an absolute path without "
                         "backslashes or newlines")
    cwd = _cwd(job, creds)
    argv = ["sbatch", "--parsable", "--export=ALL", "--nodes=1", "--ntasks=1",
            f"--job-name={_safe_name(job.name)}", f"--comment={comment(job.id, spool_root)}",
            f"--output={log.replace('%', '%%')}", "--open-mode=append",
            # WorkDir shows in `scontrol show job`: only a one-word path; the
            # script changes to the real one anyway.
            f"--chdir={cwd if _SAFE.fullmatch(cwd) else '/'}",
            f"--nice={job.priority * NICE_PER_PRIORITY}",
            "--requeue" if job.get("requeue") else "--no-requeue"]
    if job.gpus > 0:
        argv.append(f"--gres=gpu:{job.gpus}")
    if job.cpus > 0:
        argv.append(f"--cpus-per-task={job.cpus}")
    if job.mem > 0:  # never --mem=0: to SLURM that means all of the node's memory
        argv.append(f"--mem={job.mem}M")
    if job.time_limit is not None:
        argv.append(f"--time={slurm_time(job.time_limit)}")
    for key in jobmod.SLURM_OPTIONS:  # validated by job.py (one word, no leading dash)
        value = (job.get("slurm") or {}).get(key)
        if value:
            argv.append(f"--{key}={value}")
    if dep_slurm_ids:
        argv += ["--dependency=afterok:" + ":".join(_check_id(i) for i in dep_slurm_ids),
                 "--kill-on-invalid-dep=yes"]  # a failed dependency cancels, as in spoold
    return argv


def batch_script(job, spool_root, *, creds: runner.Creds | None = None,
                 status: os.PathLike | str | None = None) -> bytes:
    """The ``#!/bin/sh`` batch script: keep SLURM's allocation variables, drop
    the rest, cd to the job's cwd, run the job's argv with its environment.

    With ``status`` (a file the daemon created for the job's user, see
    ``read_status``) the script appends ``start TIME SLURM_JOB_ID GPUS`` before
    the job and ``end TIME CODE`` after it (code as sh gives it, 128+N for
    signal N), then ends the way the job did, so SLURM sees the same. A trap
    (a handler, which children do not inherit, unlike an ignored signal) keeps
    the script alive while a signal SLURM sent to every process ends the job."""
    head = script_head(b"spoold job %d, written by spoold/slurm.py: SLURM runs it as the "
                       b"batch step." % job.id)
    return head + script_body(job, spool_root, creds=creds, status=status)


def script_head(what: bytes) -> bytes:
    """The lines every batch script starts with (``what``: a comment saying
    whose it is). The first command ends sbatch's ``#SBATCH`` lines: nothing
    after it is an option, whatever a job's words hold."""
    return b"\n".join([
        b"#!/bin/sh",
        b"# " + what,
        b"CR=$(printf '\\r')  # sbatch refuses scripts holding CR LF: quoted as \"$CR\"",
        b"set -f",
    ]) + b"\n"


def script_body(job, spool_root, *, creds: runner.Creds | None = None,
                status: os.PathLike | str | None = None) -> bytes:
    """One job's part of a batch script, after ``script_head``: its status
    lines, cd, the environment, the job (``batch_script`` says how)."""
    env = runner.job_env(job, Path(spool_root), (), creds)
    for k in ("CUDA_VISIBLE_DEVICES", "SPOOLD_GPUS"):
        env.pop(k)
    env = {k: v for k, v in env.items() if not k.startswith(_SLURM_VARS) and k not in _GPU_VARS}
    argv = runner.job_argv(job)
    keep = "|".join([f"{p}*" for p in _SLURM_VARS] + list(_GPU_VARS))
    lines = []
    if status is not None:
        lines += [
            b"unset spoold_s spoold_c; spoold_s=" + _q(os.fsencode(status)),
            b"printf 'start %s %s %s\\n' \"$(command -p date +%s.%N)\" \"${SLURM_JOB_ID:--}\" "
            b"\"${CUDA_VISIBLE_DEVICES:--}\" >> \"$spoold_s\"",
            b"trap : " + _TRAPPED,
        ]
    lines += [
        b"cd -- " + _q(os.fsencode(_cwd(job, creds))) + b" || exit 1",
        b"# Keep only what SLURM says about this allocation (not PWD, HOSTNAME, ...).",
        b"IFS='\n'",
        b"for v in $(export -p); do",
        b"  case $v in 'export '*) v=${v#export }; v=${v%%=*}",
        b"    case $v in " + keep.encode() + b") ;; *) unset \"$v\" ;; esac ;;",
        b"  esac",
        b"done",
    ]
    words = [_q(os.fsencode(f"{k}={v}")) for k, v in env.items()]
    words += [b'"CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-}"',
              b'"SPOOLD_GPUS=${CUDA_VISIBLE_DEVICES-}"']
    if b"=" in argv[0]:  # env(1) would take it for a variable: let sh exec it
        words += [b"/bin/sh", b"-c", b"'exec \"$@\"'", b"spoold-exec"]
    words += [_q(a) for a in argv]
    run = b"/usr/bin/env -u _ -u SHLVL --"  # bash as /bin/sh exports these
    if status is None:
        return b"\n".join(lines) + b"\n" + b" \\\n  ".join([b"exec " + run, *words]) + b"\n"
    tail = [
        b"spoold_c=$?",
        b"printf 'end %s %s\\n' \"$(command -p date +%s.%N)\" \"$spoold_c\" >> \"$spoold_s\"",
        b"if [ \"$spoold_c\" -gt 128 ] && [ \"$spoold_c\" -le 192 ]; then  # die as it died",
        b"  trap - " + _TRAPPED + b"; kill -s \"$(kill -l \"$spoold_c\")\" $$ 2>/dev/null",
        b"fi",
        b"exit \"$spoold_c\"",
    ]
    return (b"\n".join(lines) + b"\n" + b" \\\n  ".join([run, *words]) + b"\n"
            + b"\n".join(tail) + b"\n")


def submit(job, spool_root, log_path, dep_slurm_ids: list[str], run=subprocess.run, *,
           creds: runner.Creds | None = None, status=None) -> str:
    """sbatch the job; return its SLURM id. Raises SlurmError with sbatch's message.

    The caller creates ``log_path`` first (owned by the job's user, 0600, as
    ``runner.launch`` does): SLURM appends to it as that user. As root with
    ``creds`` of another user, sbatch runs as that user, so the job does too.
    sbatch runs in the job's cwd (``SLURM_SUBMIT_DIR``): a ``sh`` already
    running as the user changes there (``/`` where it cannot), so no path the
    user named is touched with the daemon's privileges."""
    return sbatch(sbatch_argv(job, spool_root, log_path, dep_slurm_ids, creds=creds),
                  batch_script(job, spool_root, creds=creds, status=status),
                  _cwd(job, creds), run, creds)


def sbatch(argv: list[str], script: bytes, workdir: str, run=subprocess.run,
           creds: runner.Creds | None = None) -> str:
    """Run ``argv`` (sbatch --parsable ...) with ``script`` on stdin, in
    ``workdir``, as ``creds``' user when the daemon is root; the job id."""
    kw = {}
    if creds is not None and os.geteuid() == 0 and creds.uid != 0:
        kw = dict(user=creds.uid, group=creds.gid, extra_groups=list(creds.groups))
    out = _run(run, argv, input=script, workdir=workdir, **kw)
    slurm_id = out.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    if not _ID.fullmatch(slurm_id):
        raise SlurmError(f"sbatch printed {out.strip()[:200]!r}, not a job id")
    return slurm_id


# ---- watching ---------------------------------------------------------------------
class Info(NamedTuple):
    """What one source says about a job. ``state``: pending, running, done,
    failed, cancelled or unknown; ``word``: SLURM's JobState (COMPLETED,
    TIMEOUT, ...); ``start``/``end``: epoch seconds or None; ``source``: who said it."""

    state: str
    code: int | None
    reason: str | None
    word: str = ""
    start: float | None = None
    end: float | None = None
    source: str = "scontrol"


class Status(NamedTuple):
    """The batch script's own account (``batch_script(status=)``): the last
    start, and the end after it, if any."""

    start: float | None = None
    slurm_id: str | None = None
    gpus: list[int] | None = None
    end: float | None = None
    code: int | None = None


def query(slurm_ids: list[str], run=subprocess.run) -> dict[str, tuple[str, int | None,
                                                                        str | None]]:
    """``details`` as (state, exit_code, reason) tuples."""
    return {i: tuple(v[:3]) for i, v in details(slurm_ids, run).items()}


def details(slurm_ids: list[str], run=subprocess.run) -> dict[str, Info]:
    """{id: (state, exit_code, reason)}: state is pending, running, done, failed,
    cancelled or unknown; exit_code is spoold's (None until the job ended, and for
    a job cancelled before it ran); reason is SLURM's state and reason, e.g.
    "PENDING (Dependency)", "TIMEOUT (TimeLimit)", None when there is nothing to say.

    Asks ``scontrol show job ID`` one id at a time (completed jobs stay there
    MinJobAge seconds), then sacct for ids it no longer knows. Never the list of
    all jobs, nor the jobcomp/filetxt file: other users' job names and work dirs
    may hold newlines that forge records there (docs/slurm.md)."""
    ids = [_check_id(i) for i in slurm_ids]
    found = {}
    for i in ids:
        try:
            out = _run(run, ["scontrol", "--oneliner", "show", "job", i])
        except SlurmError as e:
            if "Invalid job id" in str(e) or re.search(r"Job [0-9_]+ not found", str(e)):
                continue  # purged after MinJobAge; an array task cancelled while it waited
            raise
        f = _fields(out)
        if _is(f, i):
            found[i] = _result(f.get("JobState", ""), f.get("ExitCode"), f.get("Reason"),
                               f.get("StartTime"), f.get("EndTime"))
    missing = [i for i in ids if i not in found]
    if missing:
        found.update(_from_sacct(missing, run))
    return {i: found.get(i, Info("unknown", None, "not known to SLURM (any more)", source=""))
            for i in ids}


def exit_code(slurm_exit: str | None) -> int | None:
    """SLURM's "a:b" (exit a, signal b) as spoold records it: 128+b, else a."""
    m = re.fullmatch(r"(\d+):(\d+)", slurm_exit or "")
    if not m:
        return None
    code, sig = int(m[1]), int(m[2])
    return 128 + sig if sig else code


def allocated_gpus(slurm_id: str, run=subprocess.run) -> list[int] | None:
    """The GPU indices SLURM gave a running job (``scontrol -d``'s IDX), or None."""
    out = _run(run, ["scontrol", "--details", "--oneliner", "show", "job", _check_id(slurm_id)])
    m = re.search(r" GRES=gpu[^ ]*\(IDX:([0-9,-]+)\)", out)
    if not m:
        return None
    gpus = []
    for part in m[1].split(","):
        lo, _, hi = part.partition("-")
        gpus += range(int(lo), int(hi or lo) + 1)
    return gpus


# ---- acting -----------------------------------------------------------------------
def cancel(slurm_id: str, sig: str | None = None, run=subprocess.run) -> None:
    """scancel: without ``sig`` the job is cancelled (pending: never runs;
    running: TERM, KILL after KillWait). With ``sig`` (TERM, KILL, 10, ...) only
    that signal goes to all of the job's processes, batch step included.
    A job that already ended is not an error."""
    argv = ["scancel"]
    if sig is not None:
        if not re.fullmatch(r"(SIG)?[A-Z0-9]+", sig):
            raise SlurmError(f"bad signal {sig!r}")
        argv += [f"--signal={sig}", "--full"]
    try:
        _run(run, [*argv, _check_id(slurm_id)])
    except SlurmError as e:
        if "already completing or completed" not in str(e) and "Invalid job id" not in str(e):
            raise


def renice(slurm_id: str, priority: int, run=subprocess.run) -> None:
    """Re-prioritise a job SLURM still queues (gprio after the handoff)."""
    _run(run, ["scontrol", "update", f"JobId={_check_id(slurm_id)}",
               f"Nice={priority * NICE_PER_PRIORITY}"])


def find(job_id: int, spool_root, user: str | int, run=subprocess.run) -> list[str]:
    """SLURM ids of ``user``'s live jobs submitted for this spool's job ``job_id``
    (by --comment): lets a daemon that died between sbatch and recording the id
    adopt the job instead of submitting it twice. Only that user's jobs are
    looked at, so no one else's comment can claim to be the job."""
    out = _run(run, ["squeue", "--noheader", f"--user={user}", "--format=%i %k"])
    want = comment(job_id, spool_root)
    return [w[0] for w in (line.split(" ", 1) for line in out.splitlines())
            if len(w) == 2 and w[1].strip() == want and _ID.fullmatch(w[0])]


def available(run=subprocess.run) -> bool:
    """sbatch is on PATH and the controller answers."""
    if not (shutil.which("sbatch") and shutil.which("scontrol")):
        return False
    try:
        return " is UP" in _run(run, ["scontrol", "ping"])
    except SlurmError:
        return False


# ---- formats --------------------------------------------------------------------
def slurm_time(seconds: float) -> str:
    """A time limit in SLURM's D-HH:MM:SS, rounded up to whole minutes (SLURM
    keeps limits in minutes); UNLIMITED past SLURM's range."""
    minutes = math.ceil(seconds / 60)
    if minutes >= 0xFFFFFFFE:
        return "UNLIMITED"
    d, rest = divmod(minutes, 24 * 60)
    return f"{d}-{rest // 60:02d}:{rest % 60:02d}:00"


def comment(job_id: int, spool_root) -> str:
    """The --comment naming the spool and job: ``spoold:7:/path/to/spool``, or a
    hash of the path where the path is not one printable word."""
    root = os.fsdecode(spool_root)
    if not _SAFE.fullmatch(root):
        root = "sha256:" + hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
    return f"spoold:{job_id}:{root}"


def _safe_name(name: str) -> str:
    name = re.sub(r"[^\x21-\x7e]|[=\\]", "_", name)[:64]
    return name or "job"


def _cwd(job, creds) -> str:
    return job.get("cwd") or (creds.home if creds else os.path.expanduser("~"))


def _q(b: bytes) -> bytes:
    """One sh word, byte-exact: single quotes; ' and CR spliced in from outside."""
    return b"'" + b.replace(b"'", b"'\\''").replace(b"\r", b"'\"$CR\"'") + b"'"


def _check_id(slurm_id: str) -> str:
    if not isinstance(slurm_id, str) or not _ID.fullmatch(slurm_id):
        raise SlurmError(f"not a SLURM job id: {slurm_id!r}")
    return slurm_id


def _sbatch_env() -> dict:
    env = {"PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"}
    if os.environ.get("SLURM_CONF"):
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    return env


# Runs a command in a folder it changes to itself, "/" where it cannot.
IN_DIR = ["/bin/sh", "-c", 'cd -- "$0" 2>/dev/null || cd /; exec "$@"']


def _run(run, argv: list[str], input: bytes | None = None, workdir: str | None = None,
         **kw) -> str:
    """Run a SLURM command with ``_sbatch_env``; its output, or SlurmError.
    ``workdir``: the command runs there (through ``IN_DIR``, so the change of
    folder happens as the user ``kw`` names, never with the daemon's rights)."""
    full = argv if workdir is None else [*IN_DIR, workdir, *argv]
    try:
        p = run(full, input=input, capture_output=True, env=_sbatch_env(), cwd="/",
                timeout=TIMEOUT, check=False, **kw)
    except (OSError, subprocess.SubprocessError) as e:
        raise SlurmError(f"{argv[0]}: {e}") from None
    out = os.fsdecode(p.stdout or b"")
    if p.returncode != 0:
        err = " ".join(os.fsdecode(p.stderr or b"").split())[:500]
        raise SlurmError(f"{argv[0]} failed (exit {p.returncode}): {err or out[:200]}")
    return out


def _is(f: dict[str, str], slurm_id: str) -> bool:
    """Whether scontrol's record ``f`` is the job ``slurm_id``. An array task
    ``123_4`` is ``ArrayJobId=123 ArrayTaskId=4`` (its own JobId once it is
    split off the array, 123 while it still waits in it: checked on 22.05);
    both come before JobName, so a forged name cannot supply them."""
    job, _, task = slurm_id.partition("_")
    if not task:
        return f.get("JobId") == slurm_id
    return f.get("ArrayJobId") == job and f.get("ArrayTaskId") == task


def _fields(line: str) -> dict[str, str]:
    """``Key=value Key=value`` -> dict; the first of each key wins (JobName and
    WorkDir, the only free text before the fields we read, hold no spaces)."""
    out: dict[str, str] = {}
    for word in line.split():
        k, eq, v = word.partition("=")
        if eq:
            out.setdefault(k, v)
    return out


def _result(slurm_state: str, slurm_exit: str | None, why: str | None, start=None, end=None,
            source: str = "scontrol") -> Info:
    word = slurm_state.split()[0] if slurm_state else ""
    state = _STATES.get(word, "unknown")
    code = exit_code(slurm_exit) if state in ("done", "failed", "cancelled") else None
    if state == "cancelled" and slurm_exit == "0:0":
        code = None  # cancelled before it ran (or it said nothing)
    why = None if why in (None, "", "None", "(null)") else why
    t0, t1 = _epoch(start), _epoch(end) if state in ("done", "failed", "cancelled") else None
    if state == "pending":
        t0 = None  # an expected start time, not a start
    if state in ("running", "done") and why is None:
        return Info(state, code, None, word, t0, t1, source)
    return Info(state, code, f"{word or '?'} ({why})" if why else word or "no state", word,
                t0, t1, source)


def _epoch(text: str | None) -> float | None:
    """SLURM's local-time ``2024-05-01T10:00:00`` as epoch seconds; None for
    Unknown, None, N/A and anything else."""
    try:
        return time.mktime(time.strptime(text or "", "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def _from_sacct(ids: list[str], run) -> dict:
    try:
        out = _run(run, ["sacct", "--noheader", "--parsable2", "--allocations",
                         "--jobs=" + ",".join(ids),
                         "--format=JobID,State,ExitCode,Reason,Start,End"])  # JobID: 123_4
    except SlurmError:
        return {}  # no accounting database
    found = {}
    for line in out.splitlines():
        f = line.split("|")
        if len(f) == 6 and f[0] in ids:
            found[f[0]] = _result(f[1], f[2], f[3], f[4], f[5], source="sacct")
    return found


def config(run=subprocess.run) -> dict[str, str]:
    """``scontrol show config`` as {key: value}; {} when the controller does
    not answer."""
    try:
        out = _run(run, ["scontrol", "show", "config"])
    except SlurmError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.splitlines())}


def jobcomp_file(run=subprocess.run) -> str | None:
    """Where ``jobcomp/filetxt`` writes (``JobCompLoc``), or None when SLURM
    keeps no such file."""
    conf = config(run)
    if conf.get("JobCompType") != "jobcomp/filetxt":
        return None
    loc = conf.get("JobCompLoc", "")
    return loc if loc.startswith("/") else None


def from_jobcomp(path, wanted: dict[str, int], limit: int = 64 << 20) -> dict[str, Info]:
    """{id: Info} from a jobcomp/filetxt file, for ``wanted`` = {SLURM id: uid}.

    The file is slurmctld's, but other users' job names and work dirs are in
    it and may hold newlines: a line counts only when it starts with
    ``JobId=ID UserId=NAME(UID)`` of the job's own uid, and an id with two such
    lines is not believed at all (a forged line next to the real one). Only
    the last ``limit`` bytes are read (the newest jobs)."""
    lines: dict[str, list[dict]] = {}
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            for raw in f:
                if not raw.startswith(b"JobId="):
                    continue
                fields = _fields(raw.decode("utf-8", "replace"))
                sid = fields.get("JobId")
                if sid in wanted and fields.get("UserId", "").endswith(f"({wanted[sid]})"):
                    lines.setdefault(sid, []).append(fields)
    except OSError:
        return {}
    return {sid: _result(f[0].get("JobState", ""), f[0].get("ExitCode"), None,
                         f[0].get("StartTime"), f[0].get("EndTime"), source="jobcomp")
            for sid, f in lines.items() if len(f) == 1}


def read_status(path, max_bytes: int = 64 << 10) -> Status:
    """The batch script's lines in ``path`` (see ``batch_script``): the last
    ``start`` line and the ``end`` line after it. The file is the job user's
    to write, so this is that user's word: the daemon opens it without
    following links, reads at most ``max_bytes`` and skips what does not
    parse. A missing or unreadable file is an empty Status."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return Status()
    try:  # a regular file only (a FIFO would block, a device could be anything)
        data = os.read(fd, max_bytes) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)
    st = Status()
    for line in data.decode("ascii", "replace").splitlines():
        w = line.split(" ")
        try:
            if w[0] == "start" and len(w) == 4:
                gpus = None if w[3] == "-" else [int(g) for g in w[3].split(",")]
                st = Status(_seconds(w[1]), w[2] if _ID.fullmatch(w[2]) else None, gpus)
            elif w[0] == "end" and len(w) == 3 and st.start is not None:
                code = int(w[2])
                if 0 <= code <= 255:
                    st = st._replace(end=_seconds(w[1]), code=code)
        except ValueError:
            continue
    return st


def _seconds(text: str) -> float:
    """``date +%s.%N`` (``%N`` left as is where date has no nanoseconds)."""
    whole, _, frac = text.partition(".")
    t = float(f"{whole}.{frac}" if frac.isdigit() else whole)
    if not 0 < t < 2**40:
        raise ValueError(text)
    return t
