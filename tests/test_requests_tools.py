"""Tests of bin/gkill, bin/gcancel, bin/ghold, bin/grelease: they only write
empty request files requests/<kind>-<id> into the spool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]
KINDS = {"gkill": "kill", "gcancel": "cancel", "ghold": "hold", "grelease": "release"}
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


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("tool", sorted(KINDS))
def test_writes_empty_request_files(spool, tool, shell):
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
    p = run("gkill", "5", environ=env(SPOOLD_SPOOL=str(spool)))
    assert p.returncode == 0 and requests(spool) == ["kill-5"]
    home = tmp_path / "home"
    hs = home / ".local/share/spoold"
    (hs / "requests").mkdir(parents=True)
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


def test_unwritable_request(spool):
    (spool / "requests" / "kill-3").mkdir()  # can not be written, even by root
    p = run("gkill", "--spool", str(spool), "3", "4")
    assert p.returncode == 1 and b"gkill: could not write the request for job 3" in p.stderr
    assert requests(spool) == ["kill-3", "kill-4"]
