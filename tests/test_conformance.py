"""sh and Python on the same inputs (issue 12: one copy of each rule).

Where a rule must exist twice, once in bin/ (plain sh, no Python) and once in
spoold/, both are run here on the same inputs and must give the same answer:

- durations: gsub's ``_gdur`` (``-t``) and ``util.parse_duration``;
- the spool used without --spool: gsub and gkill (and the tools that exec it)
  and ``spool.default_spool`` (gstat, ghist, glog, grequeue, spoold);
- which folder job N is in: gsub ``--wait``'s ``_gwhere`` and ``Spool.find``;
  with pending/ too, bin/gspool.sh's ``_gfind`` (gkill and its wrappers,
  gprio) and the pending names ``Spool.list_pending`` reads;
- the id counter and its recovery: gsub's ``_ghint``/``_grecover`` and
  ``Spool.allocate_ids`` on identical copies of damaged spools;
- the defaults and the priority range: gsub's ``-n``/``-p`` and job.py.

A disagreement is a bug on one side; every test lists all disagreements it
finds at once.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, SCRIPTS

from spoold import job as jobmod
from spoold import spool as spoolmod
from spoold import toolbase, util
from spoold.options import parse_args

GSUB = BIN / "gsub"
PATH = f"{SCRIPTS}:/usr/bin:/bin"


def new_spool(root: Path, shared: bool = False) -> spoolmod.Spool:
    sp = spoolmod.Spool(root)
    sp.create(shared=shared)
    return sp


def sh(tool: str, *args: str, env: dict | None = None, cwd: Path | None = None,
       **kw) -> subprocess.CompletedProcess:
    """A bin/ tool under dash, with only the environment given (and PATH)."""
    return subprocess.run(["dash", str(BIN / tool), *args], capture_output=True, timeout=30,
                          env={"PATH": PATH, **(env or {})}, cwd=cwd, **kw)


def gsub(spool: Path, *args: str) -> subprocess.CompletedProcess:
    return sh("gsub", "--spool", str(spool), *args)


def pending_job(spool: Path, job_id: int) -> tuple[str, dict]:
    """(name, parsed job) of job ``job_id``'s file in pending/."""
    name = next(n for n in os.listdir(spool / "pending") if n.endswith(f"-{job_id:08d}.yaml"))
    return name, yaml.safe_load((spool / "pending" / name).read_bytes())


# ---------------------------------------------------------------- durations
DURATIONS = [
    # accepted by SLURM's --time or by the unit suffixes
    "90s", "90S", "10m", "10M", "2h", "2H", "1d", "1D", "45", "1", "007", "0001", "5:30",
    "0:0:1", "1:30:00", "100:00:00", "1:100:00", "0:90", "1-0", "1-00", "1-2", "0-1", "1-2:30",
    "1-0:0:10", "2-12:30:45", "00-00:00:01", "infinite", "INFINITE", "unlimited", "UNLIMITED",
    "999999999999", "0000000000000090s", "999999999999d",
    "999999999999-999999999999:999999999999:999999999999",
    # refused
    "", "0", "0s", "00:00", "0:0:0", "0-0", "0-0:0:0", "-1", "+5", "1.5", "1.5h", "1e3",
    " 90s", "90s ", "90 s", "90s\n", "1h30m", "Infinite", "inf", "none", "1:2:3:4", "1-2-3",
    "1-2:3:4:5", "1-", "-1-2", ":30", "30:", "1::2", "1-:30", "s", "h", "1x", "1w",
    "\u0661\u0662", "1\u00b2", "9999999999999", "9999999999999s", "1-9999999999999", "0x10",
    "1:30s", "1-2h", "1:2-3",
]


def random_durations(n: int = 150, seed: int = 12) -> list[str]:
    """Strings built from the pieces durations are made of (fixed seed)."""
    rnd = random.Random(seed)
    pieces = ["0", "1", "7", "00", "59", "60", "100", "999999999999", "1000000000000",
              ":", ":", "-", "s", "m", "h", "d", "H", ".", " ", "x"]
    return ["".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 5))) for _ in range(n)]


def python_duration(text: str) -> tuple[bool, int | None]:
    try:
        return True, util.parse_duration(text)
    except ValueError:
        return False, None


