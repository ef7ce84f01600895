"""Things around the code: systemd units, completions, man pages."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
