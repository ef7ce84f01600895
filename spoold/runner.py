"""Starting jobs under a shepherd, telling live jobs from dead ones, killing trees.

Owns: the shepherd (one line of ``sh``: a shell, not a Python interpreter),
the job's environment, process-tree signalling, and the rusage of the
shepherds it reaps (the usage fallback without cgroups).

Invariants:
- ``state/run/<host>/<id>.lock`` is created just before the shepherd starts. The
  shepherd gets it as stdin, opened read-write, holds an flock on it for its
  whole life, writes ``s`` into it before it runs the job and the job's exit
  status (``$?``: 128+N for signal N) as its last act.
  Lock held = running; lock free + status = finished; lock free + ``s`` only
  = vanished after starting; an empty file, or none (and no job cgroup), =
  never started (the daemon died before the shepherd ran), so the job may go
  back to pending/. A job cgroup outweighs the run file: see ``status``.
  No pid is ever trusted on its own.
- The gate: the shepherd's first act is to read one line from its stdout,
  which is then the read end of a pipe (dash names only fds 0-9, so the gate
  takes fd 1 until it opens, and the log then takes fd 1 back). The daemon
  writes that line only after it has put the shepherd in the job's cgroup,
  with its memory limit already set (``mem_mib``), so no process of the job
  ever runs outside it or unlimited. If the daemon dies first, the
  read sees end of file and the shepherd exits without writing ``s``: the run
  file reads as never started.
- The shepherd runs as the job's user from its first instruction and enters
  the working directory itself (``cd``, the path passed as an argument, never
  part of the script): root never looks up a path a user named. If it cannot,
  the job counts as started and failed with status ``CWD_FAILED`` (125, as
  env(1) and chroot(1) report their own failures) and a line in its log.
- The job runs with the submitter's umask (the ``umask`` field), else the
  daemon's.
- The job itself does not inherit the run file (its stdin is /dev/null), so
  a job's daemonised leftovers cannot keep the lock alive.
- A job's processes: with a cgroup (spoold.cgroup), exactly its members. Else
  the processes of the job's user carrying ``SPOOLD_JOB_ID`` + ``SPOOLD_SPOOL``
  in their environment, and the shepherd's session (children that called
  setsid() keep neither), the session only while the shepherd is provably ours
  (a session leader holding the job's run file open, root's alone in
  state/run/): a pid from before a reboot or reused since is never used.
  The shepherd is never signalled, so it can always record how the job ended.
- Usage without cgroups: ``reap`` (never blocking) collects each ended child
  of this daemon with wait4(2); its rusage covers the shepherd and what it
  waited for (the job, not the job's daemonised leftovers), and is kept until
  ``child_usage`` is asked for it once. A daemon restarted since knows nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .cgroup import Cgroups, send

SH = "/bin/sh"
CWD_FAILED = 125  # the shepherd could not enter the job's working directory
# stdout is the gate until it opens, then the log again (see above).
GATE = 'read -r g <&1 || exit 0; exec >&2; '


def _shepherd(run: str) -> str:
    """$1 is the working directory, then ``run``'s arguments. stdin is the
    locked run file; the exit status goes there when the job ends."""
    return (GATE + 'printf "s\\n" >&0; if cd -P -- "$1"; then shift; ' + run + '; s=$?; '
            'else printf "spoold: cannot enter the working directory %s\\n" "$1"; '
            f's={CWD_FAILED}; fi; printf "%s\\n" $s >&0')


SHEPHERD = _shepherd('"$@" </dev/null')
# With `gsub -o FILE`: the shepherd, already running as the job's user, opens
# FILE itself, so the daemon never opens a user-chosen path with its rights.
SHEPHERD_TO = _shepherd('L=$1; shift; "$@" </dev/null >>"$L" 2>&1')
# --on-finish: the job's directory if the user can enter it, else /.
HOOK = GATE + 'cd -P -- "$1" 2>/dev/null || cd /; shift; exec "$@"'
CRON_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Creds:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str


CREDS_TTL_S = 5.0  # how long a user's name and groups are reused (each lookup reads
_creds: dict[int, tuple[float, Creds]] = {}  # /etc/passwd and /etc/group: ~0.1 ms)


def creds_for(uid: int) -> Creds:
    """uid -> name, groups, home, as the user database says; a few lookups per
    job, so kept for CREDS_TTL_S (a user added or changed shows up after that)."""
    now = time.monotonic()
    hit = _creds.get(uid)
    if hit is not None and now - hit[0] < CREDS_TTL_S:
        return hit[1]
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        creds = Creds(uid, uid, (), str(uid), "/")
    else:
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
        creds = Creds(uid, pw.pw_gid, groups, pw.pw_name, pw.pw_dir)
    if len(_creds) > 4096:
        _creds.clear()
    _creds[uid] = (now, creds)
    return creds


def default_shell() -> str:
    return shutil.which("bash") or SH


def job_argv(job) -> list[bytes]:
    """The exact argv, bytes for bytes: argv as given, or cmd under a shell."""
    if job.argv is not None:
        return [os.fsencode(a) for a in job.argv]
    shell = job.get("shell") or default_shell()
    return [os.fsencode(shell), b"-c", os.fsencode(job.cmd)]


def job_env(job, spool_root: Path, gpus: tuple[int, ...], creds: Creds | None) -> dict:
    env = dict(job.env) if job.env is not None else _cron_env(creds)
    if creds is not None and os.geteuid() == 0:
        # As root the identity comes from the file's owner, never from the file.
        env.update(USER=creds.name, LOGNAME=creds.name, HOME=creds.home)
    visible = ",".join(map(str, gpus))
    env.update({
        "CUDA_VISIBLE_DEVICES": visible,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA's numbering = NVML's
        "SPOOLD_JOB_ID": str(job.id),
        "SPOOLD_GPUS": visible,
        "SPOOLD_SPOOL": str(spool_root),
        "PYTHONUNBUFFERED": "1",
    })
    if job.get("array_index") is not None:
        env["SPOOLD_ARRAY_INDEX"] = str(job.get("array_index"))
    return env


def _cron_env(creds: Creds | None) -> dict:
    """What cron gives a job: a file dropped without env: gets this much."""
    c = creds or creds_for(os.getuid())
    return {"PATH": CRON_PATH, "HOME": c.home, "USER": c.name, "LOGNAME": c.name,
            "SHELL": SH, "LANG": "C.UTF-8"}


def open_log(path: Path, creds: Creds | None) -> int:
    """The job's log in logs/ (a root folder in a shared spool): appended to,
    never through a link, owned by the job's user, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    if os.geteuid() == 0 and creds is not None:
        os.fchown(fd, creds.uid, creds.gid)
    return fd