def test_durations_gsub_and_parse_duration_agree(tmp_path):
    """gsub -t and util.parse_duration accept the same strings with the same
    meaning; 'infinite' is no limit (gsub writes no time_limit: None)."""
    root = new_spool(tmp_path / "spool").root
    inputs = list(dict.fromkeys(DURATIONS + random_durations()))
    disagree, accepted = [], 0
    for text in inputs:
        ok, seconds = python_duration(text)
        p = gsub(root, "-n", "0", "-t", text, "true")
        if p.returncode == 0:
            accepted += 1
            sh_value = pending_job(root, int(p.stdout))[1].get("time_limit")
            if not ok or sh_value != seconds:
                disagree.append((text, "gsub", sh_value, "python", seconds if ok else "refused"))
        else:
            assert p.returncode == 2 and p.stderr.startswith(b"gsub: -t"), (text, p.stderr)
            if ok:
                disagree.append((text, "gsub refused", p.stderr, "python", seconds))
    assert not disagree
    assert 40 < accepted < len(inputs) - 40  # both kinds of input really were tried


@pytest.mark.parametrize("text, seconds", [("1-00", 86400), ("1-2:30", 95400), ("90", 5400),
                                           ("2H", 7200), ("infinite", None)])
def test_spoold_default_time_limit_takes_gsubs_forms(tmp_path, text, seconds):
    o = parse_args(["--spool", str(tmp_path / "s"), "--default-time-limit", text])
    assert o.default_time_limit == seconds


@pytest.mark.parametrize("text", ["1.5h", "", " 2h", "0"])
def test_spoold_default_time_limit_refuses_what_gsub_refuses(tmp_path, text):
    assert gsub(new_spool(tmp_path / "spool").root, "-t", text, "true").returncode == 2
    with pytest.raises(SystemExit):
        parse_args(["--spool", str(tmp_path / "s"), "--default-time-limit", text])


def test_ghist_takes_gsubs_forms_but_not_infinite(tmp_path):
    root = new_spool(tmp_path / "spool").root

    def ghist(*args):
        return subprocess.run([SCRIPTS / "ghist", "--spool", str(root), *args],
                              capture_output=True, timeout=30)

    assert ghist("--since", "1-00").returncode == 0
    assert ghist("--clean", "--older-than", "1-12:00").returncode == 0
    for args in (["--clean", "--older-than", "infinite"], ["--since", "infinite"],
                 ["--clean", "--older-than", "1.5h"]):
        p = ghist(*args)
        assert p.returncode == 2 and b"usage: ghist" in p.stderr, args


# ---------------------------------------------------------------- the default spool
# (case, environment, cwd, the folder every tool must pick or None, text that
# every refusal must contain). {t} is the test's folder. A folder that is not a
# spool is refused by every tool but spoold, which would create it.
SPOOL_CASES = [
    ("SPOOLD_SPOOL absolute", {"SPOOLD_SPOOL": "{t}/envspool", "HOME": "{t}/home"}, "work",
     "envspool", None),
    ("SPOOLD_SPOOL unset", {"HOME": "{t}/home"}, "work", "home/.local/share/spoold", None),
    ("SPOOLD_SPOOL empty", {"SPOOLD_SPOOL": "", "HOME": "{t}/home"}, "work",
     "home/.local/share/spoold", None),
    ("SPOOLD_SPOOL relative", {"SPOOLD_SPOOL": "rel", "HOME": "{t}/home"}, "work", "work/rel",
     None),
    ("SPOOLD_SPOOL ../", {"SPOOLD_SPOOL": "../up", "HOME": "{t}/home"}, "work/sub", "work/up",
     None),
    ("HOME relative", {"HOME": "relhome"}, "work", "work/relhome/.local/share/spoold", None),
    ("cwd through a link", {"SPOOLD_SPOOL": "rel", "HOME": "{t}/home", "PWD": "{t}/link"},
     "link", "work/rel", None),
    ("stale PWD", {"SPOOLD_SPOOL": "rel", "HOME": "{t}/home", "PWD": "{t}/other"}, "work",
     "work/rel", None),
    ("HOME unset", {}, "work", None, "HOME is not set"),
    ("HOME empty", {"HOME": ""}, "work", None, "HOME is not set"),
    ("both empty", {"SPOOLD_SPOOL": "", "HOME": ""}, "work", None, "HOME is not set"),
    ("SPOOLD_SPOOL names no spool", {"SPOOLD_SPOOL": "{t}/nowhere", "HOME": "{t}/home"},
     "work", "nowhere", "no spool at {t}/nowhere"),
]
# Every folder any case might pick, right or wrong; each one a spool.
CANDIDATES = ["envspool", "home/.local/share/spoold", "work/rel", "work/up", "other/rel",
              "work/relhome/.local/share/spoold", "work/sub/rel", "rel"]


