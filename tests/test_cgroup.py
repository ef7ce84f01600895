"""Job cgroups (spoold.cgroup) and how the runner uses them, plus the runner's
fallback tracking and the job's identity (cwd entered as the user, umask).

Real cgroups, real processes, real signals. Needs root; the cgroup tests also
need a writable cgroup hierarchy, and skip with the reason otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import HOST as DAEMON_HOST
from conftest import REPO, _kill_leftovers, wait_for
from test_multiuser import users  # noqa: F401 (a fixture)

from spoold import job as jobmod
from spoold import runner
from spoold.cgroup import Cgroups, _own_cgroups
from spoold.spool import Spool

ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(not ROOT, reason="cgroups and other users' jobs need root")
HIERARCHIES = _own_cgroups() if ROOT else []
HOST = "testhost"


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def session(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[3])


def empty_out(cg: Cgroups) -> None:
    for job_id in cg.job_ids():
        cg.kill(job_id)
        wait_for(lambda j=job_id: not cg.populated(j), 10, f"cgroup of job {job_id} to empty")
        cg.remove(job_id)
    cg.remove_base()


@pytest.fixture(params=HIERARCHIES or [None], ids=lambda h: h[0] if h else "none")
def cg(request):
    """A private folder in each usable hierarchy (cgroup2, v1 freezer, v1 pids)."""
    if request.param is None:
        pytest.skip("no cgroup2, freezer or pids hierarchy is mounted here")
    kind, own = request.param
    c = Cgroups(own / f"spoold-test-{os.getpid()}-{abs(hash(request.node.name)) % 10**6}",
                kind)
    try:
        c._probe()
    except OSError as e:
        pytest.skip(f"{kind} at {own} is not writable: {e}")
    yield c
    empty_out(c)


def start_in(c: Cgroups, job_id: int, script: str) -> subprocess.Popen:
    """``script`` under sh, put in the job's cgroup before it runs (gated on stdin)."""
    c.create(job_id)
    p = subprocess.Popen(["sh", "-c", "read g; " + script], stdin=subprocess.PIPE)
    c.attach(job_id, p.pid)
    p.stdin.write(b"go\n")
    p.stdin.close()
    return p


# ---- the module on its own ----------------------------------------------------------
def test_members_signal_and_kill_include_an_escaped_grandchild(cg, tmp_path):
    pidfile = tmp_path / "escaped"
    p = start_in(cg, 1, f"setsid env -i sh -c 'echo $$ > {pidfile}; exec sleep 1000' & "
                        "sleep 1000")
    escaped = wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()
                       and int(pidfile.read_text()), what="the escaped grandchild")
    wait_for(lambda: len(cg.pids(1)) == 3, what="3 members (sh, sleep, escaped sleep)")
    assert {p.pid, escaped} <= cg.pids(1)
    assert session(escaped) != session(p.pid)  # it really left the job's session
    assert cg.populated(1) and cg.exists(1)
    assert cg.job_ids() == {1}
    assert cg.signal(1, signal.SIGCONT) == 3

    assert cg.kill(1) == 3
    wait_for(lambda: not cg.populated(1), what="populated to flip")
    assert p.wait(5) == -signal.SIGKILL
    wait_for(lambda: not alive(escaped), what="the escaped grandchild to die")
    cg.remove(1)
    assert not cg.exists(1) and cg.base.exists()  # the daemon's folder stays for the next job
    cg.remove_base()
    assert not cg.base.exists()  # ... until the daemon is idle


def test_remove_is_quiet_for_missing_and_busy_cgroups(cg):
    cg.remove(99)  # never existed
    assert not cg.populated(99) and cg.pids(99) == set() and cg.kill(99) == 0
    p = start_in(cg, 2, "exec sleep 1000")
    wait_for(lambda: cg.pids(2) == {p.pid}, what="the member")
    cg.remove(2)  # busy: stays, no exception
    assert cg.exists(2) and cg.populated(2)
    cg.create(2)  # idempotent, keeps its member
    assert cg.pids(2) == {p.pid}
    cg.kill(2)
    p.wait(5)
    wait_for(lambda: not cg.populated(2), what="empty")
    cg.remove(2)
    assert not cg.exists(2)


