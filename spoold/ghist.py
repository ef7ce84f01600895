"""ghist: finished jobs (read-only, except ``--clean``), and ``--timeline``.

Owns: ``history`` (the --json list, schema in docs/json.md), its table, the
GPU timeline and cleaning old records.

Invariants: rows are sorted by end time then id; user names come from uids;
every user-controlled text is escaped before it is printed; a failure to
remove a record is one line and exit 1, with what was removed so far.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from . import job as jobmod
from . import spool as spoolmod
from .gstat import snapshot
from .spool import Spool
from .toolbase import (
    command_text,
    esc,
    fail,
    json_text,
    num,
    open_spool,
    read_owned,
    spool_arg,
    table,
    tty_width,
    user_arg,
    user_name,
    when,
)
from .util import fmt_duration, parse_duration


def history(sp: Spool, states: tuple[str, ...], user: str | None = None,
            since: float | None = None) -> list[dict]:
    rows = []
    for d in states:
        for job_id in sp.list_ids(d):
            rec, uid = read_owned(sp.record(d, job_id))
            if rec is None:
                rec = {"id": job_id, "reason": "unreadable"}
            name = user_name(uid, rec.get("user")) if uid is not None else ""
            if user and name != user:
                continue
            ended, started = num(rec.get("ended_at")), num(rec.get("started_at"))
            if since and (ended or 0) < since:
                continue
            code = rec.get("exit_code")
            rows.append({"id": job_id, "state": d,
                         "exit_code": code if isinstance(code, int) else None,
                         "name": str(rec.get("name") or ""), "user": name,
                         "gpus": rec.get("gpus", jobmod.DEFAULT_GPUS),
                         "assigned_gpus": rec.get("assigned_gpus"),
                         "host": rec.get("host"), "submitted_at": num(rec.get("submitted_at")),
                         "started_at": started, "ended_at": ended,
                         "elapsed": ended - started if started and ended else None,
                         "reason": rec.get("reason"), "command": command_text(rec)})
    rows.sort(key=lambda r: (r["ended_at"] or 0, r["id"]))
    return rows


def render_ghist(rows: list[dict], width: int = 100) -> str:
    cells = [["ID", "STATE", "EXIT", "NAME", "USER", "GPUS", "ENDED", "ELAPSED",
              "COMMAND/REASON"]]
    for r in rows:
        gp = ",".join(map(str, r["assigned_gpus"] or [])) or "-"
        cells.append([r["id"], r["state"], "-" if r["exit_code"] is None else r["exit_code"],
                      r["name"][:20], r["user"][:12], gp, when(r["ended_at"]),
                      fmt_duration(r["elapsed"]),
                      r["reason"] if r["state"] != "done" and r["reason"] else r["command"]])
    return "\n".join(table(cells, width)) + "\n"


def clean(sp: Spool, rows: list[dict], older_than: float | None) -> int:
    """Remove the finished jobs of ``rows`` that ended before the cutoff
    (``Spool.delete_finished``: kept original and log, then the record)."""
    cutoff = time.time() - (older_than or 0)
    gone = 0
    for r in rows:
        if (r["ended_at"] or 0) > cutoff:
            continue
        try:
            sp.delete_finished(r["state"], r["id"])
        except PermissionError as e:
            return fail("ghist", f"cannot remove {esc(e.filename)}: permission denied (records "
                        f"of a shared spool are root's; ask root); removed {gone} record(s)")
        gone += 1
    print(f"removed {gone} finished record(s)", file=sys.stderr)
    return 0


def time_span(text: str) -> int:
    """A --since or --older-than length of time: gsub's -t forms, but not
    'infinite' (no time ago is infinitely long)."""
    seconds = parse_duration(text)
    if seconds is None:
        raise ValueError(f"not a length of time: {text!r}")
    return seconds


def _since(text: str) -> float:
    """'2h' (ago) or an ISO date/time."""
    with contextlib.suppress(ValueError):
        return time.time() - time_span(text)
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration or date: {text!r} (e.g. 2h, 7d, 2026-11-20)") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ghist", description="Finished jobs, oldest first (done only unless -f).",
        epilog="Examples: ghist -n 5 | ghist -f --since 1d | ghist --json | "
               "ghist --clean --older-than 7d")
    spool_arg(ap)
    ap.add_argument("-f", "--failed", action="store_true", help="include failed and cancelled")
    ap.add_argument("-n", type=int, default=None, metavar="N", help="only the last N")
    user_arg(ap)
    ap.add_argument("--since", type=_since, help="ended within this long (2h) or since a date")
    ap.add_argument("--json", action="store_true", help="machine-readable (docs/json.md)")
    ap.add_argument("--clean", action="store_true",
                    help="delete finished records (and their logs) instead of listing them")
    ap.add_argument("--older-than", type=time_span, default=None, metavar="DURATION",
                    help="with --clean: only records that ended more than this long ago")
    ap.add_argument("--timeline", nargs="?", const=6.0, type=float, metavar="HOURS",
                    help="draw which job held which GPU over the last HOURS (6)")
    ap.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    sp = open_spool(a.spool, "ghist")
    tty = sys.stdout.isatty()
    if a.timeline:
        now = time.time()
        rows, gpus = timeline_rows(sp, now)
        sys.stdout.write(render_timeline(rows, gpus, now, a.timeline,
                                         a.width or (tty_width() if tty else 100)))
        return 0
    states = spoolmod.FINAL_DIRS if a.failed or a.clean else ("done",)
    rows = history(sp, states, a.user, a.since)
    if a.clean:
        return clean(sp, rows, a.older_than)
    if a.n is not None:
        rows = rows[-a.n:] if a.n > 0 else []
    if a.json:
        sys.stdout.write(json_text(rows))
    else:
        sys.stdout.write(render_ghist(rows, a.width or (tty_width() if tty else 10_000)))
    return 0


# ---- ghist --timeline -------------------------------------------------------------------

_SYMBOLS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def render_timeline(rows: list[dict], gpus: list[int], now: float, hours: float,
                    width: int = 100) -> str:
    """Which job held which GPU over the last ``hours``: one line per GPU."""
    label = 6
    cols = max(10, width - label - 2)
    start = now - hours * 3600
    step = (now - start) / cols
    spans = [r for r in rows if r.get("assigned_gpus") and r.get("started_at")
             and (r.get("ended_at") or now) >= start]
    spans.sort(key=lambda r: (r["started_at"], r["id"]))
    sym = {r["id"]: _SYMBOLS[i % len(_SYMBOLS)] for i, r in enumerate(spans)}
    grid = {g: ["."] * cols for g in gpus}
    for r in spans:
        lo = int((max(r["started_at"], start) - start) / step)
        hi = int((min(r.get("ended_at") or now, now) - start) / step)
        for g in r["assigned_gpus"]:
            if g in grid:
                for c in range(max(0, lo), min(cols, max(hi, lo + 1))):
                    grid[g][c] = sym[r["id"]]
    left = f"-{hours:g}h"
    out = [f"{'':{label}}|{left}{'now'.rjust(cols - len(left))}|"]
    out += [f"{'GPU' + esc(g):<{label}}|{''.join(grid[g])}|" for g in gpus]
    legend = [f"{sym[r['id']]}={r['id']} {esc(r.get('name') or '')} "
              f"({esc(r.get('state', 'running'))})" for r in spans]
    line = "jobs:"
    for item in legend:
        if len(line) + len(item) + 2 > width:
            out.append(line)
            line = "     "
        line += "  " + item
    out.append(line if legend else "jobs:  none in this window")
    return "\n".join(out) + "\n"


def timeline_rows(sp: Spool, now: float) -> tuple[list[dict], list[int]]:
    rows = history(sp, spoolmod.FINAL_DIRS)
    snap = snapshot(sp, now=now)
    for r in snap["running"]:
        rows.append({**r, "state": "running", "ended_at": None})
    gpus = sorted({g["index"] for g in snap["gpus"] if isinstance(g.get("index"), int)}
                  | {g for r in rows for g in r.get("assigned_gpus") or []
                     if isinstance(g, int)})
    return rows, gpus