def seed_candidates(t: Path) -> dict[str, Path]:
    """Each candidate spool with job 1 done, named and logged after its label,
    and job 7 pending, so any tool's choice shows in what it prints or writes."""
    (t / "work" / "sub").mkdir(parents=True)
    (t / "link").symlink_to(t / "work")
    out = {}
    for label in CANDIDATES:
        sp = new_spool(t / label)
        now = time.time()
        sp.record("done", 1).write_bytes(jobmod.dump(
            {"id": 1, "argv": ["true"], "name": label, "gpus": 0, "cwd": "/",
             "submitted_at": now, "started_at": now, "ended_at": now, "exit_code": 0}))
        sp.log_path(1).write_text(f"{label}\n")
        (sp.pending / spoolmod.pending_name(10, 7)).write_text("argv: [true]\n")
        out[label] = sp.root
    return out


def entries(spools: dict[str, Path]) -> dict[str, set[str]]:
    return {label: {f"{d}/{n}" for d in ("pending", "requests") for n in os.listdir(root / d)}
            for label, root in spools.items()}


def picked_by_writing(spools, before) -> str | None:
    """The one candidate that gained a file in pending/ or requests/."""
    changed = [label for label, names in entries(spools).items() if names != before[label]]
    assert len(changed) <= 1, changed
    return changed[0] if changed else None


def label_of(spools: dict[str, Path], t: Path, path: str) -> str:
    """The candidate at ``path``, else ``path`` from the test's folder."""
    return next((label for label, root in spools.items() if os.path.exists(path)
                 and os.path.samefile(root, path)), os.path.relpath(path, t))


SH_SPOOL_TOOLS = [("gsub", ["-n", "0", "true"]), ("gkill", ["7"]), ("gcancel", ["7"]),
                  ("ghold", ["7"]), ("grelease", ["7"]), ("gpause", []), ("gresume", []),
                  ("gprio", ["7", "20"])]


def spool_choices(spools, t: Path, env: dict, cwd: Path) -> dict[str, tuple]:
    """{tool: (the candidate it used or None, its stderr)} for every tool."""
    out = {}
    for tool, args in SH_SPOOL_TOOLS:
        before = entries(spools)
        p = sh(tool, *args, env=env, cwd=cwd)
        out[tool] = (picked_by_writing(spools, before) if p.returncode == 0 else None, p.stderr)

    def py(*argv):
        return subprocess.run([*argv], capture_output=True, timeout=60, cwd=cwd,
                              env={"PATH": PATH, **env})

    p = py(SCRIPTS / "gstat", "--json")
    out["gstat"] = (label_of(spools, t, json.loads(p.stdout)["spool"]) if p.returncode == 0
                    else None, p.stderr)
    p = py(SCRIPTS / "ghist", "--json")
    out["ghist"] = (json.loads(p.stdout)[0]["name"] if p.returncode == 0 else None, p.stderr)
    p = py(SCRIPTS / "glog", "1")
    out["glog"] = (p.stdout.decode().strip() if p.returncode == 0 else None, p.stderr)
    before = entries(spools)
    p = py(SCRIPTS / "grequeue", "1")
    out["grequeue"] = (picked_by_writing(spools, before) if p.returncode == 0 else None,
                       p.stderr)
    p = py(sys.executable, "-c", "from spoold.options import parse_args; "
           "print(parse_args([]).spool)")
    out["spoold"] = (label_of(spools, t, p.stdout.decode().strip()) if p.returncode == 0 else None,
                     p.stderr)
    return out


@pytest.mark.parametrize("case, env, cwd, expected, refusal", SPOOL_CASES,
                         ids=[c[0] for c in SPOOL_CASES])
def test_every_tool_picks_the_same_default_spool(tmp_path, case, env, cwd, expected, refusal):
    """gsub, gkill and its wrappers, gprio (sh) and gstat, ghist, glog,
    grequeue and spoold (spool.default_spool) use the same folder in the same
    environment, or all refuse with the same reason."""
    spools = seed_candidates(tmp_path)
    env = {k: v.format(t=tmp_path) for k, v in env.items()}
    choices = spool_choices(spools, tmp_path, env, tmp_path / cwd)
    want = {tool: expected if expected in spools or tool == "spoold" else None
            for tool in choices}
    assert {tool: picked for tool, (picked, _) in choices.items()} == want
    text = (refusal or "").format(t=tmp_path).encode()
    assert {tool: err for tool, (_, err) in choices.items()
            if want[tool] is None and text not in err} == {}


