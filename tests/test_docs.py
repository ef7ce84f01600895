"""The documents that state the contract are checked against the code: a
field, a state file or an option that one of them names and the other does
not is a test failure, not a drift found by a user."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from conftest import REPO, tool_env, wait_for
from test_hosts import start_host

from spoold import job as jobmod
from spoold.spool import Spool as RealSpool

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
        sp.daemon_log.with_name("spoold.log.N"),  # its rotations (RotatingFileHandler)
        sp.state / "max-pending", sp.state / "arrays.lock", sp.state_ids / "ID",
        sp.state / "hosts" / "HOST.prom", sp.state / "priority" / "ID",
        sp.drain_dir("HOST") / "GPU.yaml")}
    documented = {n for n in _first_column(_section(FORMAT, "STATE")) if n.startswith("state/")}
    assert documented == made
    code = "".join(p.read_text() for p in (REPO / "spoold").glob("*.py"))
    for name in ("arrays.lock", "max-pending", "next-id.lock", "priority"):
        assert f'"{name}"' in code, f"{name} is documented but no code names it"


def test_docs_cite_only_files_the_repository_has():
    for doc in DOCS:
        text = doc.read_text()
        assert "DESIGN.md" not in text and "../shared" not in text, doc.name
        for path in re.findall(r"`((?:docs|contrib|bench|spoold|bin|tests)/[\w./-]+)`", text):
            assert (REPO / path.rstrip("/")).exists() or "<" in path or "*" in path, (
                f"{doc.name} names {path}, which the repository does not have")
        for ref in re.findall(r"`(spoold(?:\.\w+)+)`", text):  # spoold.job.MAX_ID
            assert _resolves(ref), f"{doc.name} names {ref}, which the code does not have"


def _resolves(ref: str) -> bool:
    """Whether ``spoold.module[.attr...]`` names something the code has."""
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_daemon_option_is_documented():
    out = subprocess.run([sys.executable, "-m", "spoold.daemon", "--help"],
                         capture_output=True, text=True, check=True).stdout
    options = set(re.findall(r"(--[a-z][a-z-]+)", out)) - {"--help"}
    text = "".join(doc.read_text() for doc in DOCS)
    missing = sorted(o for o in options if f"`{o}" not in text and f"{o} " not in text
                     and f"{o}`" not in text)
    assert not missing, f"spoold options no document mentions: {missing}"


# ---- a live spool holds only what the doc names -----------------------------------------

# The upper-case words of the doc's names (FILE NAMES says what each stands for).
PLACEHOLDERS = {
    "ID": r"0*[1-9][0-9]{0,7}", "IIIIIIII": r"[0-9]{8}", "PPPP": r"[0-9]{4}",
    "NNNN": r"[0-9]{1,4}", "HOST": r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", "NAME": r"[^/]+",
    "XXXXXXXX": r"[A-Za-z0-9]{8}", "N": r"[1-9]", "GPU": r"0|[1-9][0-9]{0,3}",
    "UUID": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
}


def _rows(section: str):
    """The cells of each table row in ``section`` (header and rule lines too)."""
    for line in section.splitlines():
        if line.startswith("| "):
            yield [c.strip() for c in line.strip().strip("|").split("|")]


def documented_paths() -> set[str]:
    """Each path the doc names, relative to SPOOL, placeholders and all: a
    FILE NAMES pattern in each folder of its "where" cell, and STATE's files."""
    names = _section(FORMAT, "FILE NAMES")
    paths = set()
    for cells in _rows(names):
        paths.update(f"{folder}/{name}" for folder in re.findall(r"\b([a-z]+)/", cells[1])
                     for name in re.findall(r"`([^`]+)`", cells[0]))
    for cells in _rows(_section(FORMAT, "STATE")):
        paths.update(n for n in re.findall(r"`([^`]+)`", cells[0]) if n.startswith("state/"))
    return paths


def top_folders() -> set[str]:
    """The folders of the SYNOPSIS picture."""
    picture = _section(FORMAT, "SYNOPSIS").split("```")[1]
    return set(re.findall(r"^  ([a-z]+)/", picture, re.M))