def test_detect_names_are_deterministic_per_spool_and_host(tmp_path):
    a = Cgroups.detect(tmp_path / "s1", "h1")
    if a is None:
        pytest.skip(f"no usable cgroup hierarchy: {Cgroups.why_not}")
    again = Cgroups.detect(tmp_path / "s1", "h1")
    assert again.base == a.base and again.kind == a.kind
    assert Cgroups.detect(tmp_path / "s1", "h2").base != a.base
    assert Cgroups.detect(tmp_path / "s2", "h1").base != a.base
    assert a.base.name.startswith("spoold-") and len(a.base.name) == len("spoold-") + 12
    assert a.base.parent == dict(HIERARCHIES)[a.kind]  # under the daemon's own cgroup
    assert str(a.base) in a.description
    assert not a.base.exists()  # the probe left nothing behind
    if any(k == "cgroup2" for k, _ in HIERARCHIES):
        assert a.kind == "cgroup2" and a.description.startswith("cgroup v2 at ")


# ---- the runner with cgroups --------------------------------------------------------
@pytest.fixture
def rig(tmp_path):
    sp = Spool(tmp_path / "spool")
    sp.create()
    sp.run_dir(HOST).mkdir()
    c = Cgroups.detect(sp.root, HOST)
    yield sp, c
    _kill_leftovers(sp.root)
    if c is not None:
        empty_out(c)
    runner.reap()


def with_cgroups(rig):
    sp, c = rig
    if c is None:
        pytest.skip(f"no usable cgroup hierarchy: {Cgroups.why_not}")
    return sp, c


def make_job(job_id: int, argv: list[str], **extra) -> jobmod.Job:
    job = jobmod.validate({"argv": argv})
    job.id = job_id
    job.data.update(extra)  # set directly: fields another module may not know yet
    return job


def launch(sp: Spool, job, creds=None, cgroups=None) -> tuple[int, Path]:
    run_path = sp.run_lock(job.id, HOST)
    pid = runner.launch(sp, run_path, job, (), (), creds, sp.log_path(job.id),
                        cgroups=cgroups)
    return pid, run_path


def test_launch_runs_shepherd_and_job_inside_the_job_cgroup(rig, tmp_path):
    sp, cg = with_cgroups(rig)
    seen = tmp_path / "cgroup-at-start"
    job = make_job(5, ["sh", "-c", f"cat /proc/self/cgroup > {seen}; "
                                   "setsid sleep 1000 & exec sleep 1000"], cwd=str(tmp_path))
    shepherd, run_path = launch(sp, job, cgroups=cg)
    wait_for(lambda: seen.exists() and seen.read_text(), what="the job's first act")
    # Its very first instruction already ran in the job's cgroup (the gate).
    assert f"/{cg.base.name}/job-5\n" in seen.read_text()
    wait_for(lambda: len(cg.pids(5)) == 3, what="shepherd + job + escaped child")
    assert shepherd in cg.pids(5)
    job_procs = runner.job_pids(sp.root, 5, shepherd, cgroups=cg)
    assert job_procs == cg.pids(5) - {shepherd}  # the shepherd is never signalled
    assert runner.status(run_path, cgroups=cg, job_id=5) == ("running", None)

    # Someone removes state/run/<host>: the live job is still running, never requeued.
    shutil.rmtree(sp.run_dir(HOST))
    assert runner.status(run_path) == ("unstarted", None)  # what the run file alone says
    assert runner.status(run_path, cgroups=cg, job_id=5) == ("running", None)
    # The shepherd is no longer provable by its run file, but still not a job process.
    assert runner.job_pids(sp.root, 5, shepherd, cgroups=cg) == job_procs

    assert runner.signal_job(sp.root, 5, shepherd, signal.SIGKILL, cgroups=cg) == 2
    wait_for(lambda: not cg.populated(5), what="the whole job to end")
    assert runner.status(run_path, cgroups=cg, job_id=5) == ("vanished", None)