def test_an_empty_spool_option_is_refused_by_every_tool(tmp_path):
    """--spool '' is refused, not taken as the current folder."""
    new_spool(tmp_path / "cwd")  # what '' would name, if taken
    env, cwd = {"HOME": str(tmp_path)}, tmp_path / "cwd"
    runs = {"gsub": sh("gsub", "--spool", "", "true", env=env, cwd=cwd),
            "gkill": sh("gkill", "--spool", "", "7", env=env, cwd=cwd),
            "gpause": sh("gpause", "--spool=", env=env, cwd=cwd),
            "gprio": sh("gprio", "--spool", "", "7", "20", env=env, cwd=cwd)}
    for tool in ("gstat", "ghist", "glog", "grequeue", "spoold"):
        runs[tool] = subprocess.run([SCRIPTS / tool, "--spool", "", *(["1"] * (tool in (
            "glog", "grequeue")))], capture_output=True, env=env, cwd=cwd, timeout=30)
    assert {tool: p.returncode for tool, p in runs.items()} == dict.fromkeys(runs, 2)
    assert all(b"--spool: empty folder name" in p.stderr for p in runs.values())


# ---------------------------------------------------------------- where job N is
def plant(path: Path, kind: str) -> None:
    if kind == "link":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text(f"id: 0\n{kind}")


# (case, entries for job N: {path with {id}/{id8}: kind or record text}, the
# folder Spool.where must name, gsub --wait's exit status or None: waits on)
WHERE_CASES = [
    ("done", {"done/{id}.yaml": "exit_code: 0\n"}, "done", 0),
    ("failed", {"failed/{id}.yaml": "exit_code: 3\n"}, "failed", 3),
    ("cancelled", {"cancelled/{id}.yaml": "reason: cancelled\n"}, "cancelled", 1),
    ("padded record", {"done/{id8}.yaml": "exit_code: 4\n"}, "done", 4),
    ("plain before padded", {"done/{id}.yaml": "exit_code: 5\n",
                             "done/{id8}.yaml": "exit_code: 6\n"}, "done", 5),
    ("kept original only", {"failed/{id}.orig": "exit_code: 0\n"}, "failed", 1),
    ("link at the record", {"done/{id}.yaml": "link"}, "done", 1),
    ("folder at the record", {"cancelled/{id}.yaml": "folder"}, "cancelled", 1),
    ("running", {"running/{id}.yaml": "pid: 1\n"}, "running", None),
    ("running and done", {"running/{id}.yaml": "pid: 1\n", "done/{id}.yaml": "exit_code: 0\n"},
     "running", None),
    ("nowhere", {}, None, None),
    ("other padding", {"done/000{id}.yaml": "exit_code: 0\n"}, None, None),
    ("another job's record", {"done/{next}.yaml": "exit_code: 0\n"}, None, None),
]


@pytest.mark.parametrize("case, planted, folder, code", WHERE_CASES,
                         ids=[c[0] for c in WHERE_CASES])
