"""The result format: table rows, the printed report and the JSON file.

A scenario turns its results into rows with ``row``: spoold's number, the
peers' numbers where they measured the same thing, the ratio spoold/tsp and,
where issue 13 sets a target (listed in docs/performance.md), PASS or MISS.
Targets are reported, never enforced: the exit status says only whether every
scenario ran.

The JSON file (default bench/results/latest.json) holds ``meta`` (machine,
versions, mode, load), ``notes``, the raw ``results`` per scenario, any
``errors`` and the ``table`` rows.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml
from harness import Ctx, base_env


def dig(d, *path):
    """d[path[0]][path[1]]..., or None where any step is missing."""
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def row(metric: str, unit: str, sp, tsp=None, nq=None, target: str = "", check=None,
        ratio: bool = True, note: str = "") -> dict:
    """One table row. check(value, ratio) decides PASS/MISS against `target`; it
    answers None (shown n/a) when it cannot tell, e.g. without tsp for a ratio."""
    r = sp / tsp if (ratio and isinstance(sp, float | int) and tsp) else None
    verdict = ""
    if check is not None:
        ok = None if sp is None else check(sp, r)
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
    return {"metric": metric, "unit": unit, "spoold": sp, "tsp": tsp, "nq": nq, "ratio": r,
            "target": target, "result": verdict, "note": note}


def ratio_at_most(limit: float):
    """A check: spoold/tsp <= limit (n/a without tsp)."""
    return lambda _v, q: None if q is None else q <= limit


def ratio_at_least(limit: float):
    """A check: spoold/tsp >= limit (n/a without tsp)."""
    return lambda _v, q: None if q is None else q >= limit


def below(limit: float):
    """A check: spoold's value < limit (a string value, "> T", is a timeout: MISS)."""
    return lambda v, _q: False if isinstance(v, str) else v < limit


def per_peer(r: dict, *path) -> dict:
    """The same measurement for each tool: {"sp": .., "tsp": .., "nq": ..} for row(**)."""
    return {"sp": dig(r, "spoold", *path), "tsp": dig(r, "tsp", *path),
            "nq": dig(r, "nq", *path)}


def fmt(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.{nd}f}"


def table(rows: list[dict]) -> str:
    head = ["metric", "unit", "spoold", "tsp", "nq", "spoold/tsp", "target", "result"]
    body = [[r["metric"], r["unit"], fmt(r["spoold"], 2 if r["unit"] == "x" else 1),
             fmt(r["tsp"]), fmt(r["nq"]),
             f"{r['ratio']:.2f}x" if r["ratio"] is not None else "", r["target"], r["result"]]
            for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, body)])


def _out(cmd, env=None) -> str | None:
    with contextlib.suppress(Exception):
        r = subprocess.run(cmd, capture_output=True, timeout=10, env=env)
        return (r.stdout + r.stderr).decode(errors="replace").strip()
    return None


def _dpkg(pkg: str) -> str | None:
    return _out(["dpkg-query", "-W", "-f=${Version}", pkg])


def _first_line(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def machine(ctx: Ctx) -> dict:
    """What the numbers were measured on (other work on the machine: see the load)."""
    spoold_v = _out([sys.executable, "-c", "from spoold.daemon import _version; "
                     "print(_version())"], base_env(PYTHONPATH=str(ctx.repo)))
    git = _out(["git", "-C", str(ctx.repo), "describe", "--always", "--dirty"])
    tsp_v = None
    if ctx.tools.get("tsp"):
        tsp_v = (_out([ctx.tools["tsp"], "-V"], base_env(TS_SOCKET="/nonexistent/x")) or "?")
        tsp_v = f"{tsp_v.splitlines()[0]} (deb {_dpkg('task-spooler')})"
    mem_kb = _first_line("/proc/meminfo", "MemTotal")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "spoold": f"{spoold_v} (git {git}, {ctx.repo})",
        "tsp": tsp_v,
        "nq": f"nq {_dpkg('nq')}" if ctx.tools.get("nq") else None,
        "python": platform.python_version(),
        "pyyaml": f"{yaml.__version__} (libyaml: {getattr(yaml, '__with_libyaml__', False)})",
        "shell_for_gsub": f"{ctx.gsub_sh} ({_dpkg('dash') or '?'})",
        "kernel": platform.release(),
        "os": _out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "nproc": os.cpu_count(),
        "cpu": _first_line("/proc/cpuinfo", "model name"),
        "mem_mib": int(mem_kb.split()[0]) // 1024 if mem_kb else None,
        "filesystem_tmp": _with_journal(
            _out(["findmnt", "-no", "FSTYPE,OPTIONS", "-T", str(ctx.tmp)]), ctx.tmp),
        "loadavg_before": os.getloadavg(),
    }


def _with_journal(fs: str | None, path: Path) -> str | None:
    """``fs`` plus, for an ext4 without a journal, a warning: its inode
    allocator skips inodes freed in the last minutes, so what was deleted
    there just before a run (a test suite, the last run's clean-up) makes
    every file spoold creates dearer (docs/performance.md, "The spool's
    filesystem")."""
    if not fs or not fs.startswith("ext4"):
        return fs
    dev = os.path.basename(_out(["findmnt", "-no", "SOURCE", "-T", str(path)]) or "")
    try:
        options = Path(f"/proc/fs/ext4/{dev}/options").read_text().split()
    except OSError:
        return fs
    if any(o.startswith("data=") for o in options):
        return fs + " (journal)"
    return fs + " (NO journal: run after minutes without bulk deletes there)"


def emit(meta: dict, notes: list[str], results: dict, errors: dict, rows: list[dict],
         extra_lines: list[str], json_path: Path) -> None:
    """Print the report on stdout and write the JSON file."""
    print()
    for k in ("date", "spoold", "tsp", "nq", "python", "pyyaml", "shell_for_gsub", "kernel",
              "os", "nproc", "cpu", "mem_mib", "filesystem_tmp", "mode", "scenarios",
              "loadavg_before", "loadavg_after"):
        print(f"{k:>15}: {meta.get(k)}")
    print()
    print(table(rows))
    for line in extra_lines:
        print(f"\n{line}")
    for name, err in errors.items():
        print(f"ERROR in {name}: {err}")
    for n in notes:
        print(f"note: {n}")
    print(f"\n(took {meta['elapsed_s']:.0f}s)")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"meta": meta, "notes": notes, "results": results,
                                     "errors": errors, "table": rows},
                                    indent=2, default=str) + "\n")
    print(f"JSON: {json_path}")