def test_status_dead_shepherd_live_job_is_running(rig, tmp_path):
    sp, cg = with_cgroups(rig)
    shepherd, run_path = launch(sp, make_job(6, ["sleep", "1000"], cwd=str(tmp_path)),
                                cgroups=cg)
    wait_for(lambda: len(cg.pids(6)) == 2, what="the job to start")
    os.kill(shepherd, signal.SIGKILL)  # the OOM killer picks the shepherd
    wait_for(lambda: runner.status(run_path) == ("vanished", None), what="the lock to drop")
    assert runner.status(run_path, cgroups=cg, job_id=6) == ("running", None)
    assert cg.kill(6) == 1
    wait_for(lambda: not cg.populated(6), what="the job to end")
    assert runner.status(run_path, cgroups=cg, job_id=6) == ("vanished", None)


def test_daemon_dying_before_the_gate_leaves_a_never_started_job(rig, tmp_path):
    """The daemon is killed after the shepherd is in the cgroup, before the line."""
    sp, cg = with_cgroups(rig)
    ran = tmp_path / "ran"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from spoold import job as jobmod, runner
        from spoold.cgroup import Cgroups
        from spoold.spool import Spool

        class DiesAfterAttach(Cgroups):
            def attach(self, job_id, pid):
                super().attach(job_id, pid)
                print(pid, flush=True)
                os._exit(9)

        sp = Spool({str(sp.root)!r})
        cg = DiesAfterAttach(Path({str(cg.base)!r}), {cg.kind!r})
        job = jobmod.validate({{"argv": ["touch", {str(ran)!r}], "cwd": "/"}})
        job.id = 7
        runner.launch(sp, sp.run_lock(7, {HOST!r}), job, (), (), None, sp.log_path(7),
                      cgroups=cg)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=REPO,
                       timeout=30)
    assert p.returncode == 9, p.stderr.decode()
    shepherd = int(p.stdout)
    run_path = sp.run_lock(7, HOST)
    wait_for(lambda: not alive(shepherd), what="the gated shepherd to give up")
    assert run_path.read_bytes() == b""  # never wrote `s`
    assert runner.status(run_path, cgroups=cg, job_id=7) == ("unstarted", None)
    assert not ran.exists()
    assert cg.exists(7) and not cg.populated(7)


def test_launch_failing_to_attach_starts_nothing_and_leaves_nothing(rig, tmp_path,
                                                                    monkeypatch):
    sp, cg = with_cgroups(rig)
    ran = tmp_path / "ran"

    def refuse(job_id, pid):
        raise PermissionError(13, "refused by the test")
    monkeypatch.setattr(cg, "attach", refuse)
    with pytest.raises(PermissionError):
        launch(sp, make_job(8, ["touch", str(ran)], cwd="/"), cgroups=cg)
    assert not sp.run_lock(8, HOST).exists() and not cg.exists(8)
    assert not ran.exists()