def job_umask(job) -> int | None:
    """The submitter's umask: ``umask: '0077'`` (octal digits), else None."""
    s = job.get("umask")
    if isinstance(s, str) and 0 < len(s) <= 4 and set(s) <= set("01234567"):
        mask = int(s, 8)
        return mask if mask <= 0o777 else None
    return None


def _as_user(job, creds: Creds | None) -> dict:
    """Popen arguments that make the child the job's user, with its umask."""
    kw = {}
    if os.geteuid() == 0 and creds is not None and creds.uid != 0:
        kw = dict(user=creds.uid, group=creds.gid, extra_groups=list(creds.groups))
    mask = job_umask(job)
    if mask is not None:
        kw["umask"] = mask
    return kw


def _start(argv: list, stdin, log_fd: int, env: dict, kw: dict,
           cgroups: Cgroups | None, job_id: int) -> subprocess.Popen:
    """Popen ``argv`` (a gated script) as the job's user, in its own session,
    from /, put it in the job's cgroup, then open its gate. On any error the
    child has run nothing and is gone when this raises."""
    gate, release = os.pipe()
    try:
        try:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=gate, stderr=log_fd, cwd="/",
                                    env=env, start_new_session=True, **kw)
        finally:
            os.close(gate)
        _children[proc.pid] = proc
        try:
            if cgroups is not None:
                cgroups.attach(job_id, proc.pid)
            os.write(release, b"go\n")
        except BaseException:
            os.close(release)  # end of file at the gate: it exits having run nothing
            release = -1
            proc.wait()
            raise
    finally:
        if release >= 0:
            os.close(release)
    return proc


