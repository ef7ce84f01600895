"""The documents that state the contract are checked against the code: a
field, a state file or an option that one of them names and the other does
not is a test failure, not a drift found by a user."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

from spoold import job as jobmod

FORMAT = (REPO / "docs" / "spool-format.md").read_text()
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def _section(doc: str, title: str) -> str:
    start = doc.index(f"## {title}")
    end = doc.find("\n## ", start + 1)
    return doc[start:end if end > 0 else None]


def _first_column(section: str) -> set[str]:
    names = set()
    for line in section.splitlines():
        m = re.match(r"^\| (`[^|]*`) \|", line)
        if m:
            names.update(re.findall(r"`([^`]+)`", m.group(1)))
    return names


def test_every_job_field_is_documented_and_every_documented_field_exists():
    documented = _first_column(_section(FORMAT, "JOB FIELDS"))
    assert documented == set(jobmod.KNOWN_FIELDS), (
        f"in the code only: {sorted(set(jobmod.KNOWN_FIELDS) - documented)}; "
        f"in docs/spool-format.md only: {sorted(documented - set(jobmod.KNOWN_FIELDS))}")


def test_every_state_file_documented_is_one_the_code_names():
    from spoold.spool import Spool

    sp = Spool("/s")
    made = {str(p.relative_to("/s")) for p in (
        sp.host_file("HOST"), sp.host_lock("HOST"), sp.run_lock(0, "HOST").with_name("ID.lock"),
        sp.paused_flag, sp.daemon_log, sp.state / "next-id", sp.state / "next-id.lock",
        sp.state / "max-pending", sp.state / "arrays.lock", sp.state_ids / "ID")}
    documented = {n for n in _first_column(_section(FORMAT, "STATE")) if n.startswith("state/")}
    assert documented == made
    code = "".join(p.read_text() for p in (REPO / "spoold").glob("*.py"))
    for name in ("arrays.lock", "max-pending", "next-id.lock"):
        assert f'"{name}"' in code, f"{name} is documented but no code names it"


def test_docs_cite_only_files_the_repository_has():
    for doc in DOCS:
        text = doc.read_text()
        assert "DESIGN.md" not in text and "../shared" not in text, doc.name
        for path in re.findall(r"`((?:docs|contrib|bench|spoold|bin|tests)/[\w./-]+)`", text):
            assert (REPO / path.rstrip("/")).exists() or "<" in path or "*" in path, (
                f"{doc.name} names {path}, which the repository does not have")


def test_every_daemon_option_is_documented():
    out = subprocess.run([sys.executable, "-m", "spoold.daemon", "--help"],
                         capture_output=True, text=True, check=True).stdout
    options = set(re.findall(r"(--[a-z][a-z-]+)", out)) - {"--help"}
    text = "".join(doc.read_text() for doc in DOCS)
    missing = sorted(o for o in options if f"`{o}" not in text and f"{o} " not in text
                     and f"{o}`" not in text)
    assert not missing, f"spoold options no document mentions: {missing}"