def test_hook_runs_in_the_job_cgroup_with_its_gpus_as_the_user(rig, users):  # noqa: F811
    sp, cg = with_cgroups(rig)
    alice = users["spoold-alice"]
    base = Path(tempfile.mkdtemp(prefix="spoold-hook-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        (base / "secret").mkdir(mode=0o700)  # root's: the hook cannot enter it
        (base / "out").mkdir()
        os.chmod(base / "out", 0o777)
        out = base / "out" / "hook"
        job = jobmod.validate({"cmd": f"{{ id -u; pwd; echo $CUDA_VISIBLE_DEVICES; "
                                      f"cat /proc/self/cgroup; }} > {out}; exec sleep 1000",
                               "cwd": str(base / "secret")})
        job.id = 14
        pid = runner.spawn_hook(job, (1, 3), runner.creds_for(alice.pw_uid), sp.log_path(14),
                                sp.root, {"SPOOLD_EXIT_CODE": "0"}, cgroups=cg)
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= 4, what="the hook")
        uid, cwd, gpus, *cgroups = out.read_text().splitlines()
        assert (int(uid), cwd, gpus) == (alice.pw_uid, "/", "1,3")
        assert any(line.endswith(f"/{cg.base.name}/job-14") for line in cgroups)
        assert pid in cg.pids(14) and runner.running_child(pid)
        assert cg.kill(14) == 1  # killed with the job
        wait_for(lambda: not runner.running_child(pid), what="the hook to be gone")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---- identity: cwd entered as the user, the submitter's umask ---------------------------
def test_cwd_only_root_can_enter_is_never_entered_for_another_user(rig, users):  # noqa: F811
    sp, _ = rig
    base = Path(tempfile.mkdtemp(prefix="spoold-cwd-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        (base / "secret" / "inside").mkdir(parents=True)
        os.chmod(base / "secret", 0o700)  # root's: only root can pass through
        (base / "out").mkdir(mode=0o777)
        os.chmod(base / "out", 0o777)
        ran = base / "out" / "ran"
        creds = runner.creds_for(users["spoold-alice"].pw_uid)
        job = make_job(9, ["sh", "-c", f"pwd > {ran}"], cwd=str(base / "secret" / "inside"))
        _, run_path = launch(sp, job, creds=creds)
        wait_for(lambda: runner.status(run_path)[0] == "exited", what="the job to end")
        assert runner.status(run_path) == ("exited", runner.CWD_FAILED)
        assert run_path.read_text() == f"s\n{runner.CWD_FAILED}\n"  # started, then failed
        log = sp.log_path(9).read_text()
        assert f"cannot enter the working directory {base}/secret/inside" in log, log
        assert not ran.exists()  # the command never ran, in there or anywhere
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_submitter_umask_applies_to_the_job_and_its_output_file(rig, tmp_path):
    sp, _ = rig
    out = tmp_path / "out.txt"
    job = make_job(10, ["sh", "-c", "touch made; echo hi"], cwd=str(tmp_path),
                   umask="0077", log=str(out))
    old = os.umask(0o022)
    try:
        _, run_path = launch(sp, job)
    finally:
        os.umask(old)
    wait_for(lambda: runner.status(run_path)[0] == "exited", what="the job to end")
    assert runner.status(run_path) == ("exited", 0)
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o600
    assert out.stat().st_mode & 0o777 == 0o600 and out.read_text() == "hi\n"


@pytest.mark.parametrize("bad", ["0778", "1777", "", "abc", "-1"])
def test_umask_ignores_anything_but_octal_up_to_0777(bad):
    assert runner.job_umask(make_job(1, ["true"], umask=bad)) is None
    assert runner.job_umask(make_job(1, ["true"], umask="027")) == 0o027
    assert runner.job_umask(make_job(1, ["true"])) is None


# ---- the fallback: markers and session, without a cgroup ---------------------------------
def test_fallback_markers_count_only_for_the_job_owner(rig, users):  # noqa: F811
    sp, _ = rig
    alice = users["spoold-alice"]
    env = {"PATH": "/usr/bin:/bin", "SPOOLD_JOB_ID": "11", "SPOOLD_SPOOL": str(sp.root)}
    mine = subprocess.Popen(["sleep", "1000"], env=env)
    forged = subprocess.Popen(["sleep", "1000"], env=env, user=alice.pw_uid,
                              group=alice.pw_gid, extra_groups=[])
    try:
        wait_for(lambda: {mine.pid, forged.pid} <= runner.job_pids(sp.root, 11, None),
                 what="both seen when the owner is not known")
        assert runner.job_pids(sp.root, 11, None, uid=0) == {mine.pid}
        assert runner.signal_job(sp.root, 11, None, signal.SIGKILL, uid=0) == 1
        assert mine.wait(5) == -signal.SIGKILL and forged.poll() is None
    finally:
        for p in (mine, forged):
            p.kill()
            p.wait()


def test_fallback_trusts_a_session_only_while_its_shepherd_is_provably_ours(rig, tmp_path):
    sp, _ = rig
    # A job child with no markers (env -i): only its session ties it to the job.
    shepherd, run_path = launch(sp, make_job(12, ["env", "-i", "sleep", "1000"],
                                             cwd=str(tmp_path)))
    wait_for(lambda: run_path.read_text() == "s\n", what="the job to start")
    child = wait_for(lambda: runner.job_pids(sp.root, 12, shepherd), what="the job by session")
    assert len(child) == 1 and session(next(iter(child))) == shepherd
    # A stale pid (reboot, reuse) now names a stranger's session: never used.
    stranger = subprocess.Popen(["sh", "-c", "env -i sleep 1000 & wait"],
                                start_new_session=True)
    try:
        wait_for(lambda: any(session(int(n)) == stranger.pid for n in os.listdir("/proc")
                             if n.isdigit() and int(n) != stranger.pid and alive(int(n))),
                 what="the stranger's child")
        assert runner.job_pids(sp.root, 12, stranger.pid) == set()
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()
    assert runner.signal_job(sp.root, 12, shepherd, signal.SIGKILL) == 1
    wait_for(lambda: runner.status(run_path) == ("exited", 128 + signal.SIGKILL),
             what="the shepherd to record the kill")


# ---- memory limit and usage (issue 14) ---------------------------------------------------
MEMBERSHIPS = [k for k, _ in HIERARCHIES if k in ("cgroup2", "freezer")] or ["none"]


@pytest.fixture(params=MEMBERSHIPS)
def metered(request, rig):
    """Job cgroups with accounting, per membership hierarchy: here v2 (CPU from
    cpu.stat) + v1 memory, and v1 freezer + v1 cpuacct + v1 memory."""
    sp, _ = rig
    c = Cgroups.detect(sp.root, HOST, kinds=(request.param,))
    if c is None:
        pytest.skip(f"no usable {request.param} hierarchy: {Cgroups.why_not}")
    yield sp, c
    empty_out(c)


def limited(metered):
    sp, c = metered
    if c.memory_limits is None:
        pytest.skip(f"no usable memory controller: {c.description}")
    return sp, c


def py_job(job_id: int, tmp_path: Path, alloc_mb: int, cpu_s: float = 0.0, first: str = ""):
    """A Python job that touches every page of ``alloc_mb`` MB, then burns
    ``cpu_s`` seconds of its own CPU time (a deadline on process_time, so a
    busy machine only makes it slower); ``first`` is a shell command run before."""
    code = (f"b = bytearray({alloc_mb} * 2**20)\n"
            "for i in range(0, len(b), 4096): b[i] = 1\n"
            "import time\n"
            f"while time.process_time() < {cpu_s}: pass\n")
    return make_job(job_id, ["sh", "-c", f'{first}exec "$0" -c "$1"', sys.executable, code],
                    cwd=str(tmp_path))


def run_to_end(sp: Spool, job, cg, mem_mib=None) -> tuple[int, tuple]:
    run_path = sp.run_lock(job.id, HOST)
    pid = runner.launch(sp, run_path, job, (), (), None, sp.log_path(job.id), cgroups=cg,
                        mem_mib=mem_mib)
    wait_for(lambda: runner.status(run_path, cgroups=cg, job_id=job.id)[0] != "running",
             30, f"job {job.id} to end")
    return pid, runner.status(run_path, cgroups=cg, job_id=job.id)


def test_a_job_over_its_memory_limit_is_oom_killed_and_never_ran_unlimited(metered,
                                                                           tmp_path):
    sp, cg = limited(metered)
    limit_seen = tmp_path / "limit"
    limit_file = cg._memory_dir(20) / ("memory.max" if "memory" in cg.v2_acct
                                       else "memory.limit_in_bytes")
    job = py_job(20, tmp_path, 400, first=f"cat {limit_file} > {limit_seen}; ")
    _, end = run_to_end(sp, job, cg, mem_mib=100)
    # v1 kills the biggest process (the job; the shepherd records 128+9);
    # v2's memory.oom.group kills the whole cgroup, shepherd included.
    assert end in (("exited", 128 + signal.SIGKILL), ("vanished", None)), end
    assert cg.oom_killed(20)
    assert limit_seen.read_text().strip() == str(100 * 2**20)  # in force from its 1st act
    assert cg.usage(20)["max_rss_mib"] <= 100


def test_a_job_under_its_memory_limit_completes(metered, tmp_path):
    sp, cg = limited(metered)
    _, end = run_to_end(sp, py_job(21, tmp_path, 100), cg, mem_mib=600)
    assert end == ("exited", 0), sp.log_path(21).read_text()
    assert not cg.oom_killed(21)
    assert 90 <= cg.usage(21)["max_rss_mib"] < 600


def test_memory_limit_can_be_lowered_and_raised_again(metered):
    _, cg = limited(metered)
    cg.create(22)
    for mib in (100, 600, 50, 700):
        assert cg.set_memory_limit(22, mib) == cg.memory_limits
        names = (["memory.max"] if "memory" in cg.v2_acct else
                 [n for n in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
                  if (cg._memory_dir(22) / n).exists()])
        for n in names:
            assert (cg._memory_dir(22) / n).read_text().strip() == str(mib * 2**20), n


def test_usage_counts_cpu_time_and_peak_memory_until_removed(metered, tmp_path):
    sp, cg = metered
    # This machine: CPU time from v2 cpu.stat or v1 cpuacct, memory from v1 memory.
    assert cg.description.startswith(f"cgroup v{'2' if cg.v2 else '1'}")
    assert ("CPU time from cgroup" in cg.description) == bool(
        "cpu" in cg.v2_acct or "cpuacct" in cg.v1_acct)
    if "memory" in cg.v1_acct:
        assert f"memory limit and peak from cgroup v1 memory at {cg.v1_acct['memory']}" \
            in cg.description
    _, end = run_to_end(sp, py_job(23, tmp_path, 300, cpu_s=1.0), cg)
    assert end == ("exited", 0), sp.log_path(23).read_text()
    used = cg.usage(23)
    if "cpuacct" in cg.v1_acct or "cpu" in cg.v2_acct:
        assert 0.8 <= used["cpu_s"] < 30, used
    if cg.memory_limits:
        assert 250 <= used["max_rss_mib"] < 1000, used
    assert not cg.oom_killed(23)
    cg.remove(23)
    assert cg.usage(23) == {} and not cg.oom_killed(23)
    assert not any(d.exists() for d in cg._dirs(23))  # gone from every hierarchy
    cg.remove_base()
    assert not any(b.exists() for b in cg._bases())


def test_no_memory_controller_means_no_limit_and_no_figures(cg):
    """Cgroups made without accounting (as on a machine that has none)."""
    assert cg.memory_limits is None and "no memory controller" in cg.description
    cg.create(24)
    assert cg.set_memory_limit(24, 100) is None
    assert cg.usage(24) == {} and not cg.oom_killed(24)
    assert cg.usage(99) == {} and not cg.oom_killed(99)  # a job that has no cgroup


def test_fallback_child_usage_from_the_reaped_shepherd(rig, tmp_path):
    sp, _ = rig
    pid, end = run_to_end(sp, py_job(25, tmp_path, 300, cpu_s=1.0), None)
    assert end == ("exited", 0), sp.log_path(25).read_text()
    # As the daemon's loop does: its reaping must keep the usage for the lead.
    wait_for(lambda: not alive(pid), what="the shepherd to exit (a zombie, not reaped)")
    runner.reap()
    assert not runner.running_child(pid)
    used = runner.child_usage(pid)
    assert 0.8 <= used["cpu_s"] < 30 and 250 <= used["max_rss_mib"] < 1000, used
    assert runner.child_usage(pid) == {}  # given once
    assert runner.child_usage(os.getpid()) == {}  # not a child of ours


def test_v2_accounting_reads_and_writes_the_files_a_v2_kernel_has(tmp_path):
    """The v2 memory path, which this machine cannot run (its memory controller
    is bound to v1): the same code on plain files named and formatted as a
    pure-v2 kernel has them (Documentation/admin-guide/cgroup-v2.rst)."""
    base = tmp_path / "spoold-v2"
    job = base / "job-1"
    job.mkdir(parents=True)
    for name in ("cgroup.subtree_control", "memory.max", "memory.oom.group",
                 "memory.swap.max", "cgroup.procs"):
        (base if name == "cgroup.subtree_control" else job).joinpath(name).write_text("")
    (job / "cpu.stat").write_text("usage_usec 1504000\nuser_usec 1000000\n"
                                  "system_usec 504000\nnice_usec 0\n")
    (job / "memory.peak").write_text(f"{300 * 2**20}\n")
    (job / "memory.events").write_text("low 0\nhigh 0\nmax 40\noom 1\noom_kill 0\n")
    cg = Cgroups(base, "cgroup2", v2_acct=frozenset({"cpu", "memory"}))
    assert cg.memory_limits == "cgroup v2 memory.max" and not cg.v1_acct
    assert "memory limit and peak from cgroup v2 memory" in cg.description
    cg.create(1)
    assert (base / "cgroup.subtree_control").read_text() == "+memory"
    assert cg.set_memory_limit(1, 100) == "cgroup v2 memory.max"
    assert [(job / n).read_text() for n in ("memory.max", "memory.oom.group",
                                           "memory.swap.max")] == [str(100 * 2**20), "1", "0"]
    assert cg.usage(1) == {"cpu_s": 1.5, "max_rss_mib": 300.0}
    assert not cg.oom_killed(1)  # hit the limit (max 40) but nothing was killed
    (job / "memory.events").write_text("low 0\nhigh 0\nmax 41\noom 1\noom_kill 1\n")
    assert cg.oom_killed(1)


def test_the_daemons_cgroup_folder_goes_once_it_is_idle(daemon, spool, tmp_path):
    """spoold-<hash> stays while jobs come and go (not made again for each
    burst), and the daemon removes it once no job is left."""
    cg = Cgroups.detect(spool.root, DAEMON_HOST) if os.geteuid() == 0 else None
    if cg is None:
        pytest.skip(f"no usable cgroup hierarchy: {Cgroups.why_not}")
    go = tmp_path / "go"
    job = spool.gsub("-n", "0", "--", "sh", "-c", f"until [ -e {go} ]; do sleep 0.05; done")
    wait_for(lambda: cg.exists(job), what="the job's cgroup")
    go.touch()
    spool.wait_state(job, "done")
    wait_for(lambda: not any(b.exists() for b in cg._bases()), 10,
             "the daemon's cgroup folders to go once it is idle")


def test_reap_takes_its_own_children_past_one_that_is_not_its_own():
    """runner.reap asks waitid which child ended and reaps only its own
    (shepherds and hooks): a child some other part started stays for its
    owner to reap, and ours are still collected and reported."""
    def zombie(p: subprocess.Popen) -> bool:
        return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    stranger = subprocess.Popen(["true"])
    ours = subprocess.Popen(["true"])
    runner._children[ours.pid] = ours
    wait_for(lambda: zombie(stranger) and zombie(ours), 5, "both to end")
    runner.take_reaped()
    runner.reap()
    assert ours.pid not in runner._children and ours.returncode == 0
    assert runner.take_reaped() == {ours.pid}
    assert zombie(stranger)  # still there for its owner
    assert stranger.wait(5) == 0
