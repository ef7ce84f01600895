"""One spool for the whole lab: the daemon as root, jobs as their owners.

These tests need root (to create throwaway users and run the daemon as root);
elsewhere they are skipped with a visible reason. CI runs as root."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import BIN, Daemon, Spool, _kill_leftovers, fake_gpu_list, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which(
    "useradd", path="/usr/sbin:/sbin:/usr/bin:/bin"),
                                reason="multi-user tests need root and useradd")
USERS = ("spoold-alice", "spoold-bob")


def _sbin(tool: str) -> str:
    return shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin") or tool


RUNUSER = _sbin("runuser")


@pytest.fixture(scope="module")
def users():
    """Throwaway users, made once and left in place: test processes running in
    parallel share them, and deleting them under another process broke it."""
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run([_sbin("useradd"), "--user-group", "--create-home", "--shell",
                            "/bin/sh", name], capture_output=True)
            pwd.getpwnam(name)  # made here, or by a parallel test worker meanwhile
    return {n: pwd.getpwnam(n) for n in USERS}


def shared_base(prefix: str) -> tuple[Spool, Path]:
    """A folder under /tmp every user can reach: the spool (not made yet), fake
    GPUs, the bin/ tools and a home folder per throwaway user."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(base, 0o755)
    shutil.copytree(BIN, base / "bin")
    sp = Spool(base / "spool", base / "gpus.yaml")
    sp.set_gpus(fake_gpu_list(4))
    os.chmod(base / "gpus.yaml", 0o644)
    for n in USERS:
        (base / n).mkdir()
        shutil.chown(base / n, n, n)
    return sp, base


@pytest.fixture
def shared(users):
    """A spool every user can reach, the bin/ tools copied beside it, and a root daemon."""
    sp, base = shared_base("spoold-shared-")
    d = Daemon(sp, ["--poll", "0.2", "--kill-grace", "1"])
    try:
        d.start()
        yield sp, base, users
    finally:
        d.stop()
        _kill_leftovers(sp.root)
        shutil.rmtree(base, ignore_errors=True)


def as_user(name: str, *cmd: str, cwd: Path | None = None, check: bool = True):
    p = subprocess.run([RUNUSER, "-u", name, "--", *cmd], capture_output=True, cwd=cwd or "/",
                       env={"PATH": "/usr/bin:/bin", "HOME": pwd.getpwnam(name).pw_dir,
                            "USER": name})
    if check and p.returncode:
        raise AssertionError(f"{cmd} as {name}: {p.returncode} {p.stderr.decode()}")
    return p


def gsub_as(base: Path, name: str, *args: str) -> int:
    p = as_user(name, "dash", str(base / "bin" / "gsub"), "--spool", str(base / "spool"),
                *args, cwd=base / name)
    return int(p.stdout)


def test_layout_modes(shared):
    sp, base, _ = shared
    mode = {d: os.stat(sp.root / d).st_mode & 0o7777 for d in ("tmp", "pending", "requests",
                                                                 "running", "done", "logs",
                                                                 "state", "state/run")}
    assert mode["tmp"] == mode["pending"] == mode["requests"] == 0o1777
    assert mode["running"] == mode["done"] == mode["logs"] == mode["state"] == 0o755
    assert mode["state/run"] == 0o700


