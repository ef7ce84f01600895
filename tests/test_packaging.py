"""Things around the code: systemd units, completions, man pages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from spoold import manpages

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("unit", ["spoold.service", "spoold-user.service"])
def test_systemd_units_verify(unit, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    text = (REPO / "contrib" / "systemd" / unit).read_text()
    assert "KillMode=process" in text and "Type=notify" in text
    assert "Restart=on-failure" in text
    # Point ExecStart at the spoold this test environment installed.
    spoold = shutil.which("spoold", path=str(Path(sys.executable).parent)) or "/bin/true"
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    text = text.replace(exec_line, f"ExecStart={spoold} --spool /tmp/spool")
    path = tmp_path / unit
    path.write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                       text=True)
    problems = [line for line in (p.stdout + p.stderr).splitlines()
                if unit in line and "Failed to" not in line]
    assert not problems, problems


def test_man_pages_come_from_help(tmp_path):
    assert manpages.main([str(tmp_path)]) == 0
    pages = sorted(p.name for p in tmp_path.iterdir())
    tools = {*manpages.SH_TOOLS, *manpages.PY_TOOLS}
    assert pages == sorted(f"{t}.1" for t in tools) and "gprio.1" in pages
    gsub = (tmp_path / "gsub.1").read_text()
    assert gsub.startswith(".TH GSUB 1") and "--gpu-mem" in gsub
    assert "--fake-gpus" in (tmp_path / "spoold.1").read_text()


def test_bash_completion_parses_and_completes_ids(tmp_path):
    spool = tmp_path / "spool"
    (spool / "pending").mkdir(parents=True)
    (spool / "running").mkdir()
    (spool / "pending" / "0010-00000012.yaml").touch()
    (spool / "running" / "7.yaml").touch()
    script = (f"source {REPO}/contrib/completion/spoold.bash; COMP_WORDS=(gkill ''); "
              "COMP_CWORD=1; _spoold_tool; printf '%s\\n' \"${COMPREPLY[@]}\"")
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                       env={"SPOOLD_SPOOL": str(spool), "PATH": "/usr/bin:/bin"})
    assert sorted(p.stdout.split()) == ["12", "7"], p.stderr


# ---- a normal (non-editable) install -------------------------------------------------------

SKIP_COPY = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                   ".hypothesis", ".pytest_cache", ".ruff_cache", "results")


def _build_wheel(src: Path, out: Path) -> None:
    """A wheel of ``src`` without the network: with this venv's setuptools, else
    with pip's build isolation from what pip is configured to reach, failing
    fast (a local index works; no network means a skip, with pip's reason)."""
    errors = []
    for extra in (["--no-build-isolation"], ["--timeout", "5", "--retries", "0"]):
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *extra,
                            "-w", str(out), str(src)], capture_output=True, text=True,
                           timeout=120)
        if p.returncode == 0:
            return
        errors.append(p.stderr.strip().splitlines()[-1:])
    pytest.skip(f"pip cannot build spoold's wheel offline here: {errors}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with spoold pip-installed from a wheel of this tree (no
    editable finder, no checkout on sys.path). Its dependencies come from this
    venv's site-packages through a .pth file, so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=SKIP_COPY)
    _build_wheel(src, tmp / "wheels")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    wheel = next((tmp / "wheels").glob("spoold-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print("
                           "sysconfig.get_path('purelib'))"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (Path(site) / "test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    package = subprocess.run([venv / "bin" / "python", "-c", "import spoold.control as c; "
                              "print(c.__file__)"], capture_output=True, text=True, cwd=tmp,
                             check=True).stdout
    assert package.startswith(str(venv)), package  # the installed copy, not the checkout
    return venv


def test_man_pages_from_a_normal_install(installed, tmp_path):
    p = subprocess.run([installed / "bin" / "python", "-m", "spoold.manpages", "man"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    pages = sorted(f.name for f in (tmp_path / "man").iterdir())
    assert pages == sorted(f"{t}.1" for t in (*manpages.SH_TOOLS, *manpages.PY_TOOLS))
    assert "--gpu-mem" in (tmp_path / "man" / "gsub.1").read_text()
    assert "ID PRIO" in (tmp_path / "man" / "gprio.1").read_text()
    assert "--stop" in (tmp_path / "man" / "spoold.1").read_text()


@pytest.mark.parametrize("shell, name", [("bash", "spoold.bash"), ("zsh", "_spoold")])
def test_completions_from_a_normal_install(installed, tmp_path, shell, name):
    p = subprocess.run([installed / "bin" / "spoold", "--completion", shell],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (REPO / "contrib" / "completion" / name).read_text()