def to_regex(pattern: str) -> re.Pattern:
    notation = _section(FORMAT, "FILE NAMES").split("\n|")[0]
    parts = []
    for token in re.split(r"([A-Z]+)", pattern):
        if token.isupper():
            assert token in PLACEHOLDERS and re.search(rf"\b{token}\b", notation), (
                f"docs/spool-format.md: `{pattern}` uses {token}: say in FILE NAMES what it "
                "stands for, and give its regex in PLACEHOLDERS")
            parts.append(f"(?:{PLACEHOLDERS[token]})")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def described() -> tuple[dict, dict]:
    """({pattern: regex} of documented entries, the same for the folders:
    SYNOPSIS's and each folder a documented path lies in)."""
    paths = documented_paths()
    folders = top_folders() | {"/".join(p.split("/")[:i]) for p in paths
                               for i in range(1, p.count("/") + 1)}
    return {p: to_regex(p) for p in paths}, {d: to_regex(d) for d in folders}


def tree(root) -> tuple[set[str], set[str]]:
    """(entries that are not folders, folders) under ``root``, dot files
    included, relative to it; links are listed, never followed."""
    files, folders = set(), set()
    for here, subdirs, names in os.walk(root):
        for name in (*subdirs, *names):
            path = os.path.join(here, name)
            rel = os.path.relpath(path, root)
            (folders if stat.S_ISDIR(os.lstat(path).st_mode) else files).add(rel)
    return files, folders


def unmatched(paths, regexes: dict) -> list[str]:
    return sorted(p for p in paths if not any(rx.fullmatch(p) for rx in regexes.values()))


def matched(paths, regexes: dict) -> set[str]:
    return {pat for pat, rx in regexes.items() if any(rx.fullmatch(p) for p in paths)}


def test_names_are_placeholders_the_doc_explains():
    files, folders = described()
    assert "pending/PPPP-IIIIIIII.yaml" in files and "state/run/HOST" in folders
    assert files["pending/PPPP-IIIIIIII.yaml"].fullmatch("pending/0010-00000007.yaml")
    assert not files["pending/PPPP-IIIIIIII.yaml"].fullmatch("pending/10-7.yaml/x")
    assert files["state/run/HOST/ID.lock"].fullmatch("state/run/node-1.lab/42.lock")
    assert not unmatched(["requests/kill-7", "requests/pause"], files)
    assert unmatched(["requests/kill-", "requests/stop-7", "state/run/a/b/7.lock"], files)


def _sync_that_looks(folder) -> dict:
    """A ``sync`` and an ``mv`` first on PATH that list tmp/ before they run:
    gsub calls them while its files are still in tmp/, so their names can be
    checked too."""
    seen = folder / "tmp-seen"
    fake = folder / "bin"
    fake.mkdir()
    for prog in ("sync", "mv"):
        (fake / prog).write_text(f'#!/bin/sh\nfind "$SPOOLD_SPOOL/tmp" -mindepth 1 >> {seen}\n'
                                 f'exec {shutil.which(prog)} "$@"\n')
        (fake / prog).chmod(0o755)
    return {"PATH": f"{fake}{os.pathsep}{tool_env()['PATH']}", "SEEN": str(seen)}