def test_each_job_runs_as_its_owner_and_file_fields_do_not_change_that(shared):
    sp, base, users = shared
    out = {}
    for name in USERS:
        out[name] = base / name / "who"
        gsub_as(base, name, "-n", "0", "-c", f"id -u > {out[name]}; id -g >> {out[name]}; "
                f"echo $USER $HOME >> {out[name]}")
    for name in USERS:
        wait_for(lambda n=name: out[n].exists() and len(out[n].read_text().split()) == 4)
        uid, gid, user, home = out[name].read_text().split()
        assert (int(uid), int(gid), user, home) == (users[name].pw_uid, users[name].pw_gid,
                                                    name, users[name].pw_dir)
    # A file that claims to be root's is still run as its owner.
    liar = base / "spoold-alice" / "liar"
    text = f"cmd: 'id -u > {liar}'\ngpus: 0\nuser: root\nuid: 0\n"
    as_user("spoold-alice", "sh", "-c", f"printf %s \"$0\" > {sp.root}/tmp/l.yaml && "
            f"mv {sp.root}/tmp/l.yaml {sp.root}/pending/0010-liar.yaml", text)
    ran_as = wait_for(lambda: liar.exists() and liar.read_text().strip(), what="the liar's job")
    assert int(ran_as) == users["spoold-alice"].pw_uid


def test_other_users_cannot_touch_a_job(shared):
    sp, base, users = shared
    go = base / "spoold-alice" / "go"
    j = gsub_as(base, "spoold-alice", "-n", "1", "-c",
                f"echo secret; while [ ! -e {go} ]; do sleep 0.05; done")
    p = gsub_as(base, "spoold-alice", "-n", "4", "--", "true")  # waits: GPUs held
    wait_for(lambda: sp.where(j) == "running" and sp.record(j).get("pid"))
    bob = lambda *cmd: as_user("spoold-bob", *cmd, check=False)  # noqa: E731
    gkill = str(base / "bin" / "gkill")
    # gkill tells bob at once; a request he writes himself is refused by the daemon
    refused = bob("dash", gkill, "--spool", str(sp.root), str(p))  # her pending file
    assert refused.returncode == 1 and b"not yours" in refused.stderr
    for job_id in (j, p):
        assert bob("sh", "-c", f": > {sp.root}/requests/kill-{job_id}").returncode == 0
    wait_for(lambda: not list((sp.root / "requests").iterdir()), what="requests consumed")
    assert sp.where(j) == "running" and sp.where(p) == "pending"
    pend = next((sp.root / "pending").iterdir())
    assert bob("rm", "-f", str(pend)).returncode != 0
    assert bob("mv", str(pend), str(sp.root / "pending" / "0000-x.yaml")).returncode != 0
    assert bob("sh", "-c", f"echo x >> {pend}").returncode != 0
    assert bob("cat", str(sp.root / "logs" / f"{j}.log")).returncode != 0
    assert bob("cat", str(sp.root / "running" / f"{j}.yaml")).returncode != 0
    assert bob("sh", "-c", f"echo x >> {sp.root}/running/{j}.yaml").returncode != 0
    assert bob("rm", "-f", str(sp.root / "running" / f"{j}.yaml")).returncode != 0
    log = sp.root / "logs" / f"{j}.log"
    assert os.stat(log).st_uid == users["spoold-alice"].pw_uid
    assert os.stat(log).st_mode & 0o777 == 0o600
    # The owner can: she reads her log and kills her job.
    assert as_user("spoold-alice", "cat", str(log)).stdout == b"secret\n"
    as_user("spoold-alice", "dash", gkill, "--spool", str(sp.root), str(j), str(p))
    sp.wait_state(j, "cancelled")
    sp.wait_state(p, "cancelled")


def test_planted_links_never_make_the_daemon_read_or_write_for_a_user(shared):
    sp, base, _ = shared
    secret = base / "root-only"
    secret.write_text("argv: ['true']\n")
    os.chmod(secret, 0o600)
    alice = "spoold-alice"
    as_user(alice, "ln", "-s", str(secret), str(sp.root / "pending" / "0010-link.yaml"))
    as_user(alice, "ln", "-s", "/etc/passwd", str(sp.root / "requests" / "kill-1"))
    own = base / alice / "own.yaml"
    as_user(alice, "sh", "-c", f"printf 'argv: [\"true\"]\\ngpus: 0\\n' > {own}")
    as_user(alice, "ln", str(own), str(sp.root / "pending" / "0010-hard.yaml"))
    ok = gsub_as(base, alice, "-n", "0", "--", "true")
    sp.wait_state(ok, "done")
    recs = wait_for(lambda: len(list((sp.root / "failed").glob("*.yaml"))) == 2 and [
        yaml.safe_load(p.read_text()) for p in (sp.root / "failed").glob("*.yaml")])
    reasons = sorted(r["reason"] for r in recs)
    assert "hard link" in reasons[0] and "symbolic link" in reasons[1]
    assert secret.read_text() == "argv: ['true']\n" and os.stat(secret).st_mode & 0o777 == 0o600
    assert Path("/etc/passwd").stat().st_size > 0
    assert not (sp.root / "requests" / "kill-1").exists()