def launch(spool, run_path: Path, job, gpus: tuple[int, ...], cpus: tuple[int, ...],
           creds: Creds | None, log_path: Path, *, cgroups: Cgroups | None = None,
           mem_mib: int | None = None) -> int:
    """Start ``job`` under a shepherd (in the job's cgroup when ``cgroups`` is
    given, before the job runs, limited to ``mem_mib`` MiB where the cgroups
    have a memory controller: ``cgroups.memory_limits``); return the
    shepherd's pid.

    Raises OSError (log not writable, cgroup or limit not writable, exec
    failed) with nothing started; the caller records the reason. A working
    directory the user cannot enter is the job's failure (``CWD_FAILED``),
    not an OSError."""
    log_fd = open_log(log_path, creds)
    try:
        cwd = job.get("cwd") or (creds.home if creds else os.path.expanduser("~"))
        if not os.path.isabs(cwd):  # a string test: nothing is looked up as root
            raise FileNotFoundError(errno.ENOENT, "working directory is not absolute", cwd)
        run_fd = os.open(run_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        old_mask = os.sched_getaffinity(0) if cpus else None
        try:
            fcntl.flock(run_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if cgroups is not None:  # after the run file: a crash here reads as unstarted
                cgroups.create(job.id)
                if mem_mib:  # before the gate opens: the job never runs unlimited
                    cgroups.set_memory_limit(job.id, mem_mib)
            if cpus:  # the child inherits this thread's mask: no preexec_fn needed
                os.sched_setaffinity(0, cpus)
            out = job.get("log")
            script = [SHEPHERD_TO, "spoold-shepherd", cwd, os.fsencode(out)] if out else [
                SHEPHERD, "spoold-shepherd", cwd]
            proc = _start([SH, "-c", *script, *job_argv(job)], run_fd, log_fd,
                          job_env(job, spool.root, gpus, creds), _as_user(job, creds),
                          cgroups, job.id)
        except BaseException:
            # Nothing runs: the cgroup goes first, then the marker, so that the job
            # counts as never started whatever a crash in between leaves.
            if cgroups is not None:
                cgroups.remove(job.id)
            with contextlib.suppress(OSError):
                os.unlink(run_path)
            raise
        finally:
            os.close(run_fd)  # the shepherd's copy now holds the lock alone
            if old_mask is not None:
                os.sched_setaffinity(0, old_mask)
        return proc.pid
    finally:
        os.close(log_fd)


def spawn_hook(job, gpus: tuple[int, ...], creds: Creds | None, log_path: Path,
               spool_root: Path, extra: dict, *, cgroups: Cgroups | None = None) -> int:
    """Start a job's --on-finish command as the job's user, with its GPUs, in
    its cgroup when ``cgroups`` is given (so it is tracked and killed with
    the job); return its pid. Nothing here waits for it."""
    log_fd = open_log(log_path, creds)
    try:
        env = job_env(job, spool_root, gpus, creds)
        env.update(extra)
        env.pop("SPOOLD_SPOOL", None)  # no marker: without a cgroup it outlives the job
        env["SPOOLD_HOOK_SPOOL"] = str(spool_root)
        cwd = job.get("cwd") or "/"
        if cgroups is not None:
            cgroups.create(job.id)
        proc = _start([SH, "-c", HOOK, "spoold-hook", cwd if os.path.isabs(cwd) else "/",
                       default_shell(), "-c", job.cmd], subprocess.DEVNULL, log_fd, env,
                      _as_user(job, creds), cgroups, job.id)
        return proc.pid
    finally:
        os.close(log_fd)


# Shepherds and hooks started by this daemon, kept so they are reaped (no zombies).
_children: dict[int, subprocess.Popen] = {}
# Rusage of reaped children, until asked for (hooks' never are: the oldest go).
_usage: dict[int, dict] = {}
USAGE_KEPT = 1024
CHILD_EXIT_WAIT_S = 1.0  # a shepherd exits right after writing the job's status
# Children reaped since ``take_reaped`` was last asked: the jobs that may have ended.
_reaped: set[int] = set()


def reap() -> None:
    """Collect every ended child (never blocks). waitid(WNOWAIT) names an
    ended child without reaping it: ours are reaped one by one, and only a
    child that is not ours makes us ask each of ours (a system call per
    running job, at every pass, was what it cost before)."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return  # no child at all
        if info is None:
            return  # none has ended
        proc = _children.get(info.si_pid)
        if proc is None or not _ended(info.si_pid, proc):
            break  # not ours (its owner reaps it): look at ours one by one
        del _children[info.si_pid]
    for pid, proc in list(_children.items()):
        if _ended(pid, proc):
            del _children[pid]


def take_reaped() -> set[int]:
    """The pids of the children reaped since the last call."""
    out = set(_reaped)
    _reaped.clear()
    return out


def running_child(pid: int) -> bool:
    """Whether ``pid`` is a shepherd or hook this daemon started and still runs."""
    proc = _children.get(pid)
    return proc is not None and not _ended(pid, proc)


def child_usage(pid: int) -> dict:
    """``cpu_s`` (user + system seconds) and ``max_rss_mib`` of an ended
    shepherd this daemon started, its job included, from wait4(2); once: a
    second call answers {}. {} when unknown (not our child, a daemon restarted
    since). Call it once the job's status is written: it waits up to
    ``CHILD_EXIT_WAIT_S`` for the shepherd to exit."""
    proc = _children.get(pid)
    deadline = time.monotonic() + CHILD_EXIT_WAIT_S
    while proc is not None and not _ended(pid, proc) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _usage.pop(pid, {})


def _ended(pid: int, proc: subprocess.Popen) -> bool:
    """Popen.poll() that keeps the rusage of the child it reaps. Every wait
    for a child of ``_children`` goes through here (or Popen.wait() on a
    failed start), else its rusage is lost."""
    if proc.returncode is not None:
        return True
    try:
        got, status, ru = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:  # reaped behind our back: its usage is lost
        got, ru = pid, None
    if got != pid:
        return False
    if len(_reaped) >= USAGE_KEPT:  # no one asks (the SLURM executor): news, not a log
        _reaped.clear()
    _reaped.add(pid)
    if ru is None:
        proc.returncode = -1
        return True
    proc.returncode = os.waitstatus_to_exitcode(status)
    _usage[pid] = {"cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                   "max_rss_mib": round(ru.ru_maxrss / 1024, 1)}  # Linux: KiB
    if len(_usage) > USAGE_KEPT:
        del _usage[next(iter(_usage))]
    return True


def status(run_path: Path, *, cgroups: Cgroups | None = None,
           job_id: int | None = None) -> tuple[str, int | None]:
    """('running', None), ('exited', code), ('vanished', None) or ('unstarted', None).

    With the job's cgroup (``cgroups`` and ``job_id``), a live member outweighs
    a missing run file (someone removed ``state/run/``) or a dead shepherd: the
    job is 'running' as long as any of its processes is. A missing run file
    with an empty cgroup is 'vanished': the job may have run, so it is never
    requeued. (So the daemon removes the cgroup before it clears the run file
    of a job it puts back in pending/.)"""
    try:
        fd = os.open(run_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        words = None
    else:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return "running", None  # (the common answer: no cgroup needed for it)
            words = os.read(fd, 64).split()
        finally:
            os.close(fd)  # closing drops our probe lock at once
    cg = cgroups if cgroups is not None and job_id is not None and cgroups.exists(
        job_id) else None
    if words is None:
        if cg is None:
            return "unstarted", None
        return ("running" if cg.populated(job_id) else "vanished"), None
    if not words:
        return "unstarted", None
    if words[-1].isdigit():
        return "exited", int(words[-1])
    if cg is not None and cg.populated(job_id):
        return "running", None  # the shepherd was killed; its job was not
    return "vanished", None


def clear(run_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(run_path)


def job_pids(spool_root: Path, job_id: int, shepherd: int | None, *,
             cgroups: Cgroups | None = None, uid: int | None = None) -> set[int]:
    """Every process of the job but its shepherd.

    With the job's cgroup: its members, nothing else. Without: processes of
    ``uid`` (any user when None) with the job's environment markers, and the
    shepherd's session if ``shepherd`` is alive and provably the job's."""
    runs = _run_files(spool_root, job_id)
    if cgroups is not None and cgroups.exists(job_id):
        return {p for p in cgroups.pids(job_id)
                if p not in (os.getpid(), shepherd) and not _is_shepherd(p, runs)}
    sid = shepherd if shepherd and _is_shepherd(shepherd, runs) else None
    want_id = b"SPOOLD_JOB_ID=%d\0" % job_id
    want_spool = b"SPOOLD_SPOOL=" + os.fsencode(str(spool_root)) + b"\0"
    me = os.getpid()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in (me, shepherd):
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = b"\0" + f.read()
            if b"\0" + want_id in env and b"\0" + want_spool in env:
                if (uid is None or _real_uid(pid) == uid) and not _is_shepherd(pid, runs):
                    found.add(pid)
                continue
            if sid and _session(pid) == sid:
                found.add(pid)
        except OSError:
            continue
    return found


def signal_job(spool_root: Path, job_id: int, shepherd: int | None, sig: int, *,
               cgroups: Cgroups | None = None, uid: int | None = None) -> int:
    """Send ``sig`` to every process of the job (``job_pids``); return how many got it."""
    return sum(send(pid, sig) for pid in job_pids(spool_root, job_id, shepherd,
                                                  cgroups=cgroups, uid=uid))


def _run_files(spool_root: Path, job_id: int) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the job's run file(s): in state/run/ (root's, 0700)."""
    found = set()
    for p in (Path(spool_root) / "state" / "run").glob(f"*/{job_id}.lock"):
        with contextlib.suppress(OSError):
            st = os.stat(p, follow_symlinks=False)
            found.add((st.st_dev, st.st_ino))
    return found


def _is_shepherd(pid: int, runs: set[tuple[int, int]]) -> bool:
    """A shepherd, and only a shepherd, is a session leader holding the job's
    run file open (on fd 0, or on the copy the shell keeps while the job runs)."""
    if not runs or _session(pid) != pid:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{pid}/fd/{fd}")
            if (st.st_dev, st.st_ino) in runs:
                return True
    return False


def _session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _real_uid(pid: int) -> int | None:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                return int(line.split()[1])
    return None
