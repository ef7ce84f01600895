"""README.md runs as written.

Owns: the tour (the ``console`` block under "## A tour") run command by
command in one bash, as a newcomer pastes it, and compared with the output the
README shows; and the README's test command being the one ``.ci/run`` runs.

How the tour is checked:
- ``$ `` lines are commands, the lines up to the next one are their output;
  stdout and stderr both count, and every command must exit 0.
- It runs as the README's reader: a normal user (root's spool is a shared
  one, and its gstat shows more). Run as root, the tour runs as the throwaway
  user ``spoold-alice`` (test_multiuser's ``users``), in a HOME made under
  /tmp, which that user can reach (tmp_path is root's alone); otherwise as
  the user running the tests, in a HOME under tmp_path. The tour's spool
  lives in that HOME. bin/ and the venv's console scripts come first on PATH,
  and SPOOLD_SPOOL is unset.
- Only what cannot repeat is normalised: the user name (the README shows
  ``alice``), runs of spaces (column widths follow the user name), clock
  times and durations in seconds. Ids, GPUs, reasons and commands must match.
- Nothing sleeps blindly: a command that starts spoold in the background is
  followed by a wait for its heartbeat, and a read-only command (``ls``,
  ``gstat``, ``ghist``, ``glog``) whose output shows a state the daemon reaches
  a moment later is run again until it matches or a deadline passes.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO, _kill_leftovers, tool_env, wait_for
from test_multiuser import users  # noqa: F401 - a fixture, asked for only as root

README = (REPO / "README.md").read_text()
READ_ONLY = {"ls", "gstat", "ghist", "glog"}
# What changes from run to run, and what stands for it.
VOLATILE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\b\d+s\b)")
VOLATILE_RX = {True: r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", False: r"\d+s"}
README_USER = "alice"


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.M | re.S)


def tour_steps(block: str) -> list[tuple[str, list[str]]]:
    """[(command, [shown output lines])] of a ``$ command`` transcript."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"output before the first command: {line!r}"
            steps[-1][1].append(line)
    return steps


def normalise(text: str, user: str) -> list[str]:
    """Lines with the user name as the README's, and single spaces."""
    text = re.sub(rf"(?<![\w-]){re.escape(user)}(?![\w-])", README_USER, text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def shown_pattern(line: str) -> re.Pattern:
    """A shown output line as a regex: volatile parts match any value."""
    parts = VOLATILE.split(" ".join(line.split()))
    return re.compile("".join(VOLATILE_RX[":" in p] if i % 2 else re.escape(p)
                              for i, p in enumerate(parts)))


def matches(shown: list[str], actual: list[str]) -> bool:
    return len(shown) == len(actual) and all(
        shown_pattern(s).fullmatch(a) for s, a in zip(shown, actual, strict=True))


class Shell:
    """One bash fed a command at a time, as a person at a prompt would."""

    def __init__(self, env: dict, cwd: Path, **as_user):
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, cwd=cwd, **as_user)
        self.mark = f"--- end of command {uuid.uuid4().hex}"

    def run(self, command: str, timeout: float = 20.0) -> tuple[int, str]:
        self.proc.stdin.write(f"{command}\nprintf '\\n%s %s\\n' '{self.mark}' $?\n".encode())
        self.proc.stdin.flush()
        out = b""
        done = re.compile(rb"\n" + re.escape(self.mark.encode()) + rb" (\d+)\n$")

        def finished():
            nonlocal out
            if select.select([self.proc.stdout], [], [], 0.05)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"bash ended during {command!r}: {out.decode(errors='replace')}"
                out += chunk
            return done.search(out)

        m = wait_for(finished, timeout, f"{command!r} to end", interval=0)
        text = out[:m.start()].decode(errors="replace")
        return int(m.group(1)), text

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def step_output(shell: Shell, command: str, shown: list[str], user: str) -> tuple[bool, str]:
    """Run ``command``; a read-only one again until it shows ``shown`` (or 10 s
    pass). Whether it did, and what it printed last."""
    printed = [""]

    def attempt() -> bool:
        rc, printed[0] = shell.run(command)
        assert rc == 0, f"`{command}` exited {rc}:\n{printed[0]}"
        return matches(shown, normalise(printed[0], user))

    ok = attempt()
    if not ok and command.split()[0] in READ_ONLY:
        try:
            ok = wait_for(attempt, 10, f"`{command}` to show the README's output")
        except AssertionError:
            pass
    return ok, printed[0]