@contextlib.contextmanager
def alice_daemon():
    """A user-mode daemon run by spoold-alice on her own spool: no cgroups
    (not root), so jobs are tracked by session and markers."""
    base = Path(tempfile.mkdtemp(prefix="spoold-private-", dir="/tmp"))
    os.chmod(base, 0o755)
    alice = "spoold-alice"
    check = as_user(alice, sys.executable, "-c", "import spoold, yaml, watchdog", check=False,
                    cwd=Path(__file__).resolve().parent.parent)
    if check.returncode:
        shutil.rmtree(base)
        pytest.skip(f"{alice} cannot run this Python ({sys.executable}): "
                    f"{check.stderr.decode().strip()[-120:]}")
    shutil.chown(base, alice, alice)
    gpus = base / "gpus.yaml"
    gpus.write_text(yaml.safe_dump(fake_gpu_list(2)))
    os.chmod(gpus, 0o644)
    root = base / "spool"
    repo = str(Path(__file__).resolve().parent.parent)
    out = open(base / "daemon.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([RUNUSER, "-u", alice, "--", sys.executable, "-m", "spoold.daemon",
                             "--spool", str(root), "--fake-gpus", str(gpus), "--poll", "0.2",
                             "--kill-grace", "1"],
                            cwd=repo, stdout=out, stderr=subprocess.STDOUT,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": repo, "HOME": "/tmp"})
    try:
        wait_for(lambda: list((root / "state" / "hosts").glob("*.yaml")), 20, "user daemon")
        yield root, base
    finally:
        proc.terminate()
        proc.wait(10)
        out.close()
        _kill_leftovers(root)
        shutil.rmtree(base, ignore_errors=True)


def test_user_mode_daemon_refuses_files_it_does_not_own(users, tmp_path):
    with alice_daemon() as (root, _):
        assert os.stat(root).st_mode & 0o777 == 0o700
        (root / "tmp" / "x.yaml").write_text("argv: ['true']\ngpus: 0\n")  # root's file
        os.rename(root / "tmp" / "x.yaml", root / "pending" / "0010-foreign.yaml")
        rec = wait_for(lambda: next((yaml.safe_load(p.read_text())
                                     for p in (root / "failed").glob("*.yaml")), None))
        assert "owned by uid 0" in rec["reason"]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_non_root_daemon_kills_a_jobs_setsid_child_without_cgroups(users):
    """issue 11: without cgroup access the daemon keeps session and marker
    tracking; gkill still reaches a child that called setsid."""
    with alice_daemon() as (root, base):
        assert "no job cgroups" in (base / "daemon.out").read_text()
        pid_file = base / "child"
        p = as_user("spoold-alice", "env", f"SPOOLD_SPOOL={root}", "dash", str(BIN / "gsub"),
                    "-n", "0", "-c",
                    f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 1000' & sleep 1000")
        job = int(p.stdout)
        child = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                             what="the setsid child"))
        as_user("spoold-alice", "env", f"SPOOLD_SPOOL={root}", "dash", str(BIN / "gkill"),
                str(job))
        wait_for(lambda: (root / "cancelled" / f"{job}.yaml").exists(), 20, "the kill")
        wait_for(lambda: _gone(child), 10, "the setsid child to die")