def test_gsub_wait_and_spool_find_agree_on_where_a_job_is(tmp_path, case, planted, folder,
                                                          code):
    """gsub --wait ends exactly when Spool.where names a final folder, reading
    the record Spool.find names; the tools' find_job agrees."""
    sp = new_spool(tmp_path / "spool")
    job_id = sp.read_counter()  # the id gsub will take: planted first, all at once for it
    for pattern, kind in planted.items():
        plant(sp.root / pattern.format(id=job_id, id8=f"{job_id:08d}", next=job_id + 1), kind)
    proc = subprocess.Popen(["dash", str(GSUB), "--spool", str(sp.root), "-n", "0", "--wait",
                             "true"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": PATH})
    try:
        assert int(proc.stdout.readline()) == job_id
        os.unlink(sp.pending / pending_job(sp.root, job_id)[0])  # as if claimed
        assert sp.where(job_id) == folder
        found = toolbase.find_job(sp, job_id)
        assert (found and found[0]) == folder
        if code is None:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(1.0)  # ten of its polls
        else:  # (the code says which record it read: "plain before padded")
            assert proc.wait(10) == code, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


# (case, entries as in WHERE_CASES, the folder _gfind must name)
FIND_CASES = [(case, planted, folder) for case, planted, folder, _ in WHERE_CASES] + [
    ("pending", {"pending/0010-{id8}.yaml": "argv: [true]\n"}, "pending"),
    ("pending at another priority", {"pending/0003-{id8}.yaml": ""}, "pending"),
    ("a link in pending", {"pending/0010-{id8}.yaml": "link"}, "pending"),
    ("pending and running", {"pending/0010-{id8}.yaml": "", "running/{id}.yaml": ""},
     "pending"),
    ("pending and done", {"pending/9999-{id8}.yaml": "", "done/{id}.yaml": ""}, "pending"),
    ("a name without an id", {"pending/0010-job-{id}.yaml": ""}, None),
    ("a dropped name", {"pending/{id}.yaml": ""}, None),
    ("a five-digit priority", {"pending/00010-{id8}.yaml": ""}, None),
    ("unpadded id", {"pending/0010-{id}.yaml": ""}, None),
    ("a dot name", {"pending/.0010-{id8}.yaml": ""}, None),
    ("another job pending", {"pending/0010-{next8}.yaml": ""}, None),
]


def python_find(sp: spoolmod.Spool, job_id: int) -> str | None:
    """Where job ``job_id`` is, as the daemon answers a request: its pending
    name (Spool.list_pending), else Spool.where."""
    if any(q.job_id == job_id for q in sp.list_pending()):
        return "pending"
    return sp.where(job_id)


def test_gfind_and_the_spool_agree_on_where_a_job_is(tmp_path):
    """bin/gspool.sh's _gfind (gkill, gcancel, ghold, grelease, gprio) names
    the folder Spool.list_pending and Spool.where name, on every case."""
    disagree = []
    for n, (case, planted, folder) in enumerate(FIND_CASES):
        sp = new_spool(tmp_path / f"s{n}")
        job_id = 7
        for pattern, kind in planted.items():
            plant(sp.root / pattern.format(id=job_id, id8=f"{job_id:08d}", next=job_id + 1,
                                           next8=f"{job_id + 1:08d}"), kind)
        p = subprocess.run(["dash", "-c", '_gme=t _gspool=$1; . "$0"; _gfind "$2"; '
                            'printf "%s\n" "$_gd"', BIN / "gspool.sh", str(sp.root),
                            str(job_id)], capture_output=True, timeout=30)
        got = p.stdout.decode().strip() or None
        if not got == python_find(sp, job_id) == folder:
            disagree.append((case, "sh", got, p.stderr, "python", python_find(sp, job_id)))
    assert not disagree


# ---------------------------------------------------------------- ids
SOME = {"done/5.yaml": "", "failed/00000011.yaml": "", "pending/0003-00000009.yaml": "",
        "running/7.yaml": ""}
# (case, entries {path: text, or "dir" / "link:TARGET"}, the counter's bytes
# (None: missing; "dir"; "link:TARGET"), the id both must hand out or None:
# both refuse, private-only)
ID_CASES = [
    ("fresh spool, no counter", {}, None, 1, False),
    ("counter missing", SOME, None, 12, False),
    ("counter garbage", SOME, b"garbage\n", 12, False),
    ("counter empty", SOME, b"", 12, False),
    ("digits then garbage", SOME, b"12abc\n", 12, False),
    ("zero", SOME, b"0\n", 12, False),
    ("negative", SOME, b"-5\n", 12, False),
    ("blank first line", SOME, b"\n40\n", 12, False),
    ("blanks around", SOME, b" \t40 \t\n", 40, False),
    ("carriage return", SOME, b"40\r\n", 12, False),
    ("a second line", SOME, b"40\n41\n", 40, False),
    ("leading zeros", SOME, b"0000000000042\n", 42, False),
    ("no newline", SOME, b"50", 50, False),
    ("other scripts' digits", SOME, "\u0664\u0662\n".encode(), 12, False),
    ("not UTF-8", SOME, b"\xff\xfe4\n", 12, False),
    ("the last id", SOME, b"99999999\n", 99999999, False),
    ("every id used", SOME, b"100000000\n", None, False),
    ("counter past the range", SOME, b"100000001\n", 12, False),
    ("counter is a link", {**SOME, "state/real": "60\n"}, "link:real", 60, False),
    ("counter is a folder", SOME, "dir", None, True),
    ("wider ids are not ours", {"done/7.yaml": "", "done/123456789.yaml": "",
                                "pending/0010-999999999999.yaml": "",
                                "logs/1234567890.log": ""}, b"x\n", 8, False),
    ("only in logs/", {"logs/30.log": ""}, None, 31, False),
    ("only in tmp/", {"tmp/31.AbCdEfGh": ""}, None, 32, False),
    ("a staged array in tmp/", {"tmp/32-35.XyZ12345/0010-00000035.yaml": ""}, None, 36,
     False),
    ("only inside a folder of tmp/", {"tmp/stage.Ab/0010-00000037.yaml": ""}, None, 38, False),
    ("a link to a folder in tmp/", {"outside/0010-00000099.yaml": "", "tmp/lnk": "link:../outside",
                                    "done/3.yaml": ""}, None, 4, False),
    ("only in state/ids/", {"state/ids/40": ""}, None, 41, False),
    ("foreign pending names", {"pending/foo-50.yaml": "", "pending/0005-job-51.yaml": ""},
     None, 52, False),
    ("dot names", {"logs/.77.log": "", "tmp/.spoold.78.yaml.abcd": "",
                   "pending/.0010-00000079.yaml": "", "tmp/.80-81.Ab/0010-00000081.yaml": "",
                   "done/3.yaml": ""}, None, 4, False),
    ("zero and zero-padded", {"done/0.yaml": "", "done/00000000.yaml": "",
                              "logs/000000012.log": ""}, None, 13, False),
    ("names without ids", {"done/abc.yaml": "", "logs/x-y.log": "", "tmp/-.yaml": "",
                           "tmp/12-.yaml": "", "done/\u0664\u0662.yaml": "", "done/7a.yaml": ""},
     None, 1, False),
    ("suffixes", {"done/7.yaml.tmp": "", "failed/8.orig": ""}, None, 9, False),
]


def build(root: Path, files: dict, counter, shared: bool) -> spoolmod.Spool:
    sp = new_spool(root, shared)
    os.unlink(sp.state / "next-id")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("link:"):
            path.symlink_to(text[5:])
        else:
            path.write_text(text)
    if counter == "dir":
        (sp.state / "next-id").mkdir()
    elif isinstance(counter, str):
        (sp.state / "next-id").symlink_to(counter[5:])
    elif counter is not None:
        (sp.state / "next-id").write_bytes(counter)
    return sp


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_gsub_and_allocate_ids_hand_out_the_same_next_id(tmp_path, shared):
    """On two identical copies of each damaged spool, gsub's next id (its
    _ghint and _grecover) is Spool.allocate_ids(1)'s (read_counter and
    max_id_seen), or both refuse; in a private spool both leave the same
    counter."""
    if shared and os.geteuid() != 0:
        pytest.skip("a shared spool is root's")
    disagree = []
    for case, files, counter, expected, private_only in ID_CASES:
        if shared and private_only:
            continue
        a = build(tmp_path / case / "sh", files, counter, shared)
        b = build(tmp_path / case / "py", files, counter, shared)
        p = gsub(a.root, "-n", "0", "true")
        sh_id = int(p.stdout) if p.returncode == 0 else None
        try:
            py_id = b.allocate_ids(1)
        except OSError:
            py_id = None
        if not sh_id == py_id == expected:
            disagree.append((case, "gsub", sh_id, p.stderr, "python", py_id, "expected",
                             expected))
        elif expected and not shared and (a.state / "next-id").read_bytes() != (
                b.state / "next-id").read_bytes():
            disagree.append((case, "counters", (a.state / "next-id").read_bytes(),
                             (b.state / "next-id").read_bytes()))
    assert not disagree


ALLOCATE = ("import sys\nfrom spoold.spool import Spool\nsp = Spool(sys.argv[1])\n"
            "print(*(sp.allocate_ids(int(n)) for n in sys.argv[2:]))")


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_concurrent_gsubs_and_python_allocations_never_share_an_id(tmp_path, shared):
    """gsub (markers from builtins, the hint written back without a lock)
    and Spool.allocate_ids (the daemon's: markers under the counter's flock)
    at once on one spool: every id, single or a run of 3, is handed out once."""
    if shared and os.geteuid() != 0:
        pytest.skip("a shared spool is root's")
    sp = new_spool(tmp_path / "spool", shared)
    procs = []
    for i in range(12):
        procs.append(("sh1", subprocess.Popen(
            ["dash", str(GSUB), "--spool", str(sp.root), "-n", "0", "true"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": PATH})))
        procs.append(("sh3", subprocess.Popen(
            ["dash", str(GSUB), "--spool", str(sp.root), "-n", "0", "--array", "1-3", "true"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": PATH})))
        if i % 3 == 0:
            procs.append(("py", subprocess.Popen(
                [sys.executable, "-c", ALLOCATE, str(sp.root), "1", "3", "1", "2"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    ids = []
    for kind, p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        if kind == "py":
            for first, n in zip(map(int, out.split()), (1, 3, 1, 2), strict=True):
                ids += range(first, first + n)
        else:
            ids += map(int, out.split())
    assert len(ids) == 12 + 36 + 4 * 7
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    markers = {int(n) for n in os.listdir(sp.state_ids)}
    assert set(ids) <= markers  # every id handed out has its marker
    assert sp.allocate_ids(1) > max(markers)


# ---------------------------------------------------------------- defaults and priorities
def test_gsub_writes_job_pys_defaults(tmp_path):
    """A job submitted with no -n and no -p: gsub's defaults are job.py's
    DEFAULT_GPUS and DEFAULT_PRIORITY, in the file and in its name."""
    root = new_spool(tmp_path / "spool").root
    p = gsub(root, "true")
    job_id = int(p.stdout)
    name, data = pending_job(root, job_id)
    assert data["gpus"] == jobmod.DEFAULT_GPUS and data["priority"] == jobmod.DEFAULT_PRIORITY
    assert name == spoolmod.pending_name(jobmod.DEFAULT_PRIORITY, job_id)
    job = jobmod.parse(b"argv: ['true']\n")  # what the daemon assumes when a field is absent
    assert (job.gpus, job.priority) == (jobmod.DEFAULT_GPUS, jobmod.DEFAULT_PRIORITY)
    usage = sh("gsub", "--help").stdout.decode()
    assert f"(default {jobmod.DEFAULT_GPUS};" in usage
    assert f"0..{jobmod.MAX_PRIORITY}, smaller runs first (default {jobmod.DEFAULT_PRIORITY})" \
        in usage


# (gsub -p TEXT, the number it names or None when it names none)
PRIORITIES = [("0", 0), ("1", 1), ("9", 9), ("10", 10), ("007", 7), ("0007", 7), ("9999", 9999),
              ("09999", 9999), ("0000000000009999", 9999), ("10000", 10000), ("99999", 99999),
              ("0000000000010000", 10000), ("-1", -1), ("99999999999999", 99999999999999),
              ("+5", None), ("", None), ("1e3", None), (" 5", None), ("5 ", None),
              ("\u0663", None), ("0x10", None), ("5.0", None)]


def python_priority(value: int) -> bool:
    try:
        jobmod.validate({"argv": ["true"], "priority": value})
    except jobmod.JobError:
        return False
    return True


def test_priorities_gsub_and_python_agree(tmp_path):
    """gsub -p accepts exactly the priorities job.py does, and names the file
    as spool.pending_name does, which parse_pending_name reads back."""
    root = new_spool(tmp_path / "spool").root
    disagree = []
    for text, value in PRIORITIES:
        p = gsub(root, "-n", "0", "-p", text, "true")
        py_ok = value is not None and python_priority(value)
        if p.returncode != 0:
            if py_ok or p.returncode != 2:
                disagree.append((text, "gsub refused", p.stderr, "python accepts", py_ok))
            continue
        job_id = int(p.stdout)
        name, _ = pending_job(root, job_id)
        job = jobmod.parse((root / "pending" / name).read_bytes())
        if not py_ok or (name != spoolmod.pending_name(value, job_id) or job.priority != value
                         or spoolmod.parse_pending_name(name) != (value, job_id, name)):
            disagree.append((text, "gsub", name, job.priority, "python accepts", py_ok))
    assert not disagree


def test_no_code_cites_design_md():
    """DESIGN.md is not in the repository: code points to docs/ instead."""
    repo = BIN.parent
    files = [*BIN.iterdir(), *(repo / "spoold").glob("*.py")]
    assert [f.name for f in files if "DESIGN" in f.read_text()] == []
