"""Tests of bin/gkill, bin/gcancel, bin/ghold, bin/grelease, bin/gpause and
bin/gresume: they only create empty request files requests/<kind>-<id> (or
requests/pause, requests/resume) in the spool, and never open, follow or
truncate an entry that is already there.  Each id is looked up first: an
unknown or ended job, a running one for gcancel/ghold/grelease, and another
user's pending job are named and skipped (exit 1), the others requested."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]
KINDS = {"gkill": "kill", "gcancel": "cancel", "ghold": "hold", "grelease": "release"}
QUEUE = {"gpause": "pause", "gresume": "resume"}
FOLDERS = ["tmp", "pending", "running", "done", "failed", "cancelled", "requests", "logs",
           "state"]

pytestmark = pytest.mark.skipif("dash" not in SHELLS, reason="dash is not installed")


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    s = tmp_path / "spool"
    for name in FOLDERS:
        (s / name).mkdir(parents=True)
    return s


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SPOOLD_")}
    e.update(extra)
    return e


def run(tool: str, *args, shell: str = "dash", environ=None, cwd=None):
    return subprocess.run([shell, str(BIN / tool), *args], capture_output=True,
                          env=env() if environ is None else environ, cwd=cwd, timeout=30)


def requests(spool: Path) -> list[str]:
    return sorted(os.listdir(spool / "requests"))


def queue(spool: Path, *ids: int, prio: int = 10) -> list[Path]:
    """Pending jobs ``ids``, as gsub names them."""
    made = []
    for i in ids:
        made.append(spool / "pending" / f"{prio:04d}-{i:08d}.yaml")
        made[-1].write_text(f"id: {i}\nargv: [true]\n")
    return made


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("tool", sorted(KINDS))
def test_writes_empty_request_files(spool, tool, shell):
    queue(spool, 7, 12)
    p = run(tool, "--spool", str(spool), "7", "0012", "7", shell=shell)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")
    kind = KINDS[tool]
    assert requests(spool) == sorted([f"{kind}-7", f"{kind}-12"])
    assert all((spool / "requests" / f).stat().st_size == 0 for f in requests(spool))


@pytest.mark.parametrize("tool", sorted(KINDS))
@pytest.mark.parametrize("bad", ["x", "0", "000", "-1", "1.5", "", "7a", " 7", "+3",
                                 "99999999999999"])
def test_bad_id_writes_nothing(spool, tool, bad):
    p = run(tool, "--spool", str(spool), "3", bad, "4")
    assert p.returncode == 2
    assert p.stderr.decode() == f"{tool}: not a job id: '{bad}'\n"
    assert requests(spool) == []


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("tool", sorted(KINDS))
def test_usage_errors(spool, tool, shell):
    for args in ([], ["--spool", str(spool)], ["--bogus", "3"], ["--spool"]):
        p = run(tool, *args, shell=shell)
        assert p.returncode == 2, args
        assert p.stderr.startswith(f"{tool}: ".encode())
        assert p.stdout == b""
    assert requests(spool) == []


@pytest.mark.parametrize("tool", sorted(KINDS))
def test_help(tool):
    for flag in ("-h", "--help"):
        p = run(tool, flag)
        assert p.returncode == 0 and p.stderr == b""
        assert p.stdout.startswith(f"usage: {tool} ".encode())
        assert f"requests/{KINDS[tool]}-ID".encode() in p.stdout


def test_spool_from_env_home_and_option_forms(spool, tmp_path):
    queue(spool, 5, 8, 9)
    p = run("gkill", "5", environ=env(SPOOLD_SPOOL=str(spool)))
    assert p.returncode == 0 and requests(spool) == ["kill-5"]
    home = tmp_path / "home"
    hs = home / ".local/share/spoold"
    for name in FOLDERS:
        (hs / name).mkdir(parents=True)
    queue(hs, 6)
    p = run("gcancel", "6", environ=env(HOME=str(home)))
    assert p.returncode == 0 and os.listdir(hs / "requests") == ["cancel-6"]
    p = run("ghold", f"--spool={spool}", "--", "8")
    assert p.returncode == 0 and "hold-8" in requests(spool)
    p = run("grelease", "--spool", "spool", "9", cwd=tmp_path)
    assert p.returncode == 0 and "release-9" in requests(spool)


def test_no_spool(tmp_path):
    p = run("gkill", "--spool", str(tmp_path / "none"), "3")
    assert p.returncode == 1
    assert p.stderr.decode() == (f"gkill: no spool at {tmp_path / 'none'} (start spoold once, "
                                 "or pass --spool / set SPOOLD_SPOOL)\n")


def test_wrappers_found_on_path(spool, tmp_path):
    """Installed side by side (or only gkill on PATH), the wrappers work by name."""
    queue(spool, 4, 11)
    for tool in KINDS:
        p = subprocess.run([tool, "--spool", str(spool), "4"], capture_output=True,
                           env=env(PATH=f"{BIN}:{os.environ['PATH']}"))
        assert p.returncode == 0, p.stderr
    assert requests(spool) == ["cancel-4", "hold-4", "kill-4", "release-4"]
    # a wrapper copied alone into another folder finds gkill on PATH
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(BIN / "gcancel", other / "gcancel")
    p = subprocess.run([str(other / "gcancel"), "--spool", str(spool), "11"], capture_output=True,
                       env=env(PATH=f"{BIN}:{os.environ['PATH']}"))
    assert p.returncode == 0, p.stderr
    assert "cancel-11" in requests(spool)


def test_queue_requests(spool):
    for tool, name in QUEUE.items():
        p = run(tool, "--spool", str(spool))
        assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")
        assert (spool / "requests" / name).stat().st_size == 0
    assert requests(spool) == ["pause", "resume"]
    for args in (["3"], ["--bogus"], ["--spool"]):
        p = run("gpause", *args)
        assert p.returncode == 2 and p.stderr.startswith(b"gpause: "), args
    p = run("gresume", "--help")
    assert p.returncode == 0 and p.stdout.startswith(b"usage: gresume [--spool DIR]\n")
    assert b"requests/resume" in p.stdout


def test_ids_up_to_eight_digits(spool):
    """Ids are at most 99999999, the width of pending names."""
    queue(spool, 99999999)
    p = run("gkill", "--spool", str(spool), "99999999", "0000099999999")
    assert p.returncode == 0 and requests(spool) == ["kill-99999999"]
    p = run("gkill", "--spool", str(spool), "100000000")
    assert p.returncode == 2 and p.stderr == b"gkill: not a job id: '100000000'\n"


# ---------------------------------------------------------------- entries already there
def planted_message(tool: str, name: str) -> bytes:
    return (f"{tool}: requests/{name} exists and is not your request (a folder, a link, a "
            "fifo or another user's file); spoold removes such entries within a few seconds: "
            "try again\n").encode()


def target_file(tmp_path: Path) -> Path:
    t = tmp_path / "root-only"
    t.write_text("secret\n")
    t.chmod(0o600)
    os.utime(t, (1_000_000_000, 1_000_000_000))
    return t


def plant(kind: str, at: Path, tmp_path: Path) -> None:
    if kind == "folder":
        at.mkdir()
    elif kind == "link to a file":
        at.symlink_to(target_file(tmp_path))
    elif kind == "link to a folder":
        at.symlink_to(tmp_path)
    elif kind == "dangling link":
        at.symlink_to(tmp_path / "nowhere")
    elif kind == "fifo":
        os.mkfifo(at)
    elif kind == "link to a fifo":
        os.mkfifo(tmp_path / "fifo")
        at.symlink_to(tmp_path / "fifo")
    elif kind == "link to a device":
        at.symlink_to("/dev/null")


PLANTED = ["folder", "link to a file", "link to a folder", "dangling link", "fifo",
           "link to a fifo", "link to a device"]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("kind", PLANTED)
def test_planted_entry_fails_its_request_by_name_and_the_others_are_made(spool, tmp_path,
                                                                          kind, shell):
    queue(spool, 3, 4)
    plant(kind, spool / "requests" / "kill-3", tmp_path)
    p = run("gkill", "--spool", str(spool), "3", "4", shell=shell)  # a fifo must not block
    assert (p.returncode, p.stdout, p.stderr) == (1, b"", planted_message("gkill", "kill-3"))
    assert requests(spool) == ["kill-3", "kill-4"]
    assert (spool / "requests" / "kill-4").stat().st_size == 0


@pytest.mark.parametrize("tool", sorted(QUEUE))
@pytest.mark.parametrize("kind", PLANTED)
def test_planted_entry_fails_a_queue_request_by_name(spool, tmp_path, tool, kind):
    plant(kind, spool / "requests" / QUEUE[tool], tmp_path)
    p = run(tool, "--spool", str(spool))
    assert (p.returncode, p.stderr) == (1, planted_message(tool, QUEUE[tool]))


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("tool", ["gkill", "gpause"])
def test_symlink_at_the_request_name_leaves_its_target_untouched(spool, tmp_path, tool, shell):
    target = target_file(tmp_path)
    queue(spool, 5)
    name = "kill-5" if tool == "gkill" else "pause"
    (spool / "requests" / name).symlink_to(target)
    before = target.stat()
    p = run(tool, "--spool", str(spool), *(["5"] if tool == "gkill" else []), shell=shell)
    assert p.returncode == 1
    after = target.stat()
    assert target.read_text() == "secret\n"
    assert (after.st_size, after.st_mtime_ns, after.st_mode) == (
        before.st_size, before.st_mtime_ns, before.st_mode)


@pytest.mark.parametrize("shell", SHELLS)
def test_own_request_already_there_is_success_and_left_as_it_is(spool, shell):
    queue(spool, 6, 7)
    own = spool / "requests" / "hold-6"
    own.write_text("mine\n")
    for tool, args in (("ghold", ["6", "7"]), ("gpause", [])):
        p = run(tool, "--spool", str(spool), *args, shell=shell)
        assert (p.returncode, p.stderr) == (0, b"")
        p = run(tool, "--spool", str(spool), *args, shell=shell)  # twice: still fine
        assert (p.returncode, p.stderr) == (0, b"")
    assert own.read_text() == "mine\n"
    assert requests(spool) == ["hold-6", "hold-7", "pause"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_another_users_file_is_not_our_request(spool):
    queue(spool, 8)
    other = spool / "requests" / "cancel-8"
    other.write_text("")
    os.chown(other, 65534, 65534)
    p = run("gcancel", "--spool", str(spool), "8")
    assert (p.returncode, p.stderr) == (1, planted_message("gcancel", "cancel-8"))
    assert os.stat(other).st_uid == 65534


# ---------------------------------------------------------------- ids looked up
def spread(spool: Path) -> None:
    """Job 1 pending, 2 running, 3 done, 4 failed (padded name), 5 cancelled,
    6 refused (its kept original only); 7 is no job."""
    queue(spool, 1)
    for rel in ("running/2.yaml", "done/3.yaml", "failed/00000004.yaml", "cancelled/5.yaml",
                "failed/6.orig"):
        (spool / rel).write_text("id: 0\n")


ENDED = ["job 3 already ended (done)", "job 4 already ended (failed)",
         "job 5 already ended (cancelled)", "job 6 already ended (failed)", "no such job: 7"]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("tool", sorted(KINDS))
def test_each_id_is_looked_up_and_the_others_are_still_requested(spool, tool, shell):
    """An unknown id, an ended job and (but for gkill) a running one are named
    on stderr, exit 1, no request; the pending job (and gkill's running one)
    is still requested, whatever the order of the ids."""
    spread(spool)
    p = run(tool, "--spool", str(spool), "7", "6", "5", "4", "3", "2", "1", shell=shell)
    kind = KINDS[tool]
    running = {"gkill": None,
               "gcancel": "job 2 is running: gcancel only cancels pending jobs (gkill kills it)"
               }.get(tool, "job 2 is running: only pending jobs can be held or released")
    want = [f"{tool}: {m}" for m in [*reversed(ENDED), running] if m]
    assert (p.returncode, p.stdout) == (1, b"")
    assert p.stderr.decode().splitlines() == want
    assert requests(spool) == sorted(f"{kind}-{i}" for i in ([1, 2] if running is None else [1]))


@pytest.mark.parametrize("tool", sorted(KINDS))
def test_an_unknown_id_alone_writes_nothing(spool, tool):
    p = run(tool, "--spool", str(spool), "999")
    assert (p.returncode, p.stderr) == (1, f"{tool}: no such job: 999\n".encode())
    assert requests(spool) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a tool as another user")
def test_another_users_pending_job_is_refused_by_name(tmp_path):
    """In a shared spool (pending/ and requests/ 1777) a user's gkill names
    another user's pending job and asks nothing; its own job and a root-owned
    file (a job spoold put back, whose owner is written in it) are asked."""
    base = Path(tempfile.mkdtemp(prefix="spoold-req-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        shutil.copytree(BIN, base / "bin")
        sp = base / "spool"
        for name in FOLDERS:
            (sp / name).mkdir(parents=True)
            os.chmod(sp / name, 0o1777 if name in ("pending", "requests") else 0o755)
        other, mine, roots = queue(sp, 7, 8, 9)
        os.chown(other, 1, 1)
        os.chown(mine, 65534, 65534)
        p = subprocess.run(["dash", str(base / "bin" / "gkill"), "--spool", str(sp), "7", "8", "9"],
                           capture_output=True, env=env(), user=65534, group=65534, timeout=30)
        assert (p.returncode, p.stderr.decode()) == (1, (
            "gkill: job 7 is not yours (its file pending/0010-00000007.yaml is uid 1's): only "
            "its owner or root may kill it\n"))
        assert requests(sp) == ["kill-8", "kill-9"]
        assert {os.stat(sp / "requests" / n).st_uid for n in requests(sp)} == {65534}
    finally:
        shutil.rmtree(base, ignore_errors=True)