def test_a_live_spool_holds_only_paths_the_doc_describes(spool, daemon, tmp_path):
    """Jobs in every state, a refused file, a dropped file, an array, two
    hosts, a paused queue and requests left for a stopped daemon: every entry
    in the spool, and every name gsub uses in tmp/, is one the doc names."""
    root, sp = spool.root, RealSpool(spool.root)
    other = start_host(spool, "other", 1, "--host-timeout", "60")  # no flaky "host lost"
    looking = _sync_that_looks(tmp_path)
    try:
        ok = spool.gsub("-n", "0", "--", "true", env=looking)
        array = [int(i) for i in spool.run("gsub", "-n", "0", "--array", "0-2%1", "--", "true",
                                           env=looking).stdout.split()]
        bad = spool.gsub("-n", "0", "--", "false")
        out = tmp_path / "out.txt"
        to_file = spool.gsub("-n", "0", "-o", str(out), "--on-finish", "echo hook", "--",
                             "echo", "to a file")
        held = spool.gsub("-n", "0", "--hold", "--", "true")
        victim = spool.gsub("-n", "0", "--", "sleep", "60")
        running = spool.gsub("-n", "0", "--", "sleep", "60")
        spool.drop("junk.yaml", "argv: [not closed\n")
        spool.drop("mine.yaml", "argv: [\"true\"]\ngpus: 0\nname: dropped\n")
        spool.wait_state(victim, "running")
        spool.run("gkill", str(victim))
        assert spool.wait_state(victim, "cancelled")["kill_reason"] == "killed on request"
        for job_id in (ok, *array, to_file):
            spool.wait_state(job_id, "done")
        assert spool.wait_state(bad, "failed")["reason"] == "exit code 1"
        orig = wait_for(lambda: list((root / "failed").glob("*.orig")), what="a refused file")
        assert "rejected" in spool.wait_state(int(orig[0].stem), "failed")["reason"]
        renamed = re.compile(r"pending/mine\.yaml: dropped without an id; now job (\d+)")
        mine = int(wait_for(lambda: renamed.search(sp.daemon_log.read_text()),
                            what="the dropped file's id").group(1))
        assert spool.wait_state(mine)["name"] == "dropped" and spool.where(mine) == "done"
        spool.wait_state(running, "running")
        spool.run("gpause")
        wait_for(lambda: sp.paused_flag.exists() and not any(sp.requests.iterdir()),
                 what="the queue paused")
        queued = spool.gsub("-n", "0", "-p", "5", "--", "true")
    finally:
        other.stop()  # first: its --host-timeout is short, the first daemon's is not
        daemon.stop()
    # What only a stopped daemon leaves: requests and files dropped without an id.
    for tool in ("gkill", "gcancel", "ghold", "grelease"):
        spool.run(tool, str(held))
    spool.run("gresume")
    spool.run("gpause")
    spool.drop("0003-later.yaml", "argv: [\"true\"]\n")
    spool.drop("later.yaml", "argv: [\"true\"]\n")

    assert out.read_text() == "to a file\n"
    assert sp.log_path(to_file).read_text() == "hook\n"  # the output went to -o FILE
    assert {spool.where(held), spool.where(queued), spool.where(running)} == {"pending",
                                                                              "running"}
    files, folders = described()
    entries, subfolders = tree(root)
    assert not unmatched(entries, files), "entries in the spool docs/spool-format.md never names"
    assert not unmatched(subfolders, folders), "folders docs/spool-format.md never names"

    # The other way: each folder the doc names is there, and each name was seen,
    # the few that a run this short can not make aside.
    in_tmp = {os.path.relpath(line, root)
              for line in Path(looking["SEEN"]).read_text().split()}
    assert {p for p in in_tmp if p.count("/") > 1}, "gsub --array staged nothing in tmp/"
    in_tmp |= {str(sp.tmp_path(name).relative_to(root)) for name in ("7.yaml", "requeue-8")}
    assert not unmatched(in_tmp, files | folders), "names in tmp/ the doc never names"
    never_seen = {"state/spoold.log.N": "rotated after 1 MiB of log",
                  "state/priority/ID": "only once root raises a priority (gprio)",
                  "state/drain/HOST/GPU.yaml": "only once a GPU is drained",
                  "requests/drain-gGPU.HOST": "gdrain (tests/test_health.py)",
                  "requests/undrain-gGPU.HOST": "gdrain --undo (tests/test_health.py)",
                  "requests/prio-ID": "gprio of a job SLURM queues (test_slurm_executor.py)"}
    if os.geteuid() != 0:
        never_seen["state/ids/ID"] = "made only in a shared spool (a root daemon)"
        never_seen["tmp/ID.UUID"] = "gsub's name for one job in a shared spool only"
    else:  # (in a private spool gsub's ID.IIIIIIII is one of these)
        never_seen["tmp/ID.XXXXXXXX"] = "mktemp: only where gsub's random name was taken"
    seen = entries | in_tmp
    assert set(files) - matched(seen, files) == set(never_seen)
    assert set(folders) - matched(subfolders | in_tmp, folders) <= {
        "state/priority", "state/drain", "state/drain/HOST"}