def stop_tour_daemon(spool: Path) -> None:
    """SIGTERM the spoold the tour started (pid from its heartbeat), then kill
    the jobs it left, as jobs outlive daemons by design."""
    for beat in (spool / "state" / "hosts").glob("*.yaml"):
        pid = yaml.safe_load(beat.read_text()).get("pid")
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                ours = f"SPOOLD_SPOOL={spool}\0".encode() in f.read()
            if ours:
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda p=pid: _gone(p), 20, f"the tour's spoold ({pid}) to stop")
        except (OSError, TypeError):
            continue
    _kill_leftovers(spool)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def newcomer(request, tmp_path):
    """(HOME, name, Popen arguments that run as them) for the README's reader."""
    if os.geteuid() != 0:
        (tmp_path / "home").mkdir()
        yield tmp_path / "home", pwd.getpwuid(os.geteuid()).pw_name, {}
        return
    pw = request.getfixturevalue("users")["spoold-alice"]
    as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    p = subprocess.run([sys.executable, "-c", "import spoold, yaml, watchdog"],
                       capture_output=True, cwd="/", **as_user)
    if p.returncode:
        pytest.skip(f"{pw.pw_name} cannot run this Python ({sys.executable}); .ci/run "
                    f"lets users traverse /root: {p.stderr.decode()[-300:]}")
    home = Path(tempfile.mkdtemp(prefix="spoold-readme-", dir="/tmp"))
    os.chown(home, pw.pw_uid, pw.pw_gid)
    try:
        yield home, pw.pw_name, as_user
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_tour_prints_what_the_readme_shows(newcomer):
    home, user, as_user = newcomer
    blocks = code_blocks(section("A tour"), "console")
    assert len(blocks) == 1, "the tour is one ```console block"
    # bin/ and the venv first on PATH, no SPOOLD_SPOOL
    env = tool_env(HOME=str(home), USER=user, LOGNAME=user)
    shell = Shell(env, home, **as_user)
    spool = None
    try:
        for command, shown in tour_steps(blocks[0]):
            expected = normalise("\n".join(shown), README_USER)
            ok, printed = step_output(shell, command, expected, user)
            assert ok, (f"README.md's tour: `{command}` printed (as {user})\n{printed}"
                        "--- but the README shows\n" + "\n".join(shown))
            if re.search(r"\bspoold\b.*&", command):
                # For people the README's `sleep 1` is enough; a busy CI box may need more.
                spool = Path(shell.run('printf %s "$SPOOLD_SPOOL"')[1])
                wait_for(lambda s=spool: any((s / "state" / "hosts").glob("*.yaml")), 20,
                         f"the tour's spoold to start on {spool}")
        assert spool is not None, "the tour starts no spoold of its own"
    finally:
        shell.close()
        if spool is not None:
            stop_tour_daemon(spool)


def test_the_matcher_tells_drift_from_timing():
    shown = ["1   train  alice  3     1s       2h00m  python3 -c 'x'",
             "2   cancelled  143   big   alice  0,1   2026-11-24 01:40:45  2s  killed"]
    ran = ("1   train  root  3     12s       2h00m  python3 -c 'x'\n"
           "2   cancelled  143   big   root  0,1   2031-01-02 13:04:05  0s  killed\n")
    assert matches(normalise("\n".join(shown), "alice"), normalise(ran, "root"))
    for drift in ("2h00m", "0,1", "143", "'x'"):
        changed = ran.replace(drift, drift + "0", 1)
        assert not matches(normalise("\n".join(shown), "alice"), normalise(changed, "root"))
    assert not matches(shown, normalise(ran + "3 extra line\n", "root"))


def test_the_readme_test_command_is_the_one_ci_runs():
    blocks = code_blocks(section("Run the tests (one command)"), "sh")
    assert len(blocks) == 1 and len(blocks[0].splitlines()) == 1, blocks
    command = blocks[0].strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci, f".ci/run does not run the README's test command {command!r}"
